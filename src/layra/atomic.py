"""Atomic outputs: write into a temporary sibling, then rename into place.

A killed process leaves at worst a ``.NAME.tmp-PID-*`` sibling, never a directory
or file that looks complete but is not. The writer's process id is in the name, so
the next run of the same command can tell a leftover (its writer is gone) from a
write in progress and remove it (:func:`clean_stale`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from layra.errors import LayraError

# Names layra gives temporary siblings: .NAME.tmp-PID-XXXXXXXX / .NAME.tmp-PID (writes),
# .NAME.old-PID (the old output during a swap). Older layra versions wrote
# .NAME.tmp-XXXXXXXX (tempfile's 8 random characters) and .data/.trained.safetensors.tmp
# without a pid; those count as stale once nothing has touched them for LEGACY_STALE_S,
# since no process can be asked about them.
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?:(?:tmp|old)-(?P<pid>\d+)(?:-[a-z0-9_]{8})?|tmp-[a-z0-9_]{8})$"
    r"|^\.(?P<fixed>(?:data|trained)\.safetensors)\.tmp$"
)
LEGACY_STALE_S = 3600.0


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of ``name`` written by this process."""
    return f".{name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own write in progress (another thread, an enclosing call)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale(
    directory: str | Path,
    name: str | None = None,
    say: Callable[[str], None] | None = None,
) -> list[Path]:
    """Remove temporary siblings that killed layra processes left in ``directory``.

    Only names layra gives temporaries are considered (``.NAME.tmp-PID-*``,
    ``.NAME.old-PID``), only for output ``name`` when it is given, and only when
    process PID is no longer running on this machine (a concurrent writer's files
    stay). Each removal is reported through ``say`` (default: stderr). Returns
    the removed paths.
    """
    directory = Path(directory)
    if say is None:

        def say(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for p in sorted(entries):
        m = _TEMP_NAME.match(p.name)
        if not m or (name is not None and name not in (m["name"], m["fixed"])):
            continue
        if m["pid"] is not None:
            if _pid_alive(int(m["pid"])):
                continue
            why = f"left by process {m['pid']}, which is no longer running"
        else:
            try:
                age = time.time() - p.lstat().st_mtime
            except FileNotFoundError:
                continue
            if age < LEGACY_STALE_S:
                continue
            why = f"untouched for {age / 3600:.1f} h"
        size = _size(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if not p.exists():
            removed.append(p)
            say(f"layra: removed stale temporary {p} ({_human(size)}, {why})")
    return removed


def _size(p: Path) -> int:
    try:
        if p.is_dir() and not p.is_symlink():
            return sum(f.lstat().st_size for f in p.rglob("*") if not f.is_dir())
        return p.lstat().st_size
    except OSError:
        return 0


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def check_writable(target: str | Path) -> None:
    """Refuse an output ``target`` that cannot be created, before anything is written.

    The nearest existing ancestor must be a writable directory; ``target`` itself
    may exist (the caller decides about overwriting) but not as a file where a
    directory is needed, which :func:`atomic_dir` checks.
    """
    target = Path(target)
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise LayraError(
            f"cannot write {target}: {parent} is a file, not a directory; choose another location"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LayraError(
            f"cannot write {target}: no write permission in {parent}; choose a writable location"
        )


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``target`` when the block exits cleanly.

    If ``target`` exists and ``overwrite`` is false, raise before anything is
    written. On an exception the temporary directory is removed and ``target``
    is left as it was. Temporaries of ``target`` left by killed runs are removed
    first (:func:`clean_stale`).
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise LayraError(f"output {target} already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise LayraError(f"output {target} is a file; remove it or choose a directory path")
    check_writable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(target.parent, target.name)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), dir=target.parent))
    except OSError as e:
        raise LayraError(f"cannot write {target}: {e.strerror or e}") from e
    # mkdtemp makes the directory private (0700); outputs should get the usual mode.
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        # Move the old one aside first so the swap is as short as two renames.
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory (e.g. a PNG)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    except OSError as e:
        raise LayraError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
