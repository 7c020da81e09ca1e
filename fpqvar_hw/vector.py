"""Vector unit: FP32 nonlinear functions built from the FP building blocks.

Each function is the exact operation sequence that ``docs/numerics.md``
section 4 and the golden model ``fpqvar_quant.golden.vector`` define (same
operations, same order, same constants and tables): every FP operation is one
:mod:`fpqvar_hw.fpu` front end followed by the shared :class:`~fpqvar_hw.fpu.RoundPack`,
each registered, so results are bit-identical to the golden model.

:class:`Dataflow` schedules such a sequence into a pipeline: every value carries
the stage where it becomes valid, and operands from earlier stages are delayed
by registers, so the whole unit is one stall-able pipeline with initiation
interval 1.

Constants and tables are computed here from their defining formulas (never read
from the golden model); tests compare the RTL with the golden model.
"""
from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fpu import (FP16, FP32, FloatFormat, RoundPack, _add_front, _convert_front, _mul_front,
                  float_layout, fp_max, unpack, unrounded_layout)

__all__ = ["Dataflow", "Func", "Elementwise", "Softmax", "LayerNormModulate", "L2NormTemperature", "fp32_bits"]


def fp32_bits(v: float) -> int:
    """IEEE FP32 encoding of ``v`` rounded to nearest even."""
    return struct.unpack("<I", struct.pack("<f", v))[0]


# Constants (formulas as in numerics.md section 4).
MAGIC = fp32_bits(12582912.0)             # 1.5 * 2^23 = 0x4B400000
LOG2E = fp32_bits(1.0 / math.log(2.0))
LN2_HI = 0x3F317200
LN2_LO = 0x35BFBE8E
EXP_LO = fp32_bits(-104.0)
EXP_HI = fp32_bits(89.0)
EXP_POLY = [fp32_bits(1.0 / math.factorial(k)) for k in range(7, -1, -1)]
GELU_K = fp32_bits(0.044715)
GELU_2C = fp32_bits(2.0 * math.sqrt(2.0 / math.pi))
ONE, HALF, THREE_HALVES = fp32_bits(1.0), fp32_bits(0.5), fp32_bits(1.5)
QNAN, INF = FP32.qnan, FP32.inf
RECIP_BITS, RSQRT_BITS = 7, 6
RECIP_TABLE = [fp32_bits(1.0 / (1.0 + (k + 0.5) / 2 ** RECIP_BITS)) for k in range(2 ** RECIP_BITS)]
RSQRT_TABLE = [fp32_bits(1.0 / math.sqrt((1.0 + (j + 0.5) / 2 ** RSQRT_BITS) * 2 ** odd))
               for odd in (0, 1) for j in range(2 ** RSQRT_BITS)]


@dataclass(frozen=True)
class Val:
    """A value in the pipeline: its signal and the stage where it is valid."""

    sig: Value
    stage: int


