"""`layra report`: the tables' numbers are the records' numbers; learning/retention signs; plots."""

import csv
import io
import json
import math
import struct

import numpy as np
import pytest

from layra.cli import main
from layra.errors import LayraError
from layra.evaluation.plots import plot_bars, plot_tradeoff
from layra.evaluation.report import build_tables, parse_new, to_csv, to_markdown
from layra.evaluation.store import ResultStore, load_records, record_key

BPB = {  # model -> lang -> bits per byte (lower is better)
    "PT": {"eng": 1.00, "spa": 1.20, "glg": 2.00},
    "full-gl": {"eng": 1.30, "spa": 1.50, "glg": 1.10},
    "layra-gl": {"eng": 1.05, "spa": 1.20, "glg": 1.40},
}
ACC = {"PT": {"eng": 0.50, "glg": 0.40}, "layra-gl": {"eng": 0.48, "glg": 0.46}}


def rec(name, bench, lang, value, *, created="2025-01-01T00:00:00+00:00", sha=None, seq_len=512):
    metric, hib = ("bpb", False) if bench == "bpb" else ("acc", True)
    ident = {"name": name, "bench": bench, "lang": lang, "created": created, "sha": sha}
    return {
        "schema": "layra.result/1", "key": record_key(ident), "kind": "bpb" if bench == "bpb" else "task",
        "benchmark": bench, "lang": lang, "metric": metric, "value": value, "higher_is_better": hib,
        "model": {"name": name}, "data": {"sha256": sha or f"data-{bench}-{lang}"},
        "settings": {"seq_len": seq_len, "batch_size": 8}, "provenance": {"created": created},
    }  # fmt: skip


def records():
    out = [rec(m, "bpb", la, v) for m, vals in BPB.items() for la, v in vals.items()]
    out += [rec(m, "xnli", la, v) for m, vals in ACC.items() for la, v in vals.items()]
    return out


def test_table_numbers_equal_inputs_and_signs():
    bpb, xnli = build_tables(records(), "PT", parse_new(["glg"]))
    assert (bpb.benchmark, xnli.benchmark) == ("bpb", "xnli")
    assert bpb.langs == ["eng", "spa", "glg"]  # old languages first, new ones last
    assert [r.name for r in bpb.rows] == ["PT", "full-gl", "layra-gl"]
    for r in bpb.rows:
        assert r.values == BPB[r.name]
        assert r.avg == pytest.approx(sum(BPB[r.name].values()) / 3)
    full = bpb.rows[1]
    # bpb: improvement = base − model.
    assert full.delta == pytest.approx({"eng": -0.30, "spa": -0.30, "glg": 0.90})
    assert full.learning == pytest.approx(0.90)
    assert full.retention == pytest.approx(-0.30)
    assert bpb.rows[2].retention == pytest.approx(-0.025) and bpb.rows[2].learning == pytest.approx(
        0.6
    )
    assert bpb.rows[0].learning == 0 and bpb.rows[0].retention == 0
    # accuracy: shown in %, improvement = model − base, in points.
    lay = xnli.rows[1]
    assert lay.values == pytest.approx({"eng": 48.0, "glg": 46.0})
    assert lay.learning == pytest.approx(6.0) and lay.retention == pytest.approx(-2.0)


def test_markdown_and_csv():
    tables = build_tables(records(), "PT", parse_new(["glg"]))
    md = to_markdown(tables)
    assert "| model | seeds | eng | spa | glg | Avg | Learning Δ | Retention Δ | new |" in md
    assert "| full-gl | 1 | 1.3000 | 1.5000 | 1.1000 | 1.3000 | +0.9000 | -0.3000 | glg |" in md
    assert "| layra-gl | 1 | 48.0 | 46.0 | 47.0 | +6.0 | -2.0 | glg |" in md
    assert "Seeds per model: 1 (column seeds); one seed each: no interval" in md
    assert "lower is better" in md and "base − model" in md and "model − base" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(tables[0]))))
    got = {r["model"]: {la: float(r[la]) for la in ("eng", "spa", "glg")} for r in rows}
    assert got == BPB
    assert float(rows[1]["learning"]) == pytest.approx(0.9)


