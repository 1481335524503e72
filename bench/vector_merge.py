"""Benchmark: merging two language vectors into a 1.5 GB bf16 Llama (LayRA-merge, Eq. 3).

    python bench/vector_merge.py --dir /work/cache/bench            # build, measure, print
    python bench/vector_merge.py --dir /work/cache/bench --clean    # ... and delete the files

Builds a random Llama (12 layers, hidden 2048, vocab 32000, untied; ~1.5 GB in bf16,
4 shards) and two LayRA-shaped runs on it (PEFT adapters: LoRA r=8 on the first 3
and last layer, embedding and LM head fully trained), then measures in one go, each
in its own subprocess (wall time and peak RSS via wait4):

* ``layra vector apply BASE VEC_a:0.5 VEC_b:0.5`` (vectors extracted once beforehand);
* mergekit ``task_arithmetic`` with weights 0.5/0.5 on the two equivalent full
  fine-tuned copies — what a user without layra does; making those copies
  (PEFT ``merge_and_unload`` + ``save_pretrained``, per copy) is timed separately;
* ``cp -r BASE`` followed by ``sync``: the floor for writing a model of this size.

All commands write (and layra fsyncs) a full model directory; the page cache is
warm for everyone (nothing here drops caches). Prints a Markdown table and saves
``results.json`` in ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

LAYERS, HIDDEN, INTER, VOCAB, HEADS = 12, 2048, 5632, 32000, 16
LORA_LAYERS, RANK, ALPHA = [0, 1, 2, LAYERS - 1], 8, 16
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
TARGETS = [*ATTN, "gate_proj", "up_proj", "down_proj"]


def _shapes() -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[f"{p}self_attn.{n}.weight"] = (HIDDEN, HIDDEN)
        s[f"{p}mlp.gate_proj.weight"] = (INTER, HIDDEN)
        s[f"{p}mlp.up_proj.weight"] = (INTER, HIDDEN)
        s[f"{p}mlp.down_proj.weight"] = (HIDDEN, INTER)
        s[f"{p}input_layernorm.weight"] = (HIDDEN,)
        s[f"{p}post_attention_layernorm.weight"] = (HIDDEN,)
    s["model.norm.weight"] = (HIDDEN,)
    s["lm_head.weight"] = (VOCAB, HIDDEN)
    return s


def build_base(path: Path) -> None:
    """A random bf16 Llama in 4 shards with an index, as save_pretrained would write it."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    path.mkdir(parents=True)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(path)
    shapes = _shapes()
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    g = torch.Generator().manual_seed(0)
    shard, size, n, weight_map = {}, 0, 1, {}
    names = list(shapes)
    for i, name in enumerate(names):
        shape = shapes[name]
        t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape, generator=g) * 0.02
        shard[name] = t.to(torch.bfloat16)
        size += t.numel() * 2
        if size >= total / 4 * n or i == len(names) - 1:
            fname = f"model-{n:05d}-of-00004.safetensors"
            save_file(shard, path / fname, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, fname))
            shard, n = {}, n + 1
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_run(run: Path, base: Path, seed: int, embed_rows: float = 1.0) -> None:
    """A layra run dir: PEFT adapter (LoRA factors + trained embedding/head) and run.json."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    from layra.vectors.source import ModelDir

    src = ModelDir(base)
    g = torch.Generator().manual_seed(seed)
    shapes = _shapes()
    t: dict[str, torch.Tensor] = {}
    for i in LORA_LAYERS:
        for n in TARGETS:
            mod = f"model.layers.{i}.{'self_attn' if n in ATTN else 'mlp'}.{n}"
            out_f, in_f = shapes[f"{mod}.weight"]
            t[f"base_model.model.{mod}.lora_A.weight"] = torch.randn(RANK, in_f, generator=g) * 0.01
            t[f"base_model.model.{mod}.lora_B.weight"] = (
                torch.randn(out_f, RANK, generator=g) * 0.01
            )
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        noise = torch.randn(shapes[name], generator=g) * 1e-3
        if name == "model.embed_tokens.weight" and embed_rows < 1.0:
            # An untied input embedding trained without weight decay moves only the rows of
            # tokens it saw (or method.embeddings: rows); the head's softmax moves every row.
            noise[int(embed_rows * VOCAB) :] = 0
        trained = src.read(name).float() + noise
        t[f"base_model.model.{name}"] = trained.to(torch.bfloat16)
    (run / "adapter").mkdir(parents=True)
    save_file(t, run / "adapter" / "adapter_model.safetensors", metadata={"format": "pt"})
    LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        layers_to_transform=LORA_LAYERS,
        layers_pattern="layers",
        modules_to_save=["embed_tokens", "lm_head"],
        task_type="CAUSAL_LM",
    ).save_pretrained(run / "adapter")
    info = {
        "status": "complete",
        "method": "layra",
        "base_model": str(base),
        "gguf_file": None,
        "base_fingerprint": src.fingerprint(),
        "languages": [f"l{seed}"],
        "tied": False,
    }
    (run / "run.json").write_text(json.dumps(info))


MERGE_COPY = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:]
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
m.save_pretrained(out, max_shard_size="400MB")
"""


