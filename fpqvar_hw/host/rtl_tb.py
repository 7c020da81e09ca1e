"""cocotb module of :func:`fpqvar_hw.host.rtl.run_rtl_image`: one image of a quantized
package with every transformer block on the RTL top (``fpqvar_hw.engines.top.Accelerator``).

The host side runs in this (cocotb) process: :func:`fpqvar_hw.host.driver.generate` with an
:class:`RtlBackend`.

Parameters (:func:`fpqvar_hw.host.cosim.tb_params`): ``package`` (quantized package
directory), ``label``, ``seed``, ``sampling`` ({cfg, top_k, top_p}), ``config`` (the
``AcceleratorConfig.as_dict()`` the top was built with), ``max_kv``, ``dram_base``,
``coarse``, ``fine``, ``timeout_cycles`` (per step), ``max_steps`` (None: the whole image),
``dram_latency``, ``dram_stall`` (the simulated DRAM), ``out`` (folder for ``device.png``, ``tokens.json``, ``cycles.json`` and ``rtl_steps.npz``:
per step the block input and output, the head logits, the tokens, and the decoded images)
and optionally ``expect_tokens`` (per scale, per image: any difference fails the test,
naming the step).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from fpqvar_hw import isa
from fpqvar_hw.config import AcceleratorConfig
from fpqvar_hw.host import driver as drv
from fpqvar_hw.host import package as hostpkg
from fpqvar_hw.host import records
from fpqvar_hw.host.cosim import tb_params
from fpqvar_hw.host.backends import DeviceBackend, DeviceError
from fpqvar_hw.host.records import StepPerf

PERIOD_NS = 10


class RtlBackend(DeviceBackend):
    """The compiled programs on the simulated RTL top (``fpqvar_hw.engines.top.Accelerator``),
    inside a cocotb test.

    ``dut`` is the simulation harness (:func:`fpqvar_hw.host.rtl.top_harness`): the DRAM is
    its Verilog AXI4 memory (:mod:`fpqvar_hw.host.simdram`; ``dram_latency`` cycles of read
    latency, handshakes withheld with probability ``dram_stall/256``), written and read by
    the host through the simulator in zero simulated time, between runs; registers are
    programmed through an ``AxiLiteMaster`` on ``s_axil``.  After every run the memory's
    protocol-error counter must be 0. The test starts the clock and applies
    the reset. Per step: PROG_ADDR, DRAM_BASE, DRAM_SIZE, then CTRL = start | irq_en |
    coarse | fine; wait for ``irq`` (at most ``timeout_cycles``; then abort and raise),
    check STATUS (error / aborted -> :class:`DeviceError` with the code and ERR_PC), read
    PC / CYCLES / GEMM_CYCLES / VEC_CYCLES / OVERLAP_CYCLES, clear done (write 1), check
    that ``irq`` falls."""

    name = "rtl"

    def __init__(self, pkg: Any, dut: Any, *, rows: int, coarse: bool = True, fine: bool = True,
                 config: Any = None, dram_base: int = 0, max_kv: int | None = None,
                 timeout_cycles: int = 20_000_000, dram_latency: int = 8, dram_stall: int = 16,
                 dram_seed: int = 1, dram_write_latency: int = 0) -> None:
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        from .simdram import Backdoor

        super().__init__(pkg, rows=rows, coarse=coarse, fine=fine, config=config, dram_base=dram_base,
                         max_kv=max_kv)
        self.dut, self.clk, self.irq = dut, dut.clk, dut.irq
        for name, value, bits in (("dram_latency", dram_latency, 8), ("dram_stall", dram_stall, 8),
                                   ("dram_seed", dram_seed, 32),
                                   ("dram_write_latency", dram_write_latency, 8)):
            if not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise ValueError(f"{name} must be an integer in [0, {1 << bits}), got {value!r}")
            getattr(dut, name).value = value
        dut.dram_ext.value = 0
        self.ram = Backdoor(dut)
        size = self.compiler.dram_base + self.compiler.dram_size
        if size > self.ram.size:
            raise DeviceError(f"the compiled model needs {size} bytes of DRAM; the simulated memory "
                              f"holds {self.ram.size}")
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"), dut.clk, dut.rst)
        self.timeout_cycles = timeout_cycles

    async def mem_write(self, addr: int, data: bytes) -> None:
        self.ram.write(addr, data)

    async def mem_read(self, addr: int, n: int) -> bytes:
        return bytes(self.ram.read(addr, n))

    async def _reg_write(self, name: str, value: int) -> None:
        from fpqvar_hw.isa import REGS

        await self.axil.write_dword(REGS[name], int(value) & 0xFFFFFFFF)

    async def _reg_read(self, name: str) -> int:
        from fpqvar_hw.isa import REGS

        return int(await self.axil.read_dword(REGS[name]))

    async def run_program(self, prog_addr: int) -> StepPerf:
        from cocotb.triggers import First, RisingEdge, Timer

        t0 = time.perf_counter()
        await self._reg_write("PROG_ADDR", prog_addr)
        await self._reg_write("DRAM_BASE", self.compiler.dram_base)
        await self._reg_write("DRAM_SIZE", self.compiler.dram_size)
        ctrl = isa.CTRL_START | isa.CTRL_IRQ_EN | (isa.CTRL_COARSE if self.coarse else 0) \
            | (isa.CTRL_FINE if self.fine else 0)
        await self._reg_write("CTRL", ctrl)
        if not int(self.irq.value):
            # a Timer is one simulator callback; ClockCycles would run Python on every clock edge
            await First(RisingEdge(self.irq), Timer(self.timeout_cycles * PERIOD_NS, unit="ns"))
            if not int(self.irq.value):
                await self._reg_write("CTRL", isa.CTRL_ABORT)
                raise DeviceError(f"no done interrupt within {self.timeout_cycles} cycles "
                                  f"(program at 0x{prog_addr:x}; PC={await self._reg_read('PC')})")
        errors = int(self.dut.dram_errors.value)
        if errors:
            raise DeviceError(f"the simulated DRAM saw {errors} AXI protocol errors (program at 0x{prog_addr:x})")
        status = await self._reg_read("STATUS")
        if status & (isa.STATUS_ERROR | isa.STATUS_ABORTED) or not status & isa.STATUS_DONE:
            code = (status >> isa.STATUS_ERR_SHIFT) & ((1 << isa.STATUS_ERR_BITS) - 1)
            pc = await self._reg_read("ERR_PC")
            what = isa.ErrorCode(code).name if code in tuple(isa.ErrorCode) else str(code)
            raise DeviceError(f"device stopped with STATUS=0x{status:x} (error {code} {what}) at "
                              f"instruction {pc} of the program at 0x{prog_addr:x}", code, pc)
        perf = StepPerf(cycles=await self._reg_read("CYCLES"),
                        gemm_cycles=await self._reg_read("GEMM_CYCLES"),
                        vec_cycles=await self._reg_read("VEC_CYCLES"),
                        overlap_cycles=await self._reg_read("OVERLAP_CYCLES"),
                        instructions=await self._reg_read("PC"))
        await self._reg_write("STATUS", isa.STATUS_DONE)
        if int(self.irq.value):
            await RisingEdge(self.clk)
            await RisingEdge(self.clk)
            if int(self.irq.value):
                raise DeviceError("irq still high after clearing STATUS.done")
        perf.wall_s = time.perf_counter() - t0
        return perf



@cocotb.test()
async def tiny_image(dut):
    p = tb_params()
    out = Path(p["out"])
    pkg = hostpkg.load_package_checked(Path(p["package"]))
    host = hostpkg.host_model_from_package(pkg)
    config = AcceleratorConfig(**p["config"])
    backend = RtlBackend(pkg, dut, rows=2, coarse=p["coarse"], fine=p["fine"], config=config,
                         dram_base=p["dram_base"], max_kv=p["max_kv"], timeout_cycles=p["timeout_cycles"],
                         dram_latency=p["dram_latency"], dram_stall=p["dram_stall"], dram_seed=p["seed"] + 1,
                         dram_write_latency=p.get("dram_write_latency", 0))
    for bus in (backend.axil.write_if, backend.axil.read_if):
        bus.log.setLevel(logging.WARNING)          # one INFO line per burst would dominate the run time
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 5)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    ident = await backend.axil.read_dword(isa.REGS["ID"])
    assert ident == isa.REG_ID_VALUE, f"ID register 0x{ident:08x}, expected 0x{isa.REG_ID_VALUE:08x}"

    sampling = records.Sampling(**p["sampling"])
    run = await drv.generate(host, backend, [p["label"]], p["seed"], sampling, max_steps=p.get("max_steps"),
                             log=dut._log.info)
    drv.write_run(run, out)
    drv.write_cycles_json(run, out / "cycles.json", coarse=p["coarse"], fine=p["fine"],
                          device={**backend.device_info(), "top": "fpqvar_hw.engines.top.Accelerator",
                                  "dram": {"model": "fpqvar_sim_dram", "latency_cycles": p["dram_latency"],
                                           "stall_per_256": p["dram_stall"],
                                           "write_latency_cycles": p.get("dram_write_latency", 0)},
                                  "clock_period_ns": PERIOD_NS})
    tmp = out / f".rtl_steps.tmp{os.getpid()}.npz"      # a temporary sibling, renamed into place
    np.savez(tmp, images=run.images,
             **{f"{k}{s.si}": getattr(s, k) for s in run.steps for k in ("x_in", "x_out", "logits", "tokens")})
    os.replace(tmp, out / "rtl_steps.npz")
    for s in run.steps:
        dut._log.info(f"step {s.si}: {s.perf.cycles} cycles (GEMM {s.perf.gemm_cycles}, VEC {s.perf.vec_cycles}, "
                      f"both {s.perf.overlap_cycles}), {s.perf.instructions} instructions, {s.perf.wall_s:.1f} s")
    want = p.get("expect_tokens")
    if want is not None:
        for s, w in zip(run.steps, want):
            assert s.tokens.tolist() == w, (f"step {s.si}: RTL sampled {s.tokens.tolist()}, the golden backend "
                                            f"{w}; block outputs saved in {out / 'rtl_steps.npz'}")
        assert len(run.steps) == min(len(want), p.get("max_steps") or len(want))
