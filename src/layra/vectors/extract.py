"""Make a language vector: from a layra run directory, or as the difference of two checkpoints.

    layra vector extract runs/gl-layra --out vectors/gl
    layra vector diff base-model trained-model --out vectors/gl

From a run (docs/formats.md): a LoRA / LayRA run's PEFT adapter gives each
adapted linear layer exactly as ``(α/r)·B·A`` (``α/√r`` with rsLoRA; per-module
``alpha_pattern`` / ``rank_pattern`` honoured), kept factored; its
``modules_to_save`` (embedding, LM head) hold trained values, so their delta is
``trained − base``. A full / layer-selective run's ``trained.safetensors`` holds
the trained tensors; each delta is ``trained − base``. Deltas that are exactly
zero are left out; an embedding / head delta with at most half its rows changed
is stored as those rows (``rows`` entries, exact). ``dtype="bf16"``
stores dense and row deltas in bf16 (half the bytes; relative error per element
at most 2⁻⁸, docs/vectors.md); the default float32 is exact. The base model is
checked against the run's recorded fingerprint, so a vector is never made
against the wrong weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from layra.atomic import atomic_dir
from layra.errors import LayraError
from layra.lock import holds_output_lock
from layra.provenance import provenance
from layra.vectors.arithmetic import FP32
from layra.vectors.format import Entry, VectorWriter, planned_keys, write_delta
from layra.vectors.shards import TensorInfo, read_header, read_rows
from layra.vectors.source import Source, open_model

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])(?:\.weight)?$")
DELTA_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _manifest(src: Source, fp: dict, method: str, languages, source: dict) -> dict[str, Any]:
    arch = src.arch
    return {
        "start": {
            "arch": fp["arch"],
            "weights": fp["weights"],
            "model": src.ref,
            "model_type": arch.model_type,
        },
        "method": method,
        "languages": list(languages or []),
        "source": source,
        "tied": arch.tied,
        "embed": f"{arch.embed_name}.weight",
        "head": f"{arch.head_name}.weight",
        "vocab_size": src.shapes[f"{arch.embed_name}.weight"][0],
        "provenance": provenance(),
    }


def _aliases(src: Source, name: str) -> tuple[str, ...]:
    """A tied embedding's delta is the head's too: recorded once, with the head as alias."""
    arch = src.arch
    return (
        (f"{arch.head_name}.weight",) if arch.tied and name == f"{arch.embed_name}.weight" else ()
    )


def _dense_diff(
    w: VectorWriter, name: str, shape, new_rows, old_rows, aliases=(), dtype=FP32
) -> None:
    """Stream ``new − old`` into the vector (dense, or its changed rows); nothing if all zero."""

    def block(a: int, b: int) -> torch.Tensor:
        return new_rows(a, b).to(FP32) - old_rows(a, b).to(FP32)

    write_delta(w, name, tuple(shape), block, aliases, dtype)


def delta_dtype(name: str | torch.dtype | None) -> torch.dtype:
    """``"fp32"`` / ``"bf16"`` (or the dtype itself) → the dtype deltas are stored in."""
    if isinstance(name, torch.dtype) and name in DELTA_DTYPES.values():
        return name
    if name is None or name in DELTA_DTYPES:
        return DELTA_DTYPES[name or "fp32"]
    raise LayraError(f"delta dtype {name!r} is not one of {', '.join(DELTA_DTYPES)}")


def _reader(info: TensorInfo):
    return lambda a, b: read_rows(info, a, b) if info.shape else read_rows(info)


def _base_reader(src: Source, name: str):
    return lambda a, b: src.read(name, a, b)


# --- from a run ------------------------------------------------------------------------


@holds_output_lock("out")
def extract_run(
    run: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    overwrite: bool = False,
    dtype: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Write the language vector of a finished layra run to ``out``; return its manifest.

    ``base`` overrides the run's ``base_model`` (e.g. after moving it); it must
    still have the fingerprint the run recorded. ``dtype`` (``"fp32"``, default, or
    ``"bf16"``) is how dense and row deltas are stored. Raises :class:`LayraError` for
    an unfinished run, a base model with other weights, an adapter layra cannot
    express exactly (DoRA, LoRA biases, ...), or a NaN/inf delta.
    """
    from layra.rundir import RunDir

    run, out = Path(run), Path(out)
    dt = delta_dtype(dtype)
    rec = RunDir(run).read_record()
    if out.exists() and not overwrite:
        raise LayraError(f"output {out} already exists (pass --overwrite to replace it)")
    kind, artifact = RunDir(run).artifact()
    ref = base or rec.base_model
    src = open_model(ref, None if base else rec.gguf_file)
    fp = src.fingerprint()
    want = rec.base_fingerprint or {}
    if want.get("weights") and want["weights"] != fp["weights"]:
        raise LayraError(
            f"base model {ref} is not the one run {run} started from (weights fingerprint "
            f"{fp['weights']}, run recorded {want['weights']}); pass --base with the right model"
        )
    source = {
        "kind": "run",
        "path": str(run),
        "run": {
            "method": rec.method,
            "steps": rec.steps,
            "tokens": rec.tokens,
            "final_loss": rec.final_loss,
            # What trained, from the run's plan (older manifests had always-null copies).
            "lora_layers": rec.plan.get("lora_layers"),
            "full_layers": rec.plan.get("full_layers"),
            "embeddings": rec.plan.get("embeddings"),
            "languages": rec.languages,
        },
    }
    manifest = _manifest(src, fp, rec.method or "unknown", rec.languages, source)
    manifest["delta_dtype"] = str(dt).removeprefix("torch.")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if kind == "adapter":
            return _from_adapter(artifact, src, tmp, manifest, dt)
        return _from_trained(artifact, src, tmp, manifest, dt)


