"""The memory arithmetic: exact parameter counts, invariants between engines and
options, and docs/scaling.md's table generated from it."""

from pathlib import Path

import pytest
import tiny

from layra.memory import (
    ENGINES,
    GEMMA_3_270M,
    LLAMA_3_1_8B,
    GiB,
    ModelShape,
    count_params,
    estimate,
    scaling_table,
)

ROOT = Path(__file__).resolve().parents[1]


def test_parameter_counts_are_exact():
    # Llama 3.1 8B's published count; Gemma 3 270M's without its tiny q/k norms.
    assert LLAMA_3_1_8B.params == 8_030_261_248
    assert GEMMA_3_270M.params == 268_065_920
    lora = count_params(LLAMA_3_1_8B, "lora")
    assert lora.trainable == 20_971_520  # r=8 on 7 linears x 32 layers
    layra = count_params(LLAMA_3_1_8B, "layra", k=10, m=2)
    assert layra.trainable == 12 * 655_360 + 2 * 128_256 * 4096
    assert layra.stored == LLAMA_3_1_8B.params + layra.trainable  # PEFT copies embed/head


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


def test_invariants_between_engines_and_options():
    for method in ("full", "layer-selective", "lora", "layra"):
        km = {"k": 1, "m": 1} if method == "layer-selective" else {}
        for engine in ENGINES:
            on = estimate(LLAMA_3_1_8B, method, engine, checkpointing=True, **km)
            off = estimate(LLAMA_3_1_8B, method, engine, checkpointing=False, **km)
            assert on.activations < off.activations and on.weights == off.weights
            plain = estimate(LLAMA_3_1_8B, method, engine, loss_chunk=0, **km)
            assert plain.activations > on.activations  # full logits cost more than chunks
        ddp = estimate(LLAMA_3_1_8B, method, "ddp", **km)
        z3 = estimate(LLAMA_3_1_8B, method, "zero3", **km)
        assert z3.total < ddp.total  # sharding always helps at 8 GPUs
    # Sharded state halves when the GPU count doubles.
    a = estimate(LLAMA_3_1_8B, "full", "zero3", gpus=8)
    b = estimate(LLAMA_3_1_8B, "full", "zero3", gpus=16)
    assert b.optimizer == pytest.approx(a.optimizer / 2)
    # Full fine-tuning with DDP cannot fit an 80 GB GPU; LayRA with checkpointing does.
    assert estimate(LLAMA_3_1_8B, "full", "ddp").total > 80e9
    assert estimate(LLAMA_3_1_8B, "layra", "ddp", gpus=1).total < 70 * GiB


def test_plain_logits_cost_matches_hand_count():
    # 4 x 2048 tokens x 128,256 logits x (2 bf16 + 4 fp32 copy + 4 fp32 log-probs) bytes.
    chunked = estimate(LLAMA_3_1_8B, "lora", "zero3", loss_chunk=1024)
    plain = estimate(LLAMA_3_1_8B, "lora", "zero3", loss_chunk=0)
    tokens, v = 4 * 2048, 128_256
    assert plain.activations - chunked.activations == tokens * v * 10 - 1024 * v * 2


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="engine"):
        estimate(LLAMA_3_1_8B, "layra", "tpu")
    with pytest.raises(ValueError, match="method"):
        count_params(LLAMA_3_1_8B, "adapter")


def test_scaling_doc_holds_the_generated_table():
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert scaling_table() in doc, "regenerate with: python -m layra.memory"
