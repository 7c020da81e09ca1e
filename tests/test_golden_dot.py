"""Golden multiplier and dot-product models against third parties (ml_dtypes,
float64 arithmetic, fractions) and their labelled corner cases."""
from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from fpqvar_quant.formats import get_format
from fpqvar_quant.golden import dot as gdot
from fpqvar_quant.golden.multiplier import PAIRS, code_to_int, multiply, product_spec

# Hand-labelled e1m2fn values (ml_dtypes has no e1m2fn): uniform quarters 0..1.75.
E1M2_LABELS = [0, .25, .5, .75, 1, 1.25, 1.5, 1.75]


def decode_third_party(name: str, codes: np.ndarray) -> np.ndarray:
    fmt = get_format(name)
    if fmt.ml_dtypes_name:
        return codes.astype(np.uint8).view(getattr(ml_dtypes, fmt.ml_dtypes_name)).astype(np.float64)
    if name == "e1m2fn":
        lab = np.array(E1M2_LABELS + [-v for v in E1M2_LABELS])
        return lab[codes]
    if fmt.kind == "int":   # two's complement, computed directly
        c = codes.astype(np.int64)
        return np.where(c >= 1 << (fmt.bits - 1), c - (1 << fmt.bits), c).astype(np.float64)
    raise AssertionError(name)


@pytest.mark.parametrize("a,b", PAIRS, ids=lambda v: v)
def test_products_equal_float64_products(a, b):
    """Every code pair: p * lsb == decode(a) * decode(b) in float64 (exact there)."""
    na, nb = 1 << get_format(a).bits, 1 << get_format(b).bits
    ca, cb = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    p = multiply(a, b, ca, cb)
    spec = product_spec(a, b)
    want = decode_third_party(a, ca) * decode_third_party(b, cb)
    assert np.array_equal(p * spec.lsb, want)
    assert np.abs(p).max() == spec.max_abs
    assert p.min() >= -(1 << (spec.width - 1)) and p.max() < (1 << (spec.width - 1))


def test_product_table():
    got = {(s.a, s.b): (s.lsb_exp, s.max_abs, s.width) for s in (product_spec(*p) for p in PAIRS)}
    assert got == {("e2m1fn", "e2m1fn"): (-2, 144, 9), ("e1m2fn", "e2m1fn"): (-3, 84, 8),
                   ("e2m3fn", "e2m3fn"): (-6, 3600, 13), ("e3m2fn", "e2m3fn"): (-7, 26880, 16),
                   ("int4", "int4"): (0, 64, 8), ("int8", "int8"): (0, 16384, 16)}


def test_code_to_int_rejects_bad_codes():
    with pytest.raises(ValueError, match="0..15"):
        code_to_int("e2m1fn", [16])
    with pytest.raises(ValueError, match="finite"):
        code_to_int("e4m3fn", [1])


def _exact_dot(a_fmt, w_fmt, a, w, s_a, s_w, G, s_neg=None):
    """Reference with Python fractions and explicit float32 rounding of each step."""
    def r32(x: Fraction) -> np.float32:
        # float64 of a fraction may round; use exact two-step: Fraction -> float via numerator
        f = np.float64(x.numerator) / np.float64(x.denominator) if x.denominator != 1 else np.float64(x.numerator)
        return np.float32(f)
    f16 = lambda b: Fraction(float(np.uint16(b).view(np.float16)))
    acc = np.float32(0)
    for g in range(len(s_a)):
        sl = slice(g * G, (g + 1) * G)
        if a_fmt == gdot.DFQ:
            neg = (a[sl] >> 3) & 1
            va = np.where(neg == 1, -np.array(E1M2_LABELS)[a[sl] & 7],
                          decode_third_party("e2m1fn", a[sl] & 7))
            vw = decode_third_party("e2m1fn", w[sl])
            sp = sum(Fraction(x) * Fraction(y) for x, y, n in zip(va, vw, neg) if not n)
            sn = sum(Fraction(x) * Fraction(y) for x, y, n in zip(va, vw, neg) if n)
            gp = r32(sp * f16(s_a[g]) * f16(s_w[g]))
            gn = r32(sn * f16(s_neg[g]) * f16(s_w[g]))
            gv = np.float32(gp + gn)
        else:
            s = sum(Fraction(x) * Fraction(y) for x, y in
                    zip(decode_third_party(a_fmt, a[sl]), decode_third_party(w_fmt, w[sl])))
            gv = r32(s * f16(s_a[g]) * f16(s_w[g]))
        acc = np.float32(acc + gv)
    return acc.view(np.uint32)


@pytest.mark.parametrize("a_fmt,w_fmt,seed", [("e2m1fn", "e2m1fn", 1), (gdot.DFQ, "e2m1fn", 2),
                                              ("e3m2fn", "e2m3fn", 3), ("int8", "int8", 4)])
