"""The package keeps its shape: folders that are layers, imports that point one way, no import circles, and a core that
no Ray import can be reached from — every import counted, those inside functions too (an AST walk, docs/design.md)."""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "mtbert_ray"

#: The layers, lowest first: a module imports only from its own folder and the folders before it (``docs/design.md``).
LAYERS = ("common", "store", "config", "models", "data", "core", "distributed|deploy", "experiment", "tools", "study", "cli")
#: The modules at the package's top: its ``__init__`` and the documented ``python -m mtbert_ray.<name>`` entry points.
ENTRY_POINTS = {"__init__", "__main__", "run", "sweep", "analysis", "predict", "export", "serve", "device_check"}
#: Third-party imports the core may not reach (directly or through the project's modules).
FORBIDDEN_IN_CORE = ("ray",)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an imported name lives in (the longest module prefix of it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) that ``module`` imports anywhere in its file — at the top, in
    functions, under ``TYPE_CHECKING`` — and, for ``from package import name``, the submodule ``name`` when it is one."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    project, external = set(), set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            root = name.split(".")[0]
            if root == "mtbert_ray":
                target = _resolve(name)
                if target and target != module:
                    project.add(target)
            elif root:
                external.add(root)
    return project, external


GRAPH = {m: imports_of(m) for m in MODULES}


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of a module's folder (None: a top-level module, or a folder's ``__main__`` — an entry
    point like them: ``python -m mtbert_ray.data``)."""
    parts = module.split(".")
    if (len(parts) < 3 and not (PACKAGE / parts[-1]).is_dir()) or parts[-1] == "__main__":
        return None
    folder = parts[1]
    return next(i for i, names in enumerate(LAYERS) if folder in names.split("|"))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def closure(starts: Iterable[str]) -> set[str]:
    seen, todo = set(starts), list(starts)
    while todo:
        for target in GRAPH[todo.pop()][0]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_circles():
    found = circles({m: project for m, (project, _) in GRAPH.items()})
    assert not found, f"import circles (every import counted, those in functions too): {found}"


def test_imports_point_one_way():
    """A module imports from its own folder or a lower layer; ``distributed`` and ``deploy`` are siblings and never
    import each other."""
    wrong = []
    for module, (project, _) in GRAPH.items():
        own = layer_of(module)
        if own is None:
            continue
        for target in project:
            theirs = layer_of(target)
            if theirs is None and target != "mtbert_ray":
                wrong.append(f"{module} → {target} (a top-level entry point)")
            elif theirs is not None and (theirs > own or (theirs == own and target.split(".")[1] != module.split(".")[1])):
                wrong.append(f"{module} ({LAYERS[own]}) → {target} ({LAYERS[theirs]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_core_reaches_no_ray():
    """Every module the core's modules reach (the losses, objective, targets, collate, steps and loop) is torch- and
    transformers-only: no Ray, and nothing of the experiment, distributed, deployment or study layers."""
    core = [m for m in MODULES if m.startswith("mtbert_ray.core")]
    reached = closure(core)
    with_ray = sorted(m for m in reached if GRAPH[m][1] & set(FORBIDDEN_IN_CORE))
    assert not with_ray, f"modules the core reaches import Ray: {with_ray}"
    above = sorted(m for m in reached if layer_of(m) is None or layer_of(m) > LAYERS.index("core"))
    assert not above, f"the core reaches modules of higher layers: {above}"


def test_the_top_level_holds_only_entry_points():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top <= ENTRY_POINTS, f"modules at the package's top that are not entry points: {sorted(top - ENTRY_POINTS)}"
    for name in ENTRY_POINTS - {"__init__", "__main__"}:
        assert len((PACKAGE / f"{name}.py").read_text().splitlines()) <= 12, f"mtbert_ray/{name}.py is more than an entry point"


def test_every_folder_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == {name for names in LAYERS for name in names.split("|")}


@pytest.mark.parametrize("fixture", ["circle", "ray"])
def test_the_checks_catch_what_they_guard(fixture):
    """The walk itself: a circle of two modules and a Ray import inside a function are found."""
    if fixture == "circle":
        assert circles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    else:
        tree = ast.parse("def f():\n    import ray.train\n")
        assert any(isinstance(n, ast.Import) and n.names[0].name.startswith("ray") for n in ast.walk(tree))
        assert "ray" in imports_of("mtbert_ray.distributed.train")[1]


def test_the_cli_offers_every_registered_runtime():
    from mtbert_ray.cli.predict import RUNTIME_NAMES
    from mtbert_ray.deploy.runtimes import RUNTIMES

    assert set(RUNTIME_NAMES) == set(RUNTIMES)
