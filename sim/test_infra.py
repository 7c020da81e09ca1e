"""Self-test of the co-simulation infrastructure (sim/streams.py, sim/runner.py)."""
import pytest
from amaranth import Module, unsigned
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.runner import run_cocotb


class XorFifo(wiring.Component):
    """Stream FIFO (depth 3) whose output payload is the input XOR a constant."""

    def __init__(self, xor: int):
        self.xor = xor
        super().__init__({"i": In(stream.Signature(unsigned(16))),
                          "o": Out(stream.Signature(unsigned(16)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.q = q = fifo.SyncFIFOBuffered(width=16, depth=3)
        m.d.comb += [q.w_data.eq(self.i.payload ^ self.xor), q.w_en.eq(self.i.valid),
                     self.i.ready.eq(q.w_rdy),
                     self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready)]
        return m


@pytest.mark.parametrize("seed,idle,backpressure", [(1, 0.0, 0.0), (2, 0.3, 0.5), (3, 0.7, 0.2)])
def test_stream_roundtrip(seed, idle, backpressure):
    run_cocotb(XorFifo(0xA5A5), name="infra-xorfifo", test_module="sim.tb_infra",
               params=dict(seed=seed, idle=idle, backpressure=backpressure, n=500, xor=0xA5A5))


@pytest.mark.parametrize("case", [dict(corrupt_index=17), dict(drop_last=True)])
def test_scoreboard_catches_errors(case):
    run_cocotb(XorFifo(0xA5A5), name="infra-xorfifo", test_module="sim.tb_infra",
               params=dict(seed=4, idle=0.2, backpressure=0.3, n=100, xor=0xA5A5, expect_fail=True, **case))


def test_failing_cocotb_test_fails_pytest():
    """A DUT that differs from the model (wrong XOR constant) must fail the pytest test."""
    with pytest.raises(pytest.fail.Exception, match="cocotb tests failed"):
        run_cocotb(XorFifo(0x0001), name="infra-xorfifo-bad", test_module="sim.tb_infra",
                   params=dict(seed=5, idle=0.1, backpressure=0.1, n=50, xor=0xA5A5))


def test_port_names_of_both_verilog_header_styles():
    """The ports made public to VPI (fpqvar_hw.host.cosim): Amaranth's non-ANSI header and
    the harness's ANSI one; a missing module is an error, not an empty list."""
    from fpqvar_hw.host.cosim import CosimError, verilog_port_names

    text = ("module sub(a, b);\n  input a;\nendmodule\n"
            "module top(clk, rst, i__payload, o__valid);\n  input clk;\nendmodule\n"
            "module h #(parameter integer N = 2) (\n    input wire clk,\n    input wire [7:0] x__y,\n"
            "    output reg [N-1:0] z\n);\nendmodule\n")
    assert verilog_port_names(text, "top") == ["clk", "rst", "i__payload", "o__valid"]
    assert verilog_port_names(text, "h") == ["clk", "x__y", "z"]
    with pytest.raises(CosimError, match="not found"):
        verilog_port_names(text, "to")
