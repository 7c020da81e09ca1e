"""Analytical throughput model of the FPQVAR accelerator.

For each VAR scale step the model counts, per transformer block, the cycles of
every unit (matrix engine, quantizer + Hadamard path, FP32 vector unit, attention
unit) and of DRAM traffic (weights + scales, residual stream, KV cache), then
combines them according to the pipeline levels (accelerator.md):

* level 1 (``coarse_pipeline``): units work on different token tiles at once and
  the next layer's weights are prefetched, so a block costs
  ``max(unit cycles..., DRAM cycles) + fill``, where ``fill`` is the latency of
  one tile travelling through the chain of units of the block;
  without it a block costs the *sum* of all unit and DRAM cycles.
* level 2 (``fine_pipeline``): every unit accepts one item per cycle (II = 1);
  without it a unit holds each item for its full latency
  (:meth:`UnitTiming.cycles`).

Unit timings come from each unit's ``manifest()`` (``latency`` and the items per
cycle it states) through :func:`unit_timings`; a unit that does not exist yet
is modelled with a stated design assumption, flagged ``assumed`` in the reports.
``tests/test_perf_vs_sim.py`` checks :meth:`UnitTiming.cycles` against
Amaranth-simulator cycle counts of the real units (within 10 %).

Host side (reported separately, never hidden in the accelerator figure): the
head Linear(C, 4096) + sampling per step and the VQVAE decoder (394 GFLOP per
256px image, 4x that at 512px) run on the platform's host CPU at
``Platform.host_gflops``.  The "transformer-only" figure is the accelerator time
for all blocks of all scale steps; "end to end" adds the host work serially
(no overlap between images assumed).

Everything above models the *planned* architecture.  The second half of this module
models the *as-built* RTL top (``fpqvar_hw/engines/top.py``) instruction by instruction:
:func:`top_step_program` (the compiler's program at the shape level),
:func:`gemm_cost` / :func:`vec_cost` (each engine's cycles from its micro-architecture),
:func:`schedule_top` (the controller's dispatch and the shared R channel),
:func:`evaluate_top` (images/s of the top that exists), :func:`compare_to_sim` (both
models against the simulated top's counters).  ``python -m fpqvar_hw.flow.perf`` prints both.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Mapping

from ..config import LAYERS, AcceleratorConfig, ElementFormat, Rotation
from .platform import Platform

__all__ = ["ModelSpec", "MODELS", "UnitTiming", "unit_timings", "gemm_shapes", "StepResult",
           "ModelResult", "evaluate", "evaluate_all", "PAPER_IMAGES_PER_S", "PAPER_FP_INT_RATIO",
           "weight_bytes", "peak_macs_per_cycle", "load_sim_cycles", "compare_to_sim",
           "compare_markdown", "TopMemory", "sim_memory", "platform_memory", "TopBuild",
           "top_build", "EngineCost", "gemm_cost", "vec_cost", "TopInstr", "top_step_program",
           "TopRun", "schedule_top", "instr_cost", "top_step", "TopModelResult", "evaluate_top",
           "top_breakdown", "top_report"]

#: FPQVAR paper anchors (depth not stated in the paper).
PAPER_IMAGES_PER_S = 1.1
PAPER_FP_INT_RATIO = 3.1

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
#: VQVAE decoder FLOPs per 256px image (var-model.md); scales with pixel count.
DECODER_GFLOP_256 = 394.0
VQ_CODEBOOK = 4096


@dataclass(frozen=True)
class ModelSpec:
    """A VAR transformer: depth d, C = 64 d, d heads of 64, MLP 4C."""

    name: str
    depth: int
    patch_nums: tuple[int, ...]
    resolution: int

    @property
    def C(self) -> int:
        return 64 * self.depth

    @property
    def heads(self) -> int:
        return self.depth

    @property
    def tokens(self) -> tuple[int, ...]:
        return tuple(p * p for p in self.patch_nums)

    @property
    def kv_lengths(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.tokens:
            acc += n
            out.append(acc)
        return tuple(out)

    @property
    def decoder_gflop(self) -> float:
        return DECODER_GFLOP_256 * (self.resolution / 256) ** 2


MODELS: dict[str, ModelSpec] = {m.name: m for m in [
    ModelSpec("d16", 16, PATCH_NUMS_256, 256),
    ModelSpec("d20", 20, PATCH_NUMS_256, 256),
    ModelSpec("d24", 24, PATCH_NUMS_256, 256),
    ModelSpec("d30", 30, PATCH_NUMS_256, 256),
    ModelSpec("d36", 36, PATCH_NUMS_512, 512),
]}


def gemm_shapes(C: int) -> dict[str, tuple[int, int]]:
    """(K, N) = (reduction, output) of each quantized linear of a block."""
    return {"qkv": (C, 3 * C), "proj": (C, C), "fc1": (C, 4 * C), "fc2": (4 * C, C)}


# --------------------------------------------------------------------- units
@dataclass(frozen=True)
class UnitTiming:
    """Timing contract of one streaming unit.

    ``latency``: cycles from an item's input handshake to its output.
    ``cycles_per_item``: cycles between accepted items at full rate (II = 1 on
    a ``lanes``-wide stream means ``items`` of ``lanes`` beats take that many cycles).
    ``source``: where the numbers come from (a manifest, or ``assumed: ...``).

    ``cycles(n)`` = ``latency + n * cycles_per_item`` when pipelined (fine
    pipeline on), ``n * (latency + cycles_per_item)`` when each item must leave
    before the next enters.
    """

    name: str
    latency: int
    cycles_per_item: int
    item: str
    source: str

    def __post_init__(self) -> None:
        if self.latency < 0 or self.cycles_per_item < 1:
            raise ValueError(f"{self.name}: latency must be >= 0 and cycles_per_item >= 1, "
                             f"got {self.latency}, {self.cycles_per_item}")

    @property
    def assumed(self) -> bool:
        return self.source.startswith("assumed")

    def cycles(self, n_items: int, *, pipelined: bool = True) -> int:
        if n_items <= 0:
            return 0
        if pipelined:
            return self.latency + n_items * self.cycles_per_item
        return n_items * (self.latency + self.cycles_per_item)


def _manifest_timing(name: str, manifest: Mapping | None, item: str, default_latency: int,
                     beats_per_item: int, why: str, *, out_beats_per_item: int = 1) -> UnitTiming:
    """Timing from a unit manifest, or the stated design assumption when the unit is missing.

    Manifest keys: ``latency`` or ``latency_cycles`` (input handshake of an item's last
    beat to its *first* output beat), optional ``ii`` / ``initiation_interval`` (cycles per
    beat, default 1).  ``beats_per_item`` comes from the config (``group_size / lanes``);
    an item leaving as ``out_beats_per_item`` beats adds ``out_beats_per_item - 1`` cycles
    of latency to its last output beat.
    """
    lat = None
    if manifest is not None:
        lat = next((manifest[k] for k in ("latency", "latency_cycles")
                    if isinstance(manifest.get(k), int)), None)
    if lat is not None:
        ii = next((manifest[k] for k in ("ii", "initiation_interval") if k in manifest), 1)
        if not isinstance(ii, int) or ii < 1:
            raise ValueError(f"{name} manifest: ii must be a positive int, got {ii!r}")
        src = manifest.get("latency_source", "manifest()")
        return UnitTiming(name, lat + (out_beats_per_item - 1) * ii, ii * beats_per_item, item,
                          f"{name} unit ({src})")
    return UnitTiming(name, default_latency, beats_per_item, item, f"assumed: {why}")


def component_manifest(component) -> dict:
    """A unit's ``manifest()``, or ``{"latency": component.latency}`` when it has no
    manifest but states its latency as an attribute (the docstring contract)."""
    if callable(getattr(component, "manifest", None)):
        return dict(component.manifest())
    lat = getattr(component, "latency", None)
    return {"latency": lat, "latency_source": "component.latency attribute"} \
        if isinstance(lat, int) else {}


def unit_timings(config: AcceleratorConfig,
                 manifests: Mapping[str, Mapping] | None = None) -> dict[str, UnitTiming]:
    """Per-unit timing for ``config``; ``manifests`` maps registry unit name -> manifest()."""
    m = manifests or {}
    G = config.group_size
    lanes_log = max(1, math.ceil(math.log2(config.lanes)))
    return {
        "quantizer": _manifest_timing(
            "quantizer", m.get("quantizer"), f"one {G}-element group",
            4, max(1, G // config.quant_lanes),
            "absmax tree + scale + threshold compare, lanes elements/cycle",
            out_beats_per_item=max(1, G // config.quant_lanes)),
        "hadamard": _manifest_timing(
            "hadamard", m.get("hadamard"), "one 128-element group",
            9, max(1, 128 // config.quant_lanes), "7 butterfly stages + in/out registers",
            out_beats_per_item=max(1, 128 // config.quant_lanes)),
        "dot": _manifest_timing(
            "dot", m.get("dot"), f"one {G}-element group per dot unit",
            lanes_log + 8, max(1, G // config.lanes),
            "adder tree log2(lanes) + FP32 scale multiply and accumulate"),
        "vector": _manifest_timing(
            "vector", m.get("vector"), f"{config.vector_lanes} FP32 elements",
            24, 1, "FP32 LayerNorm/GELU/softmax pipeline, vector_lanes elements/cycle"),
        "attention": _manifest_timing(
            "attention", m.get("attention"), f"{config.attn_macs} FP multiply-adds",
            32, 1, "attn_macs FP16xFP16->FP32 MACs/cycle on DSP58"),
    }


# ------------------------------------------------------------------- formats
def native_bits(config: AcceleratorConfig) -> int:
    """Operand width of the array's multipliers: the QKV activation/weight width.

    A layer whose operands are wider (LiteVAR's int8 FC2 input on an int4
    array) runs in ``ceil(bits / native)`` passes per operand (nibble
    decomposition); DFQ keeps 4-bit codes and needs no extra pass.
    """
    return max(config.qkv_act.bits, config.qkv_weight.bits)


def passes(config: AcceleratorConfig, layer: str) -> int:
    nb = native_bits(config)
    return math.ceil(config.act_format(layer).bits / nb) * \
        math.ceil(config.weight_format(layer).bits / nb)


def weight_bytes(config: AcceleratorConfig, C: int) -> float:
    """DRAM bytes of one block's quantized weights including group scales."""
    total = 0.0
    for layer, (K, N) in gemm_shapes(C).items():
        total += K * N * config.weight_format(layer).bits / 8
        total += K * N / config.group_size * config.scale_format.bits / 8
    return total


