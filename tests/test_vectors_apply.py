"""Language vectors reproduce what they were extracted from, and the paper's equations hold.

Every method (lora, layra, full, layer-selective) on tied and untied models: the
applied model's logits equal PEFT's merge_and_unload (or the trained model);
apply then −Δ gives the model back; λ = 0 is the identity; series, merge and
combine are checked tensor by tensor against the formulas, computed by hand
from the adapter files.
"""

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file
from test_vectors_fixtures import logits, make_adapter_run, make_run, tensors
from transformers import AutoModelForCausalLM

from layra.models import load_model
from layra.vectors import apply_to_dir, apply_to_model, combine, extract_run, load_vector

CASES = [  # every method on an untied (llama) and a tied (gemma3_text, qwen2) model
    ("llama", "lora"),
    ("qwen2", "lora"),
    ("llama", "layra"),
    ("llama", "full"),
    ("llama", "layer-selective"),
    ("gemma3_text", "layra"),
    ("gemma3_text", "layer-selective"),
    ("qwen2", "layra"),
    ("qwen2", "full"),
]


@pytest.mark.parametrize("arch,method", CASES)
def test_applied_vector_reproduces_the_trained_model(arch, method, model_dirs, tmp_path):
    base = model_dirs[arch]
    run, ref = make_run(tmp_path / "run", base, method)
    manifest = extract_run(run, tmp_path / "vec")
    kinds = {t["kind"] for t in manifest["tensors"].values()}
    assert kinds == (
        {"lowrank"}
        if method == "lora"
        else {"dense"}
        if "full" in method or method == "layer-selective"
        else {"lowrank", "dense"}
    )
    if method == "layra":
        layers = {n.split(".")[2] for n, t in manifest["tensors"].items() if t["kind"] == "lowrank"}
        assert layers == {"0", "3"}  # first k=1 and last m=1 of 4
        tied = arch != "llama"
        assert ("lm_head.weight" in manifest["tensors"]) is not tied
        emb = manifest["tensors"]["model.embed_tokens.weight"]
        assert emb.get("aliases", []) == (["lm_head.weight"] if tied else [])

    # Defaults: Eq. 1 exactly, special-token rows included (the run trained them too).
    rec = apply_to_dir(base, [(tmp_path / "vec", 1.0)], tmp_path / "out")
    assert rec["protected_rows"] == []
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    want = logits(ref)
    torch.testing.assert_close(logits(out), want, atol=1e-5, rtol=1e-5)
    base_model, tok = load_model(str(base))
    assert (logits(base_model) - want).abs().max() > 0.05  # the vector does something
    if arch != "llama":
        assert out.get_input_embeddings().weight is out.get_output_embeddings().weight

    # The same in memory, and removing it restores the base exactly.
    before = {n: p.detach().clone() for n, p in base_model.named_parameters()}
    with apply_to_model(base_model, [(tmp_path / "vec", 1.0)], tok) as handle:
        torch.testing.assert_close(logits(base_model), want, atol=1e-5, rtol=1e-5)
        assert handle.record["protected_rows"] == []
    for n, p in base_model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_record_names_vectors_lambdas_and_output_fingerprint(model_dirs, tmp_path):
    base = model_dirs["llama"]
    run, _ = make_run(tmp_path / "run", base, "layra")
    extract_run(run, tmp_path / "vec")
    rec = apply_to_dir(base, [(tmp_path / "vec", 0.7)], tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "layra_vector_apply.json").read_text())
    assert saved["vectors"][0]["lambda"] == 0.7 and saved["vectors"][0]["match"] == "weights"
    assert saved["forced"] is False and saved["protected_rows"] == []
    assert saved["protect_rows"] == "none"  # "auto" without --instruct
    assert saved["output_fingerprint"] == rec["output_fingerprint"]
    from layra.fingerprint import model_fingerprint

    m, tok = load_model(str(tmp_path / "out"))
    assert model_fingerprint(m, tok) == rec["output_fingerprint"]
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "generation_config.json",
    }


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_apply_then_minus_gives_the_model_back_and_lambda_zero_is_identity(dtype, tmp_path):
    tok = tiny.make_tokenizer()
    model = tiny.make_model("llama", len(tok)).to(getattr(torch, dtype))
    base = tmp_path / "base"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    run, _ = make_run(tmp_path / "run", base, "layra")
    extract_run(run, tmp_path / "vec")
    orig = tensors(base)

    apply_to_dir(base, [(tmp_path / "vec", 0.0)], tmp_path / "zero")
    for n, t in tensors(tmp_path / "zero").items():
        assert t.dtype == orig[n].dtype and torch.equal(t, orig[n]), n

    apply_to_dir(base, [(tmp_path / "vec", 1.0)], tmp_path / "plus")
    rec = apply_to_dir(tmp_path / "plus", [(tmp_path / "vec", -1.0)], tmp_path / "back", force=True)
    assert rec["forced"] and rec["vectors"][0]["match"] == "forced"
    plus, back = tensors(tmp_path / "plus"), tensors(tmp_path / "back")
    tol = 1e-6 if dtype == "float32" else 2**-7  # one rounding step of the dtype
    changed = 0
    for n, t in back.items():
        assert t.dtype == orig[n].dtype, n
        torch.testing.assert_close(t.float(), orig[n].float(), atol=tol, rtol=tol)
        changed += not torch.equal(plus[n], orig[n])
    assert changed == 16 + 0  # 14 LoRA weights + embedding + head, nothing else


