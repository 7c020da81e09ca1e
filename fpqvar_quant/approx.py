"""Torch versions of the vector unit's FP32 approximations, for the fake-quant model.

The algorithms are the ones in ``fpqvar_quant.golden.vector`` (the single
definition, see ``docs/numerics.md`` section 4); this module only supplies a
torch :class:`~fpqvar_quant.golden.vector.Backend`, so results are bit-identical
to the golden numpy model (``tests/test_approx.py`` checks it, NaNs compared
after canonicalisation).  Inputs are cast to float32; outputs are float32 on
the input's device.  Not differentiable through the table lookups (inference only).

Requires torch's default (IEEE, no flush-to-zero) denormal mode: call
``torch.set_flush_denormal(False)`` if something enabled it.
"""
from __future__ import annotations

import numpy as np
import torch

from .golden import vector as _v

__all__ = ["TorchBackend", "TORCH", "exp", "reciprocal", "rsqrt", "gelu", "softmax",
           "layernorm_modulate", "l2norm_temperature", "gamma_residual", "attention"]


class TorchBackend(_v.Backend):
    """float32 torch tensors; integers as int64 tensors."""

    def asf32(self, x):
        return torch.as_tensor(x).to(torch.float32)

    def const(self, v, like):
        return torch.tensor(v, dtype=torch.float32, device=like.device)

    def mul(self, a, b):
        return torch.mul(a, b)

    def add(self, a, b):
        return torch.add(a, b)

    def sub(self, a, b):
        return torch.sub(a, b)

    def neg(self, a):
        return torch.neg(a)

    def maximum(self, a, b):
        return torch.maximum(a, b)

    def minimum(self, a, b):
        return torch.minimum(a, b)

    def bits(self, a):
        return a.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF

    def from_bits(self, b):
        b = torch.as_tensor(b)
        b = torch.where(b >= 2 ** 31, b - 2 ** 32, b)
        return b.to(torch.int32).view(torch.float32)

    def where(self, c, a, b):
        return torch.where(c, a, b)

    def take(self, table: np.ndarray, idx):
        return torch.from_numpy(table).to(idx.device)[idx]

    def ldexp(self, p, n):
        return (p.to(torch.float64) * torch.exp2(n.to(torch.float64))).to(torch.float32)

    def zeros_like(self, a):
        return torch.zeros_like(a, dtype=torch.float32)

    def concat_zeros(self, x, k: int):
        return torch.cat([x, x.new_zeros(tuple(x.shape[:-1]) + (k,))], dim=-1)

    def swap_last(self, x):
        return x.transpose(-1, -2)

    def concat(self, xs, axis: int):
        return torch.cat(xs, dim=axis)

    def isnan(self, a):
        return torch.isnan(a)

    def row_max(self, x):
        return torch.amax(x, dim=-1, keepdim=True)

    def reshape(self, x, shape):
        return x.reshape(shape)


TORCH = TorchBackend()


def exp(x: torch.Tensor) -> torch.Tensor:
    return _v.exp(x, TORCH)


def reciprocal(d: torch.Tensor) -> torch.Tensor:
    return _v.reciprocal(d, TORCH)


def rsqrt(v: torch.Tensor) -> torch.Tensor:
    return _v.rsqrt(v, TORCH)


def gelu(x: torch.Tensor) -> torch.Tensor:
    return _v.gelu(x, TORCH)


def softmax(x: torch.Tensor, P: int = 8) -> torch.Tensor:
    return _v.softmax(x, P, TORCH)


def layernorm_modulate(x, scale, shift, P: int = 8) -> torch.Tensor:
    return _v.layernorm_modulate(x, scale, shift, P, TORCH)


def l2norm_temperature(q, t=None, P: int = 8) -> torch.Tensor:
    return _v.l2norm_temperature(q, t, P, TORCH)


def gamma_residual(x, gamma, y) -> torch.Tensor:
    return _v.gamma_residual(x, gamma, y, TORCH)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, P: int = 8) -> torch.Tensor:
    """Attention of the hardware (``fpqvar_quant.golden.attention.attention``) on tensors."""
    from .golden import attention as _att

    return _att.attention(q, k, v, P, TORCH)
