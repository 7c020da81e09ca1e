"""Accuracy of the vector unit's FP32 approximations against float64.

For each approximation defined in ``fpqvar_quant.golden.vector`` (the bit-exact
definition the RTL matches), evaluates the golden model over its input range and
reports the maximum and mean error of the FP32 result against the float64 value
of the exact function, in units in the last place of FP32 (ulp of the exact
result) and as relative error.  Results in the subnormal range (|y| < 2^-126)
are excluded from the ulp columns and counted separately (max absolute error).

Input sets (``--stride`` thins the large sweeps):
* reciprocal: every FP32 mantissa of one binade, [1, 2) (the function is exactly
  scale-invariant for normal results: 2^k scaling is exact), 2^23 inputs;
* rsqrt: every FP32 in [1, 4) (two binades: even and odd exponent), 2^24 inputs;
* exp: every ``stride``-th FP32 encoding in [-104, 89] plus every FP16 value;
* gelu: every ``stride``-th FP32 encoding with abs(x) <= 2^16 plus every FP16 value.

Usage: ``python benchmarks/approx_error.py [--stride 1021] [--out table.md]``
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fpqvar_quant.golden import vector as v  # noqa: E402


def encodings_between(lo: float, hi: float, stride: int) -> np.ndarray:
    """Every ``stride``-th FP32 value in [lo, hi] (both signs handled by encoding order)."""
    out = []
    for a, b in ((max(lo, 0.0), hi), (max(-hi, 0.0), -lo)):
        if b < a:
            continue
        ea, eb = np.float32(a).view(np.uint32), np.float32(b).view(np.uint32)
        bits = np.arange(int(ea), int(eb) + 1, stride, dtype=np.uint64).astype(np.uint32)
        vals = bits.view(np.float32)
        out.append(vals if (a, b) == (max(lo, 0.0), hi) else -vals)
    x = np.concatenate(out)
    return x[(x >= lo) & (x <= hi)]


def all_fp16() -> np.ndarray:
    x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return x[np.isfinite(x)]


def gelu64(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) in float64, written without cancellation: x / (1 + exp(-2u))."""
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-2 * u))


def measure(name: str, fn, ref, x: np.ndarray, floor: float = 2.0 ** -126) -> dict:
    """Errors where the exact result is >= ``floor`` (and finite in FP32); below it,
    the count and the largest absolute error."""
    t0 = time.time()
    with np.errstate(all="ignore"):
        y = fn(x).astype(np.float64)
        r = ref(x.astype(np.float64))
    with np.errstate(over="ignore"):
        r32 = r.astype(np.float32)
    finite = np.isfinite(r32)
    normal = finite & (np.abs(r) >= floor)
    ulp = np.exp2(np.floor(np.log2(np.abs(r[normal]))) - 23)
    err_ulp = np.abs(y[normal] - r[normal]) / ulp
    rel = np.abs(y[normal] - r[normal]) / np.abs(r[normal])
    tiny = finite & ~normal
    return {"name": name, "n": len(x), "max_ulp": err_ulp.max(), "mean_ulp": err_ulp.mean(),
            "max_rel": rel.max(), "mean_rel": rel.mean(),
            "exact_frac": float((y[normal] == r32[normal]).mean()),
            "tiny_n": int(tiny.sum()), "tiny_max_abs": float(np.abs(y[tiny] - r[tiny]).max(initial=0)),
            "overflow_agrees": bool(np.array_equal(np.isinf(y), np.isinf(r32))), "seconds": time.time() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stride", type=int, default=1021,
                    help="take every STRIDE-th FP32 encoding in the exp/gelu sweeps (default 1021)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args(argv)
    if args.stride < 1:
        ap.error("--stride must be >= 1")
    one_binade = np.arange(1 << 23, dtype=np.uint32) | np.uint32(0x3F800000)
    two_binades = np.arange(1 << 24, dtype=np.uint32) + np.uint32(0x3F800000)
    cases = [
        ("reciprocal", v.reciprocal, lambda x: 1 / x, one_binade.view(np.float32), "[1,2) all", 2.0 ** -126),
        ("rsqrt", v.rsqrt, lambda x: 1 / np.sqrt(x), two_binades.view(np.float32), "[1,4) all", 2.0 ** -126),
        ("exp", v.exp, np.exp, np.concatenate([encodings_between(-104, 89, args.stride),
                                               all_fp16()]),
         f"[-104,89] /{args.stride} + FP16", 2.0 ** -126),
        ("gelu", v.gelu, gelu64, np.concatenate([encodings_between(-65536, 65536, args.stride),
                                                 all_fp16()]),
         f"abs(x)<=2^16 /{args.stride} + FP16", 2.0 ** -100),
    ]
    lines = ["| function | inputs | n | max err (ulp) | mean err (ulp) | max rel | mean rel | "
             "correctly rounded | below floor: floor, n, max abs err | Inf iff exact overflows |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, fn, ref, x, label, floor in cases:
        r = measure(name, fn, ref, x, floor)
        print(f"{name}: {r['n']} inputs in {r['seconds']:.1f} s", file=sys.stderr)
        lines.append(f"| {name} | {label} | {r['n']:,} | {r['max_ulp']:.3g} | {r['mean_ulp']:.3g} | "
                     f"{r['max_rel']:.3g} | {r['mean_rel']:.3g} | {100 * r['exact_frac']:.1f} % | "
                     f"2^{int(np.log2(floor))}, {r['tiny_n']:,}, {r['tiny_max_abs']:.2g} | "
                     f"{'yes' if r['overflow_agrees'] else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
