"""`layra sweep`: the grid expands as documented, every point equals the same model
evaluated on its own, reruns skip finished points, shipped sweep configs load."""

import json
from pathlib import Path

import pytest
import yaml

from layra.cli import main
from layra.errors import LayraError
from layra.evaluation.run import run_bpb
from layra.sweep import expand, load_sweep, run_sweep
from layra.sweep.grid import short_hash

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
# fp32: the equalities below are about the arithmetic, not bf16 rounding (same on any CPU).
EVAL = {"seq_len": 64, "batch_size": 8, "max_bytes": 600, "dtype": "fp32"}  # one batch per text


def tiny_run(model, corpus, lang, steps=2):
    return {
        "model": {"name_or_path": str(model)},
        "method": {"name": "layra", "k": 1, "m": 1, "dropout": 0.0},
        "data": {"sources": [{"path": str(corpus), "lang": lang}], "seq_len": 32,
                 "heldout_fraction": 0.0},
        "train": {"batch_size": 2, "precision": "fp32", "lr": 3e-3, "max_steps": steps,
                  "warmup": 0.0},
    }  # fmt: skip


def write_sweep(tmp_path, model, corpus_dir, grids, **extra):
    cfg = {
        "model": str(model),
        "out": str(tmp_path / "sweep"),
        "eval": {
            "texts": [
                {"lang": la, "path": str(corpus_dir / f"{f}.txt")}
                for la, f in (("glg", "gl"), ("eng", "en"), ("spa", "es"))
            ],
            "new": ["glg"],
            **EVAL,
        },  # fmt: skip
        "grids": grids,
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def separately(spec, corpus_dir, store):
    """The same model evaluated on its own, like `layra eval bpb SPEC`."""
    texts = [("glg", corpus_dir / "gl.txt"), ("eng", corpus_dir / "en.txt"),
             ("spa", corpus_dir / "es.txt")]  # fmt: skip
    recs = run_bpb(spec, texts, store, progress=False, say=lambda m: None, **EVAL)
    return {r["lang"]: r["value"] for r in recs}


def sweep_values(store_dir, name):
    from layra.evaluation.store import ResultStore

    return {r["lang"]: r["value"] for r in ResultStore(store_dir).records()
            if r["model"]["name"] == name}  # fmt: skip


def test_grid_expands_as_documented(tmp_path, model_dirs, corpus_dir):
    run = tiny_run(model_dirs["llama"], corpus_dir / "gl.txt", "glg")
    vec = tmp_path / "v"
    vec.mkdir()
    path = write_sweep(tmp_path, model_dirs["llama"], corpus_dir, [
        {"name": "km", "kind": "train", "run": run,
         "axes": {"method.k": [1, 2], "method.m": [1, 0.25]}},
        {"name": "emb", "kind": "train", "run": run,
         "axes": {"method.embeddings": ["frozen", "rows"],
                  "method.embedding_rows.reference": [[{"path": "e.txt", "lang": "eng"}]]}},
        {"name": "merge", "kind": "lambda", "mode": "merge", "vectors": [str(vec), str(vec)],
         "lambdas": [0.5, [0.25, 0.75]]},
    ])  # fmt: skip
    cfg = load_sweep(path)
    points = expand(cfg)
    ref = "h" + short_hash([{"path": "e.txt", "lang": "eng"}])[:8]
    assert [p.name for p in points] == [
        "PT",
        "km:k=1,m=1", "km:k=1,m=0.25", "km:k=2,m=1", "km:k=2,m=0.25",
        f"emb:embeddings=frozen,reference={ref}", f"emb:embeddings=rows,reference={ref}",
        "merge:lam=0.5", "merge:lam=0.25,0.75",
    ]  # fmt: skip
    km = points[4]
    assert (km.run.method.k, km.run.method.m) == (2, 0.25)
    assert isinstance(km.run.method.k, int) and isinstance(km.run.method.m, float)
    assert km.run.output_dir == str(tmp_path / "sweep" / "runs" / "km" / "k=2,m=0.25")
    assert km.run.data.seq_len == 32 and km.run.model.name_or_path == str(model_dirs["llama"])
    assert points[6].run.method.embeddings == "rows"
    assert points[6].run.method.embedding_rows.reference[0].lang == "eng"
    assert points[7].vectors == ((str(vec), 0.5), (str(vec), 0.5))
    assert points[8].vectors == ((str(vec), 0.25), (str(vec), 0.75))
    assert not points[8].instruct and points[0].kind == "base"


@pytest.mark.parametrize(
    "grid,message",
    [
        ({"name": "g", "kind": "lambda", "mode": "merge", "vectors": ["V"], "lambdas": [1]},
         "grid g: mode merge needs two or more vectors, got 1"),
        ({"name": "g", "kind": "lambda", "mode": "single", "vectors": ["V"], "lambdas": [[1, 2]]},
         "grid g: λ [1, 2] has 2 values for 1 vectors"),
        ({"name": "g", "kind": "lambda", "mode": "diagonal", "vectors": ["V"], "lambdas": [1]},
         "grids[0].mode: 'diagonal' is not a valid"),
        ({"name": "g", "kind": "lambda", "vectors": ["V"], "lambdas": [1]},
         "grid g: mode is required (single, series, merge, instruct)"),
        ({"name": "g", "kind": "train", "axes": ["method.k"]},
         "grid g: axes must map dotted run-config keys to lists of values"),
        ({"name": "g", "kind": "train", "axes": {"method.k": []}},
         "grid g: axis method.k needs a non-empty list of values"),
        ({"name": "g", "kind": "train", "axes": {"method.k": [1]}, "lambdas": [1]},
         "grid g: vectors / lambdas are for kind lambda"),
        ({"name": "a/b", "kind": "train", "axes": {"method.k": [1]}},
         "grids[0].name 'a/b': use letters, digits and . _ - only"),
        ({"name": "g", "kind": "train", "axes": {"method.embeddings": ["half"]},
          "run": {"data": {"sources": [{"path": "x", "lang": "glg"}]}}},
         "grid g, point embeddings=half: method.embeddings: 'half' is not a valid"),
        ({"name": "g", "kind": "train", "axes": {"method.embeddings": ["rows"]},
          "run": {"data": {"sources": [{"path": "x", "lang": "glg"}]}}},
         "grid g, point embeddings=rows: method.embeddings=rows needs method.embedding_rows"),
    ],
)  # fmt: skip
def test_bad_sweep_configs_fail_with_exact_messages(grid, message, tmp_path, corpus_dir):
    path = write_sweep(tmp_path, "m", corpus_dir, [grid])
    with pytest.raises(LayraError) as e:
        expand(load_sweep(path))
    assert message in str(e.value)


def test_sweep_level_errors(tmp_path, corpus_dir):
    grid = {"name": "g", "kind": "lambda", "mode": "single", "vectors": ["V"], "lambdas": [1]}
    path = write_sweep(tmp_path, "m", corpus_dir, [grid])
    with pytest.raises(LayraError, match="eval.new: 'swh' is not one of eval.texts"):
        load_sweep(path, ["eval.new=[swh]"])
    with pytest.raises(LayraError, match="unknown key eval.text; allowed under eval: texts"):
        load_sweep(path, ["eval.text=[]"])
    with pytest.raises(LayraError, match="eval.new names every text: nothing measures retention"):
        load_sweep(path, ["eval.new=[glg, eng, spa]"])


def test_km_grid_refuses_overlapping_points_before_training(tmp_path, model_dirs, corpus_dir):
    run = tiny_run(model_dirs["llama"], corpus_dir / "gl.txt", "glg")
    path = write_sweep(tmp_path, model_dirs["llama"], corpus_dir, [
        {"name": "km", "kind": "train", "run": run, "axes": {"method.k": [1, 3], "method.m": [2]}}
    ])  # fmt: skip
    with pytest.raises(LayraError, match="grid km, point k=3,m=2: method layra: k=3 first plus"):
        run_sweep(load_sweep(path), progress=False, say=lambda m: None)
    assert not (tmp_path / "sweep" / "runs").exists()


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, model_dirs, corpus_dir):
    """Language vectors of tiny layra runs: gl and pt from θ0, and gl2 from θ′ = θ0 + Δ_gl."""
    from layra.config import RunConfig, from_dict
    from layra.train import train
    from layra.vectors import apply_to_dir, extract_run

    root = tmp_path_factory.mktemp("vectors")
    base = model_dirs["gemma3_text"]
    out = {}
    for lang, f, start in (("glg", "gl", base), ("por", "pt", base)):
        cfg = from_dict(RunConfig, {**tiny_run(start, corpus_dir / f"{f}.txt", lang),
                                    "output_dir": str(root / "runs" / f)})  # fmt: skip
        extract_run(train(cfg, progress=False), root / f)
        out[f] = root / f
    apply_to_dir(base, [(out["gl"], 1.0)], root / "theta1")
    cfg = from_dict(RunConfig, {**tiny_run(root / "theta1", corpus_dir / "gl.txt", "glg", 3),
                                "output_dir": str(root / "runs" / "gl2")})  # fmt: skip
    extract_run(train(cfg, progress=False), root / "gl2")
    out["gl2"], out["theta1"], out["base"] = root / "gl2", root / "theta1", base
    out["gl_run"] = root / "runs" / "gl"
    return out


