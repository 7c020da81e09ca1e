"""DRAM layout of a GEMM's weight operands (``docs/top.md``, "GEMM weight layout"): the
packed codes and FP16 scales of an ``[N, K]`` weight in the matrix engine's order
(feature blocks of ``tn``, beats of ``lanes`` codes, groups of ``group``), their sizes,
and the Hadamard sign vectors (one bit per element of a 128-group).

Used by the compiler (the DRAM image), the reference executor (reading it back), the
matrix engine (the code word width) and the testbenches.  The instruction encodings
are :mod:`fpqvar_hw.isa`; the bytes an instruction touches, :mod:`fpqvar_hw.footprints`.
"""
from __future__ import annotations

import numpy as np

from .isa import BUS_BYTES, HAD_GROUP, K_ALIGN

__all__ = ['gemm_padded_n', 'gemm_code_word_bytes', 'gemm_code_bytes', 'gemm_scale_bytes', 'pack_gemm_weights', 'unpack_gemm_weights', 'pack_signs', 'pack_sign_bits', 'unpack_signs']


def _check_pack_params(tn: int, lanes: int, bits: int, group: int) -> None:
    for name, v in (("tn", tn), ("lanes", lanes), ("bits", bits), ("group", group)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if bits > 8:
        raise ValueError(f"codes are at most 8 bits, got bits={bits}")
    if K_ALIGN % lanes or K_ALIGN % group:
        raise ValueError(f"lanes ({lanes}) and group ({group}) must divide {K_ALIGN}")


def gemm_padded_n(n: int, tn: int) -> int:
    """N rounded up to a multiple of Tn (the packed feature count)."""
    return -(-n // tn) * tn


def gemm_code_word_bytes(lanes: int, bits: int) -> int:
    """Bytes of one (feature block, beat, feature) entry: ``lanes*bits`` bits padded to 16 bytes."""
    return -(-lanes * bits // (8 * BUS_BYTES)) * BUS_BYTES


def gemm_code_bytes(n: int, k: int, *, tn: int, lanes: int, bits: int) -> int:
    """Size of the packed codes of an ``[n, k]`` weight."""
    return gemm_padded_n(n, tn) * (k // lanes) * gemm_code_word_bytes(lanes, bits)


def gemm_scale_bytes(n: int, k: int, *, tn: int, group: int) -> int:
    """Size of the packed FP16 scales of an ``[n, k]`` weight."""
    per = -(-2 * tn // BUS_BYTES) * BUS_BYTES
    return (gemm_padded_n(n, tn) // tn) * (k // group) * per


def pack_gemm_weights(codes, scales, *, tn: int, lanes: int, bits: int, group: int
                      ) -> tuple[bytes, bytes]:
    """DRAM images of a weight for GEMM: ``(codes_bytes, scales_bytes)``.

    ``codes``: ``uint8 [N, K]`` element codes (low ``bits`` bits used);
    ``scales``: ``uint16 [N, K/group]`` FP16 scale bits.  N is padded to a
    multiple of ``tn`` with zero codes and zero scales.

    Codes, in this order: feature block ``nb`` (``tn`` features), beat ``kb``
    (``lanes`` consecutive k), feature ``t`` of the block; each entry holds the
    ``lanes`` codes of feature ``nb*tn + t`` at ``k = kb*lanes + j`` packed
    little-endian (lane ``j`` at bit ``j*bits``), padded with zero bits to whole
    16-byte words (:func:`gemm_code_word_bytes`).
    Scales: for ``nb``, group ``g``: the ``tn`` FP16 scales of the block's
    features (uint16 little-endian), padded to whole 16-byte words.
    """
    _check_pack_params(tn, lanes, bits, group)
    c = np.asarray(codes)
    s = np.asarray(scales)
    if c.ndim != 2 or c.dtype.kind not in "ui":
        raise ValueError(f"codes must be an integer [N, K] array, got {c.dtype} {c.shape}")
    n, k = c.shape
    if n < 1 or k < 1 or k % K_ALIGN:
        raise ValueError(f"weight shape [N={n}, K={k}]: need N >= 1 and K a multiple of {K_ALIGN}")
    if s.shape != (n, k // group) or s.dtype.kind not in "ui":
        raise ValueError(f"scales must be integer FP16 bits of shape {(n, k // group)}, "
                         f"got {s.dtype} {s.shape}")
    if np.any(c < 0) or np.any(c >= 1 << bits):
        raise ValueError(f"codes must fit in {bits} bits")
    if np.any(s < 0) or np.any(s > 0xFFFF):
        raise ValueError("scales must be 16-bit patterns")
    np_ = gemm_padded_n(n, tn)
    cp = np.zeros((np_, k), dtype=np.uint8 if 8 % bits == 0 else np.uint64)
    cp[:n] = c
    sp = np.zeros((np_, k // group), dtype=np.uint16)
    sp[:n] = s
    nblk, beats = np_ // tn, k // lanes
    # [nb, t, kb, j] -> [nb, kb, t, j]
    v = cp.reshape(nblk, tn, beats, lanes).transpose(0, 2, 1, 3)
    wb = gemm_code_word_bytes(lanes, bits)
    if 8 % bits == 0 and lanes * bits % 8 == 0:
        # whole codes per byte: lane j in byte j // per at bit (j % per) * bits
        per = 8 // bits
        vv = v.astype(np.uint8).reshape(v.shape[:3] + (lanes // per, per))
        packed = np.zeros(vv.shape[:-1], dtype=np.uint8)
        for j in range(per):
            packed |= (vv[..., j] << (j * bits)).astype(np.uint8)
        entry = np.zeros(v.shape[:3] + (wb,), dtype=np.uint8)
        entry[..., :packed.shape[-1]] = packed
        code_bytes = entry.tobytes()
    else:
        # bit matrix: lane j's code occupies bits [j*bits, (j+1)*bits) of the entry
        bitpos = np.arange(lanes)[:, None] * bits + np.arange(bits)[None, :]          # [lanes, bits]
        bitval = (v[..., None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)     # [..., lanes, bits]
        entry_bits = np.zeros(v.shape[:3] + (wb * 8,), dtype=np.uint8)
        entry_bits[..., bitpos.reshape(-1)] = bitval.reshape(v.shape[:3] + (lanes * bits,))
        code_bytes = np.packbits(entry_bits, axis=-1, bitorder="little").tobytes()
    per = -(-2 * tn // BUS_BYTES) * BUS_BYTES
    sb = np.zeros((nblk, k // group, per // 2), dtype="<u2")
    sb[:, :, :tn] = sp.reshape(nblk, tn, k // group).transpose(0, 2, 1)
    return code_bytes, sb.tobytes()


def unpack_gemm_weights(code_bytes: bytes, scale_bytes: bytes, n: int, k: int, *, tn: int,
                        lanes: int, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack_gemm_weights`: ``(codes uint8 [n, k], scales uint16 [n, k/group])``."""
    _check_pack_params(tn, lanes, bits, group)
    if k % K_ALIGN or n < 1:
        raise ValueError(f"weight shape [N={n}, K={k}]: need N >= 1 and K a multiple of {K_ALIGN}")
    want_c = gemm_code_bytes(n, k, tn=tn, lanes=lanes, bits=bits)
    want_s = gemm_scale_bytes(n, k, tn=tn, group=group)
    if len(code_bytes) != want_c or len(scale_bytes) != want_s:
        raise ValueError(f"packed sizes {len(code_bytes)}/{len(scale_bytes)} bytes, expected "
                         f"{want_c}/{want_s} for N={n}, K={k}")
    np_ = gemm_padded_n(n, tn)
    nblk, beats = np_ // tn, k // lanes
    wb = gemm_code_word_bytes(lanes, bits)
    raw = np.frombuffer(code_bytes, dtype=np.uint8).reshape(nblk, beats, tn, wb)
    if 8 % bits == 0 and lanes * bits % 8 == 0:
        per = 8 // bits
        b = raw[..., :lanes // per]
        vals = np.stack([(b >> (j * bits)) & ((1 << bits) - 1) for j in range(per)], axis=-1)
        vals = vals.reshape(nblk, beats, tn, lanes)
    else:
        bitsarr = np.unpackbits(raw, axis=-1, bitorder="little")[..., :lanes * bits]
        bitsarr = bitsarr.reshape(nblk, beats, tn, lanes, bits).astype(np.uint8)
        vals = (bitsarr << np.arange(bits, dtype=np.uint8)).sum(axis=-1, dtype=np.uint16)
    codes = vals.transpose(0, 2, 1, 3).reshape(np_, k)[:n].astype(np.uint8)
    per = -(-2 * tn // BUS_BYTES) * BUS_BYTES
    sb = np.frombuffer(scale_bytes, dtype="<u2").reshape(nblk, k // group, per // 2)[:, :, :tn]
    scales = sb.transpose(0, 2, 1).reshape(np_, k // group)[:n].astype(np.uint16)
    return codes, scales


def pack_signs(signs_pm1) -> bytes:
    """16 bytes for GEMM's signs_addr from the package's +-1 sign vector (128 values):
    bit ``k`` (little-endian over the bytes) = 1 when Hadamard output ``k`` is
    negated (``signs_pm1[k] == -1``)."""
    d = np.asarray(signs_pm1)
    if d.shape != (HAD_GROUP,) or d.dtype.kind not in "iuf" or not np.all((d == 1) | (d == -1)):
        raise ValueError(f"need {HAD_GROUP} signs in {{+1, -1}}, got {d.dtype} {d.shape}; "
                         "for 0/1 sign bits use pack_sign_bits")
    return pack_sign_bits((d < 0).astype(np.uint8))


def pack_sign_bits(bits) -> bytes:
    """16 bytes from 128 sign bits (``golden.hadamard`` convention: 1 = negate)."""
    b = np.asarray(bits)
    if b.shape != (HAD_GROUP,) or b.dtype.kind not in "iub" or np.any((b != 0) & (b != 1)):
        raise ValueError(f"need {HAD_GROUP} sign bits in {{0, 1}}, got {b.dtype} {b.shape}")
    return np.packbits(b.astype(np.uint8), bitorder="little").tobytes()


def unpack_signs(raw: bytes) -> np.ndarray:
    """The 128 sign bits (uint8, 1 = negate) of :func:`pack_signs` output."""
    if len(raw) != HAD_GROUP // 8:
        raise ValueError(f"signs are {HAD_GROUP // 8} bytes, got {len(raw)}")
    return np.unpackbits(np.frombuffer(bytes(raw), dtype=np.uint8), bitorder="little")
