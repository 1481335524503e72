"""Does a vector fit a model? Start-model checks and the map from entries to weights.

Refusals (each a one-line :class:`LayraError`):

* start model: by default the target's *weights* fingerprint must equal the
  vector's start (single stage, series onto θ′, merge onto θ0); ``instruct``
  asks only for the same *architecture and tokenizer* (Eq. 4, the instruct
  sibling). ``force`` waives the weights check, never the architecture check.
* a weight the vector changes is missing, has another shape (vocabulary
  mismatch for embedding/head), or is not a float tensor;
* an untied vector (separate embedding and head deltas) on a tied model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from layra.errors import LayraError
from layra.vectors.format import Entry, Vector


@dataclass(frozen=True)
class Target:
    """What the checks need to know about the model a vector is applied to."""

    ref: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    fingerprint: dict[str, str]
    vocab_names: tuple[str, str]  # parameter names of input embedding and LM head
    tied: bool


Contribution = tuple[Vector, Entry, float]


def check_start(vec: Vector, target: Target, instruct: bool = False, force: bool = False) -> str:
    """How the vector's start model matches the target: ``"weights"``, ``"arch"`` or ``"forced"``.

    Raises :class:`LayraError` when it does not match as required.
    """
    start, fp = vec.start, target.fingerprint
    if start.get("arch") != fp["arch"]:
        raise LayraError(
            f"vector {vec.label} does not fit {target.ref}: different architecture or tokenizer "
            f"(arch fingerprint {start.get('arch')} vs {fp['arch']}; --force does not override this)"
        )
    if start.get("weights") == fp["weights"]:
        return "weights"
    if instruct:
        return "arch"
    if force:
        return "forced"
    raise LayraError(
        f"vector {vec.label} was trained from other weights than {target.ref} "
        f"(start {start.get('weights')}, model {fp['weights']}); for an instruct sibling pass "
        "--instruct, to apply anyway pass --force"
    )


def plan(weighted: Sequence[tuple[Vector, float]], target: Target) -> dict[str, list[Contribution]]:
    """Target weight name -> the ``(vector, entry, λ)`` terms to add to it.

    A tied entry lands once on a tied model and on each of embedding and head
    of an untied one. Raises :class:`LayraError` for anything that does not fit.
    """
    embed, head = target.vocab_names
    out: dict[str, list[Contribution]] = {}
    for vec, lam in weighted:
        for e in vec.entries.values():
            if e.name == head and head not in target.shapes and target.tied:
                raise LayraError(
                    f"vector {vec.label} changes the embedding and the LM head separately, "
                    f"but {target.ref} ties them"
                )
            names = [n for n in (e.name, *e.aliases) if n in target.shapes]
            if not names:
                raise LayraError(f"vector {vec.label} changes {e.name}, which {target.ref} lacks")
            for n in names:
                _check_fit(vec, e, n, target, (embed, head))
                out.setdefault(n, []).append((vec, e, lam))
    return out


def _check_fit(vec: Vector, e: Entry, name: str, target: Target, vocab: tuple[str, str]) -> None:
    have = target.shapes[name]
    if have != e.shape:
        if name in vocab and have[1:] == e.shape[1:]:
            raise LayraError(
                f"vocabulary mismatch: vector {vec.label} has {e.shape[0]} rows for {name}, "
                f"{target.ref} has {have[0]}"
            )
        raise LayraError(
            f"shape mismatch for {name}: vector {vec.label} has {list(e.shape)}, "
            f"{target.ref} has {list(have)}"
        )
    dtype = target.dtypes[name]
    if not dtype.is_floating_point:
        raise LayraError(
            f"cannot add a delta to {name} of {target.ref}: dtype {dtype} is not a float"
        )
