"""Per-language text from Debian localisation packages: LibreOffice help, Wesnoth.

    layra corpus debian --langs glg,eng,spa,por --out corpus/

    build_debian_corpus(["glg", "eng"], Path("corpus"), sources=("libreoffice",))

- ``libreoffice``: ``libreoffice-help-<lang>`` help pages. A page (its path
  under ``help/<lang>/``) is a document; the same path in every language is the
  same document, so translations land on the same side of the split.
- ``wesnoth``: the gettext catalogues of ``wesnoth-1.16-data`` and the official
  campaign packages. A catalogue (text domain, e.g. ``wesnoth-httt``) is a
  document; English is the catalogues' msgids, other languages their msgstrs.

English is always read as the reference for untranslated-paragraph removal,
even when it is not among the requested languages.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from layra.corpus import apt
from layra.corpus.clean import clean_languages
from layra.corpus.langs import LANGS, parse_langs
from layra.corpus.markup import help_paragraphs, wesnoth_text
from layra.corpus.mo import read_mo
from layra.corpus.output import reuse_existing, summary_lines, write_corpus
from layra.corpus.split import Document, check_fraction
from layra.errors import LayraError
from layra.lock import holds_output_lock

WESNOTH_BRANCH = "1.16"  # the branch Debian 12 ships; package names carry it
WESNOTH_CAMPAIGNS = (
    "did", "dm", "dw", "ei", "httt", "l", "low", "nr",
    "sof", "sota", "sotbe", "thot", "trow", "tsg", "ttb", "utbs",
)  # fmt: skip
WESNOTH_PACKAGES = (f"wesnoth-{WESNOTH_BRANCH}-data",) + tuple(
    f"wesnoth-{WESNOTH_BRANCH}-{c}" for c in WESNOTH_CAMPAIGNS
)
# Interface strings (menus, error messages, editor), not prose: skipped.
WESNOTH_UI_DOMAINS = ("wesnoth", "wesnoth-lib", "wesnoth-editor")
# Only what we read is unpacked: wesnoth-1.16-data is 146 MB of mostly images
# and sounds.
_PATTERNS = {
    "libreoffice": ("usr/share/libreoffice/help/*/text/*", "usr/share/doc/*"),
    "wesnoth": ("usr/share/games/wesnoth/*/locale/*.mo", "usr/share/doc/*"),
}
SOURCES = tuple(_PATTERNS)
_HELP_SUFFIXES = (".html", ".xhp")
_BLANK_LINE = re.compile(r"\n\s*\n")


def default_cache() -> Path:
    """Where downloaded packages are kept: ``$LAYRA_CACHE/debian`` or ``~/.cache/layra/debian``."""
    base = os.environ.get("LAYRA_CACHE") or Path.home() / ".cache" / "layra"
    return Path(base).expanduser() / "debian"


def parse_sources(spec: str | list[str]) -> list[str]:
    """Validated source names from ``"libreoffice,wesnoth"`` or a list."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        raise LayraError(
            f"unknown source {', '.join(unknown) or '(none)'}; valid sources: {', '.join(SOURCES)}"
        )
    return names


def source_packages(source: str, langs: list[str]) -> list[str]:
    """The Debian packages a source needs for ``langs`` (English always included)."""
    if source == "libreoffice":
        codes = ["eng", *[c for c in langs if c != "eng"]]
        return [LANGS[c].libreoffice_package for c in codes]
    return list(WESNOTH_PACKAGES)


def read_libreoffice(help_dirs: dict[str, Path]) -> dict[str, list[Document]]:
    """Help pages per language; ``help_dirs`` maps a language to its ``help/<dir>``.

    A document's id is the page's path under its language directory without
    the suffix (``text/shared/01/01010000``), identical across languages.
    """
    out: dict[str, list[Document]] = {}
    for lang, root in help_dirs.items():
        files = sorted(p for p in root.rglob("*") if p.suffix in _HELP_SUFFIXES and p.is_file())
        docs = []
        for f in tqdm(files, desc=f"libreoffice {lang}", unit="page", leave=False):
            paras = help_paragraphs(f.read_text(encoding="utf-8", errors="replace"))
            if paras:
                docs.append(Document(f.relative_to(root).with_suffix("").as_posix(), tuple(paras)))
        out[lang] = docs
    return out


def _paragraphs(s: str) -> list[str]:
    # A catalogue string may hold several paragraphs separated by blank lines.
    return [p for p in (" ".join(x.split()) for x in _BLANK_LINE.split(wesnoth_text(s))) if p]


def read_wesnoth(
    locale_dirs: list[Path], langs: list[str], exclude: tuple[str, ...] = WESNOTH_UI_DOMAINS
) -> dict[str, list[Document]]:
    """Catalogue text per language from ``.../locale/<loc>/LC_MESSAGES/*.mo`` trees.

    English (``eng``) is the union of msgids over every locale found, so it
    covers strings any translation has; another language is its own locale's
    msgstrs. Plural entries are skipped (they are counts and placeholders), as
    are the ``exclude`` domains (the game's interface strings by default).
    Languages without a Wesnoth locale are absent from the result.
    """
    catalogues: dict[str, dict[str, Path]] = {}  # domain -> locale -> file
    for d in locale_dirs:
        for mo in sorted(d.glob("*/LC_MESSAGES/*.mo")):
            if mo.stem in exclude:
                continue
            catalogues.setdefault(mo.stem, {})[mo.parent.parent.name] = mo
    out: dict[str, list[Document]] = {
        lang: [] for lang in langs if lang == "eng" or LANGS[lang].wesnoth
    }
    for domain in tqdm(sorted(catalogues), desc="wesnoth catalogues", leave=False):
        by_locale = catalogues[domain]
        english: dict[str, None] = {}
        for loc in sorted(by_locale):
            for e in read_mo(by_locale[loc].read_bytes(), str(by_locale[loc])):
                if not e.plural:
                    english.setdefault(e.msgid)
        for lang in out:
            if lang == "eng":
                strings = sorted(english)
            else:
                mo = by_locale.get(LANGS[lang].wesnoth or "")
                if mo is None:
                    continue
                entries = sorted(read_mo(mo.read_bytes(), str(mo)), key=lambda e: e.msgid)
                strings = [e.msgstr for e in entries if not e.plural]
            paras = [p for s in strings for p in _paragraphs(s)]
            if paras:
                out[lang].append(Document(domain, tuple(paras)))
    return out


