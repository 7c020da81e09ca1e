"""Quantizer throughput: FPQVAR fake quant vs ml_dtypes' plain cast, same run.

    python benchmarks/quantize_speed.py                 # 4096x4096 float32, best of 5
    python benchmarks/quantize_speed.py --size 1024 --repeats 3

Prints elements/s (best and median over ``--repeats``) for:

* ``ml_dtypes cast``: ``x.astype(ml_dtypes.float4_e2m1fn)`` -- a plain cast,
  no scaling (the reference the quantizer must not be slower than);
* ``fake_quant e2m1fn g128``: torch ``fake_quant`` with per-group-128 e2m1fn,
  fp16 scales (absmax, exact scale rounding, element rounding, dequant);
* the same spec through ``quantize`` (codes + scales + dequant), other
  formats/granularities, DFQ, and the registry's reference ``Format.encode``.

Timings depend on machine load; both sides of the comparison are measured
interleaved in the same process so they see the same conditions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_dtypes  # noqa: E402
import torch  # noqa: E402

from fpqvar_quant.dfq import DFQSpec, dfq_fake_quant  # noqa: E402
from fpqvar_quant.formats import get_format  # noqa: E402
from fpqvar_quant.quantize import QuantSpec, fake_quant, quantize  # noqa: E402


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()                                                   # warm-up (allocator, caches)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="tensor is SIZE x SIZE float32 (default 4096)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for the non-chunked parts (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="only the headline pair")
    args = ap.parse_args(argv)
    if args.size < 128 or args.size % 128:
        ap.error(f"--size must be a positive multiple of 128, got {args.size}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    x_np = np.random.default_rng(args.seed).standard_normal((args.size, args.size)).astype(np.float32)
    x = torch.from_numpy(x_np)
    n = x_np.size
    g128 = QuantSpec("e2m1fn", "group", 128, "fp16")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("ml_dtypes cast float4_e2m1fn (no scaling)", lambda: x_np.astype(ml_dtypes.float4_e2m1fn)),
        ("fake_quant e2m1fn g128 fp16-scale (torch)", lambda: fake_quant(x, g128)),
    ]
    if not args.quick:
        cases += [
            ("quantize  e2m1fn g128 (codes+scales+dequant)", lambda: quantize(x, g128)),
            ("fake_quant e2m1fn g128 numpy in/out", lambda: fake_quant(x_np, g128)),
            ("fake_quant e2m3fn per-channel", lambda: fake_quant(x, QuantSpec("e2m3fn", "channel"))),
            ("fake_quant e4m3fn per-token", lambda: fake_quant(x, QuantSpec("e4m3fn", "token"))),
            ("fake_quant e2m1fn g32 e8m0-scale (MXFP4)", lambda: fake_quant(
                x, QuantSpec("e2m1fn", "group", 32, "e8m0"))),
            ("fake_quant e2m1fn g16 e4m3-scale (NVFP4-like)", lambda: fake_quant(
                x, QuantSpec("e2m1fn", "group", 16, "e4m3"))),
            ("fake_quant e3m0fn g128", lambda: fake_quant(x, QuantSpec("e3m0fn", "group", 128))),
            ("fake_quant int4 g128", lambda: fake_quant(x, QuantSpec("int4", "group", 128))),
            ("dfq_fake_quant fp4 g128", lambda: dfq_fake_quant(x, DFQSpec("fp4"))),
            ("ml_dtypes cast float6_e2m3fn (no scaling)", lambda: x_np.astype(ml_dtypes.float6_e2m3fn)),
            ("registry Format.encode e2m1fn (reference impl)",
             lambda: get_format("e2m1fn").encode(x_np)),
        ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tensor {args.size}x{args.size} float32 ({n:,} elements), best/median of {args.repeats}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load avg {load:.1f}")
    print(f"{'case':<48} {'best Melem/s':>13} {'median Melem/s':>15}")
    best: dict[str, float] = {}
    for name, fn in cases:
        ts = _time(fn, args.repeats)
        best[name] = n / min(ts)
        print(f"{name:<48} {n / min(ts) / 1e6:>13.1f} {n / statistics.median(ts) / 1e6:>15.1f}",
              flush=True)
    ratio = best[cases[1][0]] / best[cases[0][0]]
    print(f"fake_quant e2m1fn g128 / ml_dtypes plain cast = {ratio:.2f}x "
          f"({'not slower' if ratio >= 1 else 'SLOWER'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
