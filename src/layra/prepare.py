"""Prepare training data once, on every core, in bounded memory: tokens on disk, read by mmap.

    layra data prepare --config configs/gemma3-270m-layra-gl.yaml   # or, from Python:
    data = prepare(cfg.data, tokenizer, seed=0)   # reused when already prepared
    data.blocks[0:4]                               # LongTensor [4, seq_len], read from disk
    data.heldout["glg"]                            # held-out documents (never in blocks)

A prepared dataset is a directory ``<cache>/<key>``; the key hashes everything the
blocks depend on (sources with their files' sizes and modification times, the
tokenizer, ``seq_len``, budget, mix, held-out rule, shuffle and seed), so ``layra
train``, sweeps and the demo find a matching one instead of tokenizing again, and every
process of a multi-process run reads the same files. ``<cache>`` is ``data.cache_dir``,
else ``$LAYRA_DATA_CACHE``, else ``$LAYRA_CACHE/prepared``, else ``~/.cache/layra/prepared``.

The blocks are those :mod:`layra.data` defines (same documents, same order, same cut,
same shuffle). The work runs in passes, each resumable or cheap to redo:

1. **index** — each local source is read in pieces cut at blank lines (documents are
   found by byte span; ``.jsonl``/``.parquet`` training documents are copied once into
   ``LANG.text``); workers decode, apply the held-out rule and return spans. Output:
   ``LANG.index.npz`` (spans) and ``LANG.candidates.jsonl`` (held-out documents).
2. **tokenize** — the spans in the seeded random order, in batches, through a pool of
   worker processes (one per core, each with its own copy of the tokenizer), appended
   to ``LANG.tokens`` and committed in shards of :data:`SHARD_TOKENS`
   (:class:`layra.tokenstore.TokenWriter`); a kill resumes after the last shard. A hub
   source is streamed after the local ones (not resumable within it: convert it with
   ``layra corpus hf`` for that).
3. **near-duplicates** — the training documents that were used are read again and
   checked against the held-out candidates by the workers (:class:`NearDupIndex`).
4. **blocks** — the block table, ``stats.json`` and ``heldout/``; ``prepared.json``
   last, the completion marker.

Memory: spans (16 bytes per document), the held-out documents, a few batches in flight
per worker. Nothing holds the training text or its tokens whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from layra.atomic import atomic_write_json, atomic_write_text, clean_stale
from layra.config import DataConfig, SourceConfig
from layra.documents import (
    MAX_DOCUMENT_BYTES,
    block_spans,
    documents_jsonl,
    read_documents,
    span_document,
    txt_pieces,
)
from layra.errors import LayraError
from layra.tokenstore import (
    VERIFY_CHUNK,
    BlockStore,
    TokenWriter,
    doc_lengths,
    read_progress,
    save_table,
    token_dtype,
    verify_language,
)

FORMAT = 1  # of the prepared directory; part of the key
SHARD_TOKENS = 1 << 24  # tokens per committed shard (64 MiB of uint32)
READ_BYTES = 1 << 24  # a local .txt file is read and cut into pieces of about this size
BATCH_BYTES = 1 << 21  # text per tokenization task
BATCH_DOCS = 4096
INLINE_BYTES = 1 << 22  # less text than this is prepared in this process (no pool start-up)

Say = Callable[[str], None]


@dataclass
class PreparedData:
    """A prepared dataset, opened: blocks on disk, held-out text and stats in memory."""

    root: Path
    blocks: BlockStore
    heldout: dict[str, list[str]]
    stats: dict
    fingerprint: str

    @property
    def block_lang(self) -> list[str]:
        return self.blocks.block_langs()


# ---------------------------------------------------------------------------- key, lock


def cache_root(cfg: DataConfig) -> Path:
    """Where prepared datasets live (see the module docstring)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("LAYRA_DATA_CACHE"):
        return Path(os.environ["LAYRA_DATA_CACHE"]).expanduser()
    base = os.environ.get("LAYRA_CACHE") or Path.home() / ".cache" / "layra"
    return Path(base).expanduser() / "prepared"


_BACKEND_JSON: dict[int, tuple] = {}


def _backend_json(tokenizer) -> str:
    """The Rust backend's JSON (serialising Gemma 3's takes 0.3 s: done once per tokenizer)."""
    backend = tokenizer.backend_tokenizer
    hit = _BACKEND_JSON.get(id(tokenizer))
    if hit is None or hit[0] is not backend:
        hit = _BACKEND_JSON[id(tokenizer)] = (backend, backend.to_str())
    return hit[1]


