"""The results store: a directory of JSON records, one per evaluation, written atomically.

    results/
      3f9c0a...e1.json   {"key", "kind", "benchmark", "lang", "metric", "value", ...}

A record's file name is its key: a hash of its ``identity`` — the model's display
name and evaluated-weights fingerprint, the benchmark, the language, the data hash
and every setting that changes the number. Evaluating the same thing again finds
the file and skips the work; each record is written the moment its evaluation
finishes, so a crash loses at most the evaluation in progress.

Record fields (schema ``layra.result/1``):

    key, schema, kind ("bpb" | "task"), benchmark ("bpb", "xnli", ...), lang (ISO 639-3),
    metric ("bpb", "acc", "exact_match"), value, higher_is_better,
    model {name, spec, source, fingerprint, base_fingerprint, run?, vectors?},
    data {sha256, ...}, settings {...}, identity {...}, details {...}, provenance {...}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from layra.atomic import atomic_write_json
from layra.errors import LayraError, require

SCHEMA = "layra.result/1"
_REQUIRED = ("key", "kind", "benchmark", "lang", "metric", "value", "higher_is_better", "model")


def record_key(identity: dict[str, Any]) -> str:
    """Deterministic key of an evaluation identity (JSON with sorted keys, sha256, 24 hex)."""
    blob = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


class ResultStore:
    """A directory of result records; created on first write."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        require(
            not self.root.exists() or self.root.is_dir(),
            f"results store {self.root} exists and is not a directory",
        )

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record with this key, or None if there is none (or it is unreadable)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a damaged record counts as missing: it will be redone

    def put(self, record: dict[str, Any]) -> Path:
        """Write ``record`` (which carries its ``key``) atomically; return its path."""
        missing = [k for k in _REQUIRED if k not in record]
        require(not missing, f"result record lacks {', '.join(missing)}")
        p = self.path(record["key"])
        atomic_write_json(p, {"schema": SCHEMA, **record})
        return p

    def records(self) -> list[dict[str, Any]]:
        """Every record in the store, sorted by key."""
        if not self.root.is_dir():
            return []
        return [r for _, r in _read_dir(self.root)]


def _read_dir(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted(root.glob("*.json")):
        rec = _read_record(p)
        if rec is not None:
            out.append((p, rec))
    return out


def _read_record(p: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LayraError(f"cannot read result record {p}: {e}") from e
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        return None  # some other JSON file in the directory
    return rec


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records from store directories and/or single record files, each once (by key).

    Raises :class:`LayraError` for a path that does not exist or holds no records.
    """
    seen: dict[str, dict[str, Any]] = {}
    for path in paths:
        p = Path(path)
        require(p.exists(), f"results {p} do not exist")
        if p.is_dir():
            found = [r for _, r in _read_dir(p)]
        else:
            rec = _read_record(p)
            found = [rec] if rec is not None else []
        require(bool(found), f"no result records in {p}")
        for rec in found:
            seen.setdefault(rec["key"], rec)
    return list(seen.values())
