"""The step plan: the one ordered list of operations of a scale step.

Both consumers derive from it: :meth:`fpqvar_hw.host.compiler.Compiler.instructions`
maps each :class:`PlanOp` to its concrete instruction (addresses and strides from
the DRAM layout), :func:`fpqvar_hw.flow.asbuilt.top_step_program` to its
shape-level :class:`~fpqvar_hw.flow.asbuilt.TopInstr` (timing).  Neither defines
the phases, the op order or the shapes itself.

Program of a step (``docs/top.md``): per block three phases over token tiles
(``tile`` tokens of one row, :func:`tiles`), each phase's tile chains interleaved
with a skew of one stage (:func:`skew`) so that the matrix engine works on tile
``t+1`` while the vector engine finishes tile ``t``:

* A = LNMOD, GEMM qkv, L2NT q, L2NT k, CVT16 k, CVT16 v (KV6: KVQ6 k, KVQ6 v) --
  cache positions ``[L_start + l0, L_start + l1)``;
* B = FDOT qk, SOFTMAX, FDOT pv, GEMM proj, RESID;
* C = LNMOD, GEMM fc1, GELU, GEMM fc2, RESID.

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

__all__ = ["HEAD_DIM", "PHASES", "PER_TILE", "PlanOp", "Spans", "tiles", "skew", "step_plan"]

#: head dim of the attention dataflow (the L2NT row)
HEAD_DIM = L2NT_LEN
#: the phases of a block, in program order, and their ops per tile
PHASES = {"A": 6, "B": 5, "C": 5}
#: ops per tile and block
PER_TILE = sum(PHASES.values())


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

    ``phase``: ``"A"``, ``"B"`` or ``"C"``; ``block``; the tile: tokens ``[l0, l1)``
    of row ``row``; ``name``: the op (``"LNMOD"``, ``"qkv"``, ``"L2NT q"``, ...; a
    GEMM's name is its layer role); ``opcode``: GEMM or VEC; ``subop``: the VEC
    sub-op (``None`` for a GEMM); ``shape``: GEMM ``(M, K, N)``, VEC the loop counts
    ``(n0, n1, n2, n3)``; ``spans``: the symbolic footprint.
    """

    phase: str
    block: int
    row: int
    l0: int
    l1: int
    name: str
    opcode: Opcode
    subop: VecSubop | None
    shape: tuple
    spans: Spans

    @property
    def tokens(self) -> int:
        return self.l1 - self.l0

    @property
    def reads(self) -> tuple:
        return self.spans.reads

    @property
    def writes(self) -> tuple:
        return self.spans.writes


def tiles(L: int, rows: int, tile: int) -> list[tuple[int, int, int]]:
    """Token tiles ``(row, l0, l1)`` of a step of ``L`` tokens: rows outer, ``tile``
    tokens each (the last one of a row may be shorter)."""
    return [(r, l0, min(L, l0 + tile)) for r in range(rows) for l0 in range(0, L, tile)]


def skew(chains: list[list]) -> list:
    """Interleave per-tile chains: stage s of tile t at wave t + s (software
    pipelining; the chains must not depend on each other)."""
    keyed = [((t + s, t), ins) for t, ch in enumerate(chains) for s, ins in enumerate(ch)]
    keyed.sort(key=lambda kv: kv[0])
    return [ins for _, ins in keyed]


def _phase_a(C, H, L_start, L, kv6, b, r, l0, l1):
    n, t = l1 - l0, r * L + l0
    T = (t, t + n)
    kv = (L_start + l0, L_start + l1)
    D = HEAD_DIM
    V = Opcode.VEC
    ops = [("LNMOD", V, VecSubop.LNMOD, (C, n, 1, 1), (("x",) + T,), (("h",) + T,)),
           ("qkv", Opcode.GEMM, None, (n, C, 3 * C), (("h",) + T,),
            (("q",) + T, ("k",) + T, ("v",) + T)),
           ("L2NT q", V, VecSubop.L2NT, (D, H, n, 1), (("q",) + T,), (("q",) + T,)),
           ("L2NT k", V, VecSubop.L2NT, (D, H, n, 1), (("k",) + T,), (("k",) + T,))]
    for part in ("k", "v"):
        if kv6:      # codes + one FP16 scale per (token, head)
            ops.append((f"KVQ6 {part}", V, VecSubop.KVQ6, (D, H, n, 1), ((part,) + T,),
                        ((f"{part}c{r}",) + kv, (f"{part}s{r}",) + kv)))
        else:
            ops.append((f"CVT16 {part}", V, VecSubop.CVT16, (D, H, n, 1), ((part,) + T,),
                        ((f"{part}c{r}",) + kv,)))
    return ops


