"""The controller (fpqvar_hw.engines.control) in the Amaranth simulator, with modelled engines.

Each engine model accepts a ``cmd`` while idle, stays busy for the number of
cycles in instruction word 2, then reports the error code in word 3 (low
``abort`` cuts the run short after two cycles).  Word 1 carries the
instruction's index so the dispatch log can be checked.  The fetch client is
answered by a Python memory with random latency and gaps.

Checked: program order of dispatch; the sync rule (a ``sync`` instruction, or
any instruction with CTRL.coarse = 0, starts only with both engines idle);
overlap of GEMM and VEC with the coarse pipeline on; STATUS/PC/ERR_PC for HALT,
unknown opcodes, engine errors, fetch errors (AXI error, outside the window),
abort; a prefetch past the HALT never faults; the perf counters against the
models' own busy counts; the top elaborates with the real engines.
"""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from fpqvar_hw import isa
from fpqvar_hw.engines.control import Controller
from fpqvar_hw.isa import ErrorCode, Opcode

BASE, SIZE, PROG = 0x1000, 0x4000, 0x1000
ERR_LO, ERR_HI = 0x3000, 0x3400          # fetches here get SLVERR


def instr(op: int, idx: int, dur: int = 0, err: int = 0, sync: bool = False) -> bytes:
    w = [0] * isa.INSTR_WORDS
    w[0] = (op & 0xFF) | (int(sync) << isa.HDR_SYNC_BIT)
    w[1], w[2], w[3] = idx, dur, err
    return b"".join(v.to_bytes(4, "little") for v in w)


