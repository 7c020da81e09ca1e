"""Co-simulation of the accelerator top (fpqvar_hw.engines.top.Accelerator) on Verilator.

The emitted Verilog of the whole accelerator (controller, matrix engine,
vector engine, AXI arbiters), inside the simulation harness of
:mod:`fpqvar_hw.host.simdram` with ``dram_ext = 1``, runs against a cocotbext-axi
``AxiRam`` on the harness's ``m_axi`` ports (the protocol-checking DRAM) with random
pauses on every AXI channel; every result is compared byte for byte with
:func:`fpqvar_hw.host.isa_sim.execute` (sim/tb_top.py).

Build: ``tm=2, tn=2, lanes=32, quant_lanes=8``, ``C=128``, ``max_kv=30`` (the
digits VAR: patch_nums (1, 2, 3, 4), 30 tokens).  One Verilator build (about 2 minutes
on two cores; cached under build/sim/top-*) serves every test here and
sim/test_tiny_image.py (the same harness, with its own DRAM).

Every test here is in the slow tier (``--run-slow``, which CI runs).  Tests:
registers, HALT, unknown opcode, window errors, abort, reset; scale step 0 of the
digits VAR (both blocks, 65 instructions) in the default pipeline mode, and with the
coarse pipeline off.  The cycle counters go to ``build/top/cycles-s<seed>.json``
(``fpqvar_hw.flow.perf.load_sim_cycles`` reads them).  The default tier covers the
controller and arbiters in the Amaranth simulator (tests/test_hw_top.py,
tests/test_hw_axi.py).  The whole image (all four scale steps, on the
simulator-side DRAM) is sim/test_tiny_image.py.
"""
from __future__ import annotations

import json

import pytest

from fpqvar_hw.cache import write_text_atomic
from fpqvar_hw.flow import asbuilt, simcycles
from fpqvar_hw.host.backends import RTL_C, RTL_MAX_KV, RTL_OVERRIDES, RTL_PRESET, rtl_config
from fpqvar_hw.host.compiler import TILE_ORDER, V_CACHE_LAYOUT
from fpqvar_hw.host.rtl import top_build_name, top_component, top_harness
from sim.runner import REPO, run_cocotb
from sim.top_steps import prepare_steps
from tests.test_golden_block import digits_fpqvar  # noqa: F401  (session fixture: the package)
from tests.test_perf_vs_sim import TOP_TOLERANCE

#: the driver's RTL top (also sim/test_tiny_image.py's: one shared Verilator build)
PRESET, OVERRIDES = RTL_PRESET, RTL_OVERRIDES
CFG = rtl_config()
C, MAX_KV = RTL_C, RTL_MAX_KV
NAME = top_build_name(CFG, C, MAX_KV)
RAM_SIZE = 1 << 22


def _params(seed: int, pause: float, **extra) -> dict:
    return {"preset": PRESET, "overrides": OVERRIDES, "max_kv": MAX_KV, "seed": seed,
            "pause": pause, "ram_size": RAM_SIZE, **extra}


@pytest.fixture(scope="module")
def dut():
    # the process's one top object: elaborated once for these tests and sim/test_tiny_image.py
    return top_component(CFG, C, MAX_KV)


@pytest.mark.slow
def test_top_control(dut):
    """(a)-(f): registers, HALT, errors 1/2/5, abort, reset, with AXI pauses."""
    run_cocotb(dut, name=NAME, test_module="sim.tb_top", params=_params(11, 0.3), harness=top_harness(CFG, C, MAX_KV),
               testcase="registers,halt_only,bad_opcode,window_error,abort_then_run,reset_then_run")


