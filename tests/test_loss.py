"""The chunked linear + cross-entropy equals the plain path: loss and gradients, fp32 and
bf16 autocast, with soft-capping and ignored (-100) targets; checkpointing and the
no-dropout path change nothing."""

import pytest
import tiny
import torch
import torch.nn.functional as F

from layra.loss import chunked_linear_ce, lm_loss


def _reference(h, w, y, softcap):
    """Plain fp32 loss from explicit full logits (the definition)."""
    z = h.float() @ w.float().t()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return F.cross_entropy(z, y, ignore_index=-100)


def _inputs(n=23, d=16, v=97, seed=0, ignore=(0, 5, 22)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.5
    y = torch.randint(0, v, (n,), generator=g)
    y[list(ignore)] = -100
    return h, w, y


def _grads(fn, h, w):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = fn(h, w)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 5, 23, 64])
def test_fp32_matches_full_logits(chunk, softcap):
    h, w, y = _inputs()
    ref = _grads(lambda a, b: _reference(a, b, y, softcap), h, w)
    got = _grads(lambda a, b: chunked_linear_ce(a, b, y, chunk, softcap), h, w)
    for r, g, what in zip(ref, got, ("loss", "grad hidden", "grad weight"), strict=True):
        torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5, msg=what)
    # Ignored rows get exactly no gradient.
    assert torch.equal(got[1][[0, 5, 22]], torch.zeros(3, 16))


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [4, 23])
def test_bf16_autocast_matches_bf16_logits(chunk, softcap):
    """Under autocast the logits are a bf16 matmul; from there on the loss is exact fp32."""
    h, w, y = _inputs(seed=1)
    hb, wb = h.bfloat16().float(), w.bfloat16().float()
    z = (hb.bfloat16() @ wb.bfloat16().t()).float()  # what autocast's matmul returns
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    want = F.cross_entropy(z, y, ignore_index=-100)
    ref = _grads(lambda a, b: _reference(a, b, y, softcap), hb, wb)

    def chunked(a, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return chunked_linear_ce(a, b, y, chunk, softcap)

    loss, gh, gw = _grads(chunked, hb, wb)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-6)
    # Gradients pass through bf16 once (as autocast's backward does): bf16 tolerance.
    torch.testing.assert_close(gh, ref[1], atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(gw, ref[2], atol=2e-3, rtol=2e-2)
    assert gh.dtype == gw.dtype == torch.float32


def test_all_targets_ignored_gives_zero_loss_and_no_gradient():
    h, w, y = _inputs()
    y[:] = -100
    loss, gh, gw = _grads(lambda a, b: chunked_linear_ce(a, b, y, 7), h, w)
    assert loss.item() == 0.0
    assert not gh.any() and not gw.any()


def test_frozen_head_gets_no_gradient_buffer():
    h, w, y = _inputs()
    h = h.requires_grad_()
    loss = chunked_linear_ce(h, w, y, 8)  # w does not require grad (LoRA, head frozen)
    loss.backward()
    assert w.grad is None and h.grad is not None


def _softcapped(arch):
    m = tiny.make_model(arch, 300)
    if arch == "gemma3_text":
        m.config.final_logit_softcapping = 5.0  # exercise the soft-cap path end to end
    return m


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2"])
def test_model_loss_fp32_and_bf16_match_plain_path(arch):
    m = _softcapped(arch)
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    for dtype, tol in ((None, 1e-5), (torch.bfloat16, 2e-2)):
        grads = []
        losses = []
        for chunk in (0, 5):
            m.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                loss = lm_loss(m, ids, chunk)
            loss.backward()
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        # The plain path soft-caps in bf16 under autocast; layra in fp32 (closer to fp32).
        torch.testing.assert_close(losses[1], losses[0], atol=tol * 0.1, rtol=tol * 0.1)
        for n in grads[0]:
            torch.testing.assert_close(grads[1][n], grads[0][n], atol=tol, rtol=tol, msg=n)


def _layra(arch="gemma3_text", dropout=0.0, method="layra"):
    from layra.config import MethodConfig
    from layra.methods import prepare_model

    km = {"k": 1, "m": 1} if method == "layra" else {}
    model, _ = prepare_model(
        tiny.make_model(arch, 300), MethodConfig(name=method, dropout=dropout, **km)
    )
    with torch.no_grad():  # B starts at zero; make every LoRA path carry gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return model


def _step_grads(model, ids, chunk=7):
    model.zero_grad()
    loss = lm_loss(model, ids, chunk)
    loss.backward()
    return loss.item(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("method", ["layra", "lora"])
def test_gradient_checkpointing_with_peft_changes_nothing(method):
    model = _layra(method=method)
    model.train()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(4))
    loss0, g0 = _step_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    loss1, g1 = _step_grads(model, ids)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert g1.keys() == g0.keys() and any("lora_A" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


def test_zero_dropout_is_the_identity_fast_path():
    model = _layra(dropout=0.0)
    drops = [m for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
    assert drops and all(isinstance(d, torch.nn.Identity) for d in drops)
    model.train()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    a, _ = _step_grads(model, ids)
    b, _ = _step_grads(model, ids)
    assert a == b  # no dropout mask: training-mode steps are deterministic
    with_dropout = _layra(dropout=0.5)
    with_dropout.train()
    assert _step_grads(with_dropout, ids)[0] != _step_grads(with_dropout, ids)[0]
