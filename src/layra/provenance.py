"""What made an output: versions, git hash, seed, host. Written into every output."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("layra", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors")


def package_versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Installed versions of the packages whose behaviour shapes layra's outputs."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES + extra:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_hash() -> str | None:
    """The commit of the layra source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(seed: int | None = None, **extra: Any) -> dict[str, Any]:
    """A JSON-able record of how an output was made."""
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": package_versions(),
        "git": git_hash(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    record.update(extra)
    return record
