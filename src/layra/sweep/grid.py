"""Sweep configs: validated dataclasses, and their expansion into points (no weights loaded).

    cfg = load_sweep("configs/sweeps/gemma3-270m-embeddings.yaml", ["eval.max_bytes=4000"])
    points = expand(cfg)        # the base, then each grid's points, named GRID:POINT
    check_plans(points)         # every training point fits its model's depth

How grids expand and points are named: docs/sweep.md.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layra.config import RunConfig, apply_overrides, from_dict, read_yaml, to_dict, validate
from layra.errors import LayraError, require

MODES = ("single", "series", "merge", "instruct")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")
Say = Callable[[str], None]


@dataclass
class TextConfig:
    lang: str = ""
    path: str = ""


@dataclass
class EvalConfig:
    texts: list[TextConfig] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # labels of texts that measure learning
    base_name: str = "PT"  # the base model's row in the report
    seq_len: int = 512
    batch_size: int = 8
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: layra.precision decides
    max_bytes: int | None = None  # score only the leading documents up to this many bytes


@dataclass
class GridConfig:
    name: str = ""
    kind: Literal["train", "lambda"] = "train"
    # kind: train
    config: str | None = None  # a run config YAML, relative to the sweep file
    run: dict[str, Any] = field(default_factory=dict)  # run-config settings over `config`
    axes: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values
    # kind: lambda
    mode: Literal["single", "series", "merge", "instruct"] | None = None
    model: str | None = None  # default: the sweep's model (θ′ for series, θ_instruct for instruct)
    vectors: list[str] = field(default_factory=list)
    lambdas: list[float | list[float]] = field(default_factory=list)
    # As `layra vector apply --protect-rows`: auto = special rows for mode instruct only.
    protect_rows: str = "auto"


@dataclass
class SweepConfig:
    model: str = ""  # θ0: the base row of the report, default model of grids
    out: str = ""
    eval: EvalConfig = field(default_factory=EvalConfig)
    grids: list[GridConfig] = field(default_factory=list)
    # Training seeds: every train point trains once per seed (train.seed); its seeds are
    # one row of the report, with a mean and a 95 % interval. Empty: the run's own seed.
    seeds: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Point:
    """One model to evaluate: the base, a training run or a set of vectors at some λ."""

    name: str  # display name in records and the report
    grid: str  # "" for the base
    slug: str  # file-system name inside the grid (",seed=N" included)
    kind: Literal["base", "train", "lambda"]
    params: dict[str, Any] = field(default_factory=dict)
    run: RunConfig | None = None
    model: str | None = None
    vectors: tuple[tuple[str, float], ...] = ()
    instruct: bool = False
    protect_rows: str = "auto"
    seed: int | None = None  # training seed of a train point, when the sweep has `seeds`

    def definition(self) -> dict[str, Any]:
        """What makes the point what it is (its marker hash covers this)."""
        if self.kind == "train":
            require(self.run is not None, f"internal: train point {self.name} has no run")
            return {"kind": "train", "run": to_dict(self.run)}
        return {
            "kind": self.kind,
            "model": self.model,
            "vectors": [list(v) for v in self.vectors],
            "instruct": self.instruct,
            "protect_rows": self.protect_rows,
        }


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read, override (dotted keys, ``grids.0.lambdas=[0, 1]``) and validate a sweep config.

    A grid's ``config`` is made relative to the sweep file's directory here.
    """
    data = read_yaml(path)
    apply_overrides(data, list(overrides or []))
    cfg = from_dict(SweepConfig, data)
    for g in cfg.grids:
        if g.config:
            g.config = str((Path(path).parent / g.config).expanduser())
    validate_sweep(cfg)
    return cfg


