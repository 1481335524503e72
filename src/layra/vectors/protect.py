"""Which embedding / LM-head rows a vector must leave alone.

The LM head gets a gradient on every vocabulary row, so a trained head (and
embedding) delta is dense — it moves special and chat-template tokens too,
which an instruct model relies on. ``"special"`` protects the
tokenizer's special tokens plus every added token that appears in its chat
template; ``"none"`` protects nothing; explicit token ids can be added.

The default, ``"auto"``, is ``"none"`` for Eq. 1–3 — the paper's arithmetic has no
exclusion, and ``<bos>`` trains on every document — and ``"special"`` only for an
instruct graft (Eq. 4), whose model was not the vector's start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from layra.errors import LayraError

DEFAULT = "auto"


def default_spec(spec: str | Iterable[int] | None, instruct: bool) -> str | Iterable[int] | None:
    """``spec`` with ``"auto"`` resolved: ``"special"`` for an instruct graft, else ``"none"``."""
    if isinstance(spec, str) and spec.strip() == "auto":
        return "special" if instruct else "none"
    return spec


def special_token_ids(tokenizer: Any = None, config: Any = None) -> list[int]:
    """Ids of special tokens and chat-template tokens (from ``config`` if no tokenizer)."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(i for i in tokenizer.all_special_ids if i is not None)
        template = tokenizer.chat_template or ""
        if isinstance(template, dict):
            template = " ".join(template.values())
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
            if tok.special or (tok.content and tok.content in template):
                ids.add(int(i))
    elif config is not None:
        cfg = getattr(config, "text_config", None) or config
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(cfg, key, None)
            ids.update(v if isinstance(v, list) else [] if v is None else [v])
    return sorted(ids)


def resolve_rows(
    spec: str | Iterable[int] | None, vocab_size: int, tokenizer: Any = None, config: Any = None
) -> list[int]:
    """The protected row ids for ``spec``: ``"special"``, ``"none"``, ids, or a mix.

    ``"auto"`` must be resolved first (:func:`default_spec`).

    A string is comma-separated, e.g. ``"special,17,42"``. Raises
    :class:`LayraError` for an unknown word or an id outside the vocabulary.
    """
    if spec is None:
        return []
    items: list[Any] = spec.split(",") if isinstance(spec, str) else list(spec)
    rows: set[int] = set()
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        if item == "auto":
            raise LayraError("protected rows: 'auto' cannot be combined with other items")
        if item == "special":
            rows.update(special_token_ids(tokenizer, config))
        elif item in ("none", ""):
            continue
        else:
            try:
                rows.add(int(item))
            except (TypeError, ValueError) as e:
                raise LayraError(
                    f"protected rows: {item!r} is not 'special', 'none', 'auto' or a token id"
                ) from e
    bad = [r for r in rows if not 0 <= r < vocab_size]
    if bad:
        raise LayraError(f"protected rows {bad} are outside the vocabulary (0..{vocab_size - 1})")
    return sorted(rows)


def describe_protected(rows: list[int], spec: Any = None) -> str:
    """What an apply left untouched, in one line: "none" unless rows were protected."""
    if not rows:
        return "protected rows: none (every embedding / head row gets its delta, as in Eq. 1–3)"
    shown = ", ".join(map(str, rows[:20])) + (", ..." if len(rows) > 20 else "")
    how = f" (--protect-rows {spec})" if spec is not None else ""
    return f"protected rows: {len(rows)} embedding / head rows kept as they were{how}: {shown}"


def as_index(rows: list[int]) -> torch.Tensor | None:
    return torch.tensor(rows, dtype=torch.long) if rows else None
