"""Group dot-product unit: exact integer group sums, FP32 scaling and accumulation.

Arithmetic (``docs/numerics.md`` section 3, "Products and group accumulation", golden model
``fpqvar_quant.golden.dot``): per group of ``G`` elements the exact code
products (:mod:`fpqvar_hw.units.multiplier`) are summed exactly by a registered
adder tree into the integer ``S``; the group result is
``g = RNE_fp32(S * 2^L * s_a * s_w)`` (one rounding, :func:`_scaled` then a ``RoundPackPipe``);
the dot product is ``acc = RNE_fp32(acc + g)`` over its groups in order,
starting from +0.0.  DFQ activations give two integer sums (positive grid
e2m1fn x e2m1fn, units 2^-2; negative grid e1m2fn x e2m1fn, units 2^-3) and
``g = RNE(RNE(S_pos * t_pos) + RNE(S_neg * t_neg))``.

Dual-mode cell (``dual=True``, the matrix engine's cell): a DFQ unit whose
beats carry a ``plain`` bit.  ``plain = 1`` reads the activation codes as
signed e2m1fn (the DFQ code's ``neg`` bit is the e2m1 sign bit): every lane
feeds the e2m1 x e2m1 half with its sign, the negative-grid half contributes
+0 (its products are gated off and its group result is not added:
``g = RNE(S_pos * t_pos)``), so the result is bit for bit the plain e2m1fn
dot product.  ``plain = 0`` is the DFQ unit above.

:class:`GroupDotV2` (dot cell v2) computes the same per-dot-product result
with one whole group per beat, a pipelined FP32 tail and interleaved dot
products (each has its own accumulator; the order within one is unchanged).

Special values: NaN/Inf scales propagate by IEEE rules (a quantizer's error
group carries the FP16 NaN scale 0x7E00, so its dot product reads NaN); the
output NaN is always ``0x7FC00000``.  The integer path cannot overflow (widths
are derived from the largest product); FP32 overflow would give +-Inf.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from . import fpu
from .fpu import FP16, FP32, float_layout, unrounded_layout
from .multiplier import MagnitudeCore, Multiplier, MulPair, MulVariant, check_variant, code_layout
from ..checked import Checked
from ..emit import hierarchical

__all__ = ["GroupDot", "GroupDotV2", "dfq_code_layout", "sum_width"]

_MAX_SUM = 1 << 24   # |S| < 2^24 keeps S * 2^L exact in FP32 (numerics contract)


def dfq_code_layout() -> data.StructLayout:
    """DFQ-FP4 activation code: ``neg`` = 1 selects the e1m2fn grid (negative value)."""
    return data.StructLayout({"mag": 3, "neg": 1})


def sum_width(max_abs: int) -> int:
    """Two's complement width holding every integer in ``[-max_abs, max_abs]``."""
    return max_abs.bit_length() + 1


def _halves(pair: MulPair, dfq: bool) -> list[tuple[MulPair, str]]:
    """The (pair, tag) of each adder tree: DFQ's positive and negative grids, else one."""
    return [(MulPair.E2M1_E2M1, "pos"), (MulPair.E1M2_E2M1, "neg")] if dfq else [(pair, "all")]


