"""Resource table of the hardware units from Yosys ``synth_xilinx -family xcup``.

    python benchmarks/unit_resources.py                # every registered unit
    python benchmarks/unit_resources.py --filter mac   # names matching a regex
    python benchmarks/unit_resources.py --list
    python benchmarks/unit_resources.py \
        --filter '^(fp|elementwise|softmax|layernorm|l2norm|fdot|residual)' \
        --out benchmarks/results/unit_resources.md   # also write a markdown table

Units: the multipliers and group-dot MAC arrays, the FP32 building blocks of
``fpqvar_hw.units.fpu`` (one lane: add, mul, max, FP16 <-> FP32 convert), the
element-wise functions of ``fpqvar_hw.units.vector`` at one lane (FP32 in and out)
and its row units at small sizes (softmax and layernorm rows of 64, one
64-wide L2-norm head, the FP32 dot product and the residual ``x + g*y``; ``P = 8``).

For each entry: LUTs (all sizes; each takes one LUT6 site), LUT6, FF, DSP48E2,
CARRY (CARRY4/8), MUXF7/8, LUTRAM (distributed-RAM cells: the row buffers),
logic depth (``ltp -noff``: cells on the longest register-to-register path, see
``fpqvar_hw/flow/synth.py``), its split into LUT and carry levels and the
estimated f_max of the project's delay model (``fpqvar_hw/flow/resources.py``:
0.35 ns + 0.45 ns per LUT level + 0.15 ns per carry stage; "?" marks a path
whose levels could not be classified, all counted as LUT levels), and for multiply-accumulate units the LUTs per lane
(whole unit incl. adder tree, group-sum register and the shared FP32
scale/accumulate tail, divided by the lane count).
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

from fpqvar_hw.units.dot import GroupDot, GroupDotV2                        # noqa: E402
from fpqvar_hw.flow.resources import fmax_mhz, path_levels                  # noqa: E402
from fpqvar_hw.units.fpu import FP16, FP32, FPOp, FPUnit                     # noqa: E402
from fpqvar_hw.units.hadamard import GroupHadamard                          # noqa: E402
from fpqvar_hw.units.multiplier import (MagnitudeCore, MulPair, MulVariant, Multiplier,  # noqa: E402
                                  check_variant)
from fpqvar_hw.flow.synth import synthesize                                 # noqa: E402
from fpqvar_hw.units.quantizer import Quantizer                             # noqa: E402
from fpqvar_hw.units.vector import (Elementwise, FDot, Func, L2NormTemperature,  # noqa: E402
                                    LayerNormModulate, Residual, Softmax)


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


def _array_cell() -> Entry:
    """The matrix engine's array cell in the default build (dual-mode e2m1fn / DFQ-FP4,
    32 lanes: ``MatrixEngine.cell_params(32)``)."""
    from fpqvar_hw.engines.matrix import MatrixEngine
    return Entry("mac32 dual dfq_e2m1 lut (array cell)", "group dot (G=128)",
                 lambda: GroupDot(**MatrixEngine.cell_params(32)), lanes=32)


def _fp_entries() -> list[Entry]:
    """FP32 building blocks (one lane each, 2-stage pipelines of ``fpqvar_hw.units.fpu``)."""
    return [
        Entry("fp32 add", "fp building blocks", lambda: FPUnit(FPOp.ADD, FP32)),
        Entry("fp32 mul", "fp building blocks", lambda: FPUnit(FPOp.MUL, FP32)),
        Entry("fp32 max", "fp building blocks", lambda: FPUnit(FPOp.MAX, FP32)),
        Entry("fp16 -> fp32 convert", "fp building blocks",
              lambda: FPUnit(FPOp.CONVERT, FP16, dst=FP32)),
        Entry("fp32 -> fp16 convert", "fp building blocks",
              lambda: FPUnit(FPOp.CONVERT, FP32, dst=FP16)),
    ]


def _vector_entries() -> list[Entry]:
    """Vector-unit functions: element-wise at 1 lane (FP32 in/out), row units at small sizes."""
    out = [Entry(f"elementwise {f.value} x1", "vector unit (FP32)",
                 lambda f=f: Elementwise(f, lanes=1)) for f in Func]
    out += [
        Entry("softmax len 64 P8", "vector unit (FP32)", lambda: Softmax(length=64, P=8)),
        Entry("layernorm_modulate len 64 P8", "vector unit (FP32)",
              lambda: LayerNormModulate(length=64, P=8)),
        Entry("l2norm_temperature hd 64 P8", "vector unit (FP32)",
              lambda: L2NormTemperature(head_dim=64, P=8, temperature=True)),
        Entry("fdot P8", "vector unit (FP32)", lambda: FDot(P=8)),
        Entry("residual x1", "vector unit (FP32)", lambda: Residual()),
    ]
    return out


def _mac_v2(pair: MulPair, var: MulVariant, *, dfq: bool = False) -> Entry:
    """Dot cell v2 (``GroupDotV2``): one 128-group per beat, defaults (interleave = the
    accumulator loop length, two adder-tree levels per stage)."""
    tag = "dfq_e2m1" if dfq else pair.name.lower()
    return Entry(f"dot2 {tag} {var.value}", "dot cell v2 (G=128, 128 lanes)",
                 lambda: GroupDotV2(pair=pair, variant=var, dfq=dfq, group_size=128),
                 lanes=128)


def _quant_entries() -> list[Entry]:
    """Quantizer path of the default build (w4a4: e2m1 and DFQ4 quantizers, the group
    Hadamard; 32 lanes, groups of 128)."""
    return [Entry(f"quantizer {f} l32", "quantizer path (G=128)",
                  lambda f=f: Quantizer(format=f, group_size=128, lanes=32), lanes=32)
            for f in ("e2m1fn", "dfq4")] + [
        Entry("hadamard l32", "quantizer path (G=128)", lambda: GroupHadamard(lanes=32), lanes=32)]


#: Every unit in the table, in print order.  Other units append here.
REGISTRY: list[Entry] = [
    *_mul_entries(),
    _mac(MulPair.E2M1_E2M1, MulVariant.LUT),
    _mac(MulPair.E2M1_E2M1, MulVariant.DSP),
    _mac(MulPair.INT4_INT4, MulVariant.LUT),
    _mac(MulPair.INT4_INT4, MulVariant.DSP),
    _mac(MulPair.E2M1_E2M1, MulVariant.LUT, dfq=True),
    _array_cell(),
    _mac(MulPair.E2M3_E2M3, MulVariant.DECOMPOSED, lanes=32),
    _mac_v2(MulPair.E2M1_E2M1, MulVariant.LUT),
    _mac_v2(MulPair.E2M1_E2M1, MulVariant.LUT, dfq=True),
    _mac_v2(MulPair.INT4_INT4, MulVariant.LUT),
    _mac_v2(MulPair.INT8_INT8, MulVariant.DSP),
    *_quant_entries(),
    *_fp_entries(),
    *_vector_entries(),
]


def _table_at(rev: str, out: str) -> str:
    """The markdown table rows of ``out`` as committed at git revision ``rev``."""
    import subprocess
    root = Path(__file__).resolve().parents[1]
    rel = Path(out).resolve().relative_to(root).as_posix()
    proc = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--before {rev}: git show {rev}:{rel} failed: {proc.stderr.strip()}")
    rows: list[str] = []
    for ln in proc.stdout.splitlines():        # the first table (not an older 'Before')
        if ln.startswith("|"):
            rows.append(ln)
        elif rows:
            break
    if not rows:
        raise SystemExit(f"--before {rev}: {rel} had no table at {rev}")
    return "\n".join(rows) + "\n"


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filter", default="", help="regex on the unit name (default: all)")
    ap.add_argument("--list", action="store_true", help="list the registered units and exit")
    ap.add_argument("--out", help="also write the table as markdown to this file")
    ap.add_argument("--timeout", type=float, default=3600,
                    help="seconds per Yosys run (default 3600; the FP32 vector units take "
                         "15-40 min each on a busy 2-core machine)")
    ap.add_argument("--before", metavar="REV",
                    help="with --out: keep the table that file had at git revision REV "
                         "under a 'Before' heading (before/after comparisons)")
    ap.add_argument("--no-abc9", action="store_true",
                    help="use Yosys' default ABC flow instead of -abc9 (see fpqvar_hw/flow/synth.py)")
    args = ap.parse_args(argv)
    if args.before and not args.out:
        ap.error("--before needs --out (the file whose earlier table it keeps)")
    before = _table_at(args.before, args.out) if args.before else ""
    entries = [e for e in REGISTRY if re.search(args.filter, e.name)]
    if args.list:
        for e in entries:
            print(f"{e.group:20s} {e.name}")
        return 0
    if not entries:
        print(f"no unit matches {args.filter!r}; see --list", file=sys.stderr)
        return 2
    flow = "Yosys synth_xilinx -family xcup -flatten -noiopad" + ("" if args.no_abc9 else " -abc9")
    hdr = f"{'unit':34s} {'LUT':>7s} {'LUT6':>6s} {'FF':>6s} {'DSP':>4s} {'CARRY':>5s} " \
          f"{'MUXF':>5s} {'LUTRAM':>6s} {'depth':>5s} {'LUT/lane':>8s} {'lvl L+C':>7s} {'fmax':>5s}"
    print(flow)
    print(hdr)
    print("-" * len(hdr))
    md = ["| group | unit | LUT | LUT6 | FF | DSP | CARRY | MUXF | LUTRAM | depth | LUT/lane "
          "| levels LUT+carry | est. f_max MHz |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    group = None
    for e in entries:
        if e.group != group:
            group = e.group
            print(f"# {group}")
        t0 = time.time()
        print(f"{e.name:34s} ...", end="\r", file=sys.stderr, flush=True)
        r = synthesize(e.build(), abc9=not args.no_abc9, timeout_s=args.timeout)
        per = f"{r.lut / e.lanes:8.1f}" if e.lanes else f"{'':8s}"
        ltp = Path(r.workdir) / "ltp.txt" if r.workdir else None
        lv = path_levels(ltp.read_text() if ltp is not None and ltp.exists() else "", r.depth)
        lvl = f"{lv['lut']}+{lv['carry']}" + ("" if lv["classified"] else "?")
        fmax = fmax_mhz(lv["lut"], lv["carry"])
        print(f"{e.name:34s} {r.lut:7d} {r.lut6:6d} {r.ff:6d} {r.dsp:4d} {r.carry:5d} "
              f"{r.muxf:5d} {r.lutram:6d} {r.depth:5d} {per} {lvl:>7s} {fmax:5.0f}", flush=True)
        md.append(f"| {e.group} | {e.name} | {r.lut} | {r.lut6} | {r.ff} | {r.dsp} | {r.carry} | "
                  f"{r.muxf} | {r.lutram} | {r.depth} | {per.strip()} | {lvl} | {fmax:.0f} |")
        if time.time() - t0 > 5:
            print(f"  ({time.time() - t0:.0f} s)", file=sys.stderr)
    if args.out:
        cmd = "python benchmarks/unit_resources.py" + "".join(
            f" {a}" if a.startswith("-") else f" '{a}'" for a in (argv if argv is not None else sys.argv[1:]))
        Path(args.out).write_text(
            f"# Unit resources ({flow})\n\nGenerated by `{cmd}`.  Estimates of the logic "
            "(UltraScale+ mapping), not a Vivado result; see the docstring of "
            "`benchmarks/unit_resources.py`.\n\n" + "\n".join(md) + "\n"
            + (f"\n## Before (commit {args.before})\n\n{before}" if before else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
