"""Core training: methods train exactly what they say, loss falls, tied stays tied,
resume is exact, outputs reload with the same logits."""

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file
from tiny import run_cfg

from layra.config import load_config
from layra.methods import prepare_model
from layra.train import train_model

METHODS = ["full", "layer-selective", "lora", "layra"]


def expected_trainable(method, arch, tied):
    """Parameter names (HF, unwrapped) that must train for a method on a 4-layer model."""
    names = [n for n, _ in tiny.make_model(arch, 300, tied=tied).named_parameters()]
    emb = {"model.embed_tokens.weight"} | (set() if tied else {"lm_head.weight"})
    if method == "full":
        return set(names)
    if method == "layer-selective":
        return {n for n in names if n.startswith(("model.layers.0.", "model.layers.3."))} | emb
    return None


@pytest.mark.parametrize(
    "arch,tied", [("llama", False), ("gemma3_text", True), ("qwen2", True), ("mistral", False)]
)
@pytest.mark.parametrize("method", METHODS)
def test_exactly_the_intended_parameters_get_gradients(method, arch, tied):
    cfg = load_config(
        None,
        ["model.name_or_path=x", "data.sources=[{path: x, lang: glg}]", f"method.name={method}"]
        + (["method.k=1", "method.m=1"] if method in ("layer-selective", "layra") else []),
    )
    model = tiny.make_model(arch, 300, tied=tied)
    model, plan = prepare_model(model, cfg.method)
    ids = torch.randint(0, 300, (2, 12))
    # LoRA B starts at zero, so A gets no gradient on step one; perturb B to see every path.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model(input_ids=ids, labels=ids).loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable
    exp = expected_trainable(method, arch, tied)
    if exp is not None:
        assert got == exp
    else:
        lora_layers = {int(n.split("model.layers.")[1].split(".")[0]) for n in got if "lora_" in n}
        assert lora_layers == ({0, 1, 2, 3} if method == "lora" else {0, 3})
        sublayers = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in got if "lora_A" in n}
        assert sublayers == set(tiny.LINEARS)
        full = {n for n in got if "lora_" not in n}
        if method == "lora":
            assert full == set()
        else:
            # Trained in place (layra.methods), not as PEFT modules_to_save copies.
            want = {"base_model.model.model.embed_tokens.weight"}
            if not tied:
                want.add("base_model.model.lm_head.weight")
            assert full == want


@pytest.mark.parametrize("method", METHODS)
def test_training_lowers_loss_keeps_ties_and_outputs_reload(
    method, model_dirs, corpus_dir, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    mdir = model_dirs["gemma3_text"]  # tied
    cfg = run_cfg(
        mdir,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        method,
        [
            "train.lr=3e-3",
            "train.warmup=0",
            "train.max_steps=6",
            "merge=true",
            "method.dropout=0.0",
        ],
    )
    result = train_model(cfg, progress=False)
    out, model = result.run_dir, result.model
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and losses[-1] < losses[0]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["tied"] is True
    assert run["base_model"] == str(mdir.resolve())
    assert (out / "heldout" / "glg.jsonl").exists() and (out / "config.yaml").exists()

    ids = torch.randint(0, 300, (2, 10))
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
        assert merged.get_input_embeddings().weight is merged.get_output_embeddings().weight
        torch.testing.assert_close(merged(input_ids=ids).logits, ref, atol=1e-4, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(mdir).eval()
        if method in ("lora", "layra"):
            reloaded = PeftModel.from_pretrained(base, out / "adapter").eval()
        else:
            trained = load_file(out / "trained.safetensors")
            missing, unexpected = base.load_state_dict(trained, strict=False)
            assert not unexpected
            reloaded = base
        torch.testing.assert_close(reloaded(input_ids=ids).logits, ref, atol=1e-4, rtol=1e-4)


def test_untied_head_trains_as_its_own_tensor(model_dirs, corpus_dir, tmp_path):
    cfg = run_cfg(
        model_dirs["llama"],
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "layer-selective",
        ["train.max_steps=2"],
    )
    out = train_model(cfg, progress=False).run_dir
    trained = load_file(out / "trained.safetensors")
    assert "lm_head.weight" in trained and "model.embed_tokens.weight" in trained
    assert not torch.equal(
        trained["lm_head.weight"],
        trained["model.embed_tokens.weight"][: trained["lm_head.weight"].shape[0]],
    )


@pytest.mark.parametrize("method", ["layra", "full"])
def test_resume_gives_the_same_weights(method, model_dirs, corpus_dir, tmp_path):
    extra = ["train.max_steps=6", "train.save_every=2", "train.grad_accum=2", "train.batch_size=1"]
    a = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "a", method, extra)
    ma = train_model(a, progress=False).model
    b = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "b", method, extra)
    train_model(
        b, progress=False, should_stop=lambda done: done == 3
    )  # "killed" after step 3's checkpoint
    assert not (tmp_path / "b" / "run.json").exists()
    mb = train_model(b, resume=True, progress=False).model
    sa = {n: p for n, p in ma.named_parameters() if p.requires_grad}
    sb = {n: p for n, p in mb.named_parameters() if p.requires_grad}
    assert sa.keys() == sb.keys()
    for n in sa:
        torch.testing.assert_close(sa[n], sb[n], atol=0, rtol=0, msg=n)
    la = (tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1]
    lb = (tmp_path / "b" / "log.jsonl").read_text().splitlines()[-1]
    assert json.loads(la)["loss"] == json.loads(lb)["loss"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    model_dirs, corpus_dir, tmp_path, monkeypatch
):
    from layra import loss as loss_mod
    from layra.errors import LayraError

    calls = {"n": 0}
    real = loss_mod.LossModule.forward

    def flaky(self, ids):
        calls["n"] += 1
        out = real(self, ids)
        return out * float("nan") if calls["n"] >= 5 else out

    monkeypatch.setattr(loss_mod.LossModule, "forward", flaky)
    cfg = run_cfg(
        model_dirs["llama"],
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "full",
        ["train.max_steps=8", "train.save_every=2"],
    )
    with pytest.raises(LayraError, match=r"loss is nan at step 5.*last good checkpoint: .*step-4"):
        train_model(cfg, progress=False)
    assert not (tmp_path / "run" / "run.json").exists()
    t = load_file(tmp_path / "run" / "checkpoints" / "step-4" / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in t.values())


