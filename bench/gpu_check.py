"""The paper's single-GPU recipes at real shapes with random weights, on a bare offline GPU.

    bash bench/gpu_check.sh --out results/gpu-check                  # one GPU, <= 8 min
    bash bench/gpu_check.sh --cpu-rehearsal --out /tmp/rehearsal     # same code, tiny, CPU

Nothing is installed or downloaded. The machine's own torch / transformers / peft /
accelerate / safetensors / tokenizers / numpy / pyyaml are all it uses; ``datasets``,
``gguf``, ``lm_eval`` and ``matplotlib`` are made unimportable in this process and every
child (a ``sitecustomize`` that puts ``None`` in ``sys.modules``), so the rehearsal on a
machine that has them fails where the GPU machine, which lacks them, would.

1. Llama 3.1 8B from ``layra.memory.PUBLISHED_CONFIGS`` (the config the presets plan with),
   random weights built on the device: the presets ``configs/llama3.1-8b/{layra,lora,
   layer-selective}-gl.yaml`` (seq 2048, batch 4, checkpointing) through ``layra.train.train``
   for ``--steps`` optimizer steps each, in their own process (grad_accum 1: a step is one
   micro-batch; accumulation changes neither memory nor tokens/s). Each reports tokens/s,
   MFU, ``torch.cuda.max_memory_allocated`` beside ``layra plan``'s per-device total for the
   same config, and whether every loss was finite.
2. Gemma 3 270M's published config, random weights saved once (bf16, 0.5 GB), and
   ``bench/train_speed.py --device cuda``: layra vs Trainer + PEFT, LayRA k=6 m=1.

Text is synthetic (seeded pseudo-words, 1 MB) and the tokenizer a byte-level BPE trained on
it here (512 entries): token ids use a sliver of the vocabulary, which changes no shape —
the embedding, the head and the loss still span the model's full vocabulary. Weights are the
one substitution: ``layra.models.load_model`` builds the model from config.json with random
initialisation on the device instead of reading a checkpoint; everything else is
``layra train``'s own code. The rehearsal (``--cpu-rehearsal``) runs the same steps with
tiny configs of the same architectures on the CPU.

MFU = tokens/s x model FLOPs per token / the GPU's dense bf16 peak (:data:`PEAK_BF16`, or
``--peak-tflops``); model FLOPs per token (:func:`flops_per_token`) count each matmul weight
of P parameters as 2P forward + 2P for its input's gradient, + 2P for its own gradient when
it trains (4P frozen, 6P trained; LoRA A/B and the LM head are matmuls, the embedding lookup
is not), plus causal attention, 2 x seq x q_dim forward per layer and twice that backward.
Recomputation under gradient checkpointing is not counted (it is not model work).

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``; exits 0 when every case ran with
finite losses, 1 otherwise, 2 (one line) when something it needs is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy")
NEEDED_IMPORT = {"pyyaml": "yaml"}
ABSENT = ("datasets", "gguf", "lm_eval", "matplotlib")  # not on the GPU machines
RECIPES = ("layra", "lora", "layer-selective")  # the paper's single-GPU recipes on 8B
# Dense bf16 tensor-core peaks (no sparsity), FLOP/s; the first name contained wins.
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
}
# Gemma 3 270M's published config.json (google/gemma-3-270m), the fields that shape it.
GEMMA_3_270M: dict[str, Any] = {
    "model_type": "gemma3_text",
    "vocab_size": 262_144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "max_position_embeddings": 32_768,
    "sliding_window": 512,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
# The rehearsal's stand-ins: the same architectures, deep enough for the presets' k / m.
TINY = {
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 12,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
    "gemma": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
              "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
              "sliding_window": 32, "query_pre_attn_scalar": 16, "vocab_size": 1024},
}  # fmt: skip


class CheckError(Exception):
    """Something the check needs is missing: one line, exit 2."""


# --------------------------------------------------------------------------------------
# Preflight: seconds, before any model is built


def block_absent_modules() -> Path:
    """Make :data:`ABSENT` unimportable here and in every child; return the sitecustomize dir."""
    for name in ABSENT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # import -> ImportError
    site = Path(tempfile.mkdtemp(prefix="layra-gpu-check-site-"))
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules.setdefault({m!r}, None)\n" for m in ABSENT)
    )
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), path) if p)
    return site


def preflight(rehearsal: bool) -> dict[str, str]:
    """Versions of what the check uses; :class:`CheckError` naming the first thing missing."""
    import importlib
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in (*NEEDED, *NEEDED_IMPORT):
        try:
            importlib.import_module(NEEDED_IMPORT.get(dist, dist))
        except ImportError as e:
            raise CheckError(
                f"missing Python package {dist} ({e}); this check installs nothing"
            ) from e
        versions[dist] = metadata.version(dist)
    for warning in version_warnings(versions):
        print(f"gpu_check: warning: {warning}", file=sys.stderr)
    try:
        import layra.memory  # noqa: F401
        import layra.train  # noqa: F401
    except ImportError as e:
        raise CheckError(f"cannot import layra ({e}); run from the repository root") from e
    import torch

    if not (ROOT / "configs" / "llama3.1-8b").is_dir():
        raise CheckError(f"no configs/llama3.1-8b under {ROOT}")
    if not rehearsal:
        if not torch.cuda.is_available():
            raise CheckError(
                f"no CUDA device visible to torch {torch.__version__} "
                f"(built for CUDA {torch.version.cuda}); --cpu-rehearsal runs without one"
            )
        if not torch.cuda.is_bf16_supported():
            raise CheckError(f"{torch.cuda.get_device_name()} has no bf16 support")
        versions["gpu"] = torch.cuda.get_device_name()
        versions["cuda"] = str(torch.version.cuda)
    else:
        from layra.precision import cpu_info

        versions["cpu"] = str(cpu_info().get("model", platform.processor()))
    return versions


def version_warnings(versions: dict[str, str]) -> list[str]:
    """Installed packages outside the ranges layra's pyproject.toml declares (a warning, not
    a refusal: the GPU machine's versions are what there is, and the run will say more)."""
    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = []
    for dep in map(Requirement, deps):
        have = versions.get(dep.name)
        if have and dep.specifier and not dep.specifier.contains(have, prereleases=True):
            out.append(f"{dep.name} {have} is outside layra's {dep.specifier}")
    return out


