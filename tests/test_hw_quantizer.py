"""Fast Amaranth-simulator tests of fpqvar_hw.units.quantizer against the golden model.

The exhaustive FP16 sweeps run in co-simulation (sim/test_quantizer.py); here:
construction checks, the reciprocal constants over every 11-bit significand,
the e8m0 key tables over every FP16 magnitude, a few seeded groups per format
and scale format with random stalls, and the latency figure.
"""
import numpy as np
import pytest

from fpqvar_hw.units.quantizer import (DFQ_FORMATS, LATENCY_AFTER_LAST, QUANTIZER_FORMATS, QUOT_P, Quantizer,
                                 e8m0_exponents, e8m0_keys, grid, scale_constants)
from fpqvar_quant.golden import fp16
from fpqvar_quant.golden import quantizer as gq
from tests.hw_streams import collect, drive, simulate


def _pack_beats(x: np.ndarray, lanes: int) -> list[int]:
    flat = x.reshape(-1, lanes)
    return [sum(int(v) << (16 * k) for k, v in enumerate(row)) for row in flat]


def _expected_beats(q, dut: Quantizer) -> list[int]:
    """Packed output beats the DUT must produce for golden result ``q``."""
    L, B, cw = dut.lanes, dut.beats, dut.code.size
    out = []
    for g in range(q.codes.shape[0]):
        for b in range(B):
            v = 0
            for k in range(L):
                v |= int(q.codes[g, b * L + k]) << (cw * k)
            off, sb = cw * L, dut.scale_bits
            for s in range(dut.n_scales):
                v |= int(q.scales[g, s]) << (off + sb * s)
            v |= int(b == B - 1) << (off + sb * dut.n_scales)
            out.append(v)
    return out


def run_quantizer(dut: Quantizer, beats: list[int], *, seed: int, idle: float, bp: float,
                  max_cycles: int = 20000):
    """Drive ``beats`` with random idle (``idle``) and backpressure (``bp``); return
    (output beats, cycle of each input acceptance, cycle of each output transfer,
    error flag after the last output).  Fails if the quantizer hangs or produces
    more output beats than input beats."""
    t_in, t_out = [], []

    async def sink(ctx):
        got = await collect(ctx, dut.o, len(beats), np.random.default_rng(seed + 1), stall=bp,
                            transferred=t_out, quiet=LATENCY_AFTER_LAST + 4)
        return got, bool(ctx.get(dut.error))

    _, (got, err) = simulate(
        dut, lambda ctx: drive(ctx, dut.i, beats, np.random.default_rng(seed), idle=idle,
                               accepted=t_in),
        sink, max_cycles=max_cycles)
    return got, t_in, t_out, err


