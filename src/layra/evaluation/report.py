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
several records for a cell, the newest counts and the table's notes say so.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from layra.errors import LayraError, require
from layra.evaluation.langs import normalize_lang

_PERCENT_METRICS = ("acc", "acc_norm", "exact_match")
_IGNORED_SETTINGS = ("batch_size",)  # do not change the number beyond rounding


@dataclass
class Row:
    name: str
    values: dict[str, float]  # lang -> score in display units
    delta: dict[str, float]  # lang -> improvement over the base (positive = better)
    new: tuple[str, ...]  # this row's new languages
    avg: float | None = None  # mean over the table's languages (None if any is missing)
    learning: float | None = None
    retention: float | None = None


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark, "metric": self.metric,
            "higher_is_better": self.higher_is_better, "unit": self.unit, "base": self.base,
            "langs": self.langs, "notes": self.notes,
            "rows": [vars(r) | {"new": list(r.new)} for r in self.rows],
        }  # fmt: skip


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


def build_table(
    records: list[dict[str, Any]], base: str, new: dict[str | None, tuple[str, ...]]
) -> Table:
    """One benchmark's table from its records (all of the same ``benchmark``)."""
    bench = records[0]["benchmark"]
    metrics = sorted({r["metric"] for r in records})
    require(len(metrics) == 1, f"{bench}: records mix metrics {', '.join(metrics)}")
    higher = bool(records[0]["higher_is_better"])
    scale, unit = _scale(metrics[0])
    notes: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in sorted(records, key=_created):  # newest last, so it wins
        cell = (rec["model"]["name"], rec["lang"])
        if cell in cells:
            notes.append(f"{cell[0]} {cell[1]}: record {cells[cell]['key']} superseded by "
                         f"newer {rec['key']}")  # fmt: skip
        cells[cell] = rec
    by_lang: dict[str, set[tuple[str, str]]] = {}
    for (_, lang), rec in cells.items():
        by_lang.setdefault(lang, set()).add(_comparable(rec))
    for lang, kinds in by_lang.items():
        if len(kinds) > 1:
            names = sorted(f"{n} ({r['key']})" for (n, la), r in cells.items() if la == lang)
            raise LayraError(
                f"{bench} {lang}: records were computed on different data or settings and "
                f"cannot be compared: {', '.join(names)}"
            )
    names = sorted({n for n, _ in cells})
    if base not in names:
        raise LayraError(f"base {base!r} has no {bench} results; models: {', '.join(names)}")
    rows_new = {n: _row_new(n, [r for (m, _), r in cells.items() if m == n], new) for n in names}
    all_new = {x for v in rows_new.values() for x in v}
    langs = sorted(la for la in by_lang if la not in all_new) + sorted(
        la for la in by_lang if la in all_new
    )
    sign = 1.0 if higher else -1.0
    base_vals = {la: cells[(base, la)]["value"] * scale for la in langs if (base, la) in cells}
    rows = []
    for name in [base] + [n for n in names if n != base]:
        values = {la: cells[(name, la)]["value"] * scale for la in langs if (name, la) in cells}
        delta = {la: sign * (v - base_vals[la]) for la, v in values.items() if la in base_vals}
        row = Row(name=name, values=values, delta=delta, new=rows_new[name])
        row.avg = _mean([values[la] for la in langs]) if len(values) == len(langs) else None
        row.learning = _mean([d for la, d in delta.items() if la in row.new])
        row.retention = _mean([d for la, d in delta.items() if la not in row.new])
        rows.append(row)
    return Table(bench, metrics[0], higher, unit, base, langs, rows, notes)


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
    return (
        f"{table.benchmark}: {what}, {better} is better. Learning / Retention = mean "
        f"improvement over {table.base} ({change}, positive = better) on each row's new / "
        f"other languages."
    )


def to_markdown(tables: list[Table]) -> str:
    """The tables as Markdown, each with a header saying what its numbers mean."""
    parts = []
    for t in tables:
        d = _digits(t)
        head = ["model", *t.langs, "Avg", "Learning Δ", "Retention Δ", "new"]
        lines = [f"## {t.benchmark}", "", table_header(t), "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        for r in t.rows:
            cells = [r.name, *(_fmt(r.values.get(la), d) for la in t.langs), _fmt(r.avg, d),
                     _fmt(r.learning, d, True), _fmt(r.retention, d, True),
                     ",".join(r.new) or "–"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines += [f"\nnote: {n}" for n in t.notes]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(table: Table) -> str:
    """One table as CSV (display units, 12 significant digits; empty cell = missing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", *table.langs, "avg", "learning", "retention", "new"])
    for r in table.rows:
        vals = [r.values.get(la) for la in table.langs] + [r.avg, r.learning, r.retention]
        w.writerow([r.name, *("" if v is None else f"{v:.12g}" for v in vals), " ".join(r.new)])
    return buf.getvalue()
