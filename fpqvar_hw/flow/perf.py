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

This module is the *planned* architecture.  The as-built RTL top is modelled in
:mod:`fpqvar_hw.flow.asbuilt`, both models are compared with the simulated top in
:mod:`fpqvar_hw.flow.simcycles`, rendered in :mod:`fpqvar_hw.flow.reports`;
``python -m fpqvar_hw.flow.throughput`` prints them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ..config import LAYERS, AcceleratorConfig, Rotation
from .platform import Platform

__all__ = ["ModelSpec", "MODELS", "DIGITS", "UnitTiming", "unit_timings", "gemm_shapes",
           "StepResult", "ModelResult", "evaluate", "evaluate_all", "pipeline_ablation",
           "throughput_report", "PAPER_IMAGES_PER_S", "PAPER_FP_INT_RATIO", "weight_bytes",
           "peak_macs_per_cycle", "component_manifest"]


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


#: The shipped tiny digits VAR (fpqvar_quant/assets/digits): depth 2, C = 128 (2 heads of 64),
#: patch_nums (1, 2, 3, 4) -- the model the top's co-simulation and the driver's RTL backend run.
DIGITS = ModelSpec("digits", 2, (1, 2, 3, 4), 32)


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
    beat, default 1) and ``item_interval`` (fewest cycles between items, e.g. a dot cell's
    accumulator loop; default 0).  ``beats_per_item`` comes from the config
    (``group_size / lanes``); an item leaving as ``out_beats_per_item`` beats adds
    ``out_beats_per_item - 1`` cycles of latency to its last output beat.
    """
    lat = None
    if manifest is not None:
        lat = next((manifest[k] for k in ("latency", "latency_cycles")
                    if isinstance(manifest.get(k), int)), None)
    if lat is not None:
        ii = next((manifest[k] for k in ("ii", "initiation_interval") if k in manifest), 1)
        if not isinstance(ii, int) or ii < 1:
            raise ValueError(f"{name} manifest: ii must be a positive int, got {ii!r}")
        gap = manifest.get("item_interval", 0)
        if not isinstance(gap, int) or gap < 0:
            raise ValueError(f"{name} manifest: item_interval must be an int >= 0, got {gap!r}")
        src = manifest.get("latency_source", "manifest()")
        return UnitTiming(name, lat + (out_beats_per_item - 1) * ii,
                          max(ii * beats_per_item, gap), item, f"{name} unit ({src})")
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
    flop: float                     # all FLOPs: GEMMs + attention
    dram_bytes: float
    bound: str                      # "compute" or "memory" (which term dominates)
    gemm_flop: float = 0.0          # the matrix engine's share of ``flop``


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
                "gemm_gflop": s.gemm_flop / 1e9,
                "dram_mb": s.dram_bytes / 1e6, "bound": s.bound} for s in self.steps],
        }


def _block_terms(model: ModelSpec, tokens: int, kv_len: int, config: AcceleratorConfig,
                 t: Mapping[str, UnitTiming], bytes_per_cycle: float
                 ) -> tuple[dict[str, int], int, int, float, float, float]:
    """Cycles of each unit for one block, DRAM cycles, fill cycles, FLOP, DRAM bytes,
    GEMM FLOP."""
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
    gemm_flop = flop
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
    return units, dram_cyc, fill, flop, dram, gemm_flop


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
        units, dram_cyc, fill, flop, dram, gemm_flop = _block_terms(model, n, L, config, t, bpc)
        if config.coarse_pipeline:
            blk = max(max(units.values()), dram_cyc) + fill
        else:
            blk = sum(units.values()) + dram_cyc
        bound = "memory" if dram_cyc >= max(units.values()) else "compute"
        D = model.depth
        steps.append(StepResult(
            step=i, tokens=n, rows=config.batch * (2 if config.cfg else 1) * n, kv_len=L,
            unit_cycles={k: v * D for k, v in units.items()}, dram_cycles=dram_cyc * D,
            cycles=blk * D, flop=flop * D, dram_bytes=dram * D, bound=bound,
            gemm_flop=gemm_flop * D))
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
