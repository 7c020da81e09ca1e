"""Scaled quantizers: codes + scales + dequantized values, and a torch fake quant.

Contract (``docs/numerics.md`` section 2 is the prose version of this docstring)
------------------------------------------------------------------------------
A :class:`QuantSpec` fixes the element format, the scale granularity, the scale
format and the tie rule.  The quantized axis is always the **last** dimension:
``x`` has shape ``[..., K]``.

Granularity (one scale per ...):

* ``PER_TENSOR`` -- the whole tensor.
* ``PER_TOKEN`` -- row: every index of the leading dimensions ``[...]``, over all
  ``K`` elements of the last dimension.  Used for dynamic activation scales
  (``x`` is ``[tokens, K]`` or ``[batch, tokens, K]``).
* ``PER_CHANNEL`` -- output channel of a weight ``W[N, K]`` (``y = x W^T``):
  one scale per row ``n`` over its ``K`` input channels.  Computationally the
  same as ``PER_TOKEN`` (one scale per row of the last dimension); the two names
  keep configurations readable.
* ``PER_GROUP`` -- ``group_size`` consecutive elements of the last dimension
  (``K % group_size == 0`` is required): scales have shape ``[..., K // G]``.

``QuantResult.scales`` has shape ``x.shape[:-1] + (n,)`` with ``n = K // G`` for
``PER_GROUP`` and ``n = 1`` for ``PER_TOKEN``/``PER_CHANNEL``; shape ``()`` for
``PER_TENSOR``.  Scales are returned as ``float32`` values (every scale format
is exactly representable in float32).

Scale of a group with ``a = max|x|`` (computed exactly) and ``fmax`` the element
format's ``max_value``:

* ``"fp16"`` (default): ``s = RNE_fp16(a / fmax)`` of the exact quotient (no
  double rounding, for any input dtype).  If ``a > 0`` and that rounds to zero,
  ``s = 2**-24`` (smallest FP16 subnormal).  Matches ``docs/numerics.md`` 3.
* ``"e4m3"`` (NVFP4-like, single level): ``s = RNE_e4m3fn(a / fmax)``, ties to
  the even code; underflow gives ``2**-9``.
* ``"e8m0"`` (OCP MX): ``s = 2**(floor(log2 a) - emax_elem)`` with
  ``emax_elem = floor(log2 fmax)``, exponent clamped below at -127.  ``a / s``
  may exceed ``fmax``; those elements saturate (as in the OCP MX spec).
* ``"fp32"``: ``s = RN_fp32(a / fmax)``; underflow gives ``2**-149``.

A scale that would not be finite in its format (fp16: quotient >= 65520, e4m3:
> 464, e8m0: exponent > 127, fp32: overflow) raises :class:`ValueError`.
An all-zero group (``a == 0``) gets scale ``0``, codes ``+0`` and dequantized
values ``+0.0`` -- never NaN.

Elements: ``code = round(x / s)`` onto the element grid, as if ``x / s`` were
exact, round to nearest, **ties to the even code** (``tie="even"``, the project
contract; equal to :meth:`Format.encode`), saturating at ``+-fmax``.
``tie="reference"`` instead follows the official FPQVAR CUDA kernel (a scan
of the sorted signed grid): **every tie goes toward +inf**, i.e. to the larger
grid value -- positive ties away from zero (2.5 -> 3), negative ties toward
zero (-2.5 -> -2); it changes nothing else.  The quotient is
computed in float32 (float64 for float64 inputs); for fp16/e4m3/e8m0 scales this
provably yields the exact-quotient rounding (the scale has <= 11 significant
bits, so a rounded quotient can never land on a grid midpoint it did not
already equal).  With ``"fp32"`` scales the code is the rounding of the float32
quotient ``fl(x / s)``.

Dequantized value: ``s * decode(code)`` rounded once to float32 (float64 for
float64 input; exact for fp16/e4m3/e8m0 scales) and then cast to the input
dtype (float16/bfloat16 inputs round there).  -0.0 keeps its sign bit like
:meth:`Format.encode` (a negative value that rounds to zero gives the ``-0``
code), except inside an all-zero group.

Errors: unknown or non-element format, bad granularity/scale format/tie
(``ValueError``); non-floating input (``TypeError``); empty input, 0-d input,
``group_size`` not dividing ``K``, NaN/Inf in the data, non-finite scale
(``ValueError``).

Speed: element rounding is arithmetic (exponent bits + round-half-even on the
scaled integer), processed in cache-sized chunks with reused scratch buffers;
bit-identical to :meth:`Format.encode` (tested exhaustively).
"""
from __future__ import annotations

