"""The paper's benchmarks through lm-evaluation-harness, on a model already in memory.

    layra eval tasks MODEL --tasks xnli,pawsx,xcopa,xstorycloze --langs eng,glg
    layra eval tasks MODEL --tasks xnli --langs glg --task-dir local_tasks/   # offline

A (family, language) pair maps to one lm-eval task (``xnli`` + ``glg`` → ``xnli_gl``).
Settings follow the paper: 0-shot log-likelihood accuracy for XNLI, PAWS-X, XCOPA and
XStoryCloze (base and adapted models); for instruct models MGSM 3-shot with greedy
generation (``mgsm_direct_*``, exact match) and Global-MMLU-Lite (``global_mmlu_*``).

Online, the standard task names resolve through lm-eval's built-in index (data
from the Hugging Face hub). Offline, ``--task-dir`` points at a directory of task
YAMLs with the *same names*, e.g. a built-in task included with its data overridden:

    # local_tasks/xnli_gl.yaml
    include: /…/lm_eval/tasks/galician_bench/xnli_gl.yaml
    task: xnli_gl
    dataset_path: json
    dataset_kwargs: {data_files: {test: /data/xnli_gl.jsonl}}

Only that directory is indexed then (lm-eval's 14,000 built-in YAMLs take ~8 s).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layra.errors import LayraError, require
from layra.evaluation.langs import ISO1_TO_ISO3, ISO3_TO_ISO1, normalize_lang


@dataclass(frozen=True)
class Family:
    """A benchmark the paper reports, as lm-eval names it per language."""

    name: str
    prefix: str  # lm-eval task name = prefix + ISO 639-1 code
    langs: tuple[str, ...]  # ISO 639-1 codes lm-eval 0.4.13 has for it
    num_fewshot: int
    metrics: tuple[str, ...]  # lm-eval result keys, first present is the score
    instruct: bool = False  # the paper runs it on instruct models only


_ACC = ("acc,none",)
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("xnli", "xnli_", ("ar", "bg", "ca", "de", "el", "en", "es", "eu", "fr", "gl", "hi",
                                 "ru", "sw", "th", "tr", "ur", "vi", "zh"), 0, _ACC),
        Family("pawsx", "paws_", ("ca", "de", "en", "es", "eu", "fr", "gl", "ja", "ko", "zh"),
               0, _ACC),
        Family("xcopa", "xcopa_", ("et", "eu", "ht", "id", "it", "qu", "sw", "ta", "th", "tr",
                                   "vi", "zh"), 0, _ACC),
        Family("xstorycloze", "xstorycloze_", ("ar", "ca", "en", "es", "eu", "gl", "hi", "id",
                                               "my", "ru", "sw", "te", "zh"), 0, _ACC),
        Family("mgsm", "mgsm_direct_", ("bn", "ca", "de", "en", "es", "eu", "fr", "gl", "ja",
                                        "ru", "sw", "te", "th", "zh"), 3,
               ("exact_match,flexible-extract", "exact_match,remove_whitespace",
                "exact_match,none"), instruct=True),
        Family("global_mmlu", "global_mmlu_", ("ar", "bn", "de", "en", "es", "fr", "hi", "id",
                                               "it", "ja", "ko", "pt", "sw", "yo", "zh"), 0, _ACC,
               instruct=True),
    )
}  # fmt: skip
FAMILY_ALIASES = {
    "paws": "pawsx", "paws-x": "pawsx", "mgsm_direct": "mgsm", "global_mmlu_lite": "global_mmlu",
    "global-mmlu-lite": "global_mmlu", "gmmlu": "global_mmlu", "xstory": "xstorycloze",
}  # fmt: skip
_FALLBACK_METRICS = ("acc,none", "exact_match,flexible-extract", "exact_match,none")


@dataclass(frozen=True)
class TaskRef:
    """One lm-eval task to run: family, language (ISO 639-3), task name, shots."""

    family: str
    lang: str
    task: str
    num_fewshot: int


def family(name: str) -> Family:
    """The :class:`Family` for a name or alias; an unknown name lists the valid ones."""
    key = FAMILY_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in FAMILIES:
        raise LayraError(f"unknown task {name!r}; valid tasks: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def _code(lang3: str) -> str:
    return ISO3_TO_ISO1.get(lang3, lang3)


def resolve_tasks(
    families: list[str], langs: list[str], available: set[str] | None = None
) -> tuple[list[TaskRef], list[str]]:
    """The tasks for every (family, language) pair that exists, and a note per missing pair.

    ``available`` is the set of task names a local ``--task-dir`` defines; without it
    the built-in table of lm-eval 0.4.13 decides. A language that none of the families
    has is an error naming the languages they do have.
    """
    require(bool(families), "no tasks given (--tasks xnli,pawsx,...)")
    require(bool(langs), "no languages given (--langs eng,glg,...)")
    fams = list(dict.fromkeys(family(f).name for f in families))
    codes = list(dict.fromkeys(normalize_lang(x) for x in langs))
    refs: list[TaskRef] = []
    notes: list[str] = []
    offered: set[str] = set()
    for f in fams:
        fam = FAMILIES[f]
        if available is None:
            have = {ISO1_TO_ISO3.get(c, c) for c in fam.langs}
        else:
            have = {ISO1_TO_ISO3.get(n[len(fam.prefix):], n[len(fam.prefix):])
                    for n in available if n.startswith(fam.prefix)}  # fmt: skip
        offered |= have
        for lang in codes:
            if lang in have:
                refs.append(TaskRef(f, lang, fam.prefix + _code(lang), fam.num_fewshot))
            else:
                notes.append(f"{f} has no {lang}")
    unknown = [x for x in codes if x not in offered]
    if unknown:
        where = "the task directory" if available is not None else "lm-eval"
        raise LayraError(
            f"no {'/'.join(fams)} task in {where} for language(s) {', '.join(unknown)}; "
            f"valid languages: {', '.join(sorted(offered)) or 'none'}"
        )
    return refs, notes


def task_manager(task_dir: str | Path | None = None):
    """An lm-eval TaskManager: built-in tasks, or only those in ``task_dir`` (offline)."""
    from layra.evaluation import lmeval_compat

    lmeval_compat.install()  # before any task helper module is imported
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        return TaskManager()
    d = Path(task_dir)
    require(d.is_dir(), f"task directory {d} does not exist")
    tm = TaskManager(include_path=str(d), include_defaults=False)
    require(bool(tm.all_tasks), f"task directory {d} defines no lm-eval tasks (*.yaml)")
    return tm


def available_tasks(tm) -> set[str]:
    return set(tm.all_subtasks) | set(tm.all_groups)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _local_files(cfg: dict[str, Any]) -> list[Path]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    values = files.values() if isinstance(files, dict) else [files]
    out = []
    for v in values:
        for item in v if isinstance(v, list) else [v]:
            p = Path(str(item))
            if p.is_file():
                out.append(p)
    return out


def task_identity(tm, name: str) -> dict[str, Any]:
    """What identifies a task's data before running it: its resolved YAML config hash and
    the content hash of every local data file it reads (hub data is named, not hashed)."""
    entry = tm.task_index.get(name)
    cfg = dict(getattr(entry, "cfg", None) or {}) if entry is not None else {}
    if not cfg and entry is not None and getattr(entry, "yaml_path", None):
        from lm_eval.tasks._yaml_loader import load_yaml

        cfg = load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
    blob = json.dumps(cfg, sort_keys=True, default=str).encode("utf-8")
    files = {str(p): _file_sha256(p) for p in _local_files(cfg)}
    combined = hashlib.sha256(blob + json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {
        "task": name,
        "sha256": combined,
        "dataset_path": cfg.get("dataset_path"),
        "dataset_name": cfg.get("dataset_name"),
        "data_files": files,
    }


def make_lm(model, tok, batch_size: int = 8, compute_dtype=None):
    """Wrap a loaded model for lm-eval (PEFT layers stay active: they live in the modules)."""
    from lm_eval.models.huggingface import HFLM

    from layra.arch import unwrap

    kwargs = {"mixed_precision_dtype": compute_dtype} if compute_dtype is not None else {}
    return HFLM(pretrained=unwrap(model), tokenizer=tok, batch_size=batch_size, **kwargs)


def pick_metric(fam: Family, metrics: dict[str, Any]) -> tuple[str, float]:
    """The score of a task result: the family's first metric present, as (name, value)."""
    for key in (*fam.metrics, *_FALLBACK_METRICS):
        if isinstance(metrics.get(key), (int, float)):
            return key.split(",")[0], float(metrics[key])
    raise LayraError(f"lm-eval returned no {fam.metrics[0]} for {fam.name}: {sorted(metrics)}")


def run_task(lm, tm, ref: TaskRef, limit: int | None = None, seed: int = 1234) -> dict[str, Any]:
    """Run one task; return ``{metric, value, metrics, n_samples, config, lm_eval_version}``."""
    import lm_eval

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[ref.task],
        num_fewshot=ref.num_fewshot,
        limit=limit,
        task_manager=tm,
        log_samples=False,
        # Only non-mean metrics bootstrap; accuracy's stderr is closed-form.
        bootstrap_iters=1000,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    require(out is not None, f"lm-eval returned nothing for {ref.task}")
    metrics = out["results"][ref.task]
    name, value = pick_metric(FAMILIES[ref.family], metrics)
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return {
        "metric": name,
        "value": value,
        "metrics": numeric,
        "n_samples": out.get("n-samples", {}).get(ref.task),
        "config": out.get("configs", {}).get(ref.task),
        "lm_eval_version": out.get("lm_eval_version"),
    }
