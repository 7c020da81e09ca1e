"""Host driver: generate an image of the shipped tiny digits VAR with the
transformer blocks executed by an accelerator backend.

Division of work (``docs/top.md``):

* **host** (this module, torch float32): class embedding, the adaLN linears of
  every block (once per image), the first step's input (sos + level/position
  embeddings), the word embedding of the next scale's input, the head and the
  CFG-guided top-k/top-p sampling with a seeded ``torch.Generator``, the VQ
  residual update and the VQVAE decode;
* **device** (a :class:`BlockBackend`): all transformer blocks of one scale step
  on ``x`` ``[R, L, C]`` FP32 (``R = 2B`` rows: conditional rows first, then the
  unconditional ones), keeping its own KV cache between the steps of an image.

The host's float parameters are the quantized model package's ``float_params``
(:mod:`fpqvar_quant.ptq.package`; GALT is folded into the adaLN linears there),
the VQVAE is the shipped one. The random draws are exactly those of
``VAR.sample_tokens`` (one ``multinomial`` per scale from a generator seeded
with ``seed``), so the torch backends reproduce the existing sampler's tokens
bit for bit (``tests/test_driver.py``).

Backends:

* :class:`GoldenBackend`: the compiled programs (``fpqvar_hw.host.compiler``) run by
  the instruction-level reference executor ``fpqvar_hw.host.isa_sim`` on a numpy DRAM;
* :class:`fpqvar_hw.host.rtl_tb.RtlBackend`: the same programs and DRAM image on the
  simulated RTL top (inside a cocotb test), with the perf registers read after every step;
* :class:`TorchBlocksBackend`: the blocks of a torch VAR (the FP32 model or the
  fake-quant model), the references the device is measured against.

The run loop :func:`generate` is ``async`` so the same code drives the cocotb
test and the plain Python backends (``asyncio.run``).

Command line (``python -m fpqvar_hw.host.driver --help``)::

    python -m fpqvar_hw.host.driver --backend golden --seed 0 --class 3 --out build/tiny-image

writes ``tokens.json``, ``device.png``, ``fp32.png``, ``fakequant.png``,
``side_by_side.png`` and ``cycles.json`` into ``--out``; ``--backend rtl`` runs the image
on the simulated RTL top instead (:func:`fpqvar_hw.host.rtl.run_rtl_image`, the top at
:func:`rtl_config`, ``max_kv`` :data:`RTL_MAX_KV`).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fpqvar_quant.safeio import atomic_path, atomic_write_text, prepare_output_dir, write_marker

from .records import ImageRun, Sampling, StepPerf, StepRecord

__all__ = ["DEFAULT_PRESET", "PackageSettings", "build_package", "HostModel", "StepPerf",
           "BlockBackend", "TorchBlocksBackend", "DeviceBackend", "GoldenBackend", "DeviceError",
           "Sampling", "ImageRun", "generate", "write_cycles_json", "package_dims", "main"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "build" / "tiny-image"
#: ``kind`` of the output marker of a driver run folder (``fpqvar_quant.safeio``)
RUN_KIND = "tiny-image-run"
#: The W4A4 FPQVAR preset (DFQ on the FC2 input, GHT on QKV/FC1, GALT folded into adaLN;
#: FP16 KV cache, which is what the accelerator's attention implements).
DEFAULT_PRESET = "fp4-fpqvar"


# --------------------------------------------------------------------------- package
@dataclass(frozen=True)
class PackageSettings:
    """How the tiny model's quantized package is made (the digits demo's settings:
    ``fpqvar_quant.digits.demo``: 100 FP32 calibration images, GALT with 20 epochs on at
    most 2048 calibration rows per layer)."""

    preset: str = DEFAULT_PRESET
    galt_epochs: int = 20
    max_tokens: int = 2048

    def key(self, model_dir: Path) -> str:
        """Cache folder name: the settings plus a hash of the shipped model files."""
        h = hashlib.sha256()
        for name in ("model.json", "vqvae.pt", "var.pt"):
            h.update((model_dir / name).read_bytes())
        return f"{self.preset}-e{self.galt_epochs}-t{self.max_tokens}-{h.hexdigest()[:10]}"


def build_package(settings: PackageSettings = PackageSettings(), cache_root: Path = DEFAULT_OUT / "cache",
                  *, model_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The quantized package of the shipped digits VAR under ``settings``; built once
    (about a minute: calibration + GALT) and cached in ``cache_root/<key>/package``."""
    from fpqvar_quant.digits.classifier import ASSET_DIR
    from fpqvar_quant.ptq.config import get_preset

    model_dir = Path(model_dir or ASSET_DIR)
    cfg = get_preset(settings.preset)            # unknown preset -> ValueError naming the known ones
    folder = Path(cache_root) / settings.key(model_dir)
    pkg = folder / "package"
    if (pkg / "manifest.json").is_file():
        return pkg
    import tempfile

    from fpqvar_quant.digits.evaluate import make_calibration
    from fpqvar_quant.digits.model import load_digits_model
    from fpqvar_quant.ptq.export import export_package
    from fpqvar_quant.ptq.quantize_model import quantize_model

    t0 = time.time()
    log(f"building the {settings.preset} package of the digits VAR (cached in {folder}) ...")
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"galt_epochs": settings.galt_epochs} if cfg.galt else {}
    with tempfile.TemporaryDirectory(prefix="fpqvar_tiny_calib_") as tmp:
        calib = None
        if cfg.galt or cfg.mixedformat:
            calib = make_calibration(load_digits_model(model_dir), Path(tmp) / "calib")
        model = load_digits_model(model_dir)
        report = quantize_model(model.var, cfg.replace(**overrides), calib, max_tokens=settings.max_tokens,
                                seed=0, progress=False)
        tmp_pkg = folder / "package.tmp"
        export_package(model.var, report, tmp_pkg, overwrite=True)
    tmp_pkg.rename(pkg)
    atomic_write_text(folder / "settings.json", json.dumps(asdict(settings), indent=1) + "\n")
    log(f"package written to {pkg} ({time.time() - t0:.1f} s)")
    return pkg


