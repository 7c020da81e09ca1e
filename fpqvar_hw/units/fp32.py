"""The FP32 operations of the group dot-product unit, on top of ``fpqvar_hw.units.fpu``.

``fpqvar_hw.units.fpu`` is the project's IEEE-754 library (one shared, verified
:class:`~fpqvar_hw.units.fpu.RoundPack` stage; round to nearest even, subnormals
kept, overflow to Inf, canonical NaN ``0x7FC00000``).  This module adds the one
front end the dot product needs and nothing else:

* :func:`scaled_sum_front`: the exact value ``S * 2^L * s_a * s_w`` of an integer
  group sum ``S`` and two FP16 scales as an *unrounded* record (the product of
  the 11-bit significands is exact in FP32, and ``S * 2^L`` is exact because
  ``|S| < 2^24``), so ``round_pack`` of it equals
  ``RNE_fp32(fp32(S * 2^L) * (fp32(s_a) * fp32(s_w)))`` -- the contract of
  ``docs/numerics.md`` section 3, "Products and group accumulation" -- with a single rounding;
* :func:`round_pack` and :func:`add`: thin combinational wrappers around
  ``fpu.RoundPack`` and the FP32 add front end.

Special values follow IEEE multiplication: NaN scale -> NaN; Inf scale -> Inf,
or NaN when another factor (scale or ``S``) is zero.  ``S = 0`` with finite
scales gives a zero whose sign is that of ``s_a * s_w``.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, Value

from . import fpu
from .fpu import FP16, FP32, RoundPack, unpack, unrounded_layout

__all__ = ["scaled_sum_front", "round_pack", "add"]


def scaled_sum_front(m: Module, s: Value, s_a: Value, s_w: Value, lsb_exp: int):
    """Unrounded record (``fpu.unrounded_layout``) of ``s * 2^lsb_exp * s_a * s_w``.

    ``s``: signed integer group sum; ``s_a``, ``s_w``: FP16 bit patterns.
    Purely combinational; one ``|s| x 11 x 11``-bit multiply.
    """
    s = Value.cast(s)
    ua, uw = unpack(m, s_a, FP16), unpack(m, s_w, FP16)
    n = len(s)
    mag = Signal(n, name="sum_mag")
    m.d.comb += mag.eq(abs(s))
    sig_bits = n + 2 * (FP16.man_bits + 1)
    u = Signal(unrounded_layout(sig_bits, 10), name="scaled")
    # value = mag*sig_a*sig_w * 2^(e_a - 10 + e_w - 10 + lsb_exp); the record's exp is
    # the weight of its MSB: that exponent + (sig_bits - 1).
    zero = ua.is_zero | uw.is_zero | (s == 0)
    inf = ua.is_inf | uw.is_inf
    m.d.comb += [
        u.sig.eq(mag * ua.sig * uw.sig),
        u.exp.eq(ua.exp + uw.exp + (lsb_exp - 2 * FP16.man_bits + sig_bits - 1)),
        u.sticky.eq(0),
        u.sign.eq(ua.sign ^ uw.sign ^ s[-1]),
        u.nan.eq(ua.is_nan | uw.is_nan | (inf & zero)),
        u.inf.eq(inf),
    ]
    return u


def round_pack(m: Module, u, name: str) -> Value:
    """FP32 bits of an unrounded record through the shared ``fpu.RoundPack`` (combinational)."""
    rp = RoundPack(FP32, sig_bits=len(u.sig), exp_bits=len(u.exp))
    m.submodules[name] = rp
    m.d.comb += rp.i.eq(u)
    return rp.o.as_value()


def add(m: Module, a: Value, b: Value, name: str) -> Value:
    """``RNE_fp32(a + b)`` of two FP32 bit patterns (combinational, ``fpu``'s add front end)."""
    return round_pack(m, fpu.add_front(m, a, b, FP32), name)
