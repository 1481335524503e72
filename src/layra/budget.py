"""A time budget that predicts: what a set of runs and their evaluation will take here.

    costs = Costs(step_s={"lora": 5.1}, overhead_s={"lora": 12.0}, eval_load_s=4.0,
                  eval_s_per_byte=0.004)   # or measured: time_steps(cfg), time_scoring(...)
    b = fit_budget(16_384, 12_000, target_s=1200, costs=costs, runs={"lora": 2}, eval_models=3,
                   texts=5, tokens_per_step=1024)

Used by ``layra demo`` and ``layra choose``: every cost is measured on the machine that
will do the work — two optimizer steps per kind of run (the first, with its one-off set-up,
not counted) and a short scoring pass — and the prediction is the sum of the runs' steps
and overheads and the evaluations. The report then shows predicted against measured time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALIBRATE_EVAL_BYTES = 3_000  # held-out bytes per text scored to time evaluation


@dataclass(frozen=True)
class Costs:
    """What this machine was measured to take (:func:`calibrate`)."""

    step_s: dict[str, float]  # per method: seconds per optimizer step, the first one not counted
    overhead_s: dict[str, float]  # per method: a run's wall time besides its steps
    eval_load_s: float  # loading a model to score it
    eval_s_per_byte: float  # scoring, per held-out byte


@dataclass(frozen=True)
class Budget:
    """What the demo trains and scores, and the time it expects that to take."""

    tokens: int  # training tokens per run
    eval_bytes: int  # held-out bytes scored per text
    requested_tokens: int
    requested_eval_bytes: int
    predicted_s: float  # training + evaluation, setup and calibration excluded
    target_s: float
    step_s: dict[str, float] | None  # measured seconds per step, per method
    note: str
    predicted_train_s: float = 0.0
    predicted_eval_s: float = 0.0


def fit_budget(
    tokens: int, eval_bytes: int, *, target_s: float, costs: Costs, runs: dict[str, int],
    eval_models: int, texts: int, tokens_per_step: int, min_steps: int = 2,
    min_eval_bytes: int = 1_500, fixed: bool = False,
) -> Budget:  # fmt: skip
    """Scale the token budget and held-out bytes down until the predicted time fits.

    Predicted time = for each method, ``runs[method]`` x (its overhead + steps x its step
    time) for training, plus ``eval_models`` x (load + ``texts`` x bytes x seconds per
    byte) for evaluation — every cost measured on this machine (:class:`Costs`).
    Evaluation gets at most 40 % of the target; training the rest. A budget never
    drops below ``min_steps`` steps or ``min_eval_bytes``; with ``fixed`` nothing is
    scaled and the prediction is only reported.
    """

    def eval_s(nbytes: int) -> float:
        return eval_models * (costs.eval_load_s + texts * nbytes * costs.eval_s_per_byte)

    def train_s(ntok: int) -> float:
        steps = max(1, ntok // tokens_per_step)
        return sum(n * (costs.overhead_s[m] + steps * costs.step_s[m]) for m, n in runs.items())

    new_tok, new_bytes, note = tokens, eval_bytes, "fits"
    if not fixed and train_s(tokens) + eval_s(eval_bytes) > target_s:
        if eval_s(eval_bytes) > 0.4 * target_s:
            per_byte = eval_models * texts * costs.eval_s_per_byte
            room = max(0.0, 0.4 * target_s - eval_models * costs.eval_load_s)
            fit = int(room / per_byte) if per_byte else eval_bytes
            new_bytes = max(min_eval_bytes, min(eval_bytes, fit))
        left = target_s - eval_s(new_bytes) - sum(n * costs.overhead_s[m] for m, n in runs.items())
        per_step = sum(n * costs.step_s[m] for m, n in runs.items())
        steps = max(min_steps, math.floor(left / per_step) if left > 0 and per_step else 0)
        new_tok = min(tokens, steps * tokens_per_step)
        note = "scaled to fit"
    predicted = train_s(new_tok) + eval_s(new_bytes)
    if fixed and predicted > target_s:
        note = "fixed by --fixed-budget; will not fit"
    elif predicted > target_s:
        note = "scaled to the minimum; still over"
    return Budget(new_tok, new_bytes, tokens, eval_bytes, round(predicted, 1), target_s,
                  {m: round(x, 3) for m, x in costs.step_s.items()}, note,
                  round(train_s(new_tok), 1), round(eval_s(new_bytes), 1))  # fmt: skip


def time_steps(cfg: Any, out: Path) -> tuple[float, float]:
    """Two real optimizer steps of run config ``cfg`` in ``out``: (seconds of the second
    step, the run's overhead).

    The first step pays one-off set-up (kernels, allocator), so only the second is
    counted; the overhead is the run's wall time besides its steps (loading, data,
    writing the outputs), which every run pays again. ``cfg`` is copied, not changed.
    """
    import copy

    from layra.rundir import RunDir
    from layra.train import train

    cfg = copy.deepcopy(cfg)
    cfg.output_dir = str(out)
    cfg.train.max_steps, cfg.train.save_every, cfg.train.trackers = 2, 0, "none"
    cfg.train.log_every = 1
    t = time.perf_counter()
    train(cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - t
    log = RunDir(out).read_log()
    first, second = log[0]["elapsed_s"], log[-1]["elapsed_s"]
    return second - first, max(0.0, wall - second)


def time_scoring(
    model: str, texts: list[tuple[str, Any]], out: Path, *, seq_len: int, batch_size: int,
    precision: str, max_bytes: int,
) -> tuple[float, float]:  # fmt: skip
    """(seconds to load ``model``, seconds per held-out byte scored) on ``max_bytes`` per text
    (at most :data:`CALIBRATE_EVAL_BYTES`); the records go to ``out/results``."""
    from layra.evaluation.bpb import load_text
    from layra.evaluation.modelspec import load_spec
    from layra.evaluation.run import run_bpb

    nbytes = min(max_bytes, CALIBRATE_EVAL_BYTES)
    t = time.perf_counter()
    loaded = load_spec(model, dtype=precision)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    run_bpb(model, texts, out / "results", name="calibrate", seq_len=seq_len,
            batch_size=batch_size, dtype=precision, max_bytes=nbytes, progress=False,
            say=lambda m: None, loaded=loaded)  # fmt: skip
    score_s = time.perf_counter() - t
    scored = sum(load_text(lang, path, nbytes).n_bytes for lang, path in texts)
    return load_s, score_s / max(1, scored)


def budget_line(b: Budget, hint: str = "") -> str:
    """One line: what will be trained and scored, the prediction and what was measured."""
    if b.note in ("nothing to train", "fixed by --fixed-budget") and not b.predicted_s:
        return (f"budget: {b.tokens:,} training tokens per run, {b.eval_bytes:,} held-out bytes "
                f"per text ({b.note})")  # fmt: skip
    steps = ", ".join(f"{m} {x:.2f}" for m, x in (b.step_s or {}).items())
    what = (f"budget: {b.tokens:,} training tokens per run, {b.eval_bytes:,} held-out bytes per "
            f"text; predicted {b.predicted_s / 60:.1f} min for training + evaluation "
            f"(target {b.target_s / 60:.1f}; seconds per step measured: {steps})")  # fmt: skip
    if (b.tokens, b.eval_bytes) != (b.requested_tokens, b.requested_eval_bytes):
        what += (f" — the requested {b.requested_tokens:,} tokens / {b.requested_eval_bytes:,} "
                 f"bytes would not fit this machine, so they were scaled down{hint}")  # fmt: skip
    elif b.note != "fits":
        what += f" ({b.note})"
    return what


def time_line(b: Budget, timings: dict, comparable: bool) -> str:
    """Predicted against measured training + evaluation, or why they cannot be compared."""
    actual = timings.get("train_eval_s", 0.0)
    head = f"- time: {actual / 60:.1f} min of training + evaluation"
    if not comparable or not b.predicted_s:
        why = "runs reused from before" if not comparable else b.note
        return head + f" ({why}: no prediction to compare)"
    off = (actual - b.predicted_s) / b.predicted_s
    return head + (f", predicted {b.predicted_s / 60:.1f} ({off:+.0%}; training "
                   f"{b.predicted_train_s / 60:.1f} + evaluation {b.predicted_eval_s / 60:.1f} "
                   "predicted)")  # fmt: skip
