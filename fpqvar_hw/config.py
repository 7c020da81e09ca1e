"""Accelerator configuration: one frozen dataclass, one instance per preset.

``build.py --preset NAME --param key=value`` starts from :data:`PRESETS` and
applies overrides through :func:`apply_overrides`, which parses each value with
the field's declared type and re-runs the dataclass validation, so an invalid
combination fails with a message that names the field and the allowed values.

Element formats are per layer (``qkv``, ``proj``, ``fc1``, ``fc2``) for the
input activation (``*_act``) and the weight (``*_weight``).  ``fc2_act`` may be
a dual format (DFQ): ``dfq4`` = e1m2fn negatives + e2m1fn positives, two
scales, still 4-bit codes; ``dfq6`` = 5-bit integer negatives (scale max/31) +
e2m3fn positives (``docs/numerics.md`` section 3, fpqvar-algorithm.md section 4).
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from dataclasses import dataclass, fields

from fpqvar_quant.formats import DFQ_FORMATS, get_format

__all__ = ["ElementFormat", "ScaleFormat", "Rotation", "AcceleratorConfig", "PRESETS",
           "preset_names", "get_preset", "apply_overrides", "parse_param", "LAYERS",
           "PTQ_TO_ACCELERATOR", "accelerator_config", "SMALL_ARRAYS"]

#: The four quantized linears of a VAR block, in dataflow order.
LAYERS = ("qkv", "proj", "fc1", "fc2")


class ElementFormat(str, enum.Enum):
    """Element formats the matrix engine can consume (names = fpqvar_quant registry names)."""

    E2M1 = "e2m1fn"
    E1M2 = "e1m2fn"
    E3M0 = "e3m0fn"
    E2M3 = "e2m3fn"
    E3M2 = "e3m2fn"
    INT4 = "int4"
    INT6 = "int6"
    INT8 = "int8"
    DFQ4 = "dfq4"   # e1m2fn (x <= 0) + e2m1fn (x > 0), two scales, 4-bit codes
    DFQ6 = "dfq6"   # 5-bit uniform (x <= 0, scale max/31) + e2m3fn (x > 0), 6-bit codes

    @property
    def bits(self) -> int:
        """Code width in bits (sign included), from ``fpqvar_quant.formats``."""
        if self.is_dual:
            return DFQ_FORMATS[self.value].bits
        return get_format(self.value).bits

    @property
    def is_dual(self) -> bool:
        return self in (ElementFormat.DFQ4, ElementFormat.DFQ6)

    @property
    def is_integer(self) -> bool:
        return self.value.startswith("int")

    @property
    def registry_names(self) -> tuple[str, ...]:
        """fpqvar_quant format names behind this element format (two for DFQ: neg, pos)."""
        if self.is_dual:
            d = DFQ_FORMATS[self.value]
            return (d.neg, d.pos)
        return (self.value,)

    def __str__(self) -> str:
        return self.value


class ScaleFormat(str, enum.Enum):
    """Per-group scale format: FP16 (project default) or OCP-MX power of two."""

    FP16 = "fp16"
    E8M0 = "e8m0"

    @property
    def bits(self) -> int:
        return 16 if self is ScaleFormat.FP16 else 8

    def __str__(self) -> str:
        return self.value


class Rotation(str, enum.Enum):
    """Online rotation before the QKV and FC1 quantizers."""

    GHT = "ght"     # group-wise Hadamard (128-groups), fast Walsh-Hadamard unit
    NONE = "none"

    def __str__(self) -> str:
        return self.value


class KVFormat(str, enum.Enum):
    """KV-cache element format in DRAM."""

    FP16 = "fp16"
    E2M3 = "e2m3fn"   # KV6: per (token, head) group of 64, FP16 scale

    @property
    def bits_per_element(self) -> float:
        return 16.0 if self is KVFormat.FP16 else 6.0 + 16.0 / 64.0

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class AcceleratorConfig:
    """Everything that shapes the generated accelerator and its performance model.

    Formats
        ``qkv_act`` ... ``fc2_weight``: element formats of each quantized GEMM.
        ``group_size``: elements per quantization group (one scale each) along
        the reduction dimension; must divide 1024 (C = 64*depth is a multiple of 128
        for even depths) and be a multiple of ``lanes``.
        ``scale_format``: FP16 or e8m0 scales.  ``rotation``: GHT or none.
        ``kv_format``: KV cache in DRAM.
    Array
        ``tm`` x ``tn`` group dot-product units (``tm`` token rows, ``tn`` output
        columns); each consumes ``lanes`` element pairs per cycle.  ``row_sets``: sets of
        ``tm`` rows the matrix engine holds at once and runs through the array in turn, each
        weight group replayed for every set, so one weight pass serves ``gemm_rows = tm x
        row_sets`` rows (a power of two; the compiler's default tile).  ``quant_lanes``:
        elements per cycle of the quantizer/Hadamard path; ``vector_lanes``: FP32
        lanes of the vector unit; ``attn_macs``: FP multiply-accumulates per cycle of
        the attention unit the throughput model plans.  ``att_t`` x ``att_n``: MAC lanes
        of the attention array the RTL builds (the vector engine's
        ``AttentionArray``: ``att_t`` A rows x ``att_n`` B rows per tile, powers of two;
        every B row is read once per A tile, so 32 x 4 reads K and V half as often as
        16 x 8 on the same 128 lanes; a tile's results leave through two drains of one
        per cycle (``AttentionArray.drain_cycles``), so q.K, rows of 64, is bound by them
        above 164 lanes; as-built d16 images/s at 300 MHz, ``asbuilt.evaluate_top``:
        16 x 4 0.326, 16 x 8 0.387, 32 x 4 0.401, 32 x 8 0.419, 64 x 2 0.397; with four
        drains 64 x 4 0.446, but built it took 729,880 LUT (81.1 %, 1,232 per lane), over
        the 70 % bound, like 32 x 8).  ``sm_lanes``: lanes of the vector engine's softmax
        array (``SoftmaxArray``: a whole Softmax unit per lane, rows in parallel; 0 = none,
        SOFTMAX then runs on the element path at one element per cycle).
    Memory
        ``act_buffer_kib``: on-chip quantized-activation buffer (URAM); when the
        rows of a scale step do not fit, weights are streamed more than once.
        ``dram_efficiency``: fraction of peak DRAM bandwidth sustained by long bursts.
    Run
        ``clock_mhz``: ``None`` = the platform's clock.  ``batch``: images per run;
        ``cfg``: classifier-free guidance doubles the rows.  ``coarse_pipeline``
        (level 1: unit overlap + weight prefetch) and ``fine_pipeline`` (level 2: II=1
        inside units) switch the two pipeline levels for what-if measurements.
    """

    preset: str
    qkv_act: ElementFormat
    qkv_weight: ElementFormat
    proj_act: ElementFormat
    proj_weight: ElementFormat
    fc1_act: ElementFormat
    fc1_weight: ElementFormat
    fc2_act: ElementFormat
    fc2_weight: ElementFormat
    group_size: int = 128
    scale_format: ScaleFormat = ScaleFormat.FP16
    rotation: Rotation = Rotation.GHT
    kv_format: KVFormat = KVFormat.FP16
    tm: int = 16
    tn: int = 8
    row_sets: int = 8
    lanes: int = 32
    quant_lanes: int = 32
    vector_lanes: int = 8
    attn_macs: int = 1024
    att_t: int = 32
    att_n: int = 4
    sm_lanes: int = 3
    act_buffer_kib: int = 4096
    dram_efficiency: float = 0.8
    clock_mhz: float | None = None
    batch: int = 1
    cfg: bool = True
    coarse_pipeline: bool = True
    fine_pipeline: bool = True

    def __post_init__(self) -> None:
        # Coerce strings into enums so PRESETS literals and overrides share one path.
        for f in fields(self):
            v = getattr(self, f.name)
            etype = _enum_type(f)
            if etype is not None and not isinstance(v, etype):
                object.__setattr__(self, f.name, _parse_enum(f.name, etype, v))
        if not self.preset:
            raise ValueError("preset name must not be empty")
        for layer in LAYERS:
            w = getattr(self, f"{layer}_weight")
            if w.is_dual:
                raise ValueError(f"{layer}_weight={w}: dual formats (DFQ) apply to activations "
                                 f"only; use a plain format for weights")
        for layer in ("qkv", "proj", "fc1"):
            a = getattr(self, f"{layer}_act")
            if a.is_dual:
                raise ValueError(f"{layer}_act={a}: DFQ is defined for the FC2 input (GELU output) "
                                 f"only; use it as fc2_act")
        for name in ("group_size", "tm", "tn", "row_sets", "lanes", "quant_lanes", "vector_lanes",
                     "attn_macs", "att_t", "att_n", "act_buffer_kib", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if 1024 % self.group_size:
            raise ValueError(f"group_size must divide 1024 (C = 64*depth is a multiple of 128), "
                             f"got {self.group_size}")
        if not isinstance(self.sm_lanes, int) or isinstance(self.sm_lanes, bool) \
                or self.sm_lanes not in (0, 2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"sm_lanes must be 0 (no softmax array) or 2 to 8, got "
                             f"{self.sm_lanes!r}")
        for name in ("att_t", "att_n", "row_sets"):
            v = getattr(self, name)
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        for name in ("lanes", "quant_lanes"):
            v = getattr(self, name)
            if v > self.group_size or self.group_size % v:
                raise ValueError(f"{name} must divide group_size={self.group_size}, got {v}")
        if self.rotation is Rotation.GHT and self.group_size > 128:
            raise ValueError(f"rotation=ght rotates 128-groups; group_size must be <= 128, "
                             f"got {self.group_size}")
        if self.scale_format is ScaleFormat.E8M0 and any(
                getattr(self, f"{l}_{k}").is_dual for l in LAYERS for k in ("act", "weight")):
            raise ValueError("scale_format=e8m0 cannot be combined with a DFQ format "
                             "(DFQ scales are FP16 by definition)")
        if not 0 < self.dram_efficiency <= 1:
            raise ValueError(f"dram_efficiency must be in (0, 1], got {self.dram_efficiency}")
        if self.clock_mhz is not None and not 10 <= self.clock_mhz <= 1000:
            raise ValueError(f"clock_mhz must be between 10 and 1000 (or unset), "
                             f"got {self.clock_mhz}")
        for name in ("cfg", "coarse_pipeline", "fine_pipeline"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    # ---------------------------------------------------------------- helpers
    def act_format(self, layer: str) -> ElementFormat:
        return getattr(self, f"{_check_layer(layer)}_act")

    def weight_format(self, layer: str) -> ElementFormat:
        return getattr(self, f"{_check_layer(layer)}_weight")

    @property
    def is_integer(self) -> bool:
        """True for the integer baselines (every quantized operand an integer format)."""
        return all(getattr(self, f"{l}_{k}").is_integer for l in LAYERS for k in ("act", "weight"))

    @property
    def dot_units(self) -> int:
        return self.tm * self.tn

    @property
    def gemm_rows(self) -> int:
        """Rows per weight pass of the matrix engine (``tm x row_sets``)."""
        return self.tm * self.row_sets

    def as_dict(self) -> dict:
        """JSON-ready dict (enums as their values), field order preserved."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
        return out

    def replace(self, **changes) -> "AcceleratorConfig":
        return dataclasses.replace(self, **changes)


def _check_layer(layer: str) -> str:
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; layers are {', '.join(LAYERS)}")
    return layer


@functools.cache
def _type_hints() -> dict[str, object]:
    return typing.get_type_hints(AcceleratorConfig)


def _field_type(f: dataclasses.Field) -> object:
    return _type_hints()[f.name]


def _enum_type(f: dataclasses.Field) -> type[enum.Enum] | None:
    t = _field_type(f)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return t
    return None


def _parse_enum(name: str, etype: type[enum.Enum], value: object) -> enum.Enum:
    try:
        return etype(value)
    except ValueError:
        allowed = ", ".join(m.value for m in etype)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


E = ElementFormat
#: One configuration per preset.  Array sizes are chosen so each preset fits the
#: VCK190 budget with the per-unit synthesis figures in docs/build.md.
PRESETS: dict[str, AcceleratorConfig] = {c.preset: c for c in [
    # FPQVAR default: e2m1 weights/activations, DFQ on the FC2 input, GHT.
    AcceleratorConfig(preset="w4a4", qkv_act=E.E2M1, qkv_weight=E.E2M1, proj_act=E.E2M1,
                      proj_weight=E.E2M1, fc1_act=E.E2M1, fc1_weight=E.E2M1, fc2_act=E.DFQ4,
                      fc2_weight=E.E2M1),
    # FP6: e2m3 everywhere, FP6 DFQ on the FC2 input.
    AcceleratorConfig(preset="w6a6", qkv_act=E.E2M3, qkv_weight=E.E2M3, proj_act=E.E2M3,
                      proj_weight=E.E2M3, fc1_act=E.E2M3, fc1_weight=E.E2M3, fc2_act=E.DFQ6,
                      fc2_weight=E.E2M3),
    # Integer baseline, LiteVAR scope: int4 with the FC2 input at int8.
    AcceleratorConfig(preset="int4", qkv_act=E.INT4, qkv_weight=E.INT4, proj_act=E.INT4,
                      proj_weight=E.INT4, fc1_act=E.INT4, fc1_weight=E.INT4, fc2_act=E.INT8,
                      fc2_weight=E.INT4, rotation=Rotation.NONE),
    # Integer baseline: int8 everywhere.
    # int8 multipliers map onto DSP slices (a 65,536-entry LUT table is not built), so
    # the array is DSP-bound: 8x4 cells x 32 lanes.
    AcceleratorConfig(preset="int8", qkv_act=E.INT8, qkv_weight=E.INT8, proj_act=E.INT8,
                      proj_weight=E.INT8, fc1_act=E.INT8, fc1_weight=E.INT8, fc2_act=E.INT8,
                      fc2_weight=E.INT8, rotation=Rotation.NONE, tm=8, tn=4),
    # OCP MXFP4 interop: e2m1 elements, e8m0 scales, block 32, no rotation (the PTQ
    # preset of the same name has no group Hadamard either: tests/test_preset_map.py).
    AcceleratorConfig(preset="mxfp4", qkv_act=E.E2M1, qkv_weight=E.E2M1, proj_act=E.E2M1,
                      proj_weight=E.E2M1, fc1_act=E.E2M1, fc1_weight=E.E2M1, fc2_act=E.E2M1,
                      fc2_weight=E.E2M1, group_size=32, scale_format=ScaleFormat.E8M0,
                      rotation=Rotation.NONE),
]}
del E


#: The small arrays of the simulated RTL top (``fpqvar_hw.host.backends.RTL_OVERRIDES``:
#: sim/test_tiny_image.py, sim/test_top.py, ``--backend rtl``) and of the ULX3S build's
#: default (``fpqvar_hw.flow.platform.ULX3S``): one configuration, so the top whose tiny
#: image the RTL simulation checks against the golden tokens is the ECP5 build's top.  A
#: 2 x 2 array of 32-lane dot cells in 2 row sets (a weight beat is tn = 2 bus words, so two
#: sets keep the array as busy as the weight stream), 8 quantizer / Hadamard lanes, a 2 x 4
#: attention array.
SMALL_ARRAYS: dict[str, int] = {"tm": 2, "tn": 2, "row_sets": 2, "lanes": 32, "quant_lanes": 8,
                                "att_t": 2, "att_n": 4, "sm_lanes": 2}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_preset(name: str) -> AcceleratorConfig:
    """The preset's config; ``ValueError`` lists the valid names."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


#: The one bridge between the two preset vocabularies: for a PTQ preset
#: (``fpqvar_quant/ptq/config.py``, what a quantized package was made with) the accelerator
#: preset and overrides that compute its packages bit for bit.  ``tests/test_preset_map.py``
#: checks every entry field by field against both tables (formats per layer, DFQ, group
#: size, scale format, GHT, KV cache).  PTQ presets missing here have no accelerator:
#: ``fp16`` (nothing quantized), ``int6-rtn`` and the ``fp6-*`` ladder (per-channel /
#: per-token scales; the array quantizes per group), ``*-baseline`` / ``*-dfq`` without
#: GHT on the FP presets (the w4a4 array always rotates the QKV/FC1 inputs; use
#: ``--param rotation=none`` explicitly), ``fp4-mixedformat`` (per-layer formats chosen by
#: calibration: build with ``--param`` per layer), ``fp4-afpq``.
PTQ_TO_ACCELERATOR: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "fp4-baseline": ("w4a4", (("fc2_act", "e2m1fn"), ("rotation", "none"))),
    "fp4-dfq": ("w4a4", (("rotation", "none"),)),
    "fp4-dfq-ght": ("w4a4", ()),
    "fp4-fpqvar": ("w4a4", ()),            # GALT is folded into the weights and adaLN
    "fp4-fpqvar-kv6": ("w4a4", (("kv_format", "e2m3fn"),)),
    "int4-rtn": ("int4", (("fc2_act", "int4"),)),
    "mxfp4": ("mxfp4", ()),
}


def accelerator_config(ptq_preset: str, **overrides) -> AcceleratorConfig:
    """The accelerator configuration that computes packages of ``ptq_preset`` exactly
    (:data:`PTQ_TO_ACCELERATOR`), with further field ``overrides`` (array sizes, pipeline
    switches; strings are parsed like ``--param``).  ``ValueError`` names the PTQ presets
    that have an accelerator."""
    try:
        hw, fixed = PTQ_TO_ACCELERATOR[ptq_preset]
    except (KeyError, TypeError):
        raise ValueError(f"no accelerator computes PTQ preset {ptq_preset!r}; presets with one: "
                         f"{', '.join(PTQ_TO_ACCELERATOR)}") from None
    cfg = apply_overrides(get_preset(hw), dict(fixed))
    return cfg.replace(**overrides) if overrides else cfg


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_value(name: str, t: object, text: str) -> object:
    """Parse ``text`` as a value of the declared field type ``t``."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if text.lower() in ("none", "auto", ""):
            return None
        return _parse_value(name, args[0], text)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return _parse_enum(name, t, text)
    if t is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{name} is a bool; use true/false (or 1/0, on/off), got {text!r}")
    if t is int:
        try:
            return int(text, 0)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {text!r}") from None
    if t is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {text!r}") from None
    if t is str:
        return text
    raise TypeError(f"field {name} has unsupported type {t!r}")  # pragma: no cover


def parse_param(text: str) -> tuple[str, str]:
    """Split one ``key=value`` override; ``ValueError`` if malformed."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--param expects key=value, got {text!r}")
    return key, value.strip()


def apply_overrides(config: AcceleratorConfig,
                    overrides: typing.Iterable[str] | typing.Mapping[str, str]) -> AcceleratorConfig:
    """Return ``config`` with ``key=value`` overrides applied and re-validated.

    Unknown keys raise ``ValueError`` listing the valid ones; ``preset`` cannot be
    overridden (choose another preset instead); a key given twice is an error.
    """
    items = list(overrides.items()) if isinstance(overrides, typing.Mapping) else \
        [parse_param(t) for t in overrides]
    valid = {f.name: f for f in fields(AcceleratorConfig) if f.name != "preset"}
    changes: dict[str, object] = {}
    for key, text in items:
        if key == "preset":
            raise ValueError("preset cannot be set with --param; use --preset")
        if key not in valid:
            raise ValueError(f"unknown parameter {key!r}; valid parameters: {', '.join(valid)}")
        if key in changes:
            raise ValueError(f"parameter {key!r} given twice")
        changes[key] = _parse_value(key, _field_type(valid[key]), str(text))
    return dataclasses.replace(config, **changes)
