"""How much accelerator memory a training run needs, per device, from config.json alone.

    layra plan --config configs/llama3.1-8b/full-gl.yaml --launcher fsdp --gpus 2
    python -m layra.memory            # the tables in docs/scaling.md (Llama 3.1 8B, seq 2048)

:func:`inventory` builds the model on the meta device (shapes and dtypes, no weights),
prepares the method exactly as ``layra train`` does (PEFT wrapping, frozen dtypes, fp32
trained tensors) and lists every stored tensor; :func:`plan_memory` turns that list into
the per-device terms of the launcher's formula, each with its dtype. The state terms
(weights, gradients, optimizer moments, master copies) are checked against the bytes of the
tensors alive after a real optimizer step of tiny models (tests/test_memory.py,
tests/test_fsdp.py); activations and the logits chunk are estimates from the layer shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layra.method_registry import METHOD_SPECS, METHODS
from layra.models import load_dtype_for, model_config, upcast_trainable

GiB = 2**30
ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/), in a source checkout
LAUNCHERS = ("single", "ddp", "fsdp", "zero2", "zero3")


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-like decoder that memory depends on."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    head_dim: int | None = None  # None: hidden // heads

    @property
    def q_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * self.heads

    @property
    def kv_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * self.kv_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of q, k, v, o, gate, up, down in one layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes()) + 2 * self.hidden  # + two norms

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embed_params + self.head_params + self.hidden


LLAMA_3_1_8B = ModelShape("Llama 3.1 8B", 128_256, 4096, 14_336, 32, 32, 8, tied=False)
GEMMA_3_270M = ModelShape("Gemma 3 270M", 262_144, 640, 2048, 18, 4, 1, tied=True, head_dim=256)


@dataclass(frozen=True)
class ParamCount:
    stored: int  # parameters held in memory (embedding / head train in place: no copies)
    trainable: int
    matmul: int  # parameters used as matmul weights in forward (layers' linears + head)


def count_params(shape: ModelShape, method: str, k: int = 10, m: int = 2, r: int = 8) -> ParamCount:
    """Stored and trainable parameters under a method (k, m: first/last layers; r: LoRA rank)."""
    if method not in METHOD_SPECS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    spec = METHOD_SPECS[method]
    emb_head = shape.embed_params + shape.head_params
    matmul = shape.layers * (shape.layer_params - 2 * shape.hidden) + shape.vocab * shape.hidden
    lora_per_layer = r * sum(a + b for a, b in shape.linear_shapes())
    if spec.trains_everything:
        return ParamCount(shape.params, shape.params, matmul)
    if not spec.lora:
        return ParamCount(shape.params, (k + m) * shape.layer_params + emb_head, matmul)
    if not spec.selects_layers:
        lora = shape.layers * lora_per_layer
        return ParamCount(shape.params + lora, lora, matmul)
    # layra: LoRA on k + m layers; embeddings and head trained in place (layra.methods).
    lora = (k + m) * lora_per_layer
    return ParamCount(shape.params + lora, lora + emb_head, matmul)


# Published config.json fields of models the shipped presets name, for planning offline
# (a hub id cannot be read here). Anything else is read from its config.json.
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.1-8B": {
        "model_type": "llama",
        "vocab_size": 128_256,
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500_000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
}
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class TensorInfo:
    """One stored parameter as ``layra train`` would hold it."""

    name: str
    numel: int
    dtype: str  # "bf16" / "fp32"
    trainable: bool
    layer: int | None  # decoder layer index; None: embeddings, final norm, head (the root unit)
    matmul: bool  # a weight multiplied in the forward pass (linear layers, LM head)

    @property
    def nbytes(self) -> int:
        return self.numel * (4 if self.dtype == "fp32" else 2)


@dataclass(frozen=True)
class Inventory:
    """The tensors of a prepared model, and the facts the formula needs."""

    model: str
    method: str
    precision: str  # the compute precision assumed: bf16 or fp32
    load_dtype: str  # what layra loads weights in (layra.models.frozen_dtype)
    shape: ModelShape
    tensors: list[TensorInfo]
    config_source: str

    def count(self, trainable: bool | None = None) -> int:
        return sum(t.numel for t in self.tensors if trainable in (None, t.trainable))


def _read_config(cfg):
    """The model's config (text part), from config.json / GGUF, else a published copy."""
    from pathlib import Path

    from transformers import AutoConfig

    name = cfg.model.name_or_path
    if name not in PUBLISHED_CONFIGS or Path(name).exists():
        return model_config(cfg), "config.json"

    fields = dict(PUBLISHED_CONFIGS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields), "published config (offline)"