def tokenizer_identity(tokenizer) -> str:
    """A hash of what decides the ids: the full tokenizer definition where there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    if backend is not None:
        h.update(_backend_json(tokenizer).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id)).encode())
    return h.hexdigest()[:24]


def _source_identity(src: SourceConfig) -> dict:
    from layra.data import local_files, source_format

    fmt = source_format(src)
    d = {k: v for k, v in asdict(src).items() if k != "weight" or v is not None}
    d["format"] = fmt
    if fmt != "hf":
        files = []
        for f in local_files(src, fmt):
            st = Path(f).stat()
            files.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
        d["files"] = files
        d["path"] = str(Path(src.path).expanduser().resolve())
    return d


def definition(cfg: DataConfig, tokenizer, seed: int) -> dict:
    """Everything the prepared blocks depend on (hashed into the directory's key)."""
    return {
        "format": FORMAT,
        "sources": [_source_identity(s) for s in cfg.sources],
        "tokenizer": tokenizer_identity(tokenizer),
        "seq_len": cfg.seq_len,
        "max_tokens": cfg.max_tokens,
        "mix": cfg.mix,
        "heldout_fraction": cfg.heldout_fraction,
        "heldout_max_docs": cfg.heldout_max_docs,
        "shuffle": cfg.shuffle,
        "seed": seed,
    }


def dataset_key(defn: dict) -> str:
    return hashlib.sha256(json.dumps(defn, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(path: Path, say: Say) -> Iterator[None]:
    """An exclusive lock (flock: the OS drops it when the holder dies, so none goes stale)."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            say(f"data: waiting for process {f.read().strip() or '?'} preparing the same data")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------- workers

_W: dict = {}  # per worker process: tokenizer, open files, near-duplicate indexes


def _encoder(tok_spec: tuple) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> ids with special tokens, from a spec of :func:`_tokenizer_spec`."""
    mode, path, _ = tok_spec
    if mode == "backend":
        from tokenizers import Tokenizer

        bt = Tokenizer.from_file(path)
        bt.no_padding()
        bt.no_truncation()
        enc = getattr(bt, "encode_batch_fast", bt.encode_batch)
        return lambda texts: [e.ids for e in enc(texts, add_special_tokens=True)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)  # saved by the parent (save_pretrained)
    return lambda texts: tok(texts, add_special_tokens=True)["input_ids"]


def _init_worker(tok_spec: tuple, in_process: bool = False) -> None:
    if not in_process:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core already
    _W["files"] = {}
    _W["near"] = {}
    if tok_spec[0] != "none":  # "none": pass 1 reads and hashes text only
        _W["encode"] = _encoder(tok_spec)
        _W["eos"] = tok_spec[2]


def _read_span(path: str, start: int, end: int) -> bytes:
    files = _W.setdefault("files", {})
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, end - start, start)


def _words_key(doc: str, fraction: float) -> tuple[bool, bytes]:
    """(held out?, the document's words joined by spaces, as UTF-8): its ``normal_key``
    when it has words. The words are kept for the near-duplicate check of pass 2, so the
    text is normalised and split once (``b""`` when no document is held out)."""
    from layra.data import key_is_heldout
    from layra.neardup import words

    if fraction <= 0:
        return False, b""
    joined = " ".join(words(doc))
    key = joined or " ".join(doc.casefold().split())  # normal_key's fallback
    return key_is_heldout(key, fraction), joined.encode("utf-8")


def _index_piece(task: tuple) -> tuple[np.ndarray, np.ndarray, list[str], bytes, np.ndarray]:
    """Pass 1 on one piece of a .txt file: spans of training documents, held-out documents,
    the training documents' words (joined) and the length of each."""
    path, base, end, fraction = task
    data = _read_span(path, base, end)
    starts, ends, held = array("q"), array("q"), []
    keys, klens = [], array("q")
    for s, e in block_spans(data):
        if e - s > MAX_DOCUMENT_BYTES:
            raise LayraError(
                f"{path}: the document at byte {base + s:,} is larger than "
                f"{MAX_DOCUMENT_BYTES >> 20} MiB; separate documents with blank lines"
            )
        try:
            doc = span_document(data[s:e])
        except UnicodeDecodeError as err:
            raise LayraError(
                f"{path}: not valid UTF-8 (byte {base + s + err.start}); convert it to UTF-8 first"
            ) from None
        if not doc:
            continue
        out, key = _words_key(doc, fraction)
        if out:
            held.append(doc)
        else:
            starts.append(base + s)
            ends.append(base + e)
            keys.append(key)
            klens.append(len(key))
    st, en = np.frombuffer(starts, np.int64), np.frombuffer(ends, np.int64)
    return st, en, held, b"".join(keys), np.frombuffer(klens, np.int64)


def _task_texts(task: tuple) -> list[str]:
    kind, payload = task
    if kind == "texts":
        return payload
    paths, raw, fid, st, en, _ = payload
    out = []
    for f, s, e in zip(fid, st, en, strict=True):
        b = _read_span(paths[f], s, e)
        out.append(b.decode("utf-8") if raw[f] else span_document(b))  # raw: stored exactly
    return out


def read_candidates(paths, start: int = 0, stop: int | None = None) -> list[str]:
    """Held-out candidates ``[start, stop)`` of the files ``paths``, read in order."""
    import itertools

    docs = (doc for p in paths for doc in read_documents(p))
    return list(itertools.islice(docs, start, stop))


def _near_index(cands: tuple):
    """This worker's :class:`NearDupIndex` of candidates ``(paths, start, stop)`` (built once)."""
    from layra.neardup import NearDupIndex

    near = _W.setdefault("near", {})
    index = near.get(cands)
    if index is None:
        near.clear()
        index = near[cands] = NearDupIndex(read_candidates(*cands))
    return index


def _tokenize(task: tuple) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Pass 2: a batch of documents -> (their ids with EOS after each, one length each,
    (document in batch, held-out candidate) pairs it nearly duplicates).

    The near-duplicate check runs here, on the text just read, when held-out candidates
    ``(paths, start, stop)`` are given.
    """
    inner, cands = task
    texts = _task_texts(inner)
    ids = _W["encode"](texts)
    lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    out = np.empty(int(lens.sum()), dtype=np.int64)
    pos = 0
    for x, n in zip(ids, lens.tolist(), strict=True):
        out[pos : pos + n - 1] = x
        out[pos + n - 1] = _W["eos"]
        pos += n
    pairs = []
    if cands:
        index = _near_index(cands)
        for i, w in enumerate(_task_words(inner, texts)):
            pairs += [(i, cands[1] + h) for h in index.matches_words(w)]
    return out, lens, pairs


def _near(task: tuple) -> list[int]:
    """Pass 3: held-out candidates that some document of the batch nearly duplicates."""

    cands, inner = task
    index = _near_index(cands)
    found: dict[int, float] = {}
    for w in _task_words(inner, _task_texts(inner)):
        found.update(index.matches_words(w, skip=found))
    return sorted(cands[1] + h for h in found)


class _Inline:
    """An executor that runs each task at once in this process (small data, one core)."""

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 -- handed back through the future
            f.set_exception(e)
        return f

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


_WORKER_DIED = (
    "a data worker process died (out of memory, killed, or it could not start: spawned "
    "workers import the main script, whose code must be under `if __name__ == "
    "'__main__':`); rerun to resume, or prepare with one worker (--workers 1)"
)


def _result(fut: Future, pool):
    """``fut.result()``, but a worker that died without breaking the pool (one that failed
    while starting) is an error instead of a wait forever."""
    from concurrent.futures import wait

    while not wait([fut], timeout=2.0).done:
        procs = getattr(pool, "_processes", None) or {}
        if any(p.exitcode is not None for p in list(procs.values())):
            raise LayraError(_WORKER_DIED)
    return fut.result()


def _ordered(pool, fn, tasks, window: int) -> Iterator:
    """``fn`` over ``tasks`` in order, at most ``window`` in flight (bounded memory)."""
    from concurrent.futures.process import BrokenProcessPool

    futs: deque[Future] = deque()
    try:
        for t in tasks:
            futs.append(pool.submit(fn, t))
            if len(futs) >= window:
                yield _result(futs.popleft(), pool)
        while futs:
            yield _result(futs.popleft(), pool)
    except BrokenProcessPool as e:
        raise LayraError(_WORKER_DIED) from e
    finally:
        for f in futs:
            f.cancel()


def _tokenizer_spec(tokenizer, probe: list[str], d: Path) -> tuple:
    """How workers rebuild the tokenizer, from a file in ``d`` (a spawned worker gets its
    start-up arguments through a pipe: a path, not megabytes): the Rust backend's JSON when
    it gives the ids the tokenizer's own call gives on ``probe`` (fast tokenizers), else
    the whole tokenizer (``save_pretrained``)."""
    eos = tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        enc = getattr(backend, "encode_batch_fast", backend.encode_batch)
        want = tokenizer(probe, add_special_tokens=True)["input_ids"]
        if [e.ids for e in enc(probe, add_special_tokens=True)] == want:
            path = d / "tokenizer.json"
            atomic_write_text(path, _backend_json(tokenizer))
            return ("backend", str(path), eos)
    path = d / "tokenizer"
    if not path.exists():
        tokenizer.save_pretrained(str(path))
    return ("hf", str(path), eos)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _spawn_can_start() -> bool:
    """Spawned workers import the main script again: impossible when it is not a file
    (``python -`` reading stdin), where a pool would wait forever for its workers."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is None or Path(path).is_file()


def _make_pool(workers: int, spec: tuple):
    import multiprocessing

    if workers <= 1:
        _init_worker(spec, in_process=True)
        return _Inline()
    # spawn: workers start clean (no forked tokenizer thread pools or torch state).
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(spec,),
    )


# ---------------------------------------------------------------------------- pass 1: index


def _txt_pieces(path: str, fraction: float, bar) -> Iterator[tuple]:
    """Pass 1 tasks: pieces of a .txt file cut just after blank lines."""
    for base, piece in txt_pieces(path, READ_BYTES):
        bar.update(len(piece))
        # The worker reads the piece again (page cache): a task stays a few bytes in the pipe.
        yield (path, base, base + len(piece), fraction)


def _copy_rows(src: SourceConfig, store, keys, files: list, fraction: float, held: list[str]):
    """A .jsonl/.parquet source's training documents copied into ``store`` (spans returned),
    their words into ``keys``."""
    from layra.data import iter_documents

    fid = len(files) - 1
    cols = [array("q") for _ in range(4)]  # start, end, key start, key end
    for doc in iter_documents(src):
        out, key = _words_key(doc, fraction)
        if out:
            held.append(doc)
            continue
        b = doc.encode("utf-8")
        for col, v in zip(
            cols,
            (store.tell(), store.tell() + len(b), keys.tell(), keys.tell() + len(key)),
            strict=True,
        ):
            col.append(v)
        store.write(b + b"\n\n")
        keys.write(key)
    st, en, kst, ken = (np.frombuffer(c, np.int64) for c in cols)
    return np.full(len(st), fid, np.int32), st, en, kst, ken


def _index_language(
    d: Path, lang: str, sources: list[SourceConfig], fraction: float, pool, window: int, bar
) -> dict:
    """Pass 1 for one language (redone whole if it was killed; it is the cheap pass)."""
    from layra.data import local_files, source_format

    marker = d / f"{lang}.index.json"
    if marker.exists():
        return json.loads(marker.read_text())
    files: list[list] = []  # [path, raw]: raw = a store of exact documents (no .txt rule)
    cols: list[list[np.ndarray]] = [[], [], [], [], []]  # file, start, end, key start, key end
    held: list[str] = []
    store_path = d / f"{lang}.text"
    with open(store_path, "wb") as store, open(d / f"{lang}.keys", "wb") as keys:
        for src in sources:
            fmt = source_format(src)
            if fmt == "hf":
                continue
            if fmt != "txt":
                if not any(f[0] == str(store_path) for f in files):
                    files.append([str(store_path), True])
                for col, a in zip(
                    cols, _copy_rows(src, store, keys, files, fraction, held), strict=True
                ):
                    col.append(a)
                continue
            for path in local_files(src, fmt):
                files.append([str(Path(path).resolve()), False])
                pieces = _txt_pieces(files[-1][0], fraction, bar)
                for st, en, h, kb, klen in _ordered(pool, _index_piece, pieces, window):
                    kend = keys.tell() + np.cumsum(klen)
                    for col, a in zip(
                        cols,
                        (np.full(len(st), len(files) - 1, np.int32), st, en, kend - klen, kend),
                        strict=True,
                    ):
                        col.append(a)
                    keys.write(kb)
                    held.extend(h)
        for f in (store, keys):
            f.flush()
            os.fsync(f.fileno())
    cat = lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t)  # noqa: E731
    fid, st, en, kst, ken = cat(cols[0], np.int32), *(cat(c, np.int64) for c in cols[1:])
    tmp = d / f".{lang}.index.npz.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, fid=fid, start=st, end=en, kstart=kst, kend=ken)
    os.replace(tmp, d / f"{lang}.index.npz")
    atomic_write_text(d / f"{lang}.candidates.jsonl", documents_jsonl(held))
    info = {
        "files": files,
        "n_train": len(st),
        "n_heldout": len(held),
        "bytes": int((en - st).sum()),
    }
    atomic_write_json(marker, info)
    return info


