"""MODEL arguments: parsing, run directories (adapter / trained tensors), MODEL+VEC:λ."""

import json

import pytest
import torch

from layra.errors import LayraError
from layra.evaluation.bpb import bits_per_byte, load_text
from layra.evaluation.modelspec import ModelSpec, VectorRef, load_spec, parse_model_spec
from layra.evaluation.run import run_bpb
from layra.fingerprint import model_fingerprint
from layra.models import load_model
from layra.rundir import RunDir, RunRecord


def test_parse_model_spec(tmp_path):
    assert parse_model_spec("models/gl") == ModelSpec("models/gl")
    spec = parse_model_spec("base+vec/gl:0.5+vec/sw")
    assert spec == ModelSpec("base", (VectorRef("vec/gl", 0.5), VectorRef("vec/sw", 1.0)))
    assert spec.default_name() == "base+gl:0.5+sw"
    assert parse_model_spec("m.gguf+v:-1").vectors == (VectorRef("v", -1.0),)
    assert ModelSpec("dir/gemma-3-270m-Q4_K_M.gguf").default_name() == "gemma-3-270m-Q4_K_M"
    odd = tmp_path / "a+b:1"
    odd.mkdir()
    assert parse_model_spec(str(odd)) == ModelSpec(str(odd))  # an existing path is never split
    for bad, msg in [("m+v:x", "not a number"), ("m++v", "empty vector"), ("+v", "starts with"),
                     (" ", "empty MODEL")]:  # fmt: skip
        with pytest.raises(LayraError, match=msg):
            parse_model_spec(bad)


def _bpb(model, tok, text):
    return bits_per_byte(model, tok, text, seq_len=64).bpb


def _run_dir(path, base, tok, method, **extra):
    path.mkdir()
    record = RunRecord(method=method, base_model=str(base), base_fingerprint=extra.pop("fp", None),
                       languages=["gl"], extra=extra)  # fmt: skip
    RunDir(path).write_record(record)
    return path


def test_run_dir_with_adapter_matches_merged_model(model_dirs, corpus_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    text = load_text("glg", corpus_dir / "gl.txt")
    base, tok = load_model(str(model_dirs["llama"]))
    fp = model_fingerprint(base, tok)
    base_bpb = _bpb(base, tok, text)
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                     init_lora_weights=False)  # fmt: skip
    peft = get_peft_model(base, cfg)
    run = _run_dir(tmp_path / "run", model_dirs["llama"], tok, "lora", fp=fp)
    peft.save_pretrained(run / "adapter")
    want = _bpb(peft.merge_and_unload(), tok, text)
    loaded = load_spec(str(run))
    assert loaded.info["loaded"] == "adapter/" and loaded.info["method"] == "lora"
    got = _bpb(loaded.model, tok, text)
    assert got == pytest.approx(want, rel=1e-5) and abs(got - base_bpb) > 1e-3
    assert loaded.spec.default_name() == "run"


def test_run_dir_with_trained_tensors_and_refusals(model_dirs, corpus_dir, tmp_path):
    from safetensors.torch import save_file

    text = load_text("glg", corpus_dir / "gl.txt")
    model, tok = load_model(str(model_dirs["qwen2"]))  # tied embedding / head
    fp = model_fingerprint(model, tok)
    emb = model.get_input_embeddings().weight
    trained = {"model.embed_tokens.weight": emb.detach() + 0.05 * torch.randn_like(emb)}
    with torch.no_grad():
        emb.copy_(trained["model.embed_tokens.weight"])
    want = _bpb(model, tok, text)
    run = _run_dir(tmp_path / "run", model_dirs["qwen2"], tok, "layer-selective", fp=fp)
    save_file(trained, str(run / "trained.safetensors"))
    loaded = load_spec(str(run))
    assert loaded.info["loaded"] == "trained.safetensors"
    assert _bpb(loaded.model, tok, text) == pytest.approx(want, rel=1e-6)

    (run / "run.json").write_text(json.dumps(
        {**json.loads((run / "run.json").read_text()), "base_fingerprint": {"arch": "x", "weights": "y"}}
    ))  # fmt: skip
    with pytest.raises(LayraError, match="does not match run"):
        load_spec(str(run))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("method: {}\n")
    with pytest.raises(LayraError, match="unfinished"):
        load_spec(str(unfinished))
    empty = _run_dir(tmp_path / "empty", model_dirs["qwen2"], tok, "full")
    with pytest.raises(LayraError, match="neither model/, adapter/ nor trained.safetensors"):
        load_spec(str(empty))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(LayraError, match="cannot load model"):
        load_spec(str(bad))


def test_model_plus_vector_equals_applied_model_on_disk(model_dirs, corpus_dir, tmp_path):
    from layra.vectors import apply as vectors
    from layra.vectors.extract import diff_models

    base_dir = model_dirs["llama"]
    model, tok = load_model(str(base_dir))
    torch.manual_seed(2)
    with torch.no_grad():  # a "trained" model: embedding, first layer and head moved
        for name, p in model.named_parameters():
            if "embed" in name or "layers.0." in name or "lm_head" in name:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "trained")
    tok.save_pretrained(tmp_path / "trained")
    diff_models(base_dir, tmp_path / "trained", tmp_path / "vec")
    vectors.apply_to_dir(base_dir, [(tmp_path / "vec", 0.5)], tmp_path / "applied")

    texts = [("glg", corpus_dir / "gl.txt")]
    store = tmp_path / "results"
    mem = run_bpb(f"{base_dir}+{tmp_path / 'vec'}:0.5", texts, store, seq_len=64, progress=False)
    disk = run_bpb(str(tmp_path / "applied"), texts, store, seq_len=64, progress=False)
    base = run_bpb(str(base_dir), texts, store, seq_len=64, progress=False)
    for m, d, b in zip(mem, disk, base, strict=True):
        assert m["value"] == pytest.approx(d["value"], rel=1e-6)
        assert abs(m["value"] - b["value"]) > 1e-3
    assert mem[0]["model"]["vectors"] == [{"path": str(tmp_path / "vec"), "lambda": 0.5}]
    assert mem[0]["model"]["name"] == "llama+vec:0.5"
    assert mem[0]["model"]["fingerprint"] != base[0]["model"]["fingerprint"]
