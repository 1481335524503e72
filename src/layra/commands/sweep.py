"""`layra sweep`: train and evaluate a grid (λ, k/m, embedding treatments) into one store.

layra sweep --config configs/sweeps/gemma3-270m-embeddings.yaml
"""

from __future__ import annotations

import argparse

from layra.cli import subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "sweep",
        help="grids over λ (single/series/merge/instruct), k/m and embedding treatments",
        example="layra sweep --config configs/sweeps/gemma3-270m-embeddings.yaml",
        description=(
            "Expand the grids of a sweep config, train the training points (resumable),\n"
            "evaluate every point's bits per byte (λ points on one loaded model, vectors\n"
            "applied and removed in memory), and write the table and trade-off plots.\n"
            "Finished points are skipped on a rerun. KEY=VALUE overrides use dotted keys,\n"
            "e.g. eval.max_bytes=4000 grids.0.run.train.max_steps=4 (docs/sweep.md)."
        ),
    )
    p.add_argument("--config", "-c", required=True, help="YAML sweep config (configs/sweeps/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--dry-run", action="store_true", help="validate and list the points, then stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.sweep import check_plans, expand, load_sweep, run_sweep

    cfg = load_sweep(args.config, list(args.overrides))
    if args.dry_run:
        points = expand(cfg)
        check_plans(points)
        for pt in points:
            print(f"{pt.kind:6} {pt.name}" + ("" if pt.seed is None else f" (seed {pt.seed})"))
        return 0
    run_sweep(cfg, progress=not args.quiet)
    return 0
