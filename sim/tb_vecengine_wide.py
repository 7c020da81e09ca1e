"""cocotb module for sim/test_vecengine_wide.py: the vector engine built at the real
widths of the d16 model (``C = 1024`` LayerNorm rows, SOFTMAX rows up to
``max_kv = 680``, ``P = 8``) on DRAM served by sim.dma_model, against the
instruction-level reference, instruction by instruction.

Everything runs on :class:`sim.tb_vecengine.VecEngineTB`: DRAM latency 2-14 cycles,
idle gaps between beats and request backpressure (random, seeded), and after every
instruction the whole DRAM image must equal the image ``fpqvar_hw.host.isa_sim.vec``
computes (golden model) byte for byte, with ``error`` 0, so a wrong or a stray write
anywhere fails.  This module adds what ``sim.tb_vecengine``'s tests cannot express at
these widths (its random rows are N(0, 1)-like with random lengths, and its attention
sequence has fixed addresses that overlap beyond 384 keys):

* ``lnmod_rows``: LNMOD over rows of exactly ``C``: per-row scales log-uniform in
  [2^-20, 2^20], a large common offset (cancellation in ``x - mean``), magnitudes
  spread over 2^+-40 within one row, channel outliers, a constant row (variance 0),
  huge values whose variance overflows FP32, subnormals; adaLN scale/shift
  broadcast over the rows of an image and per row; random operand layouts.
* ``softmax_rows``: SOFTMAX rows of ``max_kv`` (680), ``max_kv - 3`` (not a
  multiple of ``P``), 1 and 9, typical attention-score ranges and ranges where most
  outputs underflow, ``-inf`` and ``-3e38`` entries; random layouts, two in place.
* ``attention_wide``: QK^T (FDOT, FP16 K cache) -> SOFTMAX -> PV (FDOT, FP16 V
  cache) over each ``[H, Nq, Nk, row_order]`` of ``attention`` in turn (one long row
  of keys; queries and keys that leave edge tiles both ways on the engine's attention
  array), caches ``[h, j, d]``, scores ``[t, h, j]``;
  p.V on V transposed ``[h, d, j]`` as the compiler keeps it (rows of ``Nk`` tokens on
  the engine's attention array, as is q.K) and, for the first ``row_order`` of the 64
  output dimensions, again on V in row order (the element path: 0.25-0.5
  elements/cycle; on all 64 dimensions of every shape it was 80 % of the simulated
  cycles); besides the per-instruction check every output must equal
  ``fpqvar_quant.golden.attention.attention`` bit for bit.
* ``length_limits``: LNMOD rows of ``C - 1`` and ``C + 1`` and a SOFTMAX row of
  ``max_kv + 1`` are refused (error 5, DRAM unchanged, no access), and an LNMOD row
  of ``C`` right after them is correct.

Parameters (``tb_params``): ``seed``, ``C``, ``max_kv``, ``P`` (the build), ``attention``
(a list of [H, Nq, Nk, row_order] for ``attention_wide``).
"""
from __future__ import annotations

import numpy as np

import cocotb
from fpqvar_hw import isa
from fpqvar_hw.isa import ErrorCode, Operand, Vec, VecSubop
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as gv
from fpqvar_quant.golden.attention import attention
from sim.tb_vecengine import (BASE, MEM_BYTES, Allocator, VecEngineTB, setup_tb,
                              element_addresses, rand_operand, store)

__all__ = ["lnmod_rows", "softmax_rows", "attention_wide", "length_limits"]


def put(tb: VecEngineTB, op: Operand, n: tuple[int, ...], x: np.ndarray) -> None:
    """Store FP32 ``x`` ([n3, n2, n1, n0]; size 1 along an operand's broadcast dims) at
    the element addresses of ``op``."""
    x = np.broadcast_to(np.asarray(x, np.float32), n[::-1])
    store(tb.view, element_addresses(op, n), x.view(np.uint32), 4)


