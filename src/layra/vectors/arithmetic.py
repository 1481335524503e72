"""Language-vector arithmetic as pure tensor functions (no I/O), all in float32.

A delta of one weight matrix is either dense or low-rank, ``Δ = scale · B @ A``
with ``A: (r, in)`` and ``B: (out, r)``. Low-rank deltas stay factored: they are
materialised a block of rows at a time, only when added to a weight, and a
weighted sum of low-rank deltas is again low-rank (factors concatenated), so
combining is exact — unlike PEFT's ``add_weighted_adapter(..., "linear")``,
which mixes A and B separately and so adds cross terms (``ΣB_i @ ΣA_j``, i ≠ j).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from layra.errors import LayraError

FP32 = torch.float32
# float32 bytes per block of rows, the unit every streaming pass works in. Applying: 16 MiB
# bounds peak memory and stays in malloc's reusable range (larger blocks are fresh mmaps,
# paying page faults every time). Writing a delta (extract, combine): 64 MiB.
APPLY_CHUNK_BYTES = 16 << 20
WRITE_CHUNK_BYTES = 64 << 20


def row_blocks(rows: int, row_elems: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges covering ``rows`` rows, each at most ``chunk_bytes`` of float32
    (at least one row). Every streaming pass over a weight (extract, combine, apply) uses it."""
    step = max(1, chunk_bytes // max(1, 4 * row_elems))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def lowrank_rows(
    A: torch.Tensor, B: torch.Tensor, scale: float, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """Rows ``start:stop`` of ``scale · B @ A`` in float32."""
    return (B[start:stop].to(FP32) @ A.to(FP32)).mul_(scale)


def concat_lowrank(
    parts: Sequence[tuple[float, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(A, B)`` with ``B @ A == Σ coef_i · B_i @ A_i`` exactly (scale 1).

    ``parts`` are ``(coef, A_i, B_i)``; the coefficient (λ times the part's own
    scale) is folded into ``B_i``. Rank of the result is the sum of the ranks.
    """
    if not parts:
        raise ValueError("concat_lowrank needs at least one part")
    A = torch.cat([a.to(FP32) for _, a, _ in parts], dim=0)
    B = torch.cat([b.to(FP32) * c for c, _, b in parts], dim=1)
    return A, B


def add_lowrank_(
    acc: torch.Tensor, A: torch.Tensor, B: torch.Tensor, coef: float, start: int = 0
) -> torch.Tensor:
    """``acc += coef · B[start:start+len(acc)] @ A`` in place, without materialising the product."""
    return acc.addmm_(B[start : start + acc.shape[0]].to(FP32), A.to(FP32), alpha=coef)


def weighted_sum(terms: Iterable[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """``Σ λ_i · t_i`` in float32."""
    out = None
    for lam, t in terms:
        t = t.to(FP32)
        out = t * lam if out is None else out.add_(t, alpha=lam)
    if out is None:
        raise ValueError("weighted_sum needs at least one term")
    return out


def zero_rows(
    delta: torch.Tensor, rows: torch.Tensor | None, start: int = 0, what: str = "a delta"
) -> torch.Tensor:
    """Zero the given (global) rows of a block of rows that begins at ``start``, in place.

    How special-token rows of an embedding / LM head delta are left untouched.
    The zeroed rows are checked for NaN/inf first: a broken vector is refused
    even where it would not be applied.
    """
    if rows is None or rows.numel() == 0 or delta.dim() == 0:
        return delta
    local = rows[(rows >= start) & (rows < start + delta.shape[0])] - start
    if local.numel():
        require_finite(delta[local], f"{what} (a protected row)")
        delta[local] = 0
    return delta


def require_finite(t: torch.Tensor, what: str) -> None:
    """Raise :class:`LayraError` if ``t`` holds NaN or infinity."""
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return  # one reduction: any NaN/inf makes the sum NaN/inf
    if not bool(torch.isfinite(t).all()):  # the sum may have overflowed; look closer
        raise LayraError(f"{what} contains NaN or infinity")