def _load_index(d: Path, lang: str) -> tuple[np.ndarray, ...]:
    """(file, start, end, key start, key end) of each training document, in source order."""
    with np.load(d / f"{lang}.index.npz", allow_pickle=False) as z:
        return z["fid"], z["start"], z["end"], z["kstart"], z["kend"]


def local_order(n: int, seed: int) -> np.ndarray:
    """The seeded random order of ``n`` local documents: exactly ``random.Random(seed).shuffle``
    of them as a list (the shuffle depends only on the length), 8 bytes per document."""
    a = array("q", range(n))
    random.Random(seed).shuffle(a)
    return np.frombuffer(a, np.int64)


# ---------------------------------------------------------------------------- pass 2: tokenize


def _span_batches(
    files: list, fid, st, en, order: np.ndarray, first: int = 0, keys: tuple | None = None
) -> Iterator[tuple]:
    """Tasks of about :data:`BATCH_BYTES` of text over ``order[first:]``; with ``keys``
    (``(path, key start, key end)``), each task also names its documents' words."""
    paths = [f[0] for f in files]
    raw = [f[1] for f in files]
    i = first
    while i < len(order):
        sel = order[i : i + BATCH_DOCS]
        sizes = np.cumsum(en[sel] - st[sel])
        j = max(1, int(np.searchsorted(sizes, BATCH_BYTES, side="right")))
        sel = sel[:j]
        words = (keys[0], keys[1][sel].tolist(), keys[2][sel].tolist()) if keys else None
        spans = (paths, raw, fid[sel].tolist(), st[sel].tolist(), en[sel].tolist(), words)
        yield ("spans", spans)
        i += j


