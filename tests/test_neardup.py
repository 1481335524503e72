"""The batch paths of layra.neardup give exactly what the per-text definitions give."""

import random

import pytest

from layra import neardup
from layra.neardup import NearDupIndex, jaccard, joined_words, shingles, words

EDGE_TEXTS = [
    "",
    "  ,, ",
    "Hello, World!",
    "Straße ΣΑΣ İstanbul ﬁnance … Ｆｕｌｌ ｗｉｄｔｈ ǅ",  # folds that change length; NFKC
    "\u0301abc abc\u0301 a-b c'd _under_score 1² ½ ①",  # combining marks, digits, underscore
    "emoji 😀 𐐀𐐨 Deseret",  # outside the BMP, with case
    "x\ud800y z",  # a lone surrogate (possible in JSON text): not a word character
    "tab\tnew\nline\u00a0nbsp\u2028sep",
]


def test_joined_words_match_words():
    rng = random.Random(0)
    alpha = "aAbB ßé\u0301,.\t\n😀ΣİﬁΩ_1²\u00a0\u2028"
    texts = EDGE_TEXTS + ["".join(rng.choices(alpha, k=rng.randint(0, 12))) for _ in range(3000)]
    want = [" ".join(words(t)).encode("utf-8", "surrogatepass") for t in texts]
    assert joined_words(texts) == want
    # a text holding NUL (the separator of the batch path) is done one by one, the same
    assert joined_words(texts + ["a\0b"]) == want + [b"a b"]


def _brute(held: list[str], text: str, t: float) -> dict[int, float]:
    y = shingles(text)
    return {i: j for i, x in enumerate(held) if (j := jaccard(shingles(x), y)) >= t and y}


@pytest.mark.parametrize(
    ("frequent", "bucket_bits"),
    [(32, 24), (0, 24), (1, 24), (32, 2), (0, 1)],  # 2 buckets, 4: most n-grams collide
)
def test_batch_matches_are_exact(monkeypatch, frequent, bucket_bits):
    """Texts of 6 words, so near-duplicates, shared and frequent n-grams abound; hash
    buckets as few as 1 make every n-gram collide: the answer must not change."""
    monkeypatch.setattr(neardup, "FREQUENT", frequent)
    monkeypatch.setattr(neardup, "MAX_BUCKET_BITS", bucket_bits)
    rng = random.Random(frequent * 100 + bucket_bits)
    vocab = ["Uno", "dous,", "tres", "catro.", "cinco", "seis!"]

    def text() -> str:
        return " ".join(rng.choices(vocab, k=rng.choice([0, 1, 2, 3, 4, 6, 9, 14])))

    def edit(t: str) -> str:  # a near-duplicate, or not: a word changed, dropped or added
        w = t.split()
        i = rng.randrange(len(w) + 1)
        return " ".join(w[:i] + rng.choices(vocab, k=rng.randint(0, 2)) + w[i + 1 :])

    held = [text() for _ in range(40)] + ["Uno dous"] * 40  # a frequent short held-out text
    train = [text() for _ in range(300)] + [edit(rng.choice(held)) for _ in range(300)]
    index = NearDupIndex(held, threshold=0.5)
    keys = joined_words(train)
    got = dict(index.matches_texts(keys))
    want = {i: m for i, y in enumerate(train) if (m := _brute(held, y, 0.5))}
    assert got == want
    assert len(want) > 50  # the case is not vacuous
    assert set(want) <= set(index.possible(keys).tolist())
    if bucket_bits == 24:  # with real buckets the bound does its job
        assert len(index.possible(keys)) < 2 * len(want) + 20
    # with ``skip`` (pass 3): each held-out text reported once, by its first match
    found: dict[int, float] = {}
    for _, m in index.matches_texts(keys, skip=found):
        found.update(m)
    assert set(found) == {h for m in want.values() for h in m}


def test_batch_matches_edge_cases():
    index = NearDupIndex(["", "!!"])  # no held-out text has a word
    assert list(index.matches_texts([b"a b c", b""])) == []
    assert len(index.possible([b"a b c"])) == 0
    index = NearDupIndex(["a b c d", "x y"])
    assert len(index.possible([])) == 0
    assert len(index.possible([b"", b"q r s"])) == 0  # nothing in common
    got = list(index.matches_texts([b"", b"a b c d", b"x y", b"x", b"a b c"]))
    assert got == [(1, {0: 1.0}), (2, {1: 1.0}), (4, {0: 0.5})]
