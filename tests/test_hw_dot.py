"""Group dot-product unit (fpqvar_hw.units.dot) in the Amaranth simulator against the golden model.

Fast tier: small lane counts, random idle input and output backpressure; the
10^4-group sweeps run in cocotb/Verilator (sim/test_dot.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.units.dot import GroupDot
from fpqvar_hw.units.multiplier import MulPair, MulVariant
from fpqvar_quant.golden.dot import DFQ
from tests.dot_vectors import expected, make_vectors, pack_beats
from tests.hw_streams import collect, drive, simulate


def run_dot(dut: GroupDot, beats: list[int], n_out: int, seed: int,
            idle: float = 0.3, stall: float = 0.3) -> tuple[list[int], int]:
    """Stream ``beats`` through ``dut`` with random gaps/backpressure; return
    (the ``n_out`` results, cycles until the last one).  Fails if the unit hangs
    or produces more than ``n_out`` results."""
    times: list[int] = []
    _, out = simulate(
        dut,
        lambda ctx: drive(ctx, dut.i, beats, np.random.default_rng(seed), idle=idle),
        lambda ctx: collect(ctx, dut.o, n_out, np.random.default_rng(seed + 1), stall=stall,
                            transferred=times, quiet=dut.latency + 4),
        max_cycles=100 * (len(beats) + 50))
    return out, times[-1] + 1 if times else 0


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
    rng = np.random.default_rng(5)
    accepted: list[int] = []
    done: list[int] = []
    simulate(dut, lambda ctx: drive(ctx, dut.i, beats, rng, accepted=accepted),
             lambda ctx: collect(ctx, dut.o, 1, rng, transferred=done, quiet=20),
             max_cycles=100)
    assert np.all(np.diff(accepted) == 1), "input stalled"
    assert done[0] - accepted[-1] == dut.latency
