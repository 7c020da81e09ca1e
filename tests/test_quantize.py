"""Scaled quantizers (fpqvar_quant.quantize): scales, codes, fake quant, errors.

Oracles: element codes against ``Format.encode`` of the float64 quotient (itself
checked against ml_dtypes in test_formats.py); scales against exact rational
arithmetic (``fractions.Fraction``) and ml_dtypes casts.
"""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch

from fpqvar_quant.formats import ELEMENT_FORMATS, get_format
from fpqvar_quant.quantize import (Granularity, QuantResult, QuantSpec, compute_scales,
                                   fake_quant, quantize)

ALL_FP16 = np.arange(65536, dtype=np.uint16).view(np.float16)
ALL_FP16 = ALL_FP16[np.isfinite(ALL_FP16)].astype(np.float32)      # 63,488 values
SCALE_FORMATS = ("fp16", "e4m3", "e8m0", "fp32")


# ------------------------------------------------------------------ oracles
def fp16_exact(q: Fraction) -> float:
    """RNE of an exact positive rational to binary16 (inf on overflow)."""
    c = np.float16(float(q))
    cands = {c, np.nextafter(c, np.float16(0)), np.nextafter(c, np.float16(np.inf))}
    cands = [v for v in cands if np.isfinite(v) or v == np.inf]
    best = None
    for v in cands:
        d = abs(Fraction(65536) - q) if np.isinf(v) else abs(Fraction(float(v)) - q)
        key = (d, int(np.array(v, np.float16).view(np.uint16)) & 1)
        if best is None or key < best[0]:
            best = (key, v)
    return float(best[1])


def scale_oracle(a: float, fmt: str, scale_format: str) -> float:
    """Independent scale rule from the spec text, exact arithmetic."""
    f = get_format(fmt)
    if a == 0:
        return 0.0
    q = Fraction(a) / Fraction(f.max_value)
    if scale_format == "fp16":
        s = fp16_exact(q)
        return s if s > 0 else 2.0 ** -24
    if scale_format == "e4m3":
        s = float(np.float64(float(q)).astype(ml_dtypes.float8_e4m3fn))  # a is fp32: exact
        return s if s > 0 else 2.0 ** -9
    if scale_format == "e8m0":
        _, e = math.frexp(a)
        return 2.0 ** max(e - 1 - math.floor(math.log2(f.max_value)), -127)
    s = float(np.float32(float(q)))
    return s if s > 0 else 2.0 ** -149


