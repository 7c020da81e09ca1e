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

Structure: each operator is a *front end* that produces an unrounded result
(:func:`unrounded_layout`: sign, exponent, wide significand, sticky, NaN/Inf
flags), followed by the one shared rounding that normalises, handles the subnormal
range, rounds and packs.  Each is written once, as a sequence of stages separated
by a register hook: with an identity hook it is the combinational front end
(:func:`add_front`, :func:`mul_front`) or :class:`RoundPack`; with registers
(clock-enabled by ``en``) it is the pipelined :class:`AddPipe` (latency
``ADD_STAGES + ROUND_STAGES`` = 7), :class:`MulPipe` (``MUL_STAGES + ROUND_STAGES``
= 8, the significand product in DSP48E2-sized slices, registered twice where a
DSP48E2 has its M and P registers)
and :class:`RoundPackPipe` (``ROUND_STAGES`` = 4), every stage a few logic levels
(leading/trailing-zero trees instead of priority chains; the sticky bits of a
shift come from trailing-zero counts).  :class:`FPUnit` wraps the pipes into a
stream operator; units with their own pipelines combine the front ends with a
``RoundPack`` or use the pipes directly (``fpqvar_hw.units.vector.Dataflow``).

Payloads are :func:`float_layout` views whose packed bits equal the IEEE
encoding (mantissa | exponent | sign from the LSB), so a testbench can drive raw
bit patterns.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..checked import Checked
from ..emit import hierarchical

