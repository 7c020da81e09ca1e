"""cocotb module for sim/test_top.py: the accelerator top (fpqvar_hw.engines.top.Accelerator).

The DUT's ``m_axi`` is served by a cocotbext-axi ``AxiRam`` (random pauses on
all five channels when ``pause`` > 0), ``s_axil`` is driven by an
``AxiLiteMaster``.  Every program's result is compared byte for byte with
:func:`fpqvar_hw.host.isa_sim.execute` on the same image (DRAM window and STATUS /
PC / ERR_PC).

Parameters (``tb_params``): ``preset`` + ``overrides`` (the AcceleratorConfig),
``max_kv``, ``seed``, ``pause`` (pause probability per channel and cycle),
``ram_size``, ``simdram`` (optional ``{latency, stall, write_latency}``: the harness's own
DRAM, :mod:`fpqvar_hw.host.simdram`, instead of the AxiRam), and for ``block_steps`` /
``instruction_profile``: ``steps`` (a JSON file written by :func:`sim.top_steps.prepare_steps`:
image, per-step programs, inputs and expected DRAM files), ``modes`` (list of [coarse,
fine]), ``cycles_out`` (JSON written with the measured cycle counts), ``rows`` and
``model`` (copied into it: rows per step and the model's
:class:`fpqvar_hw.flow.perf.ModelSpec` fields when it is not the digits VAR).
"""
from __future__ import annotations

import json
import logging
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from fpqvar_hw import isa
from fpqvar_hw import footprints, packing

from fpqvar_hw.host import isa_sim
from fpqvar_hw.host.compiler import assign_sync
from fpqvar_hw.config import get_preset
from fpqvar_hw.isa import ErrorCode, Gemm, GemmFlag, Halt, Operand, Vec, VecFlag, VecSubop
from sim.streams import tb_params

REGS = isa.REGS
PERIOD_NS = 10


def _cfg(p):
    return get_preset(p["preset"]).replace(**p.get("overrides", {}))


def _pauses(rng: random.Random, prob: float):
    while True:
        yield rng.random() < prob


