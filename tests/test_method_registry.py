"""The method registry: one spec per method, and no method-name comparisons outside it."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from layra.config import MethodConfig
from layra.errors import LayraError
from layra.memory import LLAMA_3_1_8B, count_params
from layra.method_registry import METHOD_SPECS, METHODS, method_spec
from layra.methods import plan_method

SRC = Path(__file__).resolve().parents[1] / "src" / "layra"


def test_config_choices_are_the_registry():
    assert typing.get_args(typing.get_type_hints(MethodConfig)["name"]) == METHODS
    assert set(METHODS) == {"full", "layer-selective", "lora", "layra"}
    with pytest.raises(LayraError, match="'dora' is not allowed; allowed: full, layer-selective"):
        method_spec("dora")


@pytest.mark.parametrize("name", METHODS)
def test_plan_follows_the_spec(name):
    spec = method_spec(name)
    plan = plan_method(MethodConfig(name=name), depth=32)
    chosen = plan.lora_layers if spec.lora else plan.full_layers
    assert len(chosen) == (sum(spec.default_km) if spec.selects_layers else 32)
    assert (plan.lora_layers == []) == (not spec.lora)
    if spec.fixed_embeddings is not None:
        assert plan.embeddings == spec.fixed_embeddings
    assert (spec.artifact == "adapter") == spec.lora
    pc = count_params(LLAMA_3_1_8B, name)
    assert (pc.trainable == pc.stored) == spec.trains_everything


def _method_name_comparisons(tree: ast.AST, source: str) -> list[int]:
    """Lines comparing something with a method's name (a literal, alone or in a tuple)."""
    unique = set(METHODS) - {"full"}  # "full" is also an embedding treatment
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        consts = [
            c.value
            for s in sides
            for c in (s.elts if isinstance(s, ast.Tuple | ast.List | ast.Set) else [s])
            if isinstance(c, ast.Constant) and isinstance(c.value, str)
        ]
        text = ast.get_source_segment(source, node) or ""
        if unique & set(consts) or ("full" in consts and "method" in text):
            hits.append(node.lineno)
    return hits


def test_no_method_name_comparisons_outside_the_registry():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "method_registry.py" or "_vendor" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        found += [
            f"{path.relative_to(SRC)}:{n}"
            for n in _method_name_comparisons(ast.parse(source), source)
        ]
    assert found == []
    assert len(METHOD_SPECS) == len(METHODS)
