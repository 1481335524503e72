"""Data preparation at three sizes: layra beside the bare tokenizer and a nanoGPT-style memmap.

    python bench/data_scale.py --text data/corpus/libreoffice/glg/train.txt \\
        --sizes 10,40,160 --out bench-data.json          # the Gemma 3 270M tokenizer

For each size (millions of tokens) a Galician text of unique documents is made by
recombining the sentences of ``--text`` (seeded), then three jobs run on it, each in a
fresh process, one after another:

- ``tokenizer``: the tokenizer alone, ``tokenizer(batch)`` on batches of 1,024 documents
  (its Rust code uses every core), ids thrown away; throughput counts only the time
  inside the tokenizer calls -- the ceiling for any preparation.
- ``nanogpt``: what a user would write after nanoGPT's ``prepare.py``: ``datasets``
  ``load_dataset("text", sample_by="paragraph")``, ``map(tokenize, num_proc=cores)``,
  then one uint32 ``np.memmap`` (no held-out split, no shuffle, no near-duplicate check).
- ``layra``: ``layra.prepare.prepare`` with its defaults (held-out fraction 0.01 with the
  near-duplicate check, seeded sample, seq_len 2048 blocks, a worker per core,
  verification of every shard).
- ``layra-noheld``: the same with ``heldout_fraction: 0`` -- held-out text made apart, as
  ``layra corpus`` does (no per-document hash, no near-duplicate check).

Memory: each job's own peak RSS (``ru_maxrss``) and baseline (after imports and the
tokenizer), and the peak of the whole process tree (workers included), sampled every
0.2 s from /proc. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BYTES_PER_TOKEN_GUESS = 4.2  # Galician with the Gemma 3 tokenizer (measured here)


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*") if Path(f"/proc/{p}").exists() else []:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def make_text(source: Path, target: Path, tokens: int, seed: int = 0) -> int:
    """Write unique documents recombined from ``source``'s sentences; returns bytes written."""
    text = source.read_text(encoding="utf-8")
    sents = [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) > 20]
    rng = random.Random(seed)
    want = int(tokens * BYTES_PER_TOKEN_GUESS)
    n = 0
    with open(target, "w", encoding="utf-8") as f:
        k = 0
        while n < want:
            doc = f"{k}. " + " ".join(rng.choice(sents) for _ in range(rng.randint(3, 30)))
            f.write(doc + "\n\n")
            n += len(doc.encode()) + 2
            k += 1
    return n


def _child_tokenizer(model: str, text: Path) -> dict:
    from layra.config import SourceConfig
    from layra.data import iter_documents
    from layra.models import load_tokenizer

    tok = load_tokenizer(model)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n, t_tok, t0 = 0, 0.0, time.perf_counter()
    batch: list[str] = []
    docs = iter_documents(SourceConfig(path=str(text), lang="glg"))
    for doc in itertools.chain(docs, [None]):  # streamed: memory is the tokenizer's own
        if doc is not None:
            batch.append(doc)
        if len(batch) == 1024 or (doc is None and batch):
            t = time.perf_counter()
            ids = tok(batch, add_special_tokens=True)["input_ids"]
            t_tok += time.perf_counter() - t
            n += sum(len(x) + 1 for x in ids)  # + EOS, as prepared data counts them
            batch = []
    return {"tokens": n, "wall_s": time.perf_counter() - t0, "work_s": t_tok, "base_kib": base}


def _child_nanogpt(model: str, text: Path, work: Path) -> dict:
    import datasets
    import numpy as np

    from layra.models import load_tokenizer

    datasets.disable_progress_bars()
    tok = load_tokenizer(model)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ds = datasets.load_dataset(
        "text",
        data_files=str(text),
        sample_by="paragraph",
        split="train",
        cache_dir=str(work / "hf"),
    )
    eos = tok.eos_token_id

    def encode(batch):
        ids = tok(batch["text"], add_special_tokens=True)["input_ids"]
        ids = [x + [eos] for x in ids]
        return {"ids": ids, "len": [len(x) for x in ids]}

    ds = ds.map(encode, batched=True, remove_columns=["text"], num_proc=os.cpu_count())
    total = int(np.sum(ds["len"], dtype=np.int64))
    arr = np.memmap(work / "train.bin", dtype=np.uint32, mode="w+", shape=(total,))
    idx = 0
    shards = 64
    for i in range(shards):
        part = ds.shard(num_shards=shards, index=i, contiguous=True).with_format("numpy")
        chunk = np.concatenate(part["ids"]) if len(part) else np.zeros(0, np.uint32)
        arr[idx : idx + len(chunk)] = chunk
        idx += len(chunk)
    arr.flush()
    wall = time.perf_counter() - t0
    return {"tokens": total, "wall_s": wall, "work_s": wall, "base_kib": base}


