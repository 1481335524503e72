"""Source-level promises of docs/architecture.md: functions fit on a screen, and only
layra.rundir names the files of a run directory."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "layra"
MAX_LINES = 60
RUN_FILES = {"run.json", "config.yaml", "log.jsonl", "data_stats.json", "trained.safetensors"}


def _trees():
    for path in sorted(SRC.rglob("*.py")):
        if "_vendor" in path.parts:  # third-party code, kept as upstream wrote it
            continue
        yield path.relative_to(SRC), ast.parse(path.read_text(encoding="utf-8"))


def test_every_function_fits_on_a_screen():
    long = [
        f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert long == []


def test_only_rundir_names_run_directory_files():
    named = [
        f"{path}:{node.lineno} {node.value}"
        for path, tree in _trees()
        if path.name != "rundir.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in RUN_FILES
    ]
    assert named == []
