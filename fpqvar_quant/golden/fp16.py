"""Bit-level FP16 helpers of the golden model (integer numpy, no float arithmetic).

* :func:`fields` splits IEEE binary16 bit patterns into sign / exponent / mantissa.
* :func:`to_fixed` maps finite FP16 patterns to exact signed integers in units of
  2^-24 (the smallest subnormal): every finite FP16 value is such an integer,
  with ``|value| <= 65504 * 2^24 < 2^40``.
* :func:`round_rational` rounds an exact non-negative rational
  ``num / den * 2^exp2`` to FP16 with round-to-nearest-even, subnormals kept,
  and reports overflow (the result would be >= 65520, i.e. round to Inf).

All functions take and return numpy arrays (any shape) and are exact for the
documented ranges (``num < 2^52``, ``0 < den < 2^10``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["QNAN", "MAX_FINITE", "INF", "fields", "is_special", "magnitude", "to_fixed",
           "round_rational", "bit_length"]

QNAN = 0x7E00        #: canonical quiet NaN written by the hardware
INF = 0x7C00
MAX_FINITE = 0x7BFF  #: 65504


def fields(bits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sign, exponent field, mantissa field) of FP16 bit patterns, as int64 arrays."""
    b = _bits(bits)
    return b >> 15, (b >> 10) & 0x1F, b & 0x3FF


def is_special(bits) -> np.ndarray:
    """True for NaN and +-Inf patterns (exponent field all ones)."""
    return ((_bits(bits) >> 10) & 0x1F) == 0x1F


def magnitude(bits) -> np.ndarray:
    """The 15 magnitude bits; for finite values their integer order is the value order."""
    return _bits(bits) & 0x7FFF


def to_fixed(bits) -> np.ndarray:
    """Exact value of finite FP16 patterns as signed int64 in units of 2^-24.

    Raises ``ValueError`` on NaN/Inf patterns (they have no fixed-point value).
    """
    s, e, m = fields(bits)
    if np.any(e == 0x1F):
        raise ValueError("to_fixed: NaN/Inf patterns have no fixed-point value; mask them first")
    mag = np.where(e == 0, m, (m | 0x400) << np.maximum(e - 1, 0))
    return np.where(s == 1, -mag, mag)


def bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values (0 for 0), exact below 2^62."""
    x = np.asarray(x, dtype=np.int64)
    n = np.zeros(x.shape, dtype=np.int64)
    v = x.copy()
    for sh in (32, 16, 8, 4, 2, 1):
        big = v >= (np.int64(1) << sh)
        n = np.where(big, n + sh, n)
        v = np.where(big, v >> sh, v)
    return n + (v > 0)


def round_rational(num, den, exp2) -> tuple[np.ndarray, np.ndarray]:
    """RNE of ``num / den * 2^exp2`` to FP16; returns (bits ``uint16``, overflow bool).

    ``num >= 0`` (int64, < 2^52), ``den`` in [1, 2^10), ``exp2`` integer (scalar or
    array).  Overflowing results (>= 65520 before rounding to the 11-bit grid, i.e.
    RNE gives Inf) return ``0x7C00`` with ``overflow`` True; the caller applies its
    own overflow policy.  Zero gives +0.
    """
    num = np.asarray(num, dtype=np.int64)
    den = np.broadcast_to(np.asarray(den, dtype=np.int64), num.shape)
    exp2 = np.broadcast_to(np.asarray(exp2, dtype=np.int64), num.shape)
    if np.any(num < 0) or np.any(den <= 0) or np.any(den >= 1 << 10) or np.any(num >= 1 << 52):
        raise ValueError("round_rational: need 0 <= num < 2^52 and 0 < den < 2^10")
    # t = floor(log2(num / den)): start from bit lengths, correct by one.
    t = bit_length(num) - bit_length(den)
    lhs = np.where(t >= 0, num, num << np.clip(-t, 0, 62))
    rhs = np.where(t >= 0, den << np.clip(t, 0, 62), den)
    t = np.where(lhs < rhs, t - 1, t)
    e = np.maximum(t + exp2, -14)               # unbiased exponent of the result (clamped)
    q_exp = e - 10                               # weight of the result's LSB
    sh = exp2 - q_exp                            # n = num/den * 2^sh
    # n = num * 2^sh / den with an exact remainder (shift num left or den left).
    sl = np.clip(sh, 0, 62)
    sr = np.clip(-sh, 0, 62)
    n_num = np.where(sh >= 0, num << sl, num)
    n_den = np.where(sh >= 0, den, np.where(sr > 52, np.int64(1) << 62, den << np.minimum(sr, 52)))
    q = n_num // n_den
    r = n_num - q * n_den
    twice = 2 * r
    up = (twice > n_den) | ((twice == n_den) & (q & 1 == 1))
    q = q + up
    # Pack: ((e + 14) << 10) + q, where q includes the hidden bit for normal results;
    # a carry out of the significand increments the exponent field by itself.
    bits = ((e + 14) << 10) + q
    bits = np.where(num == 0, 0, bits)
    overflow = bits >= INF
    bits = np.where(overflow, INF, bits)
    return bits.astype(np.uint16), overflow


def _bits(bits) -> np.ndarray:
    b = np.asarray(bits)
    if b.dtype.kind not in "iu":
        raise TypeError(f"FP16 bit patterns must be an integer array, got dtype {b.dtype}")
    b = b.astype(np.int64)
    if b.size and (b.min() < 0 or b.max() > 0xFFFF):
        raise ValueError("FP16 bit patterns must lie in 0..0xFFFF")
    return b
