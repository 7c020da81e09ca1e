"""The tiny digits image on the simulated RTL top (Verilator): every transformer block of
all four scale steps runs on ``fpqvar_hw.engines.top.Accelerator``; the host loop
(``fpqvar_hw.host.driver``) runs in the cocotb process. The sampled tokens must equal the
golden backend's (compiled programs on ``fpqvar_hw.host.isa_sim``) for the same package,
seed and class; the image, tokens and per-step cycle counters are saved.

The top is built with the configuration of ``sim/test_top.py`` (``tm=2, tn=2,
lanes=32, quant_lanes=8``, ``C=128``, ``max_kv=30``) under the same build name, so the
two tests share one Verilator build (several minutes on two cores, cached under
``build/sim/top-*``).

:func:`run_rtl_image` is also what ``python -m fpqvar_hw.host.driver --backend rtl`` runs.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fpqvar_hw.host import driver as drv
from fpqvar_hw.config import get_preset
from sim.runner import REPO, run_cocotb

#: The top's build: the configuration and build name of sim/test_top.py, so that both tests
#: share one Verilator build (a different Verilog text gets its own folder, never a clash).
PRESET = "w4a4"
OVERRIDES = {"tm": 2, "tn": 2, "lanes": 32, "quant_lanes": 8}
CFG = get_preset(PRESET).replace(**OVERRIDES)
C, MAX_KV = 128, 30
NAME = "top-tm2tn2l32q8-c128kv30"

#: DRAM window of the image (any 128-byte aligned base works; non-zero exercises DRAM_BASE)
DRAM_BASE = 0x10000
#: per-step limit (cycles); step 3 (16 tokens x 2 rows) is the longest
TIMEOUT_CYCLES = 20_000_000
#: scale steps the slow test runs on the RTL
TEST_STEPS = 1


def golden_tokens(package: Path, label: int, seed: int, sampling: drv.Sampling) -> list:
    """Tokens of the golden backend compiled for the RTL top's configuration."""
    pkg = drv.load_package_checked(package)
    run = asyncio.run(drv.generate(drv.host_model_from_package(pkg),
                                   drv.GoldenBackend(pkg, rows=2, config=CFG, dram_base=DRAM_BASE, max_kv=MAX_KV),
                                   [label], seed, sampling))
    return run.tokens


def run_rtl_image(package: Path, *, label: int, seed: int, sampling: drv.Sampling, out: Path,
                  coarse: bool = True, fine: bool = True, expect_tokens: list | None = None,
                  max_steps: int | None = None) -> drv.ImageRun:
    """Build (or reuse) the RTL top, run one image on it in cocotb and return the run as
    read back from ``out`` (``tokens.json``, ``cycles.json``, ``rtl_steps.npz``, ``device.png``)."""
    import numpy as np

    from fpqvar_hw.engines.top import Accelerator

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"package": str(Path(package).resolve()), "label": int(label), "seed": int(seed),
              "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
              "preset": PRESET, "overrides": OVERRIDES, "max_kv": MAX_KV, "dram_base": DRAM_BASE,
              "coarse": bool(coarse), "fine": bool(fine), "timeout_cycles": TIMEOUT_CYCLES,
              "out": str(out), "expect_tokens": expect_tokens, "max_steps": max_steps}
    run_cocotb(Accelerator(CFG, C=C, max_kv=MAX_KV), name=NAME, test_module="sim.tb_tiny_image",
               params=params, testcase="tiny_image")
    doc = json.loads((out / "tokens.json").read_text())
    cyc = json.loads((out / "cycles.json").read_text())
    z = np.load(out / "rtl_steps.npz")
    steps = []
    for st in cyc["steps"]:
        si = st["si"]
        perf = drv.StepPerf(**{k: st[k] for k in ("cycles", "gemm_cycles", "vec_cycles", "overlap_cycles",
                                                   "instructions", "wall_s")})
        steps.append(drv.StepRecord(si, st["pn"], z[f"tokens{si}"], z[f"x_in{si}"], z[f"x_out{si}"],
                                    z[f"logits{si}"], perf))
    return drv.ImageRun(doc["labels"], doc["seed"], sampling, "rtl", steps, z["images"],
                        doc["host_seconds"], doc["device_seconds"])


@pytest.mark.slow
def test_tiny_image_on_rtl():
    """Scale step 0 of one image on the RTL top through the driver (RtlBackend: image load,
    adaLN, x, program, registers, irq, counters): its tokens equal the golden backend's.
    (All four steps take far longer than the slow tier allows on a shared 2-core machine;
    ``python -m fpqvar_hw.host.driver --backend rtl`` runs the whole image.)"""
    package = drv.build_package(drv.PackageSettings(preset="fp4-dfq-ght"))
    sampling = drv.Sampling()
    want = golden_tokens(package, 3, 0, sampling)
    out = REPO / "build" / "tiny-image" / "rtl-test"
    run = run_rtl_image(package, label=3, seed=0, sampling=sampling, out=out, expect_tokens=want,
                        max_steps=TEST_STEPS)
    assert run.tokens == want[:TEST_STEPS]
    assert (out / "device.png").stat().st_size > 0
    cyc = json.loads((out / "cycles.json").read_text())
    assert all(s["cycles"] > 0 and s["instructions"] > 0 for s in cyc["steps"])
    assert cyc["total"]["cycles"] == sum(s["cycles"] for s in cyc["steps"])