def peak_macs_per_cycle(config: AcceleratorConfig) -> int:
    return config.tm * config.tn * config.lanes


# ------------------------------------------------------------------ the model
@dataclass(frozen=True)
class StepResult:
    """One scale step (all blocks)."""

    step: int
    tokens: int
    rows: int
    kv_len: int
    unit_cycles: dict[str, int]     # per unit, all blocks, before overlap
    dram_cycles: int
    cycles: int                     # after overlap (what the step costs)
    flop: float
    dram_bytes: float
    bound: str                      # "compute" or "memory" (which term dominates)


@dataclass(frozen=True)
class ModelResult:
    model: str
    batch: int
    clock_mhz: float
    steps: tuple[StepResult, ...]
    host_head_s: float
    decoder_s: float

    @property
    def cycles(self) -> int:
        return sum(s.cycles for s in self.steps)

    @property
    def transformer_s(self) -> float:
        """Accelerator seconds for one batch (all blocks, all steps)."""
        return self.cycles / (self.clock_mhz * 1e6)

    @property
    def images_per_s(self) -> float:
        """Transformer-only throughput (accelerator time only)."""
        return self.batch / self.transformer_s

    @property
    def end_to_end_images_per_s(self) -> float:
        return self.batch / (self.transformer_s + self.host_head_s + self.decoder_s)

    @property
    def flop(self) -> float:
        return sum(s.flop for s in self.steps)

    @property
    def dram_bytes(self) -> float:
        return sum(s.dram_bytes for s in self.steps)

    def as_dict(self) -> dict:
        return {
            "model": self.model, "batch": self.batch, "clock_mhz": self.clock_mhz,
            "cycles": self.cycles, "transformer_s": self.transformer_s,
            "images_per_s": self.images_per_s, "host_head_s": self.host_head_s,
            "decoder_s": self.decoder_s, "end_to_end_images_per_s": self.end_to_end_images_per_s,
            "tflop_per_batch": self.flop / 1e12, "dram_gb_per_batch": self.dram_bytes / 1e9,
            "steps": [{
                "step": s.step, "tokens": s.tokens, "rows": s.rows, "kv_len": s.kv_len,
                "cycles": s.cycles, "unit_cycles": dict(s.unit_cycles),
                "dram_cycles": s.dram_cycles, "gflop": s.flop / 1e9,
                "dram_mb": s.dram_bytes / 1e6, "bound": s.bound} for s in self.steps],
        }


