"""Group Hadamard unit: streaming fast Walsh-Hadamard transform over 128-groups.

Numerics: ``docs/numerics.md`` section 3, "Group Hadamard unit"; golden model
``fpqvar_quant.golden.hadamard`` (bit-exact co-simulation in sim/test_hadamard.py).

    y_i = RNE_fp16( (1/8) * (-1)^d_i * sum_j (-1)^popcount(i & j) x_j )

computed exactly in fixed point (every FP16 value is an integer multiple of
2^-24 below 2^40 in magnitude; the 128-term sum needs 48 bits plus sign) and
rounded once to nearest even (the rounding of the shared
:class:`fpqvar_hw.units.fpu.RoundPack`, specialised here to a fixed-point input
and split over pipeline stages).  No multipliers: butterflies add and subtract,
the sign vector flips output signs (``x Had D``, the paper's ``H = Had D /
sqrt(128)``; a zero stays +0).

Micro-architecture (``lanes`` = L values per beat, B = 128 / L beats per group,
element index ``j = beat * L + lane``; ``Had_128 = Had_B (x) Had_L``), every
stage registered so that no path has more than one wide add or one shift
(delay-model f_max >= 300 MHz, ``benchmarks/results/unit_resources_quant.md``):

1. **Input pipeline** (stall-all, ``3 + BF_STAGES`` stages): FP16 -> unsigned
   fixed-point magnitude (a shift); -> signed; then the L-point FWHT across the
   lanes, its log2 L butterfly levels spread over :data:`BF_STAGES` registered
   stages (one level per stage up to 32 lanes; fewer lanes leave delay-only
   stages, so the latency does not depend on L); then one stage that registers
   each value and its negation, and per accumulator row whether the beat
   subtracts.
2. **Beat accumulation**: B x L accumulators; beat b adds ``(-1)^popcount(b & b')
   z_b`` into accumulator row b' (the B-point transform across beats): one
   operand-select LUT in front of one 49-bit carry chain per accumulator.  After
   the last beat the rows move to an output buffer, so the next group
   accumulates while this one drains (II = 1).
3. **Output pipeline** (stall-all, 3 stages + the output register): one row of
   L values per cycle: row select, magnitude and sign (flipped by ``signs[i]``,
   ``i = row * L + lane``, not for an exact zero); the leading-one position
   (exponent field and shift); the normalising shift with guard and sticky
   bits; round to nearest even, saturate, pack.

Ports
-----
``i``: stream of ``ArrayLayout(FP16, lanes)``; 128 / lanes beats per group.
``o``: stream of ``ArrayLayout(FP16, lanes)``, same element order.
``signs``: 128-bit input, bit i = 1 negates output y_i (the random sign vector D as
data, loaded at run time; it must be stable while a group is in flight).
``error``: sticky; set when a group containing NaN/Inf is output (its outputs are
all ``0x7E00``).  ``overflow``: sticky; set when an output saturated to +-65504.

The B x L accumulators (:class:`HadamardAccumulator`) and the L output lanes
(:class:`HadamardOutLane`) are modules of their own: the build emits and synthesises each
once (full size, 2026-12-06: 45 s of Yosys for the unit instead of 110-148 s flat; 35,908
LUT against 35,830, FF and CARRY equal, the same logic depth).

Latency / throughput: II = 1 beat per cycle in and out; the first output beat
of a group leaves :data:`LATENCY_AFTER_LAST` (13) cycles after the group's last
input beat was accepted (no stalls), for every lane count.  ``valid`` never
depends on ``ready``; ``o.ready`` low stalls the output pipeline and, once the
output buffer and accumulators are full, the input pipeline (``i.ready`` low).
"""
from __future__ import annotations

from typing import Any

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..checked import Checked
from ..emit import hierarchical
from .fpu import FP16, float_layout

__all__ = ["GroupHadamard", "HadamardAccumulator", "HadamardOutLane", "N",
           "LATENCY_AFTER_LAST"]

N = 128
FP16_LAYOUT = float_layout(FP16)
#: Fixed-point width of one transformed value (sign + 47 magnitude bits, units 2^-24).
ACC_BITS = 49
#: Fixed-point width of one FP16 magnitude (11-bit significand shifted by up to 30).
MAG_BITS = 41
#: Registered stages of the lane FWHT (its log2(lanes) butterfly levels spread over
#: them, a stage holding at most one level up to 32 lanes), so the latency is the
#: same for every lane count.
BF_STAGES = 5
OUT_SHIFT = 3       # y = sum / 8
#: Cycles from the acceptance of a group's last beat to its first output beat (no
#: stalls): 2 conversion stages + BF_STAGES + the negation stage + accumulate + 3
#: output stages + the output register; measured by tests/test_hw_hadamard.py.
LATENCY_AFTER_LAST = 2 + BF_STAGES + 1 + 1 + 3 + 1


