"""Co-simulation: every code pair of every multiplier (pair x variant) on the
emitted Verilog, against the golden model (sim/tb_multiplier.py)."""
from __future__ import annotations

import pytest

from fpqvar_hw.units.multiplier import Multiplier, MulPair, MulVariant
from sim.runner import run_cocotb
from tests.test_hw_multiplier import COMBOS

# The small tables run in the default tier; the 64x64 and int8 (256x256) sweeps are slow.
FAST = {MulPair.E2M1_E2M1, MulPair.E1M2_E2M1, MulPair.INT4_INT4}


@pytest.mark.parametrize("pair,variant", [
    pytest.param(p, v, marks=() if p in FAST else pytest.mark.slow) for p, v in COMBOS],
    ids=lambda v: v.name)
def test_multiplier_exhaustive(pair, variant):
    dut = Multiplier(pair=pair, variant=variant)
    run_cocotb(dut, name=f"mul-{pair.name.lower()}-{variant.value}", test_module="sim.tb_multiplier",
               params={"pair": list(pair.value), "a_bits": pair.fmt_a.bits,
                       "b_bits": pair.fmt_b.bits, "width": pair.width})
