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

from layra.arch import describe, unwrap


def _compute_dtype(device_type: str) -> torch.dtype | None:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class ChunkedLinearCE(torch.autograd.Function):
    """mean_i CE(softcap(h_i Wᵀ), y_i) over rows with y_i != -100, chunked over rows."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk: int, softcap: float | None, cdtype):
        n, _ = hidden.shape
        valid = targets != -100
        count = int(valid.sum())
        grad_h = torch.zeros_like(hidden)
        need_w = weight.requires_grad
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        w = weight if cdtype is None else weight.to(cdtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            h = hidden[s : s + chunk]
            y = targets[s : s + chunk]
            hc = h if cdtype is None else h.to(cdtype)
            z = (hc @ w.t()).float()
            if softcap:
                t = torch.tanh(z / softcap)
                logits = t * softcap
            else:
                logits = z
            lse = torch.logsumexp(logits, dim=-1)
            ok = y != -100
            y0 = y.clamp_min(0)
            picked = logits.gather(1, y0[:, None]).squeeze(1)
            total += ((lse - picked) * ok).sum()
            # d(mean CE)/d(logits) = (softmax - onehot) / count, rows with y = -100 zeroed.
            g = torch.exp(logits - lse[:, None])
            g[torch.arange(len(y), device=g.device), y0] -= 1.0
            g *= (ok.float() / max(count, 1))[:, None]
            if softcap:
                g *= 1.0 - t * t
            gc = g if cdtype is None else g.to(cdtype)
            grad_h[s : s + chunk] = (gc @ w).to(hidden.dtype)
            if need_w:
                grad_w += (gc.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w if need_w else torch.empty(0))
        ctx.need_w = need_w
        ctx.weight_dtype = weight.dtype
        return total / max(count, 1)

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype)
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if ctx.need_w else None
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


def lm_loss(model: nn.Module, input_ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean next-token NLL of packed blocks, as ``model(ids, labels=ids).loss`` computes it.

    ``chunk=0`` uses the model's own forward (full logits) — the reference path.
    ``model`` may be a Hugging Face model or a PEFT model around one.
    """
    if chunk <= 0:
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    hf = unwrap(model)
    arch = describe(hf)
    # The decoder stack (LoRA layers are injected in place, so they run here too).
    backbone = (
        hf.get_submodule(arch.layers_prefix.rsplit(".", 1)[0]) if "." in arch.layers_prefix else hf
    )
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
    head = hf.get_output_embeddings()
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    bias = getattr(head, "bias", None)
    if bias is not None:  # no supported model has a head bias; keep the reference path honest
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
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

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return lm_loss(self.model, input_ids, self.chunk)
