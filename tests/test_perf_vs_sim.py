"""The throughput model's per-unit cycle counts against Amaranth-simulator cycle counts.

Each existing streaming unit is driven at full rate (input always valid, output
always ready) and the cycles from the first input handshake to the last output
(inclusive) are counted; :meth:`fpqvar_hw.perf.UnitTiming.cycles`, built from
the unit's own manifest / latency exactly as ``build.py`` builds it, must predict
them within 10 %.  Units not in the tree yet are skipped with the reason.
Payload bits are drawn with an explicit seed (in the test id); timing does not
depend on data for these units, correctness is their own tests' business.
"""
from __future__ import annotations

import importlib.util
import random

import pytest
from amaranth.sim import Simulator

from fpqvar_hw.config import get_preset
from fpqvar_hw.perf import component_manifest, unit_timings

TOLERANCE = 0.10


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def measure_stream(dut, beats: list[int], *, out_name: str = "o", in_name: str = "i",
                   expect_outputs: int, max_cycles: int = 10_000) -> int:
    """Cycles from the first input handshake to the last output beat, inclusive."""
    i_port, o_port = getattr(dut, in_name), getattr(dut, out_name)
    result = {}

    async def tb(ctx):
        ctx.set(o_port.ready, 1)
        cycle, first, sent, got = 0, None, 0, 0
        while got < expect_outputs:
            if sent < len(beats):
                ctx.set(i_port.valid, 1)
                ctx.set(i_port.payload.as_value(), beats[sent])
            else:
                ctx.set(i_port.valid, 0)
            accepted = sent < len(beats) and ctx.get(i_port.ready)
            if ctx.get(o_port.valid):
                got += 1
                result["last"] = cycle
            if accepted:
                if first is None:
                    first = cycle
                sent += 1
            await ctx.tick()
            cycle += 1
            assert cycle < max_cycles, "unit did not produce its outputs"
        result["first"] = first

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return result["last"] - result["first"] + 1


def _check(predicted: int, measured: int) -> None:
    assert abs(predicted - measured) <= TOLERANCE * measured, \
        f"model predicts {predicted} cycles, simulation measured {measured}"


@pytest.mark.skipif(not _have("fpqvar_hw.dot"), reason="fpqvar_hw.dot not in the tree yet")
@pytest.mark.parametrize("seed, group_size, lanes, groups_per_dot, dots, dfq", [
    (1, 32, 8, 2, 3, False),
    (2, 32, 32, 4, 2, False),
    (3, 64, 16, 1, 5, True),
])
def test_dot_cycles(seed, group_size, lanes, groups_per_dot, dots, dfq):
    from fpqvar_hw.dot import GroupDot
    from fpqvar_hw.multiplier import MulPair
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=group_size, lanes=lanes, dfq=dfq)
    cfg = get_preset("w4a4").replace(group_size=group_size, lanes=lanes, quant_lanes=lanes)
    timing = unit_timings(cfg, {"dot": component_manifest(dut)})["dot"]
    assert not timing.assumed
    rng = random.Random(seed)
    width = len(dut.i.payload.as_value())
    beats_per_group = group_size // lanes
    last_bit = dut.beat_layout["last"].offset
    beats = []
    for d in range(dots):
        for g in range(groups_per_dot):
            for b in range(beats_per_group):
                # random codes and scales; `last` only on a dot product's final beat
                last = int(g == groups_per_dot - 1 and b == beats_per_group - 1)
                raw = rng.getrandbits(width) & ~(1 << last_bit) | (last << last_bit)
                beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=dots)
    predicted = timing.cycles(dots * groups_per_dot)
    print(f"dot G={group_size} lanes={lanes} dfq={dfq}: measured {measured}, "
          f"predicted {predicted}")
    _check(predicted, measured)


@pytest.mark.skipif(not _have("fpqvar_hw.quantizer"), reason="fpqvar_hw.quantizer not in the tree")
@pytest.mark.parametrize("seed, fmt, group_size, lanes, groups", [
    (11, "e2m1fn", 32, 8, 6),
    (12, "dfq4", 64, 16, 5),
    (13, "int4", 32, 32, 8),
])
def test_quantizer_cycles(seed, fmt, group_size, lanes, groups):
    from fpqvar_hw.quantizer import Quantizer
    dut = Quantizer(format=fmt, group_size=group_size, lanes=lanes)
    cfg = get_preset("w4a4").replace(group_size=group_size, lanes=lanes, quant_lanes=lanes)
    timing = unit_timings(cfg, {"quantizer": component_manifest(dut)})["quantizer"]
    assert not timing.assumed
    rng = random.Random(seed)
    beats = []
    for _ in range(groups * group_size // lanes):
        raw = 0
        for k in range(lanes):      # finite FP16 values (exponent field < 31)
            raw |= (rng.getrandbits(1) << 15 | rng.randrange(31) << 10 | rng.getrandbits(10)) \
                << (16 * k)
        beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=len(beats))
    predicted = timing.cycles(groups)
    print(f"quantizer {fmt} G={group_size} lanes={lanes}: measured {measured}, "
          f"predicted {predicted}")
    _check(predicted, measured)


@pytest.mark.skipif(not _have("fpqvar_hw.hadamard"), reason="fpqvar_hw.hadamard not in the tree")
@pytest.mark.parametrize("seed, lanes, groups", [(21, 16, 4), (22, 32, 6)])
def test_hadamard_cycles(seed, lanes, groups):
    from fpqvar_hw.hadamard import GroupHadamard
    dut = GroupHadamard(lanes=lanes)
    cfg = get_preset("w4a4").replace(quant_lanes=lanes, lanes=min(lanes, 128))
    timing = unit_timings(cfg, {"hadamard": component_manifest(dut)})["hadamard"]
    assert not timing.assumed
    rng = random.Random(seed)
    beats = []
    for _ in range(groups * 128 // lanes):
        raw = 0
        for k in range(lanes):      # small finite FP16 values
            raw |= (rng.getrandbits(1) << 15 | rng.randrange(5, 20) << 10 | rng.getrandbits(10)) \
                << (16 * k)
        beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=len(beats))
    predicted = timing.cycles(groups)
    print(f"hadamard lanes={lanes}: measured {measured}, predicted {predicted}")
    _check(predicted, measured)