def test_per_row_new_languages_and_run_languages():
    recs = records()
    for r in recs:
        if r["model"]["name"] == "full-gl":
            r["model"]["languages"] = ["gl"]  # as a run records them
    (bpb, _) = build_tables(recs, "PT", {})
    assert bpb.rows[1].new == ("glg",) and bpb.rows[1].learning == pytest.approx(0.9)
    assert bpb.rows[2].new == () and bpb.rows[2].learning is None
    assert bpb.rows[2].retention == pytest.approx((-0.05 + 0 + 0.6) / 3)
    (bpb, _) = build_tables(recs, "PT", parse_new(["layra-gl=spa,glg"]))
    assert bpb.rows[2].new == ("spa", "glg")
    assert bpb.rows[2].learning == pytest.approx(0.3) and bpb.rows[2].retention == pytest.approx(
        -0.05
    )


def test_missing_cells_and_superseded_records():
    recs = [r for r in records() if not (r["model"]["name"] == "layra-gl" and r["lang"] == "spa")]
    recs.append(rec("PT", "bpb", "eng", 0.9, created="2025-02-01T00:00:00+00:00"))
    (bpb, _) = build_tables(recs, "PT", parse_new(["glg"]))
    assert bpb.rows[0].values["eng"] == 0.9  # the newer record wins
    assert any("superseded" in n for n in bpb.notes)
    lay = bpb.rows[2]
    assert "spa" not in lay.values and lay.avg is None
    assert lay.retention == pytest.approx(0.9 - 1.05)
    assert "| layra-gl | 1 | 1.0500 | – | 1.4000 | – |" in to_markdown([bpb])


