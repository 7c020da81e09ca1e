"""Vector-unit element-wise functions (fpqvar_hw.units.vector.Elementwise) against the golden model.

Amaranth-simulator tier: labelled special values plus seeded random inputs for
every function, random backpressure, bit-exact (NaNs canonical).
cocotb tier (slow): every FP16 input of the exp path (Icarus).
Row units (Softmax, LayerNormModulate, L2NormTemperature): Amaranth simulator,
seeded rows of 64.  The real widths (LayerNorm rows of C = 1024, SOFTMAX rows of
680 with -Inf entries) run on Verilator inside the engine, sim/test_vecengine_wide.py:
in the Amaranth simulator a 1024-wide row took 6-7 minutes.
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.units.fpu import FP16, FP32
from amaranth.hdl import Const, Module
from amaranth.lib import wiring

from fpqvar_hw.units.vector import (Elementwise, Func, FunctionPipe, TreePipe,
                                    connect_function_pipes)
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v
from tests.test_hw_fpu import run_unit

FMTS = {"fp16": FP16, "fp32": FP32}


def golden_path(func: str, x_bits: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Bits out of ``Elementwise(func, src=src, dst=dst)`` per the golden model."""
    x = g.to_float(g.convert(x_bits, src, "fp32") if src == "fp16" else x_bits, "fp32")
    y = g.canon(getattr(v, func)(x), "fp32")
    return g.convert(y, "fp32", "fp16") if dst == "fp16" else y


SPECIAL32 = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x00000001,
             0x007FFFFF, 0x00800000, 0x3F800000, 0xBF800000, 0x42B20000, 0x42B2_0001, 0xC2D00000,
             0xC2D0_0001, 0x7F7FFFFF, 0xFF7FFFFF, 0x40000000, 0x3EFFFFFF, 0x41200000, 0xC1200000]


def check(got, want, x, func):
    bad = np.nonzero(got != want.astype(np.uint64))[0]
    assert len(bad) == 0, (f"{func}: {len(bad)} of {len(got)} differ; first: " + "; ".join(
        f"x={int(x[i]):#x} want {int(want[i]):#x} got {int(got[i]):#x}" for i in bad[:5]))


#: lanes of the simulated unit: two where the function is short (a lane's payload slice
#: checked beside its neighbour's); one for GELU and exp, whose pipelines the simulator
#: spends 13 s (one lane) or 32 s (two) compiling before the first cycle
SIM_LANES = {"gelu": 1, "exp": 1, "reciprocal": 2, "rsqrt": 2}


