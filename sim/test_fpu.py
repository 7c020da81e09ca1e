"""Co-simulation of the FP building blocks (fpqvar_hw.units.fpu) on Verilator against golden vectors.

One DUT per format, :class:`FPUBundle`: every lane feeds the same operands to an
``FPUnit`` of each operation (add, mul, mad, max, convert to the other format)
through a stream fork/join, so one build checks them all.  Operands come from
``fpqvar_quant.golden.fp32.sample_operands`` (biased toward subnormals, ties,
cancellation, overflow, NaN/Inf; half add-biased, half mul-biased); for FP16 the
first 65,536 ``a`` operands are every FP16 encoding.  Random input gaps and
output backpressure; every beat compared with ``==``; nothing lost.
The slow tier runs 3*10^5 FP16 vectors (products, sums, MADs, max, conversions;
every FP16 encoding as ``a``) and 10^5 FP32 vectors.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from fpqvar_hw.units.fpu import FP16, FP32, FloatFormat, FPOp, FPUnit, float_layout
from fpqvar_quant.golden import fp32 as golden
from sim.runner import BUILD_ROOT, run_cocotb

FMTS = {"fp32": FP32, "fp16": FP16}
OTHER = {"fp32": "fp16", "fp16": "fp32"}
OUTPUTS = ("add", "mul", "mad", "max", "cvt")


class FPUBundle(wiring.Component):
    """Test harness: ``lanes`` x (add, mul, mad, max, convert) on shared operands.

    ``i``: ``ArrayLayout({a, b, c}, lanes)``; ``o``: ``ArrayLayout({add, mul, mad,
    max: fmt, cvt: other format}, lanes)``.  Fork: the input beat is taken when
    every unit is ready; join: the output is valid when every unit is.
    """

    def __init__(self, fmt: FloatFormat, other: FloatFormat, lanes: int):
        self.fmt, self.other, self.lanes = fmt, other, lanes
        fl = float_layout(fmt)
        out = data.StructLayout({"add": fl, "mul": fl, "mad": fl, "max": fl,
                                 "cvt": float_layout(other)})
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(data.StructLayout({"a": fl, "b": fl, "c": fl}),
                                                      lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(out, lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        units = {"add": FPUnit(FPOp.ADD, self.fmt, lanes=self.lanes),
                 "mul": FPUnit(FPOp.MUL, self.fmt, lanes=self.lanes),
                 "mad": FPUnit(FPOp.MAD, self.fmt, lanes=self.lanes),
                 "max": FPUnit(FPOp.MAX, self.fmt, lanes=self.lanes),
                 "cvt": FPUnit(FPOp.CONVERT, self.fmt, dst=self.other, lanes=self.lanes)}
        all_ready = 1
        all_valid = 1
        for u in units.values():
            all_ready = all_ready & u.i.ready
            all_valid = all_valid & u.o.valid
        m.d.comb += [self.i.ready.eq(all_ready), self.o.valid.eq(all_valid)]
        for name, u in units.items():
            m.submodules[name] = u
            m.d.comb += [u.i.valid.eq(self.i.valid & all_ready),
                         u.o.ready.eq(self.o.ready & all_valid)]
            for lane in range(self.lanes):
                for k in FPOp(u.op).operands:
                    m.d.comb += getattr(u.i.payload[lane], k).eq(getattr(self.i.payload[lane], k))
                m.d.comb += getattr(self.o.payload[lane], name).eq(u.o.payload[lane])
        return m


def vectors(fmt: str, n: int, seed: int) -> dict[str, np.ndarray]:
    half = n // 2
    a1, b1, c1 = golden.sample_operands(fmt, half, seed, op="add", arity=3)
    a2, b2, c2 = golden.sample_operands(fmt, n - half, seed + 1000, op="mul", arity=3)
    a, b, c = np.concatenate([a1, a2]), np.concatenate([b1, b2]), np.concatenate([c1, c2])
    if fmt == "fp16":
        k = min(n, 1 << 16)
        a[:k] = np.arange(k, dtype=np.uint16)
    return {"a": a, "b": b, "c": c,
            "add": golden.add(a, b, fmt), "mul": golden.mul(a, b, fmt), "mad": golden.mad(a, b, c, fmt),
            "max": golden.maximum(a, b, fmt), "cvt": golden.convert(a, fmt, OTHER[fmt])}


def run(fmt: str, n: int, seed: int, lanes: int, idle: float = 0.1, backpressure: float = 0.2):
    n = -(-n // lanes) * lanes
    dut = FPUBundle(FMTS[fmt], FMTS[OTHER[fmt]], lanes)
    path = BUILD_ROOT / "vectors" / f"fpu-{fmt}-{n}-{seed}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **vectors(fmt, n, seed))
    w, wo = FMTS[fmt].width, FMTS[OTHER[fmt]].width
    run_cocotb(dut, name=f"fpu-bundle-{fmt}-l{lanes}", test_module="sim.tb_fpu", seed=seed,
               params=dict(vectors=str(path), lanes=lanes, seed=seed, idle=idle,
                           backpressure=backpressure,
                           inputs=[["a", w], ["b", w], ["c", w]],
                           outputs=[[k, wo if k == "cvt" else w] for k in OUTPUTS]))


LANES = {"fp16": 16, "fp32": 8}


@pytest.mark.slow   # the Verilator build of the bundle takes minutes; the sim itself seconds
@pytest.mark.parametrize("fmt,seed", [("fp16", 1), ("fp32", 2)])
def test_fpu_quick(fmt, seed):
    run(fmt, 20_000, seed, LANES[fmt])


@pytest.mark.slow
@pytest.mark.parametrize("fmt,seed,n", [("fp16", 10, 300_000), ("fp32", 11, 100_000)])
def test_fpu_sweep(fmt, seed, n):
    run(fmt, n, seed, LANES[fmt], idle=0.05, backpressure=0.1)
