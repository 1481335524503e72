"""precision: auto decides from the hardware; both CPU kinds are tested by forcing the probe."""

import json

import pytest
import torch
from tiny import run_cfg

from layra import precision as P
from layra.errors import LayraError

# Measured 1024x640 @ 640x8192 on the two kinds of machine this project runs on.
AVX2_EPYC = P.MatmulProbe(fp32_gflops=20.9, bf16_gflops=0.2, shape=(128, 256, 512), threads=2)
AMX_XEON = P.MatmulProbe(fp32_gflops=60.0, bf16_gflops=180.0, shape=(128, 256, 512), threads=2)


@pytest.fixture
def cpu_kind(monkeypatch):
    """Force the probe and the CPU flags: ``cpu_kind("avx2")`` or ``cpu_kind("amx")``."""

    def force(kind: str, flags: bool | None = None):
        probe = AVX2_EPYC if kind == "avx2" else AMX_XEON
        native = (kind != "avx2") if flags is None else flags
        monkeypatch.setattr(P, "probe_cpu_matmul", lambda: probe)
        monkeypatch.setattr(P, "native_bf16_flags", lambda: native)
        monkeypatch.setattr(P, "_announced", set())

    return force


def test_auto_is_fp32_on_an_avx2_cpu_and_says_why(cpu_kind):
    cpu_kind("avx2")
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "fp32" and p.torch_dtype == torch.float32 and p.mixed_precision == "no"
    assert p.line() == (
        "precision: fp32 — this CPU has no AVX512-BF16/AMX (0.2 vs 20.9 GFLOP/s bf16 vs fp32 matmul)"
    )
    assert p.to_dict()["probe"]["bf16_gflops"] == 0.2 and "cpu" in p.to_dict()


def test_auto_is_bf16_where_bf16_matmul_is_fast(cpu_kind):
    cpu_kind("amx")
    p = P.resolve_precision("auto", "cpu")
    assert p.name == "bf16" and p.mixed_precision == "bf16"
    assert "fast (180 vs 60 GFLOP/s" in p.reason


def test_flags_without_speed_or_speed_without_flags_stay_fp32(cpu_kind):
    cpu_kind("avx2", flags=True)  # flags claim bf16, but the measured matmul is slow
    assert P.resolve_precision("auto", "cpu").name == "fp32"
    cpu_kind("amx", flags=False)  # fast probe on an x86 CPU without the flags: distrust it
    assert P.resolve_precision("auto", "cpu").name == "fp32"
    cpu_kind("amx", flags=None)  # flags unknown (not x86): the probe decides
    assert P.resolve_precision("auto", "cpu").name == "bf16"


def test_a_busy_machine_does_not_flip_a_native_bf16_cpu(cpu_kind, monkeypatch):
    # Under load a 0.1 s probe can read bf16 slower than fp32 on an AMX Xeon; only a
    # ~100x gap (the reference loop) is a real veto.
    cpu_kind("amx")
    noisy = P.MatmulProbe(fp32_gflops=4.3, bf16_gflops=2.2, shape=(128, 256, 512), threads=2)
    monkeypatch.setattr(P, "probe_cpu_matmul", lambda: noisy)
    assert P.resolve_precision("auto", "cpu").name == "bf16"
    assert "SLOW" not in P.resolve_precision("bf16", "cpu").reason


def test_explicit_bf16_is_obeyed_with_one_warning_where_slow(cpu_kind, capsys):
    cpu_kind("avx2")
    p = P.resolve_precision("bf16", "cpu")
    assert p.name == "bf16" and "SLOW" in p.reason
    P.announce(p)
    P.announce(p)  # once per process
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("layra: warning: precision: bf16")
    assert "0.2 vs 20.9" in err[0]


def test_fp32_needs_no_probe_and_multi_process_decides_from_flags(cpu_kind, monkeypatch):
    cpu_kind("amx")

    def boom():
        raise AssertionError("probed")

    monkeypatch.setattr(P, "probe_cpu_matmul", boom)
    assert P.resolve_precision("fp32", "cpu").name == "fp32"
    assert P.resolve_precision("auto", "cpu", deterministic=True).name == "bf16"
    cpu_kind("avx2")
    monkeypatch.setattr(P, "probe_cpu_matmul", boom)
    assert P.resolve_precision("auto", "cpu", deterministic=True).name == "fp32"


def test_bad_precision_names_are_refused():
    with pytest.raises(LayraError, match="precision must be one of auto, bf16, fp32"):
        P.resolve_precision("fp8", "cpu")
    assert P.normalize_precision("bfloat16") == "bf16"


def test_the_real_probe_measures_both_dtypes():
    probe = P.probe_cpu_matmul()
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0 and probe.speedup > 0


@pytest.mark.parametrize("kind", ["avx2", "amx"])
def test_train_auto_follows_the_cpu_and_records_it(
    cpu_kind, kind, model_dirs, corpus_dir, tmp_path
):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from layra.train import train_model

    cpu_kind(kind)
    # A bf16-stored checkpoint: frozen weights stay bf16 only when bf16 is the chosen precision.
    mdir = tmp_path / "bf16model"
    model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).to(torch.bfloat16)
    model.save_pretrained(mdir)
    for f in model_dirs["llama"].glob("*token*"):
        (mdir / f.name).write_bytes(f.read_bytes())
    cfg = run_cfg(mdir, corpus_dir / "gl.txt", tmp_path / "run", "lora",
                  ["train.precision=auto", "train.max_steps=2"])  # fmt: skip
    result = train_model(cfg, progress=False)
    out, trained = result.run_dir, result.model
    want = "fp32" if kind == "avx2" else "bf16"
    run = json.loads((out / "run.json").read_text())
    prov = json.loads((out / "provenance.json").read_text())
    assert run["precision"]["name"] == prov["precision"]["name"] == want
    assert run["precision"]["requested"] == "auto"
    frozen = {p.dtype for n, p in trained.named_parameters() if not p.requires_grad}
    assert frozen == {torch.float32 if kind == "avx2" else torch.bfloat16}
    assert all(
        t.dtype == torch.float32
        for t in load_file(out / "adapter" / "adapter_model.safetensors").values()
    )


def test_resumed_auto_run_keeps_its_precision(cpu_kind, model_dirs, corpus_dir, tmp_path):
    from layra.train import train_model

    cpu_kind("amx")
    cfg = run_cfg(model_dirs["llama"], corpus_dir / "gl.txt", tmp_path / "run", "lora",
                  ["train.precision=auto", "train.max_steps=4"])  # fmt: skip
    train_model(cfg, progress=False, should_stop=lambda done: done == 2)
    cpu_kind("avx2")  # the probe now says otherwise: the run must not switch mid-way
    out = train_model(cfg, resume=True, progress=False).run_dir
    run = json.loads((out / "run.json").read_text())
    assert run["precision"]["name"] == "bf16" and "kept from the run" in run["precision"]["reason"]


def test_eval_auto_dtype_is_resolved_and_recorded(cpu_kind, model_dirs, tmp_path):
    from layra.evaluation.run import run_bpb

    cpu_kind("avx2")
    text = tmp_path / "gl.txt"
    text.write_text("unha casa branca\n\noutra casa azul\n")
    (rec,) = run_bpb(str(model_dirs["llama"]), [("glg", text)], tmp_path / "store",
                     seq_len=16, progress=False, say=lambda m: None)  # fmt: skip
    assert rec["settings"]["dtype"] == "fp32"
    assert rec["provenance"]["precision"]["name"] == "fp32"
