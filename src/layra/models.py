"""Load a causal LM and its tokenizer from a local directory, a hub id or a GGUF file;
and what its config alone says about training it (depth, the dtype to load weights in).

model, tok = load_model("path/to/hf-dir")
model, tok = load_model("/cache/gemma-3-270m-q4_k_m.gguf")   # dequantised
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from layra.atomic import atomic_dir
from layra.errors import LayraError
from layra.method_registry import method_spec

if TYPE_CHECKING:
    from layra.config import RunConfig

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
    _check_hub(name_or_path, gguf_file or "config.json")
    return name_or_path, gguf_file


@functools.lru_cache(maxsize=32)
def _check_hub(repo_id: str, filename: str) -> None:
    """Fail at once, in one line, when a hub model can be neither downloaded nor found cached.

    Without this, transformers retries each file (10 lines over ~35 s) before failing
    offline. Offline (``HF_HUB_OFFLINE``) the cache alone decides. Online, one quick
    request asks the hub; if it cannot be reached but the model is cached, the rest
    of this process works from the cache (offline mode) instead of retrying.
    """
    import huggingface_hub
    from huggingface_hub import constants, errors

    cached = isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str)
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise LayraError(
                f"model {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it while online (hf download {repo_id}) or pass a local directory"
            )
        return
    try:
        huggingface_hub.model_info(repo_id, timeout=10)
    except errors.GatedRepoError:
        return  # it exists; transformers says how to get access
    except errors.RepositoryNotFoundError as e:
        raise LayraError(
            f"model {repo_id} is not on the Hugging Face hub (a private one needs "
            "`hf auth login`); check the id or pass a local directory"
        ) from e
    except errors.HfHubHTTPError:
        return  # the hub answered; transformers reports gated / other refusals itself
    except Exception as e:  # no network: connection, DNS or timeout errors of the HTTP client
        if not cached:
            raise LayraError(
                f"cannot reach the Hugging Face hub for model {repo_id} ({_first_line(e)}) "
                "and it is not cached; check the network or pass a local directory"
            ) from e
        constants.HF_HUB_OFFLINE = True  # read by huggingface_hub and transformers per call


BIN_ONLY = (
    "{path} has only pickle weights ({files}); layra loads safetensors only and never "
    "unpickles. Convert it once where you trust the file: "
    "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) writes safetensors "
    "(copy the tokenizer files too), then use NEW_DIR"
)
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "tekken.json",
)


def check_model_files(name_or_path: str, gguf_file: str | None = None) -> None:
    """Refuse a local model directory that cannot load, before anything is written.

    Checks, reading only file names and safetensors headers: weights are safetensors
    (a ``.bin``-only model is refused, see :data:`BIN_ONLY`), no shard is truncated or
    damaged, and tokenizer files are present. GGUF files and hub ids pass (the hub is
    checked by :func:`resolve_source`).
    """
    src, gguf = resolve_source(name_or_path, gguf_file)
    p = Path(src)
    if gguf or not p.is_dir():
        return
    check_weights(p)
    _check_tokenizer_files(p)


def check_weights(p: Path) -> None:
    """Refuse a directory whose weights are not loadable safetensors (see :data:`BIN_ONLY`)."""
    from layra.vectors.shards import read_header

    shards = sorted(p.glob("*.safetensors"))
    if not shards:
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise LayraError(BIN_ONLY.format(path=f"model directory {p}", files=", ".join(pickles)))
        raise LayraError(f"cannot load model from {p}: it has no weights (no *.safetensors file)")
    for shard in shards:
        try:
            read_header(shard)
        except LayraError as e:
            raise LayraError(
                f"{e}; the model's weights are damaged or incomplete: download or copy them again"
            ) from e
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise LayraError(
                f"{shard} is not a valid safetensors file ({_first_line(e)}); the model's "
                "weights are damaged or incomplete: download or copy them again"
            ) from e


def _check_tokenizer_files(p: Path) -> None:
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise LayraError(
            f"model directory {p} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
            "copy them from the model it was made from"
        )


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
    if not gguf and Path(src).is_dir():
        _check_tokenizer_files(Path(src))
    try:
        tok = AutoTokenizer.from_pretrained(
            src, gguf_file=gguf, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
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
    directory without ``config.json``, weights that are not safetensors (``.bin``:
    refused, never unpickled) or a model that does not load.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    src, gguf = resolve_source(name_or_path, gguf_file)
    if not gguf and Path(src).is_dir():
        check_weights(Path(src))
    # transformers' per-tensor "Loading weights" bar is noise next to layra's own progress.
    hf_logging.disable_progress_bar()
    # Safetensors only, from the hub too: transformers would otherwise fall back to a
    # repository's pytorch_model.bin (a pickle).
    st = {} if gguf else {"use_safetensors": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, gguf_file=gguf, dtype=parse_dtype(dtype), trust_remote_code=trust_remote_code, **st
        )
    except (OSError, ValueError, KeyError, SafetensorError) as e:
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


# How a model is held for training, decided from its config alone (no weights read):
# depth, the dtype its weights load in, fp32 master copies of what trains. Training
# (layra.train) and `layra plan` (layra.memory) both take these from here, so they agree.


def model_depth(cfg: RunConfig) -> int:
    """Number of decoder layers, from the config alone (no weights loaded)."""
    return int(model_config(cfg).num_hidden_layers)


def frozen_dtype(cfg: RunConfig, precision: str) -> str:
    """The dtype to load weights in for the resolved ``precision`` (bf16 or fp32).

    Under bf16 autocast every matmul runs in bf16 anyway, so weights that do not
    train gain nothing from fp32 copies — but cost memory and a cast per use. They
    are loaded in bf16 only when the checkpoint itself is bf16 (values identical)
    and the method leaves weights frozen; trainable tensors are then upcast to fp32
    master copies (:func:`upcast_trainable`). In fp32 (chosen where bf16 matmul is
    slow) everything is fp32: bf16 frozen weights would be cast on every use.
    """
    mc = model_config(cfg)
    stored = getattr(mc, "dtype", None) or getattr(mc, "torch_dtype", None)
    return load_dtype_for(cfg.method.name, precision, stored)


def load_dtype_for(method: str, precision: str, stored: Any) -> str:
    """The dtype layra loads weights in (:func:`frozen_dtype` and ``layra plan``).

    bf16 only when computing in bf16 from a bf16 checkpoint with frozen weights;
    fp32 otherwise (``full`` trains everything: fp32 weights are its master copies).
    """
    if precision != "bf16" or method_spec(method).trains_everything:
        return "float32"
    return "bfloat16" if str(stored).replace("torch.", "") == "bfloat16" else "float32"


def upcast_trainable(model: nn.Module) -> None:
    """Trainable tensors in fp32 (the optimizer's master weights); frozen ones as loaded."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def model_config(cfg: RunConfig):
    """The model's config (its text part for a multimodal model), from config.json or
    the GGUF header alone: no weights are read. Cached per model reference."""
    m = cfg.model
    return _read_model_config(m.name_or_path, m.gguf_file, m.trust_remote_code)


@functools.lru_cache(maxsize=8)
def _read_model_config(name_or_path: str, gguf_file: str | None, trust_remote_code: bool):
    # Cached: depth and stored dtype are asked for separately, and a hub id or a GGUF
    # header costs a request or a parse each time.
    from transformers import AutoConfig

    src, gguf = resolve_source(name_or_path, gguf_file)
    try:
        mc = AutoConfig.from_pretrained(src, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LayraError(
            f"cannot read the model config of {name_or_path}: {str(e).splitlines()[0]}"
        ) from e
    return getattr(mc, "text_config", None) or mc


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
