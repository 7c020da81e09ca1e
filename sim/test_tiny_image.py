"""The tiny digits image on the simulated RTL top (Verilator): every transformer block of
the scale steps runs on ``fpqvar_hw.engines.top.Accelerator`` through
:func:`fpqvar_hw.host.rtl.run_rtl_image` (the host loop of ``fpqvar_hw.host.driver`` in
the cocotb process). The sampled tokens must equal the golden backend's (compiled programs
on ``fpqvar_hw.host.isa_sim``) for the same package, seed and class; the image, tokens and
per-step cycle counters are saved.

The top is built with the driver's RTL configuration (``fpqvar_hw.host.driver.rtl_config``:
``tm=2, tn=2, lanes=32, quant_lanes=8``, ``C=128``, ``max_kv=30``), like sim/test_top.py,
under the same build name, so the two tests share one Verilator build.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fpqvar_hw.host import backends, records
from fpqvar_hw.host import driver as drv
from fpqvar_hw.host import package as hostpkg
from fpqvar_hw.host.rtl import run_rtl_image
from sim.runner import REPO

CFG = backends.rtl_config()
C, MAX_KV, DRAM_BASE = backends.RTL_C, backends.RTL_MAX_KV, backends.RTL_DRAM_BASE

def golden_tokens(package: Path, label: int, seed: int, sampling: records.Sampling) -> list:
    """Tokens of the golden backend compiled for the RTL top's configuration."""
    pkg = hostpkg.load_package_checked(package)
    run = asyncio.run(drv.generate(hostpkg.host_model_from_package(pkg),
                                   backends.GoldenBackend(pkg, rows=2, config=CFG, dram_base=DRAM_BASE, max_kv=MAX_KV),
                                   [label], seed, sampling))
    return run.tokens


@pytest.mark.slow
def test_tiny_image_on_rtl():
    """The whole image (scale steps 0-3) on the RTL top through the driver (RtlBackend: image
    load, adaLN, x, program, registers, irq, counters; the simulator-side DRAM with read
    latency and random stalls, no protocol error): its tokens equal the golden backend's at
    every step."""
    package = hostpkg.build_package(hostpkg.PackageSettings(preset="fp4-dfq-ght"))
    sampling = records.Sampling()
    want = golden_tokens(package, 3, 0, sampling)
    out = REPO / "build" / "tiny-image" / "rtl-test"
    run = run_rtl_image(package, config=CFG, C=C, max_kv=MAX_KV, dram_base=DRAM_BASE, label=3, seed=0,
                        sampling=sampling, out=out, expect_tokens=want)
    assert len(run.steps) == len(want) == 4
    assert run.tokens == want
    assert (out / "device.png").stat().st_size > 0
    cyc = json.loads((out / "cycles.json").read_text())
    assert all(s["cycles"] > 0 and s["instructions"] > 0 for s in cyc["steps"])
    assert cyc["total"]["cycles"] == sum(s["cycles"] for s in cyc["steps"])


@pytest.mark.slow
def test_step0_with_long_dram_latency():
    """Scale step 0 with the simulated DRAM 128 cycles from read address to data, 128 from a
    write's beat to its response, and one handshake in four withheld: still the golden
    token, no protocol error, and the as-built
    model on that memory (``fpqvar_hw.flow.asbuilt.simdram_memory``) predicts CYCLES,
    GEMM_CYCLES and VEC_CYCLES within the tolerance it meets on the AxiRam runs (the GEMM's
    read bursts bound by the arbiter's outstanding slots: 2.9x the short-latency cycles;
    the vector engine's element stream by its issue side's lookahead,
    ``VectorEngine.lookahead_stall``)."""
    from fpqvar_hw.flow import simcycles
    from tests.test_perf_vs_sim import TOP_TOLERANCE

    package = hostpkg.build_package(hostpkg.PackageSettings(preset="fp4-dfq-ght"))
    sampling = records.Sampling()
    want = golden_tokens(package, 3, 0, sampling)[:1]
    out = REPO / "build" / "tiny-image" / "rtl-test-latency128"
    run = run_rtl_image(package, config=CFG, C=C, max_kv=MAX_KV, dram_base=DRAM_BASE, label=3, seed=0,
                        sampling=sampling, out=out, expect_tokens=want, max_steps=1,
                        dram_latency=128, dram_stall=64, dram_write_latency=128)
    assert run.tokens == want
    sim = simcycles.load_sim_cycles(out / "cycles.json")
    assert sim.memory is not None and sim.memory.read_latency > 128
    assert sim.memory.write_latency > 128
    step, = simcycles.compare_to_sim(sim)["steps"]
    for k in ("cycles", "gemm_cycles", "vec_cycles"):
        assert abs(step[k]["ratio"] - 1) <= TOP_TOLERANCE, (k, step[k])
