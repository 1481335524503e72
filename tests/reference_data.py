"""The data definition as layra <= 0.1 computed it, in memory: the reference the prepared
store (layra.prepare) must reproduce block for block. Test-only; copied from layra.data
before the store replaced it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from layra.config import DataConfig, SourceConfig
from layra.data import is_heldout, iter_documents, language_budgets, source_format
from layra.errors import LayraError
from layra.neardup import near_duplicates


@dataclass
class LanguageStream:
    lang: str
    tokens: list[int] = field(default_factory=list)
    documents: int = 0
    heldout: list[str] = field(default_factory=list)
    heldout_near_duplicates: int = 0


def _training_documents(
    sources: list[SourceConfig], heldout_fraction: float, heldout: list[str], seed: int
) -> Iterator[str]:
    """A language's training documents in a seeded random order; held-out ones go to ``heldout``.

    Local sources are read whole and shuffled together (an exact uniform order);
    hub sources follow, each in ``datasets``' seeded streaming shuffle order.
    """
    local: list[str] = []
    hub = [s for s in sources if source_format(s) == "hf"]
    for src in (s for s in sources if s not in hub):
        for doc in iter_documents(src):
            (heldout if is_heldout(doc, heldout_fraction) else local).append(doc)
    random.Random(seed).shuffle(local)
    yield from local
    for src in hub:
        for doc in iter_documents(src, shuffle_seed=seed):
            if is_heldout(doc, heldout_fraction):
                heldout.append(doc)
            else:
                yield doc


def _tokenize_language(
    sources: list[SourceConfig],
    tokenizer,
    budget: int | None,
    heldout_fraction: float,
    heldout_max_docs: int,
    batch_docs: int = 256,
    seed: int = 0,
) -> LanguageStream:
    """Tokenize a seeded random sample of one language's documents, ``budget`` tokens.

    Documents are kept whole (but the last, cut at the budget) and taken in a
    random order fixed by ``seed`` (see the module docstring), so the budget is
    a sample of the whole text, not its first documents. Each document becomes
    the tokenizer's own encoding (with BOS where the model expects it) followed
    by EOS, so packed blocks have EOS between documents. A hub dataset is read
    only until the budget is met. Held-out documents that nearly duplicate a
    tokenized training document are dropped; the first ``heldout_max_docs`` of
    the rest, in source order, are kept.
    """
    out = LanguageStream(lang=sources[0].lang)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LayraError("the tokenizer has no EOS token; packing needs one between documents")
    heldout: list[str] = []
    used: list[str] = []  # training documents tokenized, in order
    starts: list[int] = []  # where each begins in out.tokens
    pending: list[str] = []

    def flush() -> None:
        enc = tokenizer(pending, add_special_tokens=True)["input_ids"]
        for ids in enc:
            starts.append(len(out.tokens))
            out.tokens.extend(ids)
            out.tokens.append(eos)
        used.extend(pending)
        pending.clear()

    for doc in _training_documents(sources, heldout_fraction, heldout, seed):
        pending.append(doc)
        if len(pending) >= batch_docs:
            flush()
            if budget is not None and len(out.tokens) >= budget:
                break
    if pending:
        flush()
    if not used:
        names = ", ".join(s.path for s in sources)
        raise LayraError(f"no training documents for language {out.lang} in {names} (empty file?)")
    if budget is not None:
        del out.tokens[budget:]
        # The last batch may reach past the budget: only documents with tokens kept count.
        del used[sum(st < budget for st in starts) :]
    out.documents = len(used)
    near = near_duplicates(heldout, used) if heldout else {}
    out.heldout_near_duplicates = len(near)
    out.heldout = [d for i, d in enumerate(heldout) if i not in near][:heldout_max_docs]
    return out


@dataclass
class PackedData:
    blocks: torch.Tensor  # [n, seq_len] int64
    block_lang: list[str]  # language of each block (same order)
    heldout: dict[str, list[str]]
    stats: dict


def build_dataset(cfg: DataConfig, tokenizer, seed: int = 0, progress: bool = False):
    """Read, hold out, tokenize, budget, pack and shuffle every source (see module doc)."""
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    budgets = language_budgets(cfg)
    streams: dict[str, LanguageStream] = {}
    for lang in langs:
        if progress:
            print(f"  reading and tokenizing {lang} ...", flush=True)
        srcs = [s for s in cfg.sources if s.lang == lang]
        streams[lang] = _tokenize_language(
            srcs, tokenizer, budgets[lang], cfg.heldout_fraction, cfg.heldout_max_docs, seed=seed
        )
    if cfg.mix == "equal" and cfg.max_tokens is None and len(langs) > 1:
        smallest = min(len(s.tokens) for s in streams.values())
        for s in streams.values():
            del s.tokens[smallest:]
    if cfg.mix == "concat" and cfg.max_tokens is not None:
        remaining = cfg.max_tokens
        for s in streams.values():
            del s.tokens[max(remaining, 0) :]
            remaining -= len(s.tokens)
    blocks, block_lang = [], []
    for lang, s in streams.items():
        n = len(s.tokens) // cfg.seq_len
        if n:
            blocks.append(
                torch.tensor(s.tokens[: n * cfg.seq_len], dtype=torch.long).view(n, cfg.seq_len)
            )
            block_lang.extend([lang] * n)
    if not blocks:
        sizes = ", ".join(f"{k}: {len(s.tokens)}" for k, s in streams.items())
        raise LayraError(
            f"not enough text for one block of data.seq_len={cfg.seq_len} tokens ({sizes})"
        )
    data = torch.cat(blocks)
    if cfg.shuffle:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(data), generator=g)
        data = data[perm]
        block_lang = [block_lang[i] for i in perm.tolist()]
    stats = {lang: (s.documents, s.heldout_near_duplicates) for lang, s in streams.items()}
    return data, block_lang, {k: s.heldout for k, s in streams.items()}, stats