# --------------------------------------------------------------------------------------
# Inputs built here: synthetic text, a byte-level tokenizer, model directories


def synthetic_text(path: Path, n_bytes: int, seed: int = 0) -> Path:
    """Seeded pseudo-words in blank-line separated paragraphs, about ``n_bytes`` long."""
    rng = random.Random(seed)
    syll = [c + v for c in "bcdfglmnprstvxz" for v in "aeiou"] + ["ción", "nh", "ll", "rr"]
    words = ["".join(rng.choices(syll, k=rng.randint(1, 4))) for _ in range(3000)]
    paras, size = [], 0
    while size < n_bytes:
        p = " ".join(rng.choices(words, k=rng.randint(20, 120))).capitalize() + "."
        paras.append(p)
        size += len(p.encode()) + 2
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def save_tokenizer(text: Path, out: Path, vocab: int = 512) -> None:
    """A byte-level BPE tokenizer trained on the first 200 kB of ``text``, saved in ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([text.read_text(encoding="utf-8")[:200_000]], trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(out)  # fmt: skip


def model_dir(out: Path, fields: dict[str, Any], text: Path) -> Path:
    """``out`` with config.json (``fields``) and a tokenizer: no weights."""
    from transformers import AutoConfig

    fields = dict(fields)
    AutoConfig.for_model(fields.pop("model_type"), **fields).save_pretrained(out)
    save_tokenizer(text, out)
    return out


def random_model(name_or_path: str, dtype: Any, device: str):
    """The causal LM of ``name_or_path``'s config.json, randomly initialised on ``device``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from layra.models import parse_dtype

    mc = AutoConfig.from_pretrained(name_or_path)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(mc, dtype=parse_dtype(dtype))


def use_random_weights(device: str) -> None:
    """Make ``layra train`` build its model from config.json on ``device``, not read weights.

    ``layra.train`` imports ``load_model`` and ``check_model_files`` from ``layra.models``
    when it calls them, so replacing them there is the whole substitution.
    """
    import layra.models as models

    def load_model(name_or_path: str, gguf_file: str | None = None, dtype="float32", **_):
        return random_model(name_or_path, dtype, device), None

    models.load_model = load_model
    models.check_model_files = lambda *a, **k: None


# --------------------------------------------------------------------------------------
# One recipe, in its own process


