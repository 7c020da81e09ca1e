"""The accelerator's instruction set, registers and DRAM layouts (``docs/top.md``).

This module is the one implementation of every encoding in ``docs/top.md``:
the RTL (controller, matrix engine, vector engine) reads its word indices and
enums from here, the compiler (:mod:`fpqvar_hw.host.compiler`) encodes with it and
the reference executor (:mod:`fpqvar_hw.host.isa_sim`) decodes with it.  It imports
only numpy and ``amaranth.lib.data``.

Instruction: ``INSTR_BYTES = 128`` bytes = ``INSTR_WORDS = 32`` little-endian
32-bit words at ``PROG_ADDR + 128 * i`` (``INSTR_LAYOUT``: an
``ArrayLayout(32, 32)``, element ``w`` = word ``w``).

Word 0 (header): ``[7:0]`` opcode (:class:`Opcode`), ``[8]`` sync,
``[23:16]`` sub-op, ``[31:24]`` flags (``HDR_*`` constants).

============  ======  ==========================================================
GEMM (1)      word    field
============  ======  ==========================================================
GEMM_ACT      1       act_addr: FP32 rows at ``act_addr + r*act_stride`` (16-aligned)
GEMM_ACT_STRIDE 2     bytes, multiple of 16
GEMM_M        3       rows (>= 1)
GEMM_K        4       reduction length, multiple of ``K_ALIGN`` = 128
GEMM_N        5       output features (>= 1)
GEMM_W        6       packed weight codes (:func:`pack_gemm_weights`), 16-aligned
GEMM_WS       7       packed weight scales, 16-aligned
GEMM_BIAS     8       FP32 bias ``[ceil(N/Tn)*Tn]`` (read with flag BIAS), 16-aligned
GEMM_OUT      9       FP32 outputs at ``out_addr + r*out_stride + 4*n`` (4-aligned)
GEMM_OUT_STRIDE 10    bytes, multiple of 4
GEMM_SIGNS    11      16 bytes of Hadamard sign bits (:func:`pack_signs`), 16-aligned
============  ======  ==========================================================

Sub-op (:class:`GemmSubop`): 0 PLAIN (the configured activation format of
qkv/proj/fc1), 1 DFQ (the configured FC2-input format, ``cfg.fc2_act``).
Flags (:class:`GemmFlag`): bit 0 HAD, bit 1 BIAS.

============  ======  ==========================================================
VEC (2)       word    field
============  ======  ==========================================================
VEC_N         1..4    loop counts n0..n3 (n0 innermost; all >= 1)
VEC_A         5..9    operand A: base, s0, s1, s2, s3 (signed 32-bit byte strides)
VEC_B         10..14  operand B
VEC_C         15..19  operand C
VEC_D         20..24  destination D
============  ======  ==========================================================

Element ``(i0, i1, i2, i3)`` of an operand is at ``(base + i0*s0 + i1*s1 +
i2*s2 + i3*s3) mod 2^32`` (:func:`operand_address`); FDOT's D, L2NT's B and
KVQ6's C are addressed with ``i0 = 0`` (one value per row, s0 unused).  Sub-ops
(:class:`VecSubop`): LNMOD, RESID, GELU, L2NT, SOFTMAX, FDOT, CVT16, KVQ6;
which operands each one reads/writes is :data:`VEC_OPERANDS` /
:data:`VEC_WRITES` (:attr:`Vec.operands`: FDOT with B_KV6 also reads C).
Flags (:class:`VecFlag`): bit 0 B_FP16, bit 1 D_FP16, bit 2 B_KV6.

KV6 (the e2m3fn KV cache, ``kv_format=e2m3fn`` builds only: ``check(kv6=True)``):
KVQ6 (sub-op 7) quantizes rows of ``n0 = 64`` FP32 elements of A: ``fp16(A)``
(RNE, as CVT16), then the golden group quantizer (``quantize_groups(.,
"e2m3fn")``, one group per row, FP16 scale); the 6-bit codes go to D (1-byte
elements, upper two bits 0) and the scale to C (FP16, once per row).  FDOT with
B_KV6 reads B as e2m3fn codes (1 byte each, the upper two bits ignored) and C
as FP16 scales, one per B element (C's own four strides): element value
``decode(code) * scale``, exact in FP32 (``golden.attention.kv_decode``).
Without KV6 hardware, KVQ6 and B_KV6 are invalid fields (error 5).

Errors (:class:`ErrorCode`): 1 unknown opcode, 2 address out of the DRAM
window, 3 AXI read error, 4 AXI write error, 5 invalid field.  What counts as
an invalid field is :meth:`Gemm.check` / :meth:`Vec.check` (zero count,
misalignment, unknown sub-op or flag bits, K not a multiple of 128, L2NT
or KVQ6 ``n0 != 64``, SOFTMAX ``n0 > max_kv``, KV6 without ``kv6``); the bytes an instruction touches are
:func:`fpqvar_hw.footprints.footprint` (every one must lie in the DRAM window, error 2).  Checks
apply in this order: opcode (1), fields (5), window (2).

Registers: :data:`REGS` (byte offsets on ``s_axil``) and the ``CTRL_*`` /
``STATUS_*`` bit constants.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

import numpy as np
from amaranth.lib import data

__all__ = [
    "vec_fields",
    "INSTR_WORDS", "INSTR_BYTES", "INSTR_LAYOUT", "WORD_BYTES", "BUS_BYTES", "K_ALIGN", "HAD_GROUP",
    "Opcode", "GemmSubop", "GemmFlag", "VecSubop", "VecFlag", "ErrorCode",
    "HDR_OPCODE_SHIFT", "HDR_OPCODE_BITS", "HDR_SYNC_BIT", "HDR_SUBOP_SHIFT", "HDR_SUBOP_BITS",
    "HDR_FLAGS_SHIFT", "HDR_FLAGS_BITS",
    "GEMM_ACT", "GEMM_ACT_STRIDE", "GEMM_M", "GEMM_K", "GEMM_N", "GEMM_W", "GEMM_WS",
    "GEMM_BIAS", "GEMM_OUT", "GEMM_OUT_STRIDE", "GEMM_SIGNS",
    "VEC_N", "VEC_A", "VEC_B", "VEC_C", "VEC_D", "VEC_OPERAND_WORD", "OPERAND_FIELDS",
    "VEC_OPERANDS", "VEC_WRITES", "KV6_GROUP", "L2NT_LEN", "MAX_KV_LEN", "MAX_LN_LEN", "VEC_P",
    "REGS", "REG_ID_VALUE", "CTRL_START", "CTRL_ABORT", "CTRL_IRQ_EN", "CTRL_COARSE", "CTRL_FINE",
    "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR", "STATUS_ABORTED", "STATUS_ERR_SHIFT",
    "STATUS_ERR_BITS",
    "IsaError", "Operand", "Halt", "Gemm", "Vec", "Instruction", "decode", "decode_program",
    "encode_program", "header", "operand_address", "in_window",
]

# ------------------------------------------------------------------ instruction
INSTR_WORDS = 32
WORD_BYTES = 4
INSTR_BYTES = INSTR_WORDS * WORD_BYTES          # 128
#: One 32-bit word per element: ``INSTR_LAYOUT`` view of the 1024-bit instruction.
INSTR_LAYOUT = data.ArrayLayout(32, INSTR_WORDS)
#: AXI data width in bytes (one bus word); packed tables are padded to it.
BUS_BYTES = 16
#: GEMM K must be a multiple of this (the Hadamard group, and every supported group size divides it).
K_ALIGN = 128
#: Hadamard group length (fixed by the unit).
HAD_GROUP = 128

HDR_OPCODE_SHIFT, HDR_OPCODE_BITS = 0, 8
HDR_SYNC_BIT = 8
HDR_SUBOP_SHIFT, HDR_SUBOP_BITS = 16, 8
HDR_FLAGS_SHIFT, HDR_FLAGS_BITS = 24, 8


class Opcode(enum.IntEnum):
    HALT = 0x00
    GEMM = 0x01
    VEC = 0x02


class GemmSubop(enum.IntEnum):
    #: the configured activation format of qkv / proj / fc1 (e2m1fn in w4a4)
    PLAIN = 0
    #: the configured FC2-input format ``cfg.fc2_act`` (dual-format DFQ in w4a4)
    DFQ = 1


class GemmFlag(enum.IntFlag):
    HAD = 1 << 0     #: Hadamard on the FP16 activations (signs at signs_addr)
    BIAS = 1 << 1    #: add the FP32 bias (one RNE add)


class VecSubop(enum.IntEnum):
    LNMOD = 0
    RESID = 1
    GELU = 2
    L2NT = 3
    SOFTMAX = 4
    FDOT = 5
    CVT16 = 6
    KVQ6 = 7   #: fp16(A) -> e2m3fn codes (D, bytes) + FP16 scale per 64-row (C); KV6 builds only


class VecFlag(enum.IntFlag):
    B_FP16 = 1 << 0  #: operand B holds FP16 values (FDOT against the FP16 KV cache)
    D_FP16 = 1 << 1  #: destination D is FP16 (CVT16 needs it)
    B_KV6 = 1 << 2   #: operand B holds e2m3fn codes scaled by FP16 C (FDOT against the KV6 cache)


class ErrorCode(enum.IntEnum):
    NONE = 0
    OPCODE = 1       #: unknown opcode
    ADDRESS = 2      #: a generated address outside [DRAM_BASE, DRAM_BASE + DRAM_SIZE)
    AXI_READ = 3     #: AXI read error response
    AXI_WRITE = 4    #: AXI write error response
    FIELD = 5        #: invalid field (zero count, misaligned, unsupported size / sub-op / flag)


# GEMM word indices
GEMM_ACT, GEMM_ACT_STRIDE, GEMM_M, GEMM_K, GEMM_N = 1, 2, 3, 4, 5
GEMM_W, GEMM_WS, GEMM_BIAS, GEMM_OUT, GEMM_OUT_STRIDE, GEMM_SIGNS = 6, 7, 8, 9, 10, 11

# VEC word indices: counts n0..n3 at VEC_N + i; operand X's base at VEC_X, stride s_i at VEC_X + 1 + i.
VEC_N = 1
VEC_A, VEC_B, VEC_C, VEC_D = 5, 10, 15, 20
VEC_OPERAND_WORD = {"a": VEC_A, "b": VEC_B, "c": VEC_C, "d": VEC_D}
OPERAND_FIELDS = ("base", "s0", "s1", "s2", "s3")

#: Operands each VEC sub-op reads (first) and writes (``"d"``).  Unlisted operands
#: are ignored: neither checked nor accessed.
VEC_OPERANDS: dict[VecSubop, tuple[str, ...]] = {
    VecSubop.LNMOD: ("a", "b", "c", "d"),
    VecSubop.RESID: ("a", "b", "c", "d"),
    VecSubop.GELU: ("a", "d"),
    VecSubop.L2NT: ("a", "b", "d"),
    VecSubop.SOFTMAX: ("a", "d"),
    VecSubop.FDOT: ("a", "b", "d"),
    VecSubop.CVT16: ("a", "d"),
    VecSubop.KVQ6: ("a", "c", "d"),
}
#: Operands a VEC sub-op writes (default: ``("d",)``); the others in
#: :data:`VEC_OPERANDS` are read.
VEC_WRITES: dict[VecSubop, tuple[str, ...]] = {VecSubop.KVQ6: ("c", "d")}
#: KVQ6 rows are one head (the quantization group): n0 must equal this.
KV6_GROUP = 64
#: L2NT rows are one head: n0 must equal this.
L2NT_LEN = 64
#: Largest SOFTMAX row (KV length) the default build supports (VAR 256px: 680).
MAX_KV_LEN = 1024
#: Largest LNMOD row (C) the default build supports (VAR-d36: 2304).
MAX_LN_LEN = 4096
#: Tree-sum width P of the vector engine's row operations (``golden.vector.tree_sum``).
VEC_P = 8

# --------------------------------------------------------------------- registers
REGS: dict[str, int] = {
    "CTRL": 0x00, "STATUS": 0x04, "PROG_ADDR": 0x08, "DRAM_BASE": 0x0C, "DRAM_SIZE": 0x10,
    "ERR_PC": 0x14, "PC": 0x18, "ID": 0x1C, "CYCLES": 0x20, "GEMM_CYCLES": 0x24,
    "VEC_CYCLES": 0x28, "OVERLAP_CYCLES": 0x2C,
}
REG_ID_VALUE = 0x46505156       # "FPQV"
CTRL_START, CTRL_ABORT, CTRL_IRQ_EN, CTRL_COARSE, CTRL_FINE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
STATUS_BUSY, STATUS_DONE, STATUS_ERROR, STATUS_ABORTED = 1 << 0, 1 << 1, 1 << 2, 1 << 3
STATUS_ERR_SHIFT, STATUS_ERR_BITS = 8, 4


class IsaError(ValueError):
    """An instruction that the hardware would reject; ``code`` is its :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)


