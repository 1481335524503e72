"""The language-vector directory: ``manifest.json`` plus ``delta.safetensors``.

    VEC/manifest.json       format, start-model fingerprint, method, languages, source,
                            per-tensor entries (see docs/vectors.md)
    VEC/delta.safetensors   dense deltas under the parameter name; low-rank factors
                            under ``NAME::A`` (r, in) and ``NAME::B`` (out, r);
                            row-sparse deltas as ``NAME::rows`` (k,) int64 row ids,
                            ascending, and ``NAME::values`` (k, ...) those rows' deltas

A tied embedding / LM head is one entry (under the embedding's name) whose
``aliases`` list the head: stored once, applied once to a tied model and to
both tensors of an untied one.

A ``rows`` entry is exact, not an approximation: every row it leaves out has a
delta of exactly zero (an embedding row no gradient and no weight decay
touched is bit-identical to the start). Writers pick it over ``dense`` when at
most half the rows changed (:func:`write_delta`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from layra.atomic import atomic_write_json
from layra.errors import LayraError
from layra.vectors.arithmetic import (
    FP32,
    WRITE_CHUNK_BYTES,
    lowrank_rows,
    require_finite,
    row_blocks,
)
from layra.vectors.shards import StreamWriter, TensorInfo, read_header, read_rows

FORMAT = "layra-vector"
VERSION = 1
MANIFEST = "manifest.json"
DELTA_FILE = "delta.safetensors"


@dataclass(frozen=True)
class Entry:
    """One weight's delta: ``dense``, ``lowrank`` (``scale · B @ A``, rank ``rank``) or
    ``rows`` (the ``rank`` rows that changed; all others are exactly zero)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int = 0
    scale: float = 1.0
    aliases: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        """The tensor keys of this entry in ``delta.safetensors``."""
        if self.kind == "dense":
            return (self.name,)
        if self.kind == "rows":
            return (f"{self.name}::rows", f"{self.name}::values")
        return (f"{self.name}::A", f"{self.name}::B")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "shape": list(self.shape)}
        if self.kind == "lowrank":
            d.update(rank=self.rank, scale=self.scale)
        elif self.kind == "rows":
            d["rows"] = self.rank
        if self.aliases:
            d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> Entry:
        return cls(
            name=name,
            kind=d["kind"],
            shape=tuple(int(s) for s in d["shape"]),
            rank=int(d.get("rows", 0) if d["kind"] == "rows" else d.get("rank", 0)),
            scale=float(d.get("scale", 1.0)),
            aliases=tuple(d.get("aliases", ())),
        )