@pytest.mark.parametrize("kw,msg", [
    (dict(format="e9m9"), "format must be one of"),
    (dict(lanes=24), "lanes must divide group_size"),
    (dict(lanes=0), "lanes must be a positive integer"),
    (dict(scale_format="e5m2"), "scale_format must be one of fp16, e8m0"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Quantizer(**kw)


@pytest.mark.parametrize("fmt", sorted({grid(f).fmax_odd for f in QUANTIZER_FORMATS if f not in DFQ_FORMATS}))
def test_reciprocal_constant_exact_for_every_significand(fmt):
    """floor(Ma * 2^P / F) == (Ma * R) >> (K - P) for every 11-bit Ma (the scale's quotient)."""
    F = fmt
    R, K = scale_constants(F)
    ma = np.arange(1, 2048, dtype=object)
    assert all((int(a) << QUOT_P) // F == (int(a) * R) >> (K - QUOT_P) for a in ma)


def test_grid_matches_golden():
    for f in QUANTIZER_FORMATS:
        if f in DFQ_FORMATS:
            continue
        g, s = grid(f), gq.grid_spec(f)
        assert (g.mid_num, g.frac_bits, g.fmax_odd, g.fmax_exp) == \
            (s.mid_num, s.frac_bits, s.fmax_odd, s.fmax_exp), f


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e3m2fn", "int6", "int8"])
def test_e8m0_keys_match_exact_thresholds_for_every_magnitude(fmt):
    """For every scale exponent and every finite FP16 magnitude, ``mag > V_j`` is the
    golden comparison ``|x| > s mid_j`` (even j) / ``|x| >= s mid_j`` (odd j)."""
    g = grid(fmt)
    mags = np.arange(0x7C00, dtype=np.int64)
    fixed = fp16.to_fixed(mags)                       # |x| in units of 2^-24
    for e in e8m0_exponents(g):
        keys = np.array(e8m0_keys(g, e), dtype=np.int64)
        # |x| vs mid_num * 2^(e - c) as integers: fixed * 2^(c + 24 - e ...) on the larger side
        sh = g.frac_bits - 24 - e
        for j, n in enumerate(g.mid_num):
            lhs, rhs = (fixed << sh, n) if sh >= 0 else (fixed, n << -sh)
            want = (lhs > rhs) | ((lhs == rhs) & (j % 2 == 1))
            assert np.array_equal(mags > keys[j], want), (fmt, e, j)


@pytest.mark.parametrize("fmt,lanes,seed,scale_format", [
    ("e2m1fn", 8, 1, "fp16"), ("dfq4", 8, 2, "fp16"), ("int4", 16, 3, "fp16"),
    ("e2m3fn", 2, 4, "fp16"), ("e3m2fn", 2, 5, "fp16"),
    ("e2m1fn", 8, 41, "e8m0"), ("dfq4", 8, 42, "e8m0"), ("int8", 4, 43, "e8m0"),
    ("e3m2fn", 4, 44, "e8m0"), ("dfq6", 4, 45, "e8m0")])
def test_random_groups_match_golden(fmt, lanes, seed, scale_format):
    G = 32
    dut = Quantizer(format=fmt, group_size=G, lanes=lanes, scale_format=scale_format)
    x = gq.random_groups(np.random.default_rng(seed), 12, G)
    q = gq.quantize_groups(x, fmt, scale_format=scale_format)
    got, _, _, err = run_quantizer(dut, _pack_beats(x, lanes), seed=seed, idle=0.3, bp=0.3)
    exp = _expected_beats(q, dut)
    assert len(got) == len(exp)
    bad = [k for k, (a, b) in enumerate(zip(got, exp)) if a != b]
    assert not bad, f"{len(bad)} mismatching beats, first {bad[0]}: {got[bad[0]]:#x} != {exp[bad[0]]:#x}"
    assert err == bool(q.error.any())


@pytest.mark.parametrize("scale_format", ["fp16", "e8m0"])
def test_full_throughput_and_latency(scale_format):
    """No idle, no backpressure: one beat per cycle in and out, fixed latency."""
    G, L = 32, 8
    dut = Quantizer(format="e2m1fn", group_size=G, lanes=L, scale_format=scale_format)
    x = gq.random_groups(np.random.default_rng(7), 6, G)
    x[:, :] &= 0x7BFF   # finite only
    got, t_in, t_out, _ = run_quantizer(dut, _pack_beats(x, L), seed=7, idle=0.0, bp=0.0)
    assert got == _expected_beats(gq.quantize_groups(x, "e2m1fn", scale_format=scale_format), dut)
    B = G // L
    assert np.all(np.diff(t_in) == 1), "input stalled"
    assert np.all(np.diff(t_out) == 1), "output has bubbles"
    assert t_out[0] - t_in[B - 1] == LATENCY_AFTER_LAST


def test_manifest_json():
    import json

    from amaranth.hdl import Fragment

    q, q8 = Quantizer(format="dfq4", lanes=16), Quantizer(format="e2m1fn", group_size=32, lanes=8,
                                                          scale_format="e8m0")
    m, m8 = q.manifest(), q8.manifest()
    for unit in (q, q8):              # the configurations the manifests describe elaborate
        Fragment.get(unit, None)
    json.dumps(m)
    assert m["config"]["beats_per_group"] == 8 and m["formats"]["scale_order"] == ["neg", "pos"]
    assert m8["formats"]["scales"] == ["e8m0"] and m8["config"]["scale_format"] == "e8m0"
    assert "ArrayLayout(e8m0, 1)" in m8["ports"]["o"]["payload"]


def test_dfq6_matches_golden():
    """FP6 dual format (W6A6 FC2 input): uniform 0..31 negatives + e2m3fn positives."""
    G, L = 16, 2
    dut = Quantizer(format="dfq6", group_size=G, lanes=L)
    x = gq.random_groups(np.random.default_rng(9), 6, G)
    q = gq.quantize_groups(x, "dfq6")
    got, _, _, _ = run_quantizer(dut, _pack_beats(x, L), seed=9, idle=0.2, bp=0.2)
    assert got == _expected_beats(q, dut)