def test_dot_matches_fraction_reference(a_fmt, w_fmt, seed):
    """Finite scales: golden dot == exact rational arithmetic rounded step by step.

    The exact products here are < 2^53 in numerator/denominator terms, so the
    Fraction -> float64 -> float32 path rounds once (float64 holds them exactly).
    """
    rng = np.random.default_rng(seed)
    G, groups = 16, 5
    bits = 4 if a_fmt == gdot.DFQ else get_format(a_fmt).bits
    a = rng.integers(0, 1 << bits, size=G * groups)
    if a_fmt.startswith("int"):
        a = np.where(a == 1 << (bits - 1), 0, a)   # the unused most negative code
    w = rng.integers(0, 1 << get_format(w_fmt).bits, size=G * groups)
    if w_fmt.startswith("int"):
        w = np.where(w == 1 << (get_format(w_fmt).bits - 1), 0, w)
    s_a = rng.integers(0x0001, 0x7BFF, size=groups).astype(np.uint16)
    s_w = rng.integers(0x0001, 0x7BFF, size=groups).astype(np.uint16)
    s_n = rng.integers(0x0001, 0x7BFF, size=groups).astype(np.uint16) if a_fmt == gdot.DFQ else None
    got = gdot.dot(a_fmt, w_fmt, a, w, s_a, s_w, G, s_n)
    assert int(got) == int(_exact_dot(a_fmt, w_fmt, a, w, s_a, s_w, G, s_n))


def test_special_values():
    G = 4
    a = np.full(8, 7, np.uint8)       # e2m1 6.0
    w = np.full(8, 7, np.uint8)
    one = np.uint16(0x3C00)
    # zero group (codes) with finite scales -> exact +0 contribution
    assert gdot.dot("e2m1fn", "e2m1fn", np.zeros(8, np.uint8), w, [one, one], [one, one], G) == 0
    # quantizer error group: NaN scale -> canonical NaN
    r = gdot.dot("e2m1fn", "e2m1fn", a, w, [0x7E00, one], [one, one], G)
    assert r == gdot.CANONICAL_NAN32
    # Inf scale on an all-zero group: Inf * 0 -> NaN; on a nonzero group -> +Inf
    assert gdot.dot("e2m1fn", "e2m1fn", np.zeros(4, np.uint8), w[:4], [0x7C00], [one], G) == 0x7FC00000
    assert gdot.dot("e2m1fn", "e2m1fn", a[:4], w[:4], [0x7C00], [one], G) == 0x7F800000
    # 4 * 36 = 144 with unit scales
    assert gdot.dot("e2m1fn", "e2m1fn", a[:4], w[:4], [one], [one], G).view(np.float32) == 144.0
    with pytest.raises(ValueError, match="multiple of group_size"):
        gdot.dot("e2m1fn", "e2m1fn", a[:5], w[:5], [one], [one], G)
    with pytest.raises(ValueError, match="one FP16 scale per group"):
        gdot.dot("e2m1fn", "e2m1fn", a, w, [one], [one], G)
    with pytest.raises(ValueError, match="s_a_neg"):
        gdot.dot(gdot.DFQ, "e2m1fn", a, w, [one, one], [one, one], G)


def test_dfq_all_negative_all_positive():
    G = 8
    w = np.full(G, 2, np.uint8)                     # weight 1.0
    one = [np.uint16(0x3C00)]
    neg = np.full(G, 0b1111, np.uint8)              # e1m2 -1.75 each
    pos = np.full(G, 0b0111, np.uint8)              # e2m1 +6 each
    f = lambda r: float(np.uint32(r).view(np.float32))
    assert f(gdot.dot(gdot.DFQ, "e2m1fn", neg, w, one, one, G, one)) == -14.0
    assert f(gdot.dot(gdot.DFQ, "e2m1fn", pos, w, one, one, G, [np.uint16(0x7E00)])) != f(
        gdot.dot(gdot.DFQ, "e2m1fn", pos, w, one, one, G, one))  # NaN neg scale poisons the group
    assert f(gdot.dot(gdot.DFQ, "e2m1fn", pos, w, one, one, G, one)) == 48.0


def test_exporters(tmp_path):
    """python -m fpqvar_quant.golden {multiplier,dot}: arrays reproduce from the golden model."""
    import json
    import subprocess
    import sys
    for unit, extra in (("multiplier", ["--pair", "e1m2fn,e2m1fn"]), ("dot", ["--a-fmt", "dfq", "--n", "20"])):
        subprocess.run([sys.executable, "-m", "fpqvar_quant.golden", unit, "--out", str(tmp_path / unit),
                        "--seed", "3", *extra], check=True, capture_output=True)
    m = np.load(tmp_path / "multiplier" / "vectors.npz")
    assert len(m["p"]) == 256 and np.array_equal(m["p"], multiply("e1m2fn", "e2m1fn", m["a"], m["b"]))
    d = np.load(tmp_path / "dot" / "vectors.npz")
    man = json.loads((tmp_path / "dot" / "manifest.json").read_text())
    assert np.array_equal(d["out"], gdot.dot(gdot.DFQ, "e2m1fn", d["a"], d["w"], d["s_a"], d["s_w"],
                                             man["config"]["group_size"],
                                             d["s_a_neg"]))
