"""The layers point one way (docs/architecture.md): the library (alignflow/, but alignflow.app)
never imports Prefect, `tasks` or `flows`, not even inside a function; its modules import each
other without a cycle; and each stage's Prefect task module only wraps the stage."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from alignflow.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATION = ("prefect", "tasks", "flows")


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


LIBRARY = {
    _module_name(path): path
    for path in sorted((REPO / "alignflow").rglob("*.py"))
    if not _module_name(path).startswith("alignflow.app")
}


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in `path`, function-level included, `if TYPE_CHECKING:`
    blocks (read by type checkers only) excluded."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.append((full if full in LIBRARY else node.module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _orchestration(name: str) -> bool:
    return name.split(".")[0] in ORCHESTRATION


def test_no_library_module_imports_orchestration_anywhere_in_its_code():
    offending = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in LIBRARY.values()
        for name, line in _imports(path)
        if _orchestration(name)
    ]
    assert not offending, "\n".join(offending)


def test_importing_every_library_module_loads_no_orchestration_module():
    """In a fresh interpreter (what a library user gets), module by module: the first one after
    which a prefect/tasks/flows module is loaded is named."""
    code = (
        "import importlib, json, sys\n"
        f"forbidden = {ORCHESTRATION!r}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(name)\n"
        "    loaded = sorted(m for m in sys.modules if m.split('.')[0] in forbidden)\n"
        "    if loaded:\n"
        "        print(json.dumps([name, loaded[:5]])); break\n"
        "else:\n"
        "    print(json.dumps(None))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(sorted(LIBRARY))],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) is None, done.stdout


def test_library_modules_import_each_other_without_a_cycle():
    graph = {
        name: {other for other, _ in _imports(path) if other in LIBRARY and other != name}
        for name, path in LIBRARY.items()
    }
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def walk(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append([*trail[trail.index(other) :], other])
            elif other not in state:
                walk(other, [*trail, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_each_stage_task_module_only_wraps_its_stage():
    """tasks/<stage>.py defines run_<stage> (the stage under its MLflow run and folder) and
    <stage>_task (the Prefect task); the stage's work is alignflow.stages.<stage>.run."""
    for stage in STAGES:
        tree = ast.parse((REPO / "tasks" / f"{stage}.py").read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert functions == {f"run_{stage}", f"{stage}_task"}, (stage, functions)
        assert (REPO / "alignflow" / "stages" / f"{stage}.py").is_file()