_SHIPPED: dict[str, Any] = {}


def load_shipped_model(model_dir: Path | None = None) -> Any:
    """``fpqvar_quant.digits.model.load_digits_model`` once per process and directory; every
    call returns a fresh deep copy of the VAR (callers quantize or overwrite it) sharing the
    (frozen, never modified) VQVAE."""
    import copy
    import dataclasses

    from fpqvar_quant.digits.model import load_digits_model

    key = str(model_dir)
    if key not in _SHIPPED:
        _SHIPPED[key] = load_digits_model() if model_dir is None else load_digits_model(Path(model_dir))
    m = _SHIPPED[key]
    return dataclasses.replace(m, var=copy.deepcopy(m.var, {id(m.vae): m.vae}))


def _check_package_matches(manifest: dict[str, Any], var: Any, where: Path) -> None:
    """The package must describe the loaded VAR (same shapes)."""
    from fpqvar_quant.ptq.export import model_dims

    want = model_dims(var)
    got = manifest.get("model", {})
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        raise ValueError(f"package {where} was made for another model: "
                         + ", ".join(f"{k} {a} (package) != {b} (digits VAR)" for k, (a, b) in diff.items())
                         + "; rebuild it with `python -m fpqvar_hw.host.driver --rebuild-package`")


def load_package_checked(package: Path) -> Any:
    """``fpqvar_quant.ptq.package.load_package`` with an error that says what to pass."""
    from fpqvar_quant.ptq.package import load_package

    package = Path(package)
    if not package.is_dir():
        raise FileNotFoundError(f"package directory {package} does not exist; omit --package to build "
                                "the tiny model's package under build/tiny-image/cache, or pass a directory "
                                "written by `fpqvar-quant export`")
    return load_package(package)


