"""IEEE-754 floating-point building blocks (FP32 and FP16) for the vector and
attention units.

Numerics (``docs/numerics.md`` section 4, golden model ``fpqvar_quant.golden.fp32``):

* every operation returns the correctly rounded IEEE result, **round to nearest,
  ties to even**, exactly what ``numpy.float32`` / ``numpy.float16`` arithmetic
  returns for one operation;
* **subnormals are fully supported** (inputs and outputs, no flush to zero);
* overflow rounds to +-Inf; ``x + (-x)`` is +0; ``-0 + -0`` is -0;
* **every NaN result is the canonical quiet NaN** of the output format
  (FP32 ``0x7FC00000``, FP16 ``0x7E00``, sign 0): NaN inputs, ``Inf - Inf``,
  ``0 * Inf``;
* multiply-add is **unfused**: ``mad(a, b, c) = add(mul(a, b), c)`` (two roundings).

Structure: each operator is a combinational *front end* that produces an
unrounded result (:func:`unrounded_layout`: sign, exponent, wide significand,
sticky, NaN/Inf flags), followed by the one shared :class:`RoundPack` stage that
normalises, handles the subnormal range, rounds and packs.  :class:`FPUnit`
wraps a front end and ``RoundPack`` into a stream pipeline; units with their own
pipelines (``fpqvar_hw.units.fp32``, the vector and matrix units) combine the public
front ends :func:`add_front`, :func:`mul_front` and :func:`convert_front` with a
``RoundPack`` of their own.

Payloads are :func:`float_layout` views whose packed bits equal the IEEE
encoding (mantissa | exponent | sign from the LSB), so a testbench can drive raw
bit patterns.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..emit import hierarchical

__all__ = [
    "FloatFormat", "FP16", "FP32", "float_layout", "unrounded_layout",
    "RoundPack", "FPOp", "FPUnit", "unpack", "clz", "mul_front", "add_front", "convert_front",
]


@dataclass(frozen=True)
class FloatFormat:
    """An IEEE-754 binary interchange format (exponent and fraction widths)."""

    name: str
    exp_bits: int
    man_bits: int

    def __post_init__(self):
        if self.exp_bits < 2 or self.man_bits < 1:
            raise ValueError(f"{self.name}: need exp_bits >= 2 and man_bits >= 1, "
                             f"got {self.exp_bits}, {self.man_bits}")

    @property
    def width(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (also of the subnormal grid)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        return (1 << self.exp_bits) - 2 - self.bias

    @property
    def exp_all_ones(self) -> int:
        return (1 << self.exp_bits) - 1

    @property
    def qnan(self) -> int:
        """Canonical quiet NaN bit pattern (sign 0, quiet bit set, rest 0)."""
        return (self.exp_all_ones << self.man_bits) | (1 << (self.man_bits - 1))

    @property
    def inf(self) -> int:
        return self.exp_all_ones << self.man_bits


FP16 = FloatFormat("fp16", 5, 10)
FP32 = FloatFormat("fp32", 8, 23)


def float_layout(fmt: FloatFormat) -> data.StructLayout:
    """Layout whose packed bits are the IEEE encoding of ``fmt``."""
    return data.StructLayout({"mantissa": fmt.man_bits, "exponent": fmt.exp_bits, "sign": 1})


def unrounded_layout(sig_bits: int, exp_bits: int) -> data.StructLayout:
    """An exact (or sticky-marked) result awaiting rounding.

    Value = (-1)^sign * sig * 2^(exp - (sig_bits - 1)), i.e. ``exp`` is the weight of
    the significand's MSB position (the significand need not be normalised);
    ``sticky`` = 1 says nonzero bits exist below ``sig``'s LSB.  ``nan``/``inf``
    override the value (``inf`` keeps ``sign``).
    """
    return data.StructLayout({"sig": sig_bits, "exp": signed(exp_bits), "sticky": 1,
                              "sign": 1, "nan": 1, "inf": 1})


def clz(m: Module, value: Value) -> Signal:
    """Count of leading zeros of ``value`` (``len(value)`` when it is 0)."""
    n = len(value)
    out = Signal(range(n + 1), name="clz")
    m.d.comb += out.eq(n)
    for i in range(n):  # later assignments win: the highest set bit decides
        with m.If(value[i]):
            m.d.comb += out.eq(n - 1 - i)
    return out


@dataclass
class Unpacked:
    """Fields of a decoded operand (Amaranth values)."""

    sign: Value
    exp: Value      # signed unbiased exponent; subnormals and zero use emin
    sig: Value      # man_bits + 1 bits, hidden bit included
    mag: Value      # exponent|mantissa bits (orders magnitudes as unsigned)
    is_zero: Value
    is_inf: Value
    is_nan: Value


def unpack(m: Module, x: Value, fmt: FloatFormat) -> Unpacked:
    """Decode an IEEE bit pattern ``x`` (a ``float_layout(fmt)`` view or raw bits)."""
    bits = Value.cast(x)
    man = bits[:fmt.man_bits]
    ex = bits[fmt.man_bits:fmt.man_bits + fmt.exp_bits]
    sign = bits[-1]
    normal = ex != 0
    special = ex == fmt.exp_all_ones
    exp = Signal(signed(fmt.exp_bits + 2))
    m.d.comb += exp.eq(Mux(normal, ex, 1) - fmt.bias)
    return Unpacked(sign=sign, exp=exp, sig=Cat(man, normal), mag=bits[:-1],
                    is_zero=(ex == 0) & (man == 0), is_inf=special & (man == 0),
                    is_nan=special & (man != 0))


@hierarchical
class RoundPack(wiring.Component):
    """The one shared round-and-pack stage (combinational).

    ``i``: :func:`unrounded_layout` (``sig_bits``, ``exp_bits``); ``o``: the IEEE
    bits of ``fmt``.  Normalises by a leading-zero count, shifts right into the
    subnormal range (collecting a sticky bit) when the exponent is below
    ``fmt.emin``, rounds to nearest even and overflows to +-Inf.  A zero
    significand with no sticky gives a zero with ``sign``.  ``nan`` gives the
    canonical quiet NaN.  No clock; the caller registers around it.
    """

    def __init__(self, fmt: FloatFormat, *, sig_bits: int, exp_bits: int):
        if sig_bits < 2:
            raise ValueError(f"sig_bits must be >= 2, got {sig_bits}")
        self.fmt = fmt
        self.sig_bits = sig_bits
        self.exp_bits = exp_bits
        super().__init__({
            "i": In(unrounded_layout(sig_bits, exp_bits)),
            "o": Out(float_layout(fmt)),
        })

    def elaborate(self, platform):
        m = Module()
        fmt = self.fmt
        M = fmt.man_bits
        # Pad the significand so that hidden + fraction + guard bits always exist.
        S = max(self.sig_bits, M + 2)
        sig = Signal(S)
        m.d.comb += sig.eq(self.i.sig << (S - self.sig_bits))
        ew = max(self.exp_bits, fmt.exp_bits + 2) + 2
        exp = Signal(signed(ew))
        m.d.comb += exp.eq(self.i.exp)
        lz = clz(m, sig)

        # Left shift by lz if the result stays normal, else by (exp - emin), which may
        # be negative (right shift into the subnormal range).
        room = Signal(signed(ew + 1))
        m.d.comb += room.eq(exp - fmt.emin)
        normal = Signal()
        m.d.comb += normal.eq(room >= lz)
        lsh = Signal(range(S + 1))
        rsh = Signal(range(S + 3))
        with m.If(normal):
            m.d.comb += lsh.eq(lz)
        with m.Elif(room >= 0):
            m.d.comb += lsh.eq(room[:len(lsh)])
        with m.Elif(room < -(S + 1)):
            m.d.comb += rsh.eq(S + 2)
        with m.Else():
            m.d.comb += rsh.eq(-room)
        # Right shift keeps the shifted-out bits below: (sig << (S+2)) >> rsh.
        wide = Signal(2 * S + 2)
        m.d.comb += wide.eq((Cat(Const(0, S + 2), sig) >> rsh) << lsh)
        x = wide[S + 2:]
        sticky = (wide[:S + 2] != 0) | self.i.sticky
        keep = x[S - 1 - M:]           # hidden + M fraction bits
        guard = x[S - 2 - M]
        rest = (x[:S - 2 - M] != 0) if S - 2 - M > 0 else Const(0)
        sticky_all = sticky | rest

        biased = Signal(signed(ew + 1))
        m.d.comb += biased.eq(exp - lz + fmt.bias)
        exp_field = Mux(normal, biased[:fmt.exp_bits], 0)
        overflow = normal & (biased >= fmt.exp_all_ones)
        round_up = guard & (sticky_all | keep[0])
        packed = Signal(fmt.exp_bits + M + 1)
        m.d.comb += packed.eq(Cat(keep[:M], exp_field) + round_up)  # carry may reach Inf

        with m.If(self.i.nan):
            m.d.comb += self.o.as_value().eq(fmt.qnan)
        with m.Elif(self.i.inf | overflow):
            m.d.comb += self.o.as_value().eq(Cat(Const(fmt.inf, fmt.width - 1), self.i.sign))
        with m.Elif((sig == 0) & ~self.i.sticky):
            m.d.comb += self.o.as_value().eq(Cat(Const(0, fmt.width - 1), self.i.sign))
        with m.Else():
            m.d.comb += self.o.as_value().eq(Cat(packed[:fmt.width - 1], self.i.sign))
        return m


class FPOp(enum.Enum):
    """Operations of :class:`FPUnit`.  Operand fields: ``a``, ``b`` (``c`` for MAD)."""

    ADD = "add"          # a + b
    MUL = "mul"          # a * b
    MAD = "mad"          # (a * b) + c, two roundings
    MAX = "max"          # max(a, b); -0 < +0; NaN if either is NaN
    CONVERT = "convert"  # a (src format) -> dst format

    @property
    def operands(self) -> tuple[str, ...]:
        return {FPOp.ADD: ("a", "b"), FPOp.MUL: ("a", "b"), FPOp.MAD: ("a", "b", "c"),
                FPOp.MAX: ("a", "b"), FPOp.CONVERT: ("a",)}[self]

    @property
    def latency(self) -> int:
        """Pipeline registers from input to output (stages of one RoundPack each)."""
        return {FPOp.MAD: 4}.get(self, 2)


def mul_front(m: Module, a: Value, b: Value, fmt: FloatFormat):
    """Front end of ``a * b``: the exact product of two ``fmt`` bit patterns, unrounded.

    Returns a combinational ``Signal`` of ``unrounded_layout(2 * fmt.man_bits + 2,
    fmt.exp_bits + 4)`` (M = ``fmt.man_bits``): ``sig`` is the product of the two
    (M+1)-bit significands, hidden bits included, so nothing is lost and
    ``sticky`` is 0; ``exp`` is ``e_a + e_b + 1``; ``sign`` is the XOR of the
    signs; ``nan`` is set for a NaN operand or ``0 * Inf``; ``inf`` for an Inf
    operand.  :class:`RoundPack` of the record gives ``RNE_fmt(a * b)``.
    """
    ua, ub = unpack(m, a, fmt), unpack(m, b, fmt)
    ew = fmt.exp_bits + 4
    u = Signal(unrounded_layout(2 * fmt.man_bits + 2, ew))
    nan = ua.is_nan | ub.is_nan | (ua.is_inf & ub.is_zero) | (ub.is_inf & ua.is_zero)
    m.d.comb += [
        u.sig.eq(ua.sig * ub.sig),
        u.exp.eq(ua.exp + ub.exp + 1),
        u.sticky.eq(0),
        u.sign.eq(ua.sign ^ ub.sign),
        u.nan.eq(nan),
        u.inf.eq(ua.is_inf | ub.is_inf),
    ]
    return u


def add_front(m: Module, a: Value, b: Value, fmt: FloatFormat):
    """Front end of ``a + b``: the aligned sum of two ``fmt`` bit patterns, unrounded.

    Returns a combinational ``Signal`` of ``unrounded_layout(fmt.man_bits + 5,
    fmt.exp_bits + 4)`` (M = ``fmt.man_bits``): ``sig`` is the larger-magnitude
    operand's significand plus or minus the smaller one's, aligned to it, with a
    carry bit on top and guard, round and sticky bits below (every bit shifted
    out is jammed into the lowest), so :class:`RoundPack` of the record gives
    ``RNE_fmt(a + b)``; ``exp`` is the larger exponent + 1; ``sticky`` is 0
    (folded into ``sig``).  Signs: an exact zero sum is -0 only when both
    operands are negative (``x + (-x) = +0``), an Inf operand keeps its sign;
    ``nan`` is set for a NaN operand or ``Inf - Inf``, ``inf`` for an Inf operand.
    """
    ua, ub = unpack(m, a, fmt), unpack(m, b, fmt)
    M = fmt.man_bits
    swap = ub.mag > ua.mag
    big_sig, small_sig = Mux(swap, ub.sig, ua.sig), Mux(swap, ua.sig, ub.sig)
    big_exp, small_exp = Mux(swap, ub.exp, ua.exp), Mux(swap, ua.exp, ub.exp)
    big_sign = Mux(swap, ub.sign, ua.sign)
    d = Signal(unsigned(fmt.exp_bits + 1))
    m.d.comb += d.eq(big_exp - small_exp)
    dc = Signal(range(M + 6))
    m.d.comb += dc.eq(Mux(d > M + 5, M + 5, d))
    # small << 3, shifted right by d, with all shifted-out bits jammed into bit 0
    wide = Signal(2 * M + 9)
    m.d.comb += wide.eq(Cat(Const(0, M + 5 + 3), small_sig) >> dc)
    aligned = Cat(wide[M + 5:][0] | (wide[:M + 5] != 0), wide[M + 6:])
    big = Cat(Const(0, 3), big_sig)
    sub = ua.sign ^ ub.sign
    total = Signal(M + 5)
    m.d.comb += total.eq(Mux(sub, big - aligned, big + aligned))
    ew = fmt.exp_bits + 4
    u = Signal(unrounded_layout(M + 5, ew))
    both_inf_opp = ua.is_inf & ub.is_inf & sub
    m.d.comb += [
        u.sig.eq(total),
        u.exp.eq(big_exp + 1),
        u.sticky.eq(0),
        u.sign.eq(Mux(ua.is_inf, ua.sign, Mux(ub.is_inf, ub.sign,
                      Mux(total == 0, ua.sign & ub.sign, big_sign)))),
        u.nan.eq(ua.is_nan | ub.is_nan | both_inf_opp),
        u.inf.eq(ua.is_inf | ub.is_inf),
    ]
    return u


def convert_front(m: Module, a: Value, src: FloatFormat):
    """Front end of a format conversion: the ``src`` bit pattern ``a`` as an exact
    ``unrounded_layout(src.man_bits + 1, src.exp_bits + 4)`` record (significand
    with hidden bit, unbiased exponent, sign, NaN/Inf flags).  :class:`RoundPack`
    of it in the destination format rounds it to nearest even."""
    ua = unpack(m, a, src)
    u = Signal(unrounded_layout(src.man_bits + 1, src.exp_bits + 4))
    m.d.comb += [u.sig.eq(ua.sig), u.exp.eq(ua.exp), u.sticky.eq(0), u.sign.eq(ua.sign),
                 u.nan.eq(ua.is_nan), u.inf.eq(ua.is_inf)]
    return u



def fp_max(m: Module, a: Value, b: Value, fmt: FloatFormat) -> Value:
    """Combinational max with the :class:`FPOp.MAX` policy; returns IEEE bits."""
    ua, ub = unpack(m, a, fmt), unpack(m, b, fmt)
    a, b = Value.cast(a), Value.cast(b)
    sign_bit = 1 << (fmt.width - 1)
    # Map to unsigned keys whose order is the float order (-0 < +0).
    ka = Mux(ua.sign, ~a, a ^ sign_bit)
    kb = Mux(ub.sign, ~b, b ^ sign_bit)
    out = Signal(fmt.width)
    m.d.comb += out.eq(Mux(ua.is_nan | ub.is_nan, fmt.qnan, Mux(kb > ka, b, a)))
    return out


def _round(m: Module, u, fmt: FloatFormat, name: str) -> Value:
    rp = RoundPack(fmt, sig_bits=len(u.sig), exp_bits=len(u.exp))
    m.submodules[name] = rp
    m.d.comb += rp.i.eq(u)
    return rp.o.as_value()


@hierarchical
class FPUnit(wiring.Component):
    """Pipelined stream FP operator, ``lanes`` independent operations per beat.

    Ports
    -----
    ``i``: stream of ``ArrayLayout(StructLayout({op operands: float_layout(src)}), lanes)``.
    ``o``: stream of ``ArrayLayout(float_layout(dst), lanes)``; ``dst = src``
    except for ``CONVERT``.

    Latency ``op.latency`` cycles (2: front end + RoundPack; MAD: 4), initiation
    interval 1.  Stall: the whole pipeline holds while ``o.valid & ~o.ready``;
    ``i.ready = ~o.valid | o.ready``.  ``o.valid`` never depends on ``o.ready``.
    Rounding, subnormals and NaN/Inf: see the module docstring.
    """

    def __init__(self, op: FPOp, fmt: FloatFormat = FP32, *, dst: FloatFormat | None = None,
                 lanes: int = 1):
        self._MustUse__silence = True  # a rejected configuration is not an unused design
        if not isinstance(op, FPOp):
            raise TypeError(f"op must be an FPOp, got {op!r}")
        if not isinstance(fmt, FloatFormat):
            raise TypeError(f"fmt must be a FloatFormat (FP16, FP32), got {fmt!r}")
        if dst is not None and op is not FPOp.CONVERT:
            raise ValueError(f"dst format only applies to FPOp.CONVERT, not {op}")
        if op is FPOp.CONVERT and dst is None:
            raise ValueError("FPOp.CONVERT needs dst= (e.g. FP16 -> FP32)")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        self._MustUse__silence = False
        self.op, self.fmt, self.dst, self.lanes = op, fmt, dst or fmt, lanes
        self.latency = op.latency
        operand = data.StructLayout({n: float_layout(fmt) for n in op.operands})
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(operand, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(float_layout(self.dst), lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        op, fmt = self.op, self.fmt
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        L = self.latency
        valid = [self.i.valid] + [Signal(name=f"v{k}") for k in range(1, L + 1)]
        with m.If(en):
            m.d.sync += [valid[k + 1].eq(valid[k]) for k in range(L)]
        m.d.comb += self.o.valid.eq(valid[L])

        def reg(v, name):
            r = Signal.like(v, name=name)
            with m.If(en):
                m.d.sync += r.eq(v)
            return r

        for lane in range(self.lanes):
            x = self.i.payload[lane]
            if op is FPOp.MAX:
                res = reg(reg(fp_max(m, x.a, x.b, fmt), f"l{lane}_max"), f"l{lane}_max2")
            elif op is FPOp.CONVERT:
                u = reg(convert_front(m, x.a, fmt), f"l{lane}_u")
                res = reg(_round(m, u, self.dst, f"rp{lane}"), f"l{lane}_r")
            elif op in (FPOp.MUL, FPOp.MAD):
                u = reg(mul_front(m, x.a, x.b, fmt), f"l{lane}_u")
                res = reg(_round(m, u, fmt, f"rp{lane}"), f"l{lane}_r")
                if op is FPOp.MAD:
                    c = reg(reg(x.c, f"l{lane}_c1"), f"l{lane}_c2")
                    s = reg(add_front(m, res, c, fmt), f"l{lane}_s")
                    res = reg(_round(m, s, fmt, f"rpa{lane}"), f"l{lane}_r2")
            else:
                u = reg(add_front(m, x.a, x.b, fmt), f"l{lane}_u")
                res = reg(_round(m, u, fmt, f"rp{lane}"), f"l{lane}_r")
            m.d.comb += self.o.payload[lane].as_value().eq(res)
        return m
