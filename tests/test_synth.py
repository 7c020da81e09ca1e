"""fpqvar_hw.flow.synth: result parsing (fast) and real Yosys runs (slow): the
e2m1 x e2m1 magnitude table fits in 8 LUTs and an e2m1 MAC lane costs fewer
LUTs than an int4 lane built the same way."""
from __future__ import annotations

import time
from pathlib import Path

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

    from fpqvar_hw.emit import strip_zero_memory_init

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


def _rom_text(top: str, array: bool) -> str:
    """A registered 64 x 8 lookup table, as a ``case`` (Yosys makes it a ROM) or as a
    written memory (declared ``reg [7:0] mem [0:63]``)."""
    vals = [(37 * i * i + 11) % 256 for i in range(64)]
    if array:
        return (f"module {top}(input clk, input we, input [5:0] a, input [7:0] d, "
                f"output reg [7:0] q);\n  reg [7:0] mem [0:63];\n"
                f"  always @(posedge clk) begin if (we) mem[a] <= d; q <= mem[a]; end\n"
                f"endmodule\n")
    arms = "".join(f"      6'd{i}: t = 8'd{v};\n" for i, v in enumerate(vals))
    return (f"module {top}(input clk, input [5:0] a, output reg [7:0] q);\n  reg [7:0] t;\n"
            f"  always @* begin\n    case (a)\n{arms}    endcase\n  end\n"
            f"  always @(posedge clk) q <= t;\nendmodule\n")


@pytest.mark.slow
def test_memory_mapping_is_skipped_only_where_nothing_is_mapped(tmp_path, monkeypatch):
    """``synth_xilinx``'s map_memory label is left out of a design that declares no memory
    (the per-module runs of tests/test_hsynth.py equal one whole-flow run of the whole
    text); a ROM Yosys makes of a ``case`` fails the assertion and gets the whole flow,
    with the whole flow's result; a declared memory gets the whole flow at once."""
    from fpqvar_hw.flow import synth as S

    arith = ("module arith(input clk, input [15:0] a, b, output reg [15:0] q);\n"
             "  always @(posedge clk) q <= (a + b) ^ {a[7:0], b[15:8]};\nendmodule\n")
    rom = _rom_text("rom", False)
    assert not S.declares_memory(arith) and not S.declares_memory(rom)
    assert S.declares_memory(_rom_text("ram", True))
    fast = {n: S.synthesize(t, top=n, cache_dir=tmp_path / "fast")
            for n, t in (("arith", arith), ("rom", rom))}
    logs = {n: (Path(r.workdir) / "yosys.log").read_text() for n, r in fast.items()}
    assert "brams_xcu_map" not in logs["arith"] and fast["arith"].lut > 0
    assert "brams_xcu_map" in logs["rom"]                    # the second, whole run
    monkeypatch.setattr(S, "declares_memory", lambda text: True)     # the whole flow
    full = S.synthesize(rom, top="rom", cache_dir=tmp_path / "full")
    assert fast["rom"].cells == full.cells and fast["rom"].depth == full.depth
