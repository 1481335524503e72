"""One writer per output folder: an OS file lock next to the folder.

    with output_lock("runs/gl"):          # refuses at once if another process holds it
        ...                               # create, clean, --overwrite, write runs/gl

The lock is ``fcntl.flock`` on ``PARENT/.NAME.lock``, a sibling of the output, not a
file inside it: ``--overwrite`` deletes the folder and :func:`layra.atomic.atomic_dir`
swaps a finished temporary folder into its place, and neither may take the lock with
it. The kernel drops a flock when its holder exits, however it exits, so a ``kill -9``
never leaves a stale lock; the ``.lock`` file it leaves is reused by the next writer.
The holder writes its pid and command line into the file, so a refused writer names it.

A second writer is refused (:class:`~layra.errors.LayraError`, one line, exit 2)
before it has changed anything: the lock is the first thing a writing command takes.
Re-entrant within a process (a sweep holds its folder and trains inside it). Shared
locks (``shared=True``) are for outputs that several processes may add to at once,
such as an evaluation results store (one atomic file per record): they exclude only an
exclusive holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from layra.errors import LayraError

# path of the lock file -> [fd, depth, shared]: this process's holds, for re-entry.
_HELD: dict[Path, list[Any]] = {}
# A refused attempt looks again for this long: a writer that is just being released (or
# a reader of the holder's pid) holds the file for microseconds, which is no conflict.
RETRY_S = 0.2

F = TypeVar("F", bound=Callable[..., Any])


def lock_path(target: str | Path) -> Path:
    """Where the lock of output ``target`` lives: ``PARENT/.NAME.lock`` (symlinks resolved)."""
    t = Path(target).expanduser().resolve()
    return t.parent / f".{t.name}.lock"


def _holder(fd: int) -> str:
    """Who holds the lock on ``fd``'s file: ``pid N, `command` ``; '' if unknown.

    The kernel's own table (``/proc/locks``) names the holders exactly; elsewhere, the
    pid and command the last holder wrote into the file.
    """
    st = os.fstat(fd)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            # A holder outside this pid namespace shows as pid 0 (or not a number).
            if len(f) > 5 and f[1] == "FLOCK" and f[5] == dev and f[4].isdigit() and f[4] != "0":
                pids.append(int(f[4]))
    if pids:
        pid = min(pids)
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            cmd = _command([x.decode(errors="replace") for x in raw.split(b"\0") if x])
        except OSError:
            cmd = ""
        more = f" and {len(set(pids)) - 1} more" if len(set(pids)) > 1 else ""
        return f"pid {pid}{more}" + (f", `{cmd}`" if cmd else "")
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""
    pid, _, cmd = text.partition("\n")
    if not pid.strip().isdigit():
        return ""
    cmd = cmd.strip()
    return f"pid {pid.strip()}" + (f", `{cmd}`" if cmd else "")


# How layra shows in a command line: the console script, or `python -m layra`.
_ENTRY_POINTS = ("/layra", "/layra/__main__.py")


def _command(argv: list[str] | None = None) -> str:
    """A command line as a user typed it: ``layra train ...`` (not ``python -m layra``),
    shortened to 100 characters."""
    argv = list(sys.argv if argv is None else argv)
    for i, a in enumerate(argv):
        if ("/" + a).endswith(_ENTRY_POINTS):
            argv = ["layra", *argv[i + 1 :]]
            break
    line = " ".join(argv) or "python"
    return line if len(line) <= 100 else line[:97] + "..."


def _make_parents(path: Path) -> list[Path]:
    """Create the missing directories above the lock file; return those created, deepest first."""
    created = []
    d = path.parent
    while not d.exists():
        created.append(d)
        d = d.parent
    for c in reversed(created):
        try:
            c.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise LayraError(
                f"cannot create {c}: {e.strerror or e}; choose another location"
            ) from e
    return created


def _try_lock(path: Path, shared: bool, what: str) -> int:
    """Open and flock ``path``; the fd, or a LayraError naming the holder."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline = time.monotonic() + RETRY_S
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # another writer removed an empty parent just now
            _make_parents(path)
            continue
        except OSError as e:
            raise LayraError(
                f"cannot lock {what}: {path}: {e.strerror or e}; choose a writable location"
            ) from e
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LayraError(f"cannot lock {what}: {path}: {e.strerror or e}") from e
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            by = f" ({holder})" if holder else ""
            raise LayraError(
                f"{what} is in use by another layra process{by}; wait for it to finish or "
                "choose another output"
            ) from None
        # The file may have been removed (its holder released it) between open and flock:
        # a lock on an unlinked file guards nothing, so start again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_lock(
    target: str | Path, what: str | None = None, shared: bool = False
) -> Iterator[Path]:
    """Hold the lock of output folder ``target`` for the block; yield the lock file's path.

    Refuses with a :class:`LayraError` naming the holder's pid if another process holds
    it (``shared``: holds it exclusively). ``what`` names the output in that message
    (default: ``output <target>``). Directories created to hold the lock file are removed
    again on release if still empty, so a refused or failed command leaves nothing behind.
    """
    what = what or f"output {target}"
    path = lock_path(target)
    held = _HELD.get(path)
    if held is not None:  # this process holds it already (a sweep training inside its folder)
        if held[2] and not shared:
            raise LayraError(f"{what}: cannot write it while this process reads it (shared lock)")
        held[1] += 1
        try:
            yield path
        finally:
            held[1] -= 1
        return
    from layra.atomic import check_writable

    check_writable(target)  # an output under a file, or in a folder we cannot write
    created = _make_parents(path)
    try:
        fd = _try_lock(path, shared, what)
    except BaseException:
        _remove_empty(created)
        raise
    if not shared:  # for systems without /proc/locks (_holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{_command()}\n".encode(), 0)
    _HELD[path] = [fd, 1, shared]
    try:
        yield path
    finally:
        del _HELD[path]
        # Unlink while holding it exclusively (a shared holder only if it is the last one):
        # a writer that opened this inode meanwhile sees it gone and starts again (_try_lock).
        last = True
        if shared:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                last = False
        if last:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the flock
        _remove_empty(created)


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return  # not empty (something was written there) or gone


def holds_output_lock(
    param: str, what: str | None = None, shared: bool = False, subdirs: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Decorate a function that writes the folder its argument ``param`` names: it runs
    holding :func:`output_lock` on that folder (``param`` may be a dotted attribute path,
    e.g. ``"cfg.output_dir"``; ``what`` a message label with ``{}`` for the path), and on
    each of its ``subdirs`` that other commands write on their own (a sweep's
    ``results`` store, which ``layra eval --store`` could name)."""

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)
        name, *attrs = param.split(".")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            target = sig.bind(*args, **kwargs).arguments.get(name)
            for a in attrs:
                target = getattr(target, a)
            if target is None:
                return fn(*args, **kwargs)
            label = (what or "output {}").format(target)
            with contextlib.ExitStack() as stack:
                stack.enter_context(output_lock(target, label, shared=shared))
                for sub in subdirs:
                    sub_path = Path(target) / sub
                    stack.enter_context(output_lock(sub_path, f"{label} ({sub_path})", shared))
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