@pytest.mark.parametrize("func", [f.value for f in Func])
@pytest.mark.parametrize("seed", [5])
def test_elementwise_fp32_amaranth(func, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([
        np.array(SPECIAL32, np.uint32),
        rng.integers(0, 1 << 32, 40, dtype=np.uint64).astype(np.uint32),     # any encoding
        (rng.standard_normal(40) * 8).astype(np.float32).view(np.uint32)])   # typical range
    dut = Elementwise(Func(func), lanes=SIM_LANES[func])
    got = run_unit(dut, [int(b) for b in x], 32, seed)
    check(got, golden_path(func, x, "fp32", "fp32"), x, func)


@pytest.mark.parametrize("func", ["gelu"])   # exp: every FP16 input, below
def test_elementwise_fp16_path_amaranth(func):
    """FP16 in, FP16 out: a stride through every FP16 encoding."""
    x = np.arange(0, 1 << 16, 997, dtype=np.uint16)
    dut = Elementwise(Func(func), lanes=SIM_LANES[func], src=FP16, dst=FP16)
    got = run_unit(dut, [int(b) for b in x], 16, 7)
    check(got, golden_path(func, x, "fp16", "fp16"), x, func)


def test_bad_parameters():
    with pytest.raises(TypeError, match="Func"):
        Elementwise("gelu")
    with pytest.raises(ValueError, match="lanes"):
        Elementwise(Func.EXP, lanes=0)
    with pytest.raises(ValueError, match="shared_functions needs lanes=1"):
        Elementwise(Func.GELU, lanes=2, shared_functions=True)
    with pytest.raises(ValueError, match="func must be one of"):
        FunctionPipe(Func.GELU)
    with pytest.raises(ValueError, match="P"):
        TreePipe(P=6)


class WithFunctionPipes(wiring.Component):
    """A unit built with ``shared_functions=True`` and its function pipes, wired as the
    vector engine wires them (``connect_function_pipes``; the unit always selected)."""

    def __init__(self, unit):
        self.unit, self.lanes, self.latency = unit, unit.lanes, unit.latency
        super().__init__({"i": unit.signature.members["i"], "o": unit.signature.members["o"]})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        wiring.connect(m, wiring.flipped(self.i), self.unit.i)
        wiring.connect(m, self.unit.o, wiring.flipped(self.o))
        pipes = connect_function_pipes(m, [(self.unit, Const(1))])
        assert set(pipes) == set(self.unit.functions)
        return m


def test_shared_tree_users_must_agree_on_P():
    """One TreePipe serves every user: units with different partial-sum counts are refused
    (nothing is built)."""
    from fpqvar_hw.units.vector import FDot, Softmax
    m = Module()
    users = [(Softmax(length=8, P=8, shared_functions=True), Const(1)),
             (FDot(P=16, shared_functions=True), Const(0))]
    with pytest.raises(ValueError, match=r"shared tree differ in P: \[8, 16\]"):
        connect_function_pipes(m, users)
    for obj in [m] + [unit for unit, _ in users]:   # never elaborated: no unused warning
        obj._MustUse__silence = True


def test_gelu_with_shared_function_pipes_amaranth():
    """GELU whose exp and reciprocal are the shared pipes (the vector engine's build): the
    golden bits under gaps and backpressure, and the inline lane's latency."""
    rng = np.random.default_rng(6)
    x = np.concatenate([np.array(SPECIAL32, np.uint32),
                        (rng.standard_normal(40) * 4).astype(np.float32).view(np.uint32)])
    unit = Elementwise(Func.GELU, shared_functions=True)
    assert unit.latency == Elementwise.latency_for(func=Func.GELU)
    assert sorted(unit.signature.members) == ["fn_exp", "fn_reciprocal", "i", "o"]
    got = run_unit(WithFunctionPipes(unit), [int(b) for b in x], 32, 6)
    check(got, golden_path("gelu", x, "fp32", "fp32"), x, "gelu")


def run_exhaustive_fp16(func: str, lanes: int, seed: int) -> None:
    """Every FP16 input through ``Elementwise(func, src=FP16, dst=FP16)`` in cocotb.

    Runs on the selected simulator (Verilator by default, ``SIM=icarus`` for Icarus): one
    lane keeps the C++ build of the pipeline short (as sim/test_gelu_exhaustive.py does);
    the 65,536 beats then simulate in seconds.  (It used to force Icarus, which is not a
    Python package: on a machine without it the suite failed.)
    """
    from sim.runner import BUILD_ROOT, run_cocotb

    x = np.arange(1 << 16, dtype=np.uint16)
    path = BUILD_ROOT / "vectors" / f"elementwise-{func}-fp16-all.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=golden_path(func, x, "fp16", "fp16"))
    run_cocotb(Elementwise(Func(func), lanes=lanes, src=FP16, dst=FP16),
               name=f"elementwise-{func}-fp16-l{lanes}", test_module="sim.tb_fpu", seed=seed,
               params=dict(vectors=str(path), lanes=lanes, seed=seed, idle=0.05, backpressure=0.1,
                           inputs=[["x", 16]], outputs=[["y", 16]]))


@pytest.mark.slow
@pytest.mark.parametrize("func,seed", [("exp", 32)])   # GELU exhaustive: sim/test_gelu_exhaustive.py
def test_elementwise_fp16_exhaustive_cocotb(func, seed):
    run_exhaustive_fp16(func, 1, seed)


@pytest.mark.parametrize("length,rows,seed,idle", [(64, 1, 41, 0.2), (2, 12, 42, 0.0)])
def test_softmax_amaranth(length, rows, seed, idle):
    """Seeded rows (scales from 0.1 to 30, -Inf entries) against golden softmax: one row of
    64 under input gaps, and 12 rows of 2 back to back without gaps (each row's partial-sum
    set still draining when the row two later arrives: the mutants sm-* of
    scripts/mutate_rtl.py).  The simulator spends about 10 s per row of 64 in the
    pipelined exp; rows of 680 and mixed lengths are test_softmax_rows_verilator's."""
    from fpqvar_hw.units.vector import Softmax

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, length)) * rng.uniform(0.1, 30, (rows, 1))).astype(np.float32)
    x[0, ::7] = -np.inf                     # masked positions
    want = g.canon(v.softmax(x, P=8)).reshape(-1)
    dut = Softmax(length=length, P=8)
    got = run_unit(dut, [int(b) for b in x.view(np.uint32).reshape(-1)], 32, seed,
                   max_cycles=rows * (6 * length + 400), idle=idle)
    check(got, want, x.view(np.uint32).reshape(-1), "softmax")


