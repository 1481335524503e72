"""`layra export gguf` without llama.cpp: refusals, the file's tensors and metadata.

llama.cpp's own logits on the exported files: tests/test_export_llamacpp.py (slow).
"""

import json

import numpy as np
import pytest
import tiny
import torch

from layra.cli import main
from layra.errors import LayraError
from layra.export import export_gguf
from layra.gguf_convert import known_pretokenizer
from layra.models import load_model


def _read(path):
    """The file's tensors (name -> array) and metadata keys (PyPI gguf's reader)."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    return {t.name: np.asarray(t.data) for t in r.tensors}, r.fields


def _tokenizer_json(path):
    return json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))


def test_known_pretokenizer_reads_tokenizer_json(model_dirs):
    tj = _tokenizer_json(model_dirs["llama"])
    assert known_pretokenizer(tj) == "gpt-2"  # tiny.py: ByteLevel, GPT-2's regex
    llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # fmt: skip
    split = {"type": "Split", "pattern": {"Regex": llama3}, "behavior": "Isolated", "invert": False}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
    seq = {"type": "Sequence", "pretokenizers": [split, byte_level]}
    assert known_pretokenizer({**tj, "pre_tokenizer": seq}) == "llama-bpe"
    qwen2 = {**split, "pattern": {"Regex": llama3.replace(r"\p{N}{1,3}", r"\p{N}")}}
    seq_q = {**seq, "pretokenizers": [qwen2, byte_level]}
    assert known_pretokenizer({**tj, "pre_tokenizer": seq_q}) == "qwen2"
    odd = {**split, "pattern": {"Regex": r"\w+"}}
    assert (
        known_pretokenizer({**tj, "pre_tokenizer": {**seq, "pretokenizers": [odd, byte_level]}})
        is None
    )
    assert known_pretokenizer({**tj, "pre_tokenizer": {"type": "Whitespace"}}) is None
    assert known_pretokenizer({**tj, "normalizer": {"type": "NFC"}}) is None
    assert (
        known_pretokenizer({**tj, "pre_tokenizer": seq_q, "normalizer": {"type": "NFC"}}) == "qwen2"
    )
    assert known_pretokenizer({**tj, "model": {"type": "Unigram"}}) is None


def test_refusals_are_one_line_and_write_nothing(model_dirs, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    cases = [
        (["--out", str(tmp_path / "m.bin")], "must end in .gguf"),
        (["--out", str(out), "--tokenizer-from", str(tmp_path / "no.gguf")], "not a .gguf file"),
    ]
    for extra, msg in cases:
        assert main(["export", "gguf", str(model_dirs["llama"]), *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert main(["export", "gguf", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["export", "gguf", str(model_dirs["llama"]), "--out", str(out), "--outtype", "q4"])
        == 2
    )
    out.write_bytes(b"old")
    with pytest.raises(LayraError, match="already exists"):
        export_gguf(str(model_dirs["llama"]), out)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_unknown_architecture_and_pretokenizer_are_refused_before_writing(model_dirs, tmp_path):
    from tokenizers import pre_tokenizers

    cfg = json.loads((model_dirs["llama"] / "config.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(LayraError, match="architecture GPT2LMHeadModel is not one layra exports"):
        export_gguf(str(odd), tmp_path / "odd.gguf")
    model, tok = load_model(str(model_dirs["llama"]))
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    ws = tmp_path / "ws"
    model.save_pretrained(ws)
    tok.save_pretrained(ws)
    with pytest.raises(LayraError, match="does not recognise this tokenizer's BPE pre-tokenizer"):
        export_gguf(str(ws), tmp_path / "ws.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd", "ws"]


# transformers 5 loads a Qwen2 model's tokenizer with Qwen2's regex (and NFC), whatever the
# file says; the export describes the tokenizer as transformers uses it.
@pytest.mark.parametrize("arch,pre", [("llama", "gpt-2"), ("qwen2", "qwen2")])
def test_export_keeps_weights_and_ties(model_dirs, tmp_path, arch, pre):
    out = export_gguf(str(model_dirs[arch]), tmp_path / f"{arch}.gguf", "f32", progress=False).out
    tensors, fields = _read(out)
    model, tok = load_model(str(model_dirs[arch]))
    emb = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(tensors["token_embd.weight"], emb)
    tied = model.config.tie_word_embeddings
    assert ("output.weight" in tensors) is (not tied)  # tied: one tensor in the file
    assert len(fields["tokenizer.ggml.tokens"].data) == len(tok)
    assert fields["tokenizer.ggml.pre"].contents() == pre
    assert [p.name for p in tmp_path.iterdir()] == [f"{arch}.gguf"]  # no temporaries left
    assert out.stat().st_mode & 0o044 == 0o044  # readable like any output, not mkstemp's 0600


def test_layra_run_exports_its_trained_rows_tied(model_dirs, corpus_dir, tmp_path, capsys):
    from peft import PeftModel

    from layra.evaluation.modelspec import load_spec
    from layra.train import train

    base = model_dirs["qwen2"]  # tied embeddings and head
    cfg = tiny.run_cfg(
        base,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "layra",
        ["train.max_steps=3", "train.lr=1e-2", "train.trackers=none"],
    )
    run = train(cfg, progress=False)
    out = tmp_path / "run.gguf"
    assert main(["export", "gguf", str(run), "--out", str(out), "--outtype", "f32", "-q"]) == 0
    assert "merged" in capsys.readouterr().out
    tensors, _ = _read(out)
    trained = load_spec(str(run)).model
    trained = trained.merge_and_unload() if isinstance(trained, PeftModel) else trained
    emb = trained.get_input_embeddings().weight.detach()
    start = load_model(str(base))[0].get_input_embeddings().weight.detach()
    assert not torch.equal(emb, start)  # the run moved the embedding rows ...
    np.testing.assert_array_equal(tensors["token_embd.weight"], emb.numpy())  # ... and they are in
    assert "output.weight" not in tensors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run.gguf"]
