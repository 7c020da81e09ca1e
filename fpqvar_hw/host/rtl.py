"""The compiled programs on the simulated RTL top (``fpqvar_hw.engines.top.Accelerator``,
Verilator through :mod:`fpqvar_hw.host.cosim`).

:func:`run_rtl_image` builds (or reuses) the top for a configuration and runs one image
of a quantized package on it: the host loop (:func:`fpqvar_hw.host.driver.generate`) with
an :class:`fpqvar_hw.host.rtl_tb.RtlBackend` runs inside the cocotb process
(:mod:`fpqvar_hw.host.rtl_tb`). This is what ``python -m fpqvar_hw.host.driver --backend
rtl``, ``python -m fpqvar_hw.host.run --backend rtl`` and ``sim/test_tiny_image.py`` run.
It imports the driver's records only (:mod:`fpqvar_hw.host.records`), not the driver, so
the driver can import it (no import cycle).

Nothing here imports ``sim/`` or ``tests/``: it works from an installed package (the
build folders then go under ``build/sim`` of the current directory, or
``FPQVAR_SIM_BUILD``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .records import ImageRun, Sampling, StepPerf, StepRecord

__all__ = ["run_rtl_image", "top_build_name", "top_component", "top_harness", "TIMEOUT_CYCLES"]

#: per-step limit (cycles) of :func:`run_rtl_image`; step 3 of the digits VAR is the longest
TIMEOUT_CYCLES = 20_000_000


def top_build_name(config: Any, C: int, max_kv: int) -> str:
    """Build folder name of the top for ``config``/``C``/``max_kv`` (the Verilog digest is
    appended by the runner, so two configurations never share a build by accident; tests of
    one configuration share one)."""
    return (f"top-tm{config.tm}x{config.row_sets}tn{config.tn}l{config.lanes}q{config.quant_lanes}"
            f"-c{int(C)}kv{int(max_kv)}")


@functools.lru_cache(maxsize=4)
def top_component(config: Any, C: int, max_kv: int) -> Any:
    """The :class:`fpqvar_hw.engines.top.Accelerator` for ``config``/``C``/``max_kv``, one
    object per process, so that every co-simulation of it in one process elaborates it
    once (:func:`fpqvar_hw.host.cosim.elaborate_verilog` remembers its text)."""
    from ..engines.top import Accelerator

    return Accelerator(config, C=int(C), max_kv=int(max_kv))


def top_harness(config: Any, C: int, max_kv: int) -> tuple[str, str]:
    """(module name, Verilog) of the simulation harness around :func:`top_component`: the
    simulator-side DRAM (:mod:`fpqvar_hw.host.simdram`) behind ``m_axi``, or the harness's
    own ``m_axi`` ports with ``dram_ext = 1``. Every co-simulation of the top uses it, so
    they share one Verilator build per configuration."""
    from .simdram import HARNESS_TOP, harness_verilog

    return HARNESS_TOP, harness_verilog(top_component(config, C, max_kv))


def run_rtl_image(package: Path, *, config: Any, C: int, max_kv: int, dram_base: int, label: int, seed: int,
                  sampling: Sampling, out: Path, coarse: bool = True, fine: bool = True,
                  expect_tokens: list | None = None, max_steps: int | None = None,
                  dram_latency: int = 8, dram_stall: int = 16, dram_write_latency: int = 0) -> ImageRun:
    """Build (or reuse) the RTL top ``Accelerator(config, C=C, max_kv=max_kv)``, run one image
    of ``package`` (class ``label``, ``seed``, ``sampling``) on it in cocotb and return the run
    as read back from ``out`` (``tokens.json``, ``cycles.json``, ``rtl_steps.npz``,
    ``device.png``). ``expect_tokens`` (per scale, per image): any difference fails the run
    naming the step; ``max_steps``: stop after that many scale steps (None: the whole image).
    ``dram_latency`` (read latency, cycles) and ``dram_stall`` (each AXI handshake withheld
    with probability ``dram_stall/256``) and ``dram_write_latency`` (cycles from a write's last
    beat to its B response) set the simulated DRAM (:mod:`.simdram`).
    Raises :class:`fpqvar_hw.host.cosim.CosimError` when the co-simulation fails."""
    import numpy as np

    from .cosim import run_cocotb

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {"package": str(Path(package).resolve()), "label": int(label), "seed": int(seed),
              "sampling": {"cfg": sampling.cfg, "top_k": sampling.top_k, "top_p": sampling.top_p},
              "config": config.as_dict(), "max_kv": int(max_kv), "dram_base": int(dram_base),
              "coarse": bool(coarse), "fine": bool(fine), "timeout_cycles": TIMEOUT_CYCLES,
              "out": str(out), "expect_tokens": expect_tokens, "max_steps": max_steps,
              "dram_latency": int(dram_latency), "dram_stall": int(dram_stall),
              "dram_write_latency": int(dram_write_latency)}
    run_cocotb(top_component(config, C, max_kv), name=top_build_name(config, C, max_kv),
               test_module="fpqvar_hw.host.rtl_tb", params=params, testcase="tiny_image",
               harness=top_harness(config, C, max_kv))
    doc = json.loads((out / "tokens.json").read_text())
    cyc = json.loads((out / "cycles.json").read_text())
    z = np.load(out / "rtl_steps.npz")
    steps = []
    for st in cyc["steps"]:
        si = st["si"]
        perf = StepPerf(**{k: st[k] for k in ("cycles", "gemm_cycles", "vec_cycles", "overlap_cycles",
                                               "instructions", "wall_s")})
        steps.append(StepRecord(si, st["pn"], z[f"tokens{si}"], z[f"x_in{si}"], z[f"x_out{si}"],
                                z[f"logits{si}"], perf))
    return ImageRun(doc["labels"], doc["seed"], sampling, "rtl", steps, z["images"],
                    doc["host_seconds"], doc["device_seconds"])