def _lora_scale(cfg: dict[str, Any], module: str) -> tuple[int, float]:
    """(rank, scale) PEFT uses for ``module`` (full name, e.g. model.layers.0.mlp.up_proj)."""
    from peft.utils.other import get_pattern_key

    r = cfg.get("rank_pattern", {}).get(
        get_pattern_key(cfg.get("rank_pattern", {}), module), cfg["r"]
    )
    alpha_pat = cfg.get("alpha_pattern", {})
    alpha = alpha_pat.get(get_pattern_key(alpha_pat, module), cfg["lora_alpha"])
    return r, (alpha / r**0.5 if cfg.get("use_rslora") else alpha / r)


def _check_adapter_config(cfg: dict[str, Any], where: Path) -> None:
    if cfg.get("peft_type") != "LORA":
        raise LayraError(f"{where}: adapter type {cfg.get('peft_type')!r} is not LoRA")
    unsupported = {
        "use_dora": "DoRA (its delta is not low-rank)",
        "lora_bias": "LoRA biases",
        "layer_replication": "layer replication",
        "trainable_token_indices": "trainable token indices",
        "target_parameters": "target_parameters",
    }
    for key, what in unsupported.items():
        if cfg.get(key):
            raise LayraError(f"{where}: adapters with {what} are not supported")


def _adapter_tensors(adapter: Path, weights: Path):
    """The adapter file's tensors: LoRA factors by module ({"A", "B"} -> tensor), the modules
    whose LoRA is an embedding's, and fully trained tensors by HF parameter name."""
    stored, _ = read_header(weights)
    lora: dict[str, dict[str, TensorInfo]] = {}
    embedding_lora: set[str] = set()
    full: dict[str, TensorInfo] = {}
    for key, t in stored.items():
        name = key.removeprefix(_PEFT_PREFIX)
        m = _LORA_KEY.match(name)
        if m:
            lora.setdefault(m["mod"], {})[m["ab"]] = t
            if m["emb"]:
                embedding_lora.add(m["mod"])
        elif "lora_" in name:
            raise LayraError(f"{adapter}: tensor {key} is not a LoRA factor layra understands")
        else:
            full[name] = t  # modules_to_save: trained values under the HF parameter name
    return lora, embedding_lora, full