def validate_sweep(cfg: SweepConfig) -> None:
    """Checks that need no model and no file but the texts and run configs."""
    require(bool(cfg.model), "model is required (θ0: a model directory, .gguf file or hub id)")
    require(bool(cfg.out), "out is required (the sweep's output directory)")
    e = cfg.eval
    require(bool(e.texts), "eval.texts is empty: give held-out texts as [{lang, path}, ...]")
    from layra.evaluation.langs import normalize_lang

    labels = []
    for i, t in enumerate(e.texts):
        require(bool(t.lang) and bool(t.path), f"eval.texts[{i}] needs lang and path")
        require(Path(t.path).expanduser().is_file(), f"eval.texts[{i}]: {t.path} not found")
        labels.append(normalize_lang(t.lang))
    dup = sorted({x for x in labels if labels.count(x) > 1})
    require(not dup, f"eval.texts: language given twice: {', '.join(dup)}")
    require(bool(e.new), "eval.new is empty: name the texts that measure learning")
    for x in e.new:
        require(
            normalize_lang(x) in labels,
            f"eval.new: {x!r} is not one of eval.texts ({', '.join(labels)})",
        )
    require(len(e.new) < len(labels), "eval.new names every text: nothing measures retention")
    require(e.seq_len >= 2, f"eval.seq_len must be at least 2, got {e.seq_len}")
    require(e.batch_size >= 1, f"eval.batch_size must be at least 1, got {e.batch_size}")
    require(
        e.max_bytes is None or e.max_bytes > 0,
        f"eval.max_bytes must be positive, got {e.max_bytes}",
    )
    require(
        all(isinstance(x, int) and not isinstance(x, bool) for x in cfg.seeds),
        f"seeds must be a list of integers, got {cfg.seeds}",
    )
    require(len(set(cfg.seeds)) == len(cfg.seeds), f"seeds repeat a value: {cfg.seeds}")
    require(bool(cfg.grids), "grids is empty: give at least one grid (kind train or lambda)")
    names = [g.name for g in cfg.grids]
    for i, g in enumerate(cfg.grids):
        where = f"grids[{i}]"
        require(bool(g.name), f"{where}.name is required")
        require(
            not UNSAFE_CHARS.search(g.name) and g.name not in (".", ".."),
            f"{where}.name {g.name!r}: use letters, digits and . _ - only",
        )
        require(names.count(g.name) == 1, f"grid name {g.name!r} is used twice")
        (_validate_train if g.kind == "train" else _validate_lambda)(g, f"grid {g.name}")
        require(
            not (cfg.seeds and "train.seed" in g.axes),
            f"grid {g.name}: train.seed is an axis and the sweep has seeds; use one of them",
        )


def _validate_train(g: GridConfig, where: str) -> None:
    for key in ("mode", "model"):
        require(getattr(g, key) is None, f"{where}: {key} is for kind lambda, not kind train")
    require(not g.vectors and not g.lambdas, f"{where}: vectors / lambdas are for kind lambda")
    require(isinstance(g.run, dict), f"{where}: run must be a mapping of run-config settings")
    # No axes: the grid is one run (a point named by the grid), e.g. one method of the demo.
    require(
        isinstance(g.axes, dict),
        f"{where}: axes must map dotted run-config keys to lists of values, "
        "e.g. {method.embeddings: [full, frozen]}",
    )
    for key, values in g.axes.items():
        require(
            isinstance(values, list) and bool(values),
            f"{where}: axis {key} needs a non-empty list of values",
        )
        require(key != "output_dir", f"{where}: output_dir is set by the sweep, not an axis")
        require(
            len({json.dumps(v, sort_keys=True) for v in values}) == len(values),
            f"{where}: axis {key} repeats a value",
        )
    require(g.config is None or Path(g.config).is_file(), f"{where}: config {g.config} not found")


def _validate_lambda(g: GridConfig, where: str) -> None:
    require(
        g.config is None and not g.run and not g.axes,
        f"{where}: config / run / axes are for kind train, not kind lambda",
    )
    require(g.mode is not None, f"{where}: mode is required ({', '.join(MODES)})")
    n = len(g.vectors)
    require(n >= 1, f"{where}: vectors is empty")
    if g.mode == "merge":
        require(n >= 2, f"{where}: mode merge needs two or more vectors, got {n}")
    else:
        require(n == 1, f"{where}: mode {g.mode} takes one vector, got {n}")
    require(bool(g.lambdas), f"{where}: lambdas is empty (e.g. [0, 0.25, 0.5, 0.75, 1])")
    for lam in g.lambdas:
        lams = lam if isinstance(lam, list) else [lam]
        shown = f"[{', '.join(f'{x:g}' for x in lams)}]" if isinstance(lam, list) else f"{lam:g}"
        require(len(lams) in (1, n), f"{where}: λ {shown} has {len(lams)} values for {n} vectors")
        require(all(math.isfinite(x) for x in lams), f"{where}: λ {shown} is not finite")
    require(len({_fmt(x) for x in g.lambdas}) == len(g.lambdas), f"{where}: lambdas repeat a value")


