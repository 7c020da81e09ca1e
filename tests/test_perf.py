"""Throughput model: FLOP/byte accounting against var-model.md, pipeline levels, bounds."""
import math

import pytest

from fpqvar_hw.config import get_preset
from fpqvar_hw.flow.perf import (MODELS, UnitTiming, evaluate, gemm_shapes, passes, pipeline_ablation,
                                 throughput_report, unit_timings, weight_bytes)
from fpqvar_hw.flow.reports import throughput_markdown
from fpqvar_hw.flow.throughput import binding_units, top_breakdown
from fpqvar_hw.flow.platform import VCK190

W4 = get_preset("w4a4")


def _gemm_flop(model, cfg=True):
    m = MODELS[model]
    rows = (2 if cfg else 1) * sum(m.tokens)
    return sum(2 * rows * K * N for K, N in gemm_shapes(m.C).values()) * m.depth


@pytest.mark.parametrize("model, gflop", [("d16", 548), ("d20", 1070), ("d24", 1848),
                                          ("d30", 3610)])
def test_block_gemm_flop_matches_var_model_table(model, gflop):
    assert _gemm_flop(model) / 1e9 == pytest.approx(gflop, rel=0.01)


@pytest.mark.parametrize("model, gemm, attn", [("d16", 548, 38), ("d30", 3610, 132)])
def test_model_flop_is_gemm_plus_attention(model, gemm, attn):
    r = evaluate(model, W4, VCK190)
    assert r.flop / 1e9 == pytest.approx(gemm + attn, rel=0.02)


def test_d30_weight_traffic_per_step_about_0p7_gb():
    # accelerator.md: d30 reads about 0.7 GB of 4-bit weights incl. scales per step
    assert weight_bytes(W4, 1920) * 30 / 1e9 == pytest.approx(0.7, rel=0.05)


def test_kv_lengths_and_rows():
    m = MODELS["d16"]
    assert m.kv_lengths == (1, 5, 14, 30, 55, 91, 155, 255, 424, 680)
    assert MODELS["d36"].kv_lengths[-1] == 2240
    r = evaluate("d16", W4.replace(batch=3), VCK190)
    assert [s.rows for s in r.steps] == [3 * 2 * n for n in m.tokens]
    r1 = evaluate("d16", W4.replace(cfg=False), VCK190)
    assert [s.rows for s in r1.steps] == list(m.tokens)


def test_unit_timing_cycles():
    t = UnitTiming("x", latency=5, cycles_per_item=4, item="g", source="assumed: test")
    assert t.cycles(0) == 0
    assert t.cycles(10) == 5 + 40
    assert t.cycles(10, pipelined=False) == 10 * 9
    assert t.assumed
    with pytest.raises(ValueError, match="cycles_per_item >= 1"):
        UnitTiming("x", 1, 0, "g", "s")


def test_timings_from_manifest_and_assumed():
    t = unit_timings(W4, {"dot": {"latency": 11, "ii": 1}})
    assert t["dot"].latency == 11 and t["dot"].cycles_per_item == W4.group_size // W4.lanes
    assert not t["dot"].assumed and t["quantizer"].assumed
    with pytest.raises(ValueError, match="ii must be"):
        unit_timings(W4, {"dot": {"latency": 11, "ii": 0}})


@pytest.mark.parametrize("model", ["d16", "d30"])
def test_each_pipeline_level_helps(model):
    a = pipeline_ablation(model, W4, VCK190)
    assert a["both"] > a["no_coarse"] > a["neither"]
    assert a["both"] > a["no_fine"] >= a["neither"]


def test_early_steps_memory_bound_last_step_compute_bound_at_batch1():
    r = evaluate("d30", W4, VCK190)
    assert r.steps[0].bound == "memory"
    assert r.steps[-1].bound == "compute"


def test_batching_amortises_weight_traffic():
    rates = [evaluate("d30", W4.replace(batch=b), VCK190).images_per_s for b in (1, 2, 4)]
    assert rates[0] < rates[1] < rates[2]
    per_image = [evaluate("d30", W4.replace(batch=b), VCK190).dram_bytes / b for b in (1, 4)]
    assert per_image[1] < per_image[0]


def test_memory_bound_step_costs_dram_time():
    # Step 0 at batch 1: one row per CFG half; its cost is the weight stream at the
    # sustained bandwidth (plus fill), so it must be at least bytes / (bw * eff).
    r = evaluate("d30", W4, VCK190)
    s0 = r.steps[0]
    floor_cycles = s0.dram_bytes / (VCK190.dram_bytes_per_cycle * W4.dram_efficiency)
    assert s0.cycles >= floor_cycles
    assert s0.cycles < 1.2 * floor_cycles