def test_series_is_applied_onto_the_intermediate_model(model_dirs, tmp_path):
    base = model_dirs["gemma3_text"]
    run1, _ = make_run(tmp_path / "run1", base, "layra", seed=1)
    extract_run(run1, tmp_path / "v1")
    apply_to_dir(base, [(tmp_path / "v1", 1.0)], tmp_path / "theta1", protect_rows="none")
    run2, _ = make_adapter_run(tmp_path / "run2", tmp_path / "theta1", "layra", seed=2, lang="pt")
    extract_run(run2, tmp_path / "v2")
    assert (
        load_vector(tmp_path / "v2").start["weights"]
        == json.loads((tmp_path / "theta1" / "layra_vector_apply.json").read_text())[
            "output_fingerprint"
        ]["weights"]
    )
    rec = apply_to_dir(
        tmp_path / "theta1", [(tmp_path / "v2", 0.5)], tmp_path / "theta2", protect_rows="none"
    )
    assert rec["model_record"]["vectors"][0]["path"] == str(tmp_path / "v1")  # lineage kept

    # θ'' = θ' + 0.5·Δ2, with Δ2 from the adapter by hand: (α/r)·B@A and trained − θ'.
    t1, t2 = tensors(tmp_path / "theta1"), tensors(tmp_path / "theta2")
    ad = load_file(run2 / "adapter" / "adapter_model.safetensors")
    for n, w in t2.items():
        mod = "base_model.model." + n.removesuffix(".weight")
        if f"{mod}.lora_A.weight" in ad:
            delta = 2.0 * ad[f"{mod}.lora_B.weight"] @ ad[f"{mod}.lora_A.weight"]
        elif f"base_model.model.{n}" in ad:
            delta = ad[f"base_model.model.{n}"] - t1[n]
        else:
            assert torch.equal(w, t1[n]), n
            continue
        torch.testing.assert_close(w, t1[n] + 0.5 * delta, atol=1e-6, rtol=1e-6)


