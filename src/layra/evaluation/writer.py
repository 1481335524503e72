"""The one report writer: `layra report`, sweeps and the demo all write their reports here.

    files = write_report(out, tables, preface=text, groups=groups, timings=timings)

Files in ``out`` (each written atomically; the directory may already hold an older report):

=====================  =======================================================================
``report.md``          ``preface`` (if any), then every table with its pairwise differences
``report.json``        the tables (rows, intervals, pairs), ``extra`` and provenance
``BENCH.csv``          one per benchmark (``bpb.csv``, ``xnli.csv``, …): rows and intervals
``tradeoff.png``       Retention Δ against Learning Δ, a panel per benchmark, 95 % error bars;
                       a sweep's rows coloured by grid, a λ grid's rows joined in λ order
``bars.png``           per-language scores, a panel per benchmark
``lambda-GRID.png``    learning and retention against λ, one per λ grid (sweeps)
``timings.json``       predicted and measured times, when given (the demo)
=====================  =======================================================================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layra.evaluation.plots import Groups
from layra.evaluation.report import Table


def write_report(
    out: str | Path,
    tables: Sequence[Table],
    *,
    preface: str = "",
    groups: Groups = None,
    lambda_grids: Sequence[tuple[str, str]] = (),
    extra: dict[str, Any] | None = None,
    timings: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the report files (module docstring) into ``out``; return their paths.

    ``lambda_grids``: (grid name, mode) of each λ grid whose curve is drawn;
    ``extra``: more JSON for ``report.json`` (inputs, settings).
    """
    from layra.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
    from layra.evaluation.plots import bars_png, lambda_png, tradeoff_png
    from layra.evaluation.report import to_csv, to_markdown
    from layra.provenance import provenance

    out = Path(out)
    md = to_markdown(list(tables))
    files = [out / "report.md", out / "report.json"]
    atomic_write_text(files[0], f"{preface.rstrip()}\n\n{md}" if preface else md)
    body = {"tables": [t.to_dict() for t in tables], **(extra or {}), "provenance": provenance()}
    if timings is not None:
        body["timings"] = timings
    atomic_write_text(files[1], json.dumps(body, indent=1, default=str))
    for t in tables:
        files.append(out / f"{t.benchmark}.csv")
        atomic_write_text(files[-1], to_csv(t))
    files += [out / "tradeoff.png", out / "bars.png"]
    atomic_write_bytes(files[-2], tradeoff_png(tables, groups))
    atomic_write_bytes(files[-1], bars_png(tables))
    bpb = next((t for t in tables if t.benchmark == "bpb"), tables[0])
    for grid, mode in lambda_grids:
        files.append(out / f"lambda-{grid}.png")
        atomic_write_bytes(files[-1], lambda_png(grid, mode, bpb, groups))
    if timings is not None:
        files.append(out / "timings.json")
        atomic_write_json(files[-1], timings)
    return files
