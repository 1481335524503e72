"""Multi-process training through accelerate (DDP over gloo on CPU) equals one process
with the same global batch; every shipped accelerate config loads and says what it must."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny
import torch
import yaml
from safetensors.torch import load_file

from layra.config import load_config
from layra.train import train_model

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def _overrides(model_dir, corpus, out, batch, accum):
    return [
        f"model.name_or_path={model_dir}",
        f"data.sources=[{{path: {corpus}, lang: glg}}]",
        "data.seq_len=16",
        "data.heldout_fraction=0",
        "method.name=layra",
        "method.k=1",
        "method.m=1",
        "method.dropout=0",
        "train.precision=fp32",
        "train.max_steps=4",
        "train.lr=3e-3",
        "train.warmup=0",
        f"train.batch_size={batch}",
        f"train.grad_accum={accum}",
        f"output_dir={out}",
    ]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_two_processes_give_the_loss_curve_of_one(model_dirs, corpus_dir, tmp_path):
    """2 processes x batch 1 x grad_accum 2 == 1 process x batch 4: same blocks, same curve.

    The tied Gemma model exercises DDP with one shared embedding/head tensor and
    ``no_sync`` during gradient accumulation.
    """
    mdir, corpus = model_dirs["gemma3_text"], corpus_dir / "gl.txt"
    one = tmp_path / "one"
    train_model(load_config(None, _overrides(mdir, corpus, one, 4, 1)), progress=False)

    two = tmp_path / "two"
    # torchrun starts the processes; accelerate (inside `layra train`) sees its environment,
    # sets up gloo and wraps the model in DDP. `accelerate launch --cpu --num_processes 2`
    # would start only one process (see docs/scaling.md).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "layra", "train", "--quiet", *_overrides(mdir, corpus, two, 1, 2)]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = json.loads((two / "run.json").read_text())
    assert run["processes"] == 2 and run["tied"] is True
    assert "MULTI_CPU" in json.loads((two / "provenance.json").read_text())["accelerate_state"]
    # Both runs, and both processes of the second, read one prepared (memory-mapped) dataset.
    shared = [json.loads((r / "data.json").read_text())["prepared"] for r in (one, two)]
    assert shared[0] == shared[1]
    assert torch.equal(tiny.run_blocks(one), tiny.run_blocks(two))
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4 and a[-1] < a[0]
    assert b == pytest.approx(a, abs=2e-5)
    wa = load_file(one / "adapter" / "adapter_model.safetensors")
    wb = load_file(two / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=2e-5, rtol=1e-4, msg=name)


def test_accelerate_configs_are_shipped():
    names = {p.stem for p in ACCELERATE_CONFIGS}
    assert {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"} <= names


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_loads_with_required_keys(path):
    cfg = yaml.safe_load(path.read_text())
    assert isinstance(cfg, dict)
    for key in ("compute_environment", "distributed_type", "mixed_precision", "num_processes"):
        assert key in cfg, key
    assert cfg["mixed_precision"] == "bf16"
    assert cfg["num_machines"] >= 1 and cfg["num_processes"] >= 2
    kind = cfg["distributed_type"]
    if kind == "MULTI_GPU":
        assert path.stem == "ddp"
    elif kind == "FSDP":
        f = cfg["fsdp_config"]
        # layra shards with FSDP2 (layra.distributed) and refuses FSDP1.
        assert f["fsdp_version"] == 2
    elif kind == "DEEPSPEED":
        d = cfg["deepspeed_config"]
        stage = int(path.stem.rsplit("zero", 1)[1])
        assert d["zero_stage"] == stage
        if stage == 3:
            # Saving a LoRA adapter / merged model needs the gathered 16-bit weights.
            assert d["zero3_save_16bit_model"] is True
    else:
        pytest.fail(f"{path.name}: unexpected distributed_type {kind}")

    # Every key must be one accelerate's config class knows (a typo would be ignored silently).
    from accelerate.commands.config.config_args import ClusterConfig

    known = set(ClusterConfig.__dataclass_fields__)
    assert set(cfg) <= known, set(cfg) - known
