"""Running a sweep: train the training points, evaluate every point, write the report.

    summary = run_sweep(load_sweep("configs/sweeps/gemma3-270m-embeddings.yaml"))

Layout of ``OUT`` and the skipping rule: docs/sweep.md (and the package docstring).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layra.config import to_dict
from layra.errors import require
from layra.lock import holds_output_lock
from layra.rundir import RunDir
from layra.sweep.grid import (
    UNSAFE_CHARS,
    GridConfig,
    Point,
    Say,
    SweepConfig,
    check_plans,
    expand,
    short_hash,
    validate_sweep,
)


class _Markers:
    """``OUT/points/GRID/POINT.json``: a point evaluated with these settings, and its records."""

    def __init__(self, out: Path, eval_identity: dict[str, Any], store):
        self.root = out / "points"
        self.eval_identity = eval_identity
        self.store = store
        # Per point, the record keys found done or marked in this call: the report's records.
        self.current: dict[Path, list[str]] = {}

    def path(self, p: Point) -> Path:
        return self.root / (p.grid or "_base") / f"{p.slug}.json"

    def _identity(self, p: Point, extra: dict[str, Any]) -> str:
        return short_hash({"point": p.definition(), "eval": self.eval_identity, **extra})

    def done(self, p: Point, extra: dict[str, Any]) -> list[str] | None:
        """The point's record keys if it was evaluated like this and they are all stored."""
        path = self.path(p)
        if not path.is_file():
            return None
        try:
            m = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        if m.get("identity") != self._identity(p, extra):
            return None
        keys = m.get("records") or []
        if not keys or any(self.store.get(k) is None for k in keys):
            return None
        self.current[path] = keys
        return keys

    def mark(self, p: Point, extra: dict[str, Any], records: list[dict[str, Any]]) -> None:
        from layra.atomic import atomic_write_json

        self.current[self.path(p)] = [r["key"] for r in records]
        atomic_write_json(
            self.path(p),
            {
                "name": p.name,
                "identity": self._identity(p, extra),
                "records": [r["key"] for r in records],
            },
        )


def _file_hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:24] if path.is_file() else None


def _vector_dir(path: str, out: Path, grid: str, i: int, say: Say) -> str:
    """A vector directory for ``path``: itself, or the vector of a finished run (extracted once)."""
    from layra.evaluation.modelspec import is_run_dir

    p = Path(path).expanduser()
    require(p.exists(), f"grid {grid}: vector {path} does not exist")
    if not is_run_dir(p):
        return str(p)
    target = out / "vectors" / grid / f"{i}-{UNSAFE_CHARS.sub('_', p.name)}"
    if not (target / "manifest.json").is_file():
        from layra.vectors import extract_run

        say(f"  vector: extracting {p} -> {target}")
        extract_run(p, target, overwrite=target.exists())
    return str(target)


def _eval_identity(cfg: SweepConfig, texts: list[tuple[str, str]]) -> dict[str, Any]:
    """What makes an evaluation the same one: the texts' hashes and every eval setting."""
    from layra.evaluation.bpb import load_text

    slices = [load_text(lang, path, cfg.eval.max_bytes) for lang, path in texts]
    return {
        "data": {s.lang: s.sha256 for s in slices},
        **{k: v for k, v in dataclasses.asdict(cfg.eval).items() if k != "texts"},
    }


def _write_how_made(cfg: SweepConfig, out: Path) -> None:
    """OUT/sweep.yaml (the resolved sweep config) and OUT/provenance.json."""
    import yaml

    from layra.atomic import atomic_write_json, atomic_write_text
    from layra.provenance import provenance

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    atomic_write_json(out / "provenance.json", provenance())


