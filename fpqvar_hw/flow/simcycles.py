"""Cycle files of the top's RTL simulation, and both throughput models against them.

:func:`load_sim_cycles` reads either schema of :data:`SIM_CYCLES_FORMATS`;
:func:`compare_to_sim` puts the as-built model (:mod:`fpqvar_hw.flow.asbuilt`) and the
planned model (:mod:`fpqvar_hw.flow.perf`) next to the simulated counters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..config import AcceleratorConfig
from .asbuilt import TILE_ORDERS, V_CACHE_LAYOUTS, TopMemory, sim_memory, simdram_memory, top_step
from .perf import DIGITS, ModelSpec, UnitTiming, evaluate, unit_timings
from .platform import Platform

__all__ = ["DIGITS", "SIM_CYCLES_FORMATS", "SimRun", "SimCycles", "load_sim_cycles",
           "sim_platform", "compare_to_sim"]


# ------------------------------------------------------ model vs simulated cycles
SIM_CYCLES_FORMATS = ("fpqvar-tiny-image-cycles v1 (fpqvar_hw/host/driver.py write_cycles_json: "
                      "build/tiny-image/cycles.json)",
                      "top testbench runs (sim/tb_top.py block_steps: build/top/cycles-s<seed>.json)")


@dataclass(frozen=True)
class SimRun:
    """One simulated scale step: what ran and the top's counter registers.

    ``cycles`` = CYCLES (start to done), ``gemm_cycles`` / ``vec_cycles`` = cycles the
    matrix / vector engine was busy, ``overlap_cycles`` = both busy (docs/top.md).
    """

    step: int
    tokens: int            # new tokens per row in this step (pn^2)
    coarse: bool
    fine: bool
    instructions: int | None
    cycles: int
    gemm_cycles: int | None
    vec_cycles: int | None
    overlap_cycles: int | None


@dataclass(frozen=True)
class SimCycles:
    """Cycle counts of the accelerator top's RTL simulation, normalised from either file
    format of :data:`SIM_CYCLES_FORMATS` by :func:`load_sim_cycles`."""

    source: str
    config: AcceleratorConfig
    rows: int
    model: ModelSpec
    runs: tuple[SimRun, ...]
    #: the testbench's AXI pause probability per channel and cycle (0: none, the driver's)
    pause: float = 0.0
    #: the unit latencies of the RTL the file was measured on (``unit_latencies``,
    #: :func:`fpqvar_hw.flow.asbuilt.top_latencies` of that version); ``None``: not stated
    unit_latencies: Mapping[str, int] | None = None
    #: the memory the run had when it is not the AxiRam of ``pause`` (a driver run on the
    #: simulator-side DRAM, whose settings the file's ``device.dram`` states)
    memory: TopMemory | None = None
    #: the V cache order of the program the file ran (``v_cache``; files without it come
    #: from before the transposed cache: ``"rows"``), :data:`fpqvar_hw.host.compiler.V_CACHE_LAYOUT`
    v_cache: str = "rows"
    #: the token tiles of the program the file ran (``tiles``; files without it come from
    #: before tiles spanned rows: ``"rows"``), :data:`fpqvar_hw.flow.asbuilt.TILE_ORDERS`
    tiles: str = "rows"
    #: the program's tile size (``tile_tokens``; ``None``: the compiler's default, the
    #: configuration's ``gemm_rows``)
    tile_tokens: int | None = None


def load_sim_cycles(path, *, model: ModelSpec = DIGITS) -> SimCycles:
    """Read a cycle-count JSON written by the top's co-simulation.

    Two schemas are accepted (:data:`SIM_CYCLES_FORMATS`):

    * driver, ``{"format": "fpqvar-tiny-image-cycles", "version": 1, "rows",
      "coarse_pipeline", "fine_pipeline", "device": {AcceleratorConfig fields, ...},
      "model": {"patch_nums"}, "steps": [{"si", "pn", "instructions", "cycles",
      "gemm_cycles", "vec_cycles", "overlap_cycles", ...}]}``;
    * top testbench, ``{"preset", "config": {overrides}, "runs": [{"step", "L",
      "instructions", "coarse", "fine", "cycles", "gemm_cycles", "vec_cycles",
      "overlap_cycles"}]}`` (digits VAR, 2 rows: one image with CFG, the AxiRam of
      ``pause``), optionally ``rows`` (2 x batch), ``model`` (the ModelSpec fields of
      another VAR, which then replaces ``model``) and ``simdram`` (``{latency, stall,
      write_latency}``: run on the simulator-side DRAM).

    ``model``: the VAR the steps belong to (default :data:`DIGITS`; its patch_nums
    must match the file's).  Raises ``ValueError`` with what is wrong and how to
    produce a usable file (e.g. a golden-backend run has no cycle counts).
    """
    import json
    from pathlib import Path

    from ..config import get_preset
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; write one with `python -m fpqvar_hw.host.driver "
                         f"--backend rtl` or `pytest sim/test_top.py --run-slow`")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e})") from None
    fields = {f for f in AcceleratorConfig.__dataclass_fields__}
    runs = []
    memory = None
    if isinstance(doc, dict) and doc.get("format") == "fpqvar-tiny-image-cycles":
        if doc.get("version") != 1:
            raise ValueError(f"{p}: cycles format version {doc.get('version')!r} is not supported "
                             f"(this reader knows version 1)")
        dev = {k: v for k, v in (doc.get("device") or {}).items() if k in fields}
        if "preset" not in dev:
            raise ValueError(f"{p}: 'device' holds no accelerator config; the file must come from "
                             f"the RTL backend of fpqvar_hw.host.driver")
        # files before the row sets (2026-12-06) ran one set of tm rows (and tiles of tm)
        config = get_preset(dev["preset"]).replace(
            **{"row_sets": 1, **{k: v for k, v in dev.items() if k != "preset"}})
        pns = tuple(doc.get("model", {}).get("patch_nums", ()))
        if pns and pns != model.patch_nums[:len(pns)]:
            raise ValueError(f"{p}: patch_nums {pns} do not match model {model.name} "
                             f"{model.patch_nums}; pass model=")
        rows = int(doc["rows"])
        pause = 0.0             # the driver's AxiRam (files without device.dram) never pauses
        dram = (doc.get("device") or {}).get("dram")
        if dram is not None:
            try:
                # files before the write latency (2026-12-06) answered writes at once
                memory = simdram_memory(int(dram["latency_cycles"]), int(dram["stall_per_256"]),
                                        int(dram.get("write_latency_cycles", 0)))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{p}: device.dram must hold latency_cycles and stall_per_256 "
                                 f"in [0, 256) ({e})") from None
        for s in doc["steps"]:
            runs.append((s["si"], s["pn"] ** 2, doc["coarse_pipeline"], doc["fine_pipeline"], s))
        backend = doc.get("backend")
    elif isinstance(doc, dict) and isinstance(doc.get("runs"), list) and "preset" in doc:
        config = get_preset(doc["preset"]).replace(**{"row_sets": 1, **(doc.get("config") or {})})
        rows = int(doc.get("rows", 2))
        pause = float(doc.get("pause") or 0.0)
        if doc.get("model") is not None:     # a model other than the digits VAR (its fields)
            try:
                m = doc["model"]
                model = ModelSpec(str(m["name"]), int(m["depth"]), tuple(int(v) for v in m["patch_nums"]),
                                  int(m["resolution"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{p}: model must hold name, depth, patch_nums, resolution ({e})") from None
        if doc.get("simdram") is not None:   # the harness's DRAM instead of the AxiRam
            try:
                d = doc["simdram"]
                memory = simdram_memory(int(d["latency"]), int(d["stall"]), int(d["write_latency"]))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{p}: simdram must hold latency, stall and write_latency in "
                                 f"[0, 256) ({e})") from None
        for r in doc["runs"]:
            runs.append((r["step"], r["L"], r["coarse"], r["fine"], r))
        backend = "rtl"
    else:
        raise ValueError(f"{p}: not a cycle-count file; expected one of: "
                         + "; ".join(SIM_CYCLES_FORMATS))
    out = []
    for step, tokens, coarse, fine, r in runs:
        if r.get("cycles") is None:
            raise ValueError(f"{p}: step {step} has no cycle count (backend {backend!r}); only "
                             f"the RTL backend reads the CYCLES registers: run `python -m "
                             f"fpqvar_hw.host.driver --backend rtl`")
        if not 0 <= step < len(model.patch_nums) or model.tokens[step] != tokens:
            raise ValueError(f"{p}: step {step} with {tokens} tokens is not a step of model "
                             f"{model.name} (tokens {model.tokens})")
        out.append(SimRun(int(step), int(tokens), bool(coarse), bool(fine), r.get("instructions"),
                          int(r["cycles"]), r.get("gemm_cycles"), r.get("vec_cycles"),
                          r.get("overlap_cycles")))
    if rows % 2:
        raise ValueError(f"{p}: rows={rows}; the model counts rows as batch x 2 (CFG)")
    if not 0 <= pause < 1:
        raise ValueError(f"{p}: pause {pause} is not a probability in [0, 1)")
    lat = doc.get("unit_latencies")
    if lat is not None and not (isinstance(lat, dict) and all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in lat.items())):
        raise ValueError(f"{p}: unit_latencies must map unit names to cycle counts "
                         f"(fpqvar_hw.flow.asbuilt.top_latencies), got {lat!r}")
    v_cache = doc.get("v_cache", "rows")
    if v_cache not in V_CACHE_LAYOUTS:
        raise ValueError(f"{p}: v_cache must be one of {', '.join(V_CACHE_LAYOUTS)}, got {v_cache!r}")
    tiles = doc.get("tiles", "rows")
    if tiles not in TILE_ORDERS:
        raise ValueError(f"{p}: tiles must be one of {', '.join(TILE_ORDERS)}, got {tiles!r}")
    tile = doc.get("tile_tokens")
    if tile is not None and (not isinstance(tile, int) or isinstance(tile, bool) or tile < 1):
        raise ValueError(f"{p}: tile_tokens must be a positive integer (the compiler's), got {tile!r}")
    return SimCycles(str(p), config.replace(batch=rows // 2, cfg=True), rows, model, tuple(out),
                     pause, lat, memory, v_cache, tiles, tile)


def sim_platform(clock_mhz: float = 300.0) -> Platform:
    """The co-simulation's memory: the top's 128-bit AXI master at one beat per cycle
    (16 bytes/cycle), no budget; cycles do not depend on ``clock_mhz``."""
    import dataclasses

    from .platform import VERILOG
    return dataclasses.replace(VERILOG, name="sim_axi128", clock_mhz=clock_mhz,
                               dram_gbps=16 * clock_mhz / 1e3)


def compare_to_sim(sim: SimCycles, timings: Mapping[str, UnitTiming] | None = None) -> dict:
    """Models vs simulation per step and pipeline mode.

    The as-built model takes the unit latencies the file states (``sim.unit_latencies``,
    the RTL it was measured on) when it states them, else the current RTL's.

    ``cycles``, ``gemm_cycles``, ``vec_cycles``, ``overlap_cycles`` compare the as-built
    model (:func:`top_step` on the file's memory: :func:`sim_memory` with its pause
    probability, or :func:`simdram_memory` for a driver run on the simulator-side DRAM) with
    the top's counters, each ``{"predicted", "simulated", "ratio"}``; ``instructions``
    the program length.  ``planned`` holds the planned-architecture model (:func:`evaluate`
    with the simulated config on :func:`sim_platform`; matrix + quantizer against
    GEMM_CYCLES, vector + attention against VEC_CYCLES) -- the design the RTL does not
    implement yet, so its ratios show the distance between the two, not a model error.
    ``timings`` default to :func:`unit_timings` of the config (planned model only).
    """
    m = sim.model
    mem = sim.memory or sim_memory(sim.pause)
    rows = []
    for r in sim.runs:
        cfg = sim.config.replace(coarse_pipeline=r.coarse, fine_pipeline=r.fine)
        top = top_step(m.C, m.heads, 4 * m.C, m.depth, sum(m.tokens[:r.step]), m.tokens[r.step],
                       sim.rows, cfg, mem, lat=sim.unit_latencies, L_total=m.kv_lengths[-1],
                       v_cache=sim.v_cache, tiles=sim.tiles, tile=sim.tile_tokens)
        t = timings if timings is not None else unit_timings(cfg)
        st = evaluate(m, cfg, sim_platform(), t).steps[r.step]
        u = st.unit_cycles
        planned = {"cycles": st.cycles, "gemm_cycles": u["matrix"] + u["quant"],
                   "vec_cycles": u["vector"] + u["attention"]}
        row = {"step": r.step, "tokens": r.tokens, "coarse": r.coarse, "fine": r.fine,
               "instructions": {"predicted": top.instructions, "simulated": r.instructions}}

        def pair(pred, simv):
            return {"predicted": pred, "simulated": simv,
                    "ratio": (pred / simv) if simv else None}
        for k in ("cycles", "gemm_cycles", "vec_cycles", "overlap_cycles"):
            row[k] = pair(getattr(top, k), getattr(r, k))
        row["planned"] = {k: pair(v, getattr(r, k)) for k, v in planned.items()}
        rows.append(row)
    return {"source": sim.source, "model": m.name, "rows_per_step": sim.rows,
            "config": {k: getattr(sim.config, k) for k in ("preset", "tm", "tn", "lanes",
                                                           "quant_lanes", "vector_lanes",
                                                           "attn_macs", "dram_efficiency")},
            "memory": {"name": mem.name, "read_latency": mem.read_latency,
                       "write_latency": mem.write_latency, "beat_rate": mem.beat_rate,
                       "pause": sim.pause},
            "platform": "sim_axi128 (16 bytes/cycle)", "steps": rows}


