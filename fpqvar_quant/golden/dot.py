"""Golden model of the group dot-product unit (bit-level numpy).

Contract (``docs/numerics.md`` section 3, "Products and group accumulation"):

* Inputs: activation codes ``a`` and weight codes ``w`` of length ``K`` (the
  last axis), split into ``K / G`` groups of ``G`` consecutive elements; one
  FP16 scale per group for each operand, given as raw ``uint16`` bit patterns.
* Group sum: ``S = sum_i p_i`` of the exact code products (``multiplier.py``),
  an exact integer in units of the pair's product LSB ``2^L``.
* Group result: ``t = fp32(s_a) * fp32(s_w)`` (exact: 11 x 11 significand bits),
  ``g = RNE_fp32(fp32(S * 2^L) * t)`` -- ``S * 2^L`` is exact in FP32 because
  ``|S| < 2^24`` is a construction-time requirement, so ``g`` is the exact
  product rounded once.
* DFQ activations (``a_fmt == "dfq"``): a 4-bit code whose sign bit selects the
  grid -- 0: e2m1fn positive value, 1: e1m2fn magnitude, negative value.  Two
  group sums ``S_pos`` (units 2^-2) and ``S_neg`` (units 2^-3) with scales
  ``s_a`` (positives) and ``s_a_neg``; ``g = RNE(RNE(S_pos * t_pos) + RNE(S_neg * t_neg))``.
* Accumulation: ``acc = +0.0``; ``acc = RNE_fp32(acc + g)`` over the groups in
  ascending order.  All FP32 operations are IEEE 754 binary32 with round to
  nearest even, subnormals kept (numpy float32 arithmetic is exactly that).
* Special values: a NaN or Inf scale propagates by IEEE rules (NaN scale ->
  NaN result; Inf scale -> Inf, or NaN for an all-zero group); every NaN result
  is the canonical quiet NaN ``0x7FC00000``.  The quantizer marks a bad group
  with the FP16 NaN scale ``0x7E00``, so such a dot product reads NaN.
"""
from __future__ import annotations

import numpy as np

from . import register_exporter
from ..formats import get_format
from .multiplier import code_to_int, product_spec

__all__ = ["DFQ", "CANONICAL_NAN32", "group_sums", "dfq_group_sums", "scale_product",
           "group_result", "dot"]

#: Activation-format name of the dual-format FP4 codes (e1m2fn negatives, e2m1fn positives).
DFQ = "dfq"
#: The one NaN bit pattern the FP32 datapath emits.
CANONICAL_NAN32 = np.uint32(0x7FC00000)


