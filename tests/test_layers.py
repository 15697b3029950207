"""The package's layers point one way (docs/architecture.md): a module imports only from its
own layer or the layers below it, and no group of modules imports itself in a circle. Every
import counts, including those deferred into a function body."""

import ast
from itertools import pairwise
from pathlib import Path

import pytest

import safenet

SRC = Path(safenet.__file__).resolve().parent

#: bottom to top; a module may import from its own layer and any layer listed before it
LAYERS = [
    ("field", "options", "data"),
    ("nn",),
    ("plan",),
    ("channel",),
    ("crypto",),
    ("protocol",),
    ("checkpoint", "training", "evaluate", "plots", "secure", "benchmark"),
    ("approx", "demo"),
    ("cli", "__init__", "__main__"),
]


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"safenet.{module} is in no layer: add it to LAYERS in {__file__}")


def _imports(path: Path) -> set[str]:
    """The safenet modules ``path`` imports, as dotted names below ``safenet``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: safenet imports absolutely"
            names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.removeprefix("safenet.") for n in names if n.startswith("safenet.")}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name}
    return graph


def test_every_import_points_down_or_sideways():
    upward = [
        f"safenet.{a} imports safenet.{b}"
        for a, deps in _graph().items()
        for b in deps
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    cycles = [c for c in cycles if not _package_reexport(c)]
    assert not cycles, "\n".join(cycles)


def _package_reexport(cycle: str) -> bool:
    mods = cycle.split(" -> ")
    return any(b.startswith(a + ".") or a.startswith(b + ".") for a, b in pairwise(mods))


@pytest.mark.parametrize("module", ["channel", "crypto", "plan"])
def test_lower_layers_stay_below_the_protocol(module):
    graph = _graph()
    reached = {m for name, deps in graph.items() if name.split(".")[0] == module for m in deps}
    assert not {m for m in reached if m.split(".")[0] in ("protocol", "secure", "cli")}
