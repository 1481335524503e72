"""Evaluate a MODEL argument and record each result in the store, skipping cached ones.

    records = run_bpb("runs/gl-layra", [("glg", "heldout/gl.txt")], "results")
    records = run_tasks("models/gl", ["xnli"], ["eng", "glg"], "results", task_dir="tasks/")

Every bad input fails before the model is loaded where it can (texts read, tasks
resolved first). Each record is written as soon as its evaluation ends, so a
failure later loses nothing already measured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from layra.errors import LayraError, require
from layra.evaluation import tasks as T
from layra.evaluation.bpb import SCORING, bits_per_byte, load_text
from layra.evaluation.langs import normalize_lang
from layra.evaluation.modelspec import LoadedModel, evaluated_fingerprint, load_spec
from layra.evaluation.store import ResultStore, record_key
from layra.lock import holds_output_lock
from layra.models import parse_dtype
from layra.provenance import provenance

Say = Callable[[str], None]
TASK_SEED = 1234  # lm-eval's default seeds, fixed and recorded


def _say(msg: str) -> None:
    print(msg, flush=True)


def _dtype_name(dtype: str, say: Say = _say) -> str:
    """``auto`` / ``bf16`` / ``fp32`` -> the precision evaluation runs in (on the CPU)."""
    from layra.precision import announce, normalize_precision, resolve_precision

    try:
        normalize_precision(dtype)
    except LayraError:
        raise LayraError(f"--dtype must be auto, fp32 or bf16, got {dtype}") from None
    prec = resolve_precision(dtype, device="cpu")  # evaluation runs where the model loads
    announce(prec, say)
    return prec.name


def _precision_record(dtype: str) -> dict[str, Any]:
    from layra.precision import resolve_precision

    return resolve_precision(dtype, device="cpu").to_dict()  # the probe is cached


def model_record(
    loaded: LoadedModel, spec_text: str, name: str | None, seed: int | None = None
) -> dict[str, Any]:
    """The ``model`` part of a record: display name, what was loaded, both fingerprints.

    ``seed`` is the training seed (default: the run's ``train.seed`` when MODEL is a
    run, else None): a report groups records of one name by seed (mean and interval).
    """
    from layra.fingerprint import model_fingerprint

    rec = {
        "name": name or loaded.spec.default_name(),
        "spec": spec_text,
        **loaded.info,
        "fingerprint": evaluated_fingerprint(loaded.model, loaded.tok),
        "base_fingerprint": model_fingerprint(loaded.model, loaded.tok),
    }
    rec["seed"] = seed if seed is not None else loaded.info.get("seed")
    return rec


def _identity(model: dict[str, Any], **parts: Any) -> dict[str, Any]:
    # The display name is part of the key: the same weights under two names (a λ=0
    # point of a sweep and the base) are two rows of a report, so two records. So is
    # the seed: two seeds of one name are two records of one row.
    seed = {"seed": model["seed"]} if model.get("seed") is not None else {}
    return {"name": model["name"], "weights": model["fingerprint"], **seed, **parts}


@holds_output_lock("store_dir", "results store {}", shared=True)
def run_bpb(
    model_arg: str,
    texts: list[tuple[str, str | Path]],
    store_dir: str | Path,
    name: str | None = None,
    seq_len: int = 512,
    batch_size: int = 8,
    dtype: str = "auto",
    max_bytes: int | None = None,
    force: bool = False,
    progress: bool = True,
    say: Say = _say,
    loaded: LoadedModel | None = None,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Bits per byte of a MODEL argument on each ``(lang, path)`` text; one record each.

    Returns the records (cached ones included). ``force`` recomputes cached ones.
    ``seed``: the model's training seed, if MODEL is not a run that records it.
    ``loaded`` is the model ``model_arg`` names, already in memory (loaded with
    ``dtype``): a sweep applies vectors to one loaded model instead of reloading it.
    """
    require(bool(texts), "no text given (--text LANG=PATH)")
    dt = _dtype_name(dtype, say)
    slices = [load_text(normalize_lang(lang), path, max_bytes) for lang, path in texts]
    langs = [s.lang for s in slices]
    dup = sorted({x for x in langs if langs.count(x) > 1})
    require(not dup, f"language given twice: {', '.join(dup)}")
    store = ResultStore(store_dir)
    if loaded is None:
        loaded = load_spec(model_arg, dtype=dt)
        if loaded.vector_handle is not None:
            from layra.vectors.protect import describe_protected

            say(describe_protected(loaded.vector_handle.record["protected_rows"]))
    model = model_record(loaded, model_arg, name, seed)
    settings = {"seq_len": seq_len, "dtype": dt, "scoring": SCORING}
    out = []
    for text in slices:
        ident = _identity(model, kind="bpb", lang=text.lang, data=text.sha256, settings=settings)
        key = record_key(ident)
        cached = None if force else store.get(key)
        if cached is not None:
            say(f"{text.lang}: skipped (cached) bpb {cached['value']:.4f}  [{store.path(key)}]")
            out.append(cached)
            continue
        res = bits_per_byte(
            loaded.model, loaded.tok, text, seq_len, batch_size, parse_dtype(dt), progress
        )
        record = _bpb_record(ident, model, text, res, max_bytes,
                             {**settings, "batch_size": batch_size}, dtype)  # fmt: skip
        store.put(record)
        say(
            f"{text.lang}: bpb {res.bpb:.4f}  ({res.n_bytes:,} bytes, {res.n_tokens:,} tokens, "
            f"{res.seconds:.1f} s, data {text.sha256[:12]})"
        )
        out.append(record)
    return out