class Dataflow:
    """Schedules FP32 operations into registered stages sharing one enable ``en``.

    ``value(sig, stage)`` wraps an input; each FP operation takes two stages
    (front end, RoundPack), compare/select and table lookups one; ``at(v, s)``
    delays ``v`` to stage ``s``.  Constants (``const``) are valid at every stage.
    """

    def __init__(self, m: Module, en: Value, prefix: str = "", *, dry: bool = False):
        self.m, self.en, self.prefix, self.dry = m, en, prefix, dry
        self._n = 0
        self._delays: dict[tuple[int, int], Value] = {}

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{self.prefix}{base}{self._n}"

    def reg(self, v: Value, name: str = "r") -> Signal:
        r = Signal(len(Value.cast(v)), name=self._name(name))
        with self.m.If(self.en):
            self.m.d.sync += r.eq(v)
        return r

    def const(self, bits: int, width: int = 32) -> Val:
        """A constant; stage -1 means valid at every stage (also used for signals held
        stable while the pipeline runs, such as a row's maximum)."""
        return Val(Const(bits, width), -1)

    def at(self, v: Val, stage: int) -> Value:
        if v.stage < 0 or v.stage == stage:
            return v.sig
        if v.stage > stage:
            raise ValueError(f"value of stage {v.stage} needed at earlier stage {stage}")
        key = (id(v.sig), stage)
        if key not in self._delays:
            self._delays[key] = self.reg(self.at(v, stage - 1), "d")
        return self._delays[key]

    @staticmethod
    def _stage(*vals: Val) -> int:
        return max(0, *(v.stage for v in vals))

    def _fp(self, front, *vals: Val) -> Val:
        s = self._stage(*vals)
        u = front(self.m, *(self.at(v, s) for v in vals))
        return self._round(u, FP32, s)

    def _round(self, u, fmt: FloatFormat, s: int) -> Val:
        """Register the unrounded ``u`` (stage s+1), RoundPack, register (stage s+2)."""
        ur = self.reg(u.as_value(), "u")
        if self.dry:  # latency computation only: no design is built
            return Val(Signal(fmt.width), s + 2)
        rp = RoundPack(fmt, sig_bits=len(u.sig), exp_bits=len(u.exp))
        self.m.submodules[self._name("rp")] = rp
        self.m.d.comb += rp.i.as_value().eq(ur)
        return Val(self.reg(rp.o.as_value(), "f"), s + 2)

    def mul(self, a: Val, b: Val) -> Val:
        return self._fp(lambda m, x, y: _mul_front(m, x, y, FP32), a, b)

    def add(self, a: Val, b: Val) -> Val:
        return self._fp(lambda m, x, y: _add_front(m, x, y, FP32), a, b)

    def neg(self, a: Val) -> Val:
        if isinstance(a.sig, Const):
            return Val(Const(a.sig.value ^ (1 << 31), 32), a.stage)
        return Val(a.sig ^ (1 << 31), a.stage)

    def sub(self, a: Val, b: Val) -> Val:
        return self.add(a, self.neg(b))

    def max(self, a: Val, b: Val) -> Val:
        s = self._stage(a, b)
        return Val(self.reg(fp_max(self.m, self.at(a, s), self.at(b, s), FP32), "mx"), s + 1)

    def min(self, a: Val, b: Val) -> Val:
        """min(a, b) = -max(-a, -b) (NaN in, NaN out)."""
        return self.neg(self.max(self.neg(a), self.neg(b)))

    def comb(self, fn, *vals: Val, width: int, register: bool = True) -> Val:
        """Integer logic ``fn(*signals)`` on values; registered (one stage) by default."""
        s = self._stage(*vals)
        out = Signal(width, name=self._name("c"))
        self.m.d.comb += out.eq(fn(*(self.at(v, s) for v in vals)))
        return Val(self.reg(out, "cr"), s + 1) if register else Val(out, s)

    def ldexp(self, p: Val, n: Val, n_bits: int = 12) -> Val:
        """``p * 2^n`` rounded once (``n`` a signed integer value of ``n_bits``)."""
        def front(m, x, k):
            ux = unpack(m, x, FP32)
            u = Signal(unrounded_layout(24, n_bits + 2))
            m.d.comb += [u.sig.eq(ux.sig), u.exp.eq(ux.exp + k.as_signed()),
                         u.sticky.eq(0), u.sign.eq(ux.sign), u.nan.eq(ux.is_nan),
                         u.inf.eq(ux.is_inf)]
            return u
        return self._fp(front, p, n)

    def table(self, entries: list[int], idx: Val) -> Val:
        rom = Array(Const(e, 32) for e in entries)
        return self.comb(lambda i: rom[i], idx, width=32)

    # ------------------------------------------------------------ functions
    def exp(self, x: Val) -> Val:
        c = self.const
        x = self.min(self.max(x, c(EXP_LO)), c(EXP_HI))
        t = self.mul(x, c(LOG2E))
        s = self.add(t, c(MAGIC))
        n = self.comb(lambda b: (b - MAGIC)[:12], s, width=12, register=False)
        r = self.sub(s, c(MAGIC))
        f = self.sub(self.sub(x, self.mul(r, c(LN2_HI))), self.mul(r, c(LN2_LO)))
        p = c(EXP_POLY[0])
        for coef in EXP_POLY[1:]:
            p = self.add(self.mul(p, f), c(coef))
        return self.ldexp(p, n)

    def reciprocal(self, d: Val) -> Val:
        c = self.const
        man = self.comb(lambda b: b[:23], d, width=23, register=False)
        m = self.comb(lambda b: Cat(b, Const(127, 8)), man, width=32, register=False)
        y = self.table(RECIP_TABLE, self.comb(lambda b: b[23 - RECIP_BITS:], man,
                                              width=RECIP_BITS, register=False))
        for _ in range(2):
            y = self.add(y, self.mul(y, self.sub(c(ONE), self.mul(m, y))))
        n = self.comb(lambda b: 127 - b[23:31], d, width=12, register=False)
        res = self.ldexp(y, n)
        return self._special(d, res, zero_gives=INF, inf_gives=0, neg_is_nan=False)

    def rsqrt(self, v: Val) -> Val:
        c = self.const
        odd = self.comb(lambda b: b[23] ^ 1, v, width=1, register=False)   # (E - 127) & 1
        m = self.comb(lambda b, o: Cat(b[:23], Const(127, 8) + o), v, odd, width=32, register=False)
        y = self.table(RSQRT_TABLE, self.comb(lambda b, o: Cat(b[23 - RSQRT_BITS:23], o), v, odd,
                                              width=RSQRT_BITS + 1, register=False))
        h = self.mul(m, c(HALF))
        for _ in range(2):
            y = self.mul(y, self.sub(c(THREE_HALVES), self.mul(self.mul(y, y), h)))
        # -((e - odd) >> 1) with e = E - 127
        n = self.comb(lambda b, o: -((b[23:31] - 127 - o) >> 1), v, odd, width=12, register=False)
        res = self.ldexp(y, n)
        return self._special(v, res, zero_gives=INF, inf_gives=0, neg_is_nan=True)

    def _special(self, x: Val, res: Val, *, zero_gives: int, inf_gives: int, neg_is_nan: bool) -> Val:
        """Override ``res`` for zero/subnormal, Inf and NaN inputs; apply the sign rule."""
        def fn(b, r):
            E, man = b[23:31], b[:23]
            sign = Const(0) if neg_is_nan else b[31]   # reciprocal keeps the input's sign
            out = Signal(32, name=self._name("sp"))
            self.m.d.comb += out.eq(Cat(r[:31], r[31] | sign))
            with self.m.If(E == 0):
                self.m.d.comb += out.eq(Cat(Const(zero_gives, 31), sign))
            with self.m.Elif((E == 255) & (man == 0)):
                self.m.d.comb += out.eq(Cat(Const(inf_gives, 31), sign))
            with self.m.Elif(E == 255):
                self.m.d.comb += out.eq(QNAN)
            if neg_is_nan:
                with self.m.If(b[31] & (E != 0)):
                    self.m.d.comb += out.eq(QNAN)
            return out
        return self.comb(fn, x, res, width=32)

    def gelu(self, x: Val) -> Val:
        c = self.const
        x3 = self.mul(self.mul(x, x), x)
        inner = self.add(self.mul(x3, c(GELU_K)), x)
        u2 = self.mul(inner, c(GELU_2C))
        den = self.add(self.exp(self.neg(u2)), c(ONE))
        return self.mul(x, self.reciprocal(den))