def _from_adapter(
    adapter: Path, src: Source, out: Path, manifest: dict, dtype: torch.dtype = FP32
) -> dict[str, Any]:
    cfg_path, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise LayraError(f"{adapter} has no adapter_model.safetensors (layra never unpickles .bin)")
    cfg = json.loads(cfg_path.read_text())
    _check_adapter_config(cfg, adapter)
    lora, embedding_lora, full = _adapter_tensors(adapter, weights)
    embed, head = f"{src.arch.embed_name}.weight", f"{src.arch.head_name}.weight"
    if src.arch.tied and head in full:
        # ensure_weight_tying saves the shared tensor under both names; keep one.
        if embed in full and not torch.equal(read_rows(full[embed]), read_rows(full[head])):
            raise LayraError(
                f"{adapter}: the model ties embedding and LM head but the adapter trained them "
                "apart (modules_to_save without ensure_weight_tying=True)"
            )
        full.setdefault(embed, full[head])
        del full[head]
    entries, factors = [], {}
    for mod, ab in sorted(lora.items()):
        if set(ab) != {"A", "B"}:
            raise LayraError(f"{adapter}: {mod} has lora_{'A' if 'A' not in ab else 'B'} missing")
        name = f"{mod}.weight"
        if name not in src.shapes:
            raise LayraError(f"{adapter}: adapted module {mod} is not in the base model")
        r, scale = _lora_scale(cfg, mod)
        A, B = read_rows(ab["A"]), read_rows(ab["B"])
        if mod in embedding_lora or cfg.get("fan_in_fan_out"):
            # Δ = s·(B@A)ᵀ = s·Aᵀ@Bᵀ: swap and transpose the factors.
            A, B = B.t().contiguous(), A.t().contiguous()
        if A.shape[0] != r or (B.shape[0], A.shape[1]) != src.shapes[name]:
            raise LayraError(f"{adapter}: LoRA factors of {mod} do not fit the base model")
        if name in full:
            raise LayraError(f"{adapter}: {mod} is both LoRA-adapted and fully trained")
        factors[name] = (A, B, scale)
        entries.append(Entry(name, "lowrank", src.shapes[name], r, scale))
    for name, t in full.items():
        _check_fits(adapter, name, t.shape, src)
        entries.append(Entry(name, "dense", t.shape))
    with VectorWriter(out, [k for e in entries for k in planned_keys(e, dtype)]) as w:
        for name, (A, B, scale) in factors.items():
            w.lowrank(name, A, B, scale)
        for name, t in full.items():
            _dense_diff(
                w, name, t.shape, _reader(t), _base_reader(src, name), _aliases(src, name), dtype
            )
        return w.finish(manifest)


def _check_fits(origin: Path, name: str, shape, src: Source) -> None:
    """A trained tensor must exist in the base model with the same shape."""
    if name not in src.shapes:
        raise LayraError(f"{origin}: trained tensor {name} is not in the base model")
    if tuple(shape) != tuple(src.shapes[name]):
        raise LayraError(
            f"{origin}: {name} has shape {list(shape)}, the base model "
            f"{list(src.shapes[name])} (vocabulary resized?)"
        )


def _from_trained(
    trained: Path, src: Source, out: Path, manifest: dict, dtype: torch.dtype = FP32
) -> dict[str, Any]:
    stored, _ = read_header(trained)
    for name, t in stored.items():
        _check_fits(trained, name, t.shape, src)
    planned = [
        k for n, t in stored.items() for k in planned_keys(Entry(n, "dense", t.shape), dtype)
    ]
    with VectorWriter(out, planned) as w:
        for name, t in stored.items():
            _dense_diff(
                w, name, t.shape, _reader(t), _base_reader(src, name), _aliases(src, name), dtype
            )
        return w.finish(manifest)


# --- from two checkpoints --------------------------------------------------------------


@holds_output_lock("out")
def diff_models(
    start: str | Path,
    trained: str | Path,
    out: str | Path,
    *,
    languages: list[str] | None = None,
    method: str = "diff",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``trained − start`` (tensors that changed only) as a vector; return its manifest.

    Both models must have the same architecture, tokenizer and tensor names.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise LayraError(f"output {out} already exists (pass --overwrite to replace it)")
    a, b = open_model(str(start)), open_model(str(trained))
    missing = sorted(set(a.shapes) ^ set(b.shapes))
    if missing:
        raise LayraError(f"{start} and {trained} differ in tensors (e.g. {missing[0]})")
    for name, shape in a.shapes.items():
        if b.shapes[name] != shape:
            raise LayraError(
                f"shape mismatch for {name}: {start} has {list(shape)}, {trained} "
                f"{list(b.shapes[name])} (vocabulary resized?)"
            )
    fa, fb = a.fingerprint(), b.fingerprint()
    if fa["arch"] != fb["arch"]:
        raise LayraError(f"{start} and {trained} differ in architecture or tokenizer")
    source = {
        "kind": "diff",
        "start": str(start),
        "trained": str(trained),
        "trained_fingerprint": fb,
    }
    manifest = _manifest(a, fa, method, languages, source)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        planned = [k for n, s in a.shapes.items() for k in planned_keys(Entry(n, "dense", s))]
        with VectorWriter(tmp, planned) as w:
            for name, shape in a.shapes.items():
                if not a.dtypes[name].is_floating_point:
                    continue
                _dense_diff(
                    w, name, shape, _base_reader(b, name), _base_reader(a, name), _aliases(a, name)
                )
            return w.finish(manifest)
