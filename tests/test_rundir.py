"""RunDir / RunRecord: the one reader and writer of a run directory's files."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_vectors_fixtures import make_adapter_run

from layra.errors import LayraError
from layra.rundir import RUN_SCHEMA, RunDir, RunRecord
from layra.vectors import extract_run


def test_record_round_trips_and_keeps_unknown_keys(tmp_path):
    rec = RunRecord(method="layra", base_model="m", plan={"lora_layers": [0, 3]}, steps=2)
    rd = RunDir(tmp_path)
    rd.write_record(rec)
    on_disk = json.loads(rd.run_json.read_text())
    assert on_disk["schema"] == RUN_SCHEMA and on_disk["status"] == "complete"
    assert RunRecord.from_json(on_disk) == rec
    # A newer writer's key survives a read and a write by this version.
    rd.run_json.write_text(json.dumps({**on_disk, "future": 1}))
    again = rd.read_record()
    assert again.extra == {"future": 1} and again.to_json()["future"] == 1


def test_read_record_refusals(tmp_path):
    rd = RunDir(tmp_path / "run")
    with pytest.raises(LayraError, match="does not exist"):
        rd.read_record()
    rd.path.mkdir()
    assert not rd.is_complete() and not rd.looks_like_run()
    with pytest.raises(LayraError, match="unfinished"):
        rd.read_record()
    rd.write_record(RunRecord(method="lora", base_model="", status="complete"))
    with pytest.raises(LayraError, match="names no base_model"):
        rd.read_record()
    rd.write_record(RunRecord(method="lora", base_model="m", status="running"))
    with pytest.raises(LayraError, match="not complete"):
        rd.read_record()
    with pytest.raises(LayraError, match="neither adapter/ nor trained.safetensors"):
        rd.artifact()


def test_extracted_manifest_says_which_layers_trained(model_dirs, tmp_path):
    """extract used to copy lora_layers from a level run.json never has: always null."""
    run, _ = make_adapter_run(tmp_path / "run", model_dirs["llama"], method="layra")
    rd = RunDir(run)
    rec = rd.read_record()
    rd.write_record(dataclasses.replace(rec, plan={"lora_layers": [0, 3], "full_layers": []}))
    m = extract_run(run, tmp_path / "vec")
    assert m["source"]["run"]["lora_layers"] == [0, 3]
    assert m["source"]["run"]["full_layers"] == []