def test_merge_and_combine_match_the_formula(model_dirs, tmp_path):
    base = model_dirs["llama"]
    runs = {}
    for lang, seed in (("gl", 3), ("pt", 4)):
        runs[lang], _ = make_run(tmp_path / f"run-{lang}", base, "layra", seed=seed, lang=lang)
        extract_run(runs[lang], tmp_path / lang)
    apply_to_dir(
        base,
        [(tmp_path / "gl", 0.5), (tmp_path / "pt", 0.5)],
        tmp_path / "merged",
        protect_rows="none",
    )
    t0, tm = tensors(base), tensors(tmp_path / "merged")
    ads = {k: load_file(r / "adapter" / "adapter_model.safetensors") for k, r in runs.items()}
    for n, w in tm.items():
        mod = "base_model.model." + n.removesuffix(".weight")
        want = t0[n].clone()
        for ad in ads.values():
            if f"{mod}.lora_A.weight" in ad:
                want += 0.5 * 2.0 * ad[f"{mod}.lora_B.weight"] @ ad[f"{mod}.lora_A.weight"]
            elif f"base_model.model.{n}" in ad:
                want += 0.5 * (ad[f"base_model.model.{n}"] - t0[n])
        torch.testing.assert_close(w, want, atol=1e-6, rtol=1e-6)

    m = combine([(tmp_path / "gl", 0.5), (tmp_path / "pt", 0.5)], tmp_path / "both")
    q = m["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert q == {"kind": "lowrank", "shape": [32, 32], "rank": 16, "scale": 1.0}
    assert m["languages"] == ["gl", "pt"] and m["source"]["kind"] == "combine"
    apply_to_dir(base, [(tmp_path / "both", 1.0)], tmp_path / "via-combine", protect_rows="none")
    for n, w in tensors(tmp_path / "via-combine").items():
        torch.testing.assert_close(w, tm[n], atol=1e-6, rtol=1e-6)

    # Negation through λ: gl − gl is zero everywhere.
    combine([(tmp_path / "gl", 1.0), (tmp_path / "gl", -1.0)], tmp_path / "zero")
    zero = load_vector(tmp_path / "zero")
    for e in zero.entries.values():
        assert zero.delta_rows(e).abs().max() < 1e-6, e.name


def test_instruct_sibling_keeps_special_rows(model_dirs, tmp_path):
    base = model_dirs["llama"]
    tok = tiny.make_tokenizer()
    sib = tiny.make_model("llama", len(tok), seed=7)  # same arch and tokenizer, other weights
    sib.save_pretrained(tmp_path / "instruct")
    tok.save_pretrained(tmp_path / "instruct")
    run, _ = make_run(tmp_path / "run", base, "layra")
    extract_run(run, tmp_path / "vec")
    rec = apply_to_dir(
        tmp_path / "instruct", [(tmp_path / "vec", 0.5)], tmp_path / "out", instruct=True
    )
    assert rec["vectors"][0]["match"] == "arch" and not rec["forced"]
    before, after = tensors(tmp_path / "instruct"), tensors(tmp_path / "out")
    for n in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(after[n][:4], before[n][:4])  # <pad> <bos> <eos> <unk>
        assert (after[n][4:] != before[n][4:]).any(dim=1).all()


def test_reshard_and_bf16_are_kept(model_dirs, tmp_path):
    from layra.vectors.source import ModelDir

    base = model_dirs["qwen2"]
    run, _ = make_run(tmp_path / "run", base, "full")
    extract_run(run, tmp_path / "vec")
    apply_to_dir(base, [(tmp_path / "vec", 1.0)], tmp_path / "one", protect_rows="none")
    apply_to_dir(
        base,
        [(tmp_path / "vec", 1.0)],
        tmp_path / "many",
        protect_rows="none",
        max_shard_size="40KB",
    )
    shards = sorted(p.name for p in (tmp_path / "many").glob("*.safetensors"))
    assert len(shards) > 3 and (tmp_path / "many" / "model.safetensors.index.json").exists()
    assert ModelDir(tmp_path / "many").fingerprint() == ModelDir(tmp_path / "one").fingerprint()
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "many").eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "one").eval()
    assert torch.equal(logits(a), logits(b))


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_cli_apply_and_model_plus_vec_protect_nothing_by_default(
    arch, model_dirs, tmp_path, capsys
):
    """`layra vector apply BASE VEC:1.0` and `eval MODEL+VEC` give the trained model; the
    command says what it protected; only --instruct (Eq. 4) protects special rows."""
    from layra.cli import main
    from layra.evaluation.modelspec import load_spec

    base = model_dirs[arch]
    run, ref = make_run(tmp_path / "run", base, "layra")
    extract_run(run, tmp_path / "vec")
    assert main(["vector", "apply", str(base), f"{tmp_path / 'vec'}:1.0",
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert "protected rows: none" in capsys.readouterr().out
    want = logits(ref)
    out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(out), want, atol=1e-5, rtol=1e-5)
    loaded = load_spec(f"{base}+{tmp_path / 'vec'}:1")
    torch.testing.assert_close(logits(loaded.model), want, atol=1e-5, rtol=1e-5)

    assert main(["vector", "apply", str(base), str(tmp_path / "vec"), "--instruct",
                 "--out", str(tmp_path / "instr")]) == 0  # fmt: skip
    assert "protected rows: 4 embedding / head rows" in capsys.readouterr().out
    t0, ti = tensors(base), tensors(tmp_path / "instr")
    assert torch.equal(ti["model.embed_tokens.weight"][:4], t0["model.embed_tokens.weight"][:4])
