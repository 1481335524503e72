"""Configs validate with exact messages; every shipped config loads; CLI errors are one line."""

from pathlib import Path

import pytest

from layra.cli import main
from layra.config import load_config
from layra.errors import LayraError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    # Sweep, choose and accelerate configs are not run configs: test_sweep.py,
    # test_choose.py and test_distributed.py load those.
    if p.name != "base.yaml"
    and p.relative_to(ROOT).parts[1] not in ("sweeps", "choose", "accelerate")
)
BASE = ["model.name_or_path=m", "data.sources=[{path: x.txt, lang: glg}]"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.model.name_or_path and cfg.data.sources
    from layra.methods import plan_method

    depth = 18 if "gemma3-270m" in path.name else 32
    plan = plan_method(cfg.method, depth)
    if cfg.method.name == "layra" and depth == 32:
        assert plan.lora_layers == list(range(10)) + [30, 31]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["method.name=adapterx"],
            "method.name: 'adapterx' is not allowed; allowed: full, layer-selective, lora, layra",
        ),
        (["train.lrr=1"], "unknown key train.lrr; allowed under train: epochs, max_steps,"),
        (["method.r=0"], "method.r must be a positive integer, got 0"),
        (["method.k=-1"], "method.k must not be negative, got -1"),
        (
            ["train.precision=fp8"],
            "train.precision: 'fp8' is not allowed; allowed: auto, bf16, fp32",
        ),
        (["train.lr=fast"], "train.lr: expected a number, got 'fast'"),
        (["method.name=full", "method.k=2"], "method.k / method.m do not apply to method full"),
        (["method.k=auto"], "method.k=auto needs method.lens_profile"),
    ],
)
def test_bad_values_name_the_key_and_allowed_values(overrides, message):
    with pytest.raises(LayraError) as e:
        load_config(None, BASE + overrides)
    assert message in str(e.value)


def test_overrides_parse_types():
    cfg = load_config(None, BASE + ["train.lr=1e-4", "merge=true", "method.k=0.25", "method.m=2"])
    assert cfg.train.lr == 1e-4 and cfg.merge is True and cfg.method.k == 0.25 and cfg.method.m == 2


def one_line_error(capsys, argv, match):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("layra: error: ") and match in err, err


def test_cli_errors_are_one_line(model_dirs, corpus_dir, tmp_path, capsys):
    m = model_dirs["llama"]
    gl = corpus_dir / "gl.txt"
    common = [
        f"model.name_or_path={m}",
        f"output_dir={tmp_path / 'out'}",
        "data.seq_len=16",
        "--quiet",
    ]
    src = f"data.sources=[{{path: {gl}, lang: glg}}]"
    one_line_error(
        capsys,
        ["train", *common, src, "method.k=3", "method.m=2"],
        "k=3 first plus m=2 last layers overlap; the model has 4 layers",
    )
    one_line_error(
        capsys, ["train", *common, src], "the paper's k=10, m=2 need 12 layers but the model has 4"
    )
    one_line_error(
        capsys,
        ["train", *common, src, "method.name=qlora"],
        "allowed: full, layer-selective, lora, layra",
    )
    one_line_error(
        capsys,
        ["train", *common, src, "method.name=lora", "method.r=-4"],
        "method.r must be a positive integer",
    )
    missing = f"data.sources=[{{path: {tmp_path / 'nope.txt'}, lang: glg}}]"
    one_line_error(capsys, ["train", *common, missing, "method.name=lora"], "not found")
    (tmp_path / "empty.txt").write_text("")
    empty = f"data.sources=[{{path: {tmp_path / 'empty.txt'}, lang: glg}}]"
    one_line_error(
        capsys,
        ["train", *common, empty, "method.name=lora", "--overwrite"],
        "no training documents for language glg",
    )
    (tmp_path / "latin1.txt").write_bytes("Olá, mundo galego\n".encode("latin-1"))
    bad = f"data.sources=[{{path: {tmp_path / 'latin1.txt'}, lang: glg}}]"
    one_line_error(
        capsys, ["train", *common, bad, "method.name=lora", "--overwrite"], "not valid UTF-8"
    )
    nocfg = tmp_path / "noconfig"
    nocfg.mkdir()
    one_line_error(
        capsys,
        ["train", f"model.name_or_path={nocfg}", src, "method.name=lora"],
        "has no config.json",
    )
    one_line_error(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "config file")


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "example:\n  layra train --config" in capsys.readouterr().out


def test_dry_run_prints_plan(model_dirs, capsys):
    rc = main(
        [
            "train",
            "--dry-run",
            f"model.name_or_path={model_dirs['gemma3_text']}",
            "data.sources=[{path: x.txt, lang: glg}]",
            "method.k=0.25",
            "method.m=1",
        ]
    )
    assert rc == 0
    assert "'lora_layers': [0, 3]" in capsys.readouterr().out


def test_k_m_auto_comes_from_a_lens_profile(tmp_path):
    import json

    from layra.methods import plan_method

    glg = [0.5, 0.4, 0.3, 0.1, 0.05, 0.05, 0.1, 0.35, 0.5]  # general from layer 3 to 6 of 8
    profile = {
        "format": "layra-lens-profile", "num_layers": 8, "english": "eng", "languages": ["eng", "glg"],
        "own_mass": {"eng": [0.9] * 9, "glg": glg}, "english_mass": {"eng": [0.9] * 9, "glg": [0.1] * 9},
    }  # fmt: skip
    path = tmp_path / "lens.json"
    path.write_text(json.dumps(profile))
    cfg = load_config(
        None, BASE + ["method.k=auto", "method.m=auto", f"method.lens_profile={path}"]
    )
    plan = plan_method(cfg.method, 8)
    assert (plan.k, plan.m, plan.lora_layers) == (3, 2, [0, 1, 2, 6, 7])
    assert plan.k_m_source == f"lens:{path}"
