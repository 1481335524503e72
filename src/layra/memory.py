"""How much accelerator memory a training run needs, per GPU, computed from the model's shape.

    python -m layra.memory            # the table in docs/scaling.md (Llama 3.1 8B, seq 2048)

Pure arithmetic, no model loaded. Every figure is an estimate with its assumptions
stated next to the function that makes it; docs/scaling.md is generated from
:func:`scaling_table`, and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30
ENGINES = ("ddp", "fsdp", "zero2", "zero3")
METHODS = ("full", "layer-selective", "lora", "layra")


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
    stored: int  # parameters held in memory (PEFT's modules_to_save keeps original + copy)
    trainable: int
    matmul: int  # parameters used as matmul weights in forward (layers' linears + head)


def count_params(shape: ModelShape, method: str, k: int = 10, m: int = 2, r: int = 8) -> ParamCount:
    """Stored and trainable parameters under a method (k, m: first/last layers; r: LoRA rank)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    emb_head = shape.embed_params + shape.head_params
    matmul = shape.layers * (shape.layer_params - 2 * shape.hidden) + shape.vocab * shape.hidden
    lora_per_layer = r * sum(a + b for a, b in shape.linear_shapes())
    if method == "full":
        return ParamCount(shape.params, shape.params, matmul)
    if method == "layer-selective":
        return ParamCount(shape.params, (k + m) * shape.layer_params + emb_head, matmul)
    if method == "lora":
        lora = shape.layers * lora_per_layer
        return ParamCount(shape.params + lora, lora, matmul)
    # layra: LoRA on k + m layers; embeddings and head trained as PEFT copies of the originals.
    lora = (k + m) * lora_per_layer
    return ParamCount(shape.params + lora + emb_head, lora + emb_head, matmul)


def activation_bytes_per_token_layer(shape: ModelShape, residual_bytes: int = 4) -> int:
    """Bytes one decoder layer keeps for backward per token (bf16 autocast, fused attention).

    Counted tensors: each RMSNorm's input (residual dtype), fp32 normalised value and bf16
    output; q, k, v after RoPE and the attention output (flash / memory-efficient SDPA keeps
    no seq x seq matrix); the MLP's gate, up, activation and product (bf16). An upper
    bound for frozen layers, whose linear inputs autograd need not keep.
    """
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    norms = 2 * (residual_bytes * h + 4 * h + 2 * h)
    attention = 2 * shape.q_dim + 2 * kv + 2 * kv + 2 * shape.q_dim
    mlp = 4 * 2 * i
    return norms + attention + mlp


