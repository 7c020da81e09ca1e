"""GHT-Aware Learnable Transformation (GALT).

For the QKV and FC1 inputs of every block a per-input-channel smoothing vector
``s`` (initialised to 1) is learned so that

    y = Q_a((x * s) H_G) @ Q_w((W / s) H_G)^T

matches the full-precision output ``x W^T`` in mean squared error
(``Q`` = fake quantization with straight-through gradients, ``H_G`` the
group-wise Hadamard when GHT is on). Optimiser: AdamW, lr 0.01, 50 epochs over
the calibration set by default, weight decay 0 (decay pulls a multiplicative
vector toward 0, which has no meaning here), betas (0.9, 0.999), eps 1e-8 -
:class:`AdamW` below, a few lines equal to ``torch.optim.AdamW`` for one
tensor; it exists because constructing any ``torch.optim`` optimizer imports
``torch._dynamo`` (about 8 s on a small CPU machine, per process). After every epoch the loss of the
current ``s`` is measured on the whole calibration set without updates and the
best vector is kept - the initial ``s = 1`` is a candidate too, so GALT never
makes the calibration loss worse. (The reference code keeps the last vector.)
``s`` is clamped to ``>= 1e-4`` in the forward pass so ``W / s`` stays finite.
During GALT ``H_G`` is applied as a dense per-group product with the block
``H`` (same matrix as the FWHT computes; several times faster under autograd
on CPU); the quantized model itself uses the FWHT.

Folding (:func:`fold_smoothing_into_block`): with ``x_mod = LN(x)(1 + scale) + shift``
and ``scale = W_sc c + b_sc``, ``shift = W_sh c + b_sh``,

    x_mod * s = LN(x) (1 + scale') + shift',
    scale' = (1 + scale) s - 1  ->  W_sc' = diag(s) W_sc,  b_sc' = s b_sc + s - 1
    shift' = shift s             ->  W_sh' = diag(s) W_sh,  b_sh' = s b_sh

and the consuming linear gets ``W' = W / s`` (columns). All exact in real
arithmetic; computed in float64. Blocks with a shared adaLN (d36) cannot be
folded per block: the vector is then applied online by :class:`QuantLinear`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..ght import ght_matrix
from ..quantize import fake_quant
from .config import QuantConfig
from .qlinear import LayerQuant, act_fake_quant, weight_spec

__all__ = ["AdamW", "GaltResult", "learn_smoothing", "galt_loss", "fold_smoothing_into_block",
           "can_fold"]

_S_MIN = 1e-4
#: chunk order of ``ada_lin`` output (view [B, 1, 6, C]) in a VAR block
_ADA_CHUNKS = ("gamma1", "gamma2", "scale1", "scale2", "shift1", "shift2")


@dataclass
class GaltResult:
    """Outcome of one smoothing-vector search."""

    smooth: torch.Tensor            #: best vector (float32, CPU)
    best_loss: float                #: calibration MSE of ``smooth``
    initial_loss: float             #: calibration MSE with s = 1
    best_epoch: int                 #: 0 = the initial vector won
    losses: list[float] = field(default_factory=list)  #: eval MSE after each epoch


class AdamW:
    """Decoupled-weight-decay Adam on one tensor (the torch.optim.AdamW update rule)."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.p, self.lr, self.betas, self.eps, self.wd = param, lr, betas, eps, weight_decay
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        g = self.p.grad
        if g is None:
            return
        self.t += 1
        b1, b2 = self.betas
        self.p.mul_(1 - self.lr * self.wd)
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
        self.p.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))

    def zero_grad(self) -> None:
        self.p.grad = None


