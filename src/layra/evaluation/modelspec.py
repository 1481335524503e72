"""What the MODEL argument of ``layra eval`` means, and loading it.

    models/gl                        a Hugging Face model directory
    gemma-3-270m-Q4_K_M.gguf         a GGUF file (dequantised on load)
    base+vectors/gl:0.5+vectors/sw   base with λ·Δ of each vector added in memory (λ default 1)
    runs/gl-layra                    a finished layra run: base + adapter/ (lora, layra),
                                     base + trained.safetensors (full, layer-selective),
                                     or its merged model/ when there is one

A path that exists as a whole is never split at ``+`` or ``:``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layra.errors import LayraError, require
from layra.rundir import RunDir, RunRecord


@dataclass(frozen=True)
class VectorRef:
    path: str
    lam: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A parsed MODEL argument: the model and the vectors to add to it."""

    model: str
    vectors: tuple[VectorRef, ...] = ()

    def default_name(self) -> str:
        """A short display name: the model's (or run's) directory name plus the vectors."""
        name = _short(self.model)
        for v in self.vectors:
            name += f"+{_short(v.path)}" + ("" if v.lam == 1.0 else f":{v.lam:g}")
        return name


@dataclass
class LoadedModel:
    """A model ready to evaluate, with what identifies it in result records."""

    model: Any
    tok: Any
    spec: ModelSpec
    info: dict[str, Any] = field(default_factory=dict)  # source, run, vectors: goes into records
    vector_handle: Any = None  # keeps in-memory vector application removable


def _short(path: str) -> str:
    p = Path(path.rstrip("/"))
    return p.stem if p.suffix == ".gguf" else p.name or str(p)


