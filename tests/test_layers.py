"""The import graph of the whole tree: no cycle, no upward import between the layers of
``fpqvar_hw`` (docs/architecture.md), no import of ``sim/`` or ``tests/`` from the packages,
and no private name (``_name``) of one project module used by another: neither imported
(``from m import _name``) nor reached as an attribute of the module (``m._name``).  A private
name is a module's own business; what other modules need is public API.  Attributes of
objects (``self._x``, an instance's ``obj._x``) are the class's business and not checked here.

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


def from_module(node: ast.ImportFrom, pkg: str) -> str:
    """The absolute module a ``from ... import`` in package ``pkg`` reads from."""
    if not node.level:
        return node.module or ""
    base = pkg.split(".") if pkg else []
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


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
            mod = from_module(node, pkg)
            for a in node.names:
                resolve(f"{mod}.{a.name}" if mod else a.name)
    out.discard(me)
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, known: set[str], source: str | None = None) -> list[str]:
    """``_name``s of other project modules that ``path`` imports or reads as module
    attributes (``import a.b as m; m._x``, ``from a import b; b._x``, ``a.b._x``)."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    modules: dict[str, str] = {}      # local name -> project module it is bound to
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    if a.name in known:
                        modules[a.asname] = a.name
                else:                   # `import a.b` binds `a`; `a.b._x` is resolved below
                    modules[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            mod = from_module(node, pkg)
            for a in node.names:
                full = f"{mod}.{a.name}" if mod else a.name
                if full in known:
                    modules[a.asname or a.name] = full
                if _private(a.name) and (mod in known or full in known) and mod != me:
                    out.append(f"{where}:{node.lineno}: from {mod} import {a.name}")
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        parts, v = [], node.value
        while isinstance(v, ast.Attribute):
            parts.append(v.attr)
            v = v.value
        if not isinstance(v, ast.Name) or v.id not in modules:
            continue
        target = ".".join([modules[v.id], *reversed(parts)])
        if target in known and target != me:
            out.append(f"{where}:{node.lineno}: {target}.{node.attr}")
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
    # lazy (inside a function): flow/topbuild.py imports the top inside top_build()
    assert "fpqvar_hw.engines.top" in g["fpqvar_hw.flow.topbuild"]


#: the size limit of a host or build module (issue 17); the engines' and units' limits
#: come with the accelerator-v2 rewrite
MAX_LINES = 800


def test_host_and_build_modules_are_small():
    files = [*(ROOT / "fpqvar_hw").glob("*.py"), *(ROOT / "fpqvar_hw" / "host").glob("*.py"),
             *(ROOT / "fpqvar_hw" / "flow").glob("*.py")]
    assert len(files) > 20
    big = [f"{f.relative_to(ROOT)}: {n} lines" for f in sorted(files)
           if (n := len(f.read_text().splitlines())) > MAX_LINES]
    assert not big, f"over {MAX_LINES} lines (split along a seam):\n" + "\n".join(big)


def test_no_private_name_used_across_modules():
    files = python_files()
    known = {module_name(f) for f in files}
    bad = [u for f in files for u in private_uses(f, known)]
    assert not bad, "private names used from another module:\n" + "\n".join(sorted(bad))


def test_private_checker_catches_violations():
    """Planted uses are flagged (absolute, relative, module attribute, aliased, dotted);
    the module's own private names and instance attributes are not."""
    known = {"fpqvar_quant", "fpqvar_quant.quantize", "fpqvar_quant.dfq", "fpqvar_hw",
             "fpqvar_hw.units", "fpqvar_hw.units.vector"}
    planted = ROOT / "fpqvar_quant" / "dfq.py"
    src = (
        "import fpqvar_quant.quantize\n"
        "import fpqvar_quant.quantize as qz\n"
        "from fpqvar_quant import quantize\n"
        "from . import quantize as q2\n"
        "from .quantize import _codes_chunk, public_name\n"
        "from fpqvar_hw.units.vector import _private_helper\n"
        "from fpqvar_hw.units import vector\n"
        "a = qz._round_chunk\n"
        "b = quantize._round_chunk\n"
        "c = fpqvar_quant.quantize._round_chunk\n"
        "d = vector._check_row_params\n"
        "e = q2._x\n"
        "def _mine():\n"
        "    return self._state, _mine, obj._field, qz.__name__\n"
    )
    found = private_uses(planted, known, src)
    assert found == [
        "fpqvar_quant/dfq.py:5: from fpqvar_quant.quantize import _codes_chunk",
        "fpqvar_quant/dfq.py:6: from fpqvar_hw.units.vector import _private_helper",
        "fpqvar_quant/dfq.py:8: fpqvar_quant.quantize._round_chunk",
        "fpqvar_quant/dfq.py:9: fpqvar_quant.quantize._round_chunk",
        "fpqvar_quant/dfq.py:10: fpqvar_quant.quantize._round_chunk",
        "fpqvar_quant/dfq.py:11: fpqvar_hw.units.vector._check_row_params",
        "fpqvar_quant/dfq.py:12: fpqvar_quant.quantize._x",
    ], found
    # the module's own private names are its business
    assert private_uses(ROOT / "fpqvar_quant" / "quantize.py", known,
                        "import fpqvar_quant.quantize as me\nx = me._codes_chunk\n") == []