class Harness:
    def __init__(self, program: list[bytes], *, seed: int, coarse: bool = True, prog=PROG,
                 base=BASE, size=SIZE, abort_at: int | None = None, fetch_gap=0.3):
        self.dut = Controller()
        self.rng = random.Random(seed)
        self.mem = bytearray(0x10000)
        for i, ins in enumerate(program):
            self.mem[prog + 128 * i:prog + 128 * (i + 1)] = ins
        self.prog, self.base, self.size, self.coarse = prog, base, size, coarse
        self.abort_at = abort_at
        self.fetch_gap = fetch_gap
        self.log: list[tuple[int, str, int, bool]] = []      # (cycle, engine, idx, sync)
        self.busy_cycles = {"gemm": 0, "vec": 0, "both": 0}
        self.busy_now = {"gemm": False, "vec": False}
        self.violations: list[tuple[int, bool]] = []
        self.fetch_in_flight = False
        self.cycle = 0
        self.result: dict = {}

    # ---- AXI-Lite helpers
    async def wreg(self, ctx, name, value):
        a = self.dut.s_axil
        ctx.set(a.awaddr, isa.REGS[name])
        ctx.set(a.wdata, value)
        ctx.set(a.wstrb, 0xF)
        ctx.set(a.awvalid, 1)
        ctx.set(a.wvalid, 1)
        await ctx.tick().until(a.awready)
        ctx.set(a.awvalid, 0)
        ctx.set(a.wvalid, 0)
        ctx.set(a.bready, 1)
        await ctx.tick().until(a.bvalid)
        ctx.set(a.bready, 0)

    async def rreg(self, ctx, name):
        a = self.dut.s_axil
        ctx.set(a.araddr, isa.REGS[name])
        ctx.set(a.arvalid, 1)
        await ctx.tick().until(a.arready)
        ctx.set(a.arvalid, 0)
        ctx.set(a.rready, 1)
        data, = await ctx.tick().sample(a.rdata).until(a.rvalid)
        ctx.set(a.rready, 0)
        return data

    # ---- processes
    def engine(self, name: str, link, expected_op: int):
        async def proc(ctx):
            while True:
                ctx.set(link.cmd.ready, 1)
                _, _, valid, payload = await ctx.tick().sample(link.cmd.valid, link.cmd.payload)
                if not valid:
                    continue
                ctx.set(link.cmd.ready, 0)
                words = [int(payload[i]) for i in range(4)]
                assert words[0] & 0xFF == expected_op, f"{name} got opcode {words[0] & 0xFF:#x}"
                sync = bool(words[0] >> isa.HDR_SYNC_BIT & 1)
                self.log.append((self.cycle, name, words[1], sync))
                other = "vec" if name == "gemm" else "gemm"
                if (sync or not self.coarse) and self.busy_now[other]:
                    self.violations.append((words[1], sync))
                ctx.set(link.error, 0)
                ctx.set(link.busy, 1)
                self.busy_now[name] = True
                k = 0
                while k < max(1, words[2]):
                    _, _, abort = await ctx.tick().sample(link.abort)
                    k += 1
                    if abort:
                        await ctx.tick()
                        await ctx.tick()
                        break
                ctx.set(link.busy, 0)
                self.busy_now[name] = False
                ctx.set(link.error, words[3])
        proc.background = True
        return proc

    def fetcher(self):
        f = self.dut.fetch

        async def proc(ctx):
            while True:
                ctx.set(f.req.ready, 1)
                _, _, valid, addr, ln = await ctx.tick().sample(f.req.valid, f.req.payload.addr,
                                                                f.req.payload.len)
                if not valid:
                    continue
                ctx.set(f.req.ready, 0)
                self.fetch_in_flight = True
                assert ln == 7 and addr % 128 == 0, (addr, ln)
                assert self.base <= addr and addr + 128 <= self.base + self.size, \
                    f"fetch at {addr:#x} outside the window"
                for _ in range(self.rng.randrange(6)):
                    await ctx.tick()
                for b in range(8):
                    while self.rng.random() < self.fetch_gap:
                        ctx.set(f.resp.valid, 0)
                        await ctx.tick()
                    a = addr + 16 * b
                    ctx.set(f.resp.payload.data, int.from_bytes(self.mem[a:a + 16], "little"))
                    ctx.set(f.resp.payload.last, int(b == 7))
                    ctx.set(f.resp.payload.err, int(ERR_LO <= a < ERR_HI))
                    ctx.set(f.resp.valid, 1)
                    await ctx.tick().until(f.resp.ready)
                ctx.set(f.resp.valid, 0)
                self.fetch_in_flight = False
        proc.background = True
        return proc

    def monitor(self):
        d = self.dut

        async def proc(ctx):
            while True:
                _, _, gb, vb, ga, va = await ctx.tick().sample(d.gemm.busy, d.vec.busy,
                                                               d.gemm.abort, d.vec.abort)
                self.cycle += 1
                self.busy_cycles["gemm"] += gb
                self.busy_cycles["vec"] += vb
                self.busy_cycles["both"] += gb & vb
        proc.background = True
        return proc

    def host(self):
        async def proc(ctx):
            await self.wreg(ctx, "PROG_ADDR", self.prog)
            await self.wreg(ctx, "DRAM_BASE", self.base)
            await self.wreg(ctx, "DRAM_SIZE", self.size)
            ctrl = isa.CTRL_START | isa.CTRL_IRQ_EN | isa.CTRL_FINE | (isa.CTRL_COARSE * self.coarse)
            self.busy_cycles.update(gemm=0, vec=0, both=0)
            await self.wreg(ctx, "CTRL", ctrl)
            if self.prog % 128 == 0:        # (a misaligned PROG_ADDR ends the run at once)
                assert await self.rreg(ctx, "STATUS") & isa.STATUS_BUSY
            if self.abort_at is not None:
                for _ in range(self.abort_at):
                    await ctx.tick()
                await self.wreg(ctx, "CTRL", isa.CTRL_ABORT | isa.CTRL_IRQ_EN)
            for _ in range(20_000):
                if ctx.get(self.dut.irq):
                    break
                await ctx.tick()
            else:
                raise AssertionError("no irq: the controller hung")
            # a burst left in flight after done would block the shared R channel
            assert not self.fetch_in_flight, "run ended with an instruction fetch in flight"
            for name in isa.REGS:
                self.result[name] = await self.rreg(ctx, name)
        return proc

    def run(self) -> dict:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)
        for p in (self.engine("gemm", self.dut.gemm, Opcode.GEMM),
                  self.engine("vec", self.dut.vec, Opcode.VEC), self.fetcher(), self.monitor(),
                  self.host()):
            sim.add_testbench(p, background=getattr(p, "background", False))
        sim.run()
        return self.result


def status(err=0, aborted=False):
    s = isa.STATUS_DONE
    if err:
        s |= isa.STATUS_ERROR | (err << isa.STATUS_ERR_SHIFT)
    if aborted:
        s |= isa.STATUS_ABORTED
    return s


def random_program(rng, n, *, p_sync=0.3):
    prog = []
    for i in range(n):
        op = rng.choice((Opcode.GEMM, Opcode.VEC))
        prog.append(instr(op, i, dur=rng.choice((1, 2, rng.randrange(3, 60))),
                          sync=rng.random() < p_sync))
    return prog + [instr(Opcode.HALT, n)]


