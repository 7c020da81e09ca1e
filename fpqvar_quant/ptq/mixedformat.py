"""MixedFormat baseline: per layer, one element format among e1m2fn / e2m1fn /
e3m0fn (weights and activations of that layer share it), chosen by the mean
squared error of the GEMM output against the full-precision output on
calibration inputs.

The search evaluates the layer exactly as it will run (same transform, same
scale granularity, same activation quantizer), so it composes with GHT/GALT.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .qlinear import LayerQuant, QuantLinear

__all__ = ["gemm_output_mse", "choose_format"]


@torch.no_grad()
def gemm_output_mse(layer: QuantLinear,
                    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """MSE of ``layer(x)`` against the full-precision output ``y_ref`` (bias
    included in both) over ``(x, y_ref)`` pairs; ``x`` is the layer's input as the
    quantized model feeds it (after any folded smoothing)."""
    total, count = 0.0, 0
    for x, y_ref in pairs:
        x = x.to(device=layer.weight.device, dtype=layer.weight.dtype)
        y = layer(x)
        total += float(F.mse_loss(y, y_ref.to(y), reduction="sum"))
        count += y.numel()
    if count == 0:
        raise ValueError("MixedFormat got an empty calibration set for this layer")
    return total / count


@torch.no_grad()
def choose_format(layer: QuantLinear, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                  candidates: Iterable[str]
                  ) -> tuple[str, dict[str, float]]:
    """Try every candidate format on ``layer`` and leave the best one set.

    Returns ``(best_format, {format: mse})``; ties go to the earlier candidate.
    """
    scores: dict[str, float] = {}
    for fmt in candidates:
        lq = LayerQuant(role=layer.lq.role, w_fmt=fmt if layer.lq.w_fmt else None,
                        a_fmt=fmt if layer.lq.a_fmt else None, dfq=layer.lq.dfq, ght=layer.lq.ght)
        layer.set_formats(lq)
        scores[fmt] = gemm_output_mse(layer, pairs)
    best = min(scores, key=lambda f: (scores[f], list(scores).index(f)))
    lq = layer.lq
    layer.set_formats(LayerQuant(role=lq.role, w_fmt=best if lq.w_fmt else None,
                                 a_fmt=best if lq.a_fmt else None, dfq=lq.dfq, ght=lq.ght))
    return best, scores