def fakequant_model_from_package(pkg: Any, model_dir: Path | None = None) -> Any:
    """The torch fake-quant digits model equal to the one the package was exported from.

    Rebuilt from the package alone: the shipped FP32 model, its four block linears
    replaced by ``QuantLinear`` with the package's formats, their (transformed-domain)
    weights set to the package's dequantized weights and re-quantized (the codes and
    scales are checked to equal the package's, so nothing drifts), every float
    parameter (GALT-folded adaLN included) taken from the package, the KV quantizer
    installed when the package quantizes the KV cache. Returns a ``DigitsModel``."""
    import torch

    from fpqvar_quant.ptq.config import QuantConfig
    from fpqvar_quant.ptq.kvquant import install_kv_quantizer
    from fpqvar_quant.ptq.qlinear import LayerQuant
    from fpqvar_quant.ptq.quantize_model import quant_linears, replace_linears

    model = load_shipped_model(model_dir)
    var = model.var
    _check_package_matches(pkg.manifest, var, pkg.root)
    cfg = QuantConfig.from_dict(pkg.manifest["quant_config"])
    lqs = {n: LayerQuant(**{k: L.meta[k] for k in ("role", "w_fmt", "a_fmt", "dfq", "ght")})
           for n, L in pkg.layers.items()}
    online = {n: torch.from_numpy(L.smooth.copy()) for n, L in pkg.layers.items() if L.meta["smooth_online"]}
    if cfg.quantizes_linears:
        replace_linears(var, cfg, lqs, online_smooth=online)
    qls = quant_linears(var)
    if set(qls) != set(pkg.layers):
        raise ValueError(f"package {pkg.root} quantizes {sorted(pkg.layers)[:3]}..., the model has "
                         f"{sorted(qls)[:3]}...")
    with torch.no_grad():
        for name, q in qls.items():
            L = pkg.layers[name]
            q.weight.copy_(torch.from_numpy(L.dequantized_weight()))
            q.refresh_weight_cache()
            if L.codes is not None and not (np.array_equal(q.w_codes.numpy(), L.codes)
                                            and np.array_equal(q.w_dequant.numpy(), L.dequantized_weight())):
                raise ValueError(f"{name}: re-quantizing the package's weight does not give its codes back")
            if L.bias is not None:
                q.bias.copy_(torch.from_numpy(L.bias))
        sd = var.state_dict()
        unknown = sorted(set(pkg.float_params) - set(sd))
        if unknown:
            raise ValueError(f"package {pkg.root} has float parameters the model lacks: {unknown[:5]}")
        for k, v in pkg.float_params.items():
            sd[k].copy_(torch.from_numpy(v))
    if pkg.manifest.get("kv_cache"):
        install_kv_quantizer(var, cfg)
    var.eval()
    return model


def host_model_from_package(pkg: Any, model_dir: Path | None = None) -> "HostModel":
    """The host side of the accelerated model: the shipped VAR's structure and VQVAE with
    every float parameter taken from the package (class / position / level embeddings,
    word embedding, GALT-folded adaLN linears, head adaLN and head)."""
    import torch

    model = load_shipped_model(model_dir)
    _check_package_matches(pkg.manifest, model.var, pkg.root)
    sd = model.var.state_dict()
    with torch.no_grad():
        for k, v in pkg.float_params.items():
            if k not in sd:
                raise ValueError(f"package {pkg.root} has a float parameter {k!r} the model lacks")
            sd[k].copy_(torch.from_numpy(v))
    return HostModel(model.var, model.vae, name=f"host({pkg.manifest['quant_config']['name']})")


# --------------------------------------------------------------------------- host side
ADALN_NAMES = ("gamma1", "gamma2", "scale1", "scale2", "shift1", "shift2")
"""Order of ``AdaLNSelfAttn.modulation``'s outputs (and of the six [R, C] rows per block)."""


