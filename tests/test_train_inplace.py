"""LayRA's embedding / head trained in place equals PEFT's modules_to_save copy, step for step.

Both set-ups start from the same weights and LoRA initialisation and take the
same AdamW steps (weight decay on, dropout off, fp32); after every step the
trained embedding, head, LoRA factors and logits must agree within float32
rounding (the two sum the tied tensor's two gradients in another order). The
adapter saved from the in-place model must be the one PEFT would save, so
``PeftModel.from_pretrained`` reproduces the trained model.
"""

import json

import pytest
import tiny
import torch
from safetensors import safe_open

from layra.config import load_config
from layra.loss import LossModule
from layra.methods import prepare_model, save_adapter
from layra.train import _param_groups

STEPS = 4


def _method(*extra):
    return load_config(
        None,
        [
            "model.name_or_path=x",
            "data.sources=[{path: x, lang: glg}]",
            "method.name=layra",
            "method.k=1",
            "method.m=1",
            "method.dropout=0",
            *extra,
        ],
    ).method


def _train(arch: str, tied: bool, in_place: bool, chunk: int, steps: int = STEPS):
    torch.manual_seed(0)
    model = tiny.make_model(arch, 300, tied=tied)
    torch.manual_seed(1)  # the LoRA initialisation
    model, plan = prepare_model(model, _method(), embeddings_in_place=in_place)
    with torch.no_grad():  # B starts at zero: give it values so A trains from step one
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    opt = torch.optim.AdamW(_param_groups(model, 0.1, 3e-3), lr=3e-3, betas=(0.9, 0.95), eps=1e-5)
    loss_model = LossModule(model, chunk)
    g = torch.Generator().manual_seed(3)
    losses = []
    for _ in range(steps):
        ids = torch.randint(0, 300, (2, 16), generator=g)
        loss = loss_model(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, plan, losses


def _trained(model):
    """The embedding / head the model computes with, and its LoRA factors, by plain name."""
    hf = model.base_model.model
    out = {
        "embed": hf.get_input_embeddings().weight,
        "head": hf.get_output_embeddings().weight,
    }
    for module, key in ((hf.get_input_embeddings(), "embed"), (hf.get_output_embeddings(), "head")):
        copy = getattr(module, "modules_to_save", None)
        if copy is not None:
            out[key] = copy["default"].weight
    for n, p in model.named_parameters():
        if "lora_" in n:
            out[n] = p
    return {k: v.detach() for k, v in out.items()}


IDS = torch.tensor([[1, 5, 17, 42, 99, 150, 7, 2], [1, 200, 33, 8, 250, 64, 11, 3]])


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize(
    "arch,tied,chunk",
    [("gemma3_text", True, 64), ("qwen2", True, 0), ("llama", False, 64), ("mistral", False, 0)],
)
def test_in_place_training_equals_modules_to_save(arch, tied, chunk):
    ref, _, ref_losses = _train(arch, tied, in_place=False, chunk=chunk)
    new, _, new_losses = _train(arch, tied, in_place=True, chunk=chunk)
    # fp32; the only difference is the order in which gradients are summed.
    torch.testing.assert_close(new_losses, ref_losses, rtol=1e-5, atol=1e-6)
    a, b = _trained(new), _trained(ref)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    start = tiny.make_model(arch, 300, tied=tied).get_input_embeddings().weight
    assert (a["embed"] - start).abs().max() > 1e-3  # the embedding did train
    torch.testing.assert_close(_logits(new), _logits(ref), rtol=1e-4, atol=1e-5)
    hf = new.base_model.model
    assert (hf.get_input_embeddings().weight is hf.get_output_embeddings().weight) is tied
    # No second copy of embedding / head: the model holds each tensor once.
    n_new = sum(p.numel() for p in {id(p): p for p in new.parameters()}.values())
    n_ref = sum(p.numel() for p in {id(p): p for p in ref.parameters()}.values())
    assert n_ref - n_new == 300 * 32 * (1 if tied else 2)


@pytest.mark.parametrize("arch,tied", [("gemma3_text", True), ("llama", False)])
def test_saved_adapter_is_peft_format_and_reloads_the_trained_model(arch, tied, tmp_path):
    from peft import PeftModel

    ref, ref_plan, _ = _train(arch, tied, in_place=False, chunk=64, steps=2)
    new, plan, _ = _train(arch, tied, in_place=True, chunk=64, steps=2)
    ref.save_pretrained(tmp_path / "ref")
    save_adapter(new, plan, tmp_path / "new")

    def keys(d):
        with safe_open(d / "adapter_model.safetensors", "pt") as f:
            return set(f.keys())

    assert keys(tmp_path / "new") == keys(tmp_path / "ref")
    cfg = json.loads((tmp_path / "new" / "adapter_config.json").read_text())
    assert set(cfg["modules_to_save"]) >= {"embed_tokens", "lm_head"}
    assert cfg["ensure_weight_tying"] is tied

    torch.manual_seed(0)
    base = tiny.make_model(arch, 300, tied=tied)
    loaded = PeftModel.from_pretrained(base, tmp_path / "new").eval()
    torch.testing.assert_close(_logits(loaded), _logits(new.eval()), rtol=0, atol=1e-6)


def test_tied_gradient_is_one_buffer_and_rows_keep_dense_gradients():
    model, _, _ = _train("gemma3_text", True, in_place=True, chunk=64, steps=0)
    emb = model.base_model.model.get_input_embeddings()
    assert emb.sparse  # the lookup adds its rows into the head's gradient
    LossModule(model, 64)(torch.randint(0, 300, (2, 16))).backward()
    assert emb.weight.grad is not None and emb.weight.grad.layout == torch.strided
    torch.manual_seed(0)
    rows_cfg = _method(
        "method.embeddings=rows", "method.embedding_rows.reference=[{path: e.txt, lang: eng}]"
    )
    m, _ = prepare_model(tiny.make_model("gemma3_text", 300, tied=True), rows_cfg, rows=[5, 7])
    assert not m.base_model.model.get_input_embeddings().sparse  # the row mask needs dense