@dataclass
class Vector:
    """A loaded vector: the manifest and where each stored tensor is (values read lazily)."""

    path: Path
    manifest: dict[str, Any]
    entries: dict[str, Entry]
    stored: dict[str, TensorInfo] = field(repr=False)

    @property
    def start(self) -> dict[str, str]:
        return self.manifest["start"]

    @property
    def label(self) -> str:
        return str(self.path)

    def factors(self, e: Entry) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of a low-rank entry, as stored; refuses NaN/inf."""
        A, B = (read_rows(self.stored[k]) for k in e.keys)
        require_finite(A, f"vector {self.label}: {e.name} (A)")
        require_finite(B, f"vector {self.label}: {e.name} (B)")
        return A, B

    def delta_rows(
        self, e: Entry, start: int = 0, stop: int | None = None, A=None, B=None, check=True
    ) -> torch.Tensor:
        """Rows ``start:stop`` of an entry's delta in float32 (low-rank materialised here).

        Pass ``A``/``B`` from :meth:`factors` to avoid re-reading them block by block;
        ``check=False`` skips the NaN/inf check of dense rows (for callers that check
        their result instead).
        """
        if e.kind == "dense":
            d = read_rows(self.stored[e.name], start, stop).to(FP32)
            if check:
                require_finite(d, f"vector {self.label}: {e.name}")
            return d
        if e.kind == "rows":
            stop = e.shape[0] if stop is None else stop
            ids = self.row_ids(e)
            lo, hi = (int(torch.searchsorted(ids, x)) for x in (start, stop))
            vals = read_rows(self.stored[e.keys[1]], lo, hi).to(FP32)
            if check:
                require_finite(vals, f"vector {self.label}: {e.name}")
            d = torch.zeros((stop - start, *e.shape[1:]), dtype=FP32)
            d[ids[lo:hi] - start] = vals
            return d
        if A is None or B is None:
            A, B = self.factors(e)
        return lowrank_rows(A, B, e.scale, start, stop)

    def row_ids(self, e: Entry) -> torch.Tensor:
        """The row ids of a ``rows`` entry (read once; checked ascending and in range)."""
        got = self._row_ids.get(e.name)
        if got is None:
            got = read_rows(self.stored[e.keys[0]]).to(torch.long)
            bad = got.numel() and (
                bool((got[1:] <= got[:-1]).any()) or int(got[0]) < 0 or int(got[-1]) >= e.shape[0]
            )
            if bad:
                raise LayraError(
                    f"vector {self.label}: row ids of {e.name} are not ascending within "
                    f"0..{e.shape[0] - 1}"
                )
            self._row_ids[e.name] = got
        return got

    def nonfinite(self, e: Entry, block_bytes: int = 64 << 20) -> int:
        """How many stored values of ``e`` are NaN or infinite (read in row blocks of
        about ``block_bytes``, so a large dense delta never sits in memory whole)."""
        bad = 0
        for key in e.keys:
            info = self.stored[key]
            if not info.dtype.is_floating_point:
                continue  # row ids
            step = max(1, block_bytes // max(1, info.row_bytes))
            for lo in range(0, info.rows, step):
                t = read_rows(info, lo, min(info.rows, lo + step))
                bad += int((~torch.isfinite(t)).sum())
        return bad

    @cached_property
    def _row_ids(self) -> dict[str, torch.Tensor]:
        return {}


VectorSpec = tuple[Vector | str | Path, float]  # a vector (or its directory) and its λ


def load_weighted(vectors: Sequence[VectorSpec]) -> list[tuple[Vector, float]]:
    """``(vector, λ)`` pairs with each vector opened: the input of combine and apply."""
    if not vectors:
        raise LayraError("no vectors given")
    out = []
    for v, lam in vectors:
        if not math.isfinite(lam):
            raise LayraError(f"λ for {v} must be a finite number, not {lam}")
        out.append((v if isinstance(v, Vector) else load_vector(v), float(lam)))
    return out


def load_vector(path: str | Path) -> Vector:
    """Open a vector directory and check its manifest against its tensor file.

    Raises :class:`LayraError` for a missing or foreign manifest, a missing
    tensor, a shape that does not fit the entry or a non-float tensor. Values
    are read (and checked for NaN/inf) only when used.
    """
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise LayraError(f"{path} is not a language vector (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise LayraError(f"{mf} is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LayraError(f"{mf} is not a layra vector manifest")
    if manifest.get("version") != VERSION:
        raise LayraError(
            f"{path}: vector format version {manifest.get('version')} is not supported"
        )
    _check_manifest(mf, manifest)
    stored: dict[str, TensorInfo] = {}
    for fname in manifest.get("files", [DELTA_FILE]):
        f = path / fname
        if not f.is_file():
            raise LayraError(f"{path}: tensor file {fname} is missing")
        stored.update(read_header(f)[0])
    entries = {n: Entry.from_json(n, d) for n, d in manifest["tensors"].items()}
    for e in entries.values():
        _check_entry(path, e, stored)
    return Vector(path, manifest, entries, stored)


def _check_manifest(mf: Path, manifest: dict[str, Any]) -> None:
    """The manifest's own structure (a damaged or hand-edited file), key by key."""
    fix = "the vector is damaged; extract it again"

    def bad(key: str, want: str) -> LayraError:
        return LayraError(f"{mf}: {key} must be {want}; {fix}")

    if not isinstance(manifest.get("start"), dict):
        raise bad("'start'", "an object (the start model's fingerprint)")
    files = manifest.get("files", [DELTA_FILE])
    if not (isinstance(files, list) and files and all(isinstance(f, str) for f in files)):
        raise bad("'files'", "a list of tensor file names")
    tensors = manifest.get("tensors")
    if not isinstance(tensors, dict):
        raise bad("'tensors'", "an object of per-tensor entries")
    for name, d in tensors.items():
        key = f"tensors[{name!r}]"
        if not isinstance(d, dict):
            raise bad(key, "an object")
        if d.get("kind") not in ("dense", "lowrank", "rows"):
            raise bad(f"{key}.kind", "'dense', 'lowrank' or 'rows'")
        shape = d.get("shape")
        if not (isinstance(shape, list) and all(isinstance(x, int) and x >= 0 for x in shape)):
            raise bad(f"{key}.shape", "a list of sizes")
        if d["kind"] == "lowrank":
            if not (isinstance(d.get("rank"), int) and d["rank"] > 0):
                raise bad(f"{key}.rank", "a positive integer")
            if not isinstance(d.get("scale", 1.0), int | float):
                raise bad(f"{key}.scale", "a number")
        if d["kind"] == "rows" and not (isinstance(d.get("rows"), int) and d["rows"] >= 0):
            raise bad(f"{key}.rows", "the number of stored rows")
        aliases = d.get("aliases", [])
        if not (isinstance(aliases, list) and all(isinstance(a, str) for a in aliases)):
            raise bad(f"{key}.aliases", "a list of parameter names")


