"""Vector unit: FP32 nonlinear functions built from the FP building blocks.

Each function is the exact operation sequence that ``docs/numerics.md``
section 4 and the golden model ``fpqvar_quant.golden.vector`` define (same
operations, same order, same constants and tables): every FP operation is one
:mod:`fpqvar_hw.units.fpu` front end followed by the shared rounding (the pipelined
:class:`~fpqvar_hw.units.fpu.AddPipe` / :class:`~fpqvar_hw.units.fpu.MulPipe` /
:class:`~fpqvar_hw.units.fpu.RoundPackPipe`, every stage a few logic levels, in the
element-wise lanes, the row units and their accumulating adder), so results are
bit-identical to the golden model.

:class:`Dataflow` schedules such a sequence into a pipeline: every value carries
the stage where it becomes valid, and operands from earlier stages are delayed
by registers, so the whole unit is one stall-able pipeline with initiation
interval 1.

Shared pipes: built with ``shared_functions=True``, a unit (:class:`Softmax`,
:class:`LayerNormModulate`, :class:`L2NormTemperature`, :class:`FDot`, a one-lane
:class:`Elementwise`) computes its exp, reciprocal and rsqrt and its partial sums' tree
not in pipelines of its own but through ports (``fn_exp``, ``fn_reciprocal``,
``fn_rsqrt``: :data:`FUNCTION_PORT`; ``fn_tree``: :func:`tree_port`) to a
:class:`FunctionPipe` / :class:`TreePipe` outside it, the same pipeline with the same
latency and enable, so the results and the cycles are those of the inline build.  The
vector engine runs one sub-op at a time and builds one pipe of each for all its units
(:func:`connect_function_pipes`).  Built without shared functions, a unit (each lane of
an :class:`Elementwise`) holds the same pipes as modules of its own: the inline
pipelines, which the synthesis flow then maps once for every unit that uses them.

Constants and tables are computed here from their defining formulas (never read
from the golden model); tests compare the RTL with the golden model.
"""
from __future__ import annotations

import enum
import functools
import math
import struct
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..emit import hierarchical
from ..checked import Checked
from .fpu import (ADD_STAGES, FP16, FP32, MUL_STAGES, ROUND_STAGES, AddPipe, FloatFormat, FPOp, MulPipe,
                  RoundPackPipe, convert_front, float_layout, fp_max, unpack, unrounded_layout)

__all__ = ["Dataflow", "Func", "Elementwise", "FunctionPipe", "TreePipe", "FUNCTION_PORT",
           "SHAREABLE", "TREE", "tree_port", "function_latency", "tree_latency",
           "connect_function_pipes", "PartialSums", "RowSlots", "RowSums", "Softmax",
           "LayerNormModulate", "L2NormTemperature", "FDot", "Residual", "fp32_bits",
           "skid_buffer", "select_tree"]


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
ONE, THREE_HALVES = fp32_bits(1.0), fp32_bits(1.5)
QNAN, INF = FP32.qnan, FP32.inf
SIGN = 1 << 31                  # an FP32's sign bit
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

    ``value(sig, stage)`` wraps an input; ``at(v, s)`` delays ``v`` to stage ``s``;
    constants (``const``) are valid at every stage.  Compare/select and table lookups
    take one stage.  An FP operation takes the stages of
    :class:`~fpqvar_hw.units.fpu.AddPipe` / :class:`~fpqvar_hw.units.fpu.MulPipe` (a
    rounding of another front end: a register, then
    :class:`~fpqvar_hw.units.fpu.RoundPackPipe`), every stage a few logic levels.
    ``dry=True`` (no Module needed) only counts
    stages: every result is a placeholder ``Const`` at the stage the real operation would
    deliver it, and nothing is built.  ``data_only=True``: every value is data whose
    validity the caller tracks in registers of its own (with a reset), so the delay lines
    of :meth:`at` have no reset and map to shift registers (SRL16E/SRLC32E: a 278-stage
    GELU lane 531 flip-flops and 859 SRLs instead of 18,621 flip-flops); a caller that
    delays a valid or control bit through :meth:`at` must leave it False.  ``ports``
    (function name -> the unit's :data:`FUNCTION_PORT`, one dict shared by the unit's
    Dataflows): :meth:`exp` / :meth:`reciprocal` / :meth:`rsqrt` of a name in it drive
    that port instead of building the pipeline (same latency); each port is driven once.
    """

    def __init__(self, m: Module | None, en: Value | None, prefix: str = "", *,
                 dry: bool = False, data_only: bool = False, ports: dict | None = None):
        if m is None and not dry:
            raise ValueError("Dataflow needs a Module unless dry=True")
        self.m, self.en, self.prefix, self.dry = m, en, prefix, dry
        self.data_only = data_only
        self.ports = {} if ports is None else ports
        self._n = 0
        self._delays: dict[tuple[int, int], Value] = {}

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{self.prefix}{base}{self._n}"

    def reg(self, v: Value, name: str = "r", *, reset_less: bool = False) -> Signal:
        r = Signal(len(Value.cast(v)), name=self._name(name), reset_less=reset_less)
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
        if self.dry:                        # stage bookkeeping only
            return v.sig
        key = (id(v.sig), stage)
        if key not in self._delays:
            self._delays[key] = self.reg(self.at(v, stage - 1), "d", reset_less=self.data_only)
        return self._delays[key]

    @staticmethod
    def _stage(*vals: Val) -> int:
        return max(0, *(v.stage for v in vals))

    def _fp(self, front, *vals: Val, fmt: FloatFormat = FP32) -> Val:
        """The front end ``front(m, *signals)`` (an unrounded record) of values, then
        :meth:`round` to ``fmt``."""
        s = self._stage(*vals)
        if self.dry:
            return self.round(None, fmt, s)
        u = front(self.m, *(self.at(v, s) for v in vals))
        return self.round(u, fmt, s)

    def round(self, u, fmt: FloatFormat, s: int) -> Val:
        """Register the unrounded ``u`` (stage s+1), then
        :class:`~fpqvar_hw.units.fpu.RoundPackPipe` (stage s+1+ROUND_STAGES)."""
        out = s + 1 + ROUND_STAGES
        if self.dry:
            return Val(Const(0, fmt.width), out)
        ur = self.reg(u.as_value(), "u")
        rp = RoundPackPipe(fmt, sig_bits=len(u.sig), exp_bits=len(u.exp))
        self.m.d.comb += rp.en.eq(self.en)
        self.m.submodules[self._name("rp")] = rp
        self.m.d.comb += rp.i.as_value().eq(ur)
        return Val(rp.o.as_value(), out)

    def _pipe(self, cls, stages: int, a: Val, b: Val) -> Val:
        s = self._stage(a, b)
        if self.dry:
            return Val(Const(0, 32), s + stages + ROUND_STAGES)
        pipe = cls(FP32)
        self.m.submodules[self._name(cls.__name__.lower())] = pipe
        self.m.d.comb += [pipe.en.eq(self.en), pipe.a.as_value().eq(self.at(a, s)),
                          pipe.b.as_value().eq(self.at(b, s))]
        return Val(pipe.o.as_value(), s + pipe.latency)

    def mul(self, a: Val, b: Val) -> Val:
        return self._pipe(MulPipe, MUL_STAGES, a, b)

    def add(self, a: Val, b: Val) -> Val:
        return self._pipe(AddPipe, ADD_STAGES, a, b)

    def convert(self, v: Val, src: FloatFormat, dst: FloatFormat) -> Val:
        """``v`` (format ``src``) in format ``dst``: the convert front end, then
        :meth:`round` (exact for FP16 -> FP32, one RNE rounding for FP32 -> FP16)."""
        return self._fp(lambda m, x: convert_front(m, x, src), v, fmt=dst)

    def neg(self, a: Val) -> Val:
        if isinstance(a.sig, Const):
            return Val(Const(a.sig.value ^ SIGN, 32), a.stage)
        return Val(a.sig ^ SIGN, a.stage)

    def sub(self, a: Val, b: Val) -> Val:
        return self.add(a, self.neg(b))

    def max(self, a: Val, b: Val) -> Val:
        s = self._stage(a, b)
        if self.dry:
            return Val(Const(0, 32), s + 1)
        return Val(self.reg(fp_max(self.m, self.at(a, s), self.at(b, s), FP32), "mx"), s + 1)

    def min(self, a: Val, b: Val) -> Val:
        """min(a, b) = -max(-a, -b) (NaN in, NaN out), the outer sign flip in front of the
        register (its consumer takes the register straight, no flip after it)."""
        s = self._stage(a, b)
        if self.dry:
            return Val(Const(0, 32), s + 1)
        out = fp_max(self.m, self.at(a, s) ^ SIGN, self.at(b, s) ^ SIGN, FP32) ^ SIGN
        return Val(self.reg(out, "mn"), s + 1)

    def comb(self, fn, *vals: Val, width: int, register: bool = True) -> Val:
        """Integer logic ``fn(*signals)`` on values; registered (one stage) by default."""
        s = self._stage(*vals)
        if self.dry:
            return Val(Const(0, width), s + 1 if register else s)
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

    def _external(self, name: str, vals: list[Val]) -> Val | None:
        """``name(*vals)`` through the unit's port to a shared pipe (:class:`FunctionPipe`,
        :class:`TreePipe`; ``None``: no port, build it here): the arguments (concatenated)
        and this pipeline's enable go out at the arguments' stage, the result comes back
        the inline pipeline's latency later (:func:`function_latency`,
        :func:`tree_latency`)."""
        if name not in self.ports:
            return None
        port = self.ports[name]
        if port is None:
            raise ValueError(f"the unit's {name} port is already driven (one use per unit)")
        self.ports[name] = None
        s = self._stage(*vals)
        out = s + (tree_latency(len(vals)) if name == TREE else function_latency(name))
        if self.dry:
            return Val(Const(0, 32), out)
        self.m.d.comb += [port.arg.eq(Cat(*(self.at(v, s) for v in vals))), port.en.eq(self.en)]
        return Val(port.res, out)

    def tree(self, values) -> Val:
        """The pairwise tree ``((v0+v1)+(v2+v3))+...`` over ``values`` (signals taken at
        stage 0): the accumulation tail of golden ``tree_sum``."""
        level = [Val(a, 0) for a in values]
        if (ext := self._external(TREE, level)) is not None:
            return ext
        while len(level) > 1:
            level = [self.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
        return level[0]

    # ------------------------------------------------------------ functions
    def exp(self, x: Val) -> Val:
        if (ext := self._external("exp", [x])) is not None:
            return ext
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
        if (ext := self._external("reciprocal", [d])) is not None:
            return ext
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
        if (ext := self._external("rsqrt", [v])) is not None:
            return ext
        c = self.const
        odd = self.comb(lambda b: b[23] ^ 1, v, width=1, register=False)   # (E - 127) & 1
        y = self.table(RSQRT_TABLE, self.comb(lambda b, o: Cat(b[23 - RSQRT_BITS:23], o), v, odd,
                                              width=RSQRT_BITS + 1, register=False))
        # h = m * 0.5, exact (m is normal, in [1, 4)): the exponent 126 + odd, no multiplier
        # (so no inverter sits between the argument and a multiplier's input register)
        h = self.comb(lambda b, o: Cat(b[:23], o, Const(0b0111111, 7), Const(0, 1)), v, odd,
                      width=32, register=False)
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
        # -u2 as inner * (-GELU_2C): the same bits (RNE rounds symmetrically; +-0, +-Inf
        # and NaN alike), and no sign flip between the product's register and the exp
        # (a shared pipe's argument select follows it)
        neg_u2 = self.mul(inner, c(GELU_2C ^ SIGN))
        den = self.add(self.exp(neg_u2), c(ONE))
        return self.mul(x, self.reciprocal(den))


class Func(enum.Enum):
    """Element-wise functions of :class:`Elementwise` (definitions: numerics.md section 4)."""

    EXP = "exp"
    RECIPROCAL = "reciprocal"
    RSQRT = "rsqrt"
    GELU = "gelu"


#: Functions a unit built with ``shared_functions=True`` takes from a :class:`FunctionPipe`.
SHAREABLE = (Func.EXP, Func.RECIPROCAL, Func.RSQRT)
#: The shared pairwise tree over a row unit's ``P`` partial sums (:class:`TreePipe`).
TREE = "tree"

#: A unit's port to a shared :class:`FunctionPipe`: the unit drives the FP32 argument and
#: its pipeline's enable, the result comes back :func:`function_latency` enabled cycles later.
FUNCTION_PORT = wiring.Signature({"arg": Out(32), "en": Out(1), "res": In(32)})


def tree_port(P: int) -> wiring.Signature:
    """A unit's port to a shared :class:`TreePipe` of ``P`` inputs (``arg``: value ``j`` in
    bits ``32j .. 32j+31``)."""
    return wiring.Signature({"arg": Out(32 * P), "en": Out(1), "res": In(32)})


@functools.cache
def function_latency(name: str) -> int:
    """Stages from the argument to the result of the FP32 function ``name`` (``exp``,
    ``reciprocal``, ``rsqrt``): the inline pipeline's, a dry :class:`Dataflow`."""
    return getattr(Dataflow(None, None, dry=True), name)(Val(Const(0, 32), 0)).stage


