"""Group Hadamard unit: streaming fast Walsh-Hadamard transform over 128-groups.

Numerics: ``docs/numerics.md`` section 3, "Group Hadamard unit"; golden model
``fpqvar_quant.golden.hadamard`` (bit-exact co-simulation in sim/test_hadamard.py).

    y_i = RNE_fp16( (1/8) * (-1)^d_i * sum_j (-1)^popcount(i & j) x_j )

computed exactly in fixed point (every FP16 value is an integer multiple of
2^-24 below 2^40 in magnitude; the 128-term sum needs 48 bits plus sign) and
rounded once by the shared :class:`fpqvar_hw.units.fpu.RoundPack`.  No multipliers:
butterflies add and subtract, the sign vector flips output signs (``x Had D``,
the paper's ``H = Had D / sqrt(128)``; a zero stays +0).

Micro-architecture (``lanes`` = L values per beat, B = 128 / L beats per group,
element index ``j = beat * L + lane``; ``Had_128 = Had_B (x) Had_L``):

1. **Input stage**: FP16 -> signed fixed point, then
   an L-point FWHT across the lanes (log2 L butterfly levels); registered.
2. **Beat accumulation**: B x L accumulators; beat b adds ``(-1)^popcount(b & b')
   z_b`` into accumulator row b' (the B-point transform across beats).  After
   the last beat the rows move to an output buffer, so the next group
   accumulates while this one drains (II = 1).
3. **Output**: one row of L values per cycle, sign flipped by ``signs[i]``
   (``i = row * L + lane``; not for an exact zero), through L RoundPack
   instances into the registered output payload.

Ports
-----
``i``: stream of ``ArrayLayout(FP16, lanes)``; 128 / lanes beats per group.
``o``: stream of ``ArrayLayout(FP16, lanes)``, same element order.
``signs``: 128-bit input, bit i = 1 negates output y_i (the random sign vector D as
data, loaded at run time; it must be stable while a group is in flight).
``error``: sticky; set when a group containing NaN/Inf is output (its outputs are
all ``0x7E00``).  ``overflow``: sticky; set when an output saturated to +-65504.

Latency / throughput: II = 1 beat per cycle in and out; the first output beat
of a group leaves :data:`LATENCY_AFTER_LAST` cycles after the group's last input
beat was accepted (no stalls).  ``valid`` never depends on ``ready``.
"""
from __future__ import annotations

from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fpu import FP16, RoundPack, float_layout

__all__ = ["GroupHadamard", "N", "LATENCY_AFTER_LAST"]

N = 128
FP16_LAYOUT = float_layout(FP16)
#: Fixed-point width of one transformed value (sign + 47 magnitude bits, units 2^-24).
ACC_BITS = 49
#: Cycles from the acceptance of a group's last beat to its first output beat.
LATENCY_AFTER_LAST = 3
OUT_SHIFT = 3       # y = sum / 8


