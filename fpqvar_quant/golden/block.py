"""Golden model of one VAR transformer block on the accelerator (bit-exact, numpy).

This composes the unit golden models, and nothing else, in the dataflow order
of ``docs/top.md`` ("What a block step compiles to"); ``docs/numerics.md``
section 5 documents it.  For the ``R*L`` new rows of one scale step
(``R`` = rows, 2B with classifier-free guidance; ``L`` = tokens of the scale):

1. ``h = layernorm_modulate(x, scale1, shift1)``                (``vector``)
2. ``qkv = gemm(h, qkv, HAD, BIAS)``                             (:func:`gemm`)
3. ``q = l2norm_temperature(q, t)``, ``k = l2norm_temperature(k, 0)`` per head
   (``exp(min(0, ln 100)) = 1`` exactly, so ``k`` equals the plain L2 norm)
4. ``k``, ``v`` -> FP16 (RNE, ``fp32.convert``) appended to the block's KV
   cache at positions ``[L_start, L_start + L)``
5. per (row, head): ``attention(q, K cache, V cache)``          (``attention``)
6. ``x = gamma_residual(x, gamma1, gemm(attn, proj, BIAS))``
7. ``h = layernorm_modulate(x, scale2, shift2)``
8. ``x = gamma_residual(x, gamma2, gemm(gelu(gemm(h, fc1, HAD, BIAS)), fc2, DFQ, BIAS))``

:func:`gemm` (one accelerator GEMM, ``docs/top.md``): per row, FP32 -> FP16
(RNE, overflow to Inf) -> [``hadamard_groups(x16, signs)``] ->
``quantize_groups`` (the layer's activation format; ``dfq4`` for FC2) ->
``dot`` with the weight codes and FP16 scales -> [+ bias, one FP32 add].

Weights come from the quantized model package (:mod:`fpqvar_quant.ptq.package`),
stored in the transformed domain ``W' = (W / s) H`` with the orthonormal
``H = Had D / sqrt(128)``.  The Hadamard unit computes ``sqrt(2) * x H``
(``x Had D / 8``), so for Hadamard layers the device uses the weight scales
``RNE_fp16(s_w / sqrt(2))`` (:func:`hadamard_weight_scales`; the quotient is
formed in float64) -- the offline fold of ``docs/numerics.md`` section 3.

GALT: folded GALT vectors are already inside the weights and the adaLN
linear (the host computes the adaLN vectors from the package's float
parameters).  Online smoothing (``smooth_online``, shared adaLN models) is
folded per row into the adaLN scale/shift by :func:`device_modulation`.

KV cache: ``"fp16"`` (the default build) or ``"kv6"`` (e2m3fn codes + one
FP16 scale per token-head, ``attention.kv_encode``; builds with
``kv_format=e2m3fn``: VEC KVQ6 writes it, FDOT with B_KV6 reads it,
``docs/top.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..formats import dfq_format
from . import fp32 as _fp32
from . import vector as _v
from .attention import HEAD_DIM, KVEntry, attention, kv_decode, kv_encode
from .dot import DFQ as DOT_DFQ
from .dot import group_result, scale_product
from .hadamard import N as HAD_N
from .hadamard import hadamard_groups
from .multiplier import code_to_int, product_spec
from .quantizer import quantize_groups

__all__ = ["P", "ADA_ORDER", "GemmLayer", "BlockParams", "KVCache", "block_params",
           "hadamard_weight_scales", "device_modulation", "group_dot", "gemm", "block_step", "model_step"]

#: Tree-sum width of the vector engine's row operations (``docs/top.md``).
P = 8
#: Order of the six adaLN vectors (``AdaLNSelfAttn.modulation``).
ADA_ORDER = ("gamma1", "gamma2", "scale1", "scale2", "shift1", "shift2")
#: Block-relative package layer names of the four GEMMs.
LAYER_NAMES = {"qkv": "attn.mat_qkv", "proj": "attn.proj", "fc1": "ffn.fc1", "fc2": "ffn.fc2"}
_INV_SQRT2 = 1.0 / np.sqrt(2.0)


@dataclass(frozen=True)
class GemmLayer:
    """One GEMM as the device runs it.

    ``codes``: ``uint8 [N, K]``; ``scales``: FP16 bits ``uint16 [N, K/group]``,
    *device* scales (Hadamard fold applied); ``bias``: float32 ``[N]`` or None;
    ``a_fmt``: ``quantize_groups`` format of the activations (``"dfq4"`` for
    DFQ); ``w_fmt``: weight element format; ``hadamard``: apply the Hadamard unit.
    """

    name: str
    codes: np.ndarray
    scales: np.ndarray
    bias: np.ndarray | None
    a_fmt: str
    w_fmt: str
    group: int
    hadamard: bool

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1]


@dataclass(frozen=True)
class BlockParams:
    """Everything the device needs of one block (see :func:`block_params`).

    ``signs``: Hadamard sign bits ``uint8 [128]`` (1 = negate) or None;
    ``log_temp``: float32 ``[H]`` raw ``scale_mul`` (the L2NT clamps at ln 100);
    ``smooth_qkv`` / ``smooth_fc1``: online GALT vectors (float32 ``[C]``) or None.
    """

    index: int
    embed_dim: int
    num_heads: int
    qkv: GemmLayer
    proj: GemmLayer
    fc1: GemmLayer
    fc2: GemmLayer
    signs: np.ndarray | None
    log_temp: np.ndarray
    smooth_qkv: np.ndarray | None = None
    smooth_fc1: np.ndarray | None = None

    def layers(self) -> dict[str, GemmLayer]:
        return {"qkv": self.qkv, "proj": self.proj, "fc1": self.fc1, "fc2": self.fc2}


def hadamard_weight_scales(scale_bits: np.ndarray) -> np.ndarray:
    """Device weight scales of a Hadamard layer: ``RNE_fp16(fp64(s) / sqrt(2))``
    (uint16 bits; 0 stays 0).  Compensates the unit's ``sqrt(2)`` gain."""
    s = np.asarray(scale_bits, dtype=np.uint16).view(np.float16).astype(np.float64)
    with np.errstate(all="ignore"):
        return (s * _INV_SQRT2).astype(np.float16).view(np.uint16)


