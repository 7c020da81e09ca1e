"""Golden model of the vector unit: FP32 nonlinear approximations and row operations.

Every function here is a fixed sequence of IEEE FP32 operations (each one
correctly rounded, round to nearest even, subnormals kept: what
``numpy.float32`` computes and what ``fpqvar_hw.units.fpu`` builds) plus integer bit
manipulation of FP32 encodings and small tables.  That sequence *is* the
definition (``docs/numerics.md`` section 4); the RTL performs the same
operations in the same order, and ``fpqvar_quant.approx`` runs the very same
code on torch tensors (the algorithms are written once against a tiny backend,
:class:`Backend`; ``NUMPY`` is the golden one).

Approximations (constants are FP32; ``mul``/``add``/``sub`` are single FP32 ops):

* ``exp(x)``: clamp to [-104, 89]; ``t = x*LOG2E``; ``n = rint(t)`` via the
  magic-number add ``s = t + 1.5*2^23`` (``n = bits(s) - bits(1.5*2^23)``,
  ``r = s - 1.5*2^23``); Cody-Waite ``f = (x - r*LN2_HI) - r*LN2_LO``; degree-7
  Taylor polynomial in Horner form ``p = (...(C7*f + C6)*f + ...)*f + C0``;
  ``y = ldexp(p, n)`` with one rounding (the product ``p * 2^n`` rounded once).
* ``reciprocal(d)``: ``m`` = mantissa of ``d`` in [1, 2); ``y0`` = 128-entry table
  of ``fp32(1/(1 + (k + 0.5)/128))`` indexed by the top 7 fraction bits; two Newton
  steps ``y = y + y*(1 - m*y)``; ``ldexp(y, 127 - E)``, sign of ``d``.  Zero and
  subnormal ``d`` give +-Inf (subnormal inputs are treated as zero), +-Inf gives
  +-0, NaN gives NaN.
* ``rsqrt(v)``: ``v = m' * 2^(2k)`` with ``m'`` in [1, 4); ``y0`` = 128-entry table
  (odd exponent bit, top 6 fraction bits) of ``fp32(1/sqrt(midpoint))``; two
  Newton steps ``y = y*(1.5 - (y*y)*(m'*0.5))``; ``ldexp(y, -k)``.  +0, -0 and
  subnormals give +Inf, negative or NaN gives NaN, +Inf gives +0.
* ``gelu(x)`` (tanh form, as ``0.5 x (1 + tanh(u)) = x / (1 + exp(-2u))``):
  ``x3 = (x*x)*x``; ``inner = x3*GELU_K + x``; ``u2 = inner*GELU_2C``;
  ``y = x * reciprocal(exp(-u2) + 1)``.

Row operations use one canonical summation order, :func:`tree_sum` with ``P``
interleaved partial sums (the vector unit's lanes x adder latency):

* ``softmax(x)``: ``m = max(x)``; ``e = exp(x - m)``; ``y = e * reciprocal(sum(e))``.
* ``layernorm_modulate(x, scale, shift)``: ``mu = sum(x)*fp32(1/C)``;
  ``d = x - mu``; ``var = sum(d*d)*fp32(1/C)``; ``y = d*rsqrt(var + 1e-6)``;
  ``out = y*(1 + scale) + shift``.
* ``l2norm_temperature(q, t)`` per 64-wide head: ``s = rsqrt(max(sum(q*q), 1e-24))``
  (``F.normalize``'s eps 1e-12 squared); ``g = s * exp(min(t, ln 100))``; ``out = q*g``.
* ``gamma_residual(x, gamma, y) = x + gamma*y``.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from . import register_exporter

__all__ = ["Backend", "NUMPY", "backend", "exp", "reciprocal", "rsqrt", "gelu", "softmax",
           "layernorm_modulate", "l2norm_temperature", "gamma_residual", "tree_sum",
           "RECIP_TABLE", "RSQRT_TABLE", "CONST", "f32"]


def f32(v: float) -> float:
    """Round a Python float to the nearest FP32 value (RNE)."""
    return struct.unpack("<f", struct.pack("<f", v))[0]


#: FP32 constants of the definitions (exact values after rounding to FP32).
CONST = {
    "MAGIC": 12582912.0,                    # 1.5 * 2^23: x + MAGIC rounds x to an integer
    "LOG2E": f32(1.0 / math.log(2.0)),
    "LN2_HI": struct.unpack("<f", bytes.fromhex("0072313f"))[0],   # 0x3F317200, 15 bits
    "LN2_LO": struct.unpack("<f", bytes.fromhex("8ebebf35"))[0],   # 0x35BFBE8E
    "EXP_LO": -104.0,
    "EXP_HI": 89.0,
    "GELU_K": f32(0.044715),
    "GELU_2C": f32(2.0 * math.sqrt(2.0 / math.pi)),
    "LN_EPS": f32(1e-6),
    "L2_EPS_SQ": f32(1e-24),
    "LN100": f32(math.log(100.0)),
    "HALF": 0.5, "ONE": 1.0, "THREE_HALVES": 1.5,
}
#: Horner coefficients C7 .. C0 of exp(f) on |f| <= ln(2)/2: fp32(1/k!).
EXP_POLY = tuple(f32(1.0 / math.factorial(k)) for k in range(7, -1, -1))

RECIP_BITS = 7
RSQRT_BITS = 6
RECIP_TABLE = np.array([1.0 / (1.0 + (k + 0.5) / 2 ** RECIP_BITS)
                        for k in range(2 ** RECIP_BITS)], dtype=np.float32)
RSQRT_TABLE = np.array([1.0 / math.sqrt((1.0 + (j + 0.5) / 2 ** RSQRT_BITS) * 2 ** odd)
                        for odd in (0, 1) for j in range(2 ** RSQRT_BITS)], dtype=np.float32)


class Backend:
    """The operations the definitions may use, on float32 arrays (numpy version).

    Subclasses (torch: ``fpqvar_quant.approx``) must give bit-identical results.
    """

    def asf32(self, x: Any) -> Any:
        return np.asarray(x, dtype=np.float32)

    def const(self, v: float, like: Any) -> Any:
        return np.float32(v)

    def mul(self, a, b):
        with np.errstate(all="ignore"):
            return np.multiply(a, b, dtype=np.float32)

    def add(self, a, b):
        with np.errstate(all="ignore"):
            return np.add(a, b, dtype=np.float32)

    def sub(self, a, b):
        with np.errstate(all="ignore"):
            return np.subtract(a, b, dtype=np.float32)

    def neg(self, a):
        return np.negative(a)

    def maximum(self, a, b):
        return np.maximum(a, b)        # NaN propagates; never called on two zeros here

    def minimum(self, a, b):
        return np.minimum(a, b)

    def bits(self, a):
        """FP32 encoding as int64 (sign included as bit 31)."""
        return np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.int64)

    def from_bits(self, b):
        return np.asarray(b).astype(np.uint32).view(np.float32)

    def where(self, c, a, b):
        return np.where(c, a, b).astype(np.float32)

    def take(self, table: np.ndarray, idx):
        return table[idx]

    def ldexp(self, p, n):
        """``p * 2^n`` rounded once to FP32 (float64 holds the product exactly)."""
        with np.errstate(all="ignore"):
            return (p.astype(np.float64) * np.exp2(n.astype(np.float64))).astype(np.float32)

    def zeros_like(self, a):
        return np.zeros_like(a, dtype=np.float32)

    def concat_zeros(self, x, k: int):
        """Append ``k`` +0.0 along the last axis."""
        return np.concatenate([x, np.zeros(x.shape[:-1] + (k,), np.float32)], axis=-1)

    def swap_last(self, x):
        """Swap the last two axes."""
        return np.swapaxes(x, -1, -2)

    def concat(self, xs, axis: int):
        return np.concatenate(xs, axis=axis)

    def isnan(self, a):
        return np.isnan(a)

    def row_max(self, x):
        return np.max(x, axis=-1, keepdims=True)

    def reshape(self, x, shape):
        return x.reshape(shape)


NUMPY = Backend()


def backend(xp: Backend | None) -> Backend:
    """``xp``, or the numpy backend when ``xp`` is None."""
    return NUMPY if xp is None else xp


def exp(x, xp: Backend | None = None):
    """FP32 ``exp`` as defined in the module docstring."""
    xp = backend(xp)
    x = xp.asf32(x)
    c = lambda v: xp.const(v, x)  # noqa: E731
    x = xp.minimum(xp.maximum(x, c(CONST["EXP_LO"])), c(CONST["EXP_HI"]))
    t = xp.mul(x, c(CONST["LOG2E"]))
    s = xp.add(t, c(CONST["MAGIC"]))
    n = xp.bits(s) - 0x4B400000
    r = xp.sub(s, c(CONST["MAGIC"]))
    f = xp.sub(xp.sub(x, xp.mul(r, c(CONST["LN2_HI"]))), xp.mul(r, c(CONST["LN2_LO"])))
    p = c(EXP_POLY[0])
    for coef in EXP_POLY[1:]:
        p = xp.add(xp.mul(p, f), c(coef))
    return xp.ldexp(p, n)


def _fields(xp: Backend, x):
    b = xp.bits(x)
    return (b >> 31) & 1, (b >> 23) & 0xFF, b & 0x7FFFFF


def reciprocal(d, xp: Backend | None = None):
    """FP32 ``1/d`` as defined in the module docstring."""
    xp = backend(xp)
    d = xp.asf32(d)
    c = lambda v: xp.const(v, d)  # noqa: E731
    sign, E, man = _fields(xp, d)
    m = xp.from_bits(0x3F800000 | man)
    y = xp.take(RECIP_TABLE, man >> (23 - RECIP_BITS))
    for _ in range(2):
        y = xp.add(y, xp.mul(y, xp.sub(c(1.0), xp.mul(m, y))))
    res = xp.ldexp(y, 127 - E)
    inf = xp.from_bits(0x7F800000 + 0 * E)
    res = xp.where(E == 0, inf, res)
    res = xp.where((E == 255) & (man == 0), xp.from_bits(0 * E), res)
    res = xp.where((E == 255) & (man != 0), xp.from_bits(0x7FC00000 + 0 * E), res)
    return xp.from_bits(xp.bits(res) | (sign << 31))


def rsqrt(v, xp: Backend | None = None):
    """FP32 ``1/sqrt(v)`` as defined in the module docstring."""
    xp = backend(xp)
    v = xp.asf32(v)
    c = lambda val: xp.const(val, v)  # noqa: E731
    sign, E, man = _fields(xp, v)
    e = E - 127
    odd = e & 1
    m = xp.from_bits(((127 + odd) << 23) | man)
    y = xp.take(RSQRT_TABLE, (odd << RSQRT_BITS) | (man >> (23 - RSQRT_BITS)))
    h = xp.mul(m, c(CONST["HALF"]))
    for _ in range(2):
        y = xp.mul(y, xp.sub(c(CONST["THREE_HALVES"]), xp.mul(xp.mul(y, y), h)))
    res = xp.ldexp(y, -((e - odd) >> 1))
    res = xp.where(E == 0, xp.from_bits(0x7F800000 + 0 * E), res)
    res = xp.where((E == 255) & (man == 0), xp.from_bits(0 * E), res)
    bad = ((E == 255) & (man != 0)) | ((sign == 1) & (E != 0))
    return xp.where(bad, xp.from_bits(0x7FC00000 + 0 * E), res)


def gelu(x, xp: Backend | None = None):
    """FP32 GELU (tanh form) as defined in the module docstring."""
    xp = backend(xp)
    x = xp.asf32(x)
    c = lambda v: xp.const(v, x)  # noqa: E731
    x3 = xp.mul(xp.mul(x, x), x)
    inner = xp.add(xp.mul(x3, c(CONST["GELU_K"])), x)
    u2 = xp.mul(inner, c(CONST["GELU_2C"]))
    den = xp.add(exp(xp.neg(u2), xp), c(1.0))
    return xp.mul(x, reciprocal(den, xp))


def tree_sum(x, P: int = 8, xp: Backend | None = None):
    """Sum over the last axis in the canonical order.

    ``P`` partial sums (``P`` a power of two): partial ``j`` adds elements
    ``j, j+P, j+2P, ...`` one at a time starting from +0.0; then the partials are
    added pairwise, neighbours first: ``((p0+p1)+(p2+p3))+...``.  A row whose
    length is not a multiple of ``P`` behaves as if padded with +0.0 (adding +0.0
    to a sum that started at +0.0 changes nothing).  Returns shape
    ``x.shape[:-1] + (1,)``.
    """
    xp = backend(xp)
    n = x.shape[-1]
    if P < 1 or P & (P - 1):
        raise ValueError(f"P must be a power of two, got {P}")
    if n % P:
        x = xp.concat_zeros(x, P - n % P)
        n = x.shape[-1]
    v = xp.reshape(x, tuple(x.shape[:-1]) + (n // P, P))
    acc = xp.zeros_like(v[..., 0, :])            # +0.0
    for k in range(n // P):
        acc = xp.add(acc, v[..., k, :])
    while acc.shape[-1] > 1:
        acc = xp.add(acc[..., 0::2], acc[..., 1::2])
    return acc


def softmax(x, P: int = 8, xp: Backend | None = None):
    """Softmax over the last axis (FP32 in and out), as in the module docstring."""
    xp = backend(xp)
    x = xp.asf32(x)
    e = exp(xp.sub(x, xp.row_max(x)), xp)
    return xp.mul(e, reciprocal(tree_sum(e, P, xp), xp))


def layernorm_modulate(x, scale, shift, P: int = 8, xp: Backend | None = None):
    """LayerNorm without affine (eps 1e-6) then adaLN ``y*(1 + scale) + shift``.

    ``x``: [..., C]; ``scale``/``shift`` broadcast against it (one row per image).
    """
    xp = backend(xp)
    x = xp.asf32(x)
    C = x.shape[-1]
    inv_c = xp.const(f32(1.0 / C), x)
    mu = xp.mul(tree_sum(x, P, xp), inv_c)
    d = xp.sub(x, mu)
    var = xp.mul(tree_sum(xp.mul(d, d), P, xp), inv_c)
    y = xp.mul(d, rsqrt(xp.add(var, xp.const(CONST["LN_EPS"], x)), xp))
    return xp.add(xp.mul(y, xp.add(xp.asf32(scale), xp.const(1.0, x))), xp.asf32(shift))


def l2norm_temperature(q, t=None, P: int = 8, xp: Backend | None = None):
    """Per-head L2 normalisation times ``exp(min(t, ln 100))``.

    ``q``: [..., heads, 64] (any last-axis length divisible by ``P``);
    ``t``: per-head log-temperature broadcastable to [..., heads, 1], or None for
    the keys (factor 1, no multiply).
    """
    xp = backend(xp)
    q = xp.asf32(q)
    ss = xp.maximum(tree_sum(xp.mul(q, q), P, xp), xp.const(CONST["L2_EPS_SQ"], q))
    g = rsqrt(ss, xp)
    if t is not None:
        g = xp.mul(g, exp(xp.minimum(xp.asf32(t), xp.const(CONST["LN100"], q)), xp))
    return xp.mul(q, g)


def gamma_residual(x, gamma, y, xp: Backend | None = None):
    """``x + gamma*y`` (unfused: two roundings)."""
    xp = backend(xp)
    return xp.add(xp.asf32(x), xp.mul(xp.asf32(gamma), xp.asf32(y)))


# --------------------------------------------------------------------------- vector export
ELEMENTWISE = ("exp", "reciprocal", "rsqrt", "gelu")
ROW_OPS = ("softmax", "layernorm_modulate", "l2norm_temperature")
#: First inputs of an FP32 element-wise export: +-0, +-Inf, quiet and signalling-payload
#: NaNs, smallest/largest subnormal, smallest normal, largest finite, +-1, exp's clamps.
SPECIAL_FP32 = (0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFF800001,
                0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000,
                0xBF800000, 0xC2D00000, 0x42B20000)


def _vector_args(p) -> None:
    p.add_argument("--func", default="gelu", choices=ELEMENTWISE + ROW_OPS,
                   help="function (default gelu); element-wise ones give --n values, row ops --n rows")
    p.add_argument("--src", default="fp32", choices=["fp32", "fp16"],
                   help="element-wise input format (fp16: converted exactly to FP32; default fp32)")
    p.add_argument("--dst", default="fp32", choices=["fp32", "fp16"],
                   help="element-wise output format (fp16: one RNE rounding of the FP32 result)")
    p.add_argument("--length", type=int, default=64,
                   help="row length C for softmax/layernorm_modulate (default 64); "
                        "l2norm_temperature rows are 64-wide heads")
    p.add_argument("--P", type=int, default=8, help="partial sums of tree_sum (default 8)")
    p.add_argument("--no-temperature", action="store_true",
                   help="l2norm_temperature without the temperature factor (the keys)")


def _bits32(x) -> np.ndarray:
    from .fp32 import canon
    return canon(np.asarray(x, dtype=np.float32), "fp32")


def _row_scales(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    return np.exp2(rng.uniform(lo, hi, (n, 1)))


@register_exporter("vector", "vector unit: FP32 exp/reciprocal/rsqrt/GELU, softmax, "
                             "layernorm+modulate, L2 norm+temperature", _vector_args)
def _export_vector(args, rng: np.random.Generator):
    """Element-wise: ``--n`` inputs, a third any encoding (starting with
    ``SPECIAL_FP32``: NaN, Inf, subnormal, ...), a third normal values of scale 8, a third of scale 2^k for k
    uniform in [-30, 30] (fp16 source: uniform over all 2^16 encodings).  Row ops:
    ``--n`` rows of normal entries times a per-row scale; layernorm rows get an
    offset and normal ``scale``/``shift`` (std 0.5); l2norm heads a log-temperature
    in [-3, 6].  Arrays hold raw bits (``x``/``y`` as uint16 for fp16, uint32
    for fp32; NaN results canonical ``0x7FC00000`` / ``0x7E00``)."""
    from .fp32 import convert, to_float

    if args.P < 1 or args.P & (args.P - 1):
        raise SystemExit(f"--P must be a power of two, got {args.P}")
    n, f = args.n, args.func
    config = {"func": f, "P": args.P, "definition": "docs/numerics.md section 4 (golden/vector.py)"}
    if f in ELEMENTWISE:
        if args.src == "fp16":
            x = rng.integers(0, 1 << 16, n, dtype=np.uint64).astype(np.uint16)
            xf = to_float(convert(x, "fp16", "fp32"), "fp32")
        else:
            k = n // 3
            special = np.array(SPECIAL_FP32, np.uint32)[:k]
            xf = np.concatenate([
                special.view(np.float32),
                rng.integers(0, 1 << 32, k - len(special), dtype=np.uint64).astype(np.uint32)
                .view(np.float32),
                (rng.standard_normal(k) * 8).astype(np.float32),
                (rng.standard_normal(n - 2 * k) * np.exp2(rng.uniform(-30, 30, n - 2 * k)))
                .astype(np.float32)])
            x = xf.view(np.uint32)
        y = _bits32(globals()[f](xf))
        if args.dst == "fp16":
            y = convert(y, "fp32", "fp16")
        config.update(src=args.src, dst=args.dst, x=f"{args.src} bits", y=f"{args.dst} bits")
        return {"x": x, "y": y}, config
    if args.src != "fp32" or args.dst != "fp32":
        raise SystemExit(f"--src/--dst only apply to element-wise functions; {f} is FP32 in and out")
    if f == "l2norm_temperature":
        q = (rng.standard_normal((n, 64)) * _row_scales(rng, n, -10, 10)).astype(np.float32)
        config.update(head_dim=64, temperature=not args.no_temperature)
        if args.no_temperature:
            return {"q": q.view(np.uint32), "y": _bits32(l2norm_temperature(q, None, args.P))}, config
        t = rng.uniform(-3, 6, (n, 1)).astype(np.float32)
        return ({"q": q.view(np.uint32), "t": t.view(np.uint32)[:, 0],
                 "y": _bits32(l2norm_temperature(q, t, args.P))}, config)
    C = args.length
    if C < 1:
        raise SystemExit(f"--length must be >= 1, got {C}")
    config["length"] = C
    x = (rng.standard_normal((n, C)) * _row_scales(rng, n, -4, 4)).astype(np.float32)
    if f == "softmax":
        return {"x": x.view(np.uint32), "y": _bits32(softmax(x, args.P))}, config
    x = (x + rng.standard_normal((n, 1)) * 4 * np.abs(x).max(-1, keepdims=True)).astype(np.float32)
    sc, sh = (rng.standard_normal((2, n, C)) * 0.5).astype(np.float32)
    return ({"x": x.view(np.uint32), "scale": sc.view(np.uint32), "shift": sh.view(np.uint32),
             "y": _bits32(layernorm_modulate(x, sc, sh, args.P))}, config)
