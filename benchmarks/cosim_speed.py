"""Simulated cycles per second of the RTL top co-simulation (Verilator + cocotb).

Runs the first ``--steps`` scale steps of the tiny digits image on the simulated top at
the test configuration (``fpqvar_hw.host.driver.rtl_config()``: w4a4, tm=2, tn=2,
lanes=32, quant_lanes=8; C=128, max_kv=30; package fp4-dfq-ght, class 3, seed 0) through
:func:`fpqvar_hw.host.rtl.run_rtl_image`, and reports per step the device's CYCLES
counter, the wall time of the step as the host saw it (program registers, run to the
interrupt, read the counters) and their ratio. The tokens are checked against the golden
backend (a wrong run is not a speed).

Memory model measured: the one ``run_rtl_image`` uses: the simulator-side AXI4 memory of
:mod:`fpqvar_hw.host.simdram` (Verilog, no Python per cycle; its default read latency and
random stalls). The baseline is the committed whole-image run of the same top before this
simulator set-up (``benchmarks/results/top_cycles/driver-rtl-image-steps0-3-coarse1-fine1.json``:
every signal public to VPI, g++ -O0, cocotbext-axi's ``AxiRam`` clocked in Python).

    python benchmarks/cosim_speed.py [--steps 4]

Writes ``benchmarks/results/cosim_speed.md`` and ``.json``. The Verilator build of the top
is cached under build/sim (a cold build adds minutes); elaboration of the top to Verilog
is part of the total wall time, not of the per-step figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "cosim_speed"
BASELINE = ROOT / "benchmarks" / "results" / "top_cycles" / "driver-rtl-image-steps0-3-coarse1-fine1.json"


def _head() -> str:
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/cosim_speed.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="scale steps to run, 1..4 (default 4: the whole image)")
    args = ap.parse_args(argv)
    if not 1 <= args.steps <= 4:
        print(f"error: --steps must be 1..4 (the digits VAR has 4 scale steps), got {args.steps}", file=sys.stderr)
        return 2
    from fpqvar_hw.cache import write_text_atomic
    from fpqvar_hw.host import backends, records
    from fpqvar_hw.host import driver as drv
    from fpqvar_hw.host import package as hostpkg
    from fpqvar_hw.host.rtl import run_rtl_image

    cfg = backends.rtl_config()
    package = hostpkg.build_package(hostpkg.PackageSettings(preset="fp4-dfq-ght"))
    sampling = records.Sampling()
    pkg = hostpkg.load_package_checked(package)
    golden = asyncio.run(drv.generate(hostpkg.host_model_from_package(pkg),
                                      backends.GoldenBackend(pkg, rows=2, config=cfg, dram_base=backends.RTL_DRAM_BASE,
                                                        max_kv=backends.RTL_MAX_KV),
                                      [3], 0, sampling, max_steps=args.steps)).tokens
    t0 = time.perf_counter()
    run = run_rtl_image(package, config=cfg, C=128, max_kv=backends.RTL_MAX_KV, dram_base=backends.RTL_DRAM_BASE, label=3,
                        seed=0, sampling=sampling, out=ROOT / "build" / "cosim-speed", expect_tokens=golden,
                        max_steps=args.steps)
    wall = time.perf_counter() - t0
    if run.tokens != golden:
        print(f"error: RTL tokens {run.tokens} differ from the golden backend's {golden}", file=sys.stderr)
        return 1
    rows = [{"step": s.si, "cycles": s.perf.cycles, "wall_s": round(s.perf.wall_s, 2),
             "cycles_per_s": round(s.perf.cycles / s.perf.wall_s, 1)} for s in run.steps]
    total_c = sum(r["cycles"] for r in rows)
    total_w = sum(s.perf.wall_s for s in run.steps)
    dev = json.loads((ROOT / "build" / "cosim-speed" / "cycles.json").read_text())["device"]
    base_doc = json.loads(BASELINE.read_text())
    base = {"file": str(BASELINE.relative_to(ROOT)), "cycles": base_doc["total"]["cycles"],
            "wall_s": base_doc["total"]["wall_s"],
            "cycles_per_s": round(base_doc["total"]["cycles"] / base_doc["total"]["wall_s"], 1)}
    dram = dev.get("dram", {})
    doc = {"memory_model": f"{dram.get('model', '?')} (Verilog; read latency {dram.get('latency_cycles')} cycles, "
                           f"each handshake withheld with probability {dram.get('stall_per_256')}/256)",
           "config": cfg.as_dict(),
           "C": 128, "max_kv": backends.RTL_MAX_KV, "steps": rows, "cycles": total_c, "step_wall_s": round(total_w, 2),
           "cycles_per_s": round(total_c / total_w, 1), "total_wall_s": round(wall, 1),
           "tokens_equal_golden": True, "baseline": base,
           "speedup_vs_baseline": round(total_c / total_w / base["cycles_per_s"], 1),
           "git_head": _head(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "host": platform.node(), "cpus": os.cpu_count(),
           "load_avg": [round(x, 2) for x in os.getloadavg()]}
    lines = ["# Co-simulation speed of the RTL top", "",
             f"`python benchmarks/cosim_speed.py --steps {args.steps}`: tiny digits image (fp4-dfq-ght, class 3, "
             "seed 0) on the simulated top, w4a4 tm=2 tn=2 lanes=32 quant_lanes=8, C=128, max_kv=30; tokens equal "
             "to the golden backend's.", "",
             f"Memory model: {doc['memory_model']}. {doc['cpus']} CPUs, load average {doc['load_avg']} at the end "
             "(shared machine).", "",
             "| step | CYCLES | step wall (s) | cycles/s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['cycles']:,} | {r['wall_s']} | {r['cycles_per_s']:,} |" for r in rows]
    lines += [f"| all | {total_c:,} | {total_w:.1f} | {doc['cycles_per_s']:,} |", "",
              f"Total wall of the run (elaboration, build check, model loading, steps): {wall:.0f} s.", "",
              f"Baseline (`{base['file']}`, every signal public, g++ -O0, cocotbext-axi AxiRam): "
              f"{base['cycles']:,} cycles in {base['wall_s']:,.0f} s, {base['cycles_per_s']:,} cycles/s; "
              f"this run is {doc['speedup_vs_baseline']}x that (target 10x). Commit {doc['git_head']}, "
              f"{doc['date_utc']} UTC."]
    md = "\n".join(lines) + "\n"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT.with_suffix(".md"), md)
    write_text_atomic(OUT.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    print(md)
    print(f"wrote {OUT.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
