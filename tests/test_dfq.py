"""DFQ (fpqvar_quant.dfq): hand-labelled groups, one-sided and empty groups,
an independent oracle built on the format registry, STE, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fpqvar_quant.dfq import DFQSpec, dfq_dequantize, dfq_fake_quant, dfq_quantize
from fpqvar_quant.formats import get_format
from fpqvar_quant.quantize import QuantSpec, fake_quant

SIDES = {"fp4": ("e1m2fn", "e2m1fn"), "fp6": ("int6", "e2m3fn"), "afpq": ("e2m1fn", "e2m1fn")}


def oracle(x: np.ndarray, spec: DFQSpec):
    """Straight from the spec text, per group, with float64 arithmetic."""
    fn, fp = (get_format(n) for n in SIDES[spec.variant])
    G = spec.group_size or x.shape[-1]
    g = x.astype(np.float64).reshape(*x.shape[:-1], -1, G)
    neg = g <= 0
    mag = np.where(neg, np.abs(g), 0.0)                               # +0.0, never -0.0
    a_neg = mag.max(-1)
    a_pos = np.where(neg, 0, g).max(-1)
    s_neg = np.float16(a_neg / fn.max_value).astype(np.float64)     # fp32 data: exact RNE
    s_pos = np.float16(a_pos / fp.max_value).astype(np.float64)
    s_neg = np.where((s_neg == 0) & (a_neg > 0), 2.0 ** -24, s_neg)
    s_pos = np.where((s_pos == 0) & (a_pos > 0), 2.0 ** -24, s_pos)
    sn = np.where(s_neg == 0, 1, s_neg)[..., None]
    sp = np.where(s_pos == 0, 1, s_pos)[..., None]
    cn = fn.encode(mag / sn).astype(np.int64)
    cp = fp.encode(np.where(neg, 0, g) / sp).astype(np.int64)
    sign = 1 << (spec.bits - 1)
    # an all-zero group: every code 0 (positive side, value +0.0), as the golden
    # model and the contract say (issue 16; before, this oracle gave the 1|0 codes)
    neg = neg & ~((a_neg == 0) & (a_pos == 0))[..., None]
    codes = np.where(neg, cn | sign, cp)
    vals = np.where(neg, -(s_neg[..., None] * fn.decode(cn.astype(np.uint8))),
                    s_pos[..., None] * fp.decode(cp.astype(np.uint8)))
    return (codes.reshape(x.shape).astype(np.uint8), s_neg.astype(np.float32),
            s_pos.astype(np.float32), vals.reshape(x.shape).astype(np.float32))


def test_fp4_hand_labelled_group():
    x = np.array([[-1.75, -0.5, -0.25, 0.0, 3.0, 6.0, 1.5, 0.75]], np.float32)
    r = dfq_quantize(x, DFQSpec("fp4", group_size=8))
    assert r.scale_neg[0, 0] == 1.0 and r.scale_pos[0, 0] == 1.0
    # -1.75 e1m2 0b111; -0.5 0b010; -0.25 0b001; 0 -> negative side 0b000;
    # 3 e2m1 0b101; 6 0b111; 1.5 0b011; 0.75 tie 0.5|1.0 -> even code 0b010 (1.0)
    np.testing.assert_array_equal(r.codes[0], [0xF, 0xA, 0x9, 0x8, 0x5, 0x7, 0x3, 0x2])
    np.testing.assert_array_equal(r.dequant[0], [-1.75, -0.5, -0.25, 0, 3, 6, 1.5, 1.0])
    assert np.signbit(r.dequant[0, 3])                       # x = 0 comes back as -0.0


def test_fp6_hand_labelled_group():
    x = np.array([[-31.0, -15.5, -0.4, 7.5, 2.0, 0.1875]], np.float32)
    r = dfq_quantize(x, DFQSpec("fp6", group_size=None))
    assert r.scale_neg.shape == (1, 1)
    assert r.scale_neg[0, 0] == 1.0 and r.scale_pos[0, 0] == 1.0
    # -15.5 ties 15|16 -> even 16; 7.5 = e2m3 max 0b11111; 2.0 = E2 M0 = 0b10000;
    # 0.1875 = 1.5 * 0.125 -> e2m3 subnormal M=1.5?: ties 0.125|0.25 -> even code 2 (0.25)
    np.testing.assert_array_equal(r.codes[0], [0x3F, 0x30, 0x20, 0x1F, 0x10, 0x02])
    np.testing.assert_array_equal(r.dequant[0], [-31, -16, -0.0, 7.5, 2.0, 0.25])


def test_afpq_same_format_two_scales():
    x = np.array([[-0.3, -0.1, 0.0, 6.0, 2.0, 0.4]], np.float32)
    r = dfq_quantize(x, DFQSpec("afpq", group_size=None))
    assert r.scale_neg[0, 0] == np.float16(0.3 / 6) and r.scale_pos[0, 0] == 1.0
    np.testing.assert_array_equal(r.codes[0] & 0x8, [8, 8, 8, 0, 0, 0])
    assert r.dequant[0, 0] == np.float32(-6 * float(r.scale_neg[0, 0]))


@pytest.mark.parametrize("variant", ["fp4", "fp6", "afpq"])
def test_one_sided_and_zero_groups_no_nan(variant):
    x = np.zeros((4, 64), np.float32)
    x[0] = np.linspace(0.01, 2, 64)                 # positives only
    x[1] = -np.linspace(0.01, 0.17, 64)             # negatives only
    x[2, ::2] = 1.0                                 # positives and zeros
    r = dfq_quantize(x, DFQSpec(variant, group_size=64))
    assert not np.isnan(r.dequant).any()
    assert r.scale_neg[0, 0] == 0 and r.scale_pos[0, 0] > 0
    assert r.scale_neg[1, 0] > 0 and r.scale_pos[1, 0] == 0
    assert r.scale_neg[3, 0] == 0 and r.scale_pos[3, 0] == 0
    np.testing.assert_array_equal(r.dequant[3], 0)
    assert not np.signbit(r.dequant[3]).any()       # +0.0
    sign = 1 << (DFQSpec(variant).bits - 1)
    # all-zero group: codes 0, as the golden model and docs/numerics.md section 3
    # (issue 16: this used to assert the negative-side code 1|0)
    np.testing.assert_array_equal(r.codes[3], 0)
    # zeros in a group with nonzero elements stay on the negative side
    np.testing.assert_array_equal(r.codes[2, 1::2], sign)


@pytest.mark.parametrize("variant", ["fp4", "fp6", "afpq"])
@pytest.mark.parametrize("group_size", [128, 32, None])
def test_against_oracle_gelu_data_seed0(variant, group_size):
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.standard_normal((16, 512)).astype(np.float32) * 2)
    x = torch.nn.functional.gelu(h, approximate="tanh").numpy()
    x[3, :128] = 0                                   # zero group
    x[5, 128:256] = np.abs(x[5, 128:256]) + 0.01     # all-positive group
    spec = DFQSpec(variant, group_size=group_size)
    r = dfq_quantize(x, spec)
    codes, sn, sp, vals = oracle(x, spec)
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.scale_neg, sn)
    np.testing.assert_array_equal(r.scale_pos, sp)
    np.testing.assert_array_equal(r.dequant.view(np.uint32), vals.view(np.uint32))
    back = dfq_dequantize(r.codes, r.scale_neg, r.scale_pos, spec)
    np.testing.assert_array_equal(back.view(np.uint32), r.dequant.view(np.uint32))
    np.testing.assert_array_equal(dfq_fake_quant(x, spec).view(np.uint32), vals.view(np.uint32))
    rt = dfq_quantize(torch.from_numpy(x), spec)
    assert torch.equal(rt.codes, torch.from_numpy(r.codes))


def test_dfq_beats_plain_fp4_on_gelu_outputs_seed1():
    """The point of DFQ: lower error than plain e2m1fn on FC2 inputs."""
    h = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * 2
    x = torch.nn.functional.gelu(h, approximate="tanh")
    mse = lambda y: float(((y - x) ** 2).mean())
    plain = mse(fake_quant(x, QuantSpec("e2m1fn", "group", 128)))
    afpq = mse(dfq_fake_quant(x, DFQSpec("afpq")))
    dfq = mse(dfq_fake_quant(x, DFQSpec("fp4")))
    assert dfq < afpq <= plain
    assert mse(dfq_fake_quant(x, DFQSpec("fp6", group_size=None))) < dfq


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_seed4(dtype):
    x = torch.nn.functional.gelu(torch.randn(8, 256, generator=torch.Generator().manual_seed(4)) * 2)
    x = x.to(dtype)
    for variant in ("fp4", "fp6"):
        r = dfq_quantize(x, DFQSpec(variant))
        ref = dfq_quantize(x.to(torch.float64), DFQSpec(variant))         # exact widening
        assert r.dequant.dtype == dtype
        assert torch.equal(r.codes, ref.codes) and torch.equal(r.scale_neg, ref.scale_neg)
        assert torch.equal(r.dequant, ref.dequant.to(dtype))


def test_straight_through_gradient_seed2():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(2), requires_grad=True)
    y = dfq_fake_quant(x, DFQSpec("fp4"))
    g = torch.randn(4, 128, generator=torch.Generator().manual_seed(3))
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_errors():
    with pytest.raises(ValueError, match="unknown DFQ variant"):
        DFQSpec("fp5")
    with pytest.raises(ValueError, match="afpq_fmt"):
        DFQSpec("afpq", afpq_fmt="int4")
    with pytest.raises(ValueError, match="scale_format"):
        DFQSpec("fp4", scale_format="bf16")
    with pytest.raises(ValueError, match="group_size must divide K=96, got 128"):
        dfq_quantize(np.ones((2, 96), np.float32), DFQSpec())
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((1, 128), np.float32)
        x[0, 7] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            dfq_quantize(x, DFQSpec())
    with pytest.raises(TypeError):
        dfq_quantize(np.ones((1, 128), np.int8), DFQSpec())
    with pytest.raises(ValueError, match="codes must lie"):
        dfq_dequantize(np.full((1, 128), 16, np.uint8), np.ones((1, 1)), np.ones((1, 1)), DFQSpec())
