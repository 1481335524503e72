"""Sharded training (FSDP2) for ``layra train``: the same code on CPU processes and on GPUs.

    ACCELERATE_USE_CPU=1 ACCELERATE_USE_FSDP=true torchrun --standalone --nproc_per_node 2 -m layra train ...
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m layra train ...

layra shards the model itself with ``torch.distributed.fsdp.fully_shard`` (FSDP2): one unit
per decoder layer, and the root unit (the loss module) holding the embeddings, final norm and
LM head — a tied embedding / head is one tensor in one unit, so the tie survives. Why not
accelerate's FSDP plugin: accelerate 1.15 turns ``ACCELERATE_USE_FSDP`` into FSDP only for GPU-like
devices (on CPU the state stays ``MULTI_CPU`` and it would wrap the model in DDP), so its
wrapping cannot be tested here. Wrapping before ``accelerator.prepare`` makes accelerate's
FSDP2 path on GPUs accept the model as already sharded, and the code that runs there is the
code the CPU tests run.

FSDP2 shards each parameter on its own (a DTensor per parameter, no flat parameter), so
frozen bf16 weights and trainable fp32 weights share a unit. By default
(``train.fsdp_param_dtype: stored``) no mixed-precision policy is set: parameters are
all-gathered in the dtype they are stored in, and bf16 autocast casts for the matmuls exactly
as in a single-process run. ``train.fsdp_param_dtype: bf16`` sets FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: each unit is gathered and
computes in bf16 (half the gathered bytes, and no autocast copies of fp32 weights, which for
``full`` are every weight), gradients are reduced in fp32 into the fp32 shards the optimizer
updates. ``train.fsdp_offload: true`` adds ``CPUOffloadPolicy``: shards, gradients and AdamW
state in host memory, the optimizer step on the CPU.

Checkpoints are sharded: each rank writes ``shard-RANK.safetensors`` (its pieces of the
trainable parameters and their AdamW moments, and its RNG state); ``state.json`` is as in a
single-process checkpoint plus ``world``. Resuming needs the same number of processes.
Final outputs (adapter, trained.safetensors) are written from gathered full tensors, in the
same format as a single-process run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layra.errors import LayraError


def fsdp_requested() -> bool:
    """True when the launcher asked for FSDP (``accelerate launch`` with an FSDP config sets it)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")


def check_sharding(cfg) -> None:
    """Refuse, before anything is written, what layra cannot do under FSDP or DeepSpeed."""
    from layra.embeddings import embedding_treatment

    engine = "FSDP" if fsdp_requested() else "DeepSpeed" if deepspeed_requested() else None
    if engine is None:
        return
    if embedding_treatment(cfg.method) == "rows":
        raise LayraError(
            f"method.embeddings=rows needs whole tensors (one process or DDP); {engine} shards "
            "them, which bypasses the row mask"
        )
    if engine == "DeepSpeed":
        # accelerate 1.15 ignores ACCELERATE_USE_DEEPSPEED on CPU; on GPUs it would need
        # DeepSpeed's engine in the training loop, which layra does not drive (docs/scaling.md).
        raise LayraError(
            "DeepSpeed ZeRO is not supported by layra train yet (see docs/scaling.md); "
            "use configs/accelerate/fsdp.yaml, which shards as ZeRO-3 does"
        )
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise LayraError("layra shards with FSDP2: set fsdp_version: 2 in the accelerate config")
    if cfg.merge:
        raise LayraError(
            "--merge is not supported under FSDP; write the merged model afterwards with "
            "`layra vector extract` and `layra vector apply`"
        )


def request_cpu_backend(cfg) -> None:
    """Under FSDP with ``train.fsdp_offload``, have the process group carry gloo beside NCCL.

    Offloaded gradients and AdamW state are CPU tensors, and the gradient norm reduces them
    across ranks: NCCL cannot. accelerate creates ``cuda:nccl,cpu:gloo`` when
    ``FSDP_OFFLOAD_PARAMS`` is true; call this before the process group exists (the first
    :func:`sync_ranks`). On CPU processes the group is gloo anyway.
    """
    if fsdp_requested() and cfg.train.fsdp_offload:
        os.environ["FSDP_OFFLOAD_PARAMS"] = "true"


def sync_ranks() -> None:
    """A barrier across the launched processes, usable before the Accelerator exists
    (accelerate then reuses the process group); nothing for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist
        from accelerate import PartialState

        if not dist.is_initialized():
            # The process group as the Accelerator created next sets it up (it reuses it);
            # cpu must be given here as there: a PartialState made without it stays NO.
            cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
            PartialState(cpu=cpu or not torch.cuda.is_available())
        dist.barrier()


def fsdp_policies(param_dtype: str = "stored", offload: bool = False) -> dict[str, Any]:
    """``fully_shard`` keyword arguments for ``train.fsdp_param_dtype`` / ``train.fsdp_offload``.

    ``stored`` with no offload is FSDP2's default (no policy objects): what layra always did.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kw: dict[str, Any] = {}
    if param_dtype == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    elif param_dtype != "stored":
        raise ValueError(f"fsdp param dtype {param_dtype!r}: stored or bf16")
    if offload:
        # Pinned host memory only where there is a device to copy to.
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    return kw


