"""Golden model of the code x code multipliers (bit-level numpy).

Every element code is an exact multiple of its format's *LSB*: a float format
with ``m`` mantissa bits and bias ``b`` has LSB ``2^(1-b-m)`` (its smallest
subnormal), an integer format has LSB 1.  The product of two codes is
therefore an exact signed integer in units of ``lsb_a * lsb_b``; that integer
is what the hardware multipliers emit (see ``docs/numerics.md`` section 3, "Products and group accumulation").

| pair (a x b)        | LSB     | max abs | signed width |
|---------------------|---------|---------|--------------|
| e2m1fn x e2m1fn     | 2^-2    | 144     | 9            |
| e1m2fn x e2m1fn     | 2^-3    | 84      | 8            |
| e2m3fn x e2m3fn     | 2^-6    | 3600    | 13           |
| e3m2fn x e2m3fn     | 2^-7    | 26880   | 16           |
| int4 x int4         | 2^0     | 64      | 8            |
| int8 x int8         | 2^0     | 16384   | 16           |

Integer codes are plain two's complement.  The quantizers never emit the
most negative code (int4 ``0x8``, int8 ``0x80``: formats are symmetric), but
the multipliers define it as ``-2^(bits-1)`` so that every input pattern has a
documented result (``0x8 x 0x8 = +64`` is why int4 needs 8 bits).

This module is independent of ``fpqvar_hw`` (it derives the integer of a code
from the field definition of ``docs/numerics.md`` section 1, and the tests check
it against ``ml_dtypes`` decoding).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import register_exporter
from ..formats import Format, get_format

__all__ = ["PAIRS", "ProductSpec", "product_spec", "code_to_int", "multiply"]

#: The multiplier pairs the hardware implements, as (a format, b format).
PAIRS: tuple[tuple[str, str], ...] = (
    ("e2m1fn", "e2m1fn"),
    ("e1m2fn", "e2m1fn"),
    ("e2m3fn", "e2m3fn"),
    ("e3m2fn", "e2m3fn"),
    ("int4", "int4"),
    ("int8", "int8"),
)


def _lsb_exp(fmt: Format) -> int:
    """log2 of the format's LSB (value of integer 1)."""
    if fmt.kind == "int":
        return 0
    if fmt.kind == "float":
        return 1 - fmt.bias - fmt.mbits
    raise ValueError(f"{fmt.name} is not an element format with a fixed-point LSB")


def code_to_int(fmt: "str | Format", codes) -> np.ndarray:
    """Exact signed integer ``v`` with ``value(code) = v * 2^lsb_exp`` (int64).

    Floats: ``E == 0 -> M``, else ``(2^m + M) << (E - 1)``, negated when the sign
    bit is set (``-0`` gives integer 0).  Integers: two's complement of ``bits``.
    """
    fmt = get_format(fmt)
    c = np.asarray(codes).astype(np.int64)
    if c.size and (c.min() < 0 or c.max() >= (1 << fmt.bits)):
        raise ValueError(f"{fmt.name} codes must lie in 0..{(1 << fmt.bits) - 1}")
    if fmt.kind == "int":
        return np.where(c >= (1 << (fmt.bits - 1)), c - (1 << fmt.bits), c)
    if fmt.kind != "float" or fmt.has_nan or fmt.has_inf:
        raise ValueError(f"{fmt.name}: the multipliers take only finite fn float or int formats")
    m = c & ((1 << fmt.mbits) - 1)
    e = (c >> fmt.mbits) & ((1 << fmt.ebits) - 1)
    mag = np.where(e == 0, m, ((1 << fmt.mbits) | m) << np.maximum(e - 1, 0))
    return np.where(c >> (fmt.bits - 1) == 1, -mag, mag)


@dataclass(frozen=True)
class ProductSpec:
    """Fixed-point encoding of one multiplier pair's product."""

    a: str
    b: str
    lsb_exp: int      # product value = p * 2^lsb_exp
    max_abs: int      # largest |p| over all code pairs
    width: int        # two's complement width holding every p

    @property
    def lsb(self) -> float:
        return float(2.0 ** self.lsb_exp)


def product_spec(a: "str | Format", b: "str | Format") -> ProductSpec:
    """Width and LSB of the products of ``a`` x ``b`` codes (from the tables)."""
    fa, fb = get_format(a), get_format(b)
    ia = code_to_int(fa, np.arange(1 << fa.bits))
    ib = code_to_int(fb, np.arange(1 << fb.bits))
    p = np.outer(ia, ib)
    lo, hi = int(p.min()), int(p.max())
    width = 1
    while not (-(1 << (width - 1)) <= lo and hi <= (1 << (width - 1)) - 1):
        width += 1
    return ProductSpec(fa.name, fb.name, _lsb_exp(fa) + _lsb_exp(fb),
                       int(np.abs(p).max()), width)


def multiply(a: "str | Format", b: "str | Format", codes_a, codes_b) -> np.ndarray:
    """Exact products (int64, units of ``product_spec(a, b).lsb``), broadcasting."""
    return code_to_int(a, codes_a) * code_to_int(b, codes_b)


def _add_args(p) -> None:
    p.add_argument("--pair", default="e2m1fn,e2m1fn", choices=[",".join(x) for x in PAIRS],
                   help="activation,weight formats (default e2m1fn,e2m1fn)")


@register_exporter("multiplier", "code x code -> exact fixed-point product, every pair", _add_args)
def _export(args, rng: np.random.Generator):
    """Every code pair of one multiplier (``--n`` is ignored: the space is exhaustive)."""
    fa, fb = args.pair.split(",")
    na, nb = 1 << get_format(fa).bits, 1 << get_format(fb).bits
    a, b = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    a, b = a.ravel().astype(np.uint8), b.ravel().astype(np.uint8)
    spec = product_spec(fa, fb)
    config = {"a": fa, "b": fb, "lsb_exp": spec.lsb_exp, "max_abs": spec.max_abs,
              "width": spec.width, "encoding": "p = exact product in units of 2^lsb_exp"}
    return {"a": a, "b": b, "p": multiply(fa, fb, a, b).astype(np.int32)}, config