def flops_per_token(inv, seq_len: int) -> float:
    """Model FLOPs per token of one training step (see the module docstring), from
    ``layra.memory.inventory``'s tensor list: 4P per frozen and 6P per trained matmul
    parameter, plus causal attention, 6 x seq x q_dim per layer (forward + backward)."""
    frozen = sum(t.numel for t in inv.tensors if t.matmul and not t.trainable)
    trained = sum(t.numel for t in inv.tensors if t.matmul and t.trainable)
    s = inv.shape
    return 4 * frozen + 6 * trained + 6 * s.layers * seq_len * s.q_dim


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak in FLOP/s: ``override_tflops``, else :data:`PEAK_BF16`."""
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in device_name), None)


def _peak_memory(device: str) -> tuple[int, str]:
    """Peak bytes of this process on ``device``, and how they were read."""
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    # The whole process, model loading included: not comparable with the plan's device total.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"


def run_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe as ``layra train`` does; measure it. Runs in a child process."""
    import torch

    from layra.config import load_config
    from layra.memory import inventory, plan_memory
    from layra.train import train

    device = spec["device"]
    use_random_weights(device)
    cfg = load_config(spec["config"], spec["overrides"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, progress=False)
    wall = time.perf_counter() - t0
    peak, source = _peak_memory(device)
    log = [json.loads(x) for x in (Path(cfg.output_dir) / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log]
    skip = spec["untimed"]
    t = cfg.train
    tokens_per_step = t.batch_size * t.grad_accum * cfg.data.seq_len
    dt = log[-1]["elapsed_s"] - log[skip - 1]["elapsed_s"]
    tok_s = (len(log) - skip) * tokens_per_step / dt if dt > 0 else float("nan")
    inv = inventory(cfg, "bf16")
    plan = plan_memory(inv, "single", 1, t.batch_size, cfg.data.seq_len,
                       t.gradient_checkpointing, t.loss_chunk)  # fmt: skip
    fpt = flops_per_token(inv, cfg.data.seq_len)
    from layra.precision import cpu_info

    name = torch.cuda.get_device_name() if device == "cuda" else str(cpu_info()["model"])
    peak_f = peak_flops(name, spec.get("peak_tflops")) if device == "cuda" else None
    return {
        "recipe": spec["recipe"],
        "config": str(Path(spec["config"]).relative_to(ROOT)),
        "model": spec["model"],
        "device": name,
        "seq_len": cfg.data.seq_len,
        "batch": t.batch_size,
        "checkpointing": t.gradient_checkpointing,
        "trainable": inv.count(True),
        "weights_dtype": inv.load_dtype,  # frozen weights as layra loads them (trained: fp32)
        "steps": len(log),
        "untimed_steps": skip,
        "tokens_per_s": tok_s,
        "flops_per_token": fpt,
        "peak_flops": peak_f,
        "mfu": tok_s * fpt / peak_f if peak_f else None,
        "peak_memory_gib": peak / 2**30,
        "peak_memory_source": source,
        "plan_total_gib": plan.total / 2**30,
        "losses": losses,
        "finite": all(math.isfinite(x) for x in losses),
        "wall_s": wall,
        # What this process could not import (set up by the driver's sitecustomize).
        "blocked_modules": [m for m in ABSENT if m in sys.modules and sys.modules[m] is None],
    }


# --------------------------------------------------------------------------------------
# The driver


def _child(cmd: list[str], deadline: float, log: Path) -> str | None:
    """Run ``cmd`` (output to ``log``) until ``deadline``; None, or why it failed."""
    left = deadline - time.monotonic()
    if left < 5:
        return "skipped: the time budget was spent"
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=left).returncode
        except subprocess.TimeoutExpired:
            return f"timed out (budget {left:.0f} s left when it started); log {log.name}"
    if rc:
        tail = [x for x in log.read_text(errors="replace").splitlines() if x.strip()][-1:]
        return f"exit {rc}: {tail[0] if tail else ''} (log {log.name})"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", required=True, help="results folder (made if absent)")
    ap.add_argument("--cpu-rehearsal", action="store_true", help="tiny configs on the CPU")
    ap.add_argument("--steps", type=int, help="optimizer steps per 8B recipe (8; rehearsal 3)")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting cases after")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if unlisted")
    ap.add_argument("--recipe", help=argparse.SUPPRESS)  # a child: spec JSON, result JSON
    args = ap.parse_args(argv)
    if args.recipe:
        spec_path, result_path = args.recipe.split(",")
        res = run_recipe(json.loads(Path(spec_path).read_text()))
        Path(result_path).write_text(json.dumps(res))
        return 0
    try:
        return drive(args)
    except CheckError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2