def _task_words(task: tuple, texts: list[str]) -> list[list[str]]:
    """The words of a task's documents: read back from pass 1 when it kept them."""
    from layra.neardup import words

    kind, payload = task
    if kind == "spans" and payload[5] is not None:
        path, kst, ken = payload[5]
        out = []
        for s, e in zip(kst, ken, strict=True):
            joined = _read_span(path, s, e).decode("utf-8") if e > s else ""
            out.append(joined.split(" ") if joined else [])
        return out
    return [words(t) for t in texts]


class _HubReader:
    """Hub documents streamed after the local ones: training ones copied to ``LANG.hub.text``
    (pass 3 reads them again), held-out ones kept with the training count before them."""

    def __init__(self, d: Path, lang: str, sources: list[SourceConfig], fraction: float, seed):
        self.path = d / f"{lang}.hub.text"
        self.sources, self.fraction, self.seed = sources, fraction, seed
        self.starts, self.ends = array("q"), array("q")
        self.held: list[tuple[int, str]] = []

    def batches(self) -> Iterator[tuple]:
        from layra.data import is_heldout, iter_documents

        with open(self.path, "wb") as store:
            batch: list[str] = []
            for src in self.sources:
                for doc in iter_documents(src, shuffle_seed=self.seed):
                    if is_heldout(doc, self.fraction):
                        self.held.append((len(self.starts), doc))
                        continue
                    b = doc.encode("utf-8")
                    self.starts.append(store.tell())
                    store.write(b + b"\n\n")
                    self.ends.append(store.tell() - 2)
                    batch.append(doc)
                    if len(batch) >= 256:
                        store.flush()
                        yield ("texts", batch)
                        batch = []
            store.flush()
            if batch:
                yield ("texts", batch)


