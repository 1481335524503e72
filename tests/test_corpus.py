"""The corpus builder on fake Debian trees, local files and a local "hub" dataset.

Nothing touches apt or the network: ``apt.fetch_package`` is replaced by a
function returning trees built here, shaped like the unpacked packages
(usr/share/libreoffice/help/<lang>/text/.../*.html, wesnoth .mo catalogues).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from layra.cli import main
from layra.corpus import apt
from layra.corpus.clean import clean_languages
from layra.corpus.debian import WESNOTH_PACKAGES, build_debian_corpus
from layra.corpus.files import build_files_corpus, parse_inputs
from layra.corpus.hf import build_hf_corpus
from layra.corpus.langs import parse_langs
from layra.corpus.markup import help_paragraphs, wesnoth_text
from layra.corpus.mo import read_mo
from layra.corpus.split import Document, assign_heldout, remove_leaks, split_languages
from layra.corpus.text import dedup_key, is_prose, looks_english
from layra.errors import LayraError

# --------------------------------------------------------------------------- fakes


def write_mo(path: Path, entries: dict[str, str]) -> None:
    """A minimal GNU .mo writer (little-endian, no hash table), header included."""
    items = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **entries}.items())
    ids = [k.encode() for k, _ in items]
    strs = [v.encode() for _, v in items]
    n = len(items)
    orig_at, trans_at = 28, 28 + 8 * n
    data_at = trans_at + 8 * n
    blob, orig_tab, trans_tab = b"", [], []
    for table, strings in ((orig_tab, ids), (trans_tab, strs)):
        for s in strings:
            table.append((len(s), data_at + len(blob)))
            blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, orig_at, trans_at, 0, data_at)
    tables = b"".join(struct.pack("<2I", *e) for e in orig_tab + trans_tab)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tables + blob)


def help_page(paragraphs: list[str], extra: str = "") -> str:
    """A page shaped like Debian 12's LibreOffice help HTML."""
    body = "\n".join(
        f'<p id="par_{i}" class="paragraph" dir="auto">{p}</p>' for i, p in enumerate(paragraphs)
    )
    return (
        '<!DOCTYPE html><html><head><title>Title here</title><script>var x = "code";</script></head>'
        '<body><header><p dir="auto">LibreOffice 7.4 Help navigation</p></header>'
        '<div id="DisplayArea" itemprop="softwareHelp">'
        f'<h1 id="hd_1" dir="auto">Heading</h1>{body}{extra}</div>'
        '<footer><div class="debug"><p dir="auto">This page is: /text/shared/x.xhp in the debug box</p></div>'
        "</footer></body></html>"
    )


EN = {
    f"page{i}": [
        f"Paragraph {i} explains how the first tool of page {i} works in practice.",
        f"Choose the second option on page {i} to change the default settings.",
        "This shared sentence appears on many pages of the help.",
    ]
    for i in range(8)
}
GL = {
    f"page{i}": [
        f"O parágrafo {i} explica como funciona a primeira ferramenta da páxina {i}.",
        # Every third page leaves its second paragraph in English (untranslated).
        EN[f"page{i}"][1]
        if i % 3 == 0
        else f"Escolla a segunda opción da páxina {i} para mudar a configuración.",
        "Esta frase compartida aparece en moitas páxinas da axuda.",
    ]
    for i in range(8)
}
# One Galician page still carries English that is not a verbatim copy.
GL["page7"].append("This is an older English wording that the translators never touched at all.")
MARKUP_EXTRA = (
    '<p class="paragraph">Press <span class="switchinline"><span hidden="true" class="MAC">Command</span>'
    '<span hidden="true" id="default1">Ctrl</span></span>+S to save the document &amp; keep it.</p>'
    '<div class="bascode"><pre><code>Sub Main\n  MsgBox "hello world from basic code"\nEnd Sub</code></pre></div>'
    '<div class="howtoget"><p class="howtogetheader">Choose Tools - Options - LibreOffice - General</p></div>'
)