class Func(enum.Enum):
    """Element-wise functions of :class:`Elementwise` (definitions: numerics.md section 4)."""

    EXP = "exp"
    RECIPROCAL = "reciprocal"
    RSQRT = "rsqrt"
    GELU = "gelu"


class Elementwise(wiring.Component):
    """Pipelined element-wise FP32 function, ``lanes`` elements per beat.

    ``i``: stream of ``ArrayLayout(float_layout(src), lanes)``; ``o``: stream of
    ``ArrayLayout(float_layout(dst), lanes)``.  ``src``/``dst`` may be FP16 (exact
    conversion in, one RNE rounding out) or FP32; the function is computed in FP32
    exactly as the golden model defines it.  NaN results are the canonical NaN.

    Latency ``self.latency`` cycles (depends on ``func`` and the formats),
    initiation interval 1; the pipeline holds while ``o.valid & ~o.ready``
    (``i.ready = ~o.valid | o.ready``).
    """

    def __init__(self, func: Func, *, lanes: int = 1, src: FloatFormat = FP32,
                 dst: FloatFormat = FP32):
        self._MustUse__silence = True
        if not isinstance(func, Func):
            raise TypeError(f"func must be a Func (EXP, RECIPROCAL, RSQRT, GELU), got {func!r}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        for name, f in (("src", src), ("dst", dst)):
            if f not in (FP16, FP32):
                raise ValueError(f"{name} must be FP16 or FP32, got {f!r}")
        self._MustUse__silence = False
        self.func, self.lanes, self.src, self.dst = func, lanes, src, dst
        m = Module()
        m._MustUse__silence = True   # scratch module: only the stage count is used
        self.latency = self._build(m, Signal(), [Signal(src.width)], dry=True)[0]
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(float_layout(src), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(float_layout(dst), lanes))),
        })

    def _build(self, m: Module, en: Value, inputs: list[Value], dry: bool = False
               ) -> tuple[int, list[Value]]:
        outs, latency = [], 0
        for lane, x in enumerate(inputs):
            df = Dataflow(m, en, prefix=f"l{lane}_", dry=dry)
            v = Val(x, 0)
            if self.src is FP16:
                v = df._round(_convert_front(m, x, FP16), FP32, 0)
            y = getattr(df, self.func.value)(v)
            if self.dst is FP16:
                y = self._to_fp16(df, y)
            else:
                y = df.comb(lambda b: Mux((b[23:31] == 255) & (b[:23] != 0), QNAN, b), y,
                            width=32, register=False)
            outs.append(df.at(y, y.stage))
            latency = y.stage
        return latency, outs

    @staticmethod
    def _to_fp16(df: Dataflow, y: Val) -> Val:
        return df._round(_convert_front(df.m, y.sig, FP32), FP16, y.stage)

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        latency, outs = self._build(m, en, [self.i.payload[k].as_value() for k in range(self.lanes)])
        valid = Signal(latency, name="valid_sr")
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += self.o.valid.eq(valid[-1])
        for k, o in enumerate(outs):
            m.d.comb += self.o.payload[k].as_value().eq(o)
        return m


