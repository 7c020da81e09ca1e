"""Resource report: Yosys ``synth_xilinx -family xcup`` per unit, scaled to the accelerator.

Yosys has no Versal (``xcv``) target; ``-family xcup`` (UltraScale+, LUT6 /
DSP48E2 / BRAM36 / URAM288) is the closest open flow, so LUT/FF/CARRY figures
are UltraScale+ mappings and DSP counts are DSP48E2 slices (a DSP58 does at
least as much).  Every report says so.

The accelerator is far too large to synthesise on two cores in minutes, so the
total is *per unit x instance count* (:class:`~fpqvar_hw.flow.registry.Variant.count`),
plus on-chip buffers estimated from their sizes (not synthesised, marked so),
and the units that do not exist yet are listed as missing, never guessed.
When the accelerator top exists and is small enough it is synthesised too.

Synthesis results are cached by content hash by :mod:`fpqvar_hw.flow.synth` under
``build/synth/``.

Clock estimate from logic depth
-------------------------------
Yosys gives no timing for Versal, so the achievable clock is *estimated* from
the longest register-to-register path of every synthesised unit (``ltp``, see
:mod:`fpqvar_hw.flow.synth`) with a documented per-level delay model
(:func:`path_delay_ns`): each path level is classified from the cell it goes
through as a carry-chain stage (CARRY4/CARRY8, named ``carry`` by the Xilinx
techmap) or a LUT/MUXF/DSP level, and

    t = REG_OVERHEAD_NS + LUT_LEVEL_NS * lut_levels + CARRY_LEVEL_NS * carry_levels,
    f_max = 1000 / t MHz.

The constants are planning figures for a -2 speed grade Versal / UltraScale+
fabric: a LUT is ~0.1 ns and an average routed net ~0.35 ns, a CARRY8 stage
on the dedicated chain ~0.1-0.15 ns, and clock-to-Q + setup + clock
uncertainty ~0.35 ns.  With them 300 MHz allows about 6 LUT levels, and
LightMamba's 400 MHz on the same PL corresponds to about 4.  Real routed
delays vary by roughly +-30 % with placement and congestion; the estimate says
which unit limits the clock and by how much, not what Vivado would close.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..config import AcceleratorConfig
from .platform import Platform

__all__ = ["KEYS", "SynthJob", "synth_available", "run_synth_jobs", "buffer_estimate",
           "FitError", "total_resources", "fit_fractions", "check_fit", "FLOW_NOTE",
           "LUT_LEVEL_NS", "CARRY_LEVEL_NS", "REG_OVERHEAD_NS", "path_levels", "path_delay_ns",
           "fmax_mhz", "clock_estimate", "DELAY_MODEL_NOTE"]

#: Resource keys in reports; the platform budget uses the same names.
KEYS = ("LUT", "FF", "DSP", "CARRY", "BRAM36", "URAM")
FLOW_NOTE = ("Yosys synth_xilinx -family xcup (UltraScale+ mapping: LUT6, DSP48E2, BRAM36, "
             "URAM288), the closest open flow to Versal; Vivado was not run.")
SYNTH_MODULE = "fpqvar_hw.flow.synth"


class FitError(ValueError):
    """The configuration does not fit the platform budget (message says what to lower)."""


@dataclass(frozen=True)
class SynthJob:
    """One unit variant to synthesise: its Verilog text and top module name."""

    instance: str
    top: str
    verilog: str


def synth_available() -> bool:
    return importlib.util.find_spec(SYNTH_MODULE) is not None


#: Delay model of one path level (module docstring): ns per LUT/MUXF/DSP level incl. routing,
#: per carry-chain stage, and per register-to-register path (clock-to-Q, setup, uncertainty).
LUT_LEVEL_NS = 0.45
CARRY_LEVEL_NS = 0.15
REG_OVERHEAD_NS = 0.35
DELAY_MODEL_NOTE = (f"estimated from the Yosys longest path per unit: {REG_OVERHEAD_NS} ns "
                    f"register overhead + {LUT_LEVEL_NS} ns per LUT level (incl. routing) + "
                    f"{CARRY_LEVEL_NS} ns per carry stage (-2 speed grade planning figures, "
                    f"+-30 %); not a Vivado timing result")


def path_levels(ltp_text: str, depth: int) -> dict[str, int | bool]:
    """Split Yosys' longest path (``ltp`` output) into LUT and carry levels.

    Each path step ``N: <net> (via <cell>)`` goes through one cell; a cell whose
    name contains ``carry`` (the Xilinx techmap's CARRY4/CARRY8 instances) is a
    carry stage, anything else a LUT level (LUTs, MUXF7/8 and DSPs, counted at
    the LUT cost).  When the listing is missing, all ``depth`` levels count as
    LUT levels (conservative) and ``classified`` is False.
    """
    import re
    vias = re.findall(r"^\s*\d+: .*\(via (.*)\)\s*$", ltp_text, re.M)
    if not vias or len(vias) != depth:
        return {"lut": depth, "carry": 0, "classified": False}
    carry = sum("carry" in v.lower() for v in vias)
    return {"lut": depth - carry, "carry": carry, "classified": True}


def path_delay_ns(lut_levels: int, carry_levels: int) -> float:
    """Estimated register-to-register delay of a path (module docstring)."""
    return REG_OVERHEAD_NS + LUT_LEVEL_NS * lut_levels + CARRY_LEVEL_NS * carry_levels


def fmax_mhz(lut_levels: int, carry_levels: int) -> float:
    return 1000.0 / path_delay_ns(lut_levels, carry_levels)


def _result_to_dict(res) -> dict:
    """Report keys of a :class:`fpqvar_hw.flow.synth.SynthResult` (+ logic depth and the
    clock estimate of its longest path)."""
    if getattr(res, "levels", None) is not None:     # the slowest path by delay
        lv = {"lut": res.levels[0], "carry": res.levels[1], "classified": True}
    else:
        ltp = Path(res.workdir) / "ltp.txt" if res.workdir else None
        lv = path_levels(ltp.read_text() if ltp is not None and ltp.exists() else "", res.depth)
    return {"LUT": res.lut, "FF": res.ff, "DSP": res.dsp, "CARRY": res.carry,
            "BRAM36": res.bram, "URAM": res.uram, "logic_depth": lv["lut"] + lv["carry"],
            "lut_levels": lv["lut"], "carry_levels": lv["carry"],
            "levels_classified": lv["classified"],
            "fmax_mhz_est": round(fmax_mhz(lv["lut"], lv["carry"]), 1)}


def hier_row(result) -> dict:
    """Report keys of a :class:`fpqvar_hw.flow.hsynth.HierSynthResult` (the design's
    rolled-up totals, as :func:`_result_to_dict`), its logic depth and clock estimate
    those of its slowest module (named in ``slowest_module``)."""
    t, slow = result.totals, result.slowest
    fallbacks = result.fallbacks
    row = {"LUT": t["LUT"], "FF": t["FF"], "DSP": t["DSP"], "CARRY": t["CARRY"],
           "BRAM36": t["BRAM"], "URAM": t["URAM"], "LUTRAM": t["LUTRAM"],
           "logic_depth": slow.depth, "lut_levels": slow.lut_levels,
           "carry_levels": slow.carry_levels, "levels_classified": slow.levels_classified,
           "fmax_mhz_est": slow.fmax_mhz_est, "slowest_module": slow.name,
           "modules": len(result.modules)}
    if fallbacks:
        row["mapper"] = "; ".join(f"{n}: {m}" for n, m in sorted(fallbacks.items()))
    return row


def clock_estimate(units: Iterable[Mapping], planning_mhz: float) -> dict:
    """Achievable clock of the design = the slowest synthesised unit's estimated f_max.

    ``units``: resource-report rows with ``instance`` and the keys of
    :func:`_result_to_dict`.  Returns the estimate, the limiting unit, every unit
    slower than ``planning_mhz``, and the LUT levels a ``planning_mhz`` cycle allows.
    """
    rows = [u for u in units if u.get("fmax_mhz_est")]
    if not rows:
        return {"achievable_mhz": None, "note": "no synthesised unit: clock not estimated"}
    worst = min(rows, key=lambda u: u["fmax_mhz_est"])
    allowed = int((1000.0 / planning_mhz - REG_OVERHEAD_NS) // LUT_LEVEL_NS)
    return {
        "planning_mhz": planning_mhz,
        "achievable_mhz": min(planning_mhz, worst["fmax_mhz_est"]),
        "limited_by": worst["instance"],
        "limit_logic_depth": worst["logic_depth"],
        "lut_levels_at_planning_clock": allowed,
        "slower_than_planning": {u["instance"]: u["fmax_mhz_est"] for u in
                                 sorted(rows, key=lambda u: u["fmax_mhz_est"])
                                 if u["fmax_mhz_est"] < planning_mhz},
        "model": DELAY_MODEL_NOTE,
    }


def run_synth_jobs(jobs: Iterable[SynthJob], *, cache_dir: Path | None = None, workers: int = 2,
                   progress=None) -> dict[str, dict]:
    """Synthesise every job with ``fpqvar_hw.flow.synth.synthesize`` (which caches by content
    hash under ``cache_dir``, default ``build/synth/``); returns instance -> resources,
    or ``{"error": message}`` for a unit whose synthesis failed or timed out.

    Yosys runs as a subprocess, so ``workers`` threads give ``workers`` parallel Yosys runs.
    Jobs start longest first (Verilog size as the proxy for synthesis time), so a long
    unit does not start last and leave the other workers idle (LPT scheduling).
    """
    jobs = sorted(jobs, key=lambda j: -len(j.verilog))
    if not synth_available():
        raise RuntimeError(f"{SYNTH_MODULE} is not in the tree; run with --no-synth")
    synth = importlib.import_module(SYNTH_MODULE)

    def one(j: SynthJob) -> dict:
        try:
            try:
                res = _result_to_dict(synth.synthesize(j.verilog, top=j.top, cache_dir=cache_dir))
            except RuntimeError as e:
                # Yosys' ABC9 flow can die on an internal assertion (seen on the controller:
                # "Assert `count_id(wire->name) == 0' failed" in its AIGER reader); the
                # classic ABC mapper is then used for this unit, and the report says so.
                first = str(e).splitlines()[0][:200]
                res = _result_to_dict(synth.synthesize(j.verilog, top=j.top, cache_dir=cache_dir,
                                                       abc9=False))
                res["mapper"] = f"abc (abc9 failed: {first})"
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            # YosysError is a RuntimeError; a timeout is a SubprocessError.  The unit is
            # reported as not synthesised (and the total as a lower bound), never guessed.
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        if progress:
            progress(j.instance)
        return res
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, jobs))
    return {j.instance: r for j, r in zip(jobs, results)}


def buffer_estimate(config: AcceleratorConfig, max_C: int = 64 * 36) -> dict[str, int]:
    """On-chip buffers not yet in RTL, estimated from their sizes (not synthesised).

    * activation buffer: ``act_buffer_kib`` KiB, double-buffered, in URAM288 (36 KiB each);
    * weight tile buffer: ``tn`` columns x 4C (FC2's K) codes + scales, double-buffered, BRAM36
      (4.5 KiB each), sized for the largest model ``max_C`` (VAR-d36);
    * KV tile: ``attn_macs`` FP16 elements x 64 rows, double-buffered, BRAM36.
    """
    uram = 2 * math.ceil(config.act_buffer_kib / 36)
    bits = max(config.weight_format(l).bits for l in ("qkv", "proj", "fc1", "fc2"))
    wbytes = config.tn * 4 * max_C * (bits + config.scale_format.bits / config.group_size) / 8
    bram_w = 2 * math.ceil(wbytes / 4608)
    bram_kv = 2 * math.ceil(config.attn_macs * 64 * 2 / 4608)
    return {"LUT": 0, "FF": 0, "DSP": 0, "CARRY": 0, "BRAM36": bram_w + bram_kv, "URAM": uram}


def total_resources(rows: Iterable[tuple[dict, int]]) -> dict[str, int]:
    """Sum of ``resources x count`` over (resources, count) rows."""
    tot = {k: 0 for k in KEYS}
    for res, count in rows:
        for k in KEYS:
            tot[k] += int(res.get(k, 0)) * count
    return tot


def fit_fractions(total: Mapping[str, int], platform: Platform) -> dict[str, float | None]:
    budget = platform.budget
    out: dict[str, float | None] = {}
    for k in KEYS:
        b = budget.get(k)
        out[k] = None if not b else total[k] / b
    return out


def check_fit(total: Mapping[str, int], platform: Platform, config: AcceleratorConfig) -> None:
    """Raise :class:`FitError` when any resource exceeds the platform budget."""
    over = []
    for k, frac in fit_fractions(total, platform).items():
        if frac is not None and frac > 1.0:
            over.append(f"{k} {total[k]:,} > {platform.budget[k]:,} ({100 * frac:.0f} %)")
    if over:
        raise FitError(
            f"preset {config.preset} (array {config.tm}x{config.tn}x{config.lanes}, "
            f"attn_macs {config.attn_macs}, act_buffer_kib {config.act_buffer_kib}) does not fit "
            f"{platform.name}: " + "; ".join(over) +
            ". Lower --param tm/tn/lanes (LUT, FF, CARRY), attn_macs (DSP) or act_buffer_kib "
            "(URAM).")


_MODULE_RE = re.compile(r"^module (\\?\S+?)\s*\(", re.M)
_DECL_RE = re.compile(r"^\s*(?:output\s+)?reg\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?(\\?\S+)", re.M)
_FF_RE = re.compile(r"always @\(posedge \S+\)\n\s+(\\?[^\s\[]+)\s*(?:\[[^\]]*\]\s*)?<=")


def register_bits(verilog_text: str) -> dict[str, int]:
    """Flip-flop bits per module of Amaranth-emitted Verilog, counted before synthesis.

    A register is a ``reg`` assigned in an ``always @(posedge ...)`` block (memories,
    declared ``reg [..] m [..]``, are not counted).  The figure is structural, without
    Yosys: synthesis may remove constant or unused bits, so it can exceed the mapped FF
    count slightly; it is used to refuse a configuration before its top is emitted.
    """
    out: dict[str, int] = {}
    starts = [(m.start(), m.group(1)) for m in _MODULE_RE.finditer(verilog_text)]
    for i, (pos, name) in enumerate(starts):
        body = verilog_text[pos:starts[i + 1][0] if i + 1 < len(starts) else len(verilog_text)]
        widths = {}
        for d in _DECL_RE.finditer(body):
            hi, lo, sig = d.group(1), d.group(2), d.group(3).rstrip(";")
            widths[sig] = abs(int(hi) - int(lo)) + 1 if hi is not None else 1
        regs = {m.group(1) for m in _FF_RE.finditer(body)}
        out[name.lstrip("\\")] = sum(widths.get(r, 0) for r in regs)
    return out