def inventory(cfg, precision: str = "bf16") -> Inventory:
    """Build ``cfg``'s model on the meta device and prepare its method as training does.

    No weights are read or allocated: shapes come from config.json, dtypes from the
    checkpoint's stored dtype and ``precision`` (what ``train.precision`` resolves to on the
    target device: bf16 on any recent GPU). ``method.embeddings: rows`` trains whole tensors
    with a row mask, so it is planned as ``full`` embeddings.
    """
    import dataclasses

    from transformers import AutoModelForCausalLM

    from layra.arch import describe, unique_named_parameters, unwrap
    from layra.methods import prepare_model

    mc, source = _read_config(cfg)
    stored = getattr(mc, "dtype", None) or getattr(mc, "torch_dtype", None)
    load = load_dtype_for(cfg.method.name, precision, stored)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(mc, dtype=getattr(torch, load))
    method = cfg.method
    if method.embeddings == "rows":
        method = dataclasses.replace(method, embeddings="full")
    model, _ = prepare_model(model, method)
    upcast_trainable(model)
    arch = describe(unwrap(model))
    hf = unwrap(model)
    matmul = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    matmul.add(id(hf.get_output_embeddings().weight))
    tensors = [
        TensorInfo(
            n,
            p.numel(),
            _SHORT.get(p.dtype, str(p.dtype)),
            p.requires_grad,
            arch.layer_of(n),
            id(p) in matmul,
        )
        for n, p in unique_named_parameters(model)
    ]
    shape = ModelShape(
        cfg.model.name_or_path,
        mc.vocab_size,
        mc.hidden_size,
        mc.intermediate_size,
        mc.num_hidden_layers,
        mc.num_attention_heads,
        mc.num_key_value_heads,
        tied=arch.tied,
        head_dim=getattr(mc, "head_dim", None),
    )
    return Inventory(
        cfg.model.name_or_path, cfg.method.name, precision, load, shape, tensors, source
    )


@dataclass(frozen=True)
class Term:
    """One term of the per-device formula."""

    name: str
    nbytes: float
    dtype: str
    formula: str
    state: bool  # held across steps (checked against live tensors); else peak-time only
    host: bool = False  # in host memory (FSDP2 CPU offload), not on the device: not in total


