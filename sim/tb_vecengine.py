"""cocotb module for sim/test_vecengine.py: the vector engine (fpqvar_hw.engines.vecengine) on
DRAM served by sim.dma_model, against the golden model, instruction by instruction.

Parameters (``tb_params``): ``seed``, ``C``, ``max_kv``, ``P``, ``kv6`` (the build;
``kv6`` optional, default False), ``n_random`` (random instructions in
``random_instructions``), ``max_elems`` (size bound of a random instruction),
``attention`` ([H, Nq, Nk] of the attention sequences).  A KV6 build also gets random
KVQ6 and FDOT with B_KV6 instructions and the ``attention_kv6`` sequence; a build
without KV6 must answer both with error 5.

Every instruction is checked the same way: the expected DRAM image is the image before
the instruction with the golden results (``fpqvar_quant.golden``) written at the
destination addresses (``isa.operand_address``); after ``busy`` falls the whole
DRAM image must equal it byte for byte (so a stray write anywhere fails too) and
``error`` must be 0.  Mismatch reports name the destination element, its address, and
expected vs actual bits and values.
"""
from __future__ import annotations

import random
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from fpqvar_hw import isa

from fpqvar_hw.host import isa_sim
from fpqvar_hw.units.vector import Softmax
from fpqvar_hw.isa import ErrorCode, Operand, Vec, VecFlag, VecSubop
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as gv
from fpqvar_quant.golden.attention import attention, kv_decode, kv_encode
from sim.dma_model import DmaMemory
from sim.streams import tb_params

BASE = 0x0001_0000          # first byte of the DMA model's memory (and of the window)
MEM_BYTES = 1 << 19


# ------------------------------------------------------------------ operand addressing
def element_addresses(op: Operand, n: tuple[int, ...], *, row_const: bool = False) -> np.ndarray:
    """int64 [n3, n2, n1, n0] (n0 = 1 when ``row_const``) of ``isa.operand_address``."""
    n0 = 1 if row_const else n[0]
    i = np.ix_(np.arange(n[3]), np.arange(n[2]), np.arange(n[1]), np.arange(n0))
    addr = op.base + i[3] * op.s0 + i[2] * op.s1 + i[1] * op.s2 + i[0] * op.s3
    return (addr & 0xFFFFFFFF).astype(np.int64)


def load(mem: np.ndarray, addr: np.ndarray, size: int) -> np.ndarray:
    off = addr - BASE
    out = np.zeros(addr.shape, np.uint64)
    for k in range(size):
        out |= mem[off + k].astype(np.uint64) << np.uint64(8 * k)
    return out.astype(np.uint32 if size == 4 else np.uint16)


