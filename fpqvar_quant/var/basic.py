"""Building blocks of the VAR transformer (FoundationVision/VAR ``models/basic_var.py``).

Module and parameter names equal the official ones so that official checkpoints
load with ``strict=True``.  Only plain PyTorch is used: no flash-attention, no
xformers, no fused MLP / fused add-norm kernels.  The four GEMMs that FPQVAR
quantizes are plain :class:`torch.nn.Linear` submodules that are always called as
modules (never through their ``weight`` directly), so they can be swapped for
quantized linears:

* ``attn.mat_qkv`` (C -> 3C, no bias: the bias ``[q_bias, zero_k_bias, v_bias]``
  is added after the module call),
* ``attn.proj`` (C -> C),
* ``ffn.fc1`` (C -> hidden), ``ffn.fc2`` (hidden -> C).

The adaLN-modulated inputs of ``mat_qkv`` and ``fc1`` are exactly the inputs of
those modules, so an online transform (GHT) belongs inside the replacement linear.

KV-cache quantization hook: :attr:`SelfAttention.kv_quantizer`.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DropPath", "FFN", "SelfAttention", "AdaLNSelfAttn", "AdaLNBeforeHead", "KVQuantizer"]

#: ``(k, v) -> (k, v)``; both shaped ``[B, H, l, head_dim]`` (new tokens only).
KVQuantizer = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]


class DropPath(nn.Module):
    """Stochastic depth (per sample), identity in eval mode or with ``drop_prob == 0``."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if keep > 0.0 and self.scale_by_keep:
            mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class FFN(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))`` followed by dropout (identity when ``drop == 0``)."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, drop: float = 0.0) -> None:
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention of VAR with optional KV cache.

    ``qkv = mat_qkv(x) + [q_bias, zero_k_bias, v_bias]``; with ``attn_l2_norm``
    q and k are L2-normalised per head and q is multiplied by
    ``exp(min(scale_mul_1H11, ln 100))`` (softmax scale 1); otherwise the softmax
    scale is ``0.25 / sqrt(head_dim)``.

    KV cache: after :meth:`kv_caching(True)`, every call appends its (new) k and
    v to ``cached_k`` / ``cached_v`` (layout ``[B, H, L, head_dim]``) and attends
    over the whole cache without a mask (scale-causality holds because the
    queries are the newest scale).

    ``kv_quantizer``: optional ``(k, v) -> (k, v)`` callable applied to the new
    k (after L2 normalisation) and v of every call, before they are cached or
    used, in both the cached and the teacher-forced path, so both paths stay
    consistent.  If it is an ``nn.Module`` it becomes a submodule: it must not
    hold persistent state, otherwise official checkpoints no longer load strictly.

    ``use_sdpa``: compute softmax(q k^T * scale + bias) v with
    ``torch.nn.functional.scaled_dot_product_attention`` (what the official code
    does on a machine without flash-attn/xformers); ``False`` uses an explicit
    matmul/softmax/matmul with the same semantics (for instrumentation).
    """

    def __init__(self, block_idx: int, embed_dim: int = 768, num_heads: int = 12,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, attn_l2_norm: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        self.block_idx, self.num_heads, self.head_dim = block_idx, num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = float(attn_drop)
        self.use_sdpa = True
        self.kv_quantizer: Optional[KVQuantizer] = None
        self.caching = False
        self.cached_k: Optional[torch.Tensor] = None
        self.cached_v: Optional[torch.Tensor] = None

    def kv_caching(self, enable: bool) -> None:
        """Turn the KV cache on/off; both clear it."""
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def qkv_bias(self) -> torch.Tensor:
        """The ``3C`` bias added to ``mat_qkv``'s output (k part is the zero buffer)."""
        return torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))

    def forward(self, x: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``x``: [B, L, C]; ``attn_bias``: additive mask broadcastable to [B, H, L, L_kv] or None."""
        B, L, C = x.shape
        qkv = (self.mat_qkv(x) + self.qkv_bias()).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # each [B, H, L, c]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self.kv_quantizer is not None:
            k, v = self.kv_quantizer(k, v)
        if self.caching:
            if self.cached_k is None:
                self.cached_k, self.cached_v = k, v
            else:
                k = self.cached_k = torch.cat((self.cached_k, k), dim=2)
                v = self.cached_v = torch.cat((self.cached_v, v), dim=2)
        dropout_p = self.attn_drop if self.training else 0.0
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        if self.use_sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, scale=self.scale)
        else:
            att = q.mul(self.scale) @ k.transpose(-2, -1)
            if attn_bias is not None:
                att = att + attn_bias
            att = att.softmax(dim=-1)
            if dropout_p > 0:
                att = F.dropout(att, p=dropout_p)
            out = att @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, L, C)))

    def extra_repr(self) -> str:
        return f"attn_l2_norm={self.attn_l2_norm}, use_sdpa={self.use_sdpa}, kv_quantizer={self.kv_quantizer is not None}"


class AdaLNSelfAttn(nn.Module):
    """Transformer block with adaptive LayerNorm.

    ``gamma1, gamma2, scale1, scale2, shift1, shift2`` come from
    ``ada_lin(cond)`` (``shared_aln=False``; ``cond_BD`` is [B, D]) or from
    ``ada_gss + cond_BD`` (``shared_aln=True``; ``cond_BD`` is the shared
    ``[B, 1, 6, C]`` output of ``VAR.shared_ada_lin``)::

        x = x + gamma1 * attn(LN(x) * (1 + scale1) + shift1)
        x = x + gamma2 * ffn (LN(x) * (1 + scale2) + shift2)
    """

    def __init__(self, block_idx: int, embed_dim: int, cond_dim: int, shared_aln: bool,
                 num_heads: int, norm_eps: float = 1e-6, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_l2_norm: bool = False) -> None:
        super().__init__()
        self.block_idx, self.C, self.D = block_idx, embed_dim, cond_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.attn = SelfAttention(block_idx=block_idx, embed_dim=embed_dim, num_heads=num_heads,
                                  attn_drop=attn_drop, proj_drop=drop, attn_l2_norm=attn_l2_norm)
        self.ffn = FFN(in_features=embed_dim, hidden_features=round(embed_dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 6 * embed_dim))

    def modulation(self, cond_BD: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(gamma1, gamma2, scale1, scale2, shift1, shift2)``, each [B, 1, C]."""
        if self.shared_aln:
            return (self.ada_gss + cond_BD).unbind(2)
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, attn_bias: Optional[torch.Tensor]) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond_BD)
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), attn_bias=attn_bias).mul_(gamma1))
        x = x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))
        return x

    def extra_repr(self) -> str:
        return f"shared_aln={self.shared_aln}"


class AdaLNBeforeHead(nn.Module):
    """``LN(x) * (1 + scale) + shift`` with ``scale, shift = ada_lin(cond)``."""

    def __init__(self, C: int, D: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.C, self.D = C, D
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)
