"""``layra lens``: logit-lens language profile of a model, and k/m suggested from it.

layra lens profile MODEL --text eng=en.txt --text glg=gl.txt --out lens.json --heatmap lens.png
layra lens suggest lens.json
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from layra.cli import split_lang_path, subparser
from layra.errors import LayraError, require

_LANG = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def read_texts(specs: list[str] | None) -> dict[str, tuple[Path, str]]:
    """Parse repeated ``--text LANG=PATH`` into language -> (path, text), in the order given.

    Raises LayraError for a malformed spec, a repeated language, a missing, empty,
    binary or too large file (:func:`layra.documents.read_whole_text`).
    """
    from layra.documents import read_whole_text

    require(bool(specs), "give at least one --text LANG=PATH")
    out: dict[str, tuple[Path, str]] = {}
    for spec in specs:
        lang, path = split_lang_path(spec)
        require(bool(_LANG.match(lang)), f"--text {spec!r}: {lang!r} is not a language label")
        require(lang not in out, f"language {lang!r} given twice in --text")
        p = Path(path).expanduser()
        require(not p.is_dir(), f"text file {p} (for {lang}) is a directory, not a text file")
        require(p.is_file(), f"text file {p} (for {lang}) does not exist")
        try:
            text = read_whole_text(p)  # bounded, NUL and binary files refused
        except LayraError as e:
            raise LayraError(f"text file {e}") from e
        require(text.strip() != "", f"text file {p} (for {lang}) is empty")
        out[lang] = (p, text)
    return out


def _check_out(path: Path, overwrite: bool) -> None:
    from layra.atomic import check_writable

    require(
        overwrite or not path.exists(),
        f"output {path} already exists (pass --overwrite to replace it)",
    )
    check_writable(path)


def _warn_empty(tmap) -> None:
    for lang, size in tmap.sizes().items():
        if size == 0:
            print(
                f"layra: warning: no token is distinctive of {lang}; its own-language mass is 0",
                file=sys.stderr,
            )


def _suggestion(profile: dict):
    """k, m and why, recorded in ``profile``; a profile without signal is still valid."""
    from layra.lens import suggest_km

    try:
        k, m, why = suggest_km(profile)
    except LayraError as e:
        k = m = None
        why = f"no suggestion: {e}"
    profile["suggestion"] = {"k": k, "m": m, "explanation": why}
    return k, m, why


def _run_profile(args) -> int:
    from layra.atomic import atomic_write_bytes, atomic_write_json
    from layra.lens import lens_profile
    from layra.models import load_model
    from layra.provenance import provenance
    from layra.tokenlang import token_language_map

    require(
        args.unexpected is None,
        f"unexpected argument {args.unexpected!r} (did you mean `layra lens suggest PROFILE`?)",
    )
    require(args.out is not None, "give --out PROFILE.json")
    require(args.max_tokens >= 2, f"--max-tokens must be at least 2 (got {args.max_tokens})")
    require(args.window >= 2, f"--window must be at least 2 (got {args.window})")
    out = Path(args.out)
    _check_out(out, args.overwrite)
    heatmap = Path(args.heatmap) if args.heatmap else None
    if heatmap:
        _check_out(heatmap, args.overwrite)
    sources = read_texts(args.text)
    require(
        args.english in sources,
        f"the lens needs English text too (--text {args.english}=PATH): it defines which "
        "tokens are English (or name another --english language)",
    )
    texts = {lang: text for lang, (_, text) in sources.items()}
    from layra.precision import announce, resolve_precision

    prec = resolve_precision(args.dtype, device="cpu")
    announce(prec)
    model, tok = load_model(args.model, dtype=prec.name)
    tmap = token_language_map(tok, texts, ratio=args.ratio, min_count=args.min_count)
    _warn_empty(tmap)
    profile = lens_profile(
        model,
        tok,
        texts,
        tmap,
        english=args.english,
        max_tokens=args.max_tokens,
        window=args.window,
    )
    profile = {
        "model": args.model,
        **profile,
        "provenance": provenance(dtype=prec.name, precision=prec.to_dict()),
    }
    for lang, (path, _) in sources.items():
        profile["texts"][lang]["path"] = str(path)
    k, m, why = _suggestion(profile)
    atomic_write_json(out, profile)
    print(f"wrote {out}")
    if heatmap:
        from layra.plots_lens import lens_heatmap

        atomic_write_bytes(heatmap, lens_heatmap(profile, k, m))
        print(f"wrote {heatmap}")
    print(why)
    return 0


def _run_suggest(args) -> int:
    from layra.lens import suggest_km

    require(args.profile is not None, "usage: layra lens suggest PROFILE")
    k, m, why = suggest_km(args.profile, languages=args.lang, threshold=args.threshold)
    print(why)
    print(f"k={k} m={m}")
    return 0


def legacy_argv(argv: list[str]) -> list[str]:
    """``layra lens MODEL ...`` (from before ``lens profile`` existed) means ``lens profile``."""
    if len(argv) >= 2 and argv[0] == "lens" and argv[1] not in ACTIONS:
        if not argv[1].startswith("-"):
            return ["lens", "profile", *argv[1:]]
    return argv


ACTIONS = ("profile", "suggest")


def register(sub) -> None:
    p = subparser(
        sub,
        "lens",
        help="logit-lens language profile per layer; `lens suggest` turns it into LayRA's k, m",
        example="layra lens profile model-dir --text eng=texts/eng.txt --text glg=texts/glg.txt "
        "--out lens.json --heatmap lens.png && layra lens suggest lens.json",
        description="Logit lens: every layer's residual stream through the final norm and LM head; "
        "per layer and text language, the next-token probability mass on that language's tokens "
        "and on English tokens (token→language map from token frequencies in the texts, see "
        "docs/lens.md). `layra lens suggest PROFILE` prints k and m for LayRA. "
        "`layra lens MODEL ...` is short for `layra lens profile MODEL ...`.",
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)
    actions = p.add_subparsers(dest="lens_command", metavar="ACTION")
    prof = subparser(
        actions,
        "profile",
        "per layer and language, the next-token mass on that language's and English tokens",
        "layra lens profile model-dir --text eng=texts/eng.txt --text glg=texts/glg.txt "
        "--out lens.json --heatmap lens.png",
    )
    prof.add_argument("model", metavar="MODEL", help="model directory, .gguf file or hub id")
    prof.add_argument("unexpected", nargs="?", help=argparse.SUPPRESS)
    _add_profile_options(prof)
    prof.set_defaults(func=_run_profile)
    sug = subparser(
        actions,
        "suggest",
        "LayRA's k and m from a profile (docs/lens.md, the k / m rule)",
        "layra lens suggest lens.json",
    )
    sug.add_argument("profile", nargs="?", metavar="PROFILE", help="a profile JSON (lens profile)")
    _add_suggest_options(sug)
    sug.set_defaults(func=_run_suggest)


def _add_profile_options(p) -> None:
    p.add_argument(
        "--text",
        action="append",
        metavar="LANG=PATH",
        help="UTF-8 text in language LANG (repeatable; English is required)",
    )
    p.add_argument("--out", metavar="PROFILE.json", help="where to write the profile")
    p.add_argument("--heatmap", metavar="PNG", help="also draw the layers × languages heatmap")
    p.add_argument(
        "--english",
        default="eng",
        metavar="LANG",
        help="which --text language is English (default eng)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=512,
        help="tokens of each text the lens reads (default 512)",
    )
    p.add_argument("--window", type=int, default=256, help="tokens per forward pass (default 256)")
    p.add_argument(
        "--ratio",
        type=float,
        default=5.0,
        help="token→language rule: frequency ratio over every other language (default 5)",
    )
    p.add_argument(
        "--min-count",
        type=int,
        default=3,
        help="token→language rule: minimum count in its language's text (default 3)",
    )
    p.add_argument(
        "--dtype",
        default="auto",
        type=lambda s: {"float32": "fp32", "bfloat16": "bf16"}.get(s, s),  # old spellings
        choices=["auto", "fp32", "bf16"],
        help="weights dtype; auto (default): bf16 where this CPU multiplies bf16 fast, else fp32",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_suggest_options(p) -> None:
    p.add_argument(
        "--lang",
        action="append",
        metavar="LANG",
        help="languages to base k, m on (default: all but English)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="relative own-language mass below which a layer is language-general (default 0.5)",
    )
