"""--resume with other settings (issue 20, item 4): refused in one line listing the keys,
except those that may change mid-run, which are applied and recorded; config.yaml always
describes what trained."""

from __future__ import annotations

import json

import pytest
import yaml
from tiny import run_cfg

from layra.errors import LayraError
from layra.rundir import RESUME_MAY_CHANGE, RunDir
from layra.train import train_model

BASE = ["train.max_steps=4", "train.save_every=2", "train.batch_size=1", "train.trackers=none"]


def _stopped_run(model_dirs, corpus_dir, out):
    cfg = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", out, "lora", BASE)
    train_model(cfg, progress=False, should_stop=lambda done: done == 2)
    return cfg


def test_resume_with_a_changed_lr_is_refused_and_changes_nothing(model_dirs, corpus_dir, tmp_path):
    out = tmp_path / "run"
    _stopped_run(model_dirs, corpus_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    cfg = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", out, "lora",
                  [*BASE, "train.lr=0.003", "train.warmup=0.5"])  # fmt: skip
    with pytest.raises(LayraError) as e:
        train_model(cfg, resume=True, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"--resume: settings differ from the run in {out} (")
    assert "train.lr 0.0003 -> 0.003" in msg and "train.warmup 0.05 -> 0.5" in msg
    assert "cannot change mid-run" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr"] == 3e-4


def test_resume_applies_and_records_what_may_change(model_dirs, corpus_dir, tmp_path, capsys):
    assert "train.max_steps" in RESUME_MAY_CHANGE and "train.lr" not in RESUME_MAY_CHANGE
    out = tmp_path / "run"
    _stopped_run(model_dirs, corpus_dir, out)
    cfg = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", out, "lora",
                  [*BASE, "train.max_steps=6", "train.log_every=2"])  # fmt: skip
    res = train_model(cfg, resume=True, progress=True)
    assert res.record.steps == 6
    said = capsys.readouterr().out
    assert "resume: applying train.max_steps 4 -> 6, train.log_every 1 -> 2 from step 2" in said, (
        said
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())["train"]
    assert saved["max_steps"] == 6 and saved["log_every"] == 2
    rows = [json.loads(x) for x in (out / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["changed"]) for r in rows] == [
        (2, {"train.max_steps": [4, 6], "train.log_every": [1, 2]})
    ]
    assert RunDir(out).resume_changes(cfg) == ({}, {})  # config.yaml now says what trained
