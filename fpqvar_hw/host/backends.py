"""Block backends of the host loop (:func:`fpqvar_hw.host.driver.generate`): who runs the
transformer blocks of one scale step.

* :class:`BlockBackend`: the contract (begin / step / end, KV cache kept between steps);
* :class:`GoldenBlockBackend`: ``fpqvar_quant.golden.block.model_step`` (bit-exact numpy
  blocks, no instruction set);
* :class:`TorchBlocksBackend`: the blocks of a torch VAR (FP32 or fake-quant), the references;
* :class:`DeviceBackend`: the accelerator contract (``docs/top.md``) seen from the host, with
  the compiled DRAM image and programs; :class:`GoldenBackend` runs them on the
  instruction-level reference executor (:mod:`fpqvar_hw.host.isa_sim`), and
  :class:`fpqvar_hw.host.rtl_tb.RtlBackend` on the simulated RTL top;
* :func:`device_config` / :func:`rtl_config`: the accelerator configurations they compile for.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..config import SMALL_ARRAYS
from .records import StepPerf

__all__ = ["BlockBackend", "GoldenBlockBackend", "TorchBlocksBackend", "DeviceError", "device_config",
           "RTL_PRESET", "RTL_OVERRIDES", "RTL_MAX_KV", "RTL_DRAM_BASE", "RTL_C", "rtl_config",
           "DeviceBackend", "GoldenBackend"]


class BlockBackend(ABC):
    """Runs all transformer blocks of one scale step; keeps its KV cache between steps.

    Call order per image: :meth:`begin` (``cond_BD`` FP32 [R, C] and per block the adaLN
    vectors FP32 [R, 6, C], :data:`fpqvar_hw.host.package.ADALN_NAMES` order; clears the KV cache), then
    :meth:`step` for ``si = 0, 1, ...`` with ``x`` FP32 ``[R, pn*pn, C]``; returns the
    last block's output, same shape, and the step's :class:`StepPerf`."""

    name: str = "backend"

    @abstractmethod
    async def begin(self, cond_BD: np.ndarray, adaln: list[np.ndarray]) -> None:
        ...

    @abstractmethod
    async def step(self, si: int, x: np.ndarray) -> tuple[np.ndarray, StepPerf]:
        ...

    async def end(self) -> None:
        """Called after the last step (or on an error)."""


class GoldenBlockBackend(BlockBackend):
    """The accelerator's numerics without the instruction set: ``fpqvar_quant.golden.block
    .model_step`` (bit-exact numpy blocks) on the package's device parameters."""

    def __init__(self, pkg: Any, name: str = "golden-block") -> None:
        from fpqvar_quant.golden import block as gb

        self._gb, self.name = gb, name
        depth = int(pkg.model["depth"])
        self.params = [gb.block_params(pkg, i) for i in range(depth)]
        self._ada: list[np.ndarray] | None = None
        self._caches: list[Any] = []

    async def begin(self, cond_BD: np.ndarray, adaln: list[np.ndarray]) -> None:
        if len(adaln) != len(self.params):
            raise ValueError(f"need {len(self.params)} adaLN arrays (one per block), got {len(adaln)}")
        self._ada = [self._gb.device_modulation(a, p) for a, p in zip(adaln, self.params)]
        R = adaln[0].shape[0]
        self._caches = [self._gb.KVCache(rows=R, heads=p.num_heads) for p in self.params]

    async def step(self, si: int, x: np.ndarray) -> tuple[np.ndarray, StepPerf]:
        if self._ada is None:
            raise RuntimeError("begin() must be called before step()")
        t0 = time.perf_counter()
        y = self._gb.model_step(x, self._ada, self.params, self._caches)
        return np.ascontiguousarray(y, dtype=np.float32), StepPerf(wall_s=time.perf_counter() - t0)

    async def end(self) -> None:
        self._ada, self._caches = None, []


