"""One vector from a weighted sum of vectors: ``Σ λ_i Δ_i`` (scale with one, negate with λ<0).

    layra vector combine vectors/gl:0.5 vectors/sw:0.5 --out vectors/gl+sw   # merge, Eq. 3
    layra vector combine vectors/gl:-1 --out vectors/minus-gl

Low-rank parts of the same weight stay low-rank (factors concatenated, exact);
a weight that is dense in any input becomes dense, streamed a block of rows at
a time. All inputs must share the start model's weights (``force`` waives that
— e.g. to fold a series Δ2, trained from θ′, into one vector from θ0 — and is
recorded), and always its architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layra.atomic import atomic_dir
from layra.errors import LayraError
from layra.lock import holds_output_lock
from layra.provenance import provenance
from layra.vectors.arithmetic import FP32, concat_lowrank
from layra.vectors.format import (
    Entry,
    Vector,
    VectorSpec,
    VectorWriter,
    load_weighted,
    planned_keys,
    write_delta,
)


def _check_inputs(weighted: list[tuple[Vector, float]], force: bool) -> bool:
    """Raise unless the vectors can be summed; return whether ``force`` was needed."""
    first = weighted[0][0]
    forced = False
    for v, _ in weighted[1:]:
        if v.start.get("arch") != first.start.get("arch"):
            raise LayraError(f"vectors {first.label} and {v.label} are for different architectures")
        if v.start.get("weights") != first.start.get("weights"):
            if not force:
                raise LayraError(
                    f"vectors {first.label} and {v.label} start from different weights "
                    "(pass --force to sum them anyway)"
                )
            forced = True
    for v, _ in weighted:
        for e in v.entries.values():
            other = next((w.entries[e.name] for w, _ in weighted if e.name in w.entries), e)
            if other.shape != e.shape or other.aliases != e.aliases:
                raise LayraError(f"vectors disagree on the shape or tying of {e.name}")
    return forced


def _manifest(weighted: list[tuple[Vector, float]], forced: bool) -> dict[str, Any]:
    first = weighted[0][0].manifest
    langs = list(
        dict.fromkeys(lang for v, _ in weighted for lang in v.manifest.get("languages", []))
    )
    return {
        "start": first["start"],
        "method": "combine",
        "languages": langs,
        "source": {
            "kind": "combine",
            "inputs": [
                {
                    "path": v.label,
                    "lambda": lam,
                    "start": v.start,
                    "method": v.manifest.get("method"),
                    "languages": v.manifest.get("languages"),
                }
                for v, lam in weighted
            ],
        },
        "forced": forced,
        **{k: first.get(k) for k in ("tied", "embed", "head", "vocab_size")},
        "provenance": provenance(),
    }


@holds_output_lock("out")
def combine(
    vectors: Sequence[VectorSpec],
    out: str | Path,
    *,
    force: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``Σ λ_i Δ_i`` as one vector at ``out``; return its manifest."""
    out = Path(out)
    if not vectors:
        raise LayraError("no vectors given")
    if out.exists() and not overwrite:
        raise LayraError(f"output {out} already exists (pass --overwrite to replace it)")
    weighted = load_weighted(vectors)
    forced = _check_inputs(weighted, force)
    terms: dict[str, list[tuple[Vector, Entry, float]]] = {}
    for v, lam in weighted:
        for e in v.entries.values():
            if lam != 0.0:
                terms.setdefault(e.name, []).append((v, e, lam))
    plan: dict[str, Entry] = {}
    for name, ts in sorted(terms.items()):
        e0 = ts[0][1]
        if all(e.kind == "lowrank" for _, e, _ in ts):
            rank = sum(e.rank for _, e, _ in ts)
            plan[name] = Entry(name, "lowrank", e0.shape, rank, 1.0, e0.aliases)
        else:
            plan[name] = Entry(name, "dense", e0.shape, aliases=e0.aliases)
    manifest = _manifest(weighted, forced)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with VectorWriter(tmp, [k for e in plan.values() for k in planned_keys(e)]) as w:
            for name, e in plan.items():
                ts = terms[name]
                if e.kind == "lowrank":
                    parts = [(lam * te.scale, *v.factors(te)) for v, te, lam in ts]
                    A, B = concat_lowrank(parts)
                    w.lowrank(name, A, B, 1.0, e.aliases)
                else:
                    _dense_sum(w, e, ts)
            return w.finish(manifest)


def _dense_sum(w: VectorWriter, e: Entry, ts: list[tuple[Vector, Entry, float]]) -> None:
    """``Σ λ_i Δ_i`` of one weight, dense or as its changed rows (kept even if all zero)."""
    factors = {id(te): v.factors(te) for v, te, _ in ts if te.kind == "lowrank"}

    def block(start: int, stop: int) -> torch.Tensor:
        acc = None
        for v, te, lam in ts:
            d = v.delta_rows(te, start, stop, *factors.get(id(te), (None, None))).to(FP32)
            acc = d.mul_(lam) if acc is None else acc.add_(d, alpha=lam)
        return acc

    if write_delta(w, e.name, e.shape, block, e.aliases) is None:
        # All zero (e.g. Δ − Δ): still named, as before, so the combined vector lists
        # every weight its inputs touched — as zero rows where it can (no bytes).
        if len(e.shape) >= 2:
            w.begin_sparse(e.name, e.shape, torch.empty(0, dtype=torch.int64), e.aliases)
        else:
            w.dense(e.name, torch.zeros(e.shape, dtype=FP32), e.aliases)