def store(mem: np.ndarray, addr: np.ndarray, bits: np.ndarray, size: int) -> None:
    off = (addr - BASE).reshape(-1)
    b = bits.reshape(-1).astype(np.uint64)
    for k in range(size):
        mem[off + k] = ((b >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint8)


def reference_vec(mem: np.ndarray, v: Vec) -> np.ndarray:
    """The DRAM image ``mem`` (uint8, byte 0 at BASE) after ``v``, from the one
    instruction-level reference executor (``fpqvar_hw.host.isa_sim.vec``)."""
    dram = isa_sim.Dram(BASE, len(mem))
    dram.mem[:] = mem.tobytes()
    isa_sim.vec(dram, v)
    return np.frombuffer(bytes(dram.mem), dtype=np.uint8)


def row_cycles() -> int:
    """An upper bound on one row's phase latencies in any row unit (the pipelines a row
    waits for between its passes), from the unit latencies the RTL publishes."""
    from fpqvar_hw.flow.asbuilt import top_latencies
    lat = top_latencies(32, (1, 1))
    return (sum(v for k, v in lat.items() if k.startswith(("ln_", "sm_", "l2_")))
            + 4 * lat["drain"] + 2 * lat["mul"] + lat["fdot"] + lat["fdot_tree"])


# ------------------------------------------------------------------ random instructions
class Allocator:
    """Bump allocator over the DRAM image with random gaps and sub-word offsets."""

    def __init__(self, rng: random.Random, size: int):
        self.rng, self.size, self.next = rng, size, 0

    def reset(self) -> None:
        self.next = 0

    def take(self, nbytes: int, align: int) -> int:
        start = (self.next + 15) // 16 * 16 + self.rng.randrange(0, 16, align) + 16 * self.rng.randint(0, 3)
        if start + nbytes > self.size:
            self.next = 0
            start = self.rng.randrange(0, 16, align)
            if nbytes > self.size:
                raise ValueError(f"operand of {nbytes} bytes does not fit the {self.size}-byte DRAM image")
        self.next = start + nbytes
        return BASE + start


def rand_operand(rng: random.Random, alloc: Allocator, n: tuple[int, ...], esize: int, *,
                 zero: tuple[int, ...] = (), ignore: tuple[int, ...] = ()) -> Operand:
    """A layout of an [n3, n2, n1, n0] operand: dims in a random memory order (i0 innermost
    most of the time), random padding, random negative strides; dims in ``zero`` are
    broadcast (stride 0), dims in ``ignore`` get a random (even misaligned) stride."""
    order = [0, 1, 2, 3]
    if rng.random() < 0.3:
        rng.shuffle(order)
    strides, span = [0] * 4, esize
    for d in order:
        if d in zero or d in ignore:
            continue
        strides[d] = span
        span = span * n[d] + esize * rng.choice([0, 0, 0, 1, 3])
    for d in range(4):
        if strides[d] and rng.random() < 0.2:
            strides[d] = -strides[d]
    lo = sum(min(0, (n[d] - 1) * strides[d]) for d in range(4))
    hi = sum(max(0, (n[d] - 1) * strides[d]) for d in range(4))
    base = alloc.take(hi - lo + esize, esize) - lo
    for d in ignore:
        strides[d] = rng.randrange(-(1 << 20), 1 << 20)
    return Operand(base, *strides)


def fill(mem: np.ndarray, rng: np.random.Generator, op: Operand, n, esize: int, *, scale: float,
         row_const: bool = False, specials: bool = False) -> None:
    addr = element_addresses(op, n, row_const=row_const)
    x = (rng.standard_normal(addr.shape) * scale * rng.uniform(0.2, 1.0)).astype(np.float32)
    if specials and x.size > 4:
        flat = x.reshape(-1)
        k = rng.integers(0, flat.size, 3)
        flat[k] = rng.choice(np.array([0.0, -0.0, 1e-42, -3e38, np.inf, np.nan], np.float32), 3)
    bits = g.convert(x.view(np.uint32), "fp32", "fp16") if esize == 2 else x.view(np.uint32)
    store(mem, addr, bits, esize)


def rand_vec(rng: random.Random, nrng: np.random.Generator, mem: np.ndarray, alloc: Allocator,
             sub: VecSubop, *, C: int, max_kv: int, max_elems: int, kv6: bool = False) -> Vec:
    """A random valid instruction of sub-op ``sub`` over freshly allocated, filled operands
    (``kv6``: the build has the KV6 hardware, so FDOT may read B as e2m3fn codes)."""
    def counts(n0: int) -> tuple[int, int, int, int]:
        rest = max(1, max_elems // n0)
        n1 = rng.randint(1, min(4, rest))
        n2 = rng.randint(1, max(1, min(3, rest // n1)))
        n3 = rng.randint(1, max(1, min(2, rest // (n1 * n2))))
        return (n0, n1, n2, n3)

    flags = 0
    b_size = 4
    ops: dict[str, Operand] = {}
    if sub is VecSubop.LNMOD:
        n = counts(C)
        ops["a"] = rand_operand(rng, alloc, n, 4)
        # adaLN scale/shift: one row per image (broadcast over rows) or per row
        bz = (1,) if rng.random() < 0.6 else ()
        ops["b"] = rand_operand(rng, alloc, n, 4, zero=bz)
        ops["c"] = rand_operand(rng, alloc, n, 4, zero=bz)
    elif sub is VecSubop.RESID:
        n = counts(rng.randint(1, 48))
        ops["a"] = rand_operand(rng, alloc, n, 4)
        ops["b"] = rand_operand(rng, alloc, n, 4, zero=(1, 2, 3) if rng.random() < 0.5 else ())
        ops["c"] = rand_operand(rng, alloc, n, 4)
    elif sub in (VecSubop.GELU, VecSubop.CVT16):
        n = counts(rng.randint(1, 48))
        ops["a"] = rand_operand(rng, alloc, n, 4)
        flags = VecFlag.D_FP16 if sub is VecSubop.CVT16 else 0
    elif sub is VecSubop.L2NT:
        n = counts(isa.L2NT_LEN)
        ops["a"] = rand_operand(rng, alloc, n, 4)
        ops["b"] = rand_operand(rng, alloc, n, 4, ignore=(0,))
    elif sub is VecSubop.SOFTMAX:
        n0 = rng.choice([1, 2, 7, 8, 9, max_kv, rng.randint(1, max_kv)])
        n = counts(n0)
        ops["a"] = rand_operand(rng, alloc, n, 4)
    elif sub is VecSubop.KVQ6:
        n = counts(isa.KV6_GROUP)
        ops["a"] = rand_operand(rng, alloc, n, 4)
        ops["c"] = rand_operand(rng, alloc, n, 2, ignore=(0,))     # written: a scale per row
    else:  # FDOT
        n = counts(rng.choice([1, 5, 8, 64, rng.randint(1, 100)]))
        if rng.random() < 0.5:
            flags |= VecFlag.B_FP16
        elif kv6 and rng.random() < 0.6:
            flags |= VecFlag.B_KV6
            # scales: one per B row (QK^T style, broadcast over i0) or per element (PV style)
            ops["c"] = rand_operand(rng, alloc, n, 2, zero=(0,) if rng.random() < 0.5 else ())
        b_size = 2 if flags & VecFlag.B_FP16 else 1 if flags & VecFlag.B_KV6 else 4
        ops["a"] = rand_operand(rng, alloc, n, 4)
        ops["b"] = rand_operand(rng, alloc, n, b_size)
    dn = (1,) + n[1:] if sub is VecSubop.FDOT else n
    d = rand_operand(rng, alloc, dn, 2 if flags & VecFlag.D_FP16 else 1 if sub is VecSubop.KVQ6 else 4,
                     ignore=(0,) if sub is VecSubop.FDOT else ())
    scale = {VecSubop.CVT16: 3e4, VecSubop.SOFTMAX: 8.0, VecSubop.GELU: 4.0,
             VecSubop.KVQ6: 50.0}.get(sub, 2.0)
    fill(mem, nrng, ops["a"], n, 4, scale=scale, specials=sub in (VecSubop.RESID, VecSubop.GELU,
                                                                   VecSubop.CVT16, VecSubop.KVQ6))
    if flags & VecFlag.B_KV6:       # any byte: the upper two bits of a code are ignored
        store(mem, element_addresses(ops["b"], n), nrng.integers(0, 256, n[::-1]), 1)
        fill(mem, nrng, ops["c"], n, 2, scale=4.0)
    elif "b" in ops:
        fill(mem, nrng, ops["b"], n, b_size,
             scale=3.0 if sub is VecSubop.L2NT else 1.0, row_const=sub is VecSubop.L2NT)
    if "c" in ops and sub in (VecSubop.LNMOD, VecSubop.RESID):
        fill(mem, nrng, ops["c"], n, 4, scale=1.0)
    return Vec(subop=sub, n=n, flags=int(flags), d=d, **ops)


# ------------------------------------------------------------------ testbench
class VecEngineTB:
    """Clock, reset, the DMA memory model and an instruction runner for ``VectorEngine``."""

    def __init__(self, dut: Any, p: dict):
        self.dut, self.p = dut, p
        self.seed = p["seed"]
        self.mem = bytearray(MEM_BYTES)
        self.view = np.frombuffer(self.mem, dtype=np.uint8)    # shares the buffer
        self.dma = DmaMemory(dut, dut.clk, self.mem, base=BASE, seed=self.seed,
                             read_ports=("rd_a", "rd_b", "rd_c"), write_ports=("wr",),
                             lat_min=2, lat_max=14, gap=0.2, req_backpressure=0.2)
        self.log = dut._log
        self.cycles = 0

    async def start(self) -> None:
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        d = self.dut
        d.cmd__valid.value = 0
        d.abort.value = 0
        d.fine.value = 1
        d.dram_base.value = BASE
        d.dram_size.value = MEM_BYTES
        d.rst.value = 1
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)
        self.dma.start()

    async def issue(self, v: Vec | bytes) -> None:
        """Hand one instruction to ``cmd`` (waits for the handshake)."""
        raw = v if isinstance(v, bytes) else v.encode()
        d = self.dut
        d.cmd__payload.value = int.from_bytes(raw, "little")
        d.cmd__valid.value = 1
        while True:
            await RisingEdge(d.clk)
            if int(d.cmd__ready.value):
                break
        d.cmd__valid.value = 0

    async def wait_idle(self, timeout: int) -> int:
        """Cycles until ``busy`` is low (fails after ``timeout``)."""
        d = self.dut
        await RisingEdge(d.clk)
        for c in range(timeout):
            await RisingEdge(d.clk)
            if not int(d.busy.value):
                return c
        raise AssertionError(f"engine still busy after {timeout} cycles (hang)")

    async def run(self, v: Vec, *, what: str, fine: bool = True) -> int:
        """Execute ``v`` and compare the whole DRAM image with the golden result."""
        assert self.p["P"] == isa.VEC_P, "isa_sim executes with the ISA's tree-sum width"
        want = reference_vec(self.view, v)
        self.dut.fine.value = int(fine)
        elems = int(np.prod(v.n))
        await self.issue(v)
        timeout = (60 if fine else 300) * elems + (elems // v.n[0]) * row_cycles() + 4000
        try:
            cycles = await self.wait_idle(timeout)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e} for {v}") from None
        self.dut.fine.value = 1
        err = int(self.dut.error.value)
        assert err == 0, f"{what}: error code {err} ({ErrorCode(err).name}) for {v}"
        diff = np.nonzero(self.view != want)[0]
        if len(diff):
            raise AssertionError(f"{what}: {len(diff)} bytes differ; {self.describe(v, want, diff)}")
        self.log.info("%s: %d elements, %d cycles (%.2f elem/cycle)", what, elems, cycles,
                      elems / max(cycles, 1))
        return cycles

    def describe(self, v: Vec, want: np.ndarray, diff: np.ndarray, limit: int = 6) -> str:
        sub = VecSubop(v.subop)
        size = v.elem_bytes("d")
        d_addr = element_addresses(v.d, v.n, row_const=sub is VecSubop.FDOT).reshape(-1)
        lines = []
        for byte in diff[:limit * 4]:
            addr = BASE + int(byte)
            hit = np.nonzero((d_addr <= addr) & (addr < d_addr + size))[0]
            if not len(hit):
                lines.append(f"byte at {addr:#x} outside D (KVQ6: C holds the scales) differs: "
                             f"expected {want[byte]:#04x}, got {self.view[byte]:#04x}")
                continue
            a = int(d_addr[hit[-1]])
            e = int.from_bytes(want[a - BASE:a - BASE + size].tobytes(), "little")
            got = int.from_bytes(self.view[a - BASE:a - BASE + size].tobytes(), "little")
            if size == 1:
                lines.append(f"D code #{int(hit[-1])} at {a:#x}: expected {e:#04x}, got {got:#04x}")
            else:
                fmt = "fp16" if size == 2 else "fp32"
                lines.append(f"D element #{int(hit[-1])} at {a:#x}: expected {e:#x} "
                             f"({float(g.to_float(e, fmt))!r}), got {got:#x} ({float(g.to_float(got, fmt))!r})")
            if len(lines) >= limit:
                break
        return f"{sub.name} n={v.n} flags={v.flags}\n  " + "\n  ".join(dict.fromkeys(lines))

    async def abort_after(self, v: Vec, cycles: int, *, what: str, timeout: int) -> int:
        """Issue ``v``, pulse ``abort`` ``cycles`` cycles later (the engine must still be
        busy), and check it returns to idle with error 0 and no DMA request outstanding;
        returns the cycles from the abort to idle."""
        d = self.dut
        await self.issue(v)
        await ClockCycles(d.clk, cycles)
        assert int(d.busy.value), f"{what}: finished before the abort ({v.n})"
        d.abort.value = 1
        await RisingEdge(d.clk)
        d.abort.value = 0
        idle = await self.wait_idle(timeout)
        assert int(d.error.value) == 0, "abort must not report an error"
        await RisingEdge(d.clk)
        assert self.dma.idle, f"{what}: busy fell with DMA requests outstanding"
        return idle

    async def expect_error(self, v: Vec | bytes, code: ErrorCode, *, what: str) -> None:
        await self.issue(v)
        await self.wait_idle(20000)
        err = int(self.dut.error.value)
        assert err == code, f"{what}: expected error {int(code)} ({code.name}), got {err}"
        self.log.info("%s: error %d (%s) as expected", what, err, code.name)

    def finish(self) -> None:
        assert not self.dma.violations, "DMA protocol violations:\n" + "\n".join(self.dma.violations[:10])
        assert self.dma.idle, "DMA requests still outstanding at the end"
        self.log.info("DMA: %s", self.dma.stats)


def build_subops(p: dict) -> list[VecSubop]:
    """The sub-ops the build executes (KVQ6 only in a KV6 build, ``p["kv6"]``)."""
    return [s for s in VecSubop if s is not VecSubop.KVQ6 or p.get("kv6", False)]


def setup_tb(dut, label: str):
    p = tb_params()
    tb = VecEngineTB(dut, p)
    rng = random.Random(f"{p['seed']}:{label}")
    return p, tb, rng


@cocotb.test()
async def random_instructions(dut):
    """Random instructions of every sub-op of the build (each at least twice), random
    shapes, layouts, strides (negative, broadcast, padded), FP16 (KV6 builds: also
    e2m3fn) B for FDOT, softmax rows 1..max_kv; a few with fine pipelining off."""
    p, tb, rng = setup_tb(dut, "random")
    nrng = np.random.default_rng(p["seed"])
    await tb.start()
    alloc = Allocator(rng, MEM_BYTES)
    kinds = build_subops(p)
    subs = kinds * 2 + [rng.choice(kinds) for _ in range(max(0, p["n_random"] - 2 * len(kinds)))]
    rng.shuffle(subs)
    for k, sub in enumerate(subs):
        v = rand_vec(rng, nrng, tb.view, alloc, sub, C=p["C"], max_kv=p["max_kv"],
                     max_elems=p["max_elems"], kv6=p.get("kv6", False))
        fine = not (k % 7 == 3 and int(np.prod(v.n)) <= 400)
        await tb.run(v, what=f"#{k} {sub.name}{'' if fine else ' (fine off)'}", fine=fine)
    # rows that cross 4 KiB boundaries (bursts must split there), FP32 and FP16 operands
    page = BASE + 0x3000
    await tb.run(Vec(subop=VecSubop.FDOT, n=(48, 3, 1, 1), flags=int(VecFlag.B_FP16),
                     a=Operand(page - 100, 4, 4096), b=Operand(page - 36, 2, 4096),
                     d=Operand(page + 0x2000, 0, 4)), what="FDOT rows across 4 KiB")
    await tb.run(Vec(subop=VecSubop.RESID, n=(40, 2, 1, 1), a=Operand(page + 0x1000 - 84, 4, 160),
                     b=Operand(page + 0x2000 - 4, 4, 0), c=Operand(page + 0x3000 - 12, 4, 160),
                     d=Operand(page + 0x4000 - 44, 4, 160)), what="RESID rows across 4 KiB")
    st = tb.dma.stats
    assert st.read_beats > st.read_bursts, f"no multi-beat bursts were used: {st}"
    tb.finish()


@cocotb.test()
async def attention_sequence(dut):
    """QK^T (FDOT, K cache FP16) -> SOFTMAX -> PV (FDOT, V cache FP16) over all heads and
    queries in three instructions; the result equals golden ``attention`` bit for bit."""
    p, tb, rng = setup_tb(dut, "attention")
    H, Nq, Nk = p["attention"]
    D = isa.L2NT_LEN
    nrng = np.random.default_rng(p["seed"] + 1)
    await tb.start()
    q = gv.l2norm_temperature(nrng.standard_normal((H, Nq, D)).astype(np.float32),
                              np.full((H, 1, 1), 2.5, np.float32))
    k16 = g.convert(gv.l2norm_temperature(nrng.standard_normal((Nk, H, D)).astype(np.float32))
                    .view(np.uint32), "fp32", "fp16")
    v16 = g.convert(nrng.standard_normal((Nk, H, D)).astype(np.float32).view(np.uint32), "fp32", "fp16")
    q_at, k_at, v_at = BASE + 0x100, BASE + 0x4000, BASE + 0x10000
    s_at, o_at = BASE + 0x20000, BASE + 0x30000
    tb.view[q_at - BASE:q_at - BASE + q.nbytes] = np.frombuffer(q.tobytes(), np.uint8)
    tb.view[k_at - BASE:k_at - BASE + k16.nbytes] = np.frombuffer(k16.tobytes(), np.uint8)
    tb.view[v_at - BASE:v_at - BASE + v16.nbytes] = np.frombuffer(v16.tobytes(), np.uint8)
    tok = H * D * 2                                        # KV cache bytes per token
    qk = Vec(subop=VecSubop.FDOT, n=(D, Nk, Nq, H), flags=int(VecFlag.B_FP16),
             a=Operand(q_at, 4, 0, D * 4, Nq * D * 4),
             b=Operand(k_at, 2, tok, 0, D * 2),
             d=Operand(s_at, 0, 4, Nk * 4, Nq * Nk * 4))
    sm = Vec(subop=VecSubop.SOFTMAX, n=(Nk, Nq, H, 1),
             a=Operand(s_at, 4, Nk * 4, Nq * Nk * 4, 0), d=Operand(s_at, 4, Nk * 4, Nq * Nk * 4, 0))
    pv = Vec(subop=VecSubop.FDOT, n=(Nk, D, Nq, H), flags=int(VecFlag.B_FP16),
             a=Operand(s_at, 4, 0, Nk * 4, Nq * Nk * 4),
             b=Operand(v_at, tok, 2, 0, D * 2),
             d=Operand(o_at, 0, 4, D * 4, Nq * D * 4))
    for name, v in (("QK^T", qk), ("softmax (in place)", sm), ("PV", pv)):
        await tb.run(v, what=f"attention {name}")
    kf = g.to_float(g.convert(k16, "fp16", "fp32"), "fp32").transpose(1, 0, 2)
    vf = g.to_float(g.convert(v16, "fp16", "fp32"), "fp32").transpose(1, 0, 2)
    want = g.canon(attention(q, kf, vf, p["P"]))
    got = np.frombuffer(tb.view[o_at - BASE:o_at - BASE + want.nbytes].tobytes(), np.uint32).reshape(want.shape)
    bad = np.argwhere(got != want)
    assert not len(bad), f"attention output differs at {len(bad)} places, first {bad[:4].tolist()}"
    tb.finish()


@cocotb.test()
async def attention_kv6(dut):
    """KV6: KVQ6 of FP32 k and v rows (as the qkv GEMM leaves them) into e2m3fn code
    caches (odd base) and FP16 scale caches, then QK^T (FDOT B_KV6, C s0 = 0: one scale
    per key row) -> SOFTMAX -> PV (FDOT B_KV6, C s0 = 2: i0 runs over the keys); each
    instruction against isa_sim, the output against golden ``attention`` over the
    ``kv_encode``d caches.  A build without KV6 answers KVQ6 and B_KV6 with error 5."""
    p, tb, rng = setup_tb(dut, "attention_kv6")
    H, Nq, Nk = p["attention"]
    D = isa.L2NT_LEN
    nrng = np.random.default_rng(p["seed"] + 3)
    await tb.start()
    q = gv.l2norm_temperature(nrng.standard_normal((H, Nq, D)).astype(np.float32),
                              np.full((H, 1, 1), 2.5, np.float32))
    k = gv.l2norm_temperature(nrng.standard_normal((Nk, H, D)).astype(np.float32))
    v = (nrng.standard_normal((Nk, H, D)) * nrng.uniform(0.05, 20, (Nk, H, 1))).astype(np.float32)
    row = D * 4 + 16                                       # FP32 k/v rows, padded
    at = {name: BASE + off for name, off in dict(q=0x100, k=0x4000, v=0xC000, kc=0x14001, vc=0x16001,
                                                 ks=0x18002, vs=0x18802, s=0x20000, o=0x30000).items()}
    assert Nk * H * row <= 0x8000 and H * Nk * D <= 0x2000 and H * Nk * 2 <= 0x800
    tb.view[at["q"] - BASE:at["q"] - BASE + q.nbytes] = np.frombuffer(q.tobytes(), np.uint8)
    for name, x in (("k", k), ("v", v)):
        for j in range(Nk):
            for h in range(H):
                o = at[name] - BASE + (j * H + h) * row
                tb.view[o:o + D * 4] = np.frombuffer(x[j, h].tobytes(), np.uint8)
    hc, hs = Nk * D, Nk * 2                                # code / scale bytes per head
    kvq = [Vec(subop=VecSubop.KVQ6, n=(D, H, Nk, 1), a=Operand(at[x], 4, row, H * row),
               c=Operand(at[x + "s"], 0, hs, 2), d=Operand(at[x + "c"], 1, hc, D)) for x in ("k", "v")]
    qk = Vec(subop=VecSubop.FDOT, n=(D, Nk, Nq, H), flags=int(VecFlag.B_KV6),
             a=Operand(at["q"], 4, 0, D * 4, Nq * D * 4), b=Operand(at["kc"], 1, D, 0, hc),
             c=Operand(at["ks"], 0, 2, 0, hs), d=Operand(at["s"], 0, 4, Nk * 4, Nq * Nk * 4))
    sm = Vec(subop=VecSubop.SOFTMAX, n=(Nk, Nq, H, 1),
             a=Operand(at["s"], 4, Nk * 4, Nq * Nk * 4, 0), d=Operand(at["s"], 4, Nk * 4, Nq * Nk * 4, 0))
    pv = Vec(subop=VecSubop.FDOT, n=(Nk, D, Nq, H), flags=int(VecFlag.B_KV6),
             a=Operand(at["s"], 4, 0, Nk * 4, Nq * Nk * 4), b=Operand(at["vc"], D, 1, 0, hc),
             c=Operand(at["vs"], 2, 0, 0, hs), d=Operand(at["o"], 0, 4, D * 4, Nq * D * 4))
    if not p.get("kv6", False):
        for what, ins in (("KVQ6", kvq[0]), ("FDOT B_KV6", qk)):
            before = tb.view.copy()
            await tb.expect_error(ins, ErrorCode.FIELD, what=f"{what} without KV6 hardware")
            assert np.array_equal(before, tb.view), f"{what}: memory changed"
        tb.finish()
        return
    for name, ins in (("KVQ6 k", kvq[0]), ("KVQ6 v", kvq[1]), ("QK^T", qk), ("softmax", sm), ("PV", pv)):
        await tb.run(ins, what=f"kv6 attention {name}")
    enc = [kv_encode(g.convert(x.transpose(1, 0, 2).copy().view(np.uint32), "fp32", "fp16"), "kv6")
           for x in (k, v)]
    want = g.canon(attention(q, kv_decode(enc[0]), kv_decode(enc[1]), p["P"]))
    got = np.frombuffer(tb.view[at["o"] - BASE:at["o"] - BASE + want.nbytes].tobytes(),
                        np.uint32).reshape(want.shape)
    bad = np.argwhere(got != want)
    assert not len(bad), f"kv6 attention output differs at {len(bad)} places, first {bad[:4].tolist()}"
    tb.finish()


@cocotb.test()
async def errors_and_abort(dut):
    """Invalid fields (code 5), out-of-window addresses (code 2), AXI read/write errors
    (codes 3, 4: the window extends past the model's memory), and abort in the middle of
    instructions: each returns to idle without a hang, and the next instruction is correct."""
    p, tb, rng = setup_tb(dut, "errors")
    nrng = np.random.default_rng(p["seed"] + 2)
    await tb.start()
    alloc = Allocator(rng, MEM_BYTES)
    C, max_kv = p["C"], p["max_kv"]
    kv6 = p.get("kv6", False)
    good = lambda sub: rand_vec(rng, nrng, tb.view, alloc, sub, C=C, max_kv=max_kv,  # noqa: E731
                                max_elems=p["max_elems"], kv6=kv6)
    ok = Operand(BASE + 0x40, 4, 4 * 64)
    raw_bad_sub = bytearray(Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=ok, d=ok).encode())
    raw_bad_sub[2] = 8                                     # sub-op byte [23:16]
    kvq6 = Vec(subop=VecSubop.KVQ6, n=(64, 2, 1, 1), a=ok, c=Operand(BASE + 0x800, 0, 2),
               d=Operand(BASE + 0x900, 1, 64))
    kfdot = Vec(subop=VecSubop.FDOT, n=(64, 2, 1, 1), a=ok, b=Operand(BASE + 0x900, 1, 64),
                c=Operand(BASE + 0x800, 0, 2), d=Operand(BASE + 0xA00, 0, 4), flags=int(VecFlag.B_KV6))
    if kv6:
        kv6_cases = [
            ("KVQ6 n0 != 64", Vec(subop=VecSubop.KVQ6, n=(32, 1, 1, 1), a=ok, c=kvq6.c, d=kvq6.d)),
            ("KVQ6 misaligned C stride s1", Vec(subop=VecSubop.KVQ6, n=(64, 2, 1, 1), a=ok,
                                                c=Operand(BASE + 0x800, 0, 3), d=kvq6.d)),
            ("B_KV6 with B_FP16", Vec(subop=VecSubop.FDOT, n=kfdot.n, a=ok, b=kfdot.b, c=kfdot.c,
                                      d=kfdot.d, flags=int(VecFlag.B_KV6 | VecFlag.B_FP16))),
            ("B_KV6 on RESID", Vec(subop=VecSubop.RESID, n=(4, 1, 1, 1), a=ok, b=ok, c=ok, d=ok,
                                   flags=int(VecFlag.B_KV6))),
            ("B_KV6 misaligned C base", Vec(subop=VecSubop.FDOT, n=kfdot.n, a=ok, b=kfdot.b,
                                            c=Operand(BASE + 0x801, 0, 2), d=kfdot.d,
                                            flags=int(VecFlag.B_KV6)))]
    else:
        kv6_cases = [("KVQ6 without KV6 hardware", kvq6), ("B_KV6 without KV6 hardware", kfdot)]
    field_cases = kv6_cases + [
        ("unknown sub-op 8", bytes(raw_bad_sub)),
        ("zero count n2", Vec(subop=VecSubop.GELU, n=(4, 1, 0, 1), a=ok, d=ok)),
        ("misaligned A base", Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=Operand(BASE + 2, 4), d=ok)),
        ("misaligned D stride s1", Vec(subop=VecSubop.RESID, n=(4, 2, 1, 1), a=ok, b=ok, c=ok,
                                       d=Operand(BASE + 0x400, 4, 6))),
        ("LNMOD n0 != C", Vec(subop=VecSubop.LNMOD, n=(C // 2, 1, 1, 1), a=ok, b=ok, c=ok, d=ok)),
        ("L2NT n0 != 64", Vec(subop=VecSubop.L2NT, n=(32, 1, 1, 1), a=ok, b=ok, d=ok)),
        ("SOFTMAX n0 > max_kv", Vec(subop=VecSubop.SOFTMAX, n=(max_kv + 1, 1, 1, 1), a=ok, d=ok)),
        ("CVT16 without D_FP16", Vec(subop=VecSubop.CVT16, n=(4, 1, 1, 1), a=ok, d=ok)),
        ("B_FP16 on RESID", Vec(subop=VecSubop.RESID, n=(4, 1, 1, 1), a=ok, b=ok, c=ok, d=ok,
                                flags=int(VecFlag.B_FP16))),
        ("unknown flag bit 3", Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=ok, d=ok, flags=8)),
    ]
    for what, v in field_cases:
        before = tb.view.copy()
        await tb.expect_error(v, ErrorCode.FIELD, what=what)
        assert np.array_equal(before, tb.view), f"{what}: memory changed"
    await tb.run(good(VecSubop.RESID), what="after field errors")

    # out of the window: A below it, D past its end (after some rows were written)
    await tb.expect_error(Vec(subop=VecSubop.GELU, n=(8, 1, 1, 1), a=Operand(BASE - 16, 4), d=ok),
                          ErrorCode.ADDRESS, what="A below the window")
    await tb.expect_error(Vec(subop=VecSubop.SOFTMAX, n=(8, 40, 1, 1), a=Operand(BASE, 4, 32),
                              d=Operand(BASE + MEM_BYTES - 16 * 32, 4, 32)),
                          ErrorCode.ADDRESS, what="D crosses the window's end")
    await tb.expect_error(Vec(subop=VecSubop.FDOT, n=(8, 3, 1, 1), a=Operand(BASE, 4, 32),
                              b=Operand(BASE + 0x1000, 4, -(1 << 20)), d=Operand(BASE, 0, 4)),
                          ErrorCode.ADDRESS, what="B wraps below the window")
    await tb.run(good(VecSubop.SOFTMAX), what="after address errors")

    # AXI error responses: the window is larger than the memory behind it
    tb.dut.dram_size.value = MEM_BYTES + 0x1000
    end = BASE + MEM_BYTES
    await tb.expect_error(Vec(subop=VecSubop.GELU, n=(16, 4, 1, 1), a=Operand(end - 128, 4, 64),
                              d=Operand(BASE + 0x80, 4, 64)), ErrorCode.AXI_READ, what="read error")
    await tb.expect_error(Vec(subop=VecSubop.RESID, n=(16, 4, 1, 1), a=Operand(BASE, 4, 64),
                              b=Operand(BASE, 4, 64), c=Operand(BASE, 4, 64),
                              d=Operand(end - 64, 4, 64)), ErrorCode.AXI_WRITE, what="write error")
    tb.dut.dram_size.value = MEM_BYTES
    await tb.run(good(VecSubop.FDOT), what="after AXI errors")

    # abort in the middle of instructions of several sub-ops (at a random cycle while the
    # engine is busy), then a correct instruction on the same state
    for k, sub in enumerate([VecSubop.GELU, VecSubop.LNMOD, VecSubop.SOFTMAX, VecSubop.FDOT,
                             VecSubop.L2NT, VecSubop.RESID] + [VecSubop.KVQ6] * kv6):
        v = rand_vec(rng, nrng, tb.view, alloc, sub, C=C, max_kv=max_kv, max_elems=1500, kv6=kv6)
        # long enough to abort: at least 256 elements (the engine's units take one element
        # per cycle, so it is still busy 120 cycles after the issue; an FDOT of shape
        # (1, 1, 3, 1) had finished)
        while int(np.prod(v.n)) < 256:
            v = rand_vec(rng, nrng, tb.view, alloc, sub, C=C, max_kv=max_kv, max_elems=1500, kv6=kv6)
        cycles = await tb.abort_after(v, rng.randint(2, 120), what=f"abort #{k}: {sub.name}",
                                      timeout=2000)
        tb.log.info("abort #%d (%s, n=%s): idle %d cycles after abort", k, sub.name, v.n, cycles)
        await tb.run(good(rng.choice(build_subops(p))), what=f"after abort #{k}")
    tb.finish()


def attention_fdots(rng: random.Random, nrng: np.random.Generator, mem: np.ndarray, *,
                    at: int, H: int, Nq: int, Nk: int, L_total: int, max_kv: int):
    """q.K and p.V FDOTs in the compiler's layouts (K ``[H, L_total, 64]`` rows back to
    back, V transposed ``[H, 64, L_total]``, score rows of ``Nk`` FP32 at a random 4-byte
    offset), operands written into ``mem`` at ``at`` and above; returns (qk, pv, end)."""
    D = isa.L2NT_LEN
    q_at = at + 4 * rng.randrange(4)
    k_at = (q_at + H * Nq * D * 4 + 127) // 128 * 128
    v_at = k_at + H * L_total * D * 2 + 2 * rng.randrange(8)
    s_at = (v_at + H * D * L_total * 2 + 15) // 16 * 16 + 4 * rng.randrange(4)
    p_at = (s_at + H * Nq * Nk * 4 + 15) // 16 * 16 + 4 * rng.randrange(4)
    o_at = (p_at + H * Nq * Nk * 4 + 15) // 16 * 16
    end = o_at + H * Nq * D * 4
    q = gv.l2norm_temperature(nrng.standard_normal((H, Nq, D)).astype(np.float32),
                              np.full((H, 1, 1), 2.5, np.float32))
    k16 = nrng.standard_normal((H, L_total, D)).astype(np.float16)
    v16 = nrng.standard_normal((H, D, L_total)).astype(np.float16)
    p = nrng.random((H, Nq, Nk)).astype(np.float32) / Nk
    for addr, arr in ((q_at, q), (k_at, k16), (v_at, v16), (p_at, p)):
        mem[addr - BASE:addr - BASE + arr.nbytes] = np.frombuffer(arr.tobytes(), np.uint8)
    qk = Vec(subop=VecSubop.FDOT, n=(D, Nk, Nq, H), flags=int(VecFlag.B_FP16),
             a=Operand(q_at, 4, 0, D * 4, Nq * D * 4),
             b=Operand(k_at, 2, D * 2, 0, L_total * D * 2),
             d=Operand(s_at, 0, 4, H * Nk * 4, Nk * 4))
    pv = Vec(subop=VecSubop.FDOT, n=(Nk, D, Nq, H), flags=int(VecFlag.B_FP16),
             a=Operand(p_at, 4, 0, H * Nk * 4, Nk * 4),
             b=Operand(v_at, 2, L_total * 2, 0, D * L_total * 2),
             d=Operand(o_at, 0, 4, H * D * 4, D * 4))
    return qk, pv, end


@cocotb.test()
async def attention_array(dut):
    """FDOTs of attention shape on the engine's attention array: q.K and p.V in the
    compiler's layouts with random heads, queries (edge tiles), keys up to max_kv, cache
    lengths and row offsets, against isa_sim bit for bit and faster than the element path
    would be; an in-place FDOT (D inside A: declined, element path) still correct; a read
    and a write error inside the array (codes 3, 4); an abort in the middle of an array
    run, then a correct instruction."""
    p, tb, rng = setup_tb(dut, "attention_array")
    if p.get("att") is None:
        return
    T, N = p["att"]
    nrng = np.random.default_rng(p["seed"] + 5)
    await tb.start()
    max_kv = p["max_kv"]
    for k in range(6):
        H, Nq = rng.randint(1, 3), rng.randint(1, 2 * T + 1)
        Nk = rng.randint(1, max_kv)
        qk, pv, _ = attention_fdots(rng, nrng, tb.view, at=BASE + 0x200, H=H, Nq=Nq, Nk=Nk,
                                    L_total=Nk + rng.randrange(9), max_kv=max_kv)
        for what, v in (("q.K", qk), ("p.V", pv)):
            cycles = await tb.run(v, what=f"array #{k} {what} H={H} Nq={Nq} Nk={Nk}")
            elems = int(np.prod(v.n))
            if elems >= 4096:       # the element path takes at least one cycle per element
                assert cycles < elems // 2, f"array #{k} {what}: {cycles} cycles for {elems} elements"
    # in place (D overlaps A): declined by the array, same result on the element path
    v = Vec(subop=VecSubop.FDOT, n=(16, 5, 3, 1), flags=int(VecFlag.B_FP16),
            a=Operand(BASE + 0x400, 4, 0, 64), b=Operand(BASE + 0x800, 2, 32, 0, 0),
            d=Operand(BASE + 0x404, 0, 4, 64))
    await tb.run(v, what="array declines D inside A")
    # AXI errors inside the array: the window extends past the memory behind it
    qk, pv, end = attention_fdots(rng, nrng, tb.view, at=BASE + 0x200, H=2, Nq=T + 1, Nk=max_kv,
                                  L_total=max_kv, max_kv=max_kv)
    tb.dut.dram_size.value = MEM_BYTES + 0x4000
    mend = BASE + MEM_BYTES
    await tb.expect_error(Vec(subop=qk.subop, n=qk.n, flags=qk.flags, a=qk.a,
                              b=Operand(mend - 2 * 64 * 2, 2, 128, 0, 0), d=qk.d),
                          ErrorCode.AXI_READ, what="array read error")
    await tb.expect_error(Vec(subop=qk.subop, n=qk.n, flags=qk.flags, a=qk.a, b=qk.b,
                              d=Operand(mend - 64, 0, 4, 4 * max_kv, 0)),
                          ErrorCode.AXI_WRITE, what="array write error")
    tb.dut.dram_size.value = MEM_BYTES
    await tb.run(pv, what="after array AXI errors")
    for k in range(2):
        await tb.abort_after(qk, rng.randint(30, 300), what=f"array abort #{k}", timeout=4000)
        await tb.run(pv, what=f"after array abort #{k}")
    tb.finish()


@cocotb.test()
async def softmax_array(dut):
    """SOFTMAX on the engine's softmax array (``sm`` lanes): rows back to back (the
    compiler's layout) and rows with gaps, in place and out of place, rows from 1 to
    max_kv elements at any 4-byte offset, against isa_sim bit for bit and faster than the
    element path when there are rows for every lane; shapes it declines (rows that overlap,
    D overlapping A) still correct on the element path; a read and a write error inside
    the array (codes 3, 4); aborts in the middle of an array run, then a correct
    instruction."""
    p, tb, rng = setup_tb(dut, "softmax_array")
    R = p.get("sm", 0)
    if not R:
        return
    nrng = np.random.default_rng(p["seed"] + 7)
    await tb.start()
    max_kv = p["max_kv"]

    def rows_at(at: int, n0: int, n1: int, n2: int, gap1: int = 0, gap2: int = 0) -> Operand:
        s1 = 4 * (n0 + gap1)
        return Operand(at, 4, s1, n1 * s1 + 4 * gap2)

    def fill_rows(op: Operand, n: tuple[int, ...]) -> None:
        addr = element_addresses(op, n)
        vals = (nrng.standard_normal(addr.size) * 8.0).astype(np.float32).view(np.uint32)
        store(tb.view, addr.reshape(-1), vals, 4)

    at = BASE + 0x100
    for k in range(8):
        n0 = rng.choice([1, 3, 8, 37, max_kv, rng.randint(1, max_kv)])
        n1, n2 = rng.randint(1, 4), rng.randint(1, 2 * R + 1)
        gap1, gap2 = rng.choice([0, 0, 1, 5]), rng.choice([0, 0, 3])
        a = rows_at(at + 4 * rng.randrange(4), n0, n1, n2, gap1, gap2)
        n = (n0, n1, n2, 1)
        fill_rows(a, n)
        span = (n2 - 1) * a.s2 + (n1 - 1) * a.s1 + 4 * n0
        d = a if k % 2 else rows_at(at + span + 16 + 4 * rng.randrange(4), n0, n1, n2)
        v = Vec(subop=VecSubop.SOFTMAX, n=n, a=a, d=d)
        cycles = await tb.run(v, what=f"softmax array #{k} n={n} gaps {gap1},{gap2} "
                                      f"{'in place' if d is a else 'apart'}")
        rows = n1 * n2
        if rows >= 2 * R and R > 1:     # faster than the element path's Softmax unit alone
            alone = Softmax.cycles_for(rows, n0, isa.VEC_P)
            assert cycles < alone, f"softmax array #{k}: {cycles} cycles, one unit {alone}"
    # declined: rows overlapping along loop 1 only (s1 < 4 n0, s2 clear of the rows), along
    # loop 2 only (s2 < (n1 - 1) s1 + 4 n0), in place: each row reads the one before it
    # wrote; and D overlapping A one element off; the element path's results
    for s1, s2, n in ((4 * 6, 4 * 50, (8, 3, 2, 1)), (4 * 8, 4 * 12, (8, 2, 3, 1))):
        a = Operand(at, 4, s1, s2)
        fill_rows(a, n)
        await tb.run(Vec(subop=VecSubop.SOFTMAX, n=n, a=a, d=a),
                     what=f"overlapping rows s1={s1} s2={s2}")
    a = rows_at(at, 16, 3, 2)
    fill_rows(a, (16, 3, 2, 1))
    await tb.run(Vec(subop=VecSubop.SOFTMAX, n=(16, 3, 2, 1), a=a, d=rows_at(at + 4, 16, 3, 2)),
                 what="D overlapping A")
    # AXI errors inside the array: the window extends past the memory behind it
    tb.dut.dram_size.value = MEM_BYTES + 0x4000
    mend = BASE + MEM_BYTES
    ok = rows_at(at, max_kv, 2, R + 1)
    fill_rows(ok, (max_kv, 2, R + 1, 1))
    await tb.expect_error(Vec(subop=VecSubop.SOFTMAX, n=(max_kv, 2, R + 1, 1),
                              a=rows_at(mend - 4 * max_kv * 3, max_kv, 2, R + 1), d=ok),
                          ErrorCode.AXI_READ, what="softmax array read error")
    await tb.expect_error(Vec(subop=VecSubop.SOFTMAX, n=(max_kv, 2, R + 1, 1), a=ok,
                              d=rows_at(mend - 4 * max_kv * 3, max_kv, 2, R + 1)),
                          ErrorCode.AXI_WRITE, what="softmax array write error")
    tb.dut.dram_size.value = MEM_BYTES
    n = (max_kv, 2, 4 * R + 1, 1)      # long enough to abort in the middle
    v = Vec(subop=VecSubop.SOFTMAX, n=n, a=ok, d=ok)
    fill_rows(ok, n)
    await tb.run(v, what="after softmax array AXI errors")
    for k in range(2):
        fill_rows(ok, n)
        await tb.abort_after(v, rng.randint(30, 300), what=f"softmax array abort #{k}",
                             timeout=4000)
        fill_rows(ok, n)
        await tb.run(v, what=f"after softmax array abort #{k}")
    tb.finish()
