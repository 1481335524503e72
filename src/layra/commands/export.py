"""``layra export gguf``: a model layra wrote, as one GGUF file for llama.cpp / ollama.

layra export gguf runs/gl-layra --out gl.gguf --outtype q8_0
"""

from __future__ import annotations

import argparse

from layra.cli import subparser

OUTTYPES = (
    "f16",
    "bf16",
    "q8_0",
    "f32",
)  # = layra.gguf_convert.OUTTYPES; not imported (fast --help)


def _gguf(args: argparse.Namespace) -> None:
    from layra.export import export_gguf

    r = export_gguf(
        args.model,
        args.out,
        outtype=args.outtype,
        tokenizer_from=args.tokenizer_from,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    what = "merged, " if r.merged else ""
    print(
        f"wrote {r.out} ({r.bytes / 2**20:.1f} MiB, {r.outtype}, {what}tokenizer {r.tokenizer}) "
        f"in {r.seconds:.1f} s"
    )


def register(sub) -> None:
    p = subparser(
        sub,
        "export",
        help="write a model in another format (GGUF for llama.cpp / ollama)",
        example="layra export gguf runs/gl-layra --out gl.gguf",
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)
    xs = p.add_subparsers(dest="export_command", metavar="FORMAT")
    g = subparser(
        xs,
        "gguf",
        help="one GGUF file, written by llama.cpp's own converter",
        example="layra export gguf runs/gl-layra --out gl.gguf --outtype q8_0",
        description=(
            "Write MODEL as one GGUF file with llama.cpp's own HF -> GGUF converter (vendored).\n"
            "MODEL: a model directory, a finished run (its adapter or trained tensors merged on\n"
            "the fly) or MODEL+VEC:λ, as `layra eval` accepts. Llama, Mistral, Qwen2 and Gemma 3.\n"
            "Tied embeddings stay one tensor. The tokenizer is converted as llama.cpp does; for a\n"
            "model that came from a GGUF, --tokenizer-from carries the original's over exactly."
        ),
    )
    g.add_argument("model", metavar="MODEL", help="model dir, run dir, or MODEL+VEC:λ")
    g.add_argument("--out", "-o", required=True, help="the .gguf file to write")
    g.add_argument(
        "--outtype",
        default="f16",
        choices=OUTTYPES,
        help="tensor type: f16 (default), bf16, q8_0 (8-bit, about half the size) or f32",
    )
    g.add_argument(
        "--tokenizer-from",
        metavar="FILE.gguf",
        help="copy the tokenizer of this GGUF (the one the base model came from) exactly; "
        "default: the base's own GGUF when MODEL's base is a .gguf",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    g.set_defaults(func=_gguf)
