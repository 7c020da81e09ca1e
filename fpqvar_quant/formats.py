"""The one registry of number formats used by the whole project.

Every element format (low-bit floats, integers) and scale format (e8m0) is a
frozen :class:`Format` descriptor.  ``encode`` maps real values to integer codes
packed exactly like ``ml_dtypes`` packs them (sign | exponent | mantissa in the
low ``bits`` bits of a ``uint8``); ``decode`` maps codes back to ``float32``.
Both accept numpy arrays and torch tensors (torch in, torch out, same device).

Rounding (see ``docs/numerics.md``):

* round to nearest; ties go to the **even code** (the code whose least
  significant bit is 0).  For formats with at least one mantissa bit this is
  IEEE round-half-to-even and equals ``ml_dtypes``; for ``e3m0fn`` (no mantissa)
  it alternates between rounding up and down across binades.
  ``e8m0fnu`` follows ``ml_dtypes`` instead (ties round up), because it is only
  ever a scale format and ``ml_dtypes`` is the reference users compare with.
* finite values beyond ``max_value`` saturate to ``+-max_value`` for **every**
  format ("satfinite").  ``ml_dtypes`` returns NaN (e4m3fn) or Inf (e5m2) there;
  that difference is documented and tested.
* NaN or Inf inputs raise :class:`ValueError` unless the format can represent
  them (NaN: e4m3fn, e5m2, e8m0fnu; Inf: e5m2), in which case they map to the
  canonical code that ``ml_dtypes`` uses.  ``e8m0fnu`` has no Inf: ``+-Inf``
  raises (``ml_dtypes`` gives its NaN code 0xFF); NaN gives 0xFF.
* ``-0.0`` keeps its sign bit (like ``ml_dtypes``); integer formats have no
  negative zero.

Integer formats are symmetric (``int4`` covers -7..7, no -8) and use two's
complement codes in the low ``bits`` bits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["Format", "get_format", "FORMATS", "ELEMENT_FORMATS", "format_names", "DfqFormat",
           "DFQ_FORMATS", "dfq_format"]


@dataclass(frozen=True)
class Format:
    """Frozen description of one number format.

    Attributes
    ----------
    name: registry name (``"e2m1fn"``, ``"int4"``, ...).
    kind: ``"float"``, ``"int"`` or ``"scale"`` (unsigned power-of-two e8m0).
    ebits, mbits: exponent and mantissa field widths (``int``: ``ebits=0``,
        ``mbits=bits-1`` magnitude bits).
    bias: exponent bias (0 for integers).
    bits: total code width (sign included where there is one).
    max_value: largest finite value.
    has_inf, has_nan: whether codes for Inf/NaN exist.
    ml_dtypes_name: name of the equivalent ``ml_dtypes`` type, if any (oracle).
    """

    name: str
    kind: str
    ebits: int
    mbits: int
    bias: int
    bits: int
    max_value: float
    has_inf: bool = False
    has_nan: bool = False
    ml_dtypes_name: str | None = None
    _nan_code: int | None = field(default=None, repr=False, compare=False)
    _inf_code: int | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ tables
    @property
    def signed(self) -> bool:
        return self.kind != "scale"

    @property
    def sign_bit(self) -> int:
        """Bit mask of the sign bit in a code (0 for unsigned formats)."""
        return 1 << (self.bits - 1) if self.signed else 0

    @property
    def min_normal(self) -> float:
        if self.kind != "float":
            raise ValueError(f"{self.name} has no normal/subnormal split")
        return float(2.0 ** (1 - self.bias))

    @property
    def min_subnormal(self) -> float:
        if self.kind != "float":
            raise ValueError(f"{self.name} has no subnormals")
        return float(2.0 ** (1 - self.bias - self.mbits))

    def _decode_magnitude_code(self, c: int) -> float:
        """Value of a non-negative magnitude code (sign bit clear)."""
        if self.kind == "int":
            return float(c)
        if self.kind == "scale":
            return float(2.0 ** (c - self.bias))
        e, m = c >> self.mbits, c & ((1 << self.mbits) - 1)
        if e == 0:
            return float(2.0 ** (1 - self.bias) * (m / (1 << self.mbits)))
        return float(2.0 ** (e - self.bias) * (1 + m / (1 << self.mbits)))

    @cached_property
    def magnitude_codes(self) -> np.ndarray:
        """All finite non-negative codes in increasing value order (uint16)."""
        n = 1 << (self.bits - 1) if self.signed else 1 << self.bits
        if self.kind == "int":
            n = (1 << (self.bits - 1))  # 0 .. 2^(b-1)-1
        codes = [c for c in range(n) if c not in (self._nan_code, self._inf_code)
                 and not (self.has_nan and self.kind == "float" and self._is_special(c))]
        return np.array(codes, dtype=np.uint16)

    def _is_special(self, c: int) -> bool:
        if self.name == "e4m3fn":
            return c == 0x7F
        if self.name == "e5m2":
            return (c >> 2) == 0x1F
        return False

    @cached_property
    def positive_grid(self) -> np.ndarray:
        """Finite non-negative representable values, ascending (float64)."""
        g = np.array([self._decode_magnitude_code(int(c)) for c in self.magnitude_codes])
        assert np.all(np.diff(g) > 0), self.name
        return g

    @cached_property
    def _decode_table(self) -> np.ndarray:
        """float32 value of every code 0 .. 2^bits-1."""
        out = np.empty(1 << self.bits, dtype=np.float32)
        for c in range(1 << self.bits):
            if self.kind == "int":
                v = c - (1 << self.bits) if c & self.sign_bit else c
                out[c] = v if abs(v) <= self.max_value else np.nan  # -2^(b-1) unused
                continue
            mag = c & ~self.sign_bit if self.signed else c
            sgn = -1.0 if (self.signed and c & self.sign_bit) else 1.0
            if self.has_nan and (mag == self._nan_code or self._is_nan_mag(mag)):
                out[c] = np.nan
            elif self.has_inf and mag == self._inf_code:
                out[c] = sgn * np.inf
            else:
                out[c] = np.float32(sgn * self._decode_magnitude_code(mag))
        return out

    def _is_nan_mag(self, mag: int) -> bool:
        if self.name == "e5m2":
            return (mag >> 2) == 0x1F and (mag & 3) != 0
        if self.name == "e4m3fn":
            return mag == 0x7F
        if self.name == "e8m0fnu":
            return mag == 0xFF
        return False

    # --------------------------------------------------------------- encode
    def encode(self, x: Any) -> Any:
        """Round ``x`` to the nearest code (ties to even code, saturating).

        numpy in -> ``uint8`` numpy out; torch in -> ``torch.uint8`` out on the
        same device.  Raises ``ValueError`` for NaN/Inf the format cannot hold.
        """
        if _is_torch(x):
            import torch

            # float64, not float32: a float64 tensor must not be rounded twice
            if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32,
                                                         torch.int64, torch.uint8)):
                raise TypeError(f"{self.name}.encode expects a real numeric tensor, got {x.dtype}")
            codes = self.encode(x.detach().to("cpu", torch.float64).numpy())
            return torch.from_numpy(codes).to(x.device)
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":
            raise TypeError(f"{self.name}.encode expects a real numeric array, got dtype {a.dtype}")
        a = a.astype(np.float64, copy=False)
        nan = np.isnan(a)
        inf = np.isinf(a)
        if nan.any() and not self.has_nan:
            raise ValueError(f"input contains NaN but {self.name} has no NaN encoding; "
                             "remove or replace NaNs before quantizing")
        if inf.any() and not self.has_inf:
            # e8m0fnu included: its only special code 0xFF is NaN, and a scale of
            # +-Inf is a bug upstream (data overflow), never silently a NaN scale.
            hint = ("a scale must be a finite positive power of two (0xFF is NaN, not Inf)"
                    if self.kind == "scale" else
                    "clip the data to a finite range before quantizing")
            raise ValueError(f"input contains Inf but {self.name} has no Inf encoding; {hint}")
        if self.kind == "scale":
            return self._encode_scale(a, nan)
        neg = np.signbit(a)
        mag = np.abs(np.where(nan | inf, 0.0, a))
        grid = self.positive_grid
        lo = np.searchsorted(grid, mag, side="right") - 1          # grid[lo] <= mag
        lo = np.clip(lo, 0, len(grid) - 1)
        hi = np.minimum(lo + 1, len(grid) - 1)
        dlo = mag - grid[lo]
        dhi = grid[hi] - mag
        codes_tab = self.magnitude_codes.astype(np.int64)
        clo, chi = codes_tab[lo], codes_tab[hi]
        take_hi = (dhi < dlo) | ((dhi == dlo) & (chi % 2 == 0) & (hi != lo))
        c = np.where(take_hi, chi, clo)
        if self.kind == "int":
            c = np.where(neg, (-c) & ((1 << self.bits) - 1), c)
        else:
            c = np.where(neg, c | self.sign_bit, c)
        if self.has_nan:
            c = np.where(nan, self._nan_code, c)
        if self.has_inf:
            c = np.where(inf, self._inf_code | np.where(neg, self.sign_bit, 0), c)
        return c.astype(np.uint8)

    def _encode_scale(self, a: np.ndarray, special: np.ndarray) -> np.ndarray:
        # e8m0fnu: 2^(E-127), E in 0..254, 0xFF NaN (``special`` = NaN inputs;
        # Inf was refused by encode).  Ties round up (ml_dtypes).
        bad = (~special) & (a <= 0)
        if bad.any():
            raise ValueError(f"{self.name} encodes only positive values (a power-of-two scale); "
                             f"got {a[bad].ravel()[0]!r}")
        safe = np.where(special, 1.0, a)
        m, e = np.frexp(safe)                       # safe = m * 2^e, m in [0.5, 1)
        ex = e - 1 + (m >= 0.75)                    # nearest power of two, ties up
        c = np.clip(ex + self.bias, 0, 254)
        return np.where(special, 0xFF, c).astype(np.uint8)

    # --------------------------------------------------------------- decode
    def decode(self, codes: Any) -> Any:
        """Map integer codes to float32 values (numpy or torch, like the input)."""
        if _is_torch(codes):
            import torch

            tab = torch.from_numpy(self._decode_table).to(codes.device)
            c = codes.to(torch.int64)
            if (c < 0).any() or (c >= (1 << self.bits)).any():
                raise ValueError(f"{self.name} codes must lie in 0..{(1 << self.bits) - 1}")
            return tab[c]
        c = np.asarray(codes)
        if c.dtype.kind not in "iu":
            raise TypeError(f"{self.name}.decode expects integer codes, got dtype {c.dtype}")
        c = c.astype(np.int64)
        if c.size and (c.min() < 0 or c.max() >= (1 << self.bits)):
            raise ValueError(f"{self.name} codes must lie in 0..{(1 << self.bits) - 1}")
        return self._decode_table[c]

    def quantize_values(self, x: Any) -> Any:
        """``decode(encode(x))``: round values onto the grid (no scaling)."""
        return self.decode(self.encode(x))


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _float(name, e, m, bias, *, max_value, ml=None, has_nan=False, has_inf=False,
           nan_code=None, inf_code=None) -> Format:
    return Format(name=name, kind="float", ebits=e, mbits=m, bias=bias, bits=1 + e + m,
                  max_value=max_value, has_nan=has_nan, has_inf=has_inf, ml_dtypes_name=ml,
                  _nan_code=nan_code, _inf_code=inf_code)


def _int(bits: int) -> Format:
    return Format(name=f"int{bits}", kind="int", ebits=0, mbits=bits - 1, bias=0, bits=bits,
                  max_value=float((1 << (bits - 1)) - 1))


FORMATS: dict[str, Format] = {f.name: f for f in [
    _float("e2m1fn", 2, 1, 1, max_value=6.0, ml="float4_e2m1fn"),
    _float("e1m2fn", 1, 2, 1, max_value=1.75),
    _float("e3m0fn", 3, 0, 3, max_value=16.0),
    _float("e2m3fn", 2, 3, 1, max_value=7.5, ml="float6_e2m3fn"),
    _float("e3m2fn", 3, 2, 3, max_value=28.0, ml="float6_e3m2fn"),
    _float("e4m3fn", 4, 3, 7, max_value=448.0, ml="float8_e4m3fn", has_nan=True, nan_code=0x7F),
    _float("e5m2", 5, 2, 15, max_value=57344.0, ml="float8_e5m2", has_nan=True, has_inf=True,
           nan_code=0x7E, inf_code=0x7C),
    Format(name="e8m0fnu", kind="scale", ebits=8, mbits=0, bias=127, bits=8,
           max_value=float(2.0 ** 127), has_nan=True, ml_dtypes_name="float8_e8m0fnu",
           _nan_code=0xFF),
    _int(4), _int(6), _int(8),
]}

#: Formats usable as quantized elements (everything but the e8m0 scale format).
ELEMENT_FORMATS = tuple(n for n, f in FORMATS.items() if f.kind != "scale")


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


@dataclass(frozen=True)
class DfqFormat:
    """Dual Format Quantization codes (``docs/numerics.md`` section 3): elements ``x <= 0``
    on the ``neg`` grid with their own scale, ``x > 0`` on the ``pos`` grid, one code of
    ``bits`` bits (``negative`` flag + magnitude).  ``variant`` is the PTQ name
    (``QuantConfig.dfq``), ``name`` the golden-model / hardware format name."""

    name: str
    variant: str
    neg: str
    pos: str
    bits: int


#: The DFQ formats with a hardware and golden-model path (the one table; ``dfq.py``,
#: ``golden/quantizer.py`` and ``fpqvar_hw`` read it).  ``fp6`` negatives use the
#: non-positive half of int6 (a 5-bit uniform grid).
DFQ_FORMATS: dict[str, DfqFormat] = {d.name: d for d in [
    DfqFormat("dfq4", "fp4", "e1m2fn", "e2m1fn", 4),
    DfqFormat("dfq6", "fp6", "int6", "e2m3fn", 6),
]}


def dfq_format(name: str) -> DfqFormat:
    """A DFQ format by hardware name (``"dfq4"``) or PTQ variant (``"fp4"``)."""
    for d in DFQ_FORMATS.values():
        if name in (d.name, d.variant):
            return d
    raise ValueError(f"unknown DFQ format {name!r}; valid: "
                     + ", ".join(f"{d.name} ({d.variant})" for d in DFQ_FORMATS.values()))


def get_format(name: "str | Format") -> Format:
    """Look up a format by name; ``ValueError`` lists the valid names."""
    if isinstance(name, Format):
        return name
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}; valid formats: {', '.join(FORMATS)}") from None
