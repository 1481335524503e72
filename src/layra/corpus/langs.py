"""ISO 639-3 language codes and what each Debian source calls them.

langs = parse_langs("glg,eng,spa,por")
LANGS["glg"].libreoffice_package     # "libreoffice-help-gl"
"""

from __future__ import annotations

from dataclasses import dataclass

from layra.errors import LayraError


@dataclass(frozen=True)
class Lang:
    code: str  # ISO 639-3, what the CLI and output directories use
    name: str
    libreoffice: str  # package suffix: libreoffice-help-<suffix>
    help_dir: str  # directory under usr/share/libreoffice/help/
    wesnoth: str | None  # locale directory; None: no catalogue (English is the msgid)

    @property
    def libreoffice_package(self) -> str:
        return f"libreoffice-help-{self.libreoffice}"


LANGS: dict[str, Lang] = {
    lang.code: lang
    for lang in (
        Lang("glg", "Galician", "gl", "gl", "gl"),
        Lang("eng", "English", "en-us", "en-US", None),
        Lang("spa", "Spanish", "es", "es", "es"),
        Lang("por", "Portuguese", "pt", "pt", "pt"),  # European Portuguese, not pt-BR
        Lang("deu", "German", "de", "de", "de"),
        Lang("fra", "French", "fr", "fr", "fr"),
        Lang("ita", "Italian", "it", "it", "it"),
        Lang("hin", "Hindi", "hi", "hi", None),  # Wesnoth 1.16 ships no Hindi catalogue
    )
}


def parse_langs(spec: str | list[str]) -> list[str]:
    """Validated, de-duplicated ISO 639-3 codes from ``"glg,eng"`` or a list.

    An unknown code raises :class:`LayraError` listing the valid ones.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    codes = list(dict.fromkeys(c.strip().lower() for c in items if c.strip()))
    if not codes:
        raise LayraError(f"no languages given; valid codes: {', '.join(LANGS)}")
    unknown = [c for c in codes if c not in LANGS]
    if unknown:
        raise LayraError(
            f"unknown language code {', '.join(unknown)}; valid ISO 639-3 codes: "
            + ", ".join(f"{c} ({lang.name})" for c, lang in LANGS.items())
        )
    return codes


def check_lang_code(code: str) -> str:
    """A language code for local or hub text: three lowercase letters (ISO 639-3)."""
    if not (len(code) == 3 and code.isascii() and code.isalpha() and code.islower()):
        raise LayraError(f"language {code!r} is not an ISO 639-3 code (three letters, e.g. glg)")
    return code