__all__ = [
    "FloatFormat", "FP16", "FP32", "float_layout", "unrounded_layout",
    "RoundPack", "RoundPackPipe", "AddPipe", "MulPipe", "FPOp", "FPUnit", "unpack", "clz", "ctz",
    "mul_front", "add_front", "convert_front", "fp16_to_fp32", "ROUND_STAGES", "ADD_STAGES",
    "MUL_STAGES",
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


def _lz_tree(m: Module, bits: list, tag: str = "lz") -> tuple[Value, Value]:
    """(any, count) of the leading zeros of ``bits`` (MSB first, a power-of-two count);
    ``count`` is only meaningful when ``any`` is 1.  Radix 4 where it can: a node over
    four sub-trees takes the first one with a one (its index: the count's two high bits)
    and that one's count, so a LUT level resolves two bits of the count (a binary tree's
    chain of 2:1 selections mapped one LUT level deeper).  Every node is a named signal:
    an Amaranth value used twice is emitted (and simulated) twice, so a tree of values
    would grow as n log n expression copies instead of n nodes."""
    n = len(bits)
    if n == 1:
        return bits[0], Const(0, 0)
    if n == 2:
        any_ = Signal(name=f"{tag}_any")
        m.d.comb += any_.eq(bits[0] | bits[1])
        return any_, ~bits[0]
    q = n // 4
    subs = [_lz_tree(m, bits[k * q:(k + 1) * q], f"{tag}{k}") for k in range(4)]
    anys = [a for a, _ in subs]
    any_ = Signal(name=f"{tag}_any")
    w = len(subs[0][1])
    cnt = Signal(w + 2, name=f"{tag}_cnt")
    # the first sub-tree with a one: 0, 1, 2 or 3 (3 also when none has)
    idx = Mux(anys[0], 0, Mux(anys[1], 1, Mux(anys[2], 2, 3)))
    low = Mux(anys[0], subs[0][1], Mux(anys[1], subs[1][1], Mux(anys[2], subs[2][1], subs[3][1]))) \
        if w else Const(0, 0)
    m.d.comb += [any_.eq(anys[0] | anys[1] | anys[2] | anys[3]), cnt.eq(Cat(low, Const(0, 2) | idx))]
    return any_, cnt


def clz(m: Module, value: Value) -> Signal:
    """Count of leading zeros of ``value`` (``len(value)`` when it is 0), as a balanced
    tree: about ``log2(len)`` 2:1 selections deep instead of a ``len``-deep priority chain."""
    value = Value.cast(value)
    n = len(value)
    out = Signal(range(n + 1), name="clz")
    p2 = 1 << max(0, (n - 1).bit_length())
    if p2 > n:   # ones below the LSB: an all-zero value counts exactly n
        any_, cnt = _lz_tree(m, [value[i] for i in reversed(range(n))] + [Const(1)] * (p2 - n))
        m.d.comb += out.eq(cnt)
    else:
        any_, cnt = _lz_tree(m, [value[i] for i in reversed(range(n))])
        m.d.comb += out.eq(Mux(any_, cnt, n))
    return out


def ctz(m: Module, value: Value) -> Signal:
    """Count of trailing zeros of ``value`` (``len(value)`` when it is 0), as :func:`clz`."""
    value = Value.cast(value)
    return clz(m, Cat(*[value[i] for i in reversed(range(len(value)))]))


class _Stages:
    """Stage boundaries of an operator written once for both forms.

    ``stages(**values)`` marks a boundary: with ``en`` None (combinational form) it
    returns the values unchanged; otherwise a register per value, clock-enabled by
    ``en`` (the pipelined form).  ``count`` is the number of boundaries passed.
    """

    def __init__(self, m: Module, en: "Value | None" = None, prefix: str = ""):
        self.m, self.en, self.prefix, self.count = m, en, prefix, 0

    def __call__(self, **values) -> SimpleNamespace:
        self.count += 1
        if self.en is None:
            return SimpleNamespace(**values)
        out = {}
        for name, v in values.items():
            v = Value.cast(v)
            r = Signal(v.shape(), name=f"{self.prefix}{name}_s{self.count}")
            with self.m.If(self.en):
                self.m.d.sync += r.eq(v)
            out[name] = r
        return SimpleNamespace(**out)


def _sig(m: Module, shape, value, name: str) -> Signal:
    s = Signal(shape, name=name)
    m.d.comb += s.eq(value)
    return s


#: Stage boundaries of each operator's pipelined form (the combinational form has the
#: same boundaries, unregistered).  RoundPack: leading/trailing-zero trees and the exponent
#: room | normal/subnormal shift amounts and the biased exponent | the normalising shift
#: and the sticky bit | round to nearest even, pack, NaN/Inf/zero (registered output).
ROUND_STAGES = 4
#: add: compare magnitudes, exponent difference | align with jammed sticky | add or subtract
ADD_STAGES = 3
#: mul: unpack | significand product in DSP48E2 slices (M register) | (P register) | sum
#: of the slices' products
MUL_STAGES = 4
#: width of the unsigned part of a DSP48E2 B port: significand products are split into
#: slices of this many bits of the second operand (one DSP each)
DSP_B_BITS = 17


def _round_stages(m: Module, u, fmt: FloatFormat, sig_bits: int, st: _Stages) -> Value:
    """RoundPack's steps (:class:`RoundPack` docstring) with ``ROUND_STAGES`` boundaries
    ``st``; ``u`` has the fields of :func:`unrounded_layout`.  Returns the IEEE bits."""
    M, E = fmt.man_bits, fmt.exp_bits
    S = max(sig_bits, M + 2)     # hidden + fraction + guard bits always exist
    sig = Value.cast(u.sig)
    if S > sig_bits:
        sig = Cat(Const(0, S - sig_bits), sig)
    ew = max(len(Value.cast(u.exp)), E + 2) + 2
    p = st.prefix
    exp = _sig(m, signed(ew), u.exp, f"{p}rp_exp")
    # 1: leading and trailing zeros (trees), the room above the subnormal exponent
    s = st(sig=sig, lz=clz(m, sig), tz=ctz(m, sig), zero=sig == 0,
           room=_sig(m, signed(ew + 1), exp - fmt.emin, f"{p}rp_room"),
           room1=_sig(m, signed(ew + 2), exp - fmt.emin + 1, f"{p}rp_room1"),
           nroom=_sig(m, signed(ew + 1), fmt.emin - exp, f"{p}rp_nroom"),
           sticky=u.sticky, sign=u.sign, nan=u.nan, inf=u.inf)
    # 2: shift left by lz if the result stays normal, else by the room (subnormal
    # result), or right by -room (capped at S + 2) when the room is negative
    normal = _sig(m, 1, s.room >= s.lz, f"{p}rp_normal")
    right = _sig(m, 1, ~normal & (s.room < 0), f"{p}rp_right")
    lsh = _sig(m, range(S + 1), Mux(normal, s.lz, Mux(s.room >= 0, s.room, 0)), f"{p}rp_lsh")
    rsh = _sig(m, range(S + 3), Mux(right, Mux(s.nroom > S + 1, S + 2, s.nroom), 0), f"{p}rp_rsh")
    biased = _sig(m, signed(ew + 2), s.room1 - s.lz, f"{p}rp_biased")   # exp - lz + bias
    s = st(sig=s.sig, tz=s.tz, zero=s.zero, lsh=lsh, rsh=rsh, right=right, normal=normal,
           biased=biased, sticky=s.sticky, sign=s.sign, nan=s.nan, inf=s.inf)
    # 3: the shift; every bit below the guard bit (shifted out or not) is sticky: a
    # set bit below position K of the shifted value <=> tz + lsh - rsh < K
    x = _sig(m, S, Mux(s.right, s.sig >> s.rsh, (s.sig << s.lsh)[:S]), f"{p}rp_x")
    K = S - 2 - M
    # (K = 0: nothing lies below the guard bit of a left shift; no constant compare)
    low = Mux(s.right, s.tz < K + s.rsh, s.tz + s.lsh < K if K > 0 else Const(0))
    s = st(keep=x[S - 1 - M:S - 1], guard=x[S - 2 - M],
           sticky=s.sticky | (~s.zero & low),
           exp_field=Mux(s.normal, s.biased[:E], 0),
           nan=s.nan, big=s.inf | (s.normal & (s.biased >= fmt.exp_all_ones)),
           zero=s.zero & ~s.sticky, sign=s.sign)
    # 4: round to nearest even (the carry may reach the exponent field: Inf), pack
    round_up = s.guard & (s.sticky | s.keep[0])
    packed = _sig(m, E + M + 1, Cat(s.keep, s.exp_field) + round_up, f"{p}rp_packed")
    out = Mux(s.nan, fmt.qnan,
              Mux(s.big, Cat(Const(fmt.inf, fmt.width - 1), s.sign),
                  Mux(s.zero, Cat(Const(0, fmt.width - 1), s.sign),
                      Cat(packed[:fmt.width - 1], s.sign))))
    return st(o=_sig(m, fmt.width, out, f"{p}rp_o")).o


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
    # named signals: an Amaranth value used in several places is emitted (and simulated)
    # once per use, and the fields below feed trees of selections
    normal, special, man_zero = Signal(), Signal(), Signal()
    m.d.comb += [normal.eq(ex != 0), special.eq(ex == fmt.exp_all_ones), man_zero.eq(man == 0)]
    exp = Signal(signed(fmt.exp_bits + 2))
    m.d.comb += exp.eq(Mux(normal, ex, 1) - fmt.bias)
    return Unpacked(sign=sign, exp=exp, sig=Cat(man, normal), mag=bits[:-1],
                    is_zero=~normal & man_zero, is_inf=special & man_zero,
                    is_nan=special & ~man_zero)


@hierarchical
class RoundPack(wiring.Component):
    """The one shared round-and-pack step (combinational; :class:`RoundPackPipe` is the
    same steps registered).

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
        m.d.comb += self.o.as_value().eq(_round_stages(m, self.i, self.fmt, self.sig_bits, _Stages(m)))
        return m


def _check_fmt(fmt) -> None:
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"fmt must be a FloatFormat (FP16, FP32), got {fmt!r}")


@hierarchical
class RoundPackPipe(Checked, wiring.Component):
    """:class:`RoundPack` as a pipeline of :data:`ROUND_STAGES` registered stages (the
    same steps, the same results for every input).

    Ports: ``en`` (every register is clock-enabled by it: the caller's stall holds the
    pipeline), ``i`` (:func:`unrounded_layout`, combinational into the first stage),
    ``o`` (registered).  ``latency`` = :data:`ROUND_STAGES` cycles from ``i`` (while
    ``en`` = 1) to ``o``; initiation interval 1.
    """

    def __init__(self, fmt: FloatFormat, *, sig_bits: int, exp_bits: int):
        self.fmt, self.sig_bits, self.exp_bits = fmt, sig_bits, exp_bits
        self.latency = self.latency_for(fmt=fmt, sig_bits=sig_bits, exp_bits=exp_bits)
        super().__init__({
            "en": In(1),
            "i": In(unrounded_layout(sig_bits, exp_bits)),
            "o": Out(float_layout(fmt)),
        })

    @classmethod
    def check_params(cls, *, fmt, sig_bits, exp_bits) -> None:
        _check_fmt(fmt)
        if sig_bits < 2:
            raise ValueError(f"sig_bits must be >= 2, got {sig_bits}")

    @staticmethod
    def latency_for(**params) -> int:
        """``latency`` without building the unit: :data:`ROUND_STAGES` for every
        configuration."""
        return ROUND_STAGES

    def elaborate(self, platform):
        m = Module()
        st = _Stages(m, self.en)
        m.d.comb += self.o.as_value().eq(_round_stages(m, self.i, self.fmt, self.sig_bits, st))
        assert st.count == self.latency
        return m


class _BinaryPipe(Checked, wiring.Component):
    """What :class:`AddPipe` and :class:`MulPipe` share: ports ``en``, ``a``, ``b``,
    ``o``; ``latency`` = the front end's ``FRONT_STAGES`` + ``ROUND_STAGES``; the front
    end's stages (a subclass's ``_front(m, st)``, returning the unrounded fields) then
    :func:`_round_stages`, one :class:`_Stages` hook."""

    FRONT_STAGES: int

    def __init__(self, fmt: FloatFormat = FP32):
        self.fmt = fmt
        self.latency = self.latency_for(fmt=fmt)
        fl = float_layout(fmt)
        super().__init__({"en": In(1), "a": In(fl), "b": In(fl), "o": Out(fl)})

    @classmethod
    def check_params(cls, *, fmt) -> None:
        _check_fmt(fmt)

    @classmethod
    def latency_for(cls, *, fmt: FloatFormat = FP32) -> int:
        """``latency`` without building the unit (the same for every format)."""
        return cls.FRONT_STAGES + ROUND_STAGES

    def elaborate(self, platform):
        m = Module()
        st = _Stages(m, self.en)
        u = self._front(m, st)
        m.d.comb += self.o.as_value().eq(_round_stages(m, u, self.fmt, len(u.sig), st))
        assert st.count == self.latency
        return m


@hierarchical
class AddPipe(_BinaryPipe):
    """``o = RNE_fmt(a + b)`` pipelined: the :func:`add_front` stages (:data:`ADD_STAGES`,
    the last one registering the unrounded sum) and the :class:`RoundPackPipe` stages,
    every stage registered, bit-identical to ``RoundPack(add_front(a, b))``.

    Ports ``en``, ``a``, ``b`` (``float_layout(fmt)``, combinational into the first
    stage), ``o`` (registered).  ``latency`` = ``ADD_STAGES + ROUND_STAGES`` cycles;
    initiation interval 1; every register is clock-enabled by ``en``.
    """

    FRONT_STAGES = ADD_STAGES

    def _front(self, m: Module, st: _Stages) -> SimpleNamespace:
        return _add_stages(m, self.a, self.b, self.fmt, st)


@hierarchical
class MulPipe(_BinaryPipe):
    """``o = RNE_fmt(a * b)`` pipelined: the :func:`mul_front` stages (:data:`MUL_STAGES`:
    unpack; the significand product as ``DSP_B_BITS``-bit slices of ``b``'s significand,
    one DSP48E2 each, registered twice where the slice has its M and P registers (Vivado
    absorbs them; Yosys 0.60 packs no register into a DSP48E2 and keeps them as
    flip-flops around the DSP); the sum of the slices' products, registering the
    unrounded product) and the :class:`RoundPackPipe`
    stages, bit-identical to ``RoundPack(mul_front(a, b))``.

    Ports ``en``, ``a``, ``b``, ``o`` as :class:`AddPipe`; ``latency`` = ``MUL_STAGES +
    ROUND_STAGES`` cycles; initiation interval 1.
    """

    FRONT_STAGES = MUL_STAGES

    def _front(self, m: Module, st: _Stages) -> SimpleNamespace:
        return _mul_stages(m, self.a, self.b, self.fmt, st)


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
        """Pipeline registers from input to output (:class:`FPUnit` docstring)."""
        add, mul = ADD_STAGES + ROUND_STAGES, MUL_STAGES + ROUND_STAGES
        return {FPOp.ADD: add, FPOp.MUL: mul, FPOp.MAD: mul + add, FPOp.MAX: 2,
                FPOp.CONVERT: 1 + ROUND_STAGES}[self]


def _unrounded(m: Module, v: SimpleNamespace, sig_bits: int, exp_bits: int) -> Signal:
    u = Signal(unrounded_layout(sig_bits, exp_bits))
    m.d.comb += [u.sig.eq(v.sig), u.exp.eq(v.exp), u.sticky.eq(v.sticky), u.sign.eq(v.sign),
                 u.nan.eq(v.nan), u.inf.eq(v.inf)]
    return u


def _exp_field(bits: Value, fmt: FloatFormat) -> Value:
    """The biased exponent with subnormals and zero at 1 (the exponent of their grid)."""
    ex = bits[fmt.man_bits:fmt.man_bits + fmt.exp_bits]
    return Cat(ex[0] | (ex == 0), ex[1:])


def _mul_stages(m: Module, a: Value, b: Value, fmt: FloatFormat, st: _Stages) -> SimpleNamespace:
    """:func:`mul_front`'s steps with :data:`MUL_STAGES` boundaries ``st`` (the last one
    registers the unrounded product); returns its fields."""
    ua, ub = unpack(m, a, fmt), unpack(m, b, fmt)
    ew = fmt.exp_bits + 4
    p = st.prefix
    # 1: significands, exponent e_a + e_b + 1, flags
    s = st(sa=ua.sig, sb=ub.sig,
           exp=_sig(m, signed(ew), _exp_field(Value.cast(a), fmt) + _exp_field(Value.cast(b), fmt)
                    + (1 - 2 * fmt.bias), f"{p}mul_exp"),
           sign=ua.sign ^ ub.sign,
           nan=ua.is_nan | ub.is_nan | (ua.is_inf & ub.is_zero) | (ub.is_inf & ua.is_zero),
           inf=ua.is_inf | ub.is_inf)
    # 2, 3: one product per DSP_B_BITS-bit slice of b's significand (DSP48E2 M, P registers)
    W = fmt.man_bits + 1
    lows = range(0, W, DSP_B_BITS)
    parts = {f"pp{k}": _sig(m, W + min(DSP_B_BITS, W - lo),
                            s.sa * s.sb[lo:lo + DSP_B_BITS], f"{p}mul_pp{k}")
             for k, lo in enumerate(lows)}
    flags = dict(exp=s.exp, sign=s.sign, nan=s.nan, inf=s.inf)
    s = st(**parts, **flags)
    s = st(**{f"pp{k}": getattr(s, f"pp{k}") for k in range(len(lows))},
           **{k: getattr(s, k) for k in flags})
    # 4: the exact product (sum of the slices' products), registered unrounded
    prod = _sig(m, 2 * W, sum(getattr(s, f"pp{k}") << lo for k, lo in enumerate(lows)),
                f"{p}mul_prod")
    return st(sig=prod, exp=s.exp, sticky=Const(0, 1), sign=s.sign, nan=s.nan, inf=s.inf)


def mul_front(m: Module, a: Value, b: Value, fmt: FloatFormat):
    """Front end of ``a * b``: the exact product of two ``fmt`` bit patterns, unrounded.

    Returns a combinational ``Signal`` of ``unrounded_layout(2 * fmt.man_bits + 2,
    fmt.exp_bits + 4)`` (M = ``fmt.man_bits``): ``sig`` is the product of the two
    (M+1)-bit significands, hidden bits included, so nothing is lost and
    ``sticky`` is 0; ``exp`` is ``e_a + e_b + 1``; ``sign`` is the XOR of the
    signs; ``nan`` is set for a NaN operand or ``0 * Inf``; ``inf`` for an Inf
    operand.  :class:`RoundPack` of the record gives ``RNE_fmt(a * b)``.  The same
    steps as :class:`MulPipe`'s front stages, unregistered.
    """
    v = _mul_stages(m, a, b, fmt, _Stages(m))
    return _unrounded(m, v, 2 * fmt.man_bits + 2, fmt.exp_bits + 4)


def _add_stages(m: Module, a: Value, b: Value, fmt: FloatFormat, st: _Stages) -> SimpleNamespace:
    """:func:`add_front`'s steps with :data:`ADD_STAGES` boundaries ``st`` (the last one
    registers the unrounded sum); returns its fields."""
    ua, ub = unpack(m, a, fmt), unpack(m, b, fmt)
    a, b = Value.cast(a), Value.cast(b)
    M, E = fmt.man_bits, fmt.exp_bits
    p = st.prefix
    # 1: order by magnitude, exponent difference (>= 0), sign of an exact zero sum
    # (|a| == |b| and a - b, or both zero); the NaN/Inf result is combined in stage 2
    # (behind the field decodes here it would make this stage the adder's deepest)
    swap = _sig(m, 1, ub.mag > ua.mag, f"{p}add_swap")
    ea, eb = _exp_field(a, fmt), _exp_field(b, fmt)
    da = _sig(m, signed(E + 2), ea - eb, f"{p}add_da")
    db = _sig(m, signed(E + 2), eb - ea, f"{p}add_db")
    sub = ua.sign ^ ub.sign
    s = st(big_sig=Mux(swap, ub.sig, ua.sig), small_sig=Mux(swap, ua.sig, ub.sig),
           small_zero=Mux(swap, ua.is_zero, ub.is_zero),
           d=Mux(swap, db, da)[:E + 1], big_e=Mux(swap, eb, ea), big_sign=Mux(swap, ub.sign, ua.sign),
           sub=sub, zero_sum=(ua.mag == ub.mag) & (sub | ua.is_zero),
           a_inf=ua.is_inf, a_sign=ua.sign, b_inf=ub.is_inf, b_sign=ub.sign,
           a_nan=ua.is_nan, b_nan=ub.is_nan)
    # 2: align the smaller significand (<< 3: guard, round, sticky) right by d; every bit
    # shifted below the sticky position is jammed into it: a set bit of (sig << 2) below
    # index d (= trailing zeros + 2 < d), as a mask of the shift, no trailing-zero count
    far = s.d[5:] != 0 if E + 1 > 5 else Const(0)
    sig2 = Cat(Const(0, 2), s.small_sig)
    hi = _sig(m, M + 3, Mux(far, 0, sig2 >> s.d[:5]), f"{p}add_hi")
    below = ~(Const((1 << len(sig2)) - 1, len(sig2)) << s.d[:5])[:len(sig2)]   # bits < d
    out_bits = _sig(m, len(sig2), sig2 & below, f"{p}add_out")
    jam = Mux(far, ~s.small_zero, out_bits.any())
    sign = Mux(s.a_inf, s.a_sign, Mux(s.b_inf, s.b_sign,
                                      Mux(s.zero_sum, s.a_sign & s.b_sign, s.big_sign)))
    s = st(big=Cat(Const(0, 3), s.big_sig), aligned=Cat(jam, hi), sub=s.sub,
           exp=_sig(m, signed(E + 4), s.big_e + (1 - fmt.bias), f"{p}add_exp"),
           sign=sign, nan=s.a_nan | s.b_nan | (s.a_inf & s.b_inf & s.sub), inf=s.a_inf | s.b_inf)
    # 3: add or subtract (the larger magnitude minus the smaller is >= 0), registered
    sub_mask = Cat(*([s.sub] * (M + 5)))
    total = _sig(m, M + 5, s.big + (s.aligned ^ sub_mask) + s.sub, f"{p}add_total")
    return st(sig=total, exp=s.exp, sticky=Const(0, 1), sign=s.sign, nan=s.nan, inf=s.inf)


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
    The same steps as :class:`AddPipe`'s front stages, unregistered.
    """
    v = _add_stages(m, a, b, fmt, _Stages(m))
    return _unrounded(m, v, fmt.man_bits + 5, fmt.exp_bits + 4)


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



