"""Paragraph-level judgements: normalise, compare, keep or drop.

    key = dedup_key(p)                       # what counts as "the same paragraph"
    ok = is_prose(p, min_words=5)            # not a menu entry, heading or code line
    english = looks_english(p, "glg")        # English left in a Galician file

Pure functions of strings, shared by every corpus source.
"""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u3000]+")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """NFC text with runs of spaces collapsed, lines stripped and blank lines removed.

    A paragraph never contains a blank line after this, because corpus files
    use blank lines to separate paragraphs.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def dedup_key(text: str) -> str:
    """The identity of a paragraph for deduplication and leak checks.

    Case and whitespace differences do not make two paragraphs different.
    """
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


# Characters that, outside prose, mark code, markup or placeholders.
_CODE_MARKS = re.compile(r"[{}<>$=\\|]|\b\w+\(\)|\b\w+_\w+\b|%[sd1-9]")


def is_prose(text: str, min_words: int = 5) -> bool:
    """Whether a paragraph reads as running text.

    Keeps paragraphs with at least ``min_words`` words, mostly letters, and no
    marks of code or leftover markup (``{ } < > $ = \\ |``, ``name()``,
    ``snake_case``, printf placeholders). Headings, menu entries and table
    cells of one or two words fail the word count.
    """
    words = _WORD.findall(text)
    if len(words) < min_words:
        return False
    if _CODE_MARKS.search(text):
        return False
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters >= 0.7 * len(visible)


# Frequent short function words. Enough to tell English from the languages
# layra builds corpora for; not a language identifier.
_STOPWORDS: dict[str, frozenset[str]] = {
    "eng": frozenset("the of and to is in that it for you with this are be on or by can".split()),
    "glg": frozenset("o a os as do da dos das e é que en no na un unha para con se non ao".split()),
    "spa": frozenset("el la los las de del y es que en un una para con se no al por".split()),
    "por": frozenset("o a os as do da dos das e é que em no na um uma para com se não ao".split()),
    "deu": frozenset("der die das und ist zu den mit sie ein eine nicht von für auf im".split()),
    "fra": frozenset("le la les de des et est que en un une pour avec se ne pas du au".split()),
    "ita": frozenset("il la le di del della e è che in un una per con si non al".split()),
    "hin": frozenset("है के की में और का से को यह एक पर हैं लिए भी".split()),
}


def looks_english(text: str, lang: str) -> bool:
    """Whether a paragraph meant to be in ``lang`` is in fact English.

    Counts English function words against ``lang``'s; English wins when it has
    at least two hits and more than ``lang``. Catches untranslated paragraphs
    that are not verbatim copies of the current English original (older
    wording, edited punctuation). Always false for English itself.
    """
    if lang == "eng" or lang not in _STOPWORDS:
        return False
    words = [w.casefold() for w in _WORD.findall(text)]
    eng = sum(w in _STOPWORDS["eng"] for w in words)
    own = sum(w in _STOPWORDS[lang] for w in words)
    return eng >= 2 and eng > own
