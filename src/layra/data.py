"""Training text: read documents, hold some out, tokenize to a budget, pack into blocks.

    data = build_dataset(cfg.data, tokenizer, seed=0)   # = layra.prepare.prepare
    data.blocks[0:4]    # LongTensor [4, seq_len], read from memory-mapped token files
    data.heldout        # {"glg": ["held-out document", ...]} -- never in blocks

This module says *what* the blocks are; :mod:`layra.prepare` computes them on every core
in bounded memory and stores them (:mod:`layra.tokenstore`).

Documents: a ``.txt`` file is blank-line separated paragraphs; ``.jsonl`` and
``.parquet`` rows and hub datasets give one document per row (``field``). Local
``.jsonl``/``.parquet`` files and hub datasets go through the same ``datasets``
streaming reader, so the hub path is exercised by tests on local files.

Held-out rule: a document is held out when the first 8 bytes of
sha256(normal_key(text)), read as a fraction of 2**64, fall below
``heldout_fraction``. ``normal_key`` (:mod:`layra.neardup`) ignores case,
punctuation and spacing, so copies that differ only in those land on the same
side. It depends on the text alone, so it is the same in every run, order and
process. A held-out document whose word-3-gram Jaccard with a document that was
tokenized for training is at least 0.5 is dropped (neither trained on nor held
out; counted in the stats as ``heldout_near_duplicates``); the first
``heldout_max_docs`` of the rest, in source order, are kept.

Budgets: each language's training documents are tokenized in a seeded random
order -- local documents (all local sources of the language, in file order) in the
order ``random.Random(seed).shuffle`` gives a list of them, then hub datasets in
``datasets``' seeded streaming shuffle order (shards in random order, then a buffer of
``SHUFFLE_BUFFER`` documents, which only approximates a uniform sample). Each
document is the tokenizer's own encoding (with BOS where the model expects it)
followed by EOS. The language's tokens are cut at its budget (a document counts as
used when it starts before the cut); ``mix: equal`` without a budget then cuts every
language to the smallest, ``concat`` cuts in order; each language is cut into
``seq_len`` blocks (a last partial block dropped), and with ``shuffle`` the blocks of
all languages are put in ``torch.randperm`` order seeded by ``seed``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from layra.config import DataConfig, SourceConfig
from layra.documents import split_documents
from layra.errors import LayraError
from layra.neardup import normal_key

if TYPE_CHECKING:
    from layra.prepare import PreparedData

# Documents a streamed hub dataset's seeded shuffle draws from at a time (datasets'
# IterableDataset.shuffle buffer); it also shuffles the order of the dataset's shards.
SHUFFLE_BUFFER = 10_000

_SUFFIX_FORMAT = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


def source_format(src: SourceConfig) -> str:
    """The reader for a source: the configured one, or guessed from its path."""
    if src.format != "auto":
        return src.format
    p = Path(src.path).expanduser()
    if p.is_dir():
        kinds = {_SUFFIX_FORMAT.get(f.suffix) for f in p.iterdir() if f.is_file()} - {None}
        if len(kinds) != 1:
            raise LayraError(
                f"data source {p}: directory must hold .txt, .jsonl or .parquet files of one kind"
            )
        return kinds.pop()
    if p.exists():
        fmt = _SUFFIX_FORMAT.get(p.suffix)
        if fmt is None:
            raise LayraError(
                f"data source {p}: unknown file type {p.suffix!r}; use .txt, .jsonl or .parquet"
            )
        return fmt
    if src.path.count("/") == 1 and not src.path.startswith((".", "/", "~")):
        return "hf"
    raise LayraError(f"data file {src.path} not found")


def local_files(src: SourceConfig, fmt: str) -> list[str]:
    """The files of a local source of format ``fmt`` (one file, or a directory's, sorted)."""
    p = Path(src.path).expanduser()
    suffixes = [s for s, f in _SUFFIX_FORMAT.items() if f == fmt]
    files = sorted(str(f) for f in p.iterdir() if f.suffix in suffixes) if p.is_dir() else [str(p)]
    if not files:
        raise LayraError(f"data source {p} has no {fmt} files")
    return files


def _read_txt(path: str) -> Iterator[str]:
    """A .txt file's documents, read in pieces (bounded memory at any file size)."""
    from layra.documents import txt_pieces

    for base, piece in txt_pieces(path):
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LayraError(
                f"{path}: not valid UTF-8 (byte {base + e.start}); convert it to UTF-8 first"
            ) from e
        yield from split_documents(text)


def iter_documents(src: SourceConfig, shuffle_seed: int | None = None) -> Iterator[str]:
    """Every non-empty document of a source, in file order (streamed).

    With ``shuffle_seed``, a hub dataset comes in ``datasets``' seeded streaming
    shuffle order (shards shuffled, then a :data:`SHUFFLE_BUFFER` buffer); local
    files ignore it (:mod:`layra.prepare` shuffles them whole).
    """
    fmt = source_format(src)
    if fmt == "txt":
        for f in local_files(src, fmt):
            yield from _read_txt(f)
        return
    import datasets

    try:
        if fmt == "hf":
            ds = datasets.load_dataset(src.path, src.config, split=src.split, streaming=True)
            if shuffle_seed is not None:
                ds = ds.shuffle(seed=shuffle_seed, buffer_size=SHUFFLE_BUFFER)
        else:
            builder = "json" if fmt == "jsonl" else "parquet"
            ds = datasets.load_dataset(
                builder, data_files=local_files(src, fmt), split="train", streaming=True
            )
        for row in ds:
            if src.field not in row:
                raise LayraError(
                    f"data source {src.path}: no field {src.field!r}; fields: {', '.join(row)}"
                )
            text = row[src.field]
            if isinstance(text, str) and text.strip():
                yield text.strip()
    except LayraError:
        raise
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()
        raise LayraError(
            f"cannot read data source {src.path}: {msg[0] if msg else type(e).__name__}"
        ) from e
    except Exception as e:  # datasets wraps JSON / Arrow errors in its own types
        if type(e).__module__.startswith(("datasets", "pyarrow")):
            msg = str(e).strip().splitlines()
            raise LayraError(
                f"cannot read data source {src.path}: {msg[0] if msg else type(e).__name__}"
            ) from e
        raise


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out slice (see the module docstring)."""
    return fraction > 0 and key_is_heldout(normal_key(text), fraction)


def key_is_heldout(key: str | bytes, fraction: float) -> bool:
    """:func:`is_heldout` for a document whose ``normal_key`` is ``key`` (or its UTF-8)."""
    b = key.encode("utf-8") if isinstance(key, str) else key
    h = int.from_bytes(hashlib.sha256(b).digest()[:8], "big")
    return h / 2**64 < fraction


def language_budgets(cfg: DataConfig) -> dict[str, int | None]:
    """Tokens each language may contribute while reading, in order of first appearance.

    None means "all of it"; equal mixing without a budget is cut to the smallest
    language after reading (:func:`build_dataset`), when the sizes are known.
    """
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    total = cfg.max_tokens
    if cfg.mix == "concat" or total is None:
        return {lang: None for lang in langs}
    if cfg.mix == "equal":
        return {lang: total // len(langs) for lang in langs}
    weights = {lang: sum(s.weight or 0 for s in cfg.sources if s.lang == lang) for lang in langs}
    wsum = sum(weights.values())
    return {lang: int(total * w / wsum) for lang, w in weights.items()}


def build_dataset(
    cfg: DataConfig, tokenizer, seed: int = 0, progress: bool = False, **kwargs
) -> PreparedData:
    """The training blocks and held-out text of ``cfg`` (prepared once, then reused).

    Keyword arguments go to :func:`layra.prepare.prepare` (``workers``, ``say``, ``verify``).
    """
    from layra.prepare import prepare

    return prepare(cfg, tokenizer, seed, progress=progress, **kwargs)