WESNOTH_EN_GL = {
    "wesnoth-httt": {
        "We must flee to the south before the orcs arrive at the gates.": "Debemos fuxir cara ao sur antes de que os orcos cheguen ás portas.",
        "female^Assassin": "Asasina",
        "Lies to the west of <ref>dst='morogor' text='Morogor'</ref> across the great ocean.": "Está ao oeste de <ref>dst='morogor' text='Mórogor'</ref>, alén do gran océano.",
        "The elves have always lived in these ancient forests of the north.": "The elves have always lived in these ancient forests of the north.",
    },
    "wesnoth-tsg": {
        "Deoran, you must hold the South Guard until the king sends help.": "Deoran, debes defender a Garda do Sur ata que o rei envíe axuda.",
        "<span color='red'>Beware</span> of the undead that walk at night in the swamp.": "<span color='red'>Coidado</span> cos mortos vivos que camiñan de noite no pantano.",
    },
    "wesnoth-lib": {  # interface strings: skipped as a whole
        "Copy the full report to the clipboard for later use.": "Copiar o informe completo no portapapeis para usalo despois.",
    },
    "wesnoth-units": {
        "Spearmen are the backbone of the army and fight with long spears.": "Os lanceiros son a columna do exército e loitan con lanzas longas.",
    },
}


def fake_tree(root: Path) -> dict[str, Path]:
    """Unpacked-package trees keyed by package name."""
    trees: dict[str, Path] = {}
    for pkg, lang_dir, pages in (
        ("libreoffice-help-en-us", "en-US", EN),
        ("libreoffice-help-gl", "gl", GL),
    ):
        t = root / pkg
        for name, paras in pages.items():
            f = t / "usr/share/libreoffice/help" / lang_dir / "text/shared" / f"{name}.html"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(
                help_page(paras, MARKUP_EXTRA if name == "page0" else ""), encoding="utf-8"
            )
        copyright_file = t / "usr/share/doc" / pkg / "copyright"
        copyright_file.parent.mkdir(parents=True)
        copyright_file.write_text(f"Licence notice of {pkg}: MPL-2.0\n")
        trees[pkg] = t
    t = root / "wesnoth-1.16-data"
    locale = t / "usr/share/games/wesnoth/1.16/locale"
    for domain, pairs in WESNOTH_EN_GL.items():
        write_mo(locale / "gl/LC_MESSAGES" / f"{domain}.mo", pairs)
        # A second locale translating one extra string: English is the union of msgids.
        extra = {
            "A string only the Spanish catalogue has, about the dark lands.": "Una cadena que solo tiene el catálogo español."
        }
        write_mo(
            locale / "es/LC_MESSAGES" / f"{domain}.mo",
            {**extra} if domain == "wesnoth-units" else {},
        )
    (t / "usr/share/doc/wesnoth-1.16-data").mkdir(parents=True)
    (t / "usr/share/doc/wesnoth-1.16-data/copyright").write_text("GPL-2+ notice of Wesnoth\n")
    trees["wesnoth-1.16-data"] = t
    return trees


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    trees = fake_tree(tmp_path / "trees")
    calls: list[str] = []

    def fetch(name, cache, patterns=None):
        calls.append(name)
        root = trees.get(name) or (tmp_path / "trees" / "empty" / name)
        root.mkdir(parents=True, exist_ok=True)
        return apt.Package(name=name, version="1:1.0-test", deb=root / "x.deb", root=root)

    monkeypatch.setattr(apt, "fetch_package", fetch)
    return calls


