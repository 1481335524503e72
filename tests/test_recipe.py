"""The training recipe's pure parts: the step plan (steps, warm-up, which blocks a rank reads)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from layra.config import TrainConfig
from layra.errors import LayraError
from layra.train import StepPlan


def _reads(plan: StepPlan, step: int) -> list[int]:
    """Every block index step ``step`` reads, over micro-batches and ranks."""
    return [
        i
        for micro in range(plan.grad_accum)
        for rank in range(plan.world)
        for i in range(plan.n_blocks)[plan.blocks(step, micro, rank)]
    ]


@pytest.mark.parametrize(
    "batch,accum,world", [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (3, 1, 1)]
)
def test_each_epoch_reads_every_usable_block_once(batch, accum, world):
    t = TrainConfig(batch_size=batch, grad_accum=accum, epochs=2, warmup=0.1)
    plan = StepPlan.make(t, n_blocks=50, world=world)
    per_step = batch * accum * world
    assert plan.steps_per_epoch == 50 // per_step
    assert plan.total_steps == 2 * plan.steps_per_epoch
    assert plan.warmup_steps == math.ceil(0.1 * plan.total_steps)
    for epoch in range(2):
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        counts = Counter(i for s in steps for i in _reads(plan, s))
        assert counts == Counter(range(plan.steps_per_epoch * per_step))  # the tail is left out


def test_a_step_reads_the_same_blocks_for_any_number_of_processes():
    one = StepPlan.make(TrainConfig(batch_size=2, grad_accum=2), n_blocks=40, world=1)
    two = StepPlan.make(TrainConfig(batch_size=2, grad_accum=1), n_blocks=40, world=2)
    four = StepPlan.make(TrainConfig(batch_size=1, grad_accum=1), n_blocks=40, world=4)
    assert one.total_steps == two.total_steps == four.total_steps == 10
    for s in range(10):
        assert sorted(_reads(one, s)) == sorted(_reads(two, s)) == sorted(_reads(four, s))
    # Rank r of a two-process run reads the second half of each micro-batch's blocks.
    assert two.blocks(3, 0, 1) == slice(14, 16)


def test_max_steps_caps_and_too_little_data_is_refused():
    plan = StepPlan.make(TrainConfig(batch_size=2, max_steps=3, warmup=0.5), n_blocks=100, world=1)
    assert (plan.total_steps, plan.warmup_steps) == (3, 2)
    with pytest.raises(LayraError, match="3 blocks are fewer than one optimizer step needs"):
        StepPlan.make(TrainConfig(batch_size=2, grad_accum=1), n_blocks=3, world=2)


def test_should_stop_ends_after_a_checkpoint_and_the_result_carries_the_record(
    model_dirs, corpus_dir, tmp_path
):
    import tiny

    from layra.rundir import RunDir
    from layra.train import train_model

    cfg = tiny.run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "run", "lora",
                       ["train.max_steps=3", "train.trackers=none"])  # fmt: skip
    stopped = train_model(cfg, progress=False, should_stop=lambda done: done == 2)
    run = RunDir(stopped.run_dir)
    assert (stopped.steps_done, stopped.record) == (2, None) and not run.is_complete()
    assert [p.name for p in run.checkpoints.iterdir()] == ["step-2"]
    done = train_model(cfg, resume=True, progress=False)
    assert done.steps_done == 3 and [r["step"] for r in run.read_log()] == [1, 2, 3]
    assert done.record.steps == run.read_record().steps == 3
    assert done.record.final_loss == run.read_record().final_loss
