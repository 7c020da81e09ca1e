"""Quantized replacement for the four block linears of VAR.

:class:`QuantLinear` computes ``y = Q_a(T(x)) @ Q_w(W')^T + b`` where

* ``T(x) = ((x * s) H_G)`` - optional online smoothing vector ``s`` (only when
  GALT could not be folded into adaLN, e.g. shared adaLN) and the optional
  group-wise Hadamard ``H_G`` (fast Walsh-Hadamard, ``fpqvar_quant.ght``);
* ``W'`` is the float weight in the transformed domain, ``(W / s) H_G``,
  computed offline in float64 and stored in the model dtype;
* ``Q_w`` is applied **offline**: codes and scales are cached
  (:meth:`QuantLinear.refresh_weight_cache`) together with the dequantized
  weight used by the forward pass;
* ``Q_a`` is dynamic fake quantization (per token / per token-group scale
  computed at run time from the current input, straight-through gradient).
  FC2 inputs use DFQ / AFPQ when the config says so.

Orthogonality of ``H_G`` makes ``T`` exact in floating point arithmetic up to
rounding: with quantization off the layer equals the original ``nn.Linear``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..dfq import DFQSpec, dfq_fake_quant
from ..ght import ght, random_signs
from ..quantize import QuantSpec, fake_quant, quantize
from .config import QuantConfig

__all__ = ["QuantLinear", "LayerQuant", "weight_spec", "act_spec", "act_fake_quant",
           "ght_signs", "transform_weight", "ROLES"]

#: Layer roles, keyed by the block-relative module name.
ROLES: dict[str, str] = {"attn.mat_qkv": "qkv", "attn.proj": "proj",
                         "ffn.fc1": "fc1", "ffn.fc2": "fc2"}
#: Roles whose inputs get GHT / GALT.
GHT_ROLES = ("qkv", "fc1")


@dataclass(frozen=True)
class LayerQuant:
    """Resolved per-layer quantization: formats after MixedFormat and flags."""

    role: str
    w_fmt: str | None
    a_fmt: str | None
    dfq: str | None
    ght: bool

    def to_dict(self) -> dict:
        return {"role": self.role, "w_fmt": self.w_fmt, "a_fmt": self.a_fmt,
                "dfq": self.dfq, "ght": self.ght}

    @classmethod
    def for_role(cls, cfg: QuantConfig, role: str, fmt: str | None = None) -> "LayerQuant":
        """The layer config of ``role`` under ``cfg``; ``fmt`` overrides both
        element formats (MixedFormat's per-layer choice)."""
        if role not in ROLES.values():
            raise ValueError(f"role must be one of {sorted(set(ROLES.values()))}, got {role!r}")
        w = fmt if (fmt is not None and cfg.w_fmt is not None) else cfg.w_fmt
        a = fmt if (fmt is not None and cfg.a_fmt is not None) else cfg.a_fmt
        return cls(role=role, w_fmt=w, a_fmt=a,
                   dfq=cfg.dfq if role == "fc2" else None,
                   ght=cfg.ght and role in GHT_ROLES)


def weight_spec(cfg: QuantConfig, fmt: str) -> QuantSpec:
    """QuantSpec of a weight matrix ``[out, in]`` (groups along ``in``)."""
    if cfg.w_granularity == "group":
        return QuantSpec(fmt, granularity="group", group_size=cfg.w_group_size,
                         scale_format=cfg.scale_format, tie=cfg.tie)
    if cfg.w_granularity == "channel":  # one scale per output row
        return QuantSpec(fmt, granularity="channel", scale_format=cfg.scale_format, tie=cfg.tie)
    return QuantSpec(fmt, granularity="tensor", scale_format=cfg.scale_format, tie=cfg.tie)


def act_spec(cfg: QuantConfig, fmt: str) -> QuantSpec:
    """QuantSpec of an activation ``[..., tokens, C]`` (scales per token)."""
    if cfg.a_granularity == "group":
        return QuantSpec(fmt, granularity="group", group_size=cfg.a_group_size,
                         scale_format=cfg.scale_format, tie=cfg.tie)
    return QuantSpec(fmt, granularity=cfg.a_granularity, scale_format=cfg.scale_format,
                     tie=cfg.tie)


def act_fake_quant(x: torch.Tensor, cfg: QuantConfig, lq: LayerQuant) -> torch.Tensor:
    """Dynamic fake quantization of a layer input (STE), DFQ/AFPQ for FC2."""
    if lq.a_fmt is None:
        return x
    if lq.dfq is not None:
        group = cfg.a_group_size if cfg.a_granularity == "group" else None
        return dfq_fake_quant(x, DFQSpec(variant=lq.dfq, group_size=group,
                                         scale_format=cfg.scale_format, tie=cfg.tie))
    return fake_quant(x, act_spec(cfg, lq.a_fmt))


def ght_signs(cfg: QuantConfig) -> torch.Tensor:
    """The shared random +-1 sign vector D of ``H = Had D / sqrt(n)``."""
    return torch.as_tensor(random_signs(cfg.ght_group, seed=cfg.ght_seed))


def transform_weight(weight: torch.Tensor, *, smooth: torch.Tensor | None,
                     signs: torch.Tensor | None, group: int) -> torch.Tensor:
    """``(W / s) H_G`` computed in float64 (rows of ``W`` are input-channel vectors,
    so ``W H_G`` is the row-wise GHT). Returns float64."""
    w = weight.detach().to(torch.float64)
    if smooth is not None:
        w = w / smooth.detach().to(torch.float64)
    if signs is not None:
        w = ght(w, signs.to(torch.float64), group=group)
    return w


class QuantLinear(nn.Module):
    """Drop-in replacement for a block ``nn.Linear`` (see module docstring).

    Buffers: ``weight`` (transformed float weight ``(W/s)H_G``, model dtype),
    ``bias`` (or None), ``ght_signs`` (+-1, when GHT is on), ``smooth`` (online
    smoothing vector, when not folded). Non-persistent caches: ``w_dequant``
    (used in ``forward``), ``w_codes`` (uint8) and ``w_scales`` (float32).
    Call :meth:`refresh_weight_cache` after changing ``weight``.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool, cfg: QuantConfig,
                 lq: LayerQuant, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if lq.ght and in_features % cfg.ght_group:
            raise ValueError(f"GHT group {cfg.ght_group} must divide in_features={in_features}; "
                             "VAR needs an even depth (C = 64*depth, multiple of 128)")
        self.in_features, self.out_features = in_features, out_features
        self.cfg, self.lq = cfg, lq
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=dtype,
                                                   device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device)
                             if bias else None)
        self.register_buffer("ght_signs", ght_signs(cfg).to(dtype=dtype, device=device)
                             if lq.ght else None)
        self.register_buffer("smooth", None)
        self.register_buffer("w_dequant", None, persistent=False)
        self.register_buffer("w_codes", None, persistent=False)
        self.register_buffer("w_scales", None, persistent=False)

    # -------------------------------------------------------------- building
    @classmethod
    def from_linear(cls, linear: nn.Linear, cfg: QuantConfig, lq: LayerQuant, *,
                    smooth: torch.Tensor | None = None, online_smooth: bool = False
                    ) -> "QuantLinear":
        """Quantized copy of ``linear``. ``smooth`` (GALT vector) divides the
        weight columns; with ``online_smooth`` the layer also multiplies its
        input by it (otherwise the caller has folded ``x * s`` upstream)."""
        w = linear.weight
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                cfg=cfg, lq=lq, dtype=w.dtype, device=w.device)
        q.set_float_weight(w, smooth=smooth)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach())
        if smooth is not None and online_smooth:
            q.smooth = smooth.detach().to(dtype=w.dtype, device=w.device).clone()
        return q

    @torch.no_grad()
    def set_float_weight(self, weight: torch.Tensor, *, smooth: torch.Tensor | None = None) -> None:
        """Store ``(weight / smooth) H_G`` (float64 math) and refresh the caches."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight shape {tuple(weight.shape)} != "
                             f"{(self.out_features, self.in_features)}")
        w = transform_weight(weight, smooth=smooth, signs=self.ght_signs, group=self.cfg.ght_group)
        self.weight.copy_(w.to(self.weight.dtype))
        self.refresh_weight_cache()

    @torch.no_grad()
    def refresh_weight_cache(self) -> None:
        """Quantize ``weight`` offline: cache codes, scales and the dequantized weight."""
        if self.lq.w_fmt is None:
            self.w_dequant, self.w_codes, self.w_scales = self.weight, None, None
            return
        r = quantize(self.weight, weight_spec(self.cfg, self.lq.w_fmt))
        self.w_codes = torch.as_tensor(r.codes)
        self.w_scales = torch.as_tensor(r.scales)
        self.w_dequant = torch.as_tensor(r.dequant).to(self.weight.dtype)

    def set_formats(self, lq: LayerQuant) -> None:
        """Switch element formats (MixedFormat search) and re-quantize the weight."""
        if lq.ght != self.lq.ght:
            raise ValueError("set_formats cannot toggle GHT on an existing layer")
        self.lq = lq
        self.refresh_weight_cache()

    def _apply(self, fn, recurse=True):  # keep the caches in step with .to()/.double()
        out = super()._apply(fn, recurse)
        if self.lq.w_fmt is None:
            self.w_dequant = self.weight
        return out

    # --------------------------------------------------------------- forward
    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(x * s) H_G`` (identity parts skipped)."""
        if self.smooth is not None:
            x = x * self.smooth
        if self.ght_signs is not None:
            x = ght(x, self.ght_signs.to(x.dtype), group=self.cfg.ght_group)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w_dequant is None:
            self.refresh_weight_cache()
        xq = act_fake_quant(self.transform_input(x), self.cfg, self.lq)
        w = self.w_dequant.to(xq.dtype)
        return F.linear(xq, w, None if self.bias is None else self.bias.to(xq.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"role={self.lq.role}, w={self.lq.w_fmt}, a={self.lq.a_fmt}, dfq={self.lq.dfq}, "
                f"ght={self.lq.ght}, online_smooth={self.smooth is not None}")