def fp16_to_fp32(m: Module, h: Value) -> Value:
    """FP16 bits ``h`` -> FP32 bits, combinational and exact (every FP16 value is an FP32
    value): the result of :class:`RoundPack` (FP32) of :func:`convert_front` (FP16), with
    the canonical NaN, in a few LUT levels and no carry chain.  A normal number moves its
    exponent by 112 and its fraction by 13 bits; a subnormal ``f * 2^-24`` becomes
    ``1.x * 2^(p - 24)`` with ``p`` the index of ``f``'s leading one (a 10-way select)."""
    mb, eb = FP16.man_bits, FP16.exp_bits
    sign, e, f = h[mb + eb], h[mb:mb + eb], h[:mb]
    out = Signal(FP32.width)
    sub_exp, sub_man = Signal(FP32.exp_bits), Signal(FP32.man_bits)
    for p in range(mb):             # the highest set bit of f wins (the last assignment)
        with m.If(f[p]):
            m.d.comb += [sub_exp.eq(FP32.bias - FP16.bias - mb + 1 + p),
                         sub_man.eq((f << (FP32.man_bits - p))[:FP32.man_bits])]
    with m.If(e == FP16.exp_all_ones):
        m.d.comb += out.eq(Mux(f != 0, FP32.qnan, Cat(Const(FP32.inf, FP32.width - 1), sign)))
    with m.Elif(e == 0):
        m.d.comb += out.eq(Mux(f != 0, Cat(sub_man, sub_exp, sign),
                               Cat(Const(0, FP32.width - 1), sign)))
    with m.Else():
        m.d.comb += out.eq(Cat(Const(0, FP32.man_bits - FP16.man_bits), f,
                               e + (FP32.bias - FP16.bias), sign))
    return out


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


