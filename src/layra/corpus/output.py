"""Split, deduplicate and write a corpus directory with its manifest.

    out = write_corpus(out, {"libreoffice": docs_by_lang}, request, ...)

Layout (see docs/corpus.md)::

    OUT/SOURCE/LANG/train.txt      paragraphs separated by blank lines, UTF-8
    OUT/SOURCE/LANG/heldout.txt    documents never in any train.txt
    OUT/LICENSES/NAME              licence notices of the text's sources
    OUT/manifest.json              request, packages, counts, sha256, provenance

The directory appears atomically, so one with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from layra.atomic import atomic_dir, atomic_write_json
from layra.corpus.split import Document, Split, check_fraction, remove_leaks, split_languages
from layra.errors import LayraError
from layra.neardup import NGRAM, THRESHOLD
from layra.provenance import provenance

# 2: held-out paragraphs that nearly duplicate a training paragraph are dropped (layra.neardup).
FORMAT = "layra-corpus/2"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def reuse_existing(out: Path, request: dict[str, Any], overwrite: bool) -> Path | None:
    """``out`` if it already holds the corpus ``request`` describes, else None.

    An existing directory built from a different request, or one that is not a
    corpus, raises :class:`LayraError` unless ``overwrite`` is set.
    """
    if overwrite or not out.exists():
        return None
    manifest = out / "manifest.json"
    if not manifest.is_file():
        raise LayraError(
            f"output {out} exists and is not a corpus (pass --overwrite to replace it)"
        )
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LayraError(f"{manifest} is unreadable ({e}); pass --overwrite to rebuild") from e
    if old.get("format") != FORMAT:
        raise LayraError(
            f"output {out} holds a corpus of format {old.get('format')} (this layra writes "
            f"{FORMAT}: its held-out text may hold near-duplicates of training text); "
            "pass --overwrite to rebuild it"
        )
    if old.get("request") != _jsonable(request):
        raise LayraError(
            f"output {out} holds a corpus built with other settings; "
            "pass --overwrite to replace it or choose another --out"
        )
    return out


def _text(docs: list[Document]) -> str:
    paras = [p for d in docs for p in d.paragraphs]
    return "\n\n".join(paras) + "\n" if paras else ""


def _stats(docs: list[Document], text: str) -> dict[str, Any]:
    return {
        "documents": len(docs),
        "paragraphs": sum(len(d.paragraphs) for d in docs),
        "chars": sum(d.chars for d in docs),
        "bytes": len(text.encode("utf-8")),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }


def _write_split(tmp: Path, name: str, lang: str, split: Split) -> dict[str, Any]:
    """``NAME/LANG/{train,heldout}.txt`` under ``tmp``; their manifest entries."""
    lang_dir = tmp / name / lang
    lang_dir.mkdir(parents=True)
    info: dict[str, Any] = {}
    for part, docs in (("train", split.train), ("heldout", split.heldout)):
        text = _text(docs)
        (lang_dir / f"{part}.txt").write_text(text, encoding="utf-8")
        info[part] = {"path": f"{name}/{lang}/{part}.txt", **_stats(docs, text)}
    return info


def write_corpus(
    out: Path,
    sources: dict[str, dict[str, list[Document]]],
    request: dict[str, Any],
    *,
    heldout_fraction: float,
    seed: int,
    dropped: dict[str, dict[str, dict[str, int]]] | None = None,
    packages: dict[str, list[dict[str, str]]] | None = None,
    licenses: dict[str, str] | None = None,
    sizes: dict[str, dict[str, int]] | None = None,
    overwrite: bool = False,
) -> Path:
    """Split every source by document, deduplicate, and write the corpus atomically.

    ``sources`` maps source name -> language -> cleaned documents; ``dropped``
    holds the cleaning step's counts (same nesting), merged into the manifest
    with the split's own. ``request`` is everything that determines the
    content; it is stored so a later identical request can reuse the output.
    ``sizes`` (per source, document id -> size) fixes the documents and sizes
    the held-out rule sees (:func:`~layra.corpus.split.split_languages`).
    """
    check_fraction(heldout_fraction)
    splits: dict[str, dict[str, Split]] = {
        name: split_languages(langs, heldout_fraction, seed, (sizes or {}).get(name))
        for name, langs in sources.items()
    }
    remove_leaks(splits)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "request": _jsonable(request),
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "near_duplicates": {
            "rule": f"a held-out paragraph with word-{NGRAM}-gram Jaccard >= {THRESHOLD} with a "
            "training paragraph of the same language (any source) is dropped",
            "ngram": NGRAM,
            "jaccard": THRESHOLD,
        },
        "sources": {},
        "licenses": sorted(licenses or {}),
        "provenance": provenance(seed=seed),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for name, langs in splits.items():
            entry: dict[str, Any] = {"packages": (packages or {}).get(name, []), "languages": {}}
            for lang, split in langs.items():
                info = _write_split(tmp, name, lang, split)
                info["dropped"] = {**(dropped or {}).get(name, {}).get(lang, {}), **split.dropped}
                entry["languages"][lang] = info
                entry["heldout_documents"] = split.heldout_ids
            manifest["sources"][name] = entry
        for lic_name, text in (licenses or {}).items():
            (tmp / "LICENSES").mkdir(exist_ok=True)
            (tmp / "LICENSES" / lic_name).write_text(text, encoding="utf-8")
        atomic_write_json(tmp / "manifest.json", manifest)
    return out


def summary_lines(out: Path) -> list[str]:
    """A human-readable table of a corpus's sizes, from its manifest."""
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    lines = [f"{'source':<12} {'lang':<5} {'part':<8} {'docs':>7} {'paragraphs':>11} {'chars':>11}"]
    for name, entry in m["sources"].items():
        for lang, info in entry["languages"].items():
            for part in ("train", "heldout"):
                s = info[part]
                lines.append(
                    f"{name:<12} {lang:<5} {part:<8} {s['documents']:>7} "
                    f"{s['paragraphs']:>11} {s['chars']:>11}"
                )
    return lines
