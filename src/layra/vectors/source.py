"""Model weights as a tensor source: a safetensors directory (streamed) or a loaded model.

Extraction, diffing and applying read a model tensor by tensor (often a few
rows at a time). A Hugging Face directory with safetensors shards is read
straight from disk and never loaded whole; anything else (a GGUF file, a hub
id) is loaded with :func:`layra.models.load_model` and read from memory. Both
give the same names (HF parameter names, tied tensors once), fingerprints and
architecture facts.
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
from layra.fingerprint import fingerprint_sampled, model_fingerprint, sample_positions
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

    def fingerprint(self, samples: dict[str, bytes] | None = None) -> dict[str, str]:
        """Same as ``model_fingerprint`` of the loaded model; ``samples`` may stand in for
        the files' values (e.g. those of a model being written, with the same names)."""
        samples = self.samples() if samples is None else samples
        items = ((n, t.shape, lambda n=n: samples[n]) for n, t in self.tensors.items())
        return fingerprint_sampled(items, self.config, self.tokenizer)


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
