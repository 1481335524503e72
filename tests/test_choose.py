"""`layra choose`: the selection rule by hand, and the search end to end on a tiny model."""

import json

import pytest
import tiny
import yaml

from layra.choose import Verdict, depth_km, load_choose, pareto_front, select
from layra.errors import LayraError


def verdict(name, learning, retention, vs_learning=None, vs_ret=None):
    """A candidate: Δ against the base, and (value, interval) against LoRA per source."""
    v = Verdict(name, learning, retention)
    if vs_learning is not None:
        v.vs_learning, v.vs_learning_ci = vs_learning
        v.vs_retention = dict(vs_ret)
    return v


LORA = verdict("lora", 0.20, 0.02)


def test_a_candidate_that_beats_lora_on_both_axes_is_chosen():
    a = verdict("a", 0.25, 0.03, (0.05, (0.03, 0.07)),
                {"wesnoth": (0.01, (0.002, 0.02)), "help": (0.01, (0.001, 0.02))})  # fmt: skip
    b = verdict("b", 0.30, 0.01, (0.10, (0.08, 0.12)),
                {"wesnoth": (-0.01, (-0.02, -0.005)), "help": (0.0, (-0.01, 0.01))})  # fmt: skip
    assert a.beats_baseline and not b.beats_baseline
    chosen, why = select([a, b], LORA)
    assert chosen == "a" and why.startswith("a beats lora on both axes")
    # Two that both beat LoRA: the one that learns most.
    c = verdict("c", 0.28, 0.03, (0.08, (0.06, 0.10)),
                {"wesnoth": (0.01, (0.001, 0.02)), "help": (0.01, (0.001, 0.02))})  # fmt: skip
    assert select([a, c], LORA)[0] == "c"


def test_intervals_that_include_zero_do_not_beat_lora():
    """Better point estimates everywhere, but the help-text retention interval includes 0:
    no candidate dominates, and the Pareto rule decides (saying so)."""
    a = verdict("a", 0.26, 0.025, (0.06, (0.04, 0.08)),
                {"wesnoth": (0.01, (0.002, 0.02)), "help": (0.004, (-0.002, 0.01))})  # fmt: skip
    assert not a.beats_baseline
    chosen, why = select([a], LORA)
    assert chosen == "a"  # it is still the best trade-off: 0.285 > 0.22
    assert why.startswith("No candidate beats lora on both axes")
    # A missing interval (one seed) never counts as clear of zero.
    one_seed = verdict("s", 0.3, 0.1, (0.1, None), {"wesnoth": (0.1, (0.05, 0.2))})
    assert not one_seed.beats_baseline


def test_when_none_dominates_the_pareto_front_decides():
    learns = verdict("learns", 0.40, -0.30, (0.2, (0.1, 0.3)),
                     {"w": (-0.3, (-0.4, -0.2)), "h": (-0.3, (-0.4, -0.2))})  # fmt: skip
    worse = verdict("worse", 0.10, 0.01, (-0.1, (-0.2, -0.05)),
                    {"w": (-0.01, (-0.02, 0.0)), "h": (-0.01, (-0.02, 0.0))})  # fmt: skip
    points = {v.name: (v.learning, v.retention) for v in (LORA, learns, worse)}
    assert pareto_front(points) == ["lora", "learns"]  # worse is dominated by lora
    chosen, why = select([learns, worse], LORA)
    # lora: 0.22, learns: 0.10 on Learning + Retention: LoRA itself is the recommendation.
    assert chosen == "lora" and "Pareto front (lora, learns)" in why


def test_depth_scaled_km_is_the_papers_share():
    assert depth_km(32) == (10, 2) and depth_km(18) == (6, 1) and depth_km(4) == (1, 1)


def _texts(root):
    for source, lang, key in [("help", "glg", "gl"), ("help", "eng", "en"), ("help", "spa", "es"),
                              ("wes", "eng", "en"), ("wes", "spa", "es")]:  # fmt: skip
        d = root / source / lang
        d.mkdir(parents=True)
        tiny.write_corpus(d / "heldout.txt", key, 6 if source == "help" else 4)
    return root