@functools.cache
def tree_latency(P: int) -> int:
    """Stages of the pairwise tree over ``P`` values (``log2 P`` adders)."""
    return Dataflow(None, None, dry=True).tree([Const(0, 32)] * P).stage


def _function_members(names, shared: bool, P: int = 0) -> dict:
    """The ``fn_<name>`` ports of a unit using the shared pipes ``names`` (none unless
    ``shared``; the tree's for ``P`` inputs)."""
    if not shared:
        return {}
    return {f"fn_{n}": Out(tree_port(P) if n == TREE else FUNCTION_PORT) for n in names}


def _function_ports(unit, m: Module, prefix: str = "") -> dict:
    """``{name: port}`` for ``unit``'s Dataflows (``ports=``): its ports to the shared pipes
    (built with ``shared_functions=True``), else pipes of its own in ``m`` (submodules
    ``<prefix>fn_<name>``: one set per lane of an :class:`Elementwise`)."""
    if unit.shared_functions:
        return {n: getattr(unit, f"fn_{n}") for n in unit.functions}
    return _own_function_pipes(m, unit.functions, prefix=prefix, P=getattr(unit, "P", 0))


def _pipe_for(name: str, P: int) -> "FunctionPipe | TreePipe":
    """The pipe of function ``name``: the :class:`TreePipe` over ``P`` values, else a
    :class:`FunctionPipe`."""
    return TreePipe(P=P) if name == TREE else FunctionPipe(Func(name))


def _own_function_pipes(m: Module, names, prefix: str, P: int = 0) -> dict:
    """A :class:`FunctionPipe` (or the :class:`TreePipe` over ``P`` values) of its own in
    ``m`` for each function of ``names`` (a unit, or a lane, built without shared
    functions): ``{name: port}`` for its Dataflows (``ports=``).  The pipe is the inline
    pipeline (same stages, rounding and enable), a module of its own, so the synthesis
    flow maps it once for every lane and unit."""
    ports = {}
    for n in names:
        pipe = m.submodules[f"{prefix}fn_{n}"] = _pipe_for(n, P)
        ports[n] = _PipePort(arg=pipe.x, en=pipe.en, res=pipe.y)
    return ports


@dataclass(frozen=True)
class _PipePort:
    """The unit side of a :class:`FunctionPipe` in the same module (:data:`FUNCTION_PORT`'s
    members: the argument and enable the Dataflow drives, the result it reads)."""
    arg: Value
    en: Value
    res: Value


def _check_ports_driven(ports: dict) -> None:
    left = [name for name, port in ports.items() if port is not None]
    if left:
        raise AssertionError(f"function ports never driven: {left}")


def connect_function_pipes(m: Module, users) -> dict[str, wiring.Component]:
    """One shared pipe per function name that the units of ``users`` (pairs ``(unit,
    select)``, units built with ``shared_functions=True``) use: a :class:`FunctionPipe`
    (exp, reciprocal, rsqrt) or the :class:`TreePipe` (their partial sums' tree), added to
    ``m`` as ``fn_<name>``.  The unit whose ``select`` is 1 drives its arguments and enable
    (at most one at a time, and only while no other user has elements in the pipe), every
    user reads its result.  Returns the pipes by name.

    The arguments reach the pipe through a k:1 multiplexer on a binary index (one LUT per
    bit for up to four users, where a one-hot AND-OR of four takes two), registered from the
    selects: a select must hold for a cycle before its unit drives the pipe (the vector
    engine's sub-op flags are loaded in IDLE, cycles before an element reaches a unit).
    The enables stay one-hot gated, so an unselected unit never moves the pipe."""
    ports: dict[str, list] = {}
    sizes: dict[str, set] = {}
    for unit, select in users:
        for n in unit.functions:
            ports.setdefault(n, []).append((select, getattr(unit, f"fn_{n}")))
            sizes.setdefault(n, set()).add(unit.P if n == TREE else 1)
    for n, ps in sizes.items():             # checked before anything is built
        if len(ps) != 1:
            raise ValueError(f"the users of the shared {n} differ in P: {sorted(ps)}")
    pipes = {}
    for n, fports in ports.items():
        pipe = m.submodules[f"fn_{n}"] = pipes[n] = _pipe_for(n, sizes[n].pop())
        en, index = Const(0), Const(0, range(len(fports)))
        for k, (select, port) in enumerate(fports):
            en = en | (select & port.en)
            index = index | Mux(select, k, 0)
            m.d.comb += port.res.eq(pipe.y)
        if len(fports) == 1:
            arg = fports[0][1].arg
        else:
            sel = Signal(range(len(fports)), name=f"fn_{n}_sel")
            m.d.sync += sel.eq(index)
            arg = Array(port.arg for _, port in fports)[sel]
        m.d.comb += [pipe.en.eq(en), pipe.x.eq(arg)]
    return pipes


@hierarchical
class TreePipe(Checked, wiring.Component):
    """The pairwise tree over ``P`` FP32 values as a pipeline of its own, shared by the row
    units built with ``shared_functions=True`` (their ``fn_tree`` ports): ``y`` is
    ``((x0+x1)+(x2+x3))+...`` :attr:`latency` cycles of ``en`` later (value ``j`` of ``x``
    in bits ``32j .. 32j+31``; the adders of the inline tree; data only)."""

    def __init__(self, *, P: int = 8):
        self.P = P
        self.latency = tree_latency(P)
        super().__init__({"en": In(1), "x": In(32 * P), "y": Out(32)})

    @classmethod
    def check_params(cls, *, P) -> None:
        _check_P(P)

    def elaborate(self, platform):
        m = Module()
        df = Dataflow(m, self.en, prefix="tree_", data_only=True)
        y = df.tree([self.x.word_select(j, 32) for j in range(self.P)])
        m.d.comb += self.y.eq(df.at(y, y.stage))
        return m


@hierarchical
class FunctionPipe(Checked, wiring.Component):
    """One FP32 function (exp, reciprocal or rsqrt) as a pipeline of its own, shared by
    the units built with ``shared_functions=True`` (their ``fn_<name>`` ports): ``y`` is
    ``func(x)`` :attr:`latency` cycles of ``en`` later (the stages, operations and
    rounding of the inline :class:`Dataflow` function; data only, no valid bits: the
    unit that drives ``x`` and ``en`` tracks its own)."""

    def __init__(self, func: Func):
        self.func = func
        self.latency = function_latency(func.value)
        super().__init__({"en": In(1), "x": In(32), "y": Out(32)})

    @classmethod
    def check_params(cls, *, func) -> None:
        if func not in SHAREABLE:
            raise ValueError(f"func must be one of {[f.name for f in SHAREABLE]}, got {func!r}")

    def elaborate(self, platform):
        m = Module()
        df = Dataflow(m, self.en, prefix=f"{self.func.value}_", data_only=True)
        y = getattr(df, self.func.value)(Val(self.x, 0))
        m.d.comb += self.y.eq(df.at(y, y.stage))
        return m


