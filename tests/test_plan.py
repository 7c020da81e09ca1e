"""fpqvar_hw.host.plan: the one step plan the compiler and the as-built throughput model
share (docs/architecture.md, "Where the truth lives").

* the plan's order: phases A, B, C per block, each phase's tile chains skewed by one stage;
* the compiler's instructions are the plan's ops (opcode, sub-op, shape), FP16 and KV6
  caches, several row counts and tile sizes;
* asbuilt.top_step_program is the same plan (names, opcodes, sub-ops, shapes), so the
  two can never use different plans.
"""
from __future__ import annotations

import pytest

from fpqvar_hw.config import get_preset
from fpqvar_hw.flow import asbuilt
from fpqvar_hw.host.plan import PHASES, SPLIT_TOKENS, Spans, segments, skew, step_plan, tiles
from fpqvar_hw.isa import Gemm, Halt, Opcode, Vec, VecSubop

from .test_golden_block import digits_fpqvar  # noqa: F401  (session fixture: the package)

CFG = get_preset("w4a4")


def _kinds(ops) -> list[tuple]:
    return [(int(o.opcode), None if o.subop is None else int(o.subop), tuple(o.shape)) for o in ops]


def _instr_kinds(instrs) -> list[tuple]:
    out = []
    for i in instrs:
        if isinstance(i, Halt):
            continue
        if isinstance(i, Gemm):
            out.append((int(Opcode.GEMM), None, (i.m, i.k, i.n)))
        else:
            assert isinstance(i, Vec)
            out.append((int(Opcode.VEC), int(i.subop), tuple(i.n)))
    return out


def test_tiles_segments_and_skew():
    # rows longer than a tile: tiles inside each row
    assert tiles(5, 2, 2) == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 9), (9, 10)]
    assert tiles(3, 1, 2) == [(0, 2), (2, 3)]
    # short rows: whole rows per tile, up to the tile's tokens ...
    assert tiles(4, 2, 8) == [(0, 8)]
    assert tiles(4, 3, 8) == [(0, 8), (8, 12)]
    # ... and two tiles at least once the step has more than SPLIT_TOKENS token rows
    assert SPLIT_TOKENS == 32
    assert tiles(4, 8, 16) == [(0, 16), (16, 32)]
    assert tiles(9, 8, 128) == [(0, 36), (36, 72)]
    assert tiles(25, 2, 128) == [(0, 25), (25, 50)]
    assert tiles(4, 2, 8, order="rows") == [(0, 4), (4, 8)]
    assert tiles(5, 2, 4, order="flat") == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="tile order must be one of"):
        tiles(5, 2, 4, order="zigzag")
    assert segments(4, 6, 5) == [(0, 4, 5), (1, 5, 6)]
    assert segments(0, 12, 4) == [(0, 0, 4), (1, 4, 8), (2, 8, 12)]
    assert segments(6, 8, 5) == [(1, 6, 8)]
    assert skew([["a0", "a1", "a2"], ["b0", "b1", "b2"]]) == ["a0", "a1", "b0", "a2", "b1", "b2"]


#: ops of a phase's chain: per piece of the tile in one row (p) or once per tile (t)
_CHAIN = {"A": ["p LNMOD", "t qkv", "t L2NT q", "t L2NT k", "pp CVT16 k|CVT16 v"],
          "B": ["ppp FDOT qk|SOFTMAX|FDOT pv", "t proj", "p RESID"],
          "C": ["p LNMOD", "t fc1", "t GELU", "t fc2", "p RESID"]}


def _chain(phase: str, pieces: int) -> list[str]:
    out = []
    for item in _CHAIN[phase]:
        kind, names = item.split(" ", 1)
        out += names.split("|") * (pieces if kind[0] == "p" else 1)
    return out


