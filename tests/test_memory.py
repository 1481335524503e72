"""The memory plan: exact parameter counts, the state terms of `layra plan` against the
bytes of the tensors alive after a real optimizer step, and docs/scaling.md generated from it.

What is measured: the unique storages of every parameter, every gradient and every
AdamW state tensor after one step of a tiny model (not process RSS, which the Python and
torch runtime dominate at this size). Activations and the logits chunk are estimates and
are not checked here.
"""

from pathlib import Path

import pytest
import tiny
import torch

from layra.config import load_config
from layra.memory import (
    GEMMA_3_270M,
    LLAMA_3_1_8B,
    ModelShape,
    count_params,
    inventory,
    plan_memory,
    scaling_tables,
)
from layra.models import load_dtype_for

ROOT = Path(__file__).resolve().parents[1]


def test_parameter_counts_are_exact():
    # Llama 3.1 8B's published count; Gemma 3 270M's without its tiny q/k norms.
    assert LLAMA_3_1_8B.params == 8_030_261_248
    assert GEMMA_3_270M.params == 268_065_920
    lora = count_params(LLAMA_3_1_8B, "lora")
    assert lora.trainable == 20_971_520  # r=8 on 7 linears x 32 layers
    layra = count_params(LLAMA_3_1_8B, "layra", k=10, m=2)
    assert layra.trainable == 12 * 655_360 + 2 * 128_256 * 4096
    # Embedding / head train in place: only the LoRA factors are stored on top.
    assert layra.stored == LLAMA_3_1_8B.params + 12 * 655_360


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_counts_match_a_real_model(arch):
    from layra.config import MethodConfig
    from layra.methods import prepare_model

    model = tiny.make_model(arch, 300)
    c = model.config
    shape = ModelShape(
        arch,
        300,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        tied=arch == "gemma3_text",
        head_dim=c.head_dim,
    )
    # Gemma 3 also has q/k norms and two extra norms per layer, not in the shape.
    extra = (2 * c.head_dim + 2 * c.hidden_size) * c.num_hidden_layers if arch != "llama" else 0
    assert shape.params + extra == sum(p.numel() for p in model.parameters())
    peft, _ = prepare_model(model, MethodConfig(name="layra", k=1, m=1))
    trainable = sum(p.numel() for p in peft.parameters() if p.requires_grad)
    assert count_params(shape, "layra", k=1, m=1).trainable == trainable
    stored = sum(p.numel() for p in peft.parameters())  # each tensor once (tied pair once)
    assert count_params(shape, "layra", k=1, m=1).stored + extra == stored


def _cfg(model_dir, method, precision="fp32"):
    km = ["method.k=1", "method.m=1"] if method in ("layer-selective", "layra") else []
    return load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "data.sources=[{path: x.txt, lang: glg}]",
            f"method.name={method}",
            *km,
            f"train.precision={precision}",
        ],
    )


def _live_state_bytes(model, optimizer) -> int:
    """Bytes of parameters, gradients and optimizer state alive now (each storage once)."""
    seen: set[int] = set()

    def size(t: torch.Tensor) -> int:
        st = t.untyped_storage()
        if st.data_ptr() in seen:
            return 0
        seen.add(st.data_ptr())
        return st.nbytes()

    total = 0
    for p in model.parameters():
        total += size(p) + (size(p.grad) if p.grad is not None else 0)
    for state in optimizer.state.values():
        total += sum(size(v) for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


def _one_step(model_dir, cfg, load_dtype) -> int:
    """Load and prepare as layra.train does, take one AdamW step, measure the state."""
    from transformers import AutoModelForCausalLM

    from layra.loss import LossModule
    from layra.methods import prepare_model
    from layra.models import upcast_trainable
    from layra.train import _param_groups

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, load_dtype))
    model, _ = prepare_model(model, cfg.method)
    upcast_trainable(model)
    opt = torch.optim.AdamW(_param_groups(model, 0.1, 1e-3), lr=1e-3, fused=True)
    ids = torch.randint(4, 300, (2, 16))
    LossModule(model, 1024)(ids).backward()
    opt.step()
    return _live_state_bytes(model, opt)


