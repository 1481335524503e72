"""Load a causal LM and its tokenizer from a local directory, a hub id or a GGUF file.

model, tok = load_model("path/to/hf-dir")
model, tok = load_model("/cache/gemma-3-270m-q4_k_m.gguf")   # dequantised
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from layra.atomic import atomic_dir
from layra.errors import LayraError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise LayraError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_source(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Split a model reference into (directory or hub id, gguf file name or None).

    Validates local paths so that a typo gives a one-line error before any heavy
    import or network access.
    """
    p = Path(name_or_path).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise LayraError(f"{p} is a file but not a .gguf model; pass a model directory")
        return str(p.parent), p.name
    if p.is_dir():
        if gguf_file:
            if not (p / gguf_file).is_file():
                raise LayraError(f"GGUF file {gguf_file!r} not found in {p}")
            return str(p), gguf_file
        if not (p / "config.json").is_file():
            raise LayraError(f"model directory {p} has no config.json")
        return str(p), None
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local or os.path.sep in name_or_path and not _looks_like_hub_id(name_or_path):
        raise LayraError(f"model path {name_or_path} does not exist")
    if not _looks_like_hub_id(name_or_path):
        raise LayraError(f"model {name_or_path!r} is neither a local path nor a hub id (org/name)")
    return name_or_path, gguf_file


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def strip_quantizer(model: nn.Module) -> nn.Module:
    """Forget that a model came from a GGUF file.

    transformers dequantises GGUF tensors on load but keeps a GGUF quantizer on
    the model and a ``quantization_config`` in its config; with them the model
    refuses to train or saves a config other tools misread. The weights are
    already plain tensors, so dropping the markers is all that is needed.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_tokenizer(
    name_or_path: str, gguf_file: str | None = None, trust_remote_code: bool = False
):
    """The tokenizer for a model reference (see :func:`resolve_source`)."""
    from transformers import AutoTokenizer

    src, gguf = resolve_source(name_or_path, gguf_file)
    try:
        tok = AutoTokenizer.from_pretrained(
            src, gguf_file=gguf, trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise LayraError(f"cannot load tokenizer from {name_or_path}: {_first_line(e)}") from e
    if tok.pad_token is None:
        # Padding is only ever masked out; EOS is the conventional stand-in.
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
):
    """Load a causal LM (and tokenizer) ready to train, evaluate or save.

    Returns ``(model, tokenizer)`` (tokenizer ``None`` if ``with_tokenizer`` is
    false). GGUF weights are dequantised and the quantizer removed (see
    :func:`strip_quantizer`). Raises :class:`LayraError` for a missing path, a
    directory without ``config.json`` or a model that does not load.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    src, gguf = resolve_source(name_or_path, gguf_file)
    # transformers' per-tensor "Loading weights" bar is noise next to layra's own progress.
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=gguf, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as e:
        raise LayraError(f"cannot load model from {name_or_path}: {_first_line(e)}") from e
    strip_quantizer(model)
    model.to(device)
    tok = load_tokenizer(name_or_path, gguf_file, trust_remote_code) if with_tokenizer else None
    return model, tok


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Dequantise a GGUF model once into a standard Hugging Face directory (atomic)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    model, tok = load_model(str(gguf_path), dtype=dtype)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out_dir


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