# Run from a small, fresh process: a child forked straight from this (large) one would
# report this process's RSS as its own peak (Linux keeps the pre-exec high-water mark).
TIMER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - t0, "maxrss_kib": ru.ru_maxrss,
                  "rc": os.waitstatus_to_exitcode(status), "err": err.decode("utf-8", "replace")}))
"""


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and peak RSS (the process and what it waited for)."""
    out = subprocess.run([sys.executable, "-c", TIMER, *cmd], capture_output=True, text=True)
    r = json.loads(out.stdout)
    if r["rc"]:
        raise SystemExit(f"failed ({r['rc']}): {' '.join(cmd)}\n{r['err'][-2000:]}")
    return {"wall_s": round(r["wall_s"], 2), "peak_rss_gib": round(r["maxrss_kib"] / 2**20, 3)}


def _rm(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
    os.sync()  # flush the deleted/dirty pages now, not inside the next measurement


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/work/cache/bench"))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each measured command")
    ap.add_argument("--clean", action="store_true", help="delete everything afterwards")
    ap.add_argument(
        "--delta-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="layra vector extract --delta-dtype (vectors are cached in --dir: use a fresh one)",
    )
    ap.add_argument(
        "--embed-rows",
        type=float,
        default=1.0,
        help="fraction of input-embedding rows the runs move (1: all, as decay does; "
        "0.1: a row-sparse vector). Cached in --dir like the vectors",
    )
    args = ap.parse_args(argv)
    d = args.dir
    d.mkdir(parents=True, exist_ok=True)
    base, py, layra = d / "base", sys.executable, [sys.executable, "-m", "layra"]
    res: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "date": time.strftime("%Y-%m-%d"),
        "setup": {},
        "delta_dtype": args.delta_dtype,
        "embed_rows": args.embed_rows,
    }
    if not (base / "config.json").exists():
        t = time.perf_counter()
        build_base(base)
        res["setup"]["build_base_s"] = round(time.perf_counter() - t, 1)
    res["base_gb"] = round(sum(f.stat().st_size for f in base.glob("*.safetensors")) / 1e9, 3)
    for k, seed in (("a", 1), ("b", 2)):
        run, vec, full = d / f"run_{k}", d / f"vec_{k}", d / f"full_{k}"
        if not run.exists():
            build_run(run, base, seed, args.embed_rows)
        if not vec.exists():
            res["setup"][f"layra_extract_{k}"] = measure(
                [*layra, "vector", "extract", str(run), "--out", str(vec)]
                + ["--delta-dtype", args.delta_dtype]
            )
        if not full.exists():
            res["setup"][f"full_copy_{k}"] = measure(
                [py, "-c", MERGE_COPY, str(base), str(run / "adapter"), str(full)]
            )
    mk_cfg = d / "mergekit.yml"
    mk_cfg.write_text(
        json.dumps(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "dtype": "bfloat16",
                "parameters": {"normalize": False},
                "models": [
                    {"model": str(d / "full_a"), "parameters": {"weight": 0.5}},
                    {"model": str(d / "full_b"), "parameters": {"weight": 0.5}},
                ],
            }
        )
    )
    outs = {k: d / f"out_{k}" for k in ("copy", "layra", "mergekit", "startup")}
    startup = "import torch; from transformers import AutoConfig, AutoTokenizer; "
    startup += f"AutoConfig.from_pretrained({str(base)!r})"
    cmds = {
        # The fixed cost every torch + transformers tool pays before touching a weight.
        "startup": [py, "-c", startup],
        "copy": ["sh", "-c", f"cp -r {base} {outs['copy']} && sync"],
        "layra": [
            *layra,
            "vector",
            "apply",
            str(base),
            f"{d / 'vec_a'}:0.5",
            f"{d / 'vec_b'}:0.5",
            "--out",
            str(outs["layra"]),
            # Same arithmetic as mergekit: every row (the default protects special tokens).
            "--protect-rows",
            "none",
        ],
        "mergekit": [
            str(Path(py).parent / "mergekit-yaml"),
            str(mk_cfg),
            str(outs["mergekit"]),
            "--quiet",
        ],
    }
    runs: dict[str, list[dict]] = {k: [] for k in cmds}
    for _ in range(args.repeat):
        for k, cmd in cmds.items():
            _rm(outs[k])
            runs[k].append(measure(cmd))
    res["runs"] = runs
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items()}
    res["best"] = best
    res["check_max_abs_diff_vs_mergekit"] = _compare(outs["layra"], outs["mergekit"])
    lw, mw, cw, sw = (best[k]["wall_s"] for k in ("layra", "mergekit", "copy", "startup"))
    res["ratios"] = {
        "layra/mergekit wall": round(lw / mw, 3),
        "layra/copy+sync wall": round(lw / cw, 2),
        # Both tools minus the interpreter + torch + transformers start-up they share.
        "(layra-startup)/(mergekit-startup) wall": round((lw - sw) / (mw - sw), 3),
        "(layra-startup)/copy+sync wall": round((lw - sw) / cw, 2),
        "layra/mergekit rss": round(
            best["layra"]["peak_rss_gib"] / best["mergekit"]["peak_rss_gib"], 3
        ),
    }
    (d / "results.json").write_text(json.dumps(res, indent=2))
    _print(res)
    if args.clean:
        _rm(d)
    return 0


