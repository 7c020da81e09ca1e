"""The simulator-side DRAM of the top's co-simulations (``fpqvar_hw.host.simdram``), checked
with an independent AXI4 master: cocotbext-axi's ``AxiMaster`` drives random reads and
writes (unaligned, any length, bursts split at 4 KiB by the master) with random pauses
through a pass-through component in the harness, against a Python copy of the memory; the
backdoor (zero-time reads and writes) must agree with what went over AXI; out-of-range
accesses get SLVERR; a burst that breaks the protocol (wrong size, across 4 KiB) is
counted in ``dram_errors``; latency and stalls only change the timing (sim/tb_simdram.py).
"""
from __future__ import annotations

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from fpqvar_hw.engines import axi
from fpqvar_hw.host.simdram import HARNESS_TOP, harness_verilog
from sim.runner import run_cocotb

WORDS_LOG2 = 12          # 64 KiB


class AxiPassThrough(wiring.Component):
    """``s`` (an AXI4 slave port, driven by the test's master) wired straight to ``m_axi``;
    it counts read beats in a register, so that it has the clock and reset the harness drives."""

    def __init__(self):
        super().__init__({"s": In(axi.AXI4Signature()), "m_axi": Out(axi.AXI4Signature())})

    def elaborate(self, platform):
        m = Module()
        for name, member in self.m_axi.signature.members.items():
            if member.flow == Out:
                m.d.comb += getattr(self.m_axi, name).eq(getattr(self.s, name))
            else:
                m.d.comb += getattr(self.s, name).eq(getattr(self.m_axi, name))
        beats = Signal(16)
        with m.If(self.m_axi.rvalid & self.m_axi.rready):
            m.d.sync += beats.eq(beats + 1)
        return m


@pytest.fixture(scope="module")
def dut():
    return AxiPassThrough()


@pytest.mark.parametrize("latency,stall,pause,seed,wlatency",
                         [(0, 0, 0.0, 1, 0), (8, 64, 0.3, 2, 5), (40, 200, 0.5, 3, 150)])
def test_random_traffic(dut, latency, stall, pause, seed, wlatency):
    run_cocotb(dut, name="simdram", test_module="sim.tb_simdram", testcase="random_traffic",
               harness=(HARNESS_TOP, harness_verilog(dut, words_log2=WORDS_LOG2)),
               params=dict(latency=latency, stall=stall, pause=pause, seed=seed, n=120,
                           size=(1 << WORDS_LOG2) * axi.DATA_BYTES, wlatency=wlatency))


@pytest.mark.parametrize("wlatency", [0, 150])
def test_write_latency(dut, wlatency):
    run_cocotb(dut, name="simdram", test_module="sim.tb_simdram", testcase="write_latency",
               harness=(HARNESS_TOP, harness_verilog(dut, words_log2=WORDS_LOG2)),
               params=dict(latency=4, stall=0, pause=0.0, seed=5, n=0, wlatency=wlatency,
                           size=(1 << WORDS_LOG2) * axi.DATA_BYTES))


def test_errors(dut):
    run_cocotb(dut, name="simdram", test_module="sim.tb_simdram", testcase="errors",
               harness=(HARNESS_TOP, harness_verilog(dut, words_log2=WORDS_LOG2)),
               params=dict(latency=3, stall=30, pause=0.0, seed=9, n=0,
                           size=(1 << WORDS_LOG2) * axi.DATA_BYTES))


def test_bad_size(dut):
    with pytest.raises(ValueError, match="words_log2"):
        harness_verilog(dut, words_log2=30)
