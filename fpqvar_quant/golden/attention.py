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

from . import register_exporter
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
    xp = _v.backend(xp)
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


# --------------------------------------------------------------------------- vector export
def _attention_args(p) -> None:
    p.add_argument("--heads", type=int, default=2, help="heads H (default 2)")
    p.add_argument("--keys", type=int, default=30, help="cached keys Nk per head (default 30)")
    p.add_argument("--kv", default="fp16", choices=KV_FORMATS, help="KV cache format (default fp16)")
    p.add_argument("--P", type=int, default=8, help="partial sums of tree_sum (default 8)")


@register_exporter("attention", "attention unit: FP32 queries over an FP16 or kv6 KV cache -> FP32",
                   _attention_args)
def _export_attention(args, rng: np.random.Generator):
    """``--n`` queries per head against ``--keys`` cached keys, as VAR feeds the unit:
    q rows L2-normalised times a temperature in [1, 100] (FP32), k rows
    L2-normalised and v rows normal, both rounded to FP16 and encoded for the
    cache (``kv_encode``).  Arrays: ``q`` uint32 [H, n, 64]; ``k``/``v`` uint16
    FP16 bits [H, Nk, 64] (fp16) or ``k_codes``/``v_codes`` uint8 [H, Nk, 64] +
    ``k_scales``/``v_scales`` uint16 [H, Nk] (kv6); ``out`` uint32 [H, n, 64]
    (canonical NaN ``0x7FC00000``)."""
    from .fp32 import canon

    H, n, nk = args.heads, args.n, args.keys
    if H < 1 or nk < 1:
        raise SystemExit(f"--heads and --keys must be >= 1, got {H} and {nk}")
    if args.P < 1 or args.P & (args.P - 1):
        raise SystemExit(f"--P must be a power of two, got {args.P}")

    def unit_rows(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    q = (unit_rows((H, n, HEAD_DIM)) * rng.uniform(1, 100, (H, 1, 1))).astype(np.float32)
    k16 = unit_rows((H, nk, HEAD_DIM)).astype(np.float16).view(np.uint16)
    v16 = rng.standard_normal((H, nk, HEAD_DIM)).astype(np.float16).view(np.uint16)
    ke, ve = kv_encode(k16, args.kv), kv_encode(v16, args.kv)
    out = canon(attention(q, kv_decode(ke), kv_decode(ve), args.P), "fp32")
    arrays = {"q": q.view(np.uint32), "out": out}
    for name, e in (("k", ke), ("v", ve)):
        if args.kv == "fp16":
            arrays[name] = e.bits
        else:
            arrays[f"{name}_codes"], arrays[f"{name}_scales"] = e.codes, e.scales
    config = {"heads": H, "queries": n, "keys": nk, "head_dim": HEAD_DIM, "kv": args.kv, "P": args.P,
              "q": "fp32 bits", "out": "fp32 bits",
              "cache": "fp16 bits" if args.kv == "fp16" else "e2m3fn codes + fp16 scale per token-head",
              "definition": "docs/numerics.md section 4 (golden/attention.py)"}
    return arrays, config
