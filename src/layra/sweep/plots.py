"""Plots of a sweep (drawing only; the numbers come from layra.sweep.run's report).

    png = tradeoff_png(points, base="PT", unit="bits/byte")   # PNG bytes
    png = lambda_png("gl", "single", points, unit="bits/byte")

A point is ``{"grid", "label", "learning", "retention", "x"}``: learning and
retention are improvements over the base (positive = better), ``x`` the λ of a
λ-grid point (a number or a list, one per vector) or None.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _lam(x: Any) -> float:
    """The λ a curve is drawn against: the number, or the first of a per-vector list."""
    return float(x[0] if isinstance(x, list) else x)


def tradeoff_png(points: Sequence[dict[str, Any]], base: str, unit: str) -> bytes:
    """Retention (x) against learning (y) for every point, one colour per grid.

    The base sits at the origin; up is learning more, right is forgetting less.
    Points of a λ grid are joined in λ order, so the curve shows the trade-off λ buys.
    """
    # A Figure without pyplot: no global state, no GUI backend needed.
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.scatter([0], [0], color="black", marker="*", s=80, zorder=3)
    ax.annotate(base, (0, 0), textcoords="offset points", xytext=(4, -10), fontsize=8)
    grids = list(dict.fromkeys(p["grid"] for p in points))
    for grid in grids:
        pts = [
            p
            for p in points
            if p["grid"] == grid and p["learning"] is not None and p["retention"] is not None
        ]
        if not pts:
            continue
        curve = all(p["x"] is not None for p in pts)
        if curve:
            pts = sorted(pts, key=lambda p: _lam(p["x"]))
        xs = [p["retention"] for p in pts]
        ys = [p["learning"] for p in pts]
        line = ax.plot(xs, ys, marker="o", ls="-" if curve else "", label=grid, ms=5)[0]
        for p in pts:
            ax.annotate(
                p["label"],
                (p["retention"], p["learning"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color=line.get_color(),
            )
    ax.set_xlabel(f"Retention Δ ({unit}, positive = better)")
    ax.set_ylabel(f"Learning Δ ({unit}, positive = better)")
    ax.set_title(f"sweep: learning vs retention (vs {base})")
    if grids:
        ax.legend(fontsize=8)
    return _png(fig)


def lambda_png(grid: str, mode: str, points: Sequence[dict[str, Any]], unit: str) -> bytes:
    """Learning and retention against λ for one λ grid (first λ of a per-vector list)."""
    pts = sorted(
        (p for p in points if p["x"] is not None and None not in (p["learning"], p["retention"])),
        key=lambda p: _lam(p["x"]),
    )
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color="0.7", lw=0.8)
    xs = [_lam(p["x"]) for p in pts]
    for key in ("learning", "retention"):
        ax.plot(xs, [p[key] for p in pts], marker="o", label=key)
    ax.set_xlabel("λ")
    ax.set_ylabel(f"improvement over the base ({unit}, positive = better)")
    ax.set_title(f"{grid} ({mode}): learning and retention vs λ")
    ax.legend(fontsize=8)
    return _png(fig)
