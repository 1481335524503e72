"""``layra vector``: extract, diff, apply, combine and inspect language vectors.

layra vector extract runs/gl --out vectors/gl
layra vector apply base-model vectors/gl:0.5 vectors/sw:0.5 --out models/gl+sw
"""

from __future__ import annotations

import argparse

from layra.cli import subparser

DEFAULT_PROTECT = "auto"  # = layra.vectors.protect.DEFAULT; not imported, to keep --help fast


def _weighted(specs: list[str], require_lambda: bool = False) -> list[tuple[str, float]]:
    from layra.errors import LayraError
    from layra.vectors import parse_spec

    out = []
    for s in specs:
        path, lam = parse_spec(s, default=None if require_lambda else 1.0)
        if lam is None:
            raise LayraError(f"{s}: give a weight as VEC:λ (e.g. {s}:0.5)")
        out.append((path, lam))
    return out


def _extract(args: argparse.Namespace) -> None:
    from layra.vectors import extract_run

    m = extract_run(
        args.run, args.out, base=args.base, overwrite=args.overwrite, dtype=args.delta_dtype
    )
    _summary(args.out, m)


def _diff(args: argparse.Namespace) -> None:
    from layra.vectors import diff_models

    m = diff_models(
        args.start, args.trained, args.out, languages=args.language, overwrite=args.overwrite
    )
    _summary(args.out, m)


def _combine(args: argparse.Namespace) -> None:
    from layra.vectors import combine

    m = combine(
        _weighted(args.vectors, require_lambda=True),
        args.out,
        force=args.force,
        overwrite=args.overwrite,
    )
    _summary(args.out, m)


def _apply(args: argparse.Namespace) -> None:
    from layra.vectors import apply_to_dir
    from layra.vectors.protect import describe_protected

    rec = apply_to_dir(
        args.model,
        _weighted(args.vectors),
        args.out,
        instruct=args.instruct,
        force=args.force,
        protect_rows=args.protect_rows,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        gguf_file=args.gguf_file,
    )
    used = ", ".join(f"{v['path']}:{v['lambda']:g} ({v['match']})" for v in rec["vectors"])
    print(f"wrote {args.out}: {used}; fingerprint {rec['output_fingerprint']['weights']}")
    print(describe_protected(rec["protected_rows"], rec.get("protect_rows")))
    if rec["forced"]:
        print("note: --force applied a vector to weights it was not trained from (recorded)")


def _show(args: argparse.Namespace) -> None:
    from layra.errors import LayraError
    from layra.vectors import load_vector

    v = load_vector(args.vector)
    _summary(args.vector, v.manifest)
    broken = []
    for e in v.entries.values():
        bad = v.nonfinite(e)  # every value read once: a NaN makes the vector unusable
        if bad:
            broken.append(f"{e.name} ({bad:,})")
        extra = (
            f" rank {e.rank} scale {e.scale:g}"
            if e.kind == "lowrank"
            else f" ({e.rank:,} rows changed)"
            if e.kind == "rows"
            else ""
        )
        alias = f" (= {', '.join(e.aliases)})" if e.aliases else ""
        nan = f"  NOT FINITE: {bad:,} NaN/inf values" if bad else ""
        print(f"  {e.name}{alias}: {e.kind} {list(e.shape)}{extra}{nan}")
    if broken:
        raise LayraError(
            f"{args.vector}: {len(broken)} of {len(v.entries)} tensors hold NaN/inf values: "
            f"{', '.join(broken)}; the vector cannot be applied"
        )


def _summary(path, m: dict) -> None:
    kinds = [t["kind"] for t in m["tensors"].values()]
    print(
        f"{path}: {m['method']} vector, languages {','.join(m.get('languages') or []) or '-'}, "
        f"start {m['start']['model']} (weights {m['start']['weights']}); "
        f"{kinds.count('lowrank')} low-rank + {kinds.count('dense')} dense tensors"
        + (f" + {kinds.count('rows')} row-sparse" if "rows" in kinds else "")
    )


