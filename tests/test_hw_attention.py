"""The vector engine's attention array (fpqvar_hw.engines.attention.AttentionArray) in the
Amaranth simulator, small builds (T x N = 2 x 2, 2 x 4 or 4 x 2 with two rows per drain,
rows up to 64 elements; 8 x 4 with one drain where the drain must bind): FDOTs
of attention shape against the instruction-level reference (``isa_sim.vec``), the whole
memory image compared byte for byte, with DRAM responses after random latencies, random
gaps between beats and random request/write backpressure; declined instructions (nothing
accessed); abort at any point followed by a correct instruction.  Each test runs its
instructions one after the other in one simulation of one build (the simulator spends
most of a small case compiling the design).  The preset's 32 x 4 array (rows of 680,
and 35 queries x 6 keys: edge tiles both ways) runs inside the vector engine on
Verilator (sim/test_vecengine_wide.py), 2 x 4 in sim/test_vecengine.py and in the top
(sim/test_top.py, sim/test_tiny_image.py)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from fpqvar_hw import isa
from fpqvar_hw.engines.attention import AttentionArray
from fpqvar_hw.host import isa_sim
from fpqvar_hw.isa import Operand, Vec, VecFlag, VecSubop

BASE, SIZE = 0x10000, 0x8000


def run(dut: AttentionArray, mem: bytearray, jobs: list[tuple], *, seed: int,
        lat=(2, 9), p_ready=0.8, p_beat=0.85, max_cycles=20000,
        idle_cycles=24, check=None) -> list[tuple[int, int, int, bytes]]:
    """Hand ``jobs`` ((instruction, abort cycle or None[, memory image]), one after the
    other) to ``dut`` with ``mem`` (bytes from BASE) behind its read and write clients;
    a job with an image first loads it into ``mem`` (while the array is idle).  Returns
    per job (cycles until ``busy`` fell, declined, error, ``mem`` then); ``check(k, that)``,
    if given, runs on job ``k``'s as soon as it is done (a failure stops the simulation
    there).  Fails when
    ``busy`` falls with a request outstanding, on a request in the ``idle_cycles`` after
    that, on a burst that is not 16-byte aligned or crosses 4 KiB, or on a request
    outside ``mem``."""
    rng = random.Random(seed)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    out = []

    async def bench(ctx):
        ctx.set(dut.dram_base, BASE)
        ctx.set(dut.dram_size, len(mem))
        queued = {"a": [], "b": []}        # (due cycle, addr, beats) per read client
        cur = {"a": None, "b": None}
        wresp = []
        for v, abort_at, *image in jobs:
            if image:
                mem[:] = image[0]
            raw = v.encode()
            ctx.set(dut.cmd.payload, [int.from_bytes(raw[4 * i:4 * i + 4], "little")
                                      for i in range(isa.INSTR_WORDS)])
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            cyc, seen = 0, False
            ports = (("a", dut.rd_a), ("b", dut.rd_b))
            while True:
                cyc += 1
                assert cyc < max_cycles, f"busy after {max_cycles} cycles (hang) for {v}"
                ctx.set(dut.abort, int(cyc == abort_at))
                for x, port in ports:
                    ctx.set(port.req.ready, rng.random() < p_ready)
                    if cur[x] is None and queued[x] and queued[x][0][0] <= cyc:
                        cur[x] = list(queued[x].pop(0)[1:])
                    give = cur[x] is not None and rng.random() < p_beat
                    if give:
                        o = cur[x][0] - BASE
                        ctx.set(port.resp.payload.data, int.from_bytes(mem[o:o + 16], "little"))
                        ctx.set(port.resp.payload.last, cur[x][1] == 1)
                        ctx.set(port.resp.payload.err, 0)
                    ctx.set(port.resp.valid, give)
                ctx.set(dut.wr.req.ready, rng.random() < p_ready)
                done_w = bool(wresp) and wresp[0] <= cyc
                if done_w:
                    wresp.pop(0)
                ctx.set(dut.wr.resp.valid, done_w)
                ctx.set(dut.wr.resp.payload.err, 0)
                seen_rd = {x: (ctx.get(p.req.valid) and ctx.get(p.req.ready), ctx.get(p.req.payload.addr),
                               ctx.get(p.req.payload.len), ctx.get(p.resp.valid) and ctx.get(p.resp.ready))
                           for x, p in ports}
                w = (ctx.get(dut.wr.req.valid) and ctx.get(dut.wr.req.ready), ctx.get(dut.wr.req.payload.addr),
                     ctx.get(dut.wr.req.payload.data), ctx.get(dut.wr.req.payload.strb))
                busy = ctx.get(dut.busy)
                await ctx.tick()
                for x, (req, addr, ln, beat) in seen_rd.items():
                    if req:
                        assert addr % 16 == 0 and addr % 4096 + (ln + 1) * 16 <= 4096, (x, addr, ln)
                        assert BASE <= addr and addr + (ln + 1) * 16 <= BASE + len(mem), (x, addr, ln)
                        queued[x].append((cyc + rng.randint(*lat), addr, ln + 1))
                    if beat:
                        cur[x][0] += 16
                        cur[x][1] -= 1
                        if cur[x][1] == 0:
                            cur[x] = None
                if w[0]:
                    o = w[1] - BASE
                    assert 0 <= o < len(mem)
                    for k in range(16):
                        if w[3] >> k & 1:
                            mem[o + k] = w[2] >> 8 * k & 0xFF
                    wresp.append(cyc + rng.randint(1, 5))
                seen |= bool(busy)
                if seen and not busy:
                    assert not wresp and not any(queued.values()) and cur == {"a": None, "b": None}, \
                        "busy fell with a request outstanding"
                    break
            out.append((cyc, ctx.get(dut.declined), ctx.get(dut.error), bytes(mem)))
            if check is not None:
                check(len(out) - 1, out[-1])
            # idle: no request of any kind until the next instruction
            for _ in range(idle_cycles):
                for p in (dut.rd_a, dut.rd_b, dut.wr):
                    ctx.set(p.req.ready, 1)
                    assert not ctx.get(p.req.valid), "a request while idle"
                await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    return out


def reference(mem: bytes, v: Vec) -> bytes:
    dram = isa_sim.Dram(BASE, len(mem))
    dram.mem[:] = mem
    isa_sim.vec(dram, v)
    return bytes(dram.mem)


def attention_fdot(rng: np.random.Generator, mem: bytearray, kind: str, *, n0: int, rows_b: int,
                   rows_a: int, heads: int, a_off: int, b_stride: int) -> Vec:
    """An FDOT as the compiler emits them: A rows (q or p) of ``n0`` FP32 starting
    ``a_off`` bytes into a word, B rows of ``n0`` FP16 ``b_stride`` bytes apart (q.K: the K
    cache, rows back to back; p.V: the transposed V cache), D one FP32 per (i1, i2, i3)."""
    a_at = BASE + 0x100 + a_off
    b_at = BASE + 0x2000 + (0 if kind == "qk" else 2 * int(rng.integers(8)))
    d_at = BASE + 0x6000 + 4 * int(rng.integers(4))
    a_row = n0 * 4 + 4 * int(rng.integers(3))
    a = rng.standard_normal((heads, rows_a, a_row // 4)).astype(np.float32)
    b = rng.standard_normal(heads * rows_b * b_stride // 2).astype(np.float16)
    mem[a_at - BASE:a_at - BASE + a.nbytes] = a.tobytes()
    mem[b_at - BASE:b_at - BASE + b.nbytes] = b.tobytes()
    return Vec(subop=VecSubop.FDOT, n=(n0, rows_b, rows_a, heads), flags=int(VecFlag.B_FP16),
               a=Operand(a_at, 4, 0, a_row, rows_a * a_row),
               b=Operand(b_at, 2, b_stride, 0, rows_b * b_stride),
               d=Operand(d_at, 0, 4, rows_b * 4, rows_a * rows_b * 4))


def _memory(seed: int) -> bytearray:
    return bytearray(np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8).tobytes())


#: Per array shape (T, N): FDOT cases (seed, kind, n0, rows_b, rows_a, heads, a_off,
#: b_stride), run one after the other in one simulation
CASES = {
    (2, 4): [(1, "qk", 16, 7, 3, 2, 0, 32),     # K rows back to back, edge tiles both ways
             (3, "pv", 13, 6, 5, 2, 4, 30)],    # V rows of 13 of 15 tokens: odd offsets
    (4, 2): [(6, "qk", 16, 5, 7, 2, 4, 32),     # two rows per drain; 3-row edge tiles
             (8, "pv", 11, 3, 6, 1, 8, 26)],    # two rows of the second tile, odd offsets
    (2, 2): [(2, "qk", 24, 4, 2, 1, 8, 48),     # A rows start mid-word
             (4, "pv", 1, 3, 3, 1, 12, 18),     # one-token rows
             (5, "qk", 9, 1, 1, 3, 4, 22)],     # one dot product per tile
}


@pytest.mark.parametrize("T,N", list(CASES))
def test_array_matches_the_reference(T, N):
    jobs, wants = [], []
    for seed, kind, n0, rows_b, rows_a, heads, a_off, b_stride in CASES[(T, N)]:
        rng = np.random.default_rng(seed)
        mem = _memory(seed)
        v = attention_fdot(rng, mem, kind, n0=n0, rows_b=rows_b, rows_a=rows_a, heads=heads,
                           a_off=a_off, b_stride=b_stride)
        jobs.append((v, None, bytes(mem)))
        wants.append(reference(bytes(mem), v))

    def check(k, result):
        case, (cycles, declined, error, got), want = CASES[(T, N)][k], result, wants[k]
        assert (declined, error) == (0, 0), case
        bad = [hex(BASE + i) for i in range(SIZE) if got[i] != want[i]]
        assert not bad, f"case {case}: {len(bad)} bytes differ, first at {bad[:4]}"

    res = run(AttentionArray(T=T, N=N, max_e=24), bytearray(SIZE), jobs, seed=T * 10 + N,
              check=check)
    assert len(res) == len(CASES[(T, N)])


def test_array_runs_at_the_tile_rate():
    """Memory that answers at once: every tile takes ``tile_cycles(n0)``, plus the check
    before the first load and the tree and writes after the last."""
    rng = np.random.default_rng(7)
    mem = _memory(7)
    v = attention_fdot(rng, mem, "qk", n0=24, rows_b=8, rows_a=4, heads=1, a_off=0, b_stride=48)
    [(cycles, declined, error, _)] = run(AttentionArray(T=2, N=2, max_e=24), mem, [(v, None)],
                                         seed=7, lat=(1, 1), p_ready=1.0, p_beat=1.0)
    tiles = (8 // 2) * (4 // 2)
    floor = AttentionArray.CHECK_CYCLES + tiles * AttentionArray.tile_cycles(24) \
        + AttentionArray.tail_cycles(AttentionArray.drain_results(2, 2))
    assert (declined, error) == (0, 0)
    assert floor <= cycles <= floor + 40, (cycles, floor)


class _OneDrain(AttentionArray):
    """The array with one drain (all rows of a tile): the drains bind on a 32-lane build,
    half the lanes (and half the simulator's compile time) the 2-drain array needs."""
    DRAINS = 1


def test_array_waits_for_the_drains_on_short_rows():
    """More results per drain than a short row's tile lasts: the drain (one result per
    cycle) binds, each SNAP waits ``drain_cycles(T, N)`` after the previous one (the
    model's bound, ``asbuilt.att_cost``); bits as the reference.  One drain on 8 x 4 lanes
    (:class:`_OneDrain`): the SNAP wait is the same logic for any number of drains (the
    built two, each on rows of one parity, run here on 2 x 4, 4 x 2 and on 32 x 4 in
    sim/test_vecengine_wide.py); with two drains the 2-drain array binds on 16 x 4 lanes,
    whose simulator compile took 30 s more, twice (this test and a mutant's)."""
    T, N, n0 = 8, 4, 4
    A = _OneDrain
    assert A.drain_cycles(T, N) > A.tile_cycles(n0) > AttentionArray.drain_cycles(T, N)
    rng = np.random.default_rng(11)
    mem = _memory(11)
    v = attention_fdot(rng, mem, "qk", n0=n0, rows_b=32, rows_a=16, heads=1, a_off=0,
                       b_stride=2 * n0)
    want = reference(bytes(mem), v)
    [(cycles, declined, error, got)] = run(A(T=T, N=N, max_e=8), mem, [(v, None)],
                                           seed=11, lat=(1, 1), p_ready=1.0, p_beat=1.0)
    tiles = (32 // N) * (16 // T)
    floor = A.CHECK_CYCLES + A.tile_cycles(n0) + (tiles - 1) * A.drain_cycles(T, N) \
        + A.tail_cycles(A.drain_results(T, N))
    assert (declined, error) == (0, 0) and got == want
    # slack: the first tile's A rows and the last writes (measured 44 here)
    assert floor <= cycles <= floor + 60, (cycles, floor)
    # at the tile rate alone it would be (tiles - 1) * 10 cycles shorter: beyond the slack
    assert cycles > floor - (tiles - 1) * (A.drain_cycles(T, N) - A.tile_cycles(n0)) + 60


def _declined_cases():
    ok = attention_fdot(np.random.default_rng(0), bytearray(SIZE), "qk", n0=8, rows_b=3, rows_a=2,
                        heads=1, a_off=0, b_stride=16)

    def vec(**kw):
        fields = dict(subop=ok.subop, n=ok.n, flags=ok.flags, a=ok.a, b=ok.b, d=ok.d)
        fields.update(kw)
        return Vec(**fields)
    return [
        ("D inside A", vec(d=Operand(ok.a.base + 4, 0, 4, 16))),
        ("D inside B", vec(d=Operand(ok.b.base + 8, 0, 4, 12))),
        ("A depends on i1", vec(a=Operand(ok.a.base, 4, 32, 32))),
        ("B depends on i2", vec(b=Operand(ok.b.base, 2, 16, 48))),
        ("B FP32", vec(flags=0, b=Operand(ok.b.base, 4, 32))),
        ("B rows strided", vec(b=Operand(ok.b.base, 4, 32), flags=int(VecFlag.B_FP16))),
        ("row longer than max_e", vec(n=(25, 3, 2, 1))),
        ("D past the window", vec(d=Operand(BASE + SIZE - 8, 0, 4, 12))),
        ("B wraps around 2^32", vec(b=Operand(ok.b.base, 2, 16, 0, -(1 << 20)), n=(8, 3, 2, 2))),
        ("not FDOT", vec(subop=VecSubop.RESID)),
    ]


def test_array_declines_without_access():
    """Every instruction the array must decline, one after the other: declined, no error,
    memory untouched, within the check's cycles."""
    cases = _declined_cases()
    before = bytes(_memory(3))
    res = run(AttentionArray(T=2, N=2, max_e=24), bytearray(before),
              [(v, None) for _, v in cases], seed=3)
    for (what, _), (cycles, declined, error, after) in zip(cases, res):
        assert (declined, error) == (1, 0), what
        assert after == before and cycles <= AttentionArray.CHECK_CYCLES + 1, what


def test_abort_at_any_point_then_a_correct_instruction():
    """Abort in the check, in the first loads, mid-run and in the last writes: busy falls
    with nothing outstanding, error stays 0, and the next instruction is exact (a job a
    flush cut short must not resume after it)."""
    rng = np.random.default_rng(11)
    mem = _memory(11)
    # K rows back to back: a B tile is one job of 4 rows x 8 words, two bursts; the next
    # instruction is a small one on other rows (words a cut-short job fetched after the
    # flush would land in its tiles)
    v = attention_fdot(rng, mem, "qk", n0=64, rows_b=8, rows_a=3, heads=1, a_off=4, b_stride=128)
    nxt = Vec(subop=v.subop, n=(16, 4, 2, 1), flags=v.flags, a=v.a,
              b=Operand(v.b.base + 0x800, 2, 32), d=Operand(v.d.base + 0x400, 0, 4, 16))
    # one simulation: per abort point the cut instruction (on the original memory), then
    # the next one on whatever the cut one left
    points = (1, 13, 14, 15, 60)
    jobs = [job for at in points for job in ((v, at, bytes(mem)), (nxt, None))]
    res = run(AttentionArray(T=2, N=4, max_e=64), bytearray(mem), jobs, seed=11)
    for k, at in enumerate(points):
        (_, *flags_cut, left), (_, *flags_next, got) = res[2 * k:2 * k + 2]
        assert (flags_cut, flags_next) == ([0, 0], [0, 0]), (at, flags_cut, flags_next)
        assert got == reference(left, nxt), f"abort at {at}: the next instruction differs"