@pytest.mark.slow   # Verilator build of the unit (about a minute) + ~25k cycles
def test_softmax_rows_verilator():
    """Softmax(length=680) (the d16 rows) on Verilator: rows of 680, 677, 1 and 9 and 200
    back to back with random gaps and backpressure, and a stream of rows of mixed lengths
    (more rows than buffers, runs of one-element rows, -Inf entries), bit-exact; streams of
    4 x 680, 6 x 200, 8 x 9 rows without stalls take exactly the cycles of the unit's model
    (sim/tb_row_units.py)."""
    from fpqvar_hw.units.vector import Softmax
    from sim.runner import run_cocotb

    cases = [[3, 680, 0.2, 0.2], [2, 677, 0.1, 0.3], [5, 1, 0.3, 0.3], [4, 9, 0.2, 0.2],
             [14, [16, 1, 9, 5, 1, 24, 13, 8, 1, 1, 1, 2, 24, 7], 0.2, 0.2],
             [4, 680, 0, 0], [6, 200, 0, 0], [8, 9, 0, 0]]
    run_cocotb(Softmax(length=680, P=8), name="softmax-680", test_module="sim.tb_row_units",
               params=dict(unit="softmax", seed=23, cases=cases))


@pytest.mark.parametrize("seed,shared", [(83, False), (84, True)])
def test_l2norm_short_heads_amaranth(seed, shared):
    """Six heads of 8 back to back: a head's partial-sum set is still accumulating when the
    head two later arrives, which must wait for it (the sets alternate).  ``shared``: its
    tree, rsqrt and exp are the shared pipes (the vector engine's build)."""
    from fpqvar_hw.units.vector import L2NormTemperature

    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((6, 8)) * rng.uniform(0.01, 20, (6, 1))).astype(np.float32)
    t = rng.uniform(-3.0, 7.0, (6, 1)).astype(np.float32)
    want = g.canon(v.l2norm_temperature(q, t, P=8)).reshape(-1)
    u = lambda a: a.view(np.uint32).reshape(-1).astype(np.uint64)  # noqa: E731
    words = [int(a) | (int(b) << 32) for a, b in zip(u(q), u(np.repeat(t, 8, axis=1)))]
    dut = L2NormTemperature(head_dim=8, P=8, temperature=True, shared_functions=shared)
    if shared:
        dut = WithFunctionPipes(dut)
    got = run_unit(dut, words, 32, seed, in_width=64, max_cycles=2000)
    check(got, want, u(q), "l2norm_temperature")