def shard(
    loss_model: nn.Module,
    device: torch.device,
    param_dtype: str = "stored",
    offload: bool = False,
) -> nn.Module:
    """Apply FSDP2 in place: one unit per decoder layer, the rest in the root unit, each with
    the policies of :func:`fsdp_policies`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from layra.arch import describe, unwrap
    from layra.embeddings import OPTIM_ATTR

    hf = unwrap(loss_model.model)
    # fully_shard replaces every parameter; carry the per-tensor optimizer settings over.
    own = {
        n: getattr(p, OPTIM_ATTR)
        for n, p in loss_model.named_parameters()
        if hasattr(p, OPTIM_ATTR)
    }
    if offload and "gloo" not in str(dist.get_backend()):
        raise LayraError(
            f"train.fsdp_offload needs a CPU backend (gloo) in the process group, which is "
            f"{dist.get_backend()}; launch `layra train` itself (it asks accelerate for one)"
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw = fsdp_policies(param_dtype, offload)
    for layer in hf.get_submodule(describe(hf).layers_prefix):
        fully_shard(layer, mesh=mesh, **kw)
    fully_shard(loss_model, mesh=mesh, **kw)
    for n, p in loss_model.named_parameters():
        if n in own:
            setattr(p, OPTIM_ATTR, own[n])
    return loss_model


def prepare(acc, loss_model: nn.Module, optimizer, sharded: bool):
    """``accelerator.prepare`` for the model and optimizer, sharded or not.

    On GPUs accelerate's FSDP2 path finds the model already sharded and leaves it; on CPU
    accelerate's state is ``MULTI_CPU`` and would wrap the sharded model in DDP, so only the
    optimizer goes through it there.
    """
    from accelerate.utils import DistributedType

    if sharded and acc.distributed_type != DistributedType.FSDP:
        return loss_model, acc.prepare(optimizer)
    return acc.prepare(loss_model, optimizer)


def full_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor gathered in full, on CPU, by name (a collective: every rank calls).

    A shared (tied) tensor appears under each of its names, as in ``model.state_dict()``:
    PEFT's ``save_pretrained(state_dict=...)`` looks each module's copy up by its own name.
    """
    from torch.distributed.tensor import DTensor

    gathered: dict[int, torch.Tensor] = {}
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            if id(p) not in gathered:
                full = p.full_tensor() if isinstance(p, DTensor) else p
                gathered[id(p)] = full.detach().to("cpu").contiguous()
            out[n] = gathered[id(p)]
    return out


def hf_names(model: nn.Module, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``full`` (named as in ``model``) renamed as in the Hugging Face model under it."""
    from layra.arch import unwrap

    by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return {
        n: full[by_id[id(p)]]
        for n, p in unwrap(model).named_parameters(remove_duplicate=True)
        if by_id.get(id(p)) in full
    }


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a sharded tensor (the tensor itself when not sharded)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def unshard(model: nn.Module) -> None:
    """Gather every FSDP unit's full parameters and keep them (a collective: call on every rank).

    Afterwards ``model.named_parameters()`` yields plain full tensors, so the single-process
    output writers (PEFT's ``save_pretrained``, ``trainable_state``) work unchanged.
    """
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.unshard()


def save_sharded(
    path: Path, model: nn.Module, optimizer, scheduler, state: dict[str, Any], acc
) -> None:
    """A sharded checkpoint, atomic across ranks: written into one temporary directory that
    rank 0 renames once every rank has finished its shard."""
    import random

    import numpy as np
    from safetensors.torch import save_file

    rank = acc.process_index
    tmp = path.parent / f".{path.name}.tmp-sharded"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    tensors: dict[str, torch.Tensor] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            tensors[f"param.{n}"] = local(p).detach().to("cpu").contiguous()
    sd = optimizer.state_dict()
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = local(val) if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"opt.{idx}.{key}"] = t.detach().to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / f"shard-{rank}.safetensors"))
    acc.wait_for_everyone()
    if acc.is_main_process:
        np_state = np.random.get_state()
        meta = dict(state)
        meta.update(
            world=acc.num_processes,
            param_groups=sd["param_groups"],
            scheduler=scheduler.state_dict(),
            python_random=repr(random.getstate()),
            numpy_random=[np_state[0], np_state[1].tolist(), *np_state[2:]],
        )
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    acc.wait_for_everyone()


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / "shard-0.safetensors").exists()


def load_sharded(path: Path, model: nn.Module, optimizer, scheduler, acc) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_sharded` (same number of processes)."""
    import ast
    import random

    import numpy as np
    from safetensors.torch import load_file
    from torch.distributed.tensor import DTensor

    meta = json.loads((path / "state.json").read_text())
    if meta.get("world") != acc.num_processes:
        raise LayraError(
            f"checkpoint {path} was written by {meta.get('world')} processes; resume it with "
            f"the same number (this run has {acc.num_processes})"
        )
    tensors = load_file(str(path / f"shard-{acc.process_index}.safetensors"))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in named if f"param.{n}" not in tensors]
    if missing:
        raise LayraError(f"checkpoint {path} does not fit this model/method (e.g. {missing[0]})")
    with torch.no_grad():
        for n, p in named.items():
            local(p).copy_(tensors[f"param.{n}"])
    # Optimizer state: moments shaped like their parameter become DTensors placed as it is.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            p = params[int(idx)]
            if isinstance(p, DTensor) and t.shape == p.to_local().shape and t.ndim > 0:
                t = DTensor.from_local(t.to(p.device), p.device_mesh, p.placements, run_check=False)
            opt_state.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    random.setstate(ast.literal_eval(meta["python_random"]))
    ns = meta["numpy_random"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    return meta
