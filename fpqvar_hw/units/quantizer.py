"""LUT-based group quantizer: FP16 groups in, per-group scale(s) and element codes out.

Numerics: ``docs/numerics.md`` section 3, "Group quantizer"; golden model
``fpqvar_quant.golden.quantizer`` (the RTL is tested bit-exactly against it).

Micro-architecture (no divider anywhere):

1. **Ingest** (II = 1 beat/cycle): each beat of ``lanes`` FP16 values is written
   to a data FIFO while a max tree over the 15 magnitude bits (for finite FP16
   values their unsigned order is the value order) updates the group's running
   absmax (DFQ: one per side) and a NaN/Inf flag.  On the group's last beat the
   absmax goes to a small FIFO.
2. **Scale** (once per group, 2 pipeline stages): ``s = RNE_fp16(A / fmax)``
   with ``fmax = F * 2^f`` (F odd): the quotient bits ``floor(Ma * 2^P / F)`` come
   from a multiplication by the constant ``ceil(2^K / F)`` (exact for every
   11-bit ``Ma``, Granlund-Montgomery; the unit test checks all of them), the
   remainder's non-zeroness gives the sticky bit, and the shared
   :class:`fpqvar_hw.units.fpu.RoundPack` rounds once.  ``A > 0`` rounding to 0 gives
   ``2^-24``.  Then each midpoint threshold ``T_j = s * mid_j`` (exact: 11-bit
   significand times a small constant) is reduced to a 16-bit *key*
   ``V_j = floor16(T_j)`` (even ``j``) or ``ceil16(T_j) - 1`` (odd ``j``), where
   ``floor16``/``ceil16`` round to the FP16 grid and the key is the FP16
   magnitude bit pattern.  Then ``|x| > T_j  <=>  mag(x) > V_j`` (even j) and
   ``|x| >= T_j  <=>  mag(x) > V_j`` (odd j, the tie goes to the even code).
   **e8m0 scales** (OCP MX, ``scale_format="e8m0"``): the scale stage is the
   exponent of A's leading one, ``code = 127 + floor(log2 A) - emax`` (a
   leading-zero count and an add), and the keys come from a per-format constant
   table indexed by the scale code (:func:`e8m0_keys`; the thresholds
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
backpressure; an output beat appears :data:`LATENCY_AFTER_LAST` cycles after the
last input beat of its group (all of a group's beats wait for its scale).
``valid`` never depends on ``ready``; ``o.ready`` low stalls the output stage,
and the FIFOs then fill and deassert ``i.ready``.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned, Value
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from fpqvar_quant.formats import get_format
from .fpu import FP16, RoundPack, clz, float_layout

__all__ = ["Quantizer", "QUANTIZER_FORMATS", "SCALE_FORMATS", "code_layout", "Grid", "grid",
           "scale_constants", "e8m0_exponents", "e8m0_keys", "LATENCY_AFTER_LAST"]

DFQ = "dfq4"
#: Dual formats: (negative-side grid, positive-side grid, code bits); the code's
#: top bit selects the grid (1 = negative side).
DFQ_FORMATS = {"dfq4": ("e1m2fn", "e2m1fn", 4), "dfq6": ("int6", "e2m3fn", 6)}
QUANTIZER_FORMATS = ("e2m1fn", "e1m2fn", "e3m0fn", "e2m3fn", "e3m2fn", "int4", "int6", "int8") + tuple(DFQ_FORMATS)
SCALE_FORMATS = ("fp16", "e8m0")
FP16_LAYOUT = float_layout(FP16)
#: Largest finite FP16 magnitude pattern (65504); keys never exceed it.
_FP16_MAX_MAG = 0x7BFF
#: Cycles from the acceptance of a group's last input beat to its first output beat
#: (no stalls); measured by tests/test_hw_quantizer.py.
LATENCY_AFTER_LAST = 6


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


class Quantizer(wiring.Component):
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

    def __init__(self, *, format: str = "e2m1fn", group_size: int = 128, lanes: int = 16,
                 scale_format: str = "fp16"):
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
    def _scale_stage(self, m: Module, g: Grid, amax: Value, name: str) -> Value:
        """Combinational FP16 scale bits of ``RNE(A / fmax)`` (``A`` = 15 magnitude bits)."""
        ex, man = amax[10:15], amax[0:10]
        Ma = Signal(11, name=f"{name}_Ma")
        m.d.comb += Ma.eq(Cat(man, ex != 0))
        R, K = scale_constants(g.fmax_odd)
        prod = Signal(11 + R.bit_length(), name=f"{name}_prod")
        m.d.comb += prod.eq(Ma * R)
        q = Signal(11 + QUOT_P, name=f"{name}_q")                  # floor(Ma * 2^P / F)
        m.d.comb += q.eq(prod >> (K - QUOT_P))
        rem_nz = Signal(name=f"{name}_sticky")
        m.d.comb += rem_nz.eq((q * g.fmax_odd) != (Ma << QUOT_P))
        rp = RoundPack(FP16, sig_bits=len(q), exp_bits=10)
        m.submodules[f"{name}_rp"] = rp
        # value = q * 2^(exA - fmax_exp - P), exA = max(E,1) - 25; RoundPack wants the MSB weight.
        exA = Signal(signed(10), name=f"{name}_exA")
        m.d.comb += exA.eq(Mux(ex == 0, 1, ex) - 25)
        m.d.comb += [rp.i.sig.eq(q), rp.i.exp.eq(exA - g.fmax_exp - QUOT_P + len(q) - 1),
                     rp.i.sticky.eq(rem_nz), rp.i.sign.eq(0), rp.i.nan.eq(0), rp.i.inf.eq(0)]
        s = Signal(16, name=f"{name}_s")
        m.d.comb += s.eq(Mux(amax == 0, 0, Mux(rp.o.as_value() == 0, 1, rp.o.as_value())))
        return s

    def _e8m0_scale_stage(self, m: Module, g: Grid, amax: Value, name: str) -> Value:
        """Combinational e8m0 code ``127 + floor(log2 A) - emax`` (0 when ``A == 0``)."""
        ex = amax[10:15]
        sig = Signal(11, name=f"{name}_sig")
        m.d.comb += sig.eq(Cat(amax[0:10], ex != 0))
        lz = clz(m, sig)
        # floor(log2 A) = max(E, 1) - 15 - clz(significand); the code is always in 1..254
        code = Signal(8, name=f"{name}_e8m0")
        m.d.comb += code.eq(Mux(amax == 0, 0, Mux(ex == 0, 1, ex) - lz + (127 - 15 - g.emax)))
        return code

    def _e8m0_threshold_keys(self, m: Module, g: Grid, code: Value, name: str) -> list[Signal]:
        """Keys ``V_j`` of ``T_j = mid_j * 2^(code - 127)`` from a constant table per code
        (all-ones when code == 0, the zero group / empty DFQ side)."""
        keys = [Signal(16, name=f"{name}_v{j}", init=0x7FFF) for j in range(len(g.mid_num))]
        with m.Switch(code[:8]):
            for e in e8m0_exponents(g):
                with m.Case(e + 127):
                    m.d.comb += [k.eq(v) for k, v in zip(keys, e8m0_keys(g, e))]
        return keys

    def _threshold_keys(self, m: Module, g: Grid, s: Value, name: str) -> list[Signal]:
        """Keys ``V_j`` of the thresholds ``T_j = s * mid_j`` (all-ones when s == 0).

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
        lz = clz(m, sig)
        ms = Signal(11, name=f"{name}_ms")                    # normalised significand
        m.d.comb += ms.eq((sig << lz)[:11])
        es = Signal(signed(8), name=f"{name}_es")             # unbiased exponent of s's leading one
        m.d.comb += es.eq(Mux(ex == 0, 1, ex) - 15 - lz)
        WS = 11 + c                                            # enough for every subnormal T_j
        sfix = Signal(WS, name=f"{name}_sfix")                 # s in units 2^-24 (truncated)
        sh = Signal(5, name=f"{name}_sh")
        m.d.comb += [sh.eq(Mux(ex == 0, 0, ex - 1)), sfix.eq((sig << sh)[:WS])]
        keys = []
        for j, n in enumerate(g.mid_num):
            b = n.bit_length() - 1
            p = Signal(12 + b, name=f"{name}_p{j}")
            m.d.comb += p.eq(ms * n)
            carry = p[11 + b]
            frac = Mux(carry, p[b + 1:b + 11], p[b:b + 10])
            low0 = (p[:b] == 0) if b > 0 else Const(1)
            low_exact = Mux(carry, low0 & ~p[b], low0)
            e_t = Signal(signed(9), name=f"{name}_e{j}")
            m.d.comb += e_t.eq(es + (b - c) + carry)
            q = Signal(WS + b + 1, name=f"{name}_q{j}")
            m.d.comb += q.eq(sfix * n)
            sub = e_t < -14
            key = Mux(sub, q[c:c + 10], Cat(frac, (e_t + 15)[:5]))
            exact = Mux(sub, q[:c] == 0, low_exact)
            v = Signal(16, name=f"{name}_v{j}")
            m.d.comb += v.eq(Mux(s == 0, 0x7FFF, key - ((j % 2 == 1) & exact)))
            keys.append(v)
        return keys

    def elaborate(self, platform):
        m = Module()
        L, B, S = self.lanes, self.beats, self.n_scales
        dfq = self.format in DFQ_FORMATS
        nthr = [len(g.mid_num) for g in self.sides]

        # ------------------------------------------------------------ ingest
        m.submodules.data_q = dq = fifo.SyncFIFOBuffered(width=16 * L, depth=2 * B + 6)
        amax_layout = data.StructLayout({"amax": data.ArrayLayout(15, S), "special": 1})
        m.submodules.amax_q = aq = fifo.SyncFIFOBuffered(width=amax_layout.size, depth=4)
        in_cnt = Signal(range(B), name="in_cnt")
        in_last = Signal()
        m.d.comb += in_last.eq(in_cnt == B - 1)
        run_max = [Signal(15, name=f"run_max{k}") for k in range(S)]
        run_special = Signal()

        def side_of(x) -> list[Value]:
            if not dfq:
                return [Const(1)]
            neg = x.sign | (x.as_value()[:15] == 0)
            return [neg, ~neg]

        beat_max = []
        beat_special = Signal()
        xs = [self.i.payload[k] for k in range(L)]
        m.d.comb += beat_special.eq(Cat(*[x.exponent == 0x1F for x in xs]).any())
        for k in range(S):
            vals = [Mux(side_of(x)[k], x.as_value()[:15], 0) for x in xs]
            while len(vals) > 1:   # balanced max tree
                nxt = []
                for a, b in zip(vals[0::2], vals[1::2]):
                    t = Signal(15)
                    m.d.comb += t.eq(Mux(a > b, a, b))
                    nxt.append(t)
                if len(vals) % 2:
                    nxt.append(vals[-1])
                vals = nxt
            bm = Signal(15, name=f"beat_max{k}")
            m.d.comb += bm.eq(Mux(vals[0] > run_max[k], vals[0], run_max[k]))
            beat_max.append(bm)
        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(dq.w_rdy & (~in_last | aq.w_rdy)),
            accept.eq(self.i.valid & self.i.ready),
            dq.w_data.eq(self.i.payload.as_value()),
            dq.w_en.eq(accept),
            aq.w_en.eq(accept & in_last),
        ]
        aw = amax_layout(aq.w_data)
        m.d.comb += aw.special.eq(run_special | beat_special)
        for k in range(S):
            m.d.comb += aw.amax[k].eq(beat_max[k])
        with m.If(accept):
            with m.If(in_last):
                m.d.sync += [in_cnt.eq(0), run_special.eq(0)] + [r.eq(0) for r in run_max]
            with m.Else():
                m.d.sync += [in_cnt.eq(in_cnt + 1), run_special.eq(run_special | beat_special)]
                m.d.sync += [r.eq(b) for r, b in zip(run_max, beat_max)]
            with m.If(beat_special):
                m.d.sync += self.error.eq(1)

        # ------------------------------------------------- scale pipeline (stall-all)
        thr_layout = data.StructLayout({
            "keys": data.ArrayLayout(data.ArrayLayout(16, max(nthr)), S),
            "scales": data.ArrayLayout(16, S), "special": 1, "zero": 1})
        b0_valid, b1_valid = Signal(), Signal()
        b0_scales = [Signal(16, name=f"b0_scale{k}") for k in range(S)]
        b0_special = Signal()
        b1 = Signal(thr_layout)
        take_next = Signal()
        en = Signal()
        m.d.comb += [en.eq(~b1_valid | take_next), aq.r_en.eq(en)]
        ar = amax_layout(aq.r_data)
        if self.scale_format == "e8m0":
            scales = [self._e8m0_scale_stage(m, g, ar.amax[k], f"sc{k}") for k, g in enumerate(self.sides)]
            keys = [self._e8m0_threshold_keys(m, g, b0_scales[k], f"th{k}")
                    for k, g in enumerate(self.sides)]
            nan_scale = 0xFF
        else:
            scales = [self._scale_stage(m, g, ar.amax[k], f"sc{k}") for k, g in enumerate(self.sides)]
            keys = [self._threshold_keys(m, g, b0_scales[k], f"th{k}") for k, g in enumerate(self.sides)]
            nan_scale = 0x7E00
        with m.If(en):
            m.d.sync += [b0_valid.eq(aq.r_rdy), b0_special.eq(ar.special), b1_valid.eq(b0_valid)]
            for k in range(S):
                m.d.sync += b0_scales[k].eq(scales[k])
                m.d.sync += [b1.keys[k][j].eq(v) for j, v in enumerate(keys[k])]
                m.d.sync += b1.scales[k].eq(Mux(b0_special, nan_scale, b0_scales[k]))
            m.d.sync += [b1.special.eq(b0_special),
                         b1.zero.eq(~b0_special & Cat(*[s == 0 for s in b0_scales]).all())]

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

        dr = data.ArrayLayout(FP16_LAYOUT, L)(dq.r_data)
        codes = []
        for lane in range(L):
            x = dr[lane]
            mag = x.as_value()[:15]
            sides = side_of(x)
            idx = []
            for k, g in enumerate(self.sides):
                therm = Signal(nthr[k], name=f"l{lane}_therm{k}")   # thermometer code
                m.d.comb += therm.eq(Cat(*[mag > cur.keys[k][j] for j in range(nthr[k])]))
                cnt = Signal(range(nthr[k] + 1), name=f"l{lane}_idx{k}")
                m.d.comb += cnt.eq(sum(therm[j] for j in range(nthr[k])))
                idx.append(cnt)
            code = Signal(self.code.size, name=f"l{lane}_code")
            if dfq:
                mb = self.code.size - 1
                m.d.comb += code.eq(Mux(sides[0], Cat(idx[0][:mb], Const(1, 1)), Cat(idx[1][:mb], Const(0, 1))))
            elif self.sides[0].kind == "int":
                w = self.code.size
                mag_c = idx[0][:w]
                m.d.comb += code.eq(Mux(x.sign, -mag_c, mag_c)[:w])
            else:
                m.d.comb += code.eq(Cat(idx[0][:self.code.size - 1], x.sign))
            codes.append(Mux(cur.special | cur.zero, 0, code))

        with m.If(fire):
            m.d.sync += self.o.valid.eq(1)
            m.d.sync += [self.o.payload.codes[lane].as_value().eq(c) for lane, c in enumerate(codes)]
            m.d.sync += [Value.cast(self.o.payload.scales[k]).eq(cur.scales[k][:self.scale_bits])
                         for k in range(S)]
            m.d.sync += self.o.payload.last.eq(out_last)
            m.d.sync += out_cnt.eq(Mux(out_last, 0, out_cnt + 1))
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
