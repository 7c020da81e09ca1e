"""Golden model of the FP32/FP16 building blocks (``fpqvar_hw.units.fpu``).

Every function takes and returns IEEE bit patterns (``uint32`` for FP32,
``uint16`` for FP16) as numpy arrays, and implements exactly the policy of
``docs/numerics.md`` section 4:

* one correctly rounded IEEE operation, round to nearest even, subnormals kept.
  ``numpy.float32``/``float16`` arithmetic is exactly that (IEEE-754 on the host;
  FP16 add/mul are computed in float32 and rounded again, which is innocuous
  because 24 >= 2*11 + 2), so the arithmetic is delegated to numpy, the third
  party, and only the special-value policy is applied here;
* every NaN result becomes the canonical quiet NaN (FP32 ``0x7FC00000``, FP16 ``0x7E00``);
* ``mad(a, b, c) = add(mul(a, b), c)`` (unfused, two roundings);
* ``maximum``: -0 < +0, NaN if either input is NaN.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FMT", "QNAN", "add", "mul", "mad", "maximum", "convert", "canon",
           "to_float", "to_bits"]

#: format name -> (float dtype, bit-pattern dtype)
FMT = {"fp32": (np.float32, np.uint32), "fp16": (np.float16, np.uint16)}
QNAN = {"fp32": 0x7FC00000, "fp16": 0x7E00}


def _check(fmt: str) -> tuple[type, type]:
    if fmt not in FMT:
        raise ValueError(f"fmt must be one of {sorted(FMT)}, got {fmt!r}")
    return FMT[fmt]


def to_float(bits, fmt: str = "fp32") -> np.ndarray:
    """View bit patterns as floats (no conversion of the bits)."""
    ft, ut = _check(fmt)
    return np.asarray(bits).astype(ut).view(ft)


def canon(x: np.ndarray, fmt: str = "fp32") -> np.ndarray:
    """Float array -> bit patterns, with every NaN replaced by the canonical quiet NaN."""
    ft, ut = _check(fmt)
    x = np.asarray(x, dtype=ft)
    bits = x.view(ut).copy()
    bits[np.isnan(x)] = QNAN[fmt]
    return bits


to_bits = canon


def add(a, b, fmt: str = "fp32") -> np.ndarray:
    with np.errstate(all="ignore"):
        return canon(to_float(a, fmt) + to_float(b, fmt), fmt)


def mul(a, b, fmt: str = "fp32") -> np.ndarray:
    with np.errstate(all="ignore"):
        return canon(to_float(a, fmt) * to_float(b, fmt), fmt)


def mad(a, b, c, fmt: str = "fp32") -> np.ndarray:
    """Unfused multiply-add: RNE(RNE(a*b) + c)."""
    return add(mul(a, b, fmt), c, fmt)


def maximum(a, b, fmt: str = "fp32") -> np.ndarray:
    ft, ut = _check(fmt)
    a = np.asarray(a).astype(ut)
    b = np.asarray(b).astype(ut)
    fa, fb = a.view(ft), b.view(ft)
    width = 8 * np.dtype(ut).itemsize
    sign = ut(1 << (width - 1))
    ka = np.where(a & sign, ~a, a ^ sign)
    kb = np.where(b & sign, ~b, b ^ sign)
    out = np.where(kb > ka, b, a).astype(ut)
    out[np.isnan(fa) | np.isnan(fb)] = QNAN[fmt]
    return out


def convert(a, src: str, dst: str) -> np.ndarray:
    """Format conversion with one RNE rounding (FP16 -> FP32 is exact)."""
    _check(dst)
    with np.errstate(all="ignore"):
        return canon(to_float(a, src).astype(FMT[dst][0]), dst)


def sample_operands(fmt: str, n: int, seed: int, *, op: str = "add", arity: int = 2
                    ) -> list[np.ndarray]:
    """``arity`` arrays of ``n`` bit patterns biased toward the hard cases of ``op``.

    Mixture: uniform random bits; specials (+-0, +-Inf, NaNs with any payload,
    largest finite, smallest normal, subnormals); mantissas with many trailing
    zeros (products and sums that tie); second operands whose exponent is close to
    the first's (cancellation, ``op="add"``) or whose exponent sum lands near the
    overflow and subnormal boundaries (``op="mul"``).  Deterministic in ``seed``.
    """
    ft, ut = _check(fmt)
    e_bits, m_bits = {"fp32": (8, 23), "fp16": (5, 10)}[fmt]
    bias, emax_field = (1 << (e_bits - 1)) - 1, (1 << e_bits) - 1
    rng = np.random.default_rng(seed)

    def mantissa():
        man = rng.integers(0, 1 << m_bits, n, dtype=np.int64)
        trail = rng.integers(0, m_bits + 1, n)
        man = np.where(rng.random(n) < 0.35, (man >> trail) << trail, man)
        kind = rng.random(n)
        man = np.where(kind < 0.03, 0, man)
        return np.where(kind > 0.97, (1 << m_bits) - 1, man)

    def exponent(ref=None):
        e = rng.integers(0, emax_field + 1, n)
        kind = rng.random(n)
        e = np.where(kind < 0.12, rng.integers(0, 3, n), e)               # subnormal/tiny
        e = np.where((kind >= 0.12) & (kind < 0.18), emax_field - rng.integers(0, 3, n), e)
        if ref is not None:
            if op == "mul":
                target = np.where(rng.random(n) < 0.5,
                                  rng.integers(1 - m_bits - 2, 3, n),       # underflow edge
                                  rng.integers(emax_field - 2 - bias - 1, emax_field - bias + 2, n))
                rel = target + bias - (ref - bias)
            else:
                rel = ref + rng.integers(-(m_bits + 4), m_bits + 5, n)
            e = np.where((kind >= 0.18) & (kind < 0.70), rel, e)
        return np.clip(e, 0, emax_field)

    out = []
    ref = None
    for k in range(arity):
        e = exponent(ref if k == 1 else None)
        if k == 0:
            ref = e
        sign = rng.integers(0, 2, n)
        bits = (sign << (e_bits + m_bits)) | (e << m_bits) | mantissa()
        raw = rng.integers(0, 1 << (1 + e_bits + m_bits), n, dtype=np.int64)
        bits = np.where(rng.random(n) < 0.2, raw, bits)                     # uniform bits
        out.append(bits.astype(ut))
    return out
