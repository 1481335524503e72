"""Text is read with a bound (issue 20, item 3): reading stops at --max-bytes, binary files
are refused in one line, no document is larger than MAX_DOCUMENT_BYTES.

The 2 GB files are sparse (``truncate``): they cost no disk, and their hole reads as NUL
bytes, so a reader that does not stop early reads 2 GB of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import layra
from layra import documents
from layra.cli import main
from layra.documents import read_leading_documents, read_whole_text, split_documents
from layra.errors import LayraError
from layra.evaluation.bpb import load_text, select_documents

SRC = Path(layra.__file__).parents[1]
GB2 = 2 << 30
# Peak resident memory a 2 GB file may add to the reading process: its first chunk, the
# documents kept and the interpreter's own churn, nowhere near the file's size.
RSS_BOUND_MIB = 64

TEXT = (
    "Primeiro documento\r\ncon dúas liñas\r\n\r\n"
    "  segundo  \n \t \n\n\nterceiro é máis longo ca os outros dous xuntos, abondo\n"
    "\u00a0\n"
    "cuarto\r\n\r\n" + "quinto " * 40 + "\n\n"
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 18])
@pytest.mark.parametrize("max_bytes", [None, 1, 5, 20, 37, 60, 100, 10_000])
def test_streaming_keeps_exactly_the_documents_of_read_whole_then_select(
    tmp_path, monkeypatch, chunk, max_bytes
):
    p = tmp_path / "t.txt"
    p.write_bytes(TEXT.encode("utf-8"))
    monkeypatch.setattr(documents, "CHUNK", chunk)
    whole = split_documents(TEXT)
    assert read_leading_documents(p, max_bytes) == select_documents(whole, max_bytes)


def test_binary_text_and_directories_are_refused_in_one_line(tmp_path):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"ola mundo\n\n" + b"\0" * 10)
    with pytest.raises(LayraError, match=r"is not a text file \(a NUL byte at byte 11\)"):
        read_leading_documents(nul)
    ctrl = tmp_path / "ctrl.txt"
    ctrl.write_bytes(bytes(range(1, 9)) * 100)
    with pytest.raises(LayraError, match=r"is not a text file \(100% control bytes"):
        read_leading_documents(ctrl)
    with pytest.raises(LayraError, match="is not a text file"):
        read_whole_text(nul)
    with pytest.raises(LayraError, match="is a directory, not a text file"):
        load_text("glg", tmp_path)
    with pytest.raises(LayraError, match="is a directory, not a text file"):
        read_whole_text(tmp_path)


def test_no_document_or_jsonl_line_is_larger_than_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(documents, "MAX_DOCUMENT_BYTES", 1000)
    monkeypatch.setattr(documents, "CHUNK", 64)
    big = tmp_path / "big.txt"
    big.write_text("short one\n\n" + "x" * 5000 + "\n\nlast\n")
    with pytest.raises(LayraError, match="document 2 is larger than 0 MiB"):
        read_leading_documents(big)
    # With --max-bytes the big one is never read whole: the leading documents that fit.
    assert read_leading_documents(big, 500) == (["short one"], True)
    rows = tmp_path / "big.jsonl"
    rows.write_text(json.dumps({"text": "y" * 3000}) + "\n")
    with pytest.raises(LayraError, match="line 1 is larger than"):
        read_leading_documents(rows, 10)
    monkeypatch.setattr(documents, "MAX_TEXT_BYTES", 100)
    with pytest.raises(LayraError, match="is larger than 0 MiB"):
        read_whole_text(big, limit=100)


PEAK = textwrap.dedent(
    """
    import json, resource, sys
    sys.path.insert(0, {src!r})
    from layra.errors import LayraError
    from layra.evaluation.bpb import load_text

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB

    before = peak()
    max_bytes = None if sys.argv[2] == "none" else int(sys.argv[2])
    try:
        s = load_text("glg", sys.argv[1], max_bytes)
        out = {{"docs": len(s.docs), "bytes": s.n_bytes, "truncated": s.truncated}}
    except LayraError as e:
        out = {{"error": str(e)}}
    out["added_mib"] = peak() - before
    print(json.dumps(out))
    """
)


def _peak(tmp_path: Path, path: Path, max_bytes: int | None) -> dict:
    script = tmp_path / "peak.py"
    script.write_text(PEAK.format(src=str(SRC)))
    arg = "none" if max_bytes is None else str(max_bytes)
    r = subprocess.run(
        [sys.executable, str(script), str(path), arg], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_a_2gb_sparse_file_is_read_with_bounded_memory(tmp_path):
    # 1 MiB of documents, then a 2 GB hole.
    p = tmp_path / "huge.txt"
    para = "Unha frase galega de proba, con acentos: ñ, á, é. " * 4
    with p.open("w", encoding="utf-8") as f:
        while f.tell() < 1 << 20:
            f.write(para + "\n\n")
    os.truncate(p, GB2)
    assert p.stat().st_size == GB2 and p.stat().st_blocks * 512 < 8 << 20  # sparse

    got = _peak(tmp_path, p, 400)
    assert got["docs"] == 1 and 0 < got["bytes"] <= 400 and got["truncated"], got
    assert got["added_mib"] < RSS_BOUND_MIB, got

    got = _peak(tmp_path, p, None)  # reads on until the hole: refused there, not 2 GB later
    assert "is not a text file (a NUL byte at byte 1,0" in got["error"], got
    assert got["added_mib"] < RSS_BOUND_MIB, got


def test_eval_bpb_refuses_a_2gb_nul_file_under_max_bytes_in_one_line(tmp_path, capfd):
    p = tmp_path / "zeros.txt"
    p.touch()
    os.truncate(p, GB2)
    store = tmp_path / "store"
    rc = main(["eval", "bpb", "unused-model", "--text", f"glg={p}", "--max-bytes", "400",
               "--store", str(store)])  # fmt: skip
    err = capfd.readouterr().err.strip()
    assert rc == 2 and err == (
        f"layra: error: text file for glg: {p} is not a text file (a NUL byte at byte 0); "
        "give UTF-8 text"
    )
    assert not store.exists()
