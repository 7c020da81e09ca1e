"""Numerics corrections of issue 16, each pinned by a hand-worked case.

1. ``tie="reference"`` follows the official FPQVAR CUDA kernel: every tie goes
   toward +inf (positives away from zero, negatives toward zero; on the DFQ
   negative side: toward zero).  The contract's default stays ``tie="even"``.
2. DFQ all-zero groups give codes 0 (and zero scales), as the golden model and
   ``docs/numerics.md`` section 3; before, ``fpqvar_quant.dfq`` gave ``1 | 0``.
3. The project's block Hadamard is ``H = Had D / sqrt(G)`` (signs on the
   transform's output); the official code's is ``D Had / sqrt(G)`` (signs on the
   input), its transpose (= its inverse).
4. ``e8m0fnu.encode(+-Inf)`` raises ``ValueError`` (it returned the NaN code 0xFF).
5. ``mxfp4`` (OCP MX interop) has no group Hadamard, in the PTQ and in the
   accelerator preset tables.

Expected codes are written out by hand, with the derivation in the comments.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from fpqvar_quant.dfq import DFQSpec, dfq_dequantize, dfq_quantize
from fpqvar_quant.formats import get_format
from fpqvar_quant.ght import fwht, ght, ght_matrix
from fpqvar_quant.golden import hadamard as gh
from fpqvar_quant.golden import quantizer as gq
from fpqvar_quant.quantize import QuantSpec, quantize


def _hex(a) -> list[str]:
    return [f"0x{int(c):02X}" for c in np.asarray(a).ravel()]


# ===================================================================== 1. ties
# e2m1fn grid (magnitude code k -> value): 0:0, 1:0.5, 2:1, 3:1.5, 4:2, 5:3, 6:4, 7:6.
# Per-tensor fp16 scale with absmax 3.0: s = RNE_fp16(3 / 6) = 0.5 (exact), so the
# element x quantizes q = x / 0.5 = 2x.  Each x below is exactly halfway between two
# scaled grid points (s * midpoint):
#   x      q     between codes     even (LSB 0)   toward +inf (reference)
#   0.125  0.25  0 (0)   | 1 (0.5)  0              1
#   0.375  0.75  1 (0.5) | 2 (1)    2              2
#   0.625  1.25  2 (1)   | 3 (1.5)  2              3
#   0.875  1.75  3 (1.5) | 4 (2)    4              4
#   1.25   2.5   4 (2)   | 5 (3)    4              5
#   1.75   3.5   5 (3)   | 6 (4)    6              6
#   2.5    5     6 (4)   | 7 (6)    6              7
# Negatives (sign bit 0x8): "even" is symmetric (the same magnitude codes); toward
# +inf is toward zero, i.e. the SMALLER magnitude code: 0, 1, 2, 3, 4, 5, 6.
TIES_X = [0.125, 0.375, 0.625, 0.875, 1.25, 1.75, 2.5]
E2M1_EVEN = [0x0, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6]
E2M1_REF_POS = [0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7]
E2M1_REF_NEG = [0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE]          # -0.125 -> -0 keeps the sign code


def test_e2m1_ties_hand_worked_scale_half():
    x = np.array([[3.0] + TIES_X + [-v for v in TIES_X]], np.float32)
    for tie, pos, neg in (("even", E2M1_EVEN, [c | 0x8 for c in E2M1_EVEN]),
                          ("reference", E2M1_REF_POS, E2M1_REF_NEG)):
        r = quantize(x, QuantSpec("e2m1fn", "tensor", tie=tie))
        assert float(r.scales) == 0.5
        # the absmax 3.0 itself: q = 6, the grid maximum, code 0x7
        assert _hex(r.codes) == _hex([0x7] + pos + neg), tie


def test_e2m1_reference_ties_dequantize_toward_plus_inf():
    # the same ties as values: reference = the larger grid value of the two
    x = np.array([[3.0, 1.25, -1.25, 2.5, -2.5, 0.125, -0.125]], np.float32)
    r = quantize(x, QuantSpec("e2m1fn", "tensor", tie="reference"))
    # 1.25 -> 1.5 (3 * 0.5), -1.25 -> -1.0, 2.5 -> 3.0, -2.5 -> -2.0, 0.125 -> 0.25, -0.125 -> -0
    np.testing.assert_array_equal(r.dequant[0], [3.0, 1.5, -1.0, 3.0, -2.0, 0.25, -0.0])
    assert np.signbit(r.dequant[0, -1])


def test_int4_ties_hand_worked():
    # int4 (-7..7), absmax 7 -> fp16 scale 1; x = k + 0.5 is a tie between k and k+1.
    # even: 0.5->0 1.5->2 2.5->2 6.5->6; reference (toward +inf): 0.5->1 1.5->2 2.5->3 6.5->7;
    # negatives, reference: -0.5->0 -1.5->-1 -2.5->-2 -6.5->-6 (two's complement: 0x0 0xF 0xE 0xA);
    # even: -0.5->0 -1.5->-2 -2.5->-2 -6.5->-6 (0x0 0xE 0xE 0xA).
    x = np.array([[7.0, 0.5, 1.5, 2.5, 6.5, -0.5, -1.5, -2.5, -6.5]], np.float32)
    even = quantize(x, QuantSpec("int4", "tensor")).codes[0]
    ref = quantize(x, QuantSpec("int4", "tensor", tie="reference")).codes[0]
    assert _hex(even) == _hex([0x7, 0x0, 0x2, 0x2, 0x6, 0x0, 0xE, 0xE, 0xA])
    assert _hex(ref) == _hex([0x7, 0x1, 0x2, 0x3, 0x7, 0x0, 0xF, 0xE, 0xA])


def test_e3m0_ties_hand_worked():
    # e3m0fn (bias 3, no mantissa): code E -> 2^(E-3) for E >= 1, code 0 -> 0;
    # grid 0, .25 (1), .5 (2), 1 (3), 2 (4), 4 (5), 8 (6), 16 (7).  absmax 16 -> scale 1.
    # 0.75 is between codes 2 and 3: even -> 2 (0.5), reference -> 3 (1.0);
    # 3.0 between 4 and 5: even -> 4 (2), reference -> 5 (4);
    # 1.5 between 3 and 4: even -> 4 (2), reference -> 4;
    # negatives under reference go toward zero: -0.75 -> 0x8|2, -3 -> 0x8|4, -1.5 -> 0x8|3.
    x = np.array([[16.0, 0.75, 3.0, 1.5, -0.75, -3.0, -1.5]], np.float32)
    even = quantize(x, QuantSpec("e3m0fn", "tensor")).codes[0]
    ref = quantize(x, QuantSpec("e3m0fn", "tensor", tie="reference")).codes[0]
    assert _hex(even) == _hex([0x7, 0x2, 0x4, 0x4, 0xA, 0xC, 0xC])
    assert _hex(ref) == _hex([0x7, 0x3, 0x5, 0x4, 0xA, 0xC, 0xB])


def test_dfq_fp4_reference_ties_negative_side_toward_zero():
    # s_neg = RNE(1.75 / 1.75) = 1, s_pos = RNE(6 / 6) = 1.
    # e1m2fn magnitudes: code k -> k/4 (0 .. 1.75).  Negative ties and their codes:
    #   -0.125 (0|1):  even 0 -> 0x8,  reference toward zero 0 -> 0x8
    #   -0.375 (1|2):  even 2 -> 0xA,  reference 1 -> 0x9
    #   -0.625 (2|3):  even 2 -> 0xA,  reference 2 -> 0xA
    #   -0.875 (3|4):  even 4 -> 0xC,  reference 3 -> 0xB
    #   -1.375 (5|6):  even 6 -> 0xE,  reference 5 -> 0xD
    # Positive e2m1fn ties go up under reference: 0.25 (0|1) -> 1, 2.5 (4|5) -> 5,
    # 5.0 (6|7) -> 7; even: 0, 4, 6.  -1.75 -> 0xF and 6 -> 0x7 are exact.
    x = np.array([[-1.75, -0.125, -0.375, -0.625, -0.875, -1.375, 6.0, 0.25, 2.5, 5.0]], np.float32)
    even = dfq_quantize(x, DFQSpec("fp4", group_size=None))
    ref = dfq_quantize(x, DFQSpec("fp4", group_size=None, tie="reference"))
    for r in (even, ref):
        assert float(r.scale_neg[0, 0]) == 1.0 and float(r.scale_pos[0, 0]) == 1.0
    assert _hex(even.codes) == _hex([0xF, 0x8, 0xA, 0xA, 0xC, 0xE, 0x7, 0x0, 0x4, 0x6])
    assert _hex(ref.codes) == _hex([0xF, 0x8, 0x9, 0xA, 0xB, 0xD, 0x7, 0x1, 0x5, 0x7])
    np.testing.assert_array_equal(
        ref.dequant[0], [-1.75, -0.0, -0.25, -0.5, -0.75, -1.25, 6.0, 0.5, 3.0, 6.0])


def test_dfq_fp6_reference_ties_negative_side_toward_zero():
    # fp6: negatives on the integers 0..31 with s_neg = RNE(31 / 31) = 1; positives
    # e2m3fn with s_pos = RNE(7.5 / 7.5) = 1.  -2.5 ties 2|3: even 2, reference 2
    # (toward zero); -3.5 ties 3|4: even 4, reference 3.  Codes 0x20 | n.
    # e2m3fn: 2.125 ties 2.0 (code 0x10) | 2.25 (0x11): even 0x10, reference 0x11.
    x = np.array([[-31.0, -2.5, -3.5, 7.5, 2.125]], np.float32)
    even = dfq_quantize(x, DFQSpec("fp6", group_size=None)).codes[0]
    ref = dfq_quantize(x, DFQSpec("fp6", group_size=None, tie="reference")).codes[0]
    assert _hex(even) == _hex([0x3F, 0x22, 0x24, 0x1F, 0x10])
    assert _hex(ref) == _hex([0x3F, 0x22, 0x23, 0x1F, 0x11])


def _grid_scan(q: np.ndarray, signed_grid: np.ndarray) -> np.ndarray:
    """The official kernel's rule, written as its scan: walk the sorted signed grid
    in ascending order and keep a grid point whenever it is at least as close as the
    best so far (``<=``), so a tie ends on the larger grid value."""
    best = np.full(q.shape, signed_grid[0])
    for g in signed_grid[1:]:
        best = np.where(np.abs(q - g) <= np.abs(q - best), g, best)
    return best


@pytest.mark.parametrize("fmt", ["e2m1fn", "e1m2fn", "e3m0fn", "e2m3fn", "e3m2fn", "int4"])
def test_reference_tie_equals_grid_scan_emulation_seed0(fmt):
    """All midpoints (and grid points, and random values) of the format, both signs,
    at scale 1: tie='reference' equals the kernel's grid scan value for value."""
    f = get_format(fmt)
    grid = f.positive_grid
    signed = np.unique(np.concatenate([-grid, grid]))
    mids = (grid[:-1] + grid[1:]) / 2
    vals = np.concatenate([mids, grid, np.random.default_rng(0).uniform(0, f.max_value, 500)])
    x = np.concatenate([[f.max_value], vals, -vals]).astype(np.float32).reshape(1, -1)
    r = quantize(x, QuantSpec(fmt, "tensor", tie="reference"))
    assert float(r.scales) == 1.0
    want = _grid_scan(x[0].astype(np.float64), signed)
    np.testing.assert_array_equal(r.dequant[0] + 0.0, want.astype(np.float32))   # +0.0: -0 == 0
    # the two tie modes differ exactly on the ties that "even" sends toward -inf
    even = quantize(x, QuantSpec(fmt, "tensor")).dequant[0]
    diff = even != r.dequant[0]
    assert diff.any()
    assert (np.isin(np.abs(x[0][diff]), mids)).all() and (even[diff] < r.dequant[0][diff]).all()