def _u32(v: int, what: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= int(v) < 1 << 32:
        raise ValueError(f"{what} must be an unsigned 32-bit integer, got {v!r}")
    return int(v)


def _s32(v: int, what: str) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not -(1 << 31) <= int(v) < 1 << 31:
        raise ValueError(f"{what} must be a signed 32-bit integer, got {v!r}")
    return int(v)


def header(opcode: int, *, sync: bool = False, subop: int = 0, flags: int = 0) -> int:
    """Word 0 of an instruction."""
    if not 0 <= opcode < 1 << HDR_OPCODE_BITS or not 0 <= subop < 1 << HDR_SUBOP_BITS \
            or not 0 <= flags < 1 << HDR_FLAGS_BITS:
        raise ValueError(f"header field out of range: opcode={opcode}, subop={subop}, flags={flags}")
    return (opcode << HDR_OPCODE_SHIFT) | (int(bool(sync)) << HDR_SYNC_BIT) \
        | (subop << HDR_SUBOP_SHIFT) | (flags << HDR_FLAGS_SHIFT)


def vec_fields(ins):
    """The VEC fields of an instruction held in a signal of :data:`INSTR_LAYOUT` (Amaranth
    slices of it, nothing built): ``sub``, ``flags``, the counts ``n[0..3]`` and
    ``field(x, k)``, operand ``x``'s base (``k = 0``) or stride ``s{k-1}``."""
    from types import SimpleNamespace
    hdr = ins[0]
    return SimpleNamespace(
        sub=hdr[HDR_SUBOP_SHIFT:HDR_SUBOP_SHIFT + HDR_SUBOP_BITS],
        flags=hdr[HDR_FLAGS_SHIFT:HDR_FLAGS_SHIFT + HDR_FLAGS_BITS],
        n=[ins[VEC_N + k] for k in range(4)],
        field=lambda x, k: ins[VEC_OPERAND_WORD[x] + k])


def _words_to_bytes(words: list[int]) -> bytes:
    assert len(words) == INSTR_WORDS
    return np.asarray([w & 0xFFFFFFFF for w in words], dtype="<u4").tobytes()


def operand_address(base: int, strides: Iterable[int], idx: Iterable[int]) -> int:
    """Address of one element: ``(base + sum(i_k * s_k)) mod 2^32`` (32-bit wrap-around)."""
    return (base + sum(i * s for i, s in zip(idx, strides))) & 0xFFFFFFFF


def in_window(addr: int, nbytes: int, dram_base: int, dram_size: int) -> bool:
    """True when the access ``[addr, addr + nbytes)`` lies in ``[base, base + size)``
    (compared without wrap-around)."""
    return dram_base <= addr and addr + nbytes <= dram_base + dram_size


# ------------------------------------------------------------------ instructions
@dataclass(frozen=True)
class Halt:
    """End of program: the controller waits for both engines, then sets done (and irq)."""

    opcode: ClassVar[Opcode] = Opcode.HALT
    sync: bool = False

    def encode(self) -> bytes:
        return _words_to_bytes([header(Opcode.HALT, sync=self.sync)] + [0] * (INSTR_WORDS - 1))

    def check(self, **_) -> None:
        """A HALT is always valid."""


@dataclass(frozen=True)
class Gemm:
    """``out = Q(T(fp16(act))) . W'^T (+ bias)`` (``docs/top.md``, executed by
    :func:`fpqvar_hw.host.isa_sim.gemm`)."""

    opcode: ClassVar[Opcode] = Opcode.GEMM
    act_addr: int
    act_stride: int
    m: int
    k: int
    n: int
    w_addr: int
    ws_addr: int
    out_addr: int
    out_stride: int
    bias_addr: int = 0
    signs_addr: int = 0
    subop: int = GemmSubop.PLAIN
    flags: int = 0
    sync: bool = False

    _WORDS: ClassVar[dict[str, int]] = {
        "act_addr": GEMM_ACT, "act_stride": GEMM_ACT_STRIDE, "m": GEMM_M, "k": GEMM_K,
        "n": GEMM_N, "w_addr": GEMM_W, "ws_addr": GEMM_WS, "bias_addr": GEMM_BIAS,
        "out_addr": GEMM_OUT, "out_stride": GEMM_OUT_STRIDE, "signs_addr": GEMM_SIGNS}

    def __post_init__(self) -> None:
        for name in self._WORDS:
            _u32(getattr(self, name), f"GEMM {name}")

    @property
    def had(self) -> bool:
        return bool(self.flags & GemmFlag.HAD)

    @property
    def bias(self) -> bool:
        return bool(self.flags & GemmFlag.BIAS)

    def encode(self) -> bytes:
        w = [0] * INSTR_WORDS
        w[0] = header(Opcode.GEMM, sync=self.sync, subop=int(self.subop), flags=int(self.flags))
        for name, idx in self._WORDS.items():
            w[idx] = getattr(self, name)
        return _words_to_bytes(w)

    @classmethod
    def from_words(cls, w: np.ndarray) -> "Gemm":
        h = int(w[0])
        return cls(**{name: int(w[idx]) for name, idx in cls._WORDS.items()},
                   subop=(h >> HDR_SUBOP_SHIFT) & 0xFF, flags=(h >> HDR_FLAGS_SHIFT) & 0xFF,
                   sync=bool(h >> HDR_SYNC_BIT & 1))

    def check(self, **_) -> None:
        """Raise :class:`IsaError` (code FIELD) for what the matrix engine rejects."""
        def bad(msg: str):
            raise IsaError(ErrorCode.FIELD, f"GEMM: {msg}")
        if self.subop not in tuple(GemmSubop):
            bad(f"unknown sub-op {self.subop} (0 PLAIN, 1 DFQ)")
        if self.flags & ~int(GemmFlag.HAD | GemmFlag.BIAS):
            bad(f"unknown flag bits 0x{self.flags:02x} (bit 0 HAD, bit 1 BIAS)")
        for name in ("m", "k", "n"):
            if getattr(self, name) == 0:
                bad(f"{name.upper()} must be >= 1")
        if self.k % K_ALIGN:
            bad(f"K={self.k} must be a multiple of {K_ALIGN}")
        for name in ("act_addr", "act_stride", "w_addr", "ws_addr"):
            if getattr(self, name) % BUS_BYTES:
                bad(f"{name}=0x{getattr(self, name):x} must be a multiple of {BUS_BYTES}")
        for name, on in (("bias_addr", self.bias), ("signs_addr", self.had)):
            if on and getattr(self, name) % BUS_BYTES:
                bad(f"{name}=0x{getattr(self, name):x} must be a multiple of {BUS_BYTES}")
        for name in ("out_addr", "out_stride"):
            if getattr(self, name) % 4:
                bad(f"{name}=0x{getattr(self, name):x} must be a multiple of 4")


@dataclass(frozen=True)
class Operand:
    """One VEC operand: element ``(i0..i3)`` at ``base + sum(i_k * s_k)`` (bytes)."""

    base: int = 0
    s0: int = 0
    s1: int = 0
    s2: int = 0
    s3: int = 0

    def __post_init__(self) -> None:
        _u32(self.base, "operand base")
        for k in range(4):
            _s32(getattr(self, f"s{k}"), f"operand stride s{k}")

    @property
    def strides(self) -> tuple[int, int, int, int]:
        return (self.s0, self.s1, self.s2, self.s3)


@dataclass(frozen=True)
class Vec:
    """An element-wise or row operation over a 4-level loop nest (``docs/top.md``)."""

    opcode: ClassVar[Opcode] = Opcode.VEC
    subop: int
    n: tuple[int, int, int, int]
    a: Operand = field(default_factory=Operand)
    b: Operand = field(default_factory=Operand)
    c: Operand = field(default_factory=Operand)
    d: Operand = field(default_factory=Operand)
    flags: int = 0
    sync: bool = False

    def __post_init__(self) -> None:
        n = tuple(int(v) for v in self.n)
        if len(n) != 4:
            raise ValueError(f"VEC needs four loop counts (n0, n1, n2, n3), got {self.n!r}")
        for k, v in enumerate(n):
            _u32(v, f"VEC n{k}")
        object.__setattr__(self, "n", n)

    @property
    def operands(self) -> tuple[str, ...]:
        """Operands this instruction accesses (``VEC_OPERANDS``, plus C for FDOT with
        B_KV6), empty for an unknown sub-op."""
        try:
            sub = VecSubop(self.subop)
        except ValueError:
            return ()
        if sub is VecSubop.FDOT and self.flags & VecFlag.B_KV6:
            return ("a", "b", "c", "d")
        return VEC_OPERANDS[sub]

    @property
    def writes(self) -> tuple[str, ...]:
        """Operands this instruction writes (:data:`VEC_WRITES`); the rest of
        :attr:`operands` are read."""
        try:
            return VEC_WRITES.get(VecSubop(self.subop), ("d",))
        except ValueError:
            return ()

    def row_const(self, name: str) -> bool:
        """True for the operands accessed once per row (``i0 = 0``, s0 unused):
        FDOT's D, L2NT's B, KVQ6's C."""
        return (self.subop, name) in ((VecSubop.FDOT, "d"), (VecSubop.L2NT, "b"), (VecSubop.KVQ6, "c"))

    def elem_bytes(self, name: str) -> int:
        """Element size of operand ``name``: 2 for B with B_FP16, D with D_FP16 and C
        of KVQ6 / FDOT with B_KV6 (FP16 scales); 1 for B with B_KV6 and D of KVQ6
        (e2m3fn codes); else 4."""
        kv6_fdot = self.subop == VecSubop.FDOT and bool(self.flags & VecFlag.B_KV6)
        if name == "b" and self.flags & VecFlag.B_FP16:
            return 2
        if name == "b" and self.flags & VecFlag.B_KV6:
            return 1
        if name == "c" and (self.subop == VecSubop.KVQ6 or kv6_fdot):
            return 2
        if name == "d" and self.subop == VecSubop.KVQ6:
            return 1
        if name == "d" and self.flags & VecFlag.D_FP16:
            return 2
        return 4

    def encode(self) -> bytes:
        w = [0] * INSTR_WORDS
        w[0] = header(Opcode.VEC, sync=self.sync, subop=int(self.subop), flags=int(self.flags))
        for k in range(4):
            w[VEC_N + k] = self.n[k]
        for name, idx in VEC_OPERAND_WORD.items():
            op: Operand = getattr(self, name)
            w[idx] = op.base
            for k, s in enumerate(op.strides):
                w[idx + 1 + k] = s & 0xFFFFFFFF
        return _words_to_bytes(w)

    @classmethod
    def from_words(cls, w: np.ndarray) -> "Vec":
        h = int(w[0])

        def s32(v: int) -> int:
            v = int(v)
            return v - (1 << 32) if v >> 31 else v
        ops = {name: Operand(int(w[idx]), *(s32(w[idx + 1 + k]) for k in range(4)))
               for name, idx in VEC_OPERAND_WORD.items()}
        return cls(subop=(h >> HDR_SUBOP_SHIFT) & 0xFF, n=tuple(int(w[VEC_N + k]) for k in range(4)),
                   flags=(h >> HDR_FLAGS_SHIFT) & 0xFF, sync=bool(h >> HDR_SYNC_BIT & 1), **ops)

    def check(self, *, max_kv: int = MAX_KV_LEN, max_ln: int = MAX_LN_LEN,
              ln_len: int | None = None, kv6: bool = False) -> None:
        """Raise :class:`IsaError` (code FIELD) for what the vector engine rejects.

        ``max_kv``: the build's SOFTMAX row limit; LNMOD rows: ``n0 == ln_len`` when
        given (an engine built for one C), else ``n0 <= max_ln``; ``kv6``: the build
        has the KV6 hardware (``kv_format=e2m3fn``), else KVQ6 and B_KV6 are invalid."""
        def bad(msg: str):
            raise IsaError(ErrorCode.FIELD, f"VEC: {msg}")
        no_kv6 = "this build has no KV6 hardware (accelerator config kv_format=e2m3fn adds it)"
        try:
            sub = VecSubop(self.subop)
        except ValueError:
            bad(f"unknown sub-op {self.subop} (known: "
                + ", ".join(f"{s.value} {s.name}" for s in VecSubop) + ")")
        if sub is VecSubop.KVQ6 and not kv6:
            bad(f"sub-op 7 KVQ6: {no_kv6}")
        if self.flags & ~int(VecFlag.B_FP16 | VecFlag.D_FP16 | VecFlag.B_KV6):
            bad(f"unknown flag bits 0x{self.flags:02x} (bit 0 B_FP16, bit 1 D_FP16, bit 2 B_KV6)")
        if self.flags & VecFlag.B_KV6 and not kv6:
            bad(f"flag B_KV6: {no_kv6}")
        if any(v == 0 for v in self.n):
            bad(f"loop counts must be >= 1, got n={self.n}")
        if self.flags & VecFlag.B_FP16 and sub is not VecSubop.FDOT:
            bad(f"flag B_FP16 is only defined for FDOT, not {sub.name}")
        if self.flags & VecFlag.B_KV6 and sub is not VecSubop.FDOT:
            bad(f"flag B_KV6 is only defined for FDOT, not {sub.name}")
        if self.flags & VecFlag.B_KV6 and self.flags & VecFlag.B_FP16:
            bad("flags B_FP16 and B_KV6 are exclusive (B is FP16 or e2m3fn codes)")
        if sub is VecSubop.KVQ6 and self.n[0] != KV6_GROUP:
            bad(f"KVQ6 rows are one quantization group: n0 must be {KV6_GROUP}, got {self.n[0]}")
        if bool(self.flags & VecFlag.D_FP16) != (sub is VecSubop.CVT16):
            bad("CVT16 needs flag D_FP16 and no other sub-op may set it")
        if sub is VecSubop.L2NT and self.n[0] != L2NT_LEN:
            bad(f"L2NT rows are one head: n0 must be {L2NT_LEN}, got {self.n[0]}")
        if sub is VecSubop.SOFTMAX and self.n[0] > max_kv:
            bad(f"SOFTMAX row length n0={self.n[0]} exceeds the configured maximum {max_kv}")
        if sub is VecSubop.LNMOD and ln_len is not None and self.n[0] != ln_len:
            bad(f"LNMOD row length n0={self.n[0]} differs from the engine's C={ln_len}")
        if sub is VecSubop.LNMOD and self.n[0] > max_ln:
            bad(f"LNMOD row length n0={self.n[0]} exceeds the configured maximum {max_ln}")
        for name in self.operands:
            size = self.elem_bytes(name)
            op: Operand = getattr(self, name)
            strides = op.strides[1:] if self.row_const(name) else op.strides      # s0 unused there
            if op.base % size or any(s % size for s in strides):
                bad(f"operand {name.upper()} base/strides must be multiples of its element "
                    f"size {size}: base=0x{op.base:x}, strides={op.strides}")


Instruction = Halt | Gemm | Vec


def decode(raw: bytes) -> Instruction:
    """Decode one 128-byte instruction.  An unknown opcode raises
    :class:`IsaError` with code OPCODE (what the controller reports as error 1);
    field validity is checked separately by ``check()``."""
    if len(raw) != INSTR_BYTES:
        raise ValueError(f"an instruction is {INSTR_BYTES} bytes, got {len(raw)}")
    w = np.frombuffer(bytes(raw), dtype="<u4")
    op = int(w[0]) & 0xFF
    if op == Opcode.HALT:
        return Halt(sync=bool(int(w[0]) >> HDR_SYNC_BIT & 1))
    if op == Opcode.GEMM:
        return Gemm.from_words(w)
    if op == Opcode.VEC:
        return Vec.from_words(w)
    raise IsaError(ErrorCode.OPCODE, f"unknown opcode 0x{op:02x} (0 HALT, 1 GEMM, 2 VEC)")


def encode_program(instrs: Iterable[Instruction]) -> bytes:
    """Concatenated encodings."""
    return b"".join(i.encode() for i in instrs)


def decode_program(raw: bytes) -> list[Instruction]:
    """Decode a whole program (length a multiple of 128 bytes)."""
    if len(raw) % INSTR_BYTES:
        raise ValueError(f"program length {len(raw)} is not a multiple of {INSTR_BYTES}")
    return [decode(raw[i:i + INSTR_BYTES]) for i in range(0, len(raw), INSTR_BYTES)]