def test_report_refuses_incomparable_and_unknown_base():
    recs = records() + [rec("other", "bpb", "glg", 1.0, sha="different-text")]
    with pytest.raises(LayraError, match="bpb glg: records were computed on different data"):
        build_tables(recs, "PT")
    recs = records() + [rec("other", "bpb", "glg", 1.0, seq_len=128)]
    with pytest.raises(LayraError, match="different data or settings"):
        build_tables(recs, "PT")
    with pytest.raises(LayraError, match="base 'Base' has no bpb results; models: PT, full-gl"):
        build_tables(records(), "Base")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_valid_pngs(tmp_path):
    bpb, xnli = build_tables(records(), "PT", parse_new(["glg"]))
    assert _png_size(plot_tradeoff(bpb, tmp_path / "t.png")) == (600, 450)
    w, h = _png_size(plot_bars(xnli, tmp_path / "b.png"))
    assert w >= 600 and h == 450
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_plot_functions_return_bytes_and_write_nothing(tmp_path, monkeypatch):
    from layra.evaluation.plots import bars_png, tradeoff_png

    bpb, xnli = build_tables(records(), "PT", parse_new(["glg"]))
    monkeypatch.chdir(tmp_path)
    png = tradeoff_png(bpb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and bars_png(xnli)[:8] == png[:8]
    assert list(tmp_path.iterdir()) == []
    assert plot_tradeoff(bpb, tmp_path / "t.png").read_bytes() == png


def test_cli_report(tmp_path, capsys):
    store = ResultStore(tmp_path / "results")
    for r in records():
        store.put({k: v for k, v in r.items() if k != "schema"})
    (tmp_path / "results" / "notes.json").write_text("{}")  # other JSON is ignored
    assert len(load_records([tmp_path / "results"])) == len(records())
    out = tmp_path / "report"
    argv = ["report", str(tmp_path / "results"), "--base", "PT", "--new", "glg", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "## bpb" in printed and "## xnli" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bars.png", "bpb.csv", "report.json", "report.md", "tradeoff.png", "xnli.csv"]
    for p in out.glob("*.png"):
        _png_size(p)
    rep = json.loads((out / "report.json").read_text())
    assert rep["tables"][0]["rows"][1]["values"] == BPB["full-gl"]
    assert main(argv) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nothing"), "--base", "PT"]) == 2
    assert "do not exist" in capsys.readouterr().err


def seeded(name, lang, seed, doc_nll, doc_bytes, sha=None):
    """A bpb record of one seed with per-document NLL (nats) and bytes, as run_bpb writes."""
    r = rec(name, "bpb", lang, sum(doc_nll) / (math.log(2) * sum(doc_bytes)), sha=sha)
    r["key"] = record_key({"name": name, "lang": lang, "seed": seed})
    r["model"]["seed"] = seed
    r["details"] = {"doc_nll": list(doc_nll), "doc_bytes": list(doc_bytes)}
    return r


def _synthetic(rng, shift_new, shift_old, seed_sd, docs=60):
    """PT (one seed) and a two-seed model "m" on a new (glg) and an old (eng) language.

    Documents' NLL per byte vary a lot; the model moves the documents of glg by
    ``shift_new`` and of eng by ``shift_old`` nats per byte on average, each document by its
    own amount (document noise: sd 0.05), plus a per-seed offset (seed noise)."""
    nbytes = rng.integers(50, 400, size=docs).astype(float)
    out = []
    for lang, shift in (("glg", shift_new), ("eng", shift_old)):
        rate = rng.uniform(0.8, 2.4, size=docs)  # nats per byte of each document under PT
        out.append(seeded("PT", lang, None, rate * nbytes, nbytes))
        noise = rng.normal(0, 0.05, size=docs)
        moved = rate - shift + noise - np.average(noise, weights=nbytes)  # mean shift exact
        for seed in (0, 1):
            off = seed_sd * (1 if seed else -1)
            out.append(seeded("m", lang, seed, (moved + off) * nbytes, nbytes))
    return out


def test_seeds_are_one_row_with_mean_and_bootstrap_interval():
    recs = _synthetic(np.random.default_rng(1), shift_new=0.3, shift_old=-0.002, seed_sd=0.001)
    (t,) = build_tables(recs, "PT", parse_new(["glg"]))
    pt, m = t.rows
    assert (pt.seeds, m.seeds) == (1, 2) and pt.learning_ci is None
    # The mean over seeds: the seed offsets cancel; Learning = 0.3 nats/byte in bits.
    assert m.learning == pytest.approx(0.3 / math.log(2), rel=1e-6)
    lo, hi = m.learning_ci
    assert lo < m.learning < hi and lo > 0  # a real improvement: outside the noise
    assert m.learning_noise is False
    # Retention moved by 0.002 nats/byte while documents differ by ~0.5: inside the noise.
    lo, hi = m.retention_ci
    assert lo < 0 < hi and m.retention_noise is True
    # The interval reflects both sources: more seed spread, a wider interval.
    wide = build_tables(_synthetic(np.random.default_rng(1), 0.3, -0.002, 0.2), "PT",
                        parse_new(["glg"]))[0].rows[1]  # fmt: skip
    assert wide.learning_ci[1] - wide.learning_ci[0] > 2 * (hi - lo)
    # Deterministic: the same records give the same interval.
    again = build_tables(recs, "PT", parse_new(["glg"]))[0].rows[1]
    assert again.learning_ci == m.learning_ci


def test_bootstrap_interval_covers_a_hand_computed_spread():
    """Two seeds, no document noise: the seed bootstrap draws (a,a), (a,b), (b,b) — the
    interval spans the two seeds' improvements."""
    nb = [100.0] * 5
    recs = [seeded("PT", "glg", None, [100.0] * 5, nb), seeded("PT", "eng", None, [100.0] * 5, nb)]
    for seed, learn in ((0, 10.0), (1, 30.0)):
        recs.append(seeded("m", "glg", seed, [100.0 - learn] * 5, nb))
        recs.append(seeded("m", "eng", seed, [100.0] * 5, nb))
    m = build_tables(recs, "PT", parse_new(["glg"]))[0].rows[1]
    per_seed = [learn / 100 / math.log(2) for learn in (10.0, 30.0)]
    assert m.learning == pytest.approx(sum(per_seed) / 2)
    assert m.learning_ci == pytest.approx(tuple(per_seed))
    assert m.retention_ci == (0.0, 0.0) and m.retention_noise is True


def test_markdown_states_seeds_and_marks_noise(tmp_path):
    recs = _synthetic(np.random.default_rng(1), shift_new=0.3, shift_old=-0.002, seed_sd=0.001)
    (t,) = build_tables(recs, "PT", parse_new(["glg"]))
    md = to_markdown([t])
    assert "Seeds per model: 1–2 (column seeds)" in md and "95% bootstrap interval" in md
    m = t.rows[1]
    lo, hi = m.learning_ci
    assert "| m | 2 | " in md
    assert f"{m.learning:+.4f} [{lo:+.4f}, {hi:+.4f}]" in md  # no mark: outside the noise
    lo, hi = m.retention_ci
    assert f"{m.retention:+.4f}° [{lo:+.4f}, {hi:+.4f}]" in md
    row = next(r for r in csv.DictReader(io.StringIO(to_csv(t))) if r["model"] == "m")
    assert row["seeds"] == "2" and float(row["retention_lo"]) == pytest.approx(lo)
    assert t.to_dict()["rows"][1]["retention_noise"] is True


def test_pairwise_difference_by_hand_and_paired_seeds():
    """Two models with the same two seeds, no document noise: a − b per seed is known.

    a learns 10 and 30 nats/100 bytes (seeds 0, 1) and b 5 and 20: the paired seed draw
    gives a − b of 5 (seed 0 twice), 10 (seed 1 twice) or 7.5 (one each), in bits."""
    nb = [100.0] * 5
    recs = [seeded("PT", la, None, [100.0] * 5, nb) for la in ("glg", "eng")]
    for name, learns in (("a", (10.0, 30.0)), ("b", (5.0, 20.0))):
        for seed, learn in zip((0, 1), learns, strict=True):
            recs.append(seeded(name, "glg", seed, [100.0 - learn] * 5, nb))
            recs.append(seeded(name, "eng", seed, [100.0 + seed] * 5, nb))
    (t,) = build_tables(recs, "PT", parse_new(["glg"]))
    (pair,) = t.pairs
    bits = 1 / 100 / math.log(2)
    assert (pair.a, pair.b, pair.paired_seeds) == ("a", "b", True)
    assert pair.learning == pytest.approx(7.5 * bits)
    assert pair.learning_ci == pytest.approx((5 * bits, 10 * bits))
    # Retention: both rows forget the same per seed, so a − b is exactly 0 in every draw.
    assert pair.retention == pytest.approx(0.0) and pair.retention_ci == (0.0, 0.0)
    assert pair.retention_noise is True and pair.learning_noise is False
    md = to_markdown([t])
    assert "### bpb: pairwise differences" in md and "paired bootstrap interval" in md
    assert f"| a | b | {7.5 * bits:+.4f} [{5 * bits:+.4f}, {10 * bits:+.4f}] |" in md
    assert t.to_dict()["pairs"][0]["learning_noise"] is False


def test_pairwise_interval_is_narrower_than_the_rows_when_documents_are_shared():
    """Both models move the same documents (hard ones stay hard): the paired difference's
    interval is far narrower than either row's interval against the base, and it
    finds a difference (0.02 nats/byte) that overlapping row intervals would hide."""
    rng = np.random.default_rng(3)
    nbytes = rng.integers(50, 400, size=80).astype(float)
    rate = rng.uniform(0.8, 2.4, size=80)
    recs = []
    for la in ("glg", "eng"):
        recs.append(seeded("PT", la, None, rate * nbytes, nbytes))
        common = rng.normal(0, 0.3, size=80)  # per-document change both models share
        for name, shift in (("a", 0.32), ("b", 0.30)):
            for seed in (0, 1):
                moved = rate - (shift if la == "glg" else 0.0) + common + rng.normal(0, 0.002, 80)
                recs.append(seeded(name, la, seed, moved * nbytes, nbytes))
    (t,) = build_tables(recs, "PT", parse_new(["glg"]))
    a, b = t.rows[1], t.rows[2]
    (pair,) = t.pairs
    width = pair.learning_ci[1] - pair.learning_ci[0]
    assert width < 0.2 * (a.learning_ci[1] - a.learning_ci[0])
    assert a.learning_ci[0] < b.learning_ci[1]  # the rows' intervals overlap ...
    assert pair.learning_ci[0] > 0  # ... yet a learns more, clear of zero
    assert pair.learning == pytest.approx(a.learning - b.learning)


def test_no_pairs_with_one_model_and_no_interval_without_anything_to_resample():
    (bpb, xnli) = build_tables(records(), "PT", parse_new(["glg"]))
    assert len(bpb.pairs) == 1 and bpb.pairs[0].learning_ci is None  # no per-document scores
    assert "one seed each and no per-document scores: no interval" in to_markdown([bpb])
    one = [r for r in records() if r["model"]["name"] != "layra-gl"]
    assert build_tables(one, "PT", parse_new(["glg"]))[0].pairs == []
