"""`layra demo`: the paper in miniature, offline (see layra/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layra.cli import subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "demo",
        help="Gemma 3 270M learns Galician: full / lora / layra, learning vs retention",
        example="layra demo --workdir layra-demo --tokens 16384 --seeds 2 --fixed-budget",
        description=(
            "Offline, on a real pretrained model and real text: convert Gemma 3 270M from its\n"
            "PyPI GGUF package, build Galician/English/Spanish/Portuguese text from Debian\n"
            "packages, train full, lora and layra on Galician, score bits per byte per language\n"
            "and print the learning/retention table, the pairwise differences between methods\n"
            "and plots. The demo is a sweep preset (layra sweep's train -> evaluate -> report);\n"
            "re-running reuses finished work. Two timed steps of each method and a short\n"
            "scoring pass size the budget first: if --tokens / --eval-bytes would not fit in\n"
            "--minutes on this machine, they are scaled down and the demo says so; the report\n"
            "gives the predicted and the measured time."
        ),
    )
    p.add_argument("--workdir", type=Path, default=Path("layra-demo"), help="where everything goes")
    p.add_argument("--tokens", type=int, default=16_384, help="training tokens per method")
    p.add_argument("--methods", default="full,lora,layra", help="comma-separated methods")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--eval-bytes", type=int, default=12_000, help="held-out bytes scored per language"
    )
    p.add_argument("--seed", type=int, default=0, help="first training seed (default 0)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="training seeds per method (seed, seed+1, ...); with 2 or more the table shows "
        "means and 95%% intervals",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto (default): bf16 where this machine multiplies bf16 fast, else fp32",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=20.0,
        help="time for training + evaluation (setup excluded) the budget is fitted to (20)",
    )
    p.add_argument(
        "--fixed-budget",
        action="store_true",
        help="keep --tokens and --eval-bytes even if they will not fit in --minutes",
    )
    p.add_argument("--model", help="use this HF model directory instead of Gemma 3 270M")
    p.add_argument("--corpus", help="use this built corpus directory instead of Debian packages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.demo import DemoSettings, run_demo
    from layra.errors import LayraError
    from layra.method_registry import METHODS

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise LayraError(
            f"--methods: unknown {', '.join(bad) or '(none)'}; allowed: {', '.join(METHODS)}"
        )
    for flag, value in (("--tokens", args.tokens), ("--eval-bytes", args.eval_bytes),
                        ("--seeds", args.seeds), ("--minutes", args.minutes)):  # fmt: skip
        if not value > 0:
            raise LayraError(f"{flag} must be positive, got {value}")
    s = DemoSettings(workdir=args.workdir, tokens=args.tokens, methods=methods, device=args.device,
                     eval_bytes=args.eval_bytes, seed=args.seed, seeds=args.seeds,
                     precision=args.precision, minutes=args.minutes, fixed_budget=args.fixed_budget,
                     model=args.model, corpus=args.corpus, progress=not args.quiet)  # fmt: skip
    run_demo(s)
    return 0