@pytest.mark.parametrize(
    ("arch", "method"),
    [
        ("gemma3_text", "full"),
        ("gemma3_text", "layer-selective"),
        ("gemma3_text", "lora"),
        ("gemma3_text", "layra"),
        ("llama", "layra"),
        ("llama", "full"),
    ],
)
def test_plan_state_matches_live_tensors(model_dirs, arch, method):
    cfg = _cfg(model_dirs[arch], method)
    plan = plan_memory(inventory(cfg, "fp32"), "single")
    measured = _one_step(model_dirs[arch], cfg, "float32")
    assert plan.state == pytest.approx(measured, rel=0.2)
    # On these models the state terms are exact: layra's formula counts every tensor.
    assert plan.state == pytest.approx(measured, rel=1e-3)


def test_plan_keeps_bf16_checkpoints_frozen_in_bf16(tmp_path):
    # A bf16 checkpoint trained in bf16: frozen weights stay bf16 (layra.models.frozen_dtype),
    # trained tensors, their gradients and moments fp32. Planning everything fp32 would
    # overstate the state by about half the frozen bytes.
    model = tiny.make_model("llama", 300).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16")
    cfg = _cfg(tmp_path / "bf16", "lora", precision="bf16")
    inv = inventory(cfg, "bf16")
    assert inv.load_dtype == "bfloat16"
    assert {t.dtype for t in inv.tensors if not t.trainable} == {"bf16"}
    assert {t.dtype for t in inv.tensors if t.trainable} == {"fp32"}
    measured = _one_step(tmp_path / "bf16", cfg, inv.load_dtype)
    assert plan_memory(inv, "single").state == pytest.approx(measured, rel=1e-3)
    full = inventory(_cfg(tmp_path / "bf16", "full", precision="bf16"), "bf16")
    assert full.load_dtype == "float32"  # full: every tensor trains, fp32 is its master copy


def test_load_dtype_follows_train(model_dirs):
    from layra.models import frozen_dtype

    for method in ("full", "lora", "layra", "layer-selective"):
        for prec in ("bf16", "fp32"):
            cfg = _cfg(model_dirs["llama"], method)
            stored = "float32"  # tiny models are saved in fp32
            assert load_dtype_for(method, prec, stored) == frozen_dtype(cfg, prec)
    assert load_dtype_for("lora", "bf16", "torch.bfloat16") == "bfloat16"


def test_launchers_shard_what_they_should(model_dirs):
    inv = inventory(_cfg(model_dirs["llama"], "full"), "bf16")
    single = plan_memory(inv, "single")
    fsdp = plan_memory(inv, "fsdp", 4)
    ddp = plan_memory(inv, "ddp", 4)
    for name in ("weights", "gradients", "optimizer moments"):
        assert fsdp.term(name).nbytes == pytest.approx(single.term(name).nbytes / 4)
    assert ddp.term("gradients").nbytes == 2 * single.term("gradients").nbytes  # buckets
    z3 = plan_memory(inv, "zero3", 4)
    assert z3.term("master copies").nbytes == pytest.approx(inv.count(True) * 4 / 4)
    off = plan_memory(inv, "single", checkpointing=False)
    assert off.term("activations").nbytes > single.term("activations").nbytes
    plain = plan_memory(inv, "single", loss_chunk=0)
    assert plain.total > single.total
    with pytest.raises(ValueError, match="launcher"):
        plan_memory(inv, "tpu")


def test_8b_presets_plan_offline():
    # Llama 3.1 8B from its published config (no hub here): the exact published count.
    cfg = load_config(str(ROOT / "configs" / "llama3.1-8b" / "full-gl.yaml"), [])
    inv = inventory(cfg, "bf16")
    assert inv.count() == LLAMA_3_1_8B.params == inv.count(True)
    lora = inventory(load_config(str(ROOT / "configs/llama3.1-8b/lora-gl.yaml"), []), "bf16")
    assert lora.count(True) == 20_971_520
    assert {t.dtype for t in lora.tensors if not t.trainable} == {"bf16"}


def test_plan_cli(capsys):
    from layra.cli import main

    cfg = str(ROOT / "configs" / "llama3.1-8b" / "full-gl.yaml")
    assert main(["plan", "--config", cfg, "--launcher", "fsdp", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    for term in ("weights", "gradients", "optimizer moments", "master copies", "activations"):
        assert term in out
    assert main(["plan", "--config", cfg, "--gpus", "3"]) == 2
    assert "layra: error: --launcher single" in capsys.readouterr().err


def test_scaling_doc_holds_the_generated_tables():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert scaling_tables() in doc, "regenerate with: python -m layra.memory"
