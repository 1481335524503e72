"""Checkpoints are checked before they are loaded; --resume falls back to the newest intact
one and says which and why (issue 20, item 2)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from tiny import run_cfg

from layra.checkpoint import checkpoint_problem, safetensors_problem
from layra.errors import LayraError
from layra.train import train_model

EXTRA = ["train.max_steps=6", "train.save_every=2", "train.batch_size=1", "train.trackers=none"]


def test_safetensors_problem_sees_truncation_extension_and_bad_headers(tmp_path):
    f = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(4, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}, str(f))
    assert safetensors_problem(f) is None
    good = f.read_bytes()
    f.write_bytes(good[:-1])
    assert "is truncated" in safetensors_problem(f)
    f.write_bytes(good + b"\0")
    assert "longer than its header says" in safetensors_problem(f)
    f.write_bytes(good[:5])
    assert "truncated or not safetensors" in safetensors_problem(f)
    n = int.from_bytes(good[:8], "little")
    f.write_bytes(good[:8] + b"{" * n + good[8 + n :])
    assert "damaged header" in safetensors_problem(f)
    header = json.loads(good[8 : 8 + n])
    header["a"]["shape"] = [4, 4]  # the bytes no longer match the shape
    h = json.dumps(header).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + good[8 + n :])
    assert "damaged header (tensor a)" in safetensors_problem(f)
    assert safetensors_problem(tmp_path / "none.safetensors") == "none.safetensors is missing"


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(
    model_dirs, corpus_dir, tmp_path, capfd
):
    a = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "a", "layra", EXTRA)
    ma = train_model(a, progress=False).model
    b = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "b", "layra", EXTRA)
    train_model(b, progress=False, should_stop=lambda done: done == 4)  # "killed" after step 4
    ckpts = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2", "step-4"]
    opt = ckpts / "step-4" / "optimizer.safetensors"
    size = opt.stat().st_size
    os.truncate(opt, size // 2)
    assert checkpoint_problem(ckpts / "step-4") == (
        f"optimizer.safetensors is truncated ({size // 2:,} of {size:,} bytes)"
    )
    assert checkpoint_problem(ckpts / "step-2") is None
    capfd.readouterr()
    mb = train_model(b, resume=True, progress=False).model
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "layra: warning: resuming from step-2, not step-4: optimizer.safetensors is truncated "
        f"({size // 2:,} of {size:,} bytes) (set aside as damaged-step-4)"
    ]
    # Steps 3-6 ran again from step 2's state: the same weights as an uninterrupted run.
    sa = {n: p for n, p in ma.named_parameters() if p.requires_grad}
    sb = {n: p for n, p in mb.named_parameters() if p.requires_grad}
    for n in sa:
        torch.testing.assert_close(sa[n], sb[n], atol=0, rtol=0, msg=n)
    assert (ckpts / "damaged-step-4").is_dir()  # kept for a look, never pruned over a good one
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-2", "step-4"]  # step 4 anew
    assert checkpoint_problem(ckpts / "step-4") is None


def test_no_intact_checkpoint_is_one_line(model_dirs, corpus_dir, tmp_path):
    b = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "b", "layra", EXTRA)
    train_model(b, progress=False, should_stop=lambda done: done == 2)
    step = tmp_path / "b" / "checkpoints" / "step-2"
    (step / "state.json").write_text("{")
    with pytest.raises(LayraError) as e:
        train_model(b, resume=True, progress=False)
    assert "no intact checkpoint" in str(e.value) and "step-2: state.json is damaged" in str(
        e.value
    )
    assert "\n" not in str(e.value)
    assert step.is_dir()  # nothing moved when nothing could be resumed


def test_a_checkpoint_that_passes_the_header_check_but_fails_to_load_is_skipped_too(
    model_dirs, corpus_dir, tmp_path, capfd
):
    a = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "a", "layra", EXTRA)
    ma = train_model(a, progress=False).model
    b = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "b", "layra", EXTRA)
    train_model(b, progress=False, should_stop=lambda done: done == 4)
    state = tmp_path / "b" / "checkpoints" / "step-4" / "state.json"
    meta = json.loads(state.read_text())
    del meta["scheduler"]
    state.write_text(json.dumps(meta))
    capfd.readouterr()
    res = train_model(b, resume=True, progress=False)
    assert res.steps_done == 6
    err = capfd.readouterr().err.strip()
    assert err == (
        "layra: warning: resuming from step-2, not step-4: it does not load "
        "(KeyError: 'scheduler') (set aside as damaged-step-4)"
    )
    # step-4's half-done load (weights and moments, then the missing scheduler) left no
    # trace: step-2's load replaced all of it.
    sb = dict(res.model.named_parameters())
    for n, t in ma.named_parameters():
        if t.requires_grad:
            torch.testing.assert_close(t, sb[n], atol=0, rtol=0, msg=n)