@hierarchical
class Elementwise(Checked, wiring.Component):
    """Pipelined element-wise FP32 function, ``lanes`` elements per beat.

    ``i``: stream of ``ArrayLayout(float_layout(src), lanes)``; ``o``: stream of
    ``ArrayLayout(float_layout(dst), lanes)``.  ``src``/``dst`` may be FP16 (exact
    conversion in, one RNE rounding out) or FP32; the function is computed in FP32
    exactly as the golden model defines it.  NaN results are the canonical NaN.

    Latency ``self.latency`` cycles (depends on ``func`` and the formats: FP32 ->
    FP32 exp 157, reciprocal 68, rsqrt 70, GELU 278; FP16 -> FP16 +9), initiation
    interval 1; every FP operation is pipelined (:class:`Dataflow`); the
    pipeline holds while ``o.valid & ~o.ready`` (``i.ready = ~o.valid | o.ready``).
    ``shared_functions`` (one lane only): exp and reciprocal (GELU), or the function
    itself, through ``fn_*`` ports to shared :class:`FunctionPipe` s (module docstring);
    without it each lane holds its own :class:`FunctionPipe` s (the same pipelines).
    """

    def __init__(self, func: Func, *, lanes: int = 1, src: FloatFormat = FP32,
                 dst: FloatFormat = FP32, shared_functions: bool = False):
        self.func, self.lanes, self.src, self.dst = func, lanes, src, dst
        self.shared_functions = shared_functions
        #: the shareable functions the lane computes
        self.functions = ("exp", "reciprocal") if func is Func.GELU else (func.value,)
        self.latency = self.latency_for(func=func, lanes=lanes, src=src, dst=dst,
                                        shared_functions=shared_functions)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(float_layout(src), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(float_layout(dst), lanes))),
            **_function_members(self.functions, shared_functions),
        })

    @classmethod
    def check_params(cls, *, func, lanes, src, dst, shared_functions) -> None:
        if not isinstance(func, Func):
            raise TypeError(f"func must be a Func (EXP, RECIPROCAL, RSQRT, GELU), got {func!r}")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive integer, got {lanes!r}")
        if shared_functions and lanes != 1:
            raise ValueError(f"shared_functions needs lanes=1 (one port per function), "
                             f"got lanes={lanes}")
        for name, f in (("src", src), ("dst", dst)):
            if f not in (FP16, FP32):
                raise ValueError(f"{name} must be FP16 or FP32, got {f!r}")

    @classmethod
    def latency_for(cls, *, func: Func, lanes: int = 1, src: FloatFormat = FP32,
                    dst: FloatFormat = FP32, shared_functions: bool = False) -> int:
        """``latency`` without building the unit: one lane scheduled by a dry
        :class:`Dataflow` (the schedule :meth:`elaborate` builds; the same with shared
        functions)."""
        df = Dataflow(None, None, dry=True)
        return cls._lane(df, Const(0, src.width), func, src, dst).stage

    @staticmethod
    def _lane(df: Dataflow, x: Value, func: Func, src: FloatFormat, dst: FloatFormat) -> Val:
        """One lane's schedule: ``func`` of the input ``x`` (stage 0) in ``dst``."""
        v = Val(x, 0)
        if src is FP16:
            v = df.convert(v, FP16, FP32)
        y = getattr(df, func.value)(v)
        if dst is FP16:
            return df.convert(y, FP32, FP16)
        # canonical NaN, registered: ``o.payload`` comes straight from a register
        return df.comb(lambda b: Mux((b[23:31] == 255) & (b[:23] != 0), QNAN, b), y,
                       width=32, register=True)

    def _build(self, m: Module, en: Value, inputs: list[Value]) -> list[Value]:
        outs = []
        for lane, x in enumerate(inputs):
            ports = _function_ports(self, m, prefix=f"l{lane}_")
            df = Dataflow(m, en, prefix=f"l{lane}_", data_only=True,   # valid: valid_sr
                          ports=ports)
            y = self._lane(df, x, self.func, self.src, self.dst)
            assert y.stage == self.latency, "latency_for schedules what elaborate builds"
            outs.append(df.at(y, y.stage))
            _check_ports_driven(ports)
        return outs

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        latency = self.latency
        outs = self._build(m, en, [self.i.payload[k].as_value() for k in range(self.lanes)])
        valid = Signal(latency, name="valid_sr")
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += self.o.valid.eq(valid[-1])
        for k, o in enumerate(outs):
            m.d.comb += self.o.payload[k].as_value().eq(o)
        return m


class PartialSums:
    """``P`` interleaved FP32 partial sums fed by one pipelined adder: the accumulation
    half of golden ``tree_sum``, shared by the row units (a builder inside the caller's
    module, not a component).

    Each cycle the caller may drive ``issue`` = 1 to add ``value`` to partial ``part``
    (element ``k`` of a row goes to partial ``k mod P``); ``clear`` sets every partial
    to +0.0 and wins over a write-back in the same cycle.  The issue is registered, the
    selected partial is read into a register (bypassing a write-back of the same partial
    in that cycle), and the adder (:class:`~fpqvar_hw.units.fpu.AddPipe`, latency
    ``ADD_STAGES + ROUND_STAGES`` = 7, always enabled) starts from registers: nothing in
    front of its first stage.  A partial holds its new sum :attr:`DRAIN` = 10 cycles
    after the issue (two input registers, the adder, the partial's register); one partial
    may receive an element every :attr:`SPACING` = 8 cycles (its previous sum is
    bypassed into the read), so ``P >= SPACING`` lets a row stream at one element per
    cycle.  :meth:`tree` builds the pairwise tree ``((p0+p1)+(p2+p3))+...`` over the
    partials.

    Rows shorter than ``P`` or not a multiple of ``P`` leave the unused partials at
    +0.0, which is exactly golden ``tree_sum``'s padding with +0.0.
    """

    #: cycles from an issue until its partial holds the new sum (issue and operand
    #: registers, adder, write-back)
    DRAIN = 2 + ADD_STAGES + ROUND_STAGES + 1
    #: smallest number of cycles between two issues to the same partial
    SPACING = ADD_STAGES + ROUND_STAGES + 1

    def __init__(self, m: Module, P: int, prefix: str):
        _check_P(P)
        self.P = P
        self.acc = [Signal(32, name=f"{prefix}acc{j}") for j in range(P)]
        self.issue = Signal(name=f"{prefix}issue")
        self.part = Signal(range(P), name=f"{prefix}part")
        self.value = Signal(32, name=f"{prefix}value")
        self.clear = Signal(name=f"{prefix}clear")
        m.submodules[f"{prefix}add"] = add = AddPipe(FP32)
        # stage 1: the issue registered; stage 2: the partial read (or the write-back
        # bypassed) and the value, both registered as the adder's operands
        iss1, part1, val1 = (Signal(name=f"{prefix}iss1"), Signal(range(P), name=f"{prefix}part1"),
                             Signal(32, name=f"{prefix}val1"))
        iss2, part2 = Signal(name=f"{prefix}iss2"), Signal(range(P), name=f"{prefix}part2")
        opa, opb = Signal(32, name=f"{prefix}opa"), Signal(32, name=f"{prefix}opb")
        m.d.sync += [iss1.eq(self.issue), part1.eq(self.part), val1.eq(self.value),
                     iss2.eq(iss1), part2.eq(part1), opb.eq(val1)]
        m.d.comb += [add.en.eq(1), add.a.as_value().eq(opa), add.b.as_value().eq(opb)]
        # the issue's valid bit and destination travel alongside the adder
        valid = Signal(add.latency, name=f"{prefix}add_valid")
        dst = [Signal(range(P), name=f"{prefix}dst{d}") for d in range(add.latency)]
        m.d.sync += [valid.eq(Cat(iss2, valid[:-1])), dst[0].eq(part2)]
        m.d.sync += [dst[d].eq(dst[d - 1]) for d in range(1, add.latency)]
        wb = valid[-1]
        m.d.sync += opa.eq(Mux(wb & (dst[-1] == part1), add.o.as_value(), Array(self.acc)[part1]))
        with m.If(self.clear):
            m.d.sync += [a.eq(0) for a in self.acc]
        with m.Elif(wb):
            m.d.sync += Array(self.acc)[dst[-1]].eq(add.o.as_value())

    def tree(self, df: Dataflow) -> Val:
        """The pairwise tree over the partials (taken at stage 0 of ``df``)."""
        return df.tree(self.acc)


def _check_P(P: int) -> None:
    """``P`` partial sums on one accumulating adder: a power of two >= its latency + 1."""
    if not isinstance(P, int) or P < PartialSums.SPACING or P & (P - 1):
        raise ValueError(f"P must be a power of two >= {PartialSums.SPACING} (the accumulating "
                         f"adder's latency + 1), got {P!r}")


