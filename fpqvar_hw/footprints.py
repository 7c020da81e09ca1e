"""The DRAM bytes an instruction touches (``docs/top.md``): per-element VEC operand
addresses, GEMM row addresses, merged ``[start, end)`` interval sets, an instruction's
:class:`Footprint` (reads and writes; the hazard check of the compiler's sync flags)
and the fast window check :func:`accesses_in_window` (error 2 of the engines).

An instruction must pass its field checks (:meth:`fpqvar_hw.isa.Gemm.check`,
:meth:`fpqvar_hw.isa.Vec.check`) first; the GEMM weight sizes come from
:mod:`fpqvar_hw.packing`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .isa import HAD_GROUP, Gemm, Halt, Instruction, Operand, Vec
from .packing import gemm_code_bytes, gemm_padded_n, gemm_scale_bytes

__all__ = ['vec_addresses', 'gemm_row_addresses', 'merge_intervals', 'intervals_overlap', 'Footprint', 'footprint', 'accesses_in_window']


def vec_addresses(v: Vec, name: str) -> np.ndarray:
    """Byte addresses (int64, mod 2^32) of operand ``name``'s elements in loop
    order, shape ``(n3, n2, n1, n0)``; ``(n3, n2, n1, 1)`` for the one-per-row
    operands (:meth:`Vec.row_const`: FDOT's D, L2NT's B, KVQ6's C)."""
    op: Operand = getattr(v, name)
    n0, n1, n2, n3 = v.n
    if v.row_const(name):
        n0 = 1
    i0 = np.arange(n0, dtype=np.int64) * op.s0
    i1 = np.arange(n1, dtype=np.int64) * op.s1
    i2 = np.arange(n2, dtype=np.int64) * op.s2
    i3 = np.arange(n3, dtype=np.int64) * op.s3
    a = op.base + i3[:, None, None, None] + i2[None, :, None, None] + i1[None, None, :, None] \
        + i0[None, None, None, :]
    return a & 0xFFFFFFFF


def _operand_dims(v: Vec, name: str) -> tuple[int, list[tuple[int, int]]]:
    """``(base, [(count, stride), ...])`` of an operand's loop nest (row-const: n0 = 1)."""
    op: Operand = getattr(v, name)
    counts = (1,) + tuple(v.n[1:]) if v.row_const(name) else tuple(v.n)
    return op.base, list(zip(counts, op.strides))


def _operand_bounds(v: Vec, name: str) -> tuple[int, int]:
    """Lowest address and end of the highest element, without wrap-around when the
    operand does not cross 0 or 2^32 (else from the wrapped element addresses)."""
    base, dims = _operand_dims(v, name)
    size = v.elem_bytes(name)
    lo = base + sum(min(0, (n - 1) * st) for n, st in dims)
    hi = base + sum(max(0, (n - 1) * st) for n, st in dims) + size
    if lo < 0 or hi > 1 << 32:
        a = vec_addresses(v, name)
        return int(a.min()), int(a.max()) + size
    return lo, hi


def _operand_intervals(v: Vec, name: str) -> np.ndarray:
    """Merged byte intervals of an operand, without enumerating every element:
    dims with count 1 or stride 0 are dropped, negative strides flipped, and
    dims whose stride does not exceed the contiguous run so far extend the run."""
    base, dims = _operand_dims(v, name)
    length = v.elem_bytes(name)
    rest = []
    for n, st in dims:
        if n == 1 or st == 0:
            continue
        if st < 0:
            base += (n - 1) * st
            st = -st
        rest.append((n, st))
    rest.sort(key=lambda d: d[1])
    outer = []
    for n, st in rest:
        if not outer and st <= length:
            length += (n - 1) * st
        else:
            outer.append((n, st))
    starts = np.array([base], dtype=np.int64)
    for n, st in outer:
        starts = (starts[:, None] + np.arange(n, dtype=np.int64)[None, :] * st).ravel()
    return _intervals(starts & 0xFFFFFFFF, length)


def gemm_row_addresses(base: int, stride: int, m: int) -> np.ndarray:
    """Start addresses (int64, mod 2^32) of the M rows of a GEMM operand."""
    return (base + np.arange(m, dtype=np.int64) * stride) & 0xFFFFFFFF


def _intervals(starts: np.ndarray, length: int) -> np.ndarray:
    """Sorted, merged ``[start, end)`` intervals ``int64 [k, 2]`` of equal-length accesses."""
    s = np.sort(np.asarray(starts, dtype=np.int64), axis=None)
    if s.size > 1:
        s = s[np.concatenate([[True], s[1:] != s[:-1]])]
    if s.size == 0:
        return np.zeros((0, 2), np.int64)
    e = s + length
    # merge where the next start <= the running end (sorted starts, equal lengths)
    brk = np.nonzero(s[1:] > e[:-1])[0]
    first = np.concatenate([[0], brk + 1])
    last = np.concatenate([brk, [s.size - 1]])
    return np.stack([s[first], e[last]], axis=1)


def merge_intervals(*parts: np.ndarray) -> np.ndarray:
    """Union of interval arrays as one sorted, merged ``int64 [k, 2]`` array."""
    iv = np.concatenate([p for p in parts if p.size] or [np.zeros((0, 2), np.int64)])
    if iv.shape[0] == 0:
        return iv
    iv = iv[np.argsort(iv[:, 0], kind="stable")]
    run_end = np.maximum.accumulate(iv[:, 1])
    brk = np.nonzero(iv[1:, 0] > run_end[:-1])[0]
    first = np.concatenate([[0], brk + 1])
    last = np.concatenate([brk, [iv.shape[0] - 1]])
    return np.stack([iv[first, 0], run_end[last]], axis=1)


def intervals_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two sorted, merged interval arrays share a byte."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return False
    # for every interval of a: the first interval of b that ends after its start
    j = np.searchsorted(b[:, 1], a[:, 0], side="right")
    ok = j < b.shape[0]
    return bool(np.any(b[j[ok], 0] < a[ok, 1]))


@dataclass(frozen=True)
class Footprint:
    """DRAM bytes an instruction reads and writes: sorted, merged ``[start, end)``
    interval arrays (int64 ``[k, 2]``, addresses as generated, mod 2^32)."""

    reads: np.ndarray
    writes: np.ndarray

    def conflicts(self, other: "Footprint") -> bool:
        """RAW, WAR or WAW between the two instructions."""
        return (intervals_overlap(self.reads, other.writes) or intervals_overlap(self.writes, other.reads)
                or intervals_overlap(self.writes, other.writes))

    def within(self, dram_base: int, dram_size: int) -> bool:
        """Every access inside ``[dram_base, dram_base + dram_size)``."""
        lo, hi = dram_base, dram_base + dram_size
        return all(iv.shape[0] == 0 or (iv[0, 0] >= lo and iv[-1, 1] <= hi)
                   for iv in (self.reads, self.writes))


def accesses_in_window(instr: Instruction, dram_base: int, dram_size: int, *, tn: int, lanes: int,
                       bits: int, group: int) -> bool:
    """``footprint(instr).within(dram_base, dram_size)``, computed from the lowest
    and highest address of each access stream only (fast; the error-2 check)."""
    lo, hi = dram_base, dram_base + dram_size
    if isinstance(instr, Halt):
        return True
    spans: list[tuple[int, int]] = []
    if isinstance(instr, Gemm):
        g = instr
        for base, stride, n in ((g.act_addr, g.act_stride, 4 * g.k), (g.out_addr, g.out_stride, 4 * g.n)):
            rows = gemm_row_addresses(base, stride, g.m)
            spans.append((int(rows.min()), int(rows.max()) + n))
        spans.append((g.w_addr, g.w_addr + gemm_code_bytes(g.n, g.k, tn=tn, lanes=lanes, bits=bits)))
        spans.append((g.ws_addr, g.ws_addr + gemm_scale_bytes(g.n, g.k, tn=tn, group=group)))
        if g.bias:
            spans.append((g.bias_addr, g.bias_addr + 4 * gemm_padded_n(g.n, tn)))
        if g.had:
            spans.append((g.signs_addr, g.signs_addr + HAD_GROUP // 8))
    else:
        spans += [_operand_bounds(instr, nm) for nm in instr.operands]
    return all(lo <= s and e <= hi for s, e in spans)


def footprint(instr: Instruction, *, tn: int, lanes: int, bits: int, group: int) -> Footprint:
    """The :class:`Footprint` of a valid instruction (call ``check()`` first).

    GEMM: activation rows (``K*4`` bytes each), the packed codes and scales
    (:func:`gemm_code_bytes` / :func:`gemm_scale_bytes`), the bias (``4*ceil(N/Tn)*Tn``
    bytes, flag BIAS), the signs (16 bytes, flag HAD); writes the ``N*4`` bytes of
    each output row.  VEC: every element of the operands it uses
    (:attr:`Vec.operands`, :func:`vec_addresses`), written ones (:attr:`Vec.writes`:
    D, and C of KVQ6) as writes.  HALT: nothing.
    """
    empty = np.zeros((0, 2), np.int64)
    if isinstance(instr, Halt):
        return Footprint(empty, empty)
    if isinstance(instr, Gemm):
        g = instr
        reads = [_intervals(gemm_row_addresses(g.act_addr, g.act_stride, g.m), 4 * g.k),
                 np.array([[g.w_addr, g.w_addr + gemm_code_bytes(g.n, g.k, tn=tn, lanes=lanes,
                                                                 bits=bits)]], np.int64),
                 np.array([[g.ws_addr, g.ws_addr + gemm_scale_bytes(g.n, g.k, tn=tn, group=group)]],
                          np.int64)]
        if g.bias:
            reads.append(np.array([[g.bias_addr, g.bias_addr + 4 * gemm_padded_n(g.n, tn)]], np.int64))
        if g.had:
            reads.append(np.array([[g.signs_addr, g.signs_addr + HAD_GROUP // 8]], np.int64))
        writes = _intervals(gemm_row_addresses(g.out_addr, g.out_stride, g.m), 4 * g.n)
        return Footprint(merge_intervals(*reads), writes)
    v = instr
    reads = [_operand_intervals(v, nm) for nm in v.operands if nm not in v.writes]
    writes = [_operand_intervals(v, nm) for nm in v.writes]
    return Footprint(merge_intervals(*reads), merge_intervals(*writes))