def _check_entry(path: Path, e: Entry, stored: dict[str, TensorInfo]) -> None:
    for k in e.keys:
        if k not in stored:
            raise LayraError(f"vector {path}: tensor {k} is missing from its files")
        if k.endswith("::rows"):
            if stored[k].dtype != torch.int64:
                raise LayraError(f"vector {path}: row ids {k} are {stored[k].dtype}, not int64")
        elif not stored[k].dtype.is_floating_point:
            raise LayraError(f"vector {path}: tensor {k} has dtype {stored[k].dtype}, not a float")
    if e.kind == "dense":
        got = stored[e.name].shape
        if got != e.shape:
            raise LayraError(
                f"vector {path}: {e.name} is stored with shape {got}, manifest says {e.shape}"
            )
    elif e.kind == "rows":
        ids, vals = (stored[k] for k in e.keys)
        if (
            len(e.shape) < 2
            or ids.shape != (e.rank,)
            or vals.shape != (e.rank, *e.shape[1:])
            or e.rank > e.shape[0]
        ):
            raise LayraError(f"vector {path}: rows of {e.name} do not fit its shape {e.shape}")
    elif e.kind == "lowrank":
        a, b = (stored[k].shape for k in e.keys)
        if len(e.shape) != 2 or a != (e.rank, e.shape[1]) or b != (e.shape[0], e.rank):
            raise LayraError(f"vector {path}: factors of {e.name} do not fit its shape {e.shape}")
    else:
        raise LayraError(f"vector {path}: {e.name} has unknown kind {e.kind!r}")


def parse_spec(spec: str, default: float | None = 1.0) -> tuple[str, float | None]:
    """``"path:λ"`` → ``(path, λ)``; a bare path gets ``default``."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass  # a path that merely contains a colon
    return spec, default


class VectorWriter:
    """Write a vector directory's tensors one by one, then its manifest.

    ``planned`` lists every tensor key that may be written (with dtype and
    shape) so the file can be streamed; entries may still be dropped (e.g. a
    dense delta that turns out to be all zero) with :meth:`drop_dense`.
    """

    def __init__(self, out_dir: Path, planned: list[tuple[str, torch.dtype, tuple[int, ...]]]):
        self.dir = Path(out_dir)
        self.entries: dict[str, Entry] = {}
        self._w = StreamWriter(self.dir / DELTA_FILE, planned, {"format": "pt"})
        self._done = False

    def lowrank(
        self, name: str, A: torch.Tensor, B: torch.Tensor, scale: float, aliases=()
    ) -> None:
        e = Entry(
            name, "lowrank", (B.shape[0], A.shape[1]), A.shape[0], float(scale), tuple(aliases)
        )
        require_finite(A, f"{name} (A)")
        require_finite(B, f"{name} (B)")
        # Factors are stored in float32: lossless for bf16/fp16 adapters too.
        self._w.add(e.keys[0], A.to(FP32).contiguous())
        self._w.add(e.keys[1], B.to(FP32).contiguous())
        self.entries[name] = e

    def begin_dense(self, name: str, shape: tuple[int, ...], aliases=(), dtype=FP32) -> None:
        """Start a dense delta; its rows follow through :meth:`write_rows`."""
        self._w.begin(name, dtype, tuple(shape))
        self.entries[name] = Entry(name, "dense", tuple(shape), aliases=tuple(aliases))
        self._dtype = dtype

    def begin_sparse(
        self, name: str, shape: tuple[int, ...], ids: torch.Tensor, aliases=(), dtype=FP32
    ) -> None:
        """Start a ``rows`` delta for rows ``ids`` (ascending); their deltas follow, in
        order, through :meth:`write_rows`."""
        e = Entry(name, "rows", tuple(shape), int(ids.numel()), aliases=tuple(aliases))
        self._w.add(e.keys[0], ids.to(torch.int64).contiguous())
        self._w.begin(e.keys[1], dtype, (e.rank, *shape[1:]))
        self.entries[name] = e
        self._dtype = dtype

    def write_rows(self, rows: torch.Tensor) -> None:
        require_finite(rows, next(reversed(self.entries)))
        self._w.write(rows.to(self._dtype))

    def drop_dense(self) -> None:
        """Forget the dense delta begun last (not a ``rows`` one: that is never all zero)."""
        self._w.discard()
        self.entries.pop(next(reversed(self.entries)))

    def dense(self, name: str, delta: torch.Tensor, aliases=(), dtype=FP32) -> None:
        self.begin_dense(name, tuple(delta.shape), aliases, dtype)
        self.write_rows(delta)

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Close the tensor file and write the manifest (``tensors``/``files`` filled in)."""
        self._done = True
        self._w.close()
        full = {"format": FORMAT, "version": VERSION, **manifest}
        full["files"] = [DELTA_FILE]
        full["tensors"] = {n: e.to_json() for n, e in sorted(self.entries.items())}
        atomic_write_json(self.dir / MANIFEST, full)
        return full

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._w.abort()

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()  # the caller's atomic_dir removes the half-written directory


