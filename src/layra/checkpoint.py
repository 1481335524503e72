"""Resumable training state without pickle: safetensors for tensors, JSON for the rest.

    CKPT/trainable.safetensors   trainable parameters (names as in model.named_parameters)
    CKPT/optimizer.safetensors   AdamW moments per parameter index, plus RNG states
    CKPT/state.json              step, tokens seen, scheduler and optimizer hyper-parameters

A checkpoint directory is written atomically, so one that exists was complete when
written; the disk can still damage it later (a copy cut short, a full disk under a
rsync). :func:`checkpoint_problem` checks one cheaply before it is loaded (every file
present, each safetensors header whole and its size exactly what the header promises,
state.json readable), and ``layra train --resume`` falls back to the newest intact one.
"""

from __future__ import annotations

import json
import math
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


def checkpoints(ckpt_root: Path) -> list[Path]:
    """The ``step-N`` directories under ``ckpt_root``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in ckpt_root.glob("step-*")
        if p.name.split("-")[1].isdigit()
    )
    return [p for _, p in steps]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = checkpoints(ckpt_root)
    return found[-1] if found else None


# Bytes per element of each safetensors dtype.
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}  # fmt: skip
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file, read from its header and size alone, or None.

    Catches a truncated or extended file, a damaged header and tensors whose byte
    ranges do not match their dtype and shape; not flipped bytes inside tensor data.
    """
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > min(size - 8, _MAX_HEADER):
                return f"{name} is truncated or not safetensors ({size:,} bytes)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as e:
        return f"{name} cannot be read ({e.strerror or e})"
    except (ValueError, UnicodeDecodeError):
        return f"{name} has a damaged header"
    if not isinstance(header, dict):
        return f"{name} has a damaged header"
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = info["data_offsets"]
            count = math.prod(int(d) for d in info["shape"])
            ok = 0 <= lo <= hi and hi - lo == count * _ITEMSIZE[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            return f"{name} has a damaged header (tensor {key})"
        end = max(end, hi)
    expected = 8 + n + end
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        return f"{name} is {what} ({size:,} of {expected:,} bytes)"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint ``path`` cannot be resumed from (sizes and headers; no tensor is
    read), or None if it looks intact. Covers single-process and sharded checkpoints."""
    try:
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "state.json is missing"
    except (OSError, ValueError, UnicodeDecodeError):
        return "state.json is damaged"
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), int) for k in ("step", "tokens")
    ):
        return "state.json is damaged (no step or tokens)"
    if "world" in meta:  # layra.distributed.save_sharded: one shard per process
        world = meta["world"] if isinstance(meta["world"], int) else 0
        files = [f"shard-{r}.safetensors" for r in range(max(world, 1))]
    else:
        files = ["trainable.safetensors", "optimizer.safetensors"]
    for f in files:
        problem = safetensors_problem(path / f)
        if problem:
            return problem
    return None


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    steps = sorted(
        (int(p.name.split("-")[1]), p)
        for p in ckpt_root.glob("step-*")
        if p.name.split("-")[1].isdigit()
    )
    for _, p in steps[: max(len(steps) - keep, 0)]:
        shutil.rmtree(p, ignore_errors=True)