def _tree_stages(lanes: int, levels_per_stage: int) -> int:
    """Register stages of an adder tree over ``lanes`` leaves, one every ``levels_per_stage``
    levels (at least one)."""
    return max(1, -(-((lanes - 1).bit_length()) // levels_per_stage))


def _check_group_sums(pair: MulPair, group_size: int, variant: MulVariant, dfq: bool) -> None:
    """Each half's group sum fits FP32 exactly and ``variant`` implements its pair."""
    for p, _ in _halves(pair, dfq):
        if p.max_abs * group_size >= _MAX_SUM:
            raise ValueError(f"group_size {group_size} lets a {p.name} group sum reach 2^24, "
                             "which FP32 cannot hold exactly; use a smaller group_size")
        check_variant(p, variant)


@hierarchical
class GroupDot(Checked, wiring.Component):
    """Streaming group dot product of activation and weight codes.

    Ports
    -----
    ``i``: stream of beats, ``StructLayout``:
      ``a``: ``lanes`` activation codes (:func:`~fpqvar_hw.units.multiplier.code_layout`
      of ``pair.fmt_a``, or :func:`dfq_code_layout` with ``dfq=True``);
      ``w``: ``lanes`` weight codes; ``s_a``, ``s_w`` (and ``s_a_neg`` with DFQ):
      FP16 group scales; ``last``: this group ends the dot product.
      A group is ``group_size / lanes`` consecutive beats; the scales and
      ``last`` are read on a group's final beat only (ignored on the others).
    ``o``: stream of FP32 results (``float_layout(FP32)``), one per dot product.

    Interleave: with ``interleave = D > 1`` the cell holds ``D`` dot products at once:
    group ``n`` (counting accepted groups from reset) belongs to slot ``n mod D``, each
    slot accumulates its own dot product in group order from +0.0 and restarts after
    its ``last`` group; results leave in the order of their ``last`` groups (the feeder
    interleaves rows or features; ``D = 1``: one dot product after another).

    Timing: initiation interval 1 (one beat per cycle) within a group; a group's
    final beat is taken no earlier than ``ceil(LOOP / D)`` cycles after the previous
    group's, so that a slot's groups are at least ``LOOP`` cycles apart (the
    accumulator loop, below): groups start at most every ``group_interval =
    max(group_size / lanes, ceil(LOOP / D))`` cycles (no loss once ``D * group_size /
    lanes >= LOOP``, :meth:`interleave_for`); ``latency`` cycles from the handshake
    of a dot product's final beat to its ``o.valid``.  Stall: the whole pipeline
    holds while ``o.valid & ~o.ready``; ``i.ready = (~o.valid | o.ready) & (not a
    group's final beat, or the spacing has passed)``; ``o.valid`` never depends on
    ``o.ready``.

    Pipeline (every step registered, a few logic levels each): product registers
    (:func:`_leaves`: float ``LUT`` lanes register ``|p|`` from one truth table and the
    product's sign, DFQ one magnitude per grid, cleared on the lanes of the other grid;
    no per-product negation); the adder tree of flagged nodes (:func:`_flag_tree`, one
    LUT per sum bit) registered every ``levels_per_stage`` levels; the group-sum
    register (adds the beats of a multi-beat group, the root's sign as a carry-in:
    :func:`_add_flagged`); then the FP32 tail
    shared with :class:`GroupDotV2` (:func:`_fp32_tail`): ``|S| * sig_a * sig_w``
    in three steps (DSP48E2 with M and P registers), a ``RoundPackPipe`` per half,
    (DFQ: the halves' ``AddPipe``), and the accumulator loop (read register,
    ``AddPipe``, write back; ``LOOP`` = 9 cycles), kept in order by spacing the
    groups and interleaving ``D`` dot products (:class:`GroupDotV2` takes one whole
    group per cycle and interleaves at least ``LOOP``).

    Parameters (keyword-only): ``pair`` (:class:`MulPair`), ``group_size`` (G),
    ``lanes`` (must divide G), ``variant`` (:class:`MulVariant`), ``dfq``
    (DFQ-FP4 activations; needs ``pair=MulPair.E2M1_E2M1``), ``dual`` (adds the
    per-beat ``plain`` mode bit to a DFQ unit; same latency), ``interleave`` (slots,
    default 1), ``levels_per_stage``, ``share``.

    Shared tail (``share = Q > 1``): ``Q`` dot products of the same activations against
    ``Q`` weight columns in one cell (``w`` and ``s_w`` are arrays of ``Q``, ``o`` an
    array of ``Q`` results that leave together): ``Q`` integer front ends (products,
    trees, group sums) and one FP32 tail.  A group's ``Q`` exact sums are held and
    enter the tail one per cycle (column ``q`` in cycle ``q``; the accumulators are
    per column and slot), so the tail, otherwise busy one cycle in ``group_interval``,
    serves them all; ``Q <= group_interval``.  Every column's result is bit for bit the
    ``Q = 1`` cell's (the same operations in the same order); the latency grows by
    ``Q + 2`` (hold, serialise, the last column's turn, the output register).
    """

    def __init__(self, *, pair: MulPair = MulPair.E2M1_E2M1, group_size: int = 128,
                 lanes: int = 128, variant: MulVariant = MulVariant.LUT, dfq: bool = False,
                 dual: bool = False, interleave: int = 1, levels_per_stage: int = 2,
                 share: int = 1):
        self._halves = _halves(pair, dfq)
        self.interleave, self.share = interleave, share
        self.pair, self.variant, self.dfq, self.dual = pair, variant, dfq, dual
        self.group_size, self.lanes, self.levels_per_stage = group_size, lanes, levels_per_stage
        self.beats_per_group = group_size // lanes
        self.tree_levels = (lanes - 1).bit_length()
        self.tree_stages = _tree_stages(lanes, levels_per_stage)
        #: cycles of the accumulator's read-add-write loop
        self.LOOP = _loop_length()
        #: cycles between the first beats of consecutive groups at full rate
        self.group_interval = self.group_interval_for(group_size=group_size, lanes=lanes,
                                                      interleave=interleave)
        #: cycles from the final beat's handshake to ``o.valid``
        self.latency = self.latency_for(pair=pair, group_size=group_size, lanes=lanes,
                                        variant=variant, dfq=dfq, dual=dual,
                                        levels_per_stage=levels_per_stage, share=share)
        a_code = dfq_code_layout() if dfq else code_layout(pair.fmt_a)
        w_codes = data.ArrayLayout(code_layout(pair.fmt_b), lanes)
        fields = {"a": data.ArrayLayout(a_code, lanes),
                  "w": w_codes if share == 1 else data.ArrayLayout(w_codes, share),
                  "s_a": float_layout(FP16),
                  "s_w": float_layout(FP16) if share == 1
                  else data.ArrayLayout(float_layout(FP16), share), "last": 1}
        if dfq:
            fields["s_a_neg"] = float_layout(FP16)
        if dual:
            fields["plain"] = 1
        self.beat_layout = data.StructLayout(fields)
        out = float_layout(FP32) if share == 1 else data.ArrayLayout(float_layout(FP32), share)
        super().__init__({
            "i": In(stream.Signature(self.beat_layout)),
            "o": Out(stream.Signature(out)),
        })

    @classmethod
    def check_params(cls, *, pair, group_size, lanes, variant, dfq, dual, interleave,
                     levels_per_stage, share=1) -> None:
        if not isinstance(pair, MulPair):
            raise TypeError(f"pair must be a MulPair, got {pair!r}")
        if not isinstance(variant, MulVariant):
            raise TypeError(f"variant must be a MulVariant, got {variant!r}")
        for name, v in (("group_size", group_size), ("lanes", lanes),
                        ("interleave", interleave), ("levels_per_stage", levels_per_stage)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if group_size % lanes:
            raise ValueError(f"lanes must divide group_size {group_size}, got {lanes}")
        if dfq and pair is not MulPair.E2M1_E2M1:
            raise ValueError("dfq=True takes e2m1fn weights: use pair=MulPair.E2M1_E2M1")
        if dual and not dfq:
            raise ValueError("dual=True is a DFQ unit with a plain e2m1fn mode: set dfq=True too")
        _check_group_sums(pair, group_size, variant, dfq)
        if not isinstance(share, int) or share < 1:
            raise ValueError(f"share must be a positive integer, got {share!r}")
        gi = cls.group_interval_for(group_size=group_size, lanes=lanes, interleave=interleave)
        if share > gi:
            raise ValueError(f"share ({share}) must not exceed the group interval ({gi} "
                             "cycles): the tail takes one column per cycle")

    @staticmethod
    def latency_for(*, pair: MulPair = MulPair.E2M1_E2M1, group_size: int = 128,
                    lanes: int = 128, variant: MulVariant = MulVariant.LUT, dfq: bool = False,
                    dual: bool = False, interleave: int = 1, levels_per_stage: int = 2,
                    share: int = 1) -> int:
        """Cycles from the final beat's handshake to ``o.valid`` (without building):
        products, tree stages, group sum, then the FP32 tail: scale decode, M, P,
        rounding (DFQ: the add of the halves), loop read, loop add; a shared tail
        (``share > 1``) adds the hold and serialiser registers, the last column's turn
        and the output register."""
        shared = share + 2 if share > 1 else 0
        return 1 + _tree_stages(lanes, levels_per_stage) + 1 + _tail_latency(dfq) + shared

    @staticmethod
    def group_interval_for(*, group_size: int = 128, lanes: int = 128, interleave: int = 1) -> int:
        """Fewest cycles between the starts of consecutive groups (without building): the
        group's beats, or the accumulator loop's share per slot when it is longer."""
        return max(group_size // lanes, -(-_loop_length() // interleave))

    @staticmethod
    def interleave_for(*, group_size: int = 128, lanes: int = 128) -> int:
        """The fewest slots at which groups come every ``group_size / lanes`` beats."""
        return -(-_loop_length() // (group_size // lanes))

    def manifest(self) -> dict:
        """Timing for the throughput model (:func:`fpqvar_hw.flow.perf.unit_timings`):
        ``latency``, ``ii`` (cycles per beat) and ``item_interval`` (cycles per group)."""
        return {"latency": self.latency, "ii": 1, "item_interval": self.group_interval,
                "latency_source": "GroupDot.latency_for"}

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready

        def reg(value, name, shape=None, reset_less=False):
            r = Signal(shape if shape is not None else value.shape(), name=name,
                       reset_less=reset_less)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        # ---- beat counter: which beat of its group the input beat is
        bpg = self.beats_per_group
        grp_end_in = Signal()
        if bpg == 1:
            m.d.comb += grp_end_in.eq(1)
        else:
            # grp_end_in is a register (beat == bpg - 1 kept alongside the counter), so
            # i.ready is one LUT from registers and o.ready
            beat = Signal(range(bpg))
            with m.If(self.i.valid & self.i.ready):
                m.d.sync += [beat.eq(beat + 1), grp_end_in.eq(beat == bpg - 2)]
                with m.If(grp_end_in):
                    m.d.sync += [beat.eq(0), grp_end_in.eq(0)]

        # ---- group spacing: the accumulator loop is LOOP cycles long; a group's last beat
        #      is taken no earlier than gap = ceil(LOOP / D) enabled cycles after the
        #      previous group's, so a slot's groups (D apart) are >= LOOP cycles apart
        #      (every stage after the input moves on the same enable, so the spacing holds
        #      at the accumulator); `since` counts enabled cycles, saturating at gap - 1
        D = self.interleave
        gap = -(-self.LOOP // D)
        grp_take = Signal()
        if gap > 1:
            since = Signal(range(gap), init=gap - 1)
            spaced = Signal(init=1)             # since == gap - 1, as a register
            m.d.comb += self.i.ready.eq(en & (~grp_end_in | spaced))
            with m.If(en):
                with m.If(grp_take):
                    m.d.sync += [since.eq(0), spaced.eq(0)]
                with m.Elif(~spaced):
                    m.d.sync += [since.eq(since + 1), spaced.eq(since == gap - 2)]
        else:
            m.d.comb += self.i.ready.eq(en)
        m.d.comb += grp_take.eq(self.i.valid & self.i.ready & grp_end_in)
        if D > 1:
            slot_in = Signal(range(D))      # slot of the group being taken
            with m.If(grp_take):
                m.d.sync += slot_in.eq(Mux(slot_in + 1 == D, 0, slot_in + 1))

        # ---- control word carried alongside the integer datapath
        x = self.i.payload
        Q = self.share
        s_ws = [x.s_w] if Q == 1 else [x.s_w[q] for q in range(Q)]
        ws = [x.w] if Q == 1 else [x.w[q] for q in range(Q)]
        scales = [x.s_a] + s_ws + ([x.s_a_neg] if self.dfq else [])
        ctrl_layout = data.StructLayout({"valid": 1, "grp_end": 1, "last": 1, "plain": 1,
                                         **({"slot": range(D)} if D > 1 else {}),
                                         "scales": data.ArrayLayout(16, len(scales))})
        ctrl_in = Signal(ctrl_layout)
        plain = x.plain if self.dual else Const(0)
        m.d.comb += [ctrl_in.valid.eq(self.i.valid & self.i.ready),     # taken beats only
                     ctrl_in.grp_end.eq(grp_end_in),
                     ctrl_in.last.eq(x.last), ctrl_in.plain.eq(plain)]
        m.d.comb += [ctrl_in.scales[k].eq(s) for k, s in enumerate(scales)]
        if D > 1:
            m.d.comb += ctrl_in.slot.eq(slot_in)
        ctrl = reg(ctrl_in, "ctrl_p")

        # ---- products (stage 1) and adder trees, one set per column
        fronts = []
        for q in range(Q):
            pre = "" if Q == 1 else f"c{q}_"
            halves = _leaves(m, x.a, ws[q], self._halves, self.lanes, self.variant, self.dfq,
                             reg, plain=plain if self.dual else None, prefix=pre)
            fronts.append([(_flag_tree(m, leaves, pre + tag, reg, self.levels_per_stage), pair)
                           for leaves, (pair, tag) in zip(halves, self._halves)])
        # all trees have the same depth, so one control shift register serves them
        for k in range(self.tree_stages):
            ctrl = reg(ctrl, f"ctrl_t{k}")

        # ---- group-sum register: exact S over the beats of a group (the tree's root
        #      (r, f) is worth f ? -r : r; its sign folds into the add as a carry-in)
        group_sums = []         # per column: [(S, pair) per half]
        for q, sums in enumerate(fronts):
            pre = "" if Q == 1 else f"c{q}_"
            col = []
            for (r, f, _), pair in sums:
                width = sum_width(pair.max_abs * self.group_size)
                S = Signal(signed(width), name=f"{pre}S_{pair.name}")
                if bpg == 1:
                    with m.If(en):
                        m.d.sync += S.eq(_add_flagged(m, Const(0, signed(width)), r, f, width,
                                                      f"{pre}tree_{pair.name}"))
                else:
                    part = Signal(signed(width), name=f"{pre}part_{pair.name}")
                    total = _add_flagged(m, part, r, f, width, f"{pre}total_{pair.name}")
                    with m.If(en & ctrl.valid):
                        m.d.sync += [S.eq(total), part.eq(total)]
                        with m.If(ctrl.grp_end):
                            m.d.sync += part.eq(0)
                col.append((S, pair))
            group_sums.append(col)
        ctrl_in_s = Signal(ctrl_layout)
        m.d.comb += [ctrl_in_s.eq(ctrl), ctrl_in_s.valid.eq(ctrl.valid & ctrl.grp_end)]
        ctrl = reg(ctrl_in_s, "ctrl_s")

        # ---- FP32 tail (shared with GroupDotV2): S * 2^L * s_a * s_w in three registered
        #      steps, a RoundPackPipe per half, (DFQ) the halves' AddPipe, the accumulator loop
        if Q == 1:
            _fp32_tail(m, [(S, Const(0, 1), pair) for S, pair in group_sums[0]], ctrl, self.o,
                       en=en, reg=reg, dual=self.dual, slots=D)
        else:
            self._shared_tail(m, group_sums, ctrl, en, reg)
        return m

    def _shared_tail(self, m: Module, group_sums, ctrl, en, reg) -> None:
        """``share`` columns through one FP32 tail: a completed group's sums are held,
        then column ``q`` enters the tail ``q + 1`` cycles later (accumulator slot
        ``slot * Q + q``); the results are gathered and leave together."""
        Q, D, dfq = self.share, self.interleave, self.dfq
        hold = [[Signal(signed(len(S)), name=f"hold{q}_{h}") for h, (S, _) in enumerate(col)]
                for q, col in enumerate(group_sums)]
        hold_ctrl = Signal(ctrl.shape(), name="hold_ctrl")
        ser_on, ser_k = Signal(name="ser_on"), Signal(range(Q), name="ser_k")
        with m.If(en):
            with m.If(ctrl.valid):              # a group completed: hold every column
                m.d.sync += [hold[q][h].eq(S) for q, col in enumerate(group_sums)
                             for h, (S, _) in enumerate(col)]
                m.d.sync += [hold_ctrl.eq(ctrl), ser_on.eq(1), ser_k.eq(0)]
            with m.Elif(ser_on):
                m.d.sync += ser_k.eq(ser_k + 1)
                with m.If(ser_k == Q - 1):
                    m.d.sync += ser_on.eq(0)
        # the serialised control word and sums, registered (the tail starts from registers)
        n_sc = 3 if dfq else 2
        ser_layout = data.StructLayout({"valid": 1, "last": 1, "plain": 1,
                                        "slot": range(D * Q),
                                        "scales": data.ArrayLayout(16, n_sc)})
        ser_in = Signal(ser_layout)
        m.d.comb += [ser_in.valid.eq(ser_on), ser_in.last.eq(hold_ctrl.last),
                     ser_in.plain.eq(hold_ctrl.plain),
                     ser_in.slot.eq((hold_ctrl.slot * Q + ser_k) if D > 1 else ser_k),
                     ser_in.scales[0].eq(hold_ctrl.scales[0]),
                     ser_in.scales[1].eq(Array(hold_ctrl.scales[1 + q] for q in range(Q))[ser_k])]
        if dfq:
            m.d.comb += ser_in.scales[2].eq(hold_ctrl.scales[1 + Q])
        ser = reg(ser_in, "ser_ctrl")
        sums = []
        for h, (S0, pair) in enumerate(group_sums[0]):
            S = reg(Array(hold[q][h] for q in range(Q))[ser_k], f"ser_S{h}", signed(len(S0)))
            sums.append((S, Const(0, 1), pair))
        # the tail's results, one column per cycle, into the output registers
        inner = stream.Signature(float_layout(FP32)).create(path=("col",))   # ready unused
        _fp32_tail(m, sums, ser, inner, en=en, reg=reg, dual=self.dual, slots=D * Q)
        o_valid = Signal(name="o_valid_r")
        res = [Signal(32, name=f"res{q}") for q in range(Q)]
        out_k = Signal(range(Q), name="out_k")
        with m.If(en):
            m.d.sync += o_valid.eq(inner.valid & (out_k == Q - 1))
            with m.If(inner.valid):
                m.d.sync += [Array(res)[out_k].eq(inner.payload.as_value()),
                             out_k.eq(Mux(out_k == Q - 1, 0, out_k + 1))]
        m.d.comb += [self.o.valid.eq(o_valid)] + [self.o.payload[q].as_value().eq(res[q])
                                                   for q in range(Q)]



class GroupDotV2(Checked, wiring.Component):
    """Pipelined group dot cell: one whole group per cycle, interleaved outputs.

    Same arithmetic as :class:`GroupDot` (``docs/numerics.md`` section 3, golden
    model ``fpqvar_quant.golden.dot``), bit for bit, with ``lanes = group_size``
    (one group per beat) and ``interleave`` independent dot products (rows or
    features) sharing the cell so that the FP32 accumulation, a loop-carried
    read-add-round-write, can be pipelined without changing its order.

    Ports
    -----
    ``i``: stream of groups, ``StructLayout``: ``a`` (``group_size`` activation
    codes, :func:`~fpqvar_hw.units.multiplier.code_layout` of ``pair.fmt_a`` or
    :func:`dfq_code_layout` with ``dfq=True``), ``w`` (weight codes), ``s_a``,
    ``s_w`` (and ``s_a_neg`` with DFQ): the group's FP16 scales, ``last``: this
    group ends its dot product.  Beat ``n`` (counting accepted beats from reset)
    belongs to interleave slot ``n mod interleave``; each slot accumulates its
    own dot product, ``acc = RNE_fp32(acc + g)`` from +0.0 over that slot's
    groups in arrival order, and restarts at +0.0 after a ``last`` group.
    ``o``: stream of FP32 results (``float_layout(FP32)``), one per ``last``
    group, in the order of those groups.

    Timing: initiation interval 1; ``latency`` cycles from a ``last`` group's
    handshake to its ``o.valid``.  Stall: the whole pipeline (interleave
    counter, accumulators and the FP32 pipelines, whose registers are enabled by
    the same signal) holds while ``o.valid & ~o.ready``; ``i.ready = ~o.valid |
    o.ready``; ``o.valid`` never depends on ``o.ready``.  Idle input cycles are
    bubbles that leave every accumulator unchanged.

    Pipeline (one register after each step): products (float LUT lanes: ``|p|``
    from one truth table and the product's sign; DFQ: a positive- and a
    negative-grid ``|p|``, the grid bit clearing the other; int4 LUT, DSP and
    DECOMPOSED lanes: the signed product, :func:`_leaves`); the adder tree of
    flagged nodes (:func:`_flag_tree`: no per-product negation, one LUT per sum
    bit), registered every ``levels_per_stage`` levels (the root always); ``|S|``, scale decode and
    ``sig_a * sig_w``; ``|S| * (sig_a * sig_w)`` (two registers: the DSP48E2 M
    and P registers); rounding in a :class:`~fpqvar_hw.units.fpu.RoundPackPipe`
    per half (DFQ: then ``RNE(S_pos t_pos) + RNE(S_neg t_neg)`` in an
    :class:`~fpqvar_hw.units.fpu.AddPipe`); then the accumulator loop: read the
    slot's partial sum (register), an ``AddPipe`` and the write back.  The loop
    is ``LOOP = AddPipe latency + 2`` cycles long, so ``interleave`` must be at
    least ``LOOP``: a slot's next group reaches the read stage no earlier than
    ``interleave`` cycles after its previous one and reads the written-back sum.

    Parameters (keyword-only): ``pair`` (:class:`MulPair`), ``group_size``
    (= lanes), ``variant`` (:class:`MulVariant`), ``dfq`` (needs
    ``pair=MulPair.E2M1_E2M1``), ``interleave`` (>= ``LOOP``; default ``LOOP``),
    ``levels_per_stage`` (adder-tree levels between registers).
    NaN/Inf policy as :class:`GroupDot` (canonical NaN ``0x7FC00000``).

    With the ``fpu`` pipelines of this writing (``AddPipe`` 7 cycles, ``RoundPackPipe``
    4) ``LOOP`` is 9 and a 128-lane cell with the default 2 levels per stage has a
    latency of 1 + 4 + 3 + 4 + 1 + 7 = 20 cycles (DFQ: 27).
    """

    def __init__(self, *, pair: MulPair = MulPair.E2M1_E2M1, group_size: int = 128,
                 variant: MulVariant = MulVariant.LUT, dfq: bool = False,
                 interleave: "int | None" = None, levels_per_stage: int = 2):
        self._halves = _halves(pair, dfq)
        #: cycles of the accumulator's read-add-write loop (the smallest interleave)
        self.LOOP = self.loop_length()
        if interleave is None:
            interleave = self.LOOP
        self.pair, self.variant, self.dfq = pair, variant, dfq
        self.group_size = self.lanes = group_size
        self.interleave, self.levels_per_stage = interleave, levels_per_stage
        self.tree_levels = (group_size - 1).bit_length()
        self.tree_stages = _tree_stages(group_size, levels_per_stage)
        #: cycles from a ``last`` group's handshake to its ``o.valid``
        self.latency = self.latency_for(pair=pair, group_size=group_size, variant=variant,
                                        dfq=dfq, interleave=interleave,
                                        levels_per_stage=levels_per_stage)
        a_code = dfq_code_layout() if dfq else code_layout(pair.fmt_a)
        fields = {"a": data.ArrayLayout(a_code, group_size),
                  "w": data.ArrayLayout(code_layout(pair.fmt_b), group_size),
                  "s_a": float_layout(FP16), "s_w": float_layout(FP16), "last": 1}
        if dfq:
            fields["s_a_neg"] = float_layout(FP16)
        self.beat_layout = data.StructLayout(fields)
        super().__init__({
            "i": In(stream.Signature(self.beat_layout)),
            "o": Out(stream.Signature(float_layout(FP32))),
        })

    @classmethod
    def check_params(cls, *, pair, group_size, variant, dfq, interleave,
                     levels_per_stage) -> None:
        if not isinstance(pair, MulPair):
            raise TypeError(f"pair must be a MulPair, got {pair!r}")
        if not isinstance(variant, MulVariant):
            raise TypeError(f"variant must be a MulVariant, got {variant!r}")
        for name, v in (("group_size", group_size), ("levels_per_stage", levels_per_stage)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if dfq and pair is not MulPair.E2M1_E2M1:
            raise ValueError("dfq=True takes e2m1fn weights: use pair=MulPair.E2M1_E2M1")
        _check_group_sums(pair, group_size, variant, dfq)
        loop = cls.loop_length()
        if interleave is not None and (not isinstance(interleave, int) or interleave < loop):
            raise ValueError(f"interleave must be an integer >= {loop} (the accumulator "
                             f"loop is {loop} cycles), got {interleave!r}")

    @staticmethod
    def latency_for(*, pair: MulPair = MulPair.E2M1_E2M1, group_size: int = 128,
                    variant: MulVariant = MulVariant.LUT, dfq: bool = False,
                    interleave: "int | None" = None, levels_per_stage: int = 2) -> int:
        """Cycles from a ``last`` group's handshake to its ``o.valid`` (without building):
        products, tree, scale decode, M, P, rounding (DFQ: the add of the halves), loop
        read, loop add."""
        return 1 + _tree_stages(group_size, levels_per_stage) + _tail_latency(dfq)

    @staticmethod
    def loop_length() -> int:
        """Cycles of the accumulator loop: read register, ``AddPipe``, write back."""
        return _loop_length()

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)

        def reg(value, name, shape=None, reset_less=False):
            r = Signal(shape if shape is not None else value.shape(), name=name,
                       reset_less=reset_less)
            with m.If(en):
                m.d.sync += r.eq(value)
            return r

        # ---- interleave slot of the input group: accepted beats modulo interleave
        D = self.interleave
        slot_in = Signal(range(D))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += slot_in.eq(Mux(slot_in == D - 1, 0, slot_in + 1))

        x = self.i.payload
        scales = [x.s_a, x.s_w] + ([x.s_a_neg] if self.dfq else [])
        ctrl_layout = data.StructLayout({"valid": 1, "last": 1, "slot": range(D),
                                         "scales": data.ArrayLayout(16, len(scales))})
        ctrl_in = Signal(ctrl_layout)
        m.d.comb += [ctrl_in.valid.eq(self.i.valid), ctrl_in.last.eq(x.last),
                     ctrl_in.slot.eq(slot_in)]
        m.d.comb += [ctrl_in.scales[k].eq(s) for k, s in enumerate(scales)]
        ctrl = reg(ctrl_in, "ctrl_p")

        # ---- products and adder trees: the exact group sums S = f ? -r : r
        halves = _leaves(m, x.a, x.w, self._halves, self.lanes, self.variant, self.dfq, reg)
        roots = [_flag_tree(m, leaves, tag, reg, self.levels_per_stage)
                 for leaves, (_, tag) in zip(halves, self._halves)]
        for k in range(self.tree_stages):
            ctrl = reg(ctrl, f"ctrl_t{k}")

        _fp32_tail(m, [(r, f, pair) for (r, f, _), (pair, _) in zip(roots, self._halves)],
                   ctrl, self.o, en=en, reg=reg, dual=False, slots=D)
        return m


def _loop_length() -> int:
    """Cycles of the accumulator loop: read register, ``AddPipe``, write back."""
    return fpu.AddPipe.latency_for(fmt=FP32) + 2


def _tail_latency(dfq: bool) -> int:
    """Cycles of :func:`_fp32_tail` from its exact group sums to ``o.valid``."""
    add, round_ = fpu.AddPipe.latency_for(fmt=FP32), fpu.RoundPackPipe.latency_for()
    return 3 + round_ + (add if dfq else 0) + 1 + add


def _fp32_tail(m: Module, sums, ctrl, o, *, en, reg, dual: bool, slots: int) -> None:
    """The dot cells' FP32 tail, from exact group sums to the ``o`` stream.

    ``sums``: per half ``(r, f, pair)``, the group sum ``S = f ? -r : r`` (registered);
    ``ctrl`` (registered alongside): ``valid`` (a group to accumulate), ``last``,
    ``scales`` (``s_a``, ``s_w``, DFQ: ``s_a_neg``), ``plain`` (``dual``), ``slot``
    (``slots > 1``).  Every register moves on ``en``.  Stages: ``S * 2^L * s_a * s_w``
    exact in three steps (:func:`_scaled`), a ``RoundPackPipe`` per half; DFQ: the halves'
    ``AddPipe`` (``dual``: ``plain`` takes the positive half, delayed alongside, instead);
    then the accumulator loop: read the slot's partial sum (register), ``AddPipe``, write
    back (``+0.0`` after a ``last`` group).  A slot's next group must reach the read stage
    no earlier than :func:`_loop_length` cycles after its previous one (V2: ``slots``
    interleaved dot products; V1: its input throttle)."""
    add_latency, round_latency = fpu.AddPipe.latency_for(fmt=FP32), fpu.RoundPackPipe.latency_for()

    def delay(value, n, name):
        for k in range(n):
            value = reg(value, f"{name}{k}")
        return value

    def pipe(name, unit, latency, **ports):
        assert unit.latency == latency, f"{name}: latency changed since construction"
        m.submodules[name] = unit
        m.d.comb += unit.en.eq(en)
        m.d.comb += [getattr(unit, k).eq(v) for k, v in ports.items()]
        return unit.o.as_value()

    # ---- S * 2^L * s_a * s_w, exact, in three registered steps (the DSP48E2's A/B
    #      inputs, M and P registers), then rounded in a RoundPackPipe
    s_w = ctrl.scales[1]
    g_parts = []
    for k, (r, f, pair) in enumerate(sums):
        s_a = ctrl.scales[2] if k == 1 else ctrl.scales[0]   # DFQ: k = 1 negative grid
        u = _scaled(m, r, f, s_a, s_w, pair.lsb_exp, f"h{k}", reg)
        rp = fpu.RoundPackPipe(FP32, sig_bits=len(u.sig), exp_bits=len(u.exp))
        g_parts.append(pipe(f"round{k}", rp, round_latency, i=u))
    ctrl = delay(ctrl, 3 + round_latency, "ctrl_f")
    if len(g_parts) == 2:       # DFQ: RNE(S_pos t_pos) + RNE(S_neg t_neg)
        g = pipe("dfq_add", fpu.AddPipe(FP32), add_latency, a=g_parts[0], b=g_parts[1])
        ctrl = delay(ctrl, add_latency, "ctrl_d")
        if dual:                # plain e2m1fn mode: the positive half alone
            g = Mux(ctrl.plain, delay(g_parts[0], add_latency, "g_plain"), g)
    else:
        g = g_parts[0]

    # ---- accumulator loop: read the slot's partial sum (register), add in the
    #      AddPipe, write back
    if slots == 1:
        acc = Signal(32, name="acc")
        acc_sel = acc
    else:
        acc = Array(Signal(32, name=f"acc{k}") for k in range(slots))
        acc_sel = acc[ctrl.slot]
    acc_rd = reg(acc_sel, "acc_rd", 32)
    g_rd = reg(g, "g_rd", 32)
    ctrl = reg(ctrl, "ctrl_rd")
    acc_next = pipe("acc_add", fpu.AddPipe(FP32), add_latency, a=acc_rd, b=g_rd)
    # o.valid straight from a register (valid & last travel as one bit), so the cell's
    # i.ready is one LUT from registers and o.ready
    out_valid = delay(ctrl.valid & ctrl.last, add_latency, "ovalid")
    ctrl = delay(ctrl, add_latency, "ctrl_acc")
    with m.If(en & ctrl.valid):
        m.d.sync += (acc if slots == 1 else acc[ctrl.slot]).eq(Mux(ctrl.last, 0, acc_next))
    m.d.comb += [o.valid.eq(out_valid), o.payload.as_value().eq(acc_next)]


def _scaled(m: Module, r, f, s_a, s_w, lsb_exp: int, tag: str, reg):
    """Unrounded record of ``S * 2^lsb_exp * s_a * s_w``, ``S = f ? -r : r``, after
    three register stages.

    Stage 1: ``|S| = |r|``, the sign of ``S``, the scales' fields and ``sig_a *
    sig_w`` (11 x 11 bits); stages 2 and 3: ``|S| * (sig_a * sig_w)`` (a DSP48E2
    with its M and P registers; the record's other fields ride along).

    The record is exact: the 11-bit significands' product is exact, and ``S * 2^L``
    is exact because ``|S| < 2^24``, so rounding it once gives
    ``RNE_fp32(fp32(S * 2^L) * (fp32(s_a) * fp32(s_w)))``, the contract of
    ``docs/numerics.md`` section 3.  Special values follow IEEE multiplication: a NaN
    scale gives NaN; an Inf scale Inf, or NaN when another factor (scale or ``S``) is
    zero; ``S = 0`` with finite scales a zero with the sign of ``s_a * s_w``.
    """
    ua, uw = fpu.unpack(m, s_a, FP16), fpu.unpack(m, s_w, FP16)
    n = len(r)
    sig_bits = n + 2 * (FP16.man_bits + 1)
    lay = unrounded_layout(sig_bits, _SCALED_EXP_BITS)
    nonzero = r != 0
    zero = ua.is_zero | uw.is_zero | ~nonzero
    inf = ua.is_inf | uw.is_inf
    mag = reg(abs(r), f"{tag}_mag", n)
    sig_ab = reg(ua.sig * uw.sig, f"{tag}_sigab", 2 * (FP16.man_bits + 1))
    head = Signal(lay, name=f"{tag}_head")
    m.d.comb += [
        head.sig.eq(0),
        head.exp.eq(ua.exp + uw.exp + (lsb_exp - 2 * FP16.man_bits + sig_bits - 1)),
        head.sticky.eq(0),
        head.sign.eq(ua.sign ^ uw.sign ^ ((r[-1] ^ f) & nonzero)),
        head.nan.eq(ua.is_nan | uw.is_nan | (inf & zero)),
        head.inf.eq(inf),
    ]
    head = reg(head, f"{tag}_head1")
    prod = reg(mag * sig_ab, f"{tag}_m", sig_bits)       # DSP48E2 M register
    head = reg(head, f"{tag}_head2")
    prod = reg(prod, f"{tag}_p")                         # DSP48E2 P register
    head = reg(head, f"{tag}_head3")
    u = Signal(lay, name=f"{tag}_u")
    m.d.comb += [u.eq(head), u.sig.eq(prod)]
    return u


#: exponent width of the scaled-sum record (FP16 exponents + the product LSB and the
#: record's MSB offset fit in 10 signed bits)
_SCALED_EXP_BITS = 10


def _leaves(m: Module, a, w, halves, lanes: int, variant: MulVariant, dfq: bool, reg, *,
            plain=None, prefix: str = ""):
    """Registered leaves of the adder trees, one list per half (``halves``).

    A leaf is ``(T, f, max abs)`` worth ``f ? -T : T``:

    * float LUT lanes (and DFQ): ``T = |p|`` from one truth table of the two
      magnitude codes (:class:`MagnitudeCore`, one LUT6 per bit) and ``f`` = the
      product's sign, both registered.  DFQ: each lane has a positive- and a
      negative-grid magnitude register; the grid bit clears the one the lane does
      not belong to (a synchronous reset of the register, no LUT on the data).
      ``plain`` (the dual cell's mode bit, a signal; ``None``: no plain mode): set, every
      lane is a signed e2m1fn code (the DFQ code's ``neg`` bit is its sign) on the
      positive half and the negative half is all zero.
    * other lanes (int4 LUT tables, DSP, DECOMPOSED): ``T`` = the registered signed
      :class:`Multiplier` product (DFQ: gated by the grid bit and ``plain`` as above),
      ``f = 0``.

    ``prefix`` starts the names of the signals and submodules (several fronts in one
    module).
    """
    out = []
    for pair, tag in halves:
        leaves = []
        for lane in range(lanes):
            code, wcode = a[lane], w[lane]
            if dfq:
                # the lane's grid: the positive half takes ~neg (every lane in plain mode),
                # the negative half neg (no lane in plain mode)
                if tag == "pos":
                    mine = ~code.neg if plain is None else (~code.neg | plain)
                else:
                    mine = code.neg if plain is None else (code.neg & ~plain)
            name = f"{prefix}{{}}_{tag}{lane}"
            if variant is not MulVariant.LUT or not pair.is_float:
                mul = Multiplier(pair=pair, variant=variant)
                m.submodules[name.format("mul")] = mul
                m.d.comb += mul.b.eq(wcode)
                if dfq:
                    m.d.comb += mul.a.as_value().eq(code.as_value())
                    p = Signal(signed(pair.width), name=name.format("p"))
                    m.d.comb += p.eq(mine.replicate(pair.width).as_signed() & mul.p)
                else:
                    m.d.comb += mul.a.eq(code)
                    p = mul.p
                leaves.append((reg(p, name.format("prod")), Const(0), pair.max_abs))
                continue
            core = MagnitudeCore(pair=pair)
            m.submodules[name.format("mag")] = core
            m.d.comb += [core.mag_a.eq(code.mag if dfq else Cat(code.mantissa, code.exponent)),
                         core.mag_b.eq(Cat(wcode.mantissa, wcode.exponent))]
            if dfq:
                # positive grid: the sign of w (plain mode: and of the code, whose neg bit
                # is 0 on every positive-grid lane); negative grid: negative values
                sign = (code.neg ^ wcode.sign) if tag == "pos" else ~wcode.sign
                T = reg(Mux(mine, core.mag, 0), name.format("mag"), pair.mag_width,
                        reset_less=True)
            else:
                sign = code.sign ^ wcode.sign
                T = reg(core.mag, name.format("mag"))
            leaves.append((T, reg(sign, name.format("neg")), pair.max_abs))
        out.append(leaves)
    return out


def _add_flagged(m: Module, base, r, f, width: int, name: str):
    """``base + (f ? -r : r)`` in ``width`` bits as ONE two-operand add: the negation's +1
    rides in an extra low bit (``{base, 1} + {r XOR f, f}``), one LUT per bit on a carry
    chain (the exact sum fits ``width``, so the truncation is exact)."""
    rs = Signal(signed(width), name=f"{name}_r")
    m.d.comb += rs.eq(r)
    if isinstance(f, Const):
        out = Signal(signed(width), name=name)
        m.d.comb += out.eq(base + rs)
        return out
    wide = Signal(signed(width + 1), name=f"{name}_w")
    m.d.comb += wide.eq(Cat(Const(1, 1), base).as_signed()
                        + Cat(f, rs.as_unsigned() ^ f.replicate(width)).as_signed())
    out = Signal(signed(width), name=name)
    m.d.comb += out.eq(wide[1:].as_signed())
    return out


def _flag_tree(m: Module, leaves, tag: str, reg, levels_per_stage: int):
    """Registered adder tree over flagged leaves ``(T, f, max abs)`` (:func:`_leaves`).

    A node is ``(r, f)`` worth ``f ? -r : r``.  Two nodes add as
    ``r = r_x + (r_y XOR g) + g`` with ``g = f_x XOR f_y`` and ``f = f_x``
    (``-r_x + v_y = -(r_x - v_y)``), so every adder takes its left operand
    straight from a register or carry chain (the carry chain's DI input needs no
    LUT) and folds the right operand's sign into the one propagate LUT per bit;
    the conditional negation costs a carry-in, not a per-product negation.
    Returns ``(r, f, max abs)`` of the root.
    """
    level = list(leaves)
    depth = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            (x, fx, mx), (y, fy, my) = level[j], level[j + 1]
            bound = mx + my
            width = sum_width(bound)
            name = f"t_{tag}{depth}_{j // 2}"
            if isinstance(fx, Const) and isinstance(fy, Const):   # signed leaves, no flags
                r = Signal(signed(width), name=name)
                m.d.comb += r.eq(x + y)
            else:       # x + (g ? -y : y), g = fx XOR fy: one carry chain, the +1 carried in
                xs = Signal(signed(width), name=f"x_{tag}{depth}_{j // 2}")
                m.d.comb += xs.eq(x)
                r = _add_flagged(m, xs, y, fx ^ fy, width, name)
            nxt.append((r, fx, bound))
        if len(level) % 2:
            nxt.append(level[-1])
        depth += 1
        if depth % levels_per_stage == 0 or len(nxt) == 1:
            nxt = [(reg(r, f"r_{tag}{depth}_{k}"),
                    f if isinstance(f, Const) else reg(f, f"r_{tag}{depth}_{k}_f"), mx)
                   for k, (r, f, mx) in enumerate(nxt)]
        level = nxt
    r, f, mx = level[0]
    if depth == 0:   # a single lane: keep the stage count uniform
        r = reg(r, f"r_{tag}_single", signed(sum_width(mx)))
        f = f if isinstance(f, Const) else reg(f, f"r_{tag}_single_f")
    return r, f, mx
