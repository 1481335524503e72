"""How layer-selective and layra train the input embeddings and the LM head.

    method.embeddings: full | frozen | lowlr | rows        (a training config's method section)

| treatment | embedding / head                                                          |
|-----------|---------------------------------------------------------------------------|
| full      | every row trains, like the rest (the paper)                               |
| frozen    | nothing trains: embedding and head stay bit-identical                     |
| lowlr     | every row trains at ``train.lr x method.embeddings_lr_scale`` (decay too)   |
| rows      | only the rows of tokens frequent in the training text and rare in the     |
|           | model's old languages (``method.embedding_rows``) train; every other row  |
|           | stays bit-identical                                                       |

Weight decay: the trained embedding / head decay at ``method.embeddings_weight_decay``
(None: ``train.weight_decay``, the paper's 0.1, like every other matrix). AdamW's
decoupled decay shrinks every row of a tensor it updates, so with decay the rows of
tokens never seen in training move too; with 0 a row that gets no gradient (an untied
input embedding's unseen tokens) stays bit-identical. The LM head gets a gradient on
every row (softmax), so its rows, and a tied embedding's, move either way.

Why ``rows`` needs more than a gradient mask: the LM head gets a gradient on every
vocabulary row (softmax), and AdamW's decoupled weight decay shrinks every row of a
tensor it updates, gradient or not. So the treatment (a) zeroes the gradient of the
other rows in a hook on the tensor, before clipping and the optimizer see it, and
(b) puts the tensor in a parameter group without weight decay. A row whose gradient
is always exactly zero keeps zero Adam moments, so its update is exactly zero: the
row is bit-identical after any number of steps. The chosen rows train without weight
decay. A tied embedding / head is one tensor, masked once; an untied head gets the
same row set as the embedding. The hook works for single-process and DDP training;
sharded engines (FSDP, DeepSpeed ZeRO) replace the tensors and are not supported.

The row set (``choose_rows``): token t is chosen iff ``c(t) >= min_count`` in the
training blocks and ``f(t) >= ratio * f_L(t)`` for every reference language L, where
f is a relative frequency (``layra.tokenlang``'s rule, with the training text as the
new language). Special tokens are never chosen.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from layra.arch import unwrap
from layra.config import MethodConfig, SourceConfig, embedding_treatment
from layra.errors import LayraError, require

TREATMENTS = ("full", "frozen", "lowlr", "rows")
# Per-parameter optimizer settings, read by layra.train's parameter groups:
# {"lr_scale": float, "weight_decay": float}.
OPTIM_ATTR = "layra_optim"
_TRAIN = "\x00training text"  # a key no reference language can have
# Set by `accelerate launch` for sharded engines, whose flat parameters skip tensor hooks.
_SHARDING_ENV = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


@dataclass(frozen=True)
class RowChoice:
    """The embedding / head rows ``rows`` trains, and the counts that chose them."""

    ids: list[int]
    ratio: float
    min_count: int
    train_tokens: int
    reference_tokens: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "rule": f"c_train(t) >= {self.min_count} and f_train(t) >= {self.ratio} * f_L(t) "
            "for every reference language L; special tokens never",
            "rows": len(self.ids),
            "train_tokens": self.train_tokens,
            "reference_tokens": dict(self.reference_tokens),
        }


def choose_rows(
    train_counts: Counter[int],
    reference_counts: Mapping[str, Counter[int]],
    ratio: float = 5.0,
    min_count: int = 3,
    exclude: Iterable[int] = (),
) -> list[int]:
    """Token ids frequent in the training text and rare in every reference text (pure).

    The rule of the module docstring, computed by :func:`layra.tokenlang.assign_tokens`
    with the training text as one more language. Returns sorted ids.
    """
    from layra.tokenlang import assign_tokens

    require(bool(reference_counts), "choosing embedding rows needs at least one reference text")
    counts = {_TRAIN: train_counts, **reference_counts}
    return assign_tokens(counts, ratio=ratio, min_count=min_count, exclude=set(exclude))[_TRAIN]


def block_counts(blocks, exclude: Iterable[int] = ()) -> Counter[int]:
    """Token counts of the training blocks (a tensor, or a :class:`layra.tokenstore.BlockStore`
    read a chunk at a time), ``exclude`` (special tokens) left out."""
    counts: Counter[int] = Counter()
    for chunk in blocks.iter_chunks() if hasattr(blocks, "iter_chunks") else [blocks]:
        ids, n = torch.unique(chunk.reshape(-1), return_counts=True)
        counts.update(dict(zip(ids.tolist(), n.tolist(), strict=True)))
    for i in set(exclude):
        counts.pop(i, None)
    return counts


def reference_counts(
    sources: Sequence[SourceConfig], tokenizer, max_tokens: int | None, batch_docs: int = 256
) -> dict[str, Counter[int]]:
    """Token counts per reference language (no special tokens added), at most ``max_tokens``."""
    from layra.data import iter_documents

    out: dict[str, Counter[int]] = {}
    for lang in dict.fromkeys(s.lang for s in sources):
        counts: Counter[int] = Counter()
        total = 0
        for src in (s for s in sources if s.lang == lang):
            docs = iter_documents(src)
            while max_tokens is None or total < max_tokens:
                batch = [d for _, d in zip(range(batch_docs), docs, strict=False)]
                if not batch:
                    break
                for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                    counts.update(ids)
                    total += len(ids)
        require(total > 0, f"method.embedding_rows.reference: the {lang} text has no tokens")
        out[lang] = counts
    return out


def select_rows(
    method: MethodConfig,
    tokenizer,
    blocks,
    say: Callable[[str], None] | None = None,
) -> RowChoice | None:
    """The row set of ``method`` (None unless ``method.embeddings`` is ``rows``).

    Raises :class:`LayraError` if no token passes the rule.
    """
    if embedding_treatment(method) != "rows":
        return None
    cfg = method.embedding_rows
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    train = block_counts(blocks, special)
    refs = reference_counts(cfg.reference, tokenizer, cfg.max_reference_tokens)
    ids = choose_rows(train, refs, cfg.ratio, cfg.min_count, special)
    if not ids:
        raise LayraError(
            f"method.embeddings=rows: no token is frequent in the training text and rare in the "
            f"reference text ({', '.join(refs)}) with ratio {cfg.ratio} and min_count "
            f"{cfg.min_count}; lower them or give more training text"
        )
    choice = RowChoice(
        ids=ids,
        ratio=cfg.ratio,
        min_count=cfg.min_count,
        train_tokens=sum(train.values()),
        reference_tokens={lang: sum(c.values()) for lang, c in refs.items()},
    )
    if say:
        ref = ", ".join(f"{k} {v:,}" for k, v in choice.reference_tokens.items())
        say(
            f"embedding rows: {len(ids):,} tokens chosen from {choice.train_tokens:,} training "
            f"tokens against reference tokens {ref}"
        )
    return choice


def embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The input-embedding and LM-head weights that train (a tied pair once).

    Under PEFT these are the ``modules_to_save`` copies, the tensors that train.
    """
    hf = unwrap(model)
    out: list[nn.Parameter] = []
    for module in (hf.get_input_embeddings(), hf.get_output_embeddings()):
        w = getattr(module, "weight", None)
        if w is not None and w.requires_grad and all(w is not p for p in out):
            out.append(w)
    return out


