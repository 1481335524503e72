"""The passes of data preparation (:mod:`layra.prepare`): index, tokenize, near-duplicates,
blocks. Each reads and writes the prepared directory and hands its CPU work to the pool
(:mod:`layra.prepare_work`); docs/formats.md describes the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from layra.atomic import atomic_write_json, atomic_write_text
from layra.config import DataConfig, SourceConfig
from layra.documents import (
    documents_jsonl,
    txt_pieces,
)
from layra.errors import LayraError
from layra.prepare_work import (
    index_piece,
    near_task,
    ordered,
    read_candidates,
    tokenize_task,
    words_key,
)
from layra.tokenstore import (
    VERIFY_CHUNK,
    TokenWriter,
    doc_lengths,
    read_progress,
    save_table,
)

FORMAT = 1  # of the prepared directory; part of the key


SHARD_TOKENS = 1 << 24  # tokens per committed shard (64 MiB of uint32)


READ_BYTES = 1 << 24  # a local .txt file is read and cut into pieces of about this size


BATCH_BYTES = 1 << 21  # text per tokenization task


BATCH_DOCS = 4096


def piece_tasks(path: str, fraction: float, bar) -> Iterator[tuple]:
    """Pass 1 tasks: pieces of a .txt file cut just after blank lines."""
    for base, piece in txt_pieces(path, READ_BYTES):
        bar.update(len(piece))
        # The worker reads the piece again (page cache): a task stays a few bytes in the pipe.
        yield (path, base, base + len(piece), fraction)


def copy_rows(src: SourceConfig, store, keys, files: list, fraction: float, held: list[str]):
    """A .jsonl/.parquet source's training documents copied into ``store`` (spans returned),
    their words into ``keys``."""
    from layra.data import iter_documents

    fid = len(files) - 1
    cols = [array("q") for _ in range(4)]  # start, end, key start, key end
    for doc in iter_documents(src):
        out, key = words_key(doc, fraction)
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


def index_language(
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
                    cols, copy_rows(src, store, keys, files, fraction, held), strict=True
                ):
                    col.append(a)
                continue
            for path in local_files(src, fmt):
                files.append([str(Path(path).resolve()), False])
                pieces = piece_tasks(files[-1][0], fraction, bar)
                for st, en, h, kb, klen in ordered(pool, index_piece, pieces, window):
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


def load_index(d: Path, lang: str) -> tuple[np.ndarray, ...]:
    """(file, start, end, key start, key end) of each training document, in source order."""
    with np.load(d / f"{lang}.index.npz", allow_pickle=False) as z:
        return z["fid"], z["start"], z["end"], z["kstart"], z["kend"]


def local_order(n: int, seed: int) -> np.ndarray:
    """The seeded random order of ``n`` local documents: exactly ``random.Random(seed).shuffle``
    of them as a list (the shuffle depends only on the length), 8 bytes per document."""
    a = array("q", range(n))
    random.Random(seed).shuffle(a)
    return np.frombuffer(a, np.int64)


def span_batches(
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


class HubReader:
    """Hub documents streamed after the local ones: training ones copied to ``LANG.hub.text``
    (pass 3 reads them again), held-out ones kept with the training count before them."""

    def __init__(self, d: Path, lang: str, sources: list[SourceConfig], fraction: float, seed):
        self.d, self.lang, self.path = d, lang, d / f"{lang}.hub.text"
        self.sources, self.fraction, self.seed = sources, fraction, seed
        self.starts, self.ends = array("q"), array("q")
        self.held: list[tuple[int, str]] = []

    def finish(self, used: int) -> None:
        """Keep what the first ``used`` hub documents need: their spans for pass 3 and the
        held-out documents streamed before the last of them."""
        held = [doc for k, doc in self.held if k < used or used == len(self.starts)]
        atomic_write_text(self.d / f"{self.lang}.hubheld.jsonl", documents_jsonl(held))
        np.savez(
            self.d / f"{self.lang}.hubindex.npz",
            start=np.frombuffer(self.starts, np.int64)[:used],
            end=np.frombuffer(self.ends, np.int64)[:used],
        )

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


def tokenize_language(
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
        fid, st, en, kst, ken = load_index(d, lang)
        k = min(info["n_heldout"], checked)  # the first k candidates (below)
        cands = ((str(d / f"{lang}.candidates.jsonl"),), 0, k) if k else None
        tasks = (
            (t, cands)
            for t in span_batches(
                info["files"],
                fid,
                st,
                en,
                local_order(n_local, seed),
                w.docs,
                (str(d / f"{lang}.keys"), kst, ken) if k else None,
            )  # fmt: skip
        )
        reader = HubReader(d, lang, hub, fraction, seed) if hub else None
        if reader:  # hub held-out candidates are not all known yet: pass 3 checks hub text
            tasks = chain(tasks, ((t, cands) for t in reader.batches()))
        if budget is None or w.tokens < budget:
            for ids, lens, pairs in ordered(pool, tokenize_task, tasks, window):
                for i, h in pairs:
                    near.setdefault(str(h), w.docs + i)
                w.append(ids, lens)
                _progress(bar, len(ids), budget, w, n_local)
                if w.pending_tokens >= SHARD_TOKENS:
                    w.commit(extra={"near": near, "checked": k})
                if budget is not None and w.tokens >= budget:
                    break
        if reader:
            reader.finish(w.docs - n_local)
        w.commit(done=True, extra={"near": near, "checked": k})
    finally:
        w.close()


def _progress(bar, n: int, budget: int | None, w: TokenWriter, n_docs: int) -> None:
    """Advance the tokens bar; without a budget its total (so the time left) is estimated
    from the tokens per document so far and this language's documents."""
    if budget is not None:  # the last batch reaches past the budget: count up to it
        n = min(w.tokens, budget) - min(w.tokens - n, budget)
    elif w.docs and w.docs <= n_docs:
        est = bar.n + n + int((n_docs - w.docs) * w.tokens / w.docs)
        if bar.total is None or abs(bar.total - est) > 0.01 * est:
            bar.total = est
    bar.update(n)


