"""Layering: fpqvar_quant never imports amaranth or fpqvar_hw; the hardware
description in fpqvar_hw imports nothing from fpqvar_quant except the format
descriptors (fpqvar_quant.formats).  The host-side programs of fpqvar_hw are the
named exceptions in :data:`HOST_MODULES` (the reference executor runs the golden
model, the compiler reads the numpy-only package, the driver runs the host half
of the model); the compiler's torch-free import is checked in tests/test_compiler.py."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("amaranth", "fpqvar_hw")

PROBE = r"""
import importlib, json, pkgutil, sys
import fpqvar_quant
names = ["fpqvar_quant"]
failed = {}
for m in pkgutil.walk_packages(fpqvar_quant.__path__, "fpqvar_quant.", onerror=lambda n: None):
    if m.name.rsplit(".", 1)[-1] == "__main__":      # a CLI entry point runs on import
        continue
    names.append(m.name)
    try:
        importlib.import_module(m.name)
    except Exception as e:                    # reported, not hidden: see the assertion
        failed[m.name] = repr(e)
print(json.dumps({"imported": names, "failed": failed, "modules": sorted(sys.modules)}))
"""


def test_fpqvar_quant_imports_no_hardware_code():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert "fpqvar_quant.quantize" in data["imported"] and "fpqvar_quant.ght" in data["imported"]
    assert not data["failed"], f"submodules failed to import: {data['failed']}"
    bad = [m for m in data["modules"] if m.split(".")[0] in FORBIDDEN]
    assert not bad, f"fpqvar_quant pulled in hardware modules: {bad[:10]}"


#: names fpqvar_hw may take from the package itself (re-exported descriptors)
ALLOWED_FROM_PACKAGE = {"formats", "Format", "get_format", "FORMATS"}


def violations(path: Path) -> list[str]:
    """Imports in ``path`` that reach fpqvar_quant beyond its format descriptors."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
            bad += [m for m in mods if m.split(".")[0] == "fpqvar_quant"
                    and m != "fpqvar_quant.formats"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            m = node.module
            if m == "fpqvar_quant":
                bad += [f"{m}.{a.name}" for a in node.names if a.name not in ALLOWED_FROM_PACKAGE]
            elif m.startswith("fpqvar_quant.") and m != "fpqvar_quant.formats":
                bad.append(m)
    return bad


#: host-side fpqvar_hw modules and the fpqvar_quant modules (prefixes) each may use
HOST_MODULES = {
    "host/isa_sim.py": ("fpqvar_quant.golden",),
    "host/compiler.py": ("fpqvar_quant.golden", "fpqvar_quant.ptq.package", "fpqvar_quant.safeio"),
    "host/driver.py": ("fpqvar_quant.safeio", "fpqvar_quant.var", "fpqvar_quant.digits"),
    "host/package.py": ("fpqvar_quant",),
    "host/backends.py": ("fpqvar_quant.golden",),
    "host/run.py": ("fpqvar_quant.safeio", "fpqvar_quant.ptq.package"),
    # the command lines' one error path (run_cli)
    "host/uart_link.py": ("fpqvar_quant.safeio",),
    "flow/board.py": ("fpqvar_quant.safeio",),
}


def _allowed(path: Path, module: str) -> bool:
    prefixes = HOST_MODULES.get(path.relative_to(ROOT / "fpqvar_hw").as_posix(), ())
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_fpqvar_hw_uses_only_format_descriptors_from_fpqvar_quant():
    files = sorted((ROOT / "fpqvar_hw").rglob("*.py"))
    assert files, "fpqvar_hw has no Python files?"
    assert all((ROOT / "fpqvar_hw" / n).exists() for n in HOST_MODULES), "stale HOST_MODULES entry"
    bad = [f"{f.relative_to(ROOT)}: {m}" for f in files for m in violations(f)
           if not _allowed(f, m)]
    assert not bad, "fpqvar_hw may import only fpqvar_quant.formats:\n" + "\n".join(bad)


def test_static_checker_catches_violations(tmp_path):
    """The AST scan must flag forbidden imports (guards against a vacuous test)."""
    p = tmp_path / "x.py"
    p.write_text("from fpqvar_quant.quantize import quantize\nimport fpqvar_quant.ght\n"
                 "from fpqvar_quant import formats, dfq\nfrom fpqvar_quant.formats import get_format\n"
                 "import fpqvar_quant.formats\ndef f():\n    from fpqvar_quant.golden import x\n")
    assert violations(p) == ["fpqvar_quant.quantize", "fpqvar_quant.ght", "fpqvar_quant.dfq",
                             "fpqvar_quant.golden"]
