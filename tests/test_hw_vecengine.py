"""Amaranth-simulator tests of the vector engine's units (fpqvar_hw.units.vector) against the golden
model: FDot (rows ended by ``last``), Residual, Softmax with runtime row lengths.

Bit-exact comparisons (``==`` on FP32 bit patterns), random input gaps and output
backpressure from the seed in the test id.  The whole engine (DMA, address generation,
errors, its KV6 hardware) is co-simulated in sim/test_vecengine.py; here an engine
without KV6 hardware rejects KVQ6 and FDOT with B_KV6 with error 5 (:func:`run_engine`,
a small in-order DRAM model).
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpqvar_hw.units.vector import FDot, Residual, Softmax
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v
from fpqvar_quant.golden.attention import tree_last
from tests.hw_streams import run_engine_dram


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


@pytest.mark.parametrize("seed", [13])
def test_softmax_runtime_rows(seed):
    """Rows of 1, 5, 8, 13 and the maximum 24 elements ended by ``last``, against golden
    softmax of each row (tree_sum padding with +0.0)."""
    rng = np.random.default_rng(seed)
    lengths = [5, 1, 24, 13, 8]
    rows = [(rng.standard_normal(n) * rng.uniform(0.1, 30)).astype(np.float32) for n in lengths]
    rows[3][2] = -np.inf
    words, want = [], []
    for r in rows:
        words += [x | (int(j == len(r) - 1) << 32) for j, x in enumerate(u32(r))]
        want += [int(b) for b in g.canon(v.softmax(r[None, :], P=8)).reshape(-1)]
    got = stream_unit(Softmax(length=24, P=8), words, len(words), seed,
                      max_cycles=8 * len(words) + 200 * len(rows))
    check(got, want, "softmax")


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


# ----------------------------------------------------------------- whole engine, KV6
def run_engine(engine, instrs, mem: bytearray, *, base: int, seed: int, max_cycles: int = 60_000):
    """Run VEC ``instrs`` one after another on ``engine`` in the Amaranth simulator over
    ``mem`` (the DRAM window ``[base, base + len(mem))``, modified in place) with the
    in-order DRAM model of ``tests.hw_streams.run_engine_dram`` (random backpressure and
    response gaps on ``rd_a/b/c`` and ``wr``).  Returns ``[(cycles, error, dram accesses,
    image after)]`` per instruction."""
    jobs = [dict(word=int.from_bytes(ins.encode(), "little"), what=ins) for ins in instrs]
    return run_engine_dram(engine, jobs, mem, ports=["rd_a", "rd_b", "rd_c"], base=base,
                           rng=np.random.default_rng(seed), max_cycles=max_cycles)


KV6_BASE = 0x1_0000


def kv6_attention_program(seed: int, *, H: int = 1, Nq: int = 1, Nk: int = 3):
    """DRAM image and instructions: KVQ6 of FP32 k and v rows into code/scale caches
    (odd code base, scales at 2 mod 4), a KVQ6 of special rows (zeros, Inf, FP16
    overflow, subnormals; scales with a gap), then QK^T (FDOT B_KV6, C s0 = 0) ->
    SOFTMAX -> PV (FDOT B_KV6, C s0 = 2).  Returns (mem, instrs, addresses)."""
    from fpqvar_hw.isa import Operand, Vec, VecFlag, VecSubop

    rng = np.random.default_rng(seed)
    D = 64
    mem = bytearray(0x8000)
    at = dict(q=0x0100, k=0x1000, v=0x2000, kc=0x3003, vc=0x3803, ks=0x4002, vs=0x4102,
              x=0x4200, xc=0x4601, xs=0x4800, s=0x5000, o=0x6000)
    at = {k: KV6_BASE + a for k, a in at.items()}
    tok = 272                                                    # FP32 k/v row stride (padded)

    def put(addr, arr):
        raw = np.ascontiguousarray(arr).tobytes()
        mem[addr - KV6_BASE:addr - KV6_BASE + len(raw)] = raw

    q = v.l2norm_temperature(rng.standard_normal((H, Nq, D)).astype(np.float32),
                             np.full((H, 1, 1), 2.5, np.float32))
    k = v.l2norm_temperature(rng.standard_normal((H, Nk, D)).astype(np.float32))
    vv = (rng.standard_normal((H, Nk, D)) * rng.uniform(0.05, 20, (H, Nk, 1))).astype(np.float32)
    put(at["q"], q)
    for h in range(H):
        for j in range(Nk):
            put(at["k"] + (h * Nk + j) * tok, k[h, j])
            put(at["v"] + (h * Nk + j) * tok, vv[h, j])
    x = (rng.standard_normal((3, D)) * 3).astype(np.float32)
    x[0] = 0.0
    x[1, 7] = 1e5                     # overflows FP16 -> Inf: NaN scale, zero codes
    x[2] = x[2] * 1e-6                # FP16 subnormals
    put(at["x"], x)
    hk = Nk * D                                                  # code bytes per head
    hs = Nk * 2                                                  # scale bytes per head
    ins = [Vec(subop=VecSubop.KVQ6, n=(D, Nk, H, 1), a=Operand(at[src], 4, tok, Nk * tok),
               c=Operand(at[sc], 0, 2, hs), d=Operand(at[cc], 1, D, hk))
           for src, cc, sc in (("k", "kc", "ks"), ("v", "vc", "vs"))]
    ins.append(Vec(subop=VecSubop.KVQ6, n=(D, 3, 1, 1), a=Operand(at["x"], 4, 4 * D),
                   c=Operand(at["xs"], 7, 6), d=Operand(at["xc"], 1, D)))
    ins += [
        Vec(subop=VecSubop.FDOT, n=(D, Nk, Nq, H), flags=int(VecFlag.B_KV6),
            a=Operand(at["q"], 4, 0, D * 4, Nq * D * 4), b=Operand(at["kc"], 1, D, 0, hk),
            c=Operand(at["ks"], 0, 2, 0, hs), d=Operand(at["s"], 0, 4, Nk * 4, Nq * Nk * 4)),
        Vec(subop=VecSubop.SOFTMAX, n=(Nk, Nq, H, 1), a=Operand(at["s"], 4, Nk * 4, Nq * Nk * 4),
            d=Operand(at["s"], 4, Nk * 4, Nq * Nk * 4)),
        Vec(subop=VecSubop.FDOT, n=(Nk, D, Nq, H), flags=int(VecFlag.B_KV6),
            a=Operand(at["s"], 4, 0, Nk * 4, Nq * Nk * 4), b=Operand(at["vc"], D, 1, 0, hk),
            c=Operand(at["vs"], 2, 0, 0, hs), d=Operand(at["o"], 0, 4, D * 4, Nq * D * 4)),
    ]
    for i in ins:
        i.check(kv6=True, max_kv=16)
    return mem, ins, dict(at=at, q=q, k=k, v=vv, shape=(H, Nq, Nk))


# The KV6 engine end to end (KVQ6 of k, v and special rows, then kv6 attention, against
# isa_sim byte for byte and golden attention over the kv_encode'd caches) runs on Verilator:
# sim/test_vecengine.py::test_vecengine_kv6_cosim (in this simulator it took 5 minutes).


def test_kv6_ops_without_kv6_hardware_are_error_5():
    """An engine built without KV6 (the FP16-only design) rejects KVQ6 and FDOT with
    B_KV6 with error 5 before any DRAM access, and still runs the next instruction."""
    from fpqvar_hw.isa import ErrorCode, Operand, Vec, VecSubop
    from fpqvar_hw.engines.vecengine import VectorEngine

    mem, ins, _ = kv6_attention_program(8)
    fdot = ins[3]
    gelu = Vec(subop=VecSubop.GELU, n=(8, 1, 1, 1), a=Operand(KV6_BASE + 0x100, 4),
               d=Operand(KV6_BASE + 0x7000, 4))
    res = run_engine(VectorEngine(C=64, max_kv=16, P=8), [ins[0], fdot, gelu], bytearray(mem),
                     base=KV6_BASE, seed=4)
    assert [(err, acc) for _, err, acc, _ in res[:2]] == [(ErrorCode.FIELD, 0)] * 2
    assert res[2][1] == 0 and res[2][3] != bytes(mem)

