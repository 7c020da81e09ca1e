#!/usr/bin/env python3
"""Wall time and peak memory of the main command, cold synthesis cache.

    python benchmarks/build_time.py                 # python build.py --platform vck190
    python benchmarks/build_time.py -- --no-synth   # extra build.py arguments after --

Runs ``build.py --platform vck190`` (default preset, full size) in a child process
into its own output folder (``build/bench-build-time/``) with an empty synthesis
cache (``build/bench-build-time-synth/``, emptied first), measures the wall time
and the peak resident memory of the child and its children (``RUSAGE_CHILDREN``
``ru_maxrss``: the largest single process, Yosys runs included), and the size of
the emitted RTL file set; prints a table and writes
``benchmarks/results/build_time.md`` / ``.json``.  Targets (issue 13): at most
5 minutes and 2 GB on 2 cores.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET_S, TARGET_GB = 300, 2.0


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    out = REPO / "build" / "bench-build-time"
    cache = REPO / "build" / "bench-build-time-synth"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    cmd = [sys.executable, str(REPO / "build.py"), "--platform", "vck190", "--out", str(out),
           "--synth-cache", str(cache), "--quiet", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    rtl = sorted((out / "rtl").glob("*.v")) if (out / "rtl").exists() else []
    man = json.loads((out / "rtl" / "manifest.json").read_text()) if rtl else {}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":!benchmarks/results"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip()          # results files do not count
    res = {"command": " ".join(["python build.py --platform vck190", *extra]),
           "git_head": head + (" (with uncommitted changes)" if dirty else ""),
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "exit_status": proc.returncode, "wall_s": round(wall, 1),
           "peak_rss_gb": round(peak_gb, 3), "cpus": os.cpu_count(),
           "rtl_files": len(rtl), "rtl_bytes": sum(p.stat().st_size for p in rtl),
           "top_bytes": (out / "rtl" / "fpqvar_top.v").stat().st_size
           if (out / "rtl" / "fpqvar_top.v").exists() else None,
           "rtl_manifest_bytes": man.get("bytes"),
           "targets": {"wall_s": TARGET_S, "peak_rss_gb": TARGET_GB},
           "meets_targets": proc.returncode == 0 and wall <= TARGET_S and peak_gb <= TARGET_GB,
           "summary_first_line": (proc.stdout.splitlines() or [""])[0]}
    if proc.returncode != 0:
        res["stderr_tail"] = proc.stderr[-2000:]
    rows = [("command", res["command"]), ("commit", res["git_head"]),
            ("date (UTC)", res["date_utc"]), ("exit status", res["exit_status"]),
            ("wall", f"{wall:.1f} s (target {TARGET_S} s)"),
            ("peak RSS (largest process)", f"{peak_gb:.2f} GB (target {TARGET_GB} GB)"),
            ("CPUs", res["cpus"]),
            ("RTL files / bytes", f"{res['rtl_files']} / {res['rtl_bytes']:,}"),
            ("top Verilog bytes", f"{res['top_bytes']:,}" if res["top_bytes"] else "no top"),
            ("meets targets", res["meets_targets"])]
    table = "| measure | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    print(table)
    if proc.returncode != 0:
        # a failed build is not a measurement: the committed results stay as they are
        print(f"build_time.py: the build failed (exit {proc.returncode}); results not written. "
              f"stderr: {proc.stderr.strip().splitlines()[-1:] or ['-']}", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "build_time.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / "build_time.md").write_text(
        "# Main command: wall time and peak memory (cold synthesis cache)\n\n"
        "From `python benchmarks/build_time.py" + (" -- " + " ".join(extra) if extra else "")
        + "` (issue 13).\n\n" + table)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
