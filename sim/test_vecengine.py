"""Co-simulation of the vector engine (fpqvar_hw.engines.vecengine.VectorEngine) on Verilator:
VEC instructions from random shapes/strides of every sub-op, an attention sequence
(QK^T -> softmax -> PV against the FP16 KV cache; on the KV6 build also against the
e2m3fn cache written by KVQ6), errors and abort; DRAM served by
sim.dma_model with random latency, gaps and backpressure; every result compared bit
for bit with the golden model (see sim/tb_vecengine.py).

All tests are in the slow tier (``--run-slow``, which CI runs), because the Verilator
build (C = 128, max_kv = 64, with the KV6 hardware, ``kv6=True``) takes minutes; one
test runs on it: random instructions, an attention sequence, errors and abort, the KV6
instructions and the KV6 attention sequence.  The engine without
the KV6 hardware (the preset's) is co-simulated at real widths in
sim/test_vecengine_wide.py and inside the top (sim/test_top.py, sim/test_tiny_image.py).
The default tier covers the engine's units and ports in the Amaranth simulator
(tests/test_hw_vecengine.py).  The real widths
(C = 1024 LayerNorm rows, SOFTMAX rows and attention over 680 keys) are
co-simulated on a second build in sim/test_vecengine_wide.py.
"""
from __future__ import annotations

import pytest

from fpqvar_hw.engines.vecengine import VectorEngine
from sim.runner import run_cocotb

SMALL = dict(C=128, max_kv=64, P=8, att=(2, 4), sm=3)


def _run(cfg: dict, *, seed: int, n_random: int, max_elems: int, attention: list[int],
         testcase: str | None = None) -> None:
    """Build ``VectorEngine(**cfg)`` (``cfg`` may set ``kv6``) and run sim.tb_vecengine."""
    suffix = "-kv6" if cfg.get("kv6") else ""
    run_cocotb(VectorEngine(**cfg), name=f"vecengine-c{cfg['C']}-kv{cfg['max_kv']}{suffix}",
               test_module="sim.tb_vecengine", seed=seed, testcase=testcase,
               params=dict(seed=seed, n_random=n_random, max_elems=max_elems,
                           attention=attention, **cfg))


@pytest.mark.slow   # the Verilator build of the engine takes minutes
@pytest.mark.parametrize("seed", [2])
def test_vecengine_cosim(seed):
    """``VectorEngine(C=128, max_kv=64, kv6=True)``: 24 random instructions of every sub-op
    (KVQ6 and FDOT with B_KV6 included) of up to 640 elements, the FP16 and the KV6
    attention sequences (KVQ6 k, v -> QK^T -> SOFTMAX -> PV; 2 heads, 2 queries, 48 cached
    keys), the attention array's FDOTs, field errors (KV6 ones included) and aborts (one in
    a KVQ6), all against isa_sim bit for bit.  One run: second seeds on the same build
    (seed 1; seed 3 with 16 instructions and 1 query x 24 keys) added one to two minutes
    each and no case this one lacks (the second dropped 2026-12-06 for the CI budget)."""
    _run(dict(SMALL, kv6=True), seed=seed, n_random=24, max_elems=640, attention=[2, 2, 48])