def _check_row_params(name: str, length: int, P: int, *, divides: bool) -> None:
    """The row units' parameter checks (their ``check_params``)."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"{name} must be a positive integer, got {length!r}")
    _check_P(P)
    if divides and length % P:
        raise ValueError(f"P ({P}) must divide {name} ({length})")


def select_tree(items, sel):
    """``items[sel]`` (a power-of-two count, ``sel`` at least its log2 bits, higher bits
    ignored) as a tree of 4-way selects, two bits of ``sel`` per level (one 2-way level
    where the count is not a power of four): one LUT6 per bit and level.  For a wide
    select (the attention array's drain: one of 64 snapshots of 256 bits) a flat
    ``Array(items)[sel]`` is one 64-case process whose one-hot decode cost Yosys 135 s
    and 23.1k LUT for the array; this tree 81 s and 19.1k LUT at the same logic depth
    (2-way ``Mux`` levels mapped one LUT level per bit: 6 for 64)."""
    level = list(items)
    n = len(level)
    if n < 1 or n & (n - 1) or len(sel) < n.bit_length() - 1:
        raise ValueError(f"select_tree needs a power-of-two count and log2 of it select bits, "
                         f"got {n} items, {len(sel)} bits")
    b = 0
    while len(level) > 1:
        k = 2 if len(level) % 4 == 0 else 1
        s = sel[b:b + k]
        level = [Array(level[i:i + (1 << k)])[s] for i in range(0, len(level), 1 << k)]
        b += k
    return level[0]


def skid_buffer(m: Module, in_valid, in_data, out_ready, name: str, clear=None):
    """Register slice with a registered ``ready`` (two entries): nothing combinational
    from ``out_ready`` to the returned ``in_ready`` or from ``in_valid`` to ``out_valid``,
    so a ``ready`` chain through several units ends here; one word per cycle, one cycle
    of latency; ``clear`` (optional) empties it.  Returns ``(in_ready, out_valid,
    out_data)``."""
    w = len(in_data)
    main, spare = Signal(w, name=f"{name}_main"), Signal(w, name=f"{name}_spare")
    main_ok, spare_ok = Signal(name=f"{name}_main_ok"), Signal(name=f"{name}_spare_ok")
    in_ready = Signal(name=f"{name}_in_ready")
    m.d.comb += in_ready.eq(~spare_ok)
    take = in_valid & in_ready
    with m.If(out_ready | ~main_ok):            # the head moves on (or is empty)
        with m.If(spare_ok):
            m.d.sync += [main.eq(spare), main_ok.eq(1), spare_ok.eq(0)]
        with m.Else():
            m.d.sync += [main.eq(in_data), main_ok.eq(take)]
    with m.Elif(take):                          # the head waits: the word parks
        m.d.sync += [spare.eq(in_data), spare_ok.eq(1)]
    if clear is not None:
        with m.If(clear):
            m.d.sync += [main_ok.eq(0), spare_ok.eq(0)]
    return in_ready, main_ok, main


def _tags(m: Module, head: Value, stages: int) -> Value:
    """``head`` delayed by ``stages`` always-enabled registers."""
    t = head
    for _ in range(stages):
        r = Signal(len(t))
        m.d.sync += r.eq(t)
        t = r
    return t


class RowSlots:
    """Row buffers of a row unit that keeps several rows in flight, and its output phase
    (a builder inside the caller's module).

    ``slots`` buffers of ``depth`` FP32 elements, used in turn; per buffer the row's last
    index (:attr:`end`), its factor (:attr:`r`) and two flags: *free* (the caller's load
    phase may fill it) and *ready* (its factor is known).  The caller writes element ``k``
    of buffer ``j`` with :meth:`write`, marks a row loaded with :attr:`clr_free` (a bit
    per buffer, comb) and its factor known with :meth:`set_factor`; OUT then streams the
    row's ``element * r`` through ``mul`` (an ``FPUnit`` MUL whose ``o`` is the unit's
    output), one element per cycle with backpressure, in buffer order, and frees the
    buffer.  OUT reads a buffer through its read register at :attr:`out_next` (``0``
    while OUT waits, so a row's first element is read before OUT starts it); the caller
    may read a buffer it owns instead (:meth:`read_at`).  OUT takes ``n + 1`` cycles
    per row of ``n`` from seeing *ready*; its last element leaves ``mul``'s latency later.

    ``shared``: one memory holds every buffer (buffer ``j`` at ``Cat(k, j)``), so OUT's
    element comes straight from the read register, with no mux in front of ``mul``; for
    a caller that writes one buffer per cycle and never reads.  Call :meth:`finish`
    after the caller's :meth:`read_at` calls.
    """

    def __init__(self, m: Module, depth: int, slots: int, mul, prefix: str = "", *,
                 shared: bool = False):
        from amaranth.lib.memory import Memory

        self.m, self.slots, self.shared = m, slots, shared
        self.ports = []
        if shared:      # one memory, buffer j at Cat(k, j): one write and one read port
            self._kbits = max(1, (depth - 1).bit_length())
            m.submodules[f"{prefix}buf"] = mem = Memory(shape=32, depth=slots << self._kbits,
                                                        init=[])
            self.ports.append((mem.write_port(), mem.read_port(domain="sync")))
        else:
            for j in range(slots):
                m.submodules[f"{prefix}buf{j}"] = mem = Memory(shape=32, depth=depth, init=[])
                self.ports.append((mem.write_port(), mem.read_port(domain="sync")))
        self.end = Array(Signal(range(depth), name=f"{prefix}end{j}") for j in range(slots))
        self.r = Array(Signal(32, name=f"{prefix}r{j}") for j in range(slots))
        self.free = Signal(slots, init=(1 << slots) - 1, name=f"{prefix}free")
        self.ready = Signal(slots, name=f"{prefix}ready")
        self.clr_free = Signal(slots, name=f"{prefix}clr_free")
        set_ready, set_free = Signal(slots), Signal(slots)
        self._set_ready = set_ready
        #: the two values ``free`` takes next: ``free_if_hold`` when OUT takes no element this
        #: cycle, ``free_if_take`` when it does (:attr:`out_take`, the multiplier's i.ready:
        #: a caller that registers something of the next ``free`` selects between the two
        #: last, so the unit's o.ready only reaches a mux)
        self.free_if_hold = Signal(slots, name=f"{prefix}free_if_hold")
        self.free_if_take = Signal(slots, name=f"{prefix}free_if_take")
        self.out_take = mul.i.ready
        # set_free: the buffer OUT frees if it takes an element now (its row's last)
        m.d.comb += [self.free_if_hold.eq(self.free & ~self.clr_free),
                     self.free_if_take.eq(self.free_if_hold | set_free)]
        m.d.sync += self.ready.eq((self.ready | set_ready) & ~Mux(self.out_take, set_free, 0))
        m.d.sync += self.free.eq(Mux(self.out_take, self.free_if_take, self.free_if_hold))
        # OUT
        self.out_slot = os_ = Signal(range(slots), name=f"{prefix}out_slot")
        ko, self.out_next = Signal(range(depth)), Signal(range(depth), name=f"{prefix}out_next")
        o_end, o_r = Signal(range(depth)), Signal(32)
        self.out_step = Signal(name=f"{prefix}out_step")     # OUT moves to the next buffer
        # ko == o_end as a register (o_last), and whether the element after ko is the last
        # (from registers): the multiplier's i.ready (the unit's o.ready) only selects
        m.d.sync += ko.eq(self.out_next)
        m.d.comb += self.out_next.eq(ko)
        o_last, o_next_last = Signal(name=f"{prefix}out_last"), Signal()
        m.d.comb += o_next_last.eq(ko + 1 == o_end)
        with m.FSM(name=f"{prefix}out") as fsm:
            with m.State("IDLE"):
                with m.If(self.ready.bit_select(os_, 1)):
                    m.d.sync += [o_r.eq(self.r[os_]), o_end.eq(self.end[os_]),
                                 o_last.eq(self.end[os_] == 0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += mul.i.valid.eq(1)
                with m.If(mul.i.ready):
                    m.d.comb += self.out_next.eq(ko + 1)
                    m.d.sync += o_last.eq(o_next_last)
                    with m.If(o_last):
                        m.d.comb += [self.out_next.eq(0), self.out_step.eq(1)]
                        m.d.sync += os_.eq(self.next_slot(os_))
                        m.next = "IDLE"
        # the buffer a taken element would free (the row's last in RUN), without i.ready
        with m.If(fsm.ongoing("RUN") & o_last):
            m.d.comb += set_free.eq(Const(1, slots) << os_)
        # the operands whatever the state (only ``valid`` is RUN's): no state term in front
        # of the multiplier's first stage
        m.d.comb += [mul.i.payload[0].a.as_value().eq(self.data(os_)),
                     mul.i.payload[0].b.as_value().eq(o_r)]
        self._override = [None] * slots

    def next_slot(self, j: Value) -> Value:
        """The buffer after ``j``."""
        n = self.slots
        return (j + 1)[:len(j)] if n & (n - 1) == 0 else Mux(j == n - 1, 0, j + 1)

    def write(self, j, addr: Value, data: Value) -> None:
        """Write ``data`` at ``addr`` of buffer ``j`` (under the caller's condition; with
        ``shared`` ``j`` may be a signal, and one buffer is written per cycle)."""
        wr, _ = self.ports[0 if self.shared else j]
        if self.shared:     # element index zero-extended to _kbits, then the buffer
            addr = Cat(Cat(addr, Const(0, max(0, self._kbits - len(addr))))[:self._kbits], j)
        self.m.d.comb += [wr.addr.eq(addr), wr.data.eq(data), wr.en.eq(1)]

    def read_at(self, j: int, mine: Value, addr: Value) -> None:
        """Buffer ``j`` reads ``addr`` (comb: the next cycle's element) while ``mine``, else
        OUT's address."""
        self._override[j] = (mine, addr)

    def data(self, j: Value) -> Value:
        """The read register of buffer ``j`` (a signal index: a mux; with ``shared`` the
        one read register, which holds OUT's buffer)."""
        if self.shared:
            return self.ports[0][1].data
        return Array(rd.data for _, rd in self.ports)[j]

    def set_factor(self, j: Value, r: Value) -> None:
        """Store row ``j``'s factor and mark it ready (under the caller's condition)."""
        self.m.d.comb += self._set_ready.eq(Const(1, self.slots) << j)
        self.m.d.sync += self.r[j].eq(r)

    def finish(self) -> None:
        """Connect the read addresses (after every :meth:`read_at`)."""
        if self.shared:     # OUT is the only reader: the next cycle's slot and element
            _, rd = self.ports[0]
            assert all(o is None for o in self._override), "a shared RowSlots has one reader"
            nxt = Mux(self.out_step, self.next_slot(self.out_slot), self.out_slot)
            self.m.d.comb += rd.addr.eq(Cat(self.out_next[:self._kbits], nxt))
            return
        for j, (_, rd) in enumerate(self.ports):
            o = self._override[j]
            self.m.d.comb += rd.addr.eq(self.out_next if o is None else Mux(o[0], o[1], self.out_next))


class RowSums:
    """Two :class:`PartialSums` sets that the rows of a row unit with rows in flight
    alternate between (a builder inside the caller's module).

    The caller starts a row on set ``par`` with :meth:`take` once ``busy`` bit ``par`` is
    low, and issues its elements with :meth:`issue`.  :attr:`PartialSums.DRAIN` cycles
    after the row's ``last`` issue (the row's partials hold their sums) the set is copied
    into :attr:`snap` (``P`` registers, with :attr:`snap_valid` and :attr:`snap_slot`
    one cycle later) and cleared, and its ``busy`` bit falls: the caller's reduction
    pipeline runs on the snapshot while the set takes the row two later.
    """

    def __init__(self, m: Module, P: int, slots: int, prefix: str = ""):
        self.m = m
        p = prefix
        self.sets = [PartialSums(m, P, f"{p}sum{q}_") for q in range(2)]
        self.busy = Signal(2, name=f"{p}ps_busy")
        self._set, self._clr = Signal(2, name=f"{p}set_busy"), Signal(2, name=f"{p}clr_busy")
        #: ``busy`` in the next cycle (comb: the register's next value)
        self.busy_next = Signal(2, name=f"{p}ps_busy_next")
        m.d.comb += self.busy_next.eq((self.busy | self._set) & ~self._clr)
        m.d.sync += self.busy.eq(self.busy_next)
        self.snap = [Signal(32, name=f"{p}snap{j}") for j in range(P)]
        self.snap_valid = Signal(name=f"{p}snap_valid")
        self.snap_slot = Signal(range(slots), name=f"{p}snap_slot")

    def take(self, par: Value) -> None:
        """A row starts on set ``par`` (under the caller's condition)."""
        self.m.d.comb += self._set.eq(Const(1, 2) << par)

    def issue(self, valid: Value, last: Value, par: Value, slot: Value, part: Value,
              value: Value) -> tuple[Value, Value]:
        """Add ``value`` to partial ``part`` of set ``par`` while ``valid``; ``last``: the
        row's final issue, ``slot``: its buffer.  Returns ``(go, slot)`` of the snapshot
        cycle (for the caller's own per-row values that travel with it)."""
        m = self.m
        for q, ps in enumerate(self.sets):
            m.d.comb += [ps.issue.eq(valid & (par == q)), ps.part.eq(part[:len(ps.part)]),
                         ps.value.eq(value)]
        tag = _tags(m, Cat(valid & last, par, slot), PartialSums.DRAIN)
        go, s_par, s_slot = tag[0], tag[1], tag[2:]
        m.d.sync += [self.snap_valid.eq(go), self.snap_slot.eq(s_slot)]
        with m.If(go):
            m.d.sync += [r.eq(Mux(s_par, self.sets[1].acc[j], self.sets[0].acc[j]))
                         for j, r in enumerate(self.snap)]
            m.d.comb += self._clr.eq(Mux(s_par, 2, 1))
            for q, ps in enumerate(self.sets):
                m.d.comb += ps.clear.eq(s_par == q)
        return go, s_slot


@hierarchical
class Softmax(Checked, wiring.Component):
    """Row softmax over FP32 elements, bit-exact to ``golden.vector.softmax(row, P)``, for
    rows of 1 to ``length`` elements.

    ``i``: stream of ``{x, last}``: FP32 elements, a row ends with ``last`` = 1 (or after
    ``length`` elements, whichever comes first: without ``last`` the unit computes rows
    of exactly ``length``); ``o``: stream of the FP32 results in the same order.  One
    element per beat.

    Every row passes three phases, each its own process, so that up to :attr:`SLOTS` rows
    are in flight (one row buffer each, used in turn): (1) LOAD takes the row into a
    free buffer while keeping the running max (``max`` is exact, so any order gives the
    golden ``max``); (2) EXP streams a loaded buffer through ``exp(x - m)`` (one
    :class:`Dataflow` pipeline, one element per cycle), writes ``e`` back and
    accumulates it into one of two :class:`PartialSums` (rows alternate between them;
    unused partials stay +0.0: the golden padding); :attr:`PartialSums.DRAIN` cycles
    after the row's last ``e`` its partials are copied into a snapshot register and
    cleared, and the pairwise tree and ``reciprocal`` on the snapshot give ``r``;
    (3) OUT streams ``e * r`` out, with backpressure, and frees the buffer.  LOAD of
    row ``j + 1`` runs while EXP works on row ``j`` and OUT on row ``j - 1``.

    Cycles (no stalls), row ``j`` of ``n`` elements, ``L`` / ``L2`` / ``Lm`` the latencies
    of the exp, tree + reciprocal and output-multiply pipelines: LOAD takes it from the
    cycle after row ``j - 1``'s last element, or after its buffer is freed (row ``j -
    SLOTS``); EXP starts it (cycle ``c_j``) once it is loaded, EXP is done with row ``j -
    1`` (``c_{j-1} + n + 2``) and its partial-sum set is free (``c_{j-2} + n + L + DRAIN +
    2``), then the first read, ``n`` elements; its ``r`` is ready ``n + L + DRAIN + L2 + 3``
    cycles after ``c_j``; OUT takes ``n + 1`` cycles per row and the last result leaves
    ``Lm`` cycles after its last element.  :meth:`stream_cycles` runs this recursion (it
    reproduces the simulated unit to the cycle: ``sim/test_vector.py``, rows of 1 to 680);
    long rows stream at ``n + 2`` cycles per row, where one row at a time took ``3*n +
    L + DRAIN + L2`` and more.  The buffers are memories read through a register at the
    address of the phase that owns them.
    """

    #: row buffers (rows in flight)
    SLOTS = 4

    #: the shared pipes the unit uses (``shared_functions``: module docstring)
    functions = ("exp", "reciprocal", TREE)

    def __init__(self, *, length: int, P: int = 8, shared_functions: bool = False):
        self.length, self.P, self.lanes = length, P, 1
        self.shared_functions = shared_functions
        #: cycles an element spends in the load-phase datapath (running max, buffer write)
        self.latency = self.latency_for(length=length, P=P)
        fl = float_layout(FP32)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": fl, "last": 1}))),
            "o": Out(stream.Signature(fl)),
            **_function_members(self.functions, shared_functions, P),
        })

    @classmethod
    def check_params(cls, *, length, P, shared_functions) -> None:
        _check_row_params("length", length, P, divides=False)

    @staticmethod
    def latency_for(*, length: int, P: int = 8, shared_functions: bool = False) -> int:
        """``latency`` without building the unit."""
        return 1

    @classmethod
    def pipeline_cycles(cls, P: int = 8) -> tuple[int, int]:
        """``(latency(exp(x - m)), latency(tree over P + reciprocal))`` of the unit's
        pipelines (a dry :class:`Dataflow`: nothing built)."""
        df = Dataflow(None, None, dry=True)
        e = df.exp(df.sub(Val(Const(0, 32), 0), Val(Const(0, 32), -1)))
        return e.stage, df.reciprocal(df.tree([Const(0, 32)] * P)).stage

    @staticmethod
    def stream_cycles(rows: int, n: int, *, exp: int, recip: int, drain: int, mul: int,
                      slots: int) -> int:
        """Cycles from the first element in to the last result out for ``rows`` rows of
        ``n`` elements, input and output never stalled: the class docstring's recursion
        over the rows, from the pipelines' latencies (``exp``, ``recip`` = tree +
        reciprocal, ``drain`` = ``PartialSums.DRAIN``, ``mul``) and ``slots`` buffers
        (:meth:`cycles_for` passes this build's; the throughput model those a cycle file
        recorded)."""
        if rows < 1 or n < 1:
            raise ValueError(f"rows and n must be >= 1, got {rows}, {n}")
        load_end = c1 = c2 = out = -(1 << 30)    # rows j-1 (and j-2) as the recursion goes
        freed = [-(1 << 30)] * slots              # when each buffer was last freed
        for j in range(rows):
            load = 0 if j == 0 else max(load_end + 1, freed[j % slots] + 1)
            load_end = load + n - 1
            c = max(load_end + 1, c1 + n + 2, c2 + n + exp + drain + 2)
            ready = c + n + exp + drain + recip + 3
            out = ready if j == 0 else max(ready, out + n + 1)
            freed[j % slots] = out + n
            c1, c2 = c, c1
        return out + n + mul + 1

    @classmethod
    def cycles_for(cls, rows: int, n: int, P: int = 8) -> int:
        """:meth:`stream_cycles` of this build (``P`` partial sums)."""
        from .fpu import FPOp
        L, L2 = cls.pipeline_cycles(P)
        return cls.stream_cycles(rows, n, exp=L, recip=L2, drain=PartialSums.DRAIN,
                                 mul=FPOp.MUL.latency, slots=cls.SLOTS)

    def elaborate(self, platform):
        from .fpu import FPUnit

        m = Module()
        n, P, S = self.length, self.P, self.SLOTS
        NEG_INF = 0xFF800000
        m.submodules.mul = mul = FPUnit(FPOp.MUL, FP32)
        wiring.connect(m, wiring.flipped(self.o), mul.o)
        # a buffer is free -> (LOAD) loaded -> (EXP, snapshot, reciprocal) ready -> (OUT) free
        rows = RowSlots(m, n, S, mul)
        row_mx = Array(Signal(32, name=f"mx{j}") for j in range(S))
        loaded, set_loaded, clr_loaded = Signal(S), Signal(S), Signal(S)
        m.d.sync += loaded.eq((loaded | set_loaded) & ~clr_loaded)
        m.d.comb += rows.clr_free.eq(set_loaded)

        # ---- (1) LOAD
        ls = Signal(range(S))               # the buffer being loaded
        kl = Signal(range(n))
        mx = Signal(32, init=NEG_INF)       # running max, starts at -Inf
        l_take = Signal()
        x_new = self.i.payload.x.as_value()
        new_max = fp_max(m, mx, x_new, FP32)
        m.d.comb += [self.i.ready.eq(rows.free.bit_select(ls, 1)),
                     l_take.eq(self.i.valid & self.i.ready)]
        with m.If(l_take):
            m.d.sync += [mx.eq(new_max), kl.eq(kl + 1)]
            with m.If(self.i.payload.last | (kl == n - 1)):
                m.d.sync += [rows.end[ls].eq(kl), row_mx[ls].eq(new_max), mx.eq(NEG_INF),
                             kl.eq(0), ls.eq(rows.next_slot(ls))]
                m.d.comb += set_loaded.eq(Const(1, S) << ls)

        # ---- (2) EXP: exp pipeline, always enabled; valid, row end, partial-sum set,
        #      buffer and index travel alongside
        es = Signal(range(S))               # the buffer EXP works on
        ke, ke_next = Signal(range(n)), Signal(range(n))
        e_end, e_mx = Signal(range(n)), Signal(32)
        par = Signal()                      # partial-sum set of EXP's row
        sums = RowSums(m, P, S)
        e_own, go = Signal(), Signal()
        m.d.sync += ke.eq(ke_next)
        m.d.comb += ke_next.eq(ke)
        ports = _function_ports(self, m)
        df = Dataflow(m, Const(1), prefix="sm_", data_only=True, ports=ports)
        e_val = df.exp(df.sub(Val(rows.data(es), 0), Val(e_mx, -1)))
        L = e_val.stage
        tag = _tags(m, Cat(go, ke == e_end, par, es, ke), L)
        e_valid, e_last, e_par = tag[0], tag[1], tag[2]
        e_slot, e_idx = tag[3:3 + len(es)], tag[3 + len(es):]
        e_sig = df.at(e_val, L)
        # the row's partials hold their sums DRAIN cycles after its last e: snapshot, clear
        sums.issue(e_valid, e_last, e_par, e_slot, e_idx, e_sig)
        with m.FSM(name="exp"):
            with m.State("IDLE"):
                with m.If(loaded.bit_select(es, 1) & ~sums.busy.bit_select(par, 1)):
                    m.d.sync += [e_mx.eq(row_mx[es]), e_end.eq(rows.end[es])]
                    m.d.comb += clr_loaded.eq(Const(1, S) << es)
                    sums.take(par)
                    m.next = "PRIME"
            with m.State("PRIME"):          # the first element's read
                m.d.comb += e_own.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [e_own.eq(1), go.eq(1), ke_next.eq(ke + 1)]
                with m.If(ke == e_end):
                    m.d.comb += ke_next.eq(0)
                    m.d.sync += [es.eq(rows.next_slot(es)), par.eq(~par)]
                    m.next = "IDLE"
        # EXP reads the buffer it owns; LOAD and the write-back never share a buffer
        for j in range(S):
            rows.read_at(j, e_own & (es == j), ke_next)
            with m.If(e_valid & (e_slot == j)):
                rows.write(j, e_idx, e_sig)
            with m.Elif(l_take & (ls == j)):
                rows.write(j, kl, x_new)
        rows.finish()

        # (3) tree + reciprocal on the snapshot, fully pipelined
        df2 = Dataflow(m, Const(1), prefix="tr_", data_only=True, ports=ports)
        recip = df2.reciprocal(df2.tree(sums.snap))
        L2 = recip.stage
        r_tag = _tags(m, Cat(sums.snap_valid, sums.snap_slot), L2)
        with m.If(r_tag[0]):
            rows.set_factor(r_tag[1:], df2.at(recip, L2))
        _check_ports_driven(ports)
        return m


@hierarchical
class LayerNormModulate(Checked, wiring.Component):
    """LayerNorm without affine (eps 1e-6) and adaLN modulate ``y*(1 + scale) + shift``,
    bit-exact to ``golden.vector.layernorm_modulate(x, scale, shift, P)``.

    ``i``: stream of ``{x, scale, shift}`` (FP32 each), one channel per beat, rows of
    ``length`` channels back to back; ``o``: stream of FP32 results in order.

    Every row passes three phases, each its own process, so that up to :attr:`SLOTS`
    rows are in flight (one set of row buffers each, used in turn): (1) LOAD takes the
    row's ``x``/``scale``/``shift`` into a free slot and accumulates ``x`` into one of
    two :class:`PartialSums` sets (:class:`RowSums`, rows alternate); (2) VAR, once the
    row's mean ``mu`` is known, streams ``d = x - mu`` (written back over ``x``) and
    accumulates ``d*d`` into a second :class:`RowSums`; (3) OUT, once ``r =
    rsqrt(var + 1e-6)`` is known, streams ``(d*r)*(1 + scale) + shift`` out through a
    stall-able pipeline and frees the slot.  The snapshots of both sums share one
    pipeline: pairwise tree, ``* fp32(1/C)`` (the mean leaves here), ``+ 1e-6``,
    ``rsqrt`` (a snapshot of each kind in the same cycle: the mean's first).  LOAD of
    row ``j + 2`` runs while VAR works on row ``j + 1`` and OUT on row ``j``: long rows
    stream at about ``length + 3`` cycles per row, where one row at a time took
    ``3*length`` plus the latencies.  :meth:`stream_cycles` gives the cycles.
    """

    #: rows in flight (slots of row buffers)
    SLOTS = 4

    #: the shared pipes the unit uses (``shared_functions``: module docstring)
    functions = (TREE, "rsqrt")

    def __init__(self, *, length: int, P: int = 8, shared_functions: bool = False):
        self.length, self.P, self.lanes = length, P, 1
        self.shared_functions = shared_functions
        #: cycles an element spends in the load-phase datapath (accumulation)
        self.latency = self.latency_for(length=length, P=P)
        fl = float_layout(FP32)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": fl, "scale": fl, "shift": fl}))),
            "o": Out(stream.Signature(fl)),
            **_function_members(self.functions, shared_functions, P),
        })

    @classmethod
    def check_params(cls, *, length, P, shared_functions) -> None:
        _check_row_params("length", length, P, divides=True)

    @staticmethod
    def latency_for(*, length: int, P: int = 8, shared_functions: bool = False) -> int:
        """``latency`` without building the unit."""
        return PartialSums.DRAIN

    @classmethod
    def pipeline_cycles(cls, P: int = 8) -> dict[str, int]:
        """Latencies of the unit's pipelines (a dry :class:`Dataflow`: nothing built):
        ``var`` (``x - mu``, squared), ``mean`` (tree + ``* 1/C``), ``rsqrt`` (``+ eps``,
        ``rsqrt`` after the mean), ``out`` (the output pipeline)."""
        z = Const(0, 32)
        df = Dataflow(None, None, dry=True)
        d = df.sub(Val(z, 0), Val(z, -1))
        var = df.mul(d, d).stage
        df = Dataflow(None, None, dry=True)
        mean = df.mul(df.tree([z] * P), df.const(0))
        rs = df.rsqrt(df.add(mean, df.const(0)))
        df = Dataflow(None, None, dry=True)
        y = df.mul(Val(z, 0), Val(z, -1))
        out = df.add(df.mul(y, df.add(Val(z, 0), df.const(0))), Val(z, 0)).stage
        return {"var": var, "mean": mean.stage, "rsqrt": rs.stage - mean.stage, "out": out}

    @staticmethod
    def stream_cycles(rows: int, n: int, *, var: int, mean: int, rsqrt: int, out: int,
                      drain: int, slots: int) -> int:
        """Cycles from the first element in to the last result out for ``rows`` rows of
        ``n`` elements, input and output never stalled, from the pipelines' latencies
        (:meth:`pipeline_cycles`; ``drain`` = ``PartialSums.DRAIN``; :meth:`cycles_for`
        passes this build's).  Row ``j``: LOAD takes it from the cycle after row ``j -
        1``'s last element, after its slot is freed (row ``j - slots``) and after its
        sum set's snapshot (row ``j - 2``); the mean's snapshot ``drain + 1`` cycles after
        the last element, the mean ``mean + 2`` later; VAR starts once the mean is known,
        VAR is done with row ``j - 1`` (``+ n + 2``) and its sum set is free (row ``j -
        2``: ``+ n + var + drain + 2``), then a cycle to prime the read and ``n``
        elements; the variance's snapshot ``var + drain + 1`` after the last, one cycle
        later when a mean snapshot takes the shared pipeline in that cycle; ``r`` ``mean +
        rsqrt + 2`` after it; OUT starts a row once ``r`` is known and the previous row is
        out (``n + 1`` cycles a row), the last result ``out`` after its last element.
        ``sim/test_vector.py`` holds the simulated unit to it to the cycle."""
        if rows < 1 or n < 1:
            raise ValueError(f"rows and n must be >= 1, got {rows}, {n}")
        NEG = -(1 << 30)
        load_end: list[int] = []
        freed = [NEG] * rows
        m_picks: set[int] = set()

        def load(j: int) -> None:       # row j's LOAD and its mean snapshot
            start = 0 if j == 0 else max(load_end[j - 1] + 1,
                                         freed[j - slots] + 1 if j >= slots else NEG,
                                         load_end[j - 2] + drain + 1 if j >= 2 else NEG)
            load_end.append(start + n - 1)
            m_picks.add(start + n - 1 + drain + 1)

        v1 = v2 = out_start = NEG
        last = 0
        for j in range(rows):
            while len(load_end) <= j:
                load(len(load_end))
            mu_ok = load_end[j] + drain + 1 + mean + 2
            v = max(mu_ok, v1 + n + 2, v2 + n + var + drain + 2)
            snap_v = v + n + var + drain + 2
            # the LOADs that may snapshot by then (their slots freed by earlier rows' OUT)
            while len(load_end) < rows and len(load_end) <= j + slots - 1 \
                    and (len(load_end) < slots or freed[len(load_end) - slots] > NEG):
                load(len(load_end))
            pick_v = snap_v + (1 if snap_v in m_picks else 0)
            r_ok = pick_v + mean + rsqrt + 2
            out_start = r_ok if j == 0 else max(r_ok, out_start + n + 1)
            freed[j] = out_start + n
            v2, v1 = v1, v
            last = out_start + n + out
        return last + 1

    @classmethod
    def cycles_for(cls, rows: int, n: int, P: int = 8) -> int:
        """:meth:`stream_cycles` of this build."""
        return cls.stream_cycles(rows, n, **cls.pipeline_cycles(P), drain=PartialSums.DRAIN,
                                 slots=cls.SLOTS)

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory

        m = Module()
        n, P, S = self.length, self.P, self.SLOTS
        inv_c, eps = fp32_bits(1.0 / n), fp32_bits(1e-6)
        names = ("x", "scale", "shift")
        mem = {nm: [] for nm in names}
        for nm in names:
            for j in range(S):
                m.submodules[f"buf_{nm}{j}"] = b = Memory(shape=32, depth=n, init=[])
                mem[nm].append((b.write_port(), b.read_port(domain="sync")))

        free = Signal(S, init=(1 << S) - 1)
        loaded, mu_ok, r_ok = Signal(S), Signal(S), Signal(S)
        set_free, clr_free = Signal(S), Signal(S)
        set_loaded, clr_loaded = Signal(S), Signal(S)
        set_mu, set_r, clr_r = Signal(S), Signal(S), Signal(S)
        free_next = Signal(S)
        m.d.comb += free_next.eq((free & ~clr_free) | set_free)
        m.d.sync += [free.eq(free_next), loaded.eq((loaded | set_loaded) & ~clr_loaded),
                     mu_ok.eq((mu_ok | set_mu) & ~clr_loaded),
                     r_ok.eq((r_ok | set_r) & ~clr_r)]
        mu = Array(Signal(32, name=f"mu{j}") for j in range(S))
        r = Array(Signal(32, name=f"r{j}") for j in range(S))

        def next_slot(j):
            return (j + 1)[:len(j)]

        # ---- (1) LOAD: the row into slot ls, x into the mean sums (set lpar)
        ls, kl = Signal(range(S)), Signal(range(n))
        lpar = Signal()
        lsums = RowSums(m, P, S, prefix="m")
        take, last = Signal(), Signal()
        first = Signal(init=1)              # kl == 0, as a register
        # i.ready is a register: next cycle's "the slot is free and, at a row's first
        # element, its sum set too", from the next values of the state
        ready = Signal(init=1)
        row_end = take & last
        ls_n, lpar_n = Mux(row_end, next_slot(ls), ls), Mux(row_end, ~lpar, lpar)
        first_n = Mux(take, last, first)
        m.d.sync += ready.eq(free_next.bit_select(ls_n, 1)
                             & ~(first_n & lsums.busy_next.bit_select(lpar_n, 1)))
        m.d.comb += [last.eq(kl == n - 1), self.i.ready.eq(ready),
                     take.eq(self.i.valid & ready)]
        lsums.issue(take, last, lpar, ls, kl, self.i.payload.x.as_value())
        with m.If(take):
            m.d.sync += [kl.eq(kl + 1), first.eq(last)]
            with m.If(first):
                lsums.take(lpar)
            with m.If(last):
                m.d.sync += [kl.eq(0), ls.eq(next_slot(ls)), lpar.eq(~lpar)]
                m.d.comb += [clr_free.eq(Const(1, S) << ls), set_loaded.eq(Const(1, S) << ls)]

        # ---- (2) VAR: d = x - mu written back, d*d into the variance sums (set vpar)
        vs = Signal(range(S))
        kv, kv_next = Signal(range(n)), Signal(range(n))
        vpar, v_own, v_go = Signal(), Signal(), Signal()
        v_mu = Signal(32)
        vsums = RowSums(m, P, S, prefix="v")
        m.d.sync += kv.eq(kv_next)
        m.d.comb += kv_next.eq(kv)
        x_rd = Array(rd.data for _, rd in mem["x"])
        df = Dataflow(m, Const(1), prefix="var_", data_only=True)
        d_val = df.sub(Val(x_rd[vs], 0), Val(v_mu, -1))
        dd_val = df.mul(d_val, d_val)
        Lv = dd_val.stage
        tag = _tags(m, Cat(v_go, kv == n - 1, vpar, vs, kv), Lv)
        q_valid, q_last, q_par = tag[0], tag[1], tag[2]
        q_slot, q_idx = tag[3:3 + len(vs)], tag[3 + len(vs):]
        d_at = df.at(d_val, Lv)
        vsums.issue(q_valid, q_last, q_par, q_slot, q_idx, df.at(dd_val, Lv))
        with m.FSM(name="var"):
            with m.State("IDLE"):
                with m.If(loaded.bit_select(vs, 1) & mu_ok.bit_select(vs, 1)
                          & ~vsums.busy.bit_select(vpar, 1)):
                    m.d.sync += v_mu.eq(mu[vs])
                    m.d.comb += clr_loaded.eq(Const(1, S) << vs)
                    vsums.take(vpar)
                    m.next = "PRIME"
            with m.State("PRIME"):          # the first element's read
                m.d.comb += v_own.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [v_own.eq(1), v_go.eq(1), kv_next.eq(kv + 1)]
                with m.If(kv == n - 1):
                    m.d.comb += kv_next.eq(0)
                    m.d.sync += [vs.eq(next_slot(vs)), vpar.eq(~vpar)]
                    m.next = "IDLE"

        # ---- the shared reduction: tree, * 1/C (the mean), + eps, rsqrt (r)
        # (a mean snapshot goes first; a variance snapshot of the same cycle waits one: its
        # snapshot registers hold until that set's next row, rows later)
        pend_v, pslot_v = Signal(), Signal(range(S))
        pick_m = lsums.snap_valid
        pick_v = ~pick_m & (pend_v | vsums.snap_valid)
        with m.If(vsums.snap_valid):
            m.d.sync += pslot_v.eq(vsums.snap_slot)
        m.d.sync += pend_v.eq((pend_v | vsums.snap_valid) & ~pick_v)
        sel_slot = Mux(pick_m, lsums.snap_slot, Mux(pend_v, pslot_v, vsums.snap_slot))
        t_in = [Signal(32, name=f"tree_in{j}") for j in range(P)]
        t_go, t_var, t_slot = Signal(), Signal(), Signal(range(S))
        m.d.sync += [t_go.eq(pick_m | pick_v), t_var.eq(pick_v), t_slot.eq(sel_slot)]
        m.d.sync += [t.eq(Mux(pick_m, a, b)) for t, a, b in zip(t_in, lsums.snap, vsums.snap)]
        ports = _function_ports(self, m)
        df2 = Dataflow(m, Const(1), prefix="tr_", data_only=True, ports=ports)
        mean = df2.mul(df2.tree(t_in), df2.const(inv_c))
        rs = df2.rsqrt(df2.add(mean, df2.const(eps)))
        Lm, Lr = mean.stage, rs.stage
        m_tag = _tags(m, Cat(t_go & ~t_var, t_slot), Lm)
        r_tag = _tags(m, Cat(t_go & t_var, t_slot), Lr)
        with m.If(m_tag[0]):
            m.d.sync += mu[m_tag[1:]].eq(df2.at(mean, Lm))
            m.d.comb += set_mu.eq(Const(1, S) << m_tag[1:])
        with m.If(r_tag[0]):
            m.d.sync += r[r_tag[1:]].eq(df2.at(rs, Lr))
            m.d.comb += set_r.eq(Const(1, S) << r_tag[1:])

        # ---- (3) OUT: (d*r)*(1 + scale) + shift, stall-able, then free the slot
        os_ = Signal(range(S))
        ko, ko_next = Signal(range(n)), Signal(range(n))
        o_r = Signal(32)
        m.d.sync += ko.eq(ko_next)
        m.d.comb += ko_next.eq(ko)
        en = ~self.o.valid | self.o.ready
        out_go = Signal()
        sc_rd = Array(rd.data for _, rd in mem["scale"])
        sh_rd = Array(rd.data for _, rd in mem["shift"])
        df3 = Dataflow(m, en, prefix="out_", data_only=True)
        y = df3.mul(Val(x_rd[os_], 0), Val(o_r, -1))
        one_plus = df3.add(Val(sc_rd[os_], 0), df3.const(ONE))
        res = df3.add(df3.mul(y, one_plus), Val(sh_rd[os_], 0))
        Lo = res.stage
        ovalid = Signal(Lo)
        with m.If(en):
            m.d.sync += ovalid.eq(Cat(out_go, ovalid[:-1]))
        m.d.comb += [self.o.valid.eq(ovalid[-1]), self.o.payload.as_value().eq(df3.at(res, Lo))]
        with m.FSM(name="out"):
            with m.State("IDLE"):
                with m.If(r_ok.bit_select(os_, 1)):
                    m.d.sync += o_r.eq(r[os_])
                    m.d.comb += clr_r.eq(Const(1, S) << os_)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += out_go.eq(en)
                with m.If(en):
                    m.d.comb += ko_next.eq(ko + 1)
                    with m.If(ko == n - 1):
                        m.d.comb += [ko_next.eq(0), set_free.eq(Const(1, S) << os_)]
                        m.d.sync += os_.eq(next_slot(os_))
                        m.next = "IDLE"

        # ---- the buffers: LOAD writes x/scale/shift of slot ls, VAR writes d back over x;
        # x is read at VAR's index while VAR owns the slot, else at OUT's
        for j in range(S):
            for nm in names:
                wr, rd = mem[nm][j]
                if nm == "x":
                    vwb = q_valid & (q_slot == j)
                    m.d.comb += [wr.addr.eq(Mux(vwb, q_idx, kl)),
                                 wr.data.eq(Mux(vwb, d_at, self.i.payload.x.as_value())),
                                 wr.en.eq(vwb | (take & (ls == j))),
                                 rd.addr.eq(Mux(v_own & (vs == j), kv_next, ko_next))]
                else:
                    m.d.comb += [wr.addr.eq(kl), wr.data.eq(getattr(self.i.payload, nm).as_value()),
                                 wr.en.eq(take & (ls == j)), rd.addr.eq(ko_next)]
        _check_ports_driven(ports)
        return m