@dataclass(frozen=True)
class Estimate:
    """Bytes per GPU, by kind."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations


def estimate(
    shape: ModelShape,
    method: str,
    engine: str,
    gpus: int = 8,
    seq_len: int = 2048,
    micro_batch: int = 4,
    checkpointing: bool = True,
    loss_chunk: int = 1024,
    k: int = 10,
    m: int = 2,
    r: int = 8,
) -> Estimate:
    """Memory per GPU of one training run (bytes), as layra runs it under each engine.

    Assumptions, per engine:

    * ``ddp``: weights counted in fp32 under bf16 autocast (true for ``full`` and for fp32
      checkpoints; on a bf16 checkpoint layra keeps frozen weights in bf16, see
      ``layra.train.frozen_dtype``, so this overstates lora / layra there); every GPU holds
      all weights (4 B), fp32 gradients of the trainable ones plus DDP's equal-sized
      buckets (8 B), AdamW's two fp32 moments (8 B); autocast's bf16 copies of the matmul
      weights live until backward (2 B each; one layer's worth with checkpointing).
    * ``fsdp``: FULL_SHARD, ``use_orig_params``, bf16 ``param_dtype``: fp32 weights,
      gradients and moments sharded over ``gpus``; every *unit* that holds a trainable
      parameter gets a gradient for its whole flat parameter (frozen parts included);
      the unsharded bf16 root unit (embeddings, head) plus two decoder layers live.
    * ``zero2`` / ``zero3``: DeepSpeed keeps the model in bf16 (2 B; ZeRO-3 shards it and
      gathers ~1e9 parameters at a time), fp32 master copies, moments and gradients of the
      trainable parameters sharded (16 B / gpus), 2e8-element bf16 communication buckets.

    Activations are per GPU for ``micro_batch`` sequences of ``seq_len``: every layer's
    saved tensors, or with checkpointing the layer inputs plus one layer recomputed; plus
    the LM head: layra's chunked loss holds ``loss_chunk`` x vocab bf16 logits and a bf16
    head gradient; ``loss_chunk=0`` (the plain path) holds bf16 logits, their fp32 copy and
    fp32 log-probabilities for the whole micro-batch (10 B per logit).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    if gpus < 1 or seq_len < 1 or micro_batch < 1:
        raise ValueError("gpus, seq_len and micro_batch must be positive")
    pc = count_params(shape, method, k, m, r)
    n = 1 if engine == "ddp" else gpus
    tokens = seq_len * micro_batch
    head_trains = method in ("full", "layer-selective", "layra")

    residual = 4 if engine in ("ddp", "fsdp") else 2  # fp32 weights + autocast keep fp32 residuals
    per_layer = activation_bytes_per_token_layer(shape, residual) * tokens
    if checkpointing:
        acts = shape.layers * residual * shape.hidden * tokens + per_layer
    else:
        acts = shape.layers * per_layer
    if loss_chunk > 0:
        acts += min(loss_chunk, tokens) * shape.vocab * 2
        acts += shape.vocab * shape.hidden * 2 if head_trains else 0
    else:
        acts += tokens * shape.vocab * 10
    layer_matmul = shape.layer_params - 2 * shape.hidden

    if engine == "ddp":
        weights = 4 * pc.stored
        copies = layer_matmul + shape.vocab * shape.hidden if checkpointing else pc.matmul
        acts += 2 * copies
        return Estimate(
            weights,
            8 * pc.trainable * (gpus > 1) + 4 * pc.trainable * (gpus == 1),
            8 * pc.trainable,
            acts,
        )
    if engine == "fsdp":
        root = pc.stored - shape.layers * shape.layer_params  # embeddings, head, final norm
        weights = 4 * pc.stored / n + 2 * (root + 2 * shape.layer_params)
        grad_layers = {
            "full": shape.layers,
            "layer-selective": k + m,
            "lora": shape.layers,
            "layra": k + m,
        }[method]
        grad_params = grad_layers * shape.layer_params + (root if head_trains else 0)
        return Estimate(weights, 4 * grad_params / n, 8 * pc.trainable / n, acts)
    buckets = 2 * 2e8 * 2
    if engine == "zero2":
        weights = 2 * pc.stored + 4 * pc.trainable / n
    else:
        weights = 2 * pc.stored / n + 2 * 1e9 + 4 * pc.trainable / n
    return Estimate(weights, 4 * pc.trainable / n + buckets, 8 * pc.trainable / n, acts)


def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def scaling_table(
    shape: ModelShape = LLAMA_3_1_8B, gpus: int = 8, seq_len: int = 2048, micro_batch: int = 4
) -> str:
    """Markdown table: memory per GPU (GiB) for each method x engine, with/without checkpointing."""
    lines = [
        f"{shape.name}, {gpus} GPUs, seq {seq_len}, micro-batch {micro_batch} per GPU, bf16, "
        "AdamW, layra's chunked loss (chunk 1024); LayRA k=10 m=2 r=8, layer-selective k=m=1.",
        "",
        "| method | trainable | engine | weights | gradients | optimizer | activations "
        "(ckpt / none) | total (ckpt / none) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for method in METHODS:
        km = {"k": 1, "m": 1} if method == "layer-selective" else {}
        pc = count_params(shape, method, **km)
        for engine in ENGINES:
            on = estimate(shape, method, engine, gpus, seq_len, micro_batch, True, **km)
            off = estimate(shape, method, engine, gpus, seq_len, micro_batch, False, **km)
            lines.append(
                f"| {method} | {pc.trainable / 1e9:.2f} B | {engine} | {_gib(on.weights)} | "
                f"{_gib(on.gradients)} | {_gib(on.optimizer)} | {_gib(on.activations)} / "
                f"{_gib(off.activations)} | **{_gib(on.total)}** / {_gib(off.total)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(scaling_table())
