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
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from layra import prepare_passes as passes
from layra.atomic import atomic_write_json, clean_stale
from layra.config import DataConfig, SourceConfig
from layra.documents import (
    read_documents,
)
from layra.errors import LayraError
from layra.prepare_work import (
    backend_json,
    inline_pool,
    make_pool,
    spawn_can_start,
    tokenizer_spec,
    usable_cores,
)
from layra.tokenstore import (
    BlockStore,
    token_dtype,
    verify_language,
)

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


def cache_root(cfg: DataConfig) -> Path:
    """Where prepared datasets live (see the module docstring)."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    if os.environ.get("LAYRA_DATA_CACHE"):
        return Path(os.environ["LAYRA_DATA_CACHE"]).expanduser()
    base = os.environ.get("LAYRA_CACHE") or Path.home() / ".cache" / "layra"
    return Path(base).expanduser() / "prepared"


def tokenizer_identity(tokenizer) -> str:
    """A hash of what decides the ids: the full tokenizer definition where there is one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    if backend is not None:
        h.update(backend_json(tokenizer).encode())
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
        "format": passes.FORMAT,
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


def _workers(nbytes: int, workers: int, say: Say) -> int:
    """Processes to use: ``workers``, or one per usable core; one for small text."""
    n = workers if workers > 0 else usable_cores()
    n = 1 if nbytes < INLINE_BYTES else n
    if n > 1 and not spawn_can_start():
        say("data: the main script is not a file (stdin?), so no worker can start; one process")
        n = 1
    return n


def _build(d: Path, cfg: DataConfig, tokenizer, seed: int, workers: int, progress, say) -> None:
    """Run the passes into ``d`` (each resumes or redoes what a killed run left)."""
    from layra.data import language_budgets, source_format

    d.mkdir(parents=True, exist_ok=True)
    clean_stale(d, say=say)
    langs = list(dict.fromkeys(s.lang for s in cfg.sources))
    budgets = language_budgets(cfg)
    dtype = token_dtype(len(tokenizer))
    nbytes = _local_bytes(cfg)
    n = _workers(nbytes, workers, say)
    window = 2 * n + 1
    t0, times = time.perf_counter(), {}
    lap = lambda name: times.__setitem__(name, time.perf_counter() - t0 - sum(times.values()))  # noqa: E731
    if n > 1:  # one pool for every pass; workers start while the first piece is read
        pool = make_pool(n, tokenizer_spec(tokenizer, _PROBE + _first_documents(cfg, 16), d))
    else:
        pool = inline_pool(tokenizer)
    info, per_lang = {}, {}
    try:
        with _bar(progress, "data: index", "B", nbytes) as bar:
            for lang in langs:
                srcs = [s for s in cfg.sources if s.lang == lang]
                info[lang] = passes.index_language(
                    d, lang, srcs, cfg.heldout_fraction, pool, window, bar
                )
        lap("index")
        total = None if any(b is None for b in budgets.values()) else sum(budgets.values())
        with _bar(progress, "data: tokenize", "tok", total) as bar:
            for lang in langs:
                hub = [s for s in cfg.sources if s.lang == lang and source_format(s) == "hf"]
                passes.tokenize_language(
                    d, lang, info[lang], hub, cfg.heldout_fraction, budgets[lang],
                    passes.checked_candidates(cfg.heldout_max_docs), seed, pool, window, dtype, bar,
                )  # fmt: skip
        lap("tokenize")
        with _bar(progress, "data: held-out near-duplicates", "batch") as bar:
            for lang in langs:
                per_lang[lang] = _language_result(
                    d, cfg, lang, info[lang], budgets[lang], seed, pool, window, bar
                )
        lap("near-duplicates")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # idle workers exit on their own
    passes.assemble(d, cfg, seed, dtype, per_lang)
    for lang in langs:  # copies of the text, needed only while preparing (as big as the text)
        for name in (f"{lang}.keys", f"{lang}.text", f"{lang}.hub.text"):
            (d / name).unlink(missing_ok=True)
    lap("blocks")
    tok, dt = sum(v["tokens"] for v in per_lang.values()), time.perf_counter() - t0
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    say(f"data: prepared {tok:,} tokens in {dt:.1f} s ({tok / max(dt, 1e-9):,.0f} tokens/s on "
        f"{n} worker{'s' if n > 1 else ''}: {parts}) into {d}")  # fmt: skip


def _language_result(d, cfg, lang, info, budget, seed, pool, window, bar) -> dict:
    """A language's used documents and tokens, and its near-duplicate held-out candidates."""
    used, tokens = passes.used_documents(d, lang, budget)
    if not used:
        names = ", ".join(s.path for s in cfg.sources if s.lang == lang)
        raise LayraError(f"no training documents for language {lang} in {names} (empty file?)")
    near, checked = passes.near_language(
        d, lang, info, used, cfg.heldout_max_docs, seed, pool, window, bar
    )
    return {"used": used, "tokens": tokens, "near": near, "checked": checked}


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