@holds_output_lock("cfg.out", "sweep output {}", subdirs=("results",))
def run_sweep(
    cfg: SweepConfig, progress: bool = True, say: Say | None = None,
    preface: str | Callable[[dict[str, Any], list[dict[str, Any]]], str] = "",
    timings: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train, evaluate and report every point of ``cfg`` (skipping finished ones).

    Returns the summary also written to ``OUT/sweep.json`` (and, not in the file, the
    report's :class:`~layra.evaluation.report.Table` under ``table``). Everything that
    can be checked without weights (configs, plans, texts) is checked before any work.

    ``timings`` (a dict the caller may pre-fill) gets the seconds each point's training
    (``train_s``) and evaluation (``eval_s``) took in this call — reused work is not
    timed — and ``train_eval_s``, the whole; it is written to ``OUT/report/timings.json``.
    ``preface``: Markdown put before the report's tables, or a function of the timings and
    the report's records that returns it (called once everything is measured).
    """
    from layra.atomic import atomic_write_json
    from layra.evaluation.langs import normalize_lang
    from layra.evaluation.store import ResultStore
    from layra.provenance import provenance

    say = say or (lambda msg: print(msg, flush=True))
    validate_sweep(cfg)
    points = expand(cfg)
    check_plans(points)
    out = Path(cfg.out)
    texts = [(normalize_lang(t.lang), t.path) for t in cfg.eval.texts]
    eval_identity = _eval_identity(cfg, texts)
    _write_how_made(cfg, out)
    store = ResultStore(out / "results")
    markers = _Markers(out, eval_identity, store)
    say(
        f"sweep: {len(points)} points ({len(points) - 1} in {len(cfg.grids)} grids + the base) "
        f"-> {out}"
    )

    timings = {} if timings is None else timings
    timings.update({"train_s": {}, "eval_s": {}})
    t_work = time.perf_counter()
    _run_points(cfg, points, texts, store, markers, progress, say, timings)
    timings["train_eval_s"] = round(time.perf_counter() - t_work, 2)
    records = _report_records(points, store, markers)
    text = preface(timings, records) if callable(preface) else preface
    summary, table = _report(cfg, points, records, out, say, text, timings)
    summary["timings"] = timings
    summary["provenance"] = provenance()
    atomic_write_json(out / "sweep.json", summary)
    return {**summary, "table": table}


def _run_points(cfg: SweepConfig, points: list[Point], texts, store, markers: _Markers,
                progress: bool, say: Say, timings: dict[str, Any]) -> None:  # fmt: skip
    """Train and evaluate every point not finished before, timing what is done now."""
    e = cfg.eval

    def evaluate(p: Point, model_arg: str, extra: dict[str, Any], loaded=None) -> None:
        from layra.evaluation.run import run_bpb

        t = time.perf_counter()
        recs = run_bpb(model_arg, texts, store.root, name=p.name, seq_len=e.seq_len,
                       batch_size=e.batch_size, dtype=e.dtype, max_bytes=e.max_bytes,
                       progress=progress, say=lambda m: say(f"  {m}"), loaded=loaded)  # fmt: skip
        markers.mark(p, extra, recs)
        timings["eval_s"][_point_key(p)] = round(time.perf_counter() - t, 2)

    for p in points:
        if p.kind == "base" and not _skip(say, p, markers, {}):
            evaluate(p, cfg.model, {})
        elif p.kind == "train":
            t = time.perf_counter()
            if _train_point(p, progress, say):
                timings["train_s"][_point_key(p)] = round(time.perf_counter() - t, 2)
            # A run trained again (another run.json) is evaluated again.
            if not _skip(say, p, markers, _train_extra(p)):
                evaluate(p, p.run.output_dir, _train_extra(p))
    for g in cfg.grids:
        if g.kind == "lambda":
            _lambda_grid(cfg, g, [p for p in points if p.grid == g.name], markers, evaluate, say)


def _point_key(p: Point) -> str:
    """A point's name in timings: its name, and its seed when the sweep has seeds."""
    return p.name if p.seed is None else f"{p.name},seed={p.seed}"


def _train_extra(p: Point) -> dict[str, Any]:
    return {"run": _file_hash(RunDir(p.run.output_dir).run_json)}


def _skip(say: Say, p: Point, markers: _Markers, extra: dict[str, Any]) -> bool:
    """Say what is next; True if the point is already evaluated (so it is skipped)."""
    if markers.done(p, extra):
        say(f"{p.name}: evaluated before, skipped")
        return True
    say(f"{p.name}: evaluating")
    return False


def _train_point(p: Point, progress: bool, say: Say) -> bool:
    """Train a point's run unless it finished before with the same settings (then False)."""
    from layra.train import train

    require(p.run is not None, f"internal: sweep point {p.name} has no run to train")
    rd = RunDir(p.run.output_dir)
    run_dir = rd.path
    if rd.is_complete():
        differ = rd.differing_settings(p.run, ("model", "method", "data", "train"))
        require(
            not differ,
            f"{p.name}: {run_dir} holds a finished run with other {', '.join(differ)} "
            "settings; remove it or choose another sweep out",
        )
        say(f"{p.name}: trained before, reusing {run_dir}")
        return False
    say(f"{p.name}: training -> {run_dir}")
    train(p.run, resume=run_dir.exists(), progress=progress)
    return True


def _lambda_grid(cfg, g: GridConfig, points: list[Point], markers, evaluate, say: Say) -> None:
    """Load the grid's model once; per point add the vectors, evaluate, remove them."""
    from layra.evaluation.modelspec import LoadedModel, is_run_dir, load_spec, parse_model_spec
    from layra.vectors import apply_to_model, load_vector
    from layra.vectors.protect import describe_protected

    model = g.model or cfg.model
    require(
        not is_run_dir(model),
        f"grid {g.name}: model {model} is a run directory; give a model directory (e.g. "
        "from `layra vector apply`, or a run's model/ after `layra train --merge`)",
    )
    out = Path(cfg.out)
    dirs = [_vector_dir(v, out, g.name, i, say) for i, v in enumerate(g.vectors)]
    extras = {
        p.name: {"vectors": [_file_hash(Path(d) / "manifest.json") for d in dirs]} for p in points
    }
    todo = [p for p in points if not markers.done(p, extras[p.name])]
    for p in points:
        if p not in todo:
            say(f"{p.name}: evaluated before, skipped")
    if not todo:
        return
    say(f"grid {g.name}: loading {model} once for {len(todo)} λ points")
    from layra.precision import resolve_precision

    base = load_spec(model, dtype=resolve_precision(cfg.eval.dtype, "cpu").name)
    vectors = [load_vector(d) for d in dirs]
    for p in todo:
        lams = [lam for _, lam in p.vectors]
        spec_text = "+".join([model, *(f"{d}:{lam:g}" for d, lam in zip(dirs, lams, strict=True))])
        say(f"{p.name}: evaluating {spec_text}" + (" (instruct)" if p.instruct else ""))
        handle = apply_to_model(
            base.model,
            list(zip(vectors, lams, strict=True)),
            tokenizer=base.tok,
            protect_rows=p.protect_rows,
            instruct=p.instruct,
        )
        say(f"  {describe_protected(handle.record['protected_rows'], p.protect_rows)}")
        try:
            info = {
                **base.info,
                "vectors": [{"path": d, "lambda": lam} for d, lam in zip(dirs, lams, strict=True)],
            }
            if p.instruct:
                info["instruct"] = True
            loaded = LoadedModel(base.model, base.tok, parse_model_spec(spec_text), info, handle)
            evaluate(p, spec_text, extras[p.name], loaded)
        finally:
            handle.remove()


def _point_summary(p: Point, row) -> dict[str, Any]:
    """A point of sweep.json: what it is, and its row of the table (None: not evaluated)."""
    measured = ("values", "learning", "retention", "seeds", "learning_ci", "retention_ci")
    return {
        "name": p.name,
        "grid": p.grid,
        "kind": p.kind,
        "params": p.params,
        "seed": p.seed,
        "run_dir": p.run.output_dir if p.run else None,
        **{k: getattr(row, k) if row is not None else None for k in measured},
    }


def _report_records(points: list[Point], store, markers: _Markers) -> list[dict[str, Any]]:
    """The records this sweep's points were evaluated into (not older ones in the store)."""
    keys = [k for p in points for k in markers.current.get(markers.path(p), [])]
    records = [store.get(k) for k in dict.fromkeys(keys)]
    return [r for r in records if r is not None and r["kind"] == "bpb"]


def _report(
    cfg: SweepConfig, points: list[Point], records: list[dict[str, Any]], out: Path, say: Say,
    preface: str = "", timings: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """The report of this sweep's points (layra.evaluation.writer); the summary, the table."""
    from layra.evaluation.langs import normalize_lang
    from layra.evaluation.report import build_tables
    from layra.evaluation.writer import write_report

    new = {None: tuple(normalize_lang(x) for x in cfg.eval.new)}
    table = build_tables(records, base=cfg.eval.base_name, new=new)[0]
    rows = {r.name: r for r in table.rows}
    groups = {p.name: (p.grid, p.params.get("lambda")) for p in points if p.kind != "base"}
    lambdas = [(g.name, g.mode or "") for g in cfg.grids if g.kind == "lambda"]
    files = write_report(out / "report", [table], preface=preface, groups=groups,
                         lambda_grids=lambdas, timings=timings,
                         extra={"sweep": str(out / "sweep.json")})  # fmt: skip
    say(f"report: {', '.join(str(f) for f in files)}")
    say(files[0].read_text(encoding="utf-8"))  # report.md: the preface and the table
    return {
        "out": str(out),
        "base": cfg.eval.base_name,
        "new": list(new[None]),
        "langs": table.langs,
        "points": [_point_summary(p, rows.get(p.name)) for p in points],
        "pairs": [vars(x) for x in table.pairs],
        "report": [str(f) for f in files],
        "config": to_dict(cfg),
    }, table
