"""The import graph of the whole tree: no cycle, no upward import between the layers of
``fpqvar_hw`` (docs/architecture.md), no import of ``sim/`` or ``tests/`` from the packages.

Every ``import``/``from ... import`` in every Python file counts, including those inside
functions (a lazy import still couples two modules).  Layers of ``fpqvar_hw``, bottom up:

0. base: ``fpqvar_hw.config``, ``fpqvar_hw.isa``, ``fpqvar_hw.packing``, ``fpqvar_hw.footprints``,
   ``fpqvar_hw.emit``, ``fpqvar_hw.cache`` (contracts, the emitter, shared cache entries)
1. ``fpqvar_hw.units`` (arithmetic)
2. ``fpqvar_hw.engines`` (engines, AXI, control, top)
3. ``fpqvar_hw.host`` (reference executor, compiler, driver, runners)
4. ``fpqvar_hw.flow`` (registry, synthesis, resources, throughput, reports, platforms)

A module may import its own layer and the layers below it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fpqvar_quant", "fpqvar_hw", "sim", "tests", "benchmarks", "scripts")
LAYERS = {"units": 1, "engines": 2, "host": 3, "flow": 4}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files() -> list[Path]:
    files = [ROOT / "build.py", ROOT / "conftest.py"]
    for pkg in PACKAGES:
        files += sorted((ROOT / pkg).rglob("*.py"))
    return [f for f in files if f.exists()]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules imported by ``path`` (absolute and relative, at any depth)."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()

    def resolve(name: str) -> None:
        # the longest known prefix: `from a.b import c` is module a.b.c when that exists
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            out.add(name)

    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                resolve(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                resolve(f"{mod}.{a.name}" if mod else a.name)
    out.discard(me)
    return out


def graph() -> dict[str, set[str]]:
    files = python_files()
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def layer(mod: str) -> int | None:
    parts = mod.split(".")
    if parts[0] != "fpqvar_hw" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1], 0)


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in g.items():
        lm = layer(mod)
        if lm is None:
            continue
        for d in deps:
            ld = layer(d)
            if ld is not None and ld > lm:
                bad.append(f"{mod} (layer {lm}) imports {d} (layer {ld})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_upward_import_in_fpqvar_hw():
    bad = upward_imports(graph())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_packages_do_not_import_tests_or_sim():
    g = graph()
    bad = [f"{m} imports {d}" for m, deps in g.items() if m.split(".")[0] in ("fpqvar_quant", "fpqvar_hw")
           for d in deps if d.split(".")[0] in ("sim", "tests", "benchmarks", "scripts", "build")]
    assert not bad, "\n".join(sorted(bad))


def test_checkers_catch_violations():
    """The checkers flag a planted cycle and a planted upward import (not vacuous)."""
    g = {"fpqvar_hw.units.a": {"fpqvar_hw.engines.b"}, "fpqvar_hw.engines.b": {"fpqvar_hw.units.a"},
         "fpqvar_hw.isa": set()}
    assert cycles(g) == [["fpqvar_hw.engines.b", "fpqvar_hw.units.a"]]
    assert upward_imports(g) == ["fpqvar_hw.units.a (layer 1) imports fpqvar_hw.engines.b (layer 2)"]


def test_graph_resolves_relative_and_lazy_imports(tmp_path):
    g = graph()
    # relative, module level: engines/top.py `from .control import Controller`
    assert "fpqvar_hw.engines.control" in g["fpqvar_hw.engines.top"]
    # relative into the base layer: `from .. import isa`
    assert "fpqvar_hw.isa" in g["fpqvar_hw.engines.control"]
    # lazy (inside a function): flow/asbuilt.py imports the top inside top_build()
    assert "fpqvar_hw.engines.top" in g["fpqvar_hw.flow.asbuilt"]
