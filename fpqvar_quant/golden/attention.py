"""Golden model of the attention unit: QK^T, softmax, PV over a KV cache.

Per head (head_dim 64), for the new queries of a scale step against all cached
keys (``docs/numerics.md`` section 4):

* K/V cache entries are stored per token-head.  ``"fp16"`` (default): the FP16
  bit patterns; decoding to FP32 is exact.  ``"kv6"``: e2m3fn codes with one FP16
  scale per token-head (the group quantizer of ``golden.quantizer`` with group
  size 64); decoding ``value(code) * scale`` is exact in FP32.
* ``score[i, j] = tree_sum(q[i, :] * k[j, :], P)`` (64 FP32 products, canonical order);
  softmax scale 1 (q and k are L2-normalised, q carries the temperature);
* ``p = softmax(score[i, :], P)`` (``golden.vector.softmax``);
* ``out[i, :] = tree_sum over j of p[i, j] * v[j, :]`` (products FP32, canonical
  order over the keys, zero padding to a multiple of ``P``).

No mask: VAR's cached inference attends to every cached key (the block-causal
mask only exists in the teacher-forced forward).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import vector as _v
from ..formats import get_format

__all__ = ["KVEntry", "kv_encode", "kv_decode", "attention", "HEAD_DIM", "KV_FORMATS"]

HEAD_DIM = 64
KV_FORMATS = ("fp16", "kv6")


@dataclass(frozen=True)
class KVEntry:
    """Cache contents for ``[..., tokens, 64]`` values: FP16 bits, or kv6 codes + scales."""

    kind: str
    bits: np.ndarray | None = None       # uint16 [..., 64] (fp16)
    codes: np.ndarray | None = None      # uint8 [..., 64] (kv6, e2m3fn)
    scales: np.ndarray | None = None     # uint16 [...] FP16 scale per token-head (kv6)


def kv_encode(x_fp16_bits, kind: str = "fp16") -> KVEntry:
    """Encode new K or V rows (FP16 bit patterns, last axis 64) for the cache."""
    if kind not in KV_FORMATS:
        raise ValueError(f"KV cache format must be one of {KV_FORMATS}, got {kind!r}")
    x = np.asarray(x_fp16_bits).astype(np.uint16)
    if x.shape[-1] != HEAD_DIM:
        raise ValueError(f"last axis must be head_dim {HEAD_DIM}, got shape {x.shape}")
    if kind == "fp16":
        return KVEntry("fp16", bits=x)
    from .quantizer import quantize_groups   # the group quantizer's golden model

    q = quantize_groups(x.reshape(-1, HEAD_DIM), "e2m3fn")
    return KVEntry("kv6", codes=np.asarray(q.codes).reshape(x.shape).astype(np.uint8),
                   scales=np.asarray(q.scales).reshape(x.shape[:-1]).astype(np.uint16))


def kv_decode(entry: KVEntry) -> np.ndarray:
    """FP32 values of a cache entry (exact)."""
    if entry.kind == "fp16":
        return entry.bits.view(np.float16).astype(np.float32)
    vals = get_format("e2m3fn").decode(entry.codes).astype(np.float32)
    s = entry.scales.view(np.float16).astype(np.float32)[..., None]
    return (vals * s).astype(np.float32)    # exact: 4-bit x 11-bit significands


def attention(q, k, v, P: int = 8, xp: _v.Backend | None = None, *, chunk: int = 32):
    """``q``: [H, Nq, 64], ``k``/``v``: [H, Nk, 64] FP32 (decoded cache); -> [H, Nq, 64] FP32.

    Queries are processed ``chunk`` at a time (memory only; the result does not
    depend on it).
    """
    xp = _v._ctx(xp)
    q, k, v = xp.asf32(q), xp.asf32(k), xp.asf32(v)
    if q.shape[-1] != HEAD_DIM or k.shape != v.shape or k.shape[-1] != HEAD_DIM \
            or q.shape[0] != k.shape[0]:
        raise ValueError(f"expected q [H,Nq,64], k and v [H,Nk,64]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    outs = []
    vt = xp.swap_last(v)                                     # [H, 64, Nk]
    for s in range(0, q.shape[1], chunk):
        qc = q[:, s:s + chunk]
        scores = tree_last(xp.mul(qc[:, :, None, :], k[:, None, :, :]), P, xp)   # [H, c, Nk]
        p = _v.softmax(scores, P, xp)
        outs.append(tree_last(xp.mul(p[:, :, None, :], vt[:, None, :, :]), P, xp))  # [H, c, 64]
    return xp.concat(outs, axis=1)


def tree_last(x, P: int, xp: _v.Backend):
    """``tree_sum`` over the last axis, dropping it."""
    r = _v.tree_sum(x, P, xp)
    return r[..., 0]
