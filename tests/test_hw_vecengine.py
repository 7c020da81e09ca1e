"""Amaranth-simulator tests of the vector engine's units (fpqvar_hw.units.vector) against the golden
model: FDot (rows ended by ``last``), Residual.  Softmax rows of runtime lengths (mixed,
more rows than buffers) run on Verilator, sim/test_vector.py::test_softmax_rows_verilator;
one Softmax row in this simulator is sim/test_vector.py::test_softmax_amaranth.

Bit-exact comparisons (``==`` on FP32 bit patterns), random input gaps and output
backpressure from the seed in the test id.  The whole engine (DMA, address generation,
errors, its KV6 hardware and error 5 for KV6 operations on a build without it) is
co-simulated in sim/test_vecengine.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpqvar_hw.units.vector import FDot, Residual, Softmax
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v
from fpqvar_quant.golden.attention import tree_last


def stream_unit(dut, words: list[int], n_out: int, seed: int, *, max_cycles: int) -> np.ndarray:
    """Drive packed input payloads into ``dut.i`` (random gaps), collect ``n_out`` payloads of
    ``dut.o`` (random backpressure); fail if fewer arrive within ``max_cycles``."""
    rng = np.random.default_rng(seed)
    out: list[int] = []

    async def source(ctx):
        for w in words:
            while rng.random() < 0.25:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), w)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        rng2 = np.random.default_rng(seed + 1)
        while len(out) < n_out:
            ctx.set(dut.o.ready, int(rng2.random() < 0.7))
            await ctx.tick()

    async def monitor(ctx):
        async for _clk, _rst, valid, ready, payload in ctx.tick().sample(
                dut.o.valid, dut.o.ready, dut.o.payload.as_value()):
            if valid and ready:
                out.append(payload)
            if len(out) >= n_out:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.add_process(monitor)
    sim.run_until(1e-6 * max_cycles)
    assert len(out) == n_out, f"got {len(out)} of {n_out} results in {max_cycles} cycles"
    return np.array(out, dtype=np.uint64)


def check(got, want, what: str) -> None:
    want = np.asarray(want, np.uint64)
    bad = np.nonzero(got != want)[0]
    assert len(bad) == 0, (f"{what}: {len(bad)} of {len(want)} differ; first: " + "; ".join(
        f"#{i} want {int(want[i]):#010x} got {int(got[i]):#010x}" for i in bad[:5]))


def u32(a) -> list[int]:
    return [int(x) for x in np.asarray(a, np.float32).view(np.uint32).reshape(-1)]


@pytest.mark.parametrize("seed", [11])
def test_fdot_rows(seed):
    """Rows of 1..70 elements (not multiples of P: padding), typical and wide-range values,
    a cancelling row, an Inf*0 (NaN) row, rows back to back."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 7, 8, 9, 64, 70, 3, 16, 1]
    rows = []
    for i, n in enumerate(lengths):
        a = (rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(np.float32)
        b = (rng.standard_normal(n) * rng.uniform(0.01, 100)).astype(np.float32)
        if i == 3:
            b = -a[::-1].copy(); a = a[::-1].copy(); b = -a   # noqa: E702  exact cancellation
        if i == 7:
            a[1], b[1] = np.inf, 0.0
        rows.append((a, b))
    words = []
    for a, b in rows:
        for j, (x, y) in enumerate(zip(u32(a), u32(b))):
            words.append(x | (y << 32) | (int(j == len(a) - 1) << 64))
    want = [int(g.canon(tree_last(v.NUMPY.mul(a, b), 8, v.NUMPY))) for a, b in rows]
    got = stream_unit(FDot(P=8), words, len(rows), seed, max_cycles=6 * len(words) + 400)
    check(got, want, "fdot")


@pytest.mark.parametrize("seed", [12])
def test_residual(seed):
    rng = np.random.default_rng(seed)
    x, gm, y = (rng.standard_normal((3, 200)) * rng.uniform(0.01, 1e4, (3, 1))).astype(np.float32)
    gm[:5] = [0.0, -0.0, np.inf, np.nan, 1e-40]
    words = [a | (b << 32) | (c << 64) for a, b, c in zip(u32(x), u32(gm), u32(y))]
    got = stream_unit(Residual(), words, len(words), seed, max_cycles=4 * len(words) + 100)
    check(got, g.canon(v.gamma_residual(x, gm, y)), "residual")


def test_bad_parameters():
    with pytest.raises(ValueError, match="P must be a power of two"):
        FDot(P=6)
    with pytest.raises(ValueError, match="length"):
        Softmax(length=0)


def test_vecengine_interface():
    """The engine interface of docs/top.md (what the top connects by name)."""
    from amaranth.hdl import Shape
    from amaranth.lib import wiring

    from fpqvar_hw.engines import axi

    from fpqvar_hw import isa
    from fpqvar_hw.engines.vecengine import VectorEngine

    members = VectorEngine.engine_signature().members    # a class-level fact: nothing built
    assert members["cmd"].signature.members["payload"].shape == isa.INSTR_LAYOUT
    for name, width in (("busy", 1), ("error", 4), ("abort", 1), ("fine", 1),
                        ("dram_base", 32), ("dram_size", 32)):
        assert Shape.cast(members[name].shape).width == width, name
    for name in ("rd_a", "rd_b", "rd_c"):
        assert members[name].flow == wiring.Out and isinstance(members[name].signature, axi.ReadClient)
    assert members["wr"].flow == wiring.Out and isinstance(members["wr"].signature, axi.WriteClient)
    with pytest.raises(ValueError, match="multiple of P"):
        VectorEngine(C=100)
    with pytest.raises(ValueError, match="rd_depth"):
        VectorEngine(rd_depth=8)


# The whole engine (KV6 hardware; KVQ6 and FDOT with B_KV6 refused with error 5 by a
# build without it, the next instruction still correct) runs on Verilator in
# sim/test_vecengine.py: in this simulator one small engine run took one to five minutes.
