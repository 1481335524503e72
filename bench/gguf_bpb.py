"""Bits per byte of an exported GGUF computed by llama.cpp, next to `layra eval bpb`'s.

python bench/gguf_bpb.py --gguf gl.gguf --model runs/gl-layra --text glg=heldout/gl.txt \
    --max-bytes 12000 --seq-len 256

Same documents, same token ids (the model's own tokenizer), same windows (BOS + one
document, long ones strided: layra.evaluation.bpb.document_windows), same sum of next-token
NLL over the same bytes; only the forward pass differs: llama.cpp on the GGUF
(llama-cpp-python, `logits_all`) against transformers on MODEL (MODEL+VEC:λ and run
directories as `layra eval` reads them). Needs `pip install llama-cpp-python==0.3.36`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np


def open_llama(path: str, seq_len: int):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=path,
        n_ctx=seq_len,
        n_batch=seq_len,
        logits_all=True,
        verbose=False,
        n_threads=os.cpu_count() or 1,
    )


def llamacpp_nll(llm, windows) -> list[float]:
    """Σ NLL (nats) of each window's scored tokens, from llama.cpp's logits (float64 softmax)."""
    out = []
    for ids, n in windows:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        # Position j - 1 predicts token j; the last n tokens are scored.
        pos = np.arange(len(ids) - n, len(ids))
        rows = logits[pos - 1]
        top = rows.max(-1, keepdims=True)
        lse = np.log(np.exp(rows - top).sum(-1)) + top[:, 0]
        out.append(float((lse - rows[np.arange(n), np.asarray(ids)[pos]]).sum()))
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        name = platform.machine()
    return f"{name}, {os.cpu_count()} cores"


def main(argv=None) -> int:
    from layra.evaluation.bpb import (
        bits_per_byte,
        document_windows,
        load_text,
        start_id,
        tokenize_documents,
    )
    from layra.evaluation.modelspec import load_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", required=True)
    p.add_argument(
        "--model", required=True, help="what was exported (MODEL as layra eval reads it)"
    )
    p.add_argument("--text", required=True, help="LANG=FILE")
    p.add_argument("--max-bytes", type=int, default=12000)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--out", help="JSON record")
    a = p.parse_args(argv)
    lang, path = a.text.split("=", 1)
    text = load_text(lang, path, a.max_bytes)
    loaded = load_spec(a.model)
    t0 = time.perf_counter()
    ref = bits_per_byte(loaded.model, loaded.tok, text, seq_len=a.seq_len)
    t_ref = time.perf_counter() - t0
    doc_ids, _ = tokenize_documents(loaded.tok, text.docs)
    start = start_id(loaded.tok)
    windows = [w for d in doc_ids for w in document_windows(d, a.seq_len, start)]
    llm = open_llama(a.gguf, a.seq_len)
    t0 = time.perf_counter()
    nll = llamacpp_nll(llm, windows)
    t_cpp = time.perf_counter() - t0
    # The file's own tokenizer (converted or carried over) against the model's, per document.
    differ = sum(
        llm.tokenize(d.encode("utf-8"), add_bos=False, special=False) != ids
        for d, ids in zip(text.docs, doc_ids, strict=True)
    )
    bpb = sum(nll) / (math.log(2) * text.n_bytes)
    rel = (bpb - ref.bpb) / ref.bpb
    rec = {
        "gguf": a.gguf,
        "model": a.model,
        "lang": lang,
        "docs": len(text.docs),
        "bytes": text.n_bytes,
        "windows": len(windows),
        "data_sha256": text.sha256,
        "seq_len": a.seq_len,
        "docs_tokenized_differently": differ,
        "bpb_layra": ref.bpb,
        "bpb_llamacpp": bpb,
        "relative": rel,
        "seconds_layra": round(t_ref, 1),
        "seconds_llamacpp": round(t_cpp, 1),
        "cpu": _cpu(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        "| text | docs | bytes | layra eval bpb | llama.cpp | relative | docs tokenized differently |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {lang} | {len(text.docs)} | {text.n_bytes} | {ref.bpb:.4f} | {bpb:.4f} | {rel:+.2%} | {differ} |"
    )
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
    return 0 if abs(rel) < 0.01 else 1


if __name__ == "__main__":
    raise SystemExit(main())
