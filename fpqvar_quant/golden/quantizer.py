"""Golden model of the LUT-based group quantizer (bit-level numpy).

Contract (``docs/numerics.md`` section 3, "Group quantizer"), per group of G FP16 inputs ``x``:

1. **NaN/Inf**: if any element has exponent field 31, every scale of the group is
   the FP16 quiet NaN ``0x7E00`` (e8m0: ``0xFF``), every code is 0 and the group's
   ``error`` flag is set.
2. ``A = max |x|`` (exact, FP16).  **Zero group** (``A == 0``, -0 included): scale
   ``0x0000`` (e8m0: ``0x00``) and all codes ``0x00``.
3. **Scale**, FP16: ``s = RNE_fp16(A / fmax)`` of the exact quotient; if ``A > 0``
   and that rounds to zero, ``s = 2^-24`` (``0x0001``).  e8m0:
   ``s = 2^(floor(log2 A) - floor(log2 fmax))``, code ``127 + exponent``.
4. **Codes**: the magnitude index ``k`` of the format grid nearest to ``|x| / s``,
   computed exactly by comparing ``|x|`` with the exact products ``s * mid_j``
   (``mid_j`` = midpoint of grid values j and j+1): ``k = #{j : |x| > s mid_j}``
   plus one for a tie ``|x| == s mid_j`` with ``j`` odd (the tie goes to the even
   code ``j + 1``).  Beyond the last midpoint ``k`` saturates at the top code.
   Float formats: ``code = sign(x) << (bits-1) | k`` (-0 keeps its sign bit);
   integer formats: two's complement of ``+-k``.
5. **DFQ** (``dfq4``): elements with ``x <= 0`` (sign bit set, or +0) use the
   e1m2fn grid with ``s_neg = RNE_fp16(max|x<=0| / 1.75)``, code ``0x8 | k``;
   elements with ``x > 0`` use e2m1fn with ``s_pos = RNE_fp16(max(x>0) / 6)``,
   code ``k``.  A side with no nonzero element has scale 0 and its elements get
   magnitude index 0.  Scales are returned in the order (neg, pos).
   ``dfq6``: the same with the uniform 0..31 grid (int6 magnitudes, ``s_neg =
   max|x<=0| / 31``) for negatives, e2m3fn for positives, code ``0x20 | k``.

Nothing here uses float arithmetic: ``|x|`` is an integer in units of 2^-24
(:func:`fp16.to_fixed`), midpoints are integers in units of 2^-c, and the
comparisons are int64.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..formats import DFQ_FORMATS, get_format
from . import fp16, register_exporter

__all__ = ["QUANTIZER_FORMATS", "DFQ", "SCALE_FORMATS", "GridSpec", "grid_spec", "scale_fp16",
           "scale_e8m0", "quantize_groups", "GoldenQuant", "n_scales", "canonical_format"]

DFQ = "dfq4"
#: Element formats the quantizer supports (``dfq`` is accepted as an alias of ``dfq4``).
QUANTIZER_FORMATS = ("e2m1fn", "e1m2fn", "e3m0fn", "e2m3fn", "e3m2fn", "int4", "int6", "int8") + tuple(DFQ_FORMATS)
SCALE_FORMATS = ("fp16", "e8m0")


def canonical_format(fmt: str) -> str:
    """Validate a quantizer format name (``dfq`` -> ``dfq4``)."""
    f = DFQ if fmt == "dfq" else fmt
    if f not in QUANTIZER_FORMATS:
        raise ValueError(f"quantizer format must be one of {', '.join(QUANTIZER_FORMATS)}, got {fmt!r}")
    return f


def n_scales(fmt: str) -> int:
    """Scales per group: 2 for DFQ (neg, pos), else 1."""
    return 2 if canonical_format(fmt) in DFQ_FORMATS else 1


@dataclass(frozen=True)
class GridSpec:
    """Exact integer description of one element grid for the threshold quantizer.

    ``mid_num[j] / 2^frac_bits`` is the midpoint between grid values j and j+1;
    ``fmax = fmax_odd * 2^fmax_exp`` with ``fmax_odd`` odd; ``emax = floor(log2 fmax)``.
    """

    name: str
    bits: int
    kind: str
    mid_num: tuple[int, ...]
    frac_bits: int
    fmax_odd: int
    fmax_exp: int
    emax: int


@lru_cache(maxsize=None)
def grid_spec(name: str) -> GridSpec:
    """The :class:`GridSpec` of an element format of :mod:`fpqvar_quant.formats`."""
    f = get_format(name)
    if f.kind not in ("float", "int") or f.bits > 8 or f.has_nan or f.has_inf:
        raise ValueError(f"{name} is not a quantizer element format")
    from fractions import Fraction

    grid = [Fraction(float(g)) for g in f.positive_grid]  # exact: dyadic floats
    mids = [(a + b) / 2 for a, b in zip(grid[:-1], grid[1:])]
    c = max(int(m.denominator).bit_length() - 1 for m in mids)
    nums = tuple(int(m * (1 << c)) for m in mids)
    assert all(Fraction(n, 1 << c) == m for n, m in zip(nums, mids))
    fmax = grid[-1]
    e = 0
    odd = fmax
    while odd.denominator != 1 or odd.numerator % 2 == 0:
        if odd.denominator != 1:
            odd *= 2
            e -= 1
        else:
            odd /= 2
            e += 1
    assert fmax >= 1, name
    emax = int(fmax).bit_length() - 1
    return GridSpec(name, f.bits, f.kind, nums, c, int(odd), e, emax)


def scale_fp16(absmax_fixed: np.ndarray, spec: GridSpec) -> np.ndarray:
    """FP16 scale bits ``RNE(A / fmax)`` for ``A`` in units of 2^-24 (int64 >= 0).

    0 for ``A == 0``; ``0x0001`` when ``A > 0`` rounds to zero.
    """
    a = np.asarray(absmax_fixed, dtype=np.int64)
    bits, overflow = fp16.round_rational(a, spec.fmax_odd, -24 - spec.fmax_exp)
    assert not overflow.any(), "absmax / fmax cannot overflow FP16 for fmax >= 1"
    return np.where((a > 0) & (bits == 0), 1, bits).astype(np.uint16)


def scale_e8m0(absmax_fixed: np.ndarray, spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """(e8m0 code, unbiased exponent) of ``2^(floor(log2 A) - emax)``; code 0 for A == 0."""
    a = np.asarray(absmax_fixed, dtype=np.int64)
    ex = fp16.bit_length(a) - 1 - 24 - spec.emax
    return np.where(a > 0, ex + 127, 0).astype(np.uint8), ex


def _indices(mag: np.ndarray, s_num: np.ndarray, s_exp: np.ndarray, spec: GridSpec) -> np.ndarray:
    """Magnitude index for ``|x| = mag * 2^-24`` and ``s = s_num * 2^s_exp`` (broadcast per group).

    ``|x| > s * mid_j``  <=>  ``mag * 2^(c - 24 - s_exp) > s_num * mid_num[j]`` (exact int64).
    """
    d = -24 - s_exp                                   # shift that aligns the two sides
    lhs = mag << (spec.frac_bits + np.maximum(d, 0))
    idx = np.zeros(mag.shape, dtype=np.int64)
    for j, mn in enumerate(spec.mid_num):
        rhs = (s_num * mn) << np.maximum(-d, 0)
        idx += (lhs > rhs) | ((lhs == rhs) & (j % 2 == 1))
    return np.where(s_num == 0, 0, idx)


@dataclass(frozen=True)
class GoldenQuant:
    """Result of :func:`quantize_groups`: codes ``uint8 [..., G]``, scales
    (``uint16`` FP16 bits or ``uint8`` e8m0 codes) ``[..., n_scales]``, error ``bool [...]``."""

    codes: np.ndarray
    scales: np.ndarray
    error: np.ndarray


def quantize_groups(x_bits: Any, fmt: str, *, scale_format: str = "fp16") -> GoldenQuant:
    """Quantize groups of FP16 bit patterns (last axis = one group) bit-exactly.

    See the module docstring for the contract.  ``x_bits``: integer array of FP16
    patterns, shape ``[..., G]``.
    """
    fmt = canonical_format(fmt)
    if scale_format not in SCALE_FORMATS:
        raise ValueError(f"scale_format must be one of {SCALE_FORMATS}, got {scale_format!r}")
    b = np.asarray(x_bits)
    if b.ndim < 1 or b.shape[-1] < 1:
        raise ValueError(f"x_bits must have a non-empty last axis (the group), got shape {b.shape}")
    sign, _, _ = fp16.fields(b)
    special = fp16.is_special(b)
    err = special.any(axis=-1)
    mag = np.where(special, 0, fp16.to_fixed(np.where(special, 0, b)))
    mag = np.abs(mag)
    if fmt in DFQ_FORMATS:
        d = DFQ_FORMATS[fmt]           # (formats.py; dfq6: 5-bit uniform negatives, e2m3fn positives)
        neg_fmt, pos_fmt, bits = d.neg, d.pos, d.bits
        neg_side = (sign == 1) | (mag == 0)
        sides = [(neg_side, grid_spec(neg_fmt), 1 << (bits - 1)), (~neg_side, grid_spec(pos_fmt), 0x0)]
    else:
        spec = grid_spec(fmt)
        sides = [(np.ones(b.shape, dtype=bool), spec, None)]
    codes = np.zeros(b.shape, dtype=np.int64)
    scales = []
    for sel, spec, prefix in sides:
        a = np.where(sel, mag, 0).max(axis=-1)
        if scale_format == "fp16":
            s_bits = scale_fp16(a, spec)
            s_fix = fp16.to_fixed(s_bits)
            s_num, s_exp = s_fix, np.full(a.shape, -24, dtype=np.int64)
            s_out = np.where(err, fp16.QNAN, s_bits).astype(np.uint16)
        else:
            code, ex = scale_e8m0(a, spec)
            s_num, s_exp = (a > 0).astype(np.int64), ex
            s_out = np.where(err, 0xFF, code).astype(np.uint8)
        scales.append(s_out)
        idx = _indices(mag, s_num[..., None], s_exp[..., None], spec)
        if prefix is not None:
            c = prefix | idx
        elif spec.kind == "int":
            c = np.where(sign == 1, (-idx) & ((1 << spec.bits) - 1), idx)
        else:
            c = (sign << (spec.bits - 1)) | idx
        codes = np.where(sel, c, codes)
    zero_group = (mag.max(axis=-1) == 0) & ~err
    codes = np.where((zero_group | err)[..., None], 0, codes)
    return GoldenQuant(codes.astype(np.uint8), np.stack(scales, axis=-1), err)


# ---------------------------------------------------------------------- vectors
def random_groups(rng: np.random.Generator, n: int, group_size: int) -> np.ndarray:
    """FP16 test groups biased toward the interesting regions (seeded by ``rng``).

    Mixes: normal activations of random magnitude, groups with one huge
    outlier, all-negative / all-positive groups, subnormal-only groups, zero
    groups (+-0), groups containing NaN/Inf, groups that repeat their absmax
    (exact ties), and uniformly random bit patterns.
    """
    kind = rng.integers(0, 9, size=n)
    out = np.empty((n, group_size), dtype=np.uint16)
    for i in range(n):
        k = kind[i]
        if k == 8:                                   # raw finite bit patterns
            v = rng.integers(0, 0x7C00, size=group_size) | (rng.integers(0, 2, size=group_size) << 15)
            out[i] = v.astype(np.uint16)
            continue
        scale = float(2.0 ** rng.uniform(-20, 14))
        x = rng.standard_normal(group_size) * scale
        if k == 1:
            x[rng.integers(group_size)] *= 1000.0
        elif k == 2:
            x = -np.abs(x)
        elif k == 3:
            x = np.abs(x)
        elif k == 4:
            x = rng.standard_normal(group_size) * 2.0 ** -18
        elif k == 5:
            x = np.where(rng.random(group_size) < 0.5, -0.0, 0.0)
        elif k == 7:                                 # GELU-like: bounded negatives
            x = np.where(x < 0, x * 0.01, x)
        bits = np.clip(x, -65504, 65504).astype(np.float16).view(np.uint16).copy()
        if k == 6:
            bits[rng.integers(group_size)] = rng.choice([0x7C00, 0xFC00, 0x7E00, 0x7D01])
        if k == 0 and group_size > 2:                # exact tie: repeat the absmax
            j = int(np.argmax(bits & 0x7FFF))
            bits[rng.integers(group_size)] = bits[j] ^ 0x8000
        out[i] = bits
    return out


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="e2m1fn", choices=QUANTIZER_FORMATS + ("dfq",),
                   help="element format (default e2m1fn)")
    p.add_argument("--group-size", type=int, default=128, help="elements per group (default 128)")
    p.add_argument("--scale-format", default="fp16", choices=SCALE_FORMATS, help="scale format")


@register_exporter("quantizer", "group quantizer: FP16 groups -> codes, scales, error", _add_args)
def export_quantizer(args: argparse.Namespace, rng: np.random.Generator):
    if args.group_size < 1:
        raise SystemExit(f"--group-size must be >= 1, got {args.group_size}")
    x = random_groups(rng, args.n, args.group_size)
    q = quantize_groups(x, args.format, scale_format=args.scale_format)
    config = {"format": canonical_format(args.format), "group_size": args.group_size,
              "scale_format": args.scale_format, "n_scales": n_scales(args.format),
              "input": "fp16 bits uint16 [n, G]", "codes": "uint8 [n, G]",
              "scales": "raw scale bits [n, n_scales] (DFQ order: neg, pos)"}
    return {"x": x, "codes": q.codes, "scales": q.scales, "error": q.error}, config
