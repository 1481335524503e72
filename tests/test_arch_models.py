"""Architecture facts and model loading for every supported family."""

import pytest
import tiny
import torch

from layra.arch import describe, unembed, unique_named_parameters
from layra.errors import LayraError
from layra.fingerprint import fingerprint, model_fingerprint
from layra.models import load_model, resolve_source, strip_quantizer


@pytest.mark.parametrize(
    "arch,tied", [("llama", False), ("qwen2", True), ("mistral", False), ("gemma3_text", True)]
)
def test_describe(arch, tied):
    m = tiny.make_model(arch, 300, layers=3)
    a = describe(m)
    assert (a.num_layers, a.layers_prefix, a.embed_name, a.head_name, a.tied) == (
        3,
        "model.layers",
        "model.embed_tokens",
        "lm_head",
        tied,
    )
    assert (
        a.layer_of("model.layers.2.mlp.up_proj.weight") == 2
        and a.layer_of("lm_head.weight") is None
    )
    assert a.lora_targets == tiny.LINEARS
    assert a.embed_scale == (32**0.5 if arch == "gemma3_text" else 1.0)
    names = [n for n, _ in unique_named_parameters(m)]
    assert ("lm_head.weight" in names) == (not tied)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_unembed_of_last_hidden_state_is_the_models_logits(arch):
    m = tiny.make_model(arch, 300).eval()
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        out = m.model(input_ids=ids)
        torch.testing.assert_close(
            unembed(m, _prenorm(m, ids)), m(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
        assert out.last_hidden_state.shape == (1, 9, 32)


def _prenorm(m, ids):
    captured = {}
    h = m.model.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("x", inp[0]))
    m(input_ids=ids)
    h.remove()
    return captured["x"]


def test_load_model_and_errors(model_dirs, tmp_path, monkeypatch):
    import layra.models

    # A hub id is passed through as is; whether the hub has it is _check_hub's (offline here).
    monkeypatch.setattr(layra.models, "_check_hub", lambda repo, filename: None)
    model, tok = load_model(str(model_dirs["qwen2"]))
    assert describe(model).tied and tok.pad_token is not None
    with pytest.raises(LayraError, match="has no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(LayraError, match="does not exist"):
        resolve_source(str(tmp_path / "a" / "b"))
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(LayraError, match="not a .gguf model"):
        resolve_source(str(tmp_path / "w.bin"))
    assert resolve_source("meta-llama/Llama-3.1-8B") == ("meta-llama/Llama-3.1-8B", None)


def test_strip_quantizer_removes_gguf_markers():
    m = tiny.make_model("llama", 300)
    m.hf_quantizer, m.is_quantized, m.config.quantization_config = (
        object(),
        True,
        {"quant_method": "gguf"},
    )
    strip_quantizer(m)
    assert (
        m.hf_quantizer is None
        and not m.is_quantized
        and not hasattr(m.config, "quantization_config")
    )


def test_fingerprint_same_weights_vs_same_architecture(model_dirs):
    from safetensors.torch import load_file

    model, tok = load_model(str(model_dirs["gemma3_text"]))
    fp = model_fingerprint(model, tok)
    # From the files on disk: the same.
    tensors = load_file(model_dirs["gemma3_text"] / "model.safetensors")
    assert fingerprint(tensors.items(), model.config, tok) == fp
    # bf16 copy of fp32 weights: same architecture, different weights.
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1.0)
    fp2 = model_fingerprint(model, tok)
    assert fp2["arch"] == fp["arch"] and fp2["weights"] != fp["weights"]
