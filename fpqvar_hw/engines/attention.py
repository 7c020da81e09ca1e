"""The attention array: FDOT instructions of attention shape on ``T x N`` MAC lanes.

The vector engine (:mod:`fpqvar_hw.engines.vecengine`) offers every FDOT with an
FP16 B operand to :class:`AttentionArray`; the array either declines it (the engine
then runs it element by element as before) or executes it on ``T x N`` lanes, each
lane one independent dot product computed exactly as :class:`~fpqvar_hw.units.vector.FDot`
computes it (FP32 product ``a*b``, then element ``k`` of the row into partial
``k mod P`` through a pipelined FP32 adder, then the pairwise tree over the
``P`` partials: ``golden.attention.tree_last``).  The results are the same bits;
only the order in which the dot products are computed and written changes.

Shape it takes (``D[i3, i2, i1] = sum_i0 A[i0, i2, i3] * B[i0, i1, i3]``): FDOT,
flags exactly B_FP16, ``s0_a = 4`` and ``s0_b = 2`` (rows contiguous), ``s1_a = 0``
(A does not depend on i1) and ``s2_b = 0`` (B does not depend on i2), ``n0 <=
max_e``, ``n1, n2, n3 < 2**16``, and, so that no element can fail the window check
or see a result of the same instruction: every A, B and D element inside ``[dram_base,
dram_base + dram_size)`` without 32-bit wrap-around, and D's byte range disjoint from
A's and B's.  The compiler's q.K (A = q rows, B = K rows) and p.V (A = probability
rows, B = rows of the transposed V cache) are this shape.  Anything else (a KV6
cache, other strides, ``fine = 0``) is declined and runs on the element path, which
raises the errors at the element where they occur.

Data path::

    tile (i3, i2 .. i2+T-1, i1 .. i1+N-1):
      A rows -> rd_a (BurstReader) -> T memories (2 slots)  --+--> T x N MacLane
      B rows -> rd_b (BurstReader) -> N memories (4 slots)  --+    (product, P partials)
                                         snapshot of the partials -> 2 drains:
                                         pairwise tree (one dot product per cycle)
                                         -> write merge -> (turns) -> wr

* **Loads.**  A loader walks the tiles in order and hands each row to the operand's
  :class:`~fpqvar_hw.engines.matrix.BurstReader` as 16-byte words from the word that
  holds the row's first element (rows need no alignment beyond the element size;
  a lane reads element ``e`` at word ``(off + e) // per_word``).  Consecutive B
  rows that lie back to back in DRAM (the K cache) are one job, so their bursts are
  16 beats long.  A tiles have ``A_SLOTS`` = 2 slots, B tiles ``B_SLOTS`` = 4: up to
  three B tiles load while one computes, so a tile waits for a DRAM round trip only
  when three tiles' compute is shorter than it.
* **Compute.**  One element index ``e`` per cycle for all lanes: lane ``(t, n)``
  multiplies ``A[t][e]`` by ``B[n][e]`` (FP16 widened exactly).  After a tile's last
  element the lanes wait ``MacLane.DRAIN_CYCLES`` (product + partial write-back),
  their partials are copied to snapshot registers and cleared, and the next tile starts.
* **Drains.**  ``DRAINS`` = 2 drains (one per row with fewer rows): drain ``h`` takes
  the snapshots of the tile's rows ``t mod 2 = h`` through its own pipelined pairwise
  tree (7 FP32 adds for ``P = 8``), one lane per cycle, only the lanes of rows that
  exist (edge tiles); its results merge into 16-byte writes with strobes, and the
  drains' writes take turns on ``wr`` (two drains may write different bytes of one
  word: strobes keep them apart).  A tile of 128 results drains in 67 cycles (131 with one):
  q.K's tiles of 86 cycles are no longer bound by it.
* **Errors and abort.**  A read ``err`` is error 3, a write ``err`` error 4 (the
  window was checked before the first access, so error 2 cannot occur here); then, as
  on ``abort``, no further request is made, outstanding ones complete, and the array
  goes idle.  ``busy`` is high from taking ``cmd`` until then.  In RUN the abort and the
  write response act through a register (``RESP_SLICE``): one cycle later than they
  arrive (the check states answer ``abort`` at once).

Cycles of an accepted instruction (no stalls; :meth:`AttentionArray.tile_cycles`): per tile
``1 + n0 + FEED_STAGES + MacLane.DRAIN_CYCLES``, or the busiest drain's results + 3 when
that is longer (:meth:`AttentionArray.drain_cycles`: one result per cycle per drain);
``ceil(n1/N) * ceil(n2/T) * n3`` tiles, plus
``CHECK_CYCLES`` before the first load; the loads of the next tile overlap the
current one's compute when the DRAM delivers ``N * ceil(2 n0/16)`` words per tile in time.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from .. import isa
from ..checked import Checked
from ..emit import hierarchical
from ..units.fpu import FPOp, fp16_to_fp32
from ..units.vector import Dataflow, PartialSums, Val, select_tree, skid_buffer
from .axi import DATA_BITS, DATA_BYTES, ReadClient, WriteClient, writes_pending_zero
from .matrix import BurstReader

__all__ = ["AttentionArray", "MacLane"]

_WORD_SHIFT = ceil_log2(DATA_BYTES)
#: the products ``(n_k - 1) * s_k`` of the operand range check: (operand, loop k, stride
#: field 1 + k); A does not use i1, B not i2, D not i0
_RANGE_PRODUCTS = (("a", 2, 3), ("a", 3, 4), ("b", 1, 2), ("b", 3, 4),
                   ("d", 1, 2), ("d", 2, 3), ("d", 3, 4))


@hierarchical
class MacLane(wiring.Component):
    """One lane of the array: the accumulation half of :class:`~fpqvar_hw.units.vector.FDot`.

    ``a``, ``b`` (FP32) with ``valid`` and ``part`` (the partial this element goes to)
    enter a :class:`~fpqvar_hw.units.fpu.MulPipe`; the product is added to partial
    ``part`` (:class:`~fpqvar_hw.units.vector.PartialSums`); the last element's sum is in
    the ``P`` partials ``DRAIN_CYCLES`` cycles after it entered.  ``clear`` sets them to
    +0.0.  ``snap`` copies them to ``held`` (partial ``j`` in bits ``32j .. 32j+31``; held
    until the next ``snap``), where the array's drain reads them while the next tile
    accumulates.  The array holds ``T x N`` lanes, one module (emitted and synthesised once,
    its snapshot register included).
    """

    DRAIN_CYCLES = FPOp.MUL.latency + PartialSums.DRAIN

    def __init__(self, *, P: int = isa.VEC_P):
        self.P = P
        super().__init__({"a": In(32), "b": In(32), "valid": In(1), "part": In(range(P)),
                          "clear": In(1), "snap": In(1), "held": Out(32 * P)})

    def elaborate(self, platform):
        m = Module()
        df = Dataflow(m, Const(1), prefix="prod_", data_only=True)     # valid, part: tag
        prod = df.mul(Val(self.a, 0), Val(self.b, 0))
        Lp = prod.stage
        assert Lp + PartialSums.DRAIN == self.DRAIN_CYCLES
        tag = Cat(self.valid, self.part)
        for _ in range(Lp):
            r = Signal(len(tag))
            m.d.sync += r.eq(tag)
            tag = r
        ps = PartialSums(m, self.P, "sum_")
        m.d.comb += [ps.issue.eq(tag[0]), ps.part.eq(tag[1:]), ps.value.eq(df.at(prod, Lp)),
                     ps.clear.eq(self.clear)]
        with m.If(self.snap):
            m.d.sync += self.held.eq(Cat(*ps.acc))
        return m


class _Countdown:
    """A loop index as a down counter from ``m1`` (its last index) to 0, with ``last``
    (``left == 0``) and ``pen`` (``left == 1``) registers, and optionally ``row_last``, a
    register holding the index of the last row of the current tile: ``rem`` in the last
    tile, ``full`` (a constant) in the others.  ``m1 = (m1, m1 == 0, m1 == 1)``, ``rem``
    and ``rem == 0`` are registers: the walkers' ``== n - 1`` and last-row decisions read
    registers only."""

    def __init__(self, m: Module, name: str, m1: tuple, rows: "tuple | None" = None,
                 width: int = 16):
        self.m, self.m1, self.rows = m, m1, rows
        self.left = Signal(width, name=f"{name}_left")
        self.last = Signal(name=f"{name}_last")
        self.pen = Signal(name=f"{name}_pen")
        self.row_last = Signal(len(rows[0]), name=f"{name}_row_last") if rows else None
        self.row_zero = Signal(name=f"{name}_row_zero") if rows else None    # row_last == 0

    def _set(self, left, last, pen):
        """Returns the new ``(row_last, row_last == 0)`` (with ``rows``)."""
        self.m.d.sync += [self.left.eq(left), self.last.eq(last), self.pen.eq(pen)]
        if self.rows:
            rem, rem_zero, full = self.rows
            row, zero = Mux(last, rem, full), Mux(last, rem_zero, full == 0)
            self.m.d.sync += [self.row_last.eq(row), self.row_zero.eq(zero)]
            return row, zero

    def load(self):
        """Start at index 0 of ``m1 + 1``."""
        return self._set(*self.m1)

    def step(self):
        """The next index."""
        return self._set(self.left - 1, self.pen, self.left == 2)


def _rows_words(first_byte, nbytes):
    """16-byte words a row of ``nbytes`` bytes starting at byte ``first_byte`` (0..15) of
    its first word occupies."""
    return (first_byte + nbytes + DATA_BYTES - 1) >> _WORD_SHIFT


@hierarchical
class AttentionArray(Checked, wiring.Component):
    """FDOT on ``T x N`` lanes (module docstring).

    Parameters: ``T`` (rows of A per tile, i2), ``N`` (rows of B per tile, i1), both
    powers of two; ``max_e``: longest row (n0) taken; ``P``: tree-sum width
    (``isa.VEC_P``); ``depth``: words in flight per operand (each BurstReader's FIFO).

    Ports: ``cmd`` (a VEC instruction; only FDOT with B_FP16 is offered), ``busy``,
    ``declined`` (held from the end of an instruction the array did not take until the
    next ``cmd``: nothing was accessed), ``error`` (``isa.ErrorCode``, held likewise),
    ``abort``, ``dram_base``, ``dram_size``, ``rd_a``, ``rd_b``, ``wr``.
    """

    #: stages of one range product: operands registered, two 16 x 16 DSP products, their sum
    RANGE_STAGES = 3
    #: cycles from taking ``cmd`` to the first load request (SHAPE, RANGE: one product of
    #: the operand ranges per cycle through RANGE_STAGES, accumulate, compare; DECIDE); a
    #: declined instruction ends after as many
    CHECK_CYCLES = 1 + (len(_RANGE_PRODUCTS) + RANGE_STAGES + 1) + 1
    #: the element pipeline in front of the lanes (memory read, element select, FP16
    #: widening)
    FEED_STAGES = 3
    #: register slice between the output FIFO and the write merge (``skid_buffer``)
    RESULT_SLICE = 1
    #: registers on the write response (``valid``, ``err``) and on ``abort`` as RUN sees
    #: it: the arbiter's response logic and the vector engine's port select end there
    RESP_SLICE = 1
    #: result drains (each one result per cycle; drain h takes the tile's rows t mod H = h)
    DRAINS = 2
    #: words in flight per operand (each BurstReader's FIFO)
    DEPTH = 128
    #: row-memory slots per lane: A tiles, B tiles (powers of two)
    A_SLOTS, B_SLOTS = 2, 4

    def __init__(self, *, T: int = 4, N: int = 8, max_e: int = 680, P: int = isa.VEC_P,
                 depth: int = DEPTH):
        self.T, self.N, self.max_e, self.P, self.depth = T, N, max_e, P, depth
        #: drains of this build (``DRAINS``, at most one per row of a tile)
        self.drains = min(self.DRAINS, T)
        super().__init__({
            "cmd": In(stream.Signature(isa.INSTR_LAYOUT)),
            "busy": Out(1), "declined": Out(1), "error": Out(4), "abort": In(1),
            "dram_base": In(32), "dram_size": In(32),
            "rd_a": Out(ReadClient()), "rd_b": Out(ReadClient()), "wr": Out(WriteClient()),
        })

    @classmethod
    def check_params(cls, *, T: int, N: int, max_e: int, P: int, depth: int) -> None:
        for name, v in (("T", T), ("N", N), ("max_e", max_e), ("P", P), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name, v in (("T", T), ("N", N), ("P", P), ("depth", depth)):
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if P != 8:
            raise ValueError(f"the lanes' pairwise tree is built for P = 8, got {P}")
        if depth < 16:
            raise ValueError(f"depth must hold one burst (16 words), got {depth}")

    @classmethod
    def tile_cycles(cls, n0: int) -> int:
        """Cycles one tile of rows of ``n0`` elements takes when its operands are on chip:
        WAIT, ``n0`` RUN cycles, DRAIN (until the last element, ``FEED_STAGES`` behind its
        RUN cycle, is in the partials ``MacLane.DRAIN_CYCLES`` later), SNAP."""
        return 1 + n0 + cls.FEED_STAGES + MacLane.DRAIN_CYCLES

    @classmethod
    def drain_results(cls, rows: int, cols: int, drains: "int | None" = None) -> int:
        """Results the busiest drain emits for a tile of ``rows`` A rows x ``cols`` B rows:
        drain ``h`` takes the rows ``t mod drains = h`` (default ``DRAINS``; a build with
        fewer rows than that has one per row, which this count gives as well)."""
        d = cls.DRAINS if drains is None else drains
        return -(-rows // d) * cols

    @classmethod
    def drain_cycles(cls, rows: int, cols: int, drains: "int | None" = None) -> int:
        """Fewest cycles between two SNAPs for tiles of ``rows x cols`` dot products: each
        drain emits one result per cycle from the cycle after ``started`` is set, marks
        itself done after its last, and SNAP waits until ``snap_full`` has fallen after all
        are done.  Tiles of more results per drain than ``tile_cycles(n0) - 3`` are bound
        by it (q.K, rows of 64, on 32 x 4 lanes: 67 cycles per tile against 86; one drain
        as before 2026-12-06 evening: 131)."""
        return cls.drain_results(rows, cols, drains) + 3

    @classmethod
    def tail_cycles(cls, results: int) -> int:
        """Cycles from the last tile's SNAP until its sums are in the write request
        register, ``results`` the busiest drain's (:meth:`drain_results`): one emission per
        cycle, the select register, the pairwise tree (``log2 P`` adds), the output FIFO,
        the result slice, the merge register and the drain's request register; plus the
        registered write response (``RESP_SLICE``: the last response is counted a cycle
        after it arrives)."""
        return results + 1 + 3 * FPOp.ADD.latency + 2 + cls.RESULT_SLICE + 1 + 1 \
            + cls.RESP_SLICE

    def elaborate(self, platform):
        m = Module()
        T, N, P = self.T, self.N, self.P
        L = T * N
        ins = Signal(isa.INSTR_LAYOUT)

        f = isa.vec_fields(ins)
        field, n, sub, flags = f.field, f.n, f.sub, f.flags     # field(x, 0): base, 1..4: s0..s3

        # ------------------------------------------------------------ control
        error = Signal(4)
        declined = Signal()
        m.d.comb += [self.error.eq(error), self.declined.eq(declined)]
        start = Signal()            # the instruction is taken: load the walkers
        flush = Signal()            # error or abort: stop, wait for the DMA
        running = Signal()          # state RUN (a register: set with start, cleared on leaving)
        stop = Signal()             # no new job or request (a job a flush cut short stays
        m.d.comb += stop.eq(~running)   # in its reader until the next start resets it)
        run_done = Signal()         # every result written
        quiet = Signal()            # nothing outstanding on the buses
        step = Signal(range(self.CHECK_CYCLES + 1))
        ok = Signal()               # the shape test and the range test
        fl_wait = Signal(range(64))
        # abort as RUN sees it and the write response, registered (RESP_SLICE)
        abort_q, wresp_valid, wresp_err = Signal(), Signal(), Signal()
        m.d.sync += [abort_q.eq(self.abort), wresp_valid.eq(self.wr.resp.valid),
                     wresp_err.eq(self.wr.resp.payload.err)]

        # the range check: lo/hi of A, B, D from seven products (n_k - 1) * s_k
        E_A, E_B, E_D = 4, 2, 4
        hi = {x: Signal(50, name=f"hi_{x}") for x in "abd"}
        prods = _RANGE_PRODUCTS
        mul_x = Signal(16)
        mul_s = Signal(32)
        p_lo, p_hi = Signal(32), Signal(32)          # x * s[:16], x * s[16:]: one DSP each
        prod = Signal(48)
        m.d.sync += [p_lo.eq(mul_x * mul_s[:16]), p_hi.eq(mul_x * mul_s[16:]),
                     prod.eq(p_lo + (p_hi << 16))]
        R = self.RANGE_STAGES
        for j, (x, k, f) in enumerate(prods):
            with m.If(step == j):
                m.d.sync += [mul_x.eq((n[k] - 1)[:16]), mul_s.eq(field(x, f))]
            with m.If(step == j + R):
                m.d.sync += hi[x].eq(hi[x] + prod)

        shape_ok = ((sub == int(isa.VecSubop.FDOT)) & (flags == int(isa.VecFlag.B_FP16))
                    & (field("a", 1) == E_A) & (field("b", 1) == E_B)
                    & (field("a", 2) == 0) & (field("b", 3) == 0)
                    & (n[0] <= self.max_e) & (n[0] != 0)
                    & Cat(*(n[k][16:] == 0 for k in (1, 2, 3))).all()
                    & Cat(*(n[k] != 0 for k in (1, 2, 3))).all())
        lo = {x: field(x, 0) for x in "abd"}
        top = Signal(50)                             # first byte beyond (registered)
        m.d.sync += top.eq(self.dram_base + self.dram_size)
        in_range = Cat(*((lo[x] >= self.dram_base) & (hi[x] < top) & (hi[x][32:] == 0)
                         for x in "abd")).all()
        apart = Cat(*(((hi["d"] < lo[x]) | (hi[x] < lo["d"])) for x in "ab")).all()
        # the shape test, registered every cycle: ``ins`` is held from SHAPE on, so it is
        # the instruction's from the first RANGE cycle (RANGE's last cycle reads it)
        shape_q = Signal()
        m.d.sync += shape_q.eq(shape_ok)

        with m.FSM(name="att"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.abort)
                with m.If(self.cmd.valid & ~self.abort):
                    m.d.sync += [ins.eq(self.cmd.payload), error.eq(0), declined.eq(0),
                                 step.eq(0)]
                    m.next = "SHAPE"
            with m.State("SHAPE"):          # the first operand ranges (shape_q: the shape test)
                m.d.comb += self.busy.eq(1)
                m.d.sync += [step.eq(0),
                             hi["a"].eq(lo["a"] + ((n[0] - 1)[:16] << 2) + E_A - 1),
                             hi["b"].eq(lo["b"] + ((n[0] - 1)[:16] << 1) + E_B - 1),
                             hi["d"].eq(lo["d"] + E_D - 1)]
                m.next = "RANGE"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("RANGE"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += step.eq(step + 1)
                with m.If(self.abort):
                    m.next = "IDLE"
                with m.Elif(step == len(prods) + R):
                    m.d.sync += ok.eq(shape_q & in_range & apart)
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.abort):
                    m.next = "IDLE"
                with m.Elif(~ok):
                    m.d.sync += declined.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.d.sync += running.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                err_now = Signal(4)
                with m.If(abort_q | (err_now != 0)):
                    m.d.sync += [error.eq(err_now), fl_wait.eq(0), running.eq(0)]
                    m.next = "FLUSH"
                with m.Elif(run_done & quiet):
                    m.d.sync += running.eq(0)
                    m.next = "IDLE"
            with m.State("FLUSH"):
                m.d.comb += [self.busy.eq(1), flush.eq(1)]
                with m.If(fl_wait != 63):
                    m.d.sync += fl_wait.eq(fl_wait + 1)
                with m.Elif(quiet):
                    m.next = "IDLE"

        # ------------------------------------------------------------ DMA readers
        m.submodules.rdr_a = rdr_a = ResetInserter(start)(BurstReader(depth=self.depth))
        m.submodules.rdr_b = rdr_b = ResetInserter(start)(BurstReader(depth=self.depth))
        for rdr, port in ((rdr_a, self.rd_a), (rdr_b, self.rd_b)):
            wiring.connect(m, rdr.bus, wiring.flipped(port))
            m.d.comb += [rdr.base.eq(self.dram_base), rdr.size.eq(self.dram_size),
                         rdr.stop.eq(stop)]
        with m.If(rdr_a.read_error | rdr_b.read_error):
            m.d.comb += err_now.eq(isa.ErrorCode.AXI_READ)
        with m.Elif(rdr_a.window_error | rdr_b.window_error):     # cannot happen (checked)
            m.d.comb += err_now.eq(isa.ErrorCode.ADDRESS)

        # ------------------------------------------------------------ tile walkers
        # the per-instruction constants, registered while the range check runs (the
        # instruction is held from SHAPE on; n >= 1 when it is accepted): the last index of
        # every loop and the rows of a last tile, so that no "== n - 1" needs an adder
        n1t_m1, n2t_m1 = Signal(16), Signal(16)     # tiles along i1 (B rows), i2 (A rows) - 1
        n3_m1, n0_m1 = Signal(16), Signal(12)
        n1_rem, n2_rem = Signal(range(N)), Signal(range(T))    # rows of the last tile - 1
        # ... each == 0, registered a cycle later (the range check runs for many more)
        n1t_z, n2t_z, n3_z, n1_rem_z, n2_rem_z = (Signal(name=f"{x}_zero") for x in
                                                   ("n1t", "n2t", "n3", "n1_rem", "n2_rem"))
        n1t_1, n2t_1, n3_1 = (Signal(name=f"{x}_one") for x in ("n1t", "n2t", "n3"))
        wb = Signal(range(self.max_e // 8 + 3))        # words of a B row (row starts aligned)
        wb_tile = Signal(range(N * (self.max_e // 8 + 3)))   # words of a whole B tile
        wb_last = Signal(range(N * (self.max_e // 8 + 3)))   # words of the last B tile
        contig_b = Signal()     # B rows back to back: one job per tile
        n1m, n2m = (n[1][:16] - 1)[:16], (n[2][:16] - 1)[:16]
        m.d.sync += [n1t_m1.eq(n1m >> ceil_log2(N)), n2t_m1.eq(n2m >> ceil_log2(T)),
                     n1_rem.eq(n1m[:ceil_log2(N)] if N > 1 else 0),
                     n2_rem.eq(n2m[:ceil_log2(T)] if T > 1 else 0),
                     n3_m1.eq(n[3][:16] - 1), n0_m1.eq(n[0][:12] - 1),
                     n1t_z.eq(n1t_m1 == 0), n2t_z.eq(n2t_m1 == 0), n3_z.eq(n3_m1 == 0),
                     n1t_1.eq(n1t_m1 == 1), n2t_1.eq(n2t_m1 == 1), n3_1.eq(n3_m1 == 1),
                     n1_rem_z.eq(n1_rem == 0), n2_rem_z.eq(n2_rem == 0),
                     wb.eq((n[0][:12] * 2) >> _WORD_SHIFT),
                     wb_tile.eq(wb * N), wb_last.eq(wb * (n1_rem + 1)),
                     contig_b.eq((field("b", 2) == (n[0] << 1)) & (n[0][:3] == 0)
                                 & (field("b", 0)[:4] == 0))]

        # slot bookkeeping, up/down counters (no wide compare or subtraction in front of
        # the loader's handshake or the compute walker): tiles loaded (data in memory)
        # and not yet computed; slots in use (a tile handed to its reader until its
        # compute is done)
        a_avail, b_avail = Signal(range(self.A_SLOTS + 1)), Signal(range(self.B_SLOTS + 1))
        a_used, b_used = Signal(range(self.A_SLOTS + 1)), Signal(range(self.B_SLOTS + 1))
        a_in, a_out, b_in, b_out = Signal(), Signal(), Signal(), Signal()
        a_filled, b_filled = Signal(), Signal()     # a tile's last word is in memory
        m.d.sync += [a_used.eq(a_used + a_in - a_out), b_used.eq(b_used + b_in - b_out),
                     a_avail.eq(a_avail + a_filled - a_out),
                     b_avail.eq(b_avail + b_filled - b_out)]
        with m.If(start):
            m.d.sync += [s.eq(0) for s in (a_avail, b_avail, a_used, b_used)]

        # row descriptors for the memory writers: lane, slot, words, last row of its tile
        # words of a memory slot: a row of max_e elements from any offset in its first word
        wa = 1 << ceil_log2(self.max_e // 4 + 2)
        wbw = 1 << ceil_log2(self.max_e // 8 + 2)
        SA, SB = self.A_SLOTS, self.B_SLOTS
        sa_bits, sb_bits = ceil_log2(SA), ceil_log2(SB)
        row_layout = data.StructLayout({"lane": range(max(T, N)), "slot": max(sa_bits, sb_bits),
                                        "last_w": range(max(wa, wbw)),   # words - 1
                                        "single": 1,                     # last_w == 0
                                        "last": 1})
        for x in "ab":
            m.submodules[f"rows_{x}"] = ResetInserter(start)(
                SyncFIFOBuffered(width=row_layout.size, depth=16))
        rows = {"a": m.submodules["rows_a"], "b": m.submodules["rows_b"]}

        # per slot and lane: element offset of the row's first element in its first word
        a_off = [[Signal(2, name=f"a_off{s}_{t}") for t in range(T)] for s in range(SA)]
        b_off = [[Signal(3, name=f"b_off{s}_{j}") for j in range(N)] for s in range(SB)]

        def set_off(offs, lanes: int, slot, lane, value):
            for s in range(len(offs)):
                for j in range(lanes):
                    with m.If((slot == s) & (lane == j)):
                        m.d.sync += offs[s][j].eq(value)

        # ------------------------------------------------------------ loader
        # walks (i3, i2 tile: its A rows, then per i1 tile its B rows); a row's job goes to
        # the operand's reader (B rows back to back: one job per tile), its descriptor to
        # the memory writer
        # loop indices i3, i2 tile, i1 tile (the last rows of the current A and B tiles)
        ld3 = _Countdown(m, "ld3", (n3_m1, n3_z, n3_1))
        ld2 = _Countdown(m, "ld2", (n2t_m1, n2t_z, n2t_1), (n2_rem, n2_rem_z, T - 1))
        ld1 = _Countdown(m, "ld1", (n1t_m1, n1t_z, n1t_1), (n1_rem, n1_rem_z, N - 1))
        ld_row = Signal(range(max(T, N) + 1))
        ld_row0 = Signal(init=1)        # ld_row == 0, as a register (B's job decision)
        # rows of the tile after ld_row, and ld_row == the tile's last row, as registers
        ld_rleft, ld_rlast = Signal(range(max(T, N))), Signal()

        def tile_rows(row_last):
            """A new tile whose last row is ``row_last``: (index, index == 0), Muxes of
            registers."""
            m.d.sync += [ld_rleft.eq(row_last[0]), ld_rlast.eq(row_last[1])]
        a3_base, a_row = Signal(32), Signal(32)      # A: first row of i3; current row (i3, i2)
        b3_base, b_row = Signal(32), Signal(32)      # B: first row of i3; current row (i3, i1)
        a_tiles, b_tiles = Signal(16), Signal(16)    # tiles handed to the readers
        ja, jb = rdr_a.job, rdr_b.job
        ra, rb = row_layout(rows["a"].w_data), row_layout(rows["b"].w_data)
        a_row_words = _rows_words(a_row[:_WORD_SHIFT], n[0][:12] << 2)
        b_row_words = _rows_words(b_row[:_WORD_SHIFT], n[0][:12] << 1)
        # index of a row's last word (the descriptor's: no "- 1" at the memory writer)
        a_bytes_m1, b_bytes_m1 = Signal(14), Signal(13)
        m.d.sync += [a_bytes_m1.eq((n[0][:12] << 2) - 1), b_bytes_m1.eq((n[0][:12] << 1) - 1)]
        a_row_last = (a_row[:_WORD_SHIFT] + a_bytes_m1) >> _WORD_SHIFT
        b_row_last = (b_row[:_WORD_SHIFT] + b_bytes_m1) >> _WORD_SHIFT
        with m.FSM(name="load"):
            with m.State("IDLE"):
                with m.If(start):
                    ld3.load()
                    tile_rows(ld2.load())
                    ld1.load()
                    m.d.sync += [ld_row.eq(0), ld_row0.eq(1),
                                 a3_base.eq(field("a", 0)), a_row.eq(field("a", 0)),
                                 b3_base.eq(field("b", 0)), b_row.eq(field("b", 0)),
                                 a_tiles.eq(0), b_tiles.eq(0)]
                    m.next = "A"
            with m.State("A"):      # a row of the A tile (i3, i2t) into slot a_tiles % 2
                m.d.comb += [ja.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), a_row[_WORD_SHIFT:])),
                             ja.payload.words.eq(a_row_words),
                             ra.lane.eq(ld_row), ra.slot.eq(a_tiles[:sa_bits]),
                             ra.last_w.eq(a_row_last), ra.single.eq(a_row_last == 0),
                             ra.last.eq(ld_rlast)]
                go = ~stop & (a_used < SA) & rows["a"].w_rdy
                m.d.comb += [ja.valid.eq(go), rows["a"].w_en.eq(go & ja.ready)]
                with m.If(go & ja.ready):
                    set_off(a_off, T, a_tiles[:sa_bits], ld_row, a_row[2:_WORD_SHIFT])
                    m.d.sync += [a_row.eq(a_row + field("a", 3)), ld_row.eq(ld_row + 1),
                                 ld_row0.eq(0), ld_rleft.eq(ld_rleft - 1),
                                 ld_rlast.eq(ld_rleft == 1)]
                    with m.If(ld_rlast):
                        m.d.comb += a_in.eq(1)
                        m.d.sync += [ld_row.eq(0), ld_row0.eq(1), a_tiles.eq(a_tiles + 1),
                                     b_row.eq(b3_base)]
                        tile_rows((ld1.row_last, ld1.row_zero))   # the first B tile
                        m.next = "B"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("B"):      # a row of the B tile (i3, i2t, i1t) into slot b_tiles % 2
                need_job = ~contig_b | ld_row0
                m.d.comb += [jb.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), b_row[_WORD_SHIFT:])),
                             jb.payload.words.eq(Mux(contig_b, Mux(ld1.last, wb_last, wb_tile),
                                                         b_row_words)),
                             rb.lane.eq(ld_row), rb.slot.eq(b_tiles[:sb_bits]),
                             rb.last_w.eq(b_row_last), rb.single.eq(b_row_last == 0),
                             rb.last.eq(ld_rlast)]
                go = ~stop & (b_used < SB) & rows["b"].w_rdy
                took = go & (jb.ready | ~need_job)
                m.d.comb += [jb.valid.eq(go & need_job), rows["b"].w_en.eq(took)]
                with m.If(took):
                    set_off(b_off, N, b_tiles[:sb_bits], ld_row, b_row[1:_WORD_SHIFT])
                    m.d.sync += [b_row.eq(b_row + field("b", 2)), ld_row.eq(ld_row + 1),
                                 ld_row0.eq(0), ld_rleft.eq(ld_rleft - 1),
                                 ld_rlast.eq(ld_rleft == 1)]
                    with m.If(ld_rlast):
                        m.d.comb += b_in.eq(1)
                        m.d.sync += [ld_row.eq(0), ld_row0.eq(1), b_tiles.eq(b_tiles + 1)]
                        tile_rows(ld1.step())                   # the next B tile
                        with m.If(ld1.last):                # the A tile's last B tile
                            ld1.load()
                            tile_rows(ld2.step())               # the next A tile
                            m.next = "A"
                            with m.If(ld2.last):               # next head (i3)
                                tile_rows(ld2.load())
                                ld3.step()
                                m.d.sync += [a3_base.eq(a3_base + field("a", 4)),
                                             a_row.eq(a3_base + field("a", 4)),
                                             b3_base.eq(b3_base + field("b", 4))]
                                with m.If(ld3.last):
                                    m.next = "IDLE"
                with m.If(flush):
                    m.next = "IDLE"

        # ------------------------------------------------------------ operand memories
        # lane memories of 16-byte words, A_SLOTS / B_SLOTS slots; a row's words from its slot start
        mem_a = [Memory(shape=DATA_BITS, depth=SA * wa, init=[]) for _ in range(T)]
        mem_b = [Memory(shape=DATA_BITS, depth=SB * wbw, init=[]) for _ in range(N)]
        for k, mem in enumerate(mem_a):
            m.submodules[f"mem_a{k}"] = mem
        for k, mem in enumerate(mem_b):
            m.submodules[f"mem_b{k}"] = mem

        def fill(x: str, rdr, mems, slot_words: int, slot_bits: int, filled):
            desc = row_layout(rows[x].r_data)
            w = Signal(range(slot_words), name=f"fill_{x}_w")
            ports = [mem.write_port() for mem in mems]
            # outside RUN (a flush, and words a flush left behind): words are dropped
            beat = rdr.data.valid & rows[x].r_rdy & running
            m.d.comb += rdr.data.ready.eq(rows[x].r_rdy | ~running)
            for k, wp in enumerate(ports):
                m.d.comb += [wp.addr.eq(Cat(w[:ceil_log2(slot_words)], desc.slot[:slot_bits])),
                             wp.data.eq(rdr.data.payload), wp.en.eq(beat & (desc.lane == k))]
            # w == desc.last_w without a compare in front of the FIFO's read: the first
            # word of a row reads the descriptor's single bit, later words a register
            # set as the previous word was taken
            w_first = Signal(name=f"fill_{x}_first", init=1)
            w_at_last = Signal(name=f"fill_{x}_at_last")
            end = beat & Mux(w_first, desc.single, w_at_last)
            m.d.comb += rows[x].r_en.eq(end)
            with m.If(start):
                m.d.sync += [w.eq(0), w_first.eq(1)]
            with m.Elif(beat):
                m.d.sync += [w.eq(Mux(end, 0, w + 1)), w_first.eq(end),
                             w_at_last.eq((w + 1)[:len(w)] == desc.last_w)]
            m.d.comb += filled.eq(end & desc.last)
        fill("a", rdr_a, mem_a, wa, sa_bits, a_filled)
        fill("b", rdr_b, mem_b, wbw, sb_bits, b_filled)

        # ------------------------------------------------------------ compute walker
        lanes = [MacLane(P=P) for _ in range(L)]
        for k, lane in enumerate(lanes):
            m.submodules[f"lane{k}"] = lane
        c3 = _Countdown(m, "c3", (n3_m1, n3_z, n3_1))
        c2 = _Countdown(m, "c2", (n2t_m1, n2t_z, n2t_1), (n2_rem, n2_rem_z, T - 1))
        c1 = _Countdown(m, "c1", (n1t_m1, n1t_z, n1t_1), (n1_rem, n1_rem_z, N - 1))
        c_a = Signal(16)
        c_tile = Signal(16)
        e = Signal(range(self.max_e + 1))
        # element pointers: offset in the first word + e (every word of a slot addressable)
        ptr_a = [Signal(ceil_log2(wa) + 2, name=f"ptr_a{t}") for t in range(T)]
        ptr_b = [Signal(ceil_log2(wbw) + 3, name=f"ptr_b{j}") for j in range(N)]
        d3, d2, d1 = Signal(32), Signal(32), Signal(32)     # D of (i3, 0, 0), (i3, i2t, 0), tile
        wait = Signal(range(MacLane.DRAIN_CYCLES + self.FEED_STAGES + 1))
        issue = Signal()             # element e of the tile enters the lanes (FEED_STAGES later)
        clear = Signal()
        c_done = Signal()
        snap_full = Signal()
        take_snap = Signal()         # the lanes copy their partials to their ``held``
        snap = [lane.held for lane in lanes]
        d_tv, d_nv = Signal(range(T)), Signal(range(N))    # last row of the drained tile
        d_tile = Signal(32)
        c_slot_a, c_slot_b = c_a[:sa_bits], c_tile[:sb_bits]
        with m.FSM(name="compute"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.comb += clear.eq(1)
                    c3.load()
                    c2.load()
                    c1.load()
                    m.d.sync += [c_a.eq(0), c_tile.eq(0),
                                 d3.eq(field("d", 0)), d2.eq(field("d", 0)), d1.eq(field("d", 0)),
                                 c_done.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If((a_avail != 0) & (b_avail != 0)):
                    m.d.sync += e.eq(0)
                    for t in range(T):
                        m.d.sync += ptr_a[t].eq(Array(a_off[s][t] for s in range(SA))[c_slot_a])
                    for j in range(N):
                        m.d.sync += ptr_b[j].eq(Array(b_off[s][j] for s in range(SB))[c_slot_b])
                    m.next = "RUN"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += issue.eq(1)
                m.d.sync += [e.eq(e + 1)] + [p.eq(p + 1) for p in ptr_a + ptr_b]
                with m.If(e == n0_m1):
                    m.d.sync += wait.eq(0)
                    m.next = "DRAIN"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("DRAIN"):       # the last element's sum reaches the partials
                m.d.sync += wait.eq(wait + 1)
                # the last element entered the lanes FEED_STAGES cycles after its RUN cycle;
                # its sum is in the partials DRAIN_CYCLES later, when SNAP copies them
                with m.If(wait == MacLane.DRAIN_CYCLES + self.FEED_STAGES - 2):
                    m.next = "SNAP"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("SNAP"):
                with m.If(~snap_full):
                    m.d.comb += [clear.eq(1), b_out.eq(1), take_snap.eq(1)]
                    m.d.sync += [snap_full.eq(1), d_tile.eq(d1),
                                 d_tv.eq(c2.row_last), d_nv.eq(c1.row_last),
                                 c_tile.eq(c_tile + 1),
                                 d1.eq(d1 + (field("d", 2) << ceil_log2(N)))]
                    c1.step()
                    m.next = "WAIT"
                    with m.If(c1.last):
                        nxt2 = d2 + (field("d", 3) << ceil_log2(T))
                        m.d.comb += a_out.eq(1)
                        c1.load()
                        c2.step()
                        m.d.sync += [c_a.eq(c_a + 1), d2.eq(nxt2), d1.eq(nxt2)]
                        with m.If(c2.last):
                            nxt3 = d3 + field("d", 4)
                            c2.load()
                            c3.step()
                            m.d.sync += [d3.eq(nxt3), d2.eq(nxt3), d1.eq(nxt3)]
                            with m.If(c3.last):
                                m.d.sync += c_done.eq(1)
                                m.next = "IDLE"
                with m.If(flush):
                    m.next = "IDLE"

        # element pipeline (FEED_STAGES): memory read (stage 1), element select (stage 2),
        # FP16 widening (stage 3; the select and the subnormal normalisation in one cycle
        # were 7 LUT levels)
        valid = [issue & ~flush]
        part = [e[:ceil_log2(P)]]
        for k in range(1, self.FEED_STAGES + 1):
            v, p = Signal(name=f"valid{k}"), Signal(range(P), name=f"part{k}")
            m.d.sync += [v.eq(valid[-1] & ~flush), p.eq(part[-1])]
            valid.append(v)
            part.append(p)

        def lane_values(x: str, mems, ptrs, slot, slot_words: int, width: int, widen):
            """Element ``ptr`` of each lane memory (word ``ptr // per_word`` of ``slot``),
            selected one cycle after the read and widened to FP32 the cycle after."""
            k = ceil_log2(DATA_BITS // width)          # element bits within a word
            out = []
            for j, (mem, ptr) in enumerate(zip(mems, ptrs)):
                rp = mem.read_port()
                sel = Signal(k, name=f"sel_{x}{j}")
                m.d.sync += sel.eq(ptr[:k])
                m.d.comb += rp.addr.eq(Cat(ptr[k:k + ceil_log2(slot_words)], slot))
                raw = Signal(width, name=f"{x}{j}_raw")
                v = Signal(32, name=f"{x}{j}")
                m.d.sync += [raw.eq(rp.data.word_select(sel, width)), v.eq(widen(raw))]
                out.append(v)
            return out
        a_val = lane_values("a", mem_a, ptr_a, c_slot_a, wa, 32, lambda w: w)
        b_val = lane_values("b", mem_b, ptr_b, c_slot_b, wbw, 16, lambda h: fp16_to_fp32(m, h))
        for k, lane in enumerate(lanes):
            t, j = divmod(k, N)
            m.d.comb += [lane.a.eq(a_val[t]), lane.b.eq(b_val[j]), lane.valid.eq(valid[-1]),
                         lane.part.eq(part[-1]), lane.clear.eq(clear), lane.snap.eq(take_snap)]

        # ------------------------------------------------------------ drains: trees, writes
        # H drains; drain h takes the tile's rows t = h, h + H, ... (t mod H = h): its own
        # snapshot select, pairwise tree, output FIFO and write merge, one result per cycle
        # each; their write requests meet in one registered request (round robin).  SNAP
        # waits until every drain is done with the previous tile (drain_cycles).
        H = self.drains
        FIFO = 32
        rows_h = T // H
        started = Signal()                  # the drains hold the tile's start
        done = [Signal(name=f"dr_done{h}") for h in range(H)]
        with m.If(snap_full & started & Cat(*done).all()):
            m.d.sync += [snap_full.eq(0), started.eq(0)]
        with m.If(snap_full & ~started):
            m.d.sync += started.eq(1)
        with m.If(start | flush):
            m.d.sync += [snap_full.eq(0), started.eq(0)]
        wreqs = []                          # per drain: (valid, word, data, strb) registers
        idle = []                           # per drain: nothing pending in it
        for h in range(H):
            # (at least one bit: a drain of one row per tile still counts it)
            ib = max(1, ceil_log2(rows_h))
            dr_i, dr_n = Signal(ib, name=f"dr_i{h}"), Signal(range(N), name=f"dr_n{h}")
            i_last = Signal(ib, name=f"dr_ilast{h}")
            dr_row, dr_addr = Signal(32, name=f"dr_row{h}"), Signal(32, name=f"dr_addr{h}")
            pending = Signal(range(FIFO + 1), name=f"pending{h}")   # in its tree or FIFO
            with m.If(snap_full & ~started):
                first = d_tile + field("d", 3) * h if h else d_tile
                m.d.sync += [dr_row.eq(first), dr_addr.eq(first), dr_i.eq(0), dr_n.eq(0),
                             i_last.eq((d_tv - h) >> exact_log2(H)),
                             done[h].eq(d_tv < h if h else 0)]
            go = Signal(name=f"emit{h}")
            m.d.comb += go.eq(snap_full & started & ~done[h] & (pending < FIFO) & ~flush)
            with m.If(go):
                m.d.sync += [dr_n.eq(dr_n + 1), dr_addr.eq(dr_addr + field("d", 2))]
                with m.If(dr_n == d_nv):
                    nxt = dr_row + (field("d", 3) << exact_log2(H))
                    m.d.sync += [dr_n.eq(0), dr_i.eq(dr_i + 1), dr_row.eq(nxt), dr_addr.eq(nxt)]
                    with m.If(dr_i == i_last):
                        m.d.sync += done[h].eq(1)
            # lane k = t * N + n with t = i * H + h, in the order of Cat(dr_n, dr_i)
            mine = [snap[(i * H + h) * N + j] for i in range(rows_h) for j in range(N)]
            sel_data = Signal(32 * P, name=f"sel_data{h}")
            sel_valid, sel_addr = Signal(name=f"sel_valid{h}"), Signal(32, name=f"sel_addr{h}")
            sel_k = Cat(dr_n, dr_i)[:ceil_log2(len(mine))]
            m.d.sync += [sel_data.eq(select_tree(mine, sel_k)),
                         sel_valid.eq(go), sel_addr.eq(dr_addr)]
            # the result's 16-byte word is the previous result's (this drain, this
            # instruction): the write merge's "same word" without a wide compare after the
            # FIFO (the merge holds the previous result's word whenever it has one pending)
            prev_word = Signal(32 - _WORD_SHIFT, name=f"prev_word{h}")
            with m.If(sel_valid):
                m.d.sync += prev_word.eq(sel_addr[_WORD_SHIFT:])
            sel_same = sel_addr[_WORD_SHIFT:] == prev_word
            df = Dataflow(m, Const(1), prefix=f"tree{h}_", data_only=True)  # valid, address: tag
            total = df.tree([sel_data[32 * j:32 * (j + 1)] for j in range(P)])
            tag = Cat(sel_valid, sel_addr, sel_same)
            for _ in range(total.stage):
                r = Signal(len(tag))
                m.d.sync += r.eq(tag)
                tag = r
            # (emptied on a flush as well: a result left in it or in the slice behind it
            # would be merged and written after the array went idle)
            out = ResetInserter(start | flush)(SyncFIFOBuffered(width=65, depth=FIFO))
            m.submodules[f"out_fifo{h}"] = out
            m.d.comb += [out.w_data.eq(Cat(df.at(total, total.stage), tag[1:])),
                         out.w_en.eq(tag[0] & ~flush)]
            popped = Signal(name=f"popped{h}")
            m.d.sync += pending.eq(Mux(start | flush, 0, pending + go - popped))

            # write merge: results of one 16-byte word in one write with strobes, from a
            # register slice after the FIFO (the word compare does not reach its pointers)
            res_take = Signal(name=f"res_take{h}")
            res_rdy, res_valid, res_word = skid_buffer(m, out.r_rdy, out.r_data, res_take,
                                                       f"res{h}", clear=start | flush)
            m.d.comb += out.r_en.eq(out.r_rdy & res_rdy)
            res_data, res_addr, res_same = res_word[:32], res_word[32:64], res_word[64]
            pend_valid, pend_word = Signal(name=f"pend_valid{h}"), Signal(32 - _WORD_SHIFT,
                                                                         name=f"pend_word{h}")
            pend_data = Signal(DATA_BITS, name=f"pend_data{h}")
            pend_strb = Signal(DATA_BYTES, name=f"pend_strb{h}")
            wq = (Signal(name=f"wq_valid{h}"), Signal(32 - _WORD_SHIFT, name=f"wq_word{h}"),
                  Signal(DATA_BITS, name=f"wq_data{h}"), Signal(DATA_BYTES, name=f"wq_strb{h}"))
            wq_taken = Signal(name=f"wq_taken{h}")       # the request register takes it
            # (refilled the cycle after it is taken: wr.req.ready does not reach the merge;
            # a drain writes at most a word every second cycle, q.K one per 4 results)
            wq_free = ~wq[0]
            lane32 = res_addr[2:_WORD_SHIFT]
            new_data = (res_data << (lane32 * 32))[:DATA_BITS]
            new_strb = (Const(0b1111, DATA_BYTES) << (lane32 * 4))[:DATA_BYTES]
            new_mask = Cat(*(b.replicate(8) for b in new_strb))
            same = pend_valid & res_same
            to_wq = Signal(name=f"to_wq{h}")
            with m.If(res_valid & ~flush & (~pend_valid | same | wq_free)):
                m.d.comb += [popped.eq(1), res_take.eq(1)]
                m.d.sync += [pend_valid.eq(1), pend_word.eq(res_addr[_WORD_SHIFT:])]
                with m.If(same):
                    m.d.sync += [pend_data.eq((pend_data & ~new_mask) | new_data),
                                 pend_strb.eq(pend_strb | new_strb)]
                with m.Else():
                    m.d.sync += [pend_data.eq(new_data), pend_strb.eq(new_strb)]
                    m.d.comb += to_wq.eq(pend_valid)
            with m.Elif(~res_valid & pend_valid & (pending == 0) & wq_free & ~flush):
                m.d.comb += to_wq.eq(1)
                m.d.sync += pend_valid.eq(0)
            with m.If(start | flush):
                m.d.sync += pend_valid.eq(0)
            with m.If(to_wq):
                m.d.sync += [wq[0].eq(1), wq[1].eq(pend_word), wq[2].eq(pend_data),
                             wq[3].eq(pend_strb)]
            with m.Elif(wq_taken | flush):     # (a request not yet on the bus is dropped)
                m.d.sync += wq[0].eq(0)
            wreqs.append((wq, wq_taken))
            idle.append((pending == 0) & ~res_valid & ~pend_valid & ~wq[0])

        # the write request register: the drains' requests in turn (``prio``: the drain
        # that goes first when several wait); valid never drops before ready
        wreq_valid = Signal()
        prio = Signal(range(H))
        wreq_free = ~wreq_valid | self.wr.req.ready
        # the pick depends on registers only (wr.req.ready reaches just the loads below)
        pick = Signal(range(H))
        any_w = Signal()
        waiting = Cat(*(wq[0] for wq, _ in wreqs))
        # rotate so that bit 0 is drain prio, take the lowest set bit, rotate back
        rot = Signal(H)
        m.d.comb += rot.eq(Cat(waiting, waiting).bit_select(prio, H) if H > 1 else waiting)
        m.d.comb += any_w.eq(rot.any() & ~flush)
        for k in reversed(range(H)):     # the first waiting drain from prio wins
            with m.If(rot[k]):
                m.d.comb += pick.eq((prio + k)[:max(1, exact_log2(H))] if H > 1 else 0)
        with m.If(wreq_free):
            m.d.sync += wreq_valid.eq(0)
            with m.If(any_w):
                m.d.sync += [wreq_valid.eq(1),
                             self.wr.req.payload.addr.eq(Cat(Const(0, _WORD_SHIFT),
                                                             Array(wq[1] for wq, _ in wreqs)[pick])),
                             self.wr.req.payload.data.eq(Array(wq[2] for wq, _ in wreqs)[pick]),
                             self.wr.req.payload.strb.eq(Array(wq[3] for wq, _ in wreqs)[pick])]
                if H > 1:
                    m.d.sync += prio.eq(pick + 1)
                m.d.comb += [taken.eq(pick == h) for h, (_, taken) in enumerate(wreqs)]
        m.d.comb += self.wr.req.valid.eq(wreq_valid)
        m.d.comb += self.wr.resp.ready.eq(1)
        wr_zero = writes_pending_zero(m, self.wr.req.valid & self.wr.req.ready, wresp_valid,
                                      "wr_out")
        with m.If(wresp_valid & wresp_err
                  & ~rdr_a.read_error & ~rdr_b.read_error):
            m.d.comb += err_now.eq(isa.ErrorCode.AXI_WRITE)

        # ------------------------------------------------------------ completion
        m.d.comb += [quiet.eq(rdr_a.quiet & rdr_b.quiet & ~wreq_valid & wr_zero),
                     run_done.eq(c_done & ~snap_full & Cat(*idle).all())]
        return m
