"""Streaming safetensors I/O: read row ranges, copy raw bytes, write without holding tensors.

The ``safetensors`` package reads through a memory map (every page touched
stays in the process's RSS until the file is closed) and writes only from a
dict of in-memory tensors. Applying a vector to a 16 GB model needs neither:
rows are read with ``pread`` into small buffers, tensors a vector does not touch
are copied file-to-file in the kernel (``copy_file_range``), and a file is
written front to back with its header filled in last (space for it is reserved
up front, padded with blanks, which the format allows). Files written here load
with ``safetensors`` and ``transformers`` unchanged; the tests check that.

The format: 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data, offsets relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from layra.errors import LayraError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute byte offset, length, dtype, shape."""

    name: str
    path: Path
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.nbytes // self.rows if self.rows else 0


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors of one safetensors file (in file order) and its ``__metadata__``.

    Raises :class:`LayraError` if the file is not valid safetensors.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LayraError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise LayraError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LayraError(f"{path} is not a safetensors file ({e})") from e
    if not isinstance(header, dict) or not all(isinstance(h, dict) for h in header.values()):
        raise LayraError(f"{path} is not a safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos = []
    for name, h in header.items():
        dt = DTYPES.get(h.get("dtype"))
        if dt is None:
            raise LayraError(f"{path}: tensor {name} has unsupported dtype {h.get('dtype')!r}")
        try:
            begin, end = (int(x) for x in h["data_offsets"])
            shape = tuple(int(s) for s in h["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise LayraError(f"{path}: tensor {name} has a damaged header entry ({e!r})") from e
        if end - begin != math.prod(shape) * dt.itemsize or base + end > size:
            raise LayraError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
        infos.append(TensorInfo(name, path, base + begin, end - begin, dt, shape))
    infos.sort(key=lambda t: t.offset)
    return {t.name: t for t in infos}, meta


def read_rows(info: TensorInfo, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Rows ``start:stop`` of a tensor (the whole tensor by default), read with ``pread``."""
    stop = info.rows if stop is None else stop
    nbytes = (stop - start) * info.row_bytes
    shape = (stop - start, *info.shape[1:]) if info.shape else ()
    if nbytes == 0:
        return torch.empty(shape, dtype=info.dtype)
    buf = torch.empty(nbytes, dtype=torch.uint8)  # not zero-filled, unlike bytearray
    view = memoryview(buf.numpy())
    with open(info.path, "rb", buffering=0) as f:
        got = 0
        while got < nbytes:
            k = os.preadv(f.fileno(), [view[got:]], info.offset + start * info.row_bytes + got)
            if k == 0:
                raise LayraError(f"{info.path}: unexpected end of file reading {info.name}")
            got += k
    return buf.view(info.dtype).reshape(shape)


def read_elements(info: TensorInfo, positions: torch.Tensor) -> torch.Tensor:
    """The elements at the given flat positions (a fingerprint's ~1024 samples).

    Gathered through a memory map that is closed again at once: only the pages
    holding the samples are read, and they leave the process's RSS right after.
    """
    size = info.dtype.itemsize
    if len(positions) == 0:
        return torch.empty(0, dtype=info.dtype)
    byte_idx = (info.offset + positions.numpy()[:, None] * size + np.arange(size)).reshape(-1)
    with open(info.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        raw = np.frombuffer(mm, dtype=np.uint8)
        picked = raw[byte_idx].copy()  # fancy indexing copies; drop the view before closing
        del raw
    return torch.from_numpy(picked).view(info.dtype)


def copy_range(src_fd: int, offset: int, nbytes: int, dst_fd: int, dst_offset: int) -> None:
    """Copy ``nbytes`` of ``src_fd`` from ``offset`` to ``dst_fd`` at ``dst_offset``.

    In the kernel (``copy_file_range``) where it can, so the bytes never enter
    this process.
    """
    done = 0
    try:
        while done < nbytes:
            k = os.copy_file_range(src_fd, dst_fd, nbytes - done, offset + done, dst_offset + done)
            if k == 0:
                break
            done += k
    except OSError:
        pass  # e.g. EXDEV on old kernels: fall back to read/write below
    while done < nbytes:
        chunk = os.pread(src_fd, min(64 << 20, nbytes - done), offset + done)
        if not chunk:
            raise LayraError(f"unexpected end of file copying {nbytes} bytes")
        _pwrite_all(dst_fd, chunk, dst_offset + done)
        done += len(chunk)


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


def copy_file(src: Path, dst: Path) -> None:
    """Copy a whole file in the kernel and fsync it."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        copy_range(s.fileno(), 0, os.fstat(s.fileno()).st_size, d.fileno(), 0)
        os.fsync(d.fileno())


class StreamWriter:
    """Write a safetensors file tensor by tensor, never holding more than one chunk.

    ``planned`` is every tensor that *may* be written, ``(name, dtype, shape)``:
    header space for all of them is reserved at the start, so tensors can be
    dropped later (e.g. a delta that turned out to be zero). Tensors are written
    in any order with :meth:`add`, :meth:`add_raw` or :meth:`begin` + :meth:`write`;
    :meth:`close` fills in the header and fsyncs.
    """

    def __init__(
        self,
        path: Path,
        planned: list[tuple[str, torch.dtype, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.metadata = dict(metadata or {"format": "pt"})
        self._header: dict[str, dict] = {}
        # Widest possible header: every planned tensor with 20-digit offsets.
        widest = {"__metadata__": self.metadata}
        for name, dtype, shape in planned:
            big = 10**19
            widest[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [big, big]}
        reserve = len(json.dumps(widest, separators=(",", ":")).encode()) + 64
        self._reserve = reserve + (-(8 + reserve)) % 8  # data starts 8-byte aligned
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._data0 = 8 + self._reserve  # file offset of the data section
        self._pos = 0  # bytes of data written
        self._open: tuple[str, int] | None = None  # (name, bytes still expected)
        # File writes run on one background thread (they release the GIL), so the
        # next block is computed while this one is written; two blocks in flight at most.
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (job := self._q.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e
            self._q.task_done()
        self._q.task_done()

    def _submit(self, job) -> None:
        if self._error is not None:
            raise self._error
        self._q.put(job)

    def _wait(self) -> None:
        self._q.join()
        if self._error is not None:
            raise self._error

    def begin(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        """Start a tensor whose bytes follow through :meth:`write` calls."""
        self._finish_open()
        nbytes = math.prod(shape) * dtype.itemsize
        self._header[name] = {
            "dtype": CODES[dtype],
            "shape": list(shape),
            "data_offsets": [self._pos, self._pos + nbytes],
        }
        self._open = (name, nbytes)

    def write(self, t: torch.Tensor) -> None:
        """Append a chunk (whole rows, in order) of the tensor begun last.

        The chunk is written in the background: do not modify ``t`` afterwards.
        """
        name, left = self._open
        nbytes = t.numel() * t.element_size()
        if nbytes > left:
            raise RuntimeError(f"too many bytes written for {name}")
        if nbytes:
            # A byte view of the tensor's memory (kept alive by the job): no copy.
            data = t.contiguous().reshape(-1).view(torch.uint8).numpy()
            offset = self._data0 + self._pos
            self._submit(lambda: _pwrite_all(self._fd, data, offset))
        self._pos += nbytes
        self._open = (name, left - nbytes)

    def add(self, name: str, t: torch.Tensor) -> None:
        """Write a whole tensor."""
        self.begin(name, t.dtype, tuple(t.shape))
        self.write(t)

    def add_raw(self, name: str, info: TensorInfo) -> None:
        """Copy a tensor's bytes unchanged from another safetensors file."""
        self.begin(name, info.dtype, info.shape)
        offset = self._data0 + self._pos

        def job() -> None:
            with open(info.path, "rb") as src:
                copy_range(src.fileno(), info.offset, info.nbytes, self._fd, offset)

        self._submit(job)
        self._pos += info.nbytes
        self._open = (name, 0)

    def discard(self) -> None:
        """Take back the tensor begun last (e.g. a delta that turned out all zero)."""
        self._wait()
        name = next(reversed(self._header))
        begin = self._header.pop(name)["data_offsets"][0]
        os.ftruncate(self._fd, self._data0 + begin)
        self._pos = begin
        self._open = None

    def _finish_open(self) -> None:
        if self._open and self._open[1]:
            raise RuntimeError(f"tensor {self._open[0]} is missing {self._open[1]} bytes")
        self._open = None

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()

    def close(self) -> None:
        """Write the header and fsync; the file is complete after this returns."""
        self._finish_open()
        try:
            self._wait()
        finally:
            self._stop()
        header = {"__metadata__": self.metadata, **self._header}
        raw = json.dumps(header, separators=(",", ":")).encode()
        if len(raw) > self._reserve:
            raise RuntimeError("safetensors header outgrew its reserved space")
        raw += b" " * (self._reserve - len(raw))
        _pwrite_all(self._fd, struct.pack("<Q", len(raw)) + raw, 0)
        os.ftruncate(self._fd, self._data0 + self._pos)  # in case of a discard at the end
        os.fsync(self._fd)
        os.close(self._fd)

    def abort(self) -> None:
        """Stop writing; the (incomplete) file is left for the caller to delete."""
        self._error = self._error or RuntimeError("aborted")
        self._stop()
        os.close(self._fd)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
