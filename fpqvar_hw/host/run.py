"""Run a compiled bundle: a user's quantized model on the device path.

``python -m fpqvar_hw.host.compiler PACKAGE --out BUNDLE`` writes a bundle
(``static.bin``, ``step{i}.bin``, ``layout.json``); this module runs it::

    python -m fpqvar_hw.host.run BUNDLE --package PACKAGE --class 3 --seed 0 --out DIR \
        [--backend golden|rtl] [--cfg 1.5] [--top-k 0] [--top-p 0] [--max-steps N] [--overwrite]

and writes ``tokens.json`` (per scale the sampled tokens, label, seed, sampling,
backend, bundle) and ``image.png`` into ``DIR``, built in a temporary sibling and
swapped in whole (``fpqvar_quant.safeio.atomic_output_dir``; ``--overwrite``
replaces an earlier run's folder, never a folder of another kind).

Backends:

* ``golden`` (default): the bundle's own bytes -- ``static.bin`` at ``dram_base``,
  each step's ``step{i}.bin`` at ``prog_addr`` -- executed by the instruction-level
  reference executor (:func:`fpqvar_hw.host.isa_sim.execute`) on a numpy DRAM window of
  the bundle's size, with the accelerator config recorded in ``layout.json``.
* ``rtl``: the package compiled for the small RTL test configuration
  (:data:`RTL_OVERRIDES` applied to the bundle's config, ``C`` = :data:`RTL_C`, KV length
  <= :data:`RTL_MAX_KV`) and run on the simulated RTL top
  (:func:`fpqvar_hw.host.rtl.run_rtl_image`, Verilator).  Larger models are refused
  before anything is built: simulating their top is out of reach.

The host half of the model (class embedding, adaLN linears, head, sampling, VQVAE) is the
driver's (:class:`fpqvar_hw.host.driver.HostModel`) with every float parameter taken
from the package; the VAR structure and the VQVAE are the shipped digits model's, so the
package must have its dimensions (``embed_dim``, ``depth``, ``patch_nums``, ...).

The bundle is checked against the package before it runs (``BundleMismatch``): the
layout the compiler derives from the package and the bundle's config must give the
bundle's regions and step lengths, and the package's packed weights must equal
``static.bin`` byte for byte, so a bundle compiled from another package (same shapes,
other weights) is refused instead of sampling with mismatched adaLN/GALT vectors.
Every problem is one line (exit status 2; ``--debug`` shows the traceback), a program the
reference executor stops (``DeviceError``: its error code and instruction) included.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fpqvar_quant.safeio import UserError

from .. import isa
from ..config import AcceleratorConfig
from . import backends, records
from . import driver as drv
from . import package as hostpkg

__all__ = ["RUN_KIND", "RTL_C", "RTL_MAX_KV", "RTL_OVERRIDES", "Bundle", "BundleMismatch",
           "load_bundle", "BundleBackend", "check_rtl_size", "run_bundle", "write_outputs", "main"]

#: ``kind`` of the output marker of a bundle run's folder
RUN_KIND = "bundle-run"
# The RTL top the ``rtl`` backend simulates is the one of sim/test_tiny_image.py and
# sim/test_top.py (one Verilator build): the bundle's formats with
# :data:`~fpqvar_hw.host.backends.RTL_OVERRIDES`' small geometry, C = RTL_C, SOFTMAX rows
# up to RTL_MAX_KV keys, the image at RTL_DRAM_BASE.
RTL_OVERRIDES, RTL_C, RTL_MAX_KV = backends.RTL_OVERRIDES, backends.RTL_C, backends.RTL_MAX_KV
RTL_DRAM_BASE = backends.RTL_DRAM_BASE
BACKENDS = ("golden", "rtl")


class BundleMismatch(UserError):
    """The bundle was not compiled from this package (or is damaged)."""


@dataclass(frozen=True)
class Bundle:
    """A compiled bundle as read from its folder."""

    root: Path
    layout: dict[str, Any]
    config: AcceleratorConfig
    static: bytes
    programs: list[bytes]

    @property
    def dram_base(self) -> int:
        return int(self.layout["dram_base"])

    @property
    def rows(self) -> int:
        return int(self.layout["rows"])


_LAYOUT_KEYS = ("dram_base", "dram_size", "static_end", "prog_addr", "prog_bytes", "x_addr", "ada_addr",
                "rows", "embed_dim", "depth", "tile_tokens", "steps", "config", "regions")


def load_bundle(root: str | Path) -> Bundle:
    """Read and check a bundle folder (``UserError`` naming the file and the problem)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"bundle {root} is not a folder; pass the --out folder of "
                        "`python -m fpqvar_hw.host.compiler`")
    lpath = root / "layout.json"
    try:
        lay = json.loads(lpath.read_text())
    except FileNotFoundError:
        raise UserError(f"{lpath} not found: {root} is not a compiled bundle (compile the package with "
                        "`python -m fpqvar_hw.host.compiler PACKAGE --out DIR`)") from None
    except ValueError as e:
        raise UserError(f"{lpath}: not valid JSON ({e}); compile the bundle again") from None
    missing = [k for k in _LAYOUT_KEYS if not isinstance(lay, dict) or k not in lay]
    if missing:
        raise UserError(f"{lpath}: not a compiler layout (missing {', '.join(missing)}); compile the "
                        "bundle again")
    if not (isinstance(lay["steps"], list) and isinstance(lay["regions"], list) and lay["steps"]
            and isinstance(lay["config"], dict)):
        raise UserError(f"{lpath}: steps, regions or config malformed; compile the bundle again")
    try:
        cfg = AcceleratorConfig(**lay["config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{lpath}: the accelerator config is invalid ({e}); compile the bundle again") from None
    spath = root / "static.bin"
    static = _read(spath)
    want = int(lay["static_end"]) - int(lay["dram_base"])
    if len(static) != want:
        raise UserError(f"{spath}: {len(static)} bytes, the layout says {want} (truncated or from another "
                        "build); compile the bundle again")
    programs = []
    for i, st in enumerate(lay["steps"]):
        if not isinstance(st, dict) or st.get("step") != i or "program" not in st:
            raise UserError(f"{lpath}: step entry {i} is malformed; compile the bundle again")
        ppath = root / str(st["program"])
        prog = _read(ppath)
        n = int(st.get("instructions", -1))
        if len(prog) != n * isa.INSTR_BYTES or len(prog) > int(lay["prog_bytes"]):
            raise UserError(f"{ppath}: {len(prog)} bytes, the layout says {n} instructions of "
                            f"{isa.INSTR_BYTES} bytes (at most {lay['prog_bytes']} bytes); compile the "
                            "bundle again")
        programs.append(prog)
    return Bundle(root, lay, cfg, static, programs)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing from the bundle; compile the bundle again") from None


def _compiler_for(pkg: Any, bundle: Bundle) -> Any:
    """The package compiled with the bundle's settings (its layout, adaLN/x encodings)."""
    from .compiler import Compiler

    lay = bundle.layout
    try:
        return Compiler(pkg, bundle.config, bundle.rows, dram_base=bundle.dram_base,
                        dram_size=int(lay["dram_size"]), tile_tokens=int(lay["tile_tokens"]))
    except ValueError as e:
        raise BundleMismatch(f"bundle {bundle.root} does not fit package {pkg.root}: {e}") from None


def check_bundle(pkg: Any, bundle: Bundle) -> Any:
    """Raise :class:`BundleMismatch` unless ``bundle`` is the compiled ``pkg`` (module
    docstring); returns the package's :class:`~fpqvar_hw.host.compiler.Compiler`."""
    lay, where = bundle.layout, bundle.root
    m = pkg.model
    for key, got, want in (("embed_dim", lay["embed_dim"], int(m["embed_dim"])),
                           ("depth", lay["depth"], int(m["depth"])),
                           ("steps", len(lay["steps"]), len(m["patch_nums"]))):
        if got != want:
            raise BundleMismatch(f"bundle {where} has {key} {got}, package {pkg.root} has {want}: the "
                                 "bundle was compiled from another model; compile this package")
    comp = _compiler_for(pkg, bundle)
    regions = [{"name": r.name, "addr": r.addr, "size": r.size} for r in comp.regions()]
    if regions != lay["regions"] or comp.static_end != lay["static_end"]:
        diff = next((f"{a['name']} at 0x{a['addr']:x} ({a['size']} bytes) vs 0x{b['addr']:x} ({b['size']})"
                     for a, b in zip(regions, lay["regions"]) if a != b), "the region list differs")
        raise BundleMismatch(f"bundle {where}: its DRAM layout differs from package {pkg.root}'s "
                             f"({diff}); compile this package")
    for s, st in enumerate(lay["steps"]):
        if [st["L_start"], st["L"]] != list(comp.step_tokens(s)):
            raise BundleMismatch(f"bundle {where}: step {s} has tokens {st['L_start']}+{st['L']}, the package "
                                 f"{comp.step_tokens(s)}; compile this package")
    static = bytearray(len(bundle.static))
    for addr, data in comp.image():
        static[addr - comp.dram_base:addr - comp.dram_base + len(data)] = data
    if bytes(static) != bundle.static:
        off = next(i for i, (a, b) in enumerate(zip(static, bundle.static)) if a != b)
        region = next((r["name"] for r in regions if r["addr"] <= comp.dram_base + off < r["addr"] + r["size"]),
                      "?")
        raise BundleMismatch(f"bundle {where}: static.bin differs from package {pkg.root}'s weights at byte "
                             f"0x{off:x} (region {region}): the bundle was compiled from another package; "
                             "compile this package")
    return comp


class BundleBackend(backends.BlockBackend):
    """The bundle's image and programs on the reference executor (``isa_sim``): the
    :class:`~fpqvar_hw.host.driver.DeviceBackend` contract, with ``static.bin`` and
    ``step{i}.bin`` instead of a fresh compilation."""

    name = "golden-bundle"

    def __init__(self, pkg: Any, bundle: Bundle) -> None:
        from .isa_sim import Dram

        self.bundle = bundle
        self.compiler = check_bundle(pkg, bundle)
        self.dram = Dram(bundle.dram_base, int(bundle.layout["dram_size"]))
        self.dram.write(bundle.dram_base, bundle.static)
        self._began = False

    async def begin(self, cond_BD: np.ndarray, adaln: list[np.ndarray]) -> None:
        if len(adaln) != self.compiler.depth:
            raise ValueError(f"need {self.compiler.depth} adaLN arrays (one per block), got {len(adaln)}")
        for b, a in enumerate(adaln):
            self.dram.write(*self.compiler.encode_adaln(b, a))
        self._began = True

    async def step(self, si: int, x: np.ndarray) -> tuple[np.ndarray, records.StepPerf]:
        from .isa_sim import execute

        if not self._began:
            raise RuntimeError("begin() must be called before step()")
        comp, lay = self.compiler, self.bundle.layout
        prog_addr, x_addr = int(lay["prog_addr"]), int(lay["x_addr"])
        self.dram.write(x_addr, comp.encode_x(x))
        self.dram.write(prog_addr, self.bundle.programs[si])
        t0 = time.perf_counter()
        res = execute(self.dram, prog_addr, self.bundle.config)
        if not res.ok:
            raise backends.DeviceError(f"reference executor stopped with error {int(res.error)} ({res.error.name}) "
                                  f"at instruction {res.err_pc} of {self.bundle.layout['steps'][si]['program']}: "
                                  f"{res.message}", int(res.error), res.err_pc)
        perf = records.StepPerf(instructions=res.pc, wall_s=time.perf_counter() - t0)
        return comp.decode_x(self.dram.read(x_addr, comp.x_bytes(si)), si), perf

    async def end(self) -> None:
        self._began = False


def check_rtl_size(model: dict[str, Any]) -> None:
    """Refuse (``UserError``) a model the simulated RTL top cannot run in reasonable time."""
    C = int(model["embed_dim"])
    kv = sum(int(p) ** 2 for p in model["patch_nums"])
    if C != RTL_C or kv > RTL_MAX_KV:
        raise UserError(f"--backend rtl simulates a top built for C = {RTL_C} (embed_dim) and KV length <= "
                        f"{RTL_MAX_KV} (sum of patch_nums squared), tm={RTL_OVERRIDES['tm']} "
                        f"tn={RTL_OVERRIDES['tn']}; this model has C = {C}, KV length {kv}: too large to "
                        "simulate; use --backend golden")


def run_bundle(bundle: Bundle, pkg: Any, *, label: int, seed: int, sampling: records.Sampling,
               backend: str = "golden", max_steps: int | None = None, work: Path | None = None,
               log=None) -> records.ImageRun:
    """One image of class ``label`` (seed ``seed``) with the blocks on ``backend``."""
    if backend == "rtl":
        check_rtl_size(pkg.model)
        from .rtl import run_rtl_image      # the RTL co-simulation (Verilator via cocotb)

        if work is None:
            raise ValueError("the rtl backend needs a work folder")
        cfg = bundle.config.replace(**RTL_OVERRIDES)
        return run_rtl_image(Path(pkg.root), config=cfg, C=RTL_C, max_kv=RTL_MAX_KV, dram_base=RTL_DRAM_BASE,
                             label=label, seed=seed, sampling=sampling, out=work, max_steps=max_steps)
    if backend != "golden":
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dev = BundleBackend(pkg, bundle)
    host = hostpkg.host_model_from_package(pkg)
    return asyncio.run(drv.generate(host, dev, [label], seed, sampling, max_steps=max_steps, log=log))


def write_outputs(run: records.ImageRun, folder: Path, *, bundle: Bundle, package: Path) -> None:
    """``tokens.json`` and ``image.png`` of ``run`` into ``folder`` (the caller's
    temporary folder; :func:`main` swaps it into place)."""
    drv.save_png(run.images[0], folder / "image.png")
    doc = {"backend": run.backend, "bundle": str(bundle.root), "package": str(package),
           "labels": run.labels, "seed": run.seed, "sampling": asdict(run.sampling), "tokens": run.tokens,
           "host_seconds": round(run.host_seconds, 3), "device_seconds": round(run.device_seconds, 3)}
    (folder / "tokens.json").write_text(json.dumps(doc, indent=1) + "\n")


# --------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fpqvar_hw.host.run",
        description="Run a compiled bundle (python -m fpqvar_hw.host.compiler) of a quantized package: one "
                    "image on the reference executor (golden) or the simulated RTL top (rtl, small models "
                    "only); writes tokens.json and image.png into --out.",
        epilog="Errors print one line (exit status 2); --debug shows the traceback.")
    p.add_argument("bundle", type=Path, help="bundle folder (static.bin, step*.bin, layout.json)")
    p.add_argument("--package", type=Path, required=True,
                   help="the quantized package the bundle was compiled from (fpqvar-quant export)")
    p.add_argument("--class", dest="label", type=int, required=True,
                   help="class label (0..num_classes-1; num_classes = unconditional)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder (tokens.json, image.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's --out folder")
    p.add_argument("--backend", choices=BACKENDS, default="golden", help="golden (default) or rtl")
    p.add_argument("--cfg", type=float, default=None, help="CFG strength (default: the model's)")
    p.add_argument("--top-k", type=int, default=None, help="top-k (default: the model's, 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="top-p (default: the model's, 0 = off)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many scale steps")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpqvar_hw.host.run``: errors print one line (exit 2; ``--debug``)."""
    from fpqvar_quant.safeio import run_cli

    return run_cli(_main, None if argv is None else list(argv), "python -m fpqvar_hw.host.run",
                   errors=(KeyError, backends.DeviceError))


def _main(argv: Sequence[str]) -> int:
    from fpqvar_quant.ptq.package import load_package
    from fpqvar_quant.safeio import atomic_output_dir, prepare_output_dir

    a = build_parser().parse_args(argv)
    t0 = time.time()
    # everything the user can get wrong, before any model is loaded
    bundle = load_bundle(a.bundle)
    num_classes, steps = drv.package_dims(a.package)
    if not 0 <= a.label <= num_classes:
        raise UserError(f"--class {a.label}: the model has classes 0..{num_classes - 1} "
                        f"({num_classes} = unconditional)")
    if not 0 <= a.seed < 2 ** 63:
        raise UserError(f"--seed must be an integer in [0, 2^63), got {a.seed}")
    if a.max_steps is not None and not 1 <= a.max_steps <= steps:
        raise UserError(f"--max-steps must be in 1..{steps}, got {a.max_steps}")
    if a.cfg is not None and a.cfg < 0:
        raise UserError(f"--cfg must be >= 0, got {a.cfg}")
    prepare_output_dir(a.out, RUN_KIND, overwrite=a.overwrite)
    pkg = load_package(a.package)
    if a.backend == "rtl":
        check_rtl_size(pkg.model)
    base = hostpkg.load_shipped_model().sampling
    sampling = records.Sampling(cfg=base.cfg if a.cfg is None else a.cfg,
                            top_k=base.top_k if a.top_k is None else a.top_k,
                            top_p=base.top_p if a.top_p is None else a.top_p)
    print(f"bundle {a.bundle} ({len(bundle.programs)} steps, {bundle.config.preset}), package {a.package}; "
          f"class {a.label}, seed {a.seed}, {sampling}; backend {a.backend}")
    with atomic_output_dir(a.out, RUN_KIND, overwrite=a.overwrite,
                           meta={"bundle": str(a.bundle), "label": a.label, "seed": a.seed}) as tmp:
        run = run_bundle(bundle, pkg, label=a.label, seed=a.seed, sampling=sampling, backend=a.backend,
                         max_steps=a.max_steps, work=tmp / "rtl", log=print)
        write_outputs(run, tmp, bundle=bundle, package=a.package)
    print(f"wrote {a.out}/tokens.json and image.png ({time.time() - t0:.1f} s; blocks "
          f"{run.device_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
