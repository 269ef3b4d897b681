"""rl_lib stays free of import cycles (a lower module importing a higher one), lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import rl_lib

ROOT = Path(rl_lib.__file__).parent


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("rl_lib", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rl_lib"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            # A package's __init__ importing its own submodules is not a cycle.
            graph[module] |= {
                t for t in targets if t in modules and t != module and not t.startswith(module + ".")
            }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_rl_lib_has_no_import_cycle():
    graph = import_graph()
    assert {"rl_lib.argtypes", "rl_lib.errors"} <= graph["rl_lib.cli"]  # the graph sees real imports
    assert cycles(graph) == []


def test_the_command_line_and_the_kaggle_commands_load_no_torch():
    """``rl-lib --help`` builds every sub-command's parser, and the kaggle commands need no training
    code: neither pulls torch (about 2 s) or Optuna; ``import rl_lib`` pulls not even gymnasium."""
    import subprocess
    import sys

    heavy = ("torch", "optuna", "stable_baselines3")
    code = (
        "import sys\n"
        "import rl_lib\n"
        "assert 'gymnasium' not in sys.modules\n"
        "from rl_lib.cli import build_parser\n"
        "build_parser()\n"
        "from rl_lib.kaggle import code_dataset, kernel, remote, session\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
