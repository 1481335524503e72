"""lm-eval tasks: name mapping, the transformers-5 workaround, and an offline end-to-end run."""

import json
from pathlib import Path

import pytest

from layra.cli import main
from layra.errors import LayraError
from layra.evaluation import lmeval_compat
from layra.evaluation.tasks import resolve_tasks

lm_eval = pytest.importorskip("lm_eval")
BUILTIN = Path(lm_eval.__file__).parent / "tasks"
LABELS = ["entailment", "neutral", "contradiction"]


def test_resolve_maps_families_and_iso3_codes():
    refs, notes = resolve_tasks(["xnli", "paws-x", "xcopa", "xstorycloze"], ["eng", "gl"])
    assert [r.task for r in refs] == ["xnli_en", "xnli_gl", "paws_en", "paws_gl",
                                      "xstorycloze_en", "xstorycloze_gl"]  # fmt: skip
    assert {r.lang for r in refs} == {"eng", "glg"}
    assert notes == ["xcopa has no eng", "xcopa has no glg"]
    (mgsm,), _ = resolve_tasks(["mgsm"], ["swh"])
    assert (mgsm.task, mgsm.num_fewshot) == ("mgsm_direct_sw", 3)
    (gm,), _ = resolve_tasks(["global_mmlu"], ["por"])
    assert (gm.task, gm.num_fewshot) == ("global_mmlu_pt", 0)


def test_resolve_errors_name_the_valid_choices():
    with pytest.raises(LayraError, match="unknown task 'xnly'; valid tasks: xnli, pawsx, xcopa"):
        resolve_tasks(["xnly"], ["eng"])
    with pytest.raises(LayraError, match=r"language\(s\) glg; valid languages: .*ita"):
        resolve_tasks(["xcopa"], ["glg"])
    with pytest.raises(LayraError, match="no tasks"):
        resolve_tasks([], ["eng"])
    # With a task directory only its tasks count.
    refs, _ = resolve_tasks(["xnli"], ["glg"], available={"xnli_gl"})
    assert [r.task for r in refs] == ["xnli_gl"]
    with pytest.raises(LayraError, match="task directory for language"):
        resolve_tasks(["xnli"], ["eng"], available={"xnli_gl"})


def test_squad_metrics_stand_in():
    lmeval_compat.install()
    import transformers.data.metrics.squad_metrics as sm

    assert sm.compute_exact("The Cat!", "cat") == 1
    assert sm.compute_f1("a red cat sat", "red cat") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert sm.compute_f1("", "") == 1.0 and sm.compute_f1("x", "") == 0.0


def _write_tasks(d: Path) -> Path:
    """xnli_gl (built-in Galician task, data overridden) over 6 local items, plus an
    xstorycloze_gl whose data file is missing (a task that fails)."""
    d.mkdir()
    rows = [{"sentence1": f"O can come {i}.", "sentence2": f"Un animal come {i}",
             "gold_label": LABELS[i % 3]} for i in range(6)]  # fmt: skip
    (d / "xnli_gl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "xnli_gl.yaml").write_text(
        f"include: {BUILTIN / 'galician_bench' / 'xnli_gl.yaml'}\n"
        "task: xnli_gl\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'xnli_gl.jsonl'}\n"
    )
    (d / "xstorycloze_gl.yaml").write_text(
        f"include: {BUILTIN / 'galician_bench' / 'xstorycloze_gl.yaml'}\n"
        "task: xstorycloze_gl\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'missing.jsonl'}\n"
    )
    return d


def test_tasks_offline_end_to_end_store_rerun_and_failure(model_dirs, tmp_path, capsys):
    tasks = _write_tasks(tmp_path / "tasks")
    store = tmp_path / "results"
    argv = ["eval", "tasks", str(model_dirs["llama"]), "--tasks", "xnli", "--langs", "glg",
            "--task-dir", str(tasks), "--store", str(store), "--name", "PT"]  # fmt: skip
    assert main(argv) == 0
    (f,) = store.glob("*.json")
    rec = json.loads(f.read_text())
    assert (rec["kind"], rec["benchmark"], rec["lang"], rec["metric"]) == (
        "task",
        "xnli",
        "glg",
        "acc",
    )
    assert rec["details"]["n_samples"] == {"original": 6, "effective": 6}
    # 6 items: accuracy is a multiple of 1/6.
    assert round(rec["value"] * 6, 9) == int(round(rec["value"] * 6))
    assert rec["value"] == rec["details"]["metrics"]["acc,none"]
    assert rec["data"]["data_files"] == {
        str(tasks / "xnli_gl.jsonl"): rec["data"]["data_files"][str(tasks / "xnli_gl.jsonl")]
    }
    assert rec["settings"]["num_fewshot"] == 0 and rec["model"]["name"] == "PT"
    capsys.readouterr()

    # Re-run: nothing recomputed. Adding a failing task keeps the finished one.
    argv[4] = "xnli,xstorycloze"
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert "xnli_gl: skipped (cached)" in cap.out
    assert "1 of 2 tasks failed: xstorycloze_gl" in cap.err
    assert [p.name for p in store.glob("*.json")] == [f.name]

    # Changing the data changes the identity: recomputed, a second record.
    with (tasks / "xnli_gl.jsonl").open("a") as fh:
        fh.write(json.dumps({"sentence1": "A.", "sentence2": "B", "gold_label": "neutral"}) + "\n")
    argv[4] = "xnli"
    assert main(argv) == 0
    assert len(list(store.glob("*.json"))) == 2


def test_tasks_cli_errors(model_dirs, tmp_path, capsys):
    m = str(model_dirs["llama"])
    cases = [
        (["--tasks", "xnly", "--langs", "eng"], "valid tasks: xnli, pawsx"),
        (
            ["--tasks", "xnli", "--langs", "eng", "--task-dir", str(tmp_path / "no")],
            "does not exist",
        ),
    ]
    for extra, msg in cases:
        assert main(["eval", "tasks", m, *extra, "--store", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("layra: error:") and msg in err