@hierarchical
class HadamardAccumulator(wiring.Component):
    """One accumulator of :class:`GroupHadamard`'s beat accumulation and its output buffer
    word (the unit holds B x L of them, one module).

    On ``take``: ``acc = (0 if first else acc) + (neg if odd else pos)``; with ``last``
    as well, the new sum is also copied to ``ob`` (held until the next group's last beat).
    ``pos``/``neg``: the beat's value and its negation (registered by the parent), ``odd``:
    whether this accumulator row subtracts the beat."""

    def __init__(self):
        super().__init__({
            "take": In(1), "first": In(1), "last": In(1), "odd": In(1),
            "pos": In(signed(ACC_BITS)), "neg": In(signed(ACC_BITS)),
            "ob": Out(signed(ACC_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        acc = Signal(signed(ACC_BITS))
        base = Signal(signed(ACC_BITS))
        opnd = Signal(signed(ACC_BITS))
        new = Signal(signed(ACC_BITS))
        # one operand-select LUT in front of one carry chain
        m.d.comb += [base.eq(Mux(self.first, 0, acc)), opnd.eq(Mux(self.odd, self.neg, self.pos)),
                     new.eq(base + opnd)]
        with m.If(self.take):
            m.d.sync += acc.eq(new)
            with m.If(self.last):
                m.d.sync += self.ob.eq(new)
        return m


@hierarchical
class HadamardOutLane(wiring.Component):
    """One output lane of :class:`GroupHadamard` (the unit holds L of them, one module):
    3 stall-all stages and the output register, enabled by ``en``.

    ``row``: the lane's transformed value (fixed point, units 2^-24, read from the output
    buffer); q0: magnitude and output sign (``flip`` negates a non-zero value); q1:
    leading-one position (an OR over the one-hot leading one, no priority chain) -> right
    shift and whether there is one; q2: the shift, guard and sticky bits, the exponent
    field; then round to nearest even, saturate to +-65504 and pack into ``y``
    (``0x7E00`` where the parent's ``special``, aligned with q2, is set).  ``ovf``
    (registered with ``y``): the value in ``y`` saturated, qualified by ``valid`` (q2's)."""

    def __init__(self):
        super().__init__({
            "en": In(1), "row": In(signed(ACC_BITS)), "flip": In(1),
            "special": In(1), "valid": In(1),
            "y": Out(16), "ovf": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        SUB = 24 + OUT_SHIFT - 14          # mag < 2^SUB: FP16 subnormal result
        W = ACC_BITS - 1
        row, q2_sp = self.row, self.special
        q0_mag, q0_neg = Signal(W), Signal()
        q1_mag, q1_neg = Signal(W), Signal()
        q1_sh = Signal(range(W - SUB + 1))     # right shift = p' - SUB
        q1_any = Signal()                      # a one at or above bit SUB
        q2_man, q2_ef = Signal(10), Signal(range(W - SUB + 2))
        q2_guard, q2_sticky, q2_neg = Signal(), Signal(), Signal()
        q2_ef_ge31, q2_ef_eq30 = Signal(), Signal()        # q2_ef >= 31, == 30 (from q1_ef)
        # leading one of q0_mag[SUB:] as a one-hot vector (a bit set with nothing set
        # above it), then each bit of the shift an OR over the one-hot bits whose
        # position has it: no priority chain
        top = q0_mag[SUB:W]
        lead = Signal(W - SUB)
        m.d.comb += lead.eq(Cat(*[top[p] & ~top[p + 1:].any() for p in range(W - SUB - 1)],
                                top[W - SUB - 1]))
        sh = Signal.like(q1_sh)
        m.d.comb += sh.eq(Cat(*[Cat(*[lead[p] for p in range(W - SUB) if p >> k & 1]).any()
                                for k in range(len(sh))]))
        # exponent field before rounding: q1_sh + 1 where there is a leading one, else 0
        q1_ef = Mux(q1_any, q1_sh + 1, 0)
        shifted = Signal(W)
        m.d.comb += shifted.eq(q1_mag >> q1_sh)
        lost = Cat(*[q1_mag[i] & (q1_sh > i) for i in range(W - SUB)]).any()
        # pattern = (ef << 10 | man) + round_up; the exponent carry reaches 0x7C00 on overflow
        round_up = q2_guard & (q2_sticky | q2_man[0])
        pat = Signal(16)
        m.d.comb += pat.eq(Cat(q2_man, q2_ef) + round_up)
        ovf = q2_ef_ge31 | (q2_ef_eq30 & (q2_man == 0x3FF) & round_up)
        res = Mux(q2_sp, 0x7E00, Mux(ovf, Cat(Const(0x7BFF, 15), q2_neg), Cat(pat[:15], q2_neg)))
        with m.If(self.en):
            m.d.sync += self.ovf.eq(ovf & ~q2_sp & self.valid)
            # |row| as (row ^ sign) + sign: one operand LUT in front of one carry chain
            m.d.sync += [q0_mag.eq(((row.as_unsigned()[:W] ^ Cat(*[row[-1]] * W)) + row[-1])[:W]),
                         q0_neg.eq((row < 0) ^ (self.flip & (row != 0))),
                         q1_mag.eq(q0_mag), q1_neg.eq(q0_neg), q1_sh.eq(sh), q1_any.eq(top.any()),
                         q2_man.eq(shifted[OUT_SHIFT:OUT_SHIFT + 10]), q2_ef.eq(q1_ef),
                         q2_guard.eq(shifted[OUT_SHIFT - 1]),
                         q2_sticky.eq(lost | (shifted[:OUT_SHIFT - 1] != 0)), q2_neg.eq(q1_neg),
                         q2_ef_ge31.eq(q1_ef >= 31), q2_ef_eq30.eq(q1_ef == 30),
                         self.y.eq(res)]
        return m


@hierarchical
class GroupHadamard(Checked, wiring.Component):
    """Streaming 128-point Walsh-Hadamard (see the module docstring).

    Parameters (keyword-only): ``lanes`` (values per beat, a power of two dividing
    128, default 16); ``group_size`` must be 128 (the transform size).
    """

    @classmethod
    def check_params(cls, *, lanes, group_size) -> None:
        if group_size != N:
            raise ValueError(f"the Hadamard unit transforms groups of {N}, got group_size={group_size}")
        if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1) or N % lanes:
            raise ValueError(f"lanes must be a power of two dividing {N}, got {lanes!r}")

    def __init__(self, *, lanes: int = 16, group_size: int = N):
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

        # ---------------------------------------------------------- input pipeline
        # Stall-all: every stage register (and its valid bit) advances on en_in.
        s1_valid = Signal()
        s1_take = Signal()
        en_in = Signal()
        m.d.comb += [en_in.eq(~s1_valid | s1_take), self.i.ready.eq(en_in)]
        accept = self.i.valid & en_in
        in_cnt = Signal(range(B), name="in_cnt")
        with m.If(accept):
            m.d.sync += in_cnt.eq(Mux(in_cnt == B - 1, 0, in_cnt + 1))
        meta = data.StructLayout({"first": 1, "last": 1, "beat": range(B), "special": 1})

        def stage(name: str, vals: list, width: int, signed_: bool, prev_valid, prev_meta):
            """One registered pipeline stage (values, valid, metadata), enabled by en_in."""
            regs = [Signal(signed(width) if signed_ else width, name=f"{name}_{k}")
                    for k in range(len(vals))]
            v = Signal(name=f"{name}_valid")
            md = Signal(meta, name=f"{name}_meta")
            with m.If(en_in):
                m.d.sync += [r.eq(x) for r, x in zip(regs, vals)]
                m.d.sync += [v.eq(prev_valid), md.eq(prev_meta)]
            return regs, v, md

        # stage c0: FP16 -> unsigned fixed-point magnitude (units 2^-24) + sign
        mags, sgns, specials = [], [], []
        for k in range(L):
            x = self.i.payload[k]
            sh = Signal(5, name=f"sh{k}")
            m.d.comb += sh.eq(Mux(x.exponent == 0, 0, x.exponent - 1))
            mag = Signal(MAG_BITS, name=f"mag{k}")
            m.d.comb += mag.eq(Cat(x.mantissa, x.exponent != 0) << sh)
            mags.append(mag)
            sgns.append(x.sign)
            specials.append(x.exponent == 0x1F)
        m0 = Signal(meta, name="in_meta")
        m.d.comb += [m0.first.eq(in_cnt == 0), m0.last.eq(in_cnt == B - 1), m0.beat.eq(in_cnt),
                     m0.special.eq(Cat(*specials).any())]
        c0_mag, c0_valid, c0_meta = stage("c0m", mags, MAG_BITS, False, accept, m0)
        c0_sgn, _, _ = stage("c0s", sgns, 1, False, accept, m0)
        # stage c1: signed fixed point
        vals, valid, md = stage("c1", [Mux(s, -mg, mg) for s, mg in zip(c0_sgn, c0_mag)],
                                ACC_BITS, True, c0_valid, c0_meta)
        # BF_STAGES stages of the L-point FWHT across lanes (Sylvester order), the
        # log2(L) butterfly levels spread over them (a stage may only delay)
        levels = L.bit_length() - 1
        h = 1
        for st in range(BF_STAGES):
            n_here = (st + 1) * levels // BF_STAGES - st * levels // BF_STAGES
            for _ in range(n_here):
                nxt = list(vals)
                for a in range(L):
                    if a & h == 0:
                        nxt[a], nxt[a + h] = vals[a] + vals[a + h], vals[a] - vals[a + h]
                vals = nxt
                h *= 2
            vals, valid, md = stage(f"bf{st}", vals, ACC_BITS, True, valid, md)
        # stage ng: each value and its negation, and per accumulator row whether this
        # beat subtracts ((-1)^popcount(beat & row)), so that the accumulator add below
        # is one LUT (operand select) in front of one carry chain
        s1_odd = Signal(B, name="s1_odd")
        with m.If(en_in):
            m.d.sync += s1_odd.eq(Cat(*[(md.beat & r).xor() for r in range(B)]))
        s1p, _, _ = stage("ngp", vals, ACC_BITS, True, valid, md)
        s1n, valid, md = stage("ngn", [-v for v in vals], ACC_BITS, True, valid, md)
        m.d.comb += s1_valid.eq(valid)
        s1_first, s1_last, s1_special = md.first, md.last, md.special

        # ----------------------------------------------------- beat accumulation
        # B x L accumulator cells (one module, emitted and synthesised once); the output
        # buffer row r is read back through the cells' ``ob`` ports
        ob_valid, ob_special = Signal(), Signal()
        acc_special = Signal()
        ob_cnt = Signal(range(B), name="ob_cnt")
        ob_fire = Signal()
        ob_free = Signal()
        m.d.comb += [ob_free.eq(~ob_valid | (ob_fire & (ob_cnt == B - 1))),
                     s1_take.eq(s1_valid & (~s1_last | ob_free))]
        obuf = [[None] * L for _ in range(B)]
        for r in range(B):
            for k in range(L):
                cell = m.submodules[f"acc{r}_{k}"] = HadamardAccumulator()
                m.d.comb += [cell.take.eq(s1_take), cell.first.eq(s1_first),
                             cell.last.eq(s1_last), cell.odd.eq(s1_odd[r]),
                             cell.pos.eq(s1p[k]), cell.neg.eq(s1n[k])]
                obuf[r][k] = cell.ob
        spec_new = s1_special | (acc_special & ~s1_first)
        with m.If(s1_take):
            m.d.sync += acc_special.eq(spec_new)
            with m.If(s1_last):
                m.d.sync += [ob_valid.eq(1), ob_special.eq(spec_new)]
        with m.If(ob_fire):
            m.d.sync += ob_cnt.eq(Mux(ob_cnt == B - 1, 0, ob_cnt + 1))
            with m.If((ob_cnt == B - 1) & ~(s1_take & s1_last)):
                m.d.sync += ob_valid.eq(0)

        # ------------------------------------------------- output pipeline (stall-all)
        # q0: row select, |row|, output sign; q1: leading-one position -> exponent
        # field and right shift; q2: shift, guard and sticky; then round (RNE),
        # saturate and pack into the output register.  Value = mag * 2^-(24 + OUT_SHIFT).
        en_out = Signal()
        m.d.comb += [en_out.eq(~self.o.valid | self.o.ready), ob_fire.eq(ob_valid & en_out)]
        dsel = Signal(L)
        m.d.comb += dsel.eq(self.signs.word_select(ob_cnt, L))
        q0_v, q1_v, q2_v = Signal(), Signal(), Signal()
        q0_sp, q1_sp, q2_sp = Signal(), Signal(), Signal()
        with m.If(en_out):
            m.d.sync += [q0_v.eq(ob_fire), q1_v.eq(q0_v), q2_v.eq(q1_v), self.o.valid.eq(q2_v),
                         q0_sp.eq(ob_special), q1_sp.eq(q0_sp), q2_sp.eq(q1_sp)]
            with m.If(q2_v & q2_sp):
                m.d.sync += self.error.eq(1)
        ovfs = []
        for k in range(L):
            lane = m.submodules[f"out{k}"] = HadamardOutLane()
            row = Signal(signed(ACC_BITS), name=f"row{k}")
            m.d.comb += [row.eq(Cat(*[obuf[r][k] for r in range(B)]).word_select(ob_cnt, ACC_BITS)),
                         lane.en.eq(en_out), lane.row.eq(row), lane.flip.eq(dsel[k]),
                         lane.special.eq(q2_sp), lane.valid.eq(q2_v),
                         self.o.payload[k].as_value().eq(lane.y)]
            ovfs.append(lane.ovf)
        with m.If(Cat(*ovfs).any()):            # the lanes' registered flags, with y
            m.d.sync += self.overflow.eq(1)
        return m
