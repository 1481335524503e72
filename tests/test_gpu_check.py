"""bench/gpu_check.sh rehearsed on the CPU (issue 19): the GPU check's own code paths, tiny
configs, in one run; and its one-line refusals when something it needs is missing."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], tmp_path: Path, site: str | None = None, timeout: int = 240):
    env = dict(os.environ, PYTHON=sys.executable)
    if site:  # a sitecustomize that hides a package, as on a machine without it
        env["PYTHONPATH"] = os.pathsep.join([site, env.get("PYTHONPATH", "")])
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cpu_rehearsal_runs_every_case_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "results"
    proc = _run(["--cpu-rehearsal", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["mode"] == "cpu-rehearsal" and res["errors"] == []
    assert [r["recipe"] for r in res["recipes"]] == ["layra", "lora", "layer-selective"]
    for r in res["recipes"]:
        # The presets' shapes of work: checkpointing on, the steps asked for, finite losses.
        assert r["checkpointing"] is True and r["steps"] == 3 and r["finite"]
        assert all(math.isfinite(x) for x in r["losses"]) and len(r["losses"]) == 3
        assert r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 and r["plan_total_gib"] > 0
        assert r["mfu"] is None  # no dense bf16 peak is claimed for a CPU
        assert r["weights_dtype"] == "bfloat16"  # as from the bf16 8B checkpoint
        # The training path ran with datasets / gguf / lm_eval / matplotlib unimportable.
        assert r["blocked_modules"] == ["datasets", "gguf", "lm_eval", "matplotlib"]
    # Each recipe trains its own set of tensors (the presets' k / m, LoRA or whole layers).
    assert len({r["trainable"] for r in res["recipes"]}) == 3
    cmp_ = res["comparison"]
    assert set(cmp_["sides"]) == {"reference", "layra"}
    for side in cmp_["sides"].values():
        assert side["tokens_per_s"] > 0 and all(math.isfinite(x) for x in side["losses"])
    # Same weights, same blocks, same LoRA initialisation: step 1 agrees.
    assert cmp_["first_loss_diff"] < 1e-2
    md = (out / "gpu_check.md").read_text()
    assert "| layra | tiny llama |" in md and "| layer-selective |" in md
    assert "layra vs Trainer + PEFT" in md and "| reference |" in md


def test_without_a_gpu_it_stops_in_one_line(tmp_path):
    t0 = time.monotonic()
    proc = _run(["--out", str(tmp_path / "r")], tmp_path, timeout=120)
    if proc.returncode == 0:
        pytest.skip("a CUDA device is present")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("gpu_check: no CUDA device visible to torch")
    assert not (tmp_path / "r").exists()  # nothing was written
    assert time.monotonic() - t0 < 60


def test_a_missing_package_stops_it_in_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['peft'] = None\n")
    proc = _run(["--cpu-rehearsal", "--out", str(tmp_path / "r")], tmp_path, str(site), 120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("gpu_check: missing Python package peft")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_out_is_required(tmp_path):
    proc = _run(["--cpu-rehearsal"], tmp_path, timeout=60)
    assert proc.returncode == 2 and "--out" in proc.stderr


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_flops_per_token_counts_matmuls_from_the_shapes():
    """The MFU numerator against a count made from the layer shapes alone: 4 FLOPs per
    frozen and 6 per trained matmul parameter, plus 6 x seq x q_dim per layer (attention)."""
    from layra.config import load_config
    from layra.memory import LLAMA_3_1_8B, PUBLISHED_CONFIGS, inventory

    gc = _gpu_check_module()
    preset = ROOT / "configs" / "llama3.1-8b" / "layer-selective-gl.yaml"
    inv = inventory(load_config(str(preset), []), "bf16")
    assert PUBLISHED_CONFIGS["meta-llama/Llama-3.1-8B"]["hidden_size"] == LLAMA_3_1_8B.hidden
    s, seq = LLAMA_3_1_8B, 2048
    per_layer = sum(a * b for a, b in s.linear_shapes())
    head = s.vocab * s.hidden  # untied; the embedding lookup is no matmul
    matmul = s.layers * per_layer + head
    trained = 2 * per_layer + head  # first and last layer, and the head
    want = 4 * matmul + 2 * trained + 6 * s.layers * seq * s.q_dim
    assert gc.flops_per_token(inv, seq) == want
    # About 6 x 8e9 FLOPs per token would be full training; this recipe is in between.
    assert 4 * 7.5e9 < want < 6 * 8.1e9


def test_peak_flops_table_and_override():
    gc = _gpu_check_module()
    assert gc.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gc.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert gc.peak_flops("NVIDIA H200", None) == 989e12
    assert gc.peak_flops("Some Future GPU", None) is None
    assert gc.peak_flops("Some Future GPU", 500) == 500e12
    assert torch.finfo(torch.bfloat16).bits == 16


def test_version_warnings_name_packages_outside_the_declared_ranges():
    gc = _gpu_check_module()
    ok = {"torch": "2.13.0+cpu", "transformers": "5.25.0", "peft": "0.21.2", "numpy": "2.1.0"}
    assert gc.version_warnings(ok) == []
    old = dict(ok, peft="0.17.1", transformers="4.57.0")
    got = gc.version_warnings(old)
    assert len(got) == 2 and any(w.startswith("peft 0.17.1 is outside") for w in got)
