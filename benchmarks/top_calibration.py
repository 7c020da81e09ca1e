"""Calibration of the as-built throughput model against the simulated RTL top.

Each configuration of :data:`CONFIGS` builds the top (``fpqvar_hw.engines.top.Accelerator``)
in Verilator, runs the compiler's scale-step programs on it (``sim/tb_top.py``
``block_steps``: every block, bit-exact against isa_sim) behind the simulator-side DRAM
(:mod:`fpqvar_hw.host.simdram`, read latency, write latency and random stalls), and writes
the top's counters to ``benchmarks/results/calibration/<name>.json`` stamped with the RTL's
hash (SHA-256 of the emitted Verilog and its harness) and the unit latencies.  The table
puts the as-built model (:func:`fpqvar_hw.flow.asbuilt.top_step` via
:func:`fpqvar_hw.flow.simcycles.compare_to_sim`) next to the counters and is written to
``benchmarks/results/calibration.md``.  Across the configurations the attention array,
``C``, the depth, the batch and the DRAM read latency each take two values or more.

``tests/test_perf_vs_sim.py`` holds the model to the committed files (within
:data:`TOLERANCE`) and fails when a file's stamp is not the current RTL's (re-run this
script); ``sim/test_top.py::test_calibration_rerun`` re-simulates one configuration in CI and
requires the committed counters exactly.

``--profile NAME`` instead runs every instruction of the configuration's steps alone
(``sim/tb_top.py`` ``instruction_profile``) and prints the model against the simulation per
instruction kind (also to ``benchmarks/results/calibration_profile_<NAME>.md``): where a
model error comes from.

    python benchmarks/top_calibration.py                 # all configurations (~6 min cold)
    python benchmarks/top_calibration.py --only k2-digits-b2-lat128
    python benchmarks/top_calibration.py --profile k2-digits-b2-lat128
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
CAL_DIR = RESULTS / "calibration"
#: the largest |model / simulated - 1| of a configuration's CYCLES (its steps together) the
#: committed files are held to (each step: tests/test_perf_vs_sim.py's TOP_TOLERANCE)
TOLERANCE = 0.10
RAM_SIZE = 1 << 22
SEED = 21


@dataclass(frozen=True)
class Calib:
    """One calibration configuration: the VAR (``depth`` None: the shipped digits VAR, else a
    random-weight VAR of the digits architecture at that depth, ``C = 64 * depth``), the
    accelerator overrides on top of the RTL preset, rows per step (2 x batch), the scale steps,
    the simulated DRAM (read latency, stall per 256, write latency)."""

    name: str
    depth: int | None
    overrides: dict = field(default_factory=dict)
    rows: int = 2
    steps: int = 1
    dram: tuple[int, int, int] = (8, 16, 0)


CONFIGS = (
    Calib("k1-digits-b1-lat8", None, {}, rows=2, steps=4, dram=(8, 16, 0)),
    Calib("k2-digits-b2-lat128", None, {}, rows=4, steps=2, dram=(128, 64, 128)),
    Calib("k3-d4c256-att4x4-b1-lat150", 4, {"att_t": 4, "att_n": 4}, rows=2, steps=2,
          dram=(150, 16, 64)),
)


def by_name(name: str) -> Calib:
    for c in CONFIGS:
        if c.name == name:
            return c
    raise ValueError(f"no configuration {name!r}; known: {', '.join(c.name for c in CONFIGS)}")


def top_of(c: Calib):
    """(config, C, max_kv, ModelSpec) of ``c``'s top."""
    from fpqvar_hw.config import get_preset
    from fpqvar_hw.flow.perf import DIGITS, ModelSpec
    from fpqvar_hw.host.backends import RTL_MAX_KV, RTL_PRESET

    model = DIGITS if c.depth is None else ModelSpec(f"random-d{c.depth}", c.depth, DIGITS.patch_nums,
                                                     DIGITS.resolution)
    cfg = get_preset(RTL_PRESET).replace(**overrides_of(c))
    return cfg, model.C, RTL_MAX_KV, model


def overrides_of(c: Calib) -> dict:
    """The RTL preset's overrides of ``c``'s top: the simulated top's, then ``c``'s own."""
    from fpqvar_hw.host.backends import RTL_OVERRIDES

    return {**RTL_OVERRIDES, **c.overrides}


