"""Continued pretraining, top to bottom, on accelerate.

    layra train --config configs/gemma3-270m-layra-gl.yaml train.max_steps=20

Reads and packs the data (once; cached in the run directory), loads the model,
applies the method, trains with AdamW + warm-up/decay, checkpoints, and writes
the outputs described in docs/formats.md. A killed run resumed with
``resume=True`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from layra import distributed as dist
from layra.atomic import atomic_dir, atomic_write_text
from layra.checkpoint import (
    checkpoint_problem,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from layra.config import RunConfig, TrainConfig, to_dict, validate
from layra.errors import LayraError
from layra.lock import output_lock
from layra.models import frozen_dtype, model_depth, upcast_trainable
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


class MetricLog:
    """One dict per logged optimizer step, to ``log.jsonl`` (rank 0) and to the trackers.

    On resume, lines after ``start_step`` (steps the killed run logged past its last
    checkpoint, and a torn last line) are dropped first, since those steps run again.
    """

    def __init__(self, path: Path, acc, start_step: int = 0):
        self.acc, self.f = acc, None
        if not acc.is_main_process:
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
        if self.acc.trackers:  # scalars only
            scalars = {k: v for k, v in rec.items() if k != "step" and v is not None}
            self.acc.log(scalars, step=rec["step"])
        if self.f:
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()
        # Not acc.end_training(): it also destroys the process group, and a multi-process
        # run still needs it afterwards (wait_for_everyone).
        for tracker in self.acc.trackers:
            tracker.finish()


def prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Check the output directory, then create it (or clean up what a killed run left)."""

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
    if resume:
        refused, _ = rd.resume_changes(cfg)
        if refused:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise LayraError(
                f"--resume: settings differ from the run in {out} ({what}); they cannot change "
                "mid-run: resume with the run's values or train into a new output_dir"
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
    return out


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps, how many warm up, and which blocks each rank reads.

    Pure arithmetic on the config and the data size. The global block order is
    ``[step][micro-batch][rank][batch]``, so any number of processes reads the same
    blocks in each optimizer step; an epoch after the first reads them again.
    """

    batch_size: int
    grad_accum: int
    world: int
    n_blocks: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def make(cls, t: TrainConfig, n_blocks: int, world: int) -> StepPlan:
        per_step = t.batch_size * t.grad_accum * world
        if n_blocks < per_step:
            raise LayraError(
                f"{n_blocks} blocks are fewer than one optimizer step needs ({per_step} = "
                f"batch_size {t.batch_size} x grad_accum {t.grad_accum} x {world} processes); "
                "add text or lower them"
            )
        total = (n_blocks // per_step) * t.epochs
        if t.max_steps is not None:
            total = min(total, t.max_steps)
        return cls(t.batch_size, t.grad_accum, world, n_blocks, total, math.ceil(t.warmup * total))

    @property
    def blocks_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n_blocks // self.blocks_per_step

    def blocks(self, step: int, micro: int, rank: int) -> slice:
        """The blocks rank ``rank`` reads in micro-batch ``micro`` of step ``step`` (from 0)."""
        base = (step % self.steps_per_epoch) * self.blocks_per_step
        lo = base + (micro * self.world + rank) * self.batch_size
        return slice(lo, lo + self.batch_size)


@dataclass
class TrainResult:
    """What :func:`train_model` returns."""

    run_dir: Path
    # The trained model (a PEFT model for LoRA methods); unusable after ``merge_in_place``.
    model: Any
    record: RunRecord | None  # run.json as written; None on other ranks or when stopped early
    steps_done: int


StopWhen = Callable[[int], bool]  # called with the steps done after each optimizer step


def train(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    should_stop: StopWhen | None = None,
) -> Path:
    """Train ``cfg`` and return the run directory (see docs/formats.md)."""
    res = train_model(
        cfg, resume, overwrite, progress, should_stop=should_stop, merge_in_place=True
    )
    return res.run_dir


def train_model(
    cfg: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    *,
    should_stop: StopWhen | None = None,
    merge_in_place: bool = False,
) -> TrainResult:
    """Train ``cfg``: the recipe, one named step per line.

    ``should_stop(steps_done)`` returning True ends training after a checkpoint, as a
    kill would (tests resume from it). ``merge_in_place``: for ``merge: true`` merge a
    LoRA model into its own weights (no second copy in memory); the returned model is
    then not to be used.

    The output directory is locked for the whole run (:mod:`layra.lock`; by the first
    process of a multi-process run): a second writer, ``--overwrite`` included, is refused.
    """
    first = int(os.environ.get("RANK", "0")) == 0
    what = f"output_dir {cfg.output_dir}"
    with output_lock(cfg.output_dir, what) if first else contextlib.nullcontext():
        return _train_model(cfg, resume, overwrite, progress, should_stop, merge_in_place)


def _train_model(
    cfg: RunConfig,
    resume: bool,
    overwrite: bool,
    progress: bool,
    should_stop: StopWhen | None,
    merge_in_place: bool,
) -> TrainResult:
    from layra.embeddings import select_rows

    created = not Path(cfg.output_dir).exists()
    # Settings this session changes (only those RESUME_MAY_CHANGE; others are refused
    # below): read before config.yaml is rewritten with them.
    changed = RunDir(cfg.output_dir).resume_changes(cfg)[1] if resume else {}
    out = _check_and_prepare(cfg, resume, overwrite)
    acc, prec, say = _make_accelerator(cfg, out, resume, progress)
    try:
        tok, packed = _load_data(cfg, out, acc, say, progress)
    except BaseException:
        # Unreadable data: a folder this call created holds nothing worth keeping.
        if created and acc.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
        raise
    rows = select_rows(cfg.method, tok, packed.blocks, say)  # None unless method.embeddings=rows
    if acc.is_main_process:
        _write_how_made(cfg, out, acc, prec)
    built = _build_model(cfg, tok, prec, rows, say)
    steps = StepPlan.make(cfg.train, len(packed.blocks), acc.num_processes)
    parts = _make_optimizer(cfg.train, built.model, steps, acc, prec.name, say)
    ckpt = Checkpointer(RunDir(out).checkpoints, parts, cfg.train)
    start, tokens = ckpt.resume(say) if resume else (0, 0)
    if resume and acc.is_main_process:
        RunDir(out).record_resume(start, changed)
        if changed:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            say(f"resume: applying {what} from step {start} (recorded in resumes.jsonl)")
    log = MetricLog(RunDir(out).log_jsonl, acc, start)
    desc = f"train {built.plan.method}"
    fit = _fit(
        parts,
        packed.blocks,
        steps,
        ckpt,
        log,
        cfg.train,
        (start, tokens),
        should_stop,
        progress,
        desc,
    )
    if fit.stopped_early:
        return TrainResult(out, built.model, None, fit.steps)
    record = _finish(cfg, out, parts, ckpt, tok, built, packed, fit, prec, merge_in_place, say)
    return TrainResult(out, built.model, record, fit.steps)


def _check_and_prepare(cfg: RunConfig, resume: bool, overwrite: bool) -> Path:
    """Fail on everything that can fail without weights (before the slow load and before
    anything is created), then create or clean the run directory."""
    from layra.methods import plan_method

    validate(cfg)
    plan_method(cfg.method, model_depth(cfg))
    _check_inputs(cfg, resume)
    dist.check_sharding(cfg)
    dist.request_cpu_backend(cfg)  # before the process group exists
    # Each process checks the run directory before any writes into it (rank 0's data,
    # any rank's tracker files), or a later rank finds it non-empty and refuses.
    dist.sync_ranks()
    out = prepare_run_dir(cfg, resume, overwrite)
    dist.sync_ranks()
    return out


def _make_accelerator(cfg: RunConfig, out: Path, resume: bool, progress: bool):
    """The accelerate state for the resolved precision, trackers started: (acc, precision, say)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from layra.precision import announce, resolve_precision

    t = cfg.train
    cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
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
    return acc, prec, say


def _load_data(cfg: RunConfig, out: Path, acc, say, progress: bool):
    """The tokenizer and the prepared data (:mod:`layra.prepare`), recorded in the run dir.

    Every process calls this: one prepares (a file lock), the others wait and then read
    the same memory-mapped files. A resumed run must find the data it started on.
    """
    from layra import data as data_mod
    from layra.models import load_tokenizer

    tok = load_tokenizer(cfg.model.name_or_path, cfg.model.gguf_file, cfg.model.trust_remote_code)
    rd = RunDir(out)
    recorded = json.loads(rd.data_json.read_text()) if rd.data_json.exists() else None
    verify = acc.is_local_main_process  # a full checksum pass: once per machine
    data = _recorded_data(recorded, len(tok), verify)
    if data is None:
        data = data_mod.build_dataset(
            cfg.data,
            tok,
            seed=cfg.train.seed,
            progress=progress and acc.is_main_process,
            say=say,
            verify=verify,
        )
    if recorded and recorded["fingerprint"] != data.fingerprint:
        raise LayraError(
            f"--resume: the data prepared now ({data.fingerprint[:12]}) is not the data {out} "
            f"trained on ({recorded['fingerprint'][:12]}): its sources changed; train into a "
            "new output_dir"
        )
    if acc.is_main_process and not recorded:
        _record_data(rd, data)
    acc.wait_for_everyone()
    for lang, s in data.stats["languages"].items():
        say(
            f"  {lang}: {s['train_tokens']:,} training tokens in {s['blocks']} blocks, "
            f"{s['heldout_documents']} held-out documents"
        )
    return tok, data


def _recorded_data(recorded: dict | None, vocab_size: int, verify: bool):
    """The prepared data a run recorded, when it is still where it was (else None)."""
    from layra.prepare import open_prepared

    if recorded is None or not (Path(recorded["prepared"]) / "prepared.json").exists():
        return None
    return open_prepared(Path(recorded["prepared"]), vocab_size, verify=verify)


def _record_data(rd: RunDir, data) -> None:
    """Held-out text and stats into the run dir, then ``data.json`` (naming the data) last."""
    from layra.atomic import atomic_write_json, atomic_write_text
    from layra.documents import documents_jsonl

    rd.heldout.mkdir(parents=True, exist_ok=True)
    for lang, docs in data.heldout.items():
        # JSONL: a document with blank lines inside (a JSONL row) stays one document.
        atomic_write_text(rd.heldout_file(lang), documents_jsonl(docs))
    atomic_write_json(rd.data_stats, data.stats)
    atomic_write_json(
        rd.data_json,
        {"prepared": str(data.root), "fingerprint": data.fingerprint, "blocks": len(data.blocks)},
    )


def _write_how_made(cfg: RunConfig, out: Path, acc, prec) -> None:
    """config.yaml and provenance.json, before training: a killed run says how it was made."""
    from layra.provenance import provenance

    run = RunDir(out)
    run.write_config(cfg)
    run.write_provenance(
        provenance(
            seed=cfg.train.seed,
            accelerate_state=str(acc.distributed_type),
            precision=prec.to_dict(),
        )
    )


class _Built(NamedTuple):
    model: torch.nn.Module  # prepared for the method (a PEFT model for LoRA methods)
    plan: Any  # layra.methods.MethodPlan
    base_fingerprint: dict[str, str]
    load_dtype: str  # what the frozen weights are held in


def _build_model(cfg: RunConfig, tok, prec, rows, say) -> _Built:
    """Load the base model and apply the method: exactly the plan's tensors train, in fp32."""
    from layra.fingerprint import model_fingerprint
    from layra.methods import prepare_model, trainable_summary
    from layra.models import load_model

    t = cfg.train
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
    return _Built(model, plan, base_fp, load_dtype)


@dataclass
class _Parts:
    """What the training loop drives."""

    acc: Any
    model: torch.nn.Module
    loss_model: torch.nn.Module  # model + chunked LM loss, as accelerate / FSDP wrapped it
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sharded: bool  # FSDP2: each rank holds a shard of every tensor


def _make_optimizer(
    t: TrainConfig, model: torch.nn.Module, steps: StepPlan, acc, precision: str, say
) -> _Parts:
    """AdamW and the warm-up / decay schedule, over the (possibly sharded) model.

    Under FSDP the model is sharded first, with ``train.fsdp_param_dtype`` and
    ``train.fsdp_offload`` applied; a single process says once that it ignores them.
    """
    from layra.loss import LossModule

    loss_model = LossModule(model, t.loss_chunk)
    sharded = acc.num_processes > 1 and dist.fsdp_requested()
    if sharded:
        if t.fsdp_param_dtype == "bf16" and precision != "bf16":
            raise LayraError(
                f"train.fsdp_param_dtype=bf16 computes in bf16, but precision resolved to "
                f"{precision} on this device; set train.fsdp_param_dtype=stored"
            )
        # before the optimizer: it must see the shards
        dist.shard(loss_model, acc.device, t.fsdp_param_dtype, t.fsdp_offload)
    elif t.fsdp_param_dtype != "stored" or t.fsdp_offload:
        say("note: train.fsdp_param_dtype / train.fsdp_offload apply under FSDP only; ignored")
    # fused: one pass over each tensor instead of ~10 (the CPU default is a per-op loop); it
    # matters for the 262k x 640 embedding Gemma trains. HF Trainer's default is fused too.
    optimizer = torch.optim.AdamW(
        _param_groups(model, t.weight_decay, t.lr),
        lr=t.lr,
        betas=tuple(t.betas),
        eps=t.eps,
        fused=_fused_adamw_ok(model),
    )
    scheduler = _schedule(optimizer, t.schedule, steps.warmup_steps, steps.total_steps)
    loss_model, optimizer = dist.prepare(acc, loss_model, optimizer, sharded)
    return _Parts(acc, model, loss_model, optimizer, scheduler, sharded)


class Checkpointer:
    """``checkpoints/step-N``: resumable state, saved only from finite weights."""

    def __init__(self, root: Path, parts: _Parts, t: TrainConfig):
        self.root, self.parts, self.keep, self.seed = root, parts, t.keep_checkpoints, t.seed

    def resume(self, say) -> tuple[int, int]:
        """Load the newest intact checkpoint, if any: (steps done, tokens seen).

        A damaged one (:func:`~layra.checkpoint.checkpoint_problem`, or one that fails to
        load) is set aside as ``damaged-step-N`` so pruning never keeps it over a good one,
        and the run says which one it resumes from and why, in one line on stderr.
        """
        import sys

        p = self.parts
        found = checkpoints(self.root)
        if not found:
            say("resume: no checkpoint yet, starting from step 0")
            return 0, 0
        skipped: list[tuple[Path, str]] = []
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                try:
                    meta = self._load(path)
                except LayraError:
                    raise
                except Exception as e:  # noqa: BLE001 - bytes the header check cannot see
                    first = (str(e).strip().splitlines() or [""])[0][:120]
                    problem = f"it does not load ({type(e).__name__}: {first})"
                else:
                    break
            skipped.append((path, problem))
        else:
            what = "; ".join(f"{q.name}: {why}" for q, why in skipped)
            raise LayraError(
                f"--resume: no intact checkpoint in {self.root} ({what}); "
                "start again with --overwrite"
            )
        p.acc.wait_for_everyone()  # every rank has chosen before rank 0 moves any aside
        if skipped and p.acc.is_main_process:
            for q, _ in skipped:
                aside = q.with_name(f"damaged-{q.name}")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(q, aside)
            names = ", ".join(q.name for q, _ in skipped)
            print(
                f"layra: warning: resuming from {path.name}, not {names}: {skipped[0][1]} "
                f"(set aside as damaged-{skipped[0][0].name})",
                file=sys.stderr,
                flush=True,
            )
        say(f"resume: from {path} (step {meta['step']})")
        return meta["step"], meta["tokens"]

    def _load(self, path: Path) -> dict[str, Any]:
        p = self.parts
        if dist.is_sharded_checkpoint(path):
            return dist.load_sharded(path, p.model, p.optimizer, p.scheduler, p.acc)
        return load_checkpoint(path, p.model, p.optimizer, p.scheduler)

    def check_finite(self, step: int, loss: float | None = None) -> None:
        """Stop on a non-finite ``loss`` or, without one, non-finite trained weights (the
        loss can be finite while the update after it overflows): such weights are never
        checkpointed or written."""
        if loss is not None:
            if math.isfinite(loss):
                return
            what = f"loss is {loss} at step {step}"
        else:
            named = self.parts.model.named_parameters()
            bad = next(
                (
                    n
                    for n, p in named
                    if p.requires_grad and not torch.isfinite(dist.local(p)).all()
                ),
                None,
            )
            if bad is None:
                return
            what = f"weights became non-finite at step {step} ({bad})"
        prev = latest_checkpoint(self.root)
        kept = f"last good checkpoint: {prev}" if prev else "no checkpoint was saved yet"
        raise LayraError(f"{what}; stopping ({kept}). Try a lower train.lr")

    def save(self, step: int, tokens: int) -> None:
        self.check_finite(step)
        p = self.parts
        state = {"step": step, "tokens": tokens, "seed": self.seed}
        path = self.root / f"step-{step}"
        if p.sharded:
            dist.save_sharded(path, p.model, p.optimizer, p.scheduler, state, p.acc)
        if p.acc.is_main_process:
            if not p.sharded:
                save_checkpoint(path, p.model, p.optimizer, p.scheduler, state)
            prune_checkpoints(self.root, self.keep)
        p.acc.wait_for_everyone()


@dataclass
class _Fit:
    steps: int  # optimizer steps done (all sessions)
    tokens: int  # training tokens seen (all sessions)
    loss: float  # the last step's
    seconds: float  # this session's training time
    session_tokens: int
    stopped_early: bool


def _fit(
    parts: _Parts,
    blocks,
    steps: StepPlan,
    ckpt,
    log,
    t: TrainConfig,
    start,
    should_stop,
    progress: bool,
    desc: str,
) -> _Fit:
    """The training loop, from ``start`` = (steps done, tokens seen) to the plan's end."""
    from tqdm.auto import tqdm

    done, tokens = start
    show = progress and parts.acc.is_main_process
    bar = tqdm(
        total=steps.total_steps,
        initial=done,
        disable=not show,
        desc=desc,
        unit="step",
        dynamic_ncols=True,
    )
    parts.model.train()
    t0, tok0, loss, stop = time.perf_counter(), tokens, float("nan"), False
    try:
        for step in range(done, steps.total_steps):
            loss, grad_norm = _train_step(parts, blocks, steps, step, ckpt, t.max_grad_norm)
            done, tokens = step + 1, tokens + steps.blocks_per_step * blocks.shape[1]
            elapsed = time.perf_counter() - t0
            tps = (tokens - tok0) / elapsed if elapsed > 0 else 0.0
            if done % t.log_every == 0 or done == steps.total_steps:
                lr = parts.scheduler.get_last_lr()[0]
                log.write(
                    {
                        "step": done,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": tokens,
                        "tokens_per_s": round(tps, 1),
                        "elapsed_s": round(elapsed, 2),
                    }
                )
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            stop = should_stop is not None and should_stop(done)
            if stop or (t.save_every and done % t.save_every == 0 and done < steps.total_steps):
                ckpt.save(done, tokens)
            if stop:
                break
    finally:
        bar.close()
        log.close()
    return _Fit(done, tokens, loss, time.perf_counter() - t0, tokens - tok0, stop)


def _train_step(
    parts: _Parts, blocks, steps: StepPlan, step: int, ckpt, max_norm: float | None
) -> tuple[float, float | None]:
    """One optimizer step over the micro-batches: (loss averaged over ranks, gradient norm)."""
    acc, n = parts.acc, steps.grad_accum
    step_loss = torch.zeros((), device=acc.device)
    for micro in range(n):
        batch = blocks[steps.blocks(step, micro, acc.process_index)].to(acc.device)
        # Gradients are reduced across ranks on the last micro-batch only.
        sync = contextlib.nullcontext() if micro == n - 1 else acc.no_sync(parts.loss_model)
        with sync, acc.autocast():
            loss = parts.loss_model(batch)
        acc.backward(loss / n)
        step_loss += loss.detach() / n
    loss_val = acc.reduce(step_loss, reduction="mean").item()
    ckpt.check_finite(step + 1, loss_val)
    grad_norm = None
    if max_norm:
        grad_norm = float(acc.clip_grad_norm_(parts.model.parameters(), max_norm))
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return loss_val, grad_norm


def _finish(
    cfg: RunConfig,
    out: Path,
    parts: _Parts,
    ckpt,
    tok,
    built: _Built,
    packed,
    fit: _Fit,
    prec,
    merge_in_place: bool,
    say,
) -> RunRecord | None:
    """Check the weights, write the artifact (and model/ if asked), then run.json, last."""
    ckpt.check_finite(fit.steps)
    # Under FSDP every rank takes part in gathering the full trained tensors rank 0 writes.
    full = dist.full_trainable(built.model) if parts.sharded else None
    record = None
    if parts.acc.is_main_process:
        _write_outputs(
            cfg,
            out,
            built.model,
            tok,
            built.plan,
            not merge_in_place,
            merged_dtype=built.load_dtype,
            full=full,
        )
        record = _run_record(cfg, out, built, list(packed.heldout), fit, prec, parts.acc)
        RunDir(out).write_record(record)
        say(f"done: {fit.steps} steps, final loss {fit.loss:.4f}, outputs in {out}")
    parts.acc.wait_for_everyone()
    return record


def _run_record(cfg: RunConfig, out: Path, built: _Built, languages, fit: _Fit, prec, acc):
    return RunRecord(
        method=built.plan.method,
        plan=built.plan.to_dict(),
        base_model=_portable_ref(cfg.model.name_or_path),
        gguf_file=cfg.model.gguf_file,
        base_fingerprint=built.base_fingerprint,
        languages=languages,
        steps=fit.steps,
        tokens=fit.tokens,
        final_loss=fit.loss,
        train_seconds_this_session=round(fit.seconds, 1),
        tokens_per_s_this_session=round(fit.session_tokens / fit.seconds, 1)
        if fit.seconds
        else None,
        peak_rss_gib=round(_peak_rss_gib(), 2),
        processes=acc.num_processes,
        precision=prec.to_dict(),
        tied=model_is_tied(built.model),
        outputs=RunDir(out).outputs(),
    )


def _check_inputs(cfg: RunConfig, resume: bool) -> None:
    """The checks of :func:`train_model` that read files or the machine but write nothing."""
    from layra.data import source_format
    from layra.models import check_model_files

    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise LayraError("train.device=cuda but no CUDA device is available")
    check_model_files(cfg.model.name_or_path, cfg.model.gguf_file)
    rd = RunDir(cfg.output_dir)
    if resume and rd.legacy_data.exists():
        raise LayraError(
            f"{rd.legacy_data} holds blocks packed by an earlier layra; delete it and --resume "
            "again: the data is prepared anew into the memory-mapped store (the same blocks)"
        )
    if not (resume and rd.data_json.exists()):
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