def _tokenize_language(
    d: Path, lang: str, info: dict, hub, fraction, budget, checked, seed, pool, window, dtype, bar
) -> None:
    """Pass 2 for one language: resumes after the last committed shard.

    Local documents are checked against the held-out candidates as they are tokenized;
    each candidate's first matching document is committed with the shards (``near``).
    """
    w = TokenWriter(d, lang, dtype)
    try:
        n_local = info["n_train"]
        if w.done:
            return
        if w.docs > n_local:  # killed while streaming a hub source: that part starts again
            w.close()
            for p in (w.tokens_path, w.doclens_path, w.progress_path):
                p.unlink(missing_ok=True)
            w = TokenWriter(d, lang, dtype)
        near: dict[str, int] = dict(w.extra.get("near", {}))  # candidate -> first document
        bar.update(w.tokens)
        fid, st, en, kst, ken = _load_index(d, lang)
        k = min(info["n_heldout"], checked)  # the first k candidates (below)
        cands = ((str(d / f"{lang}.candidates.jsonl"),), 0, k) if k else None
        tasks = (
            (t, cands)
            for t in _span_batches(
                info["files"],
                fid,
                st,
                en,
                local_order(n_local, seed),
                w.docs,
                (str(d / f"{lang}.keys"), kst, ken) if k else None,
            )  # fmt: skip
        )
        reader = _HubReader(d, lang, hub, fraction, seed) if hub else None
        if reader:  # hub held-out candidates are not all known yet: pass 3 checks hub text
            tasks = _chain(tasks, ((t, cands) for t in reader.batches()))
        if budget is None or w.tokens < budget:
            for ids, lens, pairs in _ordered(pool, _tokenize, tasks, window):
                for i, h in pairs:
                    near.setdefault(str(h), w.docs + i)
                w.append(ids, lens)
                bar.update(len(ids))
                if w.pending_tokens >= SHARD_TOKENS:
                    w.commit(extra={"near": near, "checked": k})
                if budget is not None and w.tokens >= budget:
                    break
        if reader:
            used_hub = w.docs - n_local
            # Held-out documents streamed before the last tokenized training document.
            held = [doc for k, doc in reader.held if k < used_hub or used_hub == len(reader.starts)]
            atomic_write_text(d / f"{lang}.hubheld.jsonl", documents_jsonl(held))
            np.savez(
                d / f"{lang}.hubindex.npz",
                start=np.frombuffer(reader.starts, np.int64)[:used_hub],
                end=np.frombuffer(reader.ends, np.int64)[:used_hub],
            )
        w.commit(done=True, extra={"near": near, "checked": k})
    finally:
        w.close()


def _chain(*its):
    for it in its:
        yield from it


# ---------------------------------------------------------------------------- pass 3: near-dups


