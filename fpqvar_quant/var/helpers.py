"""Sampling helpers of VAR (FoundationVision/VAR ``models/helpers.py``).

The order and kind of random draws equal the official code, so the same
generator state on the same device gives the same samples.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["sample_with_top_k_top_p_", "gumbel_softmax_with_rng"]


def sample_with_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0,
                             rng: Optional[torch.Generator] = None, num_samples: int = 1) -> torch.Tensor:
    """Sample token indices [B, l, |num_samples|] from logits [B, l, V]; modifies ``logits_BlV`` in place.

    top-k (``top_k > 0``): logits below the k-th largest are set to -inf.
    top-p (``top_p > 0``): in ascending order, tokens whose cumulative
    probability is <= 1 - top_p are dropped; the most likely token is always kept.
    Then one ``torch.multinomial`` call over the softmax (with replacement when
    ``num_samples >= 0``) using ``rng``; a list of ``B`` generators draws each batch row
    from its own generator (one call per row), so a row's tokens do not depend on the
    other rows of the batch.
    """
    B, l, V = logits_BlV.shape
    if top_k > 0:
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        sorted_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        sorted_remove[..., -1:] = False
        logits_BlV.masked_fill_(sorted_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_remove), -torch.inf)
    replacement = num_samples >= 0
    num_samples = abs(num_samples)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    if isinstance(rng, (list, tuple)):     # one generator per batch row (per-image seeds)
        if len(rng) != B:
            raise ValueError(f"got {len(rng)} generators for a batch of {B}")
        rows = probs.view(B, l, V)
        return torch.stack([torch.multinomial(rows[b], num_samples=num_samples, replacement=replacement,
                                              generator=g) for b, g in enumerate(rng)]).view(B, l, num_samples)
    return torch.multinomial(probs, num_samples=num_samples, replacement=replacement, generator=rng).view(B, l, num_samples)


def gumbel_softmax_with_rng(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10,
                            dim: int = -1, rng: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-softmax whose noise comes from ``rng`` (``F.gumbel_softmax`` when ``rng`` is None)."""
    if rng is None:
        return F.gumbel_softmax(logits=logits, tau=tau, hard=hard, eps=eps, dim=dim)
    if isinstance(rng, (list, tuple)):     # one generator per row of dim 0
        gumbels = torch.stack([-torch.empty_like(logits[b], memory_format=torch.legacy_contiguous_format)
                               .exponential_(generator=g).log() for b, g in enumerate(rng)])
    else:
        gumbels = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(generator=rng).log()
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft
