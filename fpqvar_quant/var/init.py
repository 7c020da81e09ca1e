"""The "quantization-test" initialisation of a random VAR.

The official init sets the adaLN gamma weights to 1e-5 times a small random
matrix, so a fresh model is almost the identity (every block output ~0): useless
for measuring quantization error.  :func:`quantization_test_init_` instead gives
a random model whose activations look like a trained one's, deterministically
from a seed (draws on a private CPU generator, the global RNG is untouched):

* every ``nn.Linear`` weight ~ N(0, 1/fan_in) (unit-variance outputs), biases ~ N(0, 0.02^2);
* ``class_emb`` ~ N(0, 1); ``pos_start``, ``pos_1LC``, ``lvl_embed`` ~ N(0, 0.5^2);
* per block adaLN (``ada_lin[-1]``, or ``ada_gss`` with shared adaLN): bias of the
  gamma rows ~ U(gamma_range) (default 0.1..1), scale rows ~ N(0, 0.3^2),
  shift rows ~ N(0, 0.3^2); weights ~ N(0, (adaln_cond_gain^2) / D), i.e. a
  class-dependent part with std ~0.1 of the modulation;
* attention temperature ``scale_mul_1H11`` ~ U(log 4, log 30); ``q_bias``,
  ``v_bias`` ~ N(0, 0.1^2);
* ``head_nm`` like a block's adaLN (scale/shift only), head ~ N(0, 1/C) so the
  logits have std ~1 (non-degenerate sampling);
* optional channel outliers: ``outlier_channels`` channels (same in every block,
  like the "massive activations" of trained transformers) get adaLN shift bias
  +-``outlier_gain``, so the inputs of ``mat_qkv`` and ``fc1`` have a few
  channels ~``outlier_gain`` times larger than the rest: what GHT is for.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn

from .var import VAR

__all__ = ["quantization_test_init_"]


@torch.no_grad()
def quantization_test_init_(var: VAR, *, seed: int = 0, gamma_range: Tuple[float, float] = (0.1, 1.0),
                            adaln_scale_std: float = 0.3, adaln_shift_std: float = 0.3,
                            adaln_cond_gain: float = 0.1, outlier_channels: int = 0,
                            outlier_gain: float = 20.0) -> torch.Tensor:
    """Re-initialise ``var`` in place (see module docstring); returns the outlier channel indices (LongTensor).

    Deterministic for a given ``seed`` on any device/dtype (draws happen in
    float64 on the CPU and are then cast/copied).
    """
    lo, hi = gamma_range
    if not (0 <= lo <= hi):
        raise ValueError(f"gamma_range must be (lo, hi) with 0 <= lo <= hi, got {gamma_range}")
    if not 0 <= outlier_channels <= var.C:
        raise ValueError(f"outlier_channels must be in 0..{var.C}, got {outlier_channels}")
    g = torch.Generator(device="cpu").manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).mul_(std).add_(mean))

    def uniform(t: torch.Tensor, a: float, b: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g, dtype=torch.float64).mul_(b - a).add_(a))

    for m in var.modules():
        if isinstance(m, nn.Linear):
            normal(m.weight, 1.0 / math.sqrt(m.in_features))
            if m.bias is not None:
                normal(m.bias, 0.02)
    normal(var.class_emb.weight, 1.0)
    for p in (var.pos_start, var.pos_1LC, var.lvl_embed.weight):
        normal(p, 0.5)
    C, D = var.C, var.D
    outliers = torch.randperm(C, generator=g)[:outlier_channels].sort().values
    signs = torch.where(torch.rand(outlier_channels, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)

    def modulation_bias(n_gamma: int) -> torch.Tensor:
        """[6 or 2, C] rows: gammas (n_gamma of them), scales, shifts (official order)."""
        n_pairs = 2 if n_gamma else 1
        rows = []
        for _ in range(n_gamma):
            rows.append(torch.rand(C, generator=g, dtype=torch.float64) * (hi - lo) + lo)
        for _ in range(n_pairs):
            rows.append(torch.randn(C, generator=g, dtype=torch.float64) * adaln_scale_std)
        for _ in range(n_pairs):
            shift = torch.randn(C, generator=g, dtype=torch.float64) * adaln_shift_std
            shift[outliers] += signs * outlier_gain
            rows.append(shift)
        return torch.stack(rows)

    for b in var.blocks:
        att = b.attn
        if att.attn_l2_norm:
            uniform(att.scale_mul_1H11, math.log(4.0), math.log(30.0))
        normal(att.q_bias, 0.1)
        normal(att.v_bias, 0.1)
        bias = modulation_bias(2)  # [6, C]
        if b.shared_aln:
            b.ada_gss.copy_(bias.view(1, 1, 6, C))
        else:
            lin = b.ada_lin[-1]
            normal(lin.weight, adaln_cond_gain / math.sqrt(D))
            lin.bias.copy_(bias.reshape(-1))
    if isinstance(var.shared_ada_lin, nn.Sequential):  # shared adaLN: small class-dependent part
        normal(var.shared_ada_lin[-1].weight, adaln_cond_gain / math.sqrt(D))
        var.shared_ada_lin[-1].bias.zero_()
    head_lin = var.head_nm.ada_lin[-1]
    normal(head_lin.weight, adaln_cond_gain / math.sqrt(D))
    head_bias = torch.stack([torch.randn(C, generator=g, dtype=torch.float64) * adaln_scale_std,
                             torch.randn(C, generator=g, dtype=torch.float64) * adaln_shift_std])
    head_lin.bias.copy_(head_bias.reshape(-1))
    return outliers