def test_every_lambda_point_equals_the_model_evaluated_on_its_own(
    vectors, tmp_path, corpus_dir, model_dirs, monkeypatch
):
    from layra.evaluation import modelspec

    base, v = vectors["base"], vectors
    instruct = model_dirs["gemma3_text"].parent / "instruct"
    if not instruct.exists():  # the "instruct sibling": same architecture and tokenizer
        import tiny

        tok = tiny.make_tokenizer()
        tiny.make_model("gemma3_text", len(tok), seed=1).save_pretrained(instruct)
        tok.save_pretrained(instruct)
    path = write_sweep(tmp_path, base, corpus_dir, [
        {"name": "single", "kind": "lambda", "mode": "single", "vectors": [str(v["gl_run"])],
         "lambdas": [0, 0.5, 1]},
        {"name": "series", "kind": "lambda", "mode": "series", "model": str(v["theta1"]),
         "vectors": [str(v["gl2"])], "lambdas": [0.5]},
        {"name": "merge", "kind": "lambda", "mode": "merge", "vectors": [str(v["gl"]), str(v["pt"])],
         "lambdas": [0.5, [1.0, 0.25]]},
        {"name": "inst", "kind": "lambda", "mode": "instruct", "model": str(instruct),
         "vectors": [str(v["gl"])], "lambdas": [0.5]},
        {"name": "whole", "kind": "lambda", "mode": "single", "vectors": [str(v["gl"])],
         "lambdas": [1], "protect_rows": "none"},
    ])  # fmt: skip
    loads = []
    real = modelspec.load_spec
    monkeypatch.setattr(modelspec, "load_spec", lambda *a, **k: loads.append(a) or real(*a, **k))
    summary = run_sweep(load_sweep(path), progress=False, say=lambda m: None)
    assert len(loads) == 5  # one model load per λ grid, not per point
    store = tmp_path / "sweep" / "results"
    alone = tmp_path / "alone"
    vec_gl = tmp_path / "sweep" / "vectors" / "single" / "0-gl"  # extracted from the run
    assert (vec_gl / "manifest.json").is_file()
    checks = {
        "PT": str(base),
        "single:lam=0": f"{base}+{vec_gl}:0",
        "single:lam=0.5": f"{base}+{vec_gl}:0.5",
        "single:lam=1": f"{base}+{vec_gl}:1",
        "series:lam=0.5": f"{v['theta1']}+{v['gl2']}:0.5",
        "merge:lam=0.5": f"{base}+{v['gl']}:0.5+{v['pt']}:0.5",
        "merge:lam=1,0.25": f"{base}+{v['gl']}:1+{v['pt']}:0.25",
    }
    for name, spec in checks.items():
        got = sweep_values(store, name)
        assert got == separately(spec, corpus_dir, alone), name
        assert set(got) == {"glg", "eng", "spa"}
    # λ = 0 is the base model exactly; λ = 1 is what training produced — by default too, since
    # Eq. 1 protects no rows (the run evaluates base + unmerged adapter: equal up to rounding).
    assert sweep_values(store, "single:lam=0") == sweep_values(store, "PT")
    trained = separately(str(v["gl_run"]), corpus_dir, alone)
    assert sweep_values(store, "whole:lam=1") == pytest.approx(trained, abs=1e-5)
    assert sweep_values(store, "single:lam=1") == pytest.approx(trained, abs=1e-5)
    # instruct: the sibling plus λ·Δ, applied by hand (the start check is waived for it).
    from layra.vectors import apply_to_model

    loaded = real(str(instruct))
    handle = apply_to_model(loaded.model, [(v["gl"], 0.5)], tokenizer=loaded.tok, instruct=True)
    texts = [("glg", corpus_dir / "gl.txt"), ("eng", corpus_dir / "en.txt"),
             ("spa", corpus_dir / "es.txt")]  # fmt: skip
    recs = run_bpb("inst", texts, alone, name="inst", progress=False, say=lambda m: None,
                   loaded=loaded, **EVAL)  # fmt: skip
    handle.remove()
    assert sweep_values(store, "inst:lam=0.5") == {r["lang"]: r["value"] for r in recs}
    points = {p["name"]: p for p in summary["points"]}
    assert points["single:lam=0"]["learning"] == 0.0 and points["single:lam=0"]["retention"] == 0
    assert points["single:lam=1"]["learning"] > 0  # training on Galician lowers its bpb
    report = tmp_path / "sweep" / "report"
    for f in (
        "report.md",
        "report.json",
        "bpb.csv",
        "tradeoff.png",
        "bars.png",
        "lambda-single.png",
        "lambda-merge.png",
    ):
        assert (report / f).is_file(), f
    assert (report / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"


def test_training_grid_trains_evaluates_and_reruns_skip_finished_points(
    tmp_path, model_dirs, corpus_dir, monkeypatch
):
    mdir = model_dirs["gemma3_text"]
    run = tiny_run(mdir, corpus_dir / "gl.txt", "glg")
    run["method"]["embedding_rows"] = {"reference": [{"path": str(corpus_dir / "en.txt"),
                                                      "lang": "eng"}]}  # fmt: skip
    path = write_sweep(tmp_path, mdir, corpus_dir, [
        {"name": "emb", "kind": "train", "run": run,
         "axes": {"method.embeddings": ["full", "frozen", "lowlr", "rows"]}},
    ])  # fmt: skip
    first = run_sweep(load_sweep(path), progress=False, say=lambda m: None)
    runs = tmp_path / "sweep" / "runs" / "emb"
    assert sorted(p.name for p in runs.iterdir()) == [
        "embeddings=frozen", "embeddings=full", "embeddings=lowlr", "embeddings=rows"
    ]  # fmt: skip
    store = tmp_path / "sweep" / "results"
    for name in ("embeddings=full", "embeddings=rows"):
        assert sweep_values(store, f"emb:{name}") == separately(
            str(runs / name), corpus_dir, tmp_path / "alone"
        )
    points = {p["name"]: p for p in first["points"]}
    frozen = points["emb:embeddings=frozen"]
    assert frozen["run_dir"] == str(runs / "embeddings=frozen") and frozen["learning"] is not None
    assert (
        json.loads((runs / "embeddings=rows" / "run.json").read_text())["plan"]["embeddings"]
        == "rows"
    )

    # A rerun trains and evaluates nothing: it loads no model at all.
    from layra import train as train_mod
    from layra.evaluation import run as run_mod

    def boom(*a, **k):
        raise AssertionError("a finished point was redone")

    monkeypatch.setattr(train_mod, "train", boom)
    monkeypatch.setattr(run_mod, "run_bpb", boom)
    said = []
    second = run_sweep(load_sweep(path), progress=False, say=said.append)
    assert second["points"] == first["points"]
    assert sum("skipped" in s for s in said) == 5 and sum("reusing" in s for s in said) == 4

    # Other evaluation settings make every point count as unfinished again.
    with pytest.raises(AssertionError, match="a finished point was redone"):
        run_sweep(load_sweep(path, ["eval.max_bytes=1000"]), progress=False, say=lambda m: None)


def test_grid_without_axes_is_one_row_per_seed_and_the_report_reads_only_its_records(
    tmp_path, model_dirs, corpus_dir
):
    """The demo's shape: a grid per method, no axes, two seeds. Changing the evaluation
    afterwards leaves older records in the store; the report uses only this call's."""
    mdir = model_dirs["llama"]
    run = tiny_run(mdir, corpus_dir / "gl.txt", "glg")
    lora = {**run, "method": {"name": "lora", "dropout": 0.0}}
    path = write_sweep(tmp_path, mdir, corpus_dir, [
        {"name": "layra", "kind": "train", "run": run},
        {"name": "lora", "kind": "train", "run": lora},
    ], seeds=[0, 1])  # fmt: skip
    first = run_sweep(load_sweep(path), progress=False, say=lambda m: None)
    runs = tmp_path / "sweep" / "runs"
    assert sorted(p.name for p in (runs / "layra").iterdir()) == ["seed=0", "seed=1"]
    table = first["table"]
    assert [(r.name, r.seeds) for r in table.rows] == [("PT", 1), ("layra", 2), ("lora", 2)]
    (pair,) = table.pairs
    assert (pair.a, pair.b, pair.paired_seeds) == ("layra", "lora", True)
    assert pair.learning_ci is not None and pair.learning_ci[0] <= pair.learning_ci[1]
    assert set(first["timings"]["train_s"]) == {"layra,seed=0", "layra,seed=1", "lora,seed=0",
                                                "lora,seed=1"}  # fmt: skip
    # Fewer bytes: new records beside the old ones, which were scored on other data.
    second = run_sweep(load_sweep(path, ["eval.max_bytes=300"]), progress=False,
                       say=lambda m: None)  # fmt: skip
    assert second["timings"]["train_s"] == {}  # the runs are reused, only evaluation is redone
    assert [r.name for r in second["table"].rows] == ["PT", "layra", "lora"]
    report = json.loads((tmp_path / "sweep" / "report" / "report.json").read_text())
    assert report["tables"][0]["pairs"][0]["a"] == "layra"


def test_cli_dry_run_lists_points_and_errors_are_one_line(tmp_path, model_dirs, corpus_dir, capsys):
    run = tiny_run(model_dirs["llama"], corpus_dir / "gl.txt", "glg")
    path = write_sweep(tmp_path, model_dirs["llama"], corpus_dir, [
        {"name": "km", "kind": "train", "run": run, "axes": {"method.k": [1, 2]}}
    ])  # fmt: skip
    assert main(["sweep", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[:3] == ["base   PT", "train  km:k=1", "train  km:k=2"]
    assert main(["sweep", "--config", str(path), "eval.seq_len=1", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "layra: error: eval.seq_len must be at least 2, got 1"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_config_loads(path, tmp_path, monkeypatch):
    """Loaded where its relative paths exist (stand-in files); every point plans on 18 layers."""
    from layra.methods import plan_method

    raw = yaml.safe_load(path.read_text())
    monkeypatch.chdir(tmp_path)
    for t in raw["eval"]["texts"]:
        Path(t["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(t["path"]).write_text("text\n")
    cfg = load_sweep(path)
    points = expand(cfg)
    assert len(points) > 1 and points[0].name == cfg.eval.base_name
    for p in points:
        if p.kind == "train":
            plan = plan_method(p.run.method, 18)
            assert plan.embeddings == p.run.method.embeddings


def test_seeds_train_each_point_per_seed_and_the_table_has_intervals(
    tmp_path, model_dirs, corpus_dir
):
    mdir = model_dirs["gemma3_text"]
    run = tiny_run(mdir, corpus_dir / "gl.txt", "glg")
    grid = {"name": "emb", "kind": "train", "run": run,
            "axes": {"method.embeddings": ["full"]}}  # fmt: skip
    path = write_sweep(tmp_path, mdir, corpus_dir, [grid], seeds=[0, 1])
    points = expand(load_sweep(path))
    assert [(p.name, p.seed, p.slug) for p in points[1:]] == [
        ("emb:embeddings=full", 0, "embeddings=full,seed=0"),
        ("emb:embeddings=full", 1, "embeddings=full,seed=1"),
    ]
    assert [p.run.train.seed for p in points[1:]] == [0, 1]
    with pytest.raises(LayraError, match="seeds repeat a value"):
        load_sweep(path, ["seeds=[1, 1]"])
    with pytest.raises(LayraError, match="train.seed is an axis and the sweep has seeds"):
        load_sweep(path, ["grids.0.axes={train.seed: [0, 1]}"])

    summary = run_sweep(load_sweep(path), progress=False, say=lambda m: None)
    runs = tmp_path / "sweep" / "runs" / "emb"
    assert sorted(p.name for p in runs.iterdir()) == ["embeddings=full,seed=0",
                                                      "embeddings=full,seed=1"]  # fmt: skip
    from layra.evaluation.store import ResultStore

    seeds = {r["model"]["seed"] for r in ResultStore(tmp_path / "sweep" / "results").records()
             if r["model"]["name"] == "emb:embeddings=full"}  # fmt: skip
    assert seeds == {0, 1}
    row = next(p for p in summary["points"] if p["seed"] == 0)
    assert row["seeds"] == 2 and row["learning_ci"][0] <= row["learning"] <= row["learning_ci"][1]
    table = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "| emb:embeddings=full | 2 | " in table and "bootstrap interval" in table
