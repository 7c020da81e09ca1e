"""One frozen quantization config and the named presets of the FPQVAR paper.

A :class:`QuantConfig` describes everything the PTQ pipeline does to a VAR
transformer: element formats and scale granularity of the weights and input
activations of the four block linears (``attn.mat_qkv``, ``attn.proj``,
``ffn.fc1``, ``ffn.fc2``), Dual Format Quantization of the FC2 input, the
Group-wise Hadamard Transformation of the QKV/FC1 inputs, GALT smoothing, the
MixedFormat per-layer search and KV-cache quantization.

Presets (``PRESETS``, :func:`get_preset`) carry the paper's names::

    fp16               nothing quantized (reference)
    int4-rtn           W4A4 int4, per group 128 (weights) / per token-group 128
    int6-rtn           W6A6 int6, per output channel / per token
    fp4-baseline       W4A4 e2m1fn, per group 128 / per token-group 128
    fp4-mixedformat    W4A4, per layer one of e1m2fn/e2m1fn/e3m0fn (GEMM-output MSE)
    fp4-afpq           fp4-baseline + AFPQ (separate +/- e2m1fn scales) on the FC2 input
    fp4-dfq            fp4-baseline + DFQ on the FC2 input          (ablation "+DFQ")
    fp4-dfq-ght        fp4-dfq + GHT on the QKV/FC1 inputs          (ablation "+GHT")
    fp4-fpqvar         fp4-dfq-ght + GALT                           (ablation "+GALT")
    fp4-fpqvar-kv6     fp4-fpqvar + KV cache e2m3fn per (token, head) group 64
    fp6-baseline       W6A6 e2m3fn, per output channel / per token
    fp6-dfq, fp6-dfq-ght, fp6-fpqvar, fp6-fpqvar-kv6   (same ladder for FP6)
    mxfp4              OCP MXFP4 interop: e2m1fn elements, e8m0 scales, block 32
                       (W and A), no GHT/DFQ/GALT (the accelerator preset "mxfp4" too)

Any field can be overridden: ``get_preset("fp4-fpqvar", galt_epochs=5)``
returns a new frozen config (``dataclasses.replace``) and validates it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..formats import get_format

__all__ = ["QuantConfig", "PRESETS", "get_preset", "preset_names", "QUANTIZED_LAYERS"]

#: Names (relative to a block) of the linears the PTQ pipeline replaces.
QUANTIZED_LAYERS: tuple[str, ...] = ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2")

_GRANULARITIES = ("group", "token", "channel", "tensor")
_SCALE_FORMATS = ("fp16", "fp32", "e8m0", "e4m3")
_DFQ_VARIANTS = ("fp4", "fp6", "afpq")
_MIXED_CANDIDATES = ("e1m2fn", "e2m1fn", "e3m0fn")


@dataclass(frozen=True)
class QuantConfig:
    """Frozen description of one PTQ configuration (see module docstring).

    Weights are quantized offline with ``w_granularity`` ("group": groups of
    ``w_group_size`` consecutive input channels of each output row;
    "channel": one scale per output row; "tensor"). Activations are quantized
    dynamically per token ("group": groups of ``a_group_size`` channels of one
    token; "token": whole hidden dimension; "tensor"). ``w_fmt=None`` /
    ``a_fmt=None`` leave that side in floating point.

    ``dfq`` selects the FC2-input quantizer: ``None`` (plain ``a_fmt``),
    ``"fp4"`` (e1m2fn negatives / e2m1fn positives), ``"fp6"`` (int5 negatives
    / e2m3fn positives) or ``"afpq"`` (e2m1fn both sides, separate scales).
    ``ght`` applies the group-wise Hadamard of width ``ght_group`` (signs drawn
    with ``ght_seed``) to the QKV and FC1 inputs online, weights fused offline.
    ``galt`` learns per-block smoothing vectors for the QKV and FC1 inputs
    (AdamW, ``galt_lr``, ``galt_epochs``), folded into weights and adaLN.
    ``mixedformat`` picks per layer one element format among
    ``mixed_candidates`` (used for weights and activations of that layer) by
    GEMM-output MSE on calibration data. ``kv_fmt`` quantizes cached K and V
    per (token, head) group of ``kv_group_size`` channels. ``tie``: "even"
    (project default) or "reference" (the official FPQVAR CUDA kernel's rounding:
    every tie toward +inf, so negative ties go toward zero).
    """

    name: str = "custom"
    w_fmt: str | None = None
    w_granularity: str = "group"
    w_group_size: int = 128
    a_fmt: str | None = None
    a_granularity: str = "group"
    a_group_size: int = 128
    scale_format: str = "fp16"
    tie: str = "even"
    dfq: str | None = None
    ght: bool = False
    ght_group: int = 128
    ght_seed: int = 42
    galt: bool = False
    galt_epochs: int = 50
    galt_lr: float = 0.01
    galt_batch_tokens: int = 4096
    mixedformat: bool = False
    mixed_candidates: tuple[str, ...] = _MIXED_CANDIDATES
    kv_fmt: str | None = None
    kv_group_size: int = 64
    kv_scale_format: str = "fp16"

    def __post_init__(self) -> None:
        for field_name in ("w_fmt", "a_fmt", "kv_fmt"):
            fmt = getattr(self, field_name)
            if fmt is not None:
                f = get_format(fmt)  # raises with the list of known formats
                if f.kind == "scale":
                    raise ValueError(f"{field_name}={fmt!r} is a scale-only format; "
                                     "use an element format such as 'e2m1fn' or 'int4'")
        for field_name, allowed in (("w_granularity", ("group", "channel", "tensor")),
                                    ("a_granularity", ("group", "token", "tensor"))):
            v = getattr(self, field_name)
            if v not in allowed:
                raise ValueError(f"{field_name} must be one of {allowed}, got {v!r}")
        for field_name in ("scale_format", "kv_scale_format"):
            if getattr(self, field_name) not in _SCALE_FORMATS:
                raise ValueError(f"{field_name} must be one of {_SCALE_FORMATS}, "
                                 f"got {getattr(self, field_name)!r}")
        if self.tie not in ("even", "reference"):
            raise ValueError("tie must be 'even' (the project's rounding rule) or 'reference' "
                             "(ties toward +inf, as the official FPQVAR CUDA kernel), "
                             f"got {self.tie!r}")
        if self.dfq is not None and self.dfq not in _DFQ_VARIANTS:
            raise ValueError(f"dfq must be None or one of {_DFQ_VARIANTS}, got {self.dfq!r}")
        if self.dfq is not None and self.a_fmt is None:
            raise ValueError("dfq needs quantized activations (a_fmt is None)")
        for field_name in ("w_group_size", "a_group_size", "ght_group", "kv_group_size",
                           "galt_epochs", "galt_batch_tokens"):
            v = getattr(self, field_name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{field_name} must be a positive int, got {v!r}")
        if self.ght and self.ght_group & (self.ght_group - 1):
            raise ValueError(f"ght_group must be a power of two, got {self.ght_group}")
        if not self.galt_lr > 0:
            raise ValueError(f"galt_lr must be > 0, got {self.galt_lr}")
        if self.mixedformat:
            if self.w_fmt is None or self.a_fmt is None:
                raise ValueError("mixedformat needs quantized weights and activations")
            if not self.mixed_candidates:
                raise ValueError("mixed_candidates must name at least one format")
            for f in self.mixed_candidates:
                get_format(f)
        if self.galt and (self.w_fmt is None and self.a_fmt is None):
            raise ValueError("galt needs quantized weights or activations")
        object.__setattr__(self, "mixed_candidates", tuple(self.mixed_candidates))

    # ------------------------------------------------------------------ helpers
    @property
    def quantizes_linears(self) -> bool:
        """True when the four block linears are replaced by :class:`QuantLinear`."""
        return self.w_fmt is not None or self.a_fmt is not None or self.ght

    def replace(self, **changes: Any) -> "QuantConfig":
        """A validated copy with ``changes`` applied (unknown fields raise)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig field(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["mixed_candidates"] = list(self.mixed_candidates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig field(s) {unknown}")
        d = dict(d)
        if "mixed_candidates" in d:
            d["mixed_candidates"] = tuple(d["mixed_candidates"])
        return cls(**d)


def _ladder(prefix: str, base: QuantConfig, dfq: str) -> dict[str, QuantConfig]:
    """The ablation ladder baseline -> +DFQ -> +GHT -> +GALT (-> +KV6)."""
    out = {f"{prefix}-baseline": base.replace(name=f"{prefix}-baseline")}
    out[f"{prefix}-dfq"] = base.replace(name=f"{prefix}-dfq", dfq=dfq)
    out[f"{prefix}-dfq-ght"] = out[f"{prefix}-dfq"].replace(name=f"{prefix}-dfq-ght", ght=True)
    out[f"{prefix}-fpqvar"] = out[f"{prefix}-dfq-ght"].replace(name=f"{prefix}-fpqvar", galt=True)
    out[f"{prefix}-fpqvar-kv6"] = out[f"{prefix}-fpqvar"].replace(
        name=f"{prefix}-fpqvar-kv6", kv_fmt="e2m3fn")
    return out


def _build_presets() -> dict[str, QuantConfig]:
    w4a4 = dict(w_granularity="group", w_group_size=128, a_granularity="group", a_group_size=128)
    w6a6 = dict(w_granularity="channel", a_granularity="token")
    fp4 = QuantConfig(w_fmt="e2m1fn", a_fmt="e2m1fn", **w4a4)
    fp6 = QuantConfig(w_fmt="e2m3fn", a_fmt="e2m3fn", **w6a6)
    presets = {
        "fp16": QuantConfig(name="fp16"),
        "int4-rtn": QuantConfig(name="int4-rtn", w_fmt="int4", a_fmt="int4", **w4a4),
        "int6-rtn": QuantConfig(name="int6-rtn", w_fmt="int6", a_fmt="int6", **w6a6),
    }
    presets.update(_ladder("fp4", fp4, "fp4"))
    presets["fp4-mixedformat"] = fp4.replace(name="fp4-mixedformat", mixedformat=True)
    presets["fp4-afpq"] = fp4.replace(name="fp4-afpq", dfq="afpq")
    presets.update(_ladder("fp6", fp6, "fp6"))
    presets["mxfp4"] = QuantConfig(name="mxfp4", w_fmt="e2m1fn", a_fmt="e2m1fn",
                                   w_granularity="group", w_group_size=32,
                                   a_granularity="group", a_group_size=32, scale_format="e8m0")
    return presets


#: All named presets (frozen configs), keyed by name.
PRESETS: dict[str, QuantConfig] = _build_presets()


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides: Any) -> QuantConfig:
    """The preset ``name`` with optional field ``overrides``.

    Raises ``ValueError`` naming the known presets for an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
