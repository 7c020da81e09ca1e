"""Co-simulation of the vector engine (fpqvar_hw.vecengine.VectorEngine) on Verilator:
VEC instructions from random shapes/strides of every sub-op, an attention sequence
(QK^T -> softmax -> PV against the FP16 KV cache), errors and abort; DRAM served by
sim.dma_model with random latency, gaps and backpressure; every result compared bit
for bit with the golden model (see sim/tb_vecengine.py).

Default tier: a small build (C = 128, max_kv = 64).  Slow tier (``--run-slow``): more
random instructions on the same build.
"""
from __future__ import annotations

import pytest

from fpqvar_hw.vecengine import VectorEngine
from sim.runner import run_cocotb

SMALL = dict(C=128, max_kv=64, P=8)


def _run(cfg: dict, *, seed: int, n_random: int, max_elems: int, attention: list[int],
         testcase: str | None = None) -> None:
    run_cocotb(VectorEngine(**cfg), name=f"vecengine-c{cfg['C']}-kv{cfg['max_kv']}",
               test_module="sim.tb_vecengine", seed=seed, testcase=testcase,
               params=dict(seed=seed, n_random=n_random, max_elems=max_elems,
                           attention=attention, **cfg))


@pytest.mark.parametrize("seed", [1])
def test_vecengine_cosim(seed):
    _run(SMALL, seed=seed, n_random=16, max_elems=400, attention=[2, 3, 40])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_vecengine_cosim_sweep(seed):
    _run(SMALL, seed=seed, n_random=80, max_elems=1500, attention=[3, 4, 64],
         testcase="random_instructions,attention_sequence")