@pytest.mark.parametrize("coarse,seed", [(True, 1), (False, 2), (True, 3)])
def test_dispatch_order_sync_and_counters(coarse, seed):
    rng = random.Random(seed)
    n = 40
    prog = random_program(rng, n)
    h = Harness(prog, seed=seed, coarse=coarse)
    res = h.run()
    assert res["STATUS"] == status(), f"STATUS {res['STATUS']:#x}"
    assert res["PC"] == n + 1
    assert [i for _, _, i, _ in h.log] == list(range(n))
    assert not h.violations, f"sync rule violated (coarse={coarse}): {h.violations[:5]}"
    assert res["GEMM_CYCLES"] == h.busy_cycles["gemm"]
    assert res["VEC_CYCLES"] == h.busy_cycles["vec"]
    assert res["OVERLAP_CYCLES"] == h.busy_cycles["both"]
    assert res["CYCLES"] >= max(h.busy_cycles["gemm"], h.busy_cycles["vec"])
    if coarse:
        assert res["OVERLAP_CYCLES"] > 0, "the coarse pipeline never overlapped the engines"
    else:
        assert res["OVERLAP_CYCLES"] == 0


def test_halt_only_and_prefetch_past_end():
    # the HALT is the last instruction of the window: the prefetch of the next one is
    # outside the window and must not fault
    h = Harness([instr(Opcode.HALT, 0)], seed=4, prog=BASE + SIZE - 128)
    res = h.run()
    assert res["STATUS"] == status() and res["PC"] == 1 and res["ID"] == isa.REG_ID_VALUE


@pytest.mark.parametrize("case", ["opcode", "gemm_error", "vec_error", "fetch_axi", "fetch_window",
                                  "misaligned"])
def test_errors(case):
    rng = random.Random(sum(map(ord, case)))
    prog = random_program(rng, 6, p_sync=0.0)[:-1]
    prog_addr, size = PROG, SIZE
    if case == "opcode":
        prog += [instr(0x33, 6)]
        exp = (ErrorCode.OPCODE, 6)
    elif case == "gemm_error":
        prog += [instr(Opcode.GEMM, 6, dur=30, err=ErrorCode.AXI_WRITE), instr(Opcode.VEC, 7, dur=200)]
        exp = (ErrorCode.AXI_WRITE, 6)
    elif case == "vec_error":
        prog += [instr(Opcode.VEC, 6, dur=5, err=ErrorCode.FIELD), instr(Opcode.GEMM, 7, dur=200)]
        exp = (ErrorCode.FIELD, 6)
    elif case == "fetch_axi":
        prog_addr = ERR_LO - 6 * 128                    # instruction 6 lies in the SLVERR range
        exp = (ErrorCode.AXI_READ, 6)
    elif case == "fetch_window":
        size = PROG + 6 * 128 - BASE                     # the window ends after instruction 5
        exp = (ErrorCode.ADDRESS, 6)
    else:
        prog_addr = PROG + 64
        exp = (ErrorCode.FIELD, 0)
    prog += [instr(Opcode.HALT, 99)] * 4
    h = Harness(prog, seed=5, prog=prog_addr, size=size)
    res = h.run()
    assert res["STATUS"] == status(exp[0]), f"{case}: STATUS {res['STATUS']:#x}"
    assert (res["ERR_PC"], res["PC"]) == (exp[1], exp[1]), f"{case}: ERR_PC {res['ERR_PC']} PC {res['PC']}"
    assert all(i <= exp[1] + 1 for _, _, i, _ in h.log), "dispatched far past the error"


def test_abort():
    prog = [instr(Opcode.GEMM, 0, dur=500), instr(Opcode.VEC, 1, dur=500), instr(Opcode.HALT, 2)]
    h = Harness(prog, seed=6, abort_at=100)
    res = h.run()
    assert res["STATUS"] == status(aborted=True), f"STATUS {res['STATUS']:#x}"
    assert res["CYCLES"] < 300, "abort did not cut the run short"
    assert res["PC"] == 2
def test_top_elaborates_with_both_engines():
    """The small top's manifest (registers, AXI clients, ports) and its elaboration with
    both engines and the controller.  Amaranth's ``prepare`` (one driver per signal, ports
    resolved) is the emission's, in tests/test_build_cli.py (linted, synthesised, every
    module listed) and sim/test_top.py (co-simulated); running it here as well took 24 s."""
    from amaranth.hdl import Fragment

    from fpqvar_hw.config import get_preset
    from fpqvar_hw.engines.top import Accelerator

    cfg = get_preset("w4a4").replace(tm=1, tn=2, row_sets=2, lanes=8, quant_lanes=8)
    top = Accelerator(cfg, C=128, max_kv=8)
    man = top.manifest()
    assert man["registers"]["ID"] == "0x1C" and man["id"] == "0x46505156"
    assert [c for c in man["axi"]["read_clients"]][0] == "controller.fetch"
    assert {"matrix.wr", "vector.wr"} == set(man["axi"]["write_clients"])
    assert man["ports"]["m_axi__rdata"] == {"dir": "in", "width": 128}
    assert man["ports"]["s_axil__awaddr"] == {"dir": "in", "width": 8}
    frag = Fragment.get(top, None)
    assert {"matrix", "vector", "controller"} <= {name for _, name, _ in frag.subfragments}
