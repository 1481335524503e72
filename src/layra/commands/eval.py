"""`layra eval`: score a model per language and record each result in a results store.

layra eval bpb models/gl --text glg=heldout/gl.txt --text eng=heldout/en.txt
layra eval tasks models/gl --tasks xnli,xstorycloze --langs eng,glg
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layra.cli import split_lang_path, subparser
from layra.errors import LayraError, require

MODEL_HELP = (
    "a model directory or .gguf file; MODEL+VEC[:λ][+VEC[:λ]...] to add language vectors "
    "in memory; or a finished layra run directory (its adapter / trained tensors / model/)"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = subparser(
        sub,
        "eval",
        help="score a model per language: bits per byte, lm-eval benchmarks",
        example="layra eval bpb runs/gl-layra --text glg=heldout/gl.txt --text eng=heldout/en.txt",
    )
    whats = p.add_subparsers(dest="eval_command", metavar="WHAT")
    p.set_defaults(func=lambda args: p.print_help() or 2)
    _add_bpb(whats)
    _add_tasks(whats)


def _add_bpb(whats) -> None:
    b = subparser(
        whats,
        "bpb",
        help="bits per byte on held-out text per language (comparable across tokenizers)",
        example="layra eval bpb base+vectors/gl:0.5 --text glg=heldout/gl.txt --store results",
        description=(
            "Bits per byte = next-token NLL (nats) of the documents' tokens / (ln 2 x their\n"
            "UTF-8 bytes). Documents: a .txt file's blank-line separated blocks, a .jsonl\n"
            "file's rows' text. Each document is tokenised and scored on its own, in windows\n"
            "of BOS (EOS if there is none) + at most --seq-len - 1 of its tokens; a longer\n"
            "document takes overlapping windows half a window apart, and every token is\n"
            "scored exactly once. No window holds or is conditioned on another document.\n"
            "See docs/evaluation.md for the exact definition."
        ),
    )
    b.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    b.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="LANG=PATH",
        help="held-out text of one language (repeatable)",
    )
    b.add_argument(
        "--text-dir",
        metavar="DIR",
        help="every DIR/LANG.txt and DIR/LANG.jsonl, e.g. a run's heldout/ directory",
    )
    b.add_argument(
        "--seq-len", type=int, default=512, help="window length in tokens, BOS included (512)"
    )
    b.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (8)")
    b.add_argument("--max-bytes", type=int, help="score only the leading documents up to N bytes")
    _common(b)
    b.set_defaults(func=run_bpb)


def _add_tasks(whats) -> None:
    t = subparser(
        whats,
        "tasks",
        help="paper benchmarks through lm-evaluation-harness (0-shot accuracy; MGSM 3-shot)",
        example="layra eval tasks models/gl --tasks xnli,pawsx,xcopa,xstorycloze --langs eng,glg",
        description=(
            "Runs lm-eval tasks (family + language -> e.g. xnli_gl) on the loaded model.\n"
            "Families: xnli, pawsx, xcopa, xstorycloze (0-shot acc); mgsm (3-shot greedy exact\n"
            "match) and global_mmlu (Global-MMLU-Lite) for instruct models. Offline, --task-dir\n"
            "holds task YAMLs of the same names over local data (docs/evaluation.md).\n"
            "A task folder is code: lm-eval imports the Python its YAMLs name (!function),\n"
            "so only use task folders you trust."
        ),
    )
    t.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    t.add_argument("--tasks", required=True, help="comma-separated task families")
    t.add_argument("--langs", required=True, help="comma-separated ISO 639-3 codes (eng,glg)")
    t.add_argument("--limit", type=int, help="at most N examples per task (quick checks)")
    t.add_argument(
        "--task-dir",
        metavar="DIR",
        help="local lm-eval task YAMLs (offline); a task folder is code (its YAMLs can run "
        "Python): only use ones you trust",
    )
    t.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (8)")
    _common(t)
    t.set_defaults(func=run_tasks)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default="results",
        metavar="DIR",
        help="results store: one JSON record per evaluation (results/)",
    )
    p.add_argument("--name", help="the model's name in reports (default: from MODEL)")
    p.add_argument(
        "--seed",
        type=int,
        help="MODEL's training seed; a report groups one name's seeds into a mean and "
        "interval (default: train.seed of a run directory, else none)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="weights and compute dtype; bf16 autocasts matmuls. auto (default): bf16 where "
        "this CPU multiplies bf16 fast, else fp32 (the choice is printed and recorded)",
    )
    p.add_argument("--force", action="store_true", help="recompute results already stored")


def parse_texts(items: list[str], text_dir: str | None) -> list[tuple[str, str]]:
    """``LANG=PATH`` items plus every ``LANG.txt`` / ``LANG.jsonl`` of ``text_dir``, in order."""
    out = [split_lang_path(item) for item in items]
    if text_dir:
        d = Path(text_dir)
        require(d.is_dir(), f"--text-dir {d} is not a directory")
        found = sorted(p for p in d.iterdir() if p.suffix in (".txt", ".jsonl"))
        require(bool(found), f"--text-dir {d} has no LANG.txt or LANG.jsonl files")
        out += [(p.stem, str(p)) for p in found]
    if not out:
        raise LayraError("give held-out text with --text LANG=PATH or --text-dir DIR")
    return out


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _clean_store(store: str) -> None:
    """Record files a killed evaluation left half-written in the store (layra's names only)."""
    from layra.atomic import clean_stale

    clean_stale(store)


def run_bpb(args: argparse.Namespace) -> int:
    from layra.evaluation.run import run_bpb as run

    _clean_store(args.store)

    run(args.model, parse_texts(args.text, args.text_dir), args.store, name=args.name,
        seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
        max_bytes=args.max_bytes, force=args.force, seed=args.seed)  # fmt: skip
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from layra.evaluation.run import run_tasks as run

    _clean_store(args.store)

    run(args.model, _split(args.tasks), _split(args.langs), args.store, task_dir=args.task_dir,
        limit=args.limit, name=args.name, batch_size=args.batch_size, dtype=args.dtype,
        force=args.force, seed=args.seed)  # fmt: skip
    return 0