def _parse_lambda(text: str, part: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LayraError(f"bad λ in {part!r}: {text!r} is not a number (use VEC:0.5)") from None


def parse_model_spec(text: str) -> ModelSpec:
    """Split ``MODEL[+VEC[:λ]]...`` into a :class:`ModelSpec` (no loading, no I/O but stat).

    Raises :class:`LayraError` for an empty part or a λ that is not a number.
    """
    require(bool(text.strip()), "empty MODEL argument")
    if Path(text).expanduser().exists() or "+" not in text:
        return ModelSpec(model=text)
    first, *rest = text.split("+")
    require(bool(first), f"MODEL {text!r} starts with '+'; put the model before the vectors")
    vectors = []
    for part in rest:
        require(bool(part), f"empty vector in {text!r} (two '+' in a row?)")
        path, lam = part, 1.0
        if not Path(part).expanduser().exists() and ":" in part:
            path, lam_text = part.rsplit(":", 1)
            lam = _parse_lambda(lam_text, part)
        vectors.append(VectorRef(path=path, lam=lam))
    return ModelSpec(model=first, vectors=tuple(vectors))


def is_run_dir(path: str | Path) -> bool:
    """A layra run directory: has ``config.yaml`` or ``run.json`` but no ``config.json``."""
    return RunDir(path).looks_like_run()


def _resolve_base(base: str, run: Path) -> str:
    """The run's base model: as recorded, or relative to the run directory if moved with it."""
    if Path(base).expanduser().exists():
        return base
    beside = run / base
    return str(beside) if beside.exists() else base


def _check_base(model, tok, meta: RunRecord, run: Path) -> None:
    """Refuse a base that is not the one the run trained from; warn if only weights differ."""
    from layra.fingerprint import model_fingerprint

    want = meta.base_fingerprint or {}
    if not want:
        return
    got = model_fingerprint(model, tok)
    require(
        got["arch"] == want.get("arch"),
        f"base model {meta.base_model} does not match run {run} (architecture or tokenizer "
        f"fingerprint {got['arch']} != {want.get('arch')})",
    )
    if want.get("weights") and got["weights"] != want["weights"]:
        # A bf16 load of fp32 weights changes the weight hash but not the model; say so only.
        print(
            f"layra: warning: base weights fingerprint {got['weights']} differs from the "
            f"run's {want['weights']} (another dtype or another copy of the base?)",
            file=sys.stderr,
        )


def _load_trained_tensors(model, path: Path) -> None:
    """Copy a run's ``trained.safetensors`` over the base model's parameters, checking names."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    own = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(set(tensors) - set(own))
    require(not unknown, f"{path}: tensors not in the base model: {', '.join(unknown[:5])}")
    with torch.no_grad():
        for name, t in tensors.items():
            p = own[name]
            require(
                tuple(p.shape) == tuple(t.shape),
                f"{path}: {name} has shape {tuple(t.shape)}, base has {tuple(p.shape)}",
            )
            p.copy_(t.to(p.dtype))


def weights_dtype(model_dir: str | Path, dtype: str, gguf_file: str | None = None) -> str:
    """The dtype to hold a model's weights in when evaluation computes in ``dtype``.

    bf16 compute autocasts the matmuls, so weights are kept as stored: bf16 only when
    the checkpoint is bf16 (same values), else fp32. Rounding fp32 weights to bf16
    would change the model and its fingerprint, and vectors and runs are checked
    against the fingerprint of the weights they were trained from.
    """
    if str(dtype).replace("torch.", "") in ("fp32", "float32") or gguf_file:
        return "float32"
    cfg = Path(model_dir).expanduser() / "config.json"
    try:
        mc = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return "float32"  # a hub id or an unreadable config: the safe choice
    mc = mc.get("text_config", mc) if isinstance(mc.get("text_config"), dict) else mc
    stored = mc.get("dtype") or mc.get("torch_dtype")
    return "bfloat16" if stored == "bfloat16" else "float32"


def load_run(run: str | Path, dtype: str = "float32") -> tuple[Any, Any, dict[str, Any]]:
    """Load a finished run as the model it trained: ``(model, tokenizer, run info)``.

    ``dtype`` is the compute dtype; weights are held as :func:`weights_dtype` says.
    """
    from layra.models import load_model

    rd = RunDir(run)
    run = rd.path
    meta = rd.read_record()
    info = {
        "run": str(run),
        "method": meta.method,
        "languages": meta.languages,
        "base_model": meta.base_model,
        "gguf_file": meta.gguf_file,
        "seed": rd.seed(),
    }
    if (rd.model / "config.json").is_file():
        model, tok = load_model(str(rd.model), dtype=weights_dtype(rd.model, dtype))
        info["loaded"] = "model/"
        return model, tok, info
    if not rd.outputs():
        raise LayraError(f"run {run} has neither model/, adapter/ nor trained.safetensors")
    base_ref = _resolve_base(meta.base_model, run)
    wdt = weights_dtype(base_ref, dtype, meta.gguf_file)
    base, tok = load_model(base_ref, meta.gguf_file, wdt)
    _check_base(base, tok, meta, run)
    kind, artifact = rd.artifact()
    if kind == "adapter":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(base, str(artifact))
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise LayraError(f"cannot load adapter {artifact}: {e}") from e
        info["loaded"] = "adapter/"
        return model, tok, info
    _load_trained_tensors(base, artifact)
    info["loaded"] = artifact.name  # trained.safetensors
    return base, tok, info


def load_spec(spec: ModelSpec | str, dtype: str = "float32") -> LoadedModel:
    """Load what a MODEL argument names, vectors applied in memory, in eval mode.

    ``dtype`` is the compute dtype; weights are held as :func:`weights_dtype` says.
    Raises :class:`LayraError` for anything that does not exist or does not load.
    """
    from layra.models import load_model

    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    if is_run_dir(spec.model):
        model, tok, info = load_run(spec.model, dtype)
        info = {"source": "run", **info}
    else:
        model, tok = load_model(spec.model, dtype=weights_dtype(spec.model, dtype))
        info = {"source": "model", "path": spec.model}
    handle = None
    if spec.vectors:
        from layra.vectors.apply import apply_to_model

        for v in spec.vectors:
            require(Path(v.path).expanduser().exists(), f"vector {v.path} does not exist")
        # Same defaults as `layra vector apply` (no rows protected: Eq. 1-3), so
        # MODEL+VEC:λ scores exactly what the applied directory would.
        handle = apply_to_model(model, [(v.path, v.lam) for v in spec.vectors], tokenizer=tok)
        info["vectors"] = [{"path": v.path, "lambda": v.lam} for v in spec.vectors]
    model.eval()
    return LoadedModel(model=model, tok=tok, spec=spec, info=info, vector_handle=handle)


def evaluated_fingerprint(model, tok) -> dict[str, str]:
    """Fingerprint of the weights actually evaluated (adapters and applied vectors included).

    Unlike :func:`layra.fingerprint.model_fingerprint` this keeps adapter tensors,
    so a base model and base+adapter never share it.
    """
    from layra.arch import unique_named_parameters, unwrap
    from layra.fingerprint import fingerprint

    hf = unwrap(model)
    return fingerprint(unique_named_parameters(hf), hf.config, tok)
