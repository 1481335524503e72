"""Which vocabulary tokens belong to which language, from per-language text.

    tmap = token_language_map(tok, {"eng": en_text, "glg": gl_text, "spa": es_text})
    tmap.ids["glg"]          # token ids that mark Galician text

The rule (also in docs/lens.md). Tokenize each language's text with the model's
tokenizer (no special tokens added). For token ``t`` let ``c_L(t)`` be its count
in language ``L``'s text and ``f_L(t) = c_L(t) / N_L`` its relative frequency
(``N_L`` = tokens in that text). Then ``t`` belongs to ``L`` if and only if

* ``c_L(t) >= min_count`` (default 3), and
* ``f_L(t) >= ratio * f_M(t)`` for every other language ``M`` given (default
  ratio 5; a token absent from ``M``'s text has ``f_M = 0`` and passes).

Special tokens never belong to a language. With ``ratio > 1`` a token belongs to
at most one language; tokens common to several (punctuation, digits, shared
words, English loan-words in the other texts) belong to none. So "L's tokens"
means the tokens *distinctive* of L among the languages given: for close
relatives (Galician, Spanish, Portuguese) the shared ones drop out, which is
what a lens measuring "which language is this state in" needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from layra.errors import LayraError, require

RATIO = 5.0
MIN_COUNT = 3


@dataclass(frozen=True)
class TokenMap:
    """Token ids distinctive of each language, and the rule that chose them."""

    ids: dict[str, list[int]]  # language -> sorted token ids
    ratio: float
    min_count: int
    tokens_counted: dict[str, int] = field(default_factory=dict)  # N_L per language

    def sizes(self) -> dict[str, int]:
        return {lang: len(ids) for lang, ids in self.ids.items()}

    def summary(self) -> dict:
        """JSON-able description (rule and sizes, not the id lists)."""
        return {
            "rule": f"c_L(t) >= {self.min_count} and f_L(t) >= {self.ratio} * f_M(t) for all M != L",
            "ratio": self.ratio,
            "min_count": self.min_count,
            "tokens_counted": dict(self.tokens_counted),
            "sizes": self.sizes(),
        }


def token_counts(tokenizer, text: str) -> Counter[int]:
    """How often each token id occurs when ``text`` is tokenized (no special tokens)."""
    return Counter(tokenizer(text, add_special_tokens=False)["input_ids"])


def assign_tokens(
    counts: Mapping[str, Counter[int]],
    ratio: float = RATIO,
    min_count: int = MIN_COUNT,
    exclude: set[int] | frozenset[int] = frozenset(),
) -> dict[str, list[int]]:
    """Apply the rule of this module to per-language token counts (pure).

    Returns language -> sorted ids. Needs at least two languages: with one there
    is nothing to be distinctive against.
    """
    require(len(counts) >= 2, "a token→language map needs text in at least two languages")
    require(
        ratio > 1,
        f"ratio must be > 1 (got {ratio}): otherwise a token could belong to two languages",
    )
    require(min_count >= 1, f"min_count must be >= 1 (got {min_count})")
    totals = {lang: sum(c.values()) for lang, c in counts.items()}
    for lang, n in totals.items():
        require(n > 0, f"the text for {lang} has no tokens")
    out: dict[str, list[int]] = {}
    for lang, c in counts.items():
        mine = []
        for t, n in c.items():
            if n < min_count or t in exclude:
                continue
            # Compare f_L >= ratio * f_M as n_L * N_M >= ratio * n_M * N_L: no division by zero.
            if all(
                n * totals[m] >= ratio * counts[m].get(t, 0) * totals[lang]
                for m in counts
                if m != lang
            ):
                mine.append(t)
        out[lang] = sorted(mine)
    return out


def token_language_map(
    tokenizer,
    texts: Mapping[str, str],
    ratio: float = RATIO,
    min_count: int = MIN_COUNT,
) -> TokenMap:
    """The token→language map of ``tokenizer`` on ``texts`` (language -> text)."""
    counts = {lang: token_counts(tokenizer, text) for lang, text in texts.items()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = assign_tokens(counts, ratio=ratio, min_count=min_count, exclude=special)
    if not any(ids.values()):
        raise LayraError(
            f"no token is distinctive of any language (ratio {ratio}, min count {min_count}); "
            "give longer texts or lower --min-count"
        )
    totals = {lang: sum(c.values()) for lang, c in counts.items()}
    return TokenMap(ids=ids, ratio=ratio, min_count=min_count, tokens_counted=totals)
