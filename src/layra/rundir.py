"""A run directory: the one module that knows the files inside it (docs/formats.md).

    run = RunDir("runs/gl-layra")
    record = run.read_record()    # the finished run's RunRecord (run.json), or a LayraError
    kind, path = run.artifact()   # ("adapter", run.adapter) or ("trained", run.trained)

Training writes through it, extraction, evaluation, sweeps, the demo and the tests read
through it. ``run.json`` is written last, so its presence means the run finished;
``data.json`` (which prepared dataset the run trains on, :mod:`layra.prepare`) is written
after ``heldout/`` and ``data_stats.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layra.errors import LayraError

# 1: the first versioned run.json (runs written before carry no "schema" and read as 1).
RUN_SCHEMA = 1

# Settings ``--resume`` may change (dotted keys): when to stop, log, save and what to write
# at the end, or how memory is traded for time; none changes what a step computes. Every
# other setting that differs from the run's config.yaml is refused. A new train.max_steps
# also sets the schedule's length from the resumed step on (it spans max_steps).
RESUME_MAY_CHANGE = (
    "train.max_steps",
    "train.log_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.trackers",
    "train.gradient_checkpointing",
    "merge",
)
# Not compared: the same folder may be named another way (relative, absolute).
_NOT_COMPARED = ("output_dir",)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class RunRecord:
    """``run.json``: what a finished run trained, from what, and how it went."""

    status: str = "complete"
    method: str | None = None
    plan: dict[str, Any] = field(default_factory=dict)  # layra.methods.MethodPlan.to_dict()
    base_model: str = ""  # a hub id, or a local path made absolute
    gguf_file: str | None = None
    base_fingerprint: dict[str, Any] | None = None  # {arch, weights} (layra.fingerprint)
    languages: list[str] | None = None
    steps: int | None = None
    tokens: int | None = None
    final_loss: float | None = None
    train_seconds_this_session: float | None = None
    tokens_per_s_this_session: float | None = None
    peak_rss_gib: float | None = None
    processes: int | None = None
    precision: dict[str, Any] | None = None  # layra.precision.Precision.to_dict()
    tied: bool | None = None
    outputs: list[str] = field(default_factory=list)  # which of adapter, trained..., model
    schema: int = RUN_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **d}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """Tolerant of missing keys (hand-made or older runs); unknown ones kept in ``extra``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