def paragraphs(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


# --------------------------------------------------------------------------- pure text


def test_help_paragraphs_strip_markup_code_and_navigation():
    page = help_page(["Defines the unit of measure in spreadsheets &lt;here&gt;."], MARKUP_EXTRA)
    assert help_paragraphs(page) == [
        "Heading",
        "Defines the unit of measure in spreadsheets <here>.",
        "Press Ctrl+S to save the document & keep it.",
    ]


def test_help_paragraphs_read_xhp_sources():
    xhp = (
        '<?xml version="1.0" encoding="UTF-8"?><helpdocument version="1.0"><meta><topic id="t">'
        "<title>Meta title</title><filename>/text/shared/a.xhp</filename></topic></meta><body>"
        "<bookmark><bookmark_value>index;entry</bookmark_value></bookmark>"
        '<paragraph role="paragraph" id="p1">Press <switchinline select="sys"><caseinline select="MAC">'
        "Command</caseinline><defaultinline>Ctrl</defaultinline></switchinline>+P to print it all.</paragraph>"
        '<paragraph role="paragraph" id="p2">Second <emph>emphasised</emph> paragraph.</paragraph>'
        "</body></helpdocument>"
    )
    assert help_paragraphs(xhp) == ["Press Ctrl+P to print it all.", "Second emphasised paragraph."]


def test_wesnoth_text_resolves_markup():
    assert wesnoth_text("race^Goblin") == "Goblin"
    assert wesnoth_text("West of <ref>dst='m' text='Morogor'</ref>.") == "West of Morogor."
    assert wesnoth_text("<span color='red'>Beware</span> &amp; run") == "Beware & run"
    assert wesnoth_text("<img>src=x.png</img>Text") == "Text"


def test_read_mo_round_trip_and_bad_file(tmp_path):
    write_mo(tmp_path / "a.mo", {"Hello there": "Ola aí", "ctx\x04Keep": "Torre"})
    entries = read_mo((tmp_path / "a.mo").read_bytes())
    assert [(e.context, e.msgid, e.msgstr) for e in entries] == [
        (None, "Hello there", "Ola aí"),
        ("ctx", "Keep", "Torre"),
    ]
    with pytest.raises(LayraError, match="bad magic"):
        read_mo(b"\0" * 40, "x.mo")


def test_prose_and_english_checks():
    assert is_prose("Define a configuración xeral para documentos de folla de cálculo.")
    assert not is_prose("Tools - Options")  # a menu path
    assert not is_prose("Call the function getValue() to read the cell value now.")
    assert not is_prose("Set the value with x = 5 and then print the result.")
    assert looks_english("Defines the tab stops distance in the document.", "glg")
    assert not looks_english("Define a distancia das tabulacións no documento.", "glg")
    assert not looks_english("Defines the tab stops distance.", "eng")
    assert dedup_key("  Same   TEXT ") == dedup_key("same text")


def test_clean_drops_untranslated_and_english():
    raw = {
        "eng": [Document("a", ("The file menu holds the commands to open and save files.",))],
        "glg": [
            Document(
                "a",
                (
                    "The file menu holds the commands to open and save files.",  # untranslated
                    "The file menu has the commands for opening and saving.",  # older English
                    "O menú ficheiro contén as ordes para abrir e gardar ficheiros.",
                    "Gardar",  # a menu entry
                ),
            )
        ],
    }
    docs, dropped = clean_languages(raw, reference="eng", min_words=5)
    assert docs["glg"] == [
        Document("a", ("O menú ficheiro contén as ordes para abrir e gardar ficheiros.",))
    ]
    assert dropped["glg"] == {"not_prose": 1, "untranslated": 1, "english": 1}


# --------------------------------------------------------------------------- split


def test_assign_heldout_is_seeded_deterministic_and_bounded():
    sizes = {f"d{i}": 100 + i for i in range(50)}
    held = assign_heldout(sizes, 0.2, seed=0)
    assert held == assign_heldout(dict(reversed(sizes.items())), 0.2, seed=0)  # order-free
    assert held != assign_heldout(sizes, 0.2, seed=1)
    share = sum(sizes[d] for d in held) / sum(sizes.values())
    assert 0.2 <= share < 0.2 + 150 / sum(sizes.values())  # stops at the first doc past 20%
    assert assign_heldout(sizes, 0.0, seed=0) == set()
    assert len(assign_heldout({"a": 1, "b": 1000}, 0.9, seed=3)) == 1  # one always trains
    with pytest.raises(LayraError, match="single document"):
        assign_heldout({"a": 10}, 0.1, seed=0)
    with pytest.raises(LayraError, match=r"\[0, 1\)"):
        assign_heldout(sizes, 1.0, seed=0)


def test_split_is_aligned_across_languages_and_never_leaks():
    docs = {
        "eng": [Document(f"d{i}", (f"English {i}.", "Shared boilerplate.")) for i in range(20)],
        "glg": [Document(f"d{i}", (f"Galego {i}.", "Texto común.")) for i in range(0, 20, 2)],
    }
    splits = split_languages(docs, 0.25, seed=0)
    held_en = {d.doc_id for d in splits["eng"].heldout}
    held_gl = {d.doc_id for d in splits["glg"].heldout}
    assert held_gl and held_gl <= held_en  # a page and its translation share a side
    for s in splits.values():
        train = {dedup_key(p) for d in s.train for p in d.paragraphs}
        held = [dedup_key(p) for d in s.heldout for p in d.paragraphs]
        assert not train & set(held) and len(held) == len(set(held))
        assert len(train) == sum(len(d.paragraphs) for d in s.train)
    # The boilerplate paragraph trains once; its copies are gone everywhere else.
    assert splits["eng"].dropped == {
        "duplicate": 19 - len(held_en),
        "duplicate_of_train": len(held_en),
    }


def test_remove_leaks_across_sources():
    a = split_languages(
        {"glg": [Document("x", ("Common text.",)), Document("y", ("A only.",))]}, 0, 0
    )
    b = {
        "glg": split_languages(
            {"glg": [Document("p", ("B.",)), Document("q", ("Common text.",))]}, 0.5, 0
        )["glg"]
    }
    b["glg"].train, b["glg"].heldout = (
        [Document("p", ("B.",))],
        [Document("q", ("Common text.", "Fresh."))],
    )
    out = remove_leaks({"a": a, "b": b})
    assert out["b"]["glg"].heldout == [Document("q", ("Fresh.",))]
    assert out["b"]["glg"].dropped["in_other_source_train"] == 1


# --------------------------------------------------------------------------- debian builder


def test_build_debian_on_fake_tree(tmp_path, fake_apt):
    out = build_debian_corpus(
        ["glg", "eng"], tmp_path / "corpus", cache=tmp_path / "cache", seed=0, heldout_fraction=0.3
    )
    m = json.loads((out / "manifest.json").read_text())
    assert set(fake_apt) == {"libreoffice-help-en-us", "libreoffice-help-gl", *WESNOTH_PACKAGES}
    assert sorted(m["licenses"]) == [
        "libreoffice-help-en-us.copyright",
        "libreoffice-help-gl.copyright",
        "wesnoth-1.16-data.copyright",
    ]
    assert (
        out / "LICENSES/libreoffice-help-gl.copyright"
    ).read_text() == "Licence notice of libreoffice-help-gl: MPL-2.0\n"
    lo = m["sources"]["libreoffice"]
    assert {p["name"]: p["version"] for p in lo["packages"]}["libreoffice-help-gl"] == "1:1.0-test"

    en_keys = {
        dedup_key(p)
        for part in ("train", "heldout")
        for p in paragraphs(out / "libreoffice/eng" / f"{part}.txt")
    }
    gl = [
        p
        for part in ("train", "heldout")
        for p in paragraphs(out / "libreoffice/glg" / f"{part}.txt")
    ]
    # 8 pages x 3 paragraphs + page0's markup paragraph (untranslated, as in English),
    # minus 3 untranslated, minus 7 copies of the shared sentence, minus held-out
    # paragraphs that nearly duplicate a training one: "Escolla a segunda opción da
    # páxina {i} ..." differs between pages in one word (word-3-gram Jaccard 0.5).
    near = lo["languages"]["glg"]["dropped"]["near_duplicate_of_train"]
    assert near >= 1
    assert len(gl) == 8 * 3 + 1 - 4 - 7 - near
    assert not {dedup_key(p) for p in gl} & en_keys
    assert "older English wording" not in " ".join(gl)
    assert lo["languages"]["glg"]["dropped"]["untranslated"] == 4
    assert lo["languages"]["glg"]["dropped"]["english"] == 1
    en_all = " ".join(en_keys)
    assert "press ctrl+s to save the document & keep it." in en_all
    assert "command" not in en_all and "msgbox" not in en_all and "navigation" not in en_all
    assert "choose tools - options" not in en_all and "debug box" not in en_all

    wes = m["sources"]["wesnoth"]
    assert set(wes["languages"]) == {"glg", "eng"}
    gl_w = [
        p for part in ("train", "heldout") for p in paragraphs(out / "wesnoth/glg" / f"{part}.txt")
    ]
    assert sorted(gl_w) == sorted(
        [
            "Debemos fuxir cara ao sur antes de que os orcos cheguen ás portas.",
            "Está ao oeste de Mórogor, alén do gran océano.",
            "Deoran, debes defender a Garda do Sur ata que o rei envíe axuda.",
            "Coidado cos mortos vivos que camiñan de noite no pantano.",
            "Os lanceiros son a columna do exército e loitan con lanzas longas.",
        ]
    )
    en_w = [
        p for part in ("train", "heldout") for p in paragraphs(out / "wesnoth/eng" / f"{part}.txt")
    ]
    assert (
        "A string only the Spanish catalogue has, about the dark lands." in en_w
    )  # union of msgids
    assert len(en_w) == 7

    for source, entry in m["sources"].items():
        held_ids = set(entry["heldout_documents"])
        assert held_ids
        for lang, info in entry["languages"].items():
            train = paragraphs(out / source / lang / "train.txt")
            held = paragraphs(out / source / lang / "heldout.txt")
            assert not {dedup_key(p) for p in train} & {dedup_key(p) for p in held}
            for part, paras in (("train", train), ("heldout", held)):
                raw = (out / info[part]["path"]).read_bytes()
                assert info[part]["sha256"] == hashlib.sha256(raw).hexdigest()
                assert info[part]["paragraphs"] == len(paras)
                assert info[part]["chars"] == sum(len(p) for p in paras)
    assert m["provenance"]["seed"] == 0 and m["request"]["langs"] == ["glg", "eng"]


def test_debian_reuses_identical_output_and_refuses_other(tmp_path, fake_apt, capsys):
    out = tmp_path / "corpus"
    build_debian_corpus("glg,eng", out, sources="libreoffice", cache=tmp_path / "c")
    before = (out / "manifest.json").read_text()
    fake_apt.clear()
    build_debian_corpus("glg,eng", out, sources="libreoffice", cache=tmp_path / "c")
    assert "reusing" in capsys.readouterr().out and not fake_apt
    assert (out / "manifest.json").read_text() == before
    with pytest.raises(LayraError, match="other settings"):
        build_debian_corpus("glg,eng", out, sources="libreoffice", seed=1, cache=tmp_path / "c")
    build_debian_corpus(
        "glg,eng", out, sources="libreoffice", seed=1, cache=tmp_path / "c", overwrite=True
    )
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1


def test_cli_one_line_errors(tmp_path, fake_apt, capsys):
    assert main(["corpus", "debian", "--langs", "glg,xyz", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("layra: error: unknown language code xyz") and "\n" not in err
    for code in ("glg", "eng", "spa", "por", "deu", "fra", "ita", "hin"):
        assert code in err
    assert (
        main(
            [
                "corpus",
                "debian",
                "--langs",
                "glg",
                "--sources",
                "wiki",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "valid sources: libreoffice, wesnoth" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert main(["corpus", "debian", "--langs", "glg", "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not a corpus" in err and "\n" not in err
    assert main(["corpus", "files", "glg=/no/such.txt", "--out", str(tmp_path / "f")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["corpus", "files", "gl.txt", "--out", str(tmp_path / "f")]) == 2
    assert "LANG=PATH" in capsys.readouterr().err
    assert not fake_apt  # every error came before any package was fetched


def test_cli_builds_and_prints_sizes(tmp_path, fake_apt, capsys):
    argv = [
        "corpus",
        "debian",
        "--langs",
        "glg,eng",
        "--sources",
        "wesnoth",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "wesnoth      glg" in out and (tmp_path / "o/wesnoth/glg/train.txt").is_file()


# --------------------------------------------------------------------------- apt / dpkg


def _fake_apt_get(tmp_path: Path, script: str, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "apt-get"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_apt_unknown_package_says_run_update(tmp_path, monkeypatch):
    _fake_apt_get(
        tmp_path,
        "echo 'E: Unable to locate package libreoffice-help-gl' >&2; exit 100\n",
        monkeypatch,
    )
    with pytest.raises(LayraError, match=r"run `sudo apt-get update`"):
        apt.download("libreoffice-help-gl", tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # no partial download left behind


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_cached_deb_is_unpacked_without_apt(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        "Package: fake-help\nVersion: 2:3.4-1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    for rel, text in (
        ("usr/share/doc/fake-help/copyright", "notice"),
        ("usr/share/libreoffice/help/gl/text/a.html", "x"),
        ("usr/bin/tool", "y"),
    ):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(
        [
            "dpkg-deb",
            "--build",
            "--root-owner-group",
            str(pkg),
            str(cache / "fake-help_3.4-1_all.deb"),
        ],
        check=True,
        capture_output=True,
    )
    _fake_apt_get(tmp_path, "exit 1\n", monkeypatch)  # apt must not be asked
    got = apt.fetch_package(
        "fake-help", cache, ("usr/share/libreoffice/help/*/text/*", "usr/share/doc/*")
    )
    assert got.version == "2:3.4-1"
    files = sorted(p.relative_to(got.root).as_posix() for p in got.root.rglob("*") if p.is_file())
    assert files == [
        "usr/share/doc/fake-help/copyright",
        "usr/share/libreoffice/help/gl/text/a.html",
    ]


# --------------------------------------------------------------------------- files and hf


def test_files_corpus_txt_and_jsonl(tmp_path, capsys):
    gl_txt = tmp_path / "gl.txt"
    gl_txt.write_text(
        "\n\n".join(
            [f"Documento galego número {i}." for i in range(10)] + ["Documento galego número 3."]
        )
        + "\n"
    )
    en = tmp_path / "en.jsonl"
    en.write_text(
        "".join(
            json.dumps({"body": f"English document {i}.\n\nSecond paragraph {i}."}) + "\n"
            for i in range(10)
        )
    )
    inputs = parse_inputs([f"glg={gl_txt}", f"eng={en}"])
    out = build_files_corpus(inputs, tmp_path / "o", field="body", heldout_fraction=0.3, seed=5)
    m = json.loads((out / "manifest.json").read_text())
    gl = m["sources"]["files"]["languages"]["glg"]
    assert gl["train"]["paragraphs"] + gl["heldout"]["paragraphs"] == 10  # the repeat is dropped
    en_info = m["sources"]["files"]["languages"]["eng"]
    assert en_info["train"]["paragraphs"] + en_info["heldout"]["paragraphs"] == 20
    held = set(m["sources"]["files"]["heldout_documents"])
    # Row n of each language is document n: parallel files split alike.
    held_en = [p for p in paragraphs(out / "files/eng/heldout.txt") if p.startswith("English")]
    assert {p.split()[-1].rstrip(".") for p in held_en} == held
    build_files_corpus(inputs, tmp_path / "o", field="body", heldout_fraction=0.3, seed=5)
    assert "reusing" in capsys.readouterr().out
    gl_txt.write_text("Changed text.\n\nMore text.\n")  # a changed input is not silently reused
    with pytest.raises(LayraError, match="other settings"):
        build_files_corpus(inputs, tmp_path / "o", field="body", heldout_fraction=0.3, seed=5)


def test_hf_streams_local_json(tmp_path):
    data = tmp_path / "gl.jsonl"
    data.write_text(
        # The number in every word 3-gram: rows that are not near-duplicates of each other.
        "".join(json.dumps({"text": f"Texto galego {i} do documento."}) + "\n" for i in range(30))
    )
    out = build_hf_corpus("json", tmp_path / "o", lang="glg", data_files=[str(data)], max_docs=12)
    m = json.loads((out / "manifest.json").read_text())
    info = m["sources"]["hf"]["languages"]["glg"]
    assert info["train"]["documents"] + info["heldout"]["documents"] == 12
    assert info["heldout"]["documents"] >= 1 and m["request"]["dataset"] == "json"
    with pytest.raises(LayraError, match="no field 'body'; fields: text"):
        build_hf_corpus("json", tmp_path / "o2", lang="glg", data_files=[str(data)], field="body")
    assert (
        main(
            [
                "corpus",
                "hf",
                "json",
                "--data-files",
                str(data),
                "--lang",
                "galician",
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )


def test_hf_hub_name_offline_is_one_line(tmp_path, monkeypatch, capsys):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = ["corpus", "hf", "HuggingFaceFW/fineweb-2", "--config", "glg_Latn", "--lang", "glg"]
    assert main([*argv, "--max-docs", "5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("layra: error: cannot reach dataset HuggingFaceFW/fineweb-2")
        and "\n" not in err
    )
    assert not (tmp_path / "o").exists()


def test_parse_langs_dedups_and_normalises():
    assert parse_langs(" GLG,eng,glg ") == ["glg", "eng"]


def test_debian_split_does_not_depend_on_other_languages(tmp_path, fake_apt):
    a = build_debian_corpus(["glg"], tmp_path / "a", sources="libreoffice", heldout_fraction=0.3)
    b = build_debian_corpus(
        ["glg", "eng"], tmp_path / "b", sources="libreoffice", heldout_fraction=0.3
    )
    for part in ("train", "heldout"):
        assert (a / "libreoffice/glg" / f"{part}.txt").read_text() == (
            b / "libreoffice/glg" / f"{part}.txt"
        ).read_text()


# --------------------------------------------------------------------------- near-duplicates


def test_normal_key_ignores_case_punctuation_and_spacing():
    from layra.neardup import normal_key

    a = normal_key("Save the  file.")
    assert a == normal_key("save the file") == normal_key("SAVE, the file!") == "save the file"
    assert normal_key("Save the files.") != a
    assert normal_key("...") != normal_key("—")  # punctuation-only texts stay apart


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_near_duplicates_finds_every_pair_a_brute_force_finds(threshold):
    import random

    from layra.neardup import jaccard, near_duplicates, shingles

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    base = [[rng.choice(vocab) for _ in range(rng.randint(1, 14))] for _ in range(60)]

    def edit(words: list[str]) -> str:
        w = list(words)
        for _ in range(rng.randint(0, 3)):
            w[rng.randrange(len(w))] = rng.choice(vocab)
        return " ".join(w)

    queries = [edit(b) for b in base[:40]]
    reference = [edit(b) for b in base[20:]] + ["", "!!"]
    want = {
        i
        for i, q in enumerate(queries)
        if any(jaccard(shingles(q), shingles(r)) >= threshold for r in reference)
    }
    got = near_duplicates(queries, iter(reference), threshold)
    assert set(got) == want and 0 < len(want) < len(queries)
    assert all(v >= threshold for v in got.values())


def _planted(i: int) -> list[str]:
    """A paragraph and its near-duplicates: case, punctuation, a final period, one word changed."""
    import random

    vocab = (
        "abra menú ficheiro escolla gardar documento aberto texto folla cela táboa marco "
        "estilo páxina liña columna fonte cor borde imaxe"
    ).split()
    w = random.Random(i).choices(vocab, k=20)
    b = " ".join(w)
    return [
        b,
        b + ".",
        b.upper(),
        b.replace(" ", ", ", 2) + "!",
        " ".join(w[:10] + ["novo"] + w[11:]),
    ]


def test_planted_near_duplicates_never_cross_the_corpus_split():
    from layra.neardup import jaccard, normal_key, shingles

    variants = {i: _planted(i) for i in range(30)}
    assert all(jaccard(shingles(v[0]), shingles(v[4])) >= 0.7 for v in variants.values())
    # Each variant is its own document, so the split by document separates them.
    docs = {
        "glg": [Document(f"{i}.{j}", (v,)) for i, vs in variants.items() for j, v in enumerate(vs)]
    }
    split = split_languages(docs, 0.3, seed=0)["glg"]
    family = {normal_key(v): i for i, vs in variants.items() for v in vs}
    trained = {family[normal_key(p)] for d in split.train for p in d.paragraphs}
    held = {family[normal_key(p)] for d in split.heldout for p in d.paragraphs}
    assert split.train and not trained & held  # old code: 22 of 30 families on both sides
    assert split.dropped["duplicate_of_train"] > 0  # case / punctuation / period copies
    assert split.dropped["near_duplicate_of_train"] > 0  # the one-word edits
    held_docs = len({d.doc_id for d in split.heldout})
    assert held_docs == sum(len(d.paragraphs) for d in split.heldout)


def test_remove_leaks_drops_near_duplicates_of_another_sources_train():
    fam = _planted(0)
    a = {"glg": split_languages({"glg": [Document("x", (fam[0],))]}, 0, 0)["glg"]}
    b = {"glg": split_languages({"glg": [Document("p", ("Outro texto.",))]}, 0, 0)["glg"]}
    b["glg"].heldout = [Document("q", (fam[1], fam[4], "Texto novo e fresco aquí."))]
    remove_leaks({"a": a, "b": b})
    assert b["glg"].heldout == [Document("q", ("Texto novo e fresco aquí.",))]
    assert b["glg"].dropped == {
        "in_other_source_train": 1,  # fam[1]: the same up to a final period
        "near_duplicate_in_other_source_train": 1,  # fam[4]: one word changed
    }


def test_files_corpus_manifest_counts_near_duplicates_and_refuses_old_format(tmp_path):
    rows = [v for i in range(20) for v in _planted(i)]
    src = tmp_path / "gl.jsonl"
    src.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    out = build_files_corpus({"glg": [str(src)]}, tmp_path / "o", heldout_fraction=0.3)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "layra-corpus/2" and m["near_duplicates"]["jaccard"] == 0.5
    info = m["sources"]["files"]["languages"]["glg"]
    assert info["dropped"]["near_duplicate_of_train"] > 0
    # Every row is a document; held-out and dropped paragraphs add up to the input.
    assert info["train"]["paragraphs"] + info["heldout"]["paragraphs"] + sum(
        info["dropped"].values()
    ) == len(rows)
    m["format"] = "layra-corpus/1"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LayraError, match="format layra-corpus/1.*--overwrite"):
        build_files_corpus({"glg": [str(src)]}, tmp_path / "o", heldout_fraction=0.3)
