"""Builders shared by the vector tests: layra-shaped run directories made with PEFT directly.

A run directory follows docs/formats.md: ``run.json`` plus ``adapter/`` (lora, layra)
or ``trained.safetensors`` (full, layer-selective). Weights are perturbed at
random instead of trained (LoRA's B starts at zero, so an untrained adapter
would be a zero delta). Each builder also returns the reference model — PEFT's
``merge_and_unload()`` or the perturbed full model — whose logits an applied
vector must reproduce.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from layra.arch import describe, unique_named_parameters
from layra.fingerprint import model_fingerprint
from layra.models import load_model
from layra.rundir import RunDir, RunRecord

IDS = torch.tensor([[1, 5, 17, 42, 99, 150, 7, 2], [1, 200, 33, 8, 250, 64, 11, 3]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _run_json(run: Path, base_dir: Path, fp: dict, method: str, tied: bool, lang: str) -> None:
    record = RunRecord(
        method=method,
        base_model=str(base_dir),
        base_fingerprint=fp,
        languages=[lang],
        steps=1,
        tied=tied,
    )
    RunDir(run).write_record(record)


def make_adapter_run(
    run: Path, base_dir: Path, method: str = "layra", seed: int = 0, lang: str = "gl", **lora_kwargs
):
    """A lora / layra run from ``base_dir``; returns (run dir, PEFT-merged model)."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(str(base_dir))
    fp = model_fingerprint(model, tok)
    arch = describe(model)
    kw = dict(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=list(arch.lora_targets),
        task_type="CAUSAL_LM",
    )
    if method == "layra":
        kw.update(
            layers_to_transform=[0, arch.num_layers - 1],
            layers_pattern="layers",
            modules_to_save=["embed_tokens"] if arch.tied else ["embed_tokens", "lm_head"],
            ensure_weight_tying=arch.tied,
        )
    kw.update(lora_kwargs)
    pm = get_peft_model(model, LoraConfig(**kw))
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, p in pm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    run.mkdir(parents=True)
    pm.save_pretrained(RunDir(run).adapter)
    _run_json(run, base_dir, fp, method, arch.tied, lang)
    merged = pm.merge_and_unload().eval()
    return run, merged


def make_full_run(run: Path, base_dir: Path, method: str = "full", seed: int = 0, lang: str = "gl"):
    """A full / layer-selective run; returns (run dir, trained model)."""
    model, tok = load_model(str(base_dir))
    fp = model_fingerprint(model, tok)
    arch = describe(model)
    chosen = {}
    for name, p in unique_named_parameters(model):
        layer = arch.layer_of(name)
        if (
            method == "full"
            or layer in (0, arch.num_layers - 1)
            or name.startswith((arch.embed_name, arch.head_name))
        ):
            chosen[name] = p
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in chosen.values():
            p.add_(0.05 * torch.randn_like(p))
    run.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in chosen.items()}, RunDir(run).trained)
    _run_json(run, base_dir, fp, method, arch.tied, lang)
    return run, model.eval()


def make_run(run: Path, base_dir: Path, method: str, seed: int = 0, lang: str = "gl"):
    if method in ("lora", "layra"):
        return make_adapter_run(run, base_dir, method, seed, lang)
    return make_full_run(run, base_dir, method, seed, lang)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved model directory (all shards)."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(f))
    return out
