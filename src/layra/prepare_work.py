"""The worker side of data preparation (:mod:`layra.prepare`): what runs in each process
of the pool, and the pool itself.

Each worker is a spawned process (it starts clean: no forked tokenizer thread pools or
torch state) that rebuilds the tokenizer from a file and keeps its open files and its
near-duplicate index in ``_W``. Tasks and results are small (spans in, token arrays
out), and :func:`ordered` keeps a bounded number in flight, in order.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from layra.atomic import atomic_write_text
from layra.documents import (
    MAX_DOCUMENT_BYTES,
    block_spans,
    read_documents,
    span_document,
)
from layra.errors import LayraError

_W: dict = {}  # per worker process: tokenizer, open files, near-duplicate indexes


_BACKEND_JSON: dict[int, tuple] = {}


def backend_json(tokenizer) -> str:
    """The Rust backend's JSON (serialising Gemma 3's takes 0.3 s: done once per tokenizer)."""
    backend = tokenizer.backend_tokenizer
    hit = _BACKEND_JSON.get(id(tokenizer))
    if hit is None or hit[0] is not backend:
        hit = _BACKEND_JSON[id(tokenizer)] = (backend, backend.to_str())
    return hit[1]


def encoder(tok_spec: tuple) -> Callable[[list[str]], list[list[int]]]:
    """Texts -> ids with special tokens, from a spec of :func:`tokenizer_spec`."""
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


def init_worker(tok_spec: tuple, in_process: bool = False) -> None:
    if not in_process:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core already
    _W["files"] = {}
    _W["near"] = {}
    if tok_spec[0] != "none":  # "none": pass 1 reads and hashes text only
        _W["encode"] = encoder(tok_spec)
        _W["eos"] = tok_spec[2]


def read_span(path: str, start: int, end: int) -> bytes:
    files = _W.setdefault("files", {})
    fd = files.get(path)
    if fd is None:
        fd = files[path] = os.open(path, os.O_RDONLY)
    return os.pread(fd, end - start, start)


def words_key(doc: str, fraction: float) -> tuple[bool, bytes]:
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


def held_keys(docs: list[str], fraction: float) -> tuple[list[bool], list[bytes]]:
    """:func:`words_key` of each of ``docs``, their words found for all at once."""
    from layra.data import key_is_heldout
    from layra.neardup import joined_words

    keys = joined_words(docs)
    out = [
        key_is_heldout(k or " ".join(d.casefold().split()), fraction)  # normal_key's fallback
        for d, k in zip(docs, keys, strict=True)
    ]
    return out, keys


def index_piece(task: tuple) -> tuple[np.ndarray, np.ndarray, list[str], bytes, np.ndarray]:
    """Pass 1 on one piece of a .txt file: spans of training documents, held-out documents,
    the training documents' words (joined) and the length of each."""
    path, base, end, fraction = task
    data = read_span(path, base, end)
    spans, docs = [], []
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
        if doc:
            spans.append((s, e))
            if fraction > 0:  # needed for their words, and the held-out ones
                docs.append(doc)
    out, keys = held_keys(docs, fraction) if docs else ([False] * len(spans), [b""] * len(spans))
    train = [i for i, o in enumerate(out) if not o]
    se = np.array(spans, np.int64).reshape(-1, 2)[train] + base
    klens = np.fromiter((len(keys[i]) for i in train), np.int64, len(train))
    held = [docs[i] for i, o in enumerate(out) if o]
    return se[:, 0].copy(), se[:, 1].copy(), held, b"".join(keys[i] for i in train), klens


def task_texts(task: tuple) -> list[str]:
    kind, payload = task
    if kind == "texts":
        return payload
    paths, raw, fid, st, en, _ = payload
    out = []
    for f, s, e in zip(fid, st, en, strict=True):
        b = read_span(paths[f], s, e)
        out.append(b.decode("utf-8") if raw[f] else span_document(b))  # raw: stored exactly
    return out


def task_keys(task: tuple, texts: list[str] | None = None) -> list[bytes]:
    """The words of a task's documents, joined by spaces (UTF-8): read back from pass 1
    when it kept them, else found in ``texts`` (read here when not given)."""
    from layra.neardup import joined_words

    kind, payload = task
    if kind == "spans" and payload[5] is not None:
        path, kst, ken = payload[5]
        return [read_span(path, s, e) if e > s else b"" for s, e in zip(kst, ken, strict=True)]
    return joined_words(task_texts(task) if texts is None else texts)


def read_candidates(paths, start: int = 0, stop: int | None = None) -> list[str]:
    """Held-out candidates ``[start, stop)`` of the files ``paths``, read in order."""
    import itertools

    docs = (doc for p in paths for doc in read_documents(p))
    return list(itertools.islice(docs, start, stop))


def near_index(cands: tuple):
    """This worker's :class:`NearDupIndex` of candidates ``(paths, start, stop)`` (built once)."""
    from layra.neardup import NearDupIndex

    near = _W.setdefault("near", {})
    index = near.get(cands)
    if index is None:
        near.clear()
        index = near[cands] = NearDupIndex(read_candidates(*cands))
    return index


def tokenize_task(task: tuple) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Pass 2: a batch of documents -> (their ids with EOS after each, one length each,
    (document in batch, held-out candidate) pairs it nearly duplicates).

    The near-duplicate check runs here, on the text just read, when held-out candidates
    ``(paths, start, stop)`` are given.
    """
    inner, cands = task
    texts = task_texts(inner)
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
        index = near_index(cands)
        for i, found in index.matches_texts(task_keys(inner, texts)):
            pairs += [(i, cands[1] + h) for h in found]
    return out, lens, pairs


def near_task(task: tuple) -> list[int]:
    """Pass 3: held-out candidates that some document of the batch nearly duplicates."""

    cands, inner = task
    index = near_index(cands)
    found: dict[int, float] = {}
    for _, got in index.matches_texts(task_keys(inner), skip=found):
        found.update(got)
    return sorted(cands[1] + h for h in found)


class InlinePool:
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


def ordered(pool, fn, tasks, window: int) -> Iterator:
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


def tokenizer_spec(tokenizer, probe: list[str], d: Path) -> tuple:
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
            atomic_write_text(path, backend_json(tokenizer))
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


def spawn_can_start() -> bool:
    """Spawned workers import the main script again: impossible when it is not a file
    (``python -`` reading stdin), where a pool would wait forever for its workers."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is None or Path(path).is_file()


def make_pool(workers: int, spec: tuple):
    import multiprocessing

    if workers <= 1:
        init_worker(spec, in_process=True)
        return InlinePool()
    # spawn: workers start clean (no forked tokenizer thread pools or torch state).
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(spec,),
    )


def inline_pool(tokenizer) -> InlinePool:
    """Work in this process, with this very tokenizer (small data: no pool to start)."""
    init_worker(("none", None, None), in_process=True)
    _W["encode"] = lambda texts: tokenizer(texts, add_special_tokens=True)["input_ids"]
    _W["eos"] = tokenizer.eos_token_id
    return InlinePool()