class Softmax(wiring.Component):
    """Row softmax over FP32 elements, bit-exact to ``golden.vector.softmax(x, P)``.

    ``i``: stream of FP32 elements, rows of ``length`` back to back; ``o``: stream of
    the FP32 results in the same order.  One element per beat.

    Per row: (1) load the row into a buffer while keeping the running max
    (``max`` is exact, so any order gives the golden ``max``); (2) stream the
    buffer through ``exp(x - m)`` (one :class:`Dataflow` pipeline, one element per
    cycle), write ``e`` back and accumulate it into ``P`` interleaved partial sums
    with one FP32 adder (partial ``k mod P``; ``P >= 4`` exceeds the adder latency 2,
    so each partial's previous sum is back before its next element); (3) a pipelined
    adder tree ``((p0+p1)+(p2+p3))+...`` and ``reciprocal`` give ``r``; (4) stream
    out ``e * r`` with backpressure.  Cycles per row: about
    ``3*length + latency(exp) + latency(tree + reciprocal)`` plus stalls; the
    next row is accepted after the last output of the previous one.
    The buffer uses an asynchronous read port (distributed RAM on the FPGA).
    """

    def __init__(self, *, length: int, P: int = 8):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if P < 4 or P & (P - 1) or length % P:
            raise ValueError(f"P must be a power of two >= 4 dividing length {length}, got {P}")
        self.length, self.P, self.lanes = length, P, 1
        super().__init__({
            "i": In(stream.Signature(float_layout(FP32))),
            "o": Out(stream.Signature(float_layout(FP32))),
        })

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        from .fpu import FPOp, FPUnit

        m = Module()
        n, P = self.length, self.P
        m.submodules.buf = buf = Memory(shape=32, depth=n, init=[])
        rd = buf.read_port(domain="comb")
        wr = buf.write_port()
        k = Signal(range(n + 1))          # element counter of the current phase
        mx = Signal(32, init=0xFF800000)  # running max, starts at -Inf
        acc = [Signal(32, name=f"acc{j}") for j in range(P)]
        r = Signal(32)

        # (2) exp pipeline, always enabled; valid and index travel alongside.
        df = Dataflow(m, Const(1), prefix="sm_")
        x_in = Signal(32)
        e_val = df.exp(df.sub(Val(x_in, 0), Val(mx, -1)))
        L = e_val.stage
        go = Signal()
        tags = [Cat(go, k[:len(k)])]
        for _ in range(L):
            t = Signal(len(tags[0]))
            m.d.sync += t.eq(tags[-1])
            tags.append(t)
        e_valid, e_idx = tags[-1][0], tags[-1][1:]
        e_sig = df.at(e_val, L)

        # accumulation: one adder, partial sums in registers
        m.submodules.adder = adder = FPUnit(FPOp.ADD, FP32)
        part = Signal(range(P))
        m.d.comb += [part.eq(e_idx[:len(part)]), adder.o.ready.eq(1),
                     adder.i.valid.eq(e_valid),
                     adder.i.payload[0].a.as_value().eq(Array(acc)[part]),
                     adder.i.payload[0].b.as_value().eq(e_sig)]
        dst = [Signal(range(P), name=f"part_d{d}") for d in range(2)]
        m.d.sync += [dst[0].eq(part), dst[1].eq(dst[0])]
        with m.If(adder.o.valid):
            m.d.sync += Array(acc)[dst[1]].eq(adder.o.payload[0].as_value())

        # (3) tree + reciprocal on the (stable) partials
        df2 = Dataflow(m, Const(1), prefix="tr_")
        level = [Val(a, 0) for a in acc]
        while len(level) > 1:
            level = [df2.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
        recip = df2.reciprocal(level[0])
        L2 = recip.stage

        # (4) output multiply with backpressure
        m.submodules.mul = mul = FPUnit(FPOp.MUL, FP32)
        wiring.connect(m, wiring.flipped(self.o), mul.o)

        wait = Signal(range(max(L, L2) + 4))
        m.d.comb += [rd.addr.eq(k[:len(rd.addr)]), x_in.eq(rd.data)]
        new_max = fp_max(m, mx, self.i.payload.as_value(), FP32)
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), wr.addr.eq(k), wr.data.eq(self.i.payload.as_value()),
                             wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += [mx.eq(new_max), k.eq(k + 1)]
                    with m.If(k == n - 1):
                        m.d.sync += k.eq(0)
                        m.next = "EXP"
            with m.State("EXP"):
                m.d.comb += go.eq(1)
                m.d.sync += k.eq(k + 1)
                with m.If(k == n - 1):
                    m.d.sync += [k.eq(0), wait.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):         # exp results still writing back / accumulating
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == L + 3):
                    m.d.sync += wait.eq(0)
                    m.next = "REDUCE"
            with m.State("REDUCE"):        # tree + reciprocal pipeline settles
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == L2):
                    m.d.sync += r.eq(df2.at(recip, L2))
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [mul.i.valid.eq(1), mul.i.payload[0].a.as_value().eq(rd.data),
                             mul.i.payload[0].b.as_value().eq(r)]
                with m.If(mul.i.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == n - 1):
                        m.d.sync += [k.eq(0), mx.eq(0xFF800000)] + [a.eq(0) for a in acc]
                        m.next = "LOAD"
        # write back e (during EXP/DRAIN; LOAD writes come from the input)
        with m.If(e_valid):
            m.d.comb += [wr.addr.eq(e_idx), wr.data.eq(e_sig), wr.en.eq(1)]
        return m