def test_faster_clock_or_bandwidth_never_slower():
    base = evaluate("d16", W4, VCK190).images_per_s
    assert evaluate("d16", W4.replace(clock_mhz=400.0), VCK190).images_per_s > base
    assert evaluate("d16", W4.replace(dram_efficiency=1.0), VCK190).images_per_s >= base


def test_int4_fc2_runs_two_passes_fp_dfq_one():
    i4 = get_preset("int4")
    assert [passes(i4, l) for l in ("qkv", "proj", "fc1", "fc2")] == [1, 1, 1, 2]
    assert [passes(W4, l) for l in ("qkv", "proj", "fc1", "fc2")] == [1, 1, 1, 1]
    big = W4.replace(tm=64, tn=64)   # compute-bound regime
    fp = evaluate("d16", big, VCK190)
    it = evaluate("d16", i4.replace(tm=64, tn=64), VCK190)
    assert fp.steps[-1].unit_cycles["matrix"] < it.steps[-1].unit_cycles["matrix"]
    assert it.steps[-1].unit_cycles["matrix"] / fp.steps[-1].unit_cycles["matrix"] == \
        pytest.approx(16 / 12, rel=0.01)   # FC2 is 4 of 12 C^2 per token, done twice


def test_end_to_end_includes_host_decoder():
    r = evaluate("d16", W4, VCK190)
    assert r.decoder_s == pytest.approx(394 / VCK190.host_gflops)
    assert r.end_to_end_images_per_s < r.images_per_s
    assert evaluate("d36", W4, VCK190).decoder_s == pytest.approx(4 * r.decoder_s)


def test_unknown_model_and_bad_group():
    with pytest.raises(ValueError, match="unknown model"):
        evaluate("d99", W4, VCK190)


def test_report_and_markdown():
    rep = throughput_report(W4, VCK190, unit_timings(W4))
    assert set(rep["models"]) == set(MODELS)
    md = throughput_markdown(rep)
    assert "| d30 |" in md and "assumed" in md and "1.1 image/s" in md
    assert math.isclose(rep["peak_matrix_tflops"],
                        2 * W4.tm * W4.tn * W4.lanes * VCK190.clock_mhz * 1e6 / 1e12)


# ------------------------------------------------------------------ the as-built top model
# Hand-checked cases of asbuilt.gemm_cost / vec_cost / schedule_top (docs/build.md, "As-built").
from fpqvar_hw.flow import asbuilt  # noqa: E402
from fpqvar_hw.isa import VecSubop  # noqa: E402
from fpqvar_hw.engines.vecengine import VectorEngine  # noqa: E402
from fpqvar_hw.engines.axi import ReadArbiter, WriteArbiter  # noqa: E402
from fpqvar_hw.units.vector import LayerNormModulate  # noqa: E402

DIG = W4.replace(tm=2, tn=2, row_sets=2, lanes=32, quant_lanes=8)   # the co-simulated top


def _b(cfg=DIG, C=128):
    return asbuilt.top_build(cfg, C)


def test_top_build_reads_latencies_from_the_units():
    from fpqvar_hw.units.hadamard import LATENCY_AFTER_LAST as HAD
    from fpqvar_hw.units.quantizer import LATENCY_AFTER_LAST as QUANT
    from fpqvar_hw.units.vector import Elementwise, FDot, Func, Residual
    b = _b()
    assert (b.lat["had"], b.lat["quant"]) == (HAD, QUANT)
    assert b.lat["gelu"] == b.lat["gap_GELU"] == Elementwise.latency_for(func=Func.GELU)
    assert b.lat["resid"] == Residual.latency_for() and b.lat["fdot"] == FDot.latency_for()
    # a 128-bit word holds one 32-lane beat of 4-bit codes and tn=2 FP16 scales
    assert (b.code_words, b.scale_words, b.max_burst) == (1, 1, 16)
    # stage counts of vector.py's row units: tree over P=8 = 3 pipelined adds (AddPipe: 7),
    # the mean's multiply (MulPipe: 8), the reciprocal as the element-wise lane computes it
    from fpqvar_hw.units.fpu import FPOp
    assert FPOp.ADD.latency == 7 and FPOp.MUL.latency == 8
    assert b.lat["tree"] == 3 * 7 and b.lat["ln_mean"] == 21 + 8
    # the reciprocal as the element-wise lane computes it, without that lane's output
    # (canonical-NaN) register
    assert b.lat["sm_recip"] == 21 + Elementwise.latency_for(func=Func.RECIPROCAL) - 1
    assert b.lat["drain"] == 2 + 7 + 1     # issue and operand registers, adder, write-back
    with pytest.raises(ValueError, match="multiple of 8"):
        asbuilt.top_build(DIG, 100)


def test_gemm_cost_matches_the_matrix_engine_measurement():
    # matrix.py docstring (sim/test_matrix.py test_matrix_engine_cycles): tm=tn=2, 2 row
    # sets, lanes=16, per-port DMA memory with fixed latency 8, M=16 K=128 N=384 HAD+BIAS:
    # 13,344 cycles with the fine pipeline, 370,264 without (the cell waits its latency per
    # beat).
    cfg = W4.replace(tm=2, tn=2, lanes=16, quant_lanes=8, row_sets=2)
    mem = asbuilt.TopMemory("dma_model", 8, 8, 1.0, "sim/dma_model.py", shared=False)
    b = asbuilt.top_build(cfg, 128)
    on = asbuilt.gemm_cost(16, 128, 384, had=True, bias=True, fine=True, b=b, mem=mem)
    off = asbuilt.gemm_cost(16, 128, 384, had=True, bias=True, fine=False, b=b, mem=mem)
    assert on.cycles == pytest.approx(13_344, rel=0.02)
    assert off.cycles == pytest.approx(370_264, rel=0.02)


def test_gemm_cost_counts_every_bus_word():
    # digits qkv, one token: 192 feature blocks x (4 beats x 2 weight words + 1 scale word +
    # 1 bias word) + 128/4 activation words + the Hadamard sign word
    mem = asbuilt.sim_memory()
    c = asbuilt.gemm_cost(1, 128, 384, had=True, bias=True, fine=True, b=_b(), mem=mem)
    assert c.words == 192 * (4 * 2 + 1 + 1) + 32 + 1
    # bus bound: the R channel is the bottleneck, the rest is fixed latency
    assert 0 < c.cycles - c.words < 110
    slow = asbuilt.gemm_cost(1, 128, 384, had=True, bias=True, fine=True, b=_b(),
                          mem=asbuilt.sim_memory(0.5))
    assert slow.cycles - 2 * c.words == pytest.approx(c.cycles - c.words, abs=40)
    # two row blocks (of tm x row_sets = 4 rows) re-read the weights: twice the weight words
    c4 = asbuilt.gemm_cost(4, 128, 384, had=True, bias=True, fine=True, b=_b(), mem=mem)
    assert c4.words == 192 * 10 + 4 * 32 + 1
    c5 = asbuilt.gemm_cost(5, 128, 384, had=True, bias=True, fine=True, b=_b(), mem=mem)
    assert c5.words == 2 * 192 * 10 + 5 * 32 + 1
    with pytest.raises(ValueError, match="multiple of 128"):
        asbuilt.gemm_cost(1, 100, 8, had=False, bias=False, fine=True, b=_b(), mem=mem)


def test_vec_cost_hand_checked():
    mem, b = asbuilt.sim_memory(), _b()
    fixed = 2 + VectorEngine.ISSUE_STAGES + VectorEngine.UNIT_SLICES \
        + (asbuilt.AXIRAM_READ_LATENCY + asbuilt.READ_PATH + ReadArbiter.REQUEST_SLICES) + 1 \
        + asbuilt.AXIRAM_WRITE_LATENCY + asbuilt.WRITE_PATH + WriteArbiter.REQUEST_SLICES + 1 \
        + VectorEngine.BUSY_DELAY
    a = {"a": (4, 2048, 4)}
    # the GELU pipeline's depth, as the vector engine publishes it (its Elementwise GELU unit)
    g = VectorEngine.row_latencies(C=128, max_kv=30, P=8, kv6=False)[VecSubop.GELU]
    gelu = asbuilt.vec_cost(VecSubop.GELU, (512, 1, 1, 1), a, fine=True, b=b, mem=mem)
    assert (gelu.cycles, gelu.words) == (512 + g + fixed, 128)
    gelu_off = asbuilt.vec_cost(VecSubop.GELU, (512, 1, 1, 1), a, fine=False, b=b, mem=mem)
    assert gelu_off.cycles == 512 * g + g + fixed      # one element per GELU latency
    # LNMOD row of 128 (add 7, mul 8, tree 3 adds, partial-sum drain 2 + 7 + 1, rsqrt 69):
    # load, variance and output passes + the mean's snapshot (drain 10) and pipeline (tree
    # 21 + mul 8, tree-input and mean registers 2) + variance (a cycle to prime the read,
    # sub 7 + mul 8, drain 10, snapshot register) and rsqrt (tree 21 + mul 8 + add 7 + 69,
    # 2) + the output pipeline (mul 8 + mul 8 + add 7) + 1
    ln = asbuilt.vec_cost(VecSubop.LNMOD, (128, 1, 1, 1),
                       {"a": (4, 512, 4), "b": (4, 0, 4), "c": (4, 0, 4)}, fine=True, b=b, mem=mem)
    # + the read side: the first element waits for B's and C's first 16-word bursts behind
    # A's on the R channel; the second bursts, requested LOOKAHEAD elements ahead, are there
    # in time (VectorEngine.lookahead_stall, below)
    rd = asbuilt.AXIRAM_READ_LATENCY + asbuilt.READ_PATH + ReadArbiter.REQUEST_SLICES + 1
    assert rd + 2 * 16 < VectorEngine.LOOKAHEAD
    assert ln.cycles == 3 * 128 + (10 + 29 + 2) + (15 + 10 + 2) + (105 + 2) + 23 + 1 + fixed + 2 * 16
    # rows in flight (LayerNormModulate): a stream of rows of 1,024 takes n + 2 per row
    # (VAR's prime cycle and its return to IDLE), not three passes
    L = b.lat
    kw = dict(var=L["ln_var"], mean=L["ln_mean"], rsqrt=L["ln_rsqrt"] - L["ln_mean"],
              out=L["ln_out"], drain=L["drain"], slots=L["ln_slots"])
    assert L["ln_slots"] == 4
    assert LayerNormModulate.stream_cycles(9, 1024, **kw) - LayerNormModulate.stream_cycles(8, 1024, **kw) \
        == 1026
    assert ln.words == 3 * 32
    # FDOT rows of n0 on the element path: n0 + 18 cycles each (mul 8, drain 10), then the
    # tree (21), + the first element's wait for B's first word behind A's 16-word burst
    fd = asbuilt.vec_cost(VecSubop.FDOT, (64, 5, 1, 2), {"a": (4, 0, 4), "b": (2, 128, 2)},
                       fine=True, b=_element_path(b), mem=mem)
    assert fd.cycles == 10 * (64 + 18) + 21 + fixed + 16 and fd.words == 10 * (16 + 8)


def test_lookahead_stall_is_the_round_trip_beyond_the_lookahead():
    """VectorEngine.lookahead_stall: each later request's first element waits out the part
    of the round trip the issue side's lookahead does not cover, shared by the requests that
    fit in the lookahead window; nothing when the lookahead covers the round trip."""
    D = VectorEngine.LOOKAHEAD
    assert VectorEngine.lookahead_stall(15, 64, D) == 0
    assert VectorEngine.lookahead_stall(0, 64, D + 100) == 0
    # bursts longer than the lookahead: every one stalls by the uncovered part
    assert VectorEngine.lookahead_stall(3, 4 * D, D + 100) == 300
    # requests of 64 elements: (D - 1) // 64 more of them fit in the window and share it
    assert VectorEngine.lookahead_stall(15, 64, D + 100) == pytest.approx(15 * 100 / (1 + (D - 1) // 64))
    # the VCK190 round trip (150 + the read path) is inside the lookahead
    from fpqvar_hw.flow.topmem import VCK190_READ_LATENCY
    assert VCK190_READ_LATENCY + asbuilt.READ_PATH + ReadArbiter.REQUEST_SLICES + 1 < D


def test_operand_words_follow_the_engine_read_rules():
    # contiguous FP32 row: one word per 4 elements, one burst per row; FP16: 8 per word
    assert asbuilt.operand_words((64, 3, 1, 1), 4, 256, 4, max_burst=16) == (48, 3)
    assert asbuilt.operand_words((64, 3, 1, 1), 2, 128, 2, max_burst=16) == (24, 3)
    # a row longer than a burst: 1024 FP32 = 256 words in 16 bursts of 16
    assert asbuilt.operand_words((1024, 2, 1, 1), 4, 4096, 4, max_burst=16) == (512, 32)
    # a cache walked across tokens with a 128-byte stride: one single-beat read per element
    assert asbuilt.operand_words((30, 64, 1, 2), 128, 2, 2, max_burst=16) == (30 * 128, 30 * 128)
    # a one-word row re-read by every row (s1 = 0) stays in the operand's word cache
    assert asbuilt.operand_words((1, 64, 1, 2), 4, 0, 4, max_burst=16) == (2, 2)
    # one-element rows of the transposed V cache (step 0 of p.V): a one-beat burst per row
    assert asbuilt.operand_words((1, 64, 1, 2), 2, 60, 2, max_burst=16) == (128, 128)
    # L2NT's per-head B: H temperatures, 4 per word
    assert asbuilt.operand_words((64, 8, 2, 1), 0, 4, 4, max_burst=16, once_per_row=True) == (4, 4)


def _element_path(b):
    """``b`` without the attention and softmax arrays (every FDOT and SOFTMAX on the vector
    engine's element path)."""
    import dataclasses
    return dataclasses.replace(b, lat={**b.lat, "att_T": 0, "att_N": 0, "sma_lanes": 0})


def test_softmax_runs_on_the_lanes():
    """The compiler's SOFTMAX (rows back to back, in place) is timed on the softmax array:
    ``ceil(rows / R)`` rows through each lane's Softmax unit (its own recursion), the lanes
    side by side; the lane FIFOs hold a read round trip, so a 150-cycle memory costs little
    more; rows that overlap (``s1 < 4 n0``) are declined and pay the offer on top of the
    element path."""
    from fpqvar_hw.engines.smarray import SoftmaxArray
    from fpqvar_hw.engines.vecengine import SM_LANES
    b = _b()
    R = b.lat["sma_lanes"]
    assert R == SM_LANES >= 2
    near = asbuilt.TopMemory("near", 2, 2, 1.0, "test")
    far = asbuilt.TopMemory("far", 150, 150, 1.0, "test")
    sm = dict(subop=VecSubop.SOFTMAX, n=(680, 16, 64, 1), operands={"a": (4, 4 * 680, 4)})
    lane = SoftmaxArray.row_cycles(-(-16 * 64 // R), 680)
    on_near = asbuilt.vec_cost(**sm, fine=True, b=b, mem=near).cycles
    assert lane < on_near < lane * 1.05
    assert lane < asbuilt.vec_cost(**sm, fine=True, b=b, mem=far).cycles < lane * 1.1
    elem = asbuilt.vec_cost(**sm, fine=True, b=_element_path(b), mem=near).cycles
    assert elem > (R - 0.1) * on_near
    overlap = dict(sm, operands={"a": (4, 4 * 600, 4)})
    assert asbuilt.vec_cost(**overlap, fine=True, b=b, mem=near).cycles \
        == asbuilt.vec_cost(**overlap, fine=True, b=_element_path(b), mem=near).cycles \
        + 1 + SoftmaxArray.CHECK_CYCLES
    assert asbuilt.vec_cost(**sm, fine=False, b=b, mem=near).cycles \
        == asbuilt.vec_cost(**sm, fine=False, b=_element_path(b), mem=near).cycles


def test_single_beat_reads_are_latency_bound():
    b = _element_path(_b())
    near = asbuilt.TopMemory("near", 2, 2, 1.0, "test")
    far = asbuilt.TopMemory("far", 150, 150, 1.0, "test")
    pv = dict(subop=VecSubop.FDOT, n=(30, 64, 1, 2), operands={"a": (4, 0, 4), "b": (128, 2, 2)})
    qk = dict(subop=VecSubop.FDOT, n=(64, 30, 1, 2), operands={"a": (4, 0, 4), "b": (2, 128, 2)})
    pv_far = asbuilt.vec_cost(**pv, fine=True, b=b, mem=far).cycles
    # 16 requests in flight (ReadArbiter max_outstanding) per (150 + READ_PATH + 1) cycles:
    # B's 30 x 128 single beats and A's 128 row bursts
    assert b.max_outstanding == 16
    assert pv_far == pytest.approx((30 * 128 + 128) * (154 / 16), rel=0.03)
    assert asbuilt.vec_cost(**pv, fine=True, b=b, mem=near).cycles < pv_far / 5
    # q.K reads bursts, but an operand has at most vec_rd_depth words in flight: A (q,
    # re-read every row: 60 rows x 16 words) streams at 16 words per round trip with a
    # depth of 16; at the engine's 128 the FDot unit binds (rows of 64 + its 16-cycle pause)
    import dataclasses
    b16 = dataclasses.replace(b, vec_rd_depth=16)
    qk_far16 = asbuilt.vec_cost(**qk, fine=True, b=b16, mem=far).cycles
    assert qk_far16 == pytest.approx(60 * 16 * 154 / 16, rel=0.05)
    qk_far = asbuilt.vec_cost(**qk, fine=True, b=b, mem=far).cycles
    assert b.vec_rd_depth == 128 and qk_far == pytest.approx(60 * (64 + 16), rel=0.1)
    assert qk_far < qk_far16
    assert asbuilt.vec_cost(**qk, fine=True, b=b, mem=near).cycles < qk_far < pv_far / 5


def test_writes_are_bound_by_the_tags_in_flight():
    """Every engine write is one 16-byte beat holding a write-arbiter tag until its B
    response: ``max_writes`` of them per (write latency + 2) cycles bound an instruction."""
    import dataclasses
    import inspect

    from fpqvar_hw.engines.top import Accelerator
    b = _b()
    # the top's default (read from its signature: nothing built only to be inspected)
    top_default = inspect.signature(Accelerator.__init__).parameters["max_writes"].default
    assert b.max_writes == top_default == 128
    # merged results: a contiguous FP32 row of 64 = 16 words; unaligned rows half a word
    # more; FDOT results (s0 = 0) run along s1; a transposed cache (stride >= 16) one each
    assert asbuilt.result_words((64, 3, 1, 1), 4, 256, 4) == 48
    assert asbuilt.result_words((30, 3, 1, 1), 4, 120, 4) == 3 * (8 + 0.5)
    assert asbuilt.result_words((64, 30, 2, 1), 0, 4, 4) == 2 * 8.5
    assert asbuilt.result_words((64, 8, 2, 1), 60, 7680, 2) == 64 * 16
    far = asbuilt.TopMemory("far", 150, 150, 1.0, "test")
    gelu = dict(subop=VecSubop.GELU, n=(4096, 16, 1, 1), operands={"a": (4, 16384, 4)},
                out=(4, 16384, 4))
    fast = asbuilt.vec_cost(**gelu, fine=True, b=b, mem=far).cycles
    few = asbuilt.vec_cost(**gelu, fine=True, b=dataclasses.replace(b, max_writes=8), mem=far)
    # 16 rows x 1024 words written, 8 tags per 152 cycles: the write side binds
    assert few.cycles == pytest.approx(16 * 1024 * 152 / 8, rel=0.02) and few.cycles > 2 * fast
    # 128 tags: 0.84 words per cycle, above GELU's 0.25 (one FP32 per cycle)
    assert fast == pytest.approx(asbuilt.vec_cost(**{**gelu, "out": None}, fine=True, b=b,
                                                  mem=far).cycles, rel=0.01)
    g8 = asbuilt.gemm_cost(64, 1024, 4096, had=True, bias=True, fine=True,
                           b=dataclasses.replace(b, max_writes=8), mem=far)
    assert g8.cycles >= 64 * 1024 * 152 / 8


def test_attention_fdots_run_on_the_array():
    """The compiler's q.K and p.V FDOTs (A rows not depending on i1, FP16 B rows) are timed
    on the attention array (attention.py: tiles of T x N dot products, ``n0 + att_tile``
    cycles each, the next tile's rows loaded meanwhile); a V cache in row order (B s0 =
    128) is declined and pays the offer on top of the element path."""
    from fpqvar_hw.engines.attention import AttentionArray
    from fpqvar_hw.engines.vecengine import ATT_LANES
    b = _b()
    T, N = ATT_LANES
    assert (b.lat["att_T"], b.lat["att_N"]) == (T, N)
    assert b.lat["att_tile"] == AttentionArray.tile_cycles(0)
    near = asbuilt.TopMemory("near", 2, 2, 1.0, "test")
    far = asbuilt.TopMemory("far", 150, 150, 1.0, "test")
    qk = dict(subop=VecSubop.FDOT, n=(64, 256, 16, 2), operands={"a": (4, 0, 4), "b": (2, 128, 2)})
    tiles = 2 * -(-16 // T) * (256 // N)
    # a tile: its rows of 64, or the drain of its results (one per cycle) when longer
    compute = tiles * max(AttentionArray.tile_cycles(64),
                          AttentionArray.drain_cycles(min(T, 16), N))
    qk_near = asbuilt.vec_cost(**qk, fine=True, b=b, mem=near).cycles
    assert compute < qk_near < compute * 1.1
    elem = asbuilt.vec_cost(**qk, fine=True, b=_element_path(b), mem=near).cycles
    assert elem > 15 * qk_near                   # 32 lanes, less the per-tile pause
    # far memory: K rows back to back (one 16-beat burst per 2 rows) keep the lanes busy;
    # rows apart (one 8-beat burst each) make the 8 bursts in flight per 154-cycle round
    # trip the bound
    qk_far = asbuilt.vec_cost(**qk, fine=True, b=b, mem=far).cycles
    assert compute < qk_far < compute * 1.1
    # ... because three B tiles load while one computes: with two slots (the first array)
    # every tile would wait for a 154-cycle round trip plus its N rows of 8 words (one job)
    import dataclasses
    two = dataclasses.replace(b, lat={**b.lat, "att_slots": 2})
    assert asbuilt.vec_cost(**qk, fine=True, b=two, mem=far).cycles \
        == pytest.approx(tiles * (154 + 2 + N * 8), rel=0.05)
    apart = dict(qk, operands={"a": (4, 0, 4), "b": (2, 256, 2)})
    req = 2 * -(-16 // T) * 256 + 2 * 16
    bound = max(req * 154 / 8, compute)      # 16 x 4: each B row read half as often as 8 x 8
    assert bound <= asbuilt.vec_cost(**apart, fine=True, b=b, mem=far).cycles < 1.1 * bound
    # fine pipeline off, KV6 B (C operand) or a row-order V cache: the element path
    rows_v = dict(subop=VecSubop.FDOT, n=(30, 64, 1, 2), operands={"a": (4, 0, 4), "b": (128, 2, 2)})
    offered = asbuilt.vec_cost(**rows_v, fine=True, b=b, mem=near).cycles
    plain = asbuilt.vec_cost(**rows_v, fine=True, b=_element_path(b), mem=near).cycles
    assert offered == plain + 1 + AttentionArray.CHECK_CYCLES
    assert asbuilt.vec_cost(**qk, fine=False, b=b, mem=near).cycles \
        == asbuilt.vec_cost(**qk, fine=False, b=_element_path(b), mem=near).cycles
    kv6 = dict(qk, operands={"a": (4, 0, 4), "b": (1, 64, 1), "c": (0, 2, 2)})
    assert asbuilt.vec_cost(**kv6, fine=True, b=b, mem=near).cycles > 10 * qk_near


def test_schedule_overlaps_only_what_the_sync_flags_allow():
    g = asbuilt.TopInstr(1, "g", gemm=(1, 128, 8, False, False))
    v = asbuilt.TopInstr(2, "v", vec=(int(VecSubop.GELU), (8, 1, 1, 1), (("a", 4, 32, 4),)))
    mem = asbuilt.TopMemory("m", 2, 2, 1.0, "test")
    costs = [asbuilt.EngineCost(1000, 0), asbuilt.EngineCost(500, 0)]
    on = asbuilt.schedule_top([g, v], costs, coarse=True, mem=mem)
    off = asbuilt.schedule_top([g, v], costs, coarse=False, mem=mem)
    synced = asbuilt.schedule_top([g, asbuilt.TopInstr(2, "v", vec=v.vec, sync=True)], costs,
                               coarse=True, mem=mem)
    assert (on.gemm_cycles, on.vec_cycles, on.overlap_cycles) == (1000, 500, 500)
    assert 1000 < on.cycles < 1040 and off.overlap_cycles == 0
    assert off.cycles == synced.cycles and 1500 < off.cycles < 1540
    assert on.instructions == 3                       # + HALT
    # sharing the R channel: a bus-bound GEMM (1 word/cycle) next to a VEC wanting 0.5
    # word/cycle keeps the VEC at full speed and gets the other half while both run
    bus = [asbuilt.EngineCost(1000, 1000), asbuilt.EngineCost(500, 250)]
    shared = asbuilt.schedule_top([g, v], bus, coarse=True, mem=mem)
    assert shared.vec_cycles == 500 and shared.gemm_cycles == pytest.approx(1250, abs=3)


def test_bus_speeds_max_min_fair():
    """[cycles left, read words per cycle, write-channel share per cycle] per engine."""
    mem = asbuilt.TopMemory("m", 2, 2, 1.0, "test")
    assert asbuilt.bus_speeds({1: [1, 0.3, 0], 2: [1, 0.3, 0]}, mem) == {1: 1.0, 2: 1.0}
    assert asbuilt.bus_speeds({1: [1, 1.0, 0], 2: [1, 1.0, 0]}, mem) == {1: 0.5, 2: 0.5}
    s = asbuilt.bus_speeds({1: [1, 1.0, 0], 2: [1, 0.25, 0]}, mem)
    assert s == {1: pytest.approx(0.75), 2: 1.0}
    assert asbuilt.bus_speeds({1: [1, 1.0, 0], 2: None}, mem) == {1: 1.0}
    # the write channel too (a single-beat write every write_burst_cycles): the slower share
    w = asbuilt.bus_speeds({1: [1, 0.1, 0.9], 2: [1, 0.1, 0.6]}, mem)
    assert w == {1: pytest.approx(0.5 / 0.9), 2: pytest.approx(0.5 / 0.6)}
    assert asbuilt.bus_speeds({1: [1, 1.0, 0.2], 2: [1, 0.25, 0.7]}, mem) == \
        {1: pytest.approx(0.75), 2: 1.0}


def test_step_program_shape_and_sync():
    prog = asbuilt.top_step_program(128, 2, 512, 2, 1, 4, 2, 2, L_total=30)
    assert len(prog) == 2 * 16 * 4                      # blocks x 16 per tile x tiles
    assert sum(i.gemm is not None for i in prog) == 2 * 4 * 4
    assert any(i.sync for i in prog) and not all(i.sync for i in prog)
    off = asbuilt.top_step_program(128, 2, 512, 2, 1, 4, 2, 2, L_total=30, coarse=False)
    assert all(i.sync for i in off)


def test_as_built_top_is_slower_than_the_planned_design_and_reported():
    from fpqvar_hw.flow.platform import VCK190
    r = asbuilt.evaluate_top("d16", W4, VCK190)
    assert len(r.steps) == 10 and all(s.cycles > 0 for s in r.steps)
    plan = evaluate("d16", W4, VCK190).images_per_s
    assert 0 < r.images_per_s < plan
    # the co-simulation's memory (2-cycle latency) is faster than the assumed DDR4 path
    fast = asbuilt.evaluate_top("d16", W4, VCK190, asbuilt.sim_memory())
    assert fast.images_per_s > r.images_per_s
    share = top_breakdown("d16", W4, r.memory)
    steps = asbuilt.step_breakdown("d16", W4, r.memory)
    assert len(steps) == 10 and binding_units(steps).startswith("steps 1")
    assert sum(share.values()) == pytest.approx(1.0)
    # with a weight pass per 128-row tile (8 row sets) the vector engine leads: its q.K FDOTs
    # (the attention array's 128 lanes and two drains), then fc1 and GELU (one element per
    # cycle); SOFTMAX on the softmax array's lanes is no longer first; the MLP GEMMs are
    # about a fifth
    assert list(share)[:3] == ["FDOT qk", "fc1", "GELU"]
    assert 0.15 < share["FDOT pv"] + share["FDOT qk"] < 0.3
    assert 0.1 < share["fc1"] + share["fc2"] < 0.25
    assert share["SOFTMAX"] < 0.1
    rep = throughput_report(W4, VCK190, unit_timings(W4))
    rep["as_built_top"] = {"memory": {"source": "x", "beat_rate": 1.0, "read_latency": 150},
                           "models": {"d16": {**r.as_dict(), "pipeline_ablation":
                                              {"no_coarse": 1e-4, "no_fine": 1e-5}}}}
    md = throughput_markdown(rep)
    assert "## The as-built top" in md and "| d16 |" in md.split("## The as-built top")[1]


@pytest.mark.parametrize("preset", ["w4a4", "int4"])
def test_roofline_points_lie_under_the_roof(preset):
    """Only GEMM FLOPs are plotted against the matrix-engine roof, so no step can sit above
    it (the old plot counted attention FLOPs against the matrix-only roof)."""
    from fpqvar_hw.flow.reports import roof, roofline_points
    cfg = get_preset(preset)
    rep = throughput_report(cfg, VCK190, unit_timings(cfg))
    pts = roofline_points(rep)
    assert set(pts) == set(rep["models"]) and all(len(p) == 10 for p in pts.values())
    for name, p in pts.items():
        for x, y in p:
            assert y <= roof(rep, x) * (1 + 1e-9), (name, x, y)
    # the attention FLOPs are real work, just not the matrix engine's
    s = rep["models"]["d16"]["steps"][-1]
    assert 0 < s["gemm_gflop"] < s["gflop"]