def drive(args: argparse.Namespace) -> int:
    """Preflight, then every case in its own process; the JSON and Markdown at the end."""
    start, deadline = time.time(), time.monotonic() + args.budget_s
    rehearsal = args.cpu_rehearsal
    if rehearsal:
        # Tiny matmuls gain nothing from threads, and on a shared CPU a multi-threaded kernel
        # waits at barriers for descheduled threads (measured: 65 s against 36 s in all).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    site = block_absent_modules()
    work = Path(tempfile.mkdtemp(prefix="layra-gpu-check-"))
    try:
        return _drive(args, rehearsal, work, start, deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the runs' weights (GBs at 8B); logs stay
        shutil.rmtree(site, ignore_errors=True)


def recipe_spec(recipe: str, args, llama_dir: Path, text: Path, work: Path, rehearsal: bool):
    """What a ``--recipe`` child trains: the 8B preset, on the random model and the text."""
    device = "cpu" if rehearsal else "cuda"
    steps = args.steps or (3 if rehearsal else 8)
    ov = [f"model.name_or_path={llama_dir}", f"data.sources=[{{path: {text}, lang: glg}}]",
          "data.heldout_fraction=0", "train.grad_accum=1", f"train.max_steps={steps}",
          "train.precision=bf16", f"train.device={device}", "train.trackers=none",
          "train.log_every=1", f"output_dir={work / ('run-' + recipe)}"]  # fmt: skip
    if rehearsal:  # else the preset's seq 2048 x batch 4
        ov += ["data.seq_len=64", "train.batch_size=2"]
    return {"recipe": recipe, "device": device, "untimed": 1 if rehearsal else 2,
            "overrides": ov, "config": str(ROOT / "configs" / "llama3.1-8b" / f"{recipe}-gl.yaml"),
            "model": "Llama 3.1 8B shapes" if not rehearsal else "tiny llama",
            "peak_tflops": args.peak_tflops}  # fmt: skip


def _drive(args, rehearsal: bool, work: Path, start: float, deadline: float) -> int:
    versions = preflight(rehearsal)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckError(f"cannot create --out {out}: {e.strerror}") from e
    from layra.memory import PUBLISHED_CONFIGS

    if args.steps is not None and args.steps <= (1 if rehearsal else 2):
        raise CheckError("--steps must exceed the untimed warm-up steps (2; rehearsal 1)")
    text = synthetic_text(work / "text.txt", 200_000 if rehearsal else 1_000_000)
    llama = dict(PUBLISHED_CONFIGS["meta-llama/Llama-3.1-8B"])
    gemma = dict(GEMMA_3_270M)
    if rehearsal:
        llama.update(TINY["llama"])
        gemma.update(TINY["gemma"])
    llama_dir = model_dir(work / "llama", llama, text)
    results: dict[str, Any] = {
        "mode": "cpu-rehearsal" if rehearsal else "gpu",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}",
        "versions": versions,
        "recipes": [],
        "errors": [],
    }
    for recipe in RECIPES:
        spec = recipe_spec(recipe, args, llama_dir, text, work, rehearsal)
        (work / f"{recipe}.json").write_text(json.dumps(spec))
        res_path = work / f"{recipe}.result.json"
        cmd = [sys.executable, __file__, "--recipe", f"{work / recipe}.json,{res_path}"]
        why = _child([*cmd, "--out", str(out)], deadline, out / f"{recipe}.log")
        print(f"gpu_check: {recipe}: {why or 'ok'}", flush=True)
        if why:
            results["errors"].append(f"{recipe}: {why}")
        else:
            results["recipes"].append(json.loads(res_path.read_text()))
    try:
        results["comparison"] = compare(args, work, text, gemma, rehearsal, deadline, out, results)
    except Exception as e:  # still write what the recipes measured
        results["comparison"] = None
        results["errors"].append(f"comparison: {type(e).__name__}: {e}")
    results["wall_s"] = round(time.time() - start, 1)
    results["load_avg"] = os.getloadavg()
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    (out / "gpu_check.md").write_text(markdown(results))
    print(markdown(results))
    ok = not results["errors"] and all(r["finite"] for r in results["recipes"])
    return 0 if ok else 1


