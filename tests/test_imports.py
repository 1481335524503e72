"""The training and `plan` paths import no optional heavy package (issue 19): the GPU
machines have torch / transformers / peft / accelerate but no datasets, gguf, lm-eval or
matplotlib, so those must be imported lazily, only where used."""

import json
import os
import subprocess
import sys
from pathlib import Path

OPTIONAL = ["datasets", "gguf", "lm_eval", "matplotlib"]

SCRIPT = """
import json, sys
from layra.cli import main
model, corpus, out, preset, optional = sys.argv[1:6]
rc_train = main(["train", "--quiet", f"model.name_or_path={model}",
                 "data.sources=[{path: " + corpus + ", lang: glg}]", "data.seq_len=16",
                 "data.heldout_fraction=0.1", "train.batch_size=2", "train.max_steps=2",
                 "train.precision=fp32", "method.name=layra", "method.k=1", "method.m=1",
                 f"output_dir={out}"])
rc_plan = main(["plan", "--config", preset, "--launcher", "fsdp", "--gpus", "2"])
print(json.dumps({"rc": [rc_train, rc_plan],
                  "loaded": [m for m in json.loads(optional) if m in sys.modules]}))
"""


def test_plain_text_training_and_plan_import_no_optional_package(model_dirs, corpus_dir, tmp_path):
    root = Path(__file__).resolve().parents[1]
    preset = root / "configs" / "llama3.1-8b" / "full-gl.yaml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    args = [
        str(model_dirs["llama"]),
        str(corpus_dir / "gl.txt"),
        str(tmp_path / "run"),
        str(preset),
        json.dumps(OPTIONAL),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["rc"] == [0, 0]
    assert res["loaded"] == []
    assert (tmp_path / "run" / "run.json").exists()
