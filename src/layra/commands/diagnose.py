"""``layra diagnose tokenizer``: fertility and fragmentation per language, before training.

layra diagnose tokenizer MODEL --text eng=en.txt --text urd=ur.txt --out diag.json
"""

from __future__ import annotations

from pathlib import Path

from layra.cli import subparser
from layra.errors import require


def _run_tokenizer(args) -> int:
    from layra.atomic import atomic_write_json, atomic_write_text, check_writable
    from layra.commands.lens import read_texts
    from layra.diagnose import diagnose_tokenizer, diagnosis_record, markdown_table
    from layra.models import load_tokenizer

    require(
        0 < args.min_char_ratio < 1,
        f"--min-char-ratio must be between 0 and 1 (got {args.min_char_ratio})",
    )
    require(
        0 < args.max_byte_share <= 1,
        f"--max-byte-share must be in (0, 1] (got {args.max_byte_share})",
    )
    outs = [Path(p) for p in (args.out, args.markdown) if p]
    for p in outs:
        require(
            args.overwrite or not p.exists(),
            f"output {p} already exists (pass --overwrite to replace it)",
        )
        check_writable(p)
    sources = read_texts(args.text)
    require(
        args.reference in sources,
        f"reference language {args.reference!r} is not among the texts ({', '.join(sources)}); "
        f"add --text {args.reference}=PATH or pick --reference",
    )
    tok = load_tokenizer(args.model)
    report = diagnose_tokenizer(
        tok,
        {lang: text for lang, (_, text) in sources.items()},
        reference=args.reference,
        min_char_ratio=args.min_char_ratio,
        max_byte_share=args.max_byte_share,
    )
    table = markdown_table(report)
    print(table, end="")
    if args.markdown:
        atomic_write_text(args.markdown, table)
    if args.out:
        atomic_write_json(args.out, diagnosis_record(args.model, report, sources))
    flagged = [lang for lang, r in report["languages"].items() if r["flagged"]]
    if flagged:
        print(f"fragmented by this tokenizer: {', '.join(flagged)}")
    return 0


def _no_target(args) -> int:
    args.parser.print_help()
    return 2


def register(sub) -> None:
    p = subparser(
        sub,
        "diagnose",
        help="checks to run before training (tokenizer fragmentation per language)",
        example="layra diagnose tokenizer model-dir --text eng=texts/eng.txt --text urd=texts/urd.txt",
    )
    p.set_defaults(func=_no_target, parser=p)
    what = p.add_subparsers(dest="what", metavar="WHAT")
    t = subparser(
        what,
        "tokenizer",
        help="tokens per word, chars and bytes per token, byte-fallback/unknown share, vs English",
        example="layra diagnose tokenizer model-dir --text eng=texts/eng.txt --text urd=texts/urd.txt "
        "--out diag.json --markdown diag.md",
        description="Per language: tokens per word, characters and bytes per token, share of "
        "byte-piece and unknown tokens, each against the reference language; flags a language "
        "the tokenizer fragments (chars/token below --min-char-ratio × the reference's, or "
        "byte-piece+unknown share at least --max-byte-share). Loads only the tokenizer.",
    )
    t.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    t.add_argument(
        "--text",
        action="append",
        metavar="LANG=PATH",
        help="UTF-8 text in language LANG (repeatable; include the reference)",
    )
    t.add_argument(
        "--reference",
        default="eng",
        metavar="LANG",
        help="language to compare against (default eng)",
    )
    t.add_argument("--out", metavar="JSON", help="write the diagnosis as JSON")
    t.add_argument("--markdown", metavar="MD", help="write the table as Markdown")
    t.add_argument(
        "--min-char-ratio",
        type=float,
        default=0.5,
        help="flag below this share of the reference's chars/token (default 0.5)",
    )
    t.add_argument(
        "--max-byte-share",
        type=float,
        default=0.05,
        help="flag at or above this byte-piece+unknown share (default 0.05)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    t.set_defaults(func=_run_tokenizer)
