"""A corpus from local text files: ``.txt``, ``.jsonl`` or ``.parquet``, one or more per language.

    layra corpus files glg=gl.txt eng=en.jsonl --out corpus/

    build_files_corpus({"glg": ["gl.txt"], "eng": ["en.jsonl"]}, Path("corpus"))

Files are read with :func:`layra.data.iter_documents` (the reader ``layra
train`` uses): a ``.txt`` document is a blank-line separated block, a
``.jsonl`` / ``.parquet`` document is one row's ``field``. The n-th document of
every language shares the id ``n``, so parallel files split alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from layra.cli import split_lang_path
from layra.config import SourceConfig
from layra.corpus.clean import clean_languages
from layra.corpus.langs import check_lang_code
from layra.corpus.output import reuse_existing, summary_lines, write_corpus
from layra.corpus.split import Document, check_fraction
from layra.data import iter_documents
from layra.documents import split_documents
from layra.errors import LayraError
from layra.lock import holds_output_lock


def parse_inputs(specs: list[str]) -> dict[str, list[str]]:
    """``["glg=a.txt", "glg=b.txt", "eng=c.jsonl"]`` -> ``{"glg": [...], "eng": [...]}``."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        lang, path = split_lang_path(spec, "input")
        out.setdefault(check_lang_code(lang), []).append(path)
    if not out:
        raise LayraError("no input files; give LANG=PATH, e.g. glg=gl.txt")
    return out


def document_paragraphs(text: str) -> tuple[str, ...]:
    """A document's paragraphs: its blank-line separated blocks (:mod:`layra.documents`)."""
    return tuple(split_documents(text))


def read_documents(texts) -> list[Document]:
    """Documents with ids ``"0"``, ``"1"``, ... from an iterable of document texts."""
    docs = []
    for i, text in enumerate(texts):
        if paras := document_paragraphs(text):
            docs.append(Document(str(i), paras))
    return docs


def _file_digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


@holds_output_lock("out")
def build_files_corpus(
    inputs: dict[str, list[str]],
    out: Path | str,
    field: str = "text",
    seed: int = 0,
    heldout_fraction: float = 0.1,
    min_words: int = 0,
    source: str = "files",
    overwrite: bool = False,
) -> Path:
    """Split, deduplicate and write local text as ``out/<source>/<lang>/...``.

    ``inputs`` maps an ISO 639-3 code to files or directories. With
    ``min_words > 0`` paragraphs that are not prose are dropped, as for the
    Debian sources; by default local text is taken as it is (only empty and
    duplicate paragraphs go). Returns ``out``.
    """
    check_fraction(heldout_fraction)
    out = Path(out).expanduser()
    for paths in inputs.values():
        for p in paths:
            if not Path(p).expanduser().exists():
                raise LayraError(f"input file {p} not found")
    request = {
        "kind": "files",
        "source": source,
        "inputs": {
            lang: [{"path": str(p), "sha256": _file_digest(Path(p).expanduser())} for p in paths]
            for lang, paths in inputs.items()
        },
        "field": field,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "min_words": min_words,
    }
    if reuse_existing(out, request, overwrite):
        print(f"corpus {out} already built from these files; reusing it (--overwrite rebuilds)")
        return out
    raw = {}
    for lang, paths in inputs.items():
        texts = (
            doc
            for p in paths
            for doc in iter_documents(SourceConfig(path=p, lang=lang, field=field))
        )
        raw[lang] = read_documents(texts)
        if not raw[lang]:
            raise LayraError(f"no text for {lang} in {', '.join(paths)} (empty file?)")
    return finish_one_source(
        out, source, raw, request, min_words, heldout_fraction, seed, overwrite
    )


def finish_one_source(
    out: Path,
    source: str,
    raw: dict[str, list[Document]],
    request: dict,
    min_words: int,
    heldout_fraction: float,
    seed: int,
    overwrite: bool,
) -> Path:
    """Clean, split and write a corpus of one source (no English reference to align with)."""
    cleaned, dropped = clean_languages(raw, reference=None, min_words=min_words, one_line=False)
    write_corpus(
        out,
        {source: cleaned},
        request,
        heldout_fraction=heldout_fraction,
        seed=seed,
        dropped={source: dropped},
        overwrite=overwrite,
    )
    print("\n".join(summary_lines(out)))
    print(f"wrote {out}")
    return out
