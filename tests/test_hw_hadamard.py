"""Fast Amaranth-simulator tests of fpqvar_hw.units.hadamard against the golden model
(the >= 10^4-group runs are co-simulated in sim/test_hadamard.py)."""
import numpy as np
import pytest

from fpqvar_hw.units.hadamard import LATENCY_AFTER_LAST, GroupHadamard
from fpqvar_quant.golden import hadamard as gh
from tests.hw_streams import collect, drive, simulate


def _run(dut, beats, signs, *, seed, idle, bp, max_cycles=5000):
    """Drive ``beats`` with random idle (``idle``) and backpressure (``bp``); return
    (output beats, cycle of each input acceptance, cycle of each output transfer,
    (error, overflow) flags after the last output).  Fails if the unit hangs or
    produces more output beats than input beats."""
    t_in, t_out = [], []

    async def source(ctx):
        ctx.set(dut.signs, int(sum(int(b) << j for j, b in enumerate(signs))))
        await drive(ctx, dut.i, beats, np.random.default_rng(seed), idle=idle, accepted=t_in)

    async def sink(ctx):
        got = await collect(ctx, dut.o, len(beats), np.random.default_rng(seed + 1), stall=bp,
                            transferred=t_out, quiet=LATENCY_AFTER_LAST + 4)
        return got, [ctx.get(dut.error), ctx.get(dut.overflow)]

    _, (got, flags) = simulate(dut, source, sink, max_cycles=max_cycles)
    return got, t_in, t_out, flags


def _beats(x, lanes):
    return [sum(int(v) << (16 * k) for k, v in enumerate(row)) for row in x.reshape(-1, lanes)]


@pytest.mark.parametrize("kw,msg", [(dict(lanes=24), "power of two"), (dict(group_size=64), "groups of 128")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GroupHadamard(**kw)


@pytest.mark.parametrize("lanes,seed", [(32, 1), (64, 2)])
def test_random_groups_match_golden(lanes, seed):
    rng = np.random.default_rng(seed)
    x = gh.random_groups(rng, 10)
    x[3, 5] = 0x7C00                         # one Inf group -> NaN outputs, error flag
    x[4] = np.full(128, 0x7BFF, np.uint16)   # all 65504 -> overflow, saturate
    signs = gh.random_signs(seed)
    ref = gh.hadamard_groups(x, signs)
    dut = GroupHadamard(lanes=lanes)
    got, _, _, (err, ovf) = _run(dut, _beats(x, lanes), signs, seed=seed, idle=0.3, bp=0.3)
    assert got == _beats(ref.y, lanes)
    assert err == 1 and ovf == 1


def test_full_throughput_and_latency():
    lanes = 32
    x = gh.random_groups(np.random.default_rng(5), 5) & 0x7BFF
    x = x.astype(np.uint16)
    signs = gh.random_signs(5)
    dut = GroupHadamard(lanes=lanes)
    got, t_in, t_out, _ = _run(dut, _beats(x, lanes), signs, seed=5, idle=0.0, bp=0.0)
    assert got == _beats(gh.hadamard_groups(x, signs).y, lanes)
    assert np.all(np.diff(t_in) == 1) and np.all(np.diff(t_out) == 1)
    assert t_out[0] - t_in[128 // lanes - 1] == LATENCY_AFTER_LAST


def test_manifest():
    import json

    from amaranth.hdl import Fragment
    dut = GroupHadamard(lanes=16)
    json.dumps(dut.manifest())
    Fragment.get(dut, None)      # elaborated as the build does (no unused component left)