# ------------------------------------------------------------------ LayerNorm rows
def ln_row(kind: str, rng: np.random.Generator, C: int) -> np.ndarray:
    """One FP32 LayerNorm input row of ``C`` elements of the named kind."""
    s = np.float32(2.0 ** rng.uniform(-20, 20))
    if kind == "scaled":            # the benchmark's rows: N(0, 1) times 2^U(-20, 20)
        x = rng.standard_normal(C) * s
    elif kind == "offset":          # a common offset of ~1000 row ranges
        x = (rng.standard_normal(C) + rng.choice([-1, 1]) * 1000.0) * s
    elif kind == "range":           # magnitudes 2^-40 .. 2^40 within the row
        x = rng.choice([-1.0, 1.0], C) * 2.0 ** rng.uniform(-40, 40, C)
    elif kind == "outliers":        # activation-like: a few channels 10^4..10^6 larger
        x = rng.standard_normal(C)
        k = rng.choice(C, 6, replace=False)
        x[k] = rng.choice([-1.0, 1.0], 6) * 10.0 ** rng.uniform(4, 6, 6)
    elif kind == "constant":        # variance 0: y = 0 * rsqrt(eps), then the shift
        x = np.full(C, rng.standard_normal() * s)
    elif kind == "overflow":        # sum of squares overflows FP32: var = inf
        x = rng.choice([-1.0, 1.0], C) * 2.0 ** rng.uniform(60, 100, C)
    elif kind == "subnormal":       # subnormal and normal-but-tiny elements mixed
        x = rng.standard_normal(C) * 2.0 ** rng.uniform(-149, -120, C)
    else:
        raise ValueError(f"unknown LayerNorm row kind {kind!r}")
    return x.astype(np.float32)


@cocotb.test()
async def lnmod_rows(dut):
    """LNMOD over rows of exactly C with large dynamic range values (see module doc)."""
    p, tb, rng = setup_tb(dut, "lnmod")
    C = p["C"]
    nrng = np.random.default_rng(p["seed"] + 10)
    await tb.start()
    alloc = Allocator(rng, MEM_BYTES)
    cases = [  # (counts n1, n2, n3; row kinds in i3, i2, i1 order; scale/shift per image)
        ((2, 2, 1), ["scaled", "offset", "range", "outliers"], True),
        ((2, 1, 2), ["constant", "overflow", "subnormal", "scaled"], False),
    ]
    for k, (counts, kinds, per_image) in enumerate(cases):
        n = (C,) + counts
        alloc.reset()
        a = rand_operand(rng, alloc, n, 4)
        bz = (1,) if per_image else ()
        b = rand_operand(rng, alloc, n, 4, zero=bz)
        c = rand_operand(rng, alloc, n, 4, zero=bz)
        d = rand_operand(rng, alloc, n, 4)
        put(tb, a, n, np.stack([ln_row(kd, nrng, C) for kd in kinds]).reshape(n[::-1]))
        sn = (n[3], n[2], 1 if per_image else n[1], C)
        put(tb, b, n, (nrng.standard_normal(sn) * 0.5).astype(np.float32))
        put(tb, c, n, nrng.standard_normal(sn).astype(np.float32))
        await tb.run(Vec(subop=VecSubop.LNMOD, n=n, a=a, b=b, c=c, d=d),
                     what=f"LNMOD #{k} rows {'/'.join(kinds)}")
    tb.finish()