def test_plan_order_shapes_and_spans():
    C, H, F, blocks, L_start, L, rows, tile = 128, 2, 512, 2, 1, 4, 3, 8
    plan = step_plan(C, H, F, blocks, L_start, L, rows, tile)
    tl = tiles(L, rows, tile)
    assert tl == [(0, 8), (8, 12)]                 # rows 0-1, then row 2
    pieces = [len(segments(a, z, L)) for a, z in tl]
    assert pieces == [2, 1]
    assert len(plan) == blocks * sum(len(_chain(p, n)) for p in PHASES for n in pieces)
    # phases A, B, C per block, in that order, each one contiguous
    runs = [(o.block, o.phase) for o in plan]
    want = [(b, p) for b in range(blocks) for p in PHASES for n in pieces for _ in _chain(p, n)]
    assert runs == want
    a = [o for o in plan if o.block == 0 and o.phase == "A"]
    # skew: tile 1 starts at wave 1, beside tile 0's second LNMOD
    assert [o.name for o in a[:4]] == ["LNMOD", "LNMOD", "LNMOD", "qkv"]
    assert [o.name for o in a if o.t0 == 0] == _chain("A", 1)
    assert [o.name for o in a if o.t0 == 8] == _chain("A", 1)
    # whole-tile ops have no row; the per-row ops are the rows of the tile
    assert [(o.row, o.t0, o.t1, o.shape[0]) for o in a if o.name == "qkv"] == \
        [(None, 0, 8, 8), (None, 8, 12, 4)]
    assert [(o.row, o.t0, o.t1) for o in a if o.name == "LNMOD"] == [(0, 0, 4), (1, 4, 8), (2, 8, 12)]
    cvt = next(o for o in a if o.name == "CVT16 v" and o.row == 1)
    assert cvt.writes == (("vc1", L_start, L_start + 4),) and cvt.reads == (("v", 4, 8),)
    cvt = next(o for o in a if o.name == "CVT16 k" and o.row == 2)
    assert cvt.writes == (("kc2", L_start, L_start + 4),) and cvt.reads == (("k", 8, 12),)
    fdots = [o for o in plan if o.name == "FDOT qk" and o.block == 0]
    assert sorted((o.row, o.shape) for o in fdots) == [(r, (64, L_start + L, 4, H)) for r in range(3)]
    piece = next(o for o in fdots if o.row == 1)
    assert piece.reads == (("q", 4, 8), ("kc1", 0, L_start + L)) and piece.subop == VecSubop.FDOT
    assert Spans((("x", 0, 2),), ()).conflicts(Spans((), (("x", 1, 3),)))
    assert not Spans((("x", 0, 2),), ()).conflicts(Spans((), (("x", 2, 3),)))
    kv6 = step_plan(C, H, F, blocks, L_start, L, rows, tile, kv6=True)
    assert [o.name for o in kv6 if o.block == 0 and o.phase == "A" and o.t0 == 0][4:6] == ["KVQ6 k", "KVQ6 v"]
    assert len(step_plan(C, H, F, blocks, L_start, L, rows, tile, max_tiles=1)) == \
        blocks * sum(len(_chain(p, 2)) for p in PHASES)
    # one row per tile at most (older programs): the same chains, one piece per tile
    old = step_plan(C, H, F, blocks, L_start, L, rows, tile, order="rows")
    assert len(old) == blocks * 16 * len(tiles(L, rows, tile, order="rows")) == blocks * 16 * 3


def test_one_tile_covers_both_cfg_halves_and_the_batch():
    """A short step reads each weight matrix once per block for all its rows (four
    GEMMs), not once per row; from SPLIT_TOKENS token rows on, twice (two tiles)."""
    for rows, L, passes in ((2, 1, 1), (2, 16, 1), (8, 4, 1), (8, 9, 2), (2, 25, 2), (8, 25, 2),
                            (2, 169, 4)):
        plan = step_plan(1024, 16, 4096, 1, 0, L, rows, 128)
        assert sum(o.opcode == Opcode.GEMM for o in plan) == 4 * passes
        old = step_plan(1024, 16, 4096, 1, 0, L, rows, 128, order="rows")
        assert sum(o.opcode == Opcode.GEMM for o in old) == 4 * rows * -(-L // 128)


def test_as_built_model_uses_the_plan():
    for args in ((128, 2, 512, 2, 1, 4, 2, 2), (256, 4, 1024, 1, 5, 9, 3, 4)):
        plan = step_plan(*args)
        prog = asbuilt.top_step_program(*args, L_total=args[4] + args[5])
        assert [i.name for i in prog] == [o.name for o in plan]
        assert [(i.opcode, None if i.gemm else i.vec[0], i.gemm[:3] if i.gemm else i.vec[1])
                for i in prog] == _kinds(plan)


@pytest.fixture(scope="module")
def pkg(digits_fpqvar):  # noqa: F811
    from fpqvar_quant.ptq.package import load_package
    return load_package(digits_fpqvar[1])


@pytest.mark.parametrize("rows, tile, kv6", [(1, None, False), (2, 3, False), (3, 8, False),
                                              (2, 4, True)])
def test_compiler_and_as_built_model_use_one_plan(pkg, rows, tile, kv6):
    """For every step: the compiler's instructions are the plan's ops, and (FP16 cache)
    the as-built model's instructions are the same ops with the same sync flags."""
    import copy

    from fpqvar_hw.host.compiler import Compiler

    p, cfg = pkg, CFG
    if kv6:
        from fpqvar_quant.ptq.config import get_preset as ptq_preset
        q = ptq_preset("fp4-fpqvar-kv6")
        p = copy.copy(pkg)
        p.manifest = {**pkg.manifest, "kv_cache": {"fmt": q.kv_fmt, "group_size": q.kv_group_size,
                                                   "scale_format": q.kv_scale_format}}
        cfg = CFG.replace(kv_format="e2m3fn")
    comp = Compiler(p, cfg, rows=rows, tile_tokens=tile)
    for step in range(comp.steps):
        L_start, L = comp.step_tokens(step)
        plan = step_plan(comp.C, comp.H, comp.hidden, comp.depth, L_start, L, rows,
                         comp.tile_tokens, kv6=kv6)
        assert comp.plan(step) == plan
        ins = comp.instructions(step)
        assert isinstance(ins[-1], Halt) and _instr_kinds(ins) == _kinds(plan)
        if not kv6:
            prog = asbuilt.top_step_program(comp.C, comp.H, comp.hidden, comp.depth, L_start, L,
                                            rows, comp.tile_tokens, L_total=comp.L_total,
                                            coarse=cfg.coarse_pipeline)
            assert [i.name for i in prog] == [o.name for o in plan]
            assert [i.sync for i in prog] == [i.sync for i in ins[:-1]]
