"""FP building blocks (fpqvar_hw.units.fpu) in the Amaranth simulator against the golden model.

Fast tier: labelled corner cases plus a few thousand seeded biased vectors per
operator, with random output backpressure.  The >= 10^6-vector sweeps run in
cocotb/Verilator (sim/test_fpu.py).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fpqvar_hw.units.fpu import FP16, FP32, FPOp, FPUnit, FloatFormat
from fpqvar_quant.golden import fp32 as golden
from tests.hw_streams import collect, drive, simulate

LANES = 8
FMTS = {"fp32": FP32, "fp16": FP16}


def run_unit(dut, lane_words: list[int], out_width: int, seed: int, in_width: int | None = None,
             max_cycles: int | None = None) -> np.ndarray:
    """Stream per-lane packed input words through ``dut`` (``i``/``o`` array streams of
    ``dut.lanes`` lanes); return the per-lane output words in order.

    The words are padded with zeros to whole beats.  Random input gaps and output
    backpressure from ``seed``; fails if a beat is lost, if ``dut`` produces more
    beats than it was given, or if it has not finished after ``max_cycles``.
    """
    lanes = dut.lanes
    in_width = in_width or len(dut.i.payload.as_value()) // lanes
    n = len(lane_words)
    beats = -(-n // lanes)
    words = list(lane_words) + [0] * (beats * lanes - n)
    packed = [sum(int(words[t * lanes + lane]) << (lane * in_width) for lane in range(lanes))
              for t in range(beats)]
    latency = getattr(dut, "latency", 2)
    _, out = simulate(
        dut,
        lambda ctx: drive(ctx, dut.i, packed, np.random.default_rng(seed), idle=0.2),
        lambda ctx: collect(ctx, dut.o, beats, np.random.default_rng(seed + 1), stall=0.3,
                            quiet=latency + 4),
        max_cycles=max_cycles or (beats * 4 + 4 * latency + 200), period=1e-6)
    mask = (1 << out_width) - 1
    results = [(beat >> (lane * out_width)) & mask for beat in out for lane in range(lanes)]
    return np.array(results[:n], dtype=np.uint64)


def run_op(dut: FPUnit, operands: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """Pack named operands (payload field order) into lane words and run ``dut``."""
    w = dut.fmt.width
    words = [sum(int(operands[k][i]) << (j * w) for j, k in enumerate(dut.op.operands))
             for i in range(len(next(iter(operands.values()))))]
    return run_unit(dut, words, dut.dst.width, seed)


def check(op: str, fmt: str, got: np.ndarray, want: np.ndarray, ops: dict[str, np.ndarray]):
    bad = np.nonzero(got != want.astype(np.uint64))[0]
    if len(bad):
        lines = [f"{len(bad)} mismatches of {len(got)} ({op} {fmt}):"]
        for i in bad[:8]:
            args = ", ".join(f"{k}={int(v[i]):#x} ({golden.to_float(v[i:i+1], fmt)[0]!r})"
                             for k, v in ops.items())
            lines.append(f"  [{i}] {args}: want {int(want[i]):#x} got {int(got[i]):#x}")
        pytest.fail("\n".join(lines))


def corner_values(fmt: FloatFormat) -> np.ndarray:
    M, E = fmt.man_bits, fmt.exp_bits
    vals = [0, 1, 2, 3, (1 << M) - 1, 1 << M, (1 << M) | 1, fmt.inf - 1, fmt.inf, fmt.inf | 1,
            fmt.qnan, fmt.bias << M, (fmt.bias << M) | 1, ((fmt.bias - 1) << M) | ((1 << M) - 1),
            (fmt.bias + 1) << M, ((fmt.emax + fmt.bias) << M) | (1 << (M - 1)), 1 << (M - 1)]
    vals += [v | (1 << (fmt.width - 1)) for v in vals]
    return np.array(vals, dtype=np.uint64)


@pytest.mark.parametrize("fmt", ["fp32", "fp16"])
@pytest.mark.parametrize("op", ["add", "mul", "max"])
def test_corner_pairs(op, fmt):
    """Every pair of labelled corner values (zeros, subnormals, max, Inf, NaN, 1+ulp)."""
    vals = corner_values(FMTS[fmt])
    a, b = (np.array(x, dtype=np.uint64) for x in zip(*itertools.product(vals, vals)))
    dut = FPUnit(FPOp(op), FMTS[fmt], lanes=LANES)
    got = run_op(dut, {"a": a, "b": b}, seed=1)
    want = {"add": golden.add, "mul": golden.mul, "max": golden.maximum}[op](a, b, fmt)
    check(op, fmt, got, want, {"a": a, "b": b})


@pytest.mark.parametrize("seed,n", [(11, 400), pytest.param(12, 4000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("fmt", ["fp32", "fp16"])
@pytest.mark.parametrize("op", ["add", "mul", "mad"])
def test_random_biased(op, fmt, seed, n):
    arity = 3 if op == "mad" else 2
    ops = dict(zip("abc", golden.sample_operands(fmt, n, seed, op="mul" if op == "mad" else op,
                                                  arity=arity)))
    dut = FPUnit(FPOp(op), FMTS[fmt], lanes=LANES)
    got = run_op(dut, ops, seed=seed)
    fn = {"add": golden.add, "mul": golden.mul, "mad": golden.mad}[op]
    check(op, fmt, got, fn(*ops.values(), fmt), ops)


@pytest.mark.parametrize("src,dst", [("fp16", "fp32"), ("fp32", "fp16")])
def test_convert(src, dst):
    if src == "fp16":
        a = np.arange(1 << 16, dtype=np.uint64)[::61]  # a stride covering every binade
    else:
        (a,) = golden.sample_operands("fp32", 500, 5, arity=1)
        # around the FP16 range: subnormal edge, ties at 2^-25, overflow at 65520
        e = np.random.default_rng(6).integers(127 - 26, 127 + 17, 500)
        a = np.concatenate([a, (e << 23) | (a & 0x807FFFFF), [0x477FF000, 0x477FEFFF, 0x33000000,
                                                              0x33000001, 0xB3800000]])
    a = a.astype(np.uint64)
    dut = FPUnit(FPOp.CONVERT, FMTS[src], dst=FMTS[dst], lanes=LANES)
    got = run_op(dut, {"a": a}, seed=3)
    check("convert", f"{src}->{dst}", got, golden.convert(a, src, dst), {"a": a})


def test_bad_parameters():
    with pytest.raises(ValueError, match="dst"):
        FPUnit(FPOp.CONVERT, FP32)
    with pytest.raises(ValueError, match="lanes"):
        FPUnit(FPOp.ADD, FP32, lanes=0)
    with pytest.raises(TypeError, match="FPOp"):
        FPUnit("add", FP32)
