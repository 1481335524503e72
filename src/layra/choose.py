"""`layra choose`: a budgeted search on the user's own text that recommends a configuration.

    cfg = load_choose("configs/choose/gemma3-270m-gl.yaml")
    result = run_choose(cfg)          # OUT/report/, OUT/recommended.yaml, OUT/choice.json

The candidates (:func:`candidates`) are LoRA — the baseline — and LayRA at the depth-scaled
k/m (the paper's 10/32 and 2/32 of the depth), LayRA at the k/m the logit lens suggests
(``layra.lens.suggest_km``, when it differs), and, at the depth-scaled k/m, the embeddings
and head trained at a fraction of the learning rate (``lr_scales``) or frozen. Every
candidate trains once per seed on the user's run config, with the token budget scaled to
fit ``minutes`` on this machine (layra.budget); the search is a sweep (layra.sweep), so it
resumes and reuses finished runs.

Judged on held-out text only: the new language's (learning) and old languages' from at
least two sources (retention — a loss on text of the training domain is language, not
domain; a conclusion on one source has been seen to flip on another). The rule
(:func:`select`): every candidate is compared with LoRA by paired bootstrap intervals
(same documents, same seeds), learning once and retention on each source. A candidate
*beats LoRA* when its learning interval and every source's retention interval are above
zero; the recommendation is the one of those that learns most. If none does, it is the
best trade-off on the Pareto front of (Learning Δ, Retention Δ) over all candidates and
LoRA — the highest Learning Δ + Retention Δ — and the report says that none dominates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layra.config import RunConfig, apply_overrides, from_dict, read_yaml, to_dict, validate
from layra.errors import LayraError, require

BASELINE = "lora"


@dataclass
class ChooseText:
    lang: str = ""
    path: str = ""
    source: str = ""  # where the text comes from (old texts: two or more sources)


@dataclass
class ChooseConfig:
    run: str = ""  # the user's `layra train` YAML (model, data, train settings)
    run_set: dict[str, Any] = field(default_factory=dict)  # dotted run keys -> values over it
    out: str = ""
    new: list[ChooseText] = field(default_factory=list)  # held-out new-language text
    old: list[ChooseText] = field(default_factory=list)  # held-out old-language text
    english: str = "eng"  # the lens's English text: an old text of this language
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    tokens: int = 16_384  # training tokens per run, before fitting the time budget
    eval_bytes: int = 12_000  # held-out bytes per text, before fitting
    minutes: float = 30.0  # the whole search (lens, timing, training, evaluation) on this machine
    fixed_budget: bool = False
    lr_scales: list[float] = field(default_factory=lambda: [0.3, 0.1])  # lowlr candidates
    frozen: bool = True  # a candidate with frozen embeddings and head
    lens: list[int] | None = None  # [k, m] instead of computing the lens on the texts
    precision: str = "auto"  # every candidate's train.precision (auto: bf16 only where fast)
    eval_seq_len: int = 256
    eval_batch_size: int = 4


def load_choose(path: str | Path, overrides: list[str] | None = None) -> ChooseConfig:
    """Read, override and validate a choose config; ``run`` is relative to its file."""
    data = read_yaml(path)
    apply_overrides(data, list(overrides or []))
    cfg = from_dict(ChooseConfig, data)
    if cfg.run:
        cfg.run = str((Path(path).parent / cfg.run).expanduser())
    validate_choose(cfg)
    return cfg


def validate_choose(cfg: ChooseConfig) -> None:
    """Everything that can be refused before a model is loaded."""
    require(bool(cfg.run) and Path(cfg.run).is_file(), f"run: {cfg.run or '(empty)'} not found")
    require(bool(cfg.out), "out is required (the search's output directory)")
    require(bool(cfg.new), "new is empty: give the new language's held-out text [{lang, path}]")
    for i, t in enumerate([*cfg.new, *cfg.old]):
        require(bool(t.lang) and bool(t.path), f"text {i}: lang and path are required")
        require(Path(t.path).expanduser().is_file(), f"text {t.lang}: {t.path} not found")
    sources = {t.source for t in cfg.old}
    require(
        len(sources) >= 2 and "" not in sources,
        "old: give held-out old-language text from at least two sources ({lang, source, path}); "
        f"got sources {sorted(sources) or 'none'}",
    )
    labels = [label(t) for t in [*cfg.new, *cfg.old]]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    require(not dup, f"text given twice: {', '.join(dup)}")
    require(len(cfg.seeds) >= 2, f"seeds: at least two, for intervals (got {cfg.seeds})")
    require(len(set(cfg.seeds)) == len(cfg.seeds), f"seeds repeat a value: {cfg.seeds}")
    for key in ("tokens", "eval_bytes", "minutes"):
        require(getattr(cfg, key) > 0, f"{key} must be positive, got {getattr(cfg, key)}")
    require(all(0 < x < 1 for x in cfg.lr_scales), f"lr_scales must be in (0, 1): {cfg.lr_scales}")
    require(cfg.lens is None or len(cfg.lens) == 2, f"lens must be [k, m], got {cfg.lens}")
    require(cfg.precision in ("auto", "bf16", "fp32"), f"precision: auto, bf16 or fp32, got "
            f"{cfg.precision!r}")  # fmt: skip
    user_run(cfg)  # refused here, naming the run file, if it does not validate


def label(t: ChooseText) -> str:
    """A text's column in the report: ``eng-wesnoth`` (language-source) or the language."""
    from layra.evaluation.langs import normalize_lang

    lang = normalize_lang(t.lang)
    return f"{lang}-{t.source}" if t.source else lang


