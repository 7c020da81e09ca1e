"""The throughput model's per-unit cycle counts against Amaranth-simulator cycle counts.

Each existing streaming unit is driven at full rate (input always valid, output
always ready) and the cycles from the first input handshake to the last output
(inclusive) are counted; :meth:`fpqvar_hw.flow.perf.UnitTiming.cycles`, built from
the unit's own manifest / latency exactly as ``build.py`` builds it, must predict
them within 10 %.  Units not in the tree yet are skipped with the reason.
Payload bits are drawn with an explicit seed (in the test id); timing does not
depend on data for these units, correctness is their own tests' business.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
from pathlib import Path

import pytest
from amaranth.sim import Simulator

from fpqvar_hw.config import get_preset
from fpqvar_hw.flow.perf import component_manifest, unit_timings

from .test_golden_block import digits_fpqvar  # noqa: F401  (session fixture: the package)

TOLERANCE = 0.10


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def measure_stream(dut, beats: list[int], *, out_name: str = "o", in_name: str = "i",
                   expect_outputs: int, max_cycles: int = 10_000) -> int:
    """Cycles from the first input handshake to the last output beat, inclusive."""
    i_port, o_port = getattr(dut, in_name), getattr(dut, out_name)
    result = {}

    async def tb(ctx):
        ctx.set(o_port.ready, 1)
        cycle, first, sent, got = 0, None, 0, 0
        while got < expect_outputs:
            if sent < len(beats):
                ctx.set(i_port.valid, 1)
                ctx.set(i_port.payload.as_value(), beats[sent])
            else:
                ctx.set(i_port.valid, 0)
            accepted = sent < len(beats) and ctx.get(i_port.ready)
            if ctx.get(o_port.valid):
                got += 1
                result["last"] = cycle
            if accepted:
                if first is None:
                    first = cycle
                sent += 1
            await ctx.tick()
            cycle += 1
            assert cycle < max_cycles, "unit did not produce its outputs"
        result["first"] = first

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return result["last"] - result["first"] + 1


def _check(predicted: int, measured: int) -> None:
    assert abs(predicted - measured) <= TOLERANCE * measured, \
        f"model predicts {predicted} cycles, simulation measured {measured}"


@pytest.mark.skipif(not _have("fpqvar_hw.units.dot"), reason="fpqvar_hw.units.dot not in the tree yet")
@pytest.mark.parametrize("seed, group_size, lanes, groups_per_dot, dots, dfq", [
    (1, 32, 8, 2, 3, False),
    (2, 32, 32, 4, 2, False),
    (3, 64, 16, 1, 5, True),
])
def test_dot_cycles(seed, group_size, lanes, groups_per_dot, dots, dfq):
    from fpqvar_hw.units.dot import GroupDot
    from fpqvar_hw.units.multiplier import MulPair
    dut = GroupDot(pair=MulPair.E2M1_E2M1, group_size=group_size, lanes=lanes, dfq=dfq)
    cfg = get_preset("w4a4").replace(group_size=group_size, lanes=lanes, quant_lanes=lanes)
    timing = unit_timings(cfg, {"dot": component_manifest(dut)})["dot"]
    assert not timing.assumed
    rng = random.Random(seed)
    width = len(dut.i.payload.as_value())
    beats_per_group = group_size // lanes
    last_bit = dut.beat_layout["last"].offset
    beats = []
    for d in range(dots):
        for g in range(groups_per_dot):
            for b in range(beats_per_group):
                # random codes and scales; `last` only on a dot product's final beat
                last = int(g == groups_per_dot - 1 and b == beats_per_group - 1)
                raw = rng.getrandbits(width) & ~(1 << last_bit) | (last << last_bit)
                beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=dots)
    predicted = timing.cycles(dots * groups_per_dot)
    print(f"dot G={group_size} lanes={lanes} dfq={dfq}: measured {measured}, "
          f"predicted {predicted}")
    _check(predicted, measured)


@pytest.mark.skipif(not _have("fpqvar_hw.units.quantizer"), reason="fpqvar_hw.units.quantizer not in the tree")
@pytest.mark.parametrize("seed, fmt, group_size, lanes, groups", [
    (11, "e2m1fn", 32, 8, 6),
    (12, "dfq4", 64, 16, 5),
    (13, "int4", 32, 32, 8),
])
def test_quantizer_cycles(seed, fmt, group_size, lanes, groups):
    from fpqvar_hw.units.quantizer import Quantizer
    dut = Quantizer(format=fmt, group_size=group_size, lanes=lanes)
    cfg = get_preset("w4a4").replace(group_size=group_size, lanes=lanes, quant_lanes=lanes)
    timing = unit_timings(cfg, {"quantizer": component_manifest(dut)})["quantizer"]
    assert not timing.assumed
    rng = random.Random(seed)
    beats = []
    for _ in range(groups * group_size // lanes):
        raw = 0
        for k in range(lanes):      # finite FP16 values (exponent field < 31)
            raw |= (rng.getrandbits(1) << 15 | rng.randrange(31) << 10 | rng.getrandbits(10)) \
                << (16 * k)
        beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=len(beats))
    predicted = timing.cycles(groups)
    print(f"quantizer {fmt} G={group_size} lanes={lanes}: measured {measured}, "
          f"predicted {predicted}")
    _check(predicted, measured)


@pytest.mark.skipif(not _have("fpqvar_hw.units.hadamard"), reason="fpqvar_hw.units.hadamard not in the tree")
@pytest.mark.parametrize("seed, lanes, groups", [(21, 16, 4), (22, 32, 6)])
def test_hadamard_cycles(seed, lanes, groups):
    from fpqvar_hw.units.hadamard import GroupHadamard
    dut = GroupHadamard(lanes=lanes)
    cfg = get_preset("w4a4").replace(quant_lanes=lanes, lanes=min(lanes, 128))
    timing = unit_timings(cfg, {"hadamard": component_manifest(dut)})["hadamard"]
    assert not timing.assumed
    rng = random.Random(seed)
    beats = []
    for _ in range(groups * 128 // lanes):
        raw = 0
        for k in range(lanes):      # small finite FP16 values
            raw |= (rng.getrandbits(1) << 15 | rng.randrange(5, 20) << 10 | rng.getrandbits(10)) \
                << (16 * k)
        beats.append(raw)
    measured = measure_stream(dut, beats, expect_outputs=len(beats))
    predicted = timing.cycles(groups)
    print(f"hadamard lanes={lanes}: measured {measured}, predicted {predicted}")
    _check(predicted, measured)


# ------------------------------------------- the accelerator top's simulated cycle counts
def _top_tb_doc(cycles=(9000, 20000, 41000, 70000)):
    """sim/tb_top.py block_steps schema (digits VAR, 2 rows)."""
    return {"preset": "w4a4", "config": {"tm": 2, "tn": 2, "lanes": 32, "quant_lanes": 8},
            "pause": 0.2, "seed": 22,
            "runs": [{"step": s, "L": n, "instructions": 65, "coarse": c, "fine": True,
                      "cycles": cyc, "gemm_cycles": cyc // 2, "vec_cycles": cyc // 3,
                      "overlap_cycles": cyc // 10}
                     for c in (True, False) for s, (n, cyc) in enumerate(zip((1, 4, 9, 16), cycles))]}


def _driver_doc(backend="rtl", cycles=(9000, 20000, 41000, 70000), dram=None):
    """fpqvar_hw.host.driver.write_cycles_json schema (format version 1)."""
    from fpqvar_hw.config import get_preset
    dev = get_preset("w4a4").replace(tm=2, tn=2, quant_lanes=8).as_dict()
    kv = 0
    steps = []
    for s, (pn, cyc) in enumerate(zip((1, 2, 3, 4), cycles)):
        kv += pn * pn
        on = backend == "rtl"
        steps.append({"si": s, "pn": pn, "new_tokens": pn * pn, "kv_len": kv, "instructions": 65,
                      "cycles": cyc if on else None, "gemm_cycles": cyc // 2 if on else None,
                      "vec_cycles": cyc // 3 if on else None, "overlap_cycles": None,
                      "wall_s": 1.0})
    return {"format": "fpqvar-tiny-image-cycles", "version": 1, "backend": backend,
            "model": {"name": "digits VAR", "patch_nums": [1, 2, 3, 4]}, "rows": 2,
            "labels": [3], "seed": 0, "coarse_pipeline": True, "fine_pipeline": True,
            "device": {**dev, "rows": 2, "dram_base": 0, "dram_size": 1 << 20,
                       **({"dram": dram} if dram is not None else {})},
            "steps": steps, "total": {}}


def _write(tmp_path, doc, name="cycles.json"):
    import json
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("schema", ["top_tb", "driver"])
def test_sim_cycles_load_both_schemas_and_compare_per_step(tmp_path, schema):
    from fpqvar_hw.flow import asbuilt, perf, reports, simcycles
    doc = _top_tb_doc() if schema == "top_tb" else _driver_doc()
    sim = simcycles.load_sim_cycles(_write(tmp_path, doc))
    assert sim.model is perf.DIGITS and sim.rows == 2 and sim.config.batch == 1
    assert (sim.config.tm, sim.config.tn, sim.config.quant_lanes) == (2, 2, 8)
    assert [r.tokens for r in sim.runs][:4] == [1, 4, 9, 16]
    assert sim.pause == (0.2 if schema == "top_tb" else 0.0)
    cmp = simcycles.compare_to_sim(sim)
    assert len(cmp["steps"]) == len(sim.runs)
    m = perf.DIGITS
    for row, run in zip(cmp["steps"], sim.runs):
        c = row["cycles"]
        assert c["simulated"] == run.cycles and c["predicted"] > 0
        assert c["ratio"] == pytest.approx(c["predicted"] / run.cycles)
        # the models' own step costs for this config, not copies of the simulation
        cfg = sim.config.replace(coarse_pipeline=run.coarse, fine_pipeline=run.fine)
        top = asbuilt.top_step(m.C, m.heads, 4 * m.C, m.depth, sum(m.tokens[:run.step]),
                            m.tokens[run.step], 2, cfg, asbuilt.sim_memory(sim.pause),
                            L_total=m.kv_lengths[-1], v_cache=sim.v_cache, tiles=sim.tiles)
        assert (c["predicted"], row["gemm_cycles"]["predicted"], row["vec_cycles"]["predicted"]) \
            == (top.cycles, top.gemm_cycles, top.vec_cycles)
        planned = perf.evaluate(perf.DIGITS, cfg, simcycles.sim_platform()).steps[run.step].cycles
        assert row["planned"]["cycles"]["predicted"] == planned
    md = reports.compare_markdown(cmp)
    assert "| 3 | 16 | 1 | 1 |" in md and "x)" in md
    if schema == "top_tb":      # coarse pipeline off costs at least as much in the model
        on = {r["step"]: r["cycles"]["predicted"] for r in cmp["steps"] if r["coarse"]}
        off = {r["step"]: r["cycles"]["predicted"] for r in cmp["steps"] if not r["coarse"]}
        assert all(off[s] >= on[s] for s in on)


@pytest.mark.parametrize("doc, msg", [
    (_driver_doc(backend="golden"), "has no cycle count \\(backend 'golden'\\)"),
    ({"hello": 1}, "not a cycle-count file; expected one of"),
    ({**_driver_doc(), "version": 2}, "version 2 is not supported"),
    (_driver_doc(dram={"latency_cycles": 300, "stall_per_256": 0}), "device.dram must hold"),
    (_driver_doc(dram={"stall_per_256": 0}), "device.dram must hold"),
    ({**_top_tb_doc(), "tiles": "zigzag"}, "tiles must be one of span, rows, flat"),
    ({**_top_tb_doc(), "runs": [{"step": 1, "L": 9, "coarse": True, "fine": True,
                                 "cycles": 5}]}, "step 1 with 9 tokens is not a step"),
])
def test_sim_cycles_bad_files_say_what_to_do(tmp_path, doc, msg):
    from fpqvar_hw.flow import simcycles
    with pytest.raises(ValueError, match=msg):
        simcycles.load_sim_cycles(_write(tmp_path, doc))
    with pytest.raises(ValueError, match="no such file"):
        simcycles.load_sim_cycles(tmp_path / "missing.json")


def test_driver_run_on_the_simulated_dram_is_modelled_with_it(tmp_path):
    """A driver file that names the simulator-side DRAM (device.dram) is compared on that
    memory (its latency and stalls), not on the AxiRam of older files."""
    from fpqvar_hw.flow import asbuilt, perf, simcycles
    plain = simcycles.compare_to_sim(simcycles.load_sim_cycles(_write(tmp_path, _driver_doc())))
    sim = simcycles.load_sim_cycles(_write(tmp_path, _driver_doc(
        dram={"model": "fpqvar_sim_dram", "latency_cycles": 40, "stall_per_256": 64}), "dram.json"))
    assert sim.memory == asbuilt.simdram_memory(40, 64)
    assert sim.memory.beat_rate == 0.75 and sim.memory.read_latency > 40
    cmp = simcycles.compare_to_sim(sim)
    assert cmp["memory"]["name"] == "fpqvar_sim_dram (latency 40, stall 64/256)"
    m = perf.DIGITS
    for row, base, run in zip(cmp["steps"], plain["steps"], sim.runs):
        top = asbuilt.top_step(m.C, m.heads, 4 * m.C, m.depth, sum(m.tokens[:run.step]), m.tokens[run.step],
                               2, sim.config, sim.memory, L_total=m.kv_lengths[-1],
                               v_cache=sim.v_cache, tiles=sim.tiles)
        assert row["cycles"]["predicted"] == top.cycles > base["cycles"]["predicted"]


def test_build_refuses_an_unusable_sim_cycles_file_before_writing(tmp_path, capsys):
    import build
    bad = _write(tmp_path, _driver_doc(backend="golden"))
    code = build.main(["--platform", "verilog", "--out", str(tmp_path / "out"), "--no-synth",
                       "--no-lint", "--no-top", "--sim-cycles", str(bad)])
    assert code == 1 and "--sim-cycles" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------- the as-built model against the committed cycle files
#: Every cycle file the top's co-simulation wrote that the repository keeps
#: (benchmarks/results/top_cycles/README.md says which command made each).
TOP_CYCLES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                     / "top_cycles").glob("*.json"))
#: docs/build.md: the as-built model (asbuilt.top_step) is within this of CYCLES, GEMM_CYCLES
#: and VEC_CYCLES for every simulated step; it is derived from the RTL, not fitted to these
#: files, so a change of the engines or of the compiler's programs that moves the simulated
#: cycles beyond it must come with a model (and file) update.
TOP_TOLERANCE = 0.15


def test_committed_cycle_files_exist():
    names = {p.name for p in TOP_CYCLES}
    assert {"driver-rtl-steps0-1-coarse1-fine1.json",
            "tb_top-s21-step0-coarse1-fine1-pause0.2.json",
            "tb_top-s23-step0-coarse0-fine1-pause0.2.json"} <= names


def test_cycle_files_state_the_rtl_they_measured():
    """Every committed cycle file states the unit latencies of the RTL it was measured on
    (the model is held to that RTL, below), with the keys the current model uses; the
    current RTL is held to the model by `sim/test_top.py` (step 0, coarse on and off),
    which stamps and checks the cycle files it writes on every CI run."""
    from fpqvar_hw.flow import asbuilt, simcycles
    current = asbuilt.top_latencies(32, (4, 8))
    sma = {k for k in current if k.startswith("sma_")}
    for path in TOP_CYCLES:
        sim = simcycles.load_sim_cycles(path)
        assert sim.unit_latencies is not None, f"{path.name}: no unit_latencies"
        # files from before the softmax array lack its keys ("sma_*")
        got = set(sim.unit_latencies) | sma
        # files from before the attention array lack its keys; from before the pipelined
        # array cell, bias add and read issue also those three
        # files from before the register slices around the units lack those keys, and
        # from before the registered busy of the vector engine and the matrix engine's
        # array slice "vec_busy" and "arr_slice"
        # and from before the row units' rows in flight "sm_slots" and "l2_slots", from
        # before LayerNorm's rows in flight "ln_slots"
        # and from before the attention array's two result drains "att_drains", and from
        # before the matrix drain's register slices "drain_slice" and "drain_set"
        cur = set(current) - {"drain_slice", "drain_set"}
        if got in (set(current), cur, cur - {"att_drains"},
                                       cur - {"ln_slots", "att_drains"}):
            continue
        att = {k for k in current if k.startswith("att_")}
        now = cur - {"sm_slots", "l2_slots", "ln_slots", "att_drains"}
        new = {"vec_busy", "arr_slice"}
        sl = now - {"vec_slices", "load_slices", "rd_slice", "wr_slice"} - new
        assert got in (now, now - new, sl, sl - {"att_slots"}, sl - att,
                                           sl - att - {"dot_group", "bias", "vec_issue"}), \
            path.name


def test_stated_latencies_reach_the_model():
    """The file's latencies, not the current RTL's, time the step (a file without them is
    timed with the current RTL's)."""
    from fpqvar_hw.flow import simcycles
    path = next(p for p in TOP_CYCLES if p.name == "driver-rtl-step0-coarse0-fine0.json")
    sim = simcycles.load_sim_cycles(path)
    stated = simcycles.compare_to_sim(sim)["steps"][0]["cycles"]["predicted"]
    slower = {k: v + 50 if k in ("gelu", "gap_GELU") else v for k, v in sim.unit_latencies.items()}
    moved = simcycles.compare_to_sim(dataclasses.replace(sim, unit_latencies=slower))
    assert moved["steps"][0]["cycles"]["predicted"] > stated


@pytest.mark.parametrize("path", TOP_CYCLES, ids=lambda p: p.stem)
def test_as_built_model_matches_the_simulated_top(path):
    from fpqvar_hw.flow import simcycles
    cmp = simcycles.compare_to_sim(simcycles.load_sim_cycles(path))
    for s in cmp["steps"]:
        assert s["instructions"]["predicted"] == s["instructions"]["simulated"], s
        for k in ("cycles", "gemm_cycles", "vec_cycles"):
            r = s[k]["ratio"]
            print(f"{path.name} step {s['step']} coarse {s['coarse']} fine {s['fine']} {k}: "
                  f"model {s[k]['predicted']:,} / sim {s[k]['simulated']:,} = {r:.3f}")
            assert abs(r - 1) <= TOP_TOLERANCE, (path.name, s["step"], k, s[k])


def test_step_program_equals_the_compilers(digits_fpqvar):  # noqa: F811
    """asbuilt.top_step_program (shape level, no package) is what fpqvar_hw.host.compiler emits:
    same instruction sequence, GEMM shapes and flags, VEC sub-ops and loop counts, sync.
    Both map the one step plan (fpqvar_hw.host.plan, tests/test_plan.py); this checks what
    each adds to it: the read operands' and the results' strides, the GEMM flags, and that the plan's
    token-range footprints give the sync flags the compiler's byte footprints give."""
    from fpqvar_quant.ptq.package import load_package

    from fpqvar_hw.flow import asbuilt, perf
    from fpqvar_hw.host.compiler import Compiler
    from fpqvar_hw.isa import Gemm, GemmFlag, Halt, VecFlag
    from fpqvar_hw.host.compiler import V_CACHE_LAYOUT
    pkg = load_package(digits_fpqvar[1])
    m = perf.DIGITS
    assert asbuilt.V_CACHE_LAYOUTS[0] == V_CACHE_LAYOUT      # the model's default is the compiler's
    for coarse in (True, False):
        cfg = get_preset("w4a4").replace(tm=2, tn=2, lanes=32, quant_lanes=8,
                                         coarse_pipeline=coarse)
        comp = Compiler(pkg, cfg, rows=2)
        assert (comp.C, comp.H, comp.hidden, comp.depth) == (m.C, m.heads, 4 * m.C, m.depth)
        for step in range(len(m.tokens)):
            L_start, L = comp.step_tokens(step)
            want = [i for i in comp.instructions(step) if not isinstance(i, Halt)]
            got = asbuilt.top_step_program(m.C, m.heads, 4 * m.C, m.depth, L_start, L, 2, cfg.gemm_rows,
                                           L_total=comp.L_total, coarse=coarse)
            assert len(got) == len(want)
            for k, (g, w) in enumerate(zip(got, want)):
                assert (g.opcode, g.sync) == (int(w.opcode), w.sync), (step, k, g, w)
                if isinstance(w, Gemm):
                    assert g.gemm == (w.m, w.k, w.n, bool(w.flags & GemmFlag.HAD),
                                      bool(w.flags & GemmFlag.BIAS)), (step, k)
                else:
                    assert g.vec[:2] == (int(w.subop), tuple(w.n)), (step, k)
                    for name, s0, s1, esize in g.vec[2]:
                        op = getattr(w, name)
                        assert (op.s0, op.s1) == (s0, s1), (step, k, name)
                    assert g.out[:2] == (w.d.s0, w.d.s1), (step, k, "d")     # the results
                    assert g.out[2] == (2 if w.flags & VecFlag.D_FP16 else 4), (step, k)


def test_simulated_dram_is_not_the_tops_limit():
    """The simulator-side DRAM queues at least as many read bursts and owes at least as
    many write responses as the top keeps in flight, so the as-built model (which takes
    the top's limits) describes the driver's RTL runs on it."""
    import inspect

    from fpqvar_hw.engines.top import Accelerator
    from fpqvar_hw.host import simdram
    sig = inspect.signature(Accelerator.__init__).parameters
    assert simdram.QUEUE >= sig["max_outstanding"].default
    assert simdram.B_QUEUE >= sig["max_writes"].default
    v = simdram.harness_verilog.__globals__["_DRAM"]
    assert f"QUEUE_LOG2 = {simdram.QUEUE.bit_length() - 1}," in v
    assert f"BQUEUE_LOG2 = {simdram.B_QUEUE.bit_length() - 1}" in v



# ------------------------------------------- calibration: benchmarks/top_calibration.py
def _calibration():
    from tests.script_loader import load_script
    return load_script("benchmarks/top_calibration.py", "top_calibration")


def test_calibration_files_span_the_dimensions_within_the_tolerance():
    """issue 15's calibration: the as-built model predicts each committed configuration's
    simulated CYCLES (its steps together) within ``TOLERANCE`` (10 %) and every step's
    within ``TOP_TOLERANCE``, and across the files the attention array, C (up to >= 256),
    the depth, the batch (up to >= 2) and the DRAM read latency (up to >= 100 cycles) each
    take two values or more."""
    cal = _calibration()
    seen: dict = {k: set() for k in ("array", "C", "depth", "batch", "latency")}
    for c in cal.CONFIGS:
        path = cal.CAL_DIR / f"{c.name}.json"
        assert path.is_file(), f"{path.name} missing: python benchmarks/top_calibration.py --only {c.name}"
        cfg, C, _, model = cal.top_of(c)
        for key, v in (("array", (cfg.att_t, cfg.att_n)), ("C", C), ("depth", model.depth),
                       ("batch", c.rows // 2), ("latency", c.dram[0])):
            seen[key].add(v)
        steps = cal.compare(path)
        assert [s["step"] for s in steps] == list(range(c.steps)), path.name
        for s in steps:
            assert s["instructions"]["predicted"] == s["instructions"]["simulated"], (c.name, s)
            assert abs(s["cycles"]["ratio"] - 1) <= TOP_TOLERANCE, (c.name, s["step"], s["cycles"])
        model, sim = (sum(s["cycles"][k] for s in steps) for k in ("predicted", "simulated"))
        assert abs(model / sim - 1) <= cal.TOLERANCE, (c.name, model, sim)
    assert all(len(v) >= 2 for v in seen.values()), seen
    assert max(seen["C"]) >= 256 and max(seen["batch"]) >= 2 and max(seen["latency"]) >= 100, seen


@pytest.mark.slow
def test_calibration_files_are_stamped_with_the_current_rtl():
    """Each committed calibration file was measured on the RTL that exists: its stamp is the
    SHA-256 of today's emitted top (and harness) for its configuration, and its unit latencies
    are today's.  A change of the RTL fails here until the files are re-simulated
    (``python benchmarks/top_calibration.py``, about 10 minutes)."""
    import json

    from fpqvar_hw.flow import asbuilt
    cal = _calibration()
    for c in cal.CONFIGS:
        doc = json.loads((cal.CAL_DIR / f"{c.name}.json").read_text())
        cfg, C, max_kv, _ = cal.top_of(c)
        assert doc["rtl_hash"] == cal.rtl_hash(cfg, C, max_kv), \
            f"{c.name}: measured on other RTL; re-run `python benchmarks/top_calibration.py`"
        assert doc["unit_latencies"] == asbuilt.top_latencies(cfg.lanes, (cfg.att_t, cfg.att_n), cfg.tn,
                                                              cfg.row_sets, cfg.sm_lanes), c.name
