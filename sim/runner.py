"""pytest side of the co-simulation runner (:mod:`fpqvar_hw.host.cosim`): the same
functions, with a failed co-simulation reported as a pytest failure (no traceback).

Usage from a pytest test::

    from sim.runner import run_cocotb
    run_cocotb(MyUnit(lanes=16), name="myunit-l16", test_module="sim.tb_myunit",
               params={"vectors": str(path), "seed": 3})

See :mod:`fpqvar_hw.host.cosim` for the build folders, simulators and parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fpqvar_hw.host import cosim
from fpqvar_hw.host.cosim import BUILD_ROOT, CosimError, elaborate_verilog, simulator

REPO = Path(__file__).resolve().parent.parent

__all__ = ["run_cocotb", "elaborate_verilog", "simulator", "BUILD_ROOT", "REPO"]


def run_cocotb(component: Any, **kwargs: Any) -> Path:
    """:func:`fpqvar_hw.host.cosim.run_cocotb`; a :class:`~fpqvar_hw.host.cosim.CosimError`
    becomes ``pytest.fail`` with the failing cocotb tests and the log path."""
    import pytest

    try:
        return cosim.run_cocotb(component, **kwargs)
    except CosimError as e:
        pytest.fail(str(e))
