"""Result records → the paper's tables (pure computation; rendering to text included).

One table per benchmark (``bpb``, ``xnli``, ...): rows are models (the base first,
then the others by name), columns are languages (old ones, then new ones) and Avg,
then **Learning** (mean change on the row's new languages) and **Retention** (mean
change on the others). A change is always an *improvement over the base*, positive
= better: ``base − model`` for bits per byte (lower is better), ``model − base`` for
accuracy (in points, like the scores shown as percentages).

Checks that make a comparison meaningful: within a benchmark and language every
record must have been computed on the same data (sha256) with the same settings;
otherwise building the table fails and names the records. When one model has
several records for a cell (and seed), the newest counts and the table's notes say so.

**Seeds.** Records of one model name with different ``model.seed`` (training seeds)
are one row: its values are means over the seeds, and the row says how many seeds
it has. With two or more, Learning and Retention get a 95 % percentile bootstrap
interval (:func:`bootstrap_deltas`): each resample draws the held-out documents
with replacement (the same draw for every model: the comparison is paired) and the
row's seeds with replacement; a difference whose interval includes zero is marked
as inside the noise.
"""

from __future__ import annotations

import csv
import io
import math
import zlib
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

import numpy as np

from layra.errors import LayraError, require
from layra.evaluation.langs import normalize_lang

_PERCENT_METRICS = ("acc", "acc_norm", "exact_match")
_IGNORED_SETTINGS = ("batch_size",)  # do not change the number beyond rounding
RESAMPLES = 2000  # bootstrap resamples: percentiles of a 95 % interval move < 0.1 σ
LEVEL = 0.95
NOISE = "°"  # marks a Learning / Retention whose interval includes zero


@dataclass
class Row:
    name: str
    values: dict[str, float]  # lang -> score in display units
    delta: dict[str, float]  # lang -> improvement over the base (positive = better)
    new: tuple[str, ...]  # this row's new languages
    avg: float | None = None  # mean over the table's languages (None if any is missing)
    learning: float | None = None
    retention: float | None = None
    seeds: int = 1  # training seeds averaged in this row
    learning_ci: tuple[float, float] | None = None  # 95 % interval, with >= 2 seeds
    retention_ci: tuple[float, float] | None = None

    @property
    def learning_noise(self) -> bool | None:
        """Whether Learning's interval includes zero (None without an interval)."""
        return _includes_zero(self.learning_ci)

    @property
    def retention_noise(self) -> bool | None:
        return _includes_zero(self.retention_ci)


@dataclass
class Table:
    benchmark: str
    metric: str
    higher_is_better: bool
    unit: str  # "%" (scores × 100) or the metric's own unit
    base: str
    langs: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)  # Pair: every two non-base rows, a − b

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "unit": self.unit, "base": self.base,
            "langs": self.langs, "notes": self.notes,
            "rows": [vars(r) | {"new": list(r.new), "learning_noise": r.learning_noise,
                                "retention_noise": r.retention_noise} for r in self.rows],
            "pairs": [vars(p) | {"learning_noise": p.learning_noise,
                                 "retention_noise": p.retention_noise} for p in self.pairs],
        }  # fmt: skip


def _includes_zero(ci: tuple[float, float] | None) -> bool | None:
    return None if ci is None else ci[0] <= 0.0 <= ci[1]


def parse_new(items: list[str] | None) -> dict[str | None, tuple[str, ...]]:
    """``--new glg`` (every row) and ``--new NAME=glg,swh`` (one row) → {None|NAME: langs}."""
    out: dict[str | None, tuple[str, ...]] = {}
    for item in items or []:
        name, _, langs = item.rpartition("=")
        codes = tuple(normalize_lang(x) for x in langs.split(",") if x.strip())
        require(bool(codes), f"--new {item!r} names no language")
        key = name or None
        out[key] = tuple(dict.fromkeys(out.get(key, ()) + codes))
    return out


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "%") if metric in _PERCENT_METRICS else (1.0, metric)


def _created(rec: dict[str, Any]) -> str:
    return str((rec.get("provenance") or {}).get("created", ""))


def _comparable(rec: dict[str, Any]) -> tuple[str, str]:
    settings = {k: v for k, v in (rec.get("settings") or {}).items() if k not in _IGNORED_SETTINGS}
    return str((rec.get("data") or {}).get("sha256")), repr(sorted(settings.items()))


def _row_new(name: str, recs: list[dict[str, Any]], new: dict[str | None, tuple[str, ...]]):
    """A row's new languages: --new NAME=..., else --new ..., else the run's languages."""
    if name in new:
        return new[name]
    if None in new:
        return new[None]
    for r in recs:
        langs = (r.get("model") or {}).get("languages")
        if langs:
            return tuple(normalize_lang(x) for x in langs)
    return ()


def _mean(xs: list[float]) -> float | None:
    return fmean(xs) if xs else None


def _seed(rec: dict[str, Any]) -> Any:
    return (rec.get("model") or {}).get("seed")


def _doc_arrays(rec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    d = rec.get("details") or {}
    if rec.get("metric") != "bpb" or not d.get("doc_nll") or not d.get("doc_bytes"):
        return None
    return np.asarray(d["doc_nll"], dtype=np.float64), np.asarray(d["doc_bytes"], dtype=np.float64)


def _rng(*parts: str) -> np.random.Generator:
    # Seeded by what is drawn for, so a row's interval does not depend on the other rows.
    return np.random.default_rng(zlib.crc32("|".join(parts).encode("utf-8")))


def _replicates(
    cells: dict[tuple[str, Any, str], dict[str, Any]], m: str, la: str, scale: float,
    resamples: int,
) -> tuple[list[Any], np.ndarray] | None:  # fmt: skip
    """Model ``m``'s seeds on ``la`` and their resampled scores, ``[seeds, resamples]``.

    The documents are drawn with replacement — one draw per language, shared by every
    model (the comparison is paired) — from each bpb record's per-document NLL and bytes;
    records without them (task accuracies) repeat their value.
    """
    found = [(s, r) for (n, s, x), r in sorted(cells.items(), key=lambda kv: str(kv[0]))
             if n == m and x == la]  # fmt: skip
    if not found:
        return None
    per_seed = []
    for _, r in found:
        arr = _doc_arrays(r)
        if arr is None:
            per_seed.append(np.full(resamples, float(r["value"]) * scale))
            continue
        nll, nbytes = arr
        w = _rng("docs", la).multinomial(len(nll), np.full(len(nll), 1 / len(nll)),
                                         size=resamples)  # fmt: skip
        per_seed.append((w @ nll) / (math.log(2) * (w @ nbytes)) * scale)
    return [s for s, _ in found], np.stack(per_seed)


def _seed_mean(stack: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Per resample, the mean over the drawn seeds (``picks``: ``[resamples, seeds]``)."""
    return stack[picks, np.arange(stack.shape[1])[:, None]].mean(axis=1)


def _interval(deltas: dict[str, np.ndarray], keep) -> tuple[float, float] | None:
    """The 95 % percentile interval of the mean over the kept languages' resampled deltas."""
    chosen = [v for la, v in deltas.items() if keep(la)]
    if not chosen:
        return None
    lo, hi = np.quantile(np.mean(chosen, axis=0), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def bootstrap_deltas(
    cells: dict[tuple[str, Any, str], dict[str, Any]],
    base: str,
    name: str,
    langs: list[str],
    new: tuple[str, ...],
    scale: float,
    sign: float,
    resamples: int = RESAMPLES,
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """95 % intervals of a row's (Learning, Retention): bootstrap over documents and seeds.

    ``cells`` maps (model name, seed, lang) to a record. Per resample and language, the
    documents are drawn with replacement (:func:`_replicates`), then each model's seeds
    are drawn with replacement and averaged; Learning / Retention are the means of the
    resampled improvements over the base, as in the table.
    """
    deltas: dict[str, np.ndarray] = {}
    for la in langs:
        reps = {}
        for m in (base, name):
            got = _replicates(cells, m, la, scale, resamples)
            if got is None:
                break
            n = len(got[0])
            reps[m] = _seed_mean(got[1], _rng("seeds", m, la).integers(0, n, size=(resamples, n)))
        else:
            deltas[la] = sign * (reps[name] - reps[base])
    return _interval(deltas, lambda la: la in new), _interval(deltas, lambda la: la not in new)


@dataclass
class Pair:
    """Row ``a`` minus row ``b``: the difference of their improvements (positive = a better)."""

    a: str
    b: str
    learning: float | None
    retention: float | None
    learning_ci: tuple[float, float] | None = None
    retention_ci: tuple[float, float] | None = None
    paired_seeds: bool = False  # the same training seeds: each resample draws them together

    @property
    def learning_noise(self) -> bool | None:
        return _includes_zero(self.learning_ci)

    @property
    def retention_noise(self) -> bool | None:
        return _includes_zero(self.retention_ci)


def pair_deltas(
    cells: dict[tuple[str, Any, str], dict[str, Any]], a: Row, b: Row, langs: list[str],
    scale: float, sign: float, resamples: int = RESAMPLES,
) -> Pair:  # fmt: skip
    """``a`` − ``b`` on Learning and Retention, with a paired bootstrap interval.

    Paired: every resample draws the same documents for both rows, and — when the two
    rows have the same training seeds — the same seeds (seed ``s`` of ``a`` against seed
    ``s`` of ``b``); otherwise each row's seeds are drawn on their own. Only languages
    both rows have count, and Learning only when both rows have the same new languages.
    With one seed per row on text without per-document scores there is nothing to
    resample, so no interval.
    """
    shared = [la for la in langs if la in a.values and la in b.values]
    point = {la: sign * (a.values[la] - b.values[la]) for la in shared}
    deltas: dict[str, np.ndarray] = {}
    paired = False
    for la in shared:
        ga, gb = (_replicates(cells, r.name, la, scale, resamples) for r in (a, b))
        if ga is None or gb is None:
            continue
        paired = ga[0] == gb[0]
        n_a, n_b = len(ga[0]), len(gb[0])
        if paired:
            picks = _rng("pair-seeds", la).integers(0, n_a, size=(resamples, n_a))
            pick_a = pick_b = picks
        else:
            pick_a = _rng("seeds", a.name, la).integers(0, n_a, size=(resamples, n_a))
            pick_b = _rng("seeds", b.name, la).integers(0, n_b, size=(resamples, n_b))
        deltas[la] = sign * (_seed_mean(ga[1], pick_a) - _seed_mean(gb[1], pick_b))
    same_new = a.new == b.new
    varies = any(float(np.ptp(v)) > 0 for v in deltas.values()) or max(a.seeds, b.seeds) > 1
    learn = [point[la] for la in shared if la in a.new] if same_new else []
    keep = [point[la] for la in shared if la not in a.new]
    pair = Pair(a.name, b.name, _mean(learn), _mean(keep), paired_seeds=paired)
    if varies:
        if same_new:
            pair.learning_ci = _interval(deltas, lambda la: la in a.new)
        pair.retention_ci = _interval(deltas, lambda la: la not in a.new)
    return pair


def _cells(records: list[dict[str, Any]]):
    """(name, seed, lang) -> the newest record, and notes on the records it superseded."""
    notes: list[str] = []
    cells: dict[tuple[str, Any, str], dict[str, Any]] = {}
    for rec in sorted(records, key=_created):  # newest last, so it wins
        cell = (rec["model"]["name"], _seed(rec), rec["lang"])
        if cell in cells:
            seed = "" if cell[1] is None else f" seed {cell[1]}"
            notes.append(f"{cell[0]}{seed} {cell[2]}: record {cells[cell]['key']} superseded "
                         f"by newer {rec['key']}")  # fmt: skip
        cells[cell] = rec
    return cells, notes


def _comparable_by_lang(bench: str, cells) -> dict[str, set[tuple[str, str]]]:
    """Per language, the (data, settings) of its records; refuses a language with several."""
    by_lang: dict[str, set[tuple[str, str]]] = {}
    for (_, _, lang), rec in cells.items():
        by_lang.setdefault(lang, set()).add(_comparable(rec))
    for lang, kinds in by_lang.items():
        if len(kinds) > 1:
            names = sorted(f"{n} ({r['key']})" for (n, _, la), r in cells.items() if la == lang)
            raise LayraError(
                f"{bench} {lang}: records were computed on different data or settings and "
                f"cannot be compared: {', '.join(names)}"
            )
    return by_lang


def build_table(
    records: list[dict[str, Any]], base: str, new: dict[str | None, tuple[str, ...]]
) -> Table:
    """One benchmark's table from its records (all of the same ``benchmark``)."""
    bench = records[0]["benchmark"]
    metrics = sorted({r["metric"] for r in records})
    require(len(metrics) == 1, f"{bench}: records mix metrics {', '.join(metrics)}")
    higher = bool(records[0]["higher_is_better"])
    scale, unit = _scale(metrics[0])
    cells, notes = _cells(records)
    by_lang = _comparable_by_lang(bench, cells)
    names = sorted({n for n, _, _ in cells})
    if base not in names:
        raise LayraError(f"base {base!r} has no {bench} results; models: {', '.join(names)}")
    rows_new = {n: _row_new(n, [r for (m, _, _), r in cells.items() if m == n], new) for n in names}
    all_new = {x for v in rows_new.values() for x in v}
    langs = sorted(la for la in by_lang if la not in all_new) + sorted(
        la for la in by_lang if la in all_new
    )
    sign = 1.0 if higher else -1.0

    def values_of(name: str) -> dict[str, float]:
        """Per language, the mean over the seeds that have it."""
        out = {}
        for la in langs:
            vals = [r["value"] * scale for (n, _, x), r in cells.items() if n == name and x == la]
            if vals:
                out[la] = fmean(vals)
        return out

    base_vals = values_of(base)
    rows = []
    for name in [base] + [n for n in names if n != base]:
        values = values_of(name)
        delta = {la: sign * (v - base_vals[la]) for la, v in values.items() if la in base_vals}
        seeds = len({s for n, s, _ in cells if n == name})
        row = Row(name=name, values=values, delta=delta, new=rows_new[name], seeds=seeds)
        row.avg = _mean([values[la] for la in langs]) if len(values) == len(langs) else None
        row.learning = _mean([d for la, d in delta.items() if la in row.new])
        row.retention = _mean([d for la, d in delta.items() if la not in row.new])
        if seeds >= 2 and name != base:
            row.learning_ci, row.retention_ci = bootstrap_deltas(
                cells, base, name, langs, row.new, scale, sign
            )
        rows.append(row)
    others = rows[1:]
    pairs = [pair_deltas(cells, a, b, langs, scale, sign)
             for i, a in enumerate(others) for b in others[i + 1:]]  # fmt: skip
    return Table(bench, metrics[0], higher, unit, base, langs, rows, notes, pairs)


def build_tables(
    records: list[dict[str, Any]], base: str, new: dict[str | None, tuple[str, ...]] | None = None
) -> list[Table]:
    """Every benchmark's table, ``bpb`` first, then the tasks by name."""
    require(bool(records), "no result records")
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec["benchmark"], []).append(rec)
    order = sorted(groups, key=lambda b: (b != "bpb", b))
    return [build_table(groups[b], base, new or {}) for b in order]


def _fmt(x: float | None, digits: int, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _digits(table: Table) -> int:
    return 1 if table.unit == "%" else 4


def table_header(table: Table) -> str:
    better = "higher" if table.higher_is_better else "lower"
    what = f"{table.metric} (%)" if table.unit == "%" else table.metric
    if table.metric == "bpb":
        what = "bits per byte"
    change = "model − base" if table.higher_is_better else "base − model"
    seeds = sorted({r.seeds for r in table.rows})
    n = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    head = (
        f"{table.benchmark}: {what}, {better} is better. Learning / Retention = mean "
        f"improvement over {table.base} ({change}, positive = better) on each row's new / "
        f"other languages. Seeds per model: {n} (column seeds)"
    )
    if seeds[-1] < 2:
        return head + "; one seed each: no interval, differences may be noise."
    docs = "held-out documents and seeds" if table.metric == "bpb" else "seeds"
    return head + (
        f"; rows with ≥ 2 seeds show means over seeds and a {LEVEL:.0%} bootstrap interval "
        f"[lo, hi] over {docs} ({RESAMPLES} resamples); {NOISE} marks a difference whose "
        "interval includes 0 (inside the noise)."
    )


def _fmt_delta(x: float | None, ci: tuple[float, float] | None, digits: int) -> str:
    text = _fmt(x, digits, True)
    if ci is None:
        return text
    mark = NOISE if _includes_zero(ci) else ""
    return f"{text}{mark} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def to_markdown(tables: list[Table]) -> str:
    """The tables as Markdown, each with a header saying what its numbers mean."""
    parts = []
    for t in tables:
        d = _digits(t)
        head = ["model", "seeds", *t.langs, "Avg", "Learning Δ", "Retention Δ", "new"]
        lines = [f"## {t.benchmark}", "", table_header(t), "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        for r in t.rows:
            cells = [r.name, str(r.seeds), *(_fmt(r.values.get(la), d) for la in t.langs),
                     _fmt(r.avg, d), _fmt_delta(r.learning, r.learning_ci, d),
                     _fmt_delta(r.retention, r.retention_ci, d),
                     ",".join(r.new) or "–"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines += [f"\nnote: {n}" for n in t.notes]
        if t.pairs:
            lines += ["", pairs_markdown(t)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def pairs_header(table: Table) -> str:
    """What the pairwise table's numbers are and what they were resampled over."""
    seeds = max(r.seeds for r in table.rows)
    over = "held-out documents" if table.metric == "bpb" else ""
    if seeds > 1:
        over = f"{over} and seeds" if over else "seeds"
    what = (f"Method against method: row a − row b of Learning Δ and Retention Δ (positive = a "
            f"better), same {table.base} baseline")  # fmt: skip
    if not any(p.learning_ci or p.retention_ci for p in table.pairs):
        return what + "; one seed each and no per-document scores: no interval."
    how = (f"; {LEVEL:.0%} paired bootstrap interval over {over} ({RESAMPLES} resamples: the "
           "same documents for both rows, and the same seeds where both rows have them); "
           f"{NOISE} marks a difference whose interval includes 0 (inside the noise)")  # fmt: skip
    if seeds < 2:
        how += ". One seed: the interval covers the documents, not training noise"
    return what + how + "."


def pairs_markdown(table: Table) -> str:
    d = _digits(table)
    lines = [f"### {table.benchmark}: pairwise differences", "", pairs_header(table), "",
             "| a | b | Learning Δ (a − b) | Retention Δ (a − b) |", "|---|---|---|---|"]  # fmt: skip
    for p in table.pairs:
        lines.append(f"| {p.a} | {p.b} | {_fmt_delta(p.learning, p.learning_ci, d)} | "
                     f"{_fmt_delta(p.retention, p.retention_ci, d)} |")  # fmt: skip
    return "\n".join(lines)


def to_csv(table: Table) -> str:
    """One table as CSV (display units, 12 significant digits; empty cell = missing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "seeds", *table.langs, "avg", "learning", "retention", "new",
                "learning_lo", "learning_hi", "retention_lo", "retention_hi"])  # fmt: skip
    for r in table.rows:
        vals = [r.values.get(la) for la in table.langs] + [r.avg, r.learning, r.retention]
        cis = [*(r.learning_ci or (None, None)), *(r.retention_ci or (None, None))]
        w.writerow([r.name, r.seeds, *(_num(v) for v in vals), " ".join(r.new),
                    *(_num(v) for v in cis)])  # fmt: skip
    return buf.getvalue()


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.12g}"
