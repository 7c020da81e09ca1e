"""cocotb module for sim/test_tiny_image.py: one image of the tiny digits VAR with every
transformer block on the RTL top (``fpqvar_hw.engines.top.Accelerator``).

The host side runs in this (cocotb) process: :func:`fpqvar_hw.host.driver.generate` with an
:class:`fpqvar_hw.host.driver.RtlBackend` (cocotbext-axi ``AxiRam`` on ``m_axi``,
``AxiLiteMaster`` on ``s_axil``, done interrupt on ``irq``).

Parameters (``tb_params``): ``package`` (quantized package directory), ``label``,
``seed``, ``sampling`` ({cfg, top_k, top_p}), ``preset`` + ``overrides`` (the
AcceleratorConfig the top was built with), ``max_kv``, ``dram_base``, ``coarse``,
``fine``, ``timeout_cycles`` (per step), ``max_steps`` (None: the whole image), ``out`` (folder for ``device.png``,
``tokens.json``, ``cycles.json`` and ``rtl_steps.npz``: per step the block input and
output, the head logits, the tokens, and the decoded images) and optionally ``expect_tokens`` (per scale, per image: the
golden backend's tokens; any difference fails the test, naming the step).
"""
from __future__ import annotations

import logging
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from fpqvar_hw.host import driver as drv
from fpqvar_hw import isa
from fpqvar_hw.config import get_preset
from sim.streams import tb_params

PERIOD_NS = 10


@cocotb.test()
async def tiny_image(dut):
    p = tb_params()
    out = Path(p["out"])
    pkg = drv.load_package_checked(Path(p["package"]))
    host = drv.host_model_from_package(pkg)
    config = get_preset(p["preset"]).replace(**p.get("overrides", {}))
    backend = drv.RtlBackend(pkg, dut, rows=2, coarse=p["coarse"], fine=p["fine"], config=config,
                             dram_base=p["dram_base"], max_kv=p["max_kv"], timeout_cycles=p["timeout_cycles"])
    for bus in (backend.ram.write_if, backend.ram.read_if, backend.axil.write_if, backend.axil.read_if):
        bus.log.setLevel(logging.WARNING)          # one INFO line per burst would dominate the run time
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    ident = await backend.axil.read_dword(isa.REGS["ID"])
    assert ident == isa.REG_ID_VALUE, f"ID register 0x{ident:08x}, expected 0x{isa.REG_ID_VALUE:08x}"

    sampling = drv.Sampling(**p["sampling"])
    run = await drv.generate(host, backend, [p["label"]], p["seed"], sampling, max_steps=p.get("max_steps"),
                             log=dut._log.info)
    drv.write_run(run, out)
    drv.write_cycles_json(run, out / "cycles.json", coarse=p["coarse"], fine=p["fine"],
                          device={**backend.device_info(), "top": "fpqvar_hw.engines.top.Accelerator",
                                  "clock_period_ns": PERIOD_NS})
    np.savez(out / "rtl_steps.npz", images=run.images,
             **{f"{k}{s.si}": getattr(s, k) for s in run.steps for k in ("x_in", "x_out", "logits", "tokens")})
    for s in run.steps:
        dut._log.info(f"step {s.si}: {s.perf.cycles} cycles (GEMM {s.perf.gemm_cycles}, VEC {s.perf.vec_cycles}, "
                      f"both {s.perf.overlap_cycles}), {s.perf.instructions} instructions, {s.perf.wall_s:.1f} s")
    want = p.get("expect_tokens")
    if want is not None:
        for s, w in zip(run.steps, want):
            assert s.tokens.tolist() == w, (f"step {s.si}: RTL sampled {s.tokens.tolist()}, the golden backend "
                                            f"{w}; block outputs saved in {out / 'rtl_steps.npz'}")
        assert len(run.steps) == min(len(want), p.get("max_steps") or len(want))