def used_documents(d: Path, lang: str, budget: int | None) -> tuple[int, int]:
    """(documents, tokens) of a language within its budget: a document counts when it
    starts before the budget, as :func:`layra.data.tokenize_language` defines."""
    shards, _ = read_progress(d, lang)
    n_docs, n_tok = sum(s.docs for s in shards), sum(s.tokens for s in shards)
    if budget is None or n_tok <= budget:
        return n_docs, n_tok
    ends = np.cumsum(doc_lengths(d, lang, n_docs), dtype=np.int64)
    starts = ends - doc_lengths(d, lang, n_docs)
    return int(np.searchsorted(starts, budget, side="left")), budget


def candidate_files(d: Path, lang: str) -> list[Path]:
    """Held-out candidates, in order: local sources' (pass 1), then a hub source's (pass 2)."""
    hub = d / f"{lang}.hubheld.jsonl"
    return [d / f"{lang}.candidates.jsonl"] + ([hub] if hub.exists() else [])


def checked_candidates(max_docs: int) -> int:
    """Held-out candidates checked for near-duplicates at first: the ``heldout_max_docs``
    kept need only the leading candidates (more are checked if many turn out dropped), so
    the index each worker holds is bounded whatever the size of the text."""
    return 2 * max_docs + 64


def _near_language(
    d: Path, lang: str, info: dict, used: int, max_docs: int, seed, pool, window, bar
) -> tuple[list[int], int]:
    """(held-out candidates nearly duplicated by one of the ``used`` training documents,
    how many leading candidates were checked: enough to keep ``max_docs``).

    Starts from what pass 2 recorded for local sources; a hub source's candidates (known
    only once it was streamed), or too many dropped ones, are checked here by reading the
    used documents again (pass 3)."""
    cands = candidate_files(d, lang)
    marker = d / f"{lang}.near.json"
    if marker.exists():
        done = json.loads(marker.read_text())
        return done["near"], done["checked"]
    n = sum(1 for p in cands for _ in read_documents(p))
    _, _, extra = read_progress(d, lang, with_extra=True)
    if len(cands) == 1:
        near = {int(h) for h, first in extra.get("near", {}).items() if first < used}
        checked = int(extra.get("checked", 0))
    else:  # a hub's part: every used document against every candidate, from the start
        near, checked = set(), 0
    while used and checked < n and checked - len(near) < max_docs:
        stop = min(n, checked + checked_candidates(max_docs - (checked - len(near))))
        key = (tuple(str(p) for p in cands), checked, stop)
        for got in _ordered(
            pool, _near, ((key, t) for t in _used_batches(d, lang, info, used, seed)), window
        ):
            near.update(got)
            bar.update(1)
        checked = stop
    atomic_write_json(marker, {"near": sorted(near), "checked": checked})
    return sorted(near), checked


def _used_batches(d: Path, lang: str, info: dict, used: int, seed) -> Iterator[tuple]:
    """The ``used`` training documents of a language again, in batches (local, then hub)."""
    fid, st, en, kst, ken = _load_index(d, lang)
    order = local_order(info["n_train"], seed)[:used]
    keys = (str(d / f"{lang}.keys"), kst, ken) if info["n_heldout"] else None
    yield from _span_batches(info["files"], fid, st, en, order, keys=keys)
    hub = d / f"{lang}.hubindex.npz"
    if hub.exists() and used > len(order):
        with np.load(hub, allow_pickle=False) as z:
            hs, he = z["start"], z["end"]
        n = min(used - len(order), len(hs))
        files = [[str(d / f"{lang}.hub.text"), True]]
        yield from _span_batches(files, np.zeros(n, np.int32), hs, he, np.arange(n))


# ---------------------------------------------------------------------------- pass 4: blocks


def _cut_tokens(cfg: DataConfig, tokens: dict[str, int]) -> dict[str, int]:
    """Per-language token counts after ``mix`` cuts (as :func:`layra.data.build_dataset`)."""
    tokens = dict(tokens)
    if cfg.mix == "equal" and cfg.max_tokens is None and len(tokens) > 1:
        smallest = min(tokens.values())
        tokens = {k: min(v, smallest) for k, v in tokens.items()}
    if cfg.mix == "concat" and cfg.max_tokens is not None:
        remaining = cfg.max_tokens
        for k, v in tokens.items():
            tokens[k] = min(v, max(remaining, 0))
            remaining -= tokens[k]
    return tokens