def write_choose(tmp_path, model_dir, corpus_dir, **extra):
    run = tiny.run_cfg(model_dir, corpus_dir / "gl.txt", tmp_path / "unused", "layra",
                       ["train.max_steps=2", "data.heldout_fraction=0.0", "method.dropout=0.0"])  # fmt: skip
    from layra.config import to_dict

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(to_dict(run)))
    t = _texts(tmp_path / "held")
    cfg = {"run": "run.yaml", "out": str(tmp_path / "choose"), "tokens": 256, "eval_bytes": 300,
           "new": [{"lang": "glg", "path": str(t / "help/glg/heldout.txt")}],
           "old": [{"lang": la, "source": s, "path": str(t / s / la / "heldout.txt")}
                   for s in ("help", "wes") for la in ("eng", "spa")],
           "eval_seq_len": 32, "eval_batch_size": 4, "lr_scales": [0.1], **extra}  # fmt: skip
    path = tmp_path / "choose.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_choose_refuses_one_retention_source_and_one_seed(tmp_path, model_dirs, corpus_dir):
    path = write_choose(tmp_path, model_dirs["llama"], corpus_dir)
    with pytest.raises(LayraError, match="at least two sources"):
        load_choose(path, ["old.2.source=help", "old.3.source=help"])
    with pytest.raises(LayraError, match="seeds: at least two"):
        load_choose(path, ["seeds=[0]"])
    with pytest.raises(LayraError, match="run .*train.lr"):
        load_choose(path, ["run_set={train.lr: -1}"])
    assert not (tmp_path / "choose").exists()


def test_choose_end_to_end_on_a_tiny_model(tmp_path, model_dirs, corpus_dir, capsys):
    from layra.choose_run import run_choose

    path = write_choose(tmp_path, model_dirs["llama"], corpus_dir, lens=[2, 1], minutes=60)
    out = run_choose(load_choose(path), progress=False)
    vs = out["verdicts"]
    assert list(vs) == ["lora", "layra-k1m1", "layra-k2m1-lens", "layra-k1m1-emb0.1",
                        "layra-k1m1-frozen"]  # fmt: skip
    for name, v in vs.items():
        assert v.learning is not None
        if name != "lora":
            assert set(v.vs_retention) == {"help", "wes"} and v.vs_learning_ci is not None
    choose = tmp_path / "choose"
    rec = yaml.safe_load((choose / "recommended.yaml").read_text())
    assert rec["method"] == {**{k: rec["method"][k] for k in ("r", "alpha", "dropout", "target_modules")},
                             **json.loads((choose / "choice.json").read_text())["method"]}  # fmt: skip
    user = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert rec["data"] == user["data"] and rec["train"] == user["train"]  # the user's own run
    report = (choose / "report" / "report.md").read_text()
    assert "**Recommendation: " in report and "Retention − lora (wes)" in report
    assert "The lens suggested k=2, m=1" in report
    assert (choose / "runs" / "layra-k1m1-frozen" / "seed=1" / "run.json").is_file()


def test_choose_goes_on_without_lens_evidence(tmp_path, model_dirs, corpus_dir):
    """A random tiny model hardly produces Galician: the lens has no evidence, the search
    says so and compares no lens candidate (one seed pair is enough to see the flow)."""
    from layra.choose_run import run_choose

    path = write_choose(tmp_path, model_dirs["llama"], corpus_dir, minutes=60, lr_scales=[],
                        frozen=False)  # fmt: skip
    out = run_choose(load_choose(path), progress=False)
    assert list(out["verdicts"]) == ["lora", "layra-k1m1"]
    report = (tmp_path / "choose" / "report" / "report.md").read_text()
    assert "the lens gave no evidence" in report
    assert json.loads((tmp_path / "choose" / "lens.json").read_text())["k"] == 1


def test_the_shipped_preset_loads_where_the_demo_built_its_corpus(tmp_path, monkeypatch):
    """configs/choose/gemma3-270m-gl.yaml: every text under layra-demo/corpus, two sources,
    the run config of the demo's model trained on the demo's Galician text."""
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "configs" / "choose" / "gemma3-270m-gl.yaml"
    monkeypatch.chdir(tmp_path)
    for source, lang, key in [("libreoffice", "glg", "gl"), ("libreoffice", "eng", "en"),
                              ("libreoffice", "spa", "es"), ("libreoffice", "por", "pt"),
                              ("wesnoth", "eng", "en"), ("wesnoth", "spa", "es"),
                              ("wesnoth", "por", "pt")]:  # fmt: skip
        d = tmp_path / "layra-demo" / "corpus" / source / lang
        d.mkdir(parents=True)
        tiny.write_corpus(d / "heldout.txt", key, 3)
    from layra.choose import user_run

    cfg = load_choose(preset)
    assert {t.source for t in cfg.old} == {"wesnoth", "libreoffice"} and len(cfg.seeds) == 2
    run = user_run(cfg)
    assert run.data.sources[0].path == "layra-demo/corpus/libreoffice/glg/train.txt"
