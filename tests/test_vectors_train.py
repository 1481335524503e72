"""End to end with ``layra train``: the extracted vector, applied to the base, gives the
run's own merged model (``merge=true``), for an adapter run on a tied model and a
layer-selective run on an untied one."""

import pytest
import tiny
import torch
from test_vectors_fixtures import logits
from transformers import AutoModelForCausalLM

from layra.train import train_model
from layra.vectors import apply_to_dir, extract_run


@pytest.mark.parametrize("arch,method", [("gemma3_text", "layra"), ("llama", "layer-selective")])
def test_vector_of_a_real_run_gives_its_merged_model(
    arch, method, model_dirs, corpus_dir, tmp_path
):
    base = model_dirs[arch]
    cfg = tiny.run_cfg(
        base,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        method,
        ["train.lr=3e-3", "train.warmup=0", "train.max_steps=2", "merge=true"],
    )
    run = train_model(cfg, progress=False).run_dir
    m = extract_run(run, tmp_path / "vec")
    assert m["method"] == method and m["languages"] == ["glg"]
    apply_to_dir(base, [(tmp_path / "vec", 1.0)], tmp_path / "out", protect_rows="none")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    theirs = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    torch.testing.assert_close(logits(ours), logits(theirs), atol=1e-5, rtol=1e-5)
