"""The package's architecture, checked: no import cycles, no upward imports, every module
importable on its own, and the layers of the README's layout section.

Layers, lowest first: ``_version``; ``core`` (specs, lowering, planning helpers, codegen,
toolchain); ``target`` (ISA rows, host detection); ``runtime`` (pipeline, cache, loader,
kernel base); the backends ``cpu`` and ``cuda`` (which never import each other);
``backends`` (the registry); the front ends (``api``, ``functional``, ``nn``, ``cli``,
``demo``); the package root. A module imports only from its own layer or lower ones.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Read from the source tree, not imported: a cycle must fail these tests, not their collection.
PACKAGE = Path(__file__).resolve().parent.parent / "convgen"
LAYERS = {"_version": 0, "core": 1, "target": 2, "runtime": 3, "cpu": 4, "cuda": 4,
          "backends": 5, "api": 6, "functional": 6, "nn": 6, "cli": 6, "demo": 6,
          "aot": 6, "tuning": 6, "__init__": 7}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The convgen modules an ``from X import a, b`` names (a submodule where it is one)."""
    if node.level:
        base = module.split(".")
        base = base[:len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("convgen"):
        return []
    known = modules()
    names = [f"{target}.{alias.name}" for alias in node.names]
    return [n if n in known else target for n in names]


def imports_of(name: str, path: Path) -> set[str]:
    """Every convgen module ``name`` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(_resolve(name, is_package, node))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("convgen"))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return top, LAYERS[top]


def test_every_module_has_a_layer():
    unknown = {m for m in modules() if layer_of(m)[0] not in LAYERS}
    assert not unknown


def test_no_import_cycles():
    edges = graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):   # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in edges:
        if node not in index:
            visit(node)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_upward_imports():
    wrong = []
    for module, targets in graph().items():
        top, rank = layer_of(module)
        for target in targets:
            their_top, their_rank = layer_of(target)
            if their_rank > rank or {top, their_top} == {"cpu", "cuda"}:
                wrong.append(f"{module} -> {target}")
            elif target == "convgen" and module != "convgen":
                wrong.append(f"{module} -> convgen (the package root)")
    assert wrong == []


def test_only_the_registry_names_cuda():
    """Outside cuda/ itself, only backends.py imports the CUDA backend."""
    importers = {m for m, targets in graph().items()
                 if any(t.startswith("convgen.cuda") for t in targets)
                 and not m.startswith("convgen.cuda")}
    assert importers == {"convgen.backends"}


# Imports each named module with no convgen module loaded: one interpreter per chunk, the
# package's modules dropped from sys.modules before each import (what a fresh interpreter
# would hold of convgen; numpy, cffi and jinja2 stay, as they are not what is checked). A
# fresh interpreter per module cost 0.3 s of start-up each, 30 s of the suite.
_IMPORT_ALONE = """
import importlib, json, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "convgen" or m.startswith("convgen.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append([name, traceback.format_exc()[-2000:]])
print(json.dumps(failed))
"""


@pytest.mark.parametrize("chunk", range(2))
def test_every_module_imports_alone(chunk):
    """Each module imported first, with none of the package's loaded before it (an upward
    import or a cycle shows up as an ImportError here even where the package's order hides
    it)."""
    names = [n for n in sorted(modules()) if not n.endswith("__main__")][chunk::2]
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *names], capture_output=True,
                          text=True, timeout=300, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert failed == [], "\n".join(f"{name}:\n{error}" for name, error in failed)
