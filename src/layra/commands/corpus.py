"""``layra corpus``: build per-language train / held-out text (debian, files, hf).

layra corpus debian --langs glg,eng,spa,por --out corpus/
layra corpus files glg=gl.txt eng=en.jsonl --out corpus-local/
layra corpus hf HuggingFaceFW/fineweb-2 --config glg_Latn --lang glg --max-docs 20000 --out fw/
"""

from __future__ import annotations

import argparse

from layra.cli import subparser
from layra.errors import require


def _common(p: argparse.ArgumentParser, min_words: int) -> None:
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train / held-out rule")
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.1,
        help="share of text (by document) held out, in [0, 1) (default 0.1)",
    )
    p.add_argument(
        "--min-words",
        type=int,
        default=min_words,
        help=f"drop paragraphs that are not prose of at least this many words; 0 keeps all "
        f"(default {min_words})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _check_common(args: argparse.Namespace) -> None:
    require(
        args.min_words >= 0, f"--min-words must be 0 (keep all) or positive, got {args.min_words}"
    )
    if getattr(args, "max_docs", None) is not None:
        require(args.max_docs >= 1, f"--max-docs must be at least 1, got {args.max_docs}")


def _debian(args: argparse.Namespace) -> None:
    from layra.corpus.debian import build_debian_corpus

    _check_common(args)

    build_debian_corpus(
        args.langs,
        args.out,
        sources=args.sources,
        cache=args.cache,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
        min_words=args.min_words,
        overwrite=args.overwrite,
    )


def _files(args: argparse.Namespace) -> None:
    from layra.corpus.files import build_files_corpus, parse_inputs

    _check_common(args)

    build_files_corpus(
        parse_inputs(args.inputs),
        args.out,
        field=args.field,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
        min_words=args.min_words,
        source=args.name,
        overwrite=args.overwrite,
    )


def _hf(args: argparse.Namespace) -> None:
    from layra.corpus.hf import build_hf_corpus

    _check_common(args)

    build_hf_corpus(
        args.dataset,
        args.out,
        lang=args.lang,
        config=args.config,
        field=args.field,
        split=args.split,
        data_files=args.data_files,
        max_docs=args.max_docs,
        seed=args.seed,
        heldout_fraction=args.heldout_fraction,
        min_words=args.min_words,
        source=args.name,
        overwrite=args.overwrite,
    )


def register(sub) -> None:
    p = subparser(
        sub,
        "corpus",
        "build per-language train / held-out text (Debian packages, local files, hub datasets)",
        "layra corpus debian --langs glg,eng,spa,por --out corpus/",
    )
    p.set_defaults(func=lambda args: p.print_help() or 2)
    csub = p.add_subparsers(dest="corpus_command", metavar="SOURCE")
    for add in (_add_debian, _add_files, _add_hf):
        add(csub)


def _add_debian(csub) -> None:
    d = subparser(
        csub,
        "debian",
        "text from Debian localisation packages: LibreOffice help pages, Wesnoth catalogues",
        "layra corpus debian --langs glg,eng,spa,por --sources libreoffice,wesnoth --out corpus/",
    )
    d.add_argument(
        "--langs",
        required=True,
        help="ISO 639-3 codes, comma-separated: glg, eng, spa, por, deu, fra, ita, hin",
    )
    d.add_argument(
        "--sources", default="libreoffice,wesnoth", help="libreoffice, wesnoth or both (default)"
    )
    d.add_argument(
        "--cache",
        default=None,
        help="where .deb files are downloaded and unpacked "
        "(default $LAYRA_CACHE/debian or ~/.cache/layra/debian)",
    )
    _common(d, min_words=5)
    d.set_defaults(func=_debian)


def _add_files(csub) -> None:
    f = subparser(
        csub,
        "files",
        "split and deduplicate local .txt / .jsonl / .parquet text",
        "layra corpus files glg=gl.txt eng=en.jsonl --out corpus-local/",
    )
    f.add_argument(
        "inputs", nargs="+", metavar="LANG=PATH", help="a file or directory per language"
    )
    f.add_argument("--field", default="text", help="jsonl / parquet column with the text")
    f.add_argument("--name", default="files", help="source directory name in the output")
    _common(f, min_words=0)
    f.set_defaults(func=_files)


def _add_hf(csub) -> None:
    h = subparser(
        csub,
        "hf",
        "stream a Hugging Face dataset (FineWeb 2 online; a local json / parquet offline)",
        "layra corpus hf HuggingFaceFW/fineweb-2 --config glg_Latn --lang glg "
        "--max-docs 20000 --out fw-gl/",
    )
    h.add_argument("dataset", help="hub id (HuggingFaceFW/fineweb-2) or builder (json, parquet)")
    h.add_argument("--config", default=None, help="dataset config, e.g. glg_Latn")
    h.add_argument("--lang", required=True, help="ISO 639-3 code of the text, e.g. glg")
    h.add_argument("--field", default="text", help="column with the text (default text)")
    h.add_argument("--split", default="train", help="dataset split (default train)")
    h.add_argument("--data-files", nargs="+", default=None, help="local files for json / parquet")
    h.add_argument("--max-docs", type=int, default=None, help="stop after this many rows")
    h.add_argument("--name", default="hf", help="source directory name in the output")
    _common(h, min_words=0)
    h.set_defaults(func=_hf)
