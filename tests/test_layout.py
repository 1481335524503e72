"""Source-level promises of docs/architecture.md: functions fit on a screen, only
layra.rundir names the files of a run directory, only layra.evaluation.writer writes
reports, and layra's modules import each other without cycles."""

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


def _module_name(path: Path) -> str:
    parts = ["layra", *path.with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, package: str, modules: set[str], module_level: bool):
    """The layra modules ``tree`` imports; module-level only (what runs on import) or all,
    function bodies included. ``if TYPE_CHECKING:`` blocks never run, so never count."""
    out: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        if module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            # `from pkg import sub` imports the submodule; `from mod import name`, the module.
            out |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            }
        todo += ast.iter_child_nodes(node)
    return out & modules


def _import_graph(module_level: bool) -> dict[str, set[str]]:
    trees = {_module_name(path): (path, tree) for path, tree in _trees()}
    modules = set(trees)
    graph = {}
    for name, (path, tree) in trees.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(tree, package, modules, module_level) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every module that can reach itself again, with the modules on its way (sorted)."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return seen

    reachable = {m: reach(m) for m in graph}
    groups = {
        tuple(sorted(n for n in reachable[m] if m in reachable[n]))
        for m in graph
        if m in reachable[m]
    }
    return sorted(list(g) for g in groups)


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


def test_modules_import_each_other_without_cycles():
    # What runs on import: a cycle there works or fails by which module is imported first.
    assert _cycles(_import_graph(module_level=True)) == []


def test_fixed_cycles_stay_gone_even_through_function_imports():
    # These once imported each other inside functions. The model facts memory needs now
    # live in layra.models, and cli asks each command for its older spellings by name.
    graph = _import_graph(module_level=False)
    for importer, imported in [
        ("layra.memory", "layra.train"),
        ("layra.cli", "layra.commands.lens"),
    ]:
        assert imported not in graph[importer], f"{importer} imports {imported}"


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"], ["e"]]