def _compare(a: Path, b: Path) -> float:
    """Largest |layra − mergekit| over a few touched and untouched tensors (bf16 rounding only)."""
    from safetensors import safe_open

    def get(root: Path, name: str) -> torch.Tensor:
        for f in root.glob("*.safetensors"):
            with safe_open(f, "pt") as s:
                if name in s.keys():
                    return s.get_tensor(name).float()
        raise KeyError(name)

    names = [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.5.self_attn.q_proj.weight",
    ]
    return max(float((get(a, n) - get(b, n)).abs().max()) for n in names)


def _print(res: dict) -> None:
    print(f"machine: {res['machine']}; date {res['date']}; base {res['base_gb']} GB bf16")
    print("| step | wall (s) | peak RSS (GiB) |\n|---|---|---|")
    for k, r in res["setup"].items():
        if isinstance(r, dict):
            print(f"| setup: {k} | {r['wall_s']} | {r['peak_rss_gib']} |")
    for k, v in res["runs"].items():
        walls = ", ".join(str(r["wall_s"]) for r in v)
        print(f"| {k} | {walls} | {res['best'][k]['peak_rss_gib']} |")
    print(
        json.dumps(res["ratios"]), "max |layra - mergekit|:", res["check_max_abs_diff_vs_mergekit"]
    )


if __name__ == "__main__":
    raise SystemExit(main())
