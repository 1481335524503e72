"""Tables → PNG: the learning-versus-retention trade-off, per-language bars, λ curves.

Every report's plots (``layra report``, sweeps, the demo) come from here. As in
layra.plots_lens, the ``*_png`` functions return PNG bytes
and write nothing; ``plot_*`` write them atomically. Uses matplotlib's object API with
the Agg canvas (no pyplot, no global backend state), so it runs headless and inside
other programs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layra.evaluation.report import Table

# A sweep's rows: name -> (grid, λ of a λ-grid point or None).
Groups = dict[str, tuple[str, Any]] | None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write(data: bytes, path: str | Path) -> Path:
    from layra.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)  # never a half-written image
    return Path(path)


def _unit(table: Table) -> str:
    return "bits/byte" if table.metric == "bpb" else table.metric


def plot_tradeoff(table: Table | Sequence[Table], path: str | Path, groups: Groups = None) -> Path:
    """:func:`tradeoff_png` written to ``path`` (atomically); returns ``path``."""
    return _write(tradeoff_png(table, groups), path)


def plot_bars(table: Table | Sequence[Table], path: str | Path) -> Path:
    """:func:`bars_png` written to ``path`` (atomically); returns ``path``."""
    return _write(bars_png(table), path)


def _tables(table: Table | Sequence[Table]) -> list[Table]:
    return [table] if isinstance(table, Table) else list(table)


def _err(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    """An interval as matplotlib's asymmetric error-bar lengths (None: no interval)."""
    if ci is None:
        return None
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _points(table: Table, groups: Groups) -> dict[str, list[tuple[str, Any, Any]]]:
    """Per group (a sweep's grid; "" without groups), its rows with their λ (or None)."""
    out: dict[str, list[tuple[str, Any, Any]]] = {}
    for r in table.rows:
        if r.name == table.base or r.learning is None or r.retention is None:
            continue
        grid, x = (groups or {}).get(r.name, ("", None))
        out.setdefault(grid, []).append((r.name, x, r))
    return out


def _tradeoff_panel(ax, table: Table, groups: Groups) -> None:
    """One benchmark: a point per row with its 95 % intervals as error bars."""
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.scatter([0], [0], color="black", marker="*", s=80, zorder=3)
    ax.annotate(table.base, (0, 0), textcoords="offset points", xytext=(4, -10), fontsize=8)
    for gi, (grid, pts) in enumerate(_points(table, groups).items()):
        curve = bool(grid) and all(x is not None for _, x, _ in pts)
        if curve:  # a λ grid: joined in λ order, so the line shows what λ buys
            pts = sorted(pts, key=lambda p: _lam(p[1]))
            xs, ys = [r.retention for _, _, r in pts], [r.learning for _, _, r in pts]
            ax.plot(xs, ys, lw=1, color=f"C{gi % 10}")
        for i, (name, _, r) in enumerate(pts):
            ax.errorbar(r.retention, r.learning, xerr=_err(r.retention, r.retention_ci),
                        yerr=_err(r.learning, r.learning_ci), fmt="o", ms=5, capsize=3,
                        color=f"C{(gi if grid else i) % 10}",
                        label=grid if grid and i == 0 else None)  # fmt: skip
            label = name.partition(":")[2] if grid and ":" in name else name
            ax.annotate(label, (r.retention, r.learning), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)  # fmt: skip
    unit = "points" if table.unit == "%" else _unit(table)
    ax.set_xlabel(f"Retention Δ ({unit}, positive = better)")
    ax.set_ylabel(f"Learning Δ ({unit}, positive = better)")
    bars = any(r.learning_ci or r.retention_ci for r in table.rows)
    note = "; bars: 95 % intervals" if bars else ""
    ax.set_title(f"{table.benchmark}: learning vs retention (vs {table.base}{note})", fontsize=10)
    if any(grid for grid in _points(table, groups)):
        ax.legend(fontsize=8)


def tradeoff_png(table: Table | Sequence[Table], groups: Groups = None) -> bytes:
    """Retention Δ (x) against Learning Δ (y): one panel per table, a point per model.

    The base sits at the origin; up is learning more, right is forgetting less. Rows
    with 95 % intervals (two or more seeds) get them as error bars. ``groups`` maps a
    row name to (grid, λ or None): a sweep's rows are coloured by grid, and the rows
    of a λ grid joined in λ order.
    """
    tables = _tables(table)
    fig = _figure(6 * len(tables), 4.5)
    for i, t in enumerate(tables):
        _tradeoff_panel(fig.add_subplot(1, len(tables), i + 1), t, groups)
    fig.tight_layout()
    return _png(fig)


def _bars_panel(ax, table: Table) -> None:
    groups = [*table.langs, "Avg"]
    n = max(1, len(table.rows))
    width = 0.8 / n
    for i, r in enumerate(table.rows):
        vals = [r.values.get(la) for la in table.langs] + [r.avg]
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(
            [x for x, v in zip(xs, vals, strict=True) if v is not None],
            [v for v in vals if v is not None],
            width=width,
            label=r.name,
        )
    ax.set_xticks(range(len(groups)), groups)
    better = "higher" if table.higher_is_better else "lower"
    unit = "%, " if table.unit == "%" else ""
    ax.set_ylabel(f"{_unit(table)} ({unit}{better} is better)")
    ax.set_title(f"{table.benchmark} per language", fontsize=10)
    ax.legend(fontsize=8)


def bars_png(table: Table | Sequence[Table]) -> bytes:
    """Grouped bars, one panel per table: a group per language (and Avg), a bar per model."""
    tables = _tables(table)
    widths = [max(6, 1.2 * (len(t.langs) + 1) + 2) for t in tables]
    fig = _figure(sum(widths), 4.5)
    for i, t in enumerate(tables):
        _bars_panel(fig.add_subplot(1, len(tables), i + 1), t)
    fig.tight_layout()
    return _png(fig)


def _lam(x: Any) -> float:
    """The λ a curve is drawn against: the number, or the first of a per-vector list."""
    return float(x[0] if isinstance(x, list) else x)


def lambda_png(grid: str, mode: str, table: Table, groups: Groups) -> bytes:
    """Learning and retention against λ for one λ grid (first λ of a per-vector list),
    with the rows' 95 % intervals as error bars where they have them."""
    pts = sorted(
        (
            (x, r)
            for r in table.rows
            for g, x in [(groups or {}).get(r.name, ("", None))]
            if g == grid and x is not None and None not in (r.learning, r.retention)
        ),
        key=lambda p: _lam(p[0]),
    )
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.axhline(0, color="0.7", lw=0.8)
    xs = [_lam(x) for x, _ in pts]
    for key in ("learning", "retention"):
        ys = [getattr(r, key) for _, r in pts]
        cis = [getattr(r, f"{key}_ci") for _, r in pts]
        err = None
        if all(ci is not None for ci in cis):
            err = [[y - ci[0] for y, ci in zip(ys, cis, strict=True)],
                   [ci[1] - y for y, ci in zip(ys, cis, strict=True)]]  # fmt: skip
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=key)
    ax.set_xlabel("λ")
    ax.set_ylabel(f"improvement over {table.base} ({_unit(table)}, positive = better)")
    ax.set_title(f"{grid} ({mode}): learning and retention vs λ", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