def _unsupported(msg: str) -> ValueError:
    return ValueError(f"this quantized package cannot run on the accelerator: {msg}")


def block_params(pkg, index: int) -> BlockParams:
    """The device parameters of block ``index`` of a loaded package
    (:class:`fpqvar_quant.ptq.package.QuantizedPackage`).

    Raises ``ValueError`` naming the feature for packages the accelerator does
    not run (float weights or activations, non-FP16 scales, granularities other
    than groups, group sizes that differ between weights and activations, DFQ
    variants other than fp4, a head dim other than 64, no ``attn_l2_norm``).
    """
    m = pkg.model
    depth = int(m["depth"])
    if not 0 <= index < depth:
        raise ValueError(f"block index {index} out of range (depth {depth})")
    C, H = int(m["embed_dim"]), int(m["num_heads"])
    if int(m["head_dim"]) != HEAD_DIM:
        raise _unsupported(f"head_dim {m['head_dim']} (the L2NT/attention units use {HEAD_DIM})")
    sf = pkg.manifest["scale_format"]["name"]
    if sf != "fp16":
        raise _unsupported(f"scale format {sf!r} (the matrix engine takes FP16 scales)")
    prefix = f"blocks.{index}."
    signs = None
    if pkg.hadamard_signs is not None:
        h = pkg.manifest["hadamard"]
        if int(h["group"]) != HAD_N:
            raise _unsupported(f"Hadamard group {h['group']} (the unit is {HAD_N} wide)")
        signs = (np.asarray(pkg.hadamard_signs) < 0).astype(np.uint8)
    fp = pkg.float_params
    layers = {}
    smooth = {}
    for role, rel in LAYER_NAMES.items():
        name = prefix + rel
        if name not in pkg.layers:
            raise _unsupported(f"layer {name} is not quantized (missing from the package)")
        lp = pkg.layers[name]
        meta = lp.meta
        if lp.codes is None or meta["a_fmt"] is None:
            raise _unsupported(f"{name} has float weights or float activations")
        if meta["w_granularity"] != "group" or meta["a_granularity"] != "group":
            raise _unsupported(f"{name}: granularity w={meta['w_granularity']}, "
                               f"a={meta['a_granularity']} (the engine quantizes in groups)")
        g = int(meta["w_group_size"])
        if int(meta["a_group_size"]) != g or lp.scale_bits.shape[1] * g != lp.codes.shape[1]:
            raise _unsupported(f"{name}: weight group {g} and activation group "
                               f"{meta['a_group_size']} must be equal")
        a_fmt = meta["a_fmt"]
        if meta.get("dfq"):
            if meta["dfq"] != dfq_format("dfq4").variant:
                raise _unsupported(f"{name}: DFQ variant {meta['dfq']!r} (golden.dot implements "
                                   "the dfq4 dual format only)")
            a_fmt = dfq_format(meta["dfq"]).name
        had = bool(meta["ght"])
        if had and signs is None:
            raise _unsupported(f"{name} uses GHT but the package has no sign vector")
        scales = np.asarray(lp.scale_bits, dtype=np.uint16)
        if had:
            scales = hadamard_weight_scales(scales)
        bias = lp.bias
        if role == "qkv":
            if bias is not None:
                raise _unsupported(f"{name} has its own bias (VAR adds [q_bias, 0, v_bias])")
            qb, vb = fp.get(prefix + "attn.q_bias"), fp.get(prefix + "attn.v_bias")
            if qb is None or vb is None:
                raise _unsupported(f"{prefix}attn.q_bias / v_bias missing from float_params")
            bias = np.concatenate([qb, np.zeros(C, np.float32), vb]).astype(np.float32)
        layers[role] = GemmLayer(name=name, codes=np.asarray(lp.codes, dtype=np.uint8),
                                 scales=scales,
                                 bias=None if bias is None else np.asarray(bias, np.float32),
                                 a_fmt=a_fmt, w_fmt=meta["w_fmt"], group=g, hadamard=had)
        if meta.get("smooth_online"):
            smooth[role] = np.asarray(lp.smooth, dtype=np.float32)
    t = fp.get(prefix + "attn.scale_mul_1H11")
    if t is None:
        raise _unsupported("attention without attn_l2_norm (no scale_mul_1H11)")
    for role in ("proj", "fc2"):
        if role in smooth:
            raise _unsupported(f"online smoothing on {role} (only qkv/fc1 inputs follow an adaLN)")
    return BlockParams(index=index, embed_dim=C, num_heads=H, **layers, signs=signs,
                       log_temp=np.asarray(t, np.float32).reshape(H),
                       smooth_qkv=smooth.get("qkv"), smooth_fc1=smooth.get("fc1"))


