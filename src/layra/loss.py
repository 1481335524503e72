"""Next-token loss without materialising full-vocabulary logits.

Gemma 3's head has 262,144 rows: the logits of a 4×256 batch take ~1 GiB in
fp32, and the softmax backward keeps another copy. :class:`ChunkedLinearCE`
computes loss *and* its gradients chunk by chunk in the forward pass (the idea of
liger-kernel's fused linear cross-entropy), so at most ``chunk × vocab`` logits
exist at any time and nothing is recomputed in backward.

    loss = lm_loss(model, input_ids, chunk=1024)   # == model(input_ids, labels=input_ids).loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layra.arch import Arch, describe, unwrap


def _compute_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _row_block(vocab: int) -> int:
    # Rows per fp32 softmax block: ~32 MiB of scratch, whatever the vocabulary.
    return max(1, (1 << 23) // vocab)


class ChunkedLinearCE(torch.autograd.Function):
    """mean_i CE(softcap(h_i Wᵀ), y_i) over rows with y_i != -100, chunked over rows.

    Forward computes the loss and both gradients; backward only scales them. Per
    chunk of ``chunk`` rows it holds the logits once, in the compute dtype (bf16
    under autocast), and turns them *in place* into d(loss)/d(logits); the fp32
    softmax runs over small row blocks. The softmax and the gradient are rounded to
    the compute dtype once, as autocast's plain path rounds them.

    Costs that dominate on a CPU with a 262k vocabulary, and how they are kept down:
    the gradient of the head, ``gᵀh``, writes a vocab×hidden matrix per chunk, so
    a micro-batch that fits in one chunk computes it once and keeps it in the
    compute dtype until backward (half the memory of an fp32 buffer); the 1/count
    scale is applied to the small outputs, not to the logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, softcap: float | None, cdtype):
        n, _ = hidden.shape
        vocab = weight.shape[0]
        valid = targets != -100
        count = max(int(valid.sum()), 1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cd = cdtype or weight.dtype
        w = weight if weight.dtype == cd else weight.to(cd)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        block = _row_block(vocab)
        for s in range(0, n, chunk):
            hc = hidden[s : s + chunk].to(cd)
            y = targets[s : s + chunk]
            z = hc @ w.t()  # (rows, vocab); becomes the logits' gradient in place
            for r in range(0, len(y), block):
                zs, ys = z[r : r + block], y[r : r + block]
                logits = zs.float()
                if softcap:
                    t = logits.div_(softcap).tanh_()
                    logits = t * softcap
                logp = torch.log_softmax(logits, dim=-1)
                del logits
                ok = ys != -100
                y0 = ys.clamp_min(0)
                total += (logp.gather(1, y0[:, None]).squeeze(1) * ok).sum().neg()
                # d CE / d logits = softmax - onehot; rows with y = -100 get no gradient.
                g = logp.exp_()
                g[torch.arange(len(ys), device=g.device), y0] -= 1.0
                g[~ok] = 0.0
                if softcap:
                    g *= t.square_().neg_().add_(1.0)
                zs.copy_(g)
                del logp, g
            if need_h:
                grad_h[s : s + chunk] = (z @ w).to(hidden.dtype)
            if need_w:
                gw = z.t() @ hc
                if grad_w is None:
                    grad_w = gw if s + chunk >= n else gw.float()
                else:
                    grad_w.add_(gw)  # fp32 accumulation across chunks
            del z
        inv = 1.0 / count
        if need_h:
            grad_h.mul_(inv)
        ctx.save_for_backward(
            grad_h if need_h else torch.empty(0), grad_w if need_w else torch.empty(0)
        )
        ctx.inv = inv
        ctx.weight_dtype = weight.dtype
        return total * inv

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = grad_h * grad_out.to(grad_h.dtype)
        if ctx.needs_input_grad[1]:
            # The buffer is ours and backward runs once: scale it in place, no second copy.
            gw = grad_w.to(ctx.weight_dtype).mul_(grad_out.float() * ctx.inv)
        return gh, gw, None, None, None, None


def chunked_linear_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` (``-100`` ignored)."""
    cdtype = _compute_dtype(hidden.device.type)
    return ChunkedLinearCE.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk, softcap, cdtype
    )


def lm_loss(
    model: nn.Module, input_ids: torch.Tensor, chunk: int = 1024, arch: Arch | None = None
) -> torch.Tensor:
    """Mean next-token NLL of packed blocks, as ``model(ids, labels=ids).loss`` computes it.

    ``chunk=0`` uses the model's own forward (full logits) — the reference path.
    ``model`` may be a Hugging Face model or a PEFT model around one. ``arch`` is
    ``describe(model)``; pass it when calling every step, it walks every module.
    """
    hf = unwrap(model)
    head = hf.get_output_embeddings()
    # No supported model has a head bias; fall back to the model's own loss rather than guess.
    if chunk <= 0 or getattr(head, "bias", None) is not None:
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    arch = arch or describe(hf)
    # The decoder stack (LoRA layers are injected in place, so they run here too).
    backbone = (
        hf.get_submodule(arch.layers_prefix.rsplit(".", 1)[0]) if "." in arch.layers_prefix else hf
    )
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    return chunked_linear_ce(hidden, head.weight, targets, chunk, arch.logit_softcap)


class LossModule(nn.Module):
    """Wraps a model so ``forward(input_ids)`` returns the loss.

    Distributed wrappers (DDP/FSDP via accelerate) must see the call that uses
    the parameters; wrapping the loss in a module lets them wrap this instead of
    the bare model.
    """

    def __init__(self, model: nn.Module, chunk: int):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.arch = describe(model)  # once: module names do not change while training

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model, input_ids, self.chunk, self.arch)
