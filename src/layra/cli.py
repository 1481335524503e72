"""The ``layra`` command line: a thin layer over the library.

Each subcommand lives in ``layra/commands/<name>.py`` and exposes
``register(subparsers)`` (and, if it still accepts an older spelling,
``legacy_argv(argv)``); its handler parses, validates and calls one library
function. ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from layra import __version__
from layra.errors import LayraError

# Order here is the order in `layra --help`.
COMMANDS = (
    "train",
    "data",
    "plan",
    "vector",
    "eval",
    "export",
    "report",
    "corpus",
    "demo",
    "lens",
    "diagnose",
    "sweep",
    "choose",
)

EPILOG = """examples:
  layra train --config configs/gemma3-270m-layra-gl.yaml train.max_steps=20
  layra vector extract runs/gl-layra --out vectors/gl
  layra vector apply base-model vectors/gl:1.0 --out models/gl
  layra eval bpb models/gl --text glg=heldout/gl.txt --text eng=heldout/en.txt
  layra export gguf runs/gl-layra --out gl.gguf
  layra demo

Run `layra <command> --help` for each command's options and an example.
Set LAYRA_DEBUG=1 to see full tracebacks."""


class _ArgumentError(Exception):
    """A command line argparse refuses; :func:`main` prints it as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused command line is one ``layra: error:`` line pointing at
    ``--help``, not a usage dump (subcommand parsers are made of the same class)."""

    def error(self, message: str):  # type: ignore[override]
        raise _ArgumentError(f"{self.prog}: {message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="layra",
        description="Add languages to a pretrained causal LM without forgetting the old ones.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"layra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"layra.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    argv = _older_spelling(list(sys.argv[1:] if argv is None else argv))
    try:
        args, extra = parser.parse_known_args(argv)
        # KEY=VALUE overrides may come after options (`--merge train.lr=1e-4`); argparse
        # only collects positionals given in one run, so gather the stragglers here.
        if extra:
            if hasattr(args, "overrides") and all(
                "=" in e and not e.startswith("-") for e in extra
            ):
                args.overrides = list(args.overrides or []) + extra
            else:
                prog = " ".join(x for x in ("layra", args.command) if x)
                raise _ArgumentError(
                    f"{prog}: unrecognized arguments: {' '.join(extra)}; see `{prog} --help`"
                )
    except _ArgumentError as e:
        print(f"layra: error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    _quiet_library_errors()
    try:
        result = args.func(args)
        return int(result or 0)
    except LayraError as e:
        print(f"layra: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is not None and not os.environ.get("LAYRA_DEBUG"):
            # A file the user named or an output location: theirs to fix, so exit 2.
            print(f"layra: error: {_os_message(e)}", file=sys.stderr)
            return 2
        code = _unforeseen(e)
        if code is None:
            raise
        return code
    except KeyboardInterrupt:
        print("layra: interrupted; finished outputs are kept", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or an unforeseen environment problem
        code = _unforeseen(e)
        if code is None:
            raise
        return code


def _older_spelling(argv: list[str]) -> list[str]:
    """``argv`` in today's spelling: a command module may define ``legacy_argv(argv)`` to
    rewrite a spelling it used to accept (``layra lens MODEL`` -> ``lens profile MODEL``).

    Asked by name, like ``register``: cli imports no command module itself.
    """
    if not argv or argv[0] not in COMMANDS:
        return argv
    rewrite = getattr(importlib.import_module(f"layra.commands.{argv[0]}"), "legacy_argv", None)
    return rewrite(argv) if rewrite else argv


def _unforeseen(e: BaseException) -> int | None:
    """Print a bug's one-line summary and return 1; None under LAYRA_DEBUG (re-raise)."""
    if os.environ.get("LAYRA_DEBUG"):
        return None
    msg = str(e).strip().splitlines()
    print(
        f"layra: error: {type(e).__name__}: {msg[0] if msg else ''} (LAYRA_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return 1


_OS_HINTS = {
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.EROFS: "the file system is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another location",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "it is a directory; give a file",
    errno.EEXIST: "it already exists; remove it or choose another name",
}


def _os_message(e: OSError) -> str:
    what = e.strerror or type(e).__name__
    hint = _OS_HINTS.get(e.errno, "check the path and the disk")
    return f"{e.filename}: {what}; {hint}"


def _quiet_library_errors() -> None:
    """Keep library log lines that only repeat what layra's own error line says.

    datasets logs "Failed to load JSON from file ..." before raising the error that
    layra turns into its one line (layra.data.iter_documents).
    """
    import logging

    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


def split_lang_path(spec: str, flag: str = "--text") -> tuple[str, str]:
    """``"glg=texts/gl.txt"`` -> ``("glg", "texts/gl.txt")``; one-line error otherwise."""
    lang, sep, path = spec.partition("=")
    if not (sep and lang.strip() and path):
        raise LayraError(f"{flag} {spec!r}: expected LANG=PATH, e.g. glg=texts/glg.txt")
    return lang.strip(), path


def subparser(sub, name: str, help: str, example: str, description: str | None = None):
    """Add a subcommand whose --help ends with a working example."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def config_arguments(
    p: argparse.ArgumentParser, help: str = "YAML run config (see configs/)"
) -> None:
    """``--config FILE`` plus ``KEY=VALUE`` dotted overrides (train, plan, sweep)."""
    p.add_argument("--config", "-c", help=help)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
