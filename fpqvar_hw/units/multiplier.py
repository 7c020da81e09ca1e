"""Code x code multipliers: exact signed fixed-point products of low-bit codes.

One signature, several micro-architectures (:class:`MulVariant`):

* ``LUT``: the product is a truth table.  Floats: the magnitude is a table of
  the two magnitude codes (e2m1 x e2m1: 3 + 3 input bits -> each of the 8
  product bits is one 6-input function, i.e. one LUT6), the sign is the XOR of
  the sign bits, and the two's complement output is a conditional negation.
  Integers: one table of both full codes (int4 x int4 only).
* ``DECOMPOSED`` (floats): ``(hidden_a.M_a x hidden_b.M_b)`` from a small
  significand table, shifted left by ``(max(E_a,1)-1) + (max(E_b,1)-1)``.
* ``DSP``: decode both codes to signed integers and use ``*`` (Yosys maps wide
  enough multiplies onto DSP48E2 slices).

Fixed-point encoding (``docs/numerics.md`` section 3, "Products and group accumulation"): an element code of a
float format with ``m`` mantissa bits and bias ``b`` is an exact integer
multiple of ``2^(1-b-m)`` (integers: of 1).  The product port ``p`` carries the
exact product in units of ``2^lsb_exp = lsb_a * lsb_b``:

==================  =======  =======  ==============
pair (a x b)        lsb_exp  max |p|  width (signed)
==================  =======  =======  ==============
e2m1fn x e2m1fn     -2       144      9
e1m2fn x e2m1fn     -3       84       8
e2m3fn x e2m3fn     -6       3600     13
e3m2fn x e2m3fn     -7       26880    16
int4 x int4          0       64       8
int8 x int8          0       16384    16
==================  =======  =======  ==============

Integer codes are two's complement; the most negative code (never emitted by
the symmetric quantizers) multiplies as ``-2^(bits-1)``, hence ``0x8 x 0x8 =
+64`` and the 8-bit int4 product.  Negative zero float codes give ``p = 0``.

Only the format descriptors (``ebits``, ``mbits``, ``bias``, ``bits``) come from
``fpqvar_quant.formats``; the tables are generated here from the field
definition and tested against the independent golden model.
"""
from __future__ import annotations

import enum
from functools import cached_property

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from fpqvar_quant.formats import Format, get_format

from ..emit import hierarchical

__all__ = ["MulPair", "MulVariant", "Multiplier", "MagnitudeCore", "magnitude_table", "check_variant", "code_layout", "operand_int"]


class MulPair(enum.Enum):
    """Supported (a format, b format) pairs; DFQ negatives x weights is E1M2_E2M1."""

    E2M1_E2M1 = ("e2m1fn", "e2m1fn")
    E1M2_E2M1 = ("e1m2fn", "e2m1fn")
    E2M3_E2M3 = ("e2m3fn", "e2m3fn")
    E3M2_E2M3 = ("e3m2fn", "e2m3fn")
    INT4_INT4 = ("int4", "int4")
    INT8_INT8 = ("int8", "int8")

    @property
    def fmt_a(self) -> Format:
        return get_format(self.value[0])

    @property
    def fmt_b(self) -> Format:
        return get_format(self.value[1])

    @property
    def is_float(self) -> bool:
        return self.fmt_a.kind == "float"

    @property
    def lsb_exp(self) -> int:
        """``log2`` of the product LSB."""
        return _lsb_exp(self.fmt_a) + _lsb_exp(self.fmt_b)

    @property
    def max_abs(self) -> int:
        """Largest ``|p|`` over all code pairs."""
        return _max_abs(self.fmt_a) * _max_abs(self.fmt_b)

    @property
    def width(self) -> int:
        """Two's complement width of ``p`` (``+max_abs`` occurs, so one bit above it)."""
        return self.max_abs.bit_length() + 1

    @property
    def mag_width(self) -> int:
        return self.max_abs.bit_length()


class MulVariant(enum.Enum):
    LUT = "lut"
    DECOMPOSED = "decomposed"
    DSP = "dsp"


def _lsb_exp(fmt: Format) -> int:
    return 0 if fmt.kind == "int" else 1 - fmt.bias - fmt.mbits


def _max_abs(fmt: Format) -> int:
    if fmt.kind == "int":
        return 1 << (fmt.bits - 1)
    return operand_int(fmt, (1 << (fmt.bits - 1)) - 1)


