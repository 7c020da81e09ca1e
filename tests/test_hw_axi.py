"""AXI arbiters and the AXI4-Lite bridge (fpqvar_hw.engines.axi) in the Amaranth simulator.

A Python AXI4 slave (in-order, one ID) with random AR/AW/W readiness, random
R/B latency and gaps answers the arbiters; clients issue random bursts/writes
and accept responses under random backpressure.  Checks: every beat reaches the
client that asked for it, in order, with the right data and error flag; writes
land with their strobes; AXI rules (fixed awlen/awsize/wlast, valid held until
ready with a stable payload); at most ``max_outstanding`` bursts in flight;
round-robin grants when every client is requesting.
"""
from __future__ import annotations

import random

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.sim import Simulator

from fpqvar_hw.engines.axi import AXILiteBridge, ReadArbiter, WriteArbiter

MEM_BYTES = 1 << 16
ERR_LO, ERR_HI = 0xC000, 0xD000       # the slave answers SLVERR for beats in this range


def _word(mem: bytearray, addr: int) -> int:
    return int.from_bytes(mem[addr:addr + 16], "little")


def _run(dut, processes, *, deadline: int = 50_000):
    """Run until every foreground process (the clients) returned; fail after
    ``deadline`` cycles (a hang)."""
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for p in processes:
        sim.add_testbench(p, background=getattr(p, "background", False))

    async def watchdog(ctx):
        for _ in range(deadline):
            await ctx.tick()
        raise AssertionError(f"not finished after {deadline} cycles: the arbiter hung")

    sim.add_testbench(watchdog, background=True)
    sim.run()


def _background(f):
    f.background = True
    return f


# --------------------------------------------------------------------- reads
def _read_slave(axi, mem, rng, *, ar_stall, r_gap, stats, max_outstanding):
    """AR acceptor and in-order R generator (SLVERR inside [ERR_LO, ERR_HI))."""
    queue: list[tuple[int, int]] = []

    @_background
    async def ar(ctx):
        while True:
            ready = int(rng.random() >= ar_stall)
            ctx.set(axi.arready, ready)
            _, _, valid, addr, ln, size, burst = await ctx.tick().sample(
                axi.arvalid, axi.araddr, axi.arlen, axi.arsize, axi.arburst)
            if valid and ready:
                assert size == 4 and burst == 1, f"arsize {size} arburst {burst}"
                assert addr % 16 == 0 and (addr % 4096) + 16 * (ln + 1) <= 4096, \
                    f"burst at {addr:#x} len {ln} crosses a 4 KiB page"
                queue.append((addr, ln))
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
                assert stats["in_flight"] <= max_outstanding, "more bursts in flight than the tag FIFO"
                stats["ar"].append(addr)

    @_background
    async def r(ctx):
        while True:
            if not queue:
                ctx.set(axi.rvalid, 0)
                await ctx.tick()
                continue
            addr, ln = queue.pop(0)
            for beat in range(ln + 1):
                while rng.random() < r_gap:
                    ctx.set(axi.rvalid, 0)
                    await ctx.tick()
                a = addr + 16 * beat
                ctx.set(axi.rdata, _word(mem, a))
                ctx.set(axi.rresp, 2 if ERR_LO <= a < ERR_HI else 0)
                ctx.set(axi.rlast, int(beat == ln))
                ctx.set(axi.rvalid, 1)
                await ctx.tick().until(axi.rready)
            stats["in_flight"] -= 1
            ctx.set(axi.rvalid, 0)

    return [ar, r]


def _read_client(dut, i, bursts, got, rng, *, idle, stall):
    c = dut.clients[i]

    async def req(ctx):
        for addr, ln in bursts:
            while rng.random() < idle:
                ctx.set(c.req.valid, 0)
                await ctx.tick()
            ctx.set(c.req.payload.addr, addr)
            ctx.set(c.req.payload.len, ln)
            ctx.set(c.req.valid, 1)
            await ctx.tick().until(c.req.ready)
        ctx.set(c.req.valid, 0)

    async def resp(ctx):
        n = sum(ln + 1 for _, ln in bursts)
        while len(got) < n:
            ready = int(rng.random() >= stall)
            ctx.set(c.resp.ready, ready)
            _, _, valid, d, last, err = await ctx.tick().sample(
                c.resp.valid, c.resp.payload.data, c.resp.payload.last, c.resp.payload.err)
            if valid and ready:
                got.append((d, last, err))
        ctx.set(c.resp.ready, 1)
        for _ in range(50):   # nothing extra arrives
            _, _, valid = await ctx.tick().sample(c.resp.valid)
            assert not valid, f"client {i} received more beats than it asked for"

    return [req, resp]


