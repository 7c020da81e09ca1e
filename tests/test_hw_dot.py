"""Group dot-product unit (fpqvar_hw.dot) in the Amaranth simulator against the golden model.

Fast tier: small lane counts, random idle input and output backpressure; the
10^4-group sweeps run in cocotb/Verilator (sim/test_dot.py).
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpqvar_hw.dot import GroupDot
from fpqvar_hw.multiplier import MulPair, MulVariant
from fpqvar_quant.golden.dot import DFQ
from tests.dot_vectors import expected, make_vectors, pack_beats


def run_dot(dut: GroupDot, beats: list[int], n_out: int, seed: int,
            idle: float = 0.3, stall: float = 0.3) -> tuple[list[int], int]:
    """Stream ``beats`` through ``dut`` with random gaps/backpressure; return (outputs, cycles)."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    cycles = [0]

    async def source(ctx):
        for b in beats:
            while rng.random() < idle:
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.payload.as_value(), b)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        srng = np.random.default_rng(seed + 1)
        while len(out) < n_out:
            ready = int(srng.random() >= stall)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload.as_value())
            cycles[0] += 1
            if valid and ready:
                out.append(int(payload))
            assert cycles[0] < 100 * (len(beats) + 50), "dot unit hung"
        # nothing extra arrives afterwards
        ctx.set(dut.o.ready, 1)
        for _ in range(dut.latency + 4):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "the unit produced more results than dot products"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return out, cycles[0]


def check(out, exp):
    exp = [int(e) for e in np.asarray(exp).ravel()]
    bad = [(k, f"{e:#010x}", f"{o:#010x}") for k, (e, o) in enumerate(zip(exp, out)) if e != o]
    assert len(out) == len(exp), f"{len(out)} results for {len(exp)} dot products"
    assert not bad, f"{len(bad)} mismatches (index, expected, got): {bad[:8]}"


CASES = [
    # pair, dfq, group_size, lanes, variant
    (MulPair.E2M1_E2M1, False, 16, 4, MulVariant.LUT),
    (MulPair.E2M1_E2M1, True, 16, 8, MulVariant.LUT),
    (MulPair.E2M3_E2M3, False, 8, 8, MulVariant.DECOMPOSED),
    (MulPair.E3M2_E2M3, False, 8, 2, MulVariant.DSP),
    (MulPair.INT4_INT4, False, 8, 4, MulVariant.LUT),
    (MulPair.INT8_INT8, False, 4, 1, MulVariant.DSP),
    (MulPair.E3M2_E2M3, False, 8, 8, MulVariant.LUT),   # ones' complement tree, 1 beat/group
    (MulPair.E2M1_E2M1, False, 4, 1, MulVariant.LUT),   # single lane: no adder, carry kept
]


@pytest.mark.parametrize("pair,dfq,group_size,lanes,variant,seed",
                         [c + (s,) for c, s in zip(CASES, range(10, 10 + len(CASES)))],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_dot_random(pair, dfq, group_size, lanes, variant, seed):
    dut = GroupDot(pair=pair, dfq=dfq, group_size=group_size, lanes=lanes, variant=variant)
    a_fmt = DFQ if dfq else pair.value[0]
    vec = make_vectors(a_fmt, pair.value[1], n_dots=12, groups_per_dot=3,
                       group_size=group_size, seed=seed)
    out, _ = run_dot(dut, pack_beats(dut.beat_layout, vec, lanes, group_size), 12, seed)
    check(out, expected(vec, group_size))


@pytest.mark.parametrize("lanes,dfq", [(8, False), (2, False), (8, True)])
def test_latency_attribute(lanes, dfq):
    """Cycles from the final beat's handshake to o.valid equal ``dut.latency`` (no stalls)."""
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=8, lanes=lanes, dfq=dfq)
    vec = make_vectors(DFQ if dfq else "e2m1fn", "e2m1fn", n_dots=1, groups_per_dot=1,
                       group_size=8, seed=5)
    beats = pack_beats(dut.beat_layout, vec, lanes, 8)
    seen = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for b in beats:
            ctx.set(dut.i.payload.as_value(), b)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for k in range(1, 20):
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            if valid:
                seen.append(k)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [dut.latency]