def rtl_hash(cfg, C: int, max_kv: int) -> str:
    """SHA-256 (16 hex digits) of the top's emitted Verilog with its simulation harness: the
    stamp of a calibration file."""
    from fpqvar_hw.host.cosim import elaborate_verilog
    from fpqvar_hw.host.rtl import top_build_name, top_component, top_harness

    _, text = elaborate_verilog(top_component(cfg, C, max_kv), name=top_build_name(cfg, C, max_kv),
                                toplevel="top", extra=top_harness(cfg, C, max_kv)[1])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_of(c: Calib) -> Path:
    from fpqvar_hw.host import package as hostpkg

    if c.depth is None:
        return hostpkg.build_package(hostpkg.PackageSettings(preset="fp4-dfq-ght"))
    return hostpkg.build_random_package(c.depth)


def _params(c: Calib, max_kv: int, model, **extra) -> dict:
    from fpqvar_hw.host.backends import RTL_PRESET

    lat, stall, wl = c.dram
    return {"preset": RTL_PRESET, "overrides": overrides_of(c), "max_kv": max_kv, "seed": SEED,
            "pause": 0.0, "ram_size": RAM_SIZE, "rows": c.rows,
            "model": None if c.depth is None else {"name": model.name, "depth": model.depth,
                                                   "patch_nums": list(model.patch_nums),
                                                   "resolution": model.resolution},
            "simdram": {"latency": lat, "stall": stall, "write_latency": wl}, **extra}


def simulate(c: Calib, out: Path, *, testcase: str = "block_steps") -> Path:
    """Run ``c``'s steps on the simulated top; the counters go to ``out`` (stamped)."""
    from fpqvar_hw.cache import write_text_atomic
    from fpqvar_hw.flow import asbuilt
    from fpqvar_hw.host.compiler import TILE_ORDER, V_CACHE_LAYOUT
    from fpqvar_hw.host.rtl import top_build_name, top_component, top_harness
    from sim.runner import run_cocotb
    from sim.top_steps import prepare_steps

    cfg, C, max_kv, model = top_of(c)
    spec = prepare_steps(package_of(c), cfg, rows=c.rows, n_steps=c.steps, seed=SEED, max_kv=max_kv,
                         ram_size=RAM_SIZE, name=f"calibration-{c.name}")
    raw = out.with_suffix(".raw.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    run_cocotb(top_component(cfg, C, max_kv), name=top_build_name(cfg, C, max_kv), test_module="sim.tb_top",
               testcase=testcase, harness=top_harness(cfg, C, max_kv),
               params=_params(c, max_kv, model, steps=str(spec), modes=[[1, 1]],
                              cycles_out=str(raw)))
    data = json.loads(raw.read_text())
    raw.unlink()
    data.update({"calibration": c.name, "rtl_hash": rtl_hash(cfg, C, max_kv),
                 "unit_latencies": asbuilt.top_latencies(cfg.lanes, (cfg.att_t, cfg.att_n), cfg.tn,
                                                         cfg.row_sets, cfg.sm_lanes),
                 "v_cache": V_CACHE_LAYOUT, "tiles": TILE_ORDER})
    write_text_atomic(out, json.dumps(data, indent=1) + "\n")
    return out


def compare(path: Path) -> list[dict]:
    """Per step: the model's and the simulation's counters (``compare_to_sim``)."""
    from fpqvar_hw.flow import simcycles

    return simcycles.compare_to_sim(simcycles.load_sim_cycles(path))["steps"]