class TorchBlocksBackend(BlockBackend):
    """The blocks of a torch VAR (FP32 model or fake-quant model), with its own adaLN
    linears (``cond_BD`` given to :meth:`begin`; the host's adaLN vectors are ignored)."""

    def __init__(self, var: Any, name: str) -> None:
        self.var, self.name = var, name
        self._cond = None

    async def begin(self, cond_BD: np.ndarray, adaln: list[np.ndarray]) -> None:
        import torch

        self._cond = torch.from_numpy(np.ascontiguousarray(cond_BD, dtype=np.float32))
        for b in self.var.blocks:
            b.attn.kv_caching(True)

    async def step(self, si: int, x: np.ndarray) -> tuple[np.ndarray, StepPerf]:
        import torch

        if self._cond is None:
            raise RuntimeError("begin() must be called before step()")
        t0 = time.perf_counter()
        with torch.no_grad():
            h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            for b in self.var.blocks:
                h = b(x=h, cond_BD=self._cond, attn_bias=None)
        return h.numpy().astype(np.float32), StepPerf(wall_s=time.perf_counter() - t0)

    async def end(self) -> None:
        for b in self.var.blocks:
            b.attn.kv_caching(False)
        self._cond = None


class DeviceError(RuntimeError):
    """The accelerator (or the reference executor) stopped with STATUS.error / aborted."""

    def __init__(self, message: str, code: int = 0, pc: int | None = None) -> None:
        super().__init__(message)
        self.code, self.pc = code, pc


def device_config(preset: str = "w4a4", *, coarse: bool = True, fine: bool = True, **overrides: Any) -> Any:
    """The accelerator config the programs are compiled for (``fpqvar_hw.config`` preset with
    the pipeline switches and any field overrides, e.g. the RTL top's ``lanes``/``tn``/``tm``)."""
    from ..config import get_preset

    return get_preset(preset).replace(coarse_pipeline=bool(coarse), fine_pipeline=bool(fine), **overrides)


#: the simulated RTL top of ``--backend rtl`` (and sim/test_tiny_image.py, sim/test_top.py):
#: :data:`fpqvar_hw.config.SMALL_ARRAYS` (also the ULX3S build's arrays) of the w4a4
#: preset, KV length 30 (the digits VAR's patch_nums (1, 2, 3, 4)), image at a non-zero
#: DRAM base
RTL_PRESET, RTL_OVERRIDES = "w4a4", dict(SMALL_ARRAYS)
RTL_MAX_KV, RTL_DRAM_BASE = 30, 0x10000
#: embed dim of the simulated RTL top (the digits VAR's)
RTL_C = 128


def rtl_config() -> Any:
    """The :class:`fpqvar_hw.config.AcceleratorConfig` of the simulated RTL top."""
    from ..config import get_preset

    return get_preset(RTL_PRESET).replace(**RTL_OVERRIDES)


