"""FSDP2 over two CPU processes (gloo) trains as one process does, resumes from a sharded
checkpoint, writes single-process outputs; what it cannot do is refused in one line.

All two-process cases run in one torchrun launch (tests/fsdp_worker.py): starting two
Python processes and importing torch costs more than training a tiny model.
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
from layra.train import train_model

HERE = Path(__file__).resolve().parent
# (model, method): each method once, tied and untied both covered, in ≤ 60 s of suite time.
# Tied Gemma for full (the shared embedding / head as one plain parameter), layer-selective
# and lora; untied Llama for layra (the head its own tensor, trained as a PEFT copy), which
# is also the case the resume check continues.
CASES = [
    ("gemma3_text", "full"),
    ("gemma3_text", "layer-selective"),
    ("gemma3_text", "lora"),
    ("llama", "layra"),
]
# fp32 on both sides: the only difference is the order of the gradient reduction (a sum
# over two ranks, then / 2, against one sum over four blocks) — rounding of a few ulps
# that Adam's normalised update carries forward over 4 steps.
TOL = dict(atol=5e-5, rtol=1e-4)


def _overrides(model_dir, corpus, out, method, batch, accum):
    km = ["method.k=1", "method.m=1"] if method in ("layer-selective", "layra") else []
    return [
        f"model.name_or_path={model_dir}",
        f"data.sources=[{{path: {corpus}, lang: glg}}]",
        "data.seq_len=16",
        "data.heldout_fraction=0",
        f"method.name={method}",
        *km,
        "method.dropout=0",
        "train.precision=fp32",
        "train.max_steps=4",
        "train.lr=3e-3",
        "train.warmup=0",
        "train.max_grad_norm=1.0",
        f"train.batch_size={batch}",
        f"train.grad_accum={accum}",
        f"output_dir={out}",
    ]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _outputs(run: Path) -> dict[str, torch.Tensor]:
    adapter = run / "adapter" / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else run / "trained.safetensors")


@pytest.fixture(scope="module")
def runs(model_dirs, corpus_dir, tmp_path_factory):
    """Every case trained by one process (batch 4) and by two FSDP processes (batch 1 x 2)."""

    root = tmp_path_factory.mktemp("fsdp")
    corpus = corpus_dir / "gl.txt"
    cases = []
    for arch, method in CASES:
        name = f"{arch}-{method}"
        ov = _overrides(model_dirs[arch], corpus, root / "one" / name, method, 4, 1)
        train_model(load_config(None, ov), progress=False, merge_in_place=True)
        cases.append({"overrides": _overrides(model_dirs[arch], corpus, root / name, method, 1, 2)})
    # Stopped after step 2 (a sharded checkpoint), then resumed: must end as the run above.
    resumed = _overrides(model_dirs["llama"], corpus, root / "resumed", "layra", 1, 2)
    cases += [{"overrides": resumed, "stop_after_step": 2}, {"overrides": resumed, "resume": True}]
    spec = root / "cases.json"
    spec.write_text(json.dumps(cases))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "fsdp_worker.py"), str(spec)]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", ACCELERATE_USE_FSDP="true", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # torchrun's own report ends stderr; the ranks' tracebacks are further up.
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error:" in line]
    assert proc.returncode == 0, "\n".join(errors[-20:]) or proc.stderr[-4000:]
    return root


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.parametrize(("arch", "method"), CASES, ids=[f"{a}-{m}" for a, m in CASES])
def test_fsdp_two_processes_equal_one(runs, arch, method):
    one, two = runs / "one" / f"{arch}-{method}", runs / f"{arch}-{method}"
    run = json.loads((two / "run.json").read_text())
    assert run["processes"] == 2 and run["tied"] is (arch == "gemma3_text")
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4 and a[-1] < a[0]
    assert b == pytest.approx(a, abs=TOL["atol"])
    # Same files, same names, same shapes: the outputs of a single-process run.
    assert sorted(run["outputs"]) == sorted(json.loads((one / "run.json").read_text())["outputs"])
    wa, wb = _outputs(one), _outputs(two)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], **TOL, msg=name)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch built without gloo")
def test_fsdp_resume_from_sharded_checkpoint_ends_as_uninterrupted(runs):
    resumed, straight = runs / "resumed", runs / "llama-layra"
    ckpt = resumed / "checkpoints" / "step-2"
    assert {p.name for p in ckpt.iterdir()} == {
        "shard-0.safetensors",
        "shard-1.safetensors",
        "state.json",
    }
    # Each rank holds about half of every trained tensor (dim 0 sharded).
    s0, s1 = (load_file(ckpt / f"shard-{r}.safetensors") for r in (0, 1))
    emb = next(k for k in s0 if k.startswith("param.") and "embed_tokens" in k)
    full = _outputs(straight)
    emb_full = next(v for k, v in full.items() if "embed_tokens" in k)
    assert s0[emb].shape[0] + s1[emb].shape[0] == emb_full.shape[0]
    assert _losses(resumed) == _losses(straight)
    # `layra plan`'s FSDP state for this run (trained tensors and moments, sharded over 2)
    # against what rank 0 really held: its shard of the checkpoint.
    from layra.memory import inventory, plan_memory

    inv = inventory(load_config(str(runs / "resumed" / "config.yaml"), []), "fp32")
    plan = plan_memory(inv, "fsdp", 2)
    planned = inv.count(True) * 4 / 2 + plan.term("optimizer moments").nbytes
    held = sum(t.nbytes for k, t in s0.items() if k.startswith(("param.", "opt.")) and t.dim())
    assert held == pytest.approx(planned, rel=0.2)
    wa, wb = _outputs(straight), _outputs(resumed)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name  # same shards, same ops: bit-identical


def test_vector_extract_reads_fsdp_outputs(runs, tmp_path):
    from layra.vectors import extract_run, load_vector

    for name in ("llama-layra", "gemma3_text-full"):
        one = extract_run(runs / "one" / name, tmp_path / f"one-{name}")
        two = extract_run(runs / name, tmp_path / f"two-{name}")
        assert one["method"] == two["method"]
        va, vb = load_vector(tmp_path / f"one-{name}"), load_vector(tmp_path / f"two-{name}")
        assert va.entries.keys() == vb.entries.keys()
        for key, e in va.entries.items():
            torch.testing.assert_close(vb.delta_rows(vb.entries[key]), va.delta_rows(e), **TOL)


@pytest.mark.parametrize(
    ("env", "extra", "match"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, ["method.embeddings=rows"], "rows needs whole tensors"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, [], "DeepSpeed ZeRO is not supported"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [], "fsdp_version: 2"),
        ({"ACCELERATE_USE_FSDP": "true"}, ["merge=true"], "--merge is not supported under FSDP"),
    ],
    ids=["rows", "deepspeed", "fsdp1", "merge"],
)
def test_sharded_engines_refuse_before_writing(
    model_dirs, corpus_dir, tmp_path, monkeypatch, env, extra, match
):
    from layra.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    ov = _overrides(model_dirs["llama"], corpus_dir / "gl.txt", out, "layra", 1, 1)
    if "method.embeddings=rows" in extra:
        extra = [
            *extra,
            f"method.embedding_rows.reference=[{{path: {corpus_dir / 'en.txt'}, lang: eng}}]",
        ]
    with pytest.raises(LayraError, match=match):
        train_model(load_config(None, ov + extra))
    assert not out.exists()
    assert main(["train", "--quiet", *ov, *extra]) == 2