class RunDir:
    """Paths of, and reads and writes into, one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # What training writes (docs/formats.md lists them with their formats).
    run_json = property(lambda self: self.path / "run.json")
    config_yaml = property(lambda self: self.path / "config.yaml")
    provenance_json = property(lambda self: self.path / "provenance.json")
    log_jsonl = property(lambda self: self.path / "log.jsonl")
    data_json = property(lambda self: self.path / "data.json")
    # Blocks packed whole into the run by layra before the prepared store; refused now.
    legacy_data = property(lambda self: self.path / "data.safetensors")
    data_stats = property(lambda self: self.path / "data_stats.json")
    heldout = property(lambda self: self.path / "heldout")
    checkpoints = property(lambda self: self.path / "checkpoints")
    adapter = property(lambda self: self.path / "adapter")
    trained = property(lambda self: self.path / "trained.safetensors")
    model = property(lambda self: self.path / "model")

    def heldout_file(self, lang: str) -> Path:
        return self.heldout / f"{lang}.jsonl"

    def is_complete(self) -> bool:
        return self.run_json.is_file()

    def looks_like_run(self) -> bool:
        """A layra run directory: ``config.yaml`` or ``run.json``, and no HF ``config.json``."""
        p = self.path
        return (
            p.is_dir()
            and not (p / "config.json").exists()
            and (self.run_json.exists() or self.config_yaml.exists())
        )

    def read_record(self) -> RunRecord:
        """The finished run's record; a :class:`LayraError` for anything else."""
        if not self.path.is_dir():
            raise LayraError(f"run directory {self.path} does not exist")
        if not self.run_json.is_file():
            raise LayraError(
                f"run {self.path} is unfinished (no run.json): resume it with "
                "`layra train ... --resume`, or it is not a run"
            )
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LayraError(f"cannot read {self.run_json}: {e}") from e
        if not isinstance(data, dict):
            raise LayraError(f"{self.run_json} is not a JSON object")
        rec = RunRecord.from_json(data)
        if rec.status != "complete":
            raise LayraError(f"run {self.path} is not complete (status {rec.status!r})")
        if not rec.base_model:
            raise LayraError(f"{self.run_json} names no base_model")
        return rec

    def write_record(self, record: RunRecord) -> None:
        from layra.atomic import atomic_write_json

        atomic_write_json(self.run_json, record.to_json())

    def outputs(self) -> list[str]:
        """The trained artifacts present, by name (adapter, model, trained.safetensors)."""
        return sorted(p.name for p in (self.adapter, self.trained, self.model) if p.exists())

    def artifact(self) -> tuple[str, Path]:
        """The trained artifact: ``("adapter", dir)`` or ``("trained", file)``
        (which one a method writes: ``layra.method_registry.MethodSpec.artifact``)."""
        if self.adapter.is_dir():
            return "adapter", self.adapter
        if self.trained.is_file():
            return "trained", self.trained
        raise LayraError(f"run {self.path} has neither adapter/ nor trained.safetensors")

    def read_config(self) -> dict[str, Any] | None:
        """The resolved config the run was made with (``config.yaml``), None if unreadable."""
        import yaml

        try:
            cfg = yaml.safe_load(self.config_yaml.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return None
        return cfg if isinstance(cfg, dict) else None

    def write_config(self, cfg: Any) -> None:
        import yaml

        from layra.atomic import atomic_write_text
        from layra.config import to_dict

        atomic_write_text(self.config_yaml, yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def differing_settings(self, cfg: Any, sections: tuple[str, ...]) -> list[str]:
        """Which config ``sections`` differ from the run's saved config.yaml (none saved: none)."""
        from layra.config import to_dict

        saved, now = self.read_config(), to_dict(cfg)
        if saved is None:
            return []
        return [k for k in sections if saved.get(k) != now.get(k)]

    def resume_changes(
        self, cfg: Any
    ) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
        """Settings of ``cfg`` that differ from the run's config.yaml, by dotted key as
        ``(saved, now)``: ``(refused, allowed)``, allowed being :data:`RESUME_MAY_CHANGE`.

        Keys only one side has (a run written by another layra version) are not compared.
        """
        from layra.config import to_dict

        saved = self.read_config()
        if saved is None:
            return {}, {}
        old, now = _flatten(saved), _flatten(to_dict(cfg))
        differ = {
            k: (old[k], now[k])
            for k in old
            if k in now and k not in _NOT_COMPARED and old[k] != now[k]
        }
        allowed = {k: v for k, v in differ.items() if k in RESUME_MAY_CHANGE}
        refused = {k: v for k, v in differ.items() if k not in RESUME_MAY_CHANGE}
        return refused, allowed

    def record_resume(self, step: int, changed: dict[str, tuple[Any, Any]]) -> None:
        """Append one line to ``resumes.jsonl``: the step a session resumed from and the
        settings it changed (``{key: [before, after]}``), so config.yaml's values, which
        are the latest, and the run's history agree."""
        import time

        from layra.atomic import atomic_write_text

        path = self.path / "resumes.jsonl"
        try:
            before = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            before = ""
        rec = {
            "step": step,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "changed": {k: list(v) for k, v in changed.items()},
        }
        atomic_write_text(path, before + json.dumps(rec) + "\n")

    def seed(self) -> int | None:
        """The run's training seed (``train.seed`` of its config.yaml), None if unknown."""
        seed = ((self.read_config() or {}).get("train") or {}).get("seed")
        return seed if isinstance(seed, int) else None

    def read_provenance(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.provenance_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_provenance(self, data: dict[str, Any]) -> None:
        from layra.atomic import atomic_write_json

        atomic_write_json(self.provenance_json, data)

    def read_log(self) -> list[dict[str, Any]]:
        """``log.jsonl``'s records (one per logged optimizer step)."""
        lines = self.log_jsonl.read_text(encoding="utf-8").splitlines()
        return [json.loads(x) for x in lines if x.strip()]
