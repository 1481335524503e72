"""Embedding treatments: each trains exactly the rows and tensors it says, outputs reload."""

import json
from collections import Counter

import pytest
import tiny
import torch
from safetensors.torch import load_file

from layra.config import load_config
from layra.embeddings import OPTIM_ATTR, block_counts, choose_rows, reference_counts
from layra.errors import LayraError
from layra.methods import plan_method, prepare_model
from layra.train import _param_groups, train_model

BASE = ["model.name_or_path=m", "data.sources=[{path: x.txt, lang: glg}]"]


def method_cfg(*overrides, name="layra"):
    k_m = ["method.k=1", "method.m=1"] if name in ("layra", "layer-selective") else []
    return load_config(None, BASE + [f"method.name={name}", *k_m, *overrides]).method


def test_choose_rows_applies_the_stated_rule():
    train = Counter({10: 50, 11: 10, 12: 3, 13: 2, 14: 40, 1: 99})
    refs = {"eng": Counter({11: 1, 14: 30}), "spa": Counter({11: 5, 12: 0})}
    # N_train = 204, N_eng = 31, N_spa = 5. f_train(11) = 0.049 < 5 * f_spa(11) = 5;
    # 13 has fewer than 3 occurrences; 14 is frequent in English; 1 is special.
    assert choose_rows(train, refs, ratio=5, min_count=3, exclude={1}) == [10, 12]
    assert choose_rows(train, refs, ratio=5, min_count=2, exclude={1}) == [10, 12, 13]
    assert choose_rows(train, {"eng": refs["eng"]}, ratio=5, min_count=3) == [1, 10, 12]


def test_block_counts_leave_special_tokens_out():
    blocks = torch.tensor([[1, 5, 5, 2], [1, 7, 5, 2]])
    assert block_counts(blocks, {1, 2}) == Counter({5: 3, 7: 1})


def test_reference_counts_stop_at_the_budget(tok, corpus_dir):
    from layra.config import SourceConfig

    src = [SourceConfig(path=str(corpus_dir / "en.txt"), lang="eng")]
    docs = [d for d in (corpus_dir / "en.txt").read_text().split("\n\n") if d.strip()]
    per_doc = [tok(d.strip(), add_special_tokens=False)["input_ids"] for d in docs]
    full = reference_counts(src, tok, None)["eng"]
    assert full == Counter(t for ids in per_doc for t in ids)
    # Whole batches of 4 documents until at least 50 tokens.
    capped = reference_counts(src, tok, 50, batch_docs=4)["eng"]
    want, n = Counter(), 0
    for i in range(0, len(per_doc), 4):
        if n >= 50:
            break
        for ids in per_doc[i : i + 4]:
            want.update(ids)
            n += len(ids)
    assert capped == want and sum(capped.values()) < sum(full.values())


@pytest.mark.parametrize(
    "overrides,name,message",
    [
        (
            ["method.embeddings=rows"],
            "layra",
            "method.embeddings=rows needs method.embedding_rows.reference",
        ),
        (
            ["method.embeddings=lowlr"],
            "lora",
            "method.embeddings applies to layer-selective and layra, not to method lora",
        ),
        (
            ["method.embeddings=lowlr", "method.train_embeddings=false"],
            "layra",
            "method.train_embeddings=false contradicts method.embeddings=lowlr",
        ),
        (
            ["method.embeddings=lowlr", "method.embeddings_lr_scale=0"],
            "layra",
            "method.embeddings_lr_scale must be positive, got 0",
        ),
        (
            [
                "method.embeddings=rows",
                "method.embedding_rows.reference=[{path: e.txt, lang: eng}]",
                "method.embedding_rows.ratio=1",
            ],
            "layer-selective",
            "method.embedding_rows.ratio must be greater than 1, got 1.0",
        ),
        (
            ["method.embeddings=half"],
            "layra",
            "method.embeddings: 'half' is not a valid",
        ),
    ],
)
def test_bad_embedding_settings_say_exactly_what_is_wrong(overrides, name, message):
    k_m = ["method.k=1", "method.m=1"] if name in ("layra", "layer-selective") else []
    with pytest.raises(LayraError) as e:
        load_config(None, BASE + [f"method.name={name}", *k_m, *overrides])
    assert message in str(e.value)


