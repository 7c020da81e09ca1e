"""Resource table of the hardware units from Yosys ``synth_xilinx -family xcup``.

    python benchmarks/unit_resources.py                # every registered unit
    python benchmarks/unit_resources.py --filter mac   # names matching a regex
    python benchmarks/unit_resources.py --list

For each entry: LUTs (all sizes; each takes one LUT6 site), LUT6, FF, DSP48E2,
CARRY (CARRY4/8), MUXF7/8, logic depth (``ltp -noff``: cells on the longest
register-to-register path, see ``fpqvar_hw/synth.py``), and for multiply-
accumulate units the LUTs per lane (whole unit incl. adder tree, group-sum
register and the shared FP32 scale/accumulate tail, divided by the lane count).
UltraScale+ mapping (closest open flow to the Versal target): an estimate, not
a Vivado result.  Results are cached under ``build/synth/``.

To add a unit, append an :class:`Entry` to ``REGISTRY`` (a name, a group, a
zero-argument builder returning an Amaranth component, and ``lanes`` if it is a
MAC array).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpqvar_hw.dot import GroupDot                                    # noqa: E402
from fpqvar_hw.multiplier import (MagnitudeCore, MulPair, MulVariant, Multiplier,  # noqa: E402
                                  check_variant)
from fpqvar_hw.synth import synthesize                                 # noqa: E402


@dataclass(frozen=True)
class Entry:
    name: str
    group: str
    build: Callable[[], object]
    lanes: int = 0          # MAC lanes (0: not a MAC array)
    note: str = ""


def _mul_entries() -> list[Entry]:
    out = []
    for pair in MulPair:
        if pair.is_float:
            out.append(Entry(f"mul {pair.name.lower()} magnitude core", "multiplier",
                             lambda p=pair: MagnitudeCore(pair=p)))
        for var in MulVariant:
            try:
                check_variant(pair, var)
            except ValueError:
                continue
            out.append(Entry(f"mul {pair.name.lower()} {var.value}", "multiplier",
                             lambda p=pair, v=var: Multiplier(pair=p, variant=v)))
    return out


def _mac(pair: MulPair, var: MulVariant, *, dfq: bool = False, lanes: int = 128) -> Entry:
    tag = "dfq_e2m1" if dfq else pair.name.lower()
    return Entry(f"mac{lanes} {tag} {var.value}", "group dot (G=128)",
                 lambda: GroupDot(pair=pair, variant=var, dfq=dfq, group_size=128, lanes=lanes),
                 lanes=lanes)


#: Every unit in the table, in print order.  Other units append here.
REGISTRY: list[Entry] = [
    *_mul_entries(),
    _mac(MulPair.E2M1_E2M1, MulVariant.LUT),
    _mac(MulPair.E2M1_E2M1, MulVariant.DSP),
    _mac(MulPair.INT4_INT4, MulVariant.LUT),
    _mac(MulPair.INT4_INT4, MulVariant.DSP),
    _mac(MulPair.E2M1_E2M1, MulVariant.LUT, dfq=True),
    _mac(MulPair.E2M3_E2M3, MulVariant.DECOMPOSED, lanes=32),
]


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="", help="regex on the unit name (default: all)")
    ap.add_argument("--list", action="store_true", help="list the registered units and exit")
    ap.add_argument("--no-abc9", action="store_true",
                    help="use Yosys' default ABC flow instead of -abc9 (see fpqvar_hw/synth.py)")
    args = ap.parse_args(argv)
    entries = [e for e in REGISTRY if re.search(args.filter, e.name)]
    if args.list:
        for e in entries:
            print(f"{e.group:20s} {e.name}")
        return 0
    if not entries:
        print(f"no unit matches {args.filter!r}; see --list", file=sys.stderr)
        return 2
    hdr = f"{'unit':34s} {'LUT':>7s} {'LUT6':>6s} {'FF':>6s} {'DSP':>4s} {'CARRY':>5s} " \
          f"{'MUXF':>5s} {'depth':>5s} {'LUT/lane':>8s}"
    print("Yosys synth_xilinx -family xcup -flatten -noiopad" + ("" if args.no_abc9 else " -abc9"))
    print(hdr)
    print("-" * len(hdr))
    group = None
    for e in entries:
        if e.group != group:
            group = e.group
            print(f"# {group}")
        t0 = time.time()
        print(f"{e.name:34s} ...", end="\r", file=sys.stderr, flush=True)
        r = synthesize(e.build(), abc9=not args.no_abc9)
        per = f"{r.lut / e.lanes:8.1f}" if e.lanes else f"{'':8s}"
        print(f"{e.name:34s} {r.lut:7d} {r.lut6:6d} {r.ff:6d} {r.dsp:4d} {r.carry:5d} "
              f"{r.muxf:5d} {r.depth:5d} {per}", flush=True)
        if time.time() - t0 > 5:
            print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