@hierarchical
class L2NormTemperature(Checked, wiring.Component):
    """Per-head L2 normalisation, optionally times ``exp(min(t, ln 100))``; bit-exact to
    ``golden.vector.l2norm_temperature(q, t if temperature else None, P)``.

    ``i``: stream of ``{x, t}`` (FP32) with ``temperature=True``, else ``{x}``; heads of
    ``head_dim`` elements back to back (``t`` is taken from a head's first element);
    ``o``: FP32 results in order.

    Heads in flight (:class:`RowSlots`, :attr:`SLOTS` buffers used in turn): LOAD takes a
    head into a free buffer while ``x*x`` is accumulated into one of two
    :class:`PartialSums` (heads alternate between them); :attr:`PartialSums.DRAIN` cycles
    after the head's last square its partials are copied into a snapshot register (with
    the head's ``t``) and cleared, and the tree, ``max(., 1e-24)``, ``rsqrt`` (times the
    temperature) on the snapshot give ``g``; OUT streams ``x*g`` out with backpressure.
    LOAD of the next heads runs while earlier heads reduce and leave.

    Cycles (no stalls), head ``j`` of ``n`` elements, ``Ls`` / ``Lg`` / ``Lm`` the
    latencies of the square, gain and output-multiply pipelines: LOAD takes it from the
    cycle after head ``j - 1``'s last element, once its buffer is freed (head ``j -
    SLOTS``) and its partial-sum set snapshotted (head ``j - 2``: ``Ls + DRAIN + 1`` cycles
    after that head's last element); ``g`` is ready ``Ls + DRAIN + Lg + 2`` cycles after
    the head's last element; OUT takes ``n + 1`` cycles per head and the last result
    leaves ``Lm`` later (:meth:`stream_cycles`): heads of 64 stream at 64 cycles each,
    where one at a time took ``2*64 + Ls + DRAIN + Lg``.
    """

    #: head buffers (heads in flight)
    SLOTS = 8

    def __init__(self, *, head_dim: int = 64, P: int = 8, temperature: bool = True,
                 shared_functions: bool = False):
        self.length, self.P, self.temperature, self.lanes = head_dim, P, temperature, 1
        self.shared_functions = shared_functions
        #: the shared pipes the unit uses (``shared_functions``: module docstring)
        self.functions = (TREE, "rsqrt", "exp") if temperature else (TREE, "rsqrt")
        #: cycles an element spends in the load-phase datapath (square, accumulate)
        self.latency = self.latency_for(head_dim=head_dim, P=P, temperature=temperature)
        fl = float_layout(FP32)
        fields = {"x": fl, "t": fl} if temperature else {"x": fl}
        super().__init__({"i": In(stream.Signature(data.StructLayout(fields))),
                          "o": Out(stream.Signature(fl)),
                          **_function_members(self.functions, shared_functions, P)})

    @classmethod
    def check_params(cls, *, head_dim, P, temperature, shared_functions) -> None:
        _check_row_params("head_dim", head_dim, P, divides=True)

    @staticmethod
    def latency_for(*, head_dim: int = 64, P: int = 8, temperature: bool = True,
                    shared_functions: bool = False) -> int:
        """``latency`` without building the unit."""
        return FPOp.MUL.latency + PartialSums.DRAIN

    @staticmethod
    def stream_cycles(rows: int, n: int, *, sq: int, gain: int, drain: int, mul: int,
                      slots: int) -> int:
        """Cycles from the first element in to the last result out for ``rows`` heads of
        ``n`` elements, input and output never stalled: the class docstring's recursion
        from the pipelines' latencies (``sq``, ``gain`` = tree + max + rsqrt (+ temperature),
        ``drain`` = ``PartialSums.DRAIN``, ``mul``) and ``slots`` buffers."""
        if rows < 1 or n < 1:
            raise ValueError(f"rows and n must be >= 1, got {rows}, {n}")
        end1 = end2 = out = -(1 << 30)            # heads j-1, j-2: last element taken
        freed = [-(1 << 30)] * slots
        for j in range(rows):
            load = 0 if j == 0 else max(end1 + 1, freed[j % slots] + 1, end2 + sq + drain + 2)
            end = load + n - 1
            ready = end + sq + drain + gain + 2
            out = ready if j == 0 else max(ready, out + n + 1)
            freed[j % slots] = out + n
            end1, end2 = end, end1
        return out + n + mul + 1

    @classmethod
    def cycles_for(cls, rows: int, n: int = 64, P: int = 8, temperature: bool = True) -> int:
        """:meth:`stream_cycles` of this build."""
        sq, gain = cls.pipeline_cycles(P, temperature)
        return cls.stream_cycles(rows, n, sq=sq, gain=gain, drain=PartialSums.DRAIN,
                                 mul=FPOp.MUL.latency, slots=cls.SLOTS)

    @staticmethod
    def _gain(df: Dataflow, snap, t: Val | None) -> Val:
        gain = df.rsqrt(df.max(df.tree(snap), df.const(fp32_bits(1e-24))))
        if t is not None:
            gain = df.mul(gain, df.exp(df.min(t, df.const(fp32_bits(math.log(100.0))))))
        return gain

    @classmethod
    def pipeline_cycles(cls, P: int = 8, temperature: bool = True) -> tuple[int, int]:
        """``(latency(x*x), latency(gain))`` of the unit's pipelines (a dry Dataflow)."""
        df = Dataflow(None, None, dry=True)
        sq = df.mul(Val(Const(0, 32), 0), Val(Const(0, 32), 0)).stage
        t = Val(Const(0, 32), 0) if temperature else None
        return sq, cls._gain(df, [Const(0, 32)] * P, t).stage

    def elaborate(self, platform):
        from .fpu import FPUnit

        m = Module()
        n, P, S = self.length, self.P, self.SLOTS
        m.submodules.mul = mul = FPUnit(FPOp.MUL, FP32)
        wiring.connect(m, wiring.flipped(self.o), mul.o)
        rows = RowSlots(m, n, S, mul, shared=True)
        m.d.comb += [rows.end[j].eq(n - 1) for j in range(S)]
        row_t = Array(Signal(32, name=f"t{j}") for j in range(S))

        # ---- LOAD: x*x pipeline on accepted inputs into the head's partial-sum set
        ls = Signal(range(S))               # the buffer being loaded
        kl = Signal(range(n))
        par = Signal()                      # the head's partial-sum set
        sums = RowSums(m, P, S)
        x_in = self.i.payload.x.as_value()
        take, last = Signal(), Signal()
        first = Signal(init=1)              # kl == 0, as a register
        # i.ready is a register: next cycle's "the head's buffer is free and, at a row's
        # first element, its partial-sum set too", from the next values of the state (the
        # same cycles as the comb form; nothing combinational from the state to the port)
        ready = Signal(init=1)
        row_end = take & last
        ls_n, par_n = Mux(row_end, rows.next_slot(ls), ls), Mux(row_end, ~par, par)
        first_n = Mux(take, last, first)
        # (selected by the unit's o.ready last: rows.free_if_take / free_if_hold)
        busy_n = first_n & sums.busy_next.bit_select(par_n, 1)
        m.d.sync += ready.eq(Mux(rows.out_take, rows.free_if_take.bit_select(ls_n, 1),
                                 rows.free_if_hold.bit_select(ls_n, 1)) & ~busy_n)
        m.d.comb += [last.eq(kl == n - 1), self.i.ready.eq(ready),
                     take.eq(self.i.valid & self.i.ready)]
        df = Dataflow(m, Const(1), prefix="sq_", data_only=True)
        sq = df.mul(Val(x_in, 0), Val(x_in, 0))
        Ls = sq.stage
        tag = _tags(m, Cat(take, last, par, ls, kl), Ls)
        q_valid, q_last, q_par, q_slot = tag[0], tag[1], tag[2], tag[3:3 + len(ls)]
        q_idx = tag[3 + len(ls):]
        # the head's partials hold their sums DRAIN cycles after its last square: snapshot
        # them (and its t), clear the set; the gain pipeline runs on the snapshot
        s_go, s_slot = sums.issue(q_valid, q_last, q_par, q_slot, q_idx, df.at(sq, Ls))
        snap_t = Signal(32)
        with m.If(s_go):
            m.d.sync += snap_t.eq(row_t[s_slot])
        with m.If(take):
            m.d.sync += [kl.eq(kl + 1), first.eq(last)]
            with m.If(first):
                sums.take(par)
                if self.temperature:
                    m.d.sync += row_t[ls].eq(self.i.payload.t.as_value())
            with m.If(last):
                m.d.sync += [kl.eq(0), ls.eq(rows.next_slot(ls)), par.eq(~par)]
                m.d.comb += rows.clr_free.eq(Const(1, S) << ls)
            rows.write(ls, kl, x_in)
        rows.finish()

        ports = _function_ports(self, m)
        df2 = Dataflow(m, Const(1), prefix="tr_", data_only=True, ports=ports)
        gain = self._gain(df2, sums.snap, Val(snap_t, 0) if self.temperature else None)
        Lg = gain.stage
        g_tag = _tags(m, Cat(sums.snap_valid, sums.snap_slot), Lg)
        with m.If(g_tag[0]):
            rows.set_factor(g_tag[1:], df2.at(gain, Lg))
        _check_ports_driven(ports)
        return m


