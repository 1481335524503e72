"""FSDP2's mixed-precision and CPU-offload options (train.fsdp_param_dtype, train.fsdp_offload):
they train on two CPU processes (gloo) as the default FSDP path does, within a stated
tolerance, and `layra plan` accounts for them.

One torchrun launch runs every case (tests/fsdp_worker.py), as in tests/test_fsdp.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from layra.config import load_config
from layra.errors import LayraError

HERE = Path(__file__).resolve().parent
# Tied Gemma `full` (every weight fp32, so the bf16 policy changes every matmul input and the
# embedding's output) and untied Llama `layra` (frozen bf16 weights, fp32 LoRA and head).
MODELS = [("gemma3_text", "full"), ("llama", "layra")]
POLICIES = {
    "stored": [],
    "bf16": ["train.fsdp_param_dtype=bf16"],
    "offload": ["train.fsdp_offload=true"],
}
# bf16 policy against autocast over fp32 shards: the policy also rounds what autocast keeps
# in fp32 (the embedding output and so the residual stream, norm weights), each rounding
# relative 2^-9; over 4 steps at lr 3e-3 the loss (about 5.7) moved by at most 2.4e-3 when
# measured. 1e-2 (0.2 % of the loss) leaves room for another CPU's kernels, and is still far
# below what a broken reduction (a gradient summed but not averaged, a shard lost) changes.
MP_ATOL = 1e-2


def _overrides(model_dir, corpus, out, method, extra):
    km = ["method.k=1", "method.m=1"] if method == "layra" else []
    return [
        f"model.name_or_path={model_dir}",
        f"data.sources=[{{path: {corpus}, lang: glg}}]",
        "data.seq_len=16",
        "data.heldout_fraction=0",
        f"method.name={method}",
        *km,
        "method.dropout=0",
        "train.precision=bf16",
        "train.max_steps=4",
        "train.lr=3e-3",
        "train.warmup=0",
        "train.batch_size=1",
        "train.grad_accum=2",
        f"output_dir={out}",
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(model_dirs, corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-policies")
    cases = []
    for arch, method in MODELS:
        for tag, extra in POLICIES.items():
            if method == "layra" and tag == "offload":
                continue  # one offload case is enough for the code path
            out = root / f"{arch}-{method}-{tag}"
            cases.append(
                {
                    "overrides": _overrides(
                        model_dirs[arch], corpus_dir / "gl.txt", out, method, extra
                    )
                }
            )
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "fsdp_worker.py"), str(spec)]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", ACCELERATE_USE_FSDP="true", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    assert proc.returncode == 0, "\n".join(errors[-20:]) or proc.stderr[-4000:]
    return root


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _outputs(run: Path) -> dict[str, torch.Tensor]:
    adapter = run / "adapter" / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else run / "trained.safetensors")


gloo = pytest.mark.skipif(
    not torch.distributed.is_gloo_available(), reason="torch built without gloo"
)


@gloo
@pytest.mark.parametrize(("arch", "method"), MODELS, ids=[f"{a}-{m}" for a, m in MODELS])
def test_bf16_policy_trains_as_stored_within_tolerance(runs, arch, method):
    stored, mp = runs / f"{arch}-{method}-stored", runs / f"{arch}-{method}-bf16"
    a, b = _losses(stored), _losses(mp)
    assert len(a) == len(b) == 4 and b[-1] < b[0]
    assert all(map(torch.isfinite, torch.tensor(b)))
    assert b == pytest.approx(a, abs=MP_ATOL)
    if method == "full":
        # Every weight is fp32 here: were the policy not applied, the losses would be equal.
        assert a != b
    cfg = load_config(str(mp / "config.yaml"), [])
    assert cfg.train.fsdp_param_dtype == "bf16"  # the run directory records the policy
    # The optimizer's master weights stay fp32: the outputs are as the default path writes them.
    wa, wb = _outputs(stored), _outputs(mp)
    assert wa.keys() == wb.keys()
    for name, t in wb.items():
        assert t.dtype == wa[name].dtype and t.shape == wa[name].shape, name
        assert torch.isfinite(t).all(), name


@gloo
def test_cpu_offload_trains_as_stored(runs):
    # On CPU processes the offloaded state is where it was, and the optimizer step runs on
    # the CPU either way: the same operations, so the same numbers.
    stored, off = runs / "gemma3_text-full-stored", runs / "gemma3_text-full-offload"
    assert _losses(off) == _losses(stored)
    wa, wb = _outputs(stored), _outputs(off)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_bf16_policy_needs_bf16_precision():
    ov = ["model.name_or_path=x", "data.sources=[{path: x, lang: glg}]"]
    with pytest.raises(LayraError, match="fsdp_param_dtype=bf16 computes in bf16"):
        load_config(None, [*ov, "train.precision=fp32", "train.fsdp_param_dtype=bf16"])
    with pytest.raises(LayraError, match="fsdp_param_dtype: 'fp16' is not allowed"):
        load_config(None, [*ov, "train.fsdp_param_dtype=fp16"])


def test_offload_asks_accelerate_for_a_cpu_backend(monkeypatch):
    from layra.distributed import request_cpu_backend

    ov = ["model.name_or_path=x", "data.sources=[{path: x, lang: glg}]"]
    monkeypatch.delenv("FSDP_OFFLOAD_PARAMS", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    request_cpu_backend(load_config(None, ov))
    assert "FSDP_OFFLOAD_PARAMS" not in os.environ
    request_cpu_backend(load_config(None, [*ov, "train.fsdp_offload=true"]))
    assert os.environ["FSDP_OFFLOAD_PARAMS"] == "true"  # accelerate: cuda:nccl,cpu:gloo


def test_policies_are_the_fsdp2_objects_asked_for():
    from layra.distributed import fsdp_policies

    assert fsdp_policies() == {}
    mp = fsdp_policies("bf16")["mp_policy"]
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert set(fsdp_policies("stored", offload=True)) == {"offload_policy"}
    with pytest.raises(ValueError):
        fsdp_policies("fp16")


@pytest.fixture(scope="module")
def full_8b():
    from layra.memory import ROOT, inventory

    cfg = load_config(str(ROOT / "configs" / "llama3.1-8b" / "full-gl.yaml"), [])
    return inventory(cfg, "bf16")


def test_plan_bf16_policy_drops_autocast_copies_and_halves_gathers(full_8b):
    from layra.memory import plan_memory

    stored = plan_memory(full_8b, "fsdp", 2)
    mp = plan_memory(full_8b, "fsdp", 2, fsdp_param_dtype="bf16")
    names = {t.name for t in mp.terms}
    assert "autocast copies" in {t.name for t in stored.terms} and "autocast copies" not in names
    # `full` holds every weight in fp32: gathered in bf16 they take half the bytes.
    assert mp.term("gathered weights").nbytes * 2 == stored.term("gathered weights").nbytes
    # The sharded state (fp32 masters, gradients, moments) is what it was.
    assert mp.state == stored.state
    # The reduce-scatter's fp32 copy of the root unit's gradient: embedding + head, x 4 B.
    s = full_8b.shape
    assert mp.term("reduce copies").nbytes == 4 * (2 * s.vocab * s.hidden + s.hidden)
    assert mp.total < stored.total
    assert mp.term("activations").dtype == "bf16 residual"


def test_plan_offload_moves_sharded_state_to_host(full_8b):
    from layra.memory import plan_memory

    stored = plan_memory(full_8b, "fsdp", 2)
    off = plan_memory(full_8b, "fsdp", 2, fsdp_offload=True)
    moved = sum(stored.term(n).nbytes for n in ("weights", "gradients", "optimizer moments"))
    assert off.host == pytest.approx(moved)
    assert off.total == pytest.approx(stored.total - moved)
    assert "host per process" in off.text()
    # Not under fsdp: nothing moves, and the plan says the option is ignored.
    ddp = plan_memory(full_8b, "ddp", 2, fsdp_offload=True)
    assert ddp.host == 0 and ddp.total == plan_memory(full_8b, "ddp", 2).total
    assert any("fsdp only" in n for n in ddp.notes)


def test_layra_plan_shows_the_policy_and_refuses_fp32(capsys):
    from layra.cli import main
    from layra.memory import ROOT

    preset = str(ROOT / "configs" / "llama3.1-8b" / "full-gl.yaml")
    args = ["plan", "--config", preset, "--launcher", "fsdp", "--gpus", "2"]
    assert main([*args, "train.fsdp_param_dtype=bf16"]) == 0
    out = capsys.readouterr().out
    assert "FSDP2 params gathered in bf16" in out and "reduce copies" in out
    assert main([*args, "train.fsdp_param_dtype=bf16", "--precision", "fp32"]) == 2
    assert "plan it with --precision bf16" in capsys.readouterr().err
