"""KV-cache quantization ("KV6": e2m3fn per (token, head) group of 64; FP4 option).

:class:`KVCacheQuantizer` is installed as ``SelfAttention.kv_quantizer`` of
every block (see :mod:`fpqvar_quant.var.basic`): it fake-quantizes the new k
(after L2 normalisation) and v of each call, ``[B, H, l, head_dim]``, with one
dynamic scale per (token, head) group of ``group_size`` channels, before they
are cached, so every later scale attends over the quantized cache. It holds no
state, so state dicts (and strict checkpoint loading) are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..quantize import QuantSpec, fake_quant
from .config import QuantConfig

__all__ = ["KVCacheQuantizer", "install_kv_quantizer", "remove_kv_quantizer"]


class KVCacheQuantizer(nn.Module):
    """``(k, v) -> (Q(k), Q(v))`` with per-(token, head) group scales."""

    def __init__(self, fmt: str = "e2m3fn", group_size: int = 64, scale_format: str = "fp16",
                 tie: str = "even") -> None:
        super().__init__()
        self.fmt, self.group_size, self.scale_format = fmt, group_size, scale_format
        self.spec = QuantSpec(fmt, granularity="group", group_size=group_size,
                              scale_format=scale_format, tie=tie)

    @classmethod
    def from_config(cls, cfg: QuantConfig) -> "KVCacheQuantizer":
        if cfg.kv_fmt is None:
            raise ValueError(f"config {cfg.name!r} does not quantize the KV cache (kv_fmt=None)")
        return cls(cfg.kv_fmt, cfg.kv_group_size, cfg.kv_scale_format, cfg.tie)

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if k.shape[-1] % self.group_size:
            raise ValueError(f"KV group size {self.group_size} must divide head_dim {k.shape[-1]}")
        return fake_quant(k, self.spec), fake_quant(v, self.spec)

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, group_size={self.group_size}, scale_format={self.scale_format}"


def install_kv_quantizer(var: nn.Module, cfg: QuantConfig) -> int:
    """Set ``blocks[i].attn.kv_quantizer`` for every block; returns the count."""
    q = KVCacheQuantizer.from_config(cfg)
    for blk in var.blocks:
        blk.attn.kv_quantizer = q
    return len(var.blocks)


def remove_kv_quantizer(var: nn.Module) -> None:
    for blk in var.blocks:
        blk.attn.kv_quantizer = None
