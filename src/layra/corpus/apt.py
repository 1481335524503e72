"""Fetch Debian packages with ``apt-get download`` and unpack them into a cache.

    pkg = fetch_package("libreoffice-help-gl", Path("~/.cache/layra/debian"))
    pkg.root / "usr/share/libreoffice/help/gl"

Cache layout::

    CACHE/NAME_VERSION_ARCH.deb          as apt-get downloads it
    CACHE/unpacked/NAME_VERSION_ARCH/    its files (only those matching the patterns)

A cached ``.deb`` is used without asking apt, so a filled cache works offline.
Unpacked trees are written atomically, so one that exists is complete.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from layra.atomic import atomic_dir
from layra.errors import LayraError


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    deb: Path  # the downloaded .deb
    root: Path  # unpacked tree: root / "usr/share/..."


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LayraError(
            f"{name} not found: `layra corpus debian` needs a Debian or Ubuntu system "
            "(apt-get, dpkg-deb); use `layra corpus files` for local text"
        )
    return path


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([_tool(cmd[0]), *cmd[1:]], capture_output=True, text=True, **kw)


def _cached_deb(name: str, cache: Path) -> Path | None:
    debs = sorted(cache.glob(f"{name}_*.deb"), key=lambda p: p.stat().st_mtime)
    return debs[-1] if debs else None


def download(name: str, cache: Path) -> Path:
    """The ``.deb`` of package ``name`` in ``cache``, downloaded with apt if missing.

    Raises :class:`LayraError` with the command to run when apt does not know
    the package (package lists missing or stale).
    """
    cache.mkdir(parents=True, exist_ok=True)
    if (deb := _cached_deb(name, cache)) is not None:
        return deb
    # Download into a temporary directory so an interrupted download never
    # looks like a cached package.
    with tempfile.TemporaryDirectory(prefix=f".{name}.tmp-", dir=cache) as tmp:
        res = _run(["apt-get", "download", name], cwd=tmp)
        if res.returncode != 0:
            err = res.stderr.strip()
            if "Unable to locate package" in err or "no installation candidate" in err:
                raise LayraError(
                    f"apt does not know package {name}; run `sudo apt-get update` "
                    "(package lists missing or stale) and try again"
                )
            lines = [ln for ln in err.splitlines() if ln.startswith("E:")] or err.splitlines()
            raise LayraError(
                f"apt-get download {name} failed: {lines[0] if lines else res.returncode}"
            )
        got = list(Path(tmp).glob(f"{name}_*.deb"))
        if len(got) != 1:
            raise LayraError(f"apt-get download {name} produced no .deb file")
        target = cache / got[0].name
        shutil.move(str(got[0]), target)
    return target


def deb_version(deb: Path) -> str:
    """The ``Version`` field of a ``.deb``."""
    res = _run(["dpkg-deb", "--field", str(deb), "Version"])
    if res.returncode != 0:
        raise LayraError(f"{deb} is not a readable Debian package: {res.stderr.strip()}")
    return res.stdout.strip()


def unpack(deb: Path, dest: Path, patterns: tuple[str, ...] | None = None) -> Path:
    """Unpack ``deb``'s files (all, or those matching ``patterns``) into ``dest``.

    Equivalent to ``dpkg-deb -x`` restricted to the paths we read: the data
    tarball from ``dpkg-deb --fsys-tarfile`` is streamed through Python's
    ``tarfile`` with the ``data`` extraction filter (no absolute paths, links
    out of the tree or device files). Patterns are shell globs on member
    paths without the leading ``./``, e.g. ``usr/share/doc/*``. Returns
    ``dest``; an existing ``dest`` is reused as it is.
    """
    if dest.exists():
        return dest
    with atomic_dir(dest) as tmp:
        proc = subprocess.Popen(
            [_tool("dpkg-deb"), "--fsys-tarfile", str(deb)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tf:
                for member in tf:
                    path = member.name.removeprefix("./")
                    # Only regular files and directories: the text we read never
                    # sits behind a link, and links may point outside the tree.
                    if not (member.isfile() or member.isdir()):
                        continue
                    if patterns is None or any(fnmatch.fnmatch(path, p) for p in patterns):
                        tf.extract(member, tmp, filter="data")
        except tarfile.TarError as e:
            proc.kill()
            err = proc.stderr.read().decode(errors="replace").strip()
            raise LayraError(f"dpkg-deb could not unpack {deb}: {err or e}") from e
        finally:
            proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise LayraError(f"dpkg-deb could not unpack {deb}: {err}")
    return dest


def fetch_package(name: str, cache: Path, patterns: tuple[str, ...] | None = None) -> Package:
    """Download (or reuse) and unpack package ``name`` under ``cache``."""
    deb = download(name, cache)
    root = unpack(deb, cache / "unpacked" / deb.stem, patterns)
    return Package(name=name, version=deb_version(deb), deb=deb, root=root)