@hierarchical
class FPUnit(Checked, wiring.Component):
    """Pipelined stream FP operator, ``lanes`` independent operations per beat.

    Ports
    -----
    ``i``: stream of ``ArrayLayout(StructLayout({op operands: float_layout(src)}), lanes)``.
    ``o``: stream of ``ArrayLayout(float_layout(dst), lanes)``; ``dst = src``
    except for ``CONVERT``.

    Latency ``op.latency`` cycles (:class:`AddPipe` / :class:`MulPipe`; MAD: the two in
    series; CONVERT: front end register + :class:`RoundPackPipe`; MAX: 2), initiation
    interval 1.  Stall: the whole pipeline holds while ``o.valid & ~o.ready``;
    ``i.ready = ~o.valid | o.ready``.  ``o.valid`` never depends on ``o.ready``.
    Rounding, subnormals and NaN/Inf: see the module docstring.
    """

    def __init__(self, op: FPOp, fmt: FloatFormat = FP32, *, dst: FloatFormat | None = None,
                 lanes: int = 1):
        self.op, self.fmt, self.dst, self.lanes = op, fmt, dst or fmt, lanes
        self.latency = self.latency_for(op=op, fmt=fmt, dst=dst, lanes=lanes)
        operand = data.StructLayout({n: float_layout(fmt) for n in op.operands})
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(operand, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(float_layout(self.dst), lanes))),
        })

    @classmethod
    def check_params(cls, *, op, fmt, dst, lanes) -> None:
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

    @staticmethod
    def latency_for(*, op: FPOp, fmt: FloatFormat = FP32, dst: FloatFormat | None = None,
                    lanes: int = 1) -> int:
        """``latency`` without building the unit (``op.latency``)."""
        return op.latency

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
                u = convert_front(m, x.a, fmt)
                m.submodules[f"rp{lane}"] = rp = RoundPackPipe(self.dst, sig_bits=len(u.sig),
                                                              exp_bits=len(u.exp))
                m.d.comb += [rp.en.eq(en), rp.i.eq(reg(u, f"l{lane}_u"))]
                res = rp.o.as_value()
            else:
                pipe = AddPipe(fmt) if op is FPOp.ADD else MulPipe(fmt)
                m.submodules[f"{'add' if op is FPOp.ADD else 'mul'}{lane}"] = pipe
                m.d.comb += [pipe.en.eq(en), pipe.a.eq(x.a), pipe.b.eq(x.b)]
                res = pipe.o.as_value()
                if op is FPOp.MAD:
                    c = x.c.as_value()
                    for k in range(pipe.latency):
                        c = reg(c, f"l{lane}_c{k + 1}")
                    m.submodules[f"add{lane}"] = add = AddPipe(fmt)
                    m.d.comb += [add.en.eq(en), add.a.eq(res), add.b.eq(c)]
                    res = add.o.as_value()
            m.d.comb += self.o.payload[lane].as_value().eq(res)
        return m
