"""Nothing lost, nothing left behind, every refusal one line (issue 12).

Kills are real: a child process runs `train` and ends itself with ``os._exit`` at
a chosen write step (no ``finally``, no cleanup, as with ``kill -9``); the parent
then resumes the run and checks the result. Bad inputs go through ``layra.cli.main``
and must give one ``layra: error:`` line, exit status 2 and create nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny
import torch

import layra
from layra.cli import main

TESTS = Path(__file__).parent
SRC = Path(layra.__file__).parents[1]

# The child: train with a hook on the write calls (os.replace, save_file) made inside one
# function, exiting the process abruptly right before write call number N; N = -1 exits
# right after the function returns (every write done, nothing after it).
KILLER = textwrap.dedent(
    """
    import os, sys, json
    sys.path[:0] = [{tests!r}, {src!r}]
    import safetensors.torch, tiny
    import layra.checkpoint, layra.data, layra.train
    target, n, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    calls = [0]

    def hooked(fn):
        def wrapper(*a, **k):
            calls[0] += 1
            if calls[0] == n:
                os._exit(137)
            return fn(*a, **k)
        return wrapper

    inside = [False]
    real_replace, real_save = os.replace, safetensors.torch.save_file

    def replace(*a, **k):
        return (hooked(real_replace) if inside[0] else real_replace)(*a, **k)

    def save_file(*a, **k):
        return (hooked(real_save) if inside[0] else real_save)(*a, **k)

    os.replace, safetensors.torch.save_file = replace, save_file
    layra.checkpoint.save_file = save_file
    mod, name = target.rsplit(".", 1)
    module = sys.modules[mod]
    real_target = getattr(module, name)

    def watched(*a, **k):
        inside[0] = True
        try:
            out = real_target(*a, **k)
        finally:
            inside[0] = False
        if n == -1:
            os._exit(137)
        return out

    setattr(module, name, watched)
    cfg = tiny.run_cfg(*extra["args"], method=extra["method"], extra=extra["overrides"])
    layra.train.train(cfg, progress=False)
    print("finished without being killed")
    """
)


def _kill_run(tmp_path, target, n, model, corpus, out, method, overrides):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tests=str(TESTS), src=str(SRC)))
    extra = {"args": [str(model), str(corpus), str(out)], "method": method, "overrides": overrides}
    r = subprocess.run(
        [sys.executable, str(script), target, str(n), json.dumps(extra)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name or ".old-" in p.name]


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


# _record_data's writes into the run: held-out text (rename), data_stats.json (rename),
# data.json (rename), which names the prepared data. Kill before each, and after the last.
# (Kills inside the preparation itself: tests/test_prepare.py.)
RECORD_KILL_POINTS = [1, 2, 3, -1]


def _recorded(out: Path) -> tuple:
    return (
        (out / "heldout" / "glg.jsonl").read_text(),
        json.loads((out / "data_stats.json").read_text()),
        json.loads((out / "data.json").read_text()),
    )


def test_a_kill_while_recording_the_data_leaves_a_resumable_run(
    model_dirs, corpus_dir, tmp_path, capfd
):
    from layra.train import train

    m, gl = model_dirs["llama"], corpus_dir / "gl.txt"
    over = ["method.k=1", "method.m=1", "train.max_steps=2", "train.trackers=none"]
    ref = train(tiny.run_cfg(m, gl, tmp_path / "ref", extra=over), progress=False)
    want = _recorded(ref)
    for n in RECORD_KILL_POINTS:
        out = tmp_path / f"killed-{n}"
        r = _kill_run(tmp_path, "layra.train._record_data", n, m, gl, out, "layra", over)
        assert r.returncode == 137, (n, r.stdout, r.stderr[-2000:])
        assert not (out / "run.json").exists()
        left = _temps(out)
        capfd.readouterr()
        train(tiny.run_cfg(m, gl, out, extra=over), resume=True, progress=False)
        err = capfd.readouterr().err
        for p in left:  # what the killed run left is named when removed
            assert f"removed stale temporary {p}" in err, (n, err)
        assert _recorded(out) == want, n
        assert json.loads((out / "run.json").read_text())["status"] == "complete"
        assert _temps(out) == [], n
        assert _steps(out) == [1, 2], n


def test_kills_in_checkpoint_and_adapter_writes_are_cleaned_and_logged_once(
    model_dirs, corpus_dir, tmp_path, capfd
):
    """A kill inside a checkpoint save (step 4) and inside the final adapter write.

    Resuming removes the half-written folder (and says so), finishes with the same
    adapter as an uninterrupted run, and log.jsonl has one line per step.
    """
    from safetensors.torch import load_file

    from layra.train import train

    m, gl = model_dirs["llama"], corpus_dir / "gl.txt"
    over = [
        "method.k=1",
        "method.m=1",
        "train.max_steps=6",
        "train.save_every=2",
        "train.trackers=none",
    ]
    ref = train(tiny.run_cfg(m, gl, tmp_path / "ref", extra=over), progress=False)
    want = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    # Each save_checkpoint writes trainable, optimizer (save_file), then renames the
    # folder: call 5 is step 4's optimizer file, call 6 step 4's rename.
    points = [("layra.train.save_checkpoint", 5), ("layra.train.save_checkpoint", 6)]
    points += [("layra.train._write_outputs", 1)]  # the adapter folder, half written
    for target, n in points:
        out = tmp_path / f"killed-{target.rsplit('.', 1)[1]}-{n}"
        r = _kill_run(tmp_path, target, n, m, gl, out, "layra", over)
        assert r.returncode == 137, (target, n, r.stdout, r.stderr[-2000:])
        left = _temps(out)
        assert left, (target, n)  # the kill left a half-written folder behind
        capfd.readouterr()
        train(tiny.run_cfg(m, gl, out, extra=over), resume=True, progress=False)
        err = capfd.readouterr().err
        for p in left:
            assert f"removed stale temporary {p}" in err, (target, n, err)
        assert _temps(out) == [], (target, n)
        got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), (target, n)
        assert _steps(out) == [1, 2, 3, 4, 5, 6], (target, n)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_clean_stale_removes_only_dead_writers_and_says_so(tmp_path):
    from layra.atomic import atomic_dir, clean_stale

    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".m.tmp-{dead}-abcd1234"
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"x" * 4096)
        busy = tmp_path / f".m.tmp-{live.pid}-abcd1234"  # a concurrent writer
        busy.mkdir()
        mine = tmp_path / f".m.tmp-{os.getpid()}-abcd1234"  # this process, mid-write
        mine.mkdir()
        other = tmp_path / f".other.tmp-{dead}-abcd1234"  # another output's
        other.mkdir()
        fresh_legacy = tmp_path / ".m.tmp-abcd1234"  # no pid, recent: may be live
        fresh_legacy.mkdir()
        user = tmp_path / ".m.tmp"  # not a name layra writes
        user.mkdir()
        said = []
        removed = clean_stale(tmp_path, "m", say=said.append)
        assert removed == [stale] and not stale.exists()
        assert busy.exists() and mine.exists() and other.exists()
        assert fresh_legacy.exists() and user.exists()
        assert said == [
            f"layra: removed stale temporary {stale} (4.0 KB, left by process {dead}, "
            "which is no longer running)"
        ]
        # An atomic write of the same output cleans its own leftovers first.
        stale.mkdir()
        with atomic_dir(tmp_path / "m") as tmp:
            (tmp / "f").write_text("ok")
        assert not stale.exists() and busy.exists()
        old = os.stat(fresh_legacy).st_mtime - 2 * 3600
        os.utime(fresh_legacy, (old, old))
        assert set(clean_stale(tmp_path, say=said.append)) == {other, fresh_legacy}
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing created.


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, model_dirs):
    """Model folders that must be refused: no tokenizer, truncated weights, .bin only."""
    import shutil

    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("bad-models")
    good = model_dirs["llama"]
    notok = shutil.copytree(good, root / "notok")
    for f in notok.glob("tokenizer*"):
        f.unlink()
    trunc = shutil.copytree(good, root / "trunc")
    size = (trunc / "model.safetensors").stat().st_size
    os.truncate(trunc / "model.safetensors", size // 2)
    binonly = shutil.copytree(good, root / "binonly")
    # A plain state dict, as older tools saved it; it is refused before anything reads it.
    torch.save(load_file(str(binonly / "model.safetensors")), binonly / "pytorch_model.bin")
    (binonly / "model.safetensors").unlink()
    return {"notok": notok, "trunc": trunc, "binonly": binonly}


@pytest.fixture(scope="module")
def vector_dir(tmp_path_factory, model_dirs):
    root = tmp_path_factory.mktemp("vec")
    other = tiny.save_model(root / "other", "llama")
    from safetensors.torch import load_file, save_file

    t = load_file(str(other / "model.safetensors"))  # same shapes, other values: a delta
    save_file({k: v + 0.01 for k, v in t.items()}, str(other / "model.safetensors"))
    assert (
        main(["vector", "diff", str(model_dirs["llama"]), str(other), "--out", str(root / "v")])
        == 0
    )
    return root / "v"


def _damage(vec: Path, dst: Path, how: str) -> Path:
    import shutil

    d = shutil.copytree(vec, dst)
    mf = json.loads((d / "manifest.json").read_text())
    if how == "list":
        mf = [mf]
    elif how == "no-tensors":
        del mf["tensors"]
    elif how == "no-kind":
        next(iter(mf["tensors"].values())).pop("kind")
    elif how == "no-start":
        del mf["start"]
    elif how == "header-list":
        header = b"[1, 2]"
        (d / "delta.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (d / "manifest.json").write_text(json.dumps(mf))
    return d


def _train(model, corpus, out, *extra):
    return [
        "train",
        f"model.name_or_path={model}",
        f"data.sources=[{{path: {corpus}, lang: glg}}]",
        "data.seq_len=32",
        "train.precision=fp32",
        "train.trackers=none",
        "method.name=lora",
        f"output_dir={out}",
        "--quiet",
        *extra,
    ]


# (id, argv builder, expected message part); the builder gets a namespace of paths and
# returns argv; every case's outputs live under `out`, which must not exist afterwards.
def _cases():
    T = _train
    return [
        ("eps", lambda p: T(p.m, p.gl, p.out, "train.eps=-1"), "train.eps must be positive"),
        ("log_every", lambda p: T(p.m, p.gl, p.out, "train.log_every=0"), "train.log_every"),
        ("save_every", lambda p: T(p.m, p.gl, p.out, "train.save_every=-1"), "train.save_every"),
        (
            "keep_checkpoints",
            lambda p: T(p.m, p.gl, p.out, "train.keep_checkpoints=0"),
            "train.keep_checkpoints must be at least 1",
        ),
        ("weight_decay", lambda p: T(p.m, p.gl, p.out, "train.weight_decay=-1"), "weight_decay"),
        ("max_grad_norm", lambda p: T(p.m, p.gl, p.out, "train.max_grad_norm=-1"), "max_grad"),
        (
            "heldout_max_docs",
            lambda p: T(p.m, p.gl, p.out, "data.heldout_max_docs=-1"),
            "data.heldout_max_docs",
        ),
        (
            "output_dir is a file",
            lambda p: T(p.m, p.gl, p.gl),
            "is a file; choose a directory path",
        ),
        (
            "output_dir under a file",
            lambda p: T(p.m, p.gl, p.out) + [f"output_dir={p.gl}/run"],
            "is a file, not a directory",
        ),
        ("train no tokenizer", lambda p: T(p.bad["notok"], p.gl, p.out), "no tokenizer files"),
        ("train truncated", lambda p: T(p.bad["trunc"], p.gl, p.out), "truncated file?"),
        ("train .bin only", lambda p: T(p.bad["binonly"], p.gl, p.out), "save_pretrained"),
        ("train missing data", lambda p: T(p.m, p.out / "x.txt", p.out), "not found"),
        ("bad jsonl line", lambda p: T(p.m, p.jsonl, p.out), "cannot read data source"),
        (
            "eval truncated",
            lambda p: (
                ["eval", "bpb", str(p.bad["trunc"]), "--text", f"glg={p.gl}"]
                + ["--store", str(p.out)]
            ),
            "truncated file?",
        ),
        (
            "eval .bin only",
            lambda p: (
                ["eval", "bpb", str(p.bad["binonly"]), "--text", f"glg={p.gl}"]
                + ["--store", str(p.out)]
            ),
            "only pickle weights (pytorch_model.bin)",
        ),
        (
            "eval hub id offline",
            lambda p: (
                ["eval", "bpb", "layra-test/no-such-model", "--text", f"glg={p.gl}"]
                + ["--store", str(p.out)]
            ),
            "not in the Hugging Face cache and HF_HUB_OFFLINE is set",
        ),
        (
            "diagnose no tokenizer",
            lambda p: (
                ["diagnose", "tokenizer", str(p.bad["notok"]), "--text", f"eng={p.gl}"]
                + ["--out", str(p.out / "d.json")]
            ),
            "no tokenizer files",
        ),
        (
            "diagnose out under a file",
            lambda p: (
                ["diagnose", "tokenizer", str(p.m), "--text", f"eng={p.gl}"]
                + ["--out", f"{p.gl}/d.json"]
            ),
            "is a file, not a directory",
        ),
        (
            "corpus --min-words -3",
            lambda p: ["corpus", "files", f"glg={p.gl}", "--out", str(p.out), "--min-words", "-3"],
            "--min-words must be 0 (keep all) or positive, got -3",
        ),
        (
            "corpus --max-docs 0",
            lambda p: (
                ["corpus", "hf", "json", "--data-files", str(p.jsonl), "--lang", "glg"]
                + ["--out", str(p.out), "--max-docs", "0"]
            ),
            "--max-docs must be at least 1",
        ),
        (
            "report --new =glg",
            lambda p: ["report", str(p.store), "--base", "PT", "--new", "=glg"],
            "the model NAME before '=' is empty",
        ),
        (
            "report --out under a file",
            lambda p: ["report", str(p.store), "--base", "PT", "--out", f"{p.gl}/r"],
            "is a file, not a directory",
        ),
        (
            "lens --out under a file",
            lambda p: (
                ["lens", str(p.m), "--text", f"eng={p.gl}", "--text", f"glg={p.gl}"]
                + ["--out", f"{p.gl}/profile.json"]
            ),
            "is a file, not a directory",
        ),
        (
            "vector apply --out under a file",
            lambda p: ["vector", "apply", str(p.m), str(p.vec), "--out", f"{p.gl}/m"],
            "is a file, not a directory",
        ),
        (
            "vector apply .bin only",
            lambda p: ["vector", "apply", str(p.bad["binonly"]), str(p.vec), "--out", str(p.out)],
            "only pickle weights (pytorch_model.bin)",
        ),
        (
            "demo --model missing",
            lambda p: (
                ["demo", "--model", str(p.out / "nope"), "--workdir", str(p.out)]
                + ["--corpus", str(p.out)]
            ),
            "does not exist",
        ),
        # issue 20: directories, binary and huge text, settings a resume may not change,
        # an optional extra missing, NaN in a vector, argparse's own refusals.
        ("config is a directory", lambda p: ["train", "--config", str(p.tmp)], "is a directory"),
        (
            "config is binary",
            lambda p: ["train", "--config", str(p.m / "model.safetensors")],
            "is not a text file (a NUL byte",
        ),
        (
            "eval text is a directory",
            lambda p: ["eval", "bpb", str(p.m), "--text", f"glg={p.tmp}", "--store", str(p.out)],
            "is a directory, not a text file",
        ),
        (
            "eval 2 GB NUL text under --max-bytes",
            lambda p: (
                ["eval", "bpb", str(p.m), "--text", f"glg={p.zeros}", "--max-bytes", "400"]
                + ["--store", str(p.out)]
            ),
            "is not a text file (a NUL byte at byte 0)",
        ),
        (
            "eval mostly control bytes",
            lambda p: ["eval", "bpb", str(p.m), "--text", f"glg={p.ctrl}", "--store", str(p.out)],
            "% control bytes",
        ),
        (
            "lens text is a directory",
            lambda p: ["lens", str(p.m), "--text", f"eng={p.tmp}", "--out", str(p.out / "l.json")],
            "is a directory, not a text file",
        ),
        (
            "diagnose NUL text",
            lambda p: (
                ["diagnose", "tokenizer", str(p.m), "--text", f"eng={p.zeros}"]
                + ["--out", str(p.out / "d.json")]
            ),
            "is not a text file",
        ),
        (
            "lens --dtype int8",
            lambda p: ["lens", str(p.m), "--dtype", "int8", "--out", str(p.out / "l.json")],
            "argument --dtype: invalid choice: 'int8'",
        ),
        (
            "vector apply no --out",
            lambda p: ["vector", "apply", str(p.m), str(p.vec)],
            "the following arguments are required: --out; see `layra vector apply --help`",
        ),
        (
            "eval tasks without lm-eval",
            lambda p: (
                ["eval", "tasks", str(p.m), "--tasks", "xnli", "--langs", "glg"]
                + ["--store", str(p.out)]
            ),
            "pip install 'layra[eval]'",
        ),
        (
            "vector show NaN",
            lambda p: ["vector", "show", str(_nan_vector(p.vec, p.tmp / "nan"))],
            "tensors hold NaN/inf values",
        ),
        (
            "resume with another lr",
            lambda p: T(p.m, p.gl, _started(p, T), "--resume", "train.lr=0.003"),
            "(train.lr 0.0003 -> 0.003); they cannot change mid-run",
        ),
    ] + [
        (
            f"vector manifest {how}",
            lambda p, how=how: (
                ["vector", "apply", str(p.m)]
                + [str(_damage(p.vec, p.tmp / how, how)), "--out", str(p.out)]
            ),
            msg,
        )
        for how, msg in [
            ("list", "is not a layra vector manifest"),
            ("no-tensors", "'tensors' must be an object"),
            ("no-kind", ".kind must be 'dense', 'lowrank' or 'rows'"),
            ("no-start", "'start' must be an object"),
            ("header-list", "header is not a JSON object"),
        ]
    ]


def _nan_vector(vec: Path, dst: Path) -> Path:
    """A copy of ``vec`` with one NaN in a stored tensor (its header unchanged)."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = shutil.copytree(vec, dst)
    f = d / "delta.safetensors"
    t = load_file(str(f))
    name = next(k for k, v in t.items() if v.is_floating_point())
    t[name].view(-1)[0] = float("nan")
    save_file(t, str(f))
    return d