def test_plans_name_the_treatment_and_legacy_switch_still_works():
    assert plan_method(method_cfg(), 4).embeddings == "full"
    legacy = plan_method(method_cfg("method.train_embeddings=false"), 4)
    assert legacy.embeddings == "frozen" and legacy.train_embeddings is False
    low = plan_method(method_cfg("method.embeddings=lowlr", "method.embeddings_lr_scale=0.25"), 4)
    assert low.embeddings == "lowlr" and low.embeddings_lr_scale == 0.25 and low.train_embeddings
    assert plan_method(method_cfg(name="lora"), 4).embeddings == "frozen"
    with pytest.raises(LayraError, match="needs the row set"):
        prepare_model(
            tiny.make_model("llama", 300),
            method_cfg(
                "method.embeddings=rows",
                "method.embedding_rows.reference=[{path: e.txt, lang: eng}]",
            ),
        )


@pytest.mark.parametrize("method", ["layra", "layer-selective"])
def test_lowlr_puts_embedding_and_head_in_a_scaled_group(method):
    cfg = method_cfg("method.embeddings=lowlr", "method.embeddings_lr_scale=0.1", name=method)
    model, _ = prepare_model(tiny.make_model("llama", 300, tied=False), cfg)
    groups = _param_groups(model, 0.1, 3e-4)
    hf = model.base_model.model if method == "layra" else model
    emb = hf.get_input_embeddings().weight
    head = hf.get_output_embeddings().weight
    scaled = [g for g in groups if any(p is emb for p in g["params"])]
    assert len(scaled) == 1 and scaled[0]["lr"] == pytest.approx(3e-5, rel=1e-12)
    assert scaled[0]["weight_decay"] == 0.1
    assert {id(p) for p in scaled[0]["params"]} == {id(emb), id(head)}
    others = [g for g in groups if g is not scaled[0]]
    assert all(g["lr"] == 3e-4 for g in others)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable


def _embed_head(model):
    from layra.arch import unwrap

    hf = unwrap(model)
    return hf.get_input_embeddings().weight.detach(), hf.get_output_embeddings().weight.detach()


def _changed_rows(before, after):
    return sorted(torch.nonzero((before != after).any(dim=1)).flatten().tolist())


TREATMENTS = ["full", "frozen", "lowlr", "rows"]