def license_texts(packages: list[apt.Package]) -> dict[str, str]:
    """``{"<package>.copyright": text}`` from each package's ``usr/share/doc/<pkg>/copyright``."""
    out = {}
    for pkg in packages:
        f = pkg.root / "usr/share/doc" / pkg.name / "copyright"
        if f.is_file():
            out[f"{pkg.name}.copyright"] = f.read_text(encoding="utf-8", errors="replace")
        else:
            print(f"layra: warning: {pkg.name} has no copyright file", file=sys.stderr)
    return out


def _read_source(
    source: str, pkgs: list[apt.Package], langs: list[str]
) -> dict[str, list[Document]]:
    if source == "libreoffice":
        codes = ["eng", *[c for c in langs if c != "eng"]]
        help_dirs = {
            c: p.root / "usr/share/libreoffice/help" / LANGS[c].help_dir
            for c, p in zip(codes, pkgs, strict=True)
        }
        for c, d in help_dirs.items():
            if not d.is_dir():
                raise LayraError(f"{LANGS[c].libreoffice_package} has no help pages under {d}")
        return read_libreoffice(help_dirs)
    locale_dirs = [d for p in pkgs for d in p.root.glob("usr/share/games/wesnoth/*/locale")]
    return read_wesnoth(locale_dirs, ["eng", *[c for c in langs if c != "eng"]])


def _fetch(source: str, langs: list[str], cache: Path):
    """The source's packages for ``langs``, downloaded (or cached) and unpacked."""
    names = source_packages(source, langs)
    return [
        apt.fetch_package(n, cache, _PATTERNS[source])
        for n in tqdm(names, desc=f"{source}: fetch + unpack", unit="pkg")
    ]


def _warn_missing(source: str, raw: dict[str, list[Document]], langs: list[str]) -> None:
    for lang in langs:
        if lang not in raw:
            print(
                f"layra: warning: {source} has no {LANGS[lang].name} text; skipped",
                file=sys.stderr,
            )


@dataclass
class _Read:
    """Cleaned documents per source and language, and what the corpus records about them."""

    texts: dict[str, dict[str, list[Document]]] = field(default_factory=dict)
    dropped: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    packages: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    licenses: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)  # English doc sizes


def _read_sources(sources: list[str], langs: list[str], cache: Path, min_words: int) -> _Read:
    read = _Read()
    for source in sources:
        pkgs = _fetch(source, langs, cache)
        read.packages[source] = [{"name": p.name, "version": p.version} for p in pkgs]
        read.licenses.update(license_texts(pkgs))
        raw = _read_source(source, pkgs, langs)
        _warn_missing(source, raw, langs)
        cleaned, drops = clean_languages(raw, reference="eng", min_words=min_words)
        # The English original decides the split, whichever languages are asked for.
        read.sizes[source] = {d.doc_id: d.chars for d in cleaned["eng"]}
        keep = [c for c in langs if c in cleaned]
        read.texts[source] = {c: cleaned[c] for c in keep}
        read.dropped[source] = {c: drops[c] for c in keep}
    return read


@holds_output_lock("out")
def build_debian_corpus(
    langs: list[str] | str,
    out: Path | str,
    sources: list[str] | str = SOURCES,
    cache: Path | str | None = None,
    seed: int = 0,
    heldout_fraction: float = 0.1,
    min_words: int = 5,
    overwrite: bool = False,
) -> Path:
    """Build ``out/<source>/<lang>/{train,heldout}.txt`` from Debian packages.

    Packages are fetched with ``apt-get download`` (or taken from ``cache``)
    and unpacked there; markup is stripped; paragraphs that are not prose,
    still English in a translation, or duplicated are dropped; documents are
    split into train and held-out by a seeded rule shared by all languages.
    An existing identical corpus at ``out`` is reused. Returns ``out``.
    """
    langs = parse_langs(langs)
    sources = parse_sources(sources)
    check_fraction(heldout_fraction)
    out = Path(out).expanduser()
    cache = Path(cache).expanduser() if cache else default_cache()
    request = {
        "kind": "debian",
        "langs": langs,
        "sources": sources,
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "min_words": min_words,
    }
    if reuse_existing(out, request, overwrite):
        print(f"corpus {out} already built with these settings; reusing it (--overwrite rebuilds)")
        return out
    read = _read_sources(sources, langs, cache, min_words)
    write_corpus(
        out, read.texts, request, heldout_fraction=heldout_fraction, seed=seed,
        dropped=read.dropped, packages=read.packages, licenses=read.licenses, sizes=read.sizes,
        overwrite=overwrite,
    )  # fmt: skip
    print("\n".join(summary_lines(out)))
    print(f"wrote {out}")
    return out