def _started(p, T) -> Path:
    """A run in ``p.started`` as a killed one leaves it: config.yaml at the default lr."""
    from layra.config import load_config
    from layra.rundir import RunDir

    run = p.started
    cfg = load_config(None, [a for a in T(p.m, p.gl, run) if "=" in a and not a.startswith("-")])
    RunDir(run).write_config(cfg)
    return run


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(
    case, model_dirs, corpus_dir, bad_models, vector_dir, tmp_path, capfd, monkeypatch
):
    from types import SimpleNamespace

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no test reaches the network
    name, argv, match = case
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "ola"}\n{bad json\n')
    store = tmp_path / "store"
    store.mkdir()
    zeros = tmp_path / "zeros.txt"  # 2 GB of NUL bytes, sparse: no disk
    zeros.touch()
    os.truncate(zeros, 2 << 30)
    ctrl = tmp_path / "ctrl.txt"
    ctrl.write_bytes(bytes(range(1, 9)) * 64)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # as without the eval extra (lm-eval is installed here)
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lm_eval" else real_find_spec(name, *a),
    )
    p = SimpleNamespace(
        zeros=zeros,
        ctrl=ctrl,
        started=tmp_path / "started",
        m=model_dirs["llama"],
        gl=corpus_dir / "gl.txt",
        jsonl=jsonl,
        out=tmp_path / "out",
        tmp=tmp_path,
        bad=bad_models,
        vec=vector_dir,
        store=store,
    )
    args = argv(p)
    started = _snapshot(p.started)
    capfd.readouterr()
    rc = main(args)
    cap = capfd.readouterr()
    err = cap.err.strip()
    assert rc == 2, (name, err)
    assert len(err.splitlines()) == 1 and err.startswith("layra: error: "), (name, err)
    assert match in err, (name, err)
    assert "[1/5]" not in cap.out and "[3/5]" not in cap.out  # demo: no stage started
    assert not p.out.exists(), name  # a bad data source too: its output_dir is removed
    assert _snapshot(p.started) == started, name  # a refused --resume changes nothing
    assert not [x.name for x in tmp_path.iterdir() if x.name.endswith(".lock")], name
    assert (corpus_dir / "gl.txt").is_file()