def device_modulation(ada, params: BlockParams) -> np.ndarray:
    """The adaLN vectors the device uses: ``ada`` (float32 ``[R, 6, C]`` in
    :data:`ADA_ORDER`, as the torch model computes them) with online GALT
    vectors folded in: ``scale' = (1 + scale) s - 1``, ``shift' = shift s``
    (float64, rounded once to FP32).  Without online smoothing: ``ada`` unchanged."""
    a = np.asarray(ada, dtype=np.float32)
    C = params.embed_dim
    if a.ndim != 3 or a.shape[1:] != (6, C):
        raise ValueError(f"adaLN vectors must be [R, 6, {C}], got {a.shape}")
    out = a.copy()
    for s, sc, sh in ((params.smooth_qkv, 2, 4), (params.smooth_fc1, 3, 5)):
        if s is None:
            continue
        s64 = s.astype(np.float64)
        out[:, sc] = ((1.0 + a[:, sc].astype(np.float64)) * s64 - 1.0).astype(np.float32)
        out[:, sh] = (a[:, sh].astype(np.float64) * s64).astype(np.float32)
    return out


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def group_dot(a_fmt: str, w_fmt: str, a_codes, w_codes, s_a, s_w, group: int, s_a_neg=None
              ) -> np.ndarray:
    """``golden.dot.dot`` of every activation row with every weight row, bit for bit.

    ``a_codes`` ``[M, K]``, ``w_codes`` ``[N, K]``, scales ``[M, K/G]`` / ``[N, K/G]``
    (FP16 bits; ``s_a_neg`` for DFQ) -> FP32 bits ``uint32 [M, N]``.  The exact
    integer group sums (``golden.dot.group_sums`` / ``dfq_group_sums``) are formed
    as one int64 matrix product per group (``einsum``, exact); group results and the ascending FP32 accumulation use
    ``golden.dot``'s own functions, in ``dot``'s order.  ``tests/test_golden_block.py``
    checks equality with ``dot`` on random and special-value inputs.
    """
    a = np.asarray(a_codes)
    w = np.asarray(w_codes)
    M, K = a.shape
    N = w.shape[0]
    if w.shape[1] != K or K % group:
        raise ValueError(f"a_codes [M, K] and w_codes [N, K] must share K (a multiple of {group}); "
                         f"got {a.shape}, {w.shape}")
    Gn = K // group

    def sums(ia, iw):   # [M, K] x [N, K] int64 -> [M, N, Gn] exact int64
        out = np.empty((M, N, Gn), dtype=np.int64)
        for j in range(Gn):
            sl = slice(j * group, (j + 1) * group)
            out[..., j] = np.einsum("mk,nk->mn", ia[:, sl], iw[:, sl])
        return out

    sa = np.asarray(s_a)[:, None, :]
    sw = np.asarray(s_w)[None, :, :]
    if a_fmt == DOT_DFQ:
        if w_fmt != "e2m1fn" or s_a_neg is None:
            raise ValueError("DFQ activations need w_fmt='e2m1fn' and the negative-grid scales")
        ac = a.astype(np.int64)
        neg = (ac >> 3) & 1
        iw = code_to_int("e2m1fn", w)
        sp = sums(np.where(neg == 0, code_to_int("e2m1fn", ac & 7), 0), iw)
        sn = sums(np.where(neg == 1, code_to_int("e1m2fn", ac), 0), iw)
        with np.errstate(all="ignore"):
            g = (group_result(sp, scale_product(sa, sw), product_spec("e2m1fn", "e2m1fn").lsb_exp)
                 + group_result(sn, scale_product(np.asarray(s_a_neg)[:, None, :], sw),
                                product_spec("e1m2fn", "e2m1fn").lsb_exp))
    else:
        s = sums(code_to_int(a_fmt, a), code_to_int(w_fmt, w))
        g = group_result(s, scale_product(sa, sw), product_spec(a_fmt, w_fmt).lsb_exp)
    acc = np.zeros((M, N), dtype=np.float32)
    with np.errstate(all="ignore"):
        for j in range(Gn):
            acc = (acc + g[..., j]).astype(np.float32)
    return _fp32.canon(acc, "fp32")


