"""Running `layra choose`: lens, budget, the candidates' sweep, the verdicts, the recommendation.

    result = run_choose(load_choose("configs/choose/gemma3-270m-gl.yaml"))

The rule and the candidates: layra.choose. Layout of OUT: the sweep's (docs/sweep.md) plus
``budget.json``, ``lens.json`` (the suggestion and why), ``choice.json`` and
``recommended.yaml``; ``OUT/report/report.md`` opens with the choice.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from layra.budget import Budget, Costs, budget_line, fit_budget, time_line
from layra.choose import (
    BASELINE,
    ChooseConfig,
    Verdict,
    candidate_run,
    candidates,
    choice_json,
    label,
    select,
    user_run,
    validate_choose,
    write_recommendation,
)
from layra.config import RunConfig
from layra.errors import LayraError, require


def _say(msg: str) -> None:
    print(msg, flush=True)


def lens_suggestion(cfg: ChooseConfig, base: RunConfig, precision: str, out: Path):
    """(k, m, why) from the logit lens of the base model on the new and English texts."""
    from layra.atomic import atomic_write_json
    from layra.evaluation.bpb import load_text
    from layra.evaluation.langs import normalize_lang
    from layra.lens import lens_profile, suggest_km
    from layra.models import load_model
    from layra.tokenlang import token_language_map

    english = normalize_lang(cfg.english)
    texts: dict[str, str] = {}
    for t in [*cfg.new, *cfg.old]:
        lang = normalize_lang(t.lang)
        docs = load_text(lang, t.path, cfg.eval_bytes).docs
        texts[lang] = "\n\n".join([texts[lang], *docs] if lang in texts else docs)
    require(english in texts, f"english: no text in {english} among new / old for the lens")
    model, tok = load_model(base.model.name_or_path, dtype=precision)
    tmap = token_language_map(tok, texts)
    profile = lens_profile(model, tok, texts, tmap, english=english)
    new_langs = sorted({normalize_lang(t.lang) for t in cfg.new})
    try:
        k, m, why = suggest_km(profile, languages=new_langs)
    except LayraError as e:  # no evidence (e.g. the model hardly produces the language)
        from layra.choose import depth_km
        from layra.models import model_depth

        k, m = depth_km(model_depth(base))
        why = f"the lens gave no evidence ({e}); no lens candidate"
    atomic_write_json(out / "lens.json", {"k": k, "m": m, "why": why, "profile": profile})
    return k, m, why


def _cost_class(method: dict) -> str:
    """Runs that cost the same per step: lora, layra with trained or with frozen embeddings."""
    from layra.method_registry import method_spec

    if not method_spec(method["name"]).selects_layers:  # LoRA on every block
        return "lora"
    return "layra-frozen" if method.get("embeddings") == "frozen" else "layra"


def calibrate(cfg: ChooseConfig, base: RunConfig, cands: dict[str, dict], precision: str,
              texts, out: Path, say) -> Costs:  # fmt: skip
    """Two steps of one candidate per cost class, and a scoring pass, timed on this machine."""
    from layra.budget import time_scoring, time_steps
    from layra.config import from_dict

    scratch = out / ".calibrate"
    by_class: dict[str, tuple[float, float]] = {}
    try:
        for name, method in cands.items():
            c = _cost_class(method)
            if c not in by_class:
                say(f"      timing two steps of {name} ({c}) to size the budget")
                run = from_dict(RunConfig, candidate_run(base, method, cfg.tokens))
                run.train.precision = precision
                by_class[c] = time_steps(run, scratch / c)
        say("      timing the scoring of held-out text")
        load_s, per_byte = time_scoring(base.model.name_or_path, texts, scratch,
                                        seq_len=cfg.eval_seq_len, batch_size=cfg.eval_batch_size,
                                        precision=precision, max_bytes=cfg.eval_bytes)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    step = {n: by_class[_cost_class(m)][0] for n, m in cands.items()}
    overhead = {n: by_class[_cost_class(m)][1] for n, m in cands.items()}
    return Costs(step, overhead, load_s, per_byte)


def plan(cfg: ChooseConfig, base: RunConfig, cands: dict[str, dict], precision: str, texts,
         out: Path, say, t_start: float | None = None) -> Budget:  # fmt: skip
    """The saved budget if this OUT already trained with it, else one fitted to ``minutes``.

    ``minutes`` is the whole search: the time since ``t_start`` (the lens, loading) and the
    calibration count against it, as well as training and evaluation.
    """
    from dataclasses import asdict

    from layra.atomic import atomic_write_text
    from layra.rundir import RunDir

    path = out / "budget.json"
    key = {"tokens": cfg.tokens, "eval_bytes": cfg.eval_bytes, "minutes": cfg.minutes,
           "fixed": cfg.fixed_budget, "precision": precision, "candidates": cands}  # fmt: skip
    started = any(RunDir(d).is_complete() for d in (out / "runs").glob("*/*"))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("key") == key or started:
            if saved.get("key") != key:
                say("      keeping the budget the finished runs were trained with")
            return Budget(**saved["budget"])
    if cfg.fixed_budget:
        b = Budget(cfg.tokens, cfg.eval_bytes, cfg.tokens, cfg.eval_bytes, 0.0, cfg.minutes * 60,
                   None, "fixed by fixed_budget")  # fmt: skip
    else:
        t = time.perf_counter() if t_start is None else t_start
        costs = calibrate(cfg, base, cands, precision, texts, out, say)
        per_step = base.data.seq_len * base.train.batch_size * base.train.grad_accum
        b = fit_budget(cfg.tokens, cfg.eval_bytes,
                       target_s=max(0.0, cfg.minutes * 60 - (time.perf_counter() - t)),
                       costs=costs, runs={n: len(cfg.seeds) for n in cands},
                       eval_models=1 + len(cands) * len(cfg.seeds), texts=len(texts),
                       tokens_per_step=per_step)  # fmt: skip
    atomic_write_text(path, json.dumps({"key": key, "budget": asdict(b)}, indent=1))
    return b


def _sweep(cfg: ChooseConfig, base: RunConfig, cands: dict[str, dict], budget: Budget, prec: str):
    from layra.sweep import EvalConfig, GridConfig, SweepConfig
    from layra.sweep.grid import TextConfig

    texts = [TextConfig(label(t), t.path) for t in [*cfg.new, *cfg.old]]
    ev = EvalConfig(texts=texts, new=[label(t) for t in cfg.new], base_name="PT",
                    seq_len=cfg.eval_seq_len, batch_size=cfg.eval_batch_size, dtype=prec,
                    max_bytes=budget.eval_bytes)  # fmt: skip
    grids = []
    for name, method in cands.items():
        run = candidate_run(base, method, budget.tokens)
        run["train"]["precision"] = prec
        grids.append(GridConfig(name=name, kind="train", run=run))
    return SweepConfig(model=base.model.name_or_path, out=cfg.out, eval=ev, grids=grids,
                       seeds=list(cfg.seeds))  # fmt: skip


def _against(table, a: str, b: str):
    """``a`` − ``b`` from a table's pairs: (learning, its interval, retention, its interval)."""
    for p in table.pairs:
        if (p.a, p.b) == (a, b):
            return p.learning, p.learning_ci, p.retention, p.retention_ci
        if (p.a, p.b) == (b, a):

            def neg(x):
                return None if x is None else -x

            def flip(ci):
                return None if ci is None else (-ci[1], -ci[0])

            return neg(p.learning), flip(p.learning_ci), neg(p.retention), flip(p.retention_ci)
    return None, None, None, None