def user_run(cfg: ChooseConfig) -> RunConfig:
    """The user's run config, validated (its method settings are replaced per candidate)."""
    try:
        data = read_yaml(cfg.run)
        apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in cfg.run_set.items()])
        run = from_dict(RunConfig, data)
        validate(run)
    except LayraError as e:
        raise LayraError(f"run {cfg.run}: {e}") from None
    return run


def depth_km(depth: int) -> tuple[int, int]:
    """The paper's k = 10 and m = 2 of 32 layers, in proportion to ``depth`` (each >= 1)."""
    from layra.lens import PAPER_KM

    k0, m0, n0 = PAPER_KM
    return max(1, round(k0 * depth / n0)), max(1, round(m0 * depth / n0))


def candidates(cfg: ChooseConfig, depth: int, lens_km: tuple[int, int]) -> dict[str, dict]:
    """Candidate name -> method settings over the user's run (LoRA first, the baseline)."""
    k, m = depth_km(depth)
    out: dict[str, dict] = {BASELINE: {"name": "lora"}}
    out[f"layra-k{k}m{m}"] = {"name": "layra", "k": k, "m": m, "embeddings": "full"}
    if tuple(lens_km) != (k, m):
        lk, lm = lens_km
        out[f"layra-k{lk}m{lm}-lens"] = {"name": "layra", "k": lk, "m": lm, "embeddings": "full"}
    for scale in cfg.lr_scales:
        out[f"layra-k{k}m{m}-emb{scale:g}"] = {"name": "layra", "k": k, "m": m,
                                               "embeddings": "lowlr",
                                               "embeddings_lr_scale": scale}  # fmt: skip
    if cfg.frozen:
        out[f"layra-k{k}m{m}-frozen"] = {"name": "layra", "k": k, "m": m, "embeddings": "frozen"}
    return out


def candidate_run(base: RunConfig, method: dict, tokens: int | None = None) -> dict:
    """The user's run config as a dict with a candidate's method settings (and token budget)."""
    run = to_dict(base)
    keep = {
        k: v for k, v in run["method"].items() if k in ("r", "alpha", "dropout", "target_modules")
    }
    run["method"] = {**keep, **method}
    if tokens is not None:
        run["data"]["max_tokens"] = tokens
    run.pop("output_dir", None)
    return run


@dataclass
class Verdict:
    """A candidate against LoRA: a − LoRA on learning, and on retention per source."""

    name: str
    learning: float | None  # Learning Δ against the base model (for the Pareto front)
    retention: float | None
    vs_learning: float | None = None  # candidate − LoRA
    vs_learning_ci: tuple[float, float] | None = None
    vs_retention: dict[str, tuple[float | None, tuple[float, float] | None]] = field(
        default_factory=dict
    )  # source -> (candidate − LoRA, interval)

    @property
    def beats_baseline(self) -> bool:
        """Learning and every source's retention above LoRA's, intervals clear of zero."""
        clear = [self.vs_learning_ci, *(ci for _, ci in self.vs_retention.values())]
        return bool(self.vs_retention) and all(ci is not None and ci[0] > 0 for ci in clear)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names whose (learning, retention) no other point matches or beats on both, better on one."""

    def dominated(a: tuple[float, float]) -> bool:
        return any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in points.values())

    return [n for n, p in points.items() if not dominated(p)]


def select(verdicts: list[Verdict], baseline: Verdict) -> tuple[str, str]:
    """The recommended candidate and one sentence saying why (the rule: module docstring)."""
    winners = [v for v in verdicts if v.beats_baseline]
    if winners:
        best = max(winners, key=lambda v: (v.vs_learning, v.retention or 0.0))
        lo, hi = best.vs_learning_ci or (0.0, 0.0)
        return best.name, (
            f"{best.name} beats {baseline.name} on both axes: it learns "
            f"{best.vs_learning:+.4f} [{lo:+.4f}, {hi:+.4f}] bits per byte more and retains more "
            "on every source, each interval clear of zero"
            + (
                f" ({len(winners)} candidates do; the one that learns most is chosen)"
                if len(winners) > 1
                else ""
            )  # fmt: skip
            + "."
        )
    everyone = [baseline, *verdicts]
    points = {v.name: (v.learning, v.retention) for v in everyone
              if v.learning is not None and v.retention is not None}  # fmt: skip
    require(bool(points), "no candidate has both Learning and Retention: nothing to choose from")
    front = pareto_front(points)
    best = max(front, key=lambda n: (points[n][0] + points[n][1], points[n][0]))
    return best, (
        f"No candidate beats {baseline.name} on both axes with intervals clear of zero; "
        f"{best} is the best trade-off on the Pareto front ({', '.join(front)}): the highest "
        "Learning Δ + Retention Δ."
    )


def write_recommendation(out: Path, base: RunConfig, method: dict) -> Path:
    """``OUT/recommended.yaml``: the user's run config (its own token budget and precision)
    with the chosen method, ready to train."""
    import yaml

    from layra.atomic import atomic_write_text

    run = candidate_run(base, method)
    run["output_dir"] = base.output_dir
    path = out / "recommended.yaml"
    text = "# written by `layra choose` (choice.json says why); train it with\n"
    text += f"#   layra train --config {path}\n"
    atomic_write_text(path, text + yaml.safe_dump(run, sort_keys=False))
    return path


def choice_json(path: Path, body: dict[str, Any]) -> None:
    from layra.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(body, indent=1, default=str))