def register(sub) -> None:
    p = subparser(
        sub,
        "vector",
        "extract, apply and combine language vectors",
        "layra vector apply base-model vectors/gl:1.0 --out models/gl",
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)
    vs = p.add_subparsers(dest="vector_command", metavar="ACTION")
    for add in (_add_extract, _add_diff, _add_apply, _add_combine, _add_show):
        add(vs)


def _add_extract(vs) -> None:
    e = subparser(
        vs,
        "extract",
        "the language vector of a finished layra run",
        "layra vector extract runs/gl-layra --out vectors/gl",
    )
    e.add_argument("run", help="run directory (with run.json)")
    e.add_argument("--out", required=True, help="vector directory to write")
    e.add_argument(
        "--base",
        help="base model to use instead of run.json's base_model "
        "(must have the recorded fingerprint)",
    )
    e.add_argument(
        "--delta-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="how dense / row deltas are stored: fp32 (default, exact) or bf16 (half the "
        "size, relative error per element at most 2^-8; docs/vectors.md)",
    )
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=_extract)


def _add_diff(vs) -> None:
    d = subparser(
        vs,
        "diff",
        "a vector from two full checkpoints (TRAINED − START)",
        "layra vector diff base-model models/gl-full --out vectors/gl-full",
    )
    d.add_argument("start")
    d.add_argument("trained")
    d.add_argument("--out", required=True, help="vector directory to write")
    d.add_argument("--language", action="append", help="language code to record (repeatable)")
    d.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=_diff)


def _add_apply(vs) -> None:
    a = subparser(
        vs,
        "apply",
        "write MODEL + Σ λ·VEC as a Hugging Face model directory",
        "layra vector apply base-model vectors/gl:0.5 vectors/sw:0.5 --out models/gl+sw",
        description="Write MODEL + Σ λ_i·VEC_i. Single stage: apply θ0 VEC. Series: apply θ′ "
        "(an earlier output) VEC2:0.5. Merge: apply θ0 VECa:0.5 VECb:0.5. Instruct: apply the "
        "instruct sibling with --instruct.",
    )
    a.add_argument("model", help="model directory (safetensors; streamed) or .gguf file")
    a.add_argument("vectors", nargs="+", metavar="VEC[:λ]", help="vector directory, λ default 1")
    a.add_argument("--out", required=True, help="output model directory")
    a.add_argument(
        "--instruct",
        action="store_true",
        help="MODEL is a sibling of the vectors' start model (same architecture and "
        "tokenizer, other weights), e.g. its instruct version",
    )
    a.add_argument(
        "--force",
        action="store_true",
        help="apply even if MODEL's weights are not the vectors' start (recorded)",
    )
    a.add_argument(
        "--protect-rows",
        default=DEFAULT_PROTECT,
        metavar="SPEC",
        help="embedding/head rows left untouched: 'auto' (default: 'special' with --instruct, "
        "else 'none', as Eq. 1-3 have no exclusion), 'special' (special and chat-template "
        "tokens), 'none', or token ids, comma-separated (e.g. special,17)",
    )
    a.add_argument("--max-shard-size", help="re-shard the output (e.g. 2GB); default: as MODEL")
    a.add_argument("--gguf-file", help="GGUF file inside MODEL (loaded in memory)")
    a.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    a.set_defaults(func=_apply)


def _add_combine(vs) -> None:
    c = subparser(
        vs,
        "combine",
        "one vector from a weighted sum of vectors",
        "layra vector combine vectors/gl:0.5 vectors/sw:0.5 --out vectors/gl+sw",
    )
    c.add_argument("vectors", nargs="+", metavar="VEC:λ", help="vector and weight (λ<0 negates)")
    c.add_argument("--out", required=True, help="vector directory to write")
    c.add_argument(
        "--force",
        action="store_true",
        help="sum vectors that start from different weights (recorded)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    c.set_defaults(func=_combine)


def _add_show(vs) -> None:
    s = subparser(
        vs,
        "show",
        "print a vector's manifest summary and tensors; exit 2 if any holds NaN/inf",
        "layra vector show vectors/gl",
    )
    s.add_argument("vector")
    s.set_defaults(func=_show)