class GroupHadamard(wiring.Component):
    """Streaming 128-point Walsh-Hadamard (see the module docstring).

    Parameters (keyword-only): ``lanes`` (values per beat, a power of two dividing
    128, default 16); ``group_size`` must be 128 (the transform size).
    """

    def __init__(self, *, lanes: int = 16, group_size: int = N):
        if group_size != N:
            raise ValueError(f"the Hadamard unit transforms groups of {N}, got group_size={group_size}")
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1) or N % lanes:
            raise ValueError(f"lanes must be a power of two dividing {N}, got {lanes!r}")
        self.lanes, self.group_size, self.beats = lanes, group_size, N // lanes
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(FP16_LAYOUT, lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(FP16_LAYOUT, lanes))),
            "signs": In(N),
            "error": Out(1),
            "overflow": Out(1),
        })

    def manifest(self) -> dict[str, Any]:
        """JSON-able description (ports, latency, formats, config) for build reports."""
        return {
            "unit": "hadamard", "class": type(self).__name__,
            "config": {"n": N, "lanes": self.lanes, "beats_per_group": self.beats,
                       "out_shift": OUT_SHIFT, "acc_bits": ACC_BITS},
            "formats": {"input": "fp16", "output": "fp16"},
            "ports": {
                "i": {"dir": "in", "kind": "stream", "payload_bits": 16 * self.lanes},
                "o": {"dir": "out", "kind": "stream", "payload_bits": 16 * self.lanes},
                "signs": {"dir": "in", "kind": "data", "bits": N, "note": "1 = negate x_j"},
                "error": {"dir": "out", "kind": "flag", "sticky": True},
                "overflow": {"dir": "out", "kind": "flag", "sticky": True},
            },
            "latency_cycles": LATENCY_AFTER_LAST,
            "latency_note": "from the last input beat of a group to its first output beat",
            "initiation_interval": 1,
            "overflow_policy": "saturate to +-65504 and set the sticky overflow flag",
            "numerics": "docs/numerics.md section 3, Group Hadamard unit",
        }

    def elaborate(self, platform):
        m = Module()
        L, B = self.lanes, self.beats

        # ---------------------------------------------------------- input stage
        in_cnt = Signal(range(B), name="in_cnt")
        s1_valid = Signal()
        s1_first, s1_last, s1_special = Signal(), Signal(), Signal()
        s1_beat = Signal(range(B), name="s1_beat")
        s1 = [Signal(signed(ACC_BITS), name=f"s1_{k}") for k in range(L)]
        s1_take = Signal()
        m.d.comb += self.i.ready.eq(~s1_valid | s1_take)
        accept = self.i.valid & self.i.ready
        vals = []
        specials = []
        for k in range(L):
            x = self.i.payload[k]
            sig = Cat(x.mantissa, x.exponent != 0)
            sh = Signal(5, name=f"sh{k}")
            m.d.comb += sh.eq(Mux(x.exponent == 0, 0, x.exponent - 1))
            mag = Signal(41, name=f"mag{k}")
            m.d.comb += mag.eq(sig << sh)
            v = Signal(signed(ACC_BITS), name=f"fx{k}")
            m.d.comb += v.eq(Mux(x.sign, -mag, mag))
            vals.append(v)
            specials.append(x.exponent == 0x1F)
        h = 1
        while h < L:                      # in-place FWHT across lanes (Sylvester order)
            nxt = list(vals)
            for a in range(L):
                if a & h == 0:
                    s, d = Signal(signed(ACC_BITS)), Signal(signed(ACC_BITS))
                    m.d.comb += [s.eq(vals[a] + vals[a + h]), d.eq(vals[a] - vals[a + h])]
                    nxt[a], nxt[a + h] = s, d
            vals = nxt
            h *= 2
        with m.If(accept):
            m.d.sync += [s1_valid.eq(1), s1_first.eq(in_cnt == 0), s1_last.eq(in_cnt == B - 1),
                         s1_beat.eq(in_cnt), s1_special.eq(Cat(*specials).any()),
                         in_cnt.eq(Mux(in_cnt == B - 1, 0, in_cnt + 1))]
            m.d.sync += [r.eq(v) for r, v in zip(s1, vals)]
        with m.Elif(s1_take):
            m.d.sync += s1_valid.eq(0)

        # ----------------------------------------------------- beat accumulation
        acc = [[Signal(signed(ACC_BITS), name=f"acc{r}_{k}") for k in range(L)] for r in range(B)]
        acc_special = Signal()
        obuf = [[Signal(signed(ACC_BITS), name=f"ob{r}_{k}") for k in range(L)] for r in range(B)]
        ob_valid, ob_special = Signal(), Signal()
        ob_cnt = Signal(range(B), name="ob_cnt")
        ob_fire = Signal()
        ob_free = Signal()
        m.d.comb += [ob_free.eq(~ob_valid | (ob_fire & (ob_cnt == B - 1))),
                     s1_take.eq(s1_valid & (~s1_last | ob_free))]
        new = []
        for r in range(B):
            row = []
            for k in range(L):
                odd = Signal(name=f"odd{r}")
                m.d.comb += odd.eq((s1_beat & r).xor())
                base = Mux(s1_first, 0, acc[r][k])
                t = Signal(signed(ACC_BITS), name=f"nw{r}_{k}")
                m.d.comb += t.eq(Mux(odd, base - s1[k], base + s1[k]))
                row.append(t)
            new.append(row)
        spec_new = s1_special | (acc_special & ~s1_first)
        with m.If(s1_take):
            m.d.sync += [acc[r][k].eq(new[r][k]) for r in range(B) for k in range(L)]
            m.d.sync += acc_special.eq(spec_new)
            with m.If(s1_last):
                m.d.sync += [obuf[r][k].eq(new[r][k]) for r in range(B) for k in range(L)]
                m.d.sync += [ob_valid.eq(1), ob_special.eq(spec_new)]
        with m.If(ob_fire):
            m.d.sync += ob_cnt.eq(Mux(ob_cnt == B - 1, 0, ob_cnt + 1))
            with m.If((ob_cnt == B - 1) & ~(s1_take & s1_last)):
                m.d.sync += ob_valid.eq(0)

        # --------------------------------------------------------------- output
        m.d.comb += ob_fire.eq(ob_valid & (~self.o.valid | self.o.ready))
        outs, ovfs = [], []
        dsel = Signal(L)
        m.d.comb += dsel.eq(self.signs.word_select(ob_cnt, L))
        for k in range(L):
            row = Signal(signed(ACC_BITS), name=f"row{k}")
            m.d.comb += row.eq(Cat(*[obuf[r][k] for r in range(B)]).word_select(ob_cnt, ACC_BITS))
            rp = RoundPack(FP16, sig_bits=ACC_BITS - 1, exp_bits=8)
            m.submodules[f"rp{k}"] = rp
            neg = Signal(name=f"neg{k}")
            m.d.comb += neg.eq((row < 0) ^ (dsel[k] & (row != 0)))
            m.d.comb += [rp.i.sig.eq(Mux(row < 0, -row, row)[:ACC_BITS - 1]),
                         rp.i.exp.eq(-24 - OUT_SHIFT + ACC_BITS - 2), rp.i.sticky.eq(0),
                         rp.i.sign.eq(neg), rp.i.nan.eq(0), rp.i.inf.eq(0)]
            o = rp.o.as_value()
            ovf = o[10:15] == 0x1F
            res = Mux(ob_special, 0x7E00, Mux(ovf, Cat(Const(0x7BFF, 15), neg), o))
            outs.append(res)
            ovfs.append(ovf & ~ob_special)
        with m.If(ob_fire):
            m.d.sync += self.o.valid.eq(1)
            m.d.sync += [self.o.payload[k].as_value().eq(v) for k, v in enumerate(outs)]
            with m.If(ob_special):
                m.d.sync += self.error.eq(1)
            with m.If(Cat(*ovfs).any()):
                m.d.sync += self.overflow.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m