@dataclass
class MemoryPlan:
    """Per-device memory of one launcher: the terms and their sum."""

    inv: Inventory
    launcher: str
    gpus: int
    micro_batch: int
    seq_len: int
    checkpointing: bool
    loss_chunk: int
    fsdp_param_dtype: str = "stored"  # train.fsdp_param_dtype (fsdp only)
    fsdp_offload: bool = False  # train.fsdp_offload (fsdp only)
    terms: list[Term] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Bytes per device (host-memory terms of CPU offload excluded)."""
        return sum(t.nbytes for t in self.terms if not t.host)

    @property
    def host(self) -> float:
        """Bytes per process in host memory (FSDP2 CPU offload; else 0)."""
        return sum(t.nbytes for t in self.terms if t.host)

    @property
    def state(self) -> float:
        return sum(t.nbytes for t in self.terms if t.state and not t.host)

    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def text(self) -> str:
        """The plan as ``layra plan`` prints it."""
        inv = self.inv
        trained = inv.count(True)
        fsdp = ""
        if self.launcher == "fsdp":
            gather = "bf16" if self.fsdp_param_dtype == "bf16" else "their stored dtypes"
            fsdp = f"; FSDP2 params gathered in {gather}" + (
                ", CPU offload" if self.fsdp_offload else ""
            )
        lines = [
            f"model: {inv.model} ({inv.config_source}), {inv.shape.layers} layers, "
            f"{inv.count() / 1e9:.3f} B parameters stored",
            f"method: {inv.method}; trainable {trained:,} ({trained / 1e9:.3f} B, "
            f"{100 * trained / max(inv.count(), 1):.1f} %)",
            f"precision: {inv.precision}; weights loaded in {inv.load_dtype}, trained tensors fp32",
            f"launcher: {self.launcher} x {self.gpus}; per device: micro-batch {self.micro_batch}"
            f" x seq {self.seq_len}, checkpointing {'on' if self.checkpointing else 'off'}, "
            f"loss chunk {self.loss_chunk}{fsdp}",
            "",
            f"{'term':<24} {'GiB':>8}  {'dtype':<18} formula",
        ]
        for t in self.terms:
            name = t.name + (" (host)" if t.host else "")
            lines.append(f"{name:<24} {t.nbytes / GiB:>8.2f}  {t.dtype:<18} {t.formula}")
        lines.append(f"{'total':<24} {self.total / GiB:>8.2f}")
        if self.host:
            lines.append(f"{'host per process':<24} {self.host / GiB:>8.2f}  (not in total)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _mix(ts: list[TensorInfo]) -> str:
    kinds = sorted({t.dtype for t in ts})
    return "+".join(kinds) if kinds else "-"


def _activation_terms(inv: Inventory, p: MemoryPlan, head_trains: bool) -> list[Term]:
    s = inv.shape
    c = 2 if inv.precision == "bf16" else 4  # compute dtype bytes
    # The residual stream carries the embedding's dtype: fp32 when it trains or all is fp32,
    # bf16 when FSDP2 gathers the embedding in bf16.
    mp = _fsdp_bf16(p)
    r = 2 if mp else 4 if inv.load_dtype == "float32" or head_trains else 2
    tokens = p.micro_batch * p.seq_len
    h, i, q, kv = s.hidden, s.intermediate, s.q_dim, s.kv_dim
    # Per layer and token: each RMSNorm's input (residual dtype), fp32 normalised value and
    # output; q, k, v after RoPE and the attention output (fused SDPA keeps no seq x seq
    # matrix); the MLP's gate, up, activation and product.
    per_tok = 2 * (r * h + 4 * h + r * h) + c * (2 * q + 2 * kv) + 4 * c * i
    if p.checkpointing:
        acts = s.layers * r * h * tokens + per_tok * tokens
        f = f"{s.layers} layer inputs x {tokens} tok x {r} B + one layer recomputed"
    else:
        acts = s.layers * per_tok * tokens
        f = f"{s.layers} layers x {tokens} tok x {per_tok} B"
    out = [Term("activations", acts, f"{_SHORT_BYTES[r]} residual", f, False)]
    cd = _SHORT_BYTES[c]
    if p.loss_chunk > 0:
        rows = min(p.loss_chunk, tokens)
        block = max(1, min(rows, (1 << 27) // s.vocab // 4))  # layra.loss._row_block, about
        chunk = rows * s.vocab * c + 2 * block * s.vocab * 4
        f = f"{rows} rows x {s.vocab} vocab x {c} B + fp32 softmax block"
        if head_trains:
            # Accumulated over chunks in the head's dtype: fp32, or bf16 as FSDP2 gathers it.
            gw = 4 if tokens > p.loss_chunk and not mp else c
            chunk += s.vocab * h * gw
            f += f" + head gradient {s.vocab}x{h}x{gw} B"
        out.append(Term("logits chunk", chunk, cd, f, False))
    else:
        out.append(
            Term(
                "logits (unchunked)",
                tokens * s.vocab * 10,
                f"{cd}+fp32",
                "tok x vocab x 10 B",
                False,
            )
        )
    if inv.precision == "bf16" and not mp:
        out += _autocast_copies(inv, p.checkpointing)
    if mp:
        # post-backward: each unit's bf16 gradient is cast to fp32 for the reduce-scatter;
        # the largest is the root's when the embeddings / head train.
        largest = max(_unit_trained(inv, j) for j in [None, *range(inv.shape.layers)])
        out.append(
            Term(
                "reduce copies",
                4 * largest,
                "fp32",
                "largest unit's trained tensors x 4 B (bf16 gradient cast to fp32 to reduce)",
                False,
            )
        )
    return out


def _fsdp_bf16(p: MemoryPlan) -> bool:
    """FSDP2 gathers and computes in bf16 (train.fsdp_param_dtype=bf16 under fsdp)."""
    return p.launcher == "fsdp" and p.fsdp_param_dtype == "bf16"


def _unit_trained(inv: Inventory, layer: int | None) -> int:
    """Trained parameters of one FSDP unit: a decoder layer, or the root (``None``)."""
    return sum(t.numel for t in inv.tensors if t.trainable and t.layer == layer)


def _autocast_copies(inv: Inventory, checkpointing: bool) -> list[Term]:
    """bf16 autocast's casts of fp32 matmul weights: a term, or none when there are none."""
    fp32_trained = sum(
        t.numel for t in inv.tensors if t.matmul and t.trainable and t.dtype == "fp32"
    )
    frozen32 = [t for t in inv.tensors if t.matmul and not t.trainable and t.dtype == "fp32"]
    frozen = sum(t.numel for t in frozen32)
    if checkpointing:
        frozen = max(
            (sum(t.numel for t in frozen32 if t.layer == j) for j in range(inv.shape.layers)),
            default=0,
        )
    copies = 2 * (fp32_trained + frozen)
    if not copies:
        return []
    why = "bf16 casts of fp32 matmul weights (trained: cached all forward; frozen: saved for "
    why += "backward" + (", one layer's)" if checkpointing else ")")
    return [Term("autocast copies", copies, "bf16", why, False)]


