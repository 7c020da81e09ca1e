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
from fpqvar_hw.host.plan import PER_TILE, PHASES, Spans, skew, step_plan, tiles
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


def test_tiles_and_skew():
    assert tiles(5, 2, 2) == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 0, 2), (1, 2, 4), (1, 4, 5)]
    assert skew([["a0", "a1", "a2"], ["b0", "b1", "b2"]]) == ["a0", "a1", "b0", "a2", "b1", "b2"]


def test_plan_order_shapes_and_spans():
    C, H, F, blocks, L_start, L, rows, tile = 128, 2, 512, 2, 1, 4, 2, 3
    plan = step_plan(C, H, F, blocks, L_start, L, rows, tile)
    nt = len(tiles(L, rows, tile))
    assert len(plan) == blocks * PER_TILE * nt and PER_TILE == 16
    # phases A, B, C per block, in that order, each one contiguous
    runs = [(o.block, o.phase) for o in plan]
    want = [(b, p) for b in range(blocks) for p, n in PHASES.items() for _ in range(n * nt)]
    assert runs == want
    a = [o for o in plan if o.block == 0 and o.phase == "A"]
    assert [o.name for o in a[:3]] == ["LNMOD", "qkv", "LNMOD"]     # skew: tile 1 starts at wave 1
    assert [o.name for o in a if (o.row, o.l0) == (0, 0)] == \
        ["LNMOD", "qkv", "L2NT q", "L2NT k", "CVT16 k", "CVT16 v"]
    cvt = next(o for o in a if o.name == "CVT16 v" and o.row == 1 and o.l0 == 3)
    assert cvt.writes == (("vc1", L_start + 3, L_start + 4),) and cvt.reads == (("v", 7, 8),)
    fdot = next(o for o in plan if o.name == "FDOT qk")
    assert fdot.shape == (64, L_start + L, 3, H) and fdot.subop == VecSubop.FDOT
    assert Spans((("x", 0, 2),), ()).conflicts(Spans((), (("x", 1, 3),)))
    assert not Spans((("x", 0, 2),), ()).conflicts(Spans((), (("x", 2, 3),)))
    kv6 = step_plan(C, H, F, blocks, L_start, L, rows, tile, kv6=True)
    assert [o.name for o in kv6[:PER_TILE * nt] if (o.row, o.l0) == (0, 0)][4:6] == ["KVQ6 k", "KVQ6 v"]
    assert len(step_plan(C, H, F, blocks, L_start, L, rows, tile, max_tiles=1)) == blocks * PER_TILE


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