def _fmt(v: Any) -> str:
    """A value as it appears in a point's name: numbers short, lists joined, mappings hashed."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list) and not any(isinstance(x, dict | list) for x in v):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, dict | list):
        return "h" + short_hash(v)[:8]  # e.g. a list of reference texts: too long for a name
    return "null" if v is None else str(v)


def _slug(items: list[tuple[str, Any]]) -> str:
    return UNSAFE_CHARS.sub("_", ",".join(f"{k}={_fmt(v)}" for k, v in items))


def train_points(cfg: SweepConfig, g: GridConfig) -> list[Point]:
    """The product of a train grid's axes, each a validated :class:`RunConfig`."""
    base = read_yaml(g.config) if g.config else {}
    from layra.config import _deep_merge

    base = _deep_merge(base, g.run)
    keys = list(g.axes)
    # An axis is shown by its last dotted part, unless two axes would look the same.
    short = [k.rsplit(".", 1)[-1] for k in keys]
    shown = [s if short.count(s) == 1 else k for s, k in zip(short, keys, strict=True)]
    points = []
    for values in itertools.product(*(g.axes[k] for k in keys)):
        name = _slug(list(zip(shown, values, strict=True))) if keys else ""
        # JSON is YAML, so each value keeps its type through the override parser.
        sets = [f"{k}={json.dumps(v)}" for k, v in zip(keys, values, strict=True)]
        for seed in cfg.seeds or [None]:
            # One name for every seed (one report row); one run directory per seed.
            slug = ",".join(x for x in (name, "" if seed is None else f"seed={seed}") if x)
            slug = slug or "run"
            data = json.loads(json.dumps(base))  # a deep copy that also rejects odd YAML objects
            data.setdefault("model", {}).setdefault("name_or_path", cfg.model)
            apply_overrides(data, sets + ([] if seed is None else [f"train.seed={seed}"]))
            data["output_dir"] = str(Path(cfg.out) / "runs" / g.name / slug)
            try:
                run = from_dict(RunConfig, data)
                validate(run)
            except LayraError as e:
                raise LayraError(f"grid {g.name}, point {slug}: {e}") from None
            params = dict(zip(keys, values, strict=True))
            shown_name = f"{g.name}:{name}" if name else g.name
            points.append(Point(shown_name, g.name, slug, "train", params, run=run, seed=seed))
    return points


def lambda_points(cfg: SweepConfig, g: GridConfig) -> list[Point]:
    """One point per entry of ``lambdas`` (vector paths as given; runs resolved later)."""
    points = []
    for lam in g.lambdas:
        lams = lam if isinstance(lam, list) else [lam]
        lams = lams * len(g.vectors) if len(lams) == 1 else lams
        slug = _slug([("lam", lam)])
        vectors = tuple(zip(g.vectors, (float(x) for x in lams), strict=True))
        points.append(
            Point(
                f"{g.name}:{slug}",
                g.name,
                slug,
                "lambda",
                {"lambda": lam},
                model=g.model or cfg.model,
                vectors=vectors,
                instruct=g.mode == "instruct",
                protect_rows=g.protect_rows,
            )
        )
    return points


def expand(cfg: SweepConfig) -> list[Point]:
    """Every point of the sweep in order: the base, then each grid's points.

    Raises :class:`LayraError` naming the grid and point of any invalid run config
    or of two points with the same name.
    """
    points = [Point(cfg.eval.base_name, "", "base", "base", model=cfg.model)]
    for g in cfg.grids:
        points += train_points(cfg, g) if g.kind == "train" else lambda_points(cfg, g)
    names = [(p.name, p.seed) for p in points]
    dup = sorted({n for n, s in names if names.count((n, s)) > 1})
    require(not dup, f"two sweep points are both named {dup[0] if dup else ''}")
    return points


def check_plans(points: list[Point]) -> None:
    """Each training point's method fits its model's depth (reads configs only, no weights)."""
    from layra.methods import plan_method
    from layra.models import model_depth

    depths: dict[str, int] = {}
    for p in points:
        if p.kind != "train" or p.run is None:
            continue
        key = p.run.model.name_or_path
        if key not in depths:
            depths[key] = model_depth(p.run)
        try:
            plan_method(p.run.method, depths[key])
        except LayraError as e:
            raise LayraError(f"grid {p.grid}, point {p.slug}: {e}") from None


def short_hash(obj: Any) -> str:
    """24 hex digits of the sha256 of ``obj`` as sorted-key JSON."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:24]
