"""One writer per output folder (issue 20, item 1): refused in one line naming the holder,
no stale lock after ``kill -9``, ``--overwrite`` never deletes a folder another process holds.

Holders are real processes: a child takes the lock (or runs ``layra``) while the test
runs a second writer against the same folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import layra
from layra.errors import LayraError
from layra.lock import lock_path, output_lock

SRC = Path(layra.__file__).parents[1]
TESTS = Path(__file__).parent

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {src!r})
    from layra.lock import output_lock
    with output_lock(sys.argv[1], shared=sys.argv[2] == "shared"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def _hold(tmp_path: Path, target: Path, mode: str = "exclusive") -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(src=str(SRC)))
    p = subprocess.Popen(
        [sys.executable, str(script), str(target), mode], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_kill_9_leaves_no_stale_lock(tmp_path):
    target = tmp_path / "runs" / "gl"
    holder = _hold(tmp_path, target)
    try:
        with pytest.raises(LayraError) as e, output_lock(target, f"output {target}"):
            pass
        msg = str(e.value)
        assert f"(pid {holder.pid}, `" in msg, msg  # and its command line
        assert "\n" not in msg
        assert not target.exists()  # the refused writer created nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel dropped the dead holder's lock; its file is reused.
    assert lock_path(target).exists()
    with output_lock(target):
        assert lock_path(target).read_text().split("\n")[0] == str(os.getpid())
    assert not lock_path(target).exists()  # released and removed
    fresh = tmp_path / "new" / "deeper" / "out"
    with output_lock(fresh):
        assert lock_path(fresh).parent.is_dir()
    assert not (tmp_path / "new").exists()  # folders made for the lock file go, too


def test_shared_holders_coexist_and_exclude_a_writer(tmp_path):
    store = tmp_path / "results"
    holder = _hold(tmp_path, store, "shared")
    try:
        with output_lock(store, shared=True):  # two evaluations adding records: fine
            pass
        with pytest.raises(LayraError, match=f"pid {holder.pid}"), output_lock(store):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_reentrant_in_one_process_and_released_on_error(tmp_path):
    target = tmp_path / "sweep"
    with output_lock(target), output_lock(target), output_lock(target, shared=True):
        pass
    with pytest.raises(RuntimeError), output_lock(target):
        raise RuntimeError("boom")
    with output_lock(target):  # released by the failed block
        pass


def _train_argv(model, corpus, out, *extra):
    return [
        sys.executable,
        "-m",
        "layra",
        "train",
        f"model.name_or_path={model}",
        f"data.sources=[{{path: {corpus}, lang: glg}}]",
        "data.seq_len=32",
        "train.precision=fp32",
        "train.trackers=none",
        "train.batch_size=2",
        "train.max_steps=3",
        "method.name=lora",
        f"output_dir={out}",
        "--quiet",
        *extra,
    ]


def _env():
    return {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}


def test_two_trains_started_together_one_is_refused(model_dirs, corpus_dir, tmp_path):
    out = tmp_path / "run"
    gl = corpus_dir / "gl.txt"
    argv = [
        _train_argv(model_dirs["llama"], gl, out, "--overwrite", "train.lr=1e-3"),
        _train_argv(model_dirs["llama"], gl, out, "--overwrite", "train.lr=3e-4"),
    ]
    procs = [
        subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for a in argv
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    winner = next(i for i, r in enumerate(results) if r[0] == 0)
    loser = results[1 - winner]
    err = loser[2].strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"layra: error: output_dir {out} is in use by another layra process")
    assert f"pid {procs[winner].pid}" in err
    assert results[winner][2] == "", results[winner][2]  # --quiet: no library FutureWarnings
    # The folder is the winner's, whole: config.yaml records the lr that trained.
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["lr"] == (1e-3 if winner == 0 else 3e-4)
    assert (out / "run.json").is_file()
    assert not lock_path(out).exists()


def test_overwrite_never_deletes_a_held_run(model_dirs, corpus_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seen: true\n")
    holder = _hold(tmp_path, out)
    try:
        r = subprocess.run(
            _train_argv(model_dirs["llama"], corpus_dir / "gl.txt", out, "--overwrite"),
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr
    assert f"pid {holder.pid}" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "config.yaml").read_text() == "seen: true\n"


@pytest.mark.parametrize(
    "argv",
    [
        lambda p: ["vector", "combine", f"{p.vec}:0.5", "--out", str(p.out)],
        lambda p: ["vector", "extract", str(p.vec), "--out", str(p.out)],
        lambda p: ["vector", "apply", str(p.model), str(p.vec), "--out", str(p.out)],
        lambda p: ["corpus", "files", f"glg={p.gl}", "--out", str(p.out)],
        lambda p: ["eval", "bpb", str(p.model), "--text", f"glg={p.gl}", "--store", str(p.out)],
        lambda p: ["sweep", "--config", str(p.gl), f"out={p.out}"],
        lambda p: ["demo", "--workdir", str(p.out), "--model", str(p.model)],
    ],
    ids=["combine", "extract", "apply", "corpus", "eval-store", "sweep", "demo"],
)
def test_every_folder_writer_is_refused_while_another_holds_it(
    argv, model_dirs, corpus_dir, tmp_path, capfd
):
    from types import SimpleNamespace

    from layra.cli import main

    p = SimpleNamespace(
        out=tmp_path / "out",
        vec=tmp_path / "vec",
        model=model_dirs["llama"],
        gl=corpus_dir / "gl.txt",
    )
    holder = _hold(tmp_path, p.out)
    try:
        capfd.readouterr()
        args = argv(p)
        if args[0] == "sweep":  # a valid sweep: the config is checked before the lock
            from test_sweep import tiny_run, write_sweep

            grid = {"name": "g", "kind": "train", "run": tiny_run(p.model, p.gl, "glg"),
                    "axes": {"train.lr": [1e-3]}}  # fmt: skip
            cfg = write_sweep(tmp_path, p.model, corpus_dir, [grid], out=str(p.out))
            args = ["sweep", "--config", str(cfg)]
        rc = main(args)
        err = capfd.readouterr().err.strip()
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and f"pid {holder.pid}" in err, err
    assert not p.out.exists()