class HostModel:
    """The host's part of a VAR image (torch float32, no grad). ``var`` supplies the float
    parameters; its blocks are never run here (that is the backend's job)."""

    def __init__(self, var: Any, vae: Any, name: str = "host") -> None:
        self.var, self.vae, self.name = var, vae, name
        self.patch_nums = tuple(int(p) for p in var.patch_nums)
        self.C, self.depth, self.num_classes = int(var.C), len(var.blocks), int(var.num_classes)

    def check_labels(self, labels: Sequence[int]) -> "Any":
        import torch

        labels = [int(k) for k in labels]
        if not labels:
            raise ValueError("need at least one class label")
        bad = [k for k in labels if not 0 <= k <= self.num_classes]
        if bad:
            raise ValueError(f"class index {bad[0]} out of range: the digits VAR has classes 0..{self.num_classes - 1} "
                             f"and {self.num_classes} = unconditional")
        return torch.tensor(labels, dtype=torch.long)

    def condition(self, label_B: "Any") -> "Any":
        """``cond_BD`` [2B, C]: class embeddings of the labels, then B unconditional rows."""
        import torch

        return self.var.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))

    def adaln(self, cond_BD: "Any") -> list[np.ndarray]:
        """Per block the six modulation vectors as FP32 ``[R, 6, C]`` in :data:`ADALN_NAMES`
        order (computed once per image)."""
        import torch

        out = []
        for blk in self.var.blocks:
            mods = blk.modulation(cond_BD)
            out.append(np.ascontiguousarray(torch.stack([m[:, 0] for m in mods], dim=1).numpy(),
                                            dtype=np.float32))
        return out

    def first_input(self, cond_BD: "Any") -> "Any":
        """Step 0 input [R, first_l, C]: sos + ``pos_start`` + level/position embedding."""
        var = self.var
        R = cond_BD.shape[0]
        return (cond_BD.unsqueeze(1).expand(R, var.first_l, -1) + var.pos_start.expand(R, var.first_l, -1)
                + var.lvl_pos()[:, :var.first_l])

    def logits(self, x: "Any", cond_BD: "Any") -> "Any":
        """Head logits [R, l, V] of the last block's output (``VAR.get_logits``)."""
        return self.var.get_logits(x, cond_BD)