def _assemble(d: Path, cfg: DataConfig, seed: int, dtype: np.dtype, per_lang: dict) -> None:
    """Pass 4: held-out files, the shuffled block table, stats, and ``prepared.json`` last."""
    import torch

    from layra.neardup import NGRAM, THRESHOLD

    tokens = _cut_tokens(cfg, {k: v["tokens"] for k, v in per_lang.items()})
    langs = list(per_lang)
    n_blocks = {k: tokens[k] // cfg.seq_len for k in langs}
    if not sum(n_blocks.values()):
        sizes = ", ".join(f"{k}: {v}" for k, v in tokens.items())
        raise LayraError(
            f"not enough text for one block of data.seq_len={cfg.seq_len} tokens ({sizes})"
        )
    lang_ids = np.concatenate([np.full(n_blocks[k], i, np.int16) for i, k in enumerate(langs)])
    starts = np.concatenate([np.arange(n_blocks[k], dtype=np.int64) * cfg.seq_len for k in langs])
    if cfg.shuffle:
        perm = torch.randperm(len(lang_ids), generator=torch.Generator().manual_seed(seed)).numpy()
        lang_ids, starts = lang_ids[perm], starts[perm]
    heldout_dir = d / "heldout"
    heldout_dir.mkdir(exist_ok=True)
    heldout = {}
    for lang, v in per_lang.items():
        cands = read_candidates(candidate_files(d, lang), 0, v["checked"])
        near = set(v["near"])
        heldout[lang] = [c for i, c in enumerate(cands) if i not in near][: cfg.heldout_max_docs]
        atomic_write_text(heldout_dir / f"{lang}.jsonl", documents_jsonl(heldout[lang]))
    mapped = {k: n_blocks[k] * cfg.seq_len for k in langs}
    # The data's identity: the bytes of the tokens the blocks use, and the block table --
    # the same however it was sharded, resumed or split among workers.
    h = hashlib.sha256()
    for lang in langs:
        h.update(json.dumps([lang, mapped[lang], dtype.name]).encode())
        with open(d / f"{lang}.tokens", "rb") as f:
            left = mapped[lang] * dtype.itemsize
            while left:
                chunk = f.read(min(left, VERIFY_CHUNK))
                h.update(chunk)
                left -= len(chunk)
    h.update(lang_ids.tobytes())
    h.update(starts.tobytes())
    fingerprint = h.hexdigest()
    meta = {"langs": langs, "seq_len": cfg.seq_len, "dtype": dtype.name, "tokens": mapped}
    save_table(d / "blocks.safetensors", lang_ids, starts, meta)
    stats = {
        "languages": {
            lang: {
                "train_tokens": mapped[lang],
                "train_documents": v["used"],
                "heldout_documents": len(heldout[lang]),
                "heldout_near_duplicates": len(v["near"]),
                "heldout_candidates_checked": v["checked"],
                "blocks": n_blocks[lang],
            }
            for lang, v in per_lang.items()
        },
        "sample": {
            "seed": seed,
            "rule": "each language's training documents in a seeded random order (local files "
            "in random.Random(seed).shuffle order over their documents; hub datasets by "
            "datasets' streaming shuffle); budgets and equal/concat cuts take the leading "
            "documents",
        },
        "heldout_rule": f"sha256 of the case/punctuation/space-normalised text < "
        f"{cfg.heldout_fraction}; held-out documents with word-{NGRAM}-gram Jaccard >= "
        f"{THRESHOLD} to a tokenized training document dropped",
        "blocks": len(lang_ids),
        "seq_len": cfg.seq_len,
        "tokens": int(len(lang_ids) * cfg.seq_len),
        "token_dtype": dtype.name,
        "sha256": fingerprint,
        "prepared": str(d),
    }
    atomic_write_json(d / "stats.json", stats)
    atomic_write_json(d / "prepared.json", {"format": FORMAT, "fingerprint": fingerprint})


# ---------------------------------------------------------------------------- entry points


def _say_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bar(progress: bool, desc: str, unit: str, total=None):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=True, disable=not progress, leave=False
    )


_PROBE = [
    "Hello world. Olá, mundo! Ñandú — naïve café",
    "  leading and trailing spaces  ",
    "line one\nline two\ttab",
    "日本語のテキスト, اردو متن, हिन्दी पाठ",
]


def _local_bytes(cfg: DataConfig) -> int:
    from layra.data import local_files, source_format

    total = 0
    for src in cfg.sources:
        fmt = source_format(src)
        if fmt == "hf":
            return 1 << 62  # unknown: assume large
        total += sum(Path(f).stat().st_size for f in local_files(src, fmt))
    return total


