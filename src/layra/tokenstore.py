"""Token ids on disk: one append-only file per language, committed in shards, read through mmap.

    w = TokenWriter(root, "glg", dtype=np.uint32)       # resumes after the last commit
    w.append(ids, doc_lengths); w.commit()              # fsync, then record the shard
    blocks = BlockStore(root, table)                    # blocks[i:j] -> LongTensor [j-i, seq]

A language's tokens are ``LANG.tokens`` (uint16 where the vocabulary fits, else uint32,
native little-endian) and the token count of each document in order, ``LANG.doclens``
(uint32). ``LANG.progress.json`` lists the committed shards (documents, tokens, sha256 of
the shard's token bytes); it is replaced atomically after both files are fsynced, so the
bytes it covers are on disk, and anything past it is a torn append that the next writer
truncates. Nothing is ever read beyond the committed length.

The block table (``blocks.safetensors``: ``lang`` int16, ``start`` int64) says which
language's file and which token offset each training block starts at, in training
order; a process reads only the blocks it trains on, each one slice of a memory map.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layra.atomic import atomic_write_json
from layra.errors import LayraError

# Bytes hashed and scanned per read when a store is verified: bounded memory at any size.
VERIFY_CHUNK = 1 << 24


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (below 65,536 entries), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class Shard:
    docs: int  # documents in this shard
    tokens: int  # tokens in this shard
    sha256: str  # of the shard's token bytes as stored

    def to_json(self) -> dict:
        return {"docs": self.docs, "tokens": self.tokens, "sha256": self.sha256}


class TokenWriter:
    """Append one language's token ids and document lengths; :meth:`commit` makes them durable.

    Opening an existing language resumes it: both files are cut back to the last commit.
    """

    def __init__(self, root: Path, lang: str, dtype: np.dtype):
        self.root, self.lang, self.dtype = Path(root), lang, np.dtype(dtype)
        self.tokens_path = self.root / f"{lang}.tokens"
        self.doclens_path = self.root / f"{lang}.doclens"
        self.progress_path = self.root / f"{lang}.progress.json"
        self.shards: list[Shard] = []
        self.done = False
        self.extra: dict = {}  # what the caller committed with the shards
        if self.progress_path.exists():
            prog = json.loads(self.progress_path.read_text())
            self.shards = [Shard(**s) for s in prog["shards"]]
            self.done = bool(prog.get("done"))
            self.extra = prog.get("extra", {})
        self.committed_tokens = sum(s.tokens for s in self.shards)
        self.committed_docs = sum(s.docs for s in self.shards)
        for path, n, item in (
            (self.tokens_path, self.committed_tokens, self.dtype.itemsize),
            (self.doclens_path, self.committed_docs, 4),
        ):
            with open(path, "ab") as f:  # creates it; then cut a torn append away
                if f.tell() < n * item:
                    raise LayraError(
                        f"{path} holds {f.tell()} bytes but {self.progress_path.name} records "
                        f"{n * item}; delete {self.root} to prepare it again"
                    )
                f.truncate(n * item)
        self._tok = open(self.tokens_path, "ab")  # noqa: SIM115 -- closed by close()
        self._len = open(self.doclens_path, "ab")  # noqa: SIM115
        self._hash = hashlib.sha256()
        self._pending_tokens = self._pending_docs = 0

    @property
    def tokens(self) -> int:
        """Tokens written so far, committed or not."""
        return self.committed_tokens + self._pending_tokens

    @property
    def docs(self) -> int:
        return self.committed_docs + self._pending_docs

    @property
    def pending_tokens(self) -> int:
        return self._pending_tokens

    def append(self, ids: np.ndarray, doc_lengths: np.ndarray) -> None:
        """Add documents: ``ids`` their tokens back to back, ``doc_lengths`` one count each."""
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._tok.write(data)
        self._len.write(np.ascontiguousarray(doc_lengths, dtype=np.uint32).tobytes())
        self._hash.update(data)
        self._pending_tokens += len(ids)
        self._pending_docs += len(doc_lengths)

    def commit(self, done: bool = False, extra: dict | None = None) -> None:
        """fsync what was appended, then record it as a shard, with ``extra`` (any JSON the
        caller's resumption needs) in the same atomic write. A no-op when nothing is new."""
        if extra is not None:
            self.extra = extra
        if self._pending_docs or done != self.done or extra is not None:
            for f in (self._tok, self._len):
                f.flush()
                os.fsync(f.fileno())
            if self._pending_docs:
                self.shards.append(
                    Shard(self._pending_docs, self._pending_tokens, self._hash.hexdigest())
                )
            self.done = done
            atomic_write_json(
                self.progress_path,
                {
                    "lang": self.lang,
                    "dtype": self.dtype.name,
                    "done": done,
                    "shards": [s.to_json() for s in self.shards],
                    "extra": self.extra,
                },
            )
        self.committed_tokens, self.committed_docs = self.tokens, self.docs
        self._hash = hashlib.sha256()
        self._pending_tokens = self._pending_docs = 0

    def close(self) -> None:
        self._tok.close()
        self._len.close()


def read_progress(root: Path, lang: str, with_extra: bool = False) -> tuple:
    """The committed shards of a language, whether its tokenization finished (and, with
    ``with_extra``, what was committed with them)."""
    p = Path(root) / f"{lang}.progress.json"
    prog = json.loads(p.read_text())
    out = [Shard(**s) for s in prog["shards"]], bool(prog.get("done"))
    return (*out, prog.get("extra", {})) if with_extra else out


def doc_lengths(root: Path, lang: str, n_docs: int) -> np.ndarray:
    """Token counts of a language's first ``n_docs`` documents (a memory map)."""
    if n_docs == 0:
        return np.zeros(0, np.uint32)
    return np.memmap(Path(root) / f"{lang}.doclens", dtype=np.uint32, mode="r", shape=(n_docs,))


def verify_language(root: Path, lang: str, dtype: np.dtype, vocab_size: int | None) -> int:
    """Check a language's token file against its recorded shards; returns the largest id.

    Every shard's sha256 is recomputed and, with ``vocab_size``, every id checked to be
    below it, in :data:`VERIFY_CHUNK` reads. Raises :class:`LayraError` naming the shard.
    """
    shards, _ = read_progress(root, lang)
    path = Path(root) / f"{lang}.tokens"
    item = np.dtype(dtype).itemsize
    need = sum(s.tokens for s in shards) * item
    if path.stat().st_size < need:
        raise LayraError(
            f"prepared data {path} is truncated ({path.stat().st_size} of {need} bytes); "
            f"delete {root} to prepare it again"
        )
    top = -1
    with open(path, "rb") as f:
        for n, s in enumerate(shards):
            h, left = hashlib.sha256(), s.tokens * item
            while left:
                chunk = f.read(min(left, VERIFY_CHUNK - VERIFY_CHUNK % item))
                left -= len(chunk)
                h.update(chunk)
                if chunk:
                    top = max(top, int(np.frombuffer(chunk, dtype=dtype).max()))
            if h.hexdigest() != s.sha256:
                raise LayraError(
                    f"prepared data {path}: shard {n} does not match its checksum (the file was "
                    f"changed or damaged); delete {root} to prepare it again"
                )
    if vocab_size is not None and top >= vocab_size:
        raise LayraError(
            f"prepared data {path} holds token id {top}, outside the tokenizer's "
            f"{vocab_size} entries: it was prepared with another tokenizer; delete {root}"
        )
    return top


def save_table(path: Path, lang: np.ndarray, start: np.ndarray, meta: dict) -> None:
    """Write the block table atomically (safetensors; ``meta`` as JSON metadata)."""
    import torch
    from safetensors.torch import save_file

    from layra.atomic import temp_prefix

    tmp = path.parent / temp_prefix(path.name).rstrip("-")
    tensors = {
        "lang": torch.from_numpy(np.ascontiguousarray(lang, dtype=np.int16)),
        "start": torch.from_numpy(np.ascontiguousarray(start, dtype=np.int64)),
    }
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    os.replace(tmp, path)


class BlockStore:
    """Training blocks read on demand from memory-mapped token files.

    Behaves like the ``[n_blocks, seq_len]`` LongTensor it replaces for what training
    does with it: ``len()``, ``.shape``, and indexing by an int, a slice or a sequence
    of block numbers, which reads those blocks only.
    """

    def __init__(self, root: Path, table_path: Path | None = None):
        from safetensors import safe_open

        self.root = Path(root)
        table_path = table_path or self.root / "blocks.safetensors"
        with safe_open(str(table_path), framework="np") as f:
            meta = json.loads(f.metadata()["meta"])
            self.lang = f.get_tensor("lang")
            self.start = f.get_tensor("start")
        self.langs: list[str] = meta["langs"]
        self.seq_len: int = meta["seq_len"]
        self.dtype = np.dtype(meta["dtype"])
        self._maps: dict[int, np.memmap] = {}
        for i, lang in enumerate(self.langs):
            n = int(meta["tokens"][lang])
            if n:
                self._maps[i] = np.memmap(
                    self.root / f"{lang}.tokens", dtype=self.dtype, mode="r", shape=(n,)
                )

    def __len__(self) -> int:
        return len(self.lang)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.lang), self.seq_len)

    def block_langs(self) -> list[str]:
        """The language of every block, in training order."""
        return [self.langs[i] for i in self.lang.tolist()]

    def __getitem__(self, idx):
        import torch

        if isinstance(idx, (int, np.integer)):
            return self[[range(len(self))[idx]]][0]
        rows = range(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx).tolist()
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        for k, r in enumerate(rows):
            s = int(self.start[r])
            out[k] = self._maps[int(self.lang[r])][s : s + self.seq_len]
        return torch.from_numpy(out)

    def iter_chunks(self, blocks_per_chunk: int = 4096):
        """All blocks in order, ``blocks_per_chunk`` at a time (bounded memory)."""
        for i in range(0, len(self), blocks_per_chunk):
            yield self[i : i + blocks_per_chunk]
