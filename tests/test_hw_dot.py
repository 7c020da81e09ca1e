"""Group dot-product unit (fpqvar_hw.units.dot) in the Amaranth simulator against the golden model.

Fast tier: small lane counts, random idle input and output backpressure; the
10^4-group sweeps run in cocotb/Verilator (sim/test_dot.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.units.dot import GroupDot, GroupDotV2
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


@pytest.mark.parametrize("lanes,dfq", [(2, False), (8, True), (1, False)])
def test_group_spacing_at_full_rate(lanes, dfq):
    """Back-to-back input, no backpressure: within a group one beat per cycle; a group's
    final beat is taken exactly ``group_interval`` cycles after the previous group's
    (the accumulator loop, 9 cycles, unless the group's beats take longer), and every
    result is exact (each group reads the sum its predecessor wrote back)."""
    G = 8
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=G, lanes=lanes, dfq=dfq)
    vec = make_vectors(DFQ if dfq else "e2m1fn", "e2m1fn", n_dots=4, groups_per_dot=3,
                       group_size=G, seed=7 + lanes)
    beats = pack_beats(dut.beat_layout, vec, lanes, G)
    rng = np.random.default_rng(lanes)
    accepted: list[int] = []
    _, out = simulate(dut, lambda ctx: drive(ctx, dut.i, beats, rng, accepted=accepted),
                      lambda ctx: collect(ctx, dut.o, 4, rng, quiet=dut.latency + 4),
                      max_cycles=20 * len(beats) + 100)
    check(out, expected(vec, G))
    bpg = G // lanes
    assert dut.group_interval == max(bpg, dut.LOOP) == (9 if bpg < 9 else bpg)
    ends = accepted[bpg - 1::bpg]
    assert set(np.diff(ends).tolist()) == {dut.group_interval}
    for g in range(len(ends)):                  # the other beats of a group: no waiting
        starts = accepted[g * bpg:(g + 1) * bpg - 1]
        assert all(b - a == 1 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("lanes,D,dfq,idle,seed", [(4, 3, True, 0.0, 61), (2, 2, False, 0.0, 62),
                                                  (8, 4, False, 0.3, 63), (4, 3, False, 0.3, 64)])
def test_interleaved_slots(lanes, D, dfq, idle, seed):
    """``interleave = D``: consecutive groups belong to slots 0..D-1 in turn, each slot a dot
    product of its own (different lengths per slot), results in the order of their last
    groups, exact; at full rate groups come every ``group_interval`` cycles."""
    G = 8
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=G, lanes=lanes, dfq=dfq, interleave=D)
    bpg = G // lanes
    a_fmt = DFQ if dfq else "e2m1fn"
    # slot k: dot products of k + 1 groups, as many as give every slot 6 groups
    slots = [make_vectors(a_fmt, "e2m1fn", n_dots=6 // (k % 3 + 1), groups_per_dot=k % 3 + 1,
                          group_size=G, seed=seed + k) for k in range(D)]
    per = [pack_beats(dut.beat_layout, v, lanes, G) for v in slots]
    beats, ends = [], []
    for n in range(6 * D):
        k, g = n % D, n // D
        beats += per[k][g * bpg:(g + 1) * bpg]
        gpd = k % 3 + 1
        if g % gpd == gpd - 1:
            ends.append(int(expected(slots[k], G)[g // gpd]))
    rng = np.random.default_rng(seed)
    accepted: list[int] = []
    _, out = simulate(dut, lambda ctx: drive(ctx, dut.i, beats, rng, idle=idle, accepted=accepted),
                      lambda ctx: collect(ctx, dut.o, len(ends), rng, stall=0.2 if idle else 0.0,
                                          quiet=dut.latency + 4),
                      max_cycles=40 * len(beats) + 200)
    check(out, ends)
    assert dut.group_interval == max(bpg, -(-dut.LOOP // D))
    if not idle:
        assert set(np.diff(accepted[bpg - 1::bpg]).tolist()) == {dut.group_interval}


def test_interleave_for_removes_the_spacing():
    for lanes in (1, 2, 4, 8, 16, 32, 128):
        D = GroupDot.interleave_for(group_size=128, lanes=lanes)
        assert GroupDot.group_interval_for(group_size=128, lanes=lanes, interleave=D) \
            == max(128 // lanes, 1)
        assert D == 1 or GroupDot.group_interval_for(group_size=128, lanes=lanes,
                                                     interleave=D - 1) > 128 // lanes


# ---- dot cell v2 (GroupDotV2): one group per beat, interleaved dot products

def interleaved(beat_layout, group_size: int, slots: list) -> tuple[list[int], list[int]]:
    """Beats and golden results of ``slots`` (one :class:`DotVectors` per interleave
    slot, each the same number of groups): beat ``n`` is slot ``n mod D``'s next
    group; results come in the order of their ``last`` groups."""
    D = len(slots)
    per = [pack_beats(beat_layout, v, group_size, group_size) for v in slots]
    assert len({len(p) for p in per}) == 1, "every slot needs the same number of groups"
    beats = [per[n % D][n // D] for n in range(D * len(per[0]))]
    ends = []
    for k, v in enumerate(slots):
        gpd = v.s_a.shape[1]
        for d, e in enumerate(expected(v, group_size)):
            ends.append(((d * gpd + gpd - 1) * D + k, int(e)))
    return beats, [e for _, e in sorted(ends)]


def slot_vectors(a_fmt, w_fmt, group_size, D, seed):
    """Slots of different dot-product lengths (12 groups each): 3x4, 2x6, 6x2, 1x12, 4x3."""
    shapes = [(4, 3), (6, 2), (2, 6), (12, 1), (3, 4)]
    return [make_vectors(a_fmt, w_fmt, n_dots=shapes[k % 5][0], groups_per_dot=shapes[k % 5][1],
                         group_size=group_size, seed=seed + 100 * k) for k in range(D)]


V2_CASES = [
    # pair, dfq, group_size, variant, interleave beyond the loop length (LOOP + k), levels_per_stage
    (MulPair.E2M1_E2M1, False, 8, MulVariant.LUT, 0, 1),   # flagged tree, sign-magnitude leaves
    (MulPair.E2M1_E2M1, True, 8, MulVariant.LUT, 1, 1),    # DFQ: two gated sums, RNE(RNE+RNE)
    (MulPair.INT4_INT4, False, 8, MulVariant.LUT, 3, 2),   # integer baseline cells
    (MulPair.INT8_INT8, False, 4, MulVariant.DSP, 0, 1),
    (MulPair.E2M3_E2M3, False, 4, MulVariant.DECOMPOSED, 2, 1),
    (MulPair.E3M2_E2M3, False, 16, MulVariant.LUT, 1, 3),  # wider magnitudes, 3 levels a stage
    (MulPair.E2M1_E2M1, True, 5, MulVariant.LUT, 0, 2),    # odd lane count: carried leaves
    (MulPair.E2M1_E2M1, False, 1, MulVariant.LUT, 0, 1),   # single lane: no adder
]


@pytest.mark.parametrize("pair,dfq,group_size,variant,extra,lps,seed",
                         [c + (s,) for c, s in zip(V2_CASES, range(40, 40 + len(V2_CASES)))],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_dot_v2_interleaved(pair, dfq, group_size, variant, extra, lps, seed):
    """Interleaved slots of different lengths, random idle input and backpressure,
    NaN/Inf/zero scales and all-zero/all-negative groups (dot_vectors' biases)."""
    dut = GroupDotV2(pair=pair, dfq=dfq, group_size=group_size, variant=variant,
                     interleave=GroupDotV2.loop_length() + extra, levels_per_stage=lps)
    a_fmt = DFQ if dfq else pair.value[0]
    beats, exp = interleaved(dut.beat_layout, group_size,
                             slot_vectors(a_fmt, pair.value[1], group_size, dut.interleave, seed))
    out, _ = run_dot(dut, beats, len(exp), seed)
    check(out, exp)


@pytest.mark.parametrize("dfq", [False, True])
def test_dot_v2_full_rate(dfq):
    """No idle, no backpressure: one group per cycle, results ``latency`` cycles after
    their ``last`` group (the loop-carried accumulation does not throttle the input)."""
    dut = GroupDotV2(pair=MulPair.E2M1_E2M1, group_size=8, dfq=dfq)
    D = dut.interleave
    assert D == dut.LOOP
    a_fmt = DFQ if dfq else "e2m1fn"
    slots = [make_vectors(a_fmt, "e2m1fn", n_dots=3, groups_per_dot=2, group_size=8,
                          seed=60 + k) for k in range(D)]
    beats, exp = interleaved(dut.beat_layout, 8, slots)
    accepted: list[int] = []
    done: list[int] = []
    _, out = simulate(dut, lambda ctx: drive(ctx, dut.i, beats, np.random.default_rng(1),
                                             accepted=accepted),
                      lambda ctx: collect(ctx, dut.o, len(exp), np.random.default_rng(2),
                                          transferred=done, quiet=dut.latency + 4),
                      max_cycles=200)
    check(out, exp)
    assert np.all(np.diff(accepted) == 1), "input stalled"
    last_beats = [accepted[n] for n in range(len(beats)) if (n // D) % 2 == 1]
    assert [d - a for d, a in zip(done, last_beats)] == [dut.latency] * len(exp)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(interleave=1), "interleave must be an integer >= "),
    (dict(dfq=True, pair=MulPair.INT4_INT4), "dfq=True takes e2m1fn weights"),
    (dict(group_size=0), "group_size must be a positive integer"),
])
def test_dot_v2_rejects(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        GroupDotV2(**kwargs)


@pytest.mark.parametrize("Q,lanes,dfq,dual,idle,stall,seed", [
    (4, 4, True, True, 0.3, 0.3, 71), (2, 8, False, False, 0.0, 0.0, 72),
    (8, 2, True, True, 0.0, 0.0, 73), (4, 8, True, True, 0.2, 0.5, 74)])
def test_shared_tail_columns_match_the_golden_model(Q, lanes, dfq, dual, idle, stall, seed):
    """``share = Q``: Q weight columns against one activation row through one FP32 tail;
    every column's result is the golden dot product (as a Q = 1 cell computes it), under
    idle input and output backpressure; without them the result of the columns follows
    the final beat by ``latency`` cycles and groups keep the Q = 1 spacing."""
    from dataclasses import replace
    G = 16
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=G, lanes=lanes, dfq=dfq, dual=dual,
                   share=Q)
    a_fmt = DFQ if dfq else "e2m1fn"
    base = make_vectors(a_fmt, "e2m1fn", n_dots=6, groups_per_dot=3, group_size=G, seed=seed)
    cols = [base] + [replace(make_vectors(a_fmt, "e2m1fn", n_dots=6, groups_per_dot=3,
                                          group_size=G, seed=seed * 10 + q),
                             a=base.a, s_a=base.s_a, s_a_neg=base.s_a_neg) for q in range(1, Q)]
    beats = pack_beats(dut.beat_layout, base, lanes, G, cols=cols)
    rng = np.random.default_rng(seed)
    accepted: list[int] = []
    done: list[int] = []
    _, out = simulate(dut, lambda ctx: drive(ctx, dut.i, beats, rng, idle=idle, accepted=accepted),
                      lambda ctx: collect(ctx, dut.o, 6, rng, stall=stall, transferred=done,
                                          quiet=dut.latency + 4),
                      max_cycles=60 * len(beats) + 200)
    got = [[(o >> (32 * q)) & 0xFFFFFFFF for o in out] for q in range(Q)]
    for q in range(Q):
        check(got[q], expected(cols[q], G))
    if not idle and not stall:
        bpg = G // lanes
        assert done[-1] - accepted[-1] == dut.latency
        assert set(np.diff(accepted[bpg - 1::bpg]).tolist()) == {dut.group_interval}


def test_shared_tail_rejects_more_columns_than_the_group_interval():
    # one beat per group, 9 slots: a group every cycle, no cycle for a second column
    with pytest.raises(ValueError, match="group interval"):
        GroupDot(pair=MulPair.E2M1_E2M1, group_size=128, lanes=128, interleave=9, share=2)
