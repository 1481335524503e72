"""The four training methods as data: one frozen :class:`MethodSpec` each, looked up by name.

    spec = method_spec("layra")
    spec.lora, spec.selects_layers, spec.default_km, spec.artifact   # True, True, (10, 2), "adapter"

Everything that branches on the method (config validation, :mod:`layra.methods`, training,
``layra plan``, extraction, evaluation, the demo) asks the spec, so a method is added here
and nowhere else. Names are compared only in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from layra.errors import LayraError

Artifact = Literal["adapter", "trained"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    # LoRA factors on the chosen layers (saved as a PEFT adapter) rather than training
    # the layers' own weights.
    lora: bool
    # True: the first k and last m decoder layers (method.k / method.m); False: every layer.
    selects_layers: bool
    # k and m when the config gives neither (the paper's, for a 32-layer model).
    default_km: tuple[int, int] | None
    # How the embeddings and LM head train when the method fixes it (full: everything
    # trains; lora: nothing but adapters); None: method.embeddings decides (default full).
    fixed_embeddings: Literal["full", "frozen"] | None
    # What a finished run holds: ``adapter/`` (PEFT format) or ``trained.safetensors``
    # (the trained tensors by their model names). :mod:`layra.rundir` knows the paths.
    artifact: Artifact
    summary: str

    @property
    def trains_everything(self) -> bool:
        """Every parameter trains, so no weight stays frozen (nothing to keep in bf16)."""
        return not self.lora and not self.selects_layers


METHOD_SPECS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("full", False, False, None, "full", "trained", "every parameter"),
        MethodSpec(
            "layer-selective",
            False,
            True,
            (1, 1),
            None,
            "trained",
            "first k and last m decoder layers fully, plus embeddings and LM head",
        ),
        MethodSpec("lora", True, False, None, "frozen", "adapter", "LoRA on every decoder layer"),
        MethodSpec(
            "layra",
            True,
            True,
            (10, 2),
            None,
            "adapter",
            "LoRA on the first k and last m decoder layers, plus embeddings and LM head",
        ),
    )
}
METHODS: tuple[str, ...] = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; a :class:`LayraError` naming the allowed ones otherwise."""
    try:
        return METHOD_SPECS[name]
    except (KeyError, TypeError):
        raise LayraError(
            f"method.name: {name!r} is not allowed; allowed: {', '.join(METHODS)}"
        ) from None
