"""Model weights as a tensor source: a safetensors directory (streamed) or a loaded model.

Extraction, diffing and applying read a model tensor by tensor (often a few
rows at a time). A Hugging Face directory with safetensors shards is read
straight from disk and never loaded whole; anything else (a GGUF file, a hub
id) is loaded with :func:`layra.models.load_model` and read from memory. Both
give the same names (HF parameter names, tied tensors once), fingerprints and
architecture facts.

Applying a vector to a directory imports no ``transformers`` (seconds of
start-up): the fingerprint needs only a few config fields and the tokenizer's
vocabulary, both read from ``config.json`` / ``tokenizer.json`` as JSON. Where
those files lack something (a field left to its class default, no
``tokenizer.json``), or a JSON fingerprint does not match, the ``transformers``
objects are used instead: the JSON route is a shortcut, never a second opinion.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from layra.arch import Arch, describe, unique_named_parameters, unwrap
from layra.errors import LayraError
from layra.fingerprint import ARCH_FIELDS, fingerprint_sampled, model_fingerprint, sample_positions
from layra.vectors.shards import TensorInfo, read_elements, read_header, read_rows

INDEX = "model.safetensors.index.json"


class ModelDir:
    """A Hugging Face model directory whose weights are safetensors, read lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.ref = str(path)
        if not (self.path / "config.json").is_file():
            raise LayraError(f"model directory {self.path} has no config.json")
        index = self.path / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise LayraError(f"{index} is not a safetensors index ({e})") from e
            files = list(dict.fromkeys(weight_map.values()))
            self.index: dict | None = json.loads(index.read_text())
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            self.index = None
        if not files:
            from layra.models import check_weights

            check_weights(self.path)  # refuses .bin-only weights, saying how to convert
        self.shards: list[Path] = []
        self.metadata: dict[str, dict[str, str]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            shard = self.path / name
            if not shard.is_file():
                raise LayraError(f"{self.path}: shard {name} listed in the index is missing")
            infos, meta = read_header(shard)
            self.shards.append(shard)
            self.metadata[name] = meta
            self.tensors.update(infos)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}

    @property
    def dtypes(self) -> dict[str, torch.dtype]:
        return {n: t.dtype for n, t in self.tensors.items()}

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor, in its stored dtype."""
        return read_rows(self.tensors[name], start, stop)

    @cached_property
    def raw_config(self) -> dict[str, Any]:
        """``config.json`` as stored (its text part for a multimodal config)."""
        try:
            d = json.loads((self.path / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise LayraError(f"{self.path}/config.json is not valid JSON ({e})") from e
        return d.get("text_config") or d if isinstance(d, dict) else {}

    @cached_property
    def fast_config(self) -> dict[str, Any] | None:
        """The fingerprinted config fields from the JSON, or None if one is missing there.

        Missing fields take a class default only ``transformers`` knows, except
        ``head_dim`` of Llama / Mistral (hidden / heads) and Qwen2 (None), as those
        config classes set it (transformers 5).
        """
        d = dict(self.raw_config)
        if "head_dim" not in d and d.get("model_type") in _HEAD_DIM_DEFAULT:
            derive = _HEAD_DIM_DEFAULT[d["model_type"]]
            if derive and d.get("hidden_size") and d.get("num_attention_heads"):
                d["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
            elif not derive:
                d["head_dim"] = None
        if any(k not in d or (d[k] is None and k != "head_dim") for k in ARCH_FIELDS):
            return None
        return {k: d[k] for k in ARCH_FIELDS}

    @cached_property
    def fast_vocab(self) -> dict[str, int] | None:
        """``tokenizer.get_vocab()`` read from ``tokenizer.json`` (None if there is none)."""
        return tokenizer_json_vocab(self.path / "tokenizer.json")

    @cached_property
    def config(self) -> Any:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as e:
            raise LayraError(f"cannot read the config of {self.path}: {e}") from e

    @cached_property
    def tokenizer(self) -> Any:
        """The directory's tokenizer, or None if it has none."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, KeyError):
            return None

    @property
    def tied(self) -> bool:
        """Whether the config ties input embedding and LM head (cheaper than :attr:`arch`)."""
        if self.fast_config is not None:
            return bool(self.fast_config["tie_word_embeddings"])
        cfg = getattr(self.config, "text_config", None) or self.config
        return bool(getattr(cfg, "tie_word_embeddings", False))

    @cached_property
    def arch(self) -> Arch:
        # An empty model on the meta device: architecture facts without weights.
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.config)
        return describe(model)

    def samples(self) -> dict[str, bytes]:
        """Each tensor's fingerprint sample (float32 bytes), ~1024 elements read per tensor."""
        out = {}
        for name, info in self.tensors.items():
            pos = sample_positions(max(1, math.prod(info.shape)))
            t = read_rows(info) if pos is None else read_elements(info, pos)
            out[name] = t.to(torch.float32).numpy().tobytes()
        return out

    def fingerprint(
        self, samples: dict[str, bytes] | None = None, fast: bool = False
    ) -> dict[str, str]:
        """Same as ``model_fingerprint`` of the loaded model; ``samples`` may stand in for
        the files' values (e.g. those of a model being written, with the same names).

        ``fast`` reads config and vocabulary as JSON where the files allow it
        (no ``transformers`` import); callers that compare the result must retry
        with ``fast=False`` before refusing a mismatch.
        """
        samples = self.samples() if samples is None else samples
        items = ((n, t.shape, lambda n=n: samples[n]) for n, t in self.tensors.items())
        if fast and self.fast_config is not None and self.fast_vocab is not None:
            return fingerprint_sampled(items, self.fast_config, _Vocab(self.fast_vocab))
        return fingerprint_sampled(items, self.config, self.tokenizer)