_SHORT_BYTES = {2: "bf16", 4: "fp32"}


def plan_memory(
    inv: Inventory,
    launcher: str = "single",
    gpus: int = 1,
    micro_batch: int = 4,
    seq_len: int = 2048,
    checkpointing: bool = True,
    loss_chunk: int = 1024,
    fsdp_param_dtype: str = "stored",
    fsdp_offload: bool = False,
) -> MemoryPlan:
    """Per-device memory of training ``inv`` under ``launcher`` on ``gpus`` devices.

    What each launcher holds per device, as layra runs it (``zero2`` / ``zero3`` as DeepSpeed
    would, though ``layra train`` refuses DeepSpeed today):

    * ``single`` / ``ddp``: every tensor in its stored dtype (frozen bf16 where the checkpoint
      is bf16 and precision bf16, else fp32; trained tensors fp32, which are the optimizer's
      master weights: no separate copy); fp32 gradients of trained tensors (DDP: plus its
      gradient buckets of the same size); AdamW's two fp32 moments.
    * ``fsdp``: FSDP2, one unit per decoder layer plus the root (embeddings, final norm, head):
      every parameter sharded on dim 0 over ``gpus`` in its own dtype, gradients and moments
      of trained tensors sharded; during compute the root unit and two layers (the current
      and the prefetched) are gathered in their stored dtype (no mixed-precision policy).
      ``fsdp_param_dtype="bf16"`` (FSDP2's ``MixedPrecisionPolicy``, fp32 reduce): they are
      gathered in bf16, so the residual stream and the head's gradient are bf16 and autocast
      has no fp32 weights to copy; each unit's bf16 gradient is cast to fp32 to be reduced.
      ``fsdp_offload``: the sharded weights, gradients and moments are host-memory terms
      (:attr:`MemoryPlan.host`), not in the device total.
    * ``zero2``: the whole model in bf16 on every device, fp32 master copies, gradients and
      moments of trained tensors sharded, 2e8-element bf16 buckets; ``zero3`` also shards
      the bf16 model and gathers up to 1e9 parameters at a time.

    Peak-time terms: activations of ``micro_batch`` x ``seq_len`` tokens (see
    :func:`_activation_terms`), the chunked loss's logits, and under bf16 autocast the bf16
    copies of fp32 matmul weights (autocast caches the cast of each fp32 leaf parameter that
    requires grad until the forward's autocast region exits).
    """
    _check_plan_args(inv, launcher, gpus, micro_batch, seq_len, fsdp_param_dtype)
    p = MemoryPlan(
        inv, launcher, gpus, micro_batch, seq_len, checkpointing, loss_chunk,
        fsdp_param_dtype, fsdp_offload,
    )  # fmt: skip
    if launcher != "fsdp" and (fsdp_param_dtype != "stored" or fsdp_offload):
        p.notes.append("train.fsdp_param_dtype / fsdp_offload apply under fsdp only; ignored")
    # The head trains when a root-unit tensor of its size does (tied: the shared tensor).
    big = inv.shape.vocab * inv.shape.hidden
    head_trains = any(t.trainable and t.layer is None and t.numel == big for t in inv.tensors)
    if launcher in ("single", "ddp", "fsdp"):
        p.terms += _torch_state_terms(inv, launcher, gpus, _fsdp_bf16(p), p.fsdp_offload)
    else:
        p.terms += _deepspeed_state_terms(inv, launcher, gpus)
        p.notes.append(
            "layra train refuses DeepSpeed today (docs/scaling.md); shown for comparison"
        )
    p.terms += _activation_terms(inv, p, head_trains)
    return p