@hierarchical
class FDot(Checked, wiring.Component):
    """FP32 dot products of rows ended by ``last``, bit-exact to
    ``golden.attention.tree_last(a * b, P)`` = ``golden.vector.tree_sum(a*b, P)``.

    ``i``: stream of ``{a, b, last}`` (FP32; an FP16 operand is converted exactly before
    it gets here); ``o``: one FP32 sum per row, in row order.  Rows have any length
    >= 1 (element ``k`` of a row goes to partial ``k mod P``; unused partials stay
    +0.0, the golden padding).

    Timing: products one per cycle (multiplier latency ``FPOp.MUL.latency`` = 8) into
    :class:`PartialSums`; after a row's ``last`` the input pauses ``latency`` =
    ``FPOp.MUL.latency + PartialSums.DRAIN`` cycles while the partials settle, then the
    partials enter the pairwise adder tree (free-running, ``log2(P)`` adder latencies) and
    are cleared for the next row at once.  Sums wait in a small FIFO for ``o.ready``; the
    input is held while that FIFO could overflow.  Cycles per row of ``n`` elements:
    ``n + latency`` without stalls.
    """

    FIFO_DEPTH = 4
    #: the shared pipes the unit uses (``shared_functions``: module docstring)
    functions = (TREE,)

    def __init__(self, *, P: int = 8, shared_functions: bool = False):
        self.P, self.lanes = P, 1
        self.shared_functions = shared_functions
        self.latency = self.latency_for(P=P)
        fl = float_layout(FP32)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"a": fl, "b": fl, "last": 1}))),
            "o": Out(stream.Signature(fl)),
            **_function_members(self.functions, shared_functions, P),
        })

    @classmethod
    def check_params(cls, *, P, shared_functions) -> None:
        _check_P(P)

    @staticmethod
    def latency_for(*, P: int = 8, shared_functions: bool = False) -> int:
        """``latency`` without building the unit: product + accumulate, per element."""
        return FPOp.MUL.latency + PartialSums.DRAIN

    def elaborate(self, platform):
        from amaranth.lib.fifo import SyncFIFOBuffered

        m = Module()
        P = self.P
        ps = PartialSums(m, P, "sum_")
        k = Signal(range(P))     # element index in the row, mod P
        take = Signal()

        df = Dataflow(m, Const(1), prefix="prod_", data_only=True)
        prod = df.mul(Val(self.i.payload.a.as_value(), 0), Val(self.i.payload.b.as_value(), 0))
        Lp = prod.stage
        tag = _tags(m, Cat(take, k), Lp)
        m.d.comb += [ps.issue.eq(tag[0]), ps.part.eq(tag[1:]), ps.value.eq(df.at(prod, Lp))]

        # tree over the partials, free-running; a valid bit travels alongside
        snap = Signal()
        ports = _function_ports(self, m)
        df2 = Dataflow(m, Const(1), prefix="tr_", data_only=True, ports=ports)
        total = ps.tree(df2)
        Lt = total.stage
        _check_ports_driven(ports)
        t_valid = _tags(m, snap, Lt)

        m.submodules.fifo = fifo = SyncFIFOBuffered(width=32, depth=self.FIFO_DEPTH)
        m.d.comb += [fifo.w_data.eq(df2.at(total, Lt)), fifo.w_en.eq(t_valid),
                     self.o.valid.eq(fifo.r_rdy), self.o.payload.as_value().eq(fifo.r_data),
                     fifo.r_en.eq(self.o.ready)]
        # sums in the tree or in the FIFO; a new row's sum is started only when it fits
        pending = Signal(range(self.FIFO_DEPTH + 1))
        m.d.sync += pending.eq(pending + snap - (self.o.valid & self.o.ready))

        wait = Signal(range(Lp + PartialSums.DRAIN + 1))
        with m.FSM():
            with m.State("ACC"):
                m.d.comb += [self.i.ready.eq(1), take.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += k.eq(k + 1)
                    with m.If(self.i.payload.last):
                        m.d.sync += [k.eq(0), wait.eq(0)]
                        m.next = "DRAIN"
            with m.State("DRAIN"):        # the last products reach the partials
                with m.If(wait != Lp + PartialSums.DRAIN - 1):
                    m.d.sync += wait.eq(wait + 1)
                with m.Elif(pending < self.FIFO_DEPTH):
                    m.d.comb += [snap.eq(1), ps.clear.eq(1)]   # the tree samples, partials clear
                    m.next = "ACC"
        return m


@hierarchical
class Residual(wiring.Component):
    """``x + g*y`` in FP32 (unfused: the product is rounded, then the sum), bit-exact to
    ``golden.vector.gamma_residual(x, g, y)``.

    ``i``: stream of ``{x, g, y}`` (FP32); ``o``: FP32.  Latency ``self.latency`` (the
    multiplier's then the adder's pipeline, 15 cycles), initiation interval 1; the
    pipeline holds while ``o.valid & ~o.ready``.
    """

    def __init__(self):
        self.lanes = 1
        self.latency = self.latency_for()
        fl = float_layout(FP32)
        super().__init__({"i": In(stream.Signature(data.StructLayout({"x": fl, "g": fl, "y": fl}))),
                          "o": Out(stream.Signature(fl))})

    @staticmethod
    def latency_for() -> int:
        """``latency`` without building the unit (a dry :class:`Dataflow` of ``x + g*y``)."""
        return Residual._schedule(Dataflow(None, None, dry=True), Const(0, 32), Const(0, 32),
                                  Const(0, 32)).stage

    @staticmethod
    def _schedule(df: Dataflow, x: Value, g: Value, y: Value) -> Val:
        return df.add(Val(x, 0), df.mul(Val(g, 0), Val(y, 0)))

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        df = Dataflow(m, en, prefix="res_", data_only=True)
        p = self.i.payload
        res = self._schedule(df, p.x.as_value(), p.g.as_value(), p.y.as_value())
        assert res.stage == self.latency
        valid = Signal(self.latency)
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        m.d.comb += [self.o.valid.eq(valid[-1]), self.o.payload.as_value().eq(df.at(res, res.stage))]
        return m
