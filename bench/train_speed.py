"""Training speed side by side: transformers Trainer + PEFT against `layra train`.

    python bench/train_speed.py --model ~/.cache/layra/gemma3-270m \\
        --text layra-demo/corpus/libreoffice/glg/train.txt --k 6 --m 1 --out gemma.json
    python bench/train_speed.py --tiny            # a tiny Llama built on the spot (seconds)

One invocation packs the text once (layra's data pipeline) and feeds the *same* blocks,
in the same order, with the same seed and the same LayRA configuration (LoRA r/alpha/
dropout on the first k and last m layers, embeddings and LM head fully trained, tied
kept tied) to

  (a) the reference a user would write: ``get_peft_model`` + ``transformers.Trainer``
      with ``bf16=True`` (autocast) when the precision is bf16, ``use_cpu=True``, full
      logits, the Trainer's default fused AdamW, sequential sampling so the batches match;
  (b) ``layra train`` (its CLI, with the chunked loss).

Both sides run in the same precision: ``--precision auto`` (the default) resolves it
once here with layra's hardware probe (bf16 only where this CPU multiplies bf16 fast,
see layra.precision) and passes the result to both. The CPU model and flags go into
the JSON.

Each runs in its own child process so its peak RSS (``wait4``'s ``ru_maxrss``) is its
own. Throughput counts the optimizer steps after ``--warmup`` untimed ones. The
result is printed as a Markdown table and, with ``--out``, saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --------------------------------------------------------------------------------------
# (a) the reference: what a user writes with transformers + PEFT


def run_reference(spec: dict) -> dict:
    """Train with ``transformers.Trainer`` + PEFT; return per-step losses and times."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from torch.utils.data import SequentialSampler
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    depth = model.config.num_hidden_layers
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    set_seed(spec["seed"])  # LoRA initialisation from the seed alone (as layra does)
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec["r"],
            lora_alpha=spec["alpha"],
            lora_dropout=spec["dropout"],
            target_modules=LINEARS,
            layers_to_transform=list(range(spec["k"])) + list(range(depth - spec["m"], depth)),
            layers_pattern="layers",
            modules_to_save=["embed_tokens", "lm_head"],
            ensure_weight_tying=tied,
            task_type="CAUSAL_LM",
        ),
    )
    blocks = load_file(spec["data"])["blocks"][: spec["blocks"]]
    dataset = [{"input_ids": b, "labels": b} for b in blocks]

    class SequentialTrainer(Trainer):
        # The Trainer shuffles; the comparison needs layra's block order.
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset or self.train_dataset)

    times: list[float] = []
    losses: list[float] = []

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(
        output_dir=spec["workdir"],
        per_device_train_batch_size=spec["batch"],
        max_steps=spec["total_steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="linear",
        warmup_steps=spec["warmup_steps"],
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-5,
        max_grad_norm=1.0,
        bf16=spec["precision"] == "bf16",
        use_cpu=spec.get("device", "cpu") == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=spec["seed"],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SequentialTrainer(model=model, args=args, train_dataset=dataset, callbacks=[Record()])
    t0 = time.perf_counter()
    trainer.train()
    return {"losses": losses, "elapsed": [t - t0 for t in times]}


# --------------------------------------------------------------------------------------
# (b) layra: its own CLI on a run directory whose packed data is already in place


def layra_config(spec: dict) -> dict:
    """The run config `layra train` gets (same hyperparameters as the reference)."""
    return {
        "model": {"name_or_path": spec["model"]},
        "method": {
            "name": "layra",
            "k": spec["k"],
            "m": spec["m"],
            "r": spec["r"],
            "alpha": spec["alpha"],
            "dropout": spec["dropout"],
        },
        "data": {
            "sources": [{"path": spec["text"], "lang": "xxx"}],
            "seq_len": spec["seq_len"],
            "max_tokens": spec["blocks"] * spec["seq_len"],
            "heldout_fraction": 0.0,
            "cache_dir": spec["prepared"],  # prepared here once; `layra train` reuses it
        },
        "train": {
            "batch_size": spec["batch"],
            "max_steps": spec["total_steps"],
            "lr": spec["lr"],
            "warmup": spec["warmup_frac"],
            "schedule": "linear",
            "precision": spec["precision"],
            "loss_chunk": spec["chunk"],
            "gradient_checkpointing": spec["checkpointing"],
            "seed": spec["seed"],
            "log_every": 1,
            "device": spec.get("device", "cpu"),
        },
        "output_dir": spec["run_dir"],
    }


def layra_result(run_dir: Path) -> dict:
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return {"losses": [r["loss"] for r in log], "elapsed": [r["elapsed_s"] for r in log]}


# --------------------------------------------------------------------------------------
# The harness


def _child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS in GiB of that process alone)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(cmd)}")
    return time.perf_counter() - t0, usage.ru_maxrss / 2**20