def operand_int(fmt: Format, mag_code: int) -> int:
    """Integer of a float *magnitude* code (sign bit clear), in units of the format LSB."""
    m = mag_code & ((1 << fmt.mbits) - 1)
    e = mag_code >> fmt.mbits
    return m if e == 0 else ((1 << fmt.mbits) | m) << (e - 1)


def code_layout(fmt: "str | Format") -> "data.StructLayout | signed":
    """Port shape of an element code: packed bits equal the ml_dtypes encoding.

    Floats: ``StructLayout(mantissa, exponent, sign)`` (LSB first); integers: ``signed(bits)``.
    """
    fmt = get_format(fmt)
    if fmt.kind == "int":
        return signed(fmt.bits)
    if fmt.kind != "float" or fmt.has_nan or fmt.has_inf:
        raise ValueError(f"{fmt.name} is not a finite low-bit element format a multiplier accepts")
    return data.StructLayout({"mantissa": fmt.mbits, "exponent": fmt.ebits, "sign": 1})


def check_variant(pair: MulPair, variant: MulVariant) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``variant`` can implement ``pair``."""
    if not isinstance(pair, MulPair):
        raise TypeError(f"pair must be a MulPair (e.g. MulPair.E2M1_E2M1), got {pair!r}")
    if not isinstance(variant, MulVariant):
        raise TypeError(f"variant must be a MulVariant (LUT, DECOMPOSED, DSP), got {variant!r}")
    if not pair.is_float and variant is MulVariant.DECOMPOSED:
        raise ValueError(f"{pair.name}: DECOMPOSED applies to float pairs; use LUT or DSP")
    if pair is MulPair.INT8_INT8 and variant is MulVariant.LUT:
        raise ValueError("INT8_INT8 as a LUT would be a 65,536-entry table; use MulVariant.DSP")


def magnitude_table(pair: MulPair) -> list[int]:
    """Float pairs: ``|p|`` indexed by ``mag_a | mag_b << (bits_a - 1)`` (magnitude codes)."""
    fa, fb = pair.fmt_a, pair.fmt_b
    na, nb = fa.bits - 1, fb.bits - 1
    return [operand_int(fa, k & ((1 << na) - 1)) * operand_int(fb, k >> na)
            for k in range(1 << (na + nb))]


@hierarchical
class MagnitudeCore(wiring.Component):
    """The ``LUT`` variant's unsigned magnitude table alone (float pairs).

    Ports: ``mag_a``, ``mag_b`` (the codes without their sign bits) -> ``mag``
    (``pair.mag_width`` bits, ``|p|``).  Combinational.  It is the part of the
    multiplier that is "one LUT6 per product bit" for e2m1fn x e2m1fn; the
    benchmark reports it next to the full signed :class:`Multiplier`.
    """

    def __init__(self, *, pair: MulPair):
        if not isinstance(pair, MulPair) or not pair.is_float:
            raise ValueError(f"MagnitudeCore takes a float MulPair, got {pair!r}")
        self.pair = pair
        super().__init__({"mag_a": In(pair.fmt_a.bits - 1), "mag_b": In(pair.fmt_b.bits - 1),
                          "mag": Out(pair.mag_width)})

    def elaborate(self, platform):
        m = Module()
        Multiplier._table(m, Cat(self.mag_a, self.mag_b), magnitude_table(self.pair), self.mag)
        return m


@hierarchical
class Multiplier(wiring.Component):
    """Combinational exact code x code multiplier (a leaf operator, no clock).

    Ports: ``a`` (:func:`code_layout` of ``pair.fmt_a``), ``b`` (of ``pair.fmt_b``),
    ``p``: ``signed(pair.width)``, the exact product in units of ``2^pair.lsb_exp``
    (table in the module docstring).  Latency 0: the enclosing pipeline (e.g.
    :class:`fpqvar_hw.units.dot.GroupDot`) registers the product.  No rounding, no
    overflow, every input pattern is valid.

    Parameters (keyword-only): ``pair`` (:class:`MulPair`), ``variant``
    (:class:`MulVariant`).  ``LUT`` on int8 (a 65,536-entry table) and
    ``DECOMPOSED`` on integers are rejected.
    """

    def __init__(self, *, pair: MulPair, variant: MulVariant = MulVariant.LUT):
        check_variant(pair, variant)
        self.pair, self.variant = pair, variant
        super().__init__({
            "a": In(code_layout(pair.fmt_a)),
            "b": In(code_layout(pair.fmt_b)),
            "p": Out(signed(pair.width)),
        })

    # ---------------------------------------------------------------- tables
    @cached_property
    def magnitude_table(self) -> list[int]:
        """Float pairs: ``|p|`` indexed by ``mag_a | mag_b << (bits_a - 1)``."""
        return magnitude_table(self.pair)

    @cached_property
    def int_table(self) -> list[int]:
        """Integer pairs: ``p`` indexed by ``code_a | code_b << bits_a``."""
        fa, fb = self.pair.fmt_a, self.pair.fmt_b

        def sx(c: int, bits: int) -> int:
            return c - (1 << bits) if c >> (bits - 1) else c
        return [sx(k & ((1 << fa.bits) - 1), fa.bits) * sx(k >> fa.bits, fb.bits)
                for k in range(1 << (fa.bits + fb.bits))]

    def significand_table(self) -> list[int]:
        """DECOMPOSED: ``sig_a * sig_b`` indexed by ``(h_a.M_a) | (h_b.M_b) << (m_a+1)``."""
        ma, mb = self.pair.fmt_a.mbits, self.pair.fmt_b.mbits
        return [(k & ((1 << (ma + 1)) - 1)) * (k >> (ma + 1)) for k in range(1 << (ma + mb + 2))]

    # ------------------------------------------------------------- elaborate
    def elaborate(self, platform):
        m = Module()
        pair = self.pair
        if not pair.is_float:
            if self.variant is MulVariant.LUT:
                self._table(m, Cat(self.a, self.b), self.int_table, self.p)
            else:
                m.d.comb += self.p.eq(self.a * self.b)
            return m

        sign = self.a.sign ^ self.b.sign
        mag = Signal(unsigned(pair.mag_width))
        if self.variant is MulVariant.LUT:
            mag_a = Cat(self.a.mantissa, self.a.exponent)
            mag_b = Cat(self.b.mantissa, self.b.exponent)
            self._table(m, Cat(mag_a, mag_b), self.magnitude_table, mag)
        elif self.variant is MulVariant.DECOMPOSED:
            sig = Signal(unsigned(pair.fmt_a.mbits + pair.fmt_b.mbits + 2))
            self._table(m, Cat(self._sig(self.a), self._sig(self.b)), self.significand_table(), sig)
            m.d.comb += mag.eq(sig << (self._shift(self.a) + self._shift(self.b)))
        else:
            ia = Signal(unsigned(pair.fmt_a.bits + (1 << pair.fmt_a.ebits) - 2))
            ib = Signal(unsigned(pair.fmt_b.bits + (1 << pair.fmt_b.ebits) - 2))
            m.d.comb += [ia.eq(self._sig(self.a) << self._shift(self.a)),
                         ib.eq(self._sig(self.b) << self._shift(self.b))]
            sa = Mux(self.a.sign, -ia, ia)
            sb = Mux(self.b.sign, -ib, ib)
            m.d.comb += self.p.eq(sa * sb)
            return m
        m.d.comb += self.p.eq(Mux(sign, -mag, mag))
        return m

    @staticmethod
    def _sig(code) -> "Cat":
        """Significand with its hidden bit (``E != 0``) on top."""
        return Cat(code.mantissa, code.exponent != 0)

    @staticmethod
    def _shift(code):
        """``max(E, 1) - 1``: left shift of the significand."""
        e = code.exponent
        return Mux(e == 0, 0, (e - 1)[:len(e)])

    @staticmethod
    def _table(m: Module, index, table: list[int], out) -> None:
        """``out = table[index]``, one truth table (``Const.bit_select``) per output bit.

        Written per bit rather than as a ``case`` statement: Yosys turns a
        ``case`` into a ROM and maps it onto MUXF7/8/9 trees, whereas a per-bit
        truth table of a 6-input index is exactly one LUT6.
        """
        n = len(table)
        for k in range(len(out)):
            tt = sum(((v >> k) & 1) << i for i, v in enumerate(table))
            m.d.comb += out[k].eq(Const(tt, n).bit_select(index, 1))
