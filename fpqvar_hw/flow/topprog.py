"""The as-built top's step program at the shape level: the instructions the compiler emits
for a scale step, each reduced to what its timing depends on (:class:`TopInstr`), for the
as-built model (:mod:`fpqvar_hw.flow.asbuilt`)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..host.plan import HEAD_DIM, PlanOp, Spans, step_plan
from ..host.plan import TILE_ORDERS as _PLAN_TILE_ORDERS
from ..isa import Opcode

__all__ = ["TopInstr", "V_CACHE_LAYOUTS", "TILE_ORDERS", "top_step_program"]


# ---------------------------------------------------------- the step program, shape level
@dataclass(frozen=True)
class TopInstr:
    """One instruction of a step program, reduced to what its timing depends on.

    ``gemm`` = ``(M, K, N, had, bias)``; ``vec`` = ``(subop, (n0, n1, n2, n3), operands)``
    with ``operands`` = ``((name, s0, s1, element bytes), ...)`` of the read operands and
    ``out`` = ``(s0, s1, element bytes)`` of its results (operand D);
    ``sync`` as :func:`fpqvar_hw.host.compiler.assign_sync` sets it.
    """

    opcode: int
    name: str
    gemm: tuple | None = None
    vec: tuple | None = None
    sync: bool = False
    out: tuple | None = None


#: footprint of a plan op (``fpqvar_hw.host.plan.Spans``: symbolic token-range spans)
_Spans = Spans


#: V cache orders (:data:`fpqvar_hw.host.compiler.V_CACHE_LAYOUT`): ``"transposed"``
#: ``[R, H, 64, L_total]``, the compiler's; ``"rows"`` ``[R, H, L_total, 64]``, the order of
#: programs before 2026-12-05 (cycle files measured on them say so, ``simcycles``).
V_CACHE_LAYOUTS = ("transposed", "rows")
#: The token tile orders (:func:`fpqvar_hw.host.plan.tiles`): ``"span"`` the compiler's
#: (since 2026-12-06), ``"rows"`` one row per tile at most (before), ``"flat"``.
TILE_ORDERS = _PLAN_TILE_ORDERS


def _top_instr(op: PlanOp, C: int, hidden: int, Lk: int, L_total: int,
               v_cache: str) -> TopInstr:
    """The :class:`TopInstr` of one step-plan op: the GEMM shape with the Hadamard in front
    of qkv and fc1 and a bias on every layer; a VEC's read operands ``(name, s0, s1,
    element bytes)`` as the compiler lays them out (FP32 buffers, FP16 caches of
    ``L_total`` tokens, the V cache in ``v_cache`` order)."""
    if op.opcode == Opcode.GEMM:
        M, K, N = op.shape
        return TopInstr(int(Opcode.GEMM), op.name, gemm=(M, K, N, op.name in ("qkv", "fc1"), True))
    F, D = 4, HEAD_DIM
    ops = {
        "LNMOD": (("a", F, C * F, F), ("b", F, 0, F), ("c", F, 0, F)),        # x rows, ada rows
        "L2NT q": (("a", F, D * F, F), ("b", 0, F, F)),                      # q, temperature
        "L2NT k": (("a", F, D * F, F), ("b", 0, 0, F)),                      # k, the zero word
        "CVT16 k": (("a", F, D * F, F),),
        "CVT16 v": (("a", F, D * F, F),),
        "FDOT qk": (("a", F, 0, F), ("b", 2, D * 2, 2)),                     # q, K cache
        "SOFTMAX": (("a", F, Lk * F, F),),
        "FDOT pv": (("a", F, 0, F), ("b", 2, L_total * 2, 2) if v_cache == "transposed"
                    else ("b", D * 2, 2, 2)),                                # p, V cache
        "RESID": (("a", F, C * F, F), ("b", F, 0, F), ("c", F, C * F, F)),   # x, gamma, y
        "GELU": (("a", F, hidden * F, F),),
    }[op.name]
    kv_head = L_total * D * 2                                   # bytes of a head's FP16 cache
    out = {"LNMOD": (F, C * F, F), "L2NT q": (F, D * F, F), "L2NT k": (F, D * F, F),
           "CVT16 k": (2, kv_head, 2),                         # K rows [H, L_total, 64]
           "CVT16 v": (L_total * 2, kv_head, 2) if v_cache == "transposed" else (2, kv_head, 2),
           "FDOT qk": (0, F, F), "SOFTMAX": (F, Lk * F, F), "FDOT pv": (0, F, F),
           "RESID": (F, C * F, F), "GELU": (F, hidden * F, F)}[op.name]
    return TopInstr(int(Opcode.VEC), op.name, vec=(int(op.subop), op.shape, ops), out=out)


@functools.lru_cache(maxsize=64)
def top_step_program(C: int, H: int, hidden: int, blocks: int, L_start: int, L: int, rows: int,
                     tile: int, *, L_total: int, coarse: bool = True,
                     max_tiles: int | None = None,
                     v_cache: str = V_CACHE_LAYOUTS[0],
                     tiles: str = TILE_ORDERS[0]) -> tuple[TopInstr, ...]:
    """The instructions :meth:`fpqvar_hw.host.compiler.Compiler.instructions` emits for a step
    (without the HALT), at the shape level: the ops of the step plan
    (:func:`fpqvar_hw.host.plan.step_plan`, the compiler's own: per block the phases A, B, C
    over token tiles of ``tile`` token rows, skewed by one stage), each as a
    :class:`TopInstr`, sync flags from :func:`fpqvar_hw.host.compiler.assign_sync` on the
    plan's token-range footprints (cached).  ``tests/test_perf_vs_sim.py`` checks it against
    the compiler.  ``max_tiles``: only the first that many tiles of each phase (the KV length
    stays ``L_start + L``), for timing a sample of a long step.  ``L_total``: tokens of the
    KV caches (the model's last KV length); ``v_cache``: the V cache order (a cycle file of
    an older program states ``"rows"``); ``tiles``: the tile order
    (:func:`fpqvar_hw.host.plan.tiles`; a cycle file of an older program states ``"rows"``)."""
    from ..host.compiler import assign_sync

    if v_cache not in V_CACHE_LAYOUTS:
        raise ValueError(f"v_cache must be one of {V_CACHE_LAYOUTS}, got {v_cache!r}")
    if tiles not in TILE_ORDERS:
        raise ValueError(f"tiles must be one of {TILE_ORDERS}, got {tiles!r}")
    if L_total < L_start + L:
        raise ValueError(f"L_total={L_total} is shorter than the step's KV length {L_start + L}")

    plan = step_plan(C, H, hidden, blocks, L_start, L, rows, tile, max_tiles=max_tiles,
                     order=tiles)
    prog = [_top_instr(op, C, hidden, L_start + L, L_total, v_cache) for op in plan]
    return tuple(assign_sync(prog, [op.spans for op in plan], coarse=coarse))
