"""Golden model of the group Hadamard unit (bit-level numpy).

Contract (``docs/numerics.md`` section 3, "Group Hadamard unit"), per group of N = 128 FP16 inputs ``x``
and a sign vector ``d`` (``d_i = 1`` means "negate output y_i"):

    y_i = RNE_fp16( (1/8) * (-1)^d_i * sum_j (-1)^popcount(i & j) * x_j )

(Sylvester-ordered Hadamard matrix, ``Had[i, j] = (-1)^popcount(i & j)``).  The
sum is exact (integers in units of 2^-24, ``|sum| < 2^47``) and rounded once.
With the orthonormal ``H = Had D / sqrt(128)`` this is ``y = sqrt(2) * x H``.

The signs act on the transform's output (``x Had D``), the paper's
``H = Had D / sqrt(128)`` and :func:`fpqvar_quant.ght.ght`; negation commutes
with round-to-nearest-even, so applying it before or after the rounding is the
same.

* An exact zero sum gives +0 (the sign vector does not make it -0).
* **Overflow** (``|y|`` rounds beyond 65504): the output saturates to +-65504
  (``0x7BFF`` / ``0xFBFF``) and the group's ``overflow`` flag is set.
* **NaN/Inf** anywhere in the input group: every output of the group is the
  quiet NaN ``0x7E00`` and the group's ``error`` flag is set.

The model uses a dense integer matrix product, independent of the butterfly
structure of the hardware.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import fp16, register_exporter

__all__ = ["N", "OUT_SHIFT", "hadamard_matrix", "random_signs", "hadamard_groups", "GoldenHadamard"]

N = 128
#: y = sum / 2^OUT_SHIFT (1/8 = sqrt(2)/sqrt(128)).
OUT_SHIFT = 3


@lru_cache(maxsize=None)
def hadamard_matrix(n: int = N) -> np.ndarray:
    """Sylvester Hadamard matrix ``(-1)^popcount(i & j)`` as int64 (n a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    i = np.arange(n)
    pc = np.zeros((n, n), dtype=np.int64)
    a = i[:, None] & i[None, :]
    while a.any():
        pc += a & 1
        a = a >> 1
    return np.where(pc % 2 == 0, 1, -1).astype(np.int64)


def random_signs(seed: int, n: int = N) -> np.ndarray:
    """A seeded random sign vector (``uint8``, 1 = negate)."""
    return np.random.default_rng(seed).integers(0, 2, size=n).astype(np.uint8)


@dataclass(frozen=True)
class GoldenHadamard:
    """``y`` FP16 bits ``uint16 [..., N]``; ``overflow`` and ``error`` ``bool [...]``."""

    y: np.ndarray
    overflow: np.ndarray
    error: np.ndarray


def hadamard_groups(x_bits: Any, signs: Any) -> GoldenHadamard:
    """Transform groups of N FP16 patterns (last axis) with sign vector ``signs`` (N bits)."""
    b = np.asarray(x_bits)
    d = np.asarray(signs)
    if b.ndim < 1 or b.shape[-1] != N:
        raise ValueError(f"x_bits must have last axis {N} (one group), got shape {b.shape}")
    if d.shape != (N,) or d.dtype.kind not in "iub" or np.any((d != 0) & (d != 1)):
        raise ValueError(f"signs must be {N} values in {{0, 1}} (1 = negate y_i)")
    special = fp16.is_special(b)
    err = special.any(axis=-1)
    x = fp16.to_fixed(np.where(special, 0, b))
    s = x @ hadamard_matrix(N)                     # exact int64, |s| < 2^47
    s = np.where(d.astype(bool), -s, s)            # output signs: x Had D
    bits, overflow = fp16.round_rational(np.abs(s), 1, -24 - OUT_SHIFT)
    bits = np.where(overflow, fp16.MAX_FINITE, bits)
    bits = np.where(s < 0, bits | 0x8000, bits)
    bits = np.where(err[..., None], fp16.QNAN, bits)
    ovf = (overflow & ~err[..., None]).any(axis=-1)
    return GoldenHadamard(bits.astype(np.uint16), ovf, err)


def random_groups(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seeded FP16 groups: activations of random magnitude (incl. subnormal-only and
    overflowing groups), some raw finite bit patterns, a few NaN/Inf groups."""
    kind = rng.integers(0, 10, size=n)
    out = np.empty((n, N), dtype=np.uint16)
    for i in range(n):
        if kind[i] == 9:
            out[i] = (rng.integers(0, 0x7C00, size=N) | (rng.integers(0, 2, size=N) << 15)).astype(np.uint16)
            continue
        scale = float(2.0 ** rng.uniform(-26, 16))
        x = rng.standard_normal(N) * scale
        if kind[i] == 1:
            x[rng.integers(N)] *= 300.0
        bits = np.clip(x, -65504, 65504).astype(np.float16).view(np.uint16).copy()
        if kind[i] == 2 and rng.random() < 0.3:
            bits[rng.integers(N)] = rng.choice([0x7C00, 0xFC00, 0x7E00])
        out[i] = bits
    return out


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign-seed", type=int, default=42, help="seed of the random sign vector (default 42)")


@register_exporter("hadamard", "group Hadamard: FP16 groups of 128 -> FP16 (x D Had / 8)", _add_args)
def export_hadamard(args: argparse.Namespace, rng: np.random.Generator):
    x = random_groups(rng, args.n)
    d = random_signs(args.sign_seed)
    r = hadamard_groups(x, d)
    config = {"n": N, "out_shift": OUT_SHIFT, "sign_seed": args.sign_seed,
              "overflow": "saturate to +-65504, flag", "nan_inf": "group -> 0x7E00, error flag"}
    return {"x": x, "signs": d, "y": r.y, "overflow": r.overflow, "error": r.error}, config
