"""Co-simulation of the vector engine at the real widths of the d16 model on Verilator:
``VectorEngine(C=1024, max_kv=680, P=8)``, DRAM served by sim.dma_model with random
latency, gaps and backpressure, every instruction compared byte for byte (the whole
DRAM image) with the instruction-level reference ``fpqvar_hw.host.isa_sim.vec`` (golden
model); see sim/tb_vecengine_wide.py for the cases:

* LNMOD over rows of C = 1024 (scales 2^+-20, a large common offset, magnitudes
  2^+-40 within a row, outliers, a constant row, an overflowing variance, subnormals);
* SOFTMAX rows of 680, 677 (not a multiple of P = 8), 1 and 9;
* attention QK^T -> SOFTMAX -> PV over 680 cached FP16 keys (1 head, 1 query; p.V also
  on V in row order for 8 output dimensions, the element path's 680-long reductions) and
  over 6 keys for 35 queries of 2 heads (edge tiles both ways on the 32 x 4 attention
  array), also equal to ``golden.attention`` bit for bit;
* the row-length limits: LNMOD rows of 1023 and 1025 and a SOFTMAX row of 681 are
  refused (error 5) without touching DRAM.

Slow tier (``--run-slow``): one Verilator build of the engine (a few minutes, cached
under build/sim/vecengine-c1024-kv680-*) and one simulator run, the attention
sequence (about 50k cycles) being most of it.  The small build with random
instructions of every sub-op is sim/test_vecengine.py.
"""
from __future__ import annotations

import pytest

from fpqvar_hw.engines.vecengine import ATT_LANES, VectorEngine
from sim.runner import run_cocotb

WIDE = dict(C=1024, max_kv=680, P=8,     # d16: C = 64 x 16, 680 tokens at 256 px
            att=ATT_LANES,              # the preset's attention array
            sm=2)                       # rows of 680 on a 2-lane softmax array (the
                                        # preset's 3 lanes: sim/test_vecengine.py, CI budget)


@pytest.mark.slow   # Verilator build of the engine + ~50k simulated cycles
@pytest.mark.parametrize("seed", [7])
def test_vecengine_real_widths(seed):
    run_cocotb(VectorEngine(**WIDE), name=f"vecengine-c{WIDE['C']}-kv{WIDE['max_kv']}",
               test_module="sim.tb_vecengine_wide", seed=seed,
               params=dict(seed=seed, attention=[[1, 1, WIDE["max_kv"], 8], [2, 35, 6, 0]], **WIDE))