def _bpb_record(ident, model, text, res, max_bytes, settings, dtype: str) -> dict[str, Any]:
    """The stored record of one bpb result (docs/evaluation.md)."""
    return {
        "key": record_key(ident),
        "kind": "bpb",
        "benchmark": "bpb",
        "lang": text.lang,
        "metric": "bpb",
        "value": res.bpb,
        "higher_is_better": False,
        "model": model,
        "data": {"sha256": text.sha256, "path": text.path, "bytes": text.n_bytes,
                 "docs": len(text.docs), "max_bytes": max_bytes, "truncated": text.truncated},
        "settings": settings,
        "identity": ident,
        "details": res.to_dict(),
        "provenance": provenance(seed=None, precision=_precision_record(dtype)),
    }  # fmt: skip


def _try_task(lm, tm, ref, limit: int | None, failures: list[str]) -> dict[str, Any] | None:
    """One task's result, or None with the failure added to ``failures`` and said."""
    try:
        return T.run_task(lm, tm, ref, limit, TASK_SEED)
    except Exception as e:  # one task's data or code failing must not stop the rest
        if os.environ.get("LAYRA_DEBUG"):
            raise
        msg = (str(e).strip().splitlines() or [""])[0]
        failures.append(f"{ref.task} ({type(e).__name__}: {msg})")
        print(f"layra: {ref.task} failed: {type(e).__name__}: {msg}", file=sys.stderr)
        return None


def _task_record(ident, model, ref, data, res, settings, dtype: str) -> dict[str, Any]:
    """The stored record of one lm-eval task result (docs/evaluation.md)."""
    return {
        "key": record_key(ident),
        "kind": "task",
        "benchmark": ref.family,
        "lang": ref.lang,
        "metric": res["metric"],
        "value": res["value"],
        "higher_is_better": True,
        "model": model,
        "data": data,
        "settings": settings,
        "identity": ident,
        "details": res,
        "provenance": provenance(seed=TASK_SEED, precision=_precision_record(dtype)),
    }


def _require_lm_eval() -> None:
    """lm-eval is an optional extra: say how to install it before any model is loaded."""
    import importlib.util

    try:
        found = importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):  # a broken or stubbed-out installation
        found = False
    require(
        found,
        "layra eval tasks needs lm-evaluation-harness, which is not installed: "
        "pip install 'layra[eval]'",
    )


@holds_output_lock("store_dir", "results store {}", shared=True)
def run_tasks(
    model_arg: str,
    families: list[str],
    langs: list[str],
    store_dir: str | Path,
    task_dir: str | Path | None = None,
    limit: int | None = None,
    name: str | None = None,
    batch_size: int = 8,
    dtype: str = "auto",
    force: bool = False,
    say: Say = _say,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """lm-eval accuracy of a MODEL argument per (task family, language); one record each.

    A task that fails is reported and the others still run; at the end a
    :class:`LayraError` lists the failures (finished records are already stored).
    """
    require(limit is None or limit > 0, f"--limit must be positive, got {limit}")
    _require_lm_eval()
    dt = _dtype_name(dtype, say)
    fams = [family.name for family in map(T.family, families)]  # unknown names fail here
    tm = T.task_manager(task_dir)
    refs, notes = T.resolve_tasks(fams, langs, T.available_tasks(tm) if task_dir else None)
    for note in notes:
        say(f"skipped: {note}")
    store = ResultStore(store_dir)
    loaded = load_spec(model_arg, dtype=dt)
    model = model_record(loaded, model_arg, name, seed)
    lm = None
    out, failures = [], []
    for ref in refs:
        data = T.task_identity(tm, ref.task)
        settings = {"num_fewshot": ref.num_fewshot, "limit": limit, "dtype": dt, "seed": TASK_SEED}
        ident = _identity(model, kind="task", benchmark=ref.family, lang=ref.lang,
                          task=ref.task, data=data["sha256"], settings=settings)  # fmt: skip
        key = record_key(ident)
        cached = None if force else store.get(key)
        if cached is not None:
            say(f"{ref.task}: skipped (cached) {cached['metric']} {cached['value']:.4f}")
            out.append(cached)
            continue
        if lm is None:
            compute = torch.bfloat16 if dt == "bf16" else None
            lm = T.make_lm(loaded.model, loaded.tok, batch_size, compute)
        res = _try_task(lm, tm, ref, limit, failures)
        if res is None:
            continue
        record = _task_record(ident, model, ref, data, res, {**settings, "batch_size": batch_size},
                              dtype)  # fmt: skip
        store.put(record)
        say(f"{ref.task}: {res['metric']} {res['value']:.4f}  (n={res['n_samples']})")
        out.append(record)
    if failures:
        raise LayraError(
            f"{len(failures)} of {len(refs)} tasks failed: {'; '.join(failures)}; "
            f"the other results are in {store.root}"
        )
    return out