def _block_terms(model: ModelSpec, tokens: int, kv_len: int, config: AcceleratorConfig,
                 t: Mapping[str, UnitTiming], bytes_per_cycle: float
                 ) -> tuple[dict[str, int], int, int, float, float]:
    """Cycles of each unit for one block, DRAM cycles, fill cycles, FLOP, DRAM bytes."""
    C, H = model.C, model.heads
    cfg_rows = 2 if config.cfg else 1
    R = config.batch * cfg_rows * tokens
    G = config.group_size
    fine = config.fine_pipeline

    # Matrix engine: ceil(R/tm) x ceil(N/tn) output tiles, K/G groups per tile.
    me = 0
    flop = 0.0
    for layer, (K, N) in gemm_shapes(C).items():
        tiles = math.ceil(R / config.tm) * math.ceil(N / config.tn)
        groups = tiles * (K // G) * passes(config, layer)
        me += t["dot"].cycles(groups, pipelined=fine)
        flop += 2.0 * R * K * N
    # Quantizer inputs: qkv, proj, fc1 (C wide) and fc2 (4C wide); Hadamard: qkv, fc1.
    q_groups = R * (3 * C + 4 * C) // G
    quant = t["quantizer"].cycles(q_groups, pipelined=fine)
    if config.rotation is Rotation.GHT:
        quant += t["hadamard"].cycles(R * 2 * C // 128, pipelined=fine)
    # Vector unit (FP32): 2x(LN stats + normalize/modulate), 2x residual, GELU on 4C,
    # q/k L2 norm (2 passes on 2C), softmax (2 passes over H x kv_len scores).
    vec_elems = R * (2 * 2 * C + 2 * C + 4 * C + 2 * 2 * C) + 2 * R * H * kv_len
    vec = t["vector"].cycles(math.ceil(vec_elems / config.vector_lanes), pipelined=fine)
    # Attention: QK^T and PV, R rows x kv_len keys x C (all heads).
    attn_macs = 2 * R * kv_len * C
    attn = t["attention"].cycles(math.ceil(attn_macs / config.attn_macs), pipelined=fine)
    flop += 2.0 * attn_macs

    # DRAM: weights (+ re-streaming when the quantized rows do not fit the buffer),
    # residual stream FP32 in/out, new K/V written, whole K/V cache read.
    buf = config.act_buffer_kib * 1024
    restream = 1
    for layer, (K, N) in gemm_shapes(C).items():
        act_bytes = R * K * (config.act_format(layer).bits / 8 + config.scale_format.bits / 8 / G)
        restream = max(restream, math.ceil(act_bytes / buf))
    kv_bytes_el = config.kv_format.bits_per_element / 8
    kv_rows = config.batch * cfg_rows
    dram = (weight_bytes(config, C) * restream
            + 2 * R * C * 4
            + 2 * R * C * kv_bytes_el
            + 2 * kv_rows * kv_len * C * kv_bytes_el)
    dram_cyc = math.ceil(dram / (bytes_per_cycle * config.dram_efficiency))

    # Fill: one tile through quantize -> dot -> vector -> attention per GEMM stage.
    fill = 4 * (t["quantizer"].latency + t["dot"].latency + t["dot"].cycles_per_item * C // G) \
        + t["hadamard"].latency * 2 + t["vector"].latency * 4 + t["attention"].latency
    units = {"matrix": me, "quant": quant, "vector": vec, "attention": attn}
    return units, dram_cyc, fill, flop, dram


def evaluate(model: ModelSpec | str, config: AcceleratorConfig, platform: Platform,
             timings: Mapping[str, UnitTiming] | None = None) -> ModelResult:
    """Cycles per scale step and images/s of ``model`` on ``config`` at ``platform``."""
    if isinstance(model, str):
        try:
            model = MODELS[model]
        except KeyError:
            raise ValueError(f"unknown model {model!r}; models: {', '.join(MODELS)}") from None
    if model.C % config.group_size:
        raise ValueError(f"{model.name}: C={model.C} is not a multiple of group_size="
                         f"{config.group_size}")
    t = timings if timings is not None else unit_timings(config)
    clock = config.clock_mhz or platform.clock_mhz
    bpc = platform.dram_gbps * 1e9 / (clock * 1e6)
    steps = []
    for i, (n, L) in enumerate(zip(model.tokens, model.kv_lengths)):
        units, dram_cyc, fill, flop, dram = _block_terms(model, n, L, config, t, bpc)
        if config.coarse_pipeline:
            blk = max(max(units.values()), dram_cyc) + fill
        else:
            blk = sum(units.values()) + dram_cyc
        bound = "memory" if dram_cyc >= max(units.values()) else "compute"
        D = model.depth
        steps.append(StepResult(
            step=i, tokens=n, rows=config.batch * (2 if config.cfg else 1) * n, kv_len=L,
            unit_cycles={k: v * D for k, v in units.items()}, dram_cycles=dram_cyc * D,
            cycles=blk * D, flop=flop * D, dram_bytes=dram * D, bound=bound))
    rows_total = config.batch * (2 if config.cfg else 1) * sum(model.tokens)
    head_flop = 2.0 * rows_total * model.C * VQ_CODEBOOK
    host_head_s = head_flop / (platform.host_gflops * 1e9)
    decoder_s = config.batch * model.decoder_gflop / platform.host_gflops
    return ModelResult(model=model.name, batch=config.batch, clock_mhz=clock,
                       steps=tuple(steps), host_head_s=host_head_s, decoder_s=decoder_s)


def evaluate_all(config: AcceleratorConfig, platform: Platform,
                 timings: Mapping[str, UnitTiming] | None = None) -> dict[str, ModelResult]:
    return {name: evaluate(m, config, platform, timings) for name, m in MODELS.items()
            if m.C % config.group_size == 0}


def pipeline_ablation(model: ModelSpec | str, config: AcceleratorConfig, platform: Platform,
                      timings: Mapping[str, UnitTiming] | None = None) -> dict[str, float]:
    """images/s with both pipeline levels, each one off, and both off."""
    out = {}
    for label, coarse, fine in (("both", True, True), ("no_coarse", False, True),
                                ("no_fine", True, False), ("neither", False, False)):
        c = config.replace(coarse_pipeline=coarse, fine_pipeline=fine)
        out[label] = evaluate(model, c, platform, timings).images_per_s
    return out


# ------------------------------------------------------------------- reports
def _fmt_rate(x: float) -> str:
    return f"{x:.3g}"


def throughput_report(config: AcceleratorConfig, platform: Platform,
                      timings: Mapping[str, UnitTiming], headline: str = "d16") -> dict:
    """JSON-ready throughput report: every model, pipeline ablation, timing sources."""
    results = evaluate_all(config, platform, timings)
    clock = config.clock_mhz or platform.clock_mhz
    peak_tflops = 2 * peak_macs_per_cycle(config) * clock * 1e6 / 1e12
    return {
        "preset": config.preset, "platform": platform.name, "clock_mhz": clock,
        "batch": config.batch, "cfg": config.cfg,
        "peak_matrix_tflops": peak_tflops, "dram_gbps": platform.dram_gbps,
        "dram_efficiency": config.dram_efficiency,
        "assumptions": {
            "host": platform.host, "host_gflops": platform.host_gflops,
            "host_work": "class embedding, adaLN linears, head Linear(C,4096) + sampling per "
                         "step, VQ update and the VQVAE decoder run on the host CPU, serially "
                         "after the accelerator (no overlap across images)",
            "transformer_only": "accelerator cycles of all blocks of all scale steps",
            "multi_pass": "a layer wider than the array's native operand width runs in "
                          "ceil(bits/native) passes per operand (e.g. int8 FC2 on an int4 array)",
        },
        "unit_timings": {k: {"latency": v.latency, "cycles_per_item": v.cycles_per_item,
                             "item": v.item, "source": v.source} for k, v in timings.items()},
        "native_operand_bits": native_bits(config),
        "passes": {layer: passes(config, layer) for layer in LAYERS},
        "models": {k: r.as_dict() for k, r in results.items()},
        "pipeline_ablation": {k: pipeline_ablation(k, config, platform, timings)
                              for k in results},
        "headline": headline,
    }


def throughput_markdown(rep: dict) -> str:
    lines = [f"# Throughput model: preset {rep['preset']} on {rep['platform']}", "",
             f"Clock {rep['clock_mhz']:g} MHz, batch {rep['batch']} "
             f"({'CFG doubles rows' if rep['cfg'] else 'no CFG'}), matrix-engine peak "
             f"{rep['peak_matrix_tflops']:.2f} TFLOP/s, DRAM {rep['dram_gbps']} GB/s x "
             f"{rep['dram_efficiency']} efficiency.", "",
             "| model | images/s (transformer) | host head s | decoder s (host) | "
             "images/s end-to-end | TFLOP/batch | DRAM GB/batch | memory-bound steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in rep["models"].items():
        mem = sum(1 for s in m["steps"] if s["bound"] == "memory")
        lines.append(f"| {name} | {_fmt_rate(m['images_per_s'])} | {m['host_head_s']:.3g} | "
                     f"{m['decoder_s']:.3g} | {_fmt_rate(m['end_to_end_images_per_s'])} | "
                     f"{m['tflop_per_batch']:.3g} | {m['dram_gb_per_batch']:.3g} | "
                     f"{mem}/{len(m['steps'])} |")
    ce = rep.get("clock_estimate") or {}
    if ce.get("images_per_s"):
        lines += ["", f"## At the clock the RTL's logic depth supports", "",
                  f"Estimated achievable clock {ce['achievable_mhz']:g} MHz (limited by "
                  f"{ce['limited_by']}, logic depth {ce['limit_logic_depth']}) instead of the "
                  f"{rep['clock_mhz']:g} MHz planning figure; {ce['model']}.", "",
                  f"| model | images/s at {rep['clock_mhz']:g} MHz | images/s at "
                  f"{ce['achievable_mhz']:g} MHz |", "|---|---|---|"]
        for name, m in rep["models"].items():
            lines.append(f"| {name} | {_fmt_rate(m['images_per_s'])} | "
                         f"{_fmt_rate(ce['images_per_s'][name])} |")
    elif ce:
        lines += ["", f"Achievable clock: {ce.get('note', 'not estimated')}."]
    top = rep.get("as_built_top")
    if top:
        mem = top["memory"]
        lines += ["", "## The as-built top (the RTL that exists)", "",
                  "`fpqvar_hw/engines/top.py` as built today: one element per cycle per vector row "
                  "operation, attention as FDOT at 1 MAC/cycle (the V cache walked one beat per "
                  "element), the matrix engine re-reading all weights per block of tm rows, "
                  "one 128-bit AXI master. Modelled per instruction (`perf.evaluate_top`, "
                  f"docs/build.md); memory: {mem['source']}, {mem['beat_rate']:g} beat/cycle.", "",
                  "| model | planned images/s | as-built images/s | as-built, coarse off | "
                  "as-built, fine off | as-built cycles | GEMM busy | VEC busy | largest "
                  "instruction kinds (share of engine cycles) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, t in top["models"].items():
            g = sum(s["gemm_cycles"] for s in t["steps"])
            v = sum(s["vec_cycles"] for s in t["steps"])
            ab = t["pipeline_ablation"]
            lines.append(f"| {name} | {_fmt_rate(rep['models'][name]['images_per_s'])} | "
                         f"{_fmt_rate(t['images_per_s'])} | {_fmt_rate(ab['no_coarse'])} | "
                         f"{_fmt_rate(ab['no_fine'])} | {t['cycles']:.3g} | {g:.3g} | {v:.3g} | "
                         + ", ".join(f"{k} {100 * x:.0f} %"
                                     for k, x in list(t.get("cycle_share", {}).items())[:3])
                         + " |")
    lines += ["", f"Paper (VCK190, depth not stated): {PAPER_IMAGES_PER_S} image/s.", "",
              "## Host-side assumption", "", rep["assumptions"]["host_work"] + f"; host: "
              f"{rep['assumptions']['host']} at {rep['assumptions']['host_gflops']:g} GFLOP/s.",
              "", "## What each pipeline level buys (transformer images/s)", "",
              "| model | both levels | no coarse (level 1 off) | no fine (level 2 off) | neither |",
              "|---|---|---|---|---|"]
    for name, a in rep["pipeline_ablation"].items():
        lines.append(f"| {name} | {_fmt_rate(a['both'])} | {_fmt_rate(a['no_coarse'])} | "
                     f"{_fmt_rate(a['no_fine'])} | {_fmt_rate(a['neither'])} |")
    lines += ["", "## Unit timings", "", "| unit | latency | cycles/item | item | source |",
              "|---|---|---|---|---|"]
    for k, v in rep["unit_timings"].items():
        lines.append(f"| {k} | {v['latency']} | {v['cycles_per_item']} | {v['item']} | "
                     f"{v['source']} |")
    lines += ["", f"Layer passes on the {rep['native_operand_bits']}-bit array: " +
              ", ".join(f"{k} {v}" for k, v in rep["passes"].items()), ""]
    head = rep["headline"]
    m = rep["models"][head]
    lines += [f"## Per-step breakdown ({head})", "",
              "| step | tokens | rows | KV | cycles | matrix | quant | vector | attention | "
              "DRAM | bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in m["steps"]:
        u = s["unit_cycles"]
        lines.append(f"| {s['step']} | {s['tokens']} | {s['rows']} | {s['kv_len']} | "
                     f"{s['cycles']:,} | {u['matrix']:,} | {u['quant']:,} | {u['vector']:,} | "
                     f"{u['attention']:,} | {s['dram_cycles']:,} | {s['bound']} |")
    return "\n".join(lines) + "\n"


def _savefig(fig, path) -> None:
    # Deterministic PNG: no Software/date metadata.
    fig.savefig(path, dpi=100, metadata={"Software": None})


def plot_roofline(rep: dict, path) -> None:
    """Roofline: attainable TFLOP/s vs operational intensity, one point per step and model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    peak = rep["peak_matrix_tflops"]
    bw = rep["dram_gbps"] * rep["dram_efficiency"] / 1e3   # TB/s
    fig, ax = plt.subplots(figsize=(7, 4.5))
    oi = [10 ** (x / 10) for x in range(0, 51)]
    ax.plot(oi, [min(peak, bw * o) for o in oi], "k-", lw=1.5, label="roofline")
    clock = rep["clock_mhz"] * 1e6
    for name, m in rep["models"].items():
        xs, ys = [], []
        for s in m["steps"]:
            if s["dram_mb"] <= 0 or s["cycles"] <= 0:
                continue
            xs.append(s["gflop"] * 1e9 / (s["dram_mb"] * 1e6))
            ys.append(s["gflop"] * 1e9 / (s["cycles"] / clock) / 1e12)
        ax.plot(xs, ys, "o-", ms=3, lw=0.8, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP / DRAM byte)")
    ax.set_ylabel("TFLOP/s per scale step")
    ax.set_title(f"{rep['preset']} on {rep['platform']}, batch {rep['batch']}")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_breakdown(rep: dict, path) -> None:
    """Stacked per-step unit cycles (before overlap) with the step's cost as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = rep["models"][rep["headline"]]
    steps = [s["step"] for s in m["steps"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = ["matrix", "quant", "vector", "attention"]
    width = 0.4
    bottom = [0.0] * len(steps)
    for k in keys:
        vals = [s["unit_cycles"][k] / 1e6 for s in m["steps"]]
        ax.bar([x - width / 2 for x in steps], vals, width, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.bar([x + width / 2 for x in steps], [s["dram_cycles"] / 1e6 for s in m["steps"]], width,
           color="grey", label="DRAM")
    ax.plot(steps, [s["cycles"] / 1e6 for s in m["steps"]], "k.-", label="step cost")
    ax.set_xlabel("scale step")
    ax.set_ylabel("Mcycles (all blocks)")
    ax.set_yscale("log")
    ax.set_title(f"{rep['headline']} per-step cycles, {rep['preset']}, batch {rep['batch']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


# ------------------------------------------------------ model vs simulated cycles
#: The shipped tiny digits VAR (fpqvar_quant/assets/digits): depth 2, C = 128 (2 heads of 64),
#: patch_nums (1, 2, 3, 4) -- the model the top's co-simulation and the driver's RTL backend run.
DIGITS = ModelSpec("digits", 2, (1, 2, 3, 4), 32)

SIM_CYCLES_FORMATS = ("fpqvar-tiny-image-cycles v1 (fpqvar_hw/host/driver.py write_cycles_json: "
                      "build/tiny-image/cycles.json)",
                      "top testbench runs (sim/tb_top.py block_steps: build/top/cycles-s<seed>.json)")


@dataclass(frozen=True)
class SimRun:
    """One simulated scale step: what ran and the top's counter registers.

    ``cycles`` = CYCLES (start to done), ``gemm_cycles`` / ``vec_cycles`` = cycles the
    matrix / vector engine was busy, ``overlap_cycles`` = both busy (docs/top.md).
    """

    step: int
    tokens: int            # new tokens per row in this step (pn^2)
    coarse: bool
    fine: bool
    instructions: int | None
    cycles: int
    gemm_cycles: int | None
    vec_cycles: int | None
    overlap_cycles: int | None


@dataclass(frozen=True)
class SimCycles:
    """Cycle counts of the accelerator top's RTL simulation, normalised from either file
    format of :data:`SIM_CYCLES_FORMATS` by :func:`load_sim_cycles`."""

    source: str
    config: AcceleratorConfig
    rows: int
    model: ModelSpec
    runs: tuple[SimRun, ...]
    #: the testbench's AXI pause probability per channel and cycle (0: none, the driver's)
    pause: float = 0.0


def load_sim_cycles(path, *, model: ModelSpec = DIGITS) -> SimCycles:
    """Read a cycle-count JSON written by the top's co-simulation.

    Two schemas are accepted (:data:`SIM_CYCLES_FORMATS`):

    * driver, ``{"format": "fpqvar-tiny-image-cycles", "version": 1, "rows",
      "coarse_pipeline", "fine_pipeline", "device": {AcceleratorConfig fields, ...},
      "model": {"patch_nums"}, "steps": [{"si", "pn", "instructions", "cycles",
      "gemm_cycles", "vec_cycles", "overlap_cycles", ...}]}``;
    * top testbench, ``{"preset", "config": {overrides}, "runs": [{"step", "L",
      "instructions", "coarse", "fine", "cycles", "gemm_cycles", "vec_cycles",
      "overlap_cycles"}]}`` (digits VAR, 2 rows: one image with CFG).

    ``model``: the VAR the steps belong to (default :data:`DIGITS`; its patch_nums
    must match the file's).  Raises ``ValueError`` with what is wrong and how to
    produce a usable file (e.g. a golden-backend run has no cycle counts).
    """
    import json
    from pathlib import Path

    from ..config import get_preset
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; write one with `python -m fpqvar_hw.host.driver "
                         f"--backend rtl` or `pytest sim/test_top.py --run-slow`")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e})") from None
    fields = {f for f in AcceleratorConfig.__dataclass_fields__}
    runs = []
    if isinstance(doc, dict) and doc.get("format") == "fpqvar-tiny-image-cycles":
        if doc.get("version") != 1:
            raise ValueError(f"{p}: cycles format version {doc.get('version')!r} is not supported "
                             f"(this reader knows version 1)")
        dev = {k: v for k, v in (doc.get("device") or {}).items() if k in fields}
        if "preset" not in dev:
            raise ValueError(f"{p}: 'device' holds no accelerator config; the file must come from "
                             f"the RTL backend of fpqvar_hw.host.driver")
        config = get_preset(dev["preset"]).replace(**{k: v for k, v in dev.items() if k != "preset"})
        pns = tuple(doc.get("model", {}).get("patch_nums", ()))
        if pns and pns != model.patch_nums[:len(pns)]:
            raise ValueError(f"{p}: patch_nums {pns} do not match model {model.name} "
                             f"{model.patch_nums}; pass model=")
        rows = int(doc["rows"])
        pause = 0.0             # the driver's AxiRam never pauses
        for s in doc["steps"]:
            runs.append((s["si"], s["pn"] ** 2, doc["coarse_pipeline"], doc["fine_pipeline"], s))
        backend = doc.get("backend")
    elif isinstance(doc, dict) and isinstance(doc.get("runs"), list) and "preset" in doc:
        config = get_preset(doc["preset"]).replace(**(doc.get("config") or {}))
        rows = 2
        pause = float(doc.get("pause") or 0.0)
        for r in doc["runs"]:
            runs.append((r["step"], r["L"], r["coarse"], r["fine"], r))
        backend = "rtl"
    else:
        raise ValueError(f"{p}: not a cycle-count file; expected one of: "
                         + "; ".join(SIM_CYCLES_FORMATS))
    out = []
    for step, tokens, coarse, fine, r in runs:
        if r.get("cycles") is None:
            raise ValueError(f"{p}: step {step} has no cycle count (backend {backend!r}); only "
                             f"the RTL backend reads the CYCLES registers: run `python -m "
                             f"fpqvar_hw.host.driver --backend rtl`")
        if not 0 <= step < len(model.patch_nums) or model.tokens[step] != tokens:
            raise ValueError(f"{p}: step {step} with {tokens} tokens is not a step of model "
                             f"{model.name} (tokens {model.tokens})")
        out.append(SimRun(int(step), int(tokens), bool(coarse), bool(fine), r.get("instructions"),
                          int(r["cycles"]), r.get("gemm_cycles"), r.get("vec_cycles"),
                          r.get("overlap_cycles")))
    if rows % 2:
        raise ValueError(f"{p}: rows={rows}; the model counts rows as batch x 2 (CFG)")
    if not 0 <= pause < 1:
        raise ValueError(f"{p}: pause {pause} is not a probability in [0, 1)")
    return SimCycles(str(p), config.replace(batch=rows // 2, cfg=True), rows, model, tuple(out),
                     pause)


def sim_platform(clock_mhz: float = 300.0) -> Platform:
    """The co-simulation's memory: the top's 128-bit AXI master at one beat per cycle
    (16 bytes/cycle), no budget; cycles do not depend on ``clock_mhz``."""
    import dataclasses

    from .platform import VERILOG
    return dataclasses.replace(VERILOG, name="sim_axi128", clock_mhz=clock_mhz,
                               dram_gbps=16 * clock_mhz / 1e3)


def compare_to_sim(sim: SimCycles, timings: Mapping[str, UnitTiming] | None = None) -> dict:
    """Models vs simulation per step and pipeline mode.

    ``cycles``, ``gemm_cycles``, ``vec_cycles``, ``overlap_cycles`` compare the as-built
    model (:func:`top_step` on :func:`sim_memory` with the file's pause probability) with
    the top's counters, each ``{"predicted", "simulated", "ratio"}``; ``instructions``
    the program length.  ``planned`` holds the planned-architecture model (:func:`evaluate`
    with the simulated config on :func:`sim_platform`; matrix + quantizer against
    GEMM_CYCLES, vector + attention against VEC_CYCLES) -- the design the RTL does not
    implement yet, so its ratios show the distance between the two, not a model error.
    ``timings`` default to :func:`unit_timings` of the config (planned model only).
    """
    m = sim.model
    mem = sim_memory(sim.pause)
    rows = []
    for r in sim.runs:
        cfg = sim.config.replace(coarse_pipeline=r.coarse, fine_pipeline=r.fine)
        top = top_step(m.C, m.heads, 4 * m.C, m.depth, sum(m.tokens[:r.step]), m.tokens[r.step],
                       sim.rows, cfg, mem)
        t = timings if timings is not None else unit_timings(cfg)
        st = evaluate(m, cfg, sim_platform(), t).steps[r.step]
        u = st.unit_cycles
        planned = {"cycles": st.cycles, "gemm_cycles": u["matrix"] + u["quant"],
                   "vec_cycles": u["vector"] + u["attention"]}
        row = {"step": r.step, "tokens": r.tokens, "coarse": r.coarse, "fine": r.fine,
               "instructions": {"predicted": top.instructions, "simulated": r.instructions}}

        def pair(pred, simv):
            return {"predicted": pred, "simulated": simv,
                    "ratio": (pred / simv) if simv else None}
        for k in ("cycles", "gemm_cycles", "vec_cycles", "overlap_cycles"):
            row[k] = pair(getattr(top, k), getattr(r, k))
        row["planned"] = {k: pair(v, getattr(r, k)) for k, v in planned.items()}
        rows.append(row)
    return {"source": sim.source, "model": m.name, "rows_per_step": sim.rows,
            "config": {k: getattr(sim.config, k) for k in ("preset", "tm", "tn", "lanes",
                                                           "quant_lanes", "vector_lanes",
                                                           "attn_macs", "dram_efficiency")},
            "memory": {"name": mem.name, "read_latency": mem.read_latency,
                       "write_latency": mem.write_latency, "beat_rate": mem.beat_rate,
                       "pause": sim.pause},
            "platform": "sim_axi128 (16 bytes/cycle)", "steps": rows}


def compare_markdown(cmp: dict) -> str:
    c = cmp["config"]
    mem = cmp["memory"]
    L = [f"# Throughput models vs simulated cycles ({cmp['model']})", "",
         f"Source: {cmp['source']}; config {c['preset']} tm={c['tm']} tn={c['tn']} "
         f"lanes={c['lanes']} quant_lanes={c['quant_lanes']}, {cmp['rows_per_step']} rows "
         f"(CFG); memory {mem['name']} (beat rate {mem['beat_rate']:g}/cycle).", "",
         "As-built model (the RTL top's engines and dispatch, `perf.top_step`) / simulated, "
         "and the planned-architecture model (`perf.evaluate`) / simulated:", "",
         "| step | tokens | coarse | fine | instructions | CYCLES | GEMM_CYCLES | VEC_CYCLES | "
         "OVERLAP_CYCLES | planned model CYCLES |", "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(d):
        if d["simulated"] is None:
            return f"{d['predicted']:,} / n/a"
        if d["ratio"] is None:
            return f"{d['predicted']:,} / {d['simulated']:,}"
        return f"{d['predicted']:,} / {d['simulated']:,} ({d['ratio']:.2f}x)"
    for s in cmp["steps"]:
        ins = s["instructions"]
        L.append(f"| {s['step']} | {s['tokens']} | {int(s['coarse'])} | {int(s['fine'])} | "
                 f"{ins['predicted']} / "
                 f"{ins['simulated'] if ins['simulated'] is not None else 'n/a'}"
                 f" | {cell(s['cycles'])} | {cell(s['gemm_cycles'])} | {cell(s['vec_cycles'])} | "
                 f"{cell(s['overlap_cycles'])} | {cell(s['planned']['cycles'])} |")
    return "\n".join(L) + "\n"


# ===================================================================== the as-built top
# The planned-architecture model above counts the units the design aims at.  The model
# below counts what the RTL top that exists (fpqvar_hw/engines/top.py: Controller + MatrixEngine
# + VectorEngine, docs/top.md) does with the program fpqvar_hw/host/compiler.py emits: one
# instruction at a time per engine, in program order, sync flags as compiler.assign_sync
# sets them, every engine's cycles from its micro-architecture (matrix.py, vecengine.py,
# vector.py) and one 128-bit AXI master (16 bytes per cycle at most).  Nothing here is
# fitted to simulated cycle counts; tests/test_perf_vs_sim.py states how close it gets.

#: ``matrix.py`` ``_Datapath``: ``_gate(m, fine, 2, "bias")`` -- with the fine pipeline
#: off the drain emits one result per 2 cycles (the FP32 bias add's latency).
MATRIX_BIAS_GATE = 2
#: ``matrix.py`` drain FSM: BIAS, the cycle after the last BIAS_READ word, WAIT, FLUSH
#: -- cycles per feature block on top of the emitted results and the bias words.
MATRIX_DRAIN_STATES = 4
#: ``vecengine.py`` / ``matrix.py`` command FSMs: IDLE -> CHECK -> RUN (2 cycles before
#: the first request) and the FLUSH / finished cycle at the end.
ENGINE_START, ENGINE_END = 2, 1
#: Cycles between a read client's request and the AR beat, plus the response FIFO and the
#: element/loader register: the ReadArbiter registers AR (axi.py "Latency: AR valid one cycle
#: after req"), the engines register the request (1) and the response word (1).
READ_PATH = 3
#: Same for a write: write-request register, WriteArbiter AW/W register, the merge register.
WRITE_PATH = 3


@dataclass(frozen=True)
class TopMemory:
    """The memory behind the top's AXI4 master, as the as-built model sees it.

    ``read_latency``: cycles from an AR handshake to its first R beat;
    ``write_latency``: from the W beat to its B response; ``beat_rate``: R beats per
    cycle the memory sustains (<= 1, the 128-bit bus); ``shared``: all read clients share
    one R channel (the top) -- ``False`` models the per-port test memory of the engine
    testbenches (``sim/dma_model.py``), where each client gets its own beat per cycle.
    """

    name: str
    read_latency: float
    write_latency: float
    beat_rate: float
    source: str
    shared: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.beat_rate <= 1:
            raise ValueError(f"{self.name}: beat_rate must be in (0, 1], got {self.beat_rate}")
        if self.read_latency < 0 or self.write_latency < 0:
            raise ValueError(f"{self.name}: latencies must be >= 0")


#: cocotbext-axi ``AxiRam`` (the co-simulation's DRAM): a channel item is taken at one
#: clock edge by its coroutine and answered on a later edge; 2 cycles AR -> R and 3 cycles
#: W -> B are the model's reading of that (not measured separately).
AXIRAM_READ_LATENCY = 2
AXIRAM_WRITE_LATENCY = 3
#: VCK190 PL -> NoC -> DDR4 read latency in PL cycles (matrix.py docstring: "~100-200-cycle
#: latency of the VCK190 NoC + DDR4"); a design assumption, no board measurement.
VCK190_READ_LATENCY = 150


def sim_memory(pause: float = 0.0) -> TopMemory:
    """The co-simulation's ``AxiRam``; ``pause`` = the testbench's per-channel, per-cycle
    pause probability (``sim/tb_top.py``): beats come at ``1 - pause`` per cycle and every
    handshake waits ``1 / (1 - pause)`` times as long."""
    if not 0 <= pause < 1:
        raise ValueError(f"pause must be in [0, 1), got {pause}")
    s = 1 / (1 - pause)
    return TopMemory(f"AxiRam (pause {pause:g})" if pause else "AxiRam",
                     AXIRAM_READ_LATENCY * s, AXIRAM_WRITE_LATENCY * s, 1 - pause,
                     "cocotbext-axi AxiRam in the top's co-simulation")


def platform_memory(platform: Platform, clock_mhz: float, efficiency: float = 1.0) -> TopMemory:
    """The platform's DRAM behind the 128-bit master: at most one beat per cycle, fewer
    when ``dram_gbps x efficiency`` is below 16 bytes per cycle."""
    rate = min(1.0, platform.dram_gbps * 1e9 * efficiency / (clock_mhz * 1e6) / 16)
    return TopMemory(platform.name, VCK190_READ_LATENCY, VCK190_READ_LATENCY, rate,
                     f"{platform.dram} ({platform.dram_gbps} GB/s x {efficiency}); read latency "
                     f"{VCK190_READ_LATENCY} cycles assumed")


@dataclass(frozen=True)
class TopBuild:
    """Build parameters and unit latencies of the as-built top (:func:`top_build`).

    ``lat`` holds cycle counts read from the RTL classes: matrix ``cvt`` (FP32->FP16
    converter), ``had`` / ``quant`` (``LATENCY_AFTER_LAST``), ``dot`` (one array cell);
    vector ``gap_<SUBOP>`` (the unit latency that spaces elements with the fine pipeline
    off), ``tree`` (pairwise tree over ``P`` partials), ``drain`` (``PartialSums.DRAIN``),
    ``mul``, the row units' phase latencies (``ln_mean``, ``ln_var``, ``ln_rsqrt``,
    ``ln_out``, ``sm_exp``, ``sm_recip``, ``l2_sq``, ``l2_gain``; those after a reduction
    include the tree), ``gelu``, ``resid``,
    ``cvt16``, ``fdot`` (pause after a row) and ``fdot_tree``.
    """

    tm: int
    tn: int
    lanes: int
    quant_lanes: int
    C: int
    P: int
    code_words: int          # bus words per (beat, feature) weight entry
    scale_words: int         # bus words per (feature block, group) of FP16 scales
    max_outstanding: int     # bursts in flight on the read arbiter
    vec_rd_depth: int        # words in flight per vector-engine operand
    mat_fifo_words: int      # words per matrix-engine read FIFO
    max_burst: int
    lat: Mapping[str, int]


_TOP_BUILDS: dict = {}      # lanes -> unit latencies


def top_build(config: AcceleratorConfig, C: int) -> TopBuild:
    """The as-built top for ``config`` and model width ``C``: every latency is read from the
    unit classes (:func:`_top_latencies`; needs Amaranth).  The engine defaults are those
    :class:`fpqvar_hw.engines.top.Accelerator` builds (``max_outstanding``, ``rd_depth``,
    ``fifo_words``)."""
    import inspect

    from ..engines import axi

    from .. import isa
    from ..engines.matrix import MatrixEngine
    from ..engines.top import Accelerator
    from ..engines.vecengine import VectorEngine
    if C < 1 or C % isa.VEC_P:
        raise ValueError(f"C must be a positive multiple of {isa.VEC_P}, got {C}")
    acc = inspect.signature(Accelerator.__init__).parameters["max_outstanding"].default
    mat = inspect.signature(MatrixEngine.__init__).parameters["fifo_words"].default
    rd = inspect.signature(VectorEngine.__init__).parameters["rd_depth"].default
    return TopBuild(tm=config.tm, tn=config.tn, lanes=config.lanes, quant_lanes=config.quant_lanes,
                    C=C, P=isa.VEC_P,
                    code_words=isa.gemm_code_word_bytes(config.lanes, 4) // axi.DATA_BYTES,
                    scale_words=-(-2 * config.tn // axi.DATA_BYTES), max_outstanding=acc,
                    vec_rd_depth=rd, mat_fifo_words=mat, max_burst=axi.MAX_BURST,
                    lat=_top_latencies(config.lanes))


def _top_latencies(lanes: int) -> dict[str, int]:
    """:attr:`TopBuild.lat` for an array of ``lanes`` (cached: building the units takes
    seconds).  No latency depends on the model width."""
    if lanes in _TOP_BUILDS:
        return _TOP_BUILDS[lanes]
    from amaranth.hdl import Module, Signal

    from .. import isa
    from ..units.dot import GroupDot
    from ..units.fpu import FP16, FP32, FPOp, FPUnit
    from ..units.hadamard import LATENCY_AFTER_LAST as HAD
    from ..units.multiplier import MulPair
    from ..units.quantizer import LATENCY_AFTER_LAST as QUANT
    from ..engines.vecengine import VectorEngine
    from ..units.vector import Dataflow, FDot, PartialSums, Val, fp32_bits

    P = isa.VEC_P
    cell = GroupDot(pair=MulPair.E2M1_E2M1, dfq=True, dual=True, group_size=128, lanes=lanes)
    cell._MustUse__silence = True
    cvt = FPUnit(FPOp.CONVERT, FP32, dst=FP16, lanes=4)
    cvt._MustUse__silence = True
    # the row units' phase latencies, scheduled exactly as vector.py schedules them
    df = Dataflow(Module(), 1, dry=True)

    def x():
        return Val(Signal(32), 0)
    level = [x() for _ in range(P)]
    while len(level) > 1:
        level = [df.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
    tree = level[0].stage
    tv = Val(Signal(32), tree)
    held = Val(Signal(32), -1)
    vec = VectorEngine(C=P, max_kv=64, P=P)      # unit latencies do not depend on C
    vec._MustUse__silence = True
    units = vec._units()          # the sub-op -> unit map the engine elaborates
    for u in units.values():
        u._MustUse__silence = True
    lnmod_out = df.add(df.mul(df.mul(x(), held), df.add(x(), df.const(0))), x())
    gain = df.mul(df.rsqrt(df.max(tv, df.const(fp32_bits(1e-24)))),
                  df.exp(df.min(x(), df.const(fp32_bits(math.log(100.0))))))
    lat = {
        "cvt": cvt.latency, "had": HAD, "quant": QUANT, "dot": cell.latency,
        **{f"gap_{s.name}": u.latency for s, u in units.items()},
        "tree": tree, "drain": PartialSums.DRAIN, "mul": FPUnit(FPOp.MUL, FP32).latency,
        "ln_mean": df.mul(tv, df.const(0)).stage,
        "ln_var": df.mul(df.sub(x(), held), df.sub(x(), held)).stage,
        "ln_rsqrt": df.rsqrt(df.add(df.mul(tv, df.const(0)), df.const(0))).stage,
        "ln_out": lnmod_out.stage,
        "sm_exp": df.exp(df.sub(x(), held)).stage,
        "sm_recip": df.reciprocal(tv).stage,
        "l2_sq": df.mul(x(), x()).stage,
        "l2_gain": gain.stage,
        "gelu": units[isa.VecSubop.GELU].latency, "resid": units[isa.VecSubop.RESID].latency,
        "cvt16": units[isa.VecSubop.CVT16].latency, "fdot": FDot(P=P).latency,
        "fdot_tree": tree,
    }
    _TOP_BUILDS[lanes] = lat
    return lat


@dataclass(frozen=True)
class EngineCost:
    """One instruction on its engine: ``cycles`` its ``busy`` is high when it runs alone,
    ``words`` 16-byte words it reads over the shared R channel."""

    cycles: int
    words: int


def gemm_cost(M: int, K: int, N: int, *, had: bool, bias: bool, fine: bool, b: TopBuild,
              mem: TopMemory) -> EngineCost:
    """Cycles of one GEMM instruction on the MatrixEngine (``matrix.py``).

    Row blocks of ``tm`` rows are the outer loop and every row block re-reads all the
    weights.  Per row block and feature block of ``tn`` outputs the array takes
    ``K/lanes`` beats of ``tn * code_words`` weight words (one word per cycle from the
    weight FIFO, or one beat per ``dot`` latency with the fine pipeline off); the drain
    needs ``rows * tn`` results (x ``MATRIX_BIAS_GATE`` with the fine pipeline off) + its
    bias words + ``MATRIX_DRAIN_STATES``.  The loader (1 bus word = 4 FP32 per cycle,
    or one item per unit latency with the fine pipeline off) fills the first row block
    before the array starts and the next one meanwhile (double bank).  The R channel
    carries weights, scales, bias and activations: ``words / beat_rate`` cycles at least.
    """
    if min(M, K, N) < 1 or K % 128:
        raise ValueError(f"GEMM M={M}, K={K}, N={N}: M, N >= 1 and K a multiple of 128")
    L = b.lat
    KB, G = K // b.lanes, K // 128
    NB, B = -(-N // b.tn), -(-M // b.tm)
    tw = b.tn * b.code_words
    bw = -(-4 * b.tn // 16) if bias else 0
    fb_words = KB * tw + G * b.scale_words + bw
    act_words = M * K // 4 + (1 if had else 0)
    words = B * NB * fb_words + act_words
    if mem.shared:
        t_bus = words / mem.beat_rate
    else:   # one beat per cycle per client: the weight stream is the largest
        t_bus = B * NB * KB * tw / mem.beat_rate
    beat = max(tw, 1 if fine else L["dot"])
    if fine:
        load_row = K / 4
    else:
        load_row = max(K / 4 * L["cvt"], K / b.quant_lanes * L["quant"],
                       K / b.quant_lanes * L["had"] if had else 0)
    rd = mem.read_latency + READ_PATH
    first = rd + min(M, b.tm) * load_row + L["cvt"] + (L["had"] if had else 0) + L["quant"]
    compute = 0.0
    for blk in range(B):
        rows = min(b.tm, M - blk * b.tm)
        drain = rows * b.tn * (1 if fine else MATRIX_BIAS_GATE) + bw + MATRIX_DRAIN_STATES
        nxt = min(b.tm, M - (blk + 1) * b.tm) * load_row if blk + 1 < B else 0
        compute += max(NB * max(KB * beat, drain), nxt)
    last_rows = M - (B - 1) * b.tm
    tail = L["dot"] + last_rows * b.tn + 2 + mem.write_latency + WRITE_PATH
    cyc = ENGINE_START + max(first + compute, rd + t_bus) + tail + ENGINE_END
    return EngineCost(int(round(cyc)), int(words))


def _operand_words(n: tuple[int, int, int, int], s0: int, s1: int, esize: int, *,
                   once_per_row: bool = False) -> tuple[int, int]:
    """(words, single-beat words) an operand of a VEC instruction reads (``vecengine.py``:
    a word is read when the element's 16-byte word differs from the operand's last one;
    ``0 < s0 <= 16`` rows are fetched as bursts, any other stride one beat per word)."""
    rows = n[1] * n[2] * n[3]
    if once_per_row:                 # L2NT's B: read at i0 = 0, walks s1 across rows
        w = max(1, -(-n[1] * abs(s1) // 16)) * n[2] * n[3] if s1 else n[2] * n[3]
        return w, w
    if s0 == 0:
        per_row, single = 1, 0
    elif 0 < s0 <= 16:
        per_row, single = -(-n[0] * s0 // 16), 0
    else:
        per_row, single = n[0], n[0]
    if s1 == 0 and per_row == 1:     # every row re-reads the same word: the cache keeps it
        return n[2] * n[3], (n[2] * n[3] if single else 0)
    return rows * per_row, rows * single


def vec_cost(subop: int, n: tuple[int, int, int, int], operands: Mapping[str, tuple[int, int, int]],
             *, fine: bool, b: TopBuild, mem: TopMemory) -> EngineCost:
    """Cycles of one VEC instruction on the VectorEngine (``vecengine.py``, ``vector.py``).

    ``operands``: the read operands the sub-op uses, ``name -> (s0, s1, element bytes)``.
    One element per cycle enters the sub-op's unit (one per ``gap_<SUBOP>`` cycles with
    the fine pipeline off); the row units add their phases per row: LNMOD ``3*n0`` +
    mean, variance and rsqrt latencies; L2NT ``2*n0`` + square and gain; SOFTMAX
    ``3*n0`` + exp and reciprocal; FDOT ``n0`` + its per-row pause.  Reads: bus words at
    ``beat_rate``; single-beat streams are limited to ``max_outstanding`` bursts in flight
    per read latency.
    """
    from ..isa import VecSubop as V
    if any(v < 1 for v in n):
        raise ValueError(f"VEC loop counts must be >= 1, got {n}")
    L = b.lat
    s = V(subop)
    n0, rows = n[0], n[1] * n[2] * n[3]
    g = 1 if fine else max(1, L[f"gap_{s.name}"])
    d = L["drain"]
    if s is V.LNMOD:
        unit = rows * (n0 * g + 2 * n0 + (L["ln_mean"] + d + 1)
                       + (L["ln_var"] + d + L["ln_rsqrt"] + 1)) + L["ln_out"]
    elif s is V.L2NT:
        unit = rows * (n0 * g + n0 + L["l2_sq"] + d + L["l2_gain"] + 1) + L["mul"]
    elif s is V.SOFTMAX:
        unit = rows * (n0 * g + 2 * n0 + (L["sm_exp"] + d + 1) + (L["sm_recip"] + 1)) \
            + L["mul"]
    elif s is V.FDOT:
        unit = rows * max(n0 * g, n0 + L["fdot"]) + L["fdot_tree"]
    else:
        unit = rows * n0 * g + {V.RESID: L["resid"], V.GELU: L["gelu"], V.CVT16: L["cvt16"]}[s]
    words = single = 0
    for name, (s0, s1, esize) in operands.items():
        w, sb = _operand_words(n, s0, s1, esize, once_per_row=(s is V.L2NT and name == "b"))
        words += w
        single += sb
    t_bus = words / mem.beat_rate
    rd = mem.read_latency + READ_PATH
    t_single = single * (rd + 1) / min(b.max_outstanding, b.vec_rd_depth)
    cyc = ENGINE_START + rd + 1 + max(unit, t_bus, t_single) + mem.write_latency + WRITE_PATH \
        + ENGINE_END
    return EngineCost(int(round(cyc)), int(words))


# ---------------------------------------------------------- the step program, shape level
@dataclass(frozen=True)
class TopInstr:
    """One instruction of a step program, reduced to what its timing depends on.

    ``gemm`` = ``(M, K, N, had, bias)``; ``vec`` = ``(subop, (n0, n1, n2, n3), operands)``
    with ``operands`` = ``((name, s0, s1, element bytes), ...)`` of the read operands;
    ``sync`` as :func:`fpqvar_hw.host.compiler.assign_sync` sets it.
    """

    opcode: int
    name: str
    gemm: tuple | None = None
    vec: tuple | None = None
    sync: bool = False


@dataclass(frozen=True)
class _Spans:
    """Footprint of a :class:`TopInstr`: ``(buffer, lo, hi)`` ranges of token rows (or KV
    positions) it reads and writes; :meth:`conflicts` is RAW/WAR/WAW like
    :meth:`fpqvar_hw.isa.Footprint.conflicts`."""

    reads: tuple
    writes: tuple

    @staticmethod
    def _overlap(a, b) -> bool:
        return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)

    def conflicts(self, other: "_Spans") -> bool:
        return (self._overlap(self.reads, other.writes) or self._overlap(self.writes, other.reads)
                or self._overlap(self.writes, other.writes))


@functools.lru_cache(maxsize=64)
def top_step_program(C: int, H: int, hidden: int, blocks: int, L_start: int, L: int, rows: int,
                     tile: int, *, coarse: bool = True,
                     max_tiles: int | None = None) -> tuple[TopInstr, ...]:
    """The instructions :meth:`fpqvar_hw.host.compiler.Compiler.instructions` emits for a step
    (without the HALT), at the shape level: per block the phases A, B, C over token tiles
    of ``tile`` tokens of one row, each phase's tile chains skewed by one stage
    (``compiler._skew``), sync flags from :func:`fpqvar_hw.host.compiler.assign_sync` on
    token-range footprints (cached).  ``tests/test_perf_vs_sim.py`` checks it against the
    compiler.  ``max_tiles``: only the first that many tiles of each phase (the KV length
    stays ``L_start + L``), for timing a sample of a long step."""
    from ..host.compiler import assign_sync
    from ..isa import Opcode, VecSubop as V

    G, Vc = int(Opcode.GEMM), int(Opcode.VEC)
    Lk, D = L_start + L, 64
    F = 4
    ln_ops = (("a", F, C * F, F), ("b", F, 0, F), ("c", F, 0, F))        # x rows, ada rows
    res_ops = (("a", F, C * F, F), ("b", F, 0, F), ("c", F, C * F, F))   # x, gamma, y

    def vec(name, subop, n, ops, reads, writes):
        return (TopInstr(Vc, name, vec=(int(subop), n, ops)), _Spans(reads, writes))

    def gemm(name, M, K, N, had, reads, writes):
        return (TopInstr(G, name, gemm=(M, K, N, had, True)), _Spans(reads, writes))

    def phase_a(r, l0, l1):
        n, t = l1 - l0, r * L + l0
        T = (t, t + n)
        kv = (L_start + l0, L_start + l1)
        return [vec("LNMOD", V.LNMOD, (C, n, 1, 1), ln_ops, (("x",) + T,), (("h",) + T,)),
                gemm("qkv", n, C, 3 * C, True, (("h",) + T,), (("q",) + T, ("k",) + T, ("v",) + T)),
                vec("L2NT q", V.L2NT, (D, H, n, 1), (("a", F, D * F, F), ("b", 0, F, F)),
                    (("q",) + T,), (("q",) + T,)),
                vec("L2NT k", V.L2NT, (D, H, n, 1), (("a", F, D * F, F), ("b", 0, 0, F)),
                    (("k",) + T,), (("k",) + T,)),
                vec("CVT16 k", V.CVT16, (D, H, n, 1), (("a", F, D * F, F),),
                    (("k",) + T,), ((f"kc{r}",) + kv,)),
                vec("CVT16 v", V.CVT16, (D, H, n, 1), (("a", F, D * F, F),),
                    (("v",) + T,), ((f"vc{r}",) + kv,))]

    def phase_b(r, l0, l1):
        n, t = l1 - l0, r * L + l0
        T = (t, t + n)
        return [vec("FDOT qk", V.FDOT, (D, Lk, n, H), (("a", F, 0, F), ("b", 2, D * 2, 2)),
                    (("q",) + T, (f"kc{r}", 0, Lk)), (("s",) + T,)),
                vec("SOFTMAX", V.SOFTMAX, (Lk, H, n, 1), (("a", F, Lk * F, F),),
                    (("s",) + T,), (("s",) + T,)),
                vec("FDOT pv", V.FDOT, (Lk, D, n, H), (("a", F, 0, F), ("b", D * 2, 2, 2)),
                    (("s",) + T, (f"vc{r}", 0, Lk)), (("o",) + T,)),
                gemm("proj", n, C, C, False, (("o",) + T,), (("y",) + T,)),
                vec("RESID", V.RESID, (C, n, 1, 1), res_ops, (("x",) + T, ("y",) + T),
                    (("x",) + T,))]

    def phase_c(r, l0, l1):
        n, t = l1 - l0, r * L + l0
        T = (t, t + n)
        return [vec("LNMOD", V.LNMOD, (C, n, 1, 1), ln_ops, (("x",) + T,), (("h",) + T,)),
                gemm("fc1", n, C, hidden, True, (("h",) + T,), (("f",) + T,)),
                vec("GELU", V.GELU, (hidden, n, 1, 1), (("a", F, hidden * F, F),),
                    (("f",) + T,), (("f",) + T,)),
                gemm("fc2", n, hidden, C, False, (("f",) + T,), (("y",) + T,)),
                vec("RESID", V.RESID, (C, n, 1, 1), res_ops, (("x",) + T, ("y",) + T),
                    (("x",) + T,))]

    tiles = [(r, l0, min(L, l0 + tile)) for r in range(rows) for l0 in range(0, L, tile)]
    tiles = tiles[:max_tiles]
    prog = []
    for _ in range(blocks):
        for phase in (phase_a, phase_b, phase_c):
            chains = [phase(*tl) for tl in tiles]
            keyed = sorted(((t + s, t), item) for t, ch in enumerate(chains)
                           for s, item in enumerate(ch))
            prog += [item for _, item in keyed]
    return tuple(assign_sync([i for i, _ in prog], [f for _, f in prog], coarse=coarse))


@dataclass(frozen=True)
class TopRun:
    """Counters of one simulated-by-model step (the top's CYCLES, GEMM_CYCLES, VEC_CYCLES,
    OVERLAP_CYCLES) and the instruction count including the HALT."""

    instructions: int
    cycles: int
    gemm_cycles: int
    vec_cycles: int
    overlap_cycles: int


def _bus_speeds(run: dict, mem: TopMemory) -> dict:
    """Max-min fair share of the R channel between the running instructions: each one's
    speed (1 = as fast as alone) when their combined word rate exceeds ``beat_rate``."""
    act = [e for e, r in run.items() if r is not None]
    if len(act) < 2 or not mem.shared:
        return {e: 1.0 for e in act}
    u = {e: run[e][1] for e in act}
    cap = mem.beat_rate
    if sum(u.values()) <= cap:
        return {e: 1.0 for e in act}
    lo, hi = sorted(act, key=u.get)
    if u[lo] <= cap / 2:
        return {lo: 1.0, hi: (cap - u[lo]) / u[hi]}
    return {e: cap / 2 / u[e] for e in act}


def schedule_top(instrs: list[TopInstr], costs: list[EngineCost], *, coarse: bool,
                 mem: TopMemory) -> TopRun:
    """Run ``instrs`` through the controller's dispatch rules (``control.py``): in program
    order, one instruction per engine, the next instruction fetched (one 8-beat burst)
    while the current one waits, dispatch when its engine is idle -- both idle with
    ``sync`` or with the coarse pipeline off --, at most one dispatch per 2 cycles
    (``settle``), an engine busy from the cycle after it takes ``cmd``; the HALT ends the
    run when both are idle.  Two instructions running at once share the R channel
    (:func:`_bus_speeds`)."""
    from ..engines.control import INSTR_BEATS

    GEMM, VEC = 1, 2
    run: dict = {GEMM: None, VEC: None}          # [remaining cycles alone, words per cycle]
    busy = {GEMM: 0.0, VEC: 0.0}
    state = {"t": 1.0, "overlap": 0.0}           # start -> RUN: 1 cycle
    fetch = 1 + mem.read_latency + INSTR_BEATS / mem.beat_rate + 1

    def step_to(T: float | None) -> None:
        """Advance to the first completion, or to ``T`` if that comes first."""
        act = [e for e in run if run[e] is not None]
        if not act:
            state["t"] = max(state["t"], T)
            return
        sp = _bus_speeds(run, mem)
        left = {e: run[e][0] / sp[e] for e in act}
        step = min(left.values())
        if T is not None and T - state["t"] < step:
            step = max(0.0, T - state["t"])
        if len(act) == 2:
            state["overlap"] += step
        for e in act:
            busy[e] += step
            if left[e] - step <= 1e-6:      # completes now
                run[e] = None
            else:
                run[e][0] -= step * sp[e]
        state["t"] += step

    def advance(T: float) -> None:
        while state["t"] < T:
            step_to(T)

    def until_idle(engines) -> None:
        while any(run[e] is not None for e in engines):
            step_to(None)

    valid = state["t"] + fetch + 1
    last = -math.inf
    for ins, cost in zip(instrs, costs):
        advance(max(valid, last + 2))
        until_idle((GEMM, VEC) if (ins.sync or not coarse) else (ins.opcode,))
        d = state["t"]
        advance(d + 1)
        run[ins.opcode] = [float(cost.cycles), cost.words / max(1, cost.cycles)]
        valid = max(valid + fetch, d + 1) + 1
        last = d
    until_idle((GEMM, VEC))
    end = max(state["t"], valid) + 1
    return TopRun(len(instrs) + 1, int(round(end)), int(round(busy[GEMM])), int(round(busy[VEC])),
                  int(round(state["overlap"])))


def instr_cost(ins: TopInstr, *, fine: bool, b: TopBuild, mem: TopMemory) -> EngineCost:
    """:func:`gemm_cost` or :func:`vec_cost` of one :class:`TopInstr`."""
    if ins.gemm is not None:
        M, K, N, had, bias = ins.gemm
        return gemm_cost(M, K, N, had=had, bias=bias, fine=fine, b=b, mem=mem)
    subop, n, ops = ins.vec
    return vec_cost(subop, n, {o[0]: o[1:] for o in ops}, fine=fine, b=b, mem=mem)


#: Steps whose program is longer than this are timed on one block and scaled by the depth
#: (blocks are separated by a dependency on x, so they barely overlap), and a block with more
#: than ``_MAX_SCHEDULED / 16`` tiles on its first tiles, scaled by the tile count (every
#: tile of a step has the same shape; the pipeline is in steady state after a few).
_MAX_SCHEDULED = 2_048


def top_step(C: int, H: int, hidden: int, depth: int, L_start: int, L: int, rows: int,
             config: AcceleratorConfig, mem: TopMemory, *, tile: int | None = None) -> TopRun:
    """Model of one scale step on the as-built top: every instruction's engine cycles
    (:func:`instr_cost`) scheduled by :func:`schedule_top` with the config's pipeline
    switches; ``tile`` tokens per tile (default ``config.tm``, the compiler's default)."""
    b = top_build(config, C)
    tile = tile or config.tm
    tiles = rows * -(-L // tile)
    blocks = depth if depth * 16 * tiles <= _MAX_SCHEDULED else 1
    sampled = min(tiles, max(1, _MAX_SCHEDULED // 16))
    if sampled < tiles and L % tile and L >= tile:     # a sample of full-size tiles only
        sampled = min(sampled, L // tile)
    prog = top_step_program(C, H, hidden, blocks, L_start, L, rows, tile,
                            coarse=config.coarse_pipeline,
                            max_tiles=sampled if sampled < tiles else None)
    cache: dict = {}
    costs = []
    for ins in prog:
        key = (ins.gemm, ins.vec)
        if key not in cache:
            cache[key] = instr_cost(ins, fine=config.fine_pipeline, b=b, mem=mem)
        costs.append(cache[key])
    r = schedule_top(prog, costs, coarse=config.coarse_pipeline, mem=mem)
    if blocks == depth and sampled == tiles:
        return r
    k = depth / blocks * tiles / sampled
    return TopRun(depth * 16 * tiles + 1, int(r.cycles * k), int(r.gemm_cycles * k),
                  int(r.vec_cycles * k), int(r.overlap_cycles * k))


@dataclass(frozen=True)
class TopModelResult:
    """The as-built top running every scale step of ``model`` (one batch)."""

    model: str
    batch: int
    clock_mhz: float
    memory: TopMemory
    steps: tuple[TopRun, ...]

    @property
    def cycles(self) -> int:
        return sum(s.cycles for s in self.steps)

    @property
    def images_per_s(self) -> float:
        """Transformer-only throughput (accelerator time only), as :class:`ModelResult`."""
        return self.batch / (self.cycles / (self.clock_mhz * 1e6))

    def as_dict(self) -> dict:
        return {"model": self.model, "batch": self.batch, "clock_mhz": self.clock_mhz,
                "memory": self.memory.name, "read_latency": self.memory.read_latency,
                "beat_rate": self.memory.beat_rate, "cycles": self.cycles,
                "images_per_s": self.images_per_s,
                "steps": [dataclasses.asdict(s) for s in self.steps]}


def evaluate_top(model: ModelSpec | str, config: AcceleratorConfig, platform: Platform,
                 memory: TopMemory | None = None) -> TopModelResult:
    """The as-built top (``fpqvar_hw/engines/top.py``, built for ``model``'s width) on ``platform``:
    :func:`top_step` for every scale step, rows = batch x 2 (CFG), tiles of ``config.tm``
    tokens, ``memory`` default :func:`platform_memory` at the config's DRAM efficiency.
    Only the w4a4 formats exist in the RTL; other presets are timed as if they did."""
    if isinstance(model, str):
        try:
            model = MODELS[model] if model != DIGITS.name else DIGITS
        except KeyError:
            raise ValueError(f"unknown model {model!r}; models: {', '.join(MODELS)}") from None
    clock = config.clock_mhz or platform.clock_mhz
    mem = memory or platform_memory(platform, clock, config.dram_efficiency)
    rows = config.batch * (2 if config.cfg else 1)
    steps = tuple(top_step(model.C, model.heads, 4 * model.C, model.depth, Ls, n, rows, config, mem)
                  for Ls, n in zip((k - n for k, n in zip(model.kv_lengths, model.tokens)),
                                   model.tokens))
    return TopModelResult(model.name, config.batch, clock, mem, steps)


def top_breakdown(model: ModelSpec | str, config: AcceleratorConfig, memory: TopMemory) -> dict:
    """Share of the engines' standalone cycles per instruction kind (``TopInstr.name``) over
    all steps of ``model``: what limits the as-built top."""
    if isinstance(model, str):
        model = MODELS[model]
    b = top_build(config, model.C)
    rows = config.batch * (2 if config.cfg else 1)
    tot: dict[str, float] = {}
    for Ls_end, n in zip(model.kv_lengths, model.tokens):
        tiles = rows * -(-n // config.tm)
        k = min(tiles, max(1, _MAX_SCHEDULED // 16))
        prog = top_step_program(model.C, model.heads, 4 * model.C, 1, Ls_end - n, n, rows,
                                config.tm, coarse=config.coarse_pipeline,
                                max_tiles=k if k < tiles else None)
        cache: dict = {}
        for ins in prog:
            key = (ins.gemm, ins.vec)
            if key not in cache:
                cache[key] = instr_cost(ins, fine=config.fine_pipeline, b=b, mem=memory).cycles
            tot[ins.name] = tot.get(ins.name, 0.0) + cache[key] * tiles / k
    total = sum(tot.values())
    return {k: v / total for k, v in sorted(tot.items(), key=lambda kv: -kv[1])}


def top_report(config: AcceleratorConfig, platform: Platform) -> dict:
    """JSON-ready as-built throughput for every model, with both pipeline levels as
    configured and with each one off."""
    out = {}
    for name, m in MODELS.items():
        if m.C % 128:
            continue
        r = evaluate_top(m, config, platform)
        ab = {}
        for label, coarse, fine in (("no_coarse", False, True), ("no_fine", True, False)):
            c = config.replace(coarse_pipeline=coarse, fine_pipeline=fine)
            ab[label] = evaluate_top(m, c, platform, r.memory).images_per_s
        share = top_breakdown(m, config, r.memory)
        out[name] = {**r.as_dict(), "pipeline_ablation": ab,
                     "cycle_share": {k: round(v, 4) for k, v in share.items()}}
    mem = platform_memory(platform, config.clock_mhz or platform.clock_mhz, config.dram_efficiency)
    return {"memory": {"name": mem.name, "read_latency": mem.read_latency,
                       "beat_rate": mem.beat_rate, "source": mem.source},
            "models": out}


# ------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m fpqvar_hw.flow.perf [--sim-cycles JSON ...] [--platform P] [--preset NAME]``:
    the as-built and planned models against simulated cycle files (markdown), then the
    as-built top's images/s next to the planned architecture's for every model."""
    import argparse
    import sys

    from ..config import get_preset
    from .platform import get_platform, platform_names
    p = argparse.ArgumentParser(prog="python -m fpqvar_hw.flow.perf", description=main.__doc__)
    p.add_argument("--sim-cycles", nargs="*", default=[], metavar="JSON",
                   help="cycle files of the top's simulation (driver or tb_top schema)")
    p.add_argument("--platform", default="vck190", choices=platform_names())
    p.add_argument("--preset", default="w4a4")
    p.add_argument("--no-models", action="store_true",
                   help="only the simulated-cycle comparisons")
    a = p.parse_args(argv)
    try:
        sims = [load_sim_cycles(f) for f in a.sim_cycles]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for s in sims:
        print(compare_markdown(compare_to_sim(s)))
    if not a.no_models:
        config, platform = get_preset(a.preset), get_platform(a.platform)
        rep = top_report(config, platform)
        print(f"# As-built top vs planned architecture: {a.preset} on {platform.name}\n")
        print(f"Memory: {rep['memory']['source']}, {rep['memory']['beat_rate']:g} beat/cycle.\n")
        print("| model | planned images/s | as-built images/s | as-built, coarse off | "
              "as-built, fine off |\n|---|---|---|---|---|")
        for name, t in rep["models"].items():
            plan = evaluate(name, config, platform).images_per_s
            ab = t["pipeline_ablation"]
            print(f"| {name} | {_fmt_rate(plan)} | {_fmt_rate(t['images_per_s'])} | "
                  f"{_fmt_rate(ab['no_coarse'])} | {_fmt_rate(ab['no_fine'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
