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
            "benchmark; with two or more models, their pairwise differences with paired\n"
            "bootstrap intervals. With --out: report.md, report.json, BENCH.csv per benchmark,\n"
            "tradeoff.png (95 % intervals as error bars) and bars.png; the Markdown is printed\n"
            "either way."
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
    from layra.atomic import atomic_dir
    from layra.evaluation.report import build_tables, parse_new, to_markdown
    from layra.evaluation.store import load_records

    _check_args(args)
    records = load_records(args.results)
    tables = build_tables(records, args.base, parse_new(args.new))
    markdown = to_markdown(tables)
    print(markdown, end="")
    if args.out:
        from layra.evaluation.writer import write_report
        from layra.lock import output_lock

        out = Path(args.out)
        with output_lock(out), atomic_dir(out, overwrite=args.overwrite) as tmp:
            extra = {"inputs": sorted(r["key"] for r in records),
                     "args": {"results": args.results, "base": args.base, "new": args.new}}  # fmt: skip
            write_report(tmp, tables, extra=extra)
        print(f"report written to {args.out}")
    return 0
