"""Checks of the golden quantizer model against third parties and the torch fake quant.

* element codes vs ml_dtypes casts (e2m1fn, e2m3fn, e3m2fn) and vs
  Format.encode (all formats, incl. e1m2fn/e3m0fn/int), for every finite FP16
  pattern at several forced scales;
* the FP16 scale vs numpy's float16 rounding of the float64 quotient (exact
  here: A / F with F odd is never within 2^-53 of an FP16 midpoint) for every
  positive finite FP16 absmax;
* hand-labelled ties, zero / NaN / DFQ corner groups, e8m0 scales;
* the torch fake quant (fpqvar_quant.quantize) gives the same codes and scales.
"""
import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from fpqvar_quant.formats import get_format
from fpqvar_quant.golden import quantizer as gq

FINITE = np.array([b for b in range(0x10000) if (b >> 10) & 0x1F != 0x1F], dtype=np.uint16)
ANCHORS = (0x7BFF, 0x3C00, 0x0400, 0x0003)


def _groups(anchor: int, G: int = 128) -> np.ndarray:
    """Finite patterns with |x| <= anchor, G - 1 per group after the anchor."""
    pats = FINITE[(FINITE & 0x7FFF) <= anchor]
    per = G - 1
    n = -(-len(pats) // per)
    pats = np.concatenate([pats, np.zeros(n * per - len(pats), np.uint16)]).reshape(n, per)
    return np.concatenate([np.full((n, 1), anchor, np.uint16), pats], axis=1)


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e3m0fn", "e2m3fn", "e3m2fn", "int4", "int6", "int8"])
@pytest.mark.parametrize("anchor", ANCHORS)
def test_codes_match_format_encode_and_ml_dtypes(fmt, anchor):
    x = _groups(anchor)
    q = gq.quantize_groups(x, fmt)
    s = q.scales[:, 0].view(np.float16).astype(np.float64)
    assert np.all(s == s[0]) and s[0] > 0, "every group must share the anchor's scale"
    ratio = x.view(np.float16).astype(np.float64) / s[0]
    f = get_format(fmt)
    assert np.array_equal(q.codes, f.encode(ratio))
    if f.ml_dtypes_name:
        ml = ratio.astype(getattr(ml_dtypes, f.ml_dtypes_name)).view(np.uint8)
        assert np.array_equal(q.codes, ml)


def test_scale_every_absmax():
    a = np.arange(1, 0x7C00, dtype=np.uint16)
    for fmt in ["e2m1fn", "e1m2fn", "e2m3fn", "e3m2fn", "int4", "int6", "int8", "e3m0fn"]:
        spec = gq.grid_spec(fmt)
        from fpqvar_quant.golden.fp16 import to_fixed
        got = gq.scale_fp16(to_fixed(a), spec)
        ref = (a.view(np.float16).astype(np.float64) / get_format(fmt).max_value).astype(np.float16)
        ref = ref.view(np.uint16)
        ref = np.where(ref == 0, 1, ref)
        assert np.array_equal(got, ref), fmt


def test_hand_labelled_ties_e1m2fn():
    # scale 1.0 (absmax 1.75): 0.125 is between codes 0 (0) and 1 (0.25) -> even code 0;
    # 0.375 between 1 (0.25) and 2 (0.5) -> 2; 1.625 between 6 (1.5) and 7 (1.75) -> 6.
    x = np.array([1.75, 0.125, 0.375, 1.625, -0.375, 0.0, -0.0, 1.7], np.float16).view(np.uint16)
    q = gq.quantize_groups(x[None], "e1m2fn")
    assert q.scales[0, 0] == 0x3C00
    assert q.codes[0].tolist() == [7, 0, 2, 6, 0xA, 0, 0x8, 7]


def test_special_groups():
    z = np.array([[0, 0x8000, 0, 0x8000]], np.uint16)
    for fmt in ("e2m1fn", "int4", "dfq4"):
        q = gq.quantize_groups(z, fmt)
        assert q.codes.tolist() == [[0, 0, 0, 0]] and not q.scales.any() and not q.error.any()
    nan = np.array([[0x3C00, 0x7E00, 0x4000, 0x8001]], np.uint16)
    q = gq.quantize_groups(nan, "dfq4")
    assert q.error.tolist() == [True] and q.scales.tolist() == [[0x7E00, 0x7E00]] and not q.codes.any()
    inf = np.array([[0x3C00, 0xFC00]], np.uint16)
    assert gq.quantize_groups(inf, "e2m1fn", scale_format="e8m0").scales.tolist() == [[0xFF]]


def test_dfq_sides():
    x = np.array([-0.175, -0.05, 0.0, 3.0, 6.0, 1e-3], np.float16).view(np.uint16)[None]
    q = gq.quantize_groups(x, "dfq4")
    s_neg, s_pos = q.scales[0].view(np.float16).astype(np.float64)
    assert s_neg == np.float16(np.float16(0.175) / 1.75) and s_pos == 1.0
    assert q.codes[0, 0] == 0x8 | 7 and q.codes[0, 2] == 0x8 and q.codes[0, 4] == 7
    allneg = -np.abs(np.random.default_rng(0).standard_normal((4, 16))).astype(np.float16)
    q = gq.quantize_groups(allneg.view(np.uint16), "dfq4")
    assert np.all(q.scales[:, 1] == 0) and np.all(q.codes & 0x8)


def test_e8m0_scale():
    x = np.array([[6.0, -1.0, 0.5]], np.float16).view(np.uint16)
    q = gq.quantize_groups(x, "e2m1fn", scale_format="e8m0")
    assert q.scales.tolist() == [[127]]   # 2^(floor(log2 6) - 2) = 1
    assert q.codes.tolist() == [[7, 0xA, 1]]


def test_matches_torch_fake_quant():
    quantize = pytest.importorskip("fpqvar_quant.quantize")
    rng = np.random.default_rng(5)
    x = gq.random_groups(rng, 200, 128)
    x = x[~((x >> 10) & 0x1F == 0x1F).any(axis=1)]          # software raises on NaN/Inf
    for fmt in ("e2m1fn", "e2m3fn", "e3m2fn", "int4", "int8"):
        ref = quantize.quantize(x.view(np.float16).reshape(1, -1),
                                quantize.QuantSpec(fmt, granularity="group", group_size=128,
                                                   scale_format="fp16"))
        g = gq.quantize_groups(x, fmt)
        assert np.array_equal(np.asarray(ref.codes).reshape(x.shape), g.codes), fmt
        sc = np.asarray(ref.scales, dtype=np.float32).reshape(-1).astype(np.float16).view(np.uint16)
        assert np.array_equal(sc, g.scales[:, 0]), fmt


def test_exporter_cli(tmp_path):
    out = tmp_path / "q"
    subprocess.run([sys.executable, "-m", "fpqvar_quant.golden", "quantizer", "--out", str(out),
                    "--seed", "3", "--n", "20", "--format", "dfq4", "--group-size", "32"], check=True)
    man = json.loads((out / "manifest.json").read_text())
    v = np.load(out / "vectors.npz")
    assert man["unit"] == "quantizer" and man["seed"] == 3 and man["config"]["format"] == "dfq4"
    g = gq.quantize_groups(v["x"], "dfq4")
    assert np.array_equal(g.codes, v["codes"]) and np.array_equal(g.scales, v["scales"])
    assert v["x"].shape == (20, 32)


def test_dfq6_sides():
    x = np.array([-0.31, -0.01, 0.0, 7.5, 1.0], np.float16).view(np.uint16)[None]
    q = gq.quantize_groups(x, "dfq6")
    s_neg, s_pos = q.scales[0].view(np.float16).astype(np.float64)
    assert s_neg == np.float16(np.float16(0.31) / 31) and s_pos == 1.0
    assert q.codes[0].tolist() == [0x20 | 31, 0x20 | 1, 0x20, 31, 8]
