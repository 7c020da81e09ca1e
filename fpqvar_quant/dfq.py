"""Dual Format Quantization (DFQ) for FC2 inputs, and the AFPQ baseline.

FC2's input is a GELU(tanh) output: a short negative side (min about -0.17)
and a long positive tail.  DFQ quantizes the two sides of each group with
separate scales *and* separate grids; the sign bit of the code selects the grid.

Variants (``DFQSpec.variant``):

* ``"fp4"`` -- 4-bit codes.  Negatives (``x <= 0``, zero included) on the
  e1m2fn grid with ``s_neg = R(max|x <= 0| / 1.75)``; positives on e2m1fn with
  ``s_pos = R(max(x > 0) / 6)``.  Code = ``1 | e1m2fn magnitude code (3 bits)``
  for ``x <= 0``, ``0 | e2m1fn magnitude code`` for ``x > 0``.
* ``"fp6"`` -- 6-bit codes.  Negatives on the uniform integer grid 0..31 (5
  magnitude bits) with ``s_neg = R(max|x <= 0| / 31)``; positives on e2m3fn
  (``s_pos = R(max / 7.5)``).  Code = ``1 | n`` (``n`` = 0..31) for
  ``x <= 0``, ``0 | e2m3fn magnitude code`` otherwise.  (The reference code
  divides by 32, a 33-level grid that does not fit 6 bits; not copied.)
* ``"afpq"`` -- baseline: the same format (``afpq_fmt``, default e2m1fn) on both
  sides with separate scales ``max|x <= 0| / fmax`` and ``max(x > 0) / fmax``;
  codes are the format's sign-magnitude codes of ``x / s_side`` (except that
  ``+0.0`` is on the negative side too, code ``1 | 0``, outside all-zero
  groups).  Float formats only.

``R`` is the scale rounding of :mod:`fpqvar_quant.quantize` for
``scale_format`` (default fp16: RNE of the exact quotient, 2**-24 on
underflow).  Element rounding is the registry's: nearest, ties to the even
code, saturating.  ``tie="reference"`` follows the official FPQVAR CUDA kernel,
which rounds the signed normalised values and sends every tie toward +inf: on
the positive side to the larger magnitude, on the negative side toward zero
(the smaller magnitude; e.g. fp4 ``-0.375 * s_neg`` -> ``-0.25 * s_neg``).
A group with no negatives (or no positives) gets
``scale_neg == 0`` (``scale_pos == 0``) and its would-be elements of that side
do not exist, so nothing is NaN.  An **all-zero group** (every element +-0)
gives zero scales, **all codes 0** and values ``+0.0`` in every variant, like
the golden model and the hardware quantizer (``docs/numerics.md`` section 3:
the zero-group check comes before the side select).
Dequantized value of a negative-side code with magnitude value ``v``:
``-(s_neg * v)`` (so ``x = 0`` in a group with a nonzero element comes back as
``-0.0``; compare with ``==``).

Granularity: ``group_size`` consecutive elements of the last dim (must divide
it), or ``group_size=None`` for one group per token (row over the last dim).
Scales have shape ``x.shape[:-1] + (K // group_size,)`` (``(..., 1)`` per token).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from .formats import dfq_format, get_format
from .quantize import (CHUNK, TIE_MAGNITUDE_DOWN, Granularity, QuantSpec, ChunkQuantizer,
                       minmax_rows, row_len, scales_from_absmax, serial, to_torch)

__all__ = ["DFQSpec", "DFQResult", "dfq_quantize", "dfq_fake_quant", "dfq_dequantize",
           "DFQ_VARIANTS"]

DFQ_VARIANTS = ("fp4", "fp6", "afpq")


@dataclass(frozen=True)
class DFQSpec:
    """Frozen DFQ configuration (see the module docstring).

    variant: ``"fp4" | "fp6" | "afpq"``.
    group_size: elements per group along the last dim, or ``None`` = per token.
    scale_format: ``"fp32" | "fp16" | "e8m0" | "e4m3"`` (as in QuantSpec).
    tie: ``"even"`` (contract) or ``"reference"`` (official CUDA kernel: ties
        toward +inf; on the negative side that is toward zero).
    afpq_fmt: element format of both sides for ``variant="afpq"``.
    """

    variant: str = "fp4"
    group_size: int | None = 128
    scale_format: str = "fp16"
    tie: str = "even"
    afpq_fmt: str = "e2m1fn"

    def __post_init__(self) -> None:
        if self.variant not in DFQ_VARIANTS:
            raise ValueError(f"unknown DFQ variant {self.variant!r}; valid: {', '.join(DFQ_VARIANTS)}")
        if self.variant == "afpq" and get_format(self.afpq_fmt).kind != "float":
            raise ValueError(f"afpq_fmt must be a float element format, got {self.afpq_fmt!r}")
        # validate the rest through the side specs (same messages as QuantSpec)
        self.side_specs()

    def side_specs(self) -> tuple[QuantSpec, QuantSpec]:
        """(negative-side spec, positive-side spec) quantizing magnitudes."""
        if self.variant == "afpq":
            neg = pos = self.afpq_fmt
        else:                                   # the one table of DFQ halves (formats.py)
            neg, pos = dfq_format(self.variant).neg, dfq_format(self.variant).pos
        if self.group_size is None:
            kw = dict(granularity=Granularity.PER_TOKEN, group_size=None)
        else:
            kw = dict(granularity=Granularity.PER_GROUP, group_size=self.group_size)
        return (QuantSpec(neg, scale_format=self.scale_format, tie=self.tie, **kw),
                QuantSpec(pos, scale_format=self.scale_format, tie=self.tie, **kw))

    @property
    def bits(self) -> int:
        """Code width: 4 (fp4), 6 (fp6) or the AFPQ format's width."""
        return {"fp4": 4, "fp6": 6}.get(self.variant) or get_format(self.afpq_fmt).bits


