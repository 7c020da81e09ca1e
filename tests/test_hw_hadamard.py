"""Fast Amaranth-simulator tests of fpqvar_hw.hadamard against the golden model
(the >= 10^4-group runs are co-simulated in sim/test_hadamard.py)."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from fpqvar_hw.hadamard import LATENCY_AFTER_LAST, GroupHadamard
from fpqvar_quant.golden import hadamard as gh


def _run(dut, beats, signs, *, seed, idle, bp, max_cycles=5000):
    rng = np.random.default_rng(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    got, t_in, t_out, flags = [], [], [], []

    async def tb(ctx):
        ctx.set(dut.signs, int(sum(int(b) << j for j, b in enumerate(signs))))
        i = cyc = 0
        while len(got) < len(beats) and cyc < max_cycles:
            send = i < len(beats) and rng.random() >= idle
            ctx.set(dut.i.valid, int(send))
            if send:
                ctx.set(dut.i.payload.as_value(), beats[i])
            ctx.set(dut.o.ready, int(rng.random() >= bp))
            _, _, iv, ir, ov, orr, op = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload.as_value())
            if iv and ir:
                t_in.append(cyc)
                i += 1
            if ov and orr:
                got.append(int(op))
                t_out.append(cyc)
            cyc += 1
        flags.extend([ctx.get(dut.error), ctx.get(dut.overflow)])

    sim.add_testbench(tb)
    sim.run()
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
    json.dumps(GroupHadamard(lanes=16).manifest())
