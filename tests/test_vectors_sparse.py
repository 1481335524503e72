"""Row-sparse embedding / head deltas, bf16 deltas, and an apply that imports no transformers.

A ``rows`` entry must be the dense delta exactly (the rows it leaves out are zero),
apply to the same bits as the dense vector, and give way to ``dense`` when most
rows moved. ``--delta-dtype bf16`` must stay within bf16's rounding bound.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_vectors_fixtures import make_adapter_run

from layra.errors import LayraError
from layra.vectors import apply_to_dir, combine, extract_run, load_vector
from layra.vectors import format as vformat
from layra.vectors.source import ModelDir

EMB = "model.embed_tokens.weight"
MOVED = list(range(5, 21)) + [150, 299]  # the embedding rows the "training" changed


def _rows_run(tmp: Path, base: Path, rows=MOVED, seed: int = 0) -> Path:
    """A layra run whose embedding copy differs from the base only on ``rows``."""
    run, _ = make_adapter_run(tmp / f"run{seed}", base, "layra", seed=seed)
    f = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(f)
    start = load_file(next(base.glob("*.safetensors")))
    noise = 0.05 * torch.randn(len(rows), 32, generator=torch.Generator().manual_seed(seed))
    for key in [k for k in tensors if k.endswith((EMB, "lm_head.weight"))]:
        name = (
            "lm_head.weight"
            if key.endswith("lm_head.weight") and "lm_head.weight" in start
            else EMB
        )
        t = start[name].clone()  # a tied model saves the one tensor under both names
        t[rows] += noise
        tensors[key] = t
    save_file(tensors, f)
    return run


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_rows_entry_is_the_dense_delta_exactly(arch, model_dirs, tmp_path, monkeypatch):
    base = model_dirs[arch]
    run = _rows_run(tmp_path, base)
    sparse = extract_run(run, tmp_path / "sparse")
    monkeypatch.setattr(vformat, "SPARSE_MAX_FRACTION", 0.0)  # force the dense form
    dense = extract_run(run, tmp_path / "dense")
    assert sparse["tensors"][EMB]["kind"] == "rows"
    assert sparse["tensors"][EMB]["rows"] == len(MOVED)
    assert dense["tensors"][EMB]["kind"] == "dense"
    vs, vd = load_vector(tmp_path / "sparse"), load_vector(tmp_path / "dense")
    d_sparse, d_dense = vs.delta_rows(vs.entries[EMB]), vd.delta_rows(vd.entries[EMB])
    assert torch.equal(d_sparse, d_dense)
    assert torch.equal(vs.row_ids(vs.entries[EMB]), torch.tensor(MOVED))
    # Block by block too (apply reads a few rows at a time), across a block edge.
    assert torch.equal(vs.delta_rows(vs.entries[EMB], 10, 160), d_dense[10:160])
    # Stored bytes: the moved rows only.
    assert vs.stored[f"{EMB}::values"].nbytes == len(MOVED) * 32 * 4
    assert vd.stored[EMB].nbytes == 300 * 32 * 4

    apply_to_dir(base, [(tmp_path / "sparse", 0.7)], tmp_path / "a", protect_rows="none")
    apply_to_dir(base, [(tmp_path / "dense", 0.7)], tmp_path / "b", protect_rows="none")
    a, b = (
        load_file(tmp_path / "a" / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untouched = [r for r in range(a[EMB].shape[0]) if r not in MOVED]
    start = load_file(next(base.glob("*.safetensors")))[EMB]
    assert torch.equal(a[EMB][untouched], start[untouched])  # bit-identical rows


def test_mostly_moved_rows_fall_back_to_dense(model_dirs, tmp_path):
    run = _rows_run(tmp_path, model_dirs["llama"], rows=list(range(0, 200)))
    m = extract_run(run, tmp_path / "vec")
    assert m["tensors"][EMB]["kind"] == "dense"


def test_combine_of_row_vectors_keeps_rows_and_sums_exactly(model_dirs, tmp_path):
    base = model_dirs["llama"]
    r1 = _rows_run(tmp_path, base, rows=[5, 6, 7], seed=1)
    r2 = _rows_run(tmp_path, base, rows=[7, 8, 250], seed=2)
    extract_run(r1, tmp_path / "v1")
    extract_run(r2, tmp_path / "v2")
    m = combine([(tmp_path / "v1", 0.5), (tmp_path / "v2", -1.5)], tmp_path / "sum")
    assert m["tensors"][EMB] == {"kind": "rows", "shape": [300, 32], "rows": 5}
    v1, v2, vs = (load_vector(tmp_path / n) for n in ("v1", "v2", "sum"))
    want = 0.5 * v1.delta_rows(v1.entries[EMB]) - 1.5 * v2.delta_rows(v2.entries[EMB])
    torch.testing.assert_close(vs.delta_rows(vs.entries[EMB]), want, rtol=0, atol=1e-7)
    zero = combine([(tmp_path / "v1", 1.0), (tmp_path / "v1", -1.0)], tmp_path / "zero")
    assert zero["tensors"][EMB]["rows"] == 0  # Δ − Δ: named, no bytes
    vz = load_vector(tmp_path / "zero")
    assert not vz.delta_rows(vz.entries[EMB]).any()


def test_bf16_deltas_stay_within_bf16_rounding(model_dirs, tmp_path):
    base = model_dirs["qwen2"]
    run = _rows_run(tmp_path, base, rows=list(range(0, 300)))  # every row: dense
    m32 = extract_run(run, tmp_path / "v32")
    m16 = extract_run(run, tmp_path / "v16", dtype="bf16")
    assert m16["delta_dtype"] == "bfloat16" and m32["delta_dtype"] == "float32"
    v32, v16 = load_vector(tmp_path / "v32"), load_vector(tmp_path / "v16")
    assert v16.stored[EMB].dtype == torch.bfloat16
    assert v16.stored[next(k for k in v16.stored if k.endswith("::A"))].dtype == torch.float32
    d32, d16 = v32.delta_rows(v32.entries[EMB]), v16.delta_rows(v16.entries[EMB])
    err = (d16 - d32).abs()
    assert bool((err <= d32.abs() * 2.0**-8).all())  # round to nearest, 8-bit significand
    assert err.max() > 0  # it did round
    with pytest.raises(LayraError, match="delta dtype"):
        extract_run(run, tmp_path / "bad", dtype="fp8")


def test_corrupt_row_ids_are_refused(model_dirs, tmp_path):
    run = _rows_run(tmp_path, model_dirs["llama"])
    extract_run(run, tmp_path / "vec")
    f = tmp_path / "vec" / "delta.safetensors"
    t = load_file(f)
    t[f"{EMB}::rows"] = t[f"{EMB}::rows"].flip(0).contiguous()
    save_file(t, f)
    v = load_vector(tmp_path / "vec")
    with pytest.raises(LayraError, match="not ascending"):
        v.delta_rows(v.entries[EMB])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma3_text"])
def test_json_fingerprint_equals_the_transformers_one(arch, model_dirs, tmp_path):
    src = ModelDir(model_dirs[arch])
    assert src.fingerprint(fast=True) == src.fingerprint()
    # A config.json without head_dim (as many real ones are): the class default is derived.
    d = tmp_path / "m"
    d.mkdir()
    for p in model_dirs[arch].iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    if cfg.pop("head_dim", None) is not None and arch == "gemma3_text":
        return  # gemma's head_dim is not hidden / heads; its configs carry it
    (d / "config.json").write_text(json.dumps(cfg))
    src = ModelDir(d)
    assert src.fast_config is not None
    assert src.fingerprint(fast=True) == src.fingerprint()


def test_apply_to_a_directory_imports_no_transformers(model_dirs, tmp_path):
    base = model_dirs["llama"]
    extract_run(_rows_run(tmp_path, base), tmp_path / "vec")
    code = (
        "import sys\n"
        "from layra.vectors import apply_to_dir\n"
        f"rec = apply_to_dir({str(base)!r}, [({str(tmp_path / 'vec')!r}, 1.0)], "
        f"{str(tmp_path / 'out')!r}, protect_rows='none')\n"
        "print(rec['output_fingerprint']['weights'])\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    env_path = str(Path(__file__).resolve().parents[1] / "src")
    got = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert got.returncode == 0, got.stderr
    # The fingerprint recorded the fast way is the one transformers computes.
    assert got.stdout.split()[-1] == ModelDir(tmp_path / "out").fingerprint()["weights"]