def _random_bursts(rng, n, region):
    lo, hi = region
    out = []
    for _ in range(n):
        ln = rng.randrange(16)
        page = rng.randrange(lo // 4096, hi // 4096)
        off = rng.randrange(0, 256 - (ln + 1) + 1) * 16
        out.append((page * 4096 + off, ln))
    return out


@pytest.mark.parametrize("n_clients,max_outstanding,ar_stall,r_gap,idle,stall,seed", [
    (3, 4, 0.3, 0.3, 0.3, 0.3, 1),
    (1, 1, 0.5, 0.2, 0.0, 0.5, 2),
    (4, 8, 0.0, 0.0, 0.0, 0.0, 3),     # no backpressure anywhere: back-to-back
    (2, 2, 0.6, 0.5, 0.5, 0.6, 4),
])
def test_read_arbiter(n_clients, max_outstanding, ar_stall, r_gap, idle, stall, seed):
    rng = random.Random(seed)
    mem = bytearray(rng.randbytes(MEM_BYTES))
    dut = ReadArbiter(n_clients, max_outstanding=max_outstanding)
    stats = {"in_flight": 0, "max_in_flight": 0, "ar": []}
    bursts = [_random_bursts(rng, 25, (0x8000, 0xE000)) for _ in range(n_clients)]
    got = [[] for _ in range(n_clients)]
    procs = _read_slave(dut.axi, mem, random.Random(seed + 100), ar_stall=ar_stall, r_gap=r_gap,
                        stats=stats, max_outstanding=max_outstanding)
    for i in range(n_clients):
        procs += _read_client(dut, i, bursts[i], got[i], random.Random(seed * 10 + i),
                              idle=idle, stall=stall)
    _run(dut, procs)
    for i in range(n_clients):
        exp = []
        for addr, ln in bursts[i]:
            for b in range(ln + 1):
                a = addr + 16 * b
                exp.append((_word(mem, a), int(b == ln), int(ERR_LO <= a < ERR_HI)))
        assert len(got[i]) == len(exp), f"client {i}: {len(got[i])} beats, expected {len(exp)}"
        bad = [k for k, (e, g) in enumerate(zip(exp, got[i])) if e != g]
        assert not bad, (f"client {i}: {len(bad)} wrong beats, first #{bad[0]}: expected "
                         f"(data, last, err) {exp[bad[0]]}, got {got[i][bad[0]]}")
    assert any(e for g in got for _, _, e in g), "the error region was never exercised"
    if max_outstanding > 1 and ar_stall == 0 and r_gap == 0 or seed == 1:
        assert stats["max_in_flight"] > 1, "the arbiter never had several bursts in flight"


def test_read_arbiter_round_robin():
    """Every client always requesting: grants rotate 0, 1, 2, 0, 1, 2, ..."""
    n = 3
    dut = ReadArbiter(n, max_outstanding=8)
    mem = bytearray(MEM_BYTES)
    stats = {"in_flight": 0, "max_in_flight": 0, "ar": []}
    bursts = [[(0x1000 * (i + 1) + 16 * k, 0) for k in range(8)] for i in range(n)]
    got = [[] for _ in range(n)]
    procs = _read_slave(dut.axi, mem, random.Random(5), ar_stall=0.3, r_gap=0.0, stats=stats,
                        max_outstanding=8)
    for i in range(n):
        procs += _read_client(dut, i, bursts[i], got[i], random.Random(i), idle=0.0, stall=0.0)
    _run(dut, procs)
    owners = [a // 0x1000 - 1 for a in stats["ar"]]
    assert owners == [k % n for k in range(3 * 8)], f"grant order {owners}"


# -------------------------------------------------------------------- writes
def _write_slave(axi, mem, rng, *, aw_stall, w_stall, b_gap, log):
    aws: list[int] = []
    ws: list[tuple[int, int]] = []

    @_background
    async def aw(ctx):
        while True:
            ready = int(rng.random() >= aw_stall)
            ctx.set(axi.awready, ready)
            _, _, valid, addr, ln, size, burst = await ctx.tick().sample(
                axi.awvalid, axi.awaddr, axi.awlen, axi.awsize, axi.awburst)
            if valid and ready:
                assert (ln, size, burst) == (0, 4, 1), f"awlen {ln} awsize {size} awburst {burst}"
                aws.append(addr)

    @_background
    async def w(ctx):
        while True:
            ready = int(rng.random() >= w_stall)
            ctx.set(axi.wready, ready)
            _, _, valid, d, strb, last = await ctx.tick().sample(
                axi.wvalid, axi.wdata, axi.wstrb, axi.wlast)
            if valid and ready:
                assert last == 1, "wlast must be 1 on a single-beat write"
                ws.append((d, strb))

    @_background
    async def b(ctx):
        while True:
            if not (aws and ws):
                ctx.set(axi.bvalid, 0)
                await ctx.tick()
                continue
            addr = aws.pop(0)
            d, strb = ws.pop(0)
            err = ERR_LO <= addr < ERR_HI
            if not err:
                for k in range(16):
                    if strb >> k & 1:
                        mem[addr + k] = (d >> (8 * k)) & 0xFF
            log.append(addr)
            while rng.random() < b_gap:
                ctx.set(axi.bvalid, 0)
                await ctx.tick()
            ctx.set(axi.bresp, 2 if err else 0)
            ctx.set(axi.bvalid, 1)
            await ctx.tick().until(axi.bready)
            ctx.set(axi.bvalid, 0)

    return [aw, w, b]


def _write_client(dut, i, writes, got, rng, *, idle, stall):
    c = dut.clients[i]

    async def req(ctx):
        for addr, d, strb in writes:
            while rng.random() < idle:
                ctx.set(c.req.valid, 0)
                await ctx.tick()
            ctx.set(c.req.payload.addr, addr)
            ctx.set(c.req.payload.data, d)
            ctx.set(c.req.payload.strb, strb)
            ctx.set(c.req.valid, 1)
            await ctx.tick().until(c.req.ready)
        ctx.set(c.req.valid, 0)

    async def resp(ctx):
        while len(got) < len(writes):
            ready = int(rng.random() >= stall)
            ctx.set(c.resp.ready, ready)
            _, _, valid, err = await ctx.tick().sample(c.resp.valid, c.resp.payload.err)
            if valid and ready:
                got.append(err)
        ctx.set(c.resp.ready, 1)
        for _ in range(50):
            _, _, valid = await ctx.tick().sample(c.resp.valid)
            assert not valid, f"client {i} received more write responses than writes"

    return [req, resp]


@pytest.mark.parametrize("n_clients,max_outstanding,aw_stall,w_stall,b_gap,idle,stall,seed", [
    (2, 4, 0.3, 0.5, 0.3, 0.3, 0.3, 11),
    (1, 1, 0.0, 0.0, 0.0, 0.0, 0.0, 12),
    (3, 8, 0.6, 0.1, 0.5, 0.0, 0.5, 13),
])
def test_write_arbiter(n_clients, max_outstanding, aw_stall, w_stall, b_gap, idle, stall, seed):
    rng = random.Random(seed)
    mem = bytearray(MEM_BYTES)
    exp_mem = bytearray(MEM_BYTES)
    dut = WriteArbiter(n_clients, max_outstanding=max_outstanding)
    writes, exp_err = [], []
    for i in range(n_clients):
        lo = 0x2000 * (i + 1)             # client i owns [lo, lo + 0x2000) plus the error page
        wl, el = [], []
        for _ in range(30):
            addr = (ERR_LO if rng.random() < 0.15 else lo) + 16 * rng.randrange(0x100)
            d, strb = rng.getrandbits(128), rng.getrandbits(16) or 1
            wl.append((addr, d, strb))
            err = ERR_LO <= addr < ERR_HI
            el.append(int(err))
            if not err:
                for k in range(16):
                    if strb >> k & 1:
                        exp_mem[addr + k] = (d >> (8 * k)) & 0xFF
        writes.append(wl)
        exp_err.append(el)
    got = [[] for _ in range(n_clients)]
    log: list[int] = []
    procs = _write_slave(dut.axi, mem, random.Random(seed + 100), aw_stall=aw_stall, w_stall=w_stall,
                         b_gap=b_gap, log=log)
    for i in range(n_clients):
        procs += _write_client(dut, i, writes[i], got[i], random.Random(seed * 10 + i),
                               idle=idle, stall=stall)
    _run(dut, procs)
    assert len(log) == sum(len(w) for w in writes)
    for i in range(n_clients):
        assert got[i] == exp_err[i], f"client {i}: write responses {got[i]}, expected {exp_err[i]}"
    diff = [a for a in range(MEM_BYTES) if mem[a] != exp_mem[a]]
    assert not diff, f"{len(diff)} bytes differ, first at {diff[0]:#x}"


# ------------------------------------------------------------ AXI4-Lite bridge
class _RegFile(Elaboratable):
    """Four plain 32-bit registers behind an AXILiteBridge (byte strobes honoured)."""

    def __init__(self):
        from amaranth.hdl import Array, Signal
        self.bridge = AXILiteBridge()
        self.regs = Array(Signal(32, name=f"r{i}") for i in range(4))

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = b = self.bridge
        with m.If(b.w_en):
            reg = self.regs[b.w_addr[2:4]]
            for k in range(4):
                with m.If(b.w_strb[k]):
                    m.d.sync += reg[8 * k:8 * k + 8].eq(b.w_data[8 * k:8 * k + 8])
        m.d.comb += b.r_data.eq(self.regs[b.r_addr[2:4]])
        return m


def test_axilite_bridge():
    dut = _RegFile()
    a = dut.bridge.axil
    rng = random.Random(7)
    model = [0, 0, 0, 0]
    ops = []
    for _ in range(60):
        idx = rng.randrange(4)
        if rng.random() < 0.5:
            d, strb = rng.getrandbits(32), rng.getrandbits(4)
            ops.append(("w", idx, d, strb))
        else:
            ops.append(("r", idx, 0, 0))

    async def master(ctx):
        for kind, idx, d, strb in ops:
            if kind == "w":
                # AW and W raised at different times; the slave waits for both
                ctx.set(a.awaddr, 4 * idx)
                ctx.set(a.awvalid, 1)
                for _ in range(rng.randrange(3)):
                    await ctx.tick()
                    assert not ctx.get(a.awready), "AW accepted without W"
                ctx.set(a.wdata, d)
                ctx.set(a.wstrb, strb)
                ctx.set(a.wvalid, 1)
                await ctx.tick().until(a.awready & a.wready)
                ctx.set(a.awvalid, 0)
                ctx.set(a.wvalid, 0)
                ctx.set(a.bready, 1)
                resp, = await ctx.tick().sample(a.bresp).until(a.bvalid)
                ctx.set(a.bready, 0)
                assert resp == 0
                for k in range(4):
                    if strb >> k & 1:
                        model[idx] = (model[idx] & ~(0xFF << 8 * k)) | (d & (0xFF << 8 * k))
            else:
                ctx.set(a.araddr, 4 * idx + rng.randrange(4))   # low bits are ignored
                ctx.set(a.arvalid, 1)
                await ctx.tick().until(a.arready)
                ctx.set(a.arvalid, 0)
                for _ in range(rng.randrange(3)):                 # R held until rready
                    await ctx.tick()
                ctx.set(a.rready, 1)
                data, resp = await ctx.tick().sample(a.rdata, a.rresp).until(a.rvalid)
                ctx.set(a.rready, 0)
                assert (data, resp) == (model[idx], 0), f"read r{idx}: {data:#x}, expected {model[idx]:#x}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(master)
    sim.run()