def test_overflowing_update_is_caught_before_checkpointing(model_dirs, corpus_dir, tmp_path):
    from layra.errors import LayraError

    cfg = run_cfg(
        model_dirs["llama"],
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "full",
        [
            "train.max_steps=6",
            "train.save_every=2",
            "train.lr=1e30",
            "train.max_grad_norm=null",
            "train.warmup=0",
        ],
    )
    with pytest.raises(LayraError, match="(loss is|weights became non-finite)"):
        train_model(cfg, progress=False)
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def test_chunked_loss_equals_plain_loss_and_grads():
    from layra.loss import lm_loss

    for arch in ("llama", "gemma3_text"):
        m = tiny.make_model(arch, 300)
        ids = torch.randint(0, 300, (2, 16))
        ref = lm_loss(m, ids, 0)
        ref.backward()
        gref = {n: p.grad.clone() for n, p in m.named_parameters()}
        m.zero_grad()
        out = lm_loss(m, ids, 5)
        out.backward()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for n, p in m.named_parameters():
            torch.testing.assert_close(p.grad, gref[n], atol=1e-5, rtol=1e-4, msg=n)


def test_tensorboard_tracker_logs_when_asked(model_dirs, corpus_dir, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "run", "lora",
                  ["train.max_steps=2", "train.trackers=tensorboard"])  # fmt: skip
    out = train_model(cfg, progress=False).run_dir
    assert list(out.rglob("events.out.tfevents.*"))


def test_bf16_checkpoint_keeps_frozen_weights_bf16_and_trains_fp32_copies(corpus_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from layra.fingerprint import fingerprint
    from layra.models import load_model

    mdir = tmp_path / "bf16model"
    tok = tiny.make_tokenizer()
    tiny.make_model("gemma3_text", len(tok)).to(torch.bfloat16).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    cfg = run_cfg(mdir, corpus_dir / "gl.txt", tmp_path / "run", "layra",
                  ["train.precision=bf16", "train.max_steps=3", "merge=true"])  # fmt: skip
    result = train_model(cfg, progress=False)
    out, model = result.run_dir, result.model
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(
        d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "modules_to_save" in n
    )
    assert dtypes["base_model.model.model.layers.1.mlp.up_proj.weight"] == torch.bfloat16
    run = json.loads((out / "run.json").read_text())
    base, btok = load_model(str(mdir), dtype="bfloat16")
    assert run["base_fingerprint"] == fingerprint(base.named_parameters(), base.config, btok)
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    ids = torch.randint(0, 300, (1, 8))
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(mdir), out / "adapter"
    )
    # The in-memory model mixes bf16 (frozen) and fp32 (trained) tensors: run it as training did.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(reloaded(input_ids=ids).logits.float(),
                                   model.eval()(input_ids=ids).logits.float(), atol=2e-2, rtol=2e-2)  # fmt: skip
