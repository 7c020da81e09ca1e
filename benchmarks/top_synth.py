#!/usr/bin/env python3
"""Whole-top synthesis of the accelerator, one Yosys run per distinct module.

    python benchmarks/top_synth.py                       # vck190, default preset, cold cache
    python benchmarks/top_synth.py --warm                # keep the cache (a re-run: no Yosys)
    python benchmarks/top_synth.py --param tm=8          # a smaller config (build.py --param)

Emits the accelerator top of ``--platform`` at ``--preset`` (the registry's top entry,
``fpqvar_hw.flow.registry``, emitted with ``fpqvar_hw.emit.Emitter`` as build.py does)
and runs :func:`fpqvar_hw.flow.hsynth.synthesize_hierarchical` on it: every distinct
module once, its children as blackboxes, ``--workers`` Yosys processes at a time, counts
rolled up by instance.  The cache is its own folder (``build/top-synth-cache/``), emptied
first unless ``--warm``.  Measures the wall time (emission and synthesis) and the peak
memory (``getrusage``: this process, and the largest child process - a Yosys run), prints
the whole-top totals and the modules by rolled-up LUTs (own LUTs x instances) with their
logic depth and estimated f_max, and writes ``benchmarks/results/top_synth.md`` / ``.json``
(or ``--out`` + ``.md`` / ``.json``).

Figures are Yosys ``synth_xilinx -family xcup`` mappings without ``-flatten`` (see
``fpqvar_hw/flow/hsynth.py``), estimates of the logic, not a Vivado result.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _pyplatform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fpqvar_hw.config import apply_overrides, get_preset, preset_names   # noqa: E402
from fpqvar_hw.flow.platform import get_platform, platform_names       # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
TOP_N = 15


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="top_synth.py", description=__doc__.split("\n\n")[2])
    p.add_argument("--platform", default="vck190", choices=platform_names())
    p.add_argument("--preset", default="w4a4", choices=preset_names())
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override one AcceleratorConfig field (repeatable), as build.py --param")
    p.add_argument("--model", default=None, help="VAR model the top is built for (default d16)")
    p.add_argument("--workers", type=int, default=2, help="Yosys processes at a time (default 2)")
    p.add_argument("--warm", action="store_true", help="keep the synthesis cache")
    p.add_argument("--cache", type=Path, default=REPO / "build" / "top-synth-cache",
                   help="synthesis cache folder (default build/top-synth-cache/, emptied first "
                        "unless --warm)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per Yosys process")
    p.add_argument("--out", type=Path, default=RESULTS / "top_synth",
                   help="result path without suffix (default benchmarks/results/top_synth)")
    return p


def emit_top(platform_name: str, preset: str, params: list[str], model: str | None):
    """The registry's accelerator top, emitted hierarchically as build.py emits it."""
    from fpqvar_hw.emit import Emitter
    from fpqvar_hw.flow.registry import DEFAULT_MODEL, resolve_units, top_shape
    config = apply_overrides(get_preset(preset), params)
    shape = top_shape(model or DEFAULT_MODEL)
    top = next(r for r in resolve_units(config, shape=shape) if r.spec.is_top)
    if top.pending or not top.ready:
        raise SystemExit(f"top_synth.py: the top cannot be built for this config: "
                         f"{top.pending or top.pending_variants}")
    v = top.ready[0]
    return config, shape, Emitter().emit(v.factory(), v.instance)


def _git_head() -> str:
    """HEAD, and whether the hardware sources differ from it (a shared working tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "fpqvar_hw"], cwd=REPO,
                               text=True, capture_output=True).stdout.split("\n")
    except OSError:
        return "?"
    changed = sorted(ln[3:] for ln in dirty if ln[:2].strip() and not ln.startswith("??"))
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def _path_ends(workdir: str) -> str:
    """First and last net of a module's longest path (its result.json ``ltp`` listing)."""
    try:
        listing = json.loads((Path(workdir) / "result.json").read_text())["ltp"]
    except (OSError, ValueError, KeyError):
        return ""
    nets = re.findall(r"^\s*\d+: (\S+)", listing, re.M)
    return f"`{nets[0]}` -> `{nets[-1]}`" if len(nets) >= 2 else ""


