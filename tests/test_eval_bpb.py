"""Bits per byte: the exact definition, checked against a hand computation from logits."""

import json
import math

import pytest
import tiny
import torch

from layra.cli import main
from layra.documents import split_documents
from layra.errors import LayraError
from layra.evaluation.bpb import (
    TextSlice,
    bits_per_byte,
    document_windows,
    load_text,
    select_documents,
    slice_hash,
)

DOCS = ("Hello world <eos> x.", tiny.TEXT["gl"][:60], "Toda persoa ten dereito á educación.")


def _slice(docs=DOCS, lang="glg"):
    return TextSlice(
        lang, "mem", tuple(docs), slice_hash(docs), sum(len(d.encode()) for d in docs), False
    )


def _hand_bpb(model, tok, docs, seq_len):
    """The definition, computed the slow way: each document alone, full logits of each
    window, float64 log-softmax; a long document in windows of W = seq_len - 1 tokens whose
    ends move by W // 2, each scoring the tokens after the previous window's end."""
    width = seq_len - 1
    nll, n = 0.0, 0
    for doc in docs:
        ids = tok(doc, add_special_tokens=False, split_special_tokens=True).input_ids
        done = 0
        while done < len(ids):
            end = width if done == 0 else min(len(ids), done + width // 2)
            end = min(end, len(ids))
            window = [tok.bos_token_id] + ids[max(0, end - width) : end]
            with torch.no_grad():
                logp = model(torch.tensor([window])).logits[0].double().log_softmax(-1)
            for j in range(len(window) - (end - done), len(window)):
                nll -= float(logp[j - 1, window[j]])
                n += 1
            done = end
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
    assert got.n_bytes == sum(len(d.encode()) for d in DOCS) == sum(got.doc_bytes)
    assert sum(got.doc_nll) == pytest.approx(got.nll_nats, rel=1e-12)
    assert got.roundtrip_mismatches == 0


def test_bpb_one_value_by_hand(tok):
    """A document t1..tn: NLL = -Σ log p(t_j | BOS t1..t_j-1), over 9 bytes; nothing else."""
    model = tiny.make_model("llama", len(tok)).eval()
    doc = "The quick"
    t = tok(doc, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([[tok.bos_token_id, *t]])).logits[0]
    want = sum(float(-logits[j].double().log_softmax(-1)[t[j]]) for j in range(len(t)))
    got = bits_per_byte(model, tok, _slice([doc]), seq_len=64)
    assert got.n_tokens == len(t) and got.n_windows == 1
    assert got.doc_nll[0] == pytest.approx(want, rel=1e-6)
    assert got.bpb == pytest.approx(want / (math.log(2) * 9), rel=1e-6)


def test_bpb_chunked_head_and_batch_size_do_not_change_it(tok, monkeypatch):
    model = tiny.make_model("llama", len(tok)).eval()
    ref = bits_per_byte(model, tok, _slice(), seq_len=8, batch_size=1).bpb
    import layra.evaluation.bpb as B

    monkeypatch.setattr(B, "LOGIT_BUDGET", len(tok) * 3)  # 3 positions per head chunk
    # Other batch shapes run other float32 kernels (blocking, summation order): equal to
    # float32 rounding accumulated over a few hundred terms, not bit for bit.
    assert bits_per_byte(model, tok, _slice(), seq_len=8, batch_size=5).bpb == pytest.approx(
        ref, rel=1e-6
    )


def _bos_tokenizer():
    """tests/tiny.py's tokenizer, but adding BOS to every encoding (like Gemma's and Llama's)."""
    from tokenizers.processors import TemplateProcessing

    tk = tiny.make_tokenizer()
    bos = tk.bos_token_id
    tk._tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    assert tk("x").input_ids[0] == bos
    return tk


@pytest.mark.parametrize("seq_len", [256, 12])
def test_a_documents_score_does_not_depend_on_its_neighbours(seq_len):
    tk = _bos_tokenizer()
    model = tiny.make_model("gemma3_text", len(tk)).eval()
    docs = list(DOCS) + [tiny.TEXT["en"]]
    alone = {d: bits_per_byte(model, tk, _slice([d]), seq_len=seq_len).doc_nll[0] for d in docs}
    for order in (docs, docs[::-1], [docs[2], docs[0], docs[3], docs[1]]):
        res = bits_per_byte(model, tk, _slice(order), seq_len=seq_len, batch_size=3)
        for d, nll in zip(order, res.doc_nll, strict=True):
            # Only the batch shape differs: float32 rounding, not context.
            assert nll == pytest.approx(alone[d], rel=1e-6)
    # The BOS the tokenizer adds is not doubled: a window is [BOS] + document tokens.
    got = bits_per_byte(model, tk, _slice([docs[1]]), seq_len=seq_len)
    assert got.n_tokens == len(tk(docs[1], add_special_tokens=False).input_ids)


def test_document_windows_score_every_token_once_from_its_own_document():
    assert document_windows([5, 6, 7], seq_len=4, start_id=1) == [([1, 5, 6, 7], 3)]
    assert document_windows([8], seq_len=4, start_id=1) == [([1, 8], 1)]
    # W = 3 tokens per window, stride 1: later windows keep 2 tokens of context.
    assert document_windows([5, 6, 7, 8, 9], seq_len=4, start_id=1) == [
        ([1, 5, 6, 7], 3),
        ([1, 6, 7, 8], 1),
        ([1, 7, 8, 9], 1),
    ]
    # W = 6, stride 3; the last window ends at the document's end.
    wins = document_windows(list(range(10, 21)), seq_len=7, start_id=1)
    assert wins == [
        ([1, 10, 11, 12, 13, 14, 15], 6),
        ([1, 13, 14, 15, 16, 17, 18], 3),
        ([1, 15, 16, 17, 18, 19, 20], 2),
    ]
    assert document_windows([], seq_len=4, start_id=1) == []


def test_bpb_bf16_close_to_fp32(tok):
    model = tiny.make_model("llama", len(tok)).eval()
    fp32 = bits_per_byte(model, tok, _slice(), seq_len=64).bpb
    bf16 = bits_per_byte(model, tok, _slice(), seq_len=64, compute_dtype=torch.bfloat16).bpb
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=2e-3)


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