def chain(*its):
    for it in its:
        yield from it


def used_documents(d: Path, lang: str, budget: int | None) -> tuple[int, int]:
    """(documents, tokens) of a language within its budget: a document counts when it
    starts before the budget (the definition in :mod:`layra.data`)."""
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


def near_language(
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
    n = sum(sum(1 for _ in open(p, encoding="utf-8")) for p in cands)  # one JSONL row each
    _, _, extra = read_progress(d, lang, with_extra=True)
    if len(cands) == 1:
        near = {int(h) for h, first in extra.get("near", {}).items() if first < used}
        checked = int(extra.get("checked", 0))
    else:  # a hub's part: every used document against every candidate, from the start
        near, checked = set(), 0
    while used and checked < n and checked - len(near) < max_docs:
        stop = min(n, checked + checked_candidates(max_docs - (checked - len(near))))
        key = (tuple(str(p) for p in cands), checked, stop)
        for got in ordered(
            pool, near_task, ((key, t) for t in used_batches(d, lang, info, used, seed)), window
        ):
            near.update(got)
            bar.update(1)
        checked = stop
    atomic_write_json(marker, {"near": sorted(near), "checked": checked})
    return sorted(near), checked


def used_batches(d: Path, lang: str, info: dict, used: int, seed) -> Iterator[tuple]:
    """The ``used`` training documents of a language again, in batches (local, then hub)."""
    fid, st, en, kst, ken = load_index(d, lang)
    order = local_order(info["n_train"], seed)[:used]
    keys = (str(d / f"{lang}.keys"), kst, ken) if info["n_heldout"] else None
    yield from span_batches(info["files"], fid, st, en, order, keys=keys)
    hub = d / f"{lang}.hubindex.npz"
    if hub.exists() and used > len(order):
        with np.load(hub, allow_pickle=False) as z:
            hs, he = z["start"], z["end"]
        n = min(used - len(order), len(hs))
        files = [[str(d / f"{lang}.hub.text"), True]]
        yield from span_batches(files, np.zeros(n, np.int32), hs, he, np.arange(n))


def cut_tokens(cfg: DataConfig, tokens: dict[str, int]) -> dict[str, int]:
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


def block_table(cfg: DataConfig, n_blocks: dict[str, int], seed: int):
    """(language number, token offset) of every block, in training order: each language's
    blocks in order, languages in order, then ``torch.randperm`` seeded by ``seed``."""
    import torch

    langs = list(n_blocks)
    lang_ids = np.concatenate([np.full(n_blocks[k], i, np.int16) for i, k in enumerate(langs)])
    starts = np.concatenate([np.arange(n_blocks[k], dtype=np.int64) * cfg.seq_len for k in langs])
    if cfg.shuffle:
        perm = torch.randperm(len(lang_ids), generator=torch.Generator().manual_seed(seed)).numpy()
        lang_ids, starts = lang_ids[perm], starts[perm]
    return lang_ids, starts


def fingerprint(d: Path, mapped: dict[str, int], dtype: np.dtype, lang_ids, starts) -> str:
    """The data's identity: the bytes of the tokens the blocks use, and the block table --
    the same however it was sharded, resumed or split among workers."""
    h = hashlib.sha256()
    for lang, n in mapped.items():
        h.update(json.dumps([lang, n, dtype.name]).encode())
        with open(d / f"{lang}.tokens", "rb") as f:
            left = n * dtype.itemsize
            while left:
                chunk = f.read(min(left, VERIFY_CHUNK))
                h.update(chunk)
                left -= len(chunk)
    h.update(lang_ids.tobytes())
    h.update(starts.tobytes())
    return h.hexdigest()


def _stats(cfg: DataConfig, seed: int, per_lang: dict, heldout: dict, n_blocks: dict) -> dict:
    from layra.neardup import NGRAM, THRESHOLD

    languages = {
        lang: {
            "train_tokens": n_blocks[lang] * cfg.seq_len,
            "train_documents": v["used"],
            "heldout_documents": len(heldout[lang]),
            "heldout_near_duplicates": len(v["near"]),
            "heldout_candidates_checked": v["checked"],
            "blocks": n_blocks[lang],
        }
        for lang, v in per_lang.items()
    }
    return {
        "languages": languages,
        "sample": {
            "seed": seed,
            "rule": "each language's training documents in a seeded random order (local files "
            "in random.Random(seed).shuffle order over their documents; hub datasets by "
            "datasets' streaming shuffle); budgets and equal/concat cuts take the leading "
            "documents",
        },
        "heldout_rule": f"sha256 of the case/punctuation/space-normalised text < "
        f"{cfg.heldout_fraction}; held-out documents with word-{NGRAM}-gram Jaccard >= "
        f"{THRESHOLD} to a tokenized training document dropped (the first candidates checked "
        "until heldout_max_docs are kept)",
        "blocks": sum(n_blocks.values()),
        "seq_len": cfg.seq_len,
        "tokens": sum(n_blocks.values()) * cfg.seq_len,
    }


def assemble(d: Path, cfg: DataConfig, seed: int, dtype: np.dtype, per_lang: dict) -> None:
    """Pass 4: held-out files, the shuffled block table, stats, and ``prepared.json`` last."""
    tokens = cut_tokens(cfg, {k: v["tokens"] for k, v in per_lang.items()})
    n_blocks = {k: tokens[k] // cfg.seq_len for k in per_lang}
    if not sum(n_blocks.values()):
        sizes = ", ".join(f"{k}: {v}" for k, v in tokens.items())
        raise LayraError(
            f"not enough text for one block of data.seq_len={cfg.seq_len} tokens ({sizes})"
        )
    lang_ids, starts = block_table(cfg, n_blocks, seed)
    (d / "heldout").mkdir(exist_ok=True)
    heldout = {}
    for lang, v in per_lang.items():
        cands = read_candidates(candidate_files(d, lang), 0, v["checked"])
        near = set(v["near"])
        heldout[lang] = [c for i, c in enumerate(cands) if i not in near][: cfg.heldout_max_docs]
        atomic_write_text(d / "heldout" / f"{lang}.jsonl", documents_jsonl(heldout[lang]))
    mapped = {k: n * cfg.seq_len for k, n in n_blocks.items()}
    fp = fingerprint(d, mapped, dtype, lang_ids, starts)
    meta = {"langs": list(per_lang), "seq_len": cfg.seq_len, "dtype": dtype.name, "tokens": mapped}
    save_table(d / "blocks.safetensors", lang_ids, starts, meta)
    stats = _stats(cfg, seed, per_lang, heldout, n_blocks)
    stats.update(token_dtype=dtype.name, sha256=fp, prepared=str(d))
    atomic_write_json(d / "stats.json", stats)
    atomic_write_json(d / "prepared.json", {"format": FORMAT, "fingerprint": fp})
