"""Multipliers (fpqvar_hw.units.multiplier) in the Amaranth simulator: every code pair of
every (pair, variant), bit-exact against the golden model fpqvar_quant.golden.multiplier.

int8 x int8 (65,536 pairs) runs exhaustively in cocotb (sim/test_multiplier.py);
here it gets a seeded sample plus the corner codes.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.sim import Simulator

from fpqvar_hw.units.multiplier import (Multiplier, MulPair, MulVariant, check_variant,
                                         magnitude_table)
from fpqvar_quant.golden.multiplier import multiply, product_spec

COMBOS = [(p, v) for p in MulPair for v in MulVariant
          if not (p is MulPair.INT8_INT8 and v is MulVariant.LUT)
          and not (not p.is_float and v is MulVariant.DECOMPOSED)]


def code_pairs(pair: MulPair, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    na, nb = 1 << pair.fmt_a.bits, 1 << pair.fmt_b.bits
    if na * nb <= 4096:
        a, b = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
        return a.ravel(), b.ravel()
    rng = np.random.default_rng(seed)
    corners = np.array([0, 1, na // 2 - 1, na // 2, na // 2 + 1, na - 1])
    a, b = np.meshgrid(corners, corners, indexing="ij")
    return (np.concatenate([a.ravel(), rng.integers(0, na, 2000)]),
            np.concatenate([b.ravel(), rng.integers(0, nb, 2000)]))


def simulate(dut: Multiplier, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a), dtype=np.int64)
    av, bv = Value_of(dut.a), Value_of(dut.b)

    async def tb(ctx):
        for k in range(len(a)):
            ctx.set(av, int(a[k]))
            ctx.set(bv, int(b[k]))
            out[k] = ctx.get(dut.p)

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    return out


def Value_of(port):
    """Raw bits of a port (a layout view or a plain signal), set as an unsigned code."""
    return port.as_value().as_unsigned() if hasattr(port, "as_value") else port.as_unsigned()


@pytest.mark.parametrize("pair,variant", COMBOS, ids=lambda v: v.name)
def test_every_code_pair(pair, variant):
    dut = Multiplier(pair=pair, variant=variant)
    a, b = code_pairs(pair, seed=1)
    got = simulate(dut, a, b)
    want = multiply(pair.value[0], pair.value[1], a, b)
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(int(a[k]), int(b[k]), int(want[k]), int(got[k])) for k in bad[:8]]


@pytest.mark.parametrize("pair", list(MulPair), ids=lambda p: p.name)
def test_widths_match_golden(pair):
    spec = product_spec(*pair.value)
    assert (pair.lsb_exp, pair.max_abs, pair.width) == (spec.lsb_exp, spec.max_abs, spec.width)
    dut = Multiplier(pair=pair, variant=MulVariant.DSP)
    assert dut.p.shape().width == spec.width
    Fragment.get(dut, None)      # elaborated (no unused component left behind)


def test_bad_parameters():
    with pytest.raises(ValueError, match="65,536"):
        check_variant(MulPair.INT8_INT8, MulVariant.LUT)
    with pytest.raises(ValueError, match="float pairs"):
        check_variant(MulPair.INT4_INT4, MulVariant.DECOMPOSED)
    with pytest.raises(TypeError, match="MulPair"):
        check_variant("e2m1fn", MulVariant.LUT)
    with pytest.raises(TypeError, match="MulVariant"):
        check_variant(MulPair.E2M1_E2M1, "lut")


def test_lut_table_is_magnitude_product():
    # regression guard for the table index order (mag_a in the low bits)
    t = magnitude_table(MulPair.E2M1_E2M1)      # the table Multiplier builds
    assert t[7 | (7 << 3)] == 144 and t[1 | (7 << 3)] == 12 and t[7] == 0
