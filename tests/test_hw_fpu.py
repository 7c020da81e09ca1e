"""FP building blocks (fpqvar_hw.units.fpu) in the Amaranth simulator against the golden model.

Fast tier: labelled corner cases plus a few thousand seeded biased vectors per
operator, with random output backpressure.  The >= 10^6-vector sweeps run in
cocotb/Verilator (sim/test_fpu.py).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from fpqvar_hw.units.fpu import (FP16, FP32, AddPipe, FPOp, FPUnit, FloatFormat, MulPipe, RoundPack,
                                 RoundPackPipe, add_front, mul_front, unrounded_layout)
from fpqvar_quant.golden import fp32 as golden
from tests.hw_streams import collect, drive, simulate

LANES = 8
FMTS = {"fp32": FP32, "fp16": FP16}


def run_unit(dut, lane_words: list[int], out_width: int, seed: int, in_width: int | None = None,
             max_cycles: int | None = None, idle: float = 0.2) -> np.ndarray:
    """Stream per-lane packed input words through ``dut`` (``i``/``o`` array streams of
    ``dut.lanes`` lanes); return the per-lane output words in order.

    The words are padded with zeros to whole beats.  Random input gaps and output
    backpressure (``idle``: the input's gap probability) from ``seed``; fails if a beat is lost, if ``dut`` produces more
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
        lambda ctx: drive(ctx, dut.i, packed, np.random.default_rng(seed), idle=idle),
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


# (10^5 to 10^6 operand sets of every operation run on Verilator in sim/test_fpu.py)
@pytest.mark.parametrize("seed,n", [(11, 400)])
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


def _unrounded_words(rng: np.random.Generator, n: int, sig_bits: int, exp_bits: int,
                     fmt: FloatFormat) -> list[int]:
    """Random ``unrounded_layout`` records biased to the rounding cases: short and zero
    significands, trailing zeros (ties), exponents around the subnormal and overflow
    boundaries, sticky, NaN and Inf flags."""
    words = []
    for _ in range(n):
        sig = int(rng.integers(0, 1 << sig_bits, dtype=np.uint64))
        r = rng.random()
        if r < 0.3:
            sig >>= int(rng.integers(0, sig_bits + 1))
        elif r < 0.4:
            sig = 0
        elif r < 0.55:
            sig &= ~((1 << int(rng.integers(0, sig_bits))) - 1)
        if rng.random() < 0.7:
            e = int(rng.integers(fmt.emin - sig_bits - 8, fmt.emax + 8))
        else:
            e = int(rng.integers(-(1 << (exp_bits - 1)), 1 << (exp_bits - 1)))
        flags = [rng.random() < 0.3, rng.random() < 0.5, rng.random() < 0.03, rng.random() < 0.03]
        w = sig | ((e & ((1 << exp_bits) - 1)) << sig_bits)
        for k, f in enumerate(flags):     # sticky, sign, nan, inf
            w |= int(f) << (sig_bits + exp_bits + k)
        words.append(w)
    return words


class _PipeHarness:
    """``AddPipe``, ``MulPipe`` and ``RoundPackPipe`` beside their combinational
    counterparts (``RoundPack(add_front)``, ``RoundPack(mul_front)``, ``RoundPack``) on
    shared inputs and one enable."""

    def __init__(self, fmt: FloatFormat, sig_bits: int, exp_bits: int):
        m = self.m = Module()
        self.a, self.b = Signal(fmt.width), Signal(fmt.width)
        self.u = Signal(unrounded_layout(sig_bits, exp_bits))
        self.en = Signal()
        self.pipes = {"add": AddPipe(fmt), "mul": MulPipe(fmt),
                      "round": RoundPackPipe(fmt, sig_bits=sig_bits, exp_bits=exp_bits)}
        for name, p in self.pipes.items():
            m.submodules[f"pipe_{name}"] = p
            m.d.comb += p.en.eq(self.en)
            if name == "round":
                m.d.comb += p.i.eq(self.u)
            else:
                m.d.comb += [p.a.as_value().eq(self.a), p.b.as_value().eq(self.b)]
        self.comb = {}
        for name, u in (("add", add_front(m, self.a, self.b, fmt)),
                        ("mul", mul_front(m, self.a, self.b, fmt)), ("round", self.u)):
            rp = RoundPack(fmt, sig_bits=len(u.sig), exp_bits=len(u.exp))
            m.submodules[f"comb_{name}"] = rp
            m.d.comb += rp.i.eq(u)
            self.comb[name] = rp.o.as_value()


def run_pipes(fmt: FloatFormat, a: np.ndarray, b: np.ndarray, u: list[int], seed: int,
              sig_bits: int = 48, exp_bits: int = 12) -> dict[str, np.ndarray]:
    """Drive the operands through :class:`_PipeHarness` with ``en`` low on ~30 % of the
    cycles (and random operands while it is low); check every pipe's ``o`` after every
    clock edge against the combinational result of the input ``latency`` enabled cycles
    earlier (and that it holds while stalled).  Returns the combinational results."""
    h = _PipeHarness(fmt, sig_bits, exp_bits)
    rng = np.random.default_rng(seed)
    n = len(a)
    comb = {k: [] for k in h.pipes}
    errors = []

    async def tb(ctx):
        k = 0
        while True:
            en = k >= n or rng.random() >= 0.3
            if en and k < n:
                ctx.set(h.a, int(a[k])), ctx.set(h.b, int(b[k])), ctx.set(h.u.as_value(), u[k])
            else:    # stalled (or draining): inputs are don't-care
                ctx.set(h.a, int(rng.integers(0, 1 << fmt.width)))
                ctx.set(h.b, int(rng.integers(0, 1 << fmt.width)))
                ctx.set(h.u.as_value(), u[int(rng.integers(0, n))])
            ctx.set(h.en, en)
            if en and k < n:
                for name in comb:
                    comb[name].append(ctx.get(h.comb[name]))
            before = {name: ctx.get(p.o.as_value()) for name, p in h.pipes.items()}
            await ctx.tick()
            if en:
                k += 1
            for name, p in h.pipes.items():
                got = ctx.get(p.o.as_value())
                if not en:
                    if got != before[name]:
                        errors.append(f"{name}: o changed while en = 0")
                elif k >= p.latency and k - p.latency < n:
                    want = comb[name][k - p.latency]
                    if got != want:
                        errors.append(f"{name} element {k - p.latency}: pipe {got:#x} "
                                      f"combinational {want:#x}")
            if k >= n + max(p.latency for p in h.pipes.values()):
                break

    sim = Simulator(h.m)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert not errors, f"{len(errors)} errors: " + "; ".join(errors[:6])
    return {k: np.array(v, dtype=np.uint64) for k, v in comb.items()}


@pytest.mark.parametrize("fmt", ["fp32", "fp16"])
def test_pipes_equal_combinational(fmt):
    """AddPipe / MulPipe / RoundPackPipe == the combinational path, under a stalling
    ``en``, on corner pairs (zeros, subnormals, max, Inf, NaN, ties), biased random
    operands and random unrounded records; the combinational path == golden.  (A third of
    the corner pairs and 60 random operand pairs per operation: FPUnit, built on these
    pipes, meets golden on 10^5-10^6 operand sets per operation on Verilator with random
    stalls, sim/test_fpu.py.)"""
    f = FMTS[fmt]
    corners = corner_values(f)
    ca, cb = (np.array(x, dtype=np.uint64) for x in zip(*itertools.product(corners, corners)))
    ra, rb = golden.sample_operands(fmt, 60, 21, op="add")
    ma, mb = golden.sample_operands(fmt, 60, 22, op="mul")
    a = np.concatenate([ca[::3], ra, ma]).astype(np.uint64)
    b = np.concatenate([cb[::3], rb, mb]).astype(np.uint64)
    rng = np.random.default_rng(23)
    u = _unrounded_words(rng, len(a), 48, 12, f)
    comb = run_pipes(f, a, b, u, seed=24)
    check("add", fmt, comb["add"], golden.add(a, b, fmt), {"a": a, "b": b})
    check("mul", fmt, comb["mul"], golden.mul(a, b, fmt), {"a": a, "b": b})


def test_pipe_latency_and_parameters():
    add, mul = AddPipe.latency_for(fmt=FP32), MulPipe.latency_for(fmt=FP32)
    assert add == FPOp.ADD.latency == FPUnit.latency_for(op=FPOp.ADD)
    assert mul == FPOp.MUL.latency
    assert FPUnit.latency_for(op=FPOp.MAD) == add + mul
    with pytest.raises(TypeError, match="FloatFormat"):
        AddPipe("fp32")
    with pytest.raises(TypeError, match="FloatFormat"):
        MulPipe(32)
    with pytest.raises(ValueError, match="sig_bits"):
        RoundPackPipe(FP32, sig_bits=1, exp_bits=10)


def test_fp16_to_fp32_widening_is_exhaustively_exact():
    """``fpu.fp16_to_fp32`` (the vector engine's gather stage: FDOT's FP16 B operand, KV6
    scales) equals the golden conversion for all 65,536 FP16 patterns (subnormals, +-0,
    +-Inf, every NaN to the canonical 0x7FC00000)."""
    from fpqvar_hw.units.fpu import fp16_to_fp32
    m = Module()
    h = Signal(16)
    out = fp16_to_fp32(m, h)
    got = np.zeros(1 << 16, dtype=np.uint32)
    sim = Simulator(m)

    async def bench(ctx):
        for v in range(1 << 16):
            ctx.set(h, v)
            got[v] = ctx.get(out)
    sim.add_testbench(bench)
    sim.run()
    want = golden.convert(np.arange(1 << 16, dtype=np.uint16), "fp16", "fp32")
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, [(hex(int(i)), hex(int(got[i])), hex(int(want[i]))) for i in bad[:8]]