def _build(d: Path, cfg: DataConfig, tokenizer, seed: int, workers: int, progress, say) -> None:
    from layra.data import language_budgets, source_format

    d.mkdir(parents=True, exist_ok=True)
    clean_stale(d, say=say)
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    budgets = language_budgets(cfg)
    dtype = token_dtype(len(tokenizer))
    n = workers if workers > 0 else usable_cores()
    n = 1 if _local_bytes(cfg) < INLINE_BYTES else n
    if n > 1 and not _spawn_can_start():
        say("data: the main script is not a file (stdin?), so no worker can start; one process")
        n = 1
    window = 2 * n + 1
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    if n > 1:  # one pool for every pass; workers start while the first piece is read
        pool = _make_pool(n, _tokenizer_spec(tokenizer, _PROBE + _first_documents(cfg, 16), d))
    else:  # this process, this tokenizer: nothing to copy
        pool = _Inline()
        _init_worker(("none", None, None), in_process=True)
        _W["encode"] = lambda texts: tokenizer(texts, add_special_tokens=True)["input_ids"]
        _W["eos"] = tokenizer.eos_token_id
    info, per_lang = {}, {}
    try:
        with _bar(progress, "data: index", "B", _local_bytes(cfg)) as bar:
            for lang in langs:
                srcs = [s for s in cfg.sources if s.lang == lang]
                info[lang] = _index_language(d, lang, srcs, cfg.heldout_fraction, pool, window, bar)
        times["index"] = time.perf_counter() - t0
        total = None if any(b is None for b in budgets.values()) else sum(budgets.values())
        with _bar(progress, "data: tokenize", "tok", total) as bar:
            for lang in langs:
                hub = [s for s in cfg.sources if s.lang == lang and source_format(s) == "hf"]
                _tokenize_language(
                    d, lang, info[lang], hub, cfg.heldout_fraction, budgets[lang],
                    checked_candidates(cfg.heldout_max_docs), seed, pool, window, dtype, bar,
                )  # fmt: skip
        times["tokenize"] = time.perf_counter() - t0 - sum(times.values())
        with _bar(progress, "data: held-out near-duplicates", "batch") as bar:
            for lang in langs:
                used, tokens = used_documents(d, lang, budgets[lang])
                if not used:
                    names = ", ".join(s.path for s in cfg.sources if s.lang == lang)
                    raise LayraError(
                        f"no training documents for language {lang} in {names} (empty file?)"
                    )
                near, checked = _near_language(
                    d, lang, info[lang], used, cfg.heldout_max_docs, seed, pool, window, bar
                )
                per_lang[lang] = {"used": used, "tokens": tokens, "near": near, "checked": checked}
        times["near-duplicates"] = time.perf_counter() - t0 - sum(times.values())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # idle workers exit on their own
    _assemble(d, cfg, seed, dtype, per_lang)
    times["blocks"] = time.perf_counter() - t0 - sum(times.values())
    tok = sum(v["tokens"] for v in per_lang.values())
    dt = time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    say(f"data: prepared {tok:,} tokens in {dt:.1f} s ({tok / max(dt, 1e-9):,.0f} tokens/s on "
        f"{n} worker{'s' if n > 1 else ''}: {parts}) into {d}")  # fmt: skip


def _first_documents(cfg: DataConfig, k: int) -> list[str]:
    """The first ``k`` documents of the first local source (a probe for the tokenizer copy)."""
    import itertools

    from layra.data import iter_documents, source_format

    local = [s for s in cfg.sources if source_format(s) != "hf"]
    return list(itertools.islice(iter_documents(local[0]), k)) if local else []


def open_prepared(d: Path, vocab_size: int | None = None, verify: bool = True) -> PreparedData:
    """Open a prepared directory; with ``verify``, every shard's checksum and id range."""
    marker = json.loads((d / "prepared.json").read_text())
    blocks = BlockStore(d)
    if verify:
        for lang in blocks.langs:
            verify_language(d, lang, blocks.dtype, vocab_size)
    heldout = {p.stem: read_documents(p) for p in sorted((d / "heldout").glob("*.jsonl"))}
    heldout = {lang: heldout.get(lang, []) for lang in blocks.langs}
    stats = json.loads((d / "stats.json").read_text())
    return PreparedData(d, blocks, heldout, stats, marker["fingerprint"])


def prepare(
    cfg: DataConfig,
    tokenizer,
    seed: int = 0,
    *,
    workers: int = 0,
    progress: bool = False,
    say: Say | None = None,
    verify: bool = True,
) -> PreparedData:
    """The prepared dataset for ``cfg`` and ``tokenizer``: found in the cache, or built.

    ``workers`` processes tokenize (0: one per usable core; small text runs in this
    process). Concurrent callers for the same data wait for one another (a file lock), so
    every process of a multi-process run can call this. Raises :class:`LayraError` for
    bad sources or text.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # A spawned worker importing a main script that prepares at import time: it would
        # wait forever for the lock its parent holds.
        raise LayraError(
            "prepare() ran while a worker process imported the main script; put the "
            "script's code under `if __name__ == '__main__':`"
        )
    say = say or _say_default
    if tokenizer.eos_token_id is None:
        raise LayraError("the tokenizer has no EOS token; packing needs one between documents")
    defn = definition(cfg, tokenizer, seed)
    root = cache_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LayraError(f"cannot create the data cache {root}: {e.strerror or e}") from e
    d = root / dataset_key(defn)
    with _locked(root / f".{d.name}.lock", say):
        if (d / "prepared.json").exists():
            say(f"data: reusing prepared data {d}")
        else:
            if not (d / "definition.json").exists():
                d.mkdir(exist_ok=True)
                atomic_write_json(d / "definition.json", defn)
            _build(d, cfg, tokenizer, seed, workers, progress, say)
    return open_prepared(d, len(tokenizer), verify=verify)


def remove_prepared(d: Path) -> None:
    """Delete a prepared directory (``layra data prepare --overwrite``)."""
    shutil.rmtree(d, ignore_errors=True)