@pytest.mark.parametrize("variant,neg_fmt,pos_fmt", [("fp4", "e1m2fn", "e2m1fn"),
                                                      ("fp6", "int6", "e2m3fn")])
def test_dfq_reference_tie_equals_signed_grid_scan(variant, neg_fmt, pos_fmt):
    """The official DFQ kernels scan the signed negative grid [-max .. 0] and the
    positive grid [0 .. max]: ties toward +inf on both, i.e. toward zero on the
    negative side.  Scales 1 (the extremes are in the group)."""
    fn, fp = get_format(neg_fmt), get_format(pos_fmt)
    gn, gp = fn.positive_grid, fp.positive_grid
    neg_vals = -np.concatenate([(gn[:-1] + gn[1:]) / 2, gn])
    pos_vals = np.concatenate([(gp[:-1] + gp[1:]) / 2, gp[1:]])
    x = np.concatenate([neg_vals, pos_vals]).astype(np.float32).reshape(1, -1)
    r = dfq_quantize(x, DFQSpec(variant, group_size=None, tie="reference"))
    assert float(r.scale_neg[0, 0]) == 1.0 and float(r.scale_pos[0, 0]) == 1.0
    want = np.where(x[0] <= 0, _grid_scan(x[0], -gn[::-1]), _grid_scan(x[0], gp))
    np.testing.assert_array_equal(r.dequant[0] + 0.0, want.astype(np.float32))


