"""The softmax array: SOFTMAX instructions on ``R`` rows at once.

The vector engine (:mod:`fpqvar_hw.engines.vecengine`) offers every SOFTMAX to
:class:`SoftmaxArray` (with the fine pipeline on); the array either declines it (the engine
then runs it element by element as before) or executes it on ``R`` lanes.  Each lane is a
whole :class:`~fpqvar_hw.units.vector.Softmax` unit with its own exp, tree and reciprocal
pipelines and takes every ``R``-th row: row ``j`` of the instruction (in the engine's loop
order, ``i1`` fastest) goes to lane ``j mod R``.  A row's softmax depends on that row only,
so the results are the bits ``golden.vector.softmax(row, P)`` gives; only the order of the
writes changes.  One lane streams one element per cycle, as the element path does, so
``R`` lanes take ``R`` elements per cycle (the 16-byte bus carries four FP32).

Shape it takes (``D[i2, i1, i0] = softmax_i0(A[i2, i1, :])``): SOFTMAX, no flags,
``s0_a = s0_d = 4``, ``n3 = 1``, ``n1, n2 < 2**16``, and, so that every row can run
independently of the others and no element can fail the window check: the rows of A do
not overlap (``s1 >= 4 n0`` and ``s2 >= (n1 - 1) s1 + 4 n0``, unless the loop has one
iteration), likewise D's; A and D inside ``[dram_base, dram_base + dram_size)`` without
32-bit wrap-around; D either A itself (same base and strides: in place, as the compiler
emits it) or apart from A.  Anything else is declined.

Data path::

    rows -> loader: 16-word chunks of the R rows of a group in turn -> rd (BurstReader)
         -> fill: each word to its lane's FIFO (credits: a chunk is requested only when the
            lane's FIFO has room for it, so one lane never blocks another)
         -> lane: serializer (one element per cycle, the row's offset in its first word)
            -> Softmax -> merge into 16-byte words with strobes -> lane write register
         -> write request register (lanes in turn) -> wr

* **Rows.**  The loader sets up a group of ``R`` rows (one per lane: its first word, its
  word count, its element offset and D address into the lane's row FIFOs), then requests
  their words in chunks of at most 16 (one burst), lane after lane, so that the lanes fill
  together.  Rows need no alignment beyond the element size; neighbouring rows that share a
  word both read it, and their results are written with byte strobes.
* **Errors and abort.**  A read ``err`` is error 3, a write ``err`` error 4 (the window was
  checked before the first access, so error 2 cannot occur here); then, as on ``abort``, no
  further request is made, the lanes are held in reset, outstanding requests complete and
  the array goes idle.  ``busy`` is high from taking ``cmd`` until then.

Cycles of an accepted instruction: :meth:`SoftmaxArray.cycles_for` (no stalls).
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .. import isa
from ..checked import Checked
from ..emit import hierarchical
from ..units.vector import Softmax, skid_buffer
from .axi import (DATA_BITS, DATA_BYTES, MAX_BURST, ReadClient, WriteClient, round_robin,
                  writes_pending_zero)
from .matrix import BurstReader

__all__ = ["SoftmaxArray", "SoftmaxLane"]

_WORD_SHIFT = ceil_log2(DATA_BYTES)
_PER_WORD = DATA_BYTES // 4                 # FP32 elements per bus word
#: a lane's write: 16-byte word address, data, strobes
WQ_LAYOUT = data.StructLayout({"word": 32 - _WORD_SHIFT, "data": DATA_BITS, "strb": DATA_BYTES})
#: a row as the loader hands it to its lane: the first element's place in its word, D address
ROW_LAYOUT = data.StructLayout({"off": ceil_log2(_PER_WORD), "d": 32})


@hierarchical
class SoftmaxLane(wiring.Component):
    """One lane of the array: a :class:`~fpqvar_hw.units.vector.Softmax` (its own pipes)
    between a word FIFO and a write merge.

    ``word``: the 16-byte words of the lane's rows, in order (the array requests them only
    when ``WORDS`` fit); ``row``: each row's first-element offset and D address, before its
    first word; ``n0_m1``: elements per row - 1 (held for the instruction); ``popped``: a
    word left the FIFO (the array's credit); ``wq``: merged 16-byte writes (a word of
    results, or a row's partial first/last word with strobes); ``idle``: no row in the lane.
    """

    #: words of the input FIFO: a read round trip of the VCK190 (about 160 cycles) at one
    #: element per cycle is 40 words, plus the burst that is requested when 16 are free
    WORDS = 128
    #: rows the lane holds descriptors of (set up, not yet written)
    ROWS = 4

    def __init__(self, *, max_e: int = 680, P: int = isa.VEC_P):
        self.max_e, self.P = max_e, P
        super().__init__({
            "word": In(stream.Signature(DATA_BITS)),
            "row": In(stream.Signature(ROW_LAYOUT)),
            "n0_m1": In(12),
            "popped": Out(1),
            "wq": Out(stream.Signature(WQ_LAYOUT)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.words = wf = SyncFIFOBuffered(width=DATA_BITS, depth=self.WORDS)
        m.submodules.rows_in = rf = SyncFIFOBuffered(width=ROW_LAYOUT.size, depth=self.ROWS)
        m.submodules.rows_out = df = SyncFIFOBuffered(width=32, depth=self.ROWS)
        m.submodules.sm = sm = Softmax(length=self.max_e, P=self.P)
        # both FIFOs of a row are written together (the array checks ``row.ready``)
        row = ROW_LAYOUT(self.row.payload)
        # row.ready: room in both row FIFOs, registered (one row per cycle at most, and the
        # array offers a lane a row every R >= 2 cycles: room for one more is enough)
        row_room = Signal()
        m.d.sync += row_room.eq((rf.level < self.ROWS - 1) & (df.level < self.ROWS - 1))
        m.d.comb += [wf.w_data.eq(self.word.payload), wf.w_en.eq(self.word.valid),
                     self.word.ready.eq(wf.w_rdy),
                     rf.w_data.eq(self.row.payload), df.w_data.eq(row.d),
                     rf.w_en.eq(self.row.valid & row_room), df.w_en.eq(self.row.valid & row_room),
                     self.row.ready.eq(row_room)]

        # ---- serializer: the row's elements from its words, one per cycle, into a slice;
        # the FIFO's head word through a register slice (its level logic is not behind the
        # element handshake)
        n0_zero = Signal()                  # rows of one element (registered: n0_m1 is held)
        m.d.sync += n0_zero.eq(self.n0_m1 == 0)
        have = Signal()                     # a row is being read out
        slot = Signal(ceil_log2(_PER_WORD))  # the element's place in the head word
        left = Signal(12)                   # elements of the row after this one
        last = Signal()                     # left == 0
        pop = Signal()
        w_in_rdy, w_valid, w_data = skid_buffer(m, wf.r_rdy, wf.r_data, pop, "head")
        m.d.comb += [wf.r_en.eq(wf.r_rdy & w_in_rdy), self.popped.eq(wf.r_rdy & w_in_rdy)]
        sk_take = Signal()
        sk_rdy, sk_valid, sk_data = skid_buffer(
            m, have & w_valid, Cat(w_data.word_select(slot, 32), last), sk_take, "feed")
        m.d.comb += [sm.i.valid.eq(sk_valid), sm.i.payload.eq(sk_data),
                     sk_take.eq(sm.i.ready)]
        emit = have & w_valid & sk_rdy
        m.d.comb += [pop.eq(emit & ((slot == _PER_WORD - 1) | last)),
                     rf.r_en.eq(~have & rf.r_rdy)]
        with m.If(~have & rf.r_rdy):
            m.d.sync += [have.eq(1), slot.eq(ROW_LAYOUT(rf.r_data).off),
                         left.eq(self.n0_m1), last.eq(n0_zero)]
        with m.Elif(emit):
            m.d.sync += [slot.eq(slot + 1), left.eq(left - 1), last.eq(left == 1)]
            with m.If(last):
                m.d.sync += have.eq(0)

        # ---- results: merged into 16-byte words (consecutive addresses of one row)
        o_have = Signal()                   # the D address of the row being written
        o_addr = Signal(32)
        o_left = Signal(12)
        o_last = Signal()
        closes = Signal()                   # this result ends its word (or its row)
        pend_data = Signal(DATA_BITS)
        pend_strb = Signal(DATA_BYTES)
        wq_valid = Signal()
        wq = WQ_LAYOUT(Signal(WQ_LAYOUT.size))
        m.d.comb += [sm.o.ready.eq(o_have & ~(wq_valid & closes)),
                     df.r_en.eq(~o_have & df.r_rdy)]
        with m.If(~o_have & df.r_rdy):
            m.d.sync += [o_have.eq(1), o_addr.eq(df.r_data), o_left.eq(self.n0_m1),
                         o_last.eq(n0_zero),
                         closes.eq((df.r_data[2:_WORD_SHIFT] == _PER_WORD - 1) | n0_zero)]
        lane32 = o_addr[2:_WORD_SHIFT]
        new_data = (sm.o.payload.as_value() << (lane32 * 32))[:DATA_BITS]
        new_strb = (Const(0b1111, DATA_BYTES) << (lane32 * 4))[:DATA_BYTES]
        new_mask = Cat(*(b.replicate(8) for b in new_strb))
        merged = (pend_data & ~new_mask) | new_data
        with m.If(self.wq.ready):
            m.d.sync += wq_valid.eq(0)
        with m.If(sm.o.valid & sm.o.ready):
            m.d.sync += [o_addr.eq(o_addr + 4), o_left.eq(o_left - 1), o_last.eq(o_left == 1),
                         closes.eq((lane32 == _PER_WORD - 2) | (o_left == 1))]
            with m.If(closes):
                m.d.sync += [wq_valid.eq(1), wq.word.eq(o_addr[_WORD_SHIFT:]),
                             wq.data.eq(merged), wq.strb.eq(pend_strb | new_strb),
                             pend_data.eq(0), pend_strb.eq(0)]
            with m.Else():
                m.d.sync += [pend_data.eq(merged), pend_strb.eq(pend_strb | new_strb)]
            with m.If(o_last):
                m.d.sync += o_have.eq(0)
        m.d.comb += [self.wq.valid.eq(wq_valid), self.wq.payload.eq(wq),
                     self.idle.eq(~have & ~rf.r_rdy & ~o_have & ~df.r_rdy & ~wq_valid & ~w_valid)]
        return m


def _row_words(first_byte, n0):
    """16-byte words of a row of ``n0`` FP32 elements whose first element is at byte
    ``first_byte`` (0..15) of its first word."""
    return (first_byte + (n0 << 2) + DATA_BYTES - 1) >> _WORD_SHIFT


@hierarchical
class SoftmaxArray(Checked, wiring.Component):
    """SOFTMAX on ``R`` lanes (module docstring).

    Parameters: ``R`` (lanes, rows at once), ``max_e`` (longest row: the engine's
    ``max_kv``), ``P`` (partial sums: ``isa.VEC_P``), ``depth`` (words in flight on the
    read client).

    Ports: ``cmd`` (a VEC instruction; only SOFTMAX is offered), ``busy``, ``declined``
    (held from the end of an instruction the array did not take until the next ``cmd``:
    nothing was accessed), ``error`` (``isa.ErrorCode``, held likewise), ``abort``,
    ``dram_base``, ``dram_size``, ``rd``, ``wr``.
    """

    #: stages of one range product: operands registered, two 16 x 16 DSP products, their sum
    RANGE_STAGES = 3
    #: the products ``(n_k - 1) * s_k`` of the range check: (operand, loop k)
    PRODUCTS = (("a", 1), ("a", 2), ("d", 1), ("d", 2))
    #: cycles from taking ``cmd`` to the first row's set-up (SHAPE, RANGE, SPAN, LIMITS,
    #: DECIDE); a declined instruction ends after as many
    CHECK_CYCLES = 1 + (len(PRODUCTS) + RANGE_STAGES + 1) + 1 + 1 + 1
    #: words in flight on the read client (its BurstReader's FIFO): R lanes' round trips
    DEPTH = 256

    def __init__(self, *, R: int = 2, max_e: int = 680, P: int = isa.VEC_P,
                 depth: int = DEPTH):
        self.R, self.max_e, self.P, self.depth = R, max_e, P, depth
        super().__init__({
            "cmd": In(stream.Signature(isa.INSTR_LAYOUT)),
            "busy": Out(1), "declined": Out(1), "error": Out(4), "abort": In(1),
            "dram_base": In(32), "dram_size": In(32),
            "rd": Out(ReadClient()), "wr": Out(WriteClient()),
        })

    @classmethod
    def check_params(cls, *, R: int, max_e: int, P: int, depth: int) -> None:
        for name, v in (("R", R), ("max_e", max_e), ("P", P), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if R < 2:
            raise ValueError(f"R must be at least 2 (the loader serves a lane every other "
                             f"cycle at most), got {R}")
        if max_e >= 1 << 12:
            raise ValueError(f"max_e must be below 4096, got {max_e}")
        if depth < MAX_BURST or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= {MAX_BURST}, got {depth}")

    @classmethod
    def row_cycles(cls, rows: int, n0: int, P: int = isa.VEC_P) -> int:
        """Cycles of ``rows`` rows of ``n0`` elements on one lane, input and output never
        stalled: the Softmax unit's own recursion (``Softmax.cycles_for``)."""
        return Softmax.cycles_for(rows, n0, P)

    def elaborate(self, platform):
        m = Module()
        R = self.R
        ins = Signal(isa.INSTR_LAYOUT)

        f = isa.vec_fields(ins)
        field, n, sub, flags = f.field, f.n, f.sub, f.flags     # field(x, 0): base, 1..4: s0..s3

        # ------------------------------------------------------------ control
        error = Signal(4)
        declined = Signal()
        m.d.comb += [self.error.eq(error), self.declined.eq(declined)]
        start = Signal()
        flush = Signal()            # state FLUSH (a register): lanes in reset, requests stop
        running = Signal()
        run_done = Signal()
        quiet = Signal()
        step = Signal(range(len(self.PRODUCTS) + self.RANGE_STAGES + 2))
        ok = Signal()
        fl_wait = Signal(range(64))
        abort_q, wresp_valid, wresp_err = Signal(), Signal(), Signal()
        m.d.sync += [abort_q.eq(self.abort), wresp_valid.eq(self.wr.resp.valid),
                     wresp_err.eq(self.wr.resp.payload.err)]

        # the range check: (n_k - 1) * s_k through two 16 x 16 products (one DSP each)
        prod_of = {p: Signal(48, name=f"prod_{p[0]}{p[1]}") for p in self.PRODUCTS}
        mul_x, mul_s = Signal(16), Signal(32)
        p_lo, p_hi, prod = Signal(32), Signal(32), Signal(48)
        m.d.sync += [p_lo.eq(mul_x * mul_s[:16]), p_hi.eq(mul_x * mul_s[16:]),
                     prod.eq(p_lo + (p_hi << 16))]
        RS = self.RANGE_STAGES
        for j, (x, k) in enumerate(self.PRODUCTS):
            with m.If(step == j):
                m.d.sync += [mul_x.eq((n[k] - 1)[:16]), mul_s.eq(field(x, 1 + k))]
            with m.If(step == j + RS):
                m.d.sync += prod_of[(x, k)].eq(prod)
        row_bytes = Signal(14)                       # 4 n0
        m.d.sync += row_bytes.eq(n[0][:12] << 2)
        lo = {x: field(x, 0) for x in "ad"}
        span = {x: Signal(50, name=f"span_{x}") for x in "ad"}     # last byte - first byte
        reach = {x: Signal(50, name=f"reach_{x}") for x in "ad"}   # (n1 - 1) s1 + 4 n0
        hi = {x: Signal(51, name=f"hi_{x}") for x in "ad"}         # last byte
        sep = {x: Signal(name=f"sep_{x}") for x in "ad"}           # rows do not overlap
        top = Signal(50)
        m.d.sync += top.eq(self.dram_base + self.dram_size)
        # the shape test, one register per group of terms (LIMITS ANDs them)
        shape_terms = [(sub == int(isa.VecSubop.SOFTMAX)) & (flags == 0),
                       (field("a", 1) == 4) & (field("d", 1) == 4),
                       (n[3] == 1) & (n[1][16:] == 0) & (n[2][16:] == 0),
                       n[0] <= self.max_e, n[0] != 0, n[1] != 0, n[2] != 0]
        shape_q = Signal(len(shape_terms))
        m.d.sync += shape_q.eq(Cat(*shape_terms))
        same = Signal(3)                             # D is A (in place): per field
        m.d.sync += same.eq(Cat(*(field("a", k) == field("d", k) for k in (0, 2, 3))))

        # busy is a register: set as cmd is taken, cleared with every return to IDLE (no
        # state decode in front of the engine's decision on a declined instruction)
        busy = Signal()
        m.d.comb += self.busy.eq(busy)

        def idle():
            m.d.sync += busy.eq(0)
            m.next = "IDLE"

        with m.FSM(name="sm"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(~self.abort)
                with m.If(self.cmd.valid & ~self.abort):
                    m.d.sync += [ins.eq(self.cmd.payload), error.eq(0), declined.eq(0),
                                 step.eq(0)]
                    m.d.sync += busy.eq(1)
                    m.next = "SHAPE"
            with m.State("SHAPE"):
                m.d.sync += step.eq(0)
                m.next = "RANGE"
                with m.If(self.abort):
                    idle()
            with m.State("RANGE"):
                m.d.sync += step.eq(step + 1)
                with m.If(self.abort):
                    idle()
                with m.Elif(step == len(self.PRODUCTS) + RS):
                    for x in "ad":
                        p1, p2 = prod_of[(x, 1)], prod_of[(x, 2)]
                        m.d.sync += [span[x].eq(p1 + p2 + row_bytes - 1),
                                     reach[x].eq(p1 + row_bytes)]
                    m.next = "SPAN"
            with m.State("SPAN"):           # the last bytes; the rows' separation
                for x in "ad":
                    m.d.sync += [hi[x].eq(lo[x] + span[x]),
                                 sep[x].eq(((n[1] == 1) | (field(x, 2) >= row_bytes))
                                           & ((n[2] == 1) | (field(x, 3) >= reach[x])))]
                m.next = "LIMITS"
                with m.If(self.abort):
                    idle()
            with m.State("LIMITS"):
                inside = Cat(*((lo[x] >= self.dram_base) & (hi[x] < top) & (hi[x][32:] == 0)
                               for x in "ad")).all()
                apart = (hi["d"] < lo["a"]) | (hi["a"] < lo["d"])
                m.d.sync += ok.eq(shape_q.all() & sep["a"] & sep["d"] & inside & (same.all() | apart))
                m.next = "DECIDE"
                with m.If(self.abort):
                    idle()
            with m.State("DECIDE"):
                with m.If(self.abort):
                    idle()
                with m.Elif(~ok):
                    m.d.sync += declined.eq(1)
                    idle()
                with m.Else():
                    m.d.comb += start.eq(1)
                    m.d.sync += running.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                err_now = Signal(4)
                with m.If(abort_q | (err_now != 0)):
                    m.d.sync += [error.eq(err_now), fl_wait.eq(0), running.eq(0), flush.eq(1)]
                    m.next = "FLUSH"
                with m.Elif(run_done & quiet):
                    m.d.sync += running.eq(0)
                    idle()
            with m.State("FLUSH"):          # (flush: a register, set with the state)
                with m.If(fl_wait != 63):
                    m.d.sync += fl_wait.eq(fl_wait + 1)
                with m.Elif(quiet):
                    m.d.sync += flush.eq(0)
                    idle()

        # ------------------------------------------------------------ reader
        m.submodules.rdr = rdr = ResetInserter(start)(BurstReader(depth=self.depth))
        wiring.connect(m, rdr.bus, wiring.flipped(self.rd))
        m.d.comb += [rdr.base.eq(self.dram_base), rdr.size.eq(self.dram_size),
                     rdr.stop.eq(~running)]
        with m.If(rdr.read_error):
            m.d.comb += err_now.eq(isa.ErrorCode.AXI_READ)
        with m.Elif(rdr.window_error):          # cannot happen (checked)
            m.d.comb += err_now.eq(isa.ErrorCode.ADDRESS)

        # ------------------------------------------------------------ lanes
        n0_m1 = Signal(12)          # (registered: held while the instruction runs)
        m.d.sync += n0_m1.eq(n[0][:12] - 1)
        lanes = [ResetInserter(start | flush)(SoftmaxLane(max_e=self.max_e, P=self.P))
                 for _ in range(R)]
        for r, lane in enumerate(lanes):
            m.submodules[f"lane{r}"] = lane
            m.d.comb += lane.n0_m1.eq(n0_m1)

        # ------------------------------------------------------------ loader
        # a group: R rows set up one per cycle (lane r its r-th), then their words requested
        # in chunks of at most MAX_BURST, lane after lane, each when the lane's FIFO has room
        # for two (registers only in front of the request: the lane's words left, chunk and
        # room are kept as registers beside its word count)
        lb = ceil_log2(max(2, R))
        W = self.max_e // _PER_WORD + 3
        # the next row's loop indices as down counters, ``== 0`` as registers
        i1, i2 = Signal(16), Signal(16)
        i1_last, i2_last = Signal(), Signal()
        a_row, d_row = Signal(32), Signal(32)       # its A and D addresses
        a_i2, d_i2 = Signal(32), Signal(32)         # the addresses of (i2, 0)
        rows_done = Signal()                        # no row left to set up
        l_addr = [Signal(32 - _WORD_SHIFT, name=f"l_addr{r}") for r in range(R)]
        l_left = [Signal(range(W), name=f"l_left{r}") for r in range(R)]
        l_has = [Signal(name=f"l_has{r}") for r in range(R)]               # l_left != 0
        l_chunk = [Signal(range(MAX_BURST + 1), name=f"l_chunk{r}") for r in range(R)]
        credit = [Signal(range(SoftmaxLane.WORDS + 1), init=SoftmaxLane.WORDS,
                         name=f"credit{r}") for r in range(R)]
        ptr = Signal(lb)                            # lane being set up / served
        n1_m1, n2_m1 = Signal(16), Signal(16)
        n1_one, n2_one = Signal(), Signal()
        m.d.sync += [n1_m1.eq(n[1][:16] - 1), n2_m1.eq(n[2][:16] - 1),
                     n1_one.eq(n1_m1 == 0), n2_one.eq(n2_m1 == 0)]
        # words of a row and its first chunk, for each offset of its first element
        row_w = [Signal(range(W), name=f"row_w{k}") for k in range(_PER_WORD)]
        row_c = [Signal(range(MAX_BURST + 1), name=f"row_c{k}") for k in range(_PER_WORD)]
        for k in range(_PER_WORD):
            m.d.sync += [row_w[k].eq(_row_words(4 * k, n[0][:12])),
                         row_c[k].eq(Mux(row_w[k] > MAX_BURST, MAX_BURST, row_w[k]))]
        # (unbuffered: the request's handshake reaches only its write pointer and level)
        m.submodules.desc = desc = ResetInserter(start)(SyncFIFO(width=lb + 4, depth=16))
        # a lane has words left and room for two bursts, registered: one cycle old when
        # read, so a lane served in cycle t is skipped in t + 1 (R >= 2: the pointer has
        # moved on) and two bursts of room cover the take it does not see yet
        can = Signal(R)
        desc_room = Signal()        # the FIFO has room, registered (one push per cycle)
        m.d.sync += desc_room.eq(desc.level < desc.depth - 2)
        m.d.sync += can.eq(Cat(*(h & (c >= 2 * MAX_BURST) for h, c in zip(l_has, credit))))
        job = rdr.job
        take = [Signal(name=f"take{r}") for r in range(R)]      # a chunk of lane r requested
        with m.FSM(name="load"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [i1.eq(n1_m1), i2.eq(n2_m1), i1_last.eq(n1_one),
                                 i2_last.eq(n2_one), a_row.eq(field("a", 0)),
                                 d_row.eq(field("d", 0)), a_i2.eq(field("a", 0)),
                                 d_i2.eq(field("d", 0)), rows_done.eq(0), ptr.eq(0)]
                    m.next = "SETUP"
            with m.State("SETUP"):              # row (i2, i1) to lane ptr
                row_ready = Signal()
                for r, lane in enumerate(lanes):
                    at = ptr == r
                    m.d.comb += [lane.row.valid.eq(at & ~rows_done & running),
                                 lane.row.payload.off.eq(a_row[2:_WORD_SHIFT]),
                                 lane.row.payload.d.eq(d_row)]
                    with m.If(at):
                        m.d.comb += row_ready.eq(lane.row.ready)
                placed = ~rows_done & row_ready & running
                off = a_row[2:_WORD_SHIFT]
                with m.If(placed):
                    m.d.sync += [Array(l_addr)[ptr].eq(a_row[_WORD_SHIFT:]),
                                 Array(l_left)[ptr].eq(Array(row_w)[off]),
                                 Array(l_chunk)[ptr].eq(Array(row_c)[off]),
                                 Array(l_has)[ptr].eq(1),
                                 i1.eq(i1 - 1), i1_last.eq(i1 == 1),
                                 a_row.eq(a_row + field("a", 2)), d_row.eq(d_row + field("d", 2))]
                    with m.If(i1_last):
                        nxt_a, nxt_d = a_i2 + field("a", 3), d_i2 + field("d", 3)
                        m.d.sync += [i1.eq(n1_m1), i1_last.eq(n1_one), i2.eq(i2 - 1),
                                     i2_last.eq(i2 == 1), a_i2.eq(nxt_a), d_i2.eq(nxt_d),
                                     a_row.eq(nxt_a), d_row.eq(nxt_d)]
                        with m.If(i2_last):
                            m.d.sync += rows_done.eq(1)
                with m.If(rows_done | placed):
                    m.d.sync += ptr.eq(Mux(ptr == R - 1, 0, ptr + 1))
                    with m.If(ptr == R - 1):
                        m.next = "STREAM"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("STREAM"):             # chunks of the group's rows, lane by lane
                has = Cat(*l_has)
                want = can.bit_select(ptr, 1) & desc_room & running
                chunk = Array(l_chunk)[ptr]
                left = Array(l_left)[ptr]
                m.d.comb += [job.valid.eq(want),
                             job.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), Array(l_addr)[ptr])),
                             job.payload.words.eq(chunk),
                             desc.w_data.eq(Cat(ptr, (chunk - 1)[:4])),
                             desc.w_en.eq(want & job.ready)]
                with m.If(want & job.ready):
                    rest = left - chunk
                    m.d.sync += [Array(l_addr)[ptr].eq(Array(l_addr)[ptr] + chunk),
                                 Array(l_left)[ptr].eq(rest),
                                 Array(l_has)[ptr].eq(rest != 0),
                                 Array(l_chunk)[ptr].eq(Mux(rest > MAX_BURST, MAX_BURST, rest))]
                    m.d.comb += Array(take)[ptr].eq(1)
                with m.If(~can.bit_select(ptr, 1) | (want & job.ready)):
                    m.d.sync += ptr.eq(Mux(ptr == R - 1, 0, ptr + 1))
                with m.If(~has.any()):
                    m.d.sync += ptr.eq(0)
                    m.next = "NEXT"
                with m.If(flush):
                    m.next = "IDLE"
            with m.State("NEXT"):
                m.next = "IDLE"
                with m.If(~rows_done & ~flush):
                    m.next = "SETUP"
        with m.If(start):
            m.d.sync += [h.eq(0) for h in l_has]
        for r, lane in enumerate(lanes):
            m.d.sync += credit[r].eq(Mux(start, SoftmaxLane.WORDS,
                                         credit[r] + lane.popped - Mux(take[r], l_chunk[r], 0)))

        # ------------------------------------------------------------ fill
        # (the FIFO's head through a register slice: its level logic is not behind a beat)
        end = Signal()
        d_in_rdy, d_valid, dd = skid_buffer(m, desc.r_rdy, desc.r_data, end, "desc_head",
                                            clear=start)
        m.d.comb += desc.r_en.eq(desc.r_rdy & d_in_rdy)
        w = Signal(4)
        beat = rdr.data.valid & d_valid & running
        m.d.comb += rdr.data.ready.eq(d_valid | ~running)
        for r, lane in enumerate(lanes):
            m.d.comb += [lane.word.payload.eq(rdr.data.payload),
                         lane.word.valid.eq(beat & (dd[:lb] == r))]
        m.d.comb += end.eq(beat & (w == dd[lb:]))
        with m.If(start):
            m.d.sync += w.eq(0)
        with m.Elif(beat):
            m.d.sync += w.eq(Mux(end, 0, w + 1))

        # ------------------------------------------------------------ writes
        # the lanes' writes in turn into a register slice whose ready is a register
        # (wr.req.ready reaches only the slice, not the grant); no grant during a flush,
        # whose lanes are in reset; a request on the bus stays until it is taken
        grant, anyw = Signal(R), Signal()
        pick = WQ_LAYOUT(Signal(WQ_LAYOUT.size))
        sk_in_rdy, wreq_valid, wreq = skid_buffer(m, anyw, pick.as_value(), self.wr.req.ready,
                                                  "wreq")
        g, a = round_robin(m, [lane.wq.valid for lane in lanes], sk_in_rdy & ~flush, "wr_rr")
        m.d.comb += [grant.eq(g), anyw.eq(a)]
        sel = 0
        for r, lane in enumerate(lanes):
            m.d.comb += lane.wq.ready.eq(grant[r])
            sel = sel | Mux(grant[r], lane.wq.payload.as_value(), 0)
        m.d.comb += pick.eq(sel)
        out = WQ_LAYOUT(wreq)
        m.d.comb += [self.wr.req.valid.eq(wreq_valid),
                     self.wr.req.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), out.word)),
                     self.wr.req.payload.data.eq(out.data),
                     self.wr.req.payload.strb.eq(out.strb),
                     self.wr.resp.ready.eq(1)]
        wr_zero = writes_pending_zero(m, self.wr.req.valid & self.wr.req.ready, wresp_valid,
                                      "wr_out")
        with m.If(wresp_valid & wresp_err & ~rdr.read_error):
            m.d.comb += err_now.eq(isa.ErrorCode.AXI_WRITE)

        # ------------------------------------------------------------ completion
        lanes_idle = Signal()
        loader_idle = Signal()
        m.d.sync += [lanes_idle.eq(Cat(*(lane.idle for lane in lanes)).all()),
                     loader_idle.eq(rows_done & ~Cat(*l_has).any() & ~desc.r_rdy & ~d_valid)]
        with m.If(start):           # (rows_done is the previous instruction's until then)
            m.d.sync += loader_idle.eq(0)
        m.d.comb += [quiet.eq(rdr.quiet & ~wreq_valid & wr_zero),
                     run_done.eq(loader_idle & lanes_idle & ~start)]
        return m
