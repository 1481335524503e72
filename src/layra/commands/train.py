"""`layra train`: continued pretraining with full / layer-selective / lora / layra."""

from __future__ import annotations

import argparse

from layra.cli import config_arguments, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "train",
        help="continue pretraining a causal LM on new-language text",
        example="layra train --config configs/gemma3-270m-layra-gl.yaml train.max_steps=20 output_dir=runs/gl",
        description=(
            "Continue pretraining with one of four methods (full, layer-selective, lora, layra).\n"
            "Settings come from a YAML config, then KEY=VALUE overrides (dotted keys), e.g.\n"
            "  method.name=lora method.r=16 train.lr=1e-4 data.max_tokens=200000\n"
            "Without --config, give at least model.name_or_path and data.sources."
        ),
    )
    config_arguments(p)
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in output_dir"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    p.add_argument("--merge", action="store_true", help="also write the merged full model (model/)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and show what would train, then stop"
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress output, no transformers/PEFT deprecation warnings",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.config import load_config

    overrides = list(args.overrides)
    if args.merge:
        overrides.append("merge=true")
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        return dry_run(cfg)
    if args.quiet:
        quiet_library_warnings()
    from layra.train import train

    train(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def quiet_library_warnings() -> None:
    """--quiet: no deprecation notices from transformers / PEFT (e.g. PEFT calling
    transformers' deprecated ``is_gradient_checkpointing``): they are for library
    authors, and print two lines on every run. layra's own warnings still print."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|peft)(\.|$)")


def dry_run(cfg) -> int:
    """Print the resolved config and the method plan without loading weights."""
    import yaml

    from layra.config import to_dict
    from layra.methods import plan_method
    from layra.models import model_depth

    plan = plan_method(cfg.method, model_depth(cfg))
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
    print(f"# plan: {plan.to_dict()}")
    return 0
