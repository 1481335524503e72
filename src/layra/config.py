"""Run configuration: validated dataclasses, loaded from YAML with dotted overrides.

    cfg = load_config("configs/gemma3-270m-layra-gl.yaml", ["train.lr=1e-4", "method.k=4"])

Every error names the bad key and, where the set is closed, the allowed values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from layra.errors import LayraError
from layra.method_registry import METHOD_SPECS, METHODS, method_spec


@dataclass
class ModelConfig:
    name_or_path: str = ""  # local HF dir, hub id, or a .gguf file
    gguf_file: str | None = None  # file name inside name_or_path, for GGUF repos/dirs
    trust_remote_code: bool = False  # off unless the user asks: it runs the repo's code


@dataclass
class SourceConfig:
    """One training text source. ``path`` is a file, a directory of files, or a hub dataset."""

    path: str = ""
    lang: str = ""
    format: Literal["auto", "txt", "jsonl", "parquet", "hf"] = "auto"
    field: str = "text"  # jsonl / parquet / hub column holding the document
    config: str | None = None  # hub dataset config, e.g. glg_Latn for FineWeb 2
    split: str = "train"
    weight: float | None = None  # share of the token budget when data.mix = weights


@dataclass
class RowsConfig:
    """Which embedding / head rows ``method.embeddings: rows`` trains (layra.embeddings).

    Token t is chosen iff it occurs at least ``min_count`` times in the training
    blocks and its relative frequency there is at least ``ratio`` times its relative
    frequency in every reference text (text in the model's old languages).
    """

    reference: list[SourceConfig] = field(default_factory=list)
    ratio: float = 5.0
    min_count: int = 3
    max_reference_tokens: int | None = 2_000_000  # per reference language; None = all


@dataclass
class MethodConfig:
    name: Literal[METHODS] = "layra"  # layra.method_registry
    # First k and last m decoder layers: an int is a count, a float in (0, 1) a
    # fraction of depth (rounded, at least 1), "auto" asks the logit lens
    # (method.lens_profile). None means the method's default (layer-selective
    # 1/1, layra 10/2 as in the paper — for a 32-layer model; choose again for
    # other depths).
    k: int | float | str | None = None
    m: int | float | str | None = None
    lens_profile: str | None = None  # profile JSON from `layra lens`, for k/m = auto
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every linear of a block (q,k,v,o,gate,up,down)
    # How layer-selective / layra train the input embeddings and LM head (docs/sweep.md):
    # full (the paper), frozen, lowlr (lr x embeddings_lr_scale) or rows (only the rows of
    # tokens frequent in the training text and rare in embedding_rows.reference). None: full,
    # or frozen when the legacy switch train_embeddings is false.
    embeddings: Literal["full", "frozen", "lowlr", "rows"] | None = None
    embeddings_lr_scale: float = 0.1  # lowlr: embedding / head learning rate = train.lr x this
    # AdamW weight decay of the trained embedding / head. None: train.weight_decay (0.1, the
    # paper), which shrinks every row, those of tokens never seen included; 0 keeps rows
    # that get no gradient bit-identical. rows always trains without decay.
    embeddings_weight_decay: float | None = None
    embedding_rows: RowsConfig = field(default_factory=RowsConfig)
    train_embeddings: bool = True  # legacy: false means embeddings: frozen


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    seq_len: int = 2048
    max_tokens: int | None = None  # training-token budget (all languages); None = all
    mix: Literal["equal", "weights", "concat"] = "equal"  # how several languages share the budget
    heldout_fraction: float = 0.01  # share of documents held out (hash of the text decides)
    heldout_max_docs: int = 1000  # per language; keeps held-out files small on big corpora
    shuffle: bool = True
    # Where prepared (tokenized, memory-mapped) data is kept and found again; None:
    # $LAYRA_DATA_CACHE, else $LAYRA_CACHE/prepared, else ~/.cache/layra/prepared.
    cache_dir: str | None = None


@dataclass
class TrainConfig:
    # Paper, Table 23: 1 epoch, AdamW(0.9, 0.95, eps 1e-5), wd 0.1, lr 3e-4, linear, 5% warm-up.
    epochs: int = 1
    max_steps: int | None = None  # stop early (e.g. a quick check); schedule still spans this
    batch_size: int = 4  # sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-5
    weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of steps
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    # auto: bf16 where the device multiplies bf16 fast (CUDA with bf16, AVX512-BF16/AMX
    # CPUs), else fp32 -- on AVX2-only CPUs bf16 matmul is ~100x slower (layra.precision).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    loss_chunk: int = 1024  # positions per chunk of the LM-head + loss; 0 = plain full logits
    seed: int = 0
    save_every: int = 0  # checkpoint every N steps (0: only at the end of training)
    keep_checkpoints: int = 2
    log_every: int = 1
    # accelerate trackers: "auto" logs to TensorBoard when it is installed, "none" to none,
    # or a comma list of accelerate tracker names (tensorboard, wandb, mlflow, ...).
    trackers: str = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # FSDP2 only (a launch with ACCELERATE_USE_FSDP; one process ignores both). "stored":
    # parameters are all-gathered in the dtype they are held in and autocast casts for each
    # matmul; "bf16": FSDP2's MixedPrecisionPolicy gathers and computes in bf16 and reduces
    # gradients in fp32 (the fp32 shards stay the optimizer's master weights). It drops
    # autocast's bf16 copies of fp32 weights: for `full` on Llama 3.1 8B, 14 GiB per GPU.
    fsdp_param_dtype: Literal["stored", "bf16"] = "stored"
    # FSDP2's CPUOffloadPolicy: sharded parameters, gradients and AdamW state live in host
    # memory and the optimizer step runs on the CPU; the GPU holds what is gathered.
    fsdp_offload: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/run"
    merge: bool = False  # also write the merged full model (model/)


# ---------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with exact messages


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise LayraError(
                f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}"
            )
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        # Try the most specific types first so "3" stays an int and 0.5 a float.
        for a in sorted((a for a in args if a is not type(None)), key=_specificity):
            try:
                return _convert(value, a, key)
            except LayraError as e:
                errors.append(str(e))
        allowed = " or ".join(_type_name(a) for a in args)
        raise LayraError(f"{key}: {value!r} is not a valid {allowed}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise LayraError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise LayraError(f"{key}: expected a mapping of {', '.join(_field_names(tp))}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise LayraError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LayraError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LayraError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise LayraError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _specificity(tp: Any) -> int:
    return {bool: 0, int: 1, float: 2, str: 9}.get(tp, 5)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        raise LayraError(
            f"unknown key {prefix}{unknown[0]!s}; allowed under {prefix.rstrip('.') or 'the top level'}: "
            + ", ".join(names)
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _parse_scalar(text: str) -> Any:
    """A YAML scalar, so `train.lr=1e-4` is a float and `merge=true` a bool."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads 1e-4 as a string; numbers are what users mean.
    if isinstance(v, str):
        try:
            return float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            return v
    return v


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` pairs into a nested dict (creating levels as needed)."""
    for item in overrides:
        if "=" not in item:
            raise LayraError(f"override {item!r} is not key=value (e.g. train.lr=1e-4)")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if p.isdigit() and isinstance(node, list):
                idx = int(p)
                if idx >= len(node):
                    raise LayraError(f"override {key}: index {idx} out of range")
                node = node[idx]
                continue
            node = node.setdefault(p, {})
            if not isinstance(node, dict | list):
                raise LayraError(f"override {key}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(raw)
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict; ``include: other.yaml`` (relative to the file) is merged underneath."""
    from layra.documents import read_whole_text

    p = Path(path)
    if p.is_dir():
        raise LayraError(f"config file {p} is a directory; give a YAML file")
    if not p.is_file():
        raise LayraError(f"config file {p} not found")
    if p.resolve() in _seen:
        raise LayraError(f"config file {p} includes itself")
    try:
        # A config is small: read no more than 1 MiB of it, and no binary file.
        data = yaml.safe_load(read_whole_text(p, limit=1 << 20)) or {}
    except LayraError as e:
        raise LayraError(f"config file {e}") from None
    except yaml.YAMLError as e:
        raise LayraError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise LayraError(f"config file {p} must be a mapping at the top level")
    inc = data.pop("include", None)
    if inc:
        data = _deep_merge(read_yaml(p.parent / inc, _seen + (p.resolve(),)), data)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or none), apply dotted overrides, validate, and return it."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    cfg = from_dict(RunConfig, data)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Checks that need no model: everything that can fail before a model loads."""
    if not cfg.model.name_or_path:
        raise LayraError("model.name_or_path is required (a model directory, hub id or .gguf file)")
    _validate_method(cfg.method)
    _validate_train(cfg.train)
    _validate_data(cfg.data)


def _validate_method(m: MethodConfig) -> None:
    spec = method_spec(m.name)
    if spec.lora:
        if m.r <= 0:
            raise LayraError(f"method.r must be a positive integer, got {m.r}")
        if m.alpha <= 0:
            raise LayraError(f"method.alpha must be positive, got {m.alpha}")
        if not 0 <= m.dropout < 1:
            raise LayraError(f"method.dropout must be in [0, 1), got {m.dropout}")
    for name in ("k", "m"):
        v = getattr(m, name)
        if v is None:
            continue
        if isinstance(v, str):
            if v != "auto":
                raise LayraError(
                    f"method.{name}: {v!r} is not allowed; use an integer, a fraction or auto"
                )
            if not m.lens_profile:
                raise LayraError(
                    f"method.{name}=auto needs method.lens_profile (from `layra lens`)"
                )
        elif isinstance(v, float) and not v.is_integer() and not 0 < v < 1:
            raise LayraError(f"method.{name}: a fraction of depth must be in (0, 1), got {v}")
        elif v < 0:
            raise LayraError(f"method.{name} must not be negative, got {v}")
    if not spec.selects_layers and (m.k is not None or m.m is not None):
        raise LayraError(
            f"method.k / method.m do not apply to method {m.name} (it trains every layer)"
        )
    _validate_embeddings(m)


def _validate_train(t: TrainConfig) -> None:
    if t.lr <= 0:
        raise LayraError(f"train.lr must be positive, got {t.lr}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise LayraError(f"train.betas must be two numbers in [0, 1), got {t.betas}")
    if not 0 <= t.warmup < 1:
        raise LayraError(f"train.warmup is a fraction of steps in [0, 1), got {t.warmup}")
    for name in ("batch_size", "grad_accum", "epochs"):
        if getattr(t, name) < 1:
            raise LayraError(f"train.{name} must be at least 1, got {getattr(t, name)}")
    if t.max_steps is not None and t.max_steps < 1:
        raise LayraError(f"train.max_steps must be at least 1, got {t.max_steps}")
    if t.fsdp_param_dtype == "bf16" and t.precision == "fp32":
        raise LayraError(
            "train.fsdp_param_dtype=bf16 computes in bf16; it needs train.precision bf16 or auto"
        )
    if t.loss_chunk < 0:
        raise LayraError(f"train.loss_chunk must be 0 (off) or positive, got {t.loss_chunk}")
    if not t.eps > 0:
        raise LayraError(f"train.eps must be positive (AdamW's denominator term), got {t.eps}")
    if t.weight_decay < 0:
        raise LayraError(f"train.weight_decay must not be negative, got {t.weight_decay}")
    if t.max_grad_norm is not None and t.max_grad_norm < 0:
        raise LayraError(
            f"train.max_grad_norm must be positive, or 0 / null for no clipping, got {t.max_grad_norm}"
        )
    if t.save_every < 0:
        raise LayraError(
            f"train.save_every must be 0 (save only at the end) or a number of steps, got {t.save_every}"
        )
    if t.keep_checkpoints < 1:
        raise LayraError(
            f"train.keep_checkpoints must be at least 1 (resuming needs one), got {t.keep_checkpoints}"
        )
    if t.log_every < 1:
        raise LayraError(f"train.log_every must be at least 1 (steps), got {t.log_every}")


def _validate_data(d: DataConfig) -> None:
    if not d.sources:
        raise LayraError("data.sources is empty: give at least one {path, lang}")
    for i, s in enumerate(d.sources):
        if not s.path:
            raise LayraError(f"data.sources[{i}].path is required")
        if not s.lang:
            raise LayraError(f"data.sources[{i}].lang is required (e.g. glg)")
        if d.mix == "weights" and (s.weight is None or s.weight <= 0):
            raise LayraError(f"data.sources[{i}].weight must be positive when data.mix=weights")
    if d.seq_len < 2:
        raise LayraError(f"data.seq_len must be at least 2, got {d.seq_len}")
    if not 0 <= d.heldout_fraction < 1:
        raise LayraError(f"data.heldout_fraction must be in [0, 1), got {d.heldout_fraction}")
    if d.heldout_max_docs < 0:
        raise LayraError(f"data.heldout_max_docs must not be negative, got {d.heldout_max_docs}")
    if d.max_tokens is not None and d.max_tokens < d.seq_len:
        raise LayraError(
            f"data.max_tokens ({d.max_tokens}) is below one sequence (data.seq_len={d.seq_len})"
        )


def embedding_treatment(m: MethodConfig) -> str:
    """How ``m`` trains the embeddings and LM head: full, frozen, lowlr or rows.

    Fixed by methods that decide it (full: every parameter trains; lora: frozen).
    """
    fixed = method_spec(m.name).fixed_embeddings
    if fixed is not None:
        return fixed
    return m.embeddings or ("full" if m.train_embeddings else "frozen")


def _validate_embeddings(m: MethodConfig) -> None:
    fixed = method_spec(m.name).fixed_embeddings
    if m.embeddings is not None and fixed is not None:
        chooses = [s.name for s in METHOD_SPECS.values() if s.fixed_embeddings is None]
        raise LayraError(
            f"method.embeddings applies to {' and '.join(chooses)}, not to method {m.name} "
            f"({'it trains every parameter' if fixed == 'full' else 'it trains no embeddings'})"
        )
    if not m.train_embeddings and m.embeddings not in (None, "frozen"):
        raise LayraError(
            f"method.train_embeddings=false contradicts method.embeddings={m.embeddings}; "
            "drop train_embeddings (the legacy switch) and set method.embeddings only"
        )
    if not m.embeddings_lr_scale > 0:
        raise LayraError(
            f"method.embeddings_lr_scale must be positive, got {m.embeddings_lr_scale}"
        )
    wd = m.embeddings_weight_decay
    if wd is not None:
        if not wd >= 0:
            raise LayraError(f"method.embeddings_weight_decay must be 0 or positive, got {wd}")
        treatment = embedding_treatment(m)
        if treatment == "frozen":
            raise LayraError(
                f"method.embeddings_weight_decay does not apply to method {m.name} with frozen "
                "embeddings (nothing of them trains); drop it"
            )
        if treatment == "rows" and wd != 0:
            raise LayraError(
                f"method.embeddings=rows trains its rows without weight decay (decay would move "
                f"every other row); method.embeddings_weight_decay={wd} contradicts it"
            )
    if embedding_treatment(m) != "rows":
        return
    rows = m.embedding_rows
    if not rows.reference:
        raise LayraError(
            "method.embeddings=rows needs method.embedding_rows.reference: text in the model's "
            "old languages, e.g. [{path: data/eng.txt, lang: eng}]"
        )
    for i, s in enumerate(rows.reference):
        if not s.path:
            raise LayraError(f"method.embedding_rows.reference[{i}].path is required")
        if not s.lang:
            raise LayraError(f"method.embedding_rows.reference[{i}].lang is required (e.g. eng)")
    if not rows.ratio > 1:
        raise LayraError(f"method.embedding_rows.ratio must be greater than 1, got {rows.ratio}")
    if rows.min_count < 1:
        raise LayraError(
            f"method.embedding_rows.min_count must be at least 1, got {rows.min_count}"
        )
    if rows.max_reference_tokens is not None and rows.max_reference_tokens < 1:
        raise LayraError(
            "method.embedding_rows.max_reference_tokens must be positive or null, "
            f"got {rows.max_reference_tokens}"
        )
