"""Model fingerprints: "same weights" versus "same architecture and tokenizer".

Series and single-stage arithmetic need a vector applied to the very weights it
was trained from; LayRA-instruct only needs the same architecture and tokenizer
(the instruct sibling). Two hashes tell these apart:

* ``arch``: model type, every shape-determining config field, tensor names and
  shapes, and the tokenizer's vocabulary.
* ``weights``: ``arch`` plus a strided sample of every tensor's values (cast to
  float32, so bf16 and fp32 copies of the same bf16 weights agree). Sampling
  keeps it fast on 16 GB models; a fine-tune changes far more than the sampled
  elements miss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import torch

_SAMPLES = 1024
ARCH_FIELDS = (  # read by layra.vectors.source straight from config.json
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


def is_weight_name(name: str) -> bool:
    """Tensors that count in fingerprints: parameters, not buffers."""
    return name.endswith(("weight", "bias"))


def sample_positions(numel: int) -> torch.Tensor | None:
    """Flat indices of the elements a fingerprint samples (None: all of them)."""
    if numel > _SAMPLES:
        # float64: in float32 the last position of a >2**24-element tensor (any real
        # embedding) rounds up past the end.
        return torch.linspace(0, numel - 1, _SAMPLES, dtype=torch.float64).round().long()
    return None


def _sample(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    idx = sample_positions(flat.numel())
    if idx is not None:
        flat = flat[idx]
    return flat.to(torch.float32).cpu().numpy().tobytes()


def config_summary(config: Any) -> dict[str, Any]:
    cfg = getattr(config, "text_config", None) or config
    d = cfg if isinstance(cfg, dict) else cfg.to_dict()
    return {k: d.get(k) for k in ARCH_FIELDS}


def tokenizer_hash(tokenizer: Any) -> str | None:
    if tokenizer is None:
        return None
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def fingerprint(
    tensors: Iterable[tuple[str, torch.Tensor]], config: Any, tokenizer: Any = None
) -> dict[str, str]:
    """``{"arch": ..., "weights": ...}`` for named tensors (tied ones once).

    ``tensors`` may come from a live model (``unique_named_parameters``) or be
    streamed from safetensors files: the result is the same for the same
    weights. Names are taken as given; tied duplicates must be left out by the
    caller (save_pretrained leaves them out of files already).
    """
    items = ((n, tuple(t.shape), lambda t=t: _sample(t)) for n, t in tensors)
    return fingerprint_sampled(items, config, tokenizer)


def fingerprint_sampled(
    items: Iterable[tuple[str, tuple[int, ...], Callable[[], bytes]]],
    config: Any,
    tokenizer: Any = None,
) -> dict[str, str]:
    """:func:`fingerprint` from ``(name, shape, sampler)`` triples.

    ``sampler()`` returns the float32 bytes of the elements at
    :func:`sample_positions` — so a caller streaming from files can read just
    those elements instead of whole tensors. Same result as :func:`fingerprint`.
    """
    arch_h = hashlib.sha256()
    weights_h = hashlib.sha256()
    arch_h.update(json.dumps(config_summary(config), sort_keys=True).encode())
    arch_h.update((tokenizer_hash(tokenizer) or "").encode())
    chosen = sorted(((n, s, f) for n, s, f in items if is_weight_name(n)), key=lambda x: x[0])
    for name, shape, sampler in chosen:
        meta = f"{name}:{tuple(shape)}".encode()
        arch_h.update(meta)
        weights_h.update(meta)
        weights_h.update(sampler())
    arch = arch_h.hexdigest()[:16]
    weights_h.update(arch.encode())
    return {"arch": arch, "weights": weights_h.hexdigest()[:16]}


def model_fingerprint(model: torch.nn.Module, tokenizer: Any = None) -> dict[str, str]:
    """Fingerprint of a live (possibly PEFT-wrapped) model's base weights."""
    from layra.arch import unique_named_parameters, unwrap

    hf = unwrap(model)
    named = []
    for name, p in unique_named_parameters(hf):
        if "lora_" in name or "modules_to_save" in name:
            continue  # adapter weights, not the base model's
        named.append((name.replace(".base_layer.", ".").replace(".original_module.", "."), p))
    return fingerprint(named, hf.config, tokenizer)
