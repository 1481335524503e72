"""`layra choose`: a budgeted search that recommends a configuration (layra.choose).

layra choose --config configs/choose/gemma3-270m-gl.yaml
"""

from __future__ import annotations

import argparse

from layra.cli import subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "choose",
        help="search LoRA / LayRA k,m / embedding treatments on your text and recommend one",
        example="layra choose --config configs/choose/gemma3-270m-gl.yaml minutes=30",
        description=(
            "Train LoRA (the baseline), LayRA at the depth-scaled k/m and at the k/m the logit\n"
            "lens suggests, and LayRA with the embeddings at lower learning rates or frozen,\n"
            "each on two or more seeds, with the token budget fitted to --minutes on this\n"
            "machine. Judge them on your held-out text only: learning on the new language,\n"
            "retention on old-language text from at least two sources, each candidate against\n"
            "LoRA by paired bootstrap intervals. Recommend one that beats LoRA on both axes\n"
            "(intervals clear of zero), else the best trade-off on the Pareto front, and write\n"
            "it as OUT/recommended.yaml for `layra train`. Resumable; KEY=VALUE overrides use\n"
            "dotted keys (docs/choose.md)."
        ),
    )
    p.add_argument("--config", "-c", required=True, help="YAML choose config (configs/choose/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.choose import load_choose
    from layra.choose_run import run_choose

    run_choose(load_choose(args.config, list(args.overrides)), progress=not args.quiet)
    return 0
