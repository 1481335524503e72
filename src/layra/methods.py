"""The four training methods: which parameters train, and how.

| method          | trains                                                                |
|-----------------|-----------------------------------------------------------------------|
| full            | every parameter                                                       |
| layer-selective | first k and last m decoder layers fully, plus embeddings and LM head  |
| lora            | LoRA on every linear of every decoder layer                           |
| layra           | LoRA on the first k and last m decoder layers, plus embeddings and head|

How layer-selective and layra train the embeddings and head is ``method.embeddings``
(full, frozen, lowlr, rows: :mod:`layra.embeddings`).

    plan = plan_method(cfg.method, depth=18)      # validate without a model
    model, plan = prepare_model(model, cfg.method)  # freeze / wrap with PEFT
    model, plan = prepare_model(model, cfg.method, rows=choice.ids)  # embeddings: rows
    save_adapter(model, plan, "runs/x/adapter")   # PEFT's format, embedding / head included

Under LoRA (layra) the embedding and LM head train *in place*: the model's own
tensors get ``requires_grad``, instead of PEFT's ``modules_to_save``, which keeps a
trainable copy beside the frozen original (for Gemma 3 270M a second 262k x 640
tensor). A tied pair stays one tensor, so both uses add into one gradient; its
input-embedding lookup makes a sparse gradient that is added into the LM head's
dense one instead of a second dense vocab x hidden buffer. :func:`save_adapter`
writes what ``modules_to_save`` would have written, so ``PeftModel.from_pretrained``
and ``layra vector extract`` read the adapter unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from layra.arch import describe, unique_named_parameters, unwrap
from layra.config import MethodConfig, embedding_treatment
from layra.errors import LayraError
from layra.method_registry import MethodSpec, method_spec


@dataclass
class MethodPlan:
    method: str
    depth: int
    k: int = 0
    m: int = 0
    lora_layers: list[int] = field(default_factory=list)
    full_layers: list[int] = field(default_factory=list)
    train_embeddings: bool = False
    k_m_source: str = "config"
    embeddings: str = "frozen"  # full | frozen | lowlr | rows (layra.embeddings)
    embeddings_lr_scale: float | None = None  # lowlr only
    # AdamW decay of the trained embedding / head; None: train.weight_decay (rows: always 0)
    embeddings_weight_decay: float | None = None
    embedding_rows: list[int] | None = None  # rows only: the token ids whose rows train

    @property
    def spec(self) -> MethodSpec:
        return method_spec(self.method)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(v: int | float | str | None, default: int, depth: int, name: str) -> int:
    if v is None:
        return default
    if isinstance(v, float) and not v.is_integer():
        return max(1, round(v * depth))  # a fraction of depth
    n = int(v)
    if n < 0:
        raise LayraError(f"method.{name} must not be negative, got {n}")
    return n


def resolve_km(cfg: MethodConfig, depth: int) -> tuple[int, int, str]:
    """Turn k and m (count, fraction, default or auto) into layer counts for ``depth``."""
    # Paper defaults (Llama 3.1 8B, 32 layers): layer-selective 1/1, layra 10/2.
    default = method_spec(cfg.name).default_km
    dk, dm = default or (0, 0)
    source = "config"
    k, m = cfg.k, cfg.m
    if "auto" in (k, m):
        from layra.lens import suggest_km  # the logit-lens rule (docs/lens.md)

        sk, sm, _why = suggest_km(cfg.lens_profile)
        k = sk if k == "auto" else k
        m = sm if m == "auto" else m
        source = f"lens:{cfg.lens_profile}"
    elif k is None and m is None and default:
        source = "paper default"
    if default and depth < dk + dm and k is None and m is None:
        raise LayraError(
            f"method {cfg.name}: the paper's k={dk}, m={dm} need {dk + dm} layers but the model has "
            f"{depth}; set method.k and method.m (counts or fractions of depth)"
        )
    return _count(k, dk, depth, "k"), _count(m, dm, depth, "m"), source


def plan_method(cfg: MethodConfig, depth: int) -> MethodPlan:
    """Validate a method against a model depth and list what will train. No model needed."""
    spec = method_spec(cfg.name)
    if not spec.selects_layers:
        every = list(range(depth))
        if spec.lora:
            return MethodPlan(cfg.name, depth, lora_layers=every, train_embeddings=False)
        return MethodPlan(
            cfg.name,
            depth,
            full_layers=every,
            train_embeddings=True,
            embeddings="full",
            embeddings_weight_decay=cfg.embeddings_weight_decay,
        )
    k, m, source = resolve_km(cfg, depth)
    if k + m > depth:
        raise LayraError(
            f"method {cfg.name}: k={k} first plus m={m} last layers overlap; the model has {depth} layers"
        )
    if spec.lora and k + m == 0:
        raise LayraError(
            f"method {cfg.name}: k + m is 0, so no layer gets LoRA; use k >= 1 or m >= 1"
        )
    layers = list(range(k)) + list(range(depth - m, depth))
    treatment = embedding_treatment(cfg)
    plan = MethodPlan(
        cfg.name,
        depth,
        k,
        m,
        train_embeddings=treatment != "frozen",
        k_m_source=source,
        embeddings=treatment,
        embeddings_lr_scale=cfg.embeddings_lr_scale if treatment == "lowlr" else None,
        embeddings_weight_decay=0.0 if treatment == "rows" else cfg.embeddings_weight_decay,
    )
    if spec.lora:
        plan.lora_layers = layers
    else:
        plan.full_layers = layers
    return plan


def lora_config(cfg: MethodConfig, plan: MethodPlan, model: nn.Module, in_place: bool = False):
    """The PEFT LoraConfig for a lora / layra plan on ``model``.

    ``in_place``: leave the embedding / head out of ``modules_to_save`` (they train
    in place, :func:`prepare_model`); the config :func:`save_adapter` writes has them.
    """
    from peft import LoraConfig

    arch = describe(model)
    targets = list(cfg.target_modules or arch.lora_targets)
    modules_to_save = None
    if plan.train_embeddings:
        emb = arch.embed_name.split(".")[-1]
        head = arch.head_name.split(".")[-1]
        # With tied weights, listing both and ensure_weight_tying keeps one shared tensor;
        # without it PEFT would silently untie them (huggingface/peft#2777; docs/scaling.md).
        modules_to_save = [emb, head]
    if in_place:
        modules_to_save = None
    layers_pattern = arch.layers_prefix.split(".")[-1]
    some = plan.spec.selects_layers  # else every layer: no pattern needed
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,  # 0 gives nn.Identity: no dropout pass at all
        target_modules=targets,
        layers_to_transform=plan.lora_layers if some else None,
        layers_pattern=layers_pattern if some else None,
        modules_to_save=modules_to_save,
        ensure_weight_tying=arch.tied and modules_to_save is not None,
        task_type="CAUSAL_LM",
    )


def prepare_model(
    model: nn.Module,
    cfg: MethodConfig,
    rows: Sequence[int] | None = None,
    embeddings_in_place: bool = True,
) -> tuple[nn.Module, MethodPlan]:
    """Freeze / wrap ``model`` so exactly the method's parameters train.

    Returns the model to train (a PEFT model for lora / layra) and its plan.
    ``rows`` are the embedding / head rows that train under ``method.embeddings:
    rows`` (:func:`layra.embeddings.select_rows`). Checks afterwards that adapters
    landed on exactly the planned layers and that tied embeddings are still one tensor.
    ``embeddings_in_place=False`` trains the embedding / head of lora / layra through
    PEFT's ``modules_to_save`` copies instead (the reference the tests compare with).
    """
    from layra.embeddings import apply_treatment

    arch = describe(model)
    plan = plan_method(cfg, arch.num_layers)
    if plan.embeddings == "rows":
        if rows is None:
            raise LayraError(
                "method.embeddings=rows needs the row set (layra.embeddings.select_rows)"
            )
        plan.embedding_rows = sorted({int(r) for r in rows})
    if plan.spec.lora:
        model = _wrap_lora(model, cfg, plan, embeddings_in_place)
    else:
        _unfreeze_planned(model, plan)
    hf = unwrap(model)
    if arch.tied and hf.get_input_embeddings().weight is not hf.get_output_embeddings().weight:
        raise LayraError("internal: tied embeddings became untied while preparing the method")
    # A no-op for frozen embeddings (lora).
    apply_treatment(
        model,
        plan.embeddings,
        plan.embeddings_lr_scale or 1.0,
        plan.embedding_rows,
        plan.embeddings_weight_decay,
    )
    return model, plan


def _wrap_lora(model: nn.Module, cfg: MethodConfig, plan: MethodPlan, embeddings_in_place: bool):
    """The PEFT model of a LoRA plan, checked to carry adapters on exactly the planned layers."""
    from peft import get_peft_model

    arch = describe(model)
    in_place = embeddings_in_place and plan.train_embeddings
    model = get_peft_model(model, lora_config(cfg, plan, model, in_place))
    if in_place:
        # A row mask (embeddings: rows) edits dense gradients only.
        _train_embeddings_in_place(model, arch.tied and plan.embeddings != "rows")
    got = sorted({arch.layer_of(n) for n, _ in model.named_parameters() if "lora_A" in n} - {None})
    if got != plan.lora_layers:
        raise LayraError(f"LoRA adapters landed on layers {got}, expected {plan.lora_layers}")
    return model


def _unfreeze_planned(model: nn.Module, plan: MethodPlan) -> None:
    """Without LoRA: every parameter trains, or the planned layers plus embeddings and head."""
    arch = describe(model)
    for p in model.parameters():
        p.requires_grad_(plan.spec.trains_everything)
    if plan.spec.selects_layers:
        full = set(plan.full_layers)
        for name, p in model.named_parameters():
            if arch.layer_of(name) in full:
                p.requires_grad_(True)
        if plan.train_embeddings:
            model.get_input_embeddings().weight.requires_grad_(True)
            model.get_output_embeddings().weight.requires_grad_(True)


IN_PLACE_ATTR = "layra_embeddings_in_place"  # set on a PEFT model by prepare_model


def _train_embeddings_in_place(model: nn.Module, sparse_lookup: bool) -> None:
    hf = unwrap(model)
    emb, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    emb.weight.requires_grad_(True)
    head.weight.requires_grad_(True)
    if (
        sparse_lookup
        and emb.weight is head.weight
        and isinstance(emb, nn.Embedding)  # its sparse backward skips padding_idx too
        and os.environ.get("WORLD_SIZE", "1") == "1"
    ):
        # The lookup's gradient as sparse rows, accumulated into the head's dense gradient
        # (one vocab x hidden buffer, not two). Only tied: an untied embedding's gradient
        # would stay sparse, which AdamW refuses; one process only: DDP treats a sparse
        # embedding's gradient as sparse throughout.
        emb.sparse = True
    setattr(model, IN_PLACE_ATTR, True)


def save_adapter(model: nn.Module, plan: MethodPlan, path, state_dict=None) -> None:
    """``model.save_pretrained(path)``, with in-place embedding / head added as PEFT saves
    ``modules_to_save``: tensors under ``base_model.model.<name>.weight`` (a tied pair
    under both names, as ``ensure_weight_tying`` does) and listed in the config.

    ``PeftModel.from_pretrained(base, path)`` then reproduces the trained model.
    ``state_dict``: the model's full state gathered from shards (FSDP), used instead of
    the live (sharded) parameters.
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    path = Path(path)
    model.save_pretrained(path, state_dict=state_dict)
    if not getattr(model, IN_PLACE_ATTR, False):
        return
    hf = unwrap(model)
    arch = describe(hf)
    weights = path / "adapter_model.safetensors"
    tensors = load_file(weights)
    for name, module in (
        (arch.embed_name, hf.get_input_embeddings()),
        (arch.head_name, hf.get_output_embeddings()),
    ):
        # .clone(): safetensors refuses two names for one storage (the tied pair).
        weight = module.weight
        if state_dict is not None:
            # A tied pair may be gathered under the embedding's name only.
            names = (name, arch.embed_name) if arch.tied else (name,)
            key = next((k for n in names for k in state_dict if k.endswith(f"{n}.weight")), None)
            weight = state_dict[key] if key is not None else weight
        tensors[f"base_model.model.{name}.weight"] = weight.detach().cpu().clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    cfg_file = path / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["modules_to_save"] = [arch.embed_name.split(".")[-1], arch.head_name.split(".")[-1]]
    cfg["ensure_weight_tying"] = bool(arch.tied)
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def trainable_summary(model: nn.Module, plan: MethodPlan) -> str:
    """Human-readable account of what will train (printed before training)."""
    params = unique_named_parameters(model)
    # The model's own size: PEFT's trainable copies (modules_to_save) and LoRA factors are
    # extra tensors, not part of it.
    total = sum(p.numel() for n, p in params if "lora_" not in n and "modules_to_save" not in n)
    trainable = [(n, p) for n, p in params if p.requires_grad]
    n_train = sum(p.numel() for _, p in trainable)
    full_modules = sorted(
        {
            n.rsplit(".", 1)[0].replace(".modules_to_save.default", "")
            for n, _ in trainable
            if "lora_" not in n
        }
    )
    lines = [
        f"method {plan.method}: {n_train:,} trainable parameters, {100 * n_train / total:.2f}% "
        f"of the model's {total:,}",
    ]
    if plan.spec.selects_layers:
        lines.append(
            f"  k={plan.k} first, m={plan.m} last of {plan.depth} layers ({plan.k_m_source})"
        )
    if plan.lora_layers:
        lines.append(f"  LoRA on layers {_ranges(plan.lora_layers)}")
    if plan.full_layers and not plan.spec.trains_everything:
        lines.append(f"  fully trained layers {_ranges(plan.full_layers)}")
    if not plan.spec.trains_everything:
        shown = [m for m in full_modules if describe(model).layer_of(m) is None]
        if shown:
            lines.append("  fully trained modules: " + ", ".join(shown))
    if plan.spec.fixed_embeddings is None:
        how = {
            "full": "every row trains",
            "frozen": "frozen",
            "lowlr": f"every row trains at lr x {plan.embeddings_lr_scale}",
            "rows": f"only {len(plan.embedding_rows or []):,} rows train (no weight decay)",
        }[plan.embeddings]
        lines.append(f"  embeddings / LM head ({plan.embeddings}): {how}")
    if describe(model).tied and plan.train_embeddings:
        lines.append("  input embeddings and LM head are tied: trained as one tensor")
    return "\n".join(lines)


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], None, None
    for x in sorted(xs) + [None]:
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    return ", ".join(out)