def verdicts(cfg: ChooseConfig, records: list[dict], names: list[str]):
    """The overall table, one table per old-text source, and each candidate's verdict."""
    from layra.evaluation.report import build_tables

    new = tuple(label(t) for t in cfg.new)
    table = build_tables(records, "PT", {None: new})[0]
    per_source = {}
    for source in dict.fromkeys(t.source for t in cfg.old):
        keep = set(new) | {label(t) for t in cfg.old if t.source == source}
        recs = [r for r in records if r["lang"] in keep]
        per_source[source] = build_tables(recs, "PT", {None: new})[0]
    rows = {r.name: r for r in table.rows}
    out = {}
    for name in names:
        row = rows.get(name)
        v = Verdict(name, row.learning if row else None, row.retention if row else None)
        if name != BASELINE:
            v.vs_learning, v.vs_learning_ci, _, _ = _against(table, name, BASELINE)
            for source, t in per_source.items():
                _, _, ret, ci = _against(t, name, BASELINE)
                v.vs_retention[source] = (ret, ci)
        out[name] = v
    return table, per_source, out


def run_choose(cfg: ChooseConfig, progress: bool = True, say=_say) -> dict[str, Any]:
    """Lens, budget, sweep, verdicts; the recommendation written beside the report."""
    from layra.atomic import check_writable
    from layra.lock import output_lock
    from layra.models import model_depth
    from layra.precision import announce, resolve_precision
    from layra.sweep import run_sweep

    t_start = time.perf_counter()
    validate_choose(cfg)
    base = user_run(cfg)
    out = Path(cfg.out)
    check_writable(out)
    prec = resolve_precision(cfg.precision, base.train.device)
    with output_lock(out, f"choose output {out}"):
        out.mkdir(parents=True, exist_ok=True)
        announce(prec, say)
        depth = model_depth(base)
        if cfg.lens:
            lk, lm, why = cfg.lens[0], cfg.lens[1], "given in the config (lens: [k, m])"
        else:
            say("lens: which layers are language-general on the base model")
            lk, lm, why = lens_suggestion(cfg, base, prec.name, out)
        say(f"lens: k={lk}, m={lm} — {why.splitlines()[-1]}")
        cands = candidates(cfg, depth, (lk, lm))
        texts = [(label(t), t.path) for t in [*cfg.new, *cfg.old]]
        t0 = time.perf_counter()
        budget = plan(cfg, base, cands, prec.name, texts, out, say, t_start)
        calibrate_s = time.perf_counter() - t0
        say(budget_line(budget))
        fresh = not any((out / "runs").glob("*/*/run.json"))
        state: dict[str, Any] = {}

        def preface(timings: dict, records: list[dict]) -> str:
            timings["calibrate_s"] = round(calibrate_s, 2)
            state.update(decide(cfg, base, cands, records, out, (lk, lm), why))
            return choice_markdown(cfg, state, budget, timings, fresh, prec)

        summary = run_sweep(_sweep(cfg, base, cands, budget, prec.name), progress=progress,
                            say=say, preface=preface, timings={"predicted_s": budget.predicted_s})  # fmt: skip
    return {**state, "summary": summary, "budget": budget}