def row_keep(vocab: int, rows: Sequence[int]) -> torch.Tensor:
    """Boolean ``[vocab]`` mask, true on ``rows``; refuses ids outside the vocabulary."""
    bad = [r for r in rows if not 0 <= r < vocab]
    require(not bad, f"embedding rows {bad[:5]} are outside the vocabulary (0..{vocab - 1})")
    keep = torch.zeros(vocab, dtype=torch.bool)
    keep[torch.as_tensor(list(rows), dtype=torch.long)] = True
    return keep


def apply_treatment(
    model: nn.Module,
    treatment: str,
    lr_scale: float = 1.0,
    rows: Sequence[int] | None = None,
    weight_decay: float | None = None,
) -> list[nn.Parameter]:
    """Set up a treatment on the model's trainable embedding / head tensors.

    ``frozen`` needs nothing here (the method's ``requires_grad`` decides), nor
    ``full`` without ``weight_decay``; returns the tensors marked. For ``rows`` a
    gradient hook zeroes every other row and the tensors are marked for no weight
    decay; for ``lowlr`` they are marked for ``lr x lr_scale``; for ``full`` and
    ``lowlr`` a ``weight_decay`` other than None is marked as theirs (see
    :data:`OPTIM_ATTR`; None leaves ``train.weight_decay``).
    """
    require(treatment in TREATMENTS, f"unknown embedding treatment {treatment!r}")
    own: dict[str, float] = {}
    if weight_decay is not None and treatment in ("full", "lowlr"):
        own["weight_decay"] = float(weight_decay)
    if treatment == "lowlr":
        own["lr_scale"] = float(lr_scale)
    params = embedding_parameters(model) if own or treatment == "rows" else []
    if treatment in ("full", "lowlr"):
        for p in params:
            setattr(p, OPTIM_ATTR, dict(own))
    elif treatment == "rows":
        require(rows is not None, "embedding treatment rows needs the row ids")
        for var in _SHARDING_ENV:
            require(
                os.environ.get(var, "").lower() not in ("1", "true"),
                f"method.embeddings=rows needs whole tensors (one process or DDP); {var} is "
                "set, and FSDP / DeepSpeed shard them, which bypasses the row mask",
            )
        for p in params:
            keep = row_keep(p.shape[0], rows).to(p.device)[:, None]
            p.register_hook(lambda g, keep=keep: g.masked_fill(~keep, 0))
            setattr(p, OPTIM_ATTR, {"weight_decay": 0.0})
    return params
