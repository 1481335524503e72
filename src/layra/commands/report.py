"""`layra report`: lay many results out as the paper does (tables, CSV, plots).

layra report results --base PT --new glg --out report/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layra.atomic import check_writable
from layra.cli import subparser
from layra.errors import require


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "report",
        help="tables of per-language scores with learning and retention columns, plus plots",
        example="layra report results --base gemma-3-270m --new glg --out report/",
        description=(
            "Rows = models, columns = languages + Avg, then Learning (mean improvement over the\n"
            "base on the row's new languages) and Retention (on the others); positive = better\n"
            "(base - model for bits per byte, model - base for accuracy). One table per\n"
            "benchmark. With --out: report.md, report.json, BENCH.csv, BENCH_tradeoff.png and\n"
            "BENCH_bars.png; the Markdown is printed either way."
        ),
    )
    p.add_argument(
        "results", nargs="+", metavar="RESULTS", help="results store directories or record files"
    )
    p.add_argument("--base", required=True, metavar="NAME", help="the pretrained model's name")
    p.add_argument(
        "--new",
        action="append",
        metavar="[NAME=]LANGS",
        help="new languages (comma-separated) of every row, or of row NAME; "
        "default: the run's languages where known (repeatable)",
    )
    p.add_argument("--out", metavar="DIR", help="write the report files here (atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """What can be refused before any record is read or anything printed."""
    for item in args.new or []:
        name, sep, langs = item.rpartition("=")
        require(
            not sep or bool(name.strip()),
            f"--new {item!r}: the model NAME before '=' is empty; give NAME=LANGS for one row "
            "or LANGS alone for every row",
        )
    if args.out:
        require(
            args.overwrite or not Path(args.out).exists(),
            f"output {args.out} already exists (pass --overwrite to replace it)",
        )
        check_writable(Path(args.out))


def run(args: argparse.Namespace) -> int:
    from layra.atomic import atomic_dir, atomic_write_json, atomic_write_text
    from layra.evaluation.report import build_tables, parse_new, to_csv, to_markdown
    from layra.evaluation.store import load_records
    from layra.provenance import provenance

    _check_args(args)
    records = load_records(args.results)
    tables = build_tables(records, args.base, parse_new(args.new))
    markdown = to_markdown(tables)
    print(markdown, end="")
    if args.out:
        from layra.evaluation.plots import plot_bars, plot_tradeoff
        from layra.lock import output_lock

        out = Path(args.out)
        with output_lock(out), atomic_dir(out, overwrite=args.overwrite) as tmp:
            atomic_write_text(tmp / "report.md", markdown)
            for t in tables:
                atomic_write_text(tmp / f"{t.benchmark}.csv", to_csv(t))
                plot_tradeoff(t, tmp / f"{t.benchmark}_tradeoff.png")
                plot_bars(t, tmp / f"{t.benchmark}_bars.png")
            atomic_write_json(tmp / "report.json", {
                "tables": [t.to_dict() for t in tables],
                "inputs": sorted(r["key"] for r in records),
                "args": {"results": args.results, "base": args.base, "new": args.new},
                "provenance": provenance(),
            })  # fmt: skip
        print(f"report written to {args.out}")
    return 0