def gemm(x, layer: GemmLayer, signs: np.ndarray | None = None) -> np.ndarray:
    """One accelerator GEMM: ``x`` float32 ``[M, K]`` -> float32 ``[M, N]``.

    ``signs``: Hadamard sign bits (needed when ``layer.hadamard``).
    """
    x = _f32(x)
    M, K = x.shape
    if K != layer.k:
        raise ValueError(f"{layer.name}: input has K={K}, weight has K={layer.k}")
    x16 = _fp32.convert(x.view(np.uint32), "fp32", "fp16")
    if layer.hadamard:
        if signs is None:
            raise ValueError(f"{layer.name} needs the Hadamard sign bits")
        x16 = hadamard_groups(x16.reshape(M, K // HAD_N, HAD_N), signs).y.reshape(M, K)
    G = layer.group
    q = quantize_groups(x16.reshape(M, K // G, G), layer.a_fmt)
    codes = q.codes.reshape(M, K)
    if q.scales.shape[-1] == 2:    # quantize_groups order (neg, pos); dot: s_a = pos, s_a_neg = neg
        out = group_dot(DOT_DFQ, layer.w_fmt, codes, layer.codes, q.scales[..., 1], layer.scales, G,
                        q.scales[..., 0])
    else:
        out = group_dot(layer.a_fmt, layer.w_fmt, codes, layer.codes, q.scales[..., 0],
                        layer.scales, G)
    if layer.bias is not None:
        out = _fp32.add(out, _f32(layer.bias).view(np.uint32)[None, :])
    return out.view(np.float32)


@dataclass
class KVCache:
    """One block's KV cache for ``R`` rows: ``kind`` "fp16" (FP16 bits) or "kv6".

    ``k``/``v`` hold the encoded entries, ``[R, H, length, 64]``; :meth:`append`
    adds a scale step's tokens, :meth:`decoded` returns FP32 ``(K, V)``.
    """

    rows: int
    heads: int
    kind: str = "fp16"
    k: KVEntry | None = None
    v: KVEntry | None = None
    length: int = 0
    _parts_k: list = field(default_factory=list, repr=False)
    _parts_v: list = field(default_factory=list, repr=False)

    def append(self, k16: np.ndarray, v16: np.ndarray) -> None:
        """Append FP16 bits ``[R, H, L, 64]`` of the new keys and values."""
        want = (self.rows, self.heads)
        for name, a in (("k", k16), ("v", v16)):
            if a.shape[:2] != want or a.shape[-1] != HEAD_DIM or a.ndim != 4:
                raise ValueError(f"{name} must be [R={self.rows}, H={self.heads}, L, 64], got {a.shape}")
        self._parts_k.append(kv_encode(k16, self.kind))
        self._parts_v.append(kv_encode(v16, self.kind))
        self.k, self.v = _cat(self._parts_k), _cat(self._parts_v)
        self.length += k16.shape[2]

    def decoded(self) -> tuple[np.ndarray, np.ndarray]:
        """FP32 ``(K, V)``, each ``[R, H, length, 64]`` (exact decode)."""
        if self.k is None:
            raise ValueError("the KV cache is empty")
        return kv_decode(self.k), kv_decode(self.v)

    def fp16_bits(self) -> tuple[np.ndarray, np.ndarray]:
        """The FP16 cache contents ``(K, V)`` bits (``kind == "fp16"`` only)."""
        if self.kind != "fp16":
            raise ValueError(f"a {self.kind} cache holds no FP16 bits")
        return self.k.bits, self.v.bits


def _cat(parts: list[KVEntry]) -> KVEntry:
    kind = parts[0].kind
    if kind == "fp16":
        return KVEntry("fp16", bits=np.concatenate([p.bits for p in parts], axis=2))
    return KVEntry("kv6", codes=np.concatenate([p.codes for p in parts], axis=2),
                   scales=np.concatenate([p.scales for p in parts], axis=2))


def block_step(x, ada, params: BlockParams, cache: KVCache) -> np.ndarray:
    """One block on the device for one scale step (module docstring).

    ``x``: float32 ``[R, L, C]`` (the new tokens); ``ada``: float32 ``[R, 6, C]``
    device adaLN vectors (:func:`device_modulation`); ``cache``: the block's
    cache, appended in place.  Returns the block output float32 ``[R, L, C]``.
    """
    x = _f32(x)
    R, L, C = x.shape
    H = params.num_heads
    a = _f32(ada)
    if C != params.embed_dim or a.shape != (R, 6, C):
        raise ValueError(f"x must be [R, L, {params.embed_dim}] and ada [R, 6, C]; got {x.shape}, {a.shape}")
    if cache.rows != R or cache.heads != H:
        raise ValueError(f"cache is for R={cache.rows}, H={cache.heads}; step has R={R}, H={H}")
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (a[:, i:i + 1, :] for i in range(6))
    h = _v.layernorm_modulate(x, scale1, shift1, P)
    qkv = gemm(h.reshape(R * L, C), params.qkv, params.signs).reshape(R, L, 3, H, HEAD_DIM)
    qkv = qkv.transpose(2, 0, 3, 1, 4)                       # [3, R, H, L, 64]
    q = _v.l2norm_temperature(qkv[0], params.log_temp.reshape(1, H, 1, 1), P)
    k = _v.l2norm_temperature(qkv[1], np.zeros((1, H, 1, 1), np.float32), P)
    k16 = _fp32.convert(np.ascontiguousarray(k).view(np.uint32), "fp32", "fp16")
    v16 = _fp32.convert(np.ascontiguousarray(qkv[2]).view(np.uint32), "fp32", "fp16")
    cache.append(k16, v16)
    K, V = cache.decoded()
    att = np.stack([attention(q[r], K[r], V[r], P) for r in range(R)])   # [R, H, L, 64]
    att = att.transpose(0, 2, 1, 3).reshape(R * L, C)
    x = _v.gamma_residual(x, gamma1, gemm(att, params.proj).reshape(R, L, C))
    h = _v.layernorm_modulate(x, scale2, shift2, P)
    f = _v.gelu(gemm(h.reshape(R * L, C), params.fc1, params.signs))
    y = gemm(f, params.fc2).reshape(R, L, C)
    return _v.gamma_residual(x, gamma2, y)


def model_step(x, ada_blocks, params: list[BlockParams], caches: list[KVCache]) -> np.ndarray:
    """All blocks for one scale step: ``ada_blocks[i]`` is block ``i``'s ``[R, 6, C]``."""
    if not len(params) == len(caches) == len(ada_blocks):
        raise ValueError("need one adaLN array, parameter set and cache per block")
    for a, p, c in zip(ada_blocks, params, caches):
        x = block_step(x, a, p, c)
    return x