@pytest.mark.parametrize(
    "method,arch", [("layra", "gemma3_text"), ("layra", "llama"), ("layer-selective", "llama")]
)
@pytest.mark.parametrize("treatment", TREATMENTS)
def test_each_treatment_trains_exactly_the_rows_it_says(
    treatment, method, arch, model_dirs, corpus_dir, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    mdir = model_dirs[arch]
    ref = f"[{{path: {corpus_dir / 'en.txt'}, lang: eng}}]"
    cfg = tiny.run_cfg(
        mdir,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        method,
        [
            "train.lr=3e-3",
            "train.warmup=0",
            "train.schedule=constant",
            "train.max_steps=3",
            "train.save_every=2",
            "method.dropout=0.0",
            f"method.embeddings={treatment}",
            "method.embeddings_lr_scale=0.1",
            f"method.embedding_rows.reference={ref}",
        ],
    )
    base = AutoModelForCausalLM.from_pretrained(mdir).eval()
    emb0, head0 = (t.clone() for t in _embed_head(base))
    result = train_model(cfg, progress=False)
    out, model = result.run_dir, result.model
    emb1, head1 = _embed_head(model)
    vocab = emb0.shape[0]
    run = json.loads((out / "run.json").read_text())
    assert run["plan"]["embeddings"] == treatment

    if treatment == "rows":
        # The chosen set, recomputed independently from the packed training blocks.
        tok = tiny.make_tokenizer()
        blocks = tiny.run_blocks(out)
        special = set(tok.all_special_ids)
        want = choose_rows(
            block_counts(blocks, special),
            {
                "eng": Counter(
                    tok((corpus_dir / "en.txt").read_text(), add_special_tokens=False)["input_ids"]
                )
            },
            exclude=special,
        )
        assert 5 <= len(want) < vocab // 4
        assert run["plan"]["embedding_rows"] == want
        expected = want
    else:
        expected = None if treatment == "frozen" else "all"

    def want(t0, is_head):
        # "every row": the head gets gradient on every row; an untied embedding's padding
        # row is all zero and gets none, so weight decay cannot move it either.
        if expected == "all":
            return list(range(vocab)) if is_head else t0.any(dim=1).nonzero().flatten().tolist()
        return expected or []

    tied = arch == "gemma3_text"
    if treatment == "rows" and not tied:
        # An untied embedding row moves only if its token was an input in the 3 steps
        # (blocks 0-5; a block's last token is never an input that reaches the loss).
        blocks = tiny.run_blocks(out)
        seen = set(blocks[:6, :-1].flatten().tolist())
        assert _changed_rows(emb0, emb1) == [r for r in expected if r in seen]
    else:
        assert _changed_rows(emb0, emb1) == want(emb0, tied)
    assert _changed_rows(head0, head1) == want(head0, True)
    if arch == "gemma3_text":
        assert run["tied"] is True and emb1.data_ptr() == head1.data_ptr()
    # Trained in place (layra.methods): no frozen PEFT copy beside the trained tensor.
    if method == "layra":
        hf = model.base_model.model
        assert not hasattr(hf.model.embed_tokens, "original_module")

    if treatment == "lowlr":
        state = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())
        lrs = sorted(g["lr"] for g in state["param_groups"])
        assert lrs[0] == pytest.approx(3e-4, rel=1e-9) and lrs[-1] == pytest.approx(3e-3)

    # The saved outputs reload to the same logits as the model in memory.
    ids = torch.randint(0, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ref_logits = model(input_ids=ids).logits
        fresh = AutoModelForCausalLM.from_pretrained(mdir).eval()
        if method == "layra":
            reloaded = PeftModel.from_pretrained(fresh, out / "adapter").eval()
        else:
            missing, unexpected = fresh.load_state_dict(
                load_file(out / "trained.safetensors"), strict=False
            )
            assert not unexpected
            reloaded = fresh
        torch.testing.assert_close(reloaded(input_ids=ids).logits, ref_logits, atol=1e-5, rtol=1e-5)
        if treatment == "frozen" and method == "layer-selective":
            names = set(load_file(out / "trained.safetensors"))
            assert not any("embed_tokens" in n or "lm_head" in n for n in names)


def test_rows_vector_touches_only_the_chosen_rows(model_dirs, corpus_dir, tmp_path):
    """A language vector extracted from a rows run is zero outside the chosen rows."""
    from layra.vectors import extract_run, load_vector

    mdir = model_dirs["gemma3_text"]
    cfg = tiny.run_cfg(
        mdir,
        corpus_dir / "gl.txt",
        tmp_path / "run",
        "layra",
        [
            "data.heldout_fraction=0.01",
            "train.lr=3e-3",
            "train.max_steps=2",
            "method.embeddings=rows",
            f"method.embedding_rows.reference=[{{path: {corpus_dir / 'en.txt'}, lang: eng}}]",
        ],
    )
    out = train_model(cfg, progress=False).run_dir
    rows = json.loads((out / "run.json").read_text())["plan"]["embedding_rows"]
    extract_run(out, tmp_path / "vec")
    vec = load_vector(tmp_path / "vec")
    entry = vec.entries["model.embed_tokens.weight"]
    assert entry.kind == "rows" and entry.aliases == ("lm_head.weight",)  # only those rows
    delta = vec.delta_rows(entry)
    assert _changed_rows(torch.zeros_like(delta), delta) == rows


def test_rows_marks_no_weight_decay_and_masks_the_gradient():
    cfg = method_cfg(
        "method.embeddings=rows", "method.embedding_rows.reference=[{path: e.txt, lang: eng}]"
    )
    model, plan = prepare_model(tiny.make_model("llama", 300, tied=False), cfg, rows=[5, 7, 5])
    assert plan.embedding_rows == [5, 7]
    hf = model.base_model.model
    for p in (hf.get_input_embeddings().weight, hf.get_output_embeddings().weight):
        assert getattr(p, OPTIM_ATTR) == {"weight_decay": 0.0}
    ids = torch.tensor([[1, 5, 9, 7, 5, 20, 7, 2]])
    model(input_ids=ids, labels=ids).loss.backward()
    # The head gets gradient on every row (softmax) and the embedding on every input
    # token (1, 2, 9, 20 too): only 5 and 7 survive the mask.
    for p in (hf.get_input_embeddings().weight, hf.get_output_embeddings().weight):
        assert _changed_rows(torch.zeros_like(p.grad), p.grad) == [5, 7]


@pytest.mark.parametrize(
    "overrides,name,message",
    [
        (["method.embeddings_weight_decay=-0.1"], "layra", "must be 0 or positive, got -0.1"),
        (["method.embeddings_weight_decay=0"], "lora", "does not apply to method lora"),
        (
            ["method.embeddings=frozen", "method.embeddings_weight_decay=0"],
            "layra",
            "does not apply to method layra with frozen embeddings",
        ),
        (
            [
                "method.embeddings=rows",
                "method.embedding_rows.reference=[{path: e.txt, lang: eng}]",
                "method.embeddings_weight_decay=0.1",
            ],
            "layra",
            "method.embeddings_weight_decay=0.1 contradicts it",
        ),
    ],
)
def test_bad_embedding_weight_decay_is_refused(overrides, name, message):
    with pytest.raises(LayraError, match=message):
        method_cfg(*overrides, name=name)


@pytest.mark.parametrize("method", ["layra", "layer-selective", "full"])
@pytest.mark.parametrize("tied", [False, True])
def test_embedding_weight_decay_sets_the_group_of_embedding_and_head(method, tied):
    from layra.arch import unwrap

    for wd, want in ((None, 0.1), (0.0, 0.0), (0.02, 0.02)):
        extra = [] if wd is None else [f"method.embeddings_weight_decay={wd}"]
        model, plan = prepare_model(
            tiny.make_model("llama", 300, tied=tied), method_cfg(*extra, name=method)
        )
        assert plan.embeddings_weight_decay == wd
        hf = unwrap(model)
        tensors = {id(hf.get_input_embeddings().weight), id(hf.get_output_embeddings().weight)}
        groups = [g for g in _param_groups(model, 0.1, 3e-4) if tensors & set(map(id, g["params"]))]
        assert len(groups) == 1 and groups[0]["weight_decay"] == want
        assert tensors <= set(map(id, groups[0]["params"]))
        # The other matrices keep train.weight_decay.
        assert any(g["weight_decay"] == 0.1 for g in _param_groups(model, 0.1, 3e-4))


def test_no_embedding_decay_keeps_unseen_rows_bit_identical(model_dirs, corpus_dir, tmp_path):
    """Input-embedding rows of tokens never an input: decay 0 bit-identical, default shrunk.

    Untied, those rows get no gradient, so only decay can move them. A tied tensor is also
    the head, which gets a gradient on every row (softmax), so its unseen rows move either
    way (by ~lr per element per step, against lr x 0.1 x |w| for decay): for tied models
    the group test above is the check.
    """
    from transformers import AutoModelForCausalLM

    mdir = model_dirs["llama"]
    base = AutoModelForCausalLM.from_pretrained(mdir)
    emb0 = base.get_input_embeddings().weight.detach().clone()
    moved = {}
    for wd in (None, 0.0):
        cfg = tiny.run_cfg(
            mdir,
            corpus_dir / "gl.txt",
            tmp_path / f"run-{wd}",
            "layra",
            [
                "train.lr=3e-3",
                "train.warmup=0",
                "train.schedule=constant",
                "train.max_steps=3",
                "method.dropout=0.0",
                *([] if wd is None else [f"method.embeddings_weight_decay={wd}"]),
            ],
        )
        result = train_model(cfg, progress=False)
        out, model = result.run_dir, result.model
        run = json.loads((out / "run.json").read_text())
        assert run["plan"]["embeddings_weight_decay"] == wd
        blocks = tiny.run_blocks(out)
        seen = set(blocks[:6].flatten().tolist())  # 3 steps x batch 2
        unseen = [r for r in range(emb0.shape[0]) if r not in seen and emb0[r].any()]
        assert len(unseen) > 50
        emb1 = _embed_head(model)[0]
        moved[wd] = (emb1[unseen] - emb0[unseen]).abs().sum(dim=1)
    assert torch.equal(moved[0.0], torch.zeros_like(moved[0.0]))  # bit-identical
    assert (moved[None] > 0).all()  # decay shrinks every one of them