_HEAD_DIM_DEFAULT = {"llama": True, "mistral": True, "qwen2": False}  # True: hidden // heads


class _Vocab:
    """Just enough of a tokenizer for :func:`layra.fingerprint.tokenizer_hash`."""

    def __init__(self, vocab: dict[str, int]):
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def tokenizer_json_vocab(path: Path) -> dict[str, int] | None:
    """Token -> id as a fast tokenizer's ``get_vocab()`` gives it, from ``tokenizer.json``.

    The model's vocabulary (BPE / WordPiece / WordLevel: a dict; Unigram: a list
    whose index is the id) plus the added tokens. None where the file is absent
    or of a kind not covered.
    """
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    model = d.get("model") or {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        out = {str(k): int(v) for k, v in vocab.items()}
    elif isinstance(vocab, list) and model.get("type") == "Unigram":
        out = {str(piece[0]): i for i, piece in enumerate(vocab)}
    else:
        return None
    for t in d.get("added_tokens") or []:
        out[str(t["content"])] = int(t["id"])
    return out


class LiveModel:
    """A model already in memory (e.g. dequantised from GGUF), seen as a tensor source."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, ref: str = "<model>"):
        self.model = unwrap(model)
        self.tokenizer = tokenizer
        self.ref = ref
        self.params = dict(unique_named_parameters(self.model))

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(p.shape) for n, p in self.params.items()}

    @property
    def dtypes(self) -> dict[str, torch.dtype]:
        return {n: p.dtype for n, p in self.params.items()}

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        p = self.params[name].detach()
        return p if p.dim() == 0 else p[start:stop]

    @property
    def config(self) -> Any:
        return self.model.config

    @cached_property
    def arch(self) -> Arch:
        return describe(self.model)

    def fingerprint(self) -> dict[str, str]:
        return model_fingerprint(self.model, self.tokenizer)


Source = ModelDir | LiveModel


def open_model(ref: str, gguf_file: str | None = None) -> Source:
    """A tensor source for a model reference: streamed if it is a safetensors directory."""
    p = Path(ref).expanduser()
    if p.is_dir() and not gguf_file and (p / "config.json").is_file():
        return ModelDir(p)
    from layra.models import load_model

    model, tok = load_model(ref, gguf_file=gguf_file)
    return LiveModel(model, tok, ref=ref if not gguf_file else f"{ref}/{gguf_file}")