def _rotate(x: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``x H_G``: every group of ``H.shape[0]`` channels times the dense block ``H``."""
    G = H.shape[0]
    return (x.reshape(*x.shape[:-1], x.shape[-1] // G, G) @ H).reshape(x.shape)


def _hadamard_block(signs: torch.Tensor | None, cfg: QuantConfig, like: torch.Tensor
                    ) -> torch.Tensor | None:
    if signs is None:
        return None
    H = ght_matrix(signs.detach().cpu().numpy(), group=cfg.ght_group)
    return torch.from_numpy(H).to(device=like.device, dtype=like.dtype)


def _quantized_output(x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor,
                      cfg: QuantConfig, lq: LayerQuant, H: torch.Tensor | None
                      ) -> torch.Tensor:
    s = s.clamp_min(_S_MIN)
    xs, ws = x * s, weight / s
    if H is not None:
        xs, ws = _rotate(xs, H), _rotate(ws, H)
    xq = act_fake_quant(xs, cfg, lq)
    wq = fake_quant(ws, weight_spec(cfg, lq.w_fmt)) if lq.w_fmt is not None else ws
    return xq @ wq.t()


@torch.no_grad()
def galt_loss(batches: Iterable[torch.Tensor], weight: torch.Tensor, s: torch.Tensor,
              cfg: QuantConfig, lq: LayerQuant, signs: torch.Tensor | None = None) -> float:
    """Mean (over all output elements) squared error of the quantized layer with
    smoothing ``s`` against ``x W^T`` over ``batches`` of input rows."""
    H = _hadamard_block(signs, cfg, weight)
    total, count = 0.0, 0
    for x in batches:
        x = x.to(weight.dtype)
        y = _quantized_output(x, weight, s, cfg, lq, H)
        total += float(F.mse_loss(y, x @ weight.t(), reduction="sum"))
        count += y.numel()
    if count == 0:
        raise ValueError("GALT got an empty calibration set for this layer")
    return total / count


def learn_smoothing(weight: torch.Tensor, batches: Callable[[], Iterable[torch.Tensor]],
                    cfg: QuantConfig, lq: LayerQuant, *, signs: torch.Tensor | None = None,
                    epochs: int | None = None, lr: float | None = None,
                    on_epoch: Callable[[int, float], None] | None = None) -> GaltResult:
    """Learn the GALT vector of one layer.

    ``weight``: the layer's float weight ``[out, in]`` (its device/dtype is used).
    ``batches``: called once per pass, returns an iterable of input-row tensors
    ``[n, in]`` (calibration inputs of this layer as the FP model produced them).
    ``signs``: GHT sign vector when GHT is on. ``epochs``/``lr`` default to the
    config's ``galt_epochs``/``galt_lr``.
    """
    epochs = cfg.galt_epochs if epochs is None else epochs
    lr = cfg.galt_lr if lr is None else lr
    w = weight.detach().float()
    sg = None if signs is None else signs.to(device=w.device, dtype=w.dtype)
    H = _hadamard_block(sg, cfg, w)
    s = torch.ones(w.shape[1], device=w.device, dtype=w.dtype, requires_grad=True)
    opt = AdamW(s, lr=lr)
    init = galt_loss((b.to(w.device) for b in batches()), w, s.detach(), cfg, lq, sg)
    best, best_s, best_epoch, losses = init, s.detach().clone(), 0, []
    for epoch in range(1, epochs + 1):
        for x in batches():
            x = x.to(device=w.device, dtype=w.dtype)
            with torch.no_grad():
                target = x @ w.t()
            loss = F.mse_loss(_quantized_output(x, w, s, cfg, lq, H), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        cur = galt_loss((b.to(w.device) for b in batches()), w, s.detach(), cfg, lq, sg)
        losses.append(cur)
        if on_epoch is not None:
            on_epoch(epoch, cur)
        if cur < best:
            best, best_s, best_epoch = cur, s.detach().clone(), epoch
    return GaltResult(smooth=best_s.clamp_min(_S_MIN).cpu(), best_loss=best, initial_loss=init,
                      best_epoch=best_epoch, losses=losses)


def can_fold(block: nn.Module) -> bool:
    """True when the block owns its adaLN linear (``ada_lin``), i.e. not shared adaLN."""
    return isinstance(getattr(block, "ada_lin", None), nn.Sequential) and \
        isinstance(block.ada_lin[-1], nn.Linear)


@torch.no_grad()
def fold_smoothing_into_block(block: nn.Module, s_qkv: torch.Tensor | None,
                              s_fc1: torch.Tensor | None) -> None:
    """Fold ``x * s`` into the block's adaLN scale/shift and ``W / s`` into
    ``attn.mat_qkv`` / ``ffn.fc1`` (float64 math, written back in place).

    Must run before the linears are replaced by quantized ones. Raises
    ``ValueError`` for a shared-adaLN block (use online smoothing instead).
    """
    if not can_fold(block):
        raise ValueError("this block has no own ada_lin (shared adaLN): GALT vectors cannot be "
                         "folded per block; apply them online (QuantLinear smooth)")
    ada: nn.Linear = block.ada_lin[-1]
    C = ada.out_features // 6
    if ada.out_features != 6 * C or block.attn.mat_qkv.in_features != C:
        raise ValueError(f"ada_lin output {ada.out_features} is not 6*C")
    W, b = ada.weight.to(torch.float64), ada.bias.to(torch.float64)

    def rows(name: str) -> slice:
        k = _ADA_CHUNKS.index(name)
        return slice(k * C, (k + 1) * C)

    for s, scale, shift, lin in ((s_qkv, "scale1", "shift1", block.attn.mat_qkv),
                                 (s_fc1, "scale2", "shift2", block.ffn.fc1)):
        if s is None:
            continue
        s = s.to(device=W.device, dtype=torch.float64)
        if s.shape != (C,):
            raise ValueError(f"smoothing vector must have shape ({C},), got {tuple(s.shape)}")
        if not torch.all(s > 0):
            raise ValueError("smoothing vector entries must be > 0")
        sc, sh = rows(scale), rows(shift)
        W[sc] *= s[:, None]
        b[sc] = b[sc] * s + s - 1
        W[sh] *= s[:, None]
        b[sh] = b[sh] * s
        lin.weight.copy_((lin.weight.to(torch.float64) / s).to(lin.weight.dtype))
    ada.weight.copy_(W.to(ada.weight.dtype))
    ada.bias.copy_(b.to(ada.bias.dtype))
