"""Documents, the train / held-out split by document, and deduplication.

    heldout_ids = assign_heldout({"a.html": 120, "b.html": 80}, fraction=0.1, seed=0)
    splits = split_languages(docs_by_lang, fraction=0.1, seed=0)
    splits = remove_leaks(splits)       # across sources: no held-out paragraph in any train

Pure functions: documents in, documents out. "The same paragraph" is
:func:`layra.neardup.normal_key` (case, punctuation and spacing ignored); a held-out
paragraph whose word-3-gram Jaccard with a training paragraph of the same language is
at least :data:`layra.neardup.THRESHOLD` is dropped as a near-duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from layra.errors import LayraError
from layra.neardup import near_duplicates, normal_key


@dataclass(frozen=True)
class Document:
    """A unit of text that goes to train or held-out as a whole.

    ``doc_id`` names the same document in every language of a source (a help
    page's path, a catalogue's name, a row number of parallel files), so that
    the split sends all translations of a document to the same side.
    """

    doc_id: str
    paragraphs: tuple[str, ...]

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.paragraphs)


@dataclass
class Split:
    """One language of one source after splitting and deduplication."""

    train: list[Document] = field(default_factory=list)
    heldout: list[Document] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    heldout_ids: list[str] = field(default_factory=list)  # the source's held-out documents

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


def _rank(seed: int, doc_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()


def check_fraction(fraction: float) -> float:
    """``fraction`` if it is a valid held-out share, i.e. in [0, 1)."""
    if not 0 <= fraction < 1:
        raise LayraError(f"held-out fraction must be in [0, 1), got {fraction}")
    return fraction


def assign_heldout(sizes: dict[str, int], fraction: float, seed: int) -> set[str]:
    """The documents held out: a seeded, order-independent choice by size.

    Documents are ranked by sha256(seed, doc_id) and taken in that order until
    their sizes reach ``fraction`` of the total. With at least two documents
    and ``0 < fraction < 1``, at least one document is held out and at least
    one is kept for training. The result depends only on the ids, their
    sizes, ``fraction`` and ``seed``.
    """
    if check_fraction(fraction) == 0 or not sizes:
        return set()
    if len(sizes) < 2:
        raise LayraError("cannot split a single document into train and held-out; add more text")
    order = sorted(sizes, key=lambda d: _rank(seed, d))
    target = fraction * sum(sizes.values())
    held: set[str] = set()
    total = 0
    for doc_id in order[:-1]:  # the last in rank order always trains
        if held and total >= target:
            break
        held.add(doc_id)
        total += sizes[doc_id]
    return held


def _unique(doc: Document, seen: set[str], split: Split, reason: str) -> Document | None:
    kept = []
    for p in doc.paragraphs:
        k = normal_key(p)
        if k in seen:
            split.drop(reason)
            continue
        seen.add(k)
        kept.append(p)
    return Document(doc.doc_id, tuple(kept)) if kept else None


def _drop_near(heldout: list[Document], train_paras, split: Split, reason: str) -> list[Document]:
    """``heldout`` without its paragraphs that are near-duplicates of ``train_paras``."""
    paras = [(d.doc_id, p) for d in heldout for p in d.paragraphs]
    near = near_duplicates([p for _, p in paras], train_paras)
    if near:
        split.drop(reason, len(near))
    kept: dict[str, list[str]] = {}
    for i, (doc_id, p) in enumerate(paras):
        if i not in near:
            kept.setdefault(doc_id, []).append(p)
    return [Document(d.doc_id, tuple(kept[d.doc_id])) for d in heldout if d.doc_id in kept]


def split_languages(
    docs: dict[str, list[Document]],
    fraction: float,
    seed: int,
    sizes: dict[str, int] | None = None,
) -> dict[str, Split]:
    """Split every language of one source by document, then deduplicate.

    The held-out choice (:func:`assign_heldout`) sees each document once, with
    its size from ``sizes`` (e.g. the English original's, so the split does
    not depend on which other languages were asked for) or else summed over
    languages; a document and its translations land on the same side.
    Within a language, a paragraph is kept once (first occurrence in train,
    in document order); a held-out paragraph that also occurs in train is
    dropped from held-out (``duplicate_of_train``), and so is one that is a
    near-duplicate of a training paragraph (``near_duplicate_of_train``,
    :mod:`layra.neardup`), so no held-out paragraph, nor a copy or a light edit
    of it, is ever trained on. Held-out paragraphs are dropped, not moved to
    train: the split stays by document, aligned across languages.
    """
    summed: dict[str, int] = {}
    for lang_docs in docs.values():
        for d in lang_docs:
            summed[d.doc_id] = summed.get(d.doc_id, 0) + d.chars
    sizes = {**summed, **(sizes or {})}
    held = assign_heldout(sizes, fraction, seed)
    out: dict[str, Split] = {}
    for lang, lang_docs in docs.items():
        split = Split(heldout_ids=sorted(held))
        seen: set[str] = set()
        for d in lang_docs:
            if d.doc_id not in held and (u := _unique(d, seen, split, "duplicate")):
                split.train.append(u)
        for d in lang_docs:
            if d.doc_id in held and (u := _unique(d, seen, split, "duplicate_of_train")):
                split.heldout.append(u)
        train_paras = (p for d in split.train for p in d.paragraphs)
        split.heldout = _drop_near(split.heldout, train_paras, split, "near_duplicate_of_train")
        out[lang] = split
    return out


def remove_leaks(sources: dict[str, dict[str, Split]]) -> dict[str, dict[str, Split]]:
    """Drop held-out paragraphs that occur in, or nearly duplicate, another source's training text.

    A model trained on one source and evaluated on another's held-out text
    must not have seen that text either (``in_other_source_train``,
    ``near_duplicate_in_other_source_train``). Modifies and returns ``sources``.
    """
    train_keys: dict[str, dict[str, set[str]]] = {}
    for name, langs in sources.items():
        for lang, split in langs.items():
            keys = {normal_key(p) for d in split.train for p in d.paragraphs}
            train_keys.setdefault(lang, {})[name] = keys
    for name, langs in sources.items():
        for lang, split in langs.items():
            others = set().union(*(k for n, k in train_keys[lang].items() if n != name))
            if not others:
                continue
            kept = []
            for d in split.heldout:
                paras = tuple(p for p in d.paragraphs if normal_key(p) not in others)
                split.drop("in_other_source_train", len(d.paragraphs) - len(paras))
                if paras:
                    kept.append(Document(d.doc_id, paras))
            other_train = (
                p
                for n, ls in sources.items()
                if n != name and lang in ls
                for d in ls[lang].train
                for p in d.paragraphs
            )
            split.heldout = _drop_near(
                kept, other_train, split, "near_duplicate_in_other_source_train"
            )
    return sources