def _run_steps(dut, pkg_path, n_steps, modes, seed, pause, tile_tokens=None):
    spec = prepare_steps(pkg_path, CFG, rows=2, n_steps=n_steps, seed=seed, max_kv=MAX_KV,
                         ram_size=RAM_SIZE, tile_tokens=tile_tokens)
    cycles = REPO / "build" / "top" / f"cycles-s{seed}.json"
    cycles.parent.mkdir(parents=True, exist_ok=True)
    run_cocotb(dut, name=NAME, test_module="sim.tb_top", testcase="block_steps", harness=top_harness(CFG, C, MAX_KV),
               params=_params(seed, pause, steps=str(spec), modes=modes, cycles_out=str(cycles)))
    data = json.loads(cycles.read_text())
    assert len(data["runs"]) == len(modes) * n_steps
    # stamp the file with the unit latencies of the RTL it measured, then hold the as-built
    # model to it (the committed copies in benchmarks/results/top_cycles come from here)
    run_cfg = simcycles.load_sim_cycles(cycles).config
    data["unit_latencies"] = asbuilt.top_latencies(run_cfg.lanes, (run_cfg.att_t, run_cfg.att_n),
                                                   run_cfg.tn, run_cfg.row_sets, run_cfg.sm_lanes)
    data["v_cache"] = V_CACHE_LAYOUT         # the compiler's, which tb_top's programs use
    data["tiles"] = TILE_ORDER
    if tile_tokens is not None:
        data["tile_tokens"] = tile_tokens
    write_text_atomic(cycles, json.dumps(data, indent=1))
    for s in simcycles.compare_to_sim(simcycles.load_sim_cycles(cycles))["steps"]:
        assert s["instructions"]["predicted"] == s["instructions"]["simulated"], s
        for k in ("cycles", "gemm_cycles", "vec_cycles"):
            assert abs(s[k]["ratio"] - 1) <= TOP_TOLERANCE, (cycles.name, k, s[k])
    return data


@pytest.mark.slow
def test_top_block_step0(dut, digits_fpqvar):  # noqa: F811
    """(g) scale step 0 (one token per row, every block) bit-exact vs isa_sim;
    with the coarse pipeline on, the engines overlap.  Tiles of one token: two tiles (the
    default tile holds both rows of step 0, one chain, which cannot overlap)."""
    run, = _run_steps(dut, digits_fpqvar[1], 1, [[1, 1]], seed=21, pause=0.2, tile_tokens=1)["runs"]
    assert run["overlap_cycles"] > 0, f"coarse pipeline on but the engines never overlapped: {run}"


@pytest.mark.slow
def test_top_block_step0_coarse_off(dut, digits_fpqvar):  # noqa: F811
    """(g) step 0 with CTRL.coarse = 0 (every instruction waits for both engines):
    still bit-exact vs isa_sim, and the engines never overlap.  (Measured: 56,755
    cycles against 49,818 with the coarse pipeline on, seeds 23 / 21, pause 0.2.)"""
    run, = _run_steps(dut, digits_fpqvar[1], 1, [[0, 1]], seed=23, pause=0.2)["runs"]
    assert run["overlap_cycles"] == 0, f"coarse pipeline off but the engines overlapped: {run}"


@pytest.mark.slow
def test_calibration_rerun():
    """One configuration of benchmarks/top_calibration.py re-simulated (the digits VAR at
    batch 2 on a 128-cycle DRAM, steps 0-1): bit-exact against isa_sim (tb_top), and the
    top's counters equal the committed calibration file's, which the as-built model is held
    to (tests/test_perf_vs_sim.py).  A difference means the RTL or the compiler changed
    without re-running the calibration."""
    from tests.script_loader import load_script

    cal = load_script("benchmarks/top_calibration.py", "top_calibration")
    c = cal.by_name("k2-digits-b2-lat128")
    want = json.loads((cal.CAL_DIR / f"{c.name}.json").read_text())
    got = json.loads(cal.simulate(c, REPO / "build" / "calibration" / f"{c.name}.json").read_text())
    assert got["rtl_hash"] == want["rtl_hash"], \
        f"{c.name}: the committed file was measured on other RTL; re-run python benchmarks/top_calibration.py"
    assert got["runs"] == want["runs"]