class LayerNormModulate(wiring.Component):
    """LayerNorm without affine (eps 1e-6) and adaLN modulate ``y*(1 + scale) + shift``,
    bit-exact to ``golden.vector.layernorm_modulate(x, scale, shift, P)``.

    ``i``: stream of ``{x, scale, shift}`` (FP32 each), one channel per beat, rows of
    ``length`` channels back to back; ``o``: stream of FP32 results in order.

    Per row: (1) load ``x``/``scale``/``shift`` into buffers while one adder
    accumulates ``x`` into ``P`` interleaved partial sums; (2) tree,
    ``mu = sum * fp32(1/C)``; (3) stream ``d = x - mu`` (written back) and
    accumulate ``d*d``; (4) tree, ``* fp32(1/C)``, ``+ 1e-6``, ``rsqrt`` -> ``r``;
    (5) stream ``(d*r)*(1 + scale) + shift`` out through a stall-able pipeline.
    Cycles per row about ``3*length`` plus pipeline latencies plus stalls.
    """

    def __init__(self, *, length: int, P: int = 8):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if P < 4 or P & (P - 1) or length % P:
            raise ValueError(f"P must be a power of two >= 4 dividing length {length}, got {P}")
        self.length, self.P, self.lanes = length, P, 1
        fl = float_layout(FP32)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": fl, "scale": fl, "shift": fl}))),
            "o": Out(stream.Signature(fl)),
        })

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        from .fpu import FPOp, FPUnit

        m = Module()
        n, P = self.length, self.P
        mems = {}
        for name in ("x", "scale", "shift"):
            m.submodules[f"buf_{name}"] = mem = Memory(shape=32, depth=n, init=[])
            mems[name] = (mem.read_port(domain="comb"), mem.write_port())
        k = Signal(range(n + 1))
        acc = [Signal(32, name=f"acc{j}") for j in range(P)]
        mu, r = Signal(32), Signal(32)
        inv_c = fp32_bits(1.0 / n)
        for rd, _ in mems.values():
            m.d.comb += rd.addr.eq(k[:len(rd.addr)])

        # accumulation adder (load: x; variance pass: d*d), issue tags delayed by its latency
        m.submodules.adder = adder = FPUnit(FPOp.ADD, FP32)
        issue, issue_idx, issue_val = Signal(), Signal(range(n)), Signal(32)
        m.d.comb += [adder.o.ready.eq(1), adder.i.valid.eq(issue),
                     adder.i.payload[0].a.as_value().eq(Array(acc)[issue_idx[:(P - 1).bit_length()]]),
                     adder.i.payload[0].b.as_value().eq(issue_val)]
        dst = [Signal(range(P), name=f"part_d{d}") for d in range(2)]
        m.d.sync += [dst[0].eq(issue_idx[:(P - 1).bit_length()]), dst[1].eq(dst[0])]
        clear = Signal()
        with m.If(clear):
            m.d.sync += [a.eq(0) for a in acc]
        with m.Elif(adder.o.valid):
            m.d.sync += Array(acc)[dst[1]].eq(adder.o.payload[0].as_value())

        # variance pass: d = x - mu, dd = d*d (always-enabled pipeline with tags)
        df = Dataflow(m, Const(1), prefix="var_")
        d_val = df.sub(Val(mems["x"][0].data, 0), Val(mu, -1))
        dd_val = df.mul(d_val, d_val)
        Lv = dd_val.stage
        go = Signal()
        tags = [Cat(go, k[:len(issue_idx)])]
        for _ in range(Lv):
            t = Signal(len(tags[0]))
            m.d.sync += t.eq(tags[-1])
            tags.append(t)
        v_valid, v_idx = tags[-1][0], tags[-1][1:]
        d_at = df.at(d_val, Lv)

        # trees: mean and 1/sqrt(var + eps) on the stable partials
        df2 = Dataflow(m, Const(1), prefix="tr_")
        level = [Val(a, 0) for a in acc]
        while len(level) > 1:
            level = [df2.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
        mean = df2.mul(level[0], df2.const(inv_c))
        rs = df2.rsqrt(df2.add(df2.mul(level[0], df2.const(inv_c)), df2.const(fp32_bits(1e-6))))
        Lm, Lr = mean.stage, rs.stage

        # output pipeline (stall-able)
        en = ~self.o.valid | self.o.ready
        out_go = Signal()
        df3 = Dataflow(m, en, prefix="out_")
        y = df3.mul(Val(mems["x"][0].data, 0), Val(r, -1))
        one_plus = df3.add(Val(mems["scale"][0].data, 0), df3.const(ONE))
        res = df3.add(df3.mul(y, one_plus), Val(mems["shift"][0].data, 0))
        Lo = res.stage
        ovalid = Signal(Lo)
        with m.If(en):
            m.d.sync += ovalid.eq(Cat(out_go, ovalid[:-1]))
        m.d.comb += [self.o.valid.eq(ovalid[-1]), self.o.payload.as_value().eq(df3.at(res, Lo))]

        wait = Signal(range(max(Lv, Lm, Lr) + 4))
        wx = mems["x"][1]
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), issue.eq(self.i.valid), issue_idx.eq(k),
                             issue_val.eq(self.i.payload.x.as_value())]
                for name, (_, wp) in mems.items():
                    m.d.comb += [wp.addr.eq(k), wp.data.eq(getattr(self.i.payload, name).as_value()),
                                 wp.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == n - 1):
                        m.d.sync += [k.eq(0), wait.eq(0)]
                        m.next = "MEAN"
            with m.State("MEAN"):          # adder drains (3), then the tree settles
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == Lm + 3):
                    m.d.sync += [mu.eq(df2.at(mean, Lm)), wait.eq(0)]
                    m.d.comb += clear.eq(1)
                    m.next = "VAR"
            with m.State("VAR"):
                m.d.comb += go.eq(1)
                m.d.sync += k.eq(k + 1)
                with m.If(k == n - 1):
                    m.d.sync += [k.eq(0), wait.eq(0)]
                    m.next = "RSQRT"
            with m.State("RSQRT"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == Lv + 3 + Lr):
                    m.d.sync += r.eq(df2.at(rs, Lr))
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += out_go.eq(en)
                with m.If(en):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == n - 1):
                        m.d.sync += k.eq(0)
                        m.d.comb += clear.eq(1)
                        m.next = "LOAD"
        with m.If(v_valid):   # variance pass: issue d*d, write d back
            m.d.comb += [issue.eq(1), issue_idx.eq(v_idx), issue_val.eq(df.at(dd_val, Lv)),
                         wx.addr.eq(v_idx), wx.data.eq(d_at), wx.en.eq(1)]
        return m


