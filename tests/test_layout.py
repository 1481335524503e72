"""Source-level promises of docs/architecture.md: functions fit on a screen, only
layra.rundir names the files of a run directory, and only layra.evaluation.writer
writes reports."""

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


REPORT_FILES = {"report.md", "report.json", "tradeoff.png", "bars.png", "timings.json"}
REPORT_WRITERS = {"to_csv", "tradeoff_png", "bars_png", "lambda_png", "plot_tradeoff", "plot_bars"}


def test_one_module_writes_every_report():
    """`layra report`, sweeps and the demo all go through layra.evaluation.writer: no other
    module names a report file or renders a report's CSV or plots."""
    home = {Path("evaluation/writer.py"), Path("evaluation/plots.py"), Path("evaluation/report.py")}
    found = []
    for path, tree in _trees():
        if path in home:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in REPORT_FILES:
                found.append(f"{path}:{node.lineno} names {node.value}")
            elif isinstance(node, ast.Name | ast.Attribute | ast.alias):
                name = getattr(node, "id", None) or getattr(node, "attr", None) or node.name
                if name in REPORT_WRITERS:
                    found.append(f"{path}:{node.lineno} uses {name}")
    assert found == []
