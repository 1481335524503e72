"""``layra plan``: trainable parameters and memory per device, from config.json alone.

layra plan --config configs/llama3.1-8b/full-gl.yaml --launcher fsdp --gpus 2
"""

from __future__ import annotations

import argparse

from layra.cli import config_arguments, subparser


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "plan",
        help="memory per device for a run config, without loading weights",
        example="layra plan --config configs/llama3.1-8b/full-gl.yaml --launcher fsdp --gpus 2",
        description=(
            "Build the model of a run config on the meta device (config.json only, no weights),\n"
            "prepare its method as `layra train` does, and print the trainable parameters and\n"
            "the memory per device under a launcher, term by term with each term's dtype."
        ),
    )
    config_arguments(p)
    p.add_argument(
        "--launcher", default="single", choices=("single", "ddp", "fsdp", "zero2", "zero3")
    )
    p.add_argument("--gpus", type=int, default=None, help="devices (default 1; 2 if sharded)")
    p.add_argument(
        "--precision",
        default=None,
        choices=("bf16", "fp32"),
        help="compute precision on the target (default: train.precision; auto means bf16, "
        "what any recent GPU resolves it to)",
    )
    p.add_argument("--markdown", action="store_true", help="one Markdown table row instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layra.config import load_config
    from layra.errors import require
    from layra.memory import inventory, markdown_table, plan_memory

    sharded = args.launcher != "single"
    gpus = args.gpus if args.gpus is not None else (2 if sharded else 1)
    require(gpus >= 1, f"--gpus must be at least 1 (got {gpus})")
    require(
        args.launcher != "single" or gpus == 1,
        f"--launcher single runs on one device; got --gpus {gpus} (use ddp or fsdp)",
    )
    cfg = load_config(args.config, list(args.overrides))
    t = cfg.train
    precision = args.precision or ("fp32" if t.precision == "fp32" else "bf16")
    require(
        t.fsdp_param_dtype != "bf16" or precision == "bf16",
        "train.fsdp_param_dtype=bf16 computes in bf16; plan it with --precision bf16",
    )
    inv = inventory(cfg, precision)
    plan = plan_memory(
        inv,
        args.launcher,
        gpus,
        micro_batch=t.batch_size,
        seq_len=cfg.data.seq_len,
        checkpointing=t.gradient_checkpointing,
        loss_chunk=t.loss_chunk,
        fsdp_param_dtype=t.fsdp_param_dtype,
        fsdp_offload=t.fsdp_offload,
    )
    print(markdown_table([plan]) if args.markdown else plan.text())
    return 0