import contextlib
import enum
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

from .formats import Format, get_format

__all__ = ["Granularity", "QuantSpec", "QuantResult", "quantize", "fake_quant",
           "compute_scales", "SCALE_FORMATS", "TIE_MODES",
           # the element-pass kernel API, shared with fpqvar_quant.dfq (each DFQ side is one pass)
           "CHUNK", "TIE_MAGNITUDE_DOWN", "ChunkQuantizer", "minmax_rows", "row_len",
           "scales_from_absmax", "serial", "to_torch", "round_chunk", "codes_chunk"]

SCALE_FORMATS = ("fp32", "fp16", "e8m0", "e4m3")
TIE_MODES = ("even", "reference")
#: Kernel tie rule (not a QuantSpec option): ties toward -inf.  The DFQ negative
#: side uses it on magnitudes for ``tie="reference"`` (see :mod:`fpqvar_quant.dfq`).
TIE_MAGNITUDE_DOWN = "_magnitude_down"

#: Elements per chunk of the element pass (float32: 1 MiB, L2-sized).  Every
#: chunk op is a fused pass over cache-resident scratch buffers that are reused,
#: so the only large allocation is the output.
CHUNK = 1 << 18


class Granularity(str, enum.Enum):
    """Which elements share one scale (see the module docstring)."""

    PER_TENSOR = "tensor"
    PER_CHANNEL = "channel"
    PER_TOKEN = "token"
    PER_GROUP = "group"


@dataclass(frozen=True)
class QuantSpec:
    """Frozen quantizer configuration.

    fmt: element format name from :mod:`fpqvar_quant.formats` (not ``e8m0fnu``).
    granularity: :class:`Granularity` or its value string
        (``"tensor" | "channel" | "token" | "group"``).
    group_size: elements per group along the last dim; required (> 0) for
        ``PER_GROUP``, normalised to ``None`` for the other granularities.
    scale_format: ``"fp32" | "fp16" | "e8m0" | "e4m3"``.
    tie: ``"even"`` (contract) or ``"reference"`` (ties toward +inf, the
        official FPQVAR CUDA kernel).
    """

    fmt: str
    granularity: Granularity | str = Granularity.PER_GROUP
    group_size: int | None = 128
    scale_format: str = "fp16"
    tie: str = "even"

    def __post_init__(self) -> None:
        f = get_format(self.fmt)
        if f.kind == "scale":
            raise ValueError(f"{f.name} is a scale format, not an element format; "
                             "pass it as scale_format='e8m0' instead")
        object.__setattr__(self, "fmt", f.name)
        try:
            g = Granularity(self.granularity)
        except ValueError:
            raise ValueError(f"unknown granularity {self.granularity!r}; valid: "
                             f"{', '.join(m.value for m in Granularity)}") from None
        object.__setattr__(self, "granularity", g)
        if g is Granularity.PER_GROUP:
            gs = self.group_size
            if isinstance(gs, bool) or not isinstance(gs, (int, np.integer)) or gs <= 0:
                raise ValueError(f"PER_GROUP needs a positive integer group_size, got {gs!r}")
            object.__setattr__(self, "group_size", int(gs))
        else:
            object.__setattr__(self, "group_size", None)
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(f"unknown scale_format {self.scale_format!r}; valid: "
                             f"{', '.join(SCALE_FORMATS)}")
        if self.tie not in TIE_MODES:
            raise ValueError(f"unknown tie mode {self.tie!r}; valid: {', '.join(TIE_MODES)}")

    @property
    def format(self) -> Format:
        return get_format(self.fmt)


class QuantResult(NamedTuple):
    """``codes`` (uint8, shape of x), ``scales`` (float32, see module doc),
    ``dequant`` (dtype of x) -- numpy arrays or torch tensors like the input."""

    codes: Any
    scales: Any
    dequant: Any


