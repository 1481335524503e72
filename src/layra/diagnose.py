"""Tokenizer diagnostics: how hard does the tokenizer cut each language?

    layra diagnose tokenizer MODEL --text eng=en.txt --text urd=ur.txt

Per language text (before anyone trains):

* ``tokens_per_word``: tokens / whitespace-separated words (fertility).
* ``chars_per_token`` and ``bytes_per_token``: characters (Unicode code points)
  and UTF-8 bytes of the whole text, whitespace included, per token.
* ``byte_share``: share of tokens that are not whole characters: SentencePiece
  byte-fallback tokens (``<0x..>``) and byte-level BPE tokens that decode to an
  incomplete UTF-8 sequence (U+FFFD when decoded alone).
* ``unk_share``: share of unknown tokens.

and each against the reference language (English by default). A language is
flagged as fragmented by the tokenizer (the paper's Urdu finding) if

* ``chars_per_token < min_char_ratio * reference chars_per_token`` (default
  0.5: each token covers less than half as much text as in the reference), or
* ``byte_share + unk_share >= max_byte_share`` (default 0.05).

Characters per token, not tokens per word, decides: agglutinative languages have
long words (Swahili), which raises tokens per word without any fragmentation.
Scripts written without spaces (Thai, Chinese, Japanese) make tokens per word
meaningless and have few characters per token by nature; read them with care.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from layra.errors import require

MIN_CHAR_RATIO = 0.5
MAX_BYTE_SHARE = 0.05
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class TextStats:
    """Counts for one language's text under one tokenizer."""

    chars: int
    bytes: int
    words: int
    tokens: int
    byte_tokens: int
    unk_tokens: int

    @property
    def tokens_per_word(self) -> float:
        return self.tokens / self.words if self.words else float("nan")

    @property
    def chars_per_token(self) -> float:
        return self.chars / self.tokens

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens

    @property
    def byte_share(self) -> float:
        return self.byte_tokens / self.tokens

    @property
    def unk_share(self) -> float:
        return self.unk_tokens / self.tokens

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "tokens_per_word": self.tokens_per_word,
            "chars_per_token": self.chars_per_token,
            "bytes_per_token": self.bytes_per_token,
            "byte_share": self.byte_share,
            "unk_share": self.unk_share,
        }


def is_byte_piece(tokenizer, token_id: int) -> bool:
    """True for a token that is less than a whole character (see module docstring)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    if isinstance(piece, str) and _BYTE_TOKEN.match(piece):
        return True
    return "\ufffd" in tokenizer.decode([token_id])


def text_stats(tokenizer, text: str) -> TextStats:
    """Token counts of ``text`` (no special tokens added). Raises LayraError for empty text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    require(len(ids) > 0, "text has no tokens")
    counts = Counter(ids)
    unk = getattr(tokenizer, "unk_token_id", None)
    byte_tokens = sum(n for t, n in counts.items() if t != unk and is_byte_piece(tokenizer, t))
    return TextStats(
        chars=len(text),
        bytes=len(text.encode("utf-8")),
        words=len(text.split()),
        tokens=len(ids),
        byte_tokens=byte_tokens,
        unk_tokens=counts.get(unk, 0) if unk is not None else 0,
    )


def judge(
    stats: Mapping[str, TextStats],
    reference: str,
    min_char_ratio: float = MIN_CHAR_RATIO,
    max_byte_share: float = MAX_BYTE_SHARE,
) -> dict:
    """Compare each language with the reference and flag fragmentation (pure).

    Returns ``{"reference", "thresholds", "languages": {L: {...stats, "vs_reference":
    {"tokens_per_word", "chars_per_token", "bytes_per_token"} ratios, "flagged",
    "reasons"}}}``.
    """
    require(
        reference in stats,
        f"reference language {reference!r} is not among the texts "
        f"({', '.join(stats)}); add --text {reference}=PATH or pick --reference",
    )
    ref = stats[reference]
    out = {}
    for lang, s in stats.items():
        ratios = {
            "tokens_per_word": s.tokens_per_word / ref.tokens_per_word,
            "chars_per_token": s.chars_per_token / ref.chars_per_token,
            "bytes_per_token": s.bytes_per_token / ref.bytes_per_token,
        }
        reasons = []
        if ratios["chars_per_token"] < min_char_ratio:
            reasons.append(
                f"{s.chars_per_token:.2f} chars/token is {ratios['chars_per_token']:.2f}× "
                f"{reference}'s (< {min_char_ratio})"
            )
        if s.byte_share + s.unk_share >= max_byte_share:
            reasons.append(
                f"{100 * (s.byte_share + s.unk_share):.1f}% byte-piece/unknown tokens "
                f"(>= {100 * max_byte_share:.0f}%)"
            )
        out[lang] = {
            **s.as_dict(),
            "vs_reference": ratios,
            "flagged": bool(reasons),
            "reasons": reasons,
        }
    return {
        "reference": reference,
        "thresholds": {"min_char_ratio": min_char_ratio, "max_byte_share": max_byte_share},
        "languages": out,
    }


def diagnose_tokenizer(
    tokenizer,
    texts: Mapping[str, str],
    reference: str = "eng",
    min_char_ratio: float = MIN_CHAR_RATIO,
    max_byte_share: float = MAX_BYTE_SHARE,
) -> dict:
    """Statistics and fragmentation flags for ``texts`` (language -> text); see :func:`judge`."""
    stats = {}
    for lang, text in texts.items():
        require(text.strip() != "", f"the text for {lang} is empty")
        stats[lang] = text_stats(tokenizer, text)
    return judge(stats, reference, min_char_ratio, max_byte_share)


def markdown_table(report: Mapping) -> str:
    """The diagnosis as a Markdown table, one row per language, flagged ones marked."""
    ref = report["reference"]
    head = (
        f"| language | words | tokens | tokens/word | chars/token | bytes/token | byte-piece % "
        f"| unk % | tokens/word vs {ref} | chars/token vs {ref} | fragmented |"
    )
    rows = [head, "|" + "---|" * 11]
    for lang, r in report["languages"].items():
        v = r["vs_reference"]
        flag = "**yes**: " + "; ".join(r["reasons"]) if r["flagged"] else "no"
        rows.append(
            f"| {lang} | {r['words']} | {r['tokens']} | {r['tokens_per_word']:.2f} "
            f"| {r['chars_per_token']:.2f} | {r['bytes_per_token']:.2f} "
            f"| {100 * r['byte_share']:.1f} | {100 * r['unk_share']:.1f} "
            f"| {v['tokens_per_word']:.2f}× | {v['chars_per_token']:.2f}× | {flag} |"
        )
    return "\n".join(rows) + "\n"


def diagnosis_record(model: str, report: Mapping, texts: Mapping[str, tuple[str, str]]) -> dict:
    """The JSON ``layra diagnose tokenizer --out`` writes: ``report`` with the model, each
    text's path and hash (``texts``: language -> (path, text)) and provenance."""
    from layra.lens import text_sha256
    from layra.provenance import provenance

    return {
        "format": "layra-tokenizer-diagnosis",
        "version": 1,
        "model": model,
        **report,
        "texts": {
            lang: {"path": str(p), "sha256": text_sha256(text)} for lang, (p, text) in texts.items()
        },
        "provenance": provenance(),
    }