def decide(cfg, base, cands, records, out: Path, lens_km, why: str) -> dict[str, Any]:
    """Verdicts, the choice, ``recommended.yaml`` and ``choice.json``."""
    table, per_source, vs = verdicts(cfg, records, list(cands))
    chosen, reason = select([v for n, v in vs.items() if n != BASELINE], vs[BASELINE])
    rec = write_recommendation(out, base, cands[chosen])
    body = {"chosen": chosen, "reason": reason, "method": cands[chosen],
            "recommended": str(rec), "lens": {"k": lens_km[0], "m": lens_km[1], "why": why},
            "verdicts": {n: {**vars(v), "beats_baseline": v.beats_baseline}
                         for n, v in vs.items()}}  # fmt: skip
    choice_json(out / "choice.json", body)
    return {"chosen": chosen, "reason": reason, "verdicts": vs, "table": table,
            "per_source": per_source, "recommended": rec, "lens": lens_km,
            "lens_why": why}  # fmt: skip


def _ci(x, ci) -> str:
    from layra.evaluation.report import NOISE

    if x is None:
        return "–"
    if ci is None:
        return f"{x:+.4f}"
    mark = NOISE if ci[0] <= 0 <= ci[1] else ""
    return f"{x:+.4f}{mark} [{ci[0]:+.4f}, {ci[1]:+.4f}]"


def choice_markdown(cfg, state: dict, budget: Budget, timings: dict, fresh: bool, prec) -> str:
    """The report's opening: what was searched, the verdicts against LoRA, the choice."""
    from layra.precision import cpu_info

    vs, sources = state["verdicts"], list(state["per_source"])
    head = ["candidate", "Learning Δ", "Retention Δ", f"Learning − {BASELINE}",
            *(f"Retention − {BASELINE} ({s})" for s in sources), f"beats {BASELINE}"]  # fmt: skip
    lines = ["# layra choose", "",
             f"- candidates: {', '.join(vs)}; seeds {', '.join(map(str, cfg.seeds))}; "
             f"{budget.tokens:,} training tokens per run, {budget.eval_bytes:,} held-out bytes "
             "per text", f"- learning: {', '.join(label(t) for t in cfg.new)}; retention: "
             + "; ".join(f"{s}: {', '.join(label(t) for t in cfg.old if t.source == s)}"
                         for s in sources),
             f"- machine: {cpu_info()['model']}; {prec.line()}",
             time_line(budget, timings, fresh), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for name, v in vs.items():
        cells = [name, _ci(v.learning, None), _ci(v.retention, None),
                 _ci(v.vs_learning, v.vs_learning_ci) if name != BASELINE else "baseline",
                 *(_ci(*v.vs_retention[s]) if name != BASELINE else "–" for s in sources),
                 ("yes" if v.beats_baseline else "no") if name != BASELINE else "–"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**Recommendation: {state['chosen']}.** {state['reason']} Ready to train: "
              f"`{state['recommended']}`.", "", lens_markdown(state)]  # fmt: skip
    return "\n".join(lines) + "\n"


def lens_markdown(state: dict) -> str:
    """What the lens suggested, and how it did against the depth-scaled k/m (paired)."""
    vs = state["verdicts"]
    lens = next((n for n in vs if n.endswith("-lens")), None)
    k, m = state["lens"]
    if lens is None:
        why = state["lens_why"].splitlines()[-1]
        return f"Lens: k={k}, m={m}, the depth-scaled k/m itself, so nothing to compare ({why})."
    depth = next(n for n in vs if n.startswith("layra-") and n.count("-") == 1)
    learn, lci, ret, rci = _against(state["table"], lens, depth)
    return (f"The lens suggested k={k}, m={m} ({lens}); against the depth-scaled {depth}, paired: "
            f"Learning {_ci(learn, lci)}, Retention {_ci(ret, rci)} (lens − depth).")  # fmt: skip
