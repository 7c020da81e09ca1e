"""Scale steps of a compiled VAR for the top's testbench (``sim/tb_top.py`` ``block_steps``
and ``instruction_profile``): the DRAM image, random block inputs and adaLN vectors, the
compiler's programs and the region map, shared by sim/test_top.py and
benchmarks/top_calibration.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fpqvar_hw.host import isa_sim
from sim.runner import BUILD_ROOT

#: first byte of the compiled model in the testbench's DRAM
STEP_BASE = 0x40000


def prepare_steps(pkg_path: Path, cfg: Any, *, rows: int, n_steps: int, seed: int, max_kv: int,
                  ram_size: int, tile_tokens: int | None = None, name: str | None = None) -> Path:
    """DRAM image (compiled model + random adaLN vectors), inputs and programs of steps
    0 .. n_steps-1 (from the compiler, ``rows`` rows = 2 x batch, tiles of ``tile_tokens``)
    and the region map; returns the ``steps.json`` that tb_top reads."""
    from fpqvar_hw.host.compiler import Compiler
    from fpqvar_quant.ptq.package import load_package

    comp = Compiler(load_package(pkg_path), cfg, rows=rows, dram_base=STEP_BASE, max_kv=max_kv,
                    tile_tokens=tile_tokens)
    if comp.dram_base + comp.dram_size > ram_size:
        raise ValueError(f"the compiled model needs {comp.dram_base + comp.dram_size} bytes; the "
                         f"testbench RAM holds {ram_size}")
    out = BUILD_ROOT / "vectors" / (name or f"top-steps-s{seed}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dram = isa_sim.Dram(comp.dram_base, comp.dram_size)
    dram.load(comp.image())
    for b in range(comp.depth):
        ada = (rng.standard_normal((comp.rows, 6, comp.C)) * 0.3).astype(np.float32)
        dram.write(*comp.encode_adaln(b, ada))
    np.save(out / "image.npy", np.frombuffer(bytes(dram.mem), np.uint8))
    spec = {"base": comp.dram_base, "size": comp.dram_size, "prog_addr": comp.prog_addr,
            "image": str(out / "image.npy"),
            "regions": [[r.name, r.addr, r.size] for r in comp.regions()], "steps": []}
    for s in range(n_steps):
        L = comp.step_tokens(s)[1]
        x = rng.standard_normal((comp.rows, L, comp.C)).astype("<f4")
        prog = np.frombuffer(comp.program(s), np.uint8)
        np.savez(out / f"step{s}.npz", x=x, program=prog)
        spec["steps"].append({"step": s, "L": L, "x_addr": comp.x_addr,
                              "input": str(out / f"step{s}.npz"),
                              "timeout_cycles": 400_000 * (L + 1) * max(1, rows // 2)})
    path = out / "steps.json"
    path.write_text(json.dumps(spec, indent=1))
    return path
