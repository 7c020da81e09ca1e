"""Instruction-level reference executor of the accelerator (``docs/top.md``).

:func:`execute` runs a program from a :class:`Dram` image exactly as the
hardware must: every arithmetic step is a ``fpqvar_quant.golden`` function
(``golden.block.gemm`` for GEMM -- itself the unit chain convert, Hadamard,
group quantizer, group dot products, bias add -- and ``golden.vector`` /
``golden.attention`` / ``golden.fp32`` for VEC); this module only decodes,
checks and moves bytes.  The RTL co-simulation compares DRAM after the RTL
with DRAM after :func:`execute`.

Execution model
    Instructions run one at a time in program order (the sync bit does not
    change results of a correct program; :func:`legal_order` and
    ``execute(..., interleave_seed=...)`` replay a program in a random order the
    coarse pipeline could produce, to test the compiler's sync flags).  Within
    one instruction all reads happen before all writes; destinations that
    overlap a source at a *different* element, or output rows that overlap
    each other, are undefined for the hardware and must not be emitted.
Errors
    Checked per instruction before it touches DRAM, in the order: fetch
    address in the window (2), opcode (1), fields (5, :meth:`isa.Gemm.check` /
    :meth:`isa.Vec.check`), every accessed byte in the window (2,
    :func:`footprints.accesses_in_window`, the bounds of :func:`footprints.footprint`).  The run stops with ``error``, ``err_pc`` = the
    instruction's index and ``pc`` = instructions completed before it; the
    erring instruction writes nothing.  (The RTL may have completed a
    following instruction of the other engine: co-simulation compares
    ``error``/``err_pc`` only, and DRAM only for error-free runs.)
PC
    ``RunResult.pc`` counts completed instructions, the HALT included.
Formats
    GEMM sub-op PLAIN quantizes with ``cfg.qkv_act`` (which must equal
    ``proj_act`` and ``fc1_act``), sub-op DFQ with ``cfg.fc2_act``; weights are
    ``cfg.qkv_weight`` codes (all four weight formats equal) packed with
    ``cfg.tn``, ``cfg.lanes`` and ``cfg.group_size``; scales FP16.
KV6
    KVQ6 is ``golden.attention.kv_encode(fp16(A), "kv6")`` per row of 64; FDOT
    with B_KV6 multiplies A by ``golden.attention.kv_decode`` of the B codes
    (low six bits) and C scales, element by element.  Both exist only with
    ``kv6`` (default: ``cfg.kv_format`` is e2m3fn), else error 5.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fpqvar_quant.golden import attention as _att
from fpqvar_quant.golden import block as _blk
from fpqvar_quant.golden import fp32 as _fp32
from fpqvar_quant.golden import vector as _vec

from .. import isa
from .. import footprints, packing
from ..config import AcceleratorConfig, KVFormat, ScaleFormat
from ..isa import ErrorCode, Gemm, GemmSubop, Halt, IsaError, Opcode, Vec, VecSubop

__all__ = ["Dram", "RunResult", "GemmFormats", "gemm_formats", "gemm", "vec", "execute",
           "fetch_program", "legal_order"]

class Dram:
    """A DRAM window ``[base, base + size)`` backed by a bytearray (little-endian).

    ``base`` and ``size`` must be multiples of 16 (the bus word), like the
    DRAM_BASE / DRAM_SIZE registers the driver writes.
    """

    def __init__(self, base: int, size: int) -> None:
        if base % isa.BUS_BYTES or size % isa.BUS_BYTES or size <= 0 or base < 0 \
                or base + size > 1 << 32:
            raise ValueError(f"DRAM window base=0x{base:x} size=0x{size:x}: both must be multiples "
                             f"of {isa.BUS_BYTES} within the 32-bit address space, size > 0")
        self.base, self.size = base, size
        self.mem = bytearray(size)

    def _off(self, addr: int, n: int) -> int:
        if not isa.in_window(addr, n, self.base, self.size):
            raise IndexError(f"access [0x{addr:x}, 0x{addr + n:x}) outside the DRAM window "
                             f"[0x{self.base:x}, 0x{self.base + self.size:x})")
        return addr - self.base

    def read(self, addr: int, n: int) -> bytes:
        o = self._off(addr, n)
        return bytes(self.mem[o:o + n])

    def write(self, addr: int, data: bytes) -> None:
        o = self._off(addr, len(data))
        self.mem[o:o + len(data)] = data

    def load(self, image) -> None:
        """Write a list of ``(addr, bytes)`` (e.g. ``Compiler.image()``)."""
        for addr, data in image:
            self.write(addr, data)

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 4), "little")

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, int(value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read_array(self, addr: int, dtype, count: int) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.read(addr, dt.itemsize * count), dtype=dt).copy()

    def write_array(self, addr: int, arr) -> None:
        a = np.asarray(arr)
        self.write(addr, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())

    def words(self, itemsize: int) -> np.ndarray:
        """The whole window as a writable little-endian uint8/uint16/uint32 array (no copy)."""
        return np.frombuffer(self.mem, dtype={1: "u1", 2: "<u2", 4: "<u4"}[itemsize])

    def gather(self, addrs: np.ndarray, itemsize: int) -> np.ndarray:
        """Elements at byte addresses ``addrs`` (aligned, inside the window)."""
        return self.words(itemsize)[(addrs - self.base) // itemsize]

    def scatter(self, addrs: np.ndarray, values: np.ndarray, itemsize: int) -> None:
        self.words(itemsize)[(addrs - self.base).ravel() // itemsize] = np.asarray(values).ravel()

    def copy(self) -> "Dram":
        d = Dram(self.base, self.size)
        d.mem[:] = self.mem
        return d


@dataclass
class RunResult:
    """Outcome of :func:`execute` (what the STATUS, PC and ERR_PC registers report)."""

    pc: int
    error: ErrorCode = ErrorCode.NONE
    err_pc: int = 0
    message: str = ""
    counts: Counter = field(default_factory=Counter)   #: completed instructions per Opcode

    @property
    def ok(self) -> bool:
        return self.error == ErrorCode.NONE


@dataclass(frozen=True)
class GemmFormats:
    """What the matrix engine of ``cfg`` computes with (golden format names)."""

    plain: str
    dfq: str
    weight: str
    weight_bits: int
    group: int
    tn: int
    lanes: int

    def act(self, subop: int) -> str:
        return self.dfq if subop == GemmSubop.DFQ else self.plain


def gemm_formats(cfg: AcceleratorConfig) -> GemmFormats:
    """The formats of :class:`GemmFormats` from an accelerator config (``ValueError``
    for configs the one-format-per-sub-op ISA cannot express)."""
    acts = {cfg.qkv_act, cfg.proj_act, cfg.fc1_act}
    weights = {cfg.qkv_weight, cfg.proj_weight, cfg.fc1_weight, cfg.fc2_weight}
    if len(acts) != 1 or len(weights) != 1:
        raise ValueError("the GEMM sub-ops select one plain activation format (qkv/proj/fc1) and "
                         "the FC2 format; configs with per-layer formats need an ISA extension")
    if cfg.scale_format is not ScaleFormat.FP16:
        raise ValueError("isa_sim models FP16 scales only (golden.dot takes FP16 scales)")
    (a,), (w,) = acts, weights
    f2 = cfg.fc2_act
    if f2.value == "dfq6":
        raise ValueError("fc2_act=dfq6 has no golden dot-product model yet (golden.dot: dfq4 only)")
    return GemmFormats(plain=a.value, dfq=f2.value, weight=w.value, weight_bits=w.bits,
                       group=cfg.group_size, tn=cfg.tn, lanes=cfg.lanes)


def _pack_kwargs(f: GemmFormats) -> dict:
    return dict(tn=f.tn, lanes=f.lanes, bits=f.weight_bits, group=f.group)


def gemm(dram: Dram, g: Gemm, fmts: GemmFormats) -> None:
    """Execute one (checked) GEMM on ``dram`` (``golden.block.gemm``)."""
    rows = footprints.gemm_row_addresses(g.act_addr, g.act_stride, g.m)
    x = dram.gather(rows[:, None] + 4 * np.arange(g.k), 4).view(np.float32)
    cb = dram.read(g.w_addr, packing.gemm_code_bytes(g.n, g.k, tn=fmts.tn, lanes=fmts.lanes,
                                                 bits=fmts.weight_bits))
    sb = dram.read(g.ws_addr, packing.gemm_scale_bytes(g.n, g.k, tn=fmts.tn, group=fmts.group))
    codes, scales = packing.unpack_gemm_weights(cb, sb, g.n, g.k, **_pack_kwargs(fmts))
    bias = dram.read_array(g.bias_addr, "<f4", g.n) if g.bias else None
    signs = packing.unpack_signs(dram.read(g.signs_addr, isa.HAD_GROUP // 8)) if g.had else None
    a_fmt = fmts.act(g.subop)
    layer = _blk.GemmLayer(name=f"GEMM(sub-op {g.subop})", codes=codes, scales=scales, bias=bias,
                           a_fmt=a_fmt, w_fmt=fmts.weight, group=fmts.group, hadamard=g.had)
    y = _blk.gemm(x, layer, signs)
    outs = footprints.gemm_row_addresses(g.out_addr, g.out_stride, g.m)
    dram.scatter(outs[:, None] + 4 * np.arange(g.n), y.view(np.uint32), 4)


def _load(dram: Dram, v: Vec, name: str) -> np.ndarray:
    a = footprints.vec_addresses(v, name)
    if name == "b" and v.flags & isa.VecFlag.B_KV6:
        # e2m3fn codes (upper two bits ignored) times the FP16 scale of C, per element
        codes = dram.gather(a, 1) & 0x3F
        scales = dram.gather(footprints.vec_addresses(v, "c"), 2)
        return _att.kv_decode(_att.KVEntry("kv6", codes=codes[..., None], scales=scales))[..., 0]
    if v.elem_bytes(name) == 2:
        return dram.gather(a, 2).view(np.float16).astype(np.float32)    # exact
    return dram.gather(a, 4).view(np.float32)


def vec(dram: Dram, v: Vec) -> None:
    """Execute one (checked) VEC on ``dram`` (golden vector / attention functions)."""
    sub = VecSubop(v.subop)
    P = isa.VEC_P
    A = _load(dram, v, "a")
    if sub is VecSubop.LNMOD:
        r = _vec.layernorm_modulate(A, _load(dram, v, "b"), _load(dram, v, "c"), P)
    elif sub is VecSubop.RESID:
        r = _vec.gamma_residual(A, _load(dram, v, "b"), _load(dram, v, "c"))
    elif sub is VecSubop.GELU:
        r = _vec.gelu(A)
    elif sub is VecSubop.L2NT:
        r = _vec.l2norm_temperature(A, _load(dram, v, "b"), P)
    elif sub is VecSubop.SOFTMAX:
        r = _vec.softmax(A, P)
    elif sub is VecSubop.FDOT:
        r = _att.tree_last(_vec.NUMPY.mul(A, _load(dram, v, "b")), P, _vec.NUMPY)[..., None]
    else:   # CVT16, KVQ6
        r = None
    d = footprints.vec_addresses(v, "d")
    if sub is VecSubop.CVT16:
        dram.scatter(d, _fp32.convert(A.view(np.uint32), "fp32", "fp16"), 2)
    elif sub is VecSubop.KVQ6:
        # rows of 64 (n0 = KV6_GROUP): fp16 (RNE) -> golden KV6 encode (group quantizer)
        e = _att.kv_encode(_fp32.convert(A.view(np.uint32), "fp32", "fp16"), "kv6")
        dram.scatter(d, e.codes, 1)
        dram.scatter(footprints.vec_addresses(v, "c"), e.scales[..., None], 2)
    else:
        dram.scatter(d, _fp32.canon(np.asarray(r, np.float32), "fp32"), 4)


def fetch_program(dram: Dram, prog_addr: int, *, max_instructions: int = 1 << 20
                  ) -> tuple[list, RunResult | None]:
    """Decode instructions from ``prog_addr`` up to the first HALT.

    Returns ``(instructions, None)`` or, when fetching/decoding fails first,
    ``(instructions before it, RunResult with the error)``; field and window
    errors are left to :func:`execute`.
    """
    if prog_addr % isa.INSTR_BYTES:
        return [], RunResult(0, ErrorCode.FIELD, 0, f"PROG_ADDR 0x{prog_addr:x} is not "
                             f"{isa.INSTR_BYTES}-byte aligned")
    out = []
    for i in range(max_instructions):
        a = prog_addr + isa.INSTR_BYTES * i
        if not isa.in_window(a, isa.INSTR_BYTES, dram.base, dram.size):
            return out, RunResult(i, ErrorCode.ADDRESS, i, f"instruction fetch at 0x{a:x} "
                                  "is outside the DRAM window")
        try:
            ins = isa.decode(dram.read(a, isa.INSTR_BYTES))
        except IsaError as e:
            return out, RunResult(i, e.code, i, str(e))
        out.append(ins)
        if isinstance(ins, Halt):
            return out, None
    raise RuntimeError(f"no HALT within {max_instructions} instructions of 0x{prog_addr:x}")


def legal_order(instrs: list, seed: int, *, coarse: bool = True) -> list[int]:
    """A random execution order the coarse pipeline could produce.

    Dispatch is in program order; an instruction starts when its engine is
    free (GEMM: matrix engine, VEC: vector engine) and, with ``sync`` (or
    ``coarse=False``), when both engines are idle; it takes a random time
    (seeded) and its effect is placed at a random instant of its run.  The
    returned indices (HALT excluded) sorted by that instant form an order a
    correct program must be insensitive to.
    """
    rng = np.random.default_rng(seed)
    free = {Opcode.GEMM: 0.0, Opcode.VEC: 0.0}
    last_dispatch = 0.0
    events = []
    for i, ins in enumerate(instrs):
        if isinstance(ins, Halt):
            break
        e = ins.opcode
        start = max(last_dispatch, free[e])
        if ins.sync or not coarse:
            start = max(start, *free.values())
        dur = float(rng.choice([rng.uniform(0, 1), rng.uniform(0, 30)]))
        free[e] = start + dur
        last_dispatch = start
        events.append((start + rng.uniform(0, 1) * dur, i))
    return [i for _, i in sorted(events)]


def execute(dram: Dram, prog_addr: int, cfg: AcceleratorConfig, *, max_kv: int = isa.MAX_KV_LEN,
            max_ln: int = isa.MAX_LN_LEN, ln_len: int | None = None, kv6: bool | None = None,
            interleave_seed: int | None = None, max_instructions: int = 1 << 20) -> RunResult:
    """Run the program at ``prog_addr`` on ``dram`` (modified in place).

    ``max_kv`` / ``max_ln``: the build's SOFTMAX / LNMOD row limits; ``ln_len``:
    the C of an engine whose LayerNorm unit takes rows of exactly C (RTL builds);
    ``kv6``: the build has the KV6 hardware (KVQ6, FDOT with B_KV6); default: the
    config's ``kv_format`` is e2m3fn (what :class:`fpqvar_hw.engines.top.Accelerator` builds).
    ``interleave_seed``: execute the (error-free) program in the order
    :func:`legal_order` draws instead of program order.
    """
    fmts = gemm_formats(cfg)
    if kv6 is None:
        kv6 = cfg.kv_format is KVFormat.E2M3
    instrs, fetch_err = fetch_program(dram, prog_addr, max_instructions=max_instructions)
    kw = _pack_kwargs(fmts)
    # validate everything first: an erring instruction and everything after it never run
    # (programs never write their own instructions, so fetching ahead is equivalent)
    stop: RunResult | None = None
    for i, ins in enumerate(instrs):
        try:
            ins.check(max_kv=max_kv, max_ln=max_ln, ln_len=ln_len, kv6=kv6)
        except IsaError as e:
            stop = RunResult(i, e.code, i, str(e))
            break
        if not footprints.accesses_in_window(ins, dram.base, dram.size, **kw):
            stop = RunResult(i, ErrorCode.ADDRESS, i, f"instruction {i} ({type(ins).__name__}) "
                             "accesses bytes outside the DRAM window")
            break
    if stop is None:
        stop = fetch_err
    runnable = instrs[:stop.err_pc] if stop is not None else instrs
    counts: Counter = Counter()
    if interleave_seed is not None and stop is None:
        order = legal_order(runnable, interleave_seed, coarse=True)
    else:
        order = [i for i, ins in enumerate(runnable) if not isinstance(ins, Halt)]
    for i in order:
        ins = runnable[i]
        if isinstance(ins, Gemm):
            gemm(dram, ins, fmts)
        else:
            vec(dram, ins)
        counts[ins.opcode] += 1
    if stop is not None:
        stop.counts = counts
        return stop
    counts[Opcode.HALT] += 1
    return RunResult(len(runnable), counts=counts)
