"""Every architecture fact layra needs, in one place.

Where the decoder layers live, which modules are the input embedding and the LM
head, whether the two are tied, the final norm and the logit quirks (Gemma scales
embeddings by sqrt(hidden) and may soft-cap logits). Other modules ask here
instead of poking at ``model.model.layers`` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layra.errors import LayraError

# Linear layers of one decoder block, in the paper's order (q,k,v,o,gate,up,down).
_LLAMA_LIKE_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# model_type -> the linear sublayers LoRA targets. Models not listed fall back to
# the Llama names if they have them.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE_LINEARS,
    "qwen2": _LLAMA_LIKE_LINEARS,
    "qwen3": _LLAMA_LIKE_LINEARS,
    "mistral": _LLAMA_LIKE_LINEARS,
    "gemma": _LLAMA_LIKE_LINEARS,
    "gemma2": _LLAMA_LIKE_LINEARS,
    "gemma3_text": _LLAMA_LIKE_LINEARS,
}
SUPPORTED = tuple(LORA_TARGETS)


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model under PEFT / DDP / FSDP / compile wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):  # PEFT
            model = model.get_base_model()
    return model


@dataclass(frozen=True)
class Arch:
    """Names and facts of one loaded model (names are relative to the HF model)."""

    model_type: str
    num_layers: int
    layers_prefix: str  # e.g. "model.layers"; layer i's params are f"{prefix}.{i}."
    embed_name: str  # module name of the input embedding, e.g. "model.embed_tokens"
    head_name: str  # module name of the LM head, e.g. "lm_head"
    norm_name: str  # final norm before the head
    tied: bool
    lora_targets: tuple[str, ...]
    embed_scale: float  # Gemma multiplies embeddings by sqrt(hidden_size)
    logit_softcap: float | None

    def layer_prefix(self, i: int) -> str:
        return f"{self.layers_prefix}.{i}."

    def layer_of(self, param_name: str) -> int | None:
        """The decoder-layer index a parameter name belongs to, or None."""
        prefix = self.layers_prefix + "."
        pos = param_name.find(prefix)
        if pos < 0:
            return None
        rest = param_name[pos + len(prefix) :]
        head = rest.split(".", 1)[0]
        return int(head) if head.isdigit() else None


def _module_name(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise LayraError(f"cannot locate module {type(target).__name__} in the model")


def describe(model: nn.Module) -> Arch:
    """Architecture facts for a (possibly wrapped) Hugging Face causal LM."""
    hf = unwrap(model)
    cfg = hf.config
    cfg = getattr(cfg, "text_config", None) or cfg
    model_type = getattr(cfg, "model_type", type(hf).__name__)
    layers = None
    layers_name = None
    for name, mod in hf.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks"):
            layers, layers_name = mod, name
            break
    if layers is None:
        raise LayraError(f"model type {model_type!r}: cannot find its decoder layers")
    emb = hf.get_input_embeddings()
    head = hf.get_output_embeddings()
    if emb is None or head is None:
        raise LayraError(f"model type {model_type!r} has no input embedding or LM head")
    base = getattr(hf, hf.base_model_prefix, hf) if hasattr(hf, "base_model_prefix") else hf
    norm = getattr(base, "norm", None) or getattr(base, "final_layernorm", None)
    norm_name = _module_name(hf, norm) if norm is not None else ""
    targets = LORA_TARGETS.get(model_type)
    if targets is None:
        present = {
            n.split(".")[-1] for n, m in layers[0].named_modules() if isinstance(m, nn.Linear)
        }
        targets = tuple(t for t in _LLAMA_LIKE_LINEARS if t in present) or tuple(sorted(present))
    scale = 1.0
    if model_type.startswith("gemma"):
        scale = float(cfg.hidden_size) ** 0.5
    return Arch(
        model_type=model_type,
        num_layers=len(layers),
        layers_prefix=layers_name,
        embed_name=_module_name(hf, emb),
        head_name=_module_name(hf, head),
        norm_name=norm_name,
        tied=emb.weight is head.weight,
        lora_targets=targets,
        embed_scale=scale,
        logit_softcap=getattr(cfg, "final_logit_softcapping", None),
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks in order."""
    hf = unwrap(model)
    return hf.get_submodule(describe(hf).layers_prefix)


def final_norm(model: nn.Module) -> nn.Module:
    hf = unwrap(model)
    return hf.get_submodule(describe(hf).norm_name)


def unembed(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from a residual-stream state: final norm, LM head, soft-cap if any.

    Used by the logit lens; the last layer's output through this equals the
    model's own logits.
    """
    hf = unwrap(model)
    arch = describe(hf)
    logits = hf.get_output_embeddings()(final_norm(hf)(hidden))
    if arch.logit_softcap:
        logits = torch.tanh(logits / arch.logit_softcap) * arch.logit_softcap
    return logits


def unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters once each: a tied embedding/head appears under its first name only.

    Looping over ``state_dict()`` instead visits a tied tensor twice — adding a
    delta that way doubles it.
    """
    return list(model.named_parameters(remove_duplicate=True))
