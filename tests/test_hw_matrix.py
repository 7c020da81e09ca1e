"""Matrix engine pieces in the Amaranth simulator.

* The dual-mode dot cell (``GroupDot(dfq=True, dual=True)``) against the golden
  ``fpqvar_quant.golden.dot`` in both modes: plain e2m1fn (with garbage, even
  NaN, negative-grid scales, which must not matter) and DFQ.
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.units.dot import GroupDot
from fpqvar_hw.units.multiplier import MulPair
from fpqvar_quant.golden.dot import DFQ
from tests.dot_vectors import expected, make_vectors, pack_beats
from tests.test_hw_dot import check, run_dot
from tests.hw_streams import run_engine_dram


@pytest.mark.parametrize("plain,lanes,seed", [(True, 8, 31), (False, 8, 32), (True, 16, 33)])
def test_dual_cell_matches_golden(plain, lanes, seed):
    G = 16
    dut = GroupDot(pair=MulPair.E2M1_E2M1, dfq=True, dual=True, group_size=G, lanes=lanes)
    vec = make_vectors("e2m1fn" if plain else DFQ, "e2m1fn", n_dots=16, groups_per_dot=3,
                       group_size=G, seed=seed)
    beats = pack_beats(dut.beat_layout, vec, lanes, G)
    off_plain = dut.beat_layout["plain"].offset
    off_neg = dut.beat_layout["s_a_neg"].offset
    if plain:
        rng = np.random.default_rng(seed)
        # the negative-grid scale is ignored in plain mode, whatever it holds
        junk = rng.choice([0x7E00, 0x7C00, 0x3C00, 0x0001], size=len(beats))
        beats = [b | 1 << off_plain | int(j) << off_neg for b, j in zip(beats, junk)]
    out, _ = run_dot(dut, beats, 16, seed)
    check(out, expected(vec, G))


def test_dual_requires_dfq():
    with pytest.raises(ValueError, match="dfq=True"):
        GroupDot(pair=MulPair.E2M1_E2M1, dual=True, group_size=16, lanes=8)


# ----------------------------------------------------------------- engine config
from amaranth.sim import Simulator  # noqa: E402

from fpqvar_hw.engines import axi

from fpqvar_hw import isa  # noqa: E402
from fpqvar_hw.config import get_preset, preset_names  # noqa: E402
from fpqvar_hw.engines.matrix import MatrixEngine, SUPPORTED_PRESETS, BurstReader  # noqa: E402


@pytest.mark.parametrize("name", [p for p in preset_names() if p not in SUPPORTED_PRESETS])
def test_unsupported_presets_are_rejected(name):
    with pytest.raises(ValueError, match="w4a4") as e:
        MatrixEngine(get_preset(name))
    assert name in str(e.value)


@pytest.mark.parametrize("changes,match", [
    ({"quant_lanes": 2}, "quant_lanes must be a power of two >= 4"),
    ({"lanes": 8, "quant_lanes": 16}, "must be >= quant_lanes"),
    ({"tn": 3}, "tn must be 1, 2 or a multiple of 4"),
    ({"row_sets": 3}, "row_sets must be a power of two"),
    ({"row_sets": 0}, "row_sets must be a positive integer"),
])
def test_bad_array_parameters(changes, match):
    with pytest.raises(ValueError, match=match):
        MatrixEngine(get_preset("w4a4").replace(**changes))


def test_bad_max_k():
    with pytest.raises(ValueError, match="max_k must be a power of two"):
        MatrixEngine(get_preset("w4a4").replace(tm=1, tn=1), max_k=384)


def test_engine_ports():
    """The ports are a class-level fact (no engine is built to read them)."""
    names = set(MatrixEngine.engine_signature().members)
    assert names == {"cmd", "busy", "error", "abort", "fine", "dram_base", "dram_size",
                     "rd_act", "rd_w", "rd_ws", "rd_bias", "wr"}


# ----------------------------------------------------------------- burst reader
def _run_reader(jobs, *, base, size, depth=32, cycles=600, consume=True, seed=1):
    """Drive a BurstReader with ``jobs``; a memory-less responder answers every
    burst (data = word address) after a random delay.  Returns (requests, words, flags)."""
    dut = BurstReader(depth=depth)
    rng = np.random.default_rng(seed)
    reqs, words = [], []
    flags = {}
    pending = []

    async def tb(ctx):
        ctx.set(dut.base, base)
        ctx.set(dut.size, size)
        jq = list(jobs)
        max_level = 0
        for _ in range(cycles):
            if jq:
                ctx.set(dut.job.valid, 1)
                ctx.set(dut.job.payload, {"addr": jq[0][0], "words": jq[0][1]})
            else:
                ctx.set(dut.job.valid, 0)
            req_ready = int(rng.random() < 0.7)
            ctx.set(dut.bus.req.ready, req_ready)
            if pending and rng.random() < 0.8:
                ctx.set(dut.bus.resp.valid, 1)
                ctx.set(dut.bus.resp.payload, {"data": pending[0], "last": 0, "err": 0})
            else:
                ctx.set(dut.bus.resp.valid, 0)
            d_ready = int(consume and rng.random() < 0.5)
            ctx.set(dut.data.ready, d_ready)
            _, _, jv, jr, rv, rp, sv, sr, dv, dp = await ctx.tick().sample(
                dut.job.valid, dut.job.ready, dut.bus.req.valid, dut.bus.req.payload,
                dut.bus.resp.valid, dut.bus.resp.ready, dut.data.valid, dut.data.payload)
            if jv and jr:
                jq.pop(0)
            if rv and req_ready:
                a, n = int(rp.addr), int(rp.len) + 1
                reqs.append((a, n))
                pending.extend(a + 16 * k for k in range(n))
            if sv and sr:
                pending.pop(0)
            if dv and d_ready:
                words.append(int(dp))
            max_level = max(max_level, len(pending))
        flags["window_error"] = ctx.get(dut.window_error)
        flags["quiet"] = ctx.get(dut.quiet)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return reqs, words, flags


def test_reader_bursts_split_at_4k_and_max_burst():
    jobs = [(0x0FC0, 40), (0x2000, 3), (0x3000, 0), (0x5F00, 17)]
    reqs, words, flags = _run_reader(jobs, base=0, size=1 << 20, cycles=900)
    for a, n in reqs:
        assert 1 <= n <= axi.MAX_BURST and a % 16 == 0
        assert a // 4096 == (a + 16 * n - 1) // 4096, f"burst {a:#x}+{n} crosses 4 KiB"
    want = [a + 16 * k for a, n in jobs for k in range(n)]
    assert words == want
    assert not flags["window_error"] and flags["quiet"]


def test_reader_never_overfills_its_fifo():
    """With a consumer that never reads, at most ``depth`` words are ever requested."""
    reqs, words, flags = _run_reader([(0x100, 200)], base=0, size=1 << 20, depth=32,
                                     consume=False, cycles=300)
    assert sum(n for _, n in reqs) <= 32
    assert words == []


def test_reader_window_error_before_issue():
    # the second burst would end past the window: never requested
    reqs, words, flags = _run_reader([(0x1000, 24)], base=0x1000, size=16 * 20, cycles=300)
    assert reqs == [(0x1000, 16)]
    assert flags["window_error"] and flags["quiet"]


# ----------------------------------------------------------------- engine, Amaranth sim
def run_engine_sim(engine, cases, *, base, seed=0, max_cycles=200_000):
    """Run ``cases`` (sim.test_matrix.Case) one after another on ``engine`` in the
    Amaranth simulator with the in-order DRAM model of ``tests.hw_streams.run_engine_dram``
    (random response gaps and request backpressure).  Returns [(cycles, error, memory
    bytes after, requests)]."""
    jobs = [dict(word=sum(int(w) << (32 * k) for k, w in enumerate(case.words)),
                 image=case.image, window=case.meta.get("window", len(case.image)),
                 fine=case.meta["fine"], abort_after=case.meta.get("abort_after"))
            for case in cases]
    res = run_engine_dram(engine, jobs, bytearray(), ports=["rd_act", "rd_w", "rd_ws", "rd_bias"],
                          base=base, rng=np.random.default_rng(seed), max_cycles=max_cycles)
    return [(cycles, err, mem, requests) for cycles, err, requests, mem in res]

def _engine_cases(cfg, seed, specs):
    """Cases of sim.test_matrix.make_gemm built for ``cfg`` (weights packed for its tn/lanes)."""
    from sim import test_matrix as tmx
    rng = np.random.default_rng(seed)
    old = tmx.CFG
    tmx.CFG = cfg
    try:
        return [tmx.make_gemm(rng, name, **kw) for name, kw in specs], tmx.BASE
    finally:
        tmx.CFG = old


def _check_results(cases, res, base):
    for case, (cycles, err, mem, requests) in zip(cases, res):
        assert err == case.meta["error"], (case.name, err)
        if err == 5:
            assert requests == 0, f"{case.name}: an invalid instruction accessed DRAM"
        if err == 0 and mem != case.expect:
            o = case.meta["out_addr"] - base
            n, st = case.meta["n"], case.meta["out_stride"]
            rows = [(np.frombuffer(mem[o + r * st:o + r * st + 4 * n], "<u4"),
                     np.frombuffer(case.expect[o + r * st:o + r * st + 4 * n], "<u4"))
                    for r in range(case.meta["m"])]
            bad = [(r, k, hex(g[k]), hex(x[k])) for r, (g, x) in enumerate(rows)
                   for k in range(n) if g[k] != x[k]]
            raise AssertionError(f"{case.name}: (row, feature, got, expected) {bad[:8]} "
                                 f"(or bytes outside the outputs changed)")


def test_engine_small_gemms_amaranth():
    """tm=1, tn=1, 4 row sets: a plain GEMM with HAD and BIAS over two row blocks (4 rows,
    then 2: the second block's last two sets hold no row), then a DFQ GEMM, bit-exact."""
    cfg = get_preset("w4a4").replace(tm=1, tn=1, lanes=16, quant_lanes=8, row_sets=4)
    cases, base = _engine_cases(cfg, 3, [
        ("plain", dict(M=6, K=128, N=2, had=True, bias=True, dfq=False)),
        ("dfq", dict(M=1, K=256, N=1, had=False, bias=True, dfq=True))])
    # field errors (5): detected before any DRAM access, the engine stays usable
    small = dict(M=1, K=128, N=1, had=True, bias=True, dfq=False)
    hdr = isa.header(isa.Opcode.GEMM, subop=0, flags=int(isa.GemmFlag.HAD | isa.GemmFlag.BIAS))
    bad_fields = {
        "k-above-max_k": {isa.GEMM_K: 512}, "k-zero": {isa.GEMM_K: 0}, "n-zero": {isa.GEMM_N: 0},
        "m-zero": {isa.GEMM_M: 0}, "out-misaligned": {isa.GEMM_OUT: base + 0x102},
        "stride-misaligned": {isa.GEMM_ACT_STRIDE: 520}, "signs-misaligned": {isa.GEMM_SIGNS: base + 8},
        "unknown-subop": {0: hdr | 2 << isa.HDR_SUBOP_SHIFT},
        "unknown-flag": {0: hdr | 4 << isa.HDR_FLAGS_SHIFT}}
    bad, _ = _engine_cases(cfg, 5, [(name, dict(small, corrupt=c)) for name, c in bad_fields.items()])
    for c in bad:
        c.meta["error"] = int(isa.ErrorCode.FIELD)
    last, _ = _engine_cases(cfg, 6, [("after-errors", dict(M=1, K=128, N=1, had=False, bias=False,
                                                           dfq=True))])
    cases = cases[:1] + bad + cases[1:] + last
    _check_results(cases, run_engine_sim(MatrixEngine(cfg, max_k=256), cases, base=base), base)


@pytest.mark.slow
def test_engine_other_geometry_amaranth():
    """lanes = quant_lanes = 32 (one code word per entry, no padding), tn=4 (one bias
    word per feature block), tm=3 with M = 4 (a one-row last block); and 2 row sets of
    tm=3 with M = 7 (blocks of 6 rows and 1)."""
    cfg = get_preset("w4a4").replace(tm=3, tn=4, lanes=32, quant_lanes=32, row_sets=1)
    cases, base = _engine_cases(cfg, 4, [
        ("dfq-had-bias", dict(M=4, K=256, N=6, had=True, bias=True, dfq=True, specials=True))])
    _check_results(cases, run_engine_sim(MatrixEngine(cfg, max_k=256), cases, base=base), base)
    cfg = cfg.replace(row_sets=2)
    cases, base = _engine_cases(cfg, 7, [
        ("sets-plain-bias", dict(M=7, K=128, N=5, had=False, bias=True, dfq=False))])
    _check_results(cases, run_engine_sim(MatrixEngine(cfg, max_k=256), cases, base=base), base)