class L2NormTemperature(wiring.Component):
    """Per-head L2 normalisation, optionally times ``exp(min(t, ln 100))``; bit-exact to
    ``golden.vector.l2norm_temperature(q, t if temperature else None, P)``.

    ``i``: stream of ``{x, t}`` (FP32) with ``temperature=True``, else ``{x}``; heads of
    ``head_dim`` elements back to back (``t`` is taken from a head's first element);
    ``o``: FP32 results in order.  Per head: load while ``x*x`` is accumulated into
    ``P`` partial sums; tree, ``max(., 1e-24)``, ``rsqrt`` (times the temperature) ->
    ``g``; stream out ``x*g`` with backpressure.
    """

    def __init__(self, *, head_dim: int = 64, P: int = 8, temperature: bool = True):
        if P < 4 or P & (P - 1) or head_dim % P:
            raise ValueError(f"P must be a power of two >= 4 dividing head_dim {head_dim}, got {P}")
        self.length, self.P, self.temperature, self.lanes = head_dim, P, temperature, 1
        fl = float_layout(FP32)
        fields = {"x": fl, "t": fl} if temperature else {"x": fl}
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(fl))})

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        from .fpu import FPOp, FPUnit

        m = Module()
        n, P = self.length, self.P
        m.submodules.buf = buf = Memory(shape=32, depth=n, init=[])
        rd, wr = buf.read_port(domain="comb"), buf.write_port()
        k = Signal(range(n + 1))
        acc = [Signal(32, name=f"acc{j}") for j in range(P)]
        t, g = Signal(32), Signal(32)
        m.d.comb += rd.addr.eq(k[:len(rd.addr)])
        x_in = self.i.payload.x.as_value()

        # x*x pipeline on accepted inputs, then one accumulation adder
        df = Dataflow(m, Const(1), prefix="sq_")
        sq = df.mul(Val(x_in, 0), Val(x_in, 0))
        Ls = sq.stage
        take = Signal()
        tags = [Cat(take, k[:(n - 1).bit_length()])]
        for _ in range(Ls):
            tg = Signal(len(tags[0]))
            m.d.sync += tg.eq(tags[-1])
            tags.append(tg)
        s_valid, s_idx = tags[-1][0], tags[-1][1:]
        pbits = (P - 1).bit_length()
        m.submodules.adder = adder = FPUnit(FPOp.ADD, FP32)
        m.d.comb += [adder.o.ready.eq(1), adder.i.valid.eq(s_valid),
                     adder.i.payload[0].a.as_value().eq(Array(acc)[s_idx[:pbits]]),
                     adder.i.payload[0].b.as_value().eq(df.at(sq, Ls))]
        dst = [Signal(pbits, name=f"part_d{d}") for d in range(2)]
        m.d.sync += [dst[0].eq(s_idx[:pbits]), dst[1].eq(dst[0])]
        clear = Signal()
        with m.If(clear):
            m.d.sync += [a.eq(0) for a in acc]
        with m.Elif(adder.o.valid):
            m.d.sync += Array(acc)[dst[1]].eq(adder.o.payload[0].as_value())

        df2 = Dataflow(m, Const(1), prefix="tr_")
        level = [Val(a, 0) for a in acc]
        while len(level) > 1:
            level = [df2.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
        gain = df2.rsqrt(df2.max(level[0], df2.const(fp32_bits(1e-24))))
        if self.temperature:
            gain = df2.mul(gain, df2.exp(df2.min(Val(t, 0), df2.const(fp32_bits(math.log(100.0))))))
        Lg = gain.stage

        m.submodules.mul = mul = FPUnit(FPOp.MUL, FP32)
        wiring.connect(m, wiring.flipped(self.o), mul.o)
        wait = Signal(range(Ls + Lg + 8))
        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.i.ready.eq(1), take.eq(self.i.valid), wr.addr.eq(k),
                             wr.data.eq(x_in), wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    if self.temperature:
                        with m.If(k == 0):
                            m.d.sync += t.eq(self.i.payload.t.as_value())
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == n - 1):
                        m.d.sync += [k.eq(0), wait.eq(0)]
                        m.next = "REDUCE"
            with m.State("REDUCE"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == Ls + 3 + Lg):
                    m.d.sync += g.eq(df2.at(gain, Lg))
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += [mul.i.valid.eq(1), mul.i.payload[0].a.as_value().eq(rd.data),
                             mul.i.payload[0].b.as_value().eq(g)]
                with m.If(mul.i.ready):
                    m.d.sync += k.eq(k + 1)
                    with m.If(k == n - 1):
                        m.d.sync += k.eq(0)
                        m.d.comb += clear.eq(1)
                        m.next = "LOAD"
        return m