def throughput(elapsed: list[float], warmup: int, tokens_per_step: int) -> float:
    """Tokens per second over the steps after the first ``warmup`` (whose time is excluded)."""
    timed = len(elapsed) - warmup
    start = elapsed[warmup - 1] if warmup > 0 else 0.0
    return timed * tokens_per_step / (elapsed[-1] - start)


def _tiny_model(root: Path) -> tuple[str, Path]:
    """A tiny Llama and a text file, built from the test helpers."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import tiny

    model_dir = tiny.save_model(root / "tiny-llama", "llama")
    text = root / "text.txt"
    tiny.write_corpus(text, "gl")
    return str(model_dir), text


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores {cpu}, {mem:.0f} GiB"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="Hugging Face model directory")
    ap.add_argument("--text", help="plain-text training file")
    ap.add_argument("--tiny", action="store_true", help="tiny Llama and text, built here")
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--chunk", type=int, default=1024, help="layra train.loss_chunk")
    ap.add_argument("--checkpointing", action="store_true", help="layra gradient checkpointing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="both sides' precision; auto: layra's probe decides (printed)",
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="both sides' device")
    ap.add_argument("--only", choices=["reference", "layra"], help="run one side only")
    ap.add_argument("--out", help="write the result as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # inside the reference's own process
        spec = json.loads(Path(args.child).read_text())
        Path(spec["result"]).write_text(json.dumps(run_reference(spec)))
        return {}

    import yaml
    from safetensors.torch import save_file

    from layra.config import load_config
    from layra.data import build_dataset
    from layra.models import load_tokenizer
    from layra.precision import announce, cpu_info, resolve_precision

    prec = resolve_precision(args.precision, args.device)
    announce(prec)

    with tempfile.TemporaryDirectory(prefix="layra-bench-") as tmp:
        work = Path(tmp)
        if args.tiny:
            model, text = _tiny_model(work)
        elif args.model and args.text:
            model, text = str(Path(args.model).expanduser()), Path(args.text)
        else:
            ap.error("give --model and --text, or --tiny")
        total = args.warmup + args.steps
        spec = {
            "model": model,
            "text": str(text),
            "k": args.k,
            "m": args.m,
            "r": args.r,
            "alpha": args.alpha,
            "dropout": args.dropout,
            "lr": args.lr,
            "seq_len": args.seq_len,
            "batch": args.batch,
            "blocks": total * args.batch,
            "total_steps": total,
            # 20% warm-up of the learning rate; both sides get the same integer step count.
            "warmup_frac": 0.2,
            "warmup_steps": math.ceil(0.2 * total),
            "chunk": args.chunk,
            "checkpointing": args.checkpointing,
            "seed": args.seed,
            "precision": prec.name,
            "device": args.device,
            "run_dir": str(work / "layra"),
            "workdir": str(work / "reference"),
            "data": str(work / "blocks.safetensors"),
            "prepared": str(work / "prepared"),
            "result": str(work / "reference.json"),
        }
        cfg_data = layra_config(spec)
        (work / "layra.yaml").write_text(yaml.safe_dump(cfg_data, sort_keys=False))
        cfg = load_config(work / "layra.yaml")
        packed = build_dataset(cfg.data, load_tokenizer(model), seed=args.seed)
        if len(packed.blocks) < spec["blocks"]:
            raise SystemExit(
                f"{text} packs into {len(packed.blocks)} blocks; need {spec['blocks']}"
            )
        # The reference reads the same blocks from one file (a bench-sized tensor).
        save_file({"blocks": packed.blocks[:]}, spec["data"])
        (work / "spec.json").write_text(json.dumps(spec))

        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if args.device == "cpu":  # accelerate reads it: on cuda it would train on the CPU
            env["ACCELERATE_USE_CPU"] = "1"
        tokens_per_step = args.batch * args.seq_len
        sides = {}
        runs = {
            "reference": [sys.executable, __file__, "--child", str(work / "spec.json")],
            "layra": [sys.executable, "-m", "layra", "train", "--config", str(work / "layra.yaml")]
            + ["--resume", "--quiet"],
        }
        for name, cmd in runs.items():
            if args.only and name != args.only:
                continue
            wall, rss = _child(cmd, env)
            res = (
                json.loads(Path(spec["result"]).read_text())
                if name == "reference"
                else layra_result(Path(spec["run_dir"]))
            )
            sides[name] = {
                "tokens_per_s": round(throughput(res["elapsed"], args.warmup, tokens_per_step), 1),
                "peak_rss_gib": round(rss, 2),
                "wall_s": round(wall, 1),
                "losses": res["losses"],
            }

    result = {
        "model": Path(model).name if not args.tiny else "tiny-llama (hidden 32, 4 layers)",
        "machine": _machine(),
        "cpu": cpu_info(),
        "precision": prec.to_dict(),
        "load_avg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "settings": {
            k: spec[k]
            for k in (
                "k",
                "m",
                "r",
                "alpha",
                "dropout",
                "lr",
                "seq_len",
                "batch",
                "seed",
                "chunk",
                "precision",
            )  # fmt: skip
        }
        | {"timed_steps": args.steps, "warmup_steps": args.warmup, "text": str(text)},
        "sides": sides,
    }
    if len(sides) == 2:
        ref, lay = sides["reference"], sides["layra"]
        diffs = [abs(a - b) for a, b in zip(ref["losses"], lay["losses"], strict=True)]
        result["speedup"] = round(lay["tokens_per_s"] / ref["tokens_per_s"], 2)
        result["memory_ratio"] = round(lay["peak_rss_gib"] / ref["peak_rss_gib"], 2)
        result["max_loss_diff"] = round(max(diffs), 5)
        result["first_loss_diff"] = round(diffs[0], 6)
    print(markdown(result))
    if args.out:
        from layra.atomic import atomic_write_json

        atomic_write_json(args.out, result)
    return result


def markdown(result: dict) -> str:
    """The result as a Markdown table (tokens/s, peak RSS, ratios, first losses)."""
    lines = [
        f"**{result['model']}** — {result['machine']}, load {result['load_avg'][0]:.1f}, "
        f"{result['date']}; {result['precision']['name']} on both sides "
        f"({result['precision']['reason']})",
        "",
        "| path | tokens/s | peak RSS (GiB) | first losses |",
        "|---|---:|---:|---|",
    ]
    for name, s in result["sides"].items():
        first = ", ".join(f"{x:.4f}" for x in s["losses"][:5])
        lines.append(f"| {name} | {s['tokens_per_s']:,.0f} | {s['peak_rss_gib']:.2f} | {first} |")
    if "speedup" in result:
        lines.append(
            f"\nlayra / reference: **{result['speedup']}×** tokens/s, "
            f"**{result['memory_ratio']}×** peak RSS; losses differ by at most "
            f"{result['max_loss_diff']} (step 1: {result['first_loss_diff']})."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