def expand(scales: np.ndarray, x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Per-element scale (float64) from the public scale layout."""
    s = np.asarray(scales, np.float64)
    if spec.granularity is Granularity.PER_TENSOR:
        return np.broadcast_to(s, x.shape)
    L = spec.group_size or x.shape[-1]
    return np.repeat(s, L, axis=-1)


def codes_oracle(x: np.ndarray, s_el: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """Codes of the exact quotient; with fp32 scales, of the rounded quotient
    fl(x / s) in the compute precision (the documented contract)."""
    f = get_format(spec.fmt)
    q = x.astype(np.float64) / np.where(s_el == 0, 1.0, s_el)
    if spec.scale_format == "fp32" and x.dtype != np.float64:
        q = q.astype(np.float32)
    return np.where(s_el == 0, 0, f.encode(q)).astype(np.uint8)


def bits(a) -> np.ndarray:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def check_against_oracle(x: np.ndarray, spec: QuantSpec) -> QuantResult:
    r = quantize(x, spec)
    s_el = expand(r.scales, x, spec)
    np.testing.assert_array_equal(r.codes, codes_oracle(x, s_el, spec))
    f = get_format(spec.fmt)
    deq = (s_el * f.decode(r.codes).astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(bits(r.dequant), bits(deq))
    return r


# ------------------------------------------------------- exhaustive sweeps
@pytest.mark.parametrize("fmt", ELEMENT_FORMATS)
@pytest.mark.parametrize("scale_format", SCALE_FORMATS)
def test_all_fp16_inputs_many_scales_seed0(fmt, scale_format):
    """Every finite fp16 value, shuffled (seed 0) into groups of 16: each group
    has its own scale, so 3,968 different scales are exercised per case."""
    x = np.random.default_rng(0).permutation(ALL_FP16).reshape(-1, 16 * 31)
    if scale_format == "e4m3":
        x = x * np.float32(2.0 ** -8)          # e4m3 scales stop at 448: keep a/fmax below
    spec = QuantSpec(fmt, Granularity.PER_GROUP, 16, scale_format)
    r = check_against_oracle(x, spec)
    assert not np.isnan(r.dequant).any()


@pytest.mark.parametrize("fmt", ["e2m1fn", "e2m3fn", "e3m0fn", "int4"])
@pytest.mark.parametrize("scale_exp", [-30, -10, 0, 2])
def test_all_fp16_inputs_fixed_scale(fmt, scale_exp):
    """All fp16 values (x 2^scale_exp) under one per-tensor scale: every grid
    midpoint of the scaled grid is hit for the larger groups of values."""
    x = (ALL_FP16.astype(np.float64) * 2.0 ** scale_exp).astype(np.float32).reshape(1, -1)
    check_against_oracle(x, QuantSpec(fmt, "tensor", scale_format="fp16"))


@pytest.mark.parametrize("fmt", ELEMENT_FORMATS)
def test_arithmetic_rounder_equals_registry_on_all_fp16(fmt):
    """The fast rounding core on every finite fp16 value taken as the quotient
    x / s itself (in and far beyond the range: saturation), both tie modes."""
    from fpqvar_quant.quantize import codes_chunk, round_chunk
    f = get_format(fmt)
    for tie in ("even", "reference"):
        q = torch.from_numpy(ALL_FP16.copy()).view(1, -1)
        eb = torch.empty(q.shape, dtype=torch.int32)
        round_chunk(q, eb, torch.empty_like(q), f, tie)
        got = codes_chunk(q, eb, f).numpy().ravel().astype(np.uint8)
        if tie == "even":
            want = f.encode(ALL_FP16)
        else:
            # the official CUDA kernel: ties toward +inf, i.e. to the larger
            # magnitude for x > 0 and the smaller one for x < 0 (issue 16: this
            # oracle used to send negative ties away from zero as well)
            grid = f.positive_grid
            mids = (grid[:-1] + grid[1:]) / 2
            mag = np.abs(ALL_FP16)
            idx = np.where(np.signbit(ALL_FP16), np.searchsorted(mids, mag, side="left"),
                           np.searchsorted(mids, mag, side="right"))
            want = f.encode(np.copysign(grid[idx], ALL_FP16))
        np.testing.assert_array_equal(got, want)


def test_grid_midpoints_are_ties_to_even_code():
    # e2m1fn with scale 1 (absmax 6): 2.5 is between codes 4 (2.0) and 5 (3.0)
    x = np.array([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -2.5, -5.0]], np.float32)
    r = quantize(x, QuantSpec("e2m1fn", "token"))
    assert r.scales[0, 0] == 1.0
    np.testing.assert_array_equal(r.dequant[0, 1:], [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -2.0, -4.0])
    r = quantize(x, QuantSpec("e2m1fn", "token", tie="reference"))
    # reference kernel: ties toward +inf, so -2.5 -> -2 and -5 -> -4 (toward zero);
    # before issue 16 this asserted -3 and -6 (away from zero), which the kernel never does
    np.testing.assert_array_equal(r.dequant[0, 1:], [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -2.0, -4.0])


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e3m0fn", "e4m3fn", "int4", "int8"])
def test_reference_tie_mode_seed1(fmt):
    """tie='reference': ties go toward +inf (larger magnitude for positives,
    smaller for negatives: the official CUDA kernel; issue 16 corrected the
    negative half of this oracle); everything else equal."""
    f = get_format(fmt)
    grid = f.positive_grid
    mids = (grid[:-1] + grid[1:]) / 2
    rng = np.random.default_rng(1)
    vals = np.concatenate([mids, grid, rng.uniform(0, f.max_value, 2000)])
    x = np.concatenate([[f.max_value], vals, -vals]).astype(np.float32).reshape(1, -1)
    r = quantize(x, QuantSpec(fmt, "tensor", scale_format="fp32", tie="reference"))
    assert r.scales == 1.0
    mag = np.abs(x[0].astype(np.float64))
    idx = np.where(x[0] < 0, np.searchsorted(mids, mag, side="left"),   # ties -> toward 0
                   np.searchsorted(mids, mag, side="right"))            # ties -> larger
    want = np.copysign(grid[idx], x[0])
    np.testing.assert_array_equal(r.dequant[0], want.astype(np.float32))


# ------------------------------------------------------------------- scales
@pytest.mark.parametrize("scale_format", SCALE_FORMATS)
@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e2m3fn", "e4m3fn", "int8"])
def test_scale_rule_against_exact_oracle_seed2(fmt, scale_format):
    rng = np.random.default_rng(2)
    a = np.concatenate([
        np.exp2(rng.uniform(-30, 15, 300)),                      # whole range
        ALL_FP16[(ALL_FP16 > 0)][::97] * get_format(fmt).max_value,  # on-grid quotients
    ]).astype(np.float32)
    if scale_format == "e4m3":
        a = a[a < 400 * get_format(fmt).max_value]
    x = np.stack([a, -a / 3], axis=1).astype(np.float32)          # absmax = a
    s = compute_scales(x, QuantSpec(fmt, "token", scale_format=scale_format))
    want = np.array([scale_oracle(float(v), fmt, scale_format) for v in a], np.float32)
    np.testing.assert_array_equal(s[:, 0], want)


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e2m3fn", "int8"])
def test_fp16_scale_float64_absmax_at_and_near_midpoints(fmt):
    """float64 absmax on an fp16 midpoint times fmax (exact ties: even code) and
    1..5 float64 ulps either side: the scale is the rounding of the exact quotient."""
    fmax = get_format(fmt).max_value
    a = []
    for m in np.arange(0x0001, 0x7BFF, 61, dtype=np.uint16).view(np.float16):
        mid = (float(m) + float(np.nextafter(m, np.float16(np.inf)))) / 2
        base = mid * fmax                                            # exact
        a += [base] + [base + k * np.spacing(base) for k in (-5, -2, -1, 1, 2, 5)]
    x = np.array(a, np.float64).reshape(-1, 1)
    s = compute_scales(x, QuantSpec(fmt, "token"))
    want = np.array([fp16_exact(Fraction(v) / Fraction(fmax)) for v in a], np.float32)
    np.testing.assert_array_equal(s[:, 0], want)


def test_fp16_scale_underflow_gives_smallest_subnormal():
    x = np.array([[1e-12, -5e-13]], np.float32)
    r = quantize(x, QuantSpec("e2m1fn", "token"))
    assert r.scales[0, 0] == 2.0 ** -24
    assert np.isfinite(r.dequant).all()
    r = quantize(x, QuantSpec("e2m1fn", "token", scale_format="e4m3"))
    assert r.scales[0, 0] == 2.0 ** -9


def test_e8m0_scale_saturates_elements_like_ocp_mx():
    # absmax 7.9: floor(log2) = 2, emax(e2m1)=2 -> s = 1; 7.9/1 saturates to 6
    r = quantize(np.array([[7.9, 1.0]], np.float32), QuantSpec("e2m1fn", "token",
                                                                 scale_format="e8m0"))
    assert r.scales[0, 0] == 1.0 and r.dequant[0, 0] == 6.0


@pytest.mark.parametrize("scale_format", SCALE_FORMATS)
def test_zero_groups_exact_zero_no_nan(scale_format):
    x = np.zeros((3, 256), np.float32)
    x[0, 128:] = np.linspace(-1, 1, 128)
    x[2, :128] = -0.0
    for fmt in ("e2m1fn", "e3m0fn", "int4"):
        r = quantize(x, QuantSpec(fmt, "group", 128, scale_format))
        np.testing.assert_array_equal(r.scales, [[0, r.scales[0, 1]], [0, 0], [0, 0]])
        assert r.scales[0, 1] > 0
        zero = np.ones_like(x, bool)
        zero[0, 128:] = False
        assert (r.codes[zero] == 0).all()
        assert (bits(r.dequant)[zero] == 0).all()                 # +0.0, never -0/NaN
        np.testing.assert_array_equal(bits(fake_quant(x, QuantSpec(fmt, "group", 128, scale_format))),
                                      bits(r.dequant))


def test_negative_zero_and_tiny_negatives_keep_sign_code():
    x = np.array([[6.0, -0.0, -0.1, 0.1]], np.float32)
    r = quantize(x, QuantSpec("e2m1fn", "token"))
    np.testing.assert_array_equal(r.codes[0], [0x7, 0x8, 0x8, 0x0])


# --------------------------------------------------------- granularities
def test_granularity_layouts_and_semantics_seed3():
    x = np.random.default_rng(3).standard_normal((2, 5, 256)).astype(np.float32)
    f = get_format("e2m1fn")
    cases = {
        "group": ((2, 5, 4), np.abs(x).reshape(2, 5, 4, 64).max(-1)),
        "token": ((2, 5, 1), np.abs(x).max(-1, keepdims=True)),
        "channel": ((2, 5, 1), np.abs(x).max(-1, keepdims=True)),
        "tensor": ((), np.abs(x).max()),
    }
    for g, (shape, amax) in cases.items():
        spec = QuantSpec("e2m1fn", g, 64, scale_format="fp32")
        r = check_against_oracle(x, spec)
        assert r.scales.shape == shape and r.codes.shape == x.shape and r.codes.dtype == np.uint8
        np.testing.assert_array_equal(r.scales, (amax.astype(np.float64) / f.max_value).astype(np.float32))


def test_weight_per_channel_is_per_output_row():
    w = np.array([[1.0, -6.0], [0.5, 0.25]], np.float32)               # W[N=2, K=2]
    s = compute_scales(w, QuantSpec("e2m1fn", "channel"))
    np.testing.assert_array_equal(s, [[1.0], [np.float16(0.5 / 6)]])


def test_spec_normalisation():
    spec = QuantSpec("e2m1fn", "token", group_size=128)
    assert spec.granularity is Granularity.PER_TOKEN and spec.group_size is None
    assert QuantSpec("e2m1fn").granularity is Granularity.PER_GROUP
    assert QuantSpec("e2m1fn", Granularity.PER_GROUP, np.int64(32)).group_size == 32
    with pytest.raises(Exception):
        spec.fmt = "e2m3fn"                                              # frozen


@pytest.mark.parametrize("group_size", [1, 3, 9, 96, 384])
def test_any_group_size_dividing_k_seed4(group_size):
    x = np.random.default_rng(4).standard_normal((3, 1152)).astype(np.float32)
    check_against_oracle(x, QuantSpec("e2m3fn", "group", group_size))


def test_large_tensor_crosses_chunks_seed5():
    """More rows than one chunk holds, per-tensor and per-group (chunk edges)."""
    x = np.random.default_rng(5).standard_normal((1031, 512)).astype(np.float32)
    x[510:515] = 0
    check_against_oracle(x, QuantSpec("e2m1fn", "group", 128))
    check_against_oracle(x, QuantSpec("e4m3fn", "tensor"))


# --------------------------------------------------------- torch + STE
@pytest.mark.parametrize("fmt", ["e2m1fn", "e3m0fn", "e5m2", "int6"])
def test_torch_numpy_and_fake_quant_agree_seed6(fmt):
    x = np.random.default_rng(6).standard_normal((8, 256)).astype(np.float32) * 3
    spec = QuantSpec(fmt, "group", 32)
    rn = quantize(x, spec)
    rt = quantize(torch.from_numpy(x), spec)
    assert isinstance(rt.codes, torch.Tensor) and rt.codes.dtype == torch.uint8
    np.testing.assert_array_equal(rt.codes.numpy(), rn.codes)
    np.testing.assert_array_equal(rt.scales.numpy(), rn.scales)
    np.testing.assert_array_equal(bits(rt.dequant), bits(rn.dequant))
    np.testing.assert_array_equal(bits(fake_quant(torch.from_numpy(x), spec)), bits(rn.dequant))
    np.testing.assert_array_equal(bits(fake_quant(x, spec)), bits(rn.dequant))


def test_fake_quant_straight_through_gradient_seed7():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(7), requires_grad=True)
    y = fake_quant(x, QuantSpec("e2m1fn", "group", 64))
    assert y.requires_grad
    g = torch.randn(4, 128, generator=torch.Generator().manual_seed(8))
    y.backward(g)
    assert torch.equal(x.grad, g)
    assert torch.equal(y.detach(), fake_quant(x.detach(), QuantSpec("e2m1fn", "group", 64)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_seed9(dtype):
    x32 = torch.randn(4, 128, generator=torch.Generator().manual_seed(9))
    x = x32.to(dtype)
    spec = QuantSpec("e2m1fn", "group", 32)
    r = quantize(x, spec)
    assert r.dequant.dtype == dtype and r.scales.dtype == torch.float32
    ref = quantize(x.to(torch.float64), spec)                            # exact widening
    assert torch.equal(r.codes, ref.codes) and torch.equal(r.scales, ref.scales)
    assert torch.equal(r.dequant, ref.dequant.to(dtype))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(fmt="e9m9"), "unknown format"),
    (dict(fmt="e8m0fnu"), "scale format"),
    (dict(fmt="e2m1fn", granularity="row"), "unknown granularity"),
    (dict(fmt="e2m1fn", granularity="group", group_size=0), "positive integer group_size"),
    (dict(fmt="e2m1fn", granularity="group", group_size=None), "positive integer group_size"),
    (dict(fmt="e2m1fn", scale_format="bf16"), "unknown scale_format"),
    (dict(fmt="e2m1fn", tie="up"), "unknown tie mode"),
])
def test_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QuantSpec(**kwargs)


def test_data_errors():
    spec = QuantSpec("e2m1fn", "group", 128)
    with pytest.raises(ValueError, match=r"group_size must divide K=96, got 128"):
        quantize(np.ones((2, 96), np.float32), spec)
    with pytest.raises(TypeError, match="floating-point"):
        quantize(np.ones((2, 128), np.int32), spec)
    with pytest.raises(TypeError, match="floating-point"):
        fake_quant(torch.ones(2, 128, dtype=torch.int64), spec)
    with pytest.raises(ValueError, match="empty"):
        quantize(np.ones((0, 128), np.float32), spec)
    with pytest.raises(ValueError, match="at least one dimension"):
        quantize(np.float32(1.0), QuantSpec("e2m1fn", "tensor"))
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 128), np.float32)
        x[1, 5] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            quantize(x, spec)
        with pytest.raises(ValueError, match="NaN or Inf"):
            fake_quant(torch.from_numpy(x), spec)


@pytest.mark.parametrize("scale_format,value", [
    ("fp16", 65520.0 * 6), ("e4m3", 465.0 * 6), ("fp32", 1e300), ("e8m0", 1e50)])
def test_non_finite_scale_errors(scale_format, value):
    x = np.array([[value, 1.0]], np.float64)
    with pytest.raises(ValueError, match="scale"):
        quantize(x, QuantSpec("e2m1fn", "token", scale_format=scale_format))


def test_largest_finite_fp16_scale_is_fine():
    # absmax/6 just below the overflow midpoint 65520 rounds to 65504
    x = np.array([[65519.0 * 6, 1.0]], np.float64)
    assert quantize(x, QuantSpec("e2m1fn", "token")).scales[0, 0] == 65504.0
