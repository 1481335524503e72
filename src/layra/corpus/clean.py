"""Keep the prose of each language, without English left in the translations.

    docs, dropped = clean_languages(raw, reference="eng", min_words=5)

Pure: documents in, documents and drop counts out.
"""

from __future__ import annotations

from layra.corpus.split import Document
from layra.corpus.text import dedup_key, is_prose, looks_english, normalize


def clean_languages(
    raw: dict[str, list[Document]],
    reference: str | None = "eng",
    min_words: int = 5,
    one_line: bool = True,
) -> tuple[dict[str, list[Document]], dict[str, dict[str, int]]]:
    """Normalise, filter and de-anglicise every language's documents.

    - each paragraph is normalised (``one_line`` also joins its lines);
    - with ``min_words > 0``, paragraphs that are not prose are dropped
      (:func:`~layra.corpus.text.is_prose`: menus, headings, code);
    - with a ``reference`` language (English, the source text translators
      start from), a paragraph of another language that equals any reference
      paragraph is dropped as "untranslated", and one that still reads as
      English as "english".

    Documents left with no paragraph are omitted. Returns the cleaned
    documents and, per language, how many paragraphs each rule dropped.
    """
    ref_keys: set[str] = set()
    if reference is not None and reference in raw:
        ref_keys = {dedup_key(p) for d in raw[reference] for p in d.paragraphs}
    out: dict[str, list[Document]] = {}
    dropped: dict[str, dict[str, int]] = {}
    for lang, docs in raw.items():
        counts = {"not_prose": 0, "untranslated": 0, "english": 0}
        kept_docs = []
        for d in docs:
            kept = []
            for p in d.paragraphs:
                p = " ".join(p.split()) if one_line else normalize(p)
                if not p:
                    continue
                if min_words > 0 and not is_prose(p, min_words):
                    counts["not_prose"] += 1
                elif lang != reference and dedup_key(p) in ref_keys:
                    counts["untranslated"] += 1
                elif reference is not None and lang != reference and looks_english(p, lang):
                    counts["english"] += 1
                else:
                    kept.append(p)
            if kept:
                kept_docs.append(Document(d.doc_id, tuple(kept)))
        out[lang] = kept_docs
        dropped[lang] = counts
    return out, dropped