# --------------------------------------------------------------------------- backends
class BlockBackend(ABC):
    """Runs all transformer blocks of one scale step; keeps its KV cache between steps.

    Call order per image: :meth:`begin` (``cond_BD`` FP32 [R, C] and per block the adaLN
    vectors FP32 [R, 6, C], :data:`ADALN_NAMES` order; clears the KV cache), then
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
#: a small array (tm=2, tn=2, 32 lanes, 8 quantizer lanes) of the w4a4 preset, KV length 30
#: (the digits VAR's patch_nums (1, 2, 3, 4)), image at a non-zero DRAM base
RTL_PRESET, RTL_OVERRIDES = "w4a4", {"tm": 2, "tn": 2, "lanes": 32, "quant_lanes": 8}
RTL_MAX_KV, RTL_DRAM_BASE = 30, 0x10000


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


# --------------------------------------------------------------------------- run loop
async def generate(host: HostModel, backend: BlockBackend, labels: Sequence[int], seed: int,
                   sampling: Sampling = Sampling(), *, shadows: Sequence[BlockBackend] = (),
                   max_steps: int | None = None, log: Callable[[str], None] | None = None) -> ImageRun:
    """Sample one image per label with the blocks on ``backend``.

    Same computation and random draws as ``VAR.sample_tokens(B, labels, g_seed=seed,
    cfg, top_k, top_p)`` followed by ``vae.fhat_to_img``. ``shadows``: other backends fed
    the same block inputs every step (their outputs and head logits are recorded in
    ``StepRecord.shadows`` for the numerical comparisons; they never steer the sampling).
    ``max_steps``: stop after that many scale steps (slow simulations); the image is then
    decoded from the partial ``f_hat``."""
    import torch

    from fpqvar_quant.var.helpers import sample_with_top_k_top_p_

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    if max_steps is not None and not 1 <= max_steps <= len(host.patch_nums):
        raise ValueError(f"max_steps must be in 1..{len(host.patch_nums)}, got {max_steps}")
    label_B = host.check_labels(labels)
    B = label_B.numel()
    var, quant = host.var, host.vae.quantize
    SN = len(host.patch_nums)
    rng = torch.Generator().manual_seed(seed)
    host_s = dev_s = 0.0
    steps: list[StepRecord] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        cond_BD = host.condition(label_B)
        adaln = host.adaln(cond_BD)
        next_map = host.first_input(cond_BD)
        cond_np = cond_BD.numpy().astype(np.float32)
        lvl_pos = var.lvl_pos()
        f_hat = torch.zeros(B, var.Cvae, host.patch_nums[-1], host.patch_nums[-1])
    everyone = [backend, *shadows]
    host_s += time.perf_counter() - t0
    try:
        for b in everyone:
            await b.begin(cond_np, adaln)
        cur_L = 0
        for si, pn in enumerate(host.patch_nums[:max_steps]):
            x_in = np.ascontiguousarray(next_map.numpy(), dtype=np.float32)
            t0 = time.perf_counter()
            x_out, perf = await backend.step(si, x_in)
            dev_s += time.perf_counter() - t0
            if x_out.shape != x_in.shape or x_out.dtype != np.float32:
                raise RuntimeError(f"backend {backend.name} returned {x_out.dtype} {x_out.shape}, "
                                   f"expected float32 {x_in.shape}")
            shadow_out = {}
            for sb in shadows:
                y, _ = await sb.step(si, x_in)
                with torch.no_grad():
                    shadow_out[sb.name] = {"x_out": y, "logits": host.logits(torch.from_numpy(y), cond_BD).numpy()}
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = host.logits(torch.from_numpy(x_out), cond_BD)
                cur_L += pn * pn
                t = sampling.cfg * si / (SN - 1)
                guided = (1 + t) * logits[:B] - t * logits[B:]
                idx = sample_with_top_k_top_p_(guided, rng=rng, top_k=sampling.top_k, top_p=sampling.top_p,
                                               num_samples=1)[:, :, 0]
                h = quant.embedding(idx).transpose(1, 2).reshape(B, var.Cvae, pn, pn)
                f_hat, next_map = quant.get_next_autoregressive_input(si, SN, f_hat, h)
                if si != SN - 1:
                    nxt = next_map.view(B, var.Cvae, -1).transpose(1, 2)
                    next_map = (var.word_embed(nxt) + lvl_pos[:, cur_L:cur_L + host.patch_nums[si + 1] ** 2]
                                ).repeat(2, 1, 1)
            steps.append(StepRecord(si, pn, idx.numpy().copy(), x_in, x_out, logits.numpy(), perf, shadow_out))
            host_s += time.perf_counter() - t0
            if log:
                cyc = f", {perf.cycles} cycles" if perf.cycles is not None else ""
                log(f"step {si} (pn={pn}): tokens {idx[0].tolist()} ({perf.wall_s:.2f} s{cyc})")
    finally:
        for b in everyone:
            await b.end()
    t0 = time.perf_counter()
    with torch.no_grad():
        img = host.vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
        grey = img.mean(1).clamp(0.0, 1.0).numpy()
    host_s += time.perf_counter() - t0
    return ImageRun([int(k) for k in label_B], seed, sampling, backend.name, steps, grey, host_s, dev_s)


# --------------------------------------------------------------------------- outputs
def save_png(image: np.ndarray, path: Path, scale: int = 32) -> Path:
    """Grey [H, W] in [0, 1] as a PNG, nearest-neighbour upscaled ``scale`` times (white = 0 ink,
    drawn like the digits demo: dark strokes on white)."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a grey [H, W] image, got shape {a.shape}")
    u8 = np.round(255.0 * (1.0 - np.clip(a, 0.0, 1.0))).astype(np.uint8)
    u8 = np.kron(u8, np.ones((scale, scale), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(u8, mode="L").save(tmp, format="PNG")
    return path


def save_side_by_side(images: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """One PNG with the images next to each other, each titled with its key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2.0 * len(images), 2.5), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        ax.imshow(np.asarray(img), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_cycles_json(run: ImageRun, path: Path, *, coarse: bool, fine: bool,
                      device: dict[str, Any] | None = None) -> Path:
    """Per-step and total device counters of ``run`` (format version 1)::

        {"format": "fpqvar-tiny-image-cycles", "version": 1, "backend", "model": {...},
         "rows", "coarse_pipeline", "fine_pipeline", "device": {...} (the top's config),
         "steps": [{"si", "pn", "new_tokens", "kv_len", "instructions", "cycles",
                    "gemm_cycles", "vec_cycles", "overlap_cycles", "wall_s"}],
         "total": {same counters summed; null where a step has none}}

    Counters are ``null`` for a backend without them (the golden backend counts
    instructions only; cycles come from the RTL's CYCLES/GEMM_CYCLES/VEC_CYCLES/
    OVERLAP_CYCLES registers)."""
    keys = ("instructions", "cycles", "gemm_cycles", "vec_cycles", "overlap_cycles")
    steps, kv = [], 0
    for s in run.steps:
        kv += s.pn * s.pn
        steps.append({"si": s.si, "pn": s.pn, "new_tokens": s.pn * s.pn, "kv_len": kv,
                      **{k: getattr(s.perf, k) for k in keys}, "wall_s": round(s.perf.wall_s, 4)})
    total: dict[str, Any] = {}
    for k in keys:
        vals = [st[k] for st in steps]
        total[k] = None if any(v is None for v in vals) else int(sum(vals))
    total["wall_s"] = round(sum(st["wall_s"] for st in steps), 4)
    doc = {"format": "fpqvar-tiny-image-cycles", "version": 1, "backend": run.backend,
           "model": {"name": "digits VAR", "patch_nums": [s.pn for s in run.steps]},
           "rows": 2 * len(run.labels), "labels": run.labels, "seed": run.seed,
           "coarse_pipeline": bool(coarse), "fine_pipeline": bool(fine), "device": device or {},
           "steps": steps, "total": total}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def write_run(run: ImageRun, out: Path, *, stem: str = "device") -> dict[str, Path]:
    """``<stem>.png`` (first image) and ``tokens.json`` (per scale token lists, labels, seed,
    sampling, backend) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": save_png(run.images[0], out / f"{stem}.png")}
    doc = {"backend": run.backend, "labels": run.labels, "seed": run.seed, "sampling": asdict(run.sampling),
           "tokens": run.tokens, "host_seconds": round(run.host_seconds, 3),
           "device_seconds": round(run.device_seconds, 3)}
    paths["tokens"] = out / "tokens.json"
    atomic_write_text(paths["tokens"], json.dumps(doc, indent=1) + "\n")
    return paths


# --------------------------------------------------------------------------- comparisons
def kl_rows(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows and tokens of KL(softmax(ref) || softmax(logits)) in nats (float64)."""
    a = np.asarray(ref_logits, dtype=np.float64)
    b = np.asarray(logits, dtype=np.float64)
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return float((np.exp(la) * (la - lb)).sum(-1).mean())


def step_errors(run: ImageRun) -> list[dict[str, Any]]:
    """Per step, the distance of the run's backend to every shadow and between the shadows
    (``(reference, compared)`` pairs: ``(shadow, backend)`` for each shadow, then
    ``(shadow_i, shadow_j)`` for i < j): max / mean absolute difference of the last block's
    output and ``KL(softmax(reference logits) || softmax(compared logits))`` of the head
    logits (mean over both CFG rows and the step's tokens)."""
    rows = []
    for s in run.steps:
        outs = {run.backend: {"x_out": s.x_out, "logits": s.logits}, **s.shadows}
        sh = list(s.shadows)
        pairs = [(n, run.backend) for n in sh] + [(a, b) for i, a in enumerate(sh) for b in sh[i + 1:]]
        for ref, other in pairs:
            d = np.abs(outs[other]["x_out"].astype(np.float64) - outs[ref]["x_out"])
            rows.append({"si": s.si, "pn": s.pn, "reference": ref, "compared": other,
                         "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                         "ref_max_abs": float(np.abs(outs[ref]["x_out"]).max()),
                         "kl": kl_rows(outs[ref]["logits"], outs[other]["logits"])})
    return rows


# --------------------------------------------------------------------------- command line
BACKENDS = ("golden", "golden-block", "rtl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fpqvar_hw.host.driver",
        description="Generate one image of the shipped tiny digits VAR with the transformer blocks on "
                    "the accelerator (golden: compiled programs on the instruction-level reference "
                    "executor; golden-block: the bit-exact numpy block model without the ISA; rtl: the "
                    "simulated RTL top, Verilator). Also writes the FP32 and fake-quant models' images "
                    "for the same seed and class, a side-by-side PNG, tokens.json and cycles.json.")
    p.add_argument("--backend", choices=BACKENDS, default="golden", help="who runs the blocks (default golden)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (torch.Generator), default 0")
    p.add_argument("--class", dest="label", type=int, default=3,
                   help="digit class 0..9, or 10 for unconditional (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--package", type=Path, default=None,
                   help="quantized package directory (default: build the tiny model's --preset package, "
                        "cached under <out>/cache)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"PTQ preset of the built package (default {DEFAULT_PRESET})")
    p.add_argument("--rebuild-package", action="store_true", help="rebuild the cached package")
    p.add_argument("--cfg", type=float, default=None, help="CFG strength (default: the model's, 1.5)")
    p.add_argument("--top-k", type=int, default=None, help="top-k (default: the model's, 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="top-p (default: the model's, 0 = off)")
    p.add_argument("--no-coarse", action="store_true", help="disable the coarse (between-engine) pipeline")
    p.add_argument("--no-fine", action="store_true", help="disable the fine (in-unit) pipeline")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many scale steps (1..4; the image is decoded from the partial "
                        "f_hat): a quick check of the slow rtl backend")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the FP32 / fake-quant shadow blocks and their images")
    return p


def package_dims(package: Path | None) -> tuple[int, int]:
    """(num_classes, number of scale steps) of the package's model, or of the shipped
    digits model: read from JSON only, before any model is built."""
    if package is not None:
        mpath = Path(package) / "manifest.json"
        try:
            m = json.loads(mpath.read_text())["model"]
            return int(m["num_classes"]), len(m["patch_nums"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{mpath} not found: --package must be a folder written by "
                                    "`fpqvar-quant export`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{mpath}: not a package manifest ({e})") from None
    from fpqvar_quant.digits.classifier import ASSET_DIR
    from fpqvar_quant.digits.data import NUM_CLASSES

    cfg = json.loads((ASSET_DIR / "model.json").read_text())["config"]
    return NUM_CLASSES, len(cfg["patch_nums"])


def validate_args(args: argparse.Namespace) -> None:
    """Every argument the user can get wrong, checked in milliseconds before a package is
    built or a model loaded (``ValueError`` / ``FileNotFoundError`` with one line)."""
    num_classes, steps = package_dims(args.package)
    if not 0 <= args.label <= num_classes:
        raise ValueError(f"--class {args.label}: the model has classes 0..{num_classes - 1} "
                         f"({num_classes} = unconditional)")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    if args.max_steps is not None and not 1 <= args.max_steps <= steps:
        raise ValueError(f"--max-steps must be in 1..{steps}, got {args.max_steps}")
    if args.cfg is not None and args.cfg < 0:
        raise ValueError(f"--cfg must be >= 0, got {args.cfg}")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not 0 <= args.top_p <= 1:
        raise ValueError(f"--top-p must be in [0, 1], got {args.top_p}")
    # a run writes into its own folder only (resumable: the package cache lives there too)
    prepare_output_dir(args.out, RUN_KIND, resume=True,
                       own=lambda p: (p / "tokens.json").is_file() or (p / "cache").is_dir())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpqvar_hw.host.driver``: errors print one line (exit 2; ``--debug`` for
    the traceback)."""
    from fpqvar_quant.safeio import run_cli

    return run_cli(_main, None if argv is None else list(argv), "python -m fpqvar_hw.host.driver",
                   errors=(ValueError, KeyError))


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    validate_args(args)
    t_start = time.time()
    out: Path = args.out
    if args.package is None:
        settings = PackageSettings(preset=args.preset)
        if args.rebuild_package:
            import shutil

            from fpqvar_quant.digits.classifier import ASSET_DIR
            shutil.rmtree(out / "cache" / settings.key(ASSET_DIR), ignore_errors=True)
        pkg_path = build_package(settings, out / "cache")
    else:
        pkg_path = args.package
    pkg = load_package_checked(pkg_path)
    host = host_model_from_package(pkg)
    host.check_labels([args.label])
    base = load_shipped_model().sampling
    sampling = Sampling(cfg=base.cfg if args.cfg is None else args.cfg,
                        top_k=base.top_k if args.top_k is None else args.top_k,
                        top_p=base.top_p if args.top_p is None else args.top_p)
    coarse, fine = not args.no_coarse, not args.no_fine
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, RUN_KIND)
    print(f"package {pkg_path} ({pkg.manifest['quant_config']['name']}); class {args.label}, seed {args.seed}, "
          f"{sampling}; backend {args.backend}")
    if args.backend == "rtl":
        from .rtl import run_rtl_image

        run = run_rtl_image(pkg_path, config=rtl_config(), C=host.C, max_kv=RTL_MAX_KV, dram_base=RTL_DRAM_BASE,
                            label=args.label, seed=args.seed, sampling=sampling, out=out,
                            coarse=coarse, fine=fine, max_steps=args.max_steps)
        errors: list[dict[str, Any]] = []
    else:
        shadows: list[BlockBackend] = []
        if not args.no_compare:
            fp = load_shipped_model()
            shadows = [TorchBlocksBackend(fp.var, "fp32"),
                       TorchBlocksBackend(fakequant_model_from_package(pkg).var, "fakequant")]
        backend: BlockBackend = (GoldenBackend(pkg, rows=2, coarse=coarse, fine=fine) if args.backend == "golden"
                                 else GoldenBlockBackend(pkg))
        run = asyncio.run(generate(host, backend, [args.label], args.seed, sampling, shadows=shadows,
                                   max_steps=args.max_steps, log=print))
        write_run(run, out)
        write_cycles_json(run, out / "cycles.json", coarse=coarse, fine=fine,
                          device=getattr(backend, "device_info", lambda: {})())
        errors = step_errors(run)
        atomic_write_text(out / "errors.json", json.dumps(errors, indent=1) + "\n")
    images = {f"device ({run.backend})": run.images[0]}
    if not args.no_compare:
        ref = reference_images(pkg, args.label, args.seed, sampling)
        for name, (img, toks) in ref.items():
            save_png(img, out / f"{name}.png")
            agree = np.mean(np.concatenate([(np.asarray(a) == b.tokens[0]).ravel()
                                            for a, b in zip(toks, run.steps)]))
            print(f"{name}: token agreement with the device {agree:.3f}")
            images[name] = img
        save_side_by_side(images, out / "side_by_side.png",
                          f"digits VAR, class {args.label}, seed {args.seed} ({pkg.manifest['quant_config']['name']})")
    for e in errors:
        if e["compared"] == run.backend:
            print(f"step {e['si']}: |{run.backend} - {e['reference']}| max {e['max_abs']:.4g} "
                  f"mean {e['mean_abs']:.4g}, KL {e['kl']:.3g}")
    print(f"wrote {out} ({time.time() - t_start:.1f} s; blocks {run.device_seconds:.1f} s, host {run.host_seconds:.1f} s)")
    return 0


def reference_images(pkg: Any, label: int, seed: int, sampling: Sampling) -> dict[str, tuple[np.ndarray, list]]:
    """``{"fp32": (image, tokens), "fakequant": ...}`` from the existing sampler
    (``VAR.sample_tokens`` + ``fhat_to_img``) of the FP32 model and of the package's
    fake-quant model, same label, seed and sampling."""
    import torch

    out = {}
    for name, model in (("fp32", load_shipped_model()), ("fakequant", fakequant_model_from_package(pkg))):
        with torch.no_grad():
            res = model.var.sample_tokens(1, torch.tensor([label]), g_seed=seed, cfg=sampling.cfg,
                                          top_k=sampling.top_k, top_p=sampling.top_p)
            img = model.vae.fhat_to_img(res.f_hat).add_(1).mul_(0.5).mean(1).clamp(0, 1)[0].numpy()
        out[name] = (img, [t[0].numpy() for t in res.idx_Bl])
    return out


if __name__ == "__main__":
    sys.exit(main())