def _split_groups(x: np.ndarray, group_size: int) -> np.ndarray:
    if group_size < 1:
        raise ValueError(f"group_size must be positive, got {group_size}")
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"the reduction length {k} must be a multiple of group_size {group_size}")
    return x.reshape(*x.shape[:-1], k // group_size, group_size)


def group_sums(a_fmt: str, w_fmt: str, a_codes, w_codes, group_size: int) -> np.ndarray:
    """Exact integer group sums ``S`` (int64, shape ``[..., K/G]``)."""
    p = code_to_int(a_fmt, a_codes) * code_to_int(w_fmt, w_codes)
    return _split_groups(p, group_size).sum(axis=-1)


def dfq_group_sums(a_codes, w_codes, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """DFQ group sums ``(S_pos, S_neg)``: units 2^-2 (e2m1 x e2m1) and 2^-3 (e1m2 x e2m1)."""
    a = np.asarray(a_codes).astype(np.int64)
    w = code_to_int("e2m1fn", w_codes)
    neg = (a >> 3) & 1
    pos_p = np.where(neg == 0, code_to_int("e2m1fn", a & 7), 0) * w
    neg_p = np.where(neg == 1, code_to_int("e1m2fn", a), 0) * w
    return (_split_groups(pos_p, group_size).sum(axis=-1),
            _split_groups(neg_p, group_size).sum(axis=-1))


def scale_product(s_a, s_w) -> np.ndarray:
    """``t = fp32(s_a) * fp32(s_w)`` from raw FP16 bit patterns (float32, exact)."""
    fa = np.asarray(s_a).astype(np.uint16).view(np.float16).astype(np.float32)
    fw = np.asarray(s_w).astype(np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(all="ignore"):
        return fa * fw


def _scaled_int(s: np.ndarray, lsb_exp: int) -> np.ndarray:
    if np.abs(s).max(initial=0) >= 1 << 24:
        raise ValueError("a group sum reached 2^24 and is not exact in FP32; use a smaller group_size")
    return s.astype(np.float32) * np.float32(2.0 ** lsb_exp)


def group_result(s: np.ndarray, t: np.ndarray, lsb_exp: int) -> np.ndarray:
    """``g = RNE_fp32(fp32(S * 2^lsb_exp) * t)`` (float32)."""
    with np.errstate(all="ignore"):
        return _scaled_int(np.asarray(s), lsb_exp) * np.asarray(t, dtype=np.float32)


def _canonical_bits(x: np.ndarray) -> np.ndarray:
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).copy()
    bits[np.isnan(x)] = CANONICAL_NAN32
    return bits


def dot(a_fmt: str, w_fmt: str, a_codes, w_codes, s_a, s_w, group_size: int,
        s_a_neg=None, *, return_groups: bool = False):
    """FP32 dot product(s) as raw ``uint32`` bit patterns, shape ``a_codes.shape[:-1]``.

    ``a_fmt`` is an element format name or :data:`DFQ` (then ``w_fmt`` must be
    ``"e2m1fn"`` and ``s_a_neg`` holds the negative-grid scales).  Scales are FP16
    bit patterns of shape ``[..., K/G]``.  With ``return_groups`` also returns the
    per-group results ``g`` (uint32 bits, shape ``[..., K/G]``).
    """
    a_codes, w_codes = np.asarray(a_codes), np.asarray(w_codes)
    if a_codes.shape != w_codes.shape:
        raise ValueError(f"a_codes {a_codes.shape} and w_codes {w_codes.shape} must have the same shape")
    want = _split_groups(a_codes, group_size).shape[:-1]
    for name, sc in (("s_a", s_a), ("s_w", s_w), ("s_a_neg", s_a_neg)):
        if sc is not None and np.shape(sc) != want:
            raise ValueError(f"{name} must have shape {want} (one FP16 scale per group), got {np.shape(sc)}")
    if a_fmt == DFQ:
        if w_fmt != "e2m1fn" or s_a_neg is None:
            raise ValueError("DFQ activations need w_fmt='e2m1fn' and the negative-grid scales s_a_neg")
        sp, sn = dfq_group_sums(a_codes, w_codes, group_size)
        with np.errstate(all="ignore"):
            g = (group_result(sp, scale_product(s_a, s_w), product_spec("e2m1fn", "e2m1fn").lsb_exp)
                 + group_result(sn, scale_product(s_a_neg, s_w), product_spec("e1m2fn", "e2m1fn").lsb_exp))
    else:
        get_format(a_fmt), get_format(w_fmt)
        s = group_sums(a_fmt, w_fmt, a_codes, w_codes, group_size)
        g = group_result(s, scale_product(s_a, s_w), product_spec(a_fmt, w_fmt).lsb_exp)
    acc = np.zeros(g.shape[:-1], dtype=np.float32)
    with np.errstate(all="ignore"):
        for j in range(g.shape[-1]):
            acc = (acc + g[..., j]).astype(np.float32)
    out = _canonical_bits(acc)
    return (out, _canonical_bits(g)) if return_groups else out


def _add_args(p) -> None:
    p.add_argument("--a-fmt", default="e2m1fn",
                   choices=["e2m1fn", "e2m3fn", "e3m2fn", "int4", "int8", DFQ],
                   help="activation format (dfq: e1m2fn negatives + e2m1fn positives)")
    p.add_argument("--w-fmt", default="e2m1fn", choices=["e2m1fn", "e2m3fn", "int4", "int8"],
                   help="weight format (must pair with --a-fmt as in golden.multiplier.PAIRS)")
    p.add_argument("--group-size", type=int, default=128, help="G (default 128)")
    p.add_argument("--groups", type=int, default=4, help="groups per dot product (default 4)")


@register_exporter("dot", "group dot product: codes + FP16 group scales -> FP32", _add_args)
def _export(args, rng: np.random.Generator):
    """``--n`` random dot products: uniform codes, random finite positive FP16 scales."""
    a_bits = 4 if args.a_fmt == DFQ else get_format(args.a_fmt).bits
    shp = (args.n, args.groups * args.group_size)
    a = rng.integers(0, 1 << a_bits, size=shp).astype(np.uint8)
    w = rng.integers(0, 1 << get_format(args.w_fmt).bits, size=shp).astype(np.uint8)
    sc = (args.n, args.groups)
    s_a, s_w = (rng.integers(0, 0x7C00, size=sc).astype(np.uint16) for _ in range(2))
    s_n = rng.integers(0, 0x7C00, size=sc).astype(np.uint16) if args.a_fmt == DFQ else None
    out, g = dot(args.a_fmt, args.w_fmt, a, w, s_a, s_w, args.group_size, s_n, return_groups=True)
    arrays = {"a": a, "w": w, "s_a": s_a, "s_w": s_w, "g": g, "out": out}
    if s_n is not None:
        arrays["s_a_neg"] = s_n
    config = {"a_fmt": args.a_fmt, "w_fmt": args.w_fmt, "group_size": args.group_size,
              "groups": args.groups, "scales": "fp16 bits", "out": "fp32 bits, canonical NaN 0x7FC00000",
              "g": "per-group fp32 results (bits)"}
    return arrays, config

