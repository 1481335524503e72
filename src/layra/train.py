"""Continued pretraining, top to bottom, on accelerate.

    layra train --config configs/gemma3-270m-layra-gl.yaml train.max_steps=20

Reads and packs the data (once; cached in the run directory), loads the model,
applies the method, trains with AdamW + warm-up/decay, checkpoints, and writes
the outputs described in docs/formats.md. A killed run resumed with
``resume=True`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layra import distributed as dist
from layra.atomic import atomic_dir, atomic_write_text
from layra.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from layra.config import RunConfig, to_dict, validate
from layra.errors import LayraError
from layra.rundir import RunDir, RunRecord


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _trackers(spec: str) -> list[str]:
    """accelerate tracker names for ``train.trackers`` (see TrainConfig)."""
    import importlib.util

    if spec == "none":
        return []
    if spec == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [x.strip() for x in spec.split(",") if x.strip()]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat scalars (trackers take only scalars as hyper-parameters)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def model_depth(cfg: RunConfig) -> int:
    """Number of decoder layers, from the config alone (no weights loaded)."""
    return int(_model_config(cfg).num_hidden_layers)


def frozen_dtype(cfg: RunConfig, precision: str) -> str:
    """The dtype to load weights in for the resolved ``precision`` (bf16 or fp32).

    Under bf16 autocast every matmul runs in bf16 anyway, so weights that do not
    train gain nothing from fp32 copies — but cost memory and a cast per use. They
    are loaded in bf16 only when the checkpoint itself is bf16 (values identical)
    and the method leaves weights frozen; trainable tensors are then upcast to fp32
    master copies (:func:`upcast_trainable`). In fp32 (chosen where bf16 matmul is
    slow) everything is fp32: bf16 frozen weights would be cast on every use.
    """
    from layra.method_registry import method_spec

    if precision != "bf16" or method_spec(cfg.method.name).trains_everything:
        return "float32"
    mc = _model_config(cfg)
    stored = getattr(mc, "dtype", None) or getattr(mc, "torch_dtype", None)
    return "bfloat16" if str(stored).replace("torch.", "") == "bfloat16" else "float32"


def _keep_resumed_precision(prec, out: Path):
    """A resumed ``auto`` run keeps the precision it started in (the probe could differ)."""
    import dataclasses

    if prec.requested != "auto":
        return prec
    try:
        before = ((RunDir(out).read_provenance() or {}).get("precision") or {}).get("name")
    except AttributeError:  # a hand-edited provenance.json
        return prec
    if before in ("bf16", "fp32") and before != prec.name:
        why = f"kept from the run being resumed (now auto would pick {prec.name})"
        return dataclasses.replace(prec, name=before, reason=why)
    return prec


def upcast_trainable(model: torch.nn.Module) -> None:
    """Trainable tensors in fp32 (the optimizer's master weights); frozen ones as loaded."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


def _model_config(cfg: RunConfig):
    m = cfg.model
    return _read_model_config(m.name_or_path, m.gguf_file, m.trust_remote_code)


@functools.lru_cache(maxsize=8)
def _read_model_config(name_or_path: str, gguf_file: str | None, trust_remote_code: bool):
    # Cached: depth and stored dtype are asked for separately, and a hub id or a GGUF
    # header costs a request or a parse each time.
    from transformers import AutoConfig

    from layra.models import resolve_source

    src, gguf = resolve_source(name_or_path, gguf_file)
    try:
        mc = AutoConfig.from_pretrained(src, gguf_file=gguf, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LayraError(
            f"cannot read the model config of {name_or_path}: {str(e).splitlines()[0]}"
        ) from e
    return getattr(mc, "text_config", None) or mc


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    # The usual convention (HF Trainer, nanoGPT): no decay on biases and norm weights.
    # A tensor may carry its own settings (layra.embeddings: lowlr scales the lr, rows
    # turns decay off); each distinct (decay, lr scale) is one group.
    from layra.embeddings import OPTIM_ATTR

    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {(weight_decay, 1.0): []}
    for name, p in model.named_parameters(remove_duplicate=True):
        if not p.requires_grad:
            continue
        own = getattr(p, OPTIM_ATTR, {})
        wd = own.get("weight_decay", 0.0 if p.ndim < 2 or "norm" in name else weight_decay)
        groups.setdefault((wd, own.get("lr_scale", 1.0)), []).append(p)
    return [
        {"params": ps, "weight_decay": wd, "lr": lr * scale}
        for i, ((wd, scale), ps) in enumerate(groups.items())
        if ps or i == 0
    ]


def _fused_adamw_ok(model: torch.nn.Module) -> bool:
    """Fused AdamW needs floating-point parameters on a device that has the kernel."""
    return all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in model.parameters()
        if p.requires_grad
    )


def _schedule(optimizer, kind: str, warmup_steps: int, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[kind]
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class _Log:
    """``log.jsonl``, one line per optimizer step: on resume, lines after ``start_step``
    (steps the killed run logged past its last checkpoint, and a torn last line) are
    dropped first, since those steps run again."""

    def __init__(self, path: Path, enabled: bool, start_step: int = 0):
        self.f = None
        if not enabled:
            return
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int):
                    if rec["step"] <= start_step:
                        kept.append(line + "\n")
            atomic_write_text(path, "".join(kept))
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, rec: dict[str, Any]) -> None:
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Check the output directory, then create it (or clean up what a killed run left)."""
    import sys

    from layra.atomic import check_writable, clean_stale

    rd = RunDir(cfg.output_dir)
    out = rd.path
    if out.exists() and not out.is_dir():
        raise LayraError(f"output_dir {out} is a file; choose a directory path")
    if rd.run_json.exists() and not overwrite:
        raise LayraError(f"run {out} is already complete (pass --overwrite to train it again)")
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise LayraError(
            f"output directory {out} exists; pass --resume to continue it or --overwrite"
        )
    check_writable(rd.run_json)
    if resume and rd.config_yaml.exists():
        differ = rd.differing_settings(cfg, ("model", "method", "data"))
        if differ:
            raise LayraError(
                f"--resume: {differ[0]} settings differ from the run in {out}; use a new output_dir"
            )
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LayraError(
            f"cannot create output_dir {out}: {e.strerror or e}; choose a writable location"
        ) from e
    # What a killed run left: half-written checkpoints, outputs and packed data.
    for d in (out, rd.checkpoints, rd.heldout):
        clean_stale(d)
    if rd.data.exists() and not rd.data_stats.exists():
        # Packed by a layra that renamed data.safetensors into place first, then killed.
        with contextlib.suppress(FileNotFoundError):  # another process of the run was first
            rd.data.unlink()
        print(f"layra: removed incomplete packed data {rd.data}", file=sys.stderr)
    return out


def train(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_step: int | None = None,
) -> Path:
    """Train ``cfg`` and return the run directory (see docs/formats.md).

    ``stop_after_step`` ends the loop early after checkpointing, as a kill would
    (used to test resuming).
    """
    return train_model(cfg, resume, overwrite, progress, stop_after_step, keep_model=False)[0]


def train_model(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_step: int | None = None,
    keep_model: bool = True,
):
    """Like :func:`train`, but also return the trained in-memory model.

    With ``keep_model`` false a LoRA model is merged in place for ``--merge``
    (no second copy of the weights in memory) and must not be used afterwards.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from layra import data as data_mod
    from layra.fingerprint import model_fingerprint
    from layra.loss import LossModule
    from layra.methods import plan_method, prepare_model, trainable_summary
    from layra.models import load_model, load_tokenizer
    from layra.provenance import provenance

    validate(cfg)
    t = cfg.train
    # Everything that can fail without weights fails here, before the slow load and
    # before anything is created.
    depth = model_depth(cfg)
    plan_method(cfg.method, depth)
    _check_inputs(cfg, resume)
    dist.check_sharding(cfg)
    # Each process checks the run directory before any writes into it (rank 0's data,
    # any rank's tracker files), or a later rank finds it non-empty and refuses.
    dist.sync_ranks()
    out = prepare_run_dir(cfg, resume, overwrite)
    dist.sync_ranks()

    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
    from accelerate.state import AcceleratorState

    from layra.precision import announce, resolve_precision

    # Every rank must compute in the same precision: decide without timing when several run.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    prec = resolve_precision(t.precision, "cpu" if cpu else "cuda", deterministic=several)
    prec = _keep_resumed_precision(prec, out) if resume else prec

    # accelerate keeps one process-wide state; a second run in the same process (tests,
    # sweeps, the demo) with another precision must not inherit the first one's.
    AcceleratorState._reset_state()
    trackers = _trackers(t.trackers)
    acc = Accelerator(
        mixed_precision=prec.mixed_precision,
        cpu=cpu,
        log_with=trackers or None,
        project_dir=str(out),
    )
    if trackers:
        acc.init_trackers("layra", config=_flat(to_dict(cfg)))
    say = acc.print if progress else (lambda *a, **k: None)
    announce(prec, say)
    set_seed(t.seed)

    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.trust_remote_code)
    cached = RunDir(out).data.exists()
    dist.sync_ranks()  # every rank has looked before rank 0 writes the cache
    if cached:
        packed = data_mod.load_packed(out)
        say(f"data: reusing {packed.stats['blocks']} packed blocks from {out}")
    else:
        say("data: reading sources")
        packed = data_mod.build_dataset(cfg.data, tok, seed=t.seed, progress=progress)
        if acc.is_main_process:
            data_mod.save_packed(packed, out)
        acc.wait_for_everyone()
    for lang, s in packed.stats["languages"].items():
        say(
            f"  {lang}: {s['train_tokens']:,} training tokens in {s['blocks']} blocks, "
            f"{s['heldout_documents']} held-out documents"
        )

    from layra.embeddings import select_rows

    rows = select_rows(cfg.method, tok, packed.blocks, say)  # None unless method.embeddings=rows

    if acc.is_main_process:
        RunDir(out).write_config(cfg)
        RunDir(out).write_provenance(
            provenance(
                seed=t.seed,
                accelerate_state=str(acc.distributed_type),
                precision=prec.to_dict(),
            ),
        )

    say(f"model: loading {cfg.model.name_or_path}")
    load_dtype = frozen_dtype(cfg, prec.name)
    model, _ = load_model(
        cfg.model.name_or_path,
        cfg.model.gguf_file,
        dtype=load_dtype,
        trust_remote_code=cfg.model.trust_remote_code,
        with_tokenizer=False,
    )
    base_fp = model_fingerprint(model, tok)
    # LoRA's initialisation depends on the seed alone, not on what ran before (data cached or not).
    set_seed(t.seed)
    model, plan = prepare_model(model, cfg.method, rows=rows.ids if rows else None)
    upcast_trainable(model)
    if load_dtype != "float32":
        say(f"  frozen weights kept in {load_dtype} as stored; trained tensors in float32")
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    say(trainable_summary(model, plan))

    world = acc.num_processes
    per_step = t.batch_size * t.grad_accum * world
    n_blocks = len(packed.blocks)
    steps_per_epoch = n_blocks // per_step
    if steps_per_epoch == 0:
        raise LayraError(
            f"{n_blocks} blocks are fewer than one optimizer step needs ({per_step} = batch_size "
            f"{t.batch_size} x grad_accum {t.grad_accum} x {world} processes); add text or lower them"
        )
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    warmup = math.ceil(t.warmup * total_steps)

    loss_model = LossModule(model, t.loss_chunk)
    sharded = world > 1 and dist.fsdp_requested()
    if sharded:
        dist.shard(loss_model, acc.device)  # before the optimizer: it must see the shards
    # fused: one pass over each tensor instead of ~10 (the CPU default is a per-op loop); it
    # matters for the 262k x 640 embedding Gemma trains. HF Trainer's default is fused too.
    optimizer = torch.optim.AdamW(
        _param_groups(model, t.weight_decay, t.lr),
        lr=t.lr,
        betas=tuple(t.betas),
        eps=t.eps,
        fused=_fused_adamw_ok(model),
    )
    scheduler = _schedule(optimizer, t.schedule, warmup, total_steps)
    loss_model, optimizer = dist.prepare(acc, loss_model, optimizer, sharded)

    ckpt_root = RunDir(out).checkpoints
    start_step, tokens_seen = 0, 0
    last = latest_checkpoint(ckpt_root) if resume else None
    if last is not None and dist.is_sharded_checkpoint(last):
        meta = dist.load_sharded(last, model, optimizer, scheduler, acc)
        start_step, tokens_seen = meta["step"], meta["tokens"]
        say(f"resume: from {last} (step {start_step})")
    elif last is not None:
        meta = load_checkpoint(last, model, optimizer, scheduler)
        start_step, tokens_seen = meta["step"], meta["tokens"]
        say(f"resume: from {last} (step {start_step})")
    elif resume:
        say("resume: no checkpoint yet, starting from step 0")

    def check_finite(step: int) -> None:
        # The loss can be finite while the update that follows overflows; never
        # checkpoint or write such weights.
        bad = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and not torch.isfinite(dist.local(p)).all()
        ]
        if bad:
            prev = latest_checkpoint(ckpt_root)
            kept = f"last good checkpoint: {prev}" if prev else "no checkpoint was saved yet"
            raise LayraError(
                f"weights became non-finite at step {step} ({bad[0]}); stopping ({kept}). "
                "Try a lower train.lr"
            )

    def save(step: int) -> None:
        check_finite(step)
        state = {"step": step, "tokens": tokens_seen, "seed": t.seed}
        if sharded:
            dist.save_sharded(ckpt_root / f"step-{step}", model, optimizer, scheduler, state, acc)
        if acc.is_main_process:
            if not sharded:
                save_checkpoint(ckpt_root / f"step-{step}", model, optimizer, scheduler, state)
            prune_checkpoints(ckpt_root, t.keep_checkpoints)
        acc.wait_for_everyone()

    log = _Log(RunDir(out).log_jsonl, acc.is_main_process, start_step)
    device = acc.device
    rank = acc.process_index
    seq_len = packed.blocks.shape[1]
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        disable=not (progress and acc.is_main_process),
        desc=f"train {plan.method}",
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    t0, tok0 = time.perf_counter(), tokens_seen
    loss_val = float("nan")
    try:
        for step in range(start_step, total_steps):
            base = (step % steps_per_epoch) * per_step
            step_loss = torch.zeros((), device=device)
            for micro in range(t.grad_accum):
                # Global block order: [step][micro][rank][batch] — same data for any world size.
                lo = base + (micro * world + rank) * t.batch_size
                batch = packed.blocks[lo : lo + t.batch_size].to(device)
                ctx = (
                    acc.no_sync(loss_model)
                    if micro < t.grad_accum - 1
                    else contextlib.nullcontext()
                )
                with ctx, acc.autocast():
                    loss = loss_model(batch)
                acc.backward(loss / t.grad_accum)
                step_loss += loss.detach() / t.grad_accum
            loss_val = acc.reduce(step_loss, reduction="mean").item()
            if not math.isfinite(loss_val):
                prev = latest_checkpoint(ckpt_root)
                kept = f"last good checkpoint: {prev}" if prev else "no checkpoint was saved yet"
                raise LayraError(
                    f"loss is {loss_val} at step {step + 1}; stopping ({kept}). Try a lower train.lr"
                )
            grad_norm = None
            if t.max_grad_norm:
                grad_norm = float(acc.clip_grad_norm_(model.parameters(), t.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens_seen += per_step * seq_len
            elapsed = time.perf_counter() - t0
            tps = (tokens_seen - tok0) / elapsed if elapsed > 0 else 0.0
            if (step + 1) % t.log_every == 0 or step + 1 == total_steps:
                if trackers:
                    acc.log(
                        {"loss": loss_val, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps},
                        step=step + 1,
                    )
                log.write(
                    {
                        "step": step + 1,
                        "loss": loss_val,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": tokens_seen,
                        "tokens_per_s": round(tps, 1),
                        "elapsed_s": round(elapsed, 2),
                    }
                )
            bar.set_postfix(loss=f"{loss_val:.4f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            done = step + 1
            if (
                t.save_every and done % t.save_every == 0 and done < total_steps
            ) or done == stop_after_step:
                save(done)
            if stop_after_step is not None and done >= stop_after_step:
                return out, model
    finally:
        bar.close()
        log.close()
        # Not acc.end_training(): it also destroys the process group, and a multi-process
        # run still needs it below (wait_for_everyone).
        for tracker in acc.trackers:
            tracker.finish()
    elapsed = time.perf_counter() - t0
    check_finite(total_steps)

    # Under FSDP every rank takes part in gathering the full trained tensors rank 0 writes.
    full = dist.full_trainable(model) if sharded else None
    if acc.is_main_process:
        _write_outputs(cfg, out, model, tok, plan, keep_model, merged_dtype=load_dtype, full=full)
        rd = RunDir(out)
        record = RunRecord(
            method=plan.method,
            plan=plan.to_dict(),
            base_model=_portable_ref(cfg.model.name_or_path),
            gguf_file=cfg.model.gguf_file,
            base_fingerprint=base_fp,
            languages=list(packed.heldout),
            steps=total_steps,
            tokens=tokens_seen,
            final_loss=loss_val,
            train_seconds_this_session=round(elapsed, 1),
            tokens_per_s_this_session=round((tokens_seen - tok0) / elapsed, 1)
            if elapsed
            else None,
            peak_rss_gib=round(_peak_rss_gib(), 2),
            processes=world,
            precision=prec.to_dict(),
            tied=model_is_tied(model),
            outputs=rd.outputs(),
        )
        rd.write_record(record)
        say(f"done: {total_steps} steps, final loss {loss_val:.4f}, outputs in {out}")
    acc.wait_for_everyone()
    return out, model


def _check_inputs(cfg: RunConfig, resume: bool) -> None:
    """The checks of :func:`train_model` that read files or the machine but write nothing."""
    from layra.data import source_format
    from layra.models import check_model_files

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise LayraError("train.device=cuda but no CUDA device is available")
    check_model_files(cfg.model.name_or_path, cfg.model.gguf_file)
    if not (resume and RunDir(cfg.output_dir).data.exists()):
        for src in cfg.data.sources:
            source_format(src)  # a missing file, an empty directory, an unknown type


def _portable_ref(name_or_path: str) -> str:
    """A local model path made absolute (so the run works from any directory); hub ids as given."""
    p = Path(name_or_path).expanduser()
    return str(p.resolve()) if p.exists() else name_or_path


def model_is_tied(model) -> bool:
    from layra.arch import unwrap

    hf = unwrap(model)
    return hf.get_input_embeddings().weight is hf.get_output_embeddings().weight


def _write_outputs(
    cfg: RunConfig,
    out: Path,
    model,
    tok,
    plan,
    copy_before_merge: bool,
    merged_dtype: str,
    full: dict[str, torch.Tensor] | None = None,
) -> None:
    """The adapter or trained tensors, and the merged model if asked (each atomic).

    ``full``: the trained tensors gathered from a sharded model (by the model's own names).
    """
    import copy

    from safetensors.torch import save_file

    from layra.arch import unwrap
    from layra.checkpoint import trainable_state
    from layra.methods import save_adapter

    rd = RunDir(out)
    adapter = plan.spec.artifact == "adapter"
    if adapter:
        with atomic_dir(rd.adapter, overwrite=True) as tmp:
            # In-place embedding / head saved as modules_to_save; ``full``: gathered shards.
            save_adapter(model, plan, tmp, state_dict=full)
            tok.save_pretrained(tmp)
    else:
        tensors = trainable_state(unwrap(model)) if full is None else dist.hf_names(model, full)
        tmp = rd.trained.with_name(f".{rd.trained.name}.tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt", "method": plan.method})
        os.replace(tmp, rd.trained)
    if cfg.merge:
        if adapter:
            # Merging rewrites the base weights; a caller that keeps the model gets a copy merged.
            merged = (copy.deepcopy(model) if copy_before_merge else model).merge_and_unload()
        else:
            merged = unwrap(model)
        if merged_dtype != "float32":
            # Frozen weights were kept as stored (bf16): write one dtype, as loaders expect.
            merged = (copy.deepcopy(merged) if copy_before_merge else merged).to(torch.bfloat16)
        with atomic_dir(rd.model, overwrite=True) as tmp:
            merged.save_pretrained(tmp)
            tok.save_pretrained(tmp)