def main(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    if args.workers < 1:
        raise SystemExit(f"top_synth.py: --workers must be >= 1, got {args.workers}")
    from fpqvar_hw.flow.hsynth import synthesize_hierarchical
    from fpqvar_hw.flow.resources import DELAY_MODEL_NOTE, FLOW_NOTE
    platform = get_platform(args.platform)
    cmd = " ".join(["python benchmarks/top_synth.py", *(["--platform", args.platform]),
                    *(f"--param {p}" for p in args.param),
                    *(["--preset", args.preset] if args.preset != "w4a4" else []),
                    *(["--model", args.model] if args.model else []),
                    f"--workers {args.workers}", *(["--warm"] if args.warm else [])])
    if not args.warm:
        shutil.rmtree(args.cache, ignore_errors=True)
    args.cache.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    config, shape, design = emit_top(args.platform, args.preset, args.param, args.model)
    t_emit = time.monotonic() - t0
    print(f"emitted {design.top}: {len(design.modules)} modules, {design.size:,} bytes, "
          f"{t_emit:.1f} s", flush=True)
    t1 = time.monotonic()

    def progress(name, rec):
        print(f"  {time.monotonic() - t1:7.1f} s  {name}: {rec['seconds']} s"
              f"{' (cached)' if rec['cached'] else ''} [{rec['mapper']}]", flush=True)
    res = synthesize_hierarchical(design, workers=args.workers, cache_dir=args.cache,
                                  timeout_s=args.timeout, progress=progress)
    wall = time.monotonic() - t0
    self_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    child_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2

    tot = res.totals
    budget = platform.budget
    bkey = {"LUT": "LUT", "FF": "FF", "DSP": "DSP", "BRAM": "BRAM36", "URAM": "URAM"}
    frac = {k: (round(tot[k] / budget[b], 4) if budget.get(b) else None) for k, b in bkey.items()}
    mods = sorted(res.modules.values(), key=lambda m: -res.contribution(m.name)["LUT"])
    slow = res.slowest
    from fpqvar_hw.flow.hsynth import combinational_modules
    comb = sorted(combinational_modules(design))
    out = {
        "command": cmd, "git_head": _git_head(), "date_utc": time.strftime(
            "%Y-%m-%d %H:%M", time.gmtime()),
        "cpus": os.cpu_count(), "python": _pyplatform.python_version(),
        "platform": platform.name, "preset": config.preset, "params": args.param,
        "model": shape.model, "array": f"{config.tm}x{config.tn}x{config.lanes}",
        "cold_cache": not args.warm, "workers": args.workers,
        "emit_s": round(t_emit, 1), "synth_wall_s": round(res.wall_s, 1),
        "wall_s": round(wall, 1), "yosys_runs": res.yosys_runs,
        "peak_rss_gb": {"self": round(self_gb, 3), "largest_child": round(child_gb, 3),
                        "self_plus_largest_child": round(self_gb + child_gb, 3)},
        "verilog_bytes": design.size, "modules": len(res.modules),
        "instances": sum(m.instances for m in res.modules.values()),
        "totals": tot, "fraction_of_budget": frac, "budget": budget,
        "slowest_module": {"module": slow.name, "fmax_mhz_est": slow.fmax_mhz_est,
                           "depth": slow.depth, "lut_levels": slow.lut_levels,
                           "carry_levels": slow.carry_levels, "path": _path_ends(slow.workdir)},
        "combinational_modules": comb,
        "fallbacks": res.fallbacks,
        "flow": FLOW_NOTE, "delay_model": DELAY_MODEL_NOTE,
        "result": res.as_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")

    def n(x):
        return f"{x:,}"
    L = ["# Whole-top synthesis, one Yosys run per distinct module", "",
         f"Command: `{cmd}`", "",
         f"From `benchmarks/top_synth.py` at {out['git_head']} on {out['date_utc']} UTC, "
         f"{out['cpus']} CPUs ({'cold' if not args.warm else 'warm'} cache, "
         f"{args.workers} Yosys processes at a time). {FLOW_NOTE} Each distinct module is "
         f"synthesised once without `-flatten`, its registered children as blackboxes, its "
         f"combinational children inlined; own cells are "
         f"rolled up by instance (`fpqvar_hw/flow/hsynth.py`).", "",
         "| measure | value |", "|---|---|",
         f"| top | {design.top}, preset {config.preset}, array {out['array']}, built for "
         f"{shape.model}{', params ' + ' '.join(args.param) if args.param else ''} |",
         f"| Verilog | {n(design.size)} bytes, {len(res.modules)} distinct modules, "
         f"{n(out['instances'])} module instances |",
         f"| wall | {wall:.1f} s (emit {t_emit:.1f} s + synthesis {res.wall_s:.1f} s; "
         f"{res.yosys_runs} Yosys runs) |",
         f"| peak memory | this process {self_gb:.2f} GB; largest Yosys process "
         f"{child_gb:.2f} GB (RUSAGE_CHILDREN ru_maxrss) |",
         f"| slowest module | {slow.name}: depth {slow.depth} ({slow.lut_levels} LUT + "
         f"{slow.carry_levels} carry levels), est. {slow.fmax_mhz_est} MHz; path "
         f"{_path_ends(slow.workdir) or '?'} |",
         "| ABC9 fallbacks | "
         + (", ".join(f"{k} ({v})" for k, v in res.fallbacks.items()) or "none") + " |",
         "", "## Whole-top totals", "",
         "| | LUT | LUT6 | FF | DSP | CARRY | MUXF | BRAM36 | URAM | LUTRAM |",
         "|---|---|---|---|---|---|---|---|---|---|",
         "| total | " + " | ".join(n(tot[k]) for k in ("LUT", "LUT6", "FF", "DSP", "CARRY",
                                                       "MUXF", "BRAM", "URAM", "LUTRAM")) + " |",
         f"| {platform.name} budget | " + " | ".join(
             n(budget[b]) if budget.get(b) else "-" for b in
             ("LUT", None, "FF", "DSP", None, None, "BRAM36", "URAM", None)) + " |",
         "| fraction | " + " | ".join(
             (f"{frac[k]:.1%}" if k in frac and frac[k] is not None else "-") for k in
             ("LUT", "LUT6", "FF", "DSP", "CARRY", "MUXF", "BRAM", "URAM", "LUTRAM")) + " |",
         "", f"## Modules by rolled-up LUTs (own x instances), largest {TOP_N}", "",
         "Own: one instance without its registered child modules (with its inlined "
         "combinational ones). Depth: `ltp -noff` inside the module "
         "(flip-flops and registered child instances cut), split into LUT + carry levels; f_max from "
         f"the delay model ({DELAY_MODEL_NOTE}). s: Yosys seconds of the module's run.", "",
         "| module | inst | own LUT | own FF | own DSP | own CARRY | LUT x inst | FF x inst "
         "| depth | L+C | f_max MHz | s | mapper |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in mods[:TOP_N]:
        c = res.contribution(m.name)
        L.append(f"| {m.name} | {n(m.instances)} | {n(m.own['LUT'])} | {n(m.own['FF'])} | "
                 f"{m.own['DSP']} | {n(m.own['CARRY'])} | {n(c['LUT'])} | {n(c['FF'])} | "
                 f"{m.depth} | {m.lut_levels}+{m.carry_levels}"
                 f"{'' if m.levels_classified else '?'} | {m.fmax_mhz_est} | {m.seconds} | "
                 f"{m.mapper} |")
    if len(mods) > TOP_N:
        L.append(f"| ({len(mods) - TOP_N} more modules in the JSON) | | | | | | | | | | | | |")
    L += ["", "## Notes", "",
          "- Combinational modules (no clocked process in them or below them), synthesised "
          "inside each registered parent's run, so a path through one is counted whole in "
          "the parent's depth: " + (", ".join(f"`{c}`" for c in comb) if comb else "none")
          + ". A path that crosses a boundary between registered modules combinationally "
            "(a stream's ready) is still split between the two modules' depths.",
          "- Output ports driven through logic rather than straight from a register "
          "(the path continues in the module fed; depth up to the port): "
          + (", ".join(f"`{m.name}.{p}` {v['depth']}" for m in mods
                       for p, v in sorted(m.unregistered_outputs.items(),
                                          key=lambda kv: -kv[1]["depth"])) or "none") + ".",
          "- No optimisation crosses a module boundary (no `-flatten`): the totals are those "
          "of the design as emitted. On a small design the roll-up equals Yosys' own "
          "`stat -top` of the reassembled netlists and of a whole-text run (LUTs within 1 %: "
          "ABC9's mapping depends slightly on the rest of the process), "
          "`tests/test_hsynth.py`.",
          "- Buffers Yosys does not infer as BRAM/URAM are counted as what it maps them to "
          "(LUTRAM or flip-flops); nothing is estimated here.", ""]
    md = "\n".join(L)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