def _phase_b(C, H, L_start, L, kv6, b, r, l0, l1):
    n, t = l1 - l0, r * L + l0
    T = (t, t + n)
    Lk, D = L_start + L, HEAD_DIM
    V = Opcode.VEC

    def cache(part):
        return ((f"{part}c{r}", 0, Lk),) + (((f"{part}s{r}", 0, Lk),) if kv6 else ())

    return [("FDOT qk", V, VecSubop.FDOT, (D, Lk, n, H), (("q",) + T,) + cache("k"), (("s",) + T,)),
            ("SOFTMAX", V, VecSubop.SOFTMAX, (Lk, H, n, 1), (("s",) + T,), (("s",) + T,)),
            ("FDOT pv", V, VecSubop.FDOT, (Lk, D, n, H), (("s",) + T,) + cache("v"), (("o",) + T,)),
            ("proj", Opcode.GEMM, None, (n, C, C), (("o",) + T,), (("y",) + T,)),
            ("RESID", V, VecSubop.RESID, (C, n, 1, 1), (("x",) + T, ("y",) + T), (("x",) + T,))]


def _phase_c(C, H, hidden, L, b, r, l0, l1):
    n, t = l1 - l0, r * L + l0
    T = (t, t + n)
    V = Opcode.VEC
    return [("LNMOD", V, VecSubop.LNMOD, (C, n, 1, 1), (("x",) + T,), (("h",) + T,)),
            ("fc1", Opcode.GEMM, None, (n, C, hidden), (("h",) + T,), (("f",) + T,)),
            ("GELU", V, VecSubop.GELU, (hidden, n, 1, 1), (("f",) + T,), (("f",) + T,)),
            ("fc2", Opcode.GEMM, None, (n, hidden, C), (("f",) + T,), (("y",) + T,)),
            ("RESID", V, VecSubop.RESID, (C, n, 1, 1), (("x",) + T, ("y",) + T), (("x",) + T,))]


@functools.lru_cache(maxsize=64)
def step_plan(C: int, H: int, hidden: int, blocks: int, L_start: int, L: int, rows: int,
              tile: int, *, kv6: bool = False, max_tiles: int | None = None) -> tuple[PlanOp, ...]:
    """The ops of one scale step in program order (without the HALT): per block the
    phases A, B, C over :func:`tiles`, each phase's tile chains :func:`skew`-ed.
    ``C`` embed dim, ``H`` heads, ``hidden`` MLP width, ``blocks`` depth; the step's
    new tokens are ``[L_start, L_start + L)`` of each of ``rows`` rows (the keys:
    ``L_start + L``); ``kv6``: KVQ6 instead of CVT16 (and the FDOTs read the scale
    caches too); ``max_tiles``: only the first that many tiles of each phase (the KV
    length stays ``L_start + L``), for timing a sample of a long step (cached)."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    tl = tiles(L, rows, tile)[:max_tiles]
    phases = (("A", lambda b, r, l0, l1: _phase_a(C, H, L_start, L, kv6, b, r, l0, l1)),
              ("B", lambda b, r, l0, l1: _phase_b(C, H, L_start, L, kv6, b, r, l0, l1)),
              ("C", lambda b, r, l0, l1: _phase_c(C, H, hidden, L, b, r, l0, l1)))
    out: list[PlanOp] = []
    for b in range(blocks):
        for phase, ops in phases:
            chains = [[PlanOp(phase, b, r, l0, l1, name, opcode, subop, shape, Spans(rd, wr))
                       for name, opcode, subop, shape, rd, wr in ops(b, r, l0, l1)]
                      for r, l0, l1 in tl]
            assert all(len(ch) == PHASES[phase] for ch in chains)
            out += skew(chains)
    return tuple(out)