# ----------------------------------------------------------------- helpers
def to_torch(x: Any) -> tuple[torch.Tensor, bool]:
    """Validate the input and return it as a torch tensor (+ was-numpy flag)."""
    if isinstance(x, torch.Tensor):
        t, was_np = x, False
    else:
        a = np.asarray(x)
        if a.ndim == 0:
            raise ValueError("quantize needs at least one dimension (the quantized axis is "
                             "the last one); reshape a scalar with x.reshape(1)")
        if a.dtype.kind != "f":
            raise TypeError(f"quantize expects floating-point data, got dtype {a.dtype}; "
                            "convert with .astype(np.float32)")
        a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("="), copy=False)
        if not a.flags.writeable:               # torch.from_numpy warns on read-only views
            a = a.copy()
        t, was_np = torch.from_numpy(a), True
    if not t.is_floating_point():
        raise TypeError(f"quantize expects floating-point data, got dtype {t.dtype}; "
                        "convert with .float()")
    if t.dim() == 0:
        raise ValueError("quantize needs at least one dimension (the quantized axis is the "
                         "last one); reshape a scalar with x.reshape(1)")
    if t.numel() == 0:
        raise ValueError(f"cannot quantize an empty tensor (shape {tuple(t.shape)})")
    return t, was_np


def row_len(shape: torch.Size, spec: QuantSpec) -> int:
    """Length of the runs of consecutive elements that share one scale."""
    k = shape[-1]
    if spec.granularity is Granularity.PER_GROUP:
        if k % spec.group_size:
            raise ValueError(f"group_size must divide K={k}, got {spec.group_size}")
        return spec.group_size
    return k


def _emax_elem(f: Format) -> int:
    return int(np.floor(np.log2(f.max_value)))