def compare(args, work: Path, text: Path, gemma: dict, rehearsal: bool, deadline: float,
            out: Path, results: dict) -> dict[str, Any] | None:  # fmt: skip
    """layra vs Trainer + PEFT on Gemma 3 270M shapes: bench/train_speed.py, random weights."""
    from layra.config import load_config
    from layra.memory import inventory

    gdir = model_dir(work / "gemma", gemma, text)
    random_model(str(gdir), "bfloat16", "cpu").save_pretrained(gdir)
    seq, batch, steps, warm = (64, 2, 2, 1) if rehearsal else (1024, 8, 20, 3)
    cmd = [sys.executable, str(ROOT / "bench" / "train_speed.py"), "--model", str(gdir),
           "--text", str(text), "--k", "6", "--m", "1", "--seq-len", str(seq),
           "--batch", str(batch), "--steps", str(steps), "--warmup", str(warm),
           "--precision", "bf16", "--device", "cpu" if rehearsal else "cuda",
           "--out", str(out / "train_speed.json")]  # fmt: skip
    why = _child(cmd, deadline, out / "train_speed.log")
    print(f"gpu_check: train_speed: {why or 'ok'}", flush=True)
    if why:
        results["errors"].append(f"train_speed: {why}")
        return None
    res = json.loads((out / "train_speed.json").read_text())
    cfg = load_config(None, [f"model.name_or_path={gdir}", "data.sources=[{path: x, lang: x}]",
                             "method.name=layra", "method.k=6", "method.m=1"])  # fmt: skip
    fpt = flops_per_token(inventory(cfg, "bf16"), seq)
    peak_f = None
    if not rehearsal:
        import torch

        peak_f = peak_flops(torch.cuda.get_device_name(), args.peak_tflops)
    for side in res.get("sides", {}).values():
        side["mfu"] = side["tokens_per_s"] * fpt / peak_f if peak_f else None
    res["flops_per_token"] = fpt
    res["model"] = "Gemma 3 270M shapes" if not rehearsal else "tiny gemma3_text"
    return res


def markdown(res: dict[str, Any]) -> str:
    """The results as Markdown: one table of recipes, one of the comparison, the errors."""
    v = res["versions"]
    lines = [
        f"# gpu_check ({res['mode']}), {res['date']}",
        "",
        f"{v.get('gpu') or v.get('cpu')}; load {res['load_avg'][0]:.1f}; torch {v['torch']}, transformers {v['transformers']}, "
        f"peft {v['peft']}, accelerate {v['accelerate']}; {res.get('wall_s', '?')} s in all.",
        "",
        "| recipe | model | seq x batch | ckpt | steps | tokens/s | MFU | peak GiB | plan GiB "
        "| losses |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["recipes"]:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-"
        losses = ", ".join(f"{x:.3f}" for x in r["losses"])
        lines.append(
            f"| {r['recipe']} | {r['model']} | {r['seq_len']} x {r['batch']} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['steps']} | {r['tokens_per_s']:,.0f} | "
            f"{mfu} | {r['peak_memory_gib']:.2f} | {r['plan_total_gib']:.2f} | {losses} |"
        )
    if res["recipes"]:
        src = res["recipes"][0]["peak_memory_source"]
        lines.append(f"\npeak GiB: {src}; plan GiB: `layra plan`'s per-device total.")
    cmp_ = res.get("comparison")
    if cmp_:
        s = cmp_["settings"]
        lines += [
            "",
            f"## layra vs Trainer + PEFT, {cmp_['model']} (bench/train_speed.py)",
            "",
            f"LayRA k={s['k']} m={s['m']}, seq {s['seq_len']} x batch {s['batch']}, "
            f"{s['timed_steps']} timed steps, {s['precision']}.",
            "",
            "| side | tokens/s | MFU | first losses |",
            "|---|---:|---:|---|",
        ]
        for name, side in cmp_["sides"].items():
            mfu = f"{100 * side['mfu']:.1f} %" if side["mfu"] is not None else "-"
            first = ", ".join(f"{x:.3f}" for x in side["losses"][:3])
            lines.append(f"| {name} | {side['tokens_per_s']:,.0f} | {mfu} | {first} |")
        if "speedup" in cmp_:
            lines.append(f"\nlayra / reference: {cmp_['speedup']}x tokens/s.")
    if res["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
