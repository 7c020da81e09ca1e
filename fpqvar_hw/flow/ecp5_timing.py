"""Delay model of a ``synth_ecp5`` netlist, fitted to nextpnr's routed results (issue 18).

A count of logic levels does not predict the routed clock on ECP5 (``ltp`` counts a
17-cell CCU2C carry chain that nextpnr crosses in 1.6 ns as 17 levels, a 3.9-ns
MULT18X18D as one, and routing is half of every routed critical path).  This model
times the mapped netlist instead:

* **cells** with the delays nextpnr-ecp5 uses for the LFE5U speed grade 6, as they
  appear in the routed critical paths of ``benchmarks/results/ecp5_routed.json``
  (:data:`CELL_NS`: LUT4 0.236 ns, PFUMX / L6MUX21 0.256, a CCU2C entered from its
  data inputs 0.447, carry-in to carry-out 0.071 per cell, carry-in to sum 0.443,
  MULT18X18D 3.927 (unregistered), clock-to-Q 0.525, a DP16KD block RAM's clock to
  data out 5.83 without its output register);
* **routing**: every routed connection on the path costs ``r`` ns, dedicated
  connections (CCU2C COUT -> CIN, LUT4 -> PFUMX, PFUMX -> L6MUX21) none, and
  ``r = r0 + r1 * log2(cells)`` grows with the size of the block (wires get longer
  as a placed block spreads); ``r0`` and ``r1`` are the two fitted numbers
  (:func:`fit_routing`, over the units routed by ``benchmarks/ecp5_routed.py``).

The slowest register-to-register path depends on ``r`` (many short hops against a
few slow cells), so :func:`delay_profile` computes, in one levelised pass over the
netlist, the slowest path's delay for every ``r`` of the grid :data:`R_GRID`;
:meth:`Profile.period_ns` interpolates it.  A profile is small (one number per grid
point) and is stored with each routed result, so fits need no netlist.

Sequential cells (path ends): TRELLIS_FF, DP16KD, the write side of TRELLIS_DPR16X4
(its read address to data out is combinational, a LUT4 delay).  Module ports are
not path ends: nextpnr's out-of-context f_max is register to register.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["CELL_NS", "CLK_TO_Q_NS", "EBR_CLK_TO_OUT_NS", "MODEL_VERSION", "R_GRID", "Profile", "delay_profile", "RoutingFit",
           "fit_routing", "ECP5_ROUTING"]

#: Bumped whenever the cell delays or the path rules change: a stored profile of another
#: version is recomputed from its netlist (:func:`fpqvar_hw.flow.ecp5.profile_of`).
MODEL_VERSION = 2
CLK_TO_Q_NS = 0.525
#: DP16KD clock to DOA/DOB without the output register (5.609-5.83 ns in the reports).
EBR_CLK_TO_OUT_NS = 5.83
#: Cell delays in ns, by cell type (a CCU2C by the arc: from a data input, carry in to
#: carry out, carry in to sum) and the one non-zero setup time.
CELL_NS = {
    "LUT4": 0.236,
    "PFUMX": 0.256,
    "L6MUX21": 0.256,
    "CCU2C_data": 0.447,
    "CCU2C_cin_cout": 0.071,
    "CCU2C_cin_sum": 0.443,
    "MULT18X18D": 3.927,
    "ALU54B": 3.927,            # not seen on a routed path yet; as the multiplier
    "DPR16X4_read": 0.236,
    "WRE_setup": 0.392,         # TRELLIS_DPR16X4 write enable setup (0 for the others)
}
#: Routing delays per connection (ns) at which the slowest path is computed.
R_GRID = np.round(np.arange(0.0, 4.01, 0.1), 2)

_SEQ = {"TRELLIS_FF", "DP16KD", "PDPW16KD"}
#: Combinational cells timed by their own CELL_NS entry (any other type as a LUT4).
_COMB = {"LUT4", "PFUMX", "L6MUX21", "MULT18X18D", "ALU54B"}
#: Dedicated (unrouted) connections: (sink cell, sink port) -> the (driver cell, driver
#: port) that makes it one.
_DEDICATED = {("CCU2C", "CIN"): ("CCU2C", "COUT"), ("PFUMX", "ALUT"): ("LUT4", "Z"),
              ("PFUMX", "BLUT"): ("LUT4", "Z"), ("L6MUX21", "D0"): ("PFUMX", "Z"),
              ("L6MUX21", "D1"): ("PFUMX", "Z")}


@dataclass(frozen=True)
class Profile:
    """Slowest register-to-register delay (ns, clock-to-Q and setup included) of one
    netlist for each routing delay of :data:`R_GRID`; ``cells`` is its cell count."""

    delays_ns: tuple[float, ...]
    cells: int
    unknown: tuple[str, ...] = ()     # cell types timed as a LUT4 (none in our units)
    version: int = MODEL_VERSION

    def period_ns(self, r_ns: float) -> float:
        return float(np.interp(r_ns, R_GRID, np.asarray(self.delays_ns)))

    def as_dict(self) -> dict:
        return {"delays_ns": [round(x, 4) for x in self.delays_ns], "cells": self.cells,
                "unknown": list(self.unknown), "version": self.version}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Profile":
        return cls(tuple(d["delays_ns"]), int(d["cells"]), tuple(d.get("unknown", ())),
                   int(d.get("version", 1)))


def _top_module(netlist: Mapping) -> Mapping:
    def is_top(m: Mapping) -> bool:
        v = str(m.get("attributes", {}).get("top", "0"))     # Yosys writes "000...01"
        return int(v, 2 if set(v) <= {"0", "1"} else 10) != 0
    tops = [m for m in netlist["modules"].values() if is_top(m)]
    if len(tops) != 1:
        raise ValueError(f"expected one top module in the netlist, found {len(tops)}")
    return tops[0]


def delay_profile(netlist: Mapping) -> Profile:
    """:class:`Profile` of a flattened ``synth_ecp5`` JSON netlist (``write_json``)."""
    top = _top_module(netlist)
    cells = [c for c in top["cells"].values() if not c["type"].startswith("$scopeinfo")]
    # driver cell type and port of every net bit (to find dedicated connections)
    driver: dict[int, tuple[str, str]] = {}
    for c in cells:
        for p, bits in c["connections"].items():
            if c["port_directions"].get(p) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = (c["type"], p)
    # arcs: (src bit, dst bit, cell delay, routed 0/1); ends: (src bit, setup, routed)
    src, dst, dly, rtd = [], [], [], []
    ends: list[tuple[int, float, int]] = []
    starts: dict[int, float] = {}          # register / RAM output bit -> clock-to-out
    unknown: set[str] = set()

    def routed(bit: int, ctype: str, port: str) -> int:
        ded = _DEDICATED.get((ctype, port))
        return 0 if ded is not None and driver.get(bit) == ded else 1

    for c in cells:
        t, conns, dirs = c["type"], c["connections"], c["port_directions"]
        ins = [(p, b) for p, bits in conns.items() if dirs.get(p) == "input"
               for b in bits if isinstance(b, int)]
        outs = [(p, b) for p, bits in conns.items() if dirs.get(p) == "output"
                for b in bits if isinstance(b, int)]
        if t in _SEQ:
            tco = CLK_TO_Q_NS if t == "TRELLIS_FF" else EBR_CLK_TO_OUT_NS
            starts.update((b, tco) for _, b in outs)
            ends.extend((b, 0.0, 1) for p, b in ins if p not in ("CLK", "CLKA", "CLKB", "CLKW", "CLKR"))
            continue
        if t == "TRELLIS_DPR16X4":
            for p, b in ins:
                if p.startswith("RAD"):
                    for _, o in outs:
                        src.append(b); dst.append(o); dly.append(CELL_NS["DPR16X4_read"]); rtd.append(1)
                elif p != "WCK":
                    ends.append((b, CELL_NS["WRE_setup"] if p == "WRE" else 0.0, 1))
            continue
        if t == "CCU2C":
            for p, b in ins:
                r = routed(b, t, p)
                for q, o in outs:
                    if p == "CIN":
                        d = CELL_NS["CCU2C_cin_cout"] if q == "COUT" else CELL_NS["CCU2C_cin_sum"]
                    else:
                        d = CELL_NS["CCU2C_data"]
                    src.append(b); dst.append(o); dly.append(d); rtd.append(r)
            continue
        key = t if t in _COMB else "LUT4"
        if t not in _COMB:
            unknown.add(t)
        for p, b in ins:
            r = routed(b, t, p)
            for _, o in outs:
                src.append(b); dst.append(o); dly.append(CELL_NS[key]); rtd.append(r)
    return Profile(tuple(float(x) for x in _longest(src, dst, dly, rtd, starts, ends)),
                   len(cells), tuple(sorted(unknown)))


def _longest(src, dst, dly, rtd, starts: dict[int, float], ends) -> np.ndarray:
    """Slowest start-to-end delay for every r of R_GRID (levelised, vectorised over r)."""
    if not ends or not starts:
        return np.zeros(len(R_GRID))
    bits = sorted(set(src) | set(dst) | set(starts) | {b for b, _, _ in ends})
    idx = {b: i for i, b in enumerate(bits)}
    S = np.array([idx[b] for b in src], dtype=np.int64)
    D = np.array([idx[b] for b in dst], dtype=np.int64)
    W = np.array(dly)
    R = np.array(rtd, dtype=float)
    n = len(bits)
    # topological level of every net (Kahn over the arc graph); a start breaks a path
    start = np.zeros(n, bool)
    start[[idx[b] for b in starts]] = True
    tco = np.zeros(n)
    tco[[idx[b] for b in starts]] = list(starts.values())
    keep = ~start[D]                      # arcs into a register output do not exist, but be safe
    S, D, W, R = S[keep], D[keep], W[keep], R[keep]
    indeg = np.bincount(D, minlength=n)
    order = np.argsort(S, kind="stable")
    S, D, W, R = S[order], D[order], W[order], R[order]
    first = np.searchsorted(S, np.arange(n + 1))
    level = np.full(n, -1)
    frontier = np.flatnonzero(indeg == 0)
    level[frontier] = 0
    remaining = indeg.copy()
    lv = 0
    while frontier.size:
        lo, hi = first[frontier], first[frontier + 1]
        out = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if frontier.size else []
        if len(out) == 0:
            break
        dsts = D[out]
        np.subtract.at(remaining, dsts, 1)
        lv += 1
        nxt = np.unique(dsts[remaining[dsts] == 0])
        level[nxt] = lv
        frontier = nxt
    arc_level = level[D]
    ok = arc_level >= 0                   # arcs inside a combinational loop are dropped
    arr = np.full((n, len(R_GRID)), -np.inf)
    arr[start] = tco[start][:, None]
    by_level = np.argsort(arc_level[ok], kind="stable")
    aS, aD, aW, aR, aL = (x[ok][by_level] for x in (S, D, W, R, arc_level))
    bounds = np.searchsorted(aL, np.arange(1, lv + 2))
    lo = 0
    for hi in bounds:
        if hi > lo:
            vals = arr[aS[lo:hi]] + aW[lo:hi, None] + aR[lo:hi, None] * R_GRID[None, :]
            np.maximum.at(arr, aD[lo:hi], vals)
        lo = hi
    eb = np.array([idx[b] for b, _, _ in ends])
    es = np.array([s for _, s, _ in ends])
    er = np.array([r for _, _, r in ends], dtype=float)
    tot = arr[eb] + es[:, None] + er[:, None] * R_GRID[None, :]
    best = tot.max(axis=0)
    return np.where(np.isfinite(best), best, 0.0)


@dataclass(frozen=True)
class RoutingFit:
    """``r = r0 + r1 * log2(cells)`` ns per routed connection, fitted to routed periods."""

    r0: float
    r1: float
    r2: float                 # coefficient of determination of the period
    max_err_pct: float        # largest |model f_max - routed f_max| / routed f_max
    n: int
    mean_err_pct: float = 0.0

    def r_ns(self, cells: int) -> float:
        return max(0.0, self.r0 + self.r1 * math.log2(max(cells, 2)))

    def fmax_mhz(self, prof: Profile) -> float | None:
        t = prof.period_ns(self.r_ns(prof.cells))
        return 1000.0 / t if t > 0 else None

    def as_dict(self) -> dict:
        return {"r0_ns": round(self.r0, 4), "r1_ns_per_log2_cell": round(self.r1, 4),
                "r2": round(self.r2, 4), "max_err_pct": round(self.max_err_pct, 1),
                "mean_err_pct": round(self.mean_err_pct, 1), "n": self.n}


#: The fit committed in benchmarks/results/ecp5_routed.json (python benchmarks/ecp5_routed.py),
#: used by the ulx3s build to print a model f_max next to each routed one.
#: 18 routed units at 5fe57cf (the preset's arrays and the ULX3S default arrays): r = 0.15 +
#: 0.06 log2(cells) ns (0.61 ns per connection in a 200-cell block, 1.01 ns at 20,000
#: cells); f_max error mean 9.7 %, max 16.4 %, period r^2 0.885.  tests/test_ecp5.py
#: checks it against the JSON.
ECP5_ROUTING = RoutingFit(r0=0.15, r1=0.06, r2=0.8846, max_err_pct=16.4, n=18, mean_err_pct=9.7)


def fit_routing(points: Sequence[tuple[Profile, float]]) -> RoutingFit:
    """Fit of ``r0``, ``r1`` to (profile, routed f_max MHz) points by least squares on the
    log of the period (every unit's relative error weighs the same: a 2-ns FP32 max as
    much as a 13-ns Hadamard), grid search in 0.01 / 0.005-ns steps; needs at least 3
    points with a clocked path."""
    pts = [(p, 1000.0 / f) for p, f in points if f and f > 0 and max(p.delays_ns) > 0]
    if len(pts) < 3:
        raise ValueError(f"a routing fit needs at least 3 routed units, got {len(pts)}")
    T = np.array([t for _, t in pts])
    L = np.array([math.log2(max(p.cells, 2)) for p, _ in pts])
    prof = np.array([p.delays_ns for p, _ in pts])

    def model(r0: float, r1: float) -> np.ndarray:
        r = np.clip(r0 + r1 * L, R_GRID[0], R_GRID[-1])
        return np.array([np.interp(ri, R_GRID, row) for ri, row in zip(r, prof)])

    best = None
    for r1 in np.arange(0.0, 0.301, 0.005):
        for r0 in np.arange(-1.0, 2.001, 0.01):
            e = float(np.sum(np.log(model(r0, r1) / T) ** 2))
            if best is None or e < best[0]:
                best = (e, r0, r1)
    _, r0, r1 = best
    pred = model(r0, r1)
    ss_tot = float(np.sum((T - T.mean()) ** 2))
    r2 = 1.0 - float(np.sum((pred - T) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    err = np.abs((1000 / pred) - (1000 / T)) / (1000 / T) * 100
    return RoutingFit(float(r0), float(r1), r2, float(err.max()), len(pts), float(err.mean()))
