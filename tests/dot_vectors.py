"""Seeded random dot-product vectors shared by the Amaranth-sim and cocotb tests.

Biased toward the interesting regions: all-zero groups, all-max groups,
all-negative / all-positive DFQ groups, single outliers, tiny (subnormal) and
huge FP16 scales, zero scales, and a few NaN/Inf scales.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpqvar_quant.formats import get_format
from fpqvar_quant.golden.dot import DFQ


@dataclass
class DotVectors:
    a_fmt: str                # element format name or "dfq"
    w_fmt: str
    a: np.ndarray             # uint8 codes [n_dots, K]
    w: np.ndarray             # uint8 codes [n_dots, K]
    s_a: np.ndarray           # uint16 FP16 bits [n_dots, K/G]
    s_w: np.ndarray
    s_a_neg: "np.ndarray | None"

    @property
    def n_groups(self) -> int:
        return self.s_a.size


def _codes(fmt: str, rng: np.random.Generator, shape) -> np.ndarray:
    bits = 4 if fmt == DFQ else get_format(fmt).bits
    c = rng.integers(0, 1 << bits, size=shape)
    kind = rng.integers(0, 8, size=shape[:-1] + (1,))
    c = np.where(kind == 0, 0, c)                                  # all-zero group
    c = np.where(kind == 1, (1 << (bits - 1)) - 1, c)              # all +max
    c = np.where(kind == 2, c | (1 << (bits - 1)), c)              # all negative (DFQ: neg grid)
    c = np.where(kind == 3, c & ((1 << (bits - 1)) - 1), c)        # all positive
    return c.astype(np.uint8)


def _scales(rng: np.random.Generator, shape, allow_special: bool) -> np.ndarray:
    exp = rng.integers(0, 31, size=shape)                          # 0 = subnormal/zero
    man = rng.integers(0, 1024, size=shape)
    s = (exp << 10) | man
    pick = rng.random(size=shape)
    s = np.where(pick < 0.03, 0, s)                                # zero scale
    s = np.where((pick >= 0.03) & (pick < 0.06), 1, s)             # smallest subnormal
    s = np.where((pick >= 0.06) & (pick < 0.09), 0x7BFF, s)        # FP16 max
    if allow_special:
        s = np.where((pick >= 0.09) & (pick < 0.1), 0x7E00, s)     # quantizer error NaN
        s = np.where((pick >= 0.1) & (pick < 0.105), 0x7C00, s)    # Inf
    return s.astype(np.uint16)


def make_vectors(a_fmt: str, w_fmt: str, *, n_dots: int, groups_per_dot: int,
                 group_size: int, seed: int, allow_special: bool = True) -> DotVectors:
    rng = np.random.default_rng(seed)
    shp = (n_dots, groups_per_dot, group_size)
    a = _codes(a_fmt, rng, shp).reshape(n_dots, -1)
    w = _codes(w_fmt, rng, shp).reshape(n_dots, -1)
    # one lone outlier in some groups
    out = rng.random(size=(n_dots, groups_per_dot)) < 0.1
    for d, g in zip(*np.nonzero(out)):
        row = np.zeros(group_size, np.uint8)
        row[rng.integers(group_size)] = a[d, g * group_size:(g + 1) * group_size].max()
        a[d, g * group_size:(g + 1) * group_size] = row
    sc = (n_dots, groups_per_dot)
    s_neg = _scales(rng, sc, allow_special) if a_fmt == DFQ else None
    return DotVectors(a_fmt, w_fmt, a, w, _scales(rng, sc, allow_special),
                      _scales(rng, sc, allow_special), s_neg)


def pack_beats(beat_layout, vec: DotVectors, lanes: int, group_size: int,
               cols: "list[DotVectors] | None" = None) -> list[int]:
    """The input beats of ``vec`` for a ``GroupDot`` with this ``beat_layout``, packed.

    Codes are written as raw bits; scales go on every beat of their group (the
    unit reads them on the final beat); ``last`` marks a dot product's final group.
    ``cols`` (a shared-tail cell, ``share = len(cols)``): column ``q``'s weights and
    ``s_w`` from ``cols[q]``, the activations and ``s_a`` (``s_a_neg``) from ``vec``.
    """
    n_dots, k = vec.a.shape
    groups = k // group_size
    bpg = group_size // lanes
    from amaranth.hdl import Shape
    from amaranth.lib import data

    def width(s):
        return s.size if isinstance(s, data.Layout) else Shape.cast(s).width
    w_col = beat_layout["w"].shape if cols is None else beat_layout["w"].shape.elem_shape
    wa, ww = width(beat_layout["a"].shape.elem_shape), width(w_col.elem_shape)
    off = {name: beat_layout[name].offset for name, _ in beat_layout}
    cols = [vec] if cols is None else cols
    beats = []
    for d in range(n_dots):
        for g in range(groups):
            for b in range(bpg):
                lo = g * group_size + b * lanes
                v = sum(int(c) << (i * wa) for i, c in enumerate(vec.a[d, lo:lo + lanes])) << off["a"]
                for q, col in enumerate(cols):
                    w = sum(int(c) << (i * ww) for i, c in enumerate(col.w[d, lo:lo + lanes]))
                    v |= w << (off["w"] + q * lanes * ww)
                    v |= int(col.s_w[d, g]) << (off["s_w"] + 16 * q)
                v |= int(vec.s_a[d, g]) << off["s_a"]
                if vec.s_a_neg is not None:
                    v |= int(vec.s_a_neg[d, g]) << off["s_a_neg"]
                if g == groups - 1:
                    v |= 1 << off["last"]
                beats.append(v)
    return beats


def expected(vec: DotVectors, group_size: int) -> np.ndarray:
    """Golden FP32 bit patterns, one per dot product."""
    from fpqvar_quant.golden.dot import dot
    return dot(vec.a_fmt, vec.w_fmt, vec.a, vec.w, vec.s_a, vec.s_w, group_size, vec.s_a_neg)