class TopTB:
    """Clock, reset, the RAM model, the register master, and run helpers."""

    def __init__(self, dut, p):
        self.dut, self.p = dut, p
        self.log = dut._log
        self.cfg = _cfg(p)
        self.rng = random.Random(p["seed"])
        self.simdram = p.get("simdram")
        if self.simdram is None:
            dut.dram_ext.value = 1          # the harness's m_axi ports go to this AxiRam
            self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                              size=p["ram_size"])
            logs = [self.ram.write_if.log, self.ram.read_if.log]
            self.set_pause(p.get("pause", 0.0))
        else:                               # the harness's own DRAM (fpqvar_hw.host.simdram)
            from fpqvar_hw.host.simdram import Backdoor
            for name in ("latency", "stall", "write_latency"):
                getattr(dut, f"dram_{name}").value = int(self.simdram[name])
            dut.dram_seed.value = p["seed"] + 1
            dut.dram_ext.value = 0
            self.ram = Backdoor(dut)
            logs = []
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                  dut.clk, dut.rst)
        for log in logs + [self.axil.write_if.log, self.axil.read_if.log]:
            log.setLevel(logging.WARNING)          # one INFO line per burst otherwise
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    def set_pause(self, prob: float) -> None:
        chans = [self.ram.write_if.aw_channel, self.ram.write_if.w_channel,
                 self.ram.write_if.b_channel, self.ram.read_if.ar_channel,
                 self.ram.read_if.r_channel]
        for k, ch in enumerate(chans):
            if prob > 0:
                ch.set_pause_generator(_pauses(random.Random(f"{self.p['seed']}:{k}"), prob))
            else:
                ch.clear_pause_generator()

    async def reset(self, cycles: int = 5) -> None:
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    async def read(self, name: str) -> int:
        return await self.axil.read_dword(REGS[name])

    async def write(self, name: str, value: int) -> None:
        await self.axil.write_dword(REGS[name], value)

    def load(self, dram: isa_sim.Dram) -> None:
        self.ram.write(dram.base, bytes(dram.mem))

    async def start(self, prog_addr: int, base: int, size: int, *, coarse=True, fine=True) -> None:
        await self.write("STATUS", isa.STATUS_DONE)            # clear a previous done
        await self.write("PROG_ADDR", prog_addr)
        await self.write("DRAM_BASE", base)
        await self.write("DRAM_SIZE", size)
        await self.write("CTRL", isa.CTRL_START | isa.CTRL_IRQ_EN | (isa.CTRL_COARSE * coarse)
                         | (isa.CTRL_FINE * fine))

    async def wait_done(self, timeout_cycles: int) -> dict:
        if not int(self.dut.irq.value):
            t = await First(RisingEdge(self.dut.irq), Timer(timeout_cycles * PERIOD_NS, unit="ns"))
            if not int(self.dut.irq.value):
                st = await self.read("STATUS")
                raise AssertionError(f"no irq within {timeout_cycles} cycles (STATUS 0x{st:x}, "
                                     f"PC {await self.read('PC')}): the accelerator hung")
        return {n: await self.read(n) for n in ("STATUS", "PC", "ERR_PC", "CYCLES", "GEMM_CYCLES",
                                                "VEC_CYCLES", "OVERLAP_CYCLES")}

    async def run(self, prog_addr, base, size, *, coarse=True, fine=True, timeout_cycles=400_000):
        await self.start(prog_addr, base, size, coarse=coarse, fine=fine)
        return await self.wait_done(timeout_cycles)

    def compare(self, expected: isa_sim.Dram, what: str, regions=None) -> None:
        got = np.frombuffer(self.ram.read(expected.base, expected.size), np.uint8)
        exp = np.frombuffer(bytes(expected.mem), np.uint8)
        bad = np.nonzero(got != exp)[0]
        if bad.size:
            lines = []
            for off in bad[:8]:
                a = expected.base + int(off)
                word = a & ~3
                reg = next((f"{r[0]}+0x{word - r[1]:x}" for r in (regions or [])
                            if r[1] <= word < r[1] + r[2]), "?")
                g = int.from_bytes(self.ram.read(word, 4), "little")
                e = int.from_bytes(expected.read(word, 4), "little")
                lines.append(f"0x{word:08x} ({reg}): expected 0x{e:08x} "
                             f"({np.uint32(e).view(np.float32)!r}), got 0x{g:08x} "
                             f"({np.uint32(g).view(np.float32)!r})")
            raise AssertionError(f"{what}: {bad.size} DRAM bytes differ from isa_sim; first:\n  "
                                 + "\n  ".join(lines))

    def check_status(self, st: dict, res: isa_sim.RunResult, what: str) -> None:
        exp_status = isa.STATUS_DONE
        if not res.ok:
            exp_status |= isa.STATUS_ERROR | (int(res.error) << isa.STATUS_ERR_SHIFT)
        assert st["STATUS"] == exp_status, \
            f"{what}: STATUS 0x{st['STATUS']:x}, expected 0x{exp_status:x} ({res.error.name}: {res.message})"
        assert st["PC"] == res.pc, f"{what}: PC {st['PC']}, expected {res.pc}"
        if not res.ok:
            assert st["ERR_PC"] == res.err_pc, f"{what}: ERR_PC {st['ERR_PC']}, expected {res.err_pc}"


# ------------------------------------------------------------------ programs
BASE = 0x10000          # DRAM window used by the small programs
SIZE = 0x20000
PROG = BASE             # programs at the start of the window
DATA = BASE + 0x1000


def _f16_scales(rng, shape):
    e = rng.integers(-4, 2, size=shape)
    return np.float16(2.0) ** e.astype(np.float16)