@lru_cache(maxsize=None)
def _scale_grid(scale_format: str, fmax: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid values, thresholds ``midpoint * fmax`` and codes for grid scale formats.

    The grid ends with one "overflow" point (the first non-finite code), so a
    quotient rounding to it is detected.  Thresholds are exact in float64.
    """
    if scale_format == "fp16":
        codes = np.arange(0, 0x7C01, dtype=np.int64)              # 0 .. +inf
        vals = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
        vals = np.append(vals, 65536.0)                          # inf surrogate
    else:  # e4m3
        f = get_format("e4m3fn")
        vals = np.append(f.positive_grid, 480.0)                 # 0x7F would be 480
        codes = np.append(f.magnitude_codes.astype(np.int64), 0x7F)
    thr = (vals[:-1] + vals[1:]) / 2 * fmax
    return vals, thr, codes


def scales_from_absmax(a: np.ndarray, f: Format, scale_format: str) -> np.ndarray:
    """Scale values (float32) from exact per-group absmax ``a`` (float64 numpy).

    Done in numpy: the scale tensor is ``group_size`` times smaller than the
    data, and single-threaded numpy avoids torch's thread barriers there.
    """
    fmax = f.max_value
    pos = a > 0
    if scale_format in ("fp16", "e4m3"):
        vals, thr, codes = _scale_grid(scale_format, fmax)
        n_thr = thr.size
        idx = np.searchsorted(thr, a, side="left")              # thr[idx-1] < a <= thr[idx]
        tie = (idx < n_thr) & (thr[np.minimum(idx, n_thr - 1)] == a)
        up_even = (codes[np.minimum(idx + 1, n_thr)] & 1) == 0
        idx = np.where(tie & up_even, idx + 1, idx)
        over = idx == n_thr
        if over.any():
            bad = float(a[over].ravel()[0])
            raise ValueError(f"scale absmax/{fmax:g} = {bad / fmax:.6g} is not finite in "
                             f"scale format {scale_format}; use scale_format='fp32' or "
                             "rescale the data")
        idx = np.where((idx == 0) & pos, 1, idx)                # underflow: smallest step
        return vals.astype(np.float32)[idx]
    if scale_format == "e8m0":
        _, e = np.frexp(np.where(pos, a, 1.0))
        ex = np.maximum(e.astype(np.int64) - 1 - _emax_elem(f), -127)
        if (ex > 127).any():
            raise ValueError("e8m0 scale exponent exceeds 127 (data too large for an e8m0 "
                             "scale); use scale_format='fp32'")
        return np.where(pos, np.ldexp(np.float32(1.0), ex), np.float32(0.0)).astype(np.float32)
    with np.errstate(over="ignore"):
        s = (a / fmax).astype(np.float32)                        # fp32
    if not np.isfinite(s).all():
        raise ValueError("scale overflows float32 (data too large); rescale the data")
    return np.where((s == 0) & pos, np.float32(2.0 ** -149), s)


def minmax_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max, min) of every row of a 2-D tensor, chunked; raises on NaN/Inf."""
    rows, L = x2.shape
    mx = torch.empty(rows, dtype=x2.dtype, device=x2.device)
    mn = torch.empty_like(mx)
    step = max(1, CHUNK // L)
    for i in range(0, rows, step):
        torch.amax(x2[i:i + step], dim=-1, out=mx[i:i + step])
        torch.amin(x2[i:i + step], dim=-1, out=mn[i:i + step])
    if not bool((torch.isfinite(mx) & torch.isfinite(mn)).all()):   # amax/amin keep NaN
        raise ValueError("input contains NaN or Inf; quantizers need finite data "
                         "(clip or replace non-finite values first)")
    return mx, mn


def _absmax_rows(x2: torch.Tensor) -> torch.Tensor:
    """max|row| of a 2-D tensor (chunked); raises on NaN/Inf."""
    mx, mn = minmax_rows(x2)
    return torch.maximum(mx, mn.neg_())


def _prepare(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """2-D view ``[rows, L]`` (constant scale per row), per-row scale and absmax.

    Scales and absmax are numpy (float32 / float64), one entry per row.
    """
    L = row_len(x.shape, spec)
    x2 = x.contiguous().view(-1, L)
    a = np.abs(_absmax_rows(x2).to(torch.float64).cpu().numpy())      # -0.0 -> +0.0
    if spec.granularity is Granularity.PER_TENSOR:
        a = np.full_like(a, a.max())
    return x2, scales_from_absmax(a, spec.format, spec.scale_format), a


def _scales_shape(x: torch.Tensor, spec: QuantSpec, s_rows: np.ndarray) -> torch.Tensor:
    """Per-row scales reshaped to the public layout (torch, on x's device)."""
    if spec.granularity is Granularity.PER_TENSOR:
        s = torch.tensor(s_rows[0], dtype=torch.float32)
    else:
        n = x.shape[-1] // spec.group_size if spec.granularity is Granularity.PER_GROUP else 1
        s = torch.from_numpy(s_rows).reshape(*x.shape[:-1], n)
    return s.to(x.device)


_INT_VIEW = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}


@contextlib.contextmanager
def serial(device: torch.device):
    """Run the chunk loops with one intra-op thread on CPU (restored after).

    The chunks are cache-sized, so threads buy little there, while on a loaded
    machine every multi-threaded op waits on a barrier (measured here: 30 s
    instead of 0.35 s for the 4096x4096 benchmark at load average 8 on 2 cores).
    OpenMP keeps the thread count per calling thread, so other Python threads are
    not affected.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def round_chunk(q: torch.Tensor, eb: torch.Tensor | None, tmp: torch.Tensor,
                 f: Format, tie: str) -> None:
    """Round the scaled values ``q`` in place to *grid integers* ``n``.

    For float formats the value is ``n * quantum`` with ``quantum = 2**(ec - m)``,
    ``ec = max(floor(log2|q|), 1 - bias)``; on return ``eb`` holds the bits of
    ``quantum`` (viewed as an integer) and ``q`` holds ``n`` (signed, -0 kept).
    For int formats ``q`` holds the integer.  Saturation happens first (clamp
    to +-max, which is on the grid).  ``tmp`` is float scratch of q's shape.
    """
    q.clamp_(-f.max_value, f.max_value)
    ity, mbits_native, ebias = _INT_VIEW[q.dtype]
    if f.kind == "float":
        torch.bitwise_and(q.view(ity), ((1 << (ity.itemsize * 8 - 1)) - 1)
                          ^ ((1 << mbits_native) - 1), out=eb)
        eb.clamp_(min=(1 - f.bias + ebias) << mbits_native)     # 2^ec
        eb.sub_(f.mbits << mbits_native)                         # 2^(ec - m)
        q.div_(eb.view(q.dtype))                                 # exact: power of two
    # |q| <= 2^(m+1) (float) or <= 127 (int): adding 1.5 * 2^p (p = native
    # mantissa bits) lands in [2^p, 2^(p+1)) where the ulp is 1, so the hardware's
    # round-half-even rounds q to an integer (ties to even n).  torch.round is
    # avoided: it is ~100x slower than an add on CPU.  Float formats restore the
    # sign (for -0) from q with copysign.
    magic = 1.5 * 2.0 ** mbits_native
    torch.add(q, magic, out=tmp)
    tmp.sub_(magic)
    if tie == "reference":
        # the FPQVAR CUDA kernel scans its sorted signed grid: every tie goes to
        # the larger grid value, toward +inf (positives away from zero, negatives
        # toward zero).  Ties that round-half-even sent down (n = q - 1/2) go up.
        tmp.add_(((q - tmp) == 0.5).to(q.dtype))
    elif tie == TIE_MAGNITUDE_DOWN:
        # internal (DFQ negative side, which rounds magnitudes |x| >= 0): the
        # reference kernel's toward-+inf rule on the negative values -|x| is
        # toward zero, i.e. down, on the magnitudes.  Ties sent up go down.
        tmp.sub_(((tmp - q) == 0.5).to(q.dtype))
    elif f.kind == "float" and f.mbits == 0:
        # e3m0fn: ties |q| = 1.5 (between 2^ec and 2^(ec+1)) go to the even
        # *code*: the lower code E = ec + bias when E is even, else the upper.
        tie_mask = q.abs() == 1.5
        if bool(tie_mask.any()):
            E = (eb >> mbits_native) - ebias + f.mbits + f.bias   # ec + bias
            n = torch.where(E % 2 == 0, 1.0, 2.0).to(q.dtype)
            tmp.copy_(torch.where(tie_mask, n, tmp.abs()))
    if f.kind == "int":
        q.copy_(tmp)                         # integers have no -0: (-0.3 + C) - C = +0
    else:
        torch.copysign(tmp, q, out=q)


def codes_chunk(q: torch.Tensor, eb: torch.Tensor | None, f: Format) -> torch.Tensor:
    """Codes (int32) from the rounded grid integers of :func:`round_chunk`."""
    if f.kind == "int":
        return q.to(torch.int32) & ((1 << f.bits) - 1)
    _, mbits_native, ebias = _INT_VIEW[q.dtype]
    n_abs = q.abs().to(torch.int32)
    # eb >> mbits_native = ec - m + ebias;  code = ((ec - 1 + bias) << m) + n
    e_part = (eb >> mbits_native).to(torch.int32) + (f.mbits - ebias - 1 + f.bias)
    code = (e_part << f.mbits) + n_abs
    return code | (torch.signbit(q).to(torch.int32) << (f.bits - 1))


def _scale_columns(s_rows: np.ndarray, device: torch.device, cdt: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(divisor, multiplier) columns ``[rows, 1]`` in the compute dtype from per-row
    scales: the scales themselves, except that a zero scale divides by 1 (its row
    has no nonzero element to scale, and nothing becomes NaN)."""
    s_div = torch.from_numpy(np.where(s_rows == 0, np.float32(1), s_rows)).to(device, cdt)[:, None]
    return s_div, torch.from_numpy(s_rows).to(device, cdt)[:, None]


class ChunkQuantizer:
    """The element pass shared by :func:`quantize` and :mod:`fpqvar_quant.dfq`.

    Quantizes chunks of rows of a ``[rows, L]`` tensor with one scale per row
    (``s_rows``, float32 numpy) onto format ``f``: ``code = round(x / s)`` (the
    arithmetic rounder :func:`round_chunk`, ``tie`` rule, saturating) and the
    dequantized value ``s * decode(code)`` computed in ``cdt`` (float32, or
    float64 for float64 data).  Scratch buffers for ``max_rows`` rows are
    allocated once and reused by every chunk.
    """

    def __init__(self, f: Format, tie: str, s_rows: np.ndarray, max_rows: int, L: int,
                 cdt: torch.dtype, device: torch.device):
        self.f, self.tie = f, tie
        self.s_div, self.s_mul = _scale_columns(s_rows, device, cdt)
        self.q = torch.empty((max_rows, L), dtype=cdt, device=device)
        self.tmp = torch.empty((max_rows, L), dtype=cdt, device=device)
        self.eb = (torch.empty((max_rows, L), dtype=_INT_VIEW[cdt][0], device=device)
                   if f.kind == "float" else None)

    def __call__(self, x: torch.Tensor, i: int, out: torch.Tensor | None = None, *,
                 want_codes: bool = True, zero: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Quantize ``x`` = rows ``i .. i + len(x)`` (at most ``max_rows``).

        Returns ``(values, codes)``: ``values`` is ``out`` if given (any float
        dtype: the product is rounded once into it), else a scratch view in the
        compute dtype that the next call overwrites; ``codes`` is int32 (format
        bits, sign included) or ``None`` without ``want_codes``.  ``zero``: an
        optional boolean mask of the chunk's rows whose codes and values are
        forced to +0 (all-zero groups, which would otherwise keep -0 codes).
        ``x`` may be the scratch returned by :meth:`scratch` (in place).
        """
        k, f = x.shape[0], self.f
        q, eb = self.q[:k], (self.eb[:k] if self.eb is not None else None)
        torch.div(x, self.s_div[i:i + k], out=q)
        round_chunk(q, eb, self.tmp[:k], f, self.tie)
        codes = codes_chunk(q, eb, f) if want_codes else None
        if eb is not None:
            q.mul_(eb.view(q.dtype))
        if zero is not None:
            q.masked_fill_(zero.unsqueeze(1), 0.0)
            if codes is not None:
                codes.masked_fill_(zero.unsqueeze(1), 0)
        if out is None:
            return q.mul_(self.s_mul[i:i + k]), codes
        torch.mul(q, self.s_mul[i:i + k], out=out)
        return out, codes

    def scratch(self, k: int) -> torch.Tensor:
        """The compute-dtype input buffer for a chunk of ``k`` rows (to prepare ``x`` in)."""
        return self.q[:k]


def _run(x: torch.Tensor, spec: QuantSpec, want_codes: bool
         ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Core: returns (codes or None, scales (result shape), dequant)."""
    with serial(x.device):
        return _run_serial(x, spec, want_codes)


def _run_serial(x: torch.Tensor, spec: QuantSpec, want_codes: bool
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    x2, s_rows, a_rows = _prepare(x, spec)
    rows, L = x2.shape
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    codes = torch.empty(x2.shape, dtype=torch.uint8, device=x.device) if want_codes else None
    zero_np = a_rows == 0
    any_zero = bool(zero_np.any())
    zero_rows = torch.from_numpy(zero_np).to(x.device)
    step = max(1, CHUNK // L)
    quant = ChunkQuantizer(spec.format, spec.tie, s_rows, min(step, rows), L, cdt, x.device)
    for i in range(0, rows, step):
        j = min(i + step, rows)
        z = zero_rows[i:j] if any_zero else None
        _, c = quant(x2[i:j], i, out[i:j], want_codes=want_codes,
                     zero=z if z is not None and bool(z.any()) else None)
        if codes is not None:
            codes[i:j] = c
    shape = x.shape
    return (codes.view(shape) if codes is not None else None,
            _scales_shape(x, spec, s_rows), out.view(shape))


# ------------------------------------------------------------------ public
def compute_scales(x: Any, spec: QuantSpec) -> Any:
    """Scales of ``x`` under ``spec`` (float32; numpy or torch like ``x``)."""
    t, was_np = to_torch(x)
    with serial(t.device):
        _, s_rows, _ = _prepare(t.detach(), spec)
    s = _scales_shape(t, spec, s_rows)
    return s.numpy() if was_np else s


def quantize(x: Any, spec: QuantSpec) -> QuantResult:
    """Quantize ``x`` (``[..., K]``) under ``spec``; see the module docstring."""
    t, was_np = to_torch(x)
    with torch.no_grad():
        codes, scales, deq = _run(t.detach(), spec, want_codes=True)
    if was_np:
        return QuantResult(codes.numpy(), scales.numpy(), deq.numpy())
    return QuantResult(codes, scales, deq)


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:  # type: ignore[override]
        return _run(x.detach(), spec, want_codes=False)[2]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def fake_quant(x: Any, spec: QuantSpec) -> Any:
    """Dequantized values of ``x`` (same values as ``quantize(x, spec).dequant``).

    For torch tensors the result is differentiable with a straight-through
    estimator (gradient passed unchanged to ``x``).  numpy in, numpy out.
    """
    t, was_np = to_torch(x)
    if was_np:
        with torch.no_grad():
            return _run(t, spec, want_codes=False)[2].numpy()
    if t.requires_grad and torch.is_grad_enabled():
        return _FakeQuantSTE.apply(t, spec)
    with torch.no_grad():
        return _run(t, spec, want_codes=False)[2]
