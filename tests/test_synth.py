"""fpqvar_hw.flow.synth: result parsing (fast) and real Yosys runs (slow): the
e2m1 x e2m1 magnitude table fits in 8 LUTs and an e2m1 MAC lane costs fewer
LUTs than an int4 lane built the same way."""
from __future__ import annotations

import time

import pytest

from fpqvar_hw.units.dot import GroupDot
from fpqvar_hw.units.multiplier import MagnitudeCore, MulPair, MulVariant
from fpqvar_hw.flow.synth import SynthResult, synthesize


def test_result_properties():
    r = SynthResult(top="t", cells={"LUT6": 3, "LUT2": 1, "FDRE": 5, "FDSE": 1, "CARRY8": 2,
                                    "CARRY4": 1, "DSP48E2": 1, "MUXF7": 1, "RAMB36E2": 2,
                                    "URAM288": 1}, depth=7)
    assert (r.lut, r.lut6, r.ff, r.carry, r.dsp, r.muxf, r.bram, r.uram) == (4, 3, 6, 3, 1, 1, 2, 1)
    assert r.luts_by_size == {2: 1, 6: 3}
    assert r.as_dict()["depth"] == 7


def test_bad_top_name():
    with pytest.raises(ValueError, match="Verilog identifier"):
        synthesize("module x; endmodule", top="1bad")


@pytest.mark.slow
def test_e2m1_magnitude_table_is_one_lut_per_bit(tmp_path):
    r = synthesize(MagnitudeCore(pair=MulPair.E2M1_E2M1), cache_dir=tmp_path)
    assert r.lut <= 8 and r.carry == 0 and r.depth == 1, r.as_dict()
    t0 = time.time()
    again = synthesize(MagnitudeCore(pair=MulPair.E2M1_E2M1), cache_dir=tmp_path)
    assert again.cells == r.cells and time.time() - t0 < 5   # served from the cache


@pytest.mark.slow
def test_e2m1_lane_cheaper_than_int4_lane():
    kw = dict(group_size=16, lanes=16, variant=MulVariant.LUT)
    fp4 = synthesize(GroupDot(pair=MulPair.E2M1_E2M1, **kw))
    int4 = synthesize(GroupDot(pair=MulPair.INT4_INT4, **kw))
    assert fp4.lut < int4.lut, (fp4.as_dict(), int4.as_dict())


def test_zero_memory_initialisers_are_left_out_of_the_yosys_text():
    """An Amaranth memory's all-zero ``initial`` block (one line per word: minutes in
    Yosys' frontend at the matrix engine's 16 x 2,048 words) is dropped from the text Yosys
    reads; a non-zero one, or any other initial block, stays."""
    from amaranth.back import verilog
    from amaranth.hdl import Module, Signal
    from amaranth.lib.memory import Memory

    from fpqvar_hw.flow.synth import strip_zero_memory_init

    def mem_text(init):
        m = Module()
        m.submodules.mem = mem = Memory(shape=16, depth=64, init=init)
        rd, wr = mem.read_port(), mem.write_port()
        a, d, q, we = Signal(6), Signal(16), Signal(16), Signal()
        m.d.comb += [rd.addr.eq(a), wr.addr.eq(a), wr.data.eq(d), wr.en.eq(we), q.eq(rd.data)]
        return verilog.convert(m, ports=[a, d, q, we])

    zero = mem_text([])
    assert zero.count("= 16'h0000;") == 64
    out = strip_zero_memory_init(zero)
    assert "initial begin" in zero and "= 16'h0000;" not in out
    assert out.count("\n") == zero.count("\n") - 66            # the block and its 64 words
    kept = mem_text([0] * 63 + [5])
    assert strip_zero_memory_init(kept) == kept
    other = "module x;\n  reg r;\n  initial begin\n    r = 1'h0;\n  end\nendmodule\n"
    assert strip_zero_memory_init(other) == other