def mixed_program(cfg, seed: int, *, gelu_repeats: int = 1):
    """A small GEMM (HAD + BIAS) -> GELU -> RESID -> CVT16 chain, sync flags from
    the compiler's ``assign_sync``.  Returns (Dram with data and program, instrs)."""
    rng = np.random.default_rng(seed)
    dram = isa_sim.Dram(BASE, SIZE)
    M, K, N = 3, 128, 6
    x_addr, w_addr, ws_addr = DATA, DATA + 0x1000, DATA + 0x2000
    bias_addr, signs_addr, y_addr = DATA + 0x2800, DATA + 0x2A00, DATA + 0x3000
    g_addr, r_addr, h_addr, gam_addr = DATA + 0x4000, DATA + 0x5000, DATA + 0x6000, DATA + 0x7000
    x = (rng.standard_normal((M, K)) * 2).astype("<f4")
    dram.write(x_addr, x.tobytes())
    codes = rng.integers(0, 16, size=(N, K), dtype=np.uint8)
    scales = _f16_scales(rng, (N, K // cfg.group_size)).view(np.uint16)
    cb, sb = packing.pack_gemm_weights(codes, scales, tn=cfg.tn, lanes=cfg.lanes,
                                   bits=cfg.qkv_weight.bits, group=cfg.group_size)
    dram.write(w_addr, cb)
    dram.write(ws_addr, sb)
    dram.write(bias_addr, rng.standard_normal(packing.gemm_padded_n(N, cfg.tn)).astype("<f4").tobytes())
    dram.write(signs_addr, packing.pack_sign_bits(rng.integers(0, 2, size=128)))
    dram.write(gam_addr, rng.standard_normal(M * N).astype("<f4").tobytes())
    instrs = [Gemm(act_addr=x_addr, act_stride=4 * K, m=M, k=K, n=N, w_addr=w_addr, ws_addr=ws_addr,
                   out_addr=y_addr, out_stride=4 * N, bias_addr=bias_addr, signs_addr=signs_addr,
                   flags=GemmFlag.HAD | GemmFlag.BIAS)]
    for _ in range(gelu_repeats):
        instrs.append(Vec(subop=VecSubop.GELU, n=(N, M, 1, 1),
                          a=Operand(y_addr, 4, 4 * N), d=Operand(g_addr, 4, 4 * N)))
    instrs += [
        Vec(subop=VecSubop.RESID, n=(N, M, 1, 1), a=Operand(y_addr, 4, 4 * N),
            b=Operand(gam_addr, 4, 4 * N), c=Operand(g_addr, 4, 4 * N), d=Operand(r_addr, 4, 4 * N)),
        Vec(subop=VecSubop.CVT16, n=(N, M, 1, 1), flags=VecFlag.D_FP16, a=Operand(r_addr, 4, 4 * N),
            d=Operand(h_addr, 2, 2 * N)),
        Halt(),
    ]
    pack = dict(tn=cfg.tn, lanes=cfg.lanes, bits=cfg.qkv_weight.bits, group=cfg.group_size)
    instrs = assign_sync(instrs, [footprints.footprint(i, **pack) for i in instrs], coarse=True)
    dram.write(PROG, isa.encode_program(instrs))
    return dram, instrs


def long_vec_program(n_instr: int = 24, n: int = 1024):
    """Many independent GELUs over a large array (a run long enough to interrupt)."""
    dram = isa_sim.Dram(BASE, SIZE)
    rng = np.random.default_rng(3)
    dram.write(DATA, rng.standard_normal(n).astype("<f4").tobytes())
    instrs = [Vec(subop=VecSubop.GELU, n=(n, 1, 1, 1), a=Operand(DATA, 4),
                  d=Operand(DATA + 0x8000 + 0x1000 * (k % 8), 4)) for k in range(n_instr)] + [Halt()]
    dram.write(PROG, isa.encode_program(instrs))
    return dram


async def check_program(tb: TopTB, dram: isa_sim.Dram, what: str, *, coarse=True, fine=True,
                        timeout_cycles=200_000) -> dict:
    """Load ``dram`` into the RAM, run it on the DUT and on isa_sim, compare."""
    tb.load(dram)
    exp = dram.copy()
    res = isa_sim.execute(exp, PROG, tb.cfg, max_kv=tb.p["max_kv"])
    st = await tb.run(PROG, dram.base, dram.size, coarse=coarse, fine=fine,
                      timeout_cycles=timeout_cycles)
    tb.check_status(st, res, what)
    if res.ok:
        tb.compare(exp, what)
    tb.log.info("%s: %s, %d cycles (gemm %d, vec %d, overlap %d)", what, res.error.name,
                st["CYCLES"], st["GEMM_CYCLES"], st["VEC_CYCLES"], st["OVERLAP_CYCLES"])
    return st


async def _setup(dut):
    p = tb_params()
    tb = TopTB(dut, p)
    await tb.reset()
    return tb


# --------------------------------------------------------------------- tests
@cocotb.test()
async def registers(dut):
    """(a) reset values, read/write of the plain registers with byte strobes, ID."""
    tb = await _setup(dut)
    assert await tb.read("ID") == isa.REG_ID_VALUE
    assert await tb.read("CTRL") == isa.CTRL_COARSE | isa.CTRL_FINE, "CTRL reset value"
    assert await tb.read("STATUS") == 0
    for name in ("PROG_ADDR", "DRAM_BASE", "DRAM_SIZE"):
        v = tb.rng.getrandbits(32)
        await tb.write(name, v)
        assert await tb.read(name) == v, name
    await tb.axil.write(REGS["DRAM_BASE"] + 1, b"\xab")          # one byte lane
    v = await tb.read("DRAM_BASE")
    assert (v >> 8) & 0xFF == 0xAB, f"byte-strobed write: 0x{v:08x}"
    await tb.write("CTRL", isa.CTRL_IRQ_EN)                      # coarse/fine off, irq_en on
    assert await tb.read("CTRL") == isa.CTRL_IRQ_EN
    await tb.write("ID", 0)                                      # read-only
    assert await tb.read("ID") == isa.REG_ID_VALUE
    assert await tb.axil.read_dword(0xFC) == 0, "unmapped offsets read 0"


@cocotb.test()
async def halt_only(dut):
    """(b) a one-instruction program: done, irq (only with irq_en), PC = 1."""
    tb = await _setup(dut)
    dram = isa_sim.Dram(BASE, SIZE)
    dram.write(PROG, Halt().encode())
    st = await check_program(tb, dram, "halt")
    assert int(dut.irq.value) == 1
    await tb.write("CTRL", 0)                                   # irq_en off: irq low, done stays
    await ClockCycles(dut.clk, 2)
    assert int(dut.irq.value) == 0 and await tb.read("STATUS") == isa.STATUS_DONE
    await tb.write("CTRL", isa.CTRL_IRQ_EN)
    await tb.write("STATUS", isa.STATUS_DONE)                   # write 1 to clear done
    await ClockCycles(dut.clk, 2)
    assert int(dut.irq.value) == 0 and await tb.read("STATUS") == 0
    assert 0 < st["CYCLES"] < 200, f"HALT-only run took {st['CYCLES']} cycles"


@cocotb.test()
async def bad_opcode(dut):
    """(c) unknown opcode after a valid instruction: error 1, ERR_PC 1; then a
    misaligned PROG_ADDR: error 5."""
    tb = await _setup(dut)
    dram, instrs = mixed_program(tb.cfg, 1)
    raw = bytearray(isa.encode_program(instrs))
    raw[128] = 0x7F                                         # instruction 1's opcode
    dram.write(PROG, bytes(raw))
    await check_program(tb, dram, "unknown opcode")
    st = await tb.run(PROG + 64, BASE, SIZE)
    assert st["STATUS"] == isa.STATUS_DONE | isa.STATUS_ERROR | (ErrorCode.FIELD << isa.STATUS_ERR_SHIFT), \
        f"misaligned PROG_ADDR: STATUS 0x{st['STATUS']:x}"


@cocotb.test()
async def window_error(dut):
    """(d) an instruction writing outside [DRAM_BASE, +SIZE): error 2, ERR_PC right, no
    hang; a program that runs off the window's end: error 2 at the fetch."""
    tb = await _setup(dut)
    dram, instrs = mixed_program(tb.cfg, 2)
    bad = Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=Operand(DATA, 4), d=Operand(BASE + SIZE - 8, 4))
    instrs = instrs[:2] + [bad] + instrs[2:]
    dram.write(PROG, isa.encode_program(instrs))
    await check_program(tb, dram, "VEC out of window")
    g = instrs[0]
    big = Gemm(**{**{k: getattr(g, k) for k in Gemm._WORDS}, "n": 4096, "sync": True,
                  "flags": g.flags})                                  # weights run off the end
    instrs2 = [instrs[1], big, Halt()]
    dram.write(PROG, isa.encode_program(instrs2))
    await check_program(tb, dram, "GEMM out of window")
    tb.ram.write(BASE + SIZE - 128, instrs[1].encode())           # no HALT before the end
    st = await tb.run(BASE + SIZE - 128, BASE, SIZE)
    assert st["STATUS"] >> isa.STATUS_ERR_SHIFT == ErrorCode.ADDRESS and st["ERR_PC"] == 1, st


@cocotb.test()
async def abort_then_run(dut):
    """(e) CTRL.abort in the middle of a long run: done + aborted, no error; the next
    run is correct."""
    tb = await _setup(dut)
    tb.load(long_vec_program())
    await tb.start(PROG, BASE, SIZE)
    await ClockCycles(dut.clk, 3000)
    assert await tb.read("STATUS") & isa.STATUS_BUSY, "the long program finished before the abort"
    await tb.write("CTRL", isa.CTRL_ABORT | isa.CTRL_IRQ_EN | isa.CTRL_COARSE | isa.CTRL_FINE)
    st = await tb.wait_done(20_000)
    assert st["STATUS"] == isa.STATUS_DONE | isa.STATUS_ABORTED, f"STATUS 0x{st['STATUS']:x}"
    dram, _ = mixed_program(tb.cfg, 5)
    await check_program(tb, dram, "after abort")


@cocotb.test()
async def reset_then_run(dut):
    """(f) DUT reset (the RAM model sees the same reset) in the middle of a run; the
    next run is correct."""
    tb = await _setup(dut)
    tb.load(long_vec_program())
    await tb.start(PROG, BASE, SIZE)
    await ClockCycles(dut.clk, 2000 + tb.rng.randrange(500))
    await tb.reset()
    assert await tb.read("STATUS") == 0
    dram, _ = mixed_program(tb.cfg, 6)
    await check_program(tb, dram, "after reset")
    dram, _ = mixed_program(tb.cfg, 7)
    await check_program(tb, dram, "after reset, coarse off", coarse=False, fine=False)


def _load_step(tb: TopTB, dram: isa_sim.Dram, spec: dict, s: dict):
    """Step ``s`` of ``spec`` (sim.top_steps.prepare_steps): its x and program into the RAM
    and into ``dram``, then the program on isa_sim (``dram`` holds the expected image).
    Returns (the step's inputs, isa_sim's result)."""
    step_in = np.load(s["input"])
    for mem in (dram, tb.ram):
        mem.write(s["x_addr"], step_in["x"].tobytes())
        mem.write(spec["prog_addr"], step_in["program"].tobytes())
    res = isa_sim.execute(dram, spec["prog_addr"], tb.cfg, max_kv=tb.p["max_kv"])
    assert res.ok, f"isa_sim: step {s['step']}: {res.message}"
    return step_in, res


@cocotb.test()
async def block_steps(dut):
    """(g) scale steps of the digits VAR (every block) from the compiler, on the RTL
    and on isa_sim; DRAM compared bit for bit after every step, per pipeline mode."""
    tb = await _setup(dut)
    p = tb.p
    spec = json.loads(open(p["steps"]).read())
    regions = spec["regions"]
    image = np.load(spec["image"])
    results = []
    for coarse, fine in p["modes"]:
        dram = isa_sim.Dram(spec["base"], spec["size"])
        dram.mem[:] = image.tobytes()
        tb.load(dram)
        for s in spec["steps"]:
            _, res = _load_step(tb, dram, spec, s)
            st = await tb.run(spec["prog_addr"], spec["base"], spec["size"], coarse=bool(coarse),
                              fine=bool(fine), timeout_cycles=s["timeout_cycles"])
            what = f"step {s['step']} coarse={coarse} fine={fine}"
            tb.check_status(st, res, what)
            tb.compare(dram, what, regions)
            results.append({"step": s["step"], "L": s["L"], "instructions": res.pc,
                            "coarse": bool(coarse), "fine": bool(fine),
                            **{k.lower(): st[k] for k in ("CYCLES", "GEMM_CYCLES", "VEC_CYCLES",
                                                          "OVERLAP_CYCLES")}})
            tb.log.info("%s: %d instructions, %d cycles (gemm %d, vec %d, overlap %d): DRAM equal",
                        what, res.pc, st["CYCLES"], st["GEMM_CYCLES"], st["VEC_CYCLES"],
                        st["OVERLAP_CYCLES"])
    with open(p["cycles_out"], "w") as f:
        json.dump({"config": p["overrides"], "preset": p["preset"], "pause": p["pause"],
                   "seed": p["seed"], "runs": results,
                   **{k: p[k] for k in ("rows", "model", "simdram") if p.get(k) is not None}},
                  f, indent=1)


@cocotb.test()
async def instruction_profile(dut):
    """Every instruction of the steps in ``steps`` run alone (a program of it and a HALT, in
    program order, so the DRAM evolves as in the whole step), on the AxiRam of ``pause`` or
    the harness's DRAM (``simdram``: latency, stall, write_latency); each one's counters go to
    ``cycles_out`` (``runs`` [{step, index, opcode, cycles, gemm_cycles, vec_cycles}]).  The
    DRAM after each step must equal isa_sim's whole-program result."""
    tb = await _setup(dut)
    p = tb.p
    spec = json.loads(open(p["steps"]).read())
    coarse, fine = p["modes"][0]
    dram = isa_sim.Dram(spec["base"], spec["size"])
    dram.mem[:] = np.load(spec["image"]).tobytes()
    tb.load(dram)
    out = []
    for s in spec["steps"]:
        step_in, _ = _load_step(tb, dram, spec, s)
        prog = isa.decode_program(step_in["program"].tobytes())
        for k, ins in enumerate(prog):
            if isinstance(ins, Halt):
                break
            tb.ram.write(spec["prog_addr"], isa.encode_program([ins, Halt()]))
            st = await tb.run(spec["prog_addr"], spec["base"], spec["size"], coarse=bool(coarse),
                              fine=bool(fine), timeout_cycles=s["timeout_cycles"])
            assert st["STATUS"] == isa.STATUS_DONE, f"step {s['step']} instruction {k}: STATUS 0x{st['STATUS']:x}"
            out.append({"step": s["step"], "index": k, "opcode": int(ins.opcode),
                        **{n.lower(): st[n] for n in ("CYCLES", "GEMM_CYCLES", "VEC_CYCLES")}})
        tb.ram.write(spec["prog_addr"], step_in["program"].tobytes())
        tb.compare(dram, f"step {s['step']} instruction by instruction", spec["regions"])
    with open(p["cycles_out"], "w") as f:
        json.dump({"config": p["overrides"], "preset": p["preset"], "pause": p.get("pause", 0.0),
                   "simdram": tb.simdram, "seed": p["seed"], "coarse": bool(coarse),
                   "fine": bool(fine), "runs": out}, f, indent=1)
