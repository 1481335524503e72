"""Tables → PNG: the learning-versus-retention trade-off and per-language bars.

As in layra.sweep.plots and layra.plots_lens, the ``*_png`` functions return PNG bytes
and write nothing; ``plot_*`` write them atomically. Uses matplotlib's object API with
the Agg canvas (no pyplot, no global backend state), so it runs headless and inside
other programs.
"""

from __future__ import annotations

import io
from pathlib import Path

from layra.evaluation.report import Table


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


def plot_tradeoff(table: Table, path: str | Path) -> Path:
    """:func:`tradeoff_png` written to ``path`` (atomically); returns ``path``."""
    return _write(tradeoff_png(table), path)


def plot_bars(table: Table, path: str | Path) -> Path:
    """:func:`bars_png` written to ``path`` (atomically); returns ``path``."""
    return _write(bars_png(table), path)


def tradeoff_png(table: Table) -> bytes:
    """Scatter of Retention Δ (x) against Learning Δ (y), one labelled point per model.

    The base sits at the origin; up is learning more, right is forgetting less.
    """
    fig = _figure(6, 4.5)
    ax = fig.add_subplot()
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    for r in table.rows:
        x = 0.0 if r.name == table.base else r.retention
        y = 0.0 if r.name == table.base else r.learning
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=30)
        ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    unit = "points" if table.unit == "%" else _unit(table)
    ax.set_xlabel(f"Retention Δ ({unit}, positive = better)")
    ax.set_ylabel(f"Learning Δ ({unit}, positive = better)")
    ax.set_title(f"{table.benchmark}: learning vs retention (vs {table.base})")
    fig.tight_layout()
    return _png(fig)


def bars_png(table: Table) -> bytes:
    """Grouped bars: one group per language (and Avg), one bar per model."""
    fig = _figure(max(6, 1.2 * (len(table.langs) + 1) + 2), 4.5)
    ax = fig.add_subplot()
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
    ax.set_title(f"{table.benchmark} per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