def _child_layra(model: str, text: Path, work: Path, heldout_fraction: float = 0.01) -> dict:
    from layra.config import DataConfig, SourceConfig
    from layra.models import load_tokenizer
    from layra.prepare import prepare

    tok = load_tokenizer(model)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = DataConfig(
        sources=[SourceConfig(path=str(text), lang="glg")],
        seq_len=2048,
        heldout_fraction=heldout_fraction,
        cache_dir=str(work / "prepared"),
    )
    t0 = time.perf_counter()
    data = prepare(cfg, tok, seed=0, say=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    from layra.tokenstore import read_progress

    tokens = sum(s.tokens for lang in data.blocks.langs for s in read_progress(data.root, lang)[0])
    disk = sum(p.stat().st_size for p in data.root.rglob("*") if p.is_file())
    return {"tokens": tokens, "wall_s": wall, "work_s": wall, "base_kib": base, "disk_bytes": disk}


def child(args) -> None:
    work = Path(args.work)
    if args.child == "tokenizer":
        res = _child_tokenizer(args.model, Path(args.text))
    elif args.child == "nanogpt":
        res = _child_nanogpt(args.model, Path(args.text), work)
    elif args.child == "layra-noheld":
        res = _child_layra(args.model, Path(args.text), work, heldout_fraction=0.0)
    else:
        res = _child_layra(args.model, Path(args.text), work)
    res["peak_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["child_peak_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    Path(args.result).write_text(json.dumps(res))


def run_job(kind: str, model: str, text: Path, work: Path) -> dict:
    result = work / f"{kind}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--model", model, "--text", str(text)]
    cmd += ["--work", str(work), "--result", str(result)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_rss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    th.join()
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{err[-3000:]}")
    res = json.loads(result.read_text())
    res["tree_peak_kib"] = peak[0]
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="~/.cache/layra/gemma3-270m", help="tokenizer source")
    ap.add_argument("--text", help="Galician .txt to recombine (layra corpus debian --langs glg)")
    ap.add_argument("--sizes", default="10,40,160", help="millions of tokens, comma-separated")
    ap.add_argument("--jobs", default="tokenizer,nanogpt,layra,layra-noheld")
    ap.add_argument("--markdown", help="write the results here as a Markdown table")
    ap.add_argument("--workdir", help="where texts and outputs go (default: a temp folder)")
    ap.add_argument("--out", help="write the results here as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.model = str(Path(args.model).expanduser())
    if args.child:
        child(args)
        return {}
    if not args.text or not Path(args.text).is_file():
        ap.error("--text: a Galician .txt file is needed (layra corpus debian --langs glg)")
    from layra.precision import cpu_info

    root = Path(args.workdir or tempfile.mkdtemp(prefix="layra-data-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in [float(s) for s in args.sizes.split(",")]:
        text = root / f"gl-{size:g}M.txt"
        nbytes = make_text(Path(args.text), text, int(size * 1e6))
        for kind in args.jobs.split(","):
            work = root / f"{kind}-{size:g}M"
            subprocess.run(["rm", "-rf", str(work)], check=True)
            work.mkdir()
            res = run_job(kind, args.model, text, work)
            res.update(size_m=size, text_bytes=nbytes, job=kind)
            res["tokens_per_s"] = res["tokens"] / res["work_s"]
            res["wall_tokens_per_s"] = res["tokens"] / res["wall_s"]
            rows.append(res)
            print(
                f"{size:g}M {kind:9s} {res['tokens']:>12,} tok  {res['wall_s']:7.1f} s wall  "
                f"{res['tokens_per_s']:>9,.0f} tok/s  peak {res['peak_kib'] / 2**20:.2f} GiB "
                f"(base {res['base_kib'] / 2**20:.2f}; tree {res['tree_peak_kib'] / 2**20:.2f})",
                flush=True,
            )
            subprocess.run(["rm", "-rf", str(work)], check=True)
        text.unlink()
    out = {"cpu": cpu_info(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
           "rows": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(out))
    return out


def markdown(out: dict) -> str:
    """The results as a Markdown table; throughput also relative to the bare tokenizer."""
    bare = {r["size_m"]: r["tokens_per_s"] for r in out["rows"] if r["job"] == "tokenizer"}
    lines = [
        f"{out['cpu'].get('model', '?')}, {out['cores']} cores, {out['date']}",
        "",
        "| tokens | job | wall s | tokens/s | × tokenizer | peak RSS (base) GiB | over base GiB "
        "| tree peak GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        gib = lambda k, r=r: r[k] / 2**20  # noqa: E731
        rel = r["tokens_per_s"] / bare[r["size_m"]] if r["size_m"] in bare else float("nan")
        lines.append(
            f"| {r['tokens'] / 1e6:.1f} M | {r['job']} | {r['wall_s']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {rel:.2f} | {gib('peak_kib'):.2f} ({gib('base_kib'):.2f}) "
            f"| {gib('peak_kib') - gib('base_kib'):.2f} | {gib('tree_peak_kib'):.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