def table(paths: list[Path]) -> str:
    lines = ["| configuration | top | C / depth | batch | DRAM read latency | step | CYCLES model / sim | "
             "GEMM_CYCLES | VEC_CYCLES |", "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        doc = json.loads(p.read_text())
        c = by_name(doc["calibration"])
        cfg, C, _, model = top_of(c)
        steps = compare(p)
        head = (f"| {c.name} | tm {cfg.tm} x {cfg.row_sets} sets, array {cfg.att_t} x {cfg.att_n} "
                f"| {C} / {model.depth} | {c.rows // 2} | {c.dram[0]} |")
        for s in steps:
            r = {k: s[k] for k in ("cycles", "gemm_cycles", "vec_cycles")}
            lines.append(
                f"{head} {s['step']} "
                f"| {r['cycles']['predicted']:,} / {r['cycles']['simulated']:,} ({r['cycles']['ratio']:.2f}x) "
                f"| {r['gemm_cycles']['ratio']:.2f}x | {r['vec_cycles']['ratio']:.2f}x |")
        tot = {k: [sum(s[k][w] for s in steps) for w in ("predicted", "simulated")]
               for k in ("cycles", "gemm_cycles", "vec_cycles")}
        lines.append(f"{head} **all** | **{tot['cycles'][0]:,} / {tot['cycles'][1]:,} "
                     f"({tot['cycles'][0] / tot['cycles'][1]:.2f}x)** "
                     + "".join(f"| {m / s:.2f}x " for m, s in (tot["gemm_cycles"], tot["vec_cycles"])) + "|")
    return "\n".join(lines)


def profile(c: Calib) -> str:
    """Every instruction alone on the simulated top against the model, per instruction kind."""
    from fpqvar_hw.flow import asbuilt
    from fpqvar_hw.host.compiler import TILE_ORDER, V_CACHE_LAYOUT

    cfg, C, _, model = top_of(c)
    out = simulate(c, REPO / "build" / "calibration" / f"profile-{c.name}.json",
                   testcase="instruction_profile")
    runs = json.loads(out.read_text())["runs"]
    mem = asbuilt.simdram_memory(*c.dram)
    b = asbuilt.top_build(cfg, C)
    kinds: dict = {}
    for s in range(c.steps):
        prog = asbuilt.top_step_program(C, model.heads, 4 * C, model.depth, sum(model.tokens[:s]),
                                        model.tokens[s], c.rows, cfg.gemm_rows,
                                        L_total=model.kv_lengths[-1], v_cache=V_CACHE_LAYOUT,
                                        tiles=TILE_ORDER)
        sim = [r for r in runs if r["step"] == s]
        if len(sim) != len(prog):
            raise RuntimeError(f"step {s}: {len(sim)} simulated instructions, the model has {len(prog)}")
        for ins, r in zip(prog, sim):
            cost = asbuilt.instr_cost(ins, fine=True, b=b, mem=mem)
            one = asbuilt.schedule_top([ins], [cost], coarse=True, mem=mem, rd_slice=b.lat["rd_slice"])
            k = kinds.setdefault(ins.name, [0, 0, 0])
            k[0] += 1
            k[1] += one.cycles
            k[2] += r["cycles"]
    lines = [f"Per instruction kind, each instruction alone ({c.name}, steps 0-{c.steps - 1}):", "",
             "| kind | instructions | model cycles | simulated | model / sim |", "|---|---|---|---|---|"]
    for name, (n, mdl, sim) in sorted(kinds.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"| {name} | {n} | {mdl:,} | {sim:,} | {mdl / sim:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="simulate only this configuration (repeatable)")
    ap.add_argument("--report", action="store_true",
                    help="no simulation: the table of the committed files")
    ap.add_argument("--profile", metavar="NAME", help="per-instruction profile of one configuration")
    args = ap.parse_args(argv)
    try:
        chosen = [by_name(n) for n in ([args.profile] if args.profile else args.only)]
    except ValueError as e:
        ap.error(str(e))                 # one line, exit status 2
    from fpqvar_hw.host.cosim import CosimError
    try:
        return _run(args, chosen)
    except (CosimError, RuntimeError) as e:     # a failed co-simulation, a model mismatch
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args, chosen: list) -> int:
    if args.profile:
        text = profile(chosen[0])
        print(text)
        from fpqvar_hw.cache import write_text_atomic
        write_text_atomic(RESULTS / f"calibration_profile_{args.profile}.md",
                          f"# `python benchmarks/top_calibration.py --profile {args.profile}`\n\n{text}\n")
        return 0
    todo = chosen or list(CONFIGS)
    if not args.report:
        for c in todo:
            t0 = time.time()
            out = simulate(c, CAL_DIR / f"{c.name}.json")
            print(f"{c.name}: {out.relative_to(REPO)} ({time.time() - t0:.0f} s)", flush=True)
    paths = [CAL_DIR / f"{c.name}.json" for c in CONFIGS if (CAL_DIR / f"{c.name}.json").is_file()]
    text = table(paths)
    print(text)
    from fpqvar_hw.cache import write_text_atomic
    write_text_atomic(RESULTS / "calibration.md",
                      "# As-built model vs the simulated top (`python benchmarks/top_calibration.py`)\n\n"
                      f"Tolerance held by tests/test_perf_vs_sim.py: each configuration's CYCLES (its steps "
                      f"together) within {TOLERANCE:.0%}, each step's within 15 %.\n\n"
                      + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
