#!/usr/bin/env python3
"""Build the FPQVAR accelerator for one platform and preset.

    python build.py --platform vck190                 # default preset w4a4
    python build.py --platform vck190 --preset int4   # integer baseline
    python build.py --platform verilog --param tm=8 --param batch=4 --no-synth
    python build.py --list-presets

Writes, under ``--out`` (default ``build/<platform>-<preset>/``): each unit's
Verilog and JSON manifest, the top-level Verilog once the accelerator top exists,
Vivado Tcl + XDC (generated, never run here), a resource report
(``resources.json/.md``), a throughput report (``throughput.json/.md``) with a
roofline and a per-step cycle breakdown PNG, a Verilator lint log, and prints a
summary table.  The same inputs give byte-identical outputs.  See docs/build.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fpqvar_hw.config import (AcceleratorConfig, apply_overrides, get_preset,  # noqa: E402
                              preset_names, PRESETS)
from fpqvar_hw.platform import get_platform, platform_names, PLATFORMS  # noqa: E402


def _param_help() -> str:
    import dataclasses
    names = [f.name for f in dataclasses.fields(AcceleratorConfig) if f.name != "preset"]
    return ("override one AcceleratorConfig field, e.g. --param tm=8 --param fc2_act=e2m1fn "
            "--param batch=4 (repeatable); fields: " + ", ".join(names))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build.py",
        description="Generate the FPQVAR accelerator (RTL, manifests, resource and throughput "
                    "reports, Vivado collateral) for one platform and preset.",
        epilog="Outputs are deterministic. Yosys results are cached by content hash under "
               "build/.synth-cache/. Vivado Tcl/XDC are generated but NOT run (no Vivado "
               "here). See docs/build.md.")
    p.add_argument("--platform", default="vck190", choices=platform_names(),
                   help="target platform (default: vck190): " + "; ".join(
                       f"{n}: {pl.description}" for n, pl in PLATFORMS.items()))
    p.add_argument("--preset", default="w4a4", choices=preset_names(),
                   help="accelerator preset (default: w4a4 = FPQVAR e2m1 + DFQ FC2 + GHT)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help=_param_help())
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: build/<platform>-<preset>/)")
    p.add_argument("--list-presets", action="store_true",
                   help="print the presets and their formats, then exit")
    p.add_argument("--no-synth", action="store_true",
                   help="skip the Yosys synth_xilinx resource step (reports say so)")
    p.add_argument("--no-lint", action="store_true",
                   help="skip the Verilator lint step")
    p.add_argument("--jobs", type=int, default=2, metavar="N",
                   help="parallel Yosys processes (default: 2)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p


def list_presets() -> str:
    lines = [f"{'preset':7} {'qkv a/w':17} {'proj a/w':17} {'fc1 a/w':17} {'fc2 a/w':15} "
             f"{'group':5} {'scale':5} {'rot':4} {'array':9}"]
    for name, c in PRESETS.items():
        def aw(layer: str) -> str:
            return f"{c.act_format(layer)}/{c.weight_format(layer)}"
        lines.append(f"{name:7} {aw('qkv'):17} {aw('proj'):17} {aw('fc1'):17} {aw('fc2'):15} "
                     f"{c.group_size:<5} {c.scale_format.value:5} {c.rotation.value:4} "
                     f"{c.tm}x{c.tn}x{c.lanes}")
    return "\n".join(lines)


class BuildError(RuntimeError):
    """A build step failed in a way the user must fix (message says how)."""


def run_build(platform, config, out, *, synth, lint, jobs, verbose):
    raise BuildError("the build steps are not wired yet; only --help and --list-presets work")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print(list_presets())
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    try:
        platform = get_platform(args.platform)
        config = apply_overrides(get_preset(args.preset), args.param)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    out = args.out if args.out is not None else REPO / "build" / f"{platform.name}-{config.preset}"
    try:
        result = run_build(platform, config, out, synth=not args.no_synth, lint=not args.no_lint,
                           jobs=args.jobs, verbose=not args.quiet)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    print(result.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
