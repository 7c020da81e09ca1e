"""Import a repository script (``scripts/*.py``, ``benchmarks/*.py``) as a module in tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str) -> ModuleType:
    """The module of ``REPO / relpath`` under ``name``, registered in ``sys.modules``
    (dataclasses defined in it resolve their module by name)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod
