"""Throughput model: FLOP/byte accounting against var-model.md, pipeline levels, bounds."""
import math

import pytest

from fpqvar_hw.config import get_preset
from fpqvar_hw.perf import (MODELS, UnitTiming, evaluate, gemm_shapes, passes, pipeline_ablation,
                            throughput_markdown, throughput_report, unit_timings, weight_bytes)
from fpqvar_hw.platform import VCK190

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
