"""LUT-based group quantizer: FP16 groups in, per-group scale(s) and element codes out.

Numerics: ``docs/numerics.md`` section 3, "Group quantizer"; golden model
``fpqvar_quant.golden.quantizer`` (the RTL is tested bit-exactly against it).

Micro-architecture (no divider anywhere).  Every stage is registered so that no
path holds more than about one compare, one carry chain or one small function
(delay-model figures in ``benchmarks/results/unit_resources_quant.md``):

1. **Ingest** (II = 1 beat/cycle): each beat of ``lanes`` FP16 values is written
   to a data FIFO while a max tree over the 15 magnitude bits (for finite FP16
   values their unsigned order is the value order; :data:`TREE_STAGES`
   registered stages, free-running, DFQ sides selected by the sign bit) feeds
   the group's running absmax (DFQ: one per side) and a NaN/Inf flag.  On the
   group's last beat the absmax goes to a small FIFO; a credit counter (groups
   accepted and not yet read from that FIFO) deasserts ``i.ready`` on a last
   beat before the FIFO could overflow.
2. **Scale** (once per group, :data:`SCALE_PIPE` + :data:`KEY_PIPE` stall-all
   pipeline stages: constant multiply (DSP48E2 partial products, registered;
   their sum); ``q * F``; sticky, shift and exponent; shift, guard and pattern;
   round; then leading zeros; normalise; threshold products; key; tie adjust):
   ``s = RNE_fp16(A / fmax)`` with ``fmax = F * 2^f`` (F odd): the quotient bits
   ``floor(Ma * 2^P / F)`` come
   from a multiplication by the constant ``ceil(2^K / F)`` (exact for every
   11-bit ``Ma``, Granlund-Montgomery; the unit test checks all of them), the
   remainder's non-zeroness gives the sticky bit, and one round to nearest even
   (the rounding of :class:`fpqvar_hw.units.fpu.RoundPack`, specialised: the
   quotient's leading one is at one of two known positions for a normal ``A``,
   so normalising is a shift by a few places; see :meth:`Quantizer._scale_pipe`)
   gives the FP16 pattern.  ``A > 0`` rounding to 0 gives
   ``2^-24``.  Then each midpoint threshold ``T_j = s * mid_j`` (exact: 11-bit
   significand times a small constant) is reduced to a 16-bit *key*
   ``V_j = floor16(T_j)`` (even ``j``) or ``ceil16(T_j) - 1`` (odd ``j``), where
   ``floor16``/``ceil16`` round to the FP16 grid and the key is the FP16
   magnitude bit pattern.  Then ``|x| > T_j  <=>  mag(x) > V_j`` (even j) and
   ``|x| >= T_j  <=>  mag(x) > V_j`` (odd j, the tie goes to the even code).
   **e8m0 scales** (OCP MX, ``scale_format="e8m0"``): the scale stage is the
   exponent of A's leading one, ``code = 127 + floor(log2 A) - emax`` (a
   leading-zero count and an add, then delay stages), and the keys come from a
   per-format constant table indexed by the scale code (:func:`e8m0_keys`; the
   thresholds
   ``mid_j * 2^e`` of a power-of-two scale are constants per exponent): one
   LUT6 per key bit.
3. **Element** (per lane, per beat): ``k = sum_j [mag(x) > V_j]`` -- a row of
   15-bit constant-per-group comparators (thermometer code) and a popcount, the
   logic that maps onto LUT6+carry; then sign/grid selection into the code.

Ports (``lanes`` FP16 values per beat, ``group_size / lanes`` beats per group)
-----
``i``: stream of ``ArrayLayout(FP16, lanes)``; groups are consecutive beats.
``o``: stream of ``StructLayout(codes: ArrayLayout(code, lanes), scales:
ArrayLayout(scale, n_scales), last: 1)``, ``scale`` = FP16 (16 bits) or the
8-bit e8m0 code (``scale_format="e8m0"``): one output beat per input beat, with
the group's scale(s) repeated on each beat and ``last`` on its final beat.  DFQ
scales are ``(neg, pos)``.  Code layouts: floats ``(mantissa, exponent, sign)``;
integers ``(value: signed)``; DFQ ``(magnitude: 3 or 5, negative: 1)`` (dfq4:
e1m2fn negatives + e2m1fn positives; dfq6: uniform 0..31 negatives + e2m3fn).
``error``: sticky flag, set when a NaN/Inf input beat is accepted; cleared by reset.

Latency / throughput: one beat per cycle in and out (II = 1) with no
backpressure; the first output beat of a group appears :data:`LATENCY_AFTER_LAST`
(20) cycles after the last input beat of its group (all of a group's beats wait
for its scale, in a data FIFO of ``2 * beats + LATENCY_AFTER_LAST + 2`` beats),
for every lane count and scale format.
``valid`` never depends on ``ready``; ``o.ready`` low stalls the output stage,
and the FIFOs then fill and deassert ``i.ready``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned, Value
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from fpqvar_quant.formats import get_format

from ..emit import hierarchical
from ..checked import Checked
from .fpu import FP16, clz, float_layout

__all__ = ["Quantizer", "QuantizerLane", "QuantizerMaxLeaf", "QUANTIZER_FORMATS", "SCALE_FORMATS",
           "code_layout", "Grid", "grid", "scale_constants", "e8m0_exponents", "e8m0_keys",
           "LATENCY_AFTER_LAST"]

DFQ = "dfq4"
#: Dual formats: (negative-side grid, positive-side grid, code bits); the code's
#: top bit selects the grid (1 = negative side).
DFQ_FORMATS = {"dfq4": ("e1m2fn", "e2m1fn", 4), "dfq6": ("int6", "e2m3fn", 6)}
QUANTIZER_FORMATS = ("e2m1fn", "e1m2fn", "e3m0fn", "e2m3fn", "e3m2fn", "int4", "int6", "int8") + tuple(DFQ_FORMATS)
SCALE_FORMATS = ("fp16", "e8m0")
FP16_LAYOUT = float_layout(FP16)
#: Largest finite FP16 magnitude pattern (65504); keys never exceed it.
_FP16_MAX_MAG = 0x7BFF
#: Registered stages of the ingest max tree (its ceil(log2 lanes) compare levels spread
#: over them, one level per stage up to 32 lanes), so the latency is the same for every
#: lane count.
TREE_STAGES = 5
#: Registered stages of the scale (partial products; their sum; q * F; sticky, shift
#: and exponent; shift and guard; round) and of the threshold
#: keys (leading zeros; normalise; products; key; tie adjust).
SCALE_PIPE = 6
#: Unsigned width of the DSP48E2 A port (27-bit signed): the slices of the scale's
#: constant multiplier.
DSP_A_BITS = 26
KEY_PIPE = 5
#: Cycles from the acceptance of a group's last input beat to its first output beat
#: (no stalls): the max tree, the running-max / absmax FIFO write and read (2), the
#: scale and key pipelines, the current-group register and the output register (2);
#: measured by tests/test_hw_quantizer.py.
LATENCY_AFTER_LAST = 4 + TREE_STAGES + SCALE_PIPE + KEY_PIPE


@dataclass(frozen=True)
class Grid:
    """A format's magnitude grid as the RTL needs it, derived from its field widths.

    ``mids[j] = mid_num[j] / 2^frac_bits``; ``fmax = fmax_odd * 2^fmax_exp``.
    """

    name: str
    kind: str
    bits: int
    mid_num: tuple[int, ...]
    frac_bits: int
    fmax_odd: int
    fmax_exp: int

    @property
    def mag_bits(self) -> int:
        return self.bits - 1

    @property
    def emax(self) -> int:
        """``floor(log2 fmax)``: the e8m0 scale is ``2^(floor(log2 A) - emax)``."""
        return self.fmax_odd.bit_length() - 1 + self.fmax_exp


def grid(name: str) -> Grid:
    """Midpoints and fmax of a format, computed from its (ebits, mbits, bias) only."""
    f = get_format(name)
    if f.kind == "int":
        vals = [Fraction(v) for v in range(1 << (f.bits - 1))]
    elif f.kind == "float" and not (f.has_nan or f.has_inf) and f.bits <= 8:
        vals = []
        for c in range(1 << (f.bits - 1)):
            e, mt = c >> f.mbits, c & ((1 << f.mbits) - 1)
            if e == 0:
                vals.append(Fraction(mt, 1 << f.mbits) * Fraction(2) ** (1 - f.bias))
            else:
                vals.append((1 + Fraction(mt, 1 << f.mbits)) * Fraction(2) ** (e - f.bias))
    else:
        raise ValueError(f"{name} is not a quantizer element format")
    if f.kind == "int":
        vals = vals[: int(f.max_value) + 1]
    mids = [(a + b) / 2 for a, b in zip(vals, vals[1:])]
    c = max(m.denominator.bit_length() - 1 for m in mids)
    fmax, e = vals[-1], 0
    while fmax.denominator != 1:
        fmax, e = fmax * 2, e - 1
    while fmax.numerator % 2 == 0:
        fmax, e = fmax / 2, e + 1
    return Grid(name, f.kind, f.bits, tuple(int(m * (1 << c)) for m in mids), c, int(fmax), e)


#: Fraction bits of the quotient beyond the input significand (guard/round room
#: for subnormal absmax values down to 1 ulp and fmax_odd up to 127).
QUOT_P = 24


def scale_constants(fmax_odd: int) -> tuple[int, int]:
    """(R, K): ``floor(n / F) == (n * R) >> K`` for all ``n = Ma << QUOT_P``, ``Ma < 2^11``."""
    n_bits = 11 + QUOT_P
    l_bits = max(1, (fmax_odd - 1).bit_length())
    K = n_bits + l_bits
    R = -(-(1 << K) // fmax_odd)
    return R, K


def _fp16_mag_value(v: int) -> Fraction:
    """Exact value of the FP16 magnitude pattern ``v`` (finite, 15 bits)."""
    e, mt = v >> 10, v & 0x3FF
    return Fraction(mt, 1 << 24) if e == 0 else Fraction(1024 + mt, 1 << 10) * Fraction(2) ** (e - 15)


def e8m0_exponents(g: Grid) -> range:
    """Unbiased scale exponents ``floor(log2 A) - emax`` over every finite FP16 ``A > 0``."""
    return range(-24 - g.emax, 15 - g.emax + 1)


def e8m0_keys(g: Grid, exponent: int) -> tuple[int, ...]:
    """Comparator keys ``V_j`` for the scale ``s = 2^exponent`` (exact, from the grid).

    ``mag(x) > V_j`` must equal ``|x| > mid_j * s`` for even ``j`` and
    ``|x| >= mid_j * s`` for odd ``j`` (ties to the even code): ``V_j`` is the
    largest FP16 magnitude pattern whose value is ``<= T_j`` (even ``j``) or
    ``< T_j`` (odd ``j``), found by bisection over the monotone patterns.
    """
    keys = []
    for j, n in enumerate(g.mid_num):
        t = Fraction(n, 1 << g.frac_bits) * Fraction(2) ** exponent
        lo, hi = 0, _FP16_MAX_MAG            # invariant: value(lo) passes (value(0) = 0 < t)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            v = _fp16_mag_value(mid)
            if v < t or (v == t and j % 2 == 0):
                lo = mid
            else:
                hi = mid - 1
        keys.append(lo)
    return tuple(keys)


def code_layout(fmt: str) -> data.StructLayout:
    """Layout of one element code; its packed bits equal the code (ml_dtypes packing)."""
    if fmt in DFQ_FORMATS:
        return data.StructLayout({"magnitude": DFQ_FORMATS[fmt][2] - 1, "negative": 1})
    f = get_format(fmt)
    if f.kind == "int":
        return data.StructLayout({"value": signed(f.bits)})
    return data.StructLayout({"mantissa": f.mbits, "exponent": f.ebits, "sign": 1})


def tree_levels(lanes: int) -> list[int]:
    """Compare levels of the ingest max tree in each of its TREE_STAGES registered stages
    (``ceil(log2 lanes)`` levels spread over them)."""
    levels = (lanes - 1).bit_length()
    return [(st + 1) * levels // TREE_STAGES - st * levels // TREE_STAGES for st in range(TREE_STAGES)]


def leaf_stages(lanes: int) -> int:
    """How many of the max tree's first stages run in :class:`QuantizerMaxLeaf` modules:
    the most that reduce at most 8 lanes to one and leave at least 4 leaves (0 for a lane
    count that is not a power of two, or where no stage compares: the parent's tree)."""
    if lanes & (lanes - 1):
        return 0
    best, lv = 0, 0
    for n, here in enumerate(tree_levels(lanes), 1):
        lv += here
        if lv > 3 or lanes >> lv < 4:
            break
        if lv:
            best = n
    return best


def side_magnitudes(xs: list, sides: int) -> list[list[Value]]:
    """Per side the 15-bit magnitudes the max tree reduces: every element's (one side),
    or the DFQ sides (side 0 the negative elements', side 1 the others', 0 elsewhere)."""
    if sides == 1:
        return [[x.as_value()[:15] for x in xs]]
    return [[Mux(x.sign, x.as_value()[:15], 0) for x in xs],
            [Mux(x.sign, 0, x.as_value()[:15]) for x in xs]]


def max_stage(m: Module, tvals: list[list[Value]], n_levels: int, name: str) -> list[list[Signal]]:
    """One registered stage of the max tree: ``n_levels`` pairwise compare levels per side
    (an odd value passes a level unchanged), then a register per value (free-running)."""
    tvals = [list(v) for v in tvals]
    for _ in range(n_levels):
        for k, vals in enumerate(tvals):
            nxt = []
            for a_, b_ in zip(vals[0::2], vals[1::2]):
                t = Signal(15)
                m.d.comb += t.eq(Mux(a_ > b_, a_, b_))
                nxt.append(t)
            if len(vals) % 2:
                nxt.append(vals[-1])
            tvals[k] = nxt
    regs = [[Signal(15, name=f"{name}_{k}_{i}") for i in range(len(v))] for k, v in enumerate(tvals)]
    for r, v in zip(regs, tvals):
        m.d.sync += [a.eq(b) for a, b in zip(r, v)]
    return regs


@hierarchical
class QuantizerMaxLeaf(wiring.Component):
    """The first registered stages of :class:`Quantizer`'s ingest max tree for ``lanes``
    consecutive lanes (the unit holds ``lanes_total / lanes`` of them, one module): ``x``
    the lanes' FP16 elements, ``o`` per side (``sides`` 1, or 2 for DFQ) the 15-bit
    maximum magnitude, after ``len(stage_levels)`` registered stages of
    ``stage_levels[s]`` compare levels each (free-running, as the parent's later stages)."""

    def __init__(self, lanes: int, sides: int, stage_levels: tuple[int, ...]):
        if 1 << sum(stage_levels) != lanes or sides not in (1, 2):
            raise ValueError(f"QuantizerMaxLeaf: {lanes} lanes, {sides} sides, levels {stage_levels}")
        self.lanes, self.sides, self.stage_levels = lanes, sides, tuple(stage_levels)
        super().__init__({"x": In(16 * lanes), "o": Out(15 * sides)})

    def elaborate(self, platform):
        m = Module()
        xs = [FP16_LAYOUT(self.x[16 * j:16 * (j + 1)]) for j in range(self.lanes)]
        tvals = side_magnitudes(xs, self.sides)
        for st, n in enumerate(self.stage_levels):
            tvals = max_stage(m, tvals, n, f"t{st}")
        m.d.comb += self.o.eq(Cat(*[v[0] for v in tvals]))
        return m


@hierarchical
class QuantizerLane(wiring.Component):
    """One lane of :class:`Quantizer`'s element stage (the unit holds ``lanes`` of them, one
    module: the build emits and synthesises it once).

    ``x``: the lane's FP16 element; ``keys``: per side ``nthr[k]`` 16-bit threshold keys
    (side 0 first), from the group's scale stage; ``kill``: the group is NaN/Inf or all
    zero (code 0).  The element's magnitude against every key of its side gives a
    thermometer code whose count is the magnitude code; ``mode`` packs it: ``"dfq"`` (the
    side's magnitude, bit ``code_bits - 1`` set on the negative side), ``"int"`` (two's
    complement of the signed count), ``"float"`` (magnitude, then the sign bit).  On ``en``
    the code is registered to ``code``."""

    def __init__(self, nthr: tuple[int, ...], code_bits: int, mode: str):
        if mode not in ("dfq", "int", "float") or (mode == "dfq") != (len(nthr) == 2):
            raise ValueError(f"QuantizerLane: mode {mode!r} with {len(nthr)} sides")
        self.nthr, self.code_bits, self.mode = tuple(nthr), code_bits, mode
        super().__init__({"en": In(1), "x": In(FP16_LAYOUT), "keys": In(16 * sum(self.nthr)),
                          "kill": In(1), "code": Out(code_bits)})

    def elaborate(self, platform):
        m = Module()
        x = self.x
        mag = x.as_value()[:15]
        idx, at = [], 0
        for k, n in enumerate(self.nthr):
            therm = Signal(n, name=f"therm{k}")   # thermometer code
            m.d.comb += therm.eq(Cat(*[mag > self.keys[16 * (at + j):16 * (at + j + 1)]
                                       for j in range(n)]))
            cnt = Signal(range(n + 1), name=f"idx{k}")
            m.d.comb += cnt.eq(sum(therm[j] for j in range(n)))
            idx.append(cnt)
            at += n
        code = Signal(self.code_bits, name="code_c")
        if self.mode == "dfq":
            mb = self.code_bits - 1
            neg = x.sign | (mag == 0)
            m.d.comb += code.eq(Mux(neg, Cat(idx[0][:mb], Const(1, 1)), Cat(idx[1][:mb], Const(0, 1))))
        elif self.mode == "int":
            mag_c = idx[0][:self.code_bits]
            m.d.comb += code.eq(Mux(x.sign, -mag_c, mag_c)[:self.code_bits])
        else:
            m.d.comb += code.eq(Cat(idx[0][:self.code_bits - 1], x.sign))
        with m.If(self.en):
            m.d.sync += self.code.eq(Mux(self.kill, 0, code))
        return m


@hierarchical
class Quantizer(Checked, wiring.Component):
    """LUT-based group quantizer (see the module docstring for the contract).

    Parameters (keyword-only)
    ----------
    format: element format name, one of :data:`QUANTIZER_FORMATS`
        (``"dfq"`` is accepted for ``"dfq4"``).
    group_size: elements per group (default 128); a multiple of ``lanes``.
    lanes: FP16 elements per beat (default 16).
    scale_format: ``"fp16"`` (default) or ``"e8m0"`` (OCP MX power-of-two
        scales, 8-bit codes; every format including DFQ).
    """

    @classmethod
    def check_params(cls, *, format, group_size, lanes, scale_format) -> None:
        fmt = DFQ if format == "dfq" else format
        if fmt not in QUANTIZER_FORMATS:
            raise ValueError(f"format must be one of {', '.join(QUANTIZER_FORMATS)}, got {format!r}")
        for nm, v in (("group_size", group_size), ("lanes", lanes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{nm} must be a positive integer, got {v!r}")
        if group_size % lanes:
            raise ValueError(f"lanes must divide group_size, got lanes={lanes}, group_size={group_size}")
        if scale_format not in SCALE_FORMATS:
            raise ValueError(f"scale_format must be one of {', '.join(SCALE_FORMATS)}, got {scale_format!r}")

    def __init__(self, *, format: str = "e2m1fn", group_size: int = 128, lanes: int = 16,
                 scale_format: str = "fp16"):
        fmt = DFQ if format == "dfq" else format
        self.format, self.group_size, self.lanes, self.scale_format = fmt, group_size, lanes, scale_format
        self.beats = group_size // lanes
        self.sides: tuple[Grid, ...] = ((grid(DFQ_FORMATS[fmt][0]), grid(DFQ_FORMATS[fmt][1]))
                                        if fmt in DFQ_FORMATS else (grid(fmt),))
        self.n_scales = len(self.sides)
        self.code = code_layout(fmt)
        #: one scale: FP16 fields, or the raw 8-bit e8m0 code
        self.scale_shape = FP16_LAYOUT if scale_format == "fp16" else unsigned(8)
        self.scale_bits = 16 if scale_format == "fp16" else 8
        self.out_layout = data.StructLayout({
            "codes": data.ArrayLayout(self.code, lanes),
            "scales": data.ArrayLayout(self.scale_shape, self.n_scales),
            "last": 1,
        })
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(FP16_LAYOUT, lanes))),
            "o": Out(stream.Signature(self.out_layout)),
            "error": Out(1),
        })

    # ----------------------------------------------------------------- manifest
    def manifest(self) -> dict[str, Any]:
        """JSON-able description (ports, latency, formats, config) for build reports."""
        return {
            "unit": "quantizer",
            "class": type(self).__name__,
            "config": {"format": self.format, "group_size": self.group_size, "lanes": self.lanes,
                       "beats_per_group": self.beats, "scale_format": self.scale_format},
            "formats": {"input": "fp16", "codes": self.format,
                        "scales": [self.scale_format] * self.n_scales,
                        "scale_order": ["neg", "pos"] if self.format in DFQ_FORMATS else ["scale"]},
            "ports": {
                "i": {"dir": "in", "kind": "stream", "payload_bits": 16 * self.lanes,
                      "payload": f"ArrayLayout(fp16, {self.lanes})"},
                "o": {"dir": "out", "kind": "stream", "payload_bits": self.out_layout.size,
                      "payload": f"codes: ArrayLayout({self.code.size}-bit code, {self.lanes}); "
                                 f"scales: ArrayLayout({self.scale_format}, {self.n_scales}); last: 1"},
                "error": {"dir": "out", "kind": "flag", "bits": 1, "sticky": True},
            },
            "latency_cycles": LATENCY_AFTER_LAST,
            "latency_note": "from the last input beat of a group to its first output beat",
            "initiation_interval": 1,
            "thresholds_per_lane": sum(len(g.mid_num) for g in self.sides),
            "numerics": "docs/numerics.md section 3, Group quantizer",
        }

    # --------------------------------------------------------------- elaborate
    def _scale_pipe(self, m: Module, g: Grid, amax: Value, name: str, reg, dly) -> Value:
        """FP16 scale bits of ``RNE(A / fmax)`` (``A`` = 15 magnitude bits), registered
        over :data:`SCALE_PIPE` stages (``reg`` registers a value one stage on).

        ``A / fmax = q' * 2^E0`` with ``q = floor(Ma * 2^P / F)`` (``q'`` = q plus the
        remainder's fraction) and ``E0 = max(E, 1) - 25 - f - P``.  The FP16 pattern
        of the rounded quotient is ``N + (EF << 10)``: ``N = RNE(q' >> sh)`` and ``EF``
        = biased exponent - 1 (0 for subnormal results), ``sh = max(msb(q), -14 - E0)
        - 10``.  For a normal ``A`` the leading one of ``q`` is at ``m0`` or ``m0 + 1``
        (``m0 = 33 - floor(log2 F)``), so ``sh = m0 - 10 + max(c, d)`` with ``c`` that
        bit and ``d = 2 + f + floor(log2 F) - E`` (subnormal result when ``d > c``); for
        a subnormal ``A``, ``sh = 24 + f``.  The variable part of the shift is at most
        ``1 + f + floor(log2 F)`` places.  (The same rounding as
        :class:`fpqvar_hw.units.fpu.RoundPack`, specialised and split over stages; no
        overflow: ``fmax >= 1``.)
        """
        ex, man = amax[10:15], amax[0:10]
        Ma = Signal(11, name=f"{name}_Ma")
        m.d.comb += Ma.eq(Cat(man, ex != 0))
        R, K = scale_constants(g.fmax_odd)
        F, f = g.fmax_odd, g.fmax_exp
        t = F.bit_length() - 1
        m0 = 33 - t
        omax = 1 + f + t                                        # >= 1 since fmax >= 1
        qw = 11 + QUOT_P
        # stage 1: the constant multiply as DSP48E2-sized partial products (26-bit slices
        # of R times the 11-bit Ma), each registered (the DSP's M/P register); stage 2:
        # their sum
        parts = [reg(Ma * ((R >> lo) & ((1 << DSP_A_BITS) - 1)), f"{name}_pp{lo // DSP_A_BITS}",
                     11 + DSP_A_BITS) for lo in range(0, R.bit_length(), DSP_A_BITS)]
        Ma0, ex0, az0 = reg(Ma, f"{name}_Ma0"), reg(ex, f"{name}_ex0"), reg(amax == 0, f"{name}_az0")
        prod = reg(sum(pp << (k * DSP_A_BITS) for k, pp in enumerate(parts)), f"{name}_prod",
                   11 + R.bit_length())
        Ma1, ex1, az1 = reg(Ma0, f"{name}_Ma1"), reg(ex0, f"{name}_ex1"), reg(az0, f"{name}_az1")
        # stage 3: quotient q = floor(Ma * 2^P / F) and q * F (F = 2^k - 1 for every grid)
        q1 = Signal(qw, name=f"{name}_q")
        m.d.comb += q1.eq(prod >> (K - QUOT_P))
        kf = (F + 1).bit_length() - 1
        qf_val = q1 if F == 1 else ((q1 << kf) - q1 if F + 1 == 1 << kf else q1 * F)
        q2 = reg(q1, f"{name}_q2")
        qf = reg(qf_val, f"{name}_qf", qw + F.bit_length())
        Ma2, az2 = reg(Ma1, f"{name}_Ma2"), reg(az1, f"{name}_az2")
        sub2 = reg(ex1 == 0, f"{name}_sub2")
        d2 = reg((2 + f + t) - ex1, f"{name}_d2", signed(8))
        eb2 = reg(ex1 + (m0 - 35 - f), f"{name}_eb2", signed(8))        # EF before the carry
        # stage 4: sticky (remainder, bits below the variable window), shift, exponent field
        c = q2[m0 + 1]
        rem_nz = reg(qf != (Ma2 << QUOT_P), f"{name}_rem")
        lowfix = reg(q2[:m0 - 11] != 0, f"{name}_lowfix")
        x3 = reg((q2 >> (m0 - 11))[:13 + omax], f"{name}_x3", 13 + omax)
        off3 = reg(Mux(sub2, omax, Mux(d2 > c, d2, c)), f"{name}_off", range(omax + 1))
        efc = eb2 + c
        zero_ef = sub2 | (efc < 0)
        ef3 = reg(Mux(zero_ef, 0, efc), f"{name}_ef", 5)
        ef13 = reg(Mux(zero_ef, 1, efc + 1), f"{name}_ef1", 5)
        az3 = reg(az2, f"{name}_az3")
        # stage 5: variable right shift (guard at bit 0), guard and sticky, pattern before rounding
        y = Signal(13 + omax, name=f"{name}_y")
        m.d.comb += y.eq(x3 >> off3)
        lost = Cat(*[x3[i] & (off3 > i) for i in range(omax)]).any()
        n0 = y[1:12]
        p0 = reg(Cat(n0[:10], Mux(n0[10], ef13, ef3)), f"{name}_p0", 15)
        guard = reg(y[0], f"{name}_guard")
        sticky = reg(lost | lowfix | rem_nz, f"{name}_st")
        az4 = reg(az3, f"{name}_az4")
        # stage 6: round to nearest even (the carry reaches the exponent field); A > 0
        # rounding to 0 gives 2^-24
        ru = guard & (sticky | p0[0])
        pat = Signal(15, name=f"{name}_pat")
        m.d.comb += pat.eq(p0 + ru)
        return reg(Mux(az4, 0, Mux((p0 == 0) & ~ru, 1, pat)), f"{name}_s", 16)

    def _e8m0_scale_pipe(self, m: Module, g: Grid, amax: Value, name: str, reg, dly) -> Value:
        """e8m0 code ``127 + floor(log2 A) - emax`` (0 when ``A == 0``), registered over
        :data:`SCALE_PIPE` stages like the FP16 scale."""
        ex = amax[10:15]
        sig = Signal(11, name=f"{name}_sig")
        m.d.comb += sig.eq(Cat(amax[0:10], ex != 0))
        lz = reg(clz(m, sig), f"{name}_lz", range(12))
        ex1, az1 = reg(ex, f"{name}_ex1"), reg(amax == 0, f"{name}_az1")
        # floor(log2 A) = max(E, 1) - 15 - clz(significand); the code is always in 1..254
        code = reg(Mux(az1, 0, Mux(ex1 == 0, 1, ex1) - lz + (127 - 15 - g.emax)), f"{name}_e8m0", 8)
        return dly(code, SCALE_PIPE - 2, f"{name}_e8m0d")

    def _e8m0_threshold_keys(self, m: Module, g: Grid, code: Value, name: str, reg, dly) -> list[Signal]:
        """Keys ``V_j`` of ``T_j = mid_j * 2^(code - 127)`` from a constant table per code
        (all-ones when code == 0, the zero group / empty DFQ side)."""
        keys = [Signal(16, name=f"{name}_v{j}", init=0x7FFF) for j in range(len(g.mid_num))]
        with m.Switch(code[:8]):
            for e in e8m0_exponents(g):
                with m.Case(e + 127):
                    m.d.comb += [k.eq(v) for k, v in zip(keys, e8m0_keys(g, e))]
        return [dly(reg(k, f"{name}_v{j}r", 16), KEY_PIPE - 1, f"{name}_v{j}d")
                for j, k in enumerate(keys)]

    def _threshold_keys(self, m: Module, g: Grid, s: Value, name: str, reg, dly) -> list[Signal]:
        """Keys ``V_j`` of the thresholds ``T_j = s * mid_j`` (all-ones when s == 0),
        registered over :data:`KEY_PIPE` stages.

        ``s`` is normalised once (leading-zero count); then per threshold the exact
        product of the 11-bit significand and the constant ``mid_num[j]`` has its
        leading one at one of two known positions, so the FP16 key of
        ``RTZ_fp16(T_j)`` is a 2-way selection.  When ``T_j`` is below 2^-14 the key
        is the fixed-point value ``floor(s * 2^24 * mid_num[j] / 2^c)`` instead,
        from a narrow copy of ``s`` in units of 2^-24 (no per-threshold shifter).
        """
        c = g.frac_bits
        ex, man = s[10:15], s[0:10]
        sig = Signal(11, name=f"{name}_sig")
        m.d.comb += sig.eq(Cat(man, ex != 0))
        # stage 1: leading-zero count
        lz = reg(clz(m, sig), f"{name}_lz", range(12))
        sig1, ex1, sz1 = reg(sig, f"{name}_sig1"), reg(ex, f"{name}_ex1"), reg(s == 0, f"{name}_sz1")
        # stage 2: normalised significand, exponent, fixed-point copy
        ms = reg((sig1 << lz)[:11], f"{name}_ms", 11)                  # normalised significand
        es = reg(Mux(ex1 == 0, 1, ex1) - 15 - lz, f"{name}_es", signed(8))  # exponent of s's leading one
        WS = 11 + c                                            # enough for every subnormal T_j
        sfix = reg((sig1 << Mux(ex1 == 0, 0, ex1 - 1)[:5])[:WS], f"{name}_sfix", WS)  # s in units 2^-24
        sz2 = reg(sz1, f"{name}_sz2")
        sz3 = reg(sz2, f"{name}_sz3")
        sz4 = reg(sz3, f"{name}_sz4")
        keys = []
        for j, n in enumerate(g.mid_num):
            b = n.bit_length() - 1
            # stage 3: the exact products
            p = reg(ms * n, f"{name}_p{j}", 12 + b)
            q = reg(sfix * n, f"{name}_q{j}", WS + b + 1)
            eb = reg(es + (b - c), f"{name}_eb{j}", signed(9))
            # stage 4: FP16 or fixed-point key and exactness
            carry = p[11 + b]
            frac = Mux(carry, p[b + 1:b + 11], p[b:b + 10])
            low0 = (p[:b] == 0) if b > 0 else Const(1)
            low_exact = Mux(carry, low0 & ~p[b], low0)
            e_t = Signal(signed(9), name=f"{name}_e{j}")
            m.d.comb += e_t.eq(eb + carry)
            sub = e_t < -14
            key = reg(Mux(sub, q[c:c + 10], Cat(frac, (e_t + 15)[:5])), f"{name}_k{j}", 16)
            exact = reg(Mux(sub, q[:c] == 0, low_exact), f"{name}_x{j}")
            # stage 5: odd j: the tie goes to the even code
            keys.append(reg(Mux(sz4, 0x7FFF, key - ((j % 2 == 1) & exact)), f"{name}_v{j}", 16))
        return keys

    def elaborate(self, platform):
        m = Module()
        L, B, S = self.lanes, self.beats, self.n_scales
        dfq = self.format in DFQ_FORMATS
        nthr = [len(g.mid_num) for g in self.sides]

        # ------------------------------------------------------------ ingest
        m.submodules.data_q = dq = fifo.SyncFIFOBuffered(width=16 * L, depth=2 * B + LATENCY_AFTER_LAST + 2)
        amax_layout = data.StructLayout({"amax": data.ArrayLayout(15, S), "special": 1})
        aq_depth = TREE_STAGES + 6
        m.submodules.amax_q = aq = fifo.SyncFIFOBuffered(width=amax_layout.size, depth=aq_depth)
        in_cnt = Signal(range(B), name="in_cnt")
        in_last = Signal()
        m.d.comb += in_last.eq(in_cnt == B - 1)
        run_max = [Signal(15, name=f"run_max{k}") for k in range(S)]
        run_special = Signal()

        beat_special = Signal()
        xs = [self.i.payload[k] for k in range(L)]
        m.d.comb += beat_special.eq(Cat(*[x.exponent == 0x1F for x in xs]).any())
        accept = Signal()
        # groups accepted (last beat) and not yet read from the absmax FIFO, incl. those
        # still in the max-tree pipeline: a credit so that the FIFO never overflows
        inflight = Signal(range(aq_depth + 1), name="aq_inflight")
        push, pop = accept & in_last, aq.r_en & aq.r_rdy
        m.d.sync += inflight.eq(inflight + push - pop)
        m.d.comb += [
            self.i.ready.eq(dq.w_rdy & (~in_last | (inflight < aq_depth))),
            accept.eq(self.i.valid & self.i.ready),
            dq.w_data.eq(self.i.payload.as_value()),
            dq.w_en.eq(accept),
        ]
        with m.If(accept):
            m.d.sync += in_cnt.eq(Mux(in_last, 0, in_cnt + 1))
            with m.If(beat_special):
                m.d.sync += self.error.eq(1)

        # max tree over the lanes (free-running, TREE_STAGES registered stages).  The DFQ
        # sides select by the sign bit alone: a +-0 contributes 0 to either side's max.
        # Its first stages run in QuantizerMaxLeaf modules of a few lanes each (one
        # module, emitted and synthesised once), the rest here.
        per_stage = tree_levels(L)
        n_leaf = leaf_stages(L)
        if n_leaf:
            grp = 1 << sum(per_stage[:n_leaf])
            tvals = [[] for _ in range(S)]
            for gi in range(L // grp):
                leaf = QuantizerMaxLeaf(grp, S, tuple(per_stage[:n_leaf]))
                m.submodules[f"max{gi}"] = leaf
                m.d.comb += leaf.x.eq(Cat(*[xs[j].as_value() for j in range(gi * grp, (gi + 1) * grp)]))
                for k in range(S):
                    tvals[k].append(leaf.o[15 * k:15 * (k + 1)])
        else:
            tvals = side_magnitudes(xs, S)
        t_valid, t_last, t_special = accept, in_last, beat_special
        for st in range(TREE_STAGES):
            if st >= n_leaf:
                tvals = max_stage(m, tvals, per_stage[st], f"t{st}")
            nv, nl, ns = Signal(name=f"t{st}_valid"), Signal(name=f"t{st}_last"), Signal(name=f"t{st}_special")
            m.d.sync += [nv.eq(t_valid), nl.eq(t_last), ns.eq(t_special)]
            t_valid, t_last, t_special = nv, nl, ns
        beat_max = []
        for k in range(S):
            bm = Signal(15, name=f"beat_max{k}")
            m.d.comb += bm.eq(Mux(tvals[k][0] > run_max[k], tvals[k][0], run_max[k]))
            beat_max.append(bm)
        m.d.comb += aq.w_en.eq(t_valid & t_last)
        aw = amax_layout(aq.w_data)
        m.d.comb += aw.special.eq(run_special | t_special)
        for k in range(S):
            m.d.comb += aw.amax[k].eq(beat_max[k])
        with m.If(t_valid):
            with m.If(t_last):
                m.d.sync += [run_special.eq(0)] + [r.eq(0) for r in run_max]
            with m.Else():
                m.d.sync += [run_special.eq(run_special | t_special)]
                m.d.sync += [r.eq(b) for r, b in zip(run_max, beat_max)]

        # ------------------------------------------------- scale pipeline (stall-all)
        thr_layout = data.StructLayout({
            "keys": data.ArrayLayout(data.ArrayLayout(16, max(nthr)), S),
            "scales": data.ArrayLayout(16, S), "special": 1, "zero": 1})
        b1 = Signal(thr_layout)
        take_next = Signal()
        en = Signal()
        n_pipe = SCALE_PIPE + KEY_PIPE
        pv = [Signal(name=f"sp{k}_valid") for k in range(n_pipe)]     # pv[-1]: b1 valid
        b1_valid = pv[-1]
        m.d.comb += [en.eq(~b1_valid | take_next), aq.r_en.eq(en)]

        def reg(v, name, shape=None):
            r = Signal(shape if shape is not None else Value.cast(v).shape(), name=name)
            with m.If(en):
                m.d.sync += r.eq(v)
            return r

        def dly(v, n, name):
            for i in range(n):
                v = reg(v, f"{name}{i}")
            return v

        ar = amax_layout(aq.r_data)
        with m.If(en):
            m.d.sync += pv[0].eq(aq.r_rdy)
            m.d.sync += [pv[k + 1].eq(pv[k]) for k in range(n_pipe - 1)]
        special = dly(ar.special, n_pipe, "sp_special")        # registered up to b1
        if self.scale_format == "e8m0":
            scales = [self._e8m0_scale_pipe(m, g, ar.amax[k], f"sc{k}", reg, dly)
                      for k, g in enumerate(self.sides)]
            keys = [self._e8m0_threshold_keys(m, g, scales[k], f"th{k}", reg, dly)
                    for k, g in enumerate(self.sides)]
            nan_scale = 0xFF
        else:
            scales = [self._scale_pipe(m, g, ar.amax[k], f"sc{k}", reg, dly) for k, g in enumerate(self.sides)]
            keys = [self._threshold_keys(m, g, scales[k], f"th{k}", reg, dly) for k, g in enumerate(self.sides)]
            nan_scale = 0x7E00
        # the scales wait for their keys; the last stage also applies NaN and zero
        sc_last = [dly(sc, KEY_PIPE - 1, f"sc{k}_d") for k, sc in enumerate(scales)]
        sp_last = dly(ar.special, n_pipe - 1, "sp_spec_d")
        m.d.comb += [b1.special.eq(special)]
        for k in range(S):
            m.d.comb += [b1.keys[k][j].eq(v) for j, v in enumerate(keys[k])]
        with m.If(en):
            for k in range(S):
                m.d.sync += b1.scales[k].eq(Mux(sp_last, nan_scale, sc_last[k]))
            m.d.sync += b1.zero.eq(~sp_last & Cat(*[sc == 0 for sc in sc_last]).all())

        # --------------------------------------------------------- element stage
        cur = Signal(thr_layout)
        cur_valid = Signal()
        out_cnt = Signal(range(B))
        out_last = Signal()
        fire = Signal()
        m.d.comb += [
            out_last.eq(out_cnt == B - 1),
            fire.eq(cur_valid & dq.r_rdy & (~self.o.valid | self.o.ready)),
            take_next.eq(b1_valid & (~cur_valid | (fire & out_last))),
            dq.r_en.eq(fire),
        ]
        with m.If(take_next):
            m.d.sync += [cur.eq(b1), cur_valid.eq(1)]
        with m.Elif(fire & out_last):
            m.d.sync += cur_valid.eq(0)

        # one QuantizerLane module per lane (emitted and synthesised once); each registers
        # its code on ``fire`` into the output beat
        dr = data.ArrayLayout(FP16_LAYOUT, L)(dq.r_data)
        mode = "dfq" if dfq else "int" if self.sides[0].kind == "int" else "float"
        keys = Cat(*[cur.keys[k][j] for k in range(S) for j in range(nthr[k])])
        for lane in range(L):
            ql = QuantizerLane(tuple(nthr), self.code.size, mode)
            m.submodules[f"lane{lane}"] = ql
            m.d.comb += [ql.en.eq(fire), ql.x.eq(dr[lane]), ql.keys.eq(keys),
                         ql.kill.eq(cur.special | cur.zero),
                         self.o.payload.codes[lane].as_value().eq(ql.code)]

        with m.If(fire):
            m.d.sync += self.o.valid.eq(1)
            m.d.sync += [Value.cast(self.o.payload.scales[k]).eq(cur.scales[k][:self.scale_bits])
                         for k in range(S)]
            m.d.sync += self.o.payload.last.eq(out_last)
            m.d.sync += out_cnt.eq(Mux(out_last, 0, out_cnt + 1))
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
