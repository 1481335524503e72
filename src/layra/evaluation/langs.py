"""Language codes: records use ISO 639-3 (``glg``), lm-eval task names use ISO 639-1 (``gl``).

Users may type either; :func:`normalize_lang` maps the codes it knows to ISO 639-3
and leaves other labels as they are (lower-cased), so ``--text gl=...`` and
``--langs glg`` land in the same report column.
"""

from __future__ import annotations

from layra.errors import LayraError

# ISO 639-3 -> ISO 639-1 for every language any supported lm-eval family covers.
ISO3_TO_ISO1: dict[str, str] = {
    "amh": "am", "ara": "ar", "ben": "bn", "bul": "bg", "cat": "ca", "deu": "de",
    "ell": "el", "eng": "en", "est": "et", "eus": "eu", "fra": "fr", "glg": "gl",
    "hat": "ht", "hin": "hi", "ind": "id", "ita": "it", "jpn": "ja", "kor": "ko",
    "mya": "my", "por": "pt", "que": "qu", "rus": "ru", "spa": "es", "swh": "sw",
    "tam": "ta", "tel": "te", "tha": "th", "tur": "tr", "urd": "ur", "vie": "vi",
    "yor": "yo", "zho": "zh",
}  # fmt: skip
ISO1_TO_ISO3: dict[str, str] = {v: k for k, v in ISO3_TO_ISO1.items()}
# Macro-language codes people type for the same thing.
ALIASES: dict[str, str] = {"swa": "swh", "cmn": "zho", "spn": "spa", "ger": "deu", "fre": "fra"}


def normalize_lang(code: str) -> str:
    """ISO 639-3 code for a known ISO 639-1/639-3 code; other labels lower-cased as given."""
    c = code.strip().lower()
    if not c or any(ch in c for ch in "/\\=,:+ "):
        raise LayraError(f"invalid language label {code!r} (use an ISO 639-3 code such as glg)")
    c = ALIASES.get(c, c)
    return ISO1_TO_ISO3.get(c, c)


def iso1(code: str) -> str | None:
    """The two-letter code lm-eval uses for ``code``, or None if unknown."""
    return ISO3_TO_ISO1.get(normalize_lang(code))