def planned_keys(
    e: Entry, dtype: torch.dtype = FP32
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The ``(key, dtype, shape)`` triples an entry occupies in a tensor file."""
    if e.kind in ("dense", "rows"):
        # A dense delta may be written as rows (write_delta): reserve header room for both.
        out = [(e.name, dtype, e.shape)]
        if len(e.shape) >= 2:
            out += [
                (f"{e.name}::rows", torch.int64, (e.shape[0],)),
                (f"{e.name}::values", dtype, e.shape),
            ]
        return out
    return [(e.keys[0], dtype, (e.rank, e.shape[1])), (e.keys[1], dtype, (e.shape[0], e.rank))]


# A delta with at most this fraction of rows changed is stored as those rows. Half: the
# row-finding pass then costs at most half a pass more when the delta turns out dense.
SPARSE_MAX_FRACTION = 0.5


def write_delta(
    w: VectorWriter,
    name: str,
    shape: tuple[int, ...],
    block: Callable[[int, int], torch.Tensor],
    aliases=(),
    dtype: torch.dtype = FP32,
    chunk_bytes: int = WRITE_CHUNK_BYTES,
) -> str | None:
    """Stream a delta given as float32 blocks of rows, ``block(start, stop)``, into ``w``.

    Returns the kind written: ``"rows"`` when at most :data:`SPARSE_MAX_FRACTION` of
    the rows are non-zero
    (a first pass finds them; exact, the others are zero), ``"dense"`` otherwise,
    None (nothing written) when the delta is all zero. ``dtype`` is the stored
    dtype of the values.
    """
    shape = tuple(shape)
    rows = shape[0] if shape else 1
    row_elems = max(1, math.prod(shape[1:])) if shape else 1
    blocks = list(row_blocks(rows, row_elems, chunk_bytes))
    if len(shape) >= 2:
        ids, limit = [], int(rows * SPARSE_MAX_FRACTION)
        count = 0
        for start, stop in blocks:
            d = block(start, stop).reshape(stop - start, -1)
            hit = d.ne(0).any(dim=1).nonzero().squeeze(1) + start
            ids.append(hit)
            count += hit.numel()
            if count > limit:
                break
        if count == 0:
            return None
        if count <= limit:
            ids_t = torch.cat(ids)
            w.begin_sparse(name, shape, ids_t, aliases, dtype)
            for start, stop in blocks:
                local = ids_t[(ids_t >= start) & (ids_t < stop)] - start
                if local.numel():
                    w.write_rows(block(start, stop)[local])
            return "rows"
    w.begin_dense(name, shape, aliases, dtype)
    nonzero = False
    for start, stop in blocks:
        d = block(start, stop)
        nonzero = nonzero or bool(d.any())
        w.write_rows(d.reshape(stop - start, *shape[1:]) if shape else d.reshape(shape))
    if not nonzero:
        w.drop_dense()
        return None
    return "dense"
