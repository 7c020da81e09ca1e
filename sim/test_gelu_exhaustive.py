"""Exhaustive co-simulation of the GELU path of the vector unit.

Every one of the 65,536 FP16 bit patterns (finite, subnormal, +-0, +-Inf and
every NaN payload) enters ``Elementwise(Func.GELU, src=FP16, dst=FP32)``: the
unit converts it exactly to FP32, runs the GELU sequence of
``docs/numerics.md`` section 4 and returns the FP32 result unrounded to FP16,
so every FP32 bit of ``golden.vector.gelu`` is checked (NaN results canonical).
The emitted Verilog runs in cocotb through the shared harness (``sim.runner``,
``sim.tb_fpu``: random input gaps and output backpressure, every beat compared
with ``==``, nothing lost or duplicated).

The exhaustive exp path (FP16 in and out) is in ``sim/test_vector.py``.
Runs on Verilator (default ``SIM``): one lane, 65,536 beats; the C++ build of the
78-stage pipeline takes about 2.5 CPU-minutes (cached under ``build/sim/``), the
simulation about 80 s.
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.units.fpu import FP16, FP32
from fpqvar_hw.units.vector import Elementwise, Func
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v
from sim.runner import BUILD_ROOT, run_cocotb

LANES = 1


def gelu_fp16_to_fp32(x_bits: np.ndarray) -> np.ndarray:
    """Golden FP32 bits of GELU of FP16 inputs (exact FP16 -> FP32, canonical NaN)."""
    x = g.to_float(g.convert(x_bits, "fp16", "fp32"), "fp32")
    return g.canon(v.gelu(x), "fp32")


def test_golden_vectors_cover_every_class():
    """The vector set is all 2^16 encodings and its results include every kind of
    FP32 outcome the path can produce (so the co-simulation below checks them all)."""
    x = np.arange(1 << 16, dtype=np.uint16)
    y = gelu_fp16_to_fp32(x).view(np.float32)
    assert len(np.unique(x)) == 1 << 16
    assert np.isnan(y).sum() == 1 + 2 * 1023   # -Inf and every NaN input pattern (2 x 1023)
    assert np.isposinf(y).sum() == 1           # +Inf -> +Inf
    assert (y == 0).sum() > 0 and np.signbit(y[y == 0]).any()   # -0 in the negative tail
    assert y[0x7BFF] == np.float32(65504.0)   # largest FP16: GELU(x) = x exactly


@pytest.mark.slow
def test_gelu_fp16_in_fp32_out_exhaustive_cocotb():
    x = np.arange(1 << 16, dtype=np.uint16)
    path = BUILD_ROOT / "vectors" / "elementwise-gelu-fp16-fp32-all.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=gelu_fp16_to_fp32(x))
    seed = 61
    run_cocotb(Elementwise(Func.GELU, lanes=LANES, src=FP16, dst=FP32),
               name=f"elementwise-gelu-fp16-fp32-l{LANES}", test_module="sim.tb_fpu", seed=seed,
               params=dict(vectors=str(path), lanes=LANES, seed=seed, idle=0.05, backpressure=0.1,
                           inputs=[["x", 16]], outputs=[["y", 32]]))