def test_default_tie_is_still_even():
    assert QuantSpec("e2m1fn").tie == "even" and DFQSpec().tie == "even"
    from fpqvar_quant.ptq.config import QuantConfig
    assert QuantConfig().tie == "even"


# ============================================================ 2. DFQ zero groups
def test_dfq_all_zero_group_codes_0x0_hand_worked():
    # Two groups of 4.  Group 0 is all zeros (+0 and -0): the contract (numerics.md
    # section 3, "Zero group": absmax 0 -> scale 0x0000 and all codes +0, checked
    # before the side select) gives scale_neg = scale_pos = 0 and codes 0x0 0x0 0x0 0x0,
    # values +0.0.  Group 1 = [-1.75, +0, 6, -0]: s_neg = 1.75/1.75 = 1, s_pos = 6/6 = 1;
    # -1.75 -> 0x8|7 = 0xF, zeros on the negative grid -> 0x8, 6 -> e2m1 max 0x7.
    x = np.array([[0.0, -0.0, 0.0, -0.0, -1.75, 0.0, 6.0, -0.0]], np.float32)
    r = dfq_quantize(x, DFQSpec("fp4", group_size=4))
    assert _hex(r.codes) == _hex([0x0, 0x0, 0x0, 0x0, 0xF, 0x8, 0x7, 0x8])
    np.testing.assert_array_equal(r.scale_neg, [[0.0, 1.0]])
    np.testing.assert_array_equal(r.scale_pos, [[0.0, 1.0]])
    assert not np.signbit(r.dequant[0, :4]).any() and (r.dequant[0, :4] == 0).all()
    assert np.signbit(r.dequant[0, [5, 7]]).all()                   # -0.0 in a mixed group
    np.testing.assert_array_equal(dfq_dequantize(r.codes, r.scale_neg, r.scale_pos,
                                                 DFQSpec("fp4", group_size=4)).view(np.uint32),
                                  r.dequant.view(np.uint32))
    # the golden model (the hardware's contract) agrees code for code, scale for scale
    g = gq.quantize_groups(x.astype(np.float16).view(np.uint16).reshape(2, 4), "dfq4")
    assert _hex(g.codes) == _hex(r.codes)
    np.testing.assert_array_equal(g.scales.view(np.float16).astype(np.float32),
                                  [[0.0, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize("variant,tie", [("fp4", "even"), ("fp6", "even"), ("afpq", "even"),
                                         ("fp4", "reference")])
def test_dfq_all_zero_group_every_variant(variant, tie):
    x = torch.zeros(3, 8)
    x[1, 3] = -0.0
    x[2] = -0.0
    r = dfq_quantize(x, DFQSpec(variant, group_size=8, tie=tie))
    assert torch.equal(r.codes, torch.zeros(3, 8, dtype=torch.uint8))
    assert not torch.signbit(r.dequant).any()
    assert torch.equal(r.scale_neg, torch.zeros(3, 1)) and torch.equal(r.scale_pos, torch.zeros(3, 1))


@pytest.mark.parametrize("fmt,variant", [("dfq4", "fp4"), ("dfq6", "fp6")])
def test_dfq_equals_golden_quantizer_on_corner_groups_seed5(fmt, variant):
    """fpqvar_quant.dfq and the golden quantizer on the golden model's own biased
    random FP16 groups (zero, all-negative, all-positive, outlier, subnormal groups)."""
    bits = gq.random_groups(np.random.default_rng(5), 400, 32)
    bits = bits[~(((bits >> 10) & 0x1F) == 31).any(axis=-1)]      # software raises on NaN/Inf
    bits[0] = 0
    bits[1] = 0x8000                                               # all -0
    g = gq.quantize_groups(bits, fmt)
    r = dfq_quantize(bits.view(np.float16), DFQSpec(variant, group_size=32))
    np.testing.assert_array_equal(r.codes, g.codes)
    np.testing.assert_array_equal(r.scale_neg.astype(np.float16).view(np.uint16)[:, 0], g.scales[:, 0])
    np.testing.assert_array_equal(r.scale_pos.astype(np.float16).view(np.uint16)[:, 0], g.scales[:, 1])
    assert (r.codes[:2] == 0).all()


# ======================================================= 3. Hadamard orientation
# G = 4, Sylvester Had_4 = [[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]],
# signs d = [-1, 1, 1, 1], 1/sqrt(4) = 1/2.
# Project:   H = Had D / 2 -> column j of Had times d_j (column 0 negated):
H_PROJECT = np.array([[-1, 1, 1, 1],
                      [-1, -1, 1, -1],
                      [-1, 1, -1, -1],
                      [-1, -1, -1, 1]]) / 2
# Reference: D Had / 2 -> row i of Had times d_i (row 0 negated) = H_PROJECT.T:
H_REFERENCE = np.array([[-1, -1, -1, -1],
                        [1, -1, 1, -1],
                        [1, 1, -1, -1],
                        [1, -1, -1, 1]]) / 2
SIGNS4 = np.array([-1, 1, 1, 1])


def test_hadamard_orientation_hand_worked_g4():
    np.testing.assert_array_equal(ght_matrix(SIGNS4, 4), H_PROJECT)
    np.testing.assert_array_equal(H_REFERENCE, H_PROJECT.T)
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    # x Had = [1+2+3+4, 1-2+3-4, 1+2-3-4, 1-2-3+4] = [10, -2, -4, 0]; the project then
    # multiplies the OUTPUT by d: [-10, -2, -4, 0] / 2 = [-5, -1, -2, 0]
    np.testing.assert_array_equal(ght(x, SIGNS4, 4), [[-5.0, -1.0, -2.0, 0.0]])
    np.testing.assert_array_equal(x @ H_PROJECT, [[-5.0, -1.0, -2.0, 0.0]])
    # the reference multiplies the INPUT by d: x D = [-1, 2, 3, 4],
    # x D Had = [8, -4, -6, -2], / 2 = [4, -2, -3, -1]
    np.testing.assert_array_equal(x @ H_REFERENCE, [[4.0, -2.0, -3.0, -1.0]])
    np.testing.assert_array_equal(fwht(x * SIGNS4, 4) / 2, [[4.0, -2.0, -3.0, -1.0]])
    # transpose of an orthogonal matrix = its inverse: the project's GHT undoes the
    # reference rotation exactly ([4,-2,-3,-1] Had = [-2, 4, 6, 8], * d / 2 = [1, 2, 3, 4])
    np.testing.assert_array_equal(ght(x @ H_REFERENCE, SIGNS4, 4), x)
    # a one-hot input reads out a row: e_0 H = d / 2 (project) vs d_0 * [1,1,1,1] / 2
    e0 = np.array([[2.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(ght(e0, SIGNS4, 4), [[-1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(e0 @ H_REFERENCE, [[-1.0, -1.0, -1.0, -1.0]])


def test_both_orientations_preserve_the_linear_layer_but_fuse_differently():
    # y = x W^T is preserved by either orthogonal H, as long as x and W use the same one
    W = np.array([[1.0, 0.0, -2.0, 3.0], [0.5, 1.0, 1.0, -1.0]])
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    for H in (H_PROJECT, H_REFERENCE):
        np.testing.assert_allclose((x @ H) @ (W @ H).T, x @ W.T, rtol=0, atol=1e-12)
    # ... but a weight fused with one orientation is wrong with the other
    assert not np.allclose((x @ H_PROJECT) @ (W @ H_REFERENCE).T, x @ W.T)


def test_hardware_golden_hadamard_orientation_one_hot_g128():
    """The hardware contract (golden.hadamard, what the RTL is co-simulated against):
    y_i = RNE_fp16((-1)^d_i sum_j Had[i, j] x_j / 8).  Input x = 8 e_0 (FP16 8.0 =
    0x4800 at j = 0): sum_j Had[i, j] x_j = Had[i, 0] * 8 = 8, so y_i = (-1)^d_i:
    the output IS the sign vector (signs on the output, x Had D).  The reference
    orientation x D Had would give (-1)^d_0 in every position."""
    d = gh.random_signs(42)
    assert 0 < d.sum() < 128                                        # both signs occur
    x = np.zeros(128, np.uint16)
    x[0] = 0x4800                                                   # 8.0
    y = gh.hadamard_groups(x[None], d).y[0]
    np.testing.assert_array_equal(y, np.where(d == 1, 0xBC00, 0x3C00))   # -1.0 / +1.0
    assert len(set(y.tolist())) == 2                                # not the reference's constant


# ================================================================= 4. e8m0fnu
def test_e8m0fnu_inf_raises_nan_and_finite_hand_worked():
    e8 = get_format("e8m0fnu")
    for bad in ([np.inf], [-np.inf], [1.0, np.inf]):
        with pytest.raises(ValueError, match="Inf.*e8m0fnu has no Inf encoding"):
            e8.encode(np.array(bad, np.float32))
        with pytest.raises(ValueError, match="Inf"):
            e8.encode(torch.tensor(bad))
    # documented difference: ml_dtypes turns +Inf into its NaN code
    assert np.array([np.inf], np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)[0] == 0xFF
    # NaN is encodable (the format's NaN code) and stays 0xFF
    assert int(e8.encode(np.array([np.nan]))[0]) == 0xFF
    # finite, by hand: 2^(code - 127); 1 -> 127 = 0x7F, 0.75 (tie 0.5|1, up) -> 0x7F,
    # 2^-127 -> 0x00, 2^127 -> 254 = 0xFE, 3 (tie 2|4, up) -> 129 = 0x81
    x = np.array([1.0, 0.75, 2.0 ** -127, 2.0 ** 127, 3.0])
    assert _hex(e8.encode(x)) == _hex([0x7F, 0x7F, 0x00, 0xFE, 0x81])


# ================================================================== 5. mxfp4
def test_mxfp4_is_ocp_mx_without_group_hadamard_in_both_preset_tables():
    from fpqvar_hw.config import Rotation, ScaleFormat
    from fpqvar_hw.config import get_preset as hw_preset
    from fpqvar_quant.ptq.config import get_preset as ptq_preset
    hw, ptq = hw_preset("mxfp4"), ptq_preset("mxfp4")
    assert hw.rotation is Rotation.NONE and ptq.ght is False
    assert (hw.group_size, hw.scale_format) == (32, ScaleFormat.E8M0)
    assert (ptq.w_group_size, ptq.a_group_size, ptq.scale_format) == (32, 32, "e8m0")
    assert ptq.dfq is None and not ptq.galt
    # the FPQVAR presets keep their group Hadamard
    assert hw_preset("w4a4").rotation is Rotation.GHT and ptq_preset("fp4-fpqvar").ght
