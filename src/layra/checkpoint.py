"""Resumable training state without pickle: safetensors for tensors, JSON for the rest.

    CKPT/trainable.safetensors   trainable parameters (names as in model.named_parameters)
    CKPT/optimizer.safetensors   AdamW moments per parameter index, plus RNG states
    CKPT/state.json              step, tokens seen, scheduler and optimizer hyper-parameters

A checkpoint directory is written atomically, so one that exists is complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from layra.atomic import atomic_dir


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable tensors by name, each shared tensor once (safetensors refuses aliases)."""
    return {
        n: p.detach().to("cpu").contiguous()
        for n, p in model.named_parameters(remove_duplicate=True)
        if p.requires_grad
    }


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_checkpoint(path: Path, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Write the full resumable state to ``path`` (atomic)."""
    opt_tensors: dict[str, torch.Tensor] = {}
    sd = optimizer.state_dict()
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            opt_tensors[f"opt.{idx}.{key}"] = t.detach().to("cpu").contiguous()
    opt_tensors.update(_rng_tensors())
    meta = dict(state)
    meta["param_groups"] = sd["param_groups"]
    meta["scheduler"] = scheduler.state_dict()
    meta["python_random"] = repr(random.getstate())
    np_state = np.random.get_state()
    meta["numpy_random"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
    with atomic_dir(path, overwrite=True) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=_json_default))


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG state; return the saved ``state``."""
    params = load_file(str(path / "trainable.safetensors"))
    named = dict(model.named_parameters(remove_duplicate=True))
    missing = [n for n in params if n not in named]
    if missing:
        from layra.errors import LayraError

        raise LayraError(f"checkpoint {path} does not fit this model/method (e.g. {missing[0]})")
    with torch.no_grad():
        for n, t in params.items():
            named[n].copy_(t.to(named[n].device, named[n].dtype))
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "optimizer.safetensors"))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    import ast

    random.setstate(ast.literal_eval(meta["python_random"]))
    ns = meta["numpy_random"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    return meta


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    if not ckpt_root.is_dir():
        return None
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in ckpt_root.glob("step-*")
        if p.name.split("-")[1].isdigit()
    )
    return steps[-1][1] if steps else None


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in ckpt_root.glob("step-*")
        if p.name.split("-")[1].isdigit()
    )
    for _, p in steps[: max(len(steps) - keep, 0)]:
        shutil.rmtree(p, ignore_errors=True)
