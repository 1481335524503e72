"""Every refusal of ``layra vector``: one line on stderr, exit 2, output untouched."""

import json

import pytest
import tiny
import torch
from safetensors.torch import load_file, save_file
from test_vectors_fixtures import make_adapter_run, make_run

from layra.cli import main
from layra.errors import LayraError
from layra.vectors import apply_to_dir, extract_run, load_vector


@pytest.fixture(scope="module")
def vecs(model_dirs, tmp_path_factory):
    """θ0 = tiny llama; Δ1 (layra, from θ0); θ′ = θ0 + Δ1; Δ2 (layra, from θ′); a sibling."""
    root = tmp_path_factory.mktemp("refusals")
    base = model_dirs["llama"]
    run1, _ = make_run(root / "run1", base, "layra", seed=1)
    extract_run(run1, root / "d1")
    apply_to_dir(base, [(root / "d1", 1.0)], root / "theta1")
    run2, _ = make_adapter_run(root / "run2", root / "theta1", "layra", seed=2)
    extract_run(run2, root / "d2")
    tok = tiny.make_tokenizer()
    for name, model in {
        "sibling": tiny.make_model("llama", len(tok), seed=7),
        "vocab301": tiny.make_model("llama", 301),
        "two_layers": tiny.make_model("llama", len(tok), layers=2),
        "tied": tiny.make_model("llama", len(tok), tied=True),
    }.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return {
        "root": root,
        "base": base,
        "run1": run1,
        "run2": run2,
        "d1": root / "d1",
        "d2": root / "d2",
        "theta1": root / "theta1",
        "mistral": model_dirs["mistral"],
    }


def refused(capsys, argv, out=None, match=""):
    """Run the CLI; assert a one-line refusal containing ``match`` and no output written."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("layra: error: ") and "\n" not in err, err
    assert match in err, err
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))  # no half-written leftovers
    return err


def test_start_model_refusals(vecs, tmp_path, capsys):
    v = vecs
    out = tmp_path / "out"
    # Single stage onto other weights; series vector onto θ0; merge with a series vector.
    refused(
        capsys,
        ["vector", "apply", str(v["root"] / "sibling"), str(v["d1"]), "--out", str(out)],
        out,
        "trained from other weights",
    )
    refused(
        capsys,
        ["vector", "apply", str(v["base"]), f"{v['d2']}:0.5", "--out", str(out)],
        out,
        "--force",
    )
    refused(
        capsys,
        ["vector", "apply", str(v["base"]), f"{v['d1']}:0.5", f"{v['d2']}:0.5", "--out", str(out)],
        out,
        str(v["d2"]),
    )
    # Another architecture: neither --instruct nor --force helps.
    refused(
        capsys,
        [
            "vector",
            "apply",
            str(v["mistral"]),
            str(v["d1"]),
            "--out",
            str(out),
            "--instruct",
            "--force",
        ],
        out,
        "different architecture or tokenizer",
    )
    # --force waives only the weights check, and the output says so.
    assert (
        main(
            [
                "vector",
                "apply",
                str(v["root"] / "sibling"),
                str(v["d1"]),
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert json.loads((out / "layra_vector_apply.json").read_text())["forced"] is True


def test_combine_refuses_vectors_from_different_starts(vecs, tmp_path, capsys):
    out = tmp_path / "c"
    refused(
        capsys,
        ["vector", "combine", f"{vecs['d1']}:1", f"{vecs['d2']}:0.5", "--out", str(out)],
        out,
        "different weights",
    )
    refused(capsys, ["vector", "combine", str(vecs["d1"]), "--out", str(out)], out, "VEC:λ")
    assert (
        main(
            [
                "vector",
                "combine",
                f"{vecs['d1']}:1",
                f"{vecs['d2']}:0.5",
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert load_vector(out).manifest["forced"] is True


def test_shape_vocabulary_tensor_and_tying_refusals(vecs, tmp_path, capsys):
    r, d1, out = vecs["root"], str(vecs["d1"]), tmp_path / "out"
    refused(
        capsys,
        ["vector", "apply", str(r / "vocab301"), d1, "--out", str(out), "--force"],
        out,
        "vocabulary mismatch: vector",
    )
    refused(
        capsys,
        ["vector", "apply", str(r / "two_layers"), d1, "--out", str(out), "--force"],
        out,
        "changes model.layers.3.",
    )
    refused(
        capsys,
        ["vector", "apply", str(r / "tied"), d1, "--out", str(out), "--force"],
        out,
        "but " + str(r / "tied") + " ties them",
    )


def test_non_float_target_tensor_is_refused(vecs, tmp_path):
    import shutil

    m = tmp_path / "quant"
    shutil.copytree(vecs["base"], m)
    t = load_file(m / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    t[name] = (t[name] * 100).to(torch.int8)
    save_file(t, m / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LayraError, match=f"cannot add a delta to {name}.*not a float"):
        apply_to_dir(m, [(vecs["d1"], 1.0)], tmp_path / "out", force=True)


@pytest.mark.parametrize(
    "key", ["model.embed_tokens.weight", "model.layers.3.mlp.up_proj.weight::B"]
)
def test_nan_in_a_vector_is_refused(vecs, tmp_path, key, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(vecs["d1"], bad)
    t = load_file(bad / "delta.safetensors")
    t[key][1, 1] = float("nan")
    save_file(t, bad / "delta.safetensors")
    out = tmp_path / "out"
    refused(
        capsys,
        ["vector", "apply", str(vecs["base"]), str(bad), "--out", str(out)],
        out,
        "NaN or infinity",
    )
    refused(capsys, ["vector", "combine", f"{bad}:0.5", "--out", str(out)], out, "NaN or infinity")


def test_output_exists_unless_overwrite(vecs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["vector", "apply", str(vecs["base"]), str(vecs["d1"]), "--out", str(out)]
    refused(capsys, args, None, "already exists")
    assert (out / "keep.txt").read_text() == "mine"
    refused(
        capsys, ["vector", "extract", str(vecs["run1"]), "--out", str(out)], None, "already exists"
    )
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_broken_vectors_and_runs_are_refused(vecs, tmp_path, capsys):
    import shutil

    v = tmp_path / "v"
    shutil.copytree(vecs["d1"], v)
    t = load_file(v / "delta.safetensors")
    del t["model.layers.0.self_attn.q_proj.weight::A"]
    save_file(t, v / "delta.safetensors")
    with pytest.raises(LayraError, match="q_proj.weight::A is missing"):
        load_vector(v)
    with pytest.raises(LayraError, match="not a language vector"):
        load_vector(tmp_path)

    run = tmp_path / "run"
    shutil.copytree(vecs["run1"], run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "base_fingerprint": {"weights": "0" * 16}}))
    refused(
        capsys,
        ["vector", "extract", str(run), "--out", str(tmp_path / "o")],
        tmp_path / "o",
        "is not the one run",
    )
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    (run / "adapter" / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    (run / "run.json").write_text(json.dumps(info))
    refused(
        capsys,
        ["vector", "extract", str(run), "--out", str(tmp_path / "o")],
        tmp_path / "o",
        "DoRA",
    )
    (run / "run.json").unlink()
    refused(
        capsys,
        ["vector", "extract", str(run), "--out", str(tmp_path / "o")],
        tmp_path / "o",
        "unfinished",
    )
    refused(
        capsys,
        ["vector", "apply", str(vecs["base"]), f"{vecs['d1']}:nan", "--out", str(tmp_path / "o")],
        tmp_path / "o",
        "finite",
    )