def _snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_unreachable_hub_fails_at_once_with_one_line(monkeypatch, tmp_path, capfd, corpus_dir):
    import time

    import huggingface_hub
    from huggingface_hub import constants

    from layra import models

    calls = []

    def no_network(repo_id, timeout=None):
        calls.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    models._check_hub.cache_clear()
    t = time.perf_counter()
    rc = main(["eval", "bpb", "layra-test/unreachable", "--text", f"glg={corpus_dir / 'gl.txt'}",
               "--store", str(tmp_path / "st")])  # fmt: skip
    err = capfd.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "cannot reach the Hugging Face hub for model layra-test/unreachable" in err
    assert calls == ["layra-test/unreachable"]  # one quick check, no retries
    assert time.perf_counter() - t < 30
    models._check_hub.cache_clear()


def test_task_dir_help_says_a_task_folder_is_code(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "tasks", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "a task folder is code" in out.lower() and "only use" in out
    doc = " ".join((TESTS.parent / "docs" / "evaluation.md").read_text().split())
    assert "a task folder is code" in doc.lower()


def test_device_cuda_without_cuda_creates_nothing(model_dirs, corpus_dir, tmp_path, capfd):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    rc = main(_train(model_dirs["llama"], corpus_dir / "gl.txt", out, "train.device=cuda"))
    err = capfd.readouterr().err.strip()
    assert rc == 2 and err == "layra: error: train.device=cuda but no CUDA device is available"
    assert not out.exists()