class DeviceBackend(BlockBackend):
    """The accelerator contract (``docs/top.md``) seen from the host, with the DRAM image
    and programs of :class:`fpqvar_hw.host.compiler.Compiler`:

    * once: the static image (packed weights, scales, biases, signs, temperatures);
    * per image (:meth:`begin`): every block's adaLN vectors ``[R, 6, C]`` at
      ``ada_addr[b]`` (``Compiler.encode_adaln``; the KV caches need no clearing: step
      ``si`` writes positions ``[L_start, L_start + L)`` before any read of them);
    * per step: ``x`` at ``x_addr``, the step's program at ``prog_addr``, start, wait,
      read ``x`` back from ``x_addr``.

    Subclasses supply the memory port (:meth:`mem_write`, :meth:`mem_read`) and
    :meth:`run_program`. ``config``: the :class:`fpqvar_hw.config.AcceleratorConfig` the
    device is built with (default :func:`device_config`); its ``coarse_pipeline`` decides
    the programs' sync flags, and the CTRL bits follow ``coarse``/``fine``."""

    name = "device"

    def __init__(self, pkg: Any, *, rows: int, coarse: bool = True, fine: bool = True,
                 config: Any = None, dram_base: int = 0, max_kv: int | None = None) -> None:
        from .. import isa
        from .compiler import Compiler

        self.coarse, self.fine = bool(coarse), bool(fine)
        self.config = (device_config(coarse=coarse, fine=fine) if config is None
                       else config.replace(coarse_pipeline=self.coarse, fine_pipeline=self.fine))
        self.pkg, self.rows = pkg, rows
        self.max_kv = isa.MAX_KV_LEN if max_kv is None else int(max_kv)
        self.compiler = Compiler(pkg, self.config, rows, dram_base=dram_base, max_kv=self.max_kv)
        self._loaded = False
        self._began = False

    # ---- memory port / control (subclasses)
    @abstractmethod
    async def mem_write(self, addr: int, data: bytes) -> None:
        ...

    @abstractmethod
    async def mem_read(self, addr: int, n: int) -> bytes:
        ...

    @abstractmethod
    async def run_program(self, prog_addr: int) -> StepPerf:
        """Start the program at ``prog_addr``, wait for done; raise :class:`DeviceError` on
        an error or abort. Returns the step's counters (``wall_s`` included)."""

    # ---- BlockBackend
    async def load(self) -> None:
        """Write the static DRAM image (once per backend)."""
        for addr, data in self.compiler.image():
            await self.mem_write(addr, data)
        self._loaded = True

    async def begin(self, cond_BD: np.ndarray, adaln: list[np.ndarray]) -> None:
        if len(adaln) != self.compiler.depth:
            raise ValueError(f"need {self.compiler.depth} adaLN arrays (one per block), got {len(adaln)}")
        if not self._loaded:
            await self.load()
        for b, a in enumerate(adaln):
            await self.mem_write(*self.compiler.encode_adaln(b, a))
        self._began = True

    async def step(self, si: int, x: np.ndarray) -> tuple[np.ndarray, StepPerf]:
        if not self._began:
            raise RuntimeError("begin() must be called before step()")
        comp = self.compiler
        if x.shape != (self.rows, comp.step_tokens(si)[1], comp.C):
            raise ValueError(f"step {si}: x must be [R={self.rows}, L={comp.step_tokens(si)[1]}, C={comp.C}], "
                             f"got {x.shape}")
        await self.mem_write(comp.x_addr, comp.encode_x(x))
        prog = comp.program(si)
        await self.mem_write(comp.prog_addr, prog)
        perf = await self.run_program(comp.prog_addr)
        y = comp.decode_x(await self.mem_read(comp.x_addr, comp.x_bytes(si)), si)
        return y, perf

    async def end(self) -> None:
        self._began = False

    def device_info(self) -> dict[str, Any]:
        """The config the programs were compiled for (for ``cycles.json``)."""
        info = self.config.as_dict()
        info.update({"rows": self.rows, "dram_base": self.compiler.dram_base,
                     "dram_size": self.compiler.dram_size})
        return info


class GoldenBackend(DeviceBackend):
    """The compiled programs on the instruction-level reference executor
    (:func:`fpqvar_hw.host.isa_sim.execute`) over a numpy :class:`fpqvar_hw.host.isa_sim.Dram`.
    Counts instructions (``PC``); it has no cycle counters."""

    name = "golden"

    def __init__(self, pkg: Any, *, rows: int, coarse: bool = True, fine: bool = True,
                 config: Any = None, dram_base: int = 0, max_kv: int | None = None) -> None:
        from .isa_sim import Dram

        super().__init__(pkg, rows=rows, coarse=coarse, fine=fine, config=config, dram_base=dram_base,
                         max_kv=max_kv)
        self.dram = Dram(self.compiler.dram_base, self.compiler.dram_size)

    async def mem_write(self, addr: int, data: bytes) -> None:
        self.dram.write(addr, data)

    async def mem_read(self, addr: int, n: int) -> bytes:
        return self.dram.read(addr, n)

    async def run_program(self, prog_addr: int) -> StepPerf:
        from .isa_sim import execute

        t0 = time.perf_counter()
        res = execute(self.dram, prog_addr, self.config, max_kv=self.max_kv)
        if not res.ok:
            raise DeviceError(f"reference executor stopped with error {int(res.error)} ({res.error.name}) at "
                              f"instruction {res.err_pc}: {res.message}", int(res.error), res.err_pc)
        return StepPerf(instructions=res.pc, wall_s=time.perf_counter() - t0)