# ------------------------------------------------------------------ softmax rows
def sm_row(kind: str, rng: np.random.Generator, L: int) -> np.ndarray:
    """One FP32 softmax input row of ``L`` elements of the named kind."""
    if kind == "scores":            # attention scores: |q| = |k| = 1 times ~e^2.5
        x = rng.standard_normal(L) * 4.0
    elif kind == "peaked":          # most outputs underflow to 0
        x = rng.standard_normal(L) * 2.0 ** rng.uniform(6, 10)
    elif kind == "small":           # nearly uniform
        x = rng.standard_normal(L) * 2.0 ** -12
    elif kind == "masked":          # -inf and -3e38 entries among scores
        x = rng.standard_normal(L) * 4.0
        if L > 1:
            k = rng.choice(L, max(1, L // 8), replace=False)
            x[k] = rng.choice([-np.inf, np.float32(-3e38)], len(k))
    else:
        raise ValueError(f"unknown softmax row kind {kind!r}")
    return x.astype(np.float32)


@cocotb.test()
async def softmax_rows(dut):
    """SOFTMAX rows of max_kv, max_kv - 3 (not a multiple of P), 1 and 9 (see module doc)."""
    p, tb, rng = setup_tb(dut, "softmax")
    L = p["max_kv"]
    nrng = np.random.default_rng(p["seed"] + 20)
    await tb.start()
    alloc = Allocator(rng, MEM_BYTES)
    assert (L - 3) % p["P"], f"max_kv - 3 = {L - 3} must not be a multiple of P = {p['P']}"
    cases = [  # (n0, (n1, n2, n3), row kinds, in place)
        (L, (3, 1, 1), ["scores", "peaked", "masked"], True),
        (L - 3, (2, 1, 1), ["small", "scores"], False),
        (1, (5, 1, 1), ["scores", "peaked", "small", "scores", "masked"], False),
        (9, (2, 2, 1), ["masked", "peaked", "scores", "small"], True),
    ]
    for k, (n0, counts, kinds, in_place) in enumerate(cases):
        n = (n0,) + counts
        alloc.reset()
        a = rand_operand(rng, alloc, n, 4)
        d = a if in_place else rand_operand(rng, alloc, n, 4)
        put(tb, a, n, np.stack([sm_row(kd, nrng, n0) for kd in kinds]).reshape(n[::-1]))
        await tb.run(Vec(subop=VecSubop.SOFTMAX, n=n, a=a, d=d),
                     what=f"SOFTMAX #{k} rows of {n0} ({'/'.join(kinds)}{', in place' if in_place else ''})")
    tb.finish()


# ------------------------------------------------------------------ attention
@cocotb.test()
async def attention_wide(dut):
    """QK^T -> SOFTMAX -> PV in the compiler's layouts for each ``[H, Nq, Nk]`` of
    ``attention``: the output equals golden ``attention`` bit for bit."""
    p, tb, rng = setup_tb(dut, "attention_wide")
    shapes = p["attention"]
    for H, Nq, Nk, row_order in shapes:
        if not 0 <= row_order <= isa.L2NT_LEN:
            raise ValueError(f"attention {[H, Nq, Nk, row_order]}: row_order must be 0.."
                             f"{isa.L2NT_LEN} (output dimensions of the row-order p.V)")
        if Nk > p["max_kv"]:
            raise ValueError(f"attention over {Nk} keys needs max_kv >= {Nk} (build has {p['max_kv']})")
    nrng = np.random.default_rng(p["seed"] + 30)
    await tb.start()
    for H, Nq, Nk, row_order in shapes:
        await _attention(tb, nrng, p, H, Nq, Nk, row_order)
    tb.finish()


async def _attention(tb: VecEngineTB, nrng: np.random.Generator, p: dict, H: int, Nq: int,
                     Nk: int, row_order: int) -> None:
    D = isa.L2NT_LEN
    # q: l2-normalised rows times exp(t) (t per head in [2, ln 100]); caches: K
    # l2-normalised, V N(0, 1); both FP16 as the model's KV cache holds them
    t = nrng.uniform(2.0, np.log(100.0), (H, 1, 1)).astype(np.float32)
    q = gv.l2norm_temperature(nrng.standard_normal((H, Nq, D)).astype(np.float32), t)
    k16 = g.convert(gv.l2norm_temperature(nrng.standard_normal((H, Nk, D)).astype(np.float32))
                    .view(np.uint32), "fp32", "fp16")
    v16 = g.convert(nrng.standard_normal((H, Nk, D)).astype(np.float32).view(np.uint32), "fp32", "fp16")
    # DRAM: q [t, h, d] FP32, K/V [h, j, d] FP16, scores [t, h, j] FP32, out [t, h*64 + d]
    sizes = dict(q=Nq * H * D * 4, k=H * Nk * D * 2, v=H * Nk * D * 2, vt=H * Nk * D * 2,
                 s=Nq * H * Nk * 4, o=Nq * H * D * 4, o2=Nq * H * D * 4)
    at, nxt = {}, BASE + 0x40
    for name, size in sizes.items():
        at[name] = nxt
        nxt = (nxt + size + 0x40 + 15) // 16 * 16
    if nxt > BASE + MEM_BYTES:
        raise ValueError(f"attention {[H, Nq, Nk]} needs {nxt - BASE} bytes of DRAM; the model has {MEM_BYTES}")
    for name, arr in (("q", q.transpose(1, 0, 2)), ("k", k16), ("v", v16),
                      ("vt", v16.transpose(0, 2, 1))):
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        tb.view[at[name] - BASE:at[name] - BASE + raw.size] = raw
    s_tok, row = H * Nk * 4, H * D * 4
    qk = Vec(subop=VecSubop.FDOT, n=(D, Nk, Nq, H), flags=int(isa.VecFlag.B_FP16),
             a=Operand(at["q"], 4, 0, row, D * 4),
             b=Operand(at["k"], 2, D * 2, 0, Nk * D * 2),
             d=Operand(at["s"], 0, 4, s_tok, Nk * 4))
    sm = Vec(subop=VecSubop.SOFTMAX, n=(Nk, H, Nq, 1),
             a=Operand(at["s"], 4, Nk * 4, s_tok), d=Operand(at["s"], 4, Nk * 4, s_tok))
    # p.V on the V cache transposed as the compiler keeps it ([h, d, j]): rows of Nk
    # tokens on the attention array
    pv_t = Vec(subop=VecSubop.FDOT, n=(Nk, D, Nq, H), flags=int(isa.VecFlag.B_FP16),
               a=Operand(at["s"], 4, 0, s_tok, Nk * 4),
               b=Operand(at["vt"], 2, Nk * 2, 0, Nk * D * 2),
               d=Operand(at["o2"], 0, 4, row, D * 4))
    steps = [("QK^T", qk), ("softmax (in place)", sm), ("PV, V transposed", pv_t)]
    outs = {"o2": D}
    if row_order:       # p.V on V in row order, output dimensions 0..row_order-1: element path
        pv = Vec(subop=VecSubop.FDOT, n=(Nk, row_order, Nq, H), flags=int(isa.VecFlag.B_FP16),
                 a=Operand(at["s"], 4, 0, s_tok, Nk * 4),
                 b=Operand(at["v"], D * 2, 2, 0, Nk * D * 2),
                 d=Operand(at["o"], 0, 4, row, D * 4))
        steps.append((f"PV, V in row order (dimensions 0..{row_order - 1})", pv))
        outs["o"] = row_order
    for name, v in steps:
        await tb.run(v, what=f"attention {name}, {H} heads x {Nq} queries x {Nk} keys")
    dec = lambda c: g.to_float(g.convert(c, "fp16", "fp32"), "fp32")  # noqa: E731
    want = g.canon(attention(q, dec(k16), dec(v16), p["P"]))          # [H, Nq, 64]
    for o, dims in outs.items():
        got = np.frombuffer(tb.view[at[o] - BASE:at[o] - BASE + sizes[o]].tobytes(), np.uint32)
        got = got.reshape(Nq, H, D).transpose(1, 0, 2)[:, :, :dims]
        bad = np.argwhere(got != want[:, :, :dims])
        assert not len(bad), f"attention {H}x{Nq}x{Nk} output ({o}) differs at {len(bad)} " \
            f"places [h, t, d], first {bad[:4].tolist()}"


# ------------------------------------------------------------------ row-length limits
@cocotb.test()
async def length_limits(dut):
    """Rows the build cannot take are refused before any access (error 5)."""
    p, tb, rng = setup_tb(dut, "limits")
    C, L = p["C"], p["max_kv"]
    nrng = np.random.default_rng(p["seed"] + 40)
    await tb.start()
    alloc = Allocator(rng, MEM_BYTES)
    n = (C + 1, 1, 1, 1)                      # operands big enough for the longest row
    ops = [rand_operand(rng, alloc, n, 4) for _ in range(4)]
    for op in ops:
        put(tb, op, n, nrng.standard_normal(n[::-1]).astype(np.float32))
    a, b, c, d = ops
    for what, v in ((f"LNMOD n0 = C - 1 = {C - 1}", Vec(subop=VecSubop.LNMOD, n=(C - 1, 1, 1, 1),
                                                         a=a, b=b, c=c, d=d)),
                    (f"LNMOD n0 = C + 1 = {C + 1}", Vec(subop=VecSubop.LNMOD, n=(C + 1, 1, 1, 1),
                                                         a=a, b=b, c=c, d=d)),
                    (f"SOFTMAX n0 = max_kv + 1 = {L + 1}", Vec(subop=VecSubop.SOFTMAX,
                                                               n=(L + 1, 1, 1, 1), a=a, d=d))):
        before = tb.view.copy()
        reads = tb.dma.stats.read_bursts
        await tb.expect_error(v, ErrorCode.FIELD, what=what)
        assert np.array_equal(before, tb.view), f"{what}: DRAM changed"
        assert tb.dma.stats.read_bursts == reads, f"{what}: the engine read DRAM"
    await tb.run(Vec(subop=VecSubop.LNMOD, n=(C, 1, 1, 1), a=a, b=b, c=c, d=d),
                 what=f"LNMOD n0 = C = {C} after the refusals")
    tb.finish()
