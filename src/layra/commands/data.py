"""``layra data prepare``: tokenize a run config's training text once, on every core.

layra data prepare --config configs/gemma3-270m-layra-gl.yaml
"""

from __future__ import annotations

import argparse

from layra.cli import config_arguments, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "data",
        help="prepare training data once (tokens on disk, memory-mapped, shared by runs)",
        example="layra data prepare --config configs/gemma3-270m-layra-gl.yaml",
        description=(
            "Prepare a run config's training data: read its sources, hold out documents,\n"
            "tokenize on every core, and store the tokens memory-mapped under data.cache_dir\n"
            "(default ~/.cache/layra/prepared), keyed by sources, tokenizer, seq_len, budget\n"
            "and seed. `layra train`, sweeps and the demo then reuse it; a killed preparation\n"
            "resumes from its last finished shard."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = subparser(
        actions,
        "prepare",
        help="prepare (or find) the data of a run config",
        example="layra data prepare --config configs/gemma3-270m-layra-gl.yaml --workers 2",
    )
    config_arguments(prep)
    prep.add_argument(
        "--workers", type=int, default=0, help="tokenizing processes (default: one per core)"
    )
    prep.add_argument("--quiet", action="store_true", help="no progress bars")
    prep.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from layra.config import load_config, validate
    from layra.errors import require
    from layra.models import load_tokenizer
    from layra.prepare import prepare

    require(args.workers >= 0, f"--workers must not be negative (got {args.workers})")
    cfg = load_config(args.config, list(args.overrides))
    validate(cfg)
    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.trust_remote_code)
    data = prepare(
        cfg.data, tok, seed=cfg.train.seed, workers=args.workers, progress=not args.quiet
    )
    for lang, s in data.stats["languages"].items():
        print(
            f"  {lang}: {s['train_tokens']:,} training tokens in {s['blocks']:,} blocks, "
            f"{s['heldout_documents']} held-out documents"
        )
    print(data.root)
    return 0