@pytest.mark.slow   # Verilator build of the unit + ~10k cycles
def test_l2norm_heads_verilator():
    """L2NormTemperature (heads of 64, temperature) on Verilator: 20 heads (more than its
    buffers) with random gaps and backpressure, bit-exact; 3 and 24 heads without stalls
    take exactly the cycles of the unit's model (sim/tb_row_units.py)."""
    from fpqvar_hw.units.vector import L2NormTemperature
    from sim.runner import run_cocotb

    cases = [[20, 64, 0.2, 0.3], [3, 64, 0, 0], [24, 64, 0, 0]]
    run_cocotb(L2NormTemperature(head_dim=64, P=8, temperature=True), name="l2nt-64",
               test_module="sim.tb_row_units", params=dict(unit="l2nt", seed=29, cases=cases))


@pytest.mark.parametrize("length,rows,seed", [(64, 2, 71), (64, 7, 72), (8, 9, 73)])
def test_layernorm_modulate_amaranth(length, rows, seed):
    """Seeded rows with offsets and scales, per-row adaLN scale/shift, vs golden: two rows;
    more rows than the unit's slots; rows of 8 (= P), shorter than a partial sum's
    drain, so that LOAD, VAR and OUT of neighbouring rows meet every hazard."""
    from fpqvar_hw.units.vector import LayerNormModulate

    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, length)) * rng.uniform(0.01, 50, (rows, 1))
         + rng.standard_normal((rows, 1)) * 5).astype(np.float32)
    sc, sh = (rng.standard_normal((2, rows, length)) * 0.5).astype(np.float32)
    want = g.canon(v.layernorm_modulate(x, sc, sh, P=8)).reshape(-1)
    u = lambda a: a.view(np.uint32).reshape(-1).astype(np.uint64)  # noqa: E731
    words = [int(a) | (int(b) << 32) | (int(c) << 64) for a, b, c in zip(u(x), u(sc), u(sh))]
    dut = LayerNormModulate(length=length, P=8)
    got = run_unit(dut, words, 32, seed, in_width=96, max_cycles=rows * (8 * length + 600))
    check(got, want, u(x), "layernorm_modulate")


@pytest.mark.slow   # Verilator build of the unit + ~10k cycles
def test_layernorm_rows_verilator():
    """LayerNormModulate(length=64) on Verilator: 9 and 5 rows back to back (more than its
    slots) with random gaps and backpressure, bit-exact; streams of 1, 3 and 9 rows
    without stalls take exactly the cycles of the unit's model (sim/tb_row_units.py)."""
    from fpqvar_hw.units.vector import LayerNormModulate
    from sim.runner import run_cocotb

    cases = [[9, 64, 0.2, 0.3], [5, 64, 0.1, 0.1], [1, 64, 0, 0], [3, 64, 0, 0], [9, 64, 0, 0]]
    run_cocotb(LayerNormModulate(length=64, P=8), name="lnmod-64", test_module="sim.tb_row_units",
               params=dict(unit="lnmod", seed=31, cases=cases))


@pytest.mark.parametrize("temperature,seed", [(True, 81), (False, 82)])
def test_l2norm_temperature_amaranth(temperature, seed):
    """Three 64-wide heads (one all-zero: eps path) with per-head log-temperatures
    below and above the ln 100 clamp."""
    from fpqvar_hw.units.vector import L2NormTemperature

    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((3, 64)) * rng.uniform(0.01, 20, (3, 1))).astype(np.float32)
    q[1] = 0.0
    t = np.array([[1.386], [7.0], [-2.0]], np.float32)
    want = g.canon(v.l2norm_temperature(q, t if temperature else None, P=8)).reshape(-1)
    u = lambda a: a.view(np.uint32).reshape(-1).astype(np.uint64)  # noqa: E731
    tt = np.repeat(t, 64, axis=1)
    words = [int(a) | ((int(b) << 32) if temperature else 0) for a, b in zip(u(q), u(tt))]
    dut = L2NormTemperature(head_dim=64, P=8, temperature=temperature)
    got = run_unit(dut, words, 32, seed, in_width=64 if temperature else 32, max_cycles=3 * 600)
    check(got, want, u(q), "l2norm_temperature")
