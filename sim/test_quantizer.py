"""Co-simulation of the LUT-based quantizer against the golden model (zero mismatches).

* random seeded groups under random idle/backpressure;
* DFQ corner groups (all negative, all positive, all zero, one huge outlier);
* slow: every one of the 65,536 FP16 patterns per format at several scales.
  A group's scale comes from its absmax, so each sweep group holds an *anchor*
  (+A; DFQ: +A and -A) plus 127 consecutive patterns: every pattern with
  |x| <= A is quantized at the scale s(A); larger patterns set their own group's
  scale, NaN/Inf patterns make error groups -- all checked bit-exactly.
  Anchors: 65504 (max-range scale), 1.0, 2^-14 (subnormal scale), 3 * 2^-24
  and 2^-24 (scale underflow -> 2^-24).
* e8m0 (OCP MX) power-of-two scales: seeded random groups under backpressure
  (default tier, the mxfp4 preset's e2m1fn / group 32) and the same exhaustive
  sweep per format (slow; the anchors then give scales 2^15-emax ... 2^-24-emax,
  i.e. scale codes at both ends of the range, where the key tables saturate).
"""
import numpy as np
import pytest

from fpqvar_hw.units.quantizer import Quantizer
from fpqvar_quant.golden import quantizer as gq
from sim.runner import run_cocotb

ANCHORS = (0x7BFF, 0x3C00, 0x0400, 0x0003, 0x0001)


def sweep_groups(fmt: str, group_size: int, anchor: int) -> np.ndarray:
    """All 65,536 patterns, group_size - n_anchor per group, after the anchor(s)."""
    anchors = [anchor, anchor | 0x8000] if fmt.startswith("dfq") else [anchor]
    per = group_size - len(anchors)
    pats = np.arange(0x10000, dtype=np.uint16)
    n = -(-len(pats) // per)
    pats = np.concatenate([pats, np.zeros(n * per - len(pats), np.uint16)]).reshape(n, per)
    return np.concatenate([np.tile(np.array(anchors, np.uint16), (n, 1)), pats], axis=1)


def dfq_corner_groups(rng: np.random.Generator, group_size: int) -> np.ndarray:
    def f16(v):
        return np.asarray(v, dtype=np.float16).view(np.uint16)

    G = group_size
    groups = [
        f16(-np.abs(rng.standard_normal(G)) * 0.1),                 # all negative
        f16(np.abs(rng.standard_normal(G)) + 0.01),                 # all positive
        np.zeros(G, np.uint16),                                     # all +0
        np.where(rng.random(G) < 0.5, 0x8000, 0).astype(np.uint16),  # +-0 mix
        f16(np.concatenate([[30000.0], rng.standard_normal(G - 1) * 0.01])),   # huge + outlier
        f16(np.concatenate([[-30000.0], rng.standard_normal(G - 1) * 0.01])),  # huge - outlier
        f16(np.where(rng.standard_normal(G) < 0, -0.17, 3.0)),       # GELU-like two-level
        f16(np.concatenate([[-1e-7], np.zeros(G - 1)])),             # one tiny negative
        f16(np.concatenate([[6e-8], -np.abs(rng.standard_normal(G - 1))])),  # min subnormal positive
    ]
    return np.stack(groups)


def _run(fmt, lanes, group_size, x, *, seed, idle, backpressure, tmp_path, scale_format="fp16"):
    q = gq.quantize_groups(x, fmt, scale_format=scale_format)
    vec = tmp_path / "vectors.npz"
    np.savez(vec, x=x, codes=q.codes, scales=q.scales, error=q.error)
    dut = Quantizer(format=fmt, group_size=group_size, lanes=lanes, scale_format=scale_format)
    tag = "" if scale_format == "fp16" else f"-{scale_format}"
    run_cocotb(dut, name=f"quantizer-{fmt}-g{group_size}-l{lanes}{tag}", test_module="sim.tb_quantizer",
               params=dict(vectors=str(vec), lanes=lanes, code_bits=dut.code.size,
                           n_scales=dut.n_scales, scale_bits=dut.scale_bits, seed=seed, idle=idle,
                           backpressure=backpressure))


@pytest.mark.parametrize("fmt,seed", [("e2m1fn", 11), ("dfq4", 12)])
def test_random_groups_backpressure(fmt, seed, tmp_path):
    x = gq.random_groups(np.random.default_rng(seed), 300, 64)
    _run(fmt, 8, 64, x, seed=seed, idle=0.3, backpressure=0.4, tmp_path=tmp_path)


def test_dfq_corner_groups(tmp_path):
    x = dfq_corner_groups(np.random.default_rng(13), 64)
    _run("dfq4", 8, 64, x, seed=13, idle=0.2, backpressure=0.2, tmp_path=tmp_path)


SWEEP = [("e2m1fn", 8), ("dfq4", 8), ("e2m3fn", 8), ("e3m2fn", 8), ("int4", 8), ("int8", 4), ("dfq6", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,lanes", SWEEP)
def test_all_fp16_patterns(fmt, lanes, tmp_path):
    G = 64 if lanes == 8 else 32
    x = np.concatenate([sweep_groups(fmt, G, a) for a in ANCHORS])
    _run(fmt, lanes, G, x, seed=21, idle=0.05, backpressure=0.1, tmp_path=tmp_path)


def test_e8m0_random_groups_backpressure(tmp_path):
    """The mxfp4 preset's quantizer (e2m1fn, group 32, e8m0 scales), narrow lanes."""
    x = gq.random_groups(np.random.default_rng(51), 400, 32)
    _run("e2m1fn", 8, 32, x, seed=51, idle=0.3, backpressure=0.4, tmp_path=tmp_path,
         scale_format="e8m0")


SWEEP_E8M0 = [("e2m1fn", 8), ("dfq4", 8), ("e3m2fn", 8), ("int8", 4), ("dfq6", 4)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt,lanes", SWEEP_E8M0)
def test_all_fp16_patterns_e8m0(fmt, lanes, tmp_path):
    G = 64 if lanes == 8 else 32
    x = np.concatenate([sweep_groups(fmt, G, a) for a in ANCHORS])
    _run(fmt, lanes, G, x, seed=22, idle=0.05, backpressure=0.1, tmp_path=tmp_path,
         scale_format="e8m0")


@pytest.mark.slow
def test_full_width_128_lanes(tmp_path):
    """The default group in one beat (128 lanes), seeded random groups, backpressure."""
    x = gq.random_groups(np.random.default_rng(31), 400, 128)
    _run("e2m1fn", 128, 128, x, seed=31, idle=0.2, backpressure=0.3, tmp_path=tmp_path)
