"""Bits per byte: the exact definition, checked against a hand computation from logits."""

import json
import math

import pytest
import tiny
import torch

from layra.cli import main
from layra.errors import LayraError
from layra.evaluation.bpb import (
    TextSlice,
    bits_per_byte,
    load_text,
    pack_windows,
    select_documents,
    slice_hash,
    split_documents,
)

DOCS = ("Hello world <eos> x.", tiny.TEXT["gl"][:60], "Toda persoa ten dereito á educación.")


def _slice(docs=DOCS, lang="glg"):
    return TextSlice(
        lang, "mem", tuple(docs), slice_hash(docs), sum(len(d.encode()) for d in docs), False
    )


def _hand_bpb(model, tok, docs, seq_len):
    """The definition, computed the slow way: full logits of each window, float64 log-softmax."""
    ids = [tok(d, add_special_tokens=False, split_special_tokens=True).input_ids for d in docs]
    stream, scored = [], []
    for i, d in enumerate(ids):
        if i:
            stream.append(tok.eos_token_id)
            scored.append(False)
        stream += d
        scored += [True] * len(d)
    nll, n = 0.0, 0
    for s in range(0, len(stream), seq_len - 1):
        window = [tok.bos_token_id] + stream[s : s + seq_len - 1]
        mask = [False] + scored[s : s + seq_len - 1]
        with torch.no_grad():
            logp = model(torch.tensor([window])).logits[0].double().log_softmax(-1)
        for j in range(1, len(window)):
            if mask[j]:
                nll -= float(logp[j - 1, window[j]])
                n += 1
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    return nll / (math.log(2) * nbytes), n


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2"])
@pytest.mark.parametrize("seq_len", [256, 9])
def test_bpb_equals_hand_computation(tok, arch, seq_len):
    model = tiny.make_model(arch, len(tok)).eval()
    want, n = _hand_bpb(model, tok, DOCS, seq_len)
    got = bits_per_byte(model, tok, _slice(), seq_len=seq_len, batch_size=3)
    assert got.n_tokens == n
    assert got.bpb == pytest.approx(want, rel=1e-6)
    assert got.nll_nats == pytest.approx(want * math.log(2) * got.n_bytes, rel=1e-6)
    assert got.n_bytes == sum(len(d.encode()) for d in DOCS)
    assert got.roundtrip_mismatches == 0


def test_bpb_chunked_head_and_batch_size_do_not_change_it(tok, monkeypatch):
    model = tiny.make_model("llama", len(tok)).eval()
    ref = bits_per_byte(model, tok, _slice(), seq_len=8, batch_size=1).bpb
    import layra.evaluation.bpb as B

    monkeypatch.setattr(B, "LOGIT_BUDGET", len(tok) * 3)  # 3 positions per head chunk
    assert bits_per_byte(model, tok, _slice(), seq_len=8, batch_size=5).bpb == pytest.approx(
        ref, rel=1e-9
    )


def test_bpb_bf16_close_to_fp32(tok):
    model = tiny.make_model("llama", len(tok)).eval()
    fp32 = bits_per_byte(model, tok, _slice(), seq_len=64).bpb
    bf16 = bits_per_byte(model, tok, _slice(), seq_len=64, compute_dtype=torch.bfloat16).bpb
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=2e-3)


def test_pack_windows_scores_every_document_token_once():
    wins = pack_windows([[5, 6, 7], [8], [9, 10]], seq_len=4, start_id=1, sep_id=2)
    assert wins == [
        ([1, 5, 6, 7], [False, True, True, True]),
        ([1, 2, 8, 2], [False, False, True, False]),
        ([1, 9, 10], [False, True, True]),
    ]


def test_documents_split_select_and_hash(tmp_path):
    text = "  first doc\nline two \n\n\n second\n \t\nthird é\n"
    assert split_documents(text) == ["first doc\nline two", "second", "third é"]
    docs = split_documents(text)
    assert select_documents(docs, 25) == (["first doc\nline two", "second"], True)
    assert select_documents(docs, None) == (docs, False)
    # A first document larger than the budget is cut at a character boundary.
    assert select_documents(["aé" * 10], 5) == (["aéa"], True)
    assert select_documents(["aé" * 10], 2) == (["a"], True)
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8")
    s = load_text("glg", p, max_bytes=25)
    assert s.docs == ("first doc\nline two", "second")
    assert s.n_bytes == 24
    assert s.sha256 == slice_hash(["first doc\nline two", "second"])
    assert s.sha256 != slice_hash(docs)


@pytest.mark.parametrize(
    "content, msg",
    [(None, "not found"), ("\n \n\n", "has no text"), (b"\xff\xfe bad", "not UTF-8")],
)
def test_bad_text_files(tmp_path, content, msg):
    p = tmp_path / "t.txt"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content)
    with pytest.raises(LayraError, match=msg):
        load_text("glg", p)


def test_cli_bpb_store_and_rerun_skips(model_dirs, corpus_dir, tmp_path, capsys):
    store = tmp_path / "results"
    argv = ["eval", "bpb", str(model_dirs["llama"]), "--text", f"gl={corpus_dir / 'gl.txt'}",
            "--text", f"eng={corpus_dir / 'en.txt'}", "--store", str(store), "--seq-len", "64",
            "--name", "PT"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "glg: bpb" in out and "eng: bpb" in out
    files = sorted(store.glob("*.json"))
    assert len(files) == 2
    rec = {r["lang"]: r for r in (json.loads(f.read_text()) for f in files)}
    assert set(rec) == {"glg", "eng"}
    g = rec["glg"]
    assert g["metric"] == "bpb" and g["higher_is_better"] is False and g["model"]["name"] == "PT"
    assert g["data"]["sha256"] == load_text("glg", corpus_dir / "gl.txt").sha256
    assert g["details"]["bpb"] == g["value"] and g["settings"]["seq_len"] == 64
    assert set(g["model"]["fingerprint"]) == {"arch", "weights"}
    assert g["provenance"]["versions"]["torch"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (cached)") == 2
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # Another window length is another measurement.
    assert main([*argv, "--seq-len", "32"]) == 0
    assert len(list(store.glob("*.json"))) == 4


def test_cli_bpb_errors(model_dirs, corpus_dir, tmp_path, capsys):
    m = str(model_dirs["llama"])
    cases = [
        ([m, "--text", f"glg={tmp_path / 'missing.txt'}"], "not found"),
        ([m, "--text", "glg"], "expected LANG=PATH"),
        ([m], "give held-out text"),
        ([str(tmp_path / "nope"), "--text", f"glg={corpus_dir / 'gl.txt'}"], "does not exist"),
        ([m, "--text", f"glg={corpus_dir / 'gl.txt'}", "--seq-len", "1000"], "exceeds"),
        ([m, "--text", f"glg={corpus_dir / 'gl.txt'}", "--text", f"gl={corpus_dir / 'gl.txt'}"],
         "language given twice"),
    ]  # fmt: skip
    for argv, msg in cases:
        assert main(["eval", "bpb", *argv, "--store", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading progress bar
        assert err.startswith("layra: error:") and msg in err
