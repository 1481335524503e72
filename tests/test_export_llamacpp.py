"""llama.cpp itself runs what `layra export gguf` wrote: its logits and its tokenization
against transformers', on tiny models of every exported architecture and a LayRA run.

Needs llama-cpp-python 0.3.36, which compiles llama.cpp from source on install: 6.6 min on
this 2-core Xeon (CMAKE_ARGS="-DLLAVA_BUILD=OFF", 2026-12-06, other work running); pip caches
the built wheel, so a later install on the same machine takes seconds. Without it the whole
module is skipped (`pip install 'layra[llamacpp]'`). The tests themselves take about 45 s.
"""

import numpy as np
import pytest
import tiny
import torch

from layra.export import export_gguf
from layra.models import load_model

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.slow

# What llama.cpp assumes of Gemma 3 (every 6th layer global, query_pre_attn_scalar =
# head_dim), so the tiny one is built that way; the others are tiny.py's defaults.
ARCHS = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "gemma3_text": {"layers": 6, "query_pre_attn_scalar": 8},
}
MULTILINGUAL = (
    "Galego: toda persoa ten dereito á educación. English: the quick brown fox, isn't it?\n"
    "Русский текст, हिन्दी, 中文, emoji 🚀 and numbers 3.14 1234567"
)
F32_TOL = 1e-3  # the bound; measured differences are printed (pytest -s)


def _llama(path):
    # f32 K/V cache: the default f16 cache would round the attention inputs.
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=128,
        n_batch=128,
        logits_all=True,
        verbose=False,
        type_k=0,
        type_v=0,
    )


def _token_ids(tok):
    # Below Gemma's tiny sliding window (64): the same attention span in both.
    return [tok.bos_token_id, *tok(tiny.TEXT["gl"], add_special_tokens=False).input_ids][:48]


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _llama_logits(path, ids):
    llm = _llama(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)]), llm


def _check(model, tok, path, tol=F32_TOL, what=""):
    ids = _token_ids(tok)
    want = _logits(model, ids)
    got, llm = _llama_logits(path, ids)
    diff = float(np.abs(got - want).max())
    print(f"{what}: max |llama.cpp - transformers| = {diff:.2e} over {got.shape}")
    assert diff < tol, what
    assert (got.argmax(-1) == want.argmax(-1)).all(), what
    theirs = llm.tokenize(MULTILINGUAL.encode("utf-8"), add_bos=False, special=False)
    assert theirs == tok(MULTILINGUAL, add_special_tokens=False).input_ids, what
    return diff


@pytest.fixture(scope="module")
def llama_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    return {a: tiny.save_model(root / a, a, **kw) for a, kw in ARCHS.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_llamacpp_logits_and_tokens_match_transformers(llama_models, tmp_path, arch):
    model, tok = load_model(str(llama_models[arch]))
    out = export_gguf(str(llama_models[arch]), tmp_path / "m.gguf", "f32", progress=False).out
    _check(model, tok, out, what=f"{arch} f32")
    # 16-bit files agree loosely (rounding of the weights, not a bug).
    ids = _token_ids(tok)
    for outtype, tol in (("f16", 2e-2), ("bf16", 1e-1)):
        o = export_gguf(
            str(llama_models[arch]), tmp_path / f"{outtype}.gguf", outtype, progress=False
        )
        diff = float(np.abs(_llama_logits(o.out, ids)[0] - _logits(model, ids)).max())
        print(f"{arch} {outtype}: max diff {diff:.2e}")
        assert diff < tol, (arch, outtype, diff)


def test_q8_0_is_written_as_q8_0(llama_models, tmp_path):
    # Not run through llama.cpp here: its native build on this Xeon VM (2026-12-06) dies with
    # "Illegal instruction" in the Q8_0 CPU kernels, for any Q8_0 file.
    from gguf import GGMLQuantizationType, GGUFReader

    out = export_gguf(str(llama_models["llama"]), tmp_path / "q8.gguf", "q8_0", progress=False).out
    types = {t.name: t.tensor_type for t in GGUFReader(str(out)).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q8_0


def test_llamacpp_runs_a_layra_run_and_a_vector(llama_models, corpus_dir, tmp_path):
    from layra.evaluation.modelspec import load_spec
    from layra.train import train
    from layra.vectors import extract_run

    base = llama_models["gemma3_text"]  # tied, as Gemma 3 270M
    cfg = tiny.run_cfg(
        base,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "layra",
        ["train.max_steps=3", "train.lr=1e-2", "train.trackers=none"],
    )
    run = train(cfg, progress=False)
    loaded = load_spec(str(run))  # the adapter on the base, unmerged: what the run trained
    start, tok = load_model(str(base))
    ids = _token_ids(tok)
    assert np.abs(_logits(loaded.model, ids) - _logits(start, ids)).max() > 1e-2  # it moved
    out = export_gguf(str(run), tmp_path / "run.gguf", "f32", progress=False).out
    _check(loaded.model, loaded.tok, out, what="layra run (gemma3)")

    extract_run(str(run), str(tmp_path / "vec"))
    spec = f"{base}+{tmp_path / 'vec'}:0.5"
    out = export_gguf(spec, tmp_path / "half.gguf", "f32", progress=False).out
    _check(load_spec(spec).model, tok, out, what="base + 0.5 vector (gemma3)")