class DFQResult(NamedTuple):
    """``codes`` (uint8, shape of x), ``scale_neg``/``scale_pos`` (float32,
    ``[..., K // G]``), ``dequant`` (dtype of x); numpy or torch like x."""

    codes: Any
    scale_neg: Any
    scale_pos: Any
    dequant: Any


def _dfq(t: torch.Tensor, spec: DFQSpec, want_codes: bool = True
         ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes or None, scale_neg, scale_pos, dequant) of a validated tensor.

    One chunked pass like :func:`fpqvar_quant.quantize._run`: per row (group)
    ``a_pos = max(max x, 0)`` and ``a_neg = max(-min x, 0)``; per chunk the
    negative side quantizes ``max(-x, 0)`` with ``s_neg`` and the positive side
    ``max(x, 0)`` with ``s_pos``, each with the quantizer's element pass
    (:class:`fpqvar_quant.quantize.ChunkQuantizer`), and ``x <= 0`` selects
    between them, except in all-zero groups (``a_neg == a_pos == 0``), whose
    elements all take the positive side: code 0, value +0.0.
    """
    neg_spec, pos_spec = spec.side_specs()
    fn, fp = neg_spec.format, pos_spec.format
    with serial(t.device):
        L = row_len(t.shape, pos_spec)
        x2 = t.contiguous().view(-1, L)
        mx, mn = minmax_rows(x2)
        a_pos = np.maximum(mx.to(torch.float64).cpu().numpy(), 0.0)
        a_neg = np.maximum(-mn.to(torch.float64).cpu().numpy(), 0.0)
        s_neg = scales_from_absmax(a_neg, fn, spec.scale_format)
        s_pos = scales_from_absmax(a_pos, fp, spec.scale_format)
        rows, dev = x2.shape[0], t.device
        zero_np = (a_neg == 0) & (a_pos == 0)              # all-zero groups: codes 0
        any_zero = bool(zero_np.any())
        zero_rows = torch.from_numpy(zero_np).to(dev)
        # negative side rounds magnitudes: the reference's toward-+inf ties on -|x|
        # are toward zero there (ties down on |x|)
        neg_tie = TIE_MAGNITUDE_DOWN if spec.tie == "reference" else spec.tie
        cdt = torch.float64 if t.dtype == torch.float64 else torch.float32
        out = torch.empty(x2.shape, dtype=t.dtype, device=dev)
        codes = torch.empty(x2.shape, dtype=torch.uint8, device=dev) if want_codes else None
        step = max(1, CHUNK // L)
        r = min(step, rows)
        sides = ((ChunkQuantizer(fn, neg_tie, s_neg, r, L, cdt, dev), True),
                 (ChunkQuantizer(fp, spec.tie, s_pos, r, L, cdt, dev), False))
        sel = torch.empty((r, L), dtype=cdt, device=dev) if out.dtype != cdt else None
        sign = 1 << (spec.bits - 1)
        for i in range(0, rows, step):
            j = min(i + step, rows)
            xc, k = x2[i:j], j - i
            neg = xc <= 0
            if any_zero:
                neg &= ~zero_rows[i:j, None]
            vals, side_codes = [], []
            for quant, flip in sides:
                q = quant.scratch(k)
                q.copy_(xc)                                    # exact widening
                if flip:
                    q.neg_()
                q.clamp_(min=0)
                v, c = quant(q, i, want_codes=want_codes)
                vals.append(v.abs_())                          # magnitude (no -0)
                side_codes.append(c & (sign - 1) if c is not None else None)
            if sel is None:
                torch.where(neg, vals[0].neg_(), vals[1], out=out[i:j])
            else:                                              # one rounding to x's dtype
                out[i:j].copy_(torch.where(neg, vals[0].neg_(), vals[1], out=sel[:k]))
            if codes is not None:
                codes[i:j] = torch.where(neg, side_codes[0] | sign, side_codes[1])
    shape = t.shape
    scale_shape = (*shape[:-1], shape[-1] // L)
    return (codes.view(shape) if codes is not None else None,
            torch.from_numpy(s_neg).reshape(scale_shape).to(t.device),
            torch.from_numpy(s_pos).reshape(scale_shape).to(t.device), out.view(shape))


def dfq_quantize(x: Any, spec: DFQSpec) -> DFQResult:
    """Dual-format quantization of ``x`` (``[..., K]``); numpy or torch."""
    t, was_np = to_torch(x)
    with torch.no_grad():
        out = _dfq(t.detach(), spec)
    if was_np:
        return DFQResult(*(o.numpy() for o in out))
    return DFQResult(*out)


def dfq_dequantize(codes: Any, scale_neg: Any, scale_pos: Any, spec: DFQSpec) -> Any:
    """Values of DFQ codes (float32): the inverse map used by the golden model.

    ``scale_neg``/``scale_pos`` have the layout of :class:`DFQResult`.
    """
    was_np = not isinstance(codes, torch.Tensor)
    c = torch.as_tensor(np.asarray(codes) if was_np else codes).to(torch.int64)
    sn = torch.as_tensor(scale_neg, dtype=torch.float32)
    sp = torch.as_tensor(scale_pos, dtype=torch.float32)
    neg_spec, pos_spec = spec.side_specs()
    L = c.shape[-1] // sn.shape[-1]
    sn = sn.repeat_interleave(L, dim=-1)
    sp = sp.repeat_interleave(L, dim=-1)
    sign_bit = 1 << (spec.bits - 1)
    if bool(((c < 0) | (c >= 2 * sign_bit)).any()):
        raise ValueError(f"DFQ {spec.variant} codes must lie in 0..{2 * sign_bit - 1}")
    is_neg = (c & sign_bit) != 0
    mag = c & (sign_bit - 1)
    vn = neg_spec.format.decode(mag.to(torch.uint8))
    vp = pos_spec.format.decode(mag.to(torch.uint8))
    out = torch.where(is_neg, -(sn * vn), sp * vp)
    return out.numpy() if was_np else out


class _DFQSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: DFQSpec) -> torch.Tensor:  # type: ignore[override]
        return _dfq(x.detach(), spec, want_codes=False)[3]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def dfq_fake_quant(x: Any, spec: DFQSpec) -> Any:
    """DFQ dequantized values; torch input is differentiable (straight-through)."""
    t, was_np = to_torch(x)
    if was_np:
        with torch.no_grad():
            return _dfq(t, spec, want_codes=False)[3].numpy()
    if t.requires_grad and torch.is_grad_enabled():
        return _DFQSTE.apply(t, spec)
    with torch.no_grad():
        return _dfq(t, spec, want_codes=False)[3]
