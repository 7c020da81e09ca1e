"""The step plan: the one ordered list of operations of a scale step.

Both consumers derive from it: :meth:`fpqvar_hw.host.compiler.Compiler.instructions`
maps each :class:`PlanOp` to its concrete instruction (addresses and strides from
the DRAM layout), :func:`fpqvar_hw.flow.asbuilt.top_step_program` to its
shape-level :class:`~fpqvar_hw.flow.asbuilt.TopInstr` (timing).  Neither defines
the phases, the op order or the shapes itself.

Program of a step (``docs/top.md``): per block three phases over token tiles
(:func:`tiles`: short rows whole, several per tile, so that both CFG halves and the
images of a batch share a weight pass; long rows in tiles of ``tile`` tokens), each
phase's tile chains interleaved with a skew of one stage (:func:`skew`) so that the
matrix engine works on tile ``t+1`` while the vector engine finishes tile ``t``.  The
GEMMs and the row-independent VEC ops (L2NT, GELU) cover the whole tile; the ops that
use a row's own adaLN vectors, KV caches or attention run once per piece of the tile
inside one row (:func:`segments`, in row order):

* A = LNMOD (per piece), GEMM qkv, L2NT q, L2NT k, per piece CVT16 k, CVT16 v (KV6:
  KVQ6 k, KVQ6 v) -- cache positions ``[L_start + l0, L_start + l1)`` of the row;
* B = per piece FDOT qk, SOFTMAX, FDOT pv; GEMM proj; RESID per piece;
* C = LNMOD per piece, GEMM fc1, GELU, GEMM fc2, RESID per piece.

Footprints are symbolic: ``(buffer, lo, hi)`` ranges of token rows of the
step-dense buffers (``x``, ``h``, ``q``/``k``/``v`` = the three thirds of
``qkv``, ``s`` = scores, ``o`` = attn, ``y``, ``f``; token row ``t = r*L + l``) or
of KV positions of row ``r``'s caches (``kc{r}``, ``vc{r}``; KV6 scales
``ks{r}``, ``vs{r}``).  :class:`Spans` checks them like
:meth:`fpqvar_hw.footprints.Footprint.conflicts` checks byte ranges.  Imports only
:mod:`fpqvar_hw.isa`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..isa import L2NT_LEN, Opcode, VecSubop

__all__ = ["HEAD_DIM", "PHASES", "SPLIT_TOKENS", "TILE_ORDERS", "PlanOp", "Spans", "tiles", "segments", "skew",
           "step_plan"]

#: head dim of the attention dataflow (the L2NT row)
HEAD_DIM = L2NT_LEN
#: the phases of a block, in program order
PHASES = ("A", "B", "C")


@dataclass(frozen=True)
class Spans:
    """Footprint of a plan op: ``(buffer, lo, hi)`` ranges it reads and writes;
    :meth:`conflicts` is RAW/WAR/WAW like :meth:`fpqvar_hw.footprints.Footprint.conflicts`."""

    reads: tuple
    writes: tuple

    @staticmethod
    def _overlap(a, b) -> bool:
        return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)

    def conflicts(self, other: "Spans") -> bool:
        return (self._overlap(self.reads, other.writes) or self._overlap(self.writes, other.reads)
                or self._overlap(self.writes, other.writes))


@dataclass(frozen=True)
class PlanOp:
    """One operation of a step plan.

    ``phase``: ``"A"``, ``"B"`` or ``"C"``; ``block``; ``row``: the row a per-row op
    works on (``None`` for an op over a whole tile); ``t0, t1``: its step-dense token
    rows (inside ``row`` for a per-row op); ``name``: the op (``"LNMOD"``, ``"qkv"``, ``"L2NT q"``, ...; a
    GEMM's name is its layer role); ``opcode``: GEMM or VEC; ``subop``: the VEC
    sub-op (``None`` for a GEMM); ``shape``: GEMM ``(M, K, N)``, VEC the loop counts
    ``(n0, n1, n2, n3)``; ``spans``: the symbolic footprint.
    """

    phase: str
    block: int
    row: int | None
    t0: int
    t1: int
    name: str
    opcode: Opcode
    subop: VecSubop | None
    shape: tuple
    spans: Spans

    @property
    def tokens(self) -> int:
        return self.t1 - self.t0

    @property
    def reads(self) -> tuple:
        return self.spans.reads

    @property
    def writes(self) -> tuple:
        return self.spans.writes


#: a step of more token rows than this gets at least two tiles (when it has two rows), so
#: that the matrix engine overlaps the vector engine (the coarse pipeline); below it one
#: weight pass for all rows is worth more (as-built model, ``benchmarks/tile_choice.py``)
SPLIT_TOKENS = 32


#: tile orders of :func:`tiles`: the compiler's, one row per tile at most (programs before
#: 2026-12-06, which older cycle files ran), consecutive token rows (for comparisons)
TILE_ORDERS = ("span", "rows", "flat")


def tiles(L: int, rows: int, tile: int, *, order: str = "span") -> list[tuple[int, int]]:
    """Token tiles ``(t0, t1)`` of a step of ``L`` tokens in each of ``rows`` rows, as
    ranges of the step-dense token rows ``t = r*L + l``.  ``order="span"`` (the
    compiler's): a row longer than ``tile`` tokens in tiles of ``tile`` tokens inside the
    row (the last one shorter); shorter rows whole, as many per tile as fit ``tile``
    tokens (one weight pass for both CFG halves and every image of a batch), but at least
    two tiles when the step has more than :data:`SPLIT_TOKENS` token rows.  ``"rows"``:
    one row per tile at most (``rows * ceil(L/tile)`` tiles).  ``"flat"``: ``tile``
    consecutive token rows each, across row boundaries."""
    if order not in TILE_ORDERS:
        raise ValueError(f"tile order must be one of {TILE_ORDERS}, got {order!r}")
    if order == "flat":
        return [(t, min(rows * L, t + tile)) for t in range(0, rows * L, tile)]
    if order == "rows" or L > tile or rows == 1:
        return [(r * L + l0, r * L + min(L, l0 + tile)) for r in range(rows) for l0 in range(0, L, tile)]
    g = min(rows, tile // L)
    if rows * L > SPLIT_TOKENS:
        g = min(g, -(-rows // 2))
    return [(r * L, min(rows, r + g) * L) for r in range(0, rows, g)]


def segments(t0: int, t1: int, L: int) -> list[tuple[int, int, int]]:
    """The pieces ``(row, t0, t1)`` of token rows ``[t0, t1)`` inside one row each (the
    per-row ops: adaLN vectors, KV caches and attention are the row's own)."""
    return [(r, max(t0, r * L), min(t1, (r + 1) * L)) for r in range(t0 // L, -(-t1 // L))]


def skew(chains: list[list]) -> list:
    """Interleave per-tile chains: stage s of tile t at wave t + s (software
    pipelining; the chains must not depend on each other)."""
    keyed = [((t + s, t), ins) for t, ch in enumerate(chains) for s, ins in enumerate(ch)]
    keyed.sort(key=lambda kv: kv[0])
    return [ins for _, ins in keyed]


def _phase_a(C, H, L_start, L, kv6, t0, t1, segs):
    D, V = HEAD_DIM, Opcode.VEC
    T = (t0, t1)
    ops = [(r, a, z, "LNMOD", V, VecSubop.LNMOD, (C, z - a, 1, 1), (("x", a, z),), (("h", a, z),))
           for r, a, z in segs]
    ops += [(None, t0, t1, "qkv", Opcode.GEMM, None, (t1 - t0, C, 3 * C), (("h",) + T,),
             (("q",) + T, ("k",) + T, ("v",) + T)),
            (None, t0, t1, "L2NT q", V, VecSubop.L2NT, (D, H, t1 - t0, 1), (("q",) + T,), (("q",) + T,)),
            (None, t0, t1, "L2NT k", V, VecSubop.L2NT, (D, H, t1 - t0, 1), (("k",) + T,), (("k",) + T,))]
    for r, a, z in segs:
        kv = (L_start + a - r * L, L_start + z - r * L)
        for part in ("k", "v"):
            if kv6:      # codes + one FP16 scale per (token, head)
                ops.append((r, a, z, f"KVQ6 {part}", V, VecSubop.KVQ6, (D, H, z - a, 1),
                            ((part, a, z),), ((f"{part}c{r}",) + kv, (f"{part}s{r}",) + kv)))
            else:
                ops.append((r, a, z, f"CVT16 {part}", V, VecSubop.CVT16, (D, H, z - a, 1),
                            ((part, a, z),), ((f"{part}c{r}",) + kv,)))
    return ops


def _phase_b(C, H, L_start, L, kv6, t0, t1, segs):
    Lk, D, V = L_start + L, HEAD_DIM, Opcode.VEC
    T = (t0, t1)

    def cache(r, part):
        return ((f"{part}c{r}", 0, Lk),) + (((f"{part}s{r}", 0, Lk),) if kv6 else ())

    ops = []
    for r, a, z in segs:
        n = z - a
        ops += [(r, a, z, "FDOT qk", V, VecSubop.FDOT, (D, Lk, n, H), (("q", a, z),) + cache(r, "k"),
                 (("s", a, z),)),
                (r, a, z, "SOFTMAX", V, VecSubop.SOFTMAX, (Lk, H, n, 1), (("s", a, z),), (("s", a, z),)),
                (r, a, z, "FDOT pv", V, VecSubop.FDOT, (Lk, D, n, H), (("s", a, z),) + cache(r, "v"),
                 (("o", a, z),))]
    ops.append((None, t0, t1, "proj", Opcode.GEMM, None, (t1 - t0, C, C), (("o",) + T,), (("y",) + T,)))
    ops += [(r, a, z, "RESID", V, VecSubop.RESID, (C, z - a, 1, 1), (("x", a, z), ("y", a, z)),
             (("x", a, z),)) for r, a, z in segs]
    return ops


def _phase_c(C, H, hidden, t0, t1, segs):
    V = Opcode.VEC
    T = (t0, t1)
    n = t1 - t0
    ops = [(r, a, z, "LNMOD", V, VecSubop.LNMOD, (C, z - a, 1, 1), (("x", a, z),), (("h", a, z),))
           for r, a, z in segs]
    ops += [(None, t0, t1, "fc1", Opcode.GEMM, None, (n, C, hidden), (("h",) + T,), (("f",) + T,)),
            (None, t0, t1, "GELU", V, VecSubop.GELU, (hidden, n, 1, 1), (("f",) + T,), (("f",) + T,)),
            (None, t0, t1, "fc2", Opcode.GEMM, None, (n, hidden, C), (("f",) + T,), (("y",) + T,))]
    ops += [(r, a, z, "RESID", V, VecSubop.RESID, (C, z - a, 1, 1), (("x", a, z), ("y", a, z)),
             (("x", a, z),)) for r, a, z in segs]
    return ops


@functools.lru_cache(maxsize=64)
def step_plan(C: int, H: int, hidden: int, blocks: int, L_start: int, L: int, rows: int,
              tile: int, *, kv6: bool = False, max_tiles: int | None = None,
              order: str = "span") -> tuple[PlanOp, ...]:
    """The ops of one scale step in program order (without the HALT): per block the
    phases A, B, C over :func:`tiles`, each phase's tile chains :func:`skew`-ed.
    ``C`` embed dim, ``H`` heads, ``hidden`` MLP width, ``blocks`` depth; the step's
    new tokens are ``[L_start, L_start + L)`` of each of ``rows`` rows (the keys:
    ``L_start + L``); ``kv6``: KVQ6 instead of CVT16 (and the FDOTs read the scale
    caches too); ``max_tiles``: only the first that many tiles of each phase (the KV
    length stays ``L_start + L``), for timing a sample of a long step (cached);
    ``order``: the tiles' (:func:`tiles`)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    tl = tiles(L, rows, tile, order=order)[:max_tiles]
    phases = (("A", lambda t0, t1, sg: _phase_a(C, H, L_start, L, kv6, t0, t1, sg)),
              ("B", lambda t0, t1, sg: _phase_b(C, H, L_start, L, kv6, t0, t1, sg)),
              ("C", lambda t0, t1, sg: _phase_c(C, H, hidden, t0, t1, sg)))
    out: list[PlanOp] = []
    for b in range(blocks):
        for phase, ops in phases:
            chains = [[PlanOp(phase, b, r, a, z, name, opcode, subop, shape, Spans(rd, wr))
                       for r, a, z, name, opcode, subop, shape, rd, wr in ops(t0, t1, segments(t0, t1, L))]
                      for t0, t1 in tl]
            out += skew(chains)
    return tuple(out)