def _check_plan_args(
    inv: Inventory, launcher: str, gpus: int, micro_batch: int, seq_len: int, param_dtype: str
) -> None:
    """ValueError for arguments :func:`plan_memory` cannot plan."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: one of {', '.join(LAUNCHERS)}")
    if gpus < 1 or seq_len < 1 or micro_batch < 1:
        raise ValueError("gpus, seq_len and micro_batch must be positive")
    if launcher == "single" and gpus != 1:
        raise ValueError("launcher single runs on one device (gpus 1)")
    if param_dtype not in ("stored", "bf16"):
        raise ValueError(f"fsdp_param_dtype {param_dtype!r}: stored or bf16")
    if param_dtype == "bf16" and inv.precision != "bf16":
        raise ValueError("fsdp_param_dtype bf16 computes in bf16: plan it with precision bf16")


def _torch_state_terms(
    inv: Inventory, launcher: str, gpus: int, bf16_gather: bool = False, offload: bool = False
) -> list[Term]:
    """Weights, gradients, moments under single / DDP / FSDP2 (see :func:`plan_memory`)."""
    offload = offload and launcher == "fsdp"
    ts = inv.tensors
    trained = [t for t in ts if t.trainable]
    frozen = [t for t in ts if not t.trainable]
    T = sum(t.numel for t in trained)
    n = gpus if launcher == "fsdp" else 1
    dtypes = ", ".join(f"{_mix(g)} {k}" for g, k in ((frozen, "frozen"), (trained, "trained")) if g)
    shard = f" / {n} (sharded per parameter)" if launcher == "fsdp" else ""
    held = sum(t.nbytes for t in ts)
    terms = [Term("weights", held / n, dtypes, f"sum(numel x dtype size){shard}", True, offload)]
    if launcher == "fsdp":

        def size(t: TensorInfo) -> int:
            return 2 * t.numel if bf16_gather else t.nbytes

        root = sum(size(t) for t in ts if t.layer is None)
        layer = max(sum(size(t) for t in ts if t.layer == j) for j in range(inv.shape.layers))
        terms.append(
            Term(
                "gathered weights",
                root + 2 * layer,
                "bf16" if bf16_gather else _mix(ts),
                "root unit (embeddings, norm, head) + 2 layers, unsharded during compute"
                + (" (bf16 policy)" if bf16_gather else ""),
                False,
            )
        )
    ddp_buckets = launcher == "ddp" and gpus > 1
    grads = (8 if ddp_buckets else 4) * T / n
    gf = "trained x 4 B" + (" x 2 (DDP buckets)" if ddp_buckets else "")
    per = f" / {n}" if n > 1 else ""
    return terms + [
        Term("gradients", grads, "fp32", gf + per, True, offload),
        Term("optimizer moments", 8 * T / n, "fp32", "trained x 2 x 4 B" + per, True, offload),
        Term("master copies", 0, "-", "none: trained tensors are fp32 themselves", True),
    ]


def _deepspeed_state_terms(inv: Inventory, launcher: str, gpus: int) -> list[Term]:
    """Weights, gradients, moments, masters as DeepSpeed ZeRO-2 / ZeRO-3 would hold them."""
    T, N, n = inv.count(True), inv.count(), gpus
    if launcher == "zero2":
        terms = [Term("weights", 2 * N, "bf16", "all parameters x 2 B", True)]
    else:
        terms = [
            Term("weights", 2 * N / n, "bf16", f"all parameters x 2 B / {n}", True),
            Term("gathered weights", 2 * min(1e9, N), "bf16", "up to 1e9 parameters x 2 B", False),
        ]
    return terms + [
        Term(
            "gradients",
            4 * T / n + 8e8,
            "fp32+bf16",
            f"trained x 4 B / {n} + 2x2e8 bf16 buckets",
            True,
        ),
        Term("optimizer moments", 8 * T / n, "fp32", f"trained x 2 x 4 B / {n}", True),
        Term("master copies", 4 * T / n, "fp32", f"trained x 4 B / {n}", True),
    ]


def markdown_table(plans: list[MemoryPlan]) -> str:
    """GiB per device, one row per plan: the table in docs/scaling.md."""
    names = ["weights", "gathered weights", "gradients", "optimizer moments", "master copies"]
    lines = [
        "| method | trainable | launcher | "
        + " | ".join(names)
        + " | activations + logits + casts | total |",
        "|---|---:|---|" + "---:|" * (len(names) + 2),
    ]
    for p in plans:
        got = {t.name: t.nbytes for t in p.terms if not t.host}
        peak = sum(t.nbytes for t in p.terms if not t.state and t.name != "gathered weights")
        cells = [f"{got.get(n, 0) / GiB:.1f}" for n in names]
        how = f"{p.launcher} x {p.gpus}"
        if p.launcher == "fsdp" and (p.fsdp_param_dtype != "stored" or p.fsdp_offload):
            how += f" ({p.fsdp_param_dtype}" + (", offload)" if p.fsdp_offload else ")")
        lines.append(
            f"| {p.inv.method} | {p.inv.count(True) / 1e9:.2f} B | {how} | "
            + " | ".join(cells)
            + f" | {peak / GiB:.1f} | **{p.total / GiB:.1f}** |"
        )
    return "\n".join(lines)


def scaling_tables() -> str:
    """docs/scaling.md's tables: the Llama 3.1 8B presets, bf16, seq 2048, micro-batch 4."""
    from layra.config import load_config

    out = []
    for gpus in (2, 8):
        plans = []
        for method in METHODS:
            cfg = load_config(str(ROOT / "configs" / "llama3.1-8b" / f"{method}-gl.yaml"), [])
            inv = inventory(cfg, "bf16")
            for launcher in ("ddp", "fsdp", "zero2", "zero3"):
                plans.append(plan_memory(inv, launcher, gpus))
        out.append(
            f"Llama 3.1 8B presets (configs/llama3.1-8b/*-gl.yaml), {gpus} GPUs, bf16, "
            "seq 2048, micro-batch 4 per GPU, checkpointing, loss chunk 1024. GiB per GPU.\n\n"
            + markdown_table(plans)
        )
    plans, host = [], []
    for method in METHODS:
        cfg = load_config(str(ROOT / "configs" / "llama3.1-8b" / f"{method}-gl.yaml"), [])
        inv = inventory(cfg, "bf16")
        plans.append(plan_memory(inv, "single", 1))
        for param_dtype in ("stored", "bf16"):
            for offload in (False, True):
                plans.append(plan_memory(inv, "fsdp", 2, fsdp_param_dtype=param_dtype,
                                         fsdp_offload=offload))  # fmt: skip
        host.append(f"{method} {plans[-1].host / GiB:.1f}")
    out.append(
        "The same presets on one GPU, and under FSDP2 on 2 GPUs with train.fsdp_param_dtype "
        "(stored / bf16) and train.fsdp_offload. GiB per GPU; with offload the sharded "
        f"weights, gradients and moments are in host memory instead ({', '.join(host)} GiB "
        "per process).\n\n" + markdown_table(plans)
    )
    return "\n\n".join(out)


if __name__ == "__main__":
    print(scaling_tables())
