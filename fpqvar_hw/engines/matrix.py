"""Matrix engine: executes GEMM instructions (``docs/top.md``) on a ``tm x tn`` array
of group dot-product cells.

Per instruction (fields: :class:`fpqvar_hw.isa.Gemm`), exactly
``fpqvar_hw.host.isa_sim.gemm``: for each block of ``gemm_rows = tm x row_sets``
activation rows (one weight pass), every FP32
row is read from DRAM, converted to FP16 (RNE, overflow to Inf;
:class:`~fpqvar_hw.units.fpu.FPUnit` CONVERT), optionally rotated by the group
Hadamard unit (flag HAD; signs from ``signs_addr``), group-quantized
(:class:`~fpqvar_hw.units.quantizer.Quantizer`: sub-op 0 the plain activation format,
sub-op 1 the DFQ format) and stored as codes + scales in the on-chip activation
buffer.  The packed weights (:func:`fpqvar_hw.packing.pack_gemm_weights`) then
stream through the array once per block: cell ``(i, j)`` computes the dot products of
block rows ``s*tm + i`` (row set ``s``) with feature ``nb*tn + j``
(:class:`~fpqvar_hw.units.dot.GroupDot`, dual-mode: plain e2m1fn or DFQ activations,
selected per instruction; ``interleave = row_sets``, one accumulator per set).  With flag BIAS one
FP32 add (RNE) adds ``bias[f]``; results go to ``out_addr + r*out_stride + 4*f``
(rows ``>= M`` and padded features ``>= N`` are never written).

Supported formats: the w4a4 preset's (e2m1fn weights, e2m1fn activations for
qkv/proj/fc1, DFQ-FP4 ``dfq4`` for the FC2 input, FP16 scales, groups of 128);
any other configuration raises ``ValueError`` at construction (see
:func:`check_config`).

Micro-architecture (three decoupled processes, each on its own DMA clients):

* **Loader** (``rd_act``): the sign word (flag HAD), then the rows in bursts of
  up to ``axi.MAX_BURST`` words (never across a 4 KiB boundary) -> FP16
  conversion (4 lanes, one bus word per cycle) -> gearbox to ``quant_lanes`` ->
  Hadamard (or bypass) -> quantizer -> activation buffer (row ``r`` of a block into
  set ``r // tm``, array row ``r % tm``).  The buffer is double banked: block ``b + 1``
  is quantized into one bank while the array computes block ``b`` from the other (the
  coarse pipeline inside the engine).
* **Compute** (``rd_w`` codes, ``rd_ws`` scales): weights are prefetched into
  FIFOs (requests run ahead of the array as far as FIFO space allows), gathered into
  beats of ``tn`` weight words, and a group's beats (``128 / lanes``) and scale words
  go into one half of a two-group replay buffer (``wbuf``); the array runs the group
  from the other half once per row set (sets in order, the group's beats in order;
  the activation words of the set's ``tm`` rows come from the buffer), so each weight
  word is fetched once per block of ``tm x row_sets`` rows.  One array beat per cycle
  at most; the 128-bit bus supplies one weight word per cycle, so a weight beat takes
  ``tw = tn * ceil(lanes*4/128)`` cycles and the array is busy ``row_sets / tw`` of
  them (the preset: 8 / 8, full).  The
  array is ``tm x tn/Q`` cells (:class:`~fpqvar_hw.units.dot.GroupDot` with ``share =
  Q``, :meth:`MatrixEngine.cell_share`): a cell computes ``Q`` columns of one row with
  ``Q`` integer front ends and one FP32 tail that takes their group sums one per cycle
  (a cell takes a group at most every ``group_interval`` >= Q cycles, so the tail
  keeps up; each result is bit for bit the one-column cell's).  The beat passes a
  register slice on its way to the array (:attr:`MatrixEngine.ARRAY_SLICES`).
* **Drain** (``rd_bias``, ``wr``): the ``tm x tn`` results of each row set of a
  feature block are captured (a memory per array row holding two feature blocks:
  the array computes the next block meanwhile), read back a set at a time (LOAD: the
  set into the read registers; PICK: its first row into a row register, each row's
  last result the next row, so a result selects among ``tn`` values), through a
  register slice (the FSM waits on a registered ready), the bias added (one FP32 add
  per result), then stage W (the result's 16-byte word compared with the previous
  result's, between registers: :attr:`MatrixEngine.DRAIN_SLICES`), and consecutive
  results of a row that share a 16-byte word are merged into one strobed write; sets
  without rows (the block's last rows) are computed but not drained.  The flags the
  drain and the compute side decide on (last feature / row / set, the block's end, the
  weight group and activations on chip, a gearbox full) are registers, so no compare
  sits in front of an FSM decision: the engine maps to 5 LUT levels and 4 carry stages
  (about 312 MHz on the VCK190's delay model, 285.7 before).

Throughput (fine pipeline on, DRAM keeping up): per row block and feature block the
larger of the weight stream ``(K/lanes) * tw`` cycles, the array's ``(K/lanes) *
row_sets`` beats and the drain's ``rows * tn`` results plus two cycles per set
(``fpqvar_hw.flow.asbuilt.gemm_cost`` states it in full); ``ceil(M/gemm_rows)`` weight
passes per GEMM, and the compiler's tiles are ``gemm_rows`` tokens, so a tile's GEMM
reads its weights once.  The drain (one result per cycle) binds for K = 1024 at full
row blocks (128 rows x 8 features = 1,024 cycles against 256 of weights); the loader
(``K/4`` cycles per row) fills the other bank meanwhile.  Measured
(``sim/test_matrix.py``, ``test_matrix_engine_cycles``; tm=2, 2 row sets, tn=2,
lanes=16, quant_lanes=8, fixed DRAM latency 8, no gaps): M=16, K=128, N=384 with HAD
and BIAS takes 13,344 cycles with the fine pipeline (the model 13,305; 12,571 before the
drain's row register and slices of 2026-12-07, one row set before 2026-12-06: 24,787) and
370,264 without (the cell waits its latency per beat).

Dataflow note: row blocks are the outer loop and every row block rereads all the
weights (``ceil(M/gemm_rows)`` weight passes per GEMM); a step's rows beyond one
block (d16 steps 8-9, the two CFG halves) still read them again.

DMA discipline: a read request is issued only when its response beats fit in
the client's FIFO (responses are never back-pressured, so no client can block
a shared in-order read channel); every request's byte range is checked against
``[dram_base, dram_base + dram_size)`` before it is issued (error 2).

Errors (``error``, held until the next ``cmd``): 2 address out of the window,
3 read error response, 4 write error response, 5 invalid field
(:meth:`fpqvar_hw.isa.Gemm.check`: unknown sub-op/flag bits, zero M/N/K, K not a
multiple of 128, misaligned addresses; and K above ``max_k``).  A field error
is detected before any access.  On errors 2-4 and on ``abort`` the engine stops
issuing, drains every outstanding transaction (write responses included),
flushes all units (``ResetInserter``) and drops ``busy``.  Quantizer NaN/Inf
groups are not errors: they follow the numerics contract (NaN scale, so the
affected outputs read NaN).

``fine`` low (no fine pipeline): each unit is fed one beat per its latency
(converter 2, Hadamard ``hadamard.LATENCY_AFTER_LAST``, quantizer
``quantizer.LATENCY_AFTER_LAST``, dot array ``GroupDot.latency``, bias add
``BIAS_ADD_LATENCY``), modelling non-pipelined units.
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from ..emit import hierarchical
from . import axi

from .. import isa
from .. import packing
from ..checked import Checked, latency_of
from ..config import AcceleratorConfig, ElementFormat, ScaleFormat
from ..units.dot import GroupDot
from ..units.fpu import FP16, FP32, FPOp, FPUnit
from ..units.hadamard import LATENCY_AFTER_LAST as HAD_LATENCY, GroupHadamard
from ..units.multiplier import MulPair
from ..units.quantizer import LATENCY_AFTER_LAST as QUANT_LATENCY, Quantizer
from ..units.vector import Dataflow, Val, skid_buffer

__all__ = ["MatrixEngine", "BurstReader", "check_config", "SUPPORTED_PRESETS", "JOB_LAYOUT",
           "BIAS_ADD_LATENCY"]

#: Presets whose formats the engine implements.
SUPPORTED_PRESETS = ("w4a4",)
#: A DMA job: ``words`` consecutive 16-byte words from ``addr`` (split into bursts).
JOB_LAYOUT = data.StructLayout({"addr": 32, "words": 32})
_CODE_BITS = 4
#: Stages of the drain's FP32 bias add (an ``fpu.AddPipe``): with the fine pipeline off
#: the drain emits one result per this many cycles.
BIAS_ADD_LATENCY = FPOp.ADD.latency
_PAGE = 4096


def check_config(cfg: AcceleratorConfig) -> None:
    """Raise ``ValueError`` unless the engine can execute ``cfg``'s GEMMs."""
    if not isinstance(cfg, AcceleratorConfig):
        raise TypeError(f"cfg must be an AcceleratorConfig, got {type(cfg).__name__}")
    E = ElementFormat
    problems = []
    for layer in ("qkv", "proj", "fc1", "fc2"):
        if cfg.weight_format(layer) is not E.E2M1:
            problems.append(f"{layer}_weight={cfg.weight_format(layer)} (need e2m1fn)")
    for layer in ("qkv", "proj", "fc1"):
        if cfg.act_format(layer) is not E.E2M1:
            problems.append(f"{layer}_act={cfg.act_format(layer)} (need e2m1fn)")
    if cfg.fc2_act is not E.DFQ4:
        problems.append(f"fc2_act={cfg.fc2_act} (need dfq4)")
    if cfg.scale_format is not ScaleFormat.FP16:
        problems.append(f"scale_format={cfg.scale_format} (need fp16)")
    if cfg.group_size != 128:
        problems.append(f"group_size={cfg.group_size} (need 128)")
    if problems:
        raise ValueError(
            f"MatrixEngine implements the formats of preset(s) {', '.join(SUPPORTED_PRESETS)} "
            f"(e2m1fn weights and activations, dfq4 FC2 input, FP16 scales, groups of 128); "
            f"preset {cfg.preset!r} has " + "; ".join(problems))
    if cfg.quant_lanes < 4 or cfg.quant_lanes & (cfg.quant_lanes - 1):
        raise ValueError(f"quant_lanes must be a power of two >= 4 (one bus word carries 4 FP32 "
                         f"values), got {cfg.quant_lanes}")
    if cfg.lanes < cfg.quant_lanes:
        raise ValueError(f"lanes ({cfg.lanes}) must be >= quant_lanes ({cfg.quant_lanes}): a "
                         f"buffer word gathers whole quantizer beats")
    if not (cfg.tn % 4 == 0 or 4 % cfg.tn == 0):
        raise ValueError(f"tn must be 1, 2 or a multiple of 4 (a feature block's FP32 bias must "
                         f"start at a 4-byte lane of a 16-byte word), got {cfg.tn}")


def _min(*vals):
    out = vals[0]
    for v in vals[1:]:
        out = Mux(v < out, v, out)
    return out


def _in_window(addr, nbytes, base, size):
    """``[addr, addr + nbytes)`` inside ``[base, base + size)`` (33-bit, no wrap-around)."""
    end = Cat(addr, Const(0, 1)) + nbytes
    return (addr >= base) & (end <= Cat(base, Const(0, 1)) + size)


def _gate(m: Module, fine, latency: int, name: str):
    """Throttle for ``fine`` low: returns ``(ok, fire_hook)``; call ``fire_hook(fire)`` once
    with the transfer condition.  While ``fine`` is low a transfer is allowed only
    ``latency`` cycles after the previous one."""
    cnt = Signal(range(max(latency, 1)), name=f"{name}_thr")
    idle = Signal(init=1, name=f"{name}_idle")      # cnt == 0, as a register
    ok = Signal(name=f"{name}_ok")
    m.d.comb += ok.eq(fine | idle)

    def hook(fire):
        with m.If(fire & ~fine & (latency > 1)):
            m.d.sync += [cnt.eq(latency - 1), idle.eq(0)]
        with m.Elif(~idle):
            m.d.sync += [cnt.eq(cnt - 1), idle.eq(cnt == 1)]
    return ok, hook


def _gearbox(m: Module, in_valid, in_data, n: int, out_fire, name: str):
    """Collect ``n`` stream words; returns ``(in_ready, slots, full)``.  The consumer
    empties it with ``out_fire`` (a new word may enter in the same cycle)."""
    slots = [Signal(len(in_data), name=f"{name}{k}") for k in range(n)]
    cnt = Signal(range(n + 1), name=f"{name}_cnt")
    full = Signal(name=f"{name}_full")      # cnt == n, as a register
    ready = Signal(name=f"{name}_ready")
    m.d.comb += ready.eq(~full | out_fire)
    pop = in_valid & ready
    with m.If(out_fire):
        m.d.sync += [cnt.eq(pop), full.eq(pop & (n == 1))]
        with m.If(pop):
            m.d.sync += slots[0].eq(in_data)
    with m.Elif(pop):
        m.d.sync += [cnt.eq(cnt + 1), full.eq(cnt == n - 1)]
        for k in range(n):
            with m.If(cnt == k):
                m.d.sync += slots[k].eq(in_data)
    return ready, slots, full


@hierarchical
class BurstReader(wiring.Component):
    """One DMA read client: jobs in, bursts out, response words through a FIFO.

    ``job``: ``{addr, words}`` (16-byte aligned address, word count; 0 = nothing, the
    reader takes its next job a cycle later);
    split into INCR bursts of at most ``axi.MAX_BURST`` words that never cross
    a 4 KiB boundary.  A burst is requested only when ``reserved + level + len
    <= depth`` (its beats are sure to fit the FIFO) and only when it lies inside
    ``[base, base + size)``; otherwise ``window_error`` is set (sticky) and the
    job stalls.  ``stop`` blocks new requests (a request already presented is held until
    taken); a client offers no job while it holds ``stop`` (``job.ready`` is ``~have``
    alone, so no path runs from ``stop`` through this module back to the client).
    ``quiet`` (registered): no request pending and no beat outstanding.  ``read_error`` (sticky): a response beat had ``err`` (or, which the
    credit rule rules out, arrived with the FIFO full).  ``bus.resp.ready`` is always 1:
    every beat was reserved FIFO room when its burst was requested.

    Timing: a burst takes three cycles to issue (:data:`ISSUE_CYCLES`): the first
    reduces the job's remaining words and the address's place in its page to a few
    registered bits, the second registers the burst's length, the room left in the window
    and the lower-bound check, the third checks them and the FIFO credit and registers
    the request, so no path chains the 32-bit address arithmetic.  ``base + size`` is registered too: the
    window must be stable one cycle before a job arrives (it is for the whole run).
    """

    #: cycles per burst request (remaining words reduced, length and window room
    #: registered, then the request)
    ISSUE_CYCLES = 3

    def __init__(self, *, depth: int):
        if depth < axi.MAX_BURST:
            raise ValueError(f"the FIFO must hold one full burst ({axi.MAX_BURST}), got {depth}")
        self.depth = depth
        super().__init__({
            "job": In(stream.Signature(JOB_LAYOUT)),
            "bus": Out(axi.ReadClient()),
            "data": Out(stream.Signature(axi.DATA_BITS)),
            "base": In(32), "size": In(32), "stop": In(1),
            "window_error": Out(1), "read_error": Out(1), "quiet": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.q = q = fifo.SyncFIFOBuffered(width=axi.DATA_BITS, depth=self.depth)
        req, resp = self.bus.req, self.bus.resp
        addr, left, have = Signal(32), Signal(32), Signal()
        reserved = Signal(range(self.depth + 1))     # beats requested, not yet arrived
        held = Signal(range(self.depth + 1))         # reserved + words in the FIFO
        limit = Signal(33)                           # base + size (registered)
        m.d.sync += limit.eq(self.base + self.size)
        # cycle 0 (have & ~pre): the job's remaining words and the address's place in its
        # 4 KiB page, reduced to a few bits; cycle 1 (pre & ~calc): the next burst's length,
        # window room, lower bound
        pre, calc = Signal(), Signal()
        left_zero, left_big, left_hi5, page_low = Signal(), Signal(), Signal(), Signal()
        left_lo5, page_sub = Signal(5), Signal(4)
        n = Signal(range(axi.MAX_BURST + 1))
        room = Signal(signed(35))                    # limit - addr
        lo_ok, last = Signal(), Signal()
        cap = Signal(range(self.depth + 1))          # depth - n: the credit bound for held
        # n = min(16, left, words to the 4 KiB boundary) without wide arithmetic: fewer
        # than 16 words remain in the page only in its last 16-word block
        # (the burst is the job's last when left <= page_n: n = left then; page_n <= 16), and
        # both credit bounds depth - n are formed before the min picks one
        left_n, page_n = Signal(5), Signal(5)
        m.d.comb += [left_n.eq(Mux(left_big, axi.MAX_BURST, left_lo5[:4])),
                     page_n.eq(Mux(page_low, page_sub, axi.MAX_BURST))]
        with m.If(have & ~pre):
            m.d.sync += [pre.eq(1), left_zero.eq(left == 0), left_big.eq(left[4:].any()),
                         left_hi5.eq(left[5:].any()), left_lo5.eq(left[:5]),
                         page_low.eq(addr[8:12].all() & addr[4:8].any()),
                         page_sub.eq((axi.MAX_BURST - addr[4:8])[:4])]
        with m.If(have & pre & ~calc & left_zero):  # a job of 0 words: nothing to request
            m.d.sync += [have.eq(0), pre.eq(0)]
        with m.Elif(have & pre & ~calc):
            page_first = page_n < left_n
            m.d.sync += [calc.eq(1), n.eq(Mux(page_first, page_n, left_n)),
                         cap.eq(Mux(page_first, self.depth - page_n, self.depth - left_n)),
                         room.eq(limit - addr), lo_ok.eq(addr >= self.base),
                         last.eq(~left_hi5 & (left_lo5 <= page_n))]
        # cycle 2: checks on registered values, then the request
        nbytes = Signal(range(axi.MAX_BURST * axi.DATA_BYTES + 1))
        m.d.comb += nbytes.eq(n << 4)
        inside = lo_ok & (room >= 0) & (room[len(nbytes):].any() | (room[:len(nbytes)] >= nbytes))
        credit = held <= cap
        ready = have & calc & ~self.stop
        issue = Signal()
        m.d.comb += issue.eq(ready & (~req.valid | req.ready) & inside & credit)
        with m.If(ready & ~inside):
            m.d.sync += self.window_error.eq(1)
        with m.If(issue):
            m.d.sync += [req.valid.eq(1), req.payload.addr.eq(addr), req.payload.len.eq(n - 1),
                         addr.eq(addr + nbytes), left.eq(left - n), calc.eq(0), pre.eq(0)]
            with m.If(last):
                m.d.sync += have.eq(0)
        with m.Elif(req.ready):
            m.d.sync += req.valid.eq(0)
        m.d.comb += self.job.ready.eq(~have)
        with m.If(self.job.valid & self.job.ready):
            m.d.sync += [addr.eq(self.job.payload.addr), left.eq(self.job.payload.words),
                         have.eq(1), pre.eq(0), calc.eq(0)]     # (0 words: dropped 2 cycles later)
        got = Signal()
        m.d.comb += [resp.ready.eq(1), got.eq(resp.valid),
                     q.w_en.eq(got), q.w_data.eq(resp.payload.data)]
        with m.If(got & (resp.payload.err | ~q.w_rdy)):
            m.d.sync += self.read_error.eq(1)
        popped = self.data.valid & self.data.ready
        # every sum from registers; the late ``issue``, ``got`` and ``popped`` only select
        def count(c, dec):
            m.d.sync += c.eq(Mux(issue, Mux(dec, c + n - 1, c + n), Mux(dec, c - 1, c)))
        count(reserved, got)
        count(held, popped)
        # quiet = (reserved == 0) & ~req.valid of this cycle, registered from the next
        # state: an issue makes req.valid 1; otherwise reserved - got == 0 and the
        # request taken or none
        quiet = Signal(init=1)
        r0, r1 = reserved == 0, reserved == 1
        m.d.sync += quiet.eq(~issue & Mux(got, r1, r0) & ~(req.valid & ~req.ready))
        m.d.comb += [self.data.valid.eq(q.r_rdy), self.data.payload.eq(q.r_data),
                     q.r_en.eq(self.data.ready), self.quiet.eq(quiet)]
        return m


@hierarchical
class MatrixEngine(Checked, wiring.Component):
    """The matrix engine (module docstring; interface: ``docs/top.md``, "Engine interface").

    Ports
    -----
    ``cmd``: In stream of ``isa.INSTR_LAYOUT`` (a GEMM instruction); taken only while idle.
    ``busy``: Out(1), from taking ``cmd`` until every issued AXI transaction completed.
    ``error``: Out(4), error code of the last instruction (0 none; 2, 3, 4, 5).
    ``abort``: In(1); ``fine``: In(1) fine pipeline enable (registered: a run-level setting,
    a change acts a cycle later); ``dram_base``, ``dram_size``: In(32).
    ``rd_act`` (signs, activation rows), ``rd_w`` (weight codes), ``rd_ws`` (weight
    scales), ``rd_bias`` (bias): Out(:class:`axi.ReadClient`); ``wr``: Out(:class:`axi.WriteClient`).

    Parameters: ``cfg`` (:class:`AcceleratorConfig`; ``tm``, ``tn``, ``row_sets``,
    ``lanes``, ``quant_lanes`` and the formats are used), keyword-only ``max_k`` (largest K,
    a power of two >= 128: it sizes the double-banked activation buffer,
    ``2 * gemm_rows * max_k`` codes and ``2 * gemm_rows * max_k / 128`` scale pairs; larger K
    is error 5), ``fifo_words`` (depth of each read client's FIFO, >= 16; a client
    keeps at most this many words in flight, so it sustains one word per cycle
    only while the DRAM read latency stays below it: 256 words (one BRAM36 each)
    cover the ~100-200-cycle latency of the VCK190 NoC + DDR4).
    """

    #: register slices in the activation loader (after the reader and the converter, in
    #: front of and after the Hadamard unit): one cycle each (the weight and scale words
    #: pass one more, in parallel with the loader, see ``_Datapath``)
    LOADER_SLICES = 4
    #: register slice between the beat register and the array (the array's ready does not
    #: reach the weight gearbox and the activation reads): one cycle
    ARRAY_SLICES = 1
    #: Register slices of the drain: between its FSM and the bias add, and stage W (an
    #: output's 16-byte word and its compare with the previous output's, between the bias
    #: add and the write combiner): one cycle each.
    DRAIN_SLICES = 2
    #: Drain FSM cycles per row set besides its results: LOAD (the set into the capture read
    #: registers) and PICK (its first row into the row register).
    DRAIN_SET_CYCLES = 2

    def __init__(self, cfg: AcceleratorConfig, *, max_k: int = 8192, fifo_words: int = 256):
        # the parameters were checked by check_params before this object existed
        self.cfg, self.max_k, self.fifo_words = cfg, max_k, fifo_words
        self.tm, self.tn, self.lanes, self.qlanes = cfg.tm, cfg.tn, cfg.lanes, cfg.quant_lanes
        #: row sets: the array runs ``sets`` sets of ``tm`` rows in turn, so a row block
        #: (one weight pass) is ``gemm_rows = tm * sets`` rows
        self.sets, self.gemm_rows = cfg.row_sets, cfg.gemm_rows
        #: bus words per (beat, feature) weight entry and per (block, group) scale entry
        self.code_words = packing.gemm_code_word_bytes(cfg.lanes, _CODE_BITS) // axi.DATA_BYTES
        self.scale_words = -(-2 * cfg.tn // axi.DATA_BYTES)
        super().__init__(self.engine_signature())

    @classmethod
    def check_params(cls, *, cfg: AcceleratorConfig, max_k: int, fifo_words: int) -> None:
        """Raise ``ValueError``/``TypeError`` for a configuration the engine cannot build
        (:func:`check_config`, ``max_k``, ``fifo_words``); runs before the object exists
        (:class:`fpqvar_hw.checked.Checked`)."""
        check_config(cfg)
        if not isinstance(max_k, int) or max_k < 128 or max_k & (max_k - 1):
            raise ValueError(f"max_k must be a power of two >= 128, got {max_k!r}")
        if not isinstance(fifo_words, int) or fifo_words < axi.MAX_BURST:
            raise ValueError(f"fifo_words must be >= {axi.MAX_BURST} (one burst), got {fifo_words!r}")

    @staticmethod
    def cell_params(lanes: int, tn: int = 1, sets: int = 1) -> dict:
        """The keyword arguments of every array cell (:class:`~fpqvar_hw.units.dot.GroupDot`,
        dual-mode e2m1fn / DFQ-FP4, groups of 128) of an array of ``lanes`` and ``tn``
        columns running ``sets`` row sets: each cell holds :meth:`cell_share` columns of one
        row around one FP32 tail (``share``) and one dot product per row set
        (``interleave``)."""
        return {"pair": MulPair.E2M1_E2M1, "dfq": True, "dual": True, "group_size": 128,
                "lanes": lanes, "interleave": sets,
                "share": MatrixEngine.cell_share(lanes, tn, sets)}

    @staticmethod
    def cell_share(lanes: int, tn: int, sets: int = 1) -> int:
        """Columns per array cell: the largest power of two that divides ``tn`` and is at
        most the cell's group interval (its tail takes one column per cycle, and a cell
        takes a group at most every ``group_interval`` cycles)."""
        gi = GroupDot.group_interval_for(group_size=128, lanes=lanes, interleave=sets)
        q = 1
        while tn % (2 * q) == 0 and 2 * q <= gi:
            q *= 2
        return q

    @classmethod
    def cell_latency(cls, lanes: int, tn: int = 1, sets: int = 1) -> int:
        """Cycles from a dot product's final beat to its result (one array cell), without
        building a cell (:func:`fpqvar_hw.checked.latency_of`)."""
        return latency_of(GroupDot, **cls.cell_params(lanes, tn, sets))

    @classmethod
    def cell_group_interval(cls, lanes: int, sets: int = 1) -> int:
        """Fewest cycles between consecutive groups of one array cell (its ``lanes``-wide
        beats, or its accumulator loop's share per row set when longer;
        ``GroupDot.group_interval_for``)."""
        p = cls.cell_params(lanes, 1, sets)
        return GroupDot.group_interval_for(group_size=p["group_size"], lanes=p["lanes"],
                                           interleave=sets)

    @staticmethod
    def engine_signature() -> wiring.Signature:
        """The engine's ports (the same for every configuration; the class docstring):
        what the top connects, readable without building an engine."""
        return wiring.Signature({
            "cmd": In(stream.Signature(isa.INSTR_LAYOUT)),
            "busy": Out(1), "error": Out(4), "abort": In(1), "fine": In(1),
            "dram_base": In(32), "dram_size": In(32),
            "rd_act": Out(axi.ReadClient()), "rd_w": Out(axi.ReadClient()),
            "rd_ws": Out(axi.ReadClient()), "rd_bias": Out(axi.ReadClient()),
            "wr": Out(axi.WriteClient()),
        })

    def elaborate(self, platform):
        m = Module()
        w = self.cmd.payload
        hdr = w[0]
        fields = {name: Signal(32, name=f"f_{name}") for name in (
            "act", "act_stride", "m", "k", "n", "w", "ws", "bias", "out", "out_stride", "signs")}
        index = {"act": isa.GEMM_ACT, "act_stride": isa.GEMM_ACT_STRIDE, "m": isa.GEMM_M,
                 "k": isa.GEMM_K, "n": isa.GEMM_N, "w": isa.GEMM_W, "ws": isa.GEMM_WS,
                 "bias": isa.GEMM_BIAS, "out": isa.GEMM_OUT, "out_stride": isa.GEMM_OUT_STRIDE,
                 "signs": isa.GEMM_SIGNS}
        subop = Signal(isa.HDR_SUBOP_BITS)
        flags = Signal(isa.HDR_FLAGS_BITS)
        had = flags[0]
        use_bias = flags[1]

        # ------------------------------------------------------------ field checks
        def mis(v, a):
            return v[:exact_log2(a)] != 0

        def bad_fields(f, subop, flags):
            had, use_bias = flags[0], flags[1]
            return ((subop > int(max(isa.GemmSubop)))
                    | ((flags & ~int(isa.GemmFlag.HAD | isa.GemmFlag.BIAS)) != 0)
                    | (f["m"] == 0) | (f["n"] == 0) | (f["k"] == 0) | mis(f["k"], isa.K_ALIGN)
                    | (f["k"] > self.max_k)
                    | mis(f["act"], 16) | mis(f["act_stride"], 16) | mis(f["w"], 16)
                    | mis(f["ws"], 16) | (use_bias & mis(f["bias"], 16))
                    | (had & mis(f["signs"], 16)) | mis(f["out"], 4) | mis(f["out_stride"], 4))
        # checked on the command as it is taken and registered with the fields: CHECK
        # decides from a register (the checks do not reach the datapath's go)
        bad = Signal()
        cmd_sub = hdr[isa.HDR_SUBOP_SHIFT:][:isa.HDR_SUBOP_BITS]
        cmd_flags = hdr[isa.HDR_FLAGS_SHIFT:][:isa.HDR_FLAGS_BITS]
        cmd_bad = bad_fields({name: w[index[name]] for name in fields}, cmd_sub, cmd_flags)

        # ------------------------------------------------------------ datapath
        flush = Signal()
        go = Signal()
        dp = _Datapath(self, fields, dfq=subop[0], had=had, use_bias=use_bias, go=go)
        m.submodules.dp = ResetInserter(flush)(dp)

        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                # the fields follow the payload while idle (the datapath is flushed): only
                # the state, busy and error wait on cmd.valid, not some 700 field registers
                m.d.sync += [sig.eq(w[index[name]]) for name, sig in fields.items()]
                m.d.sync += [subop.eq(cmd_sub), flags.eq(cmd_flags), bad.eq(cmd_bad)]
                with m.If(self.cmd.valid):
                    m.d.sync += [self.error.eq(0), self.busy.eq(1)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(bad):
                    m.d.sync += [self.error.eq(isa.ErrorCode.FIELD), self.busy.eq(0)]
                    m.next = "IDLE"
                with m.Elif(self.abort):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += go.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(dp.window_error):
                    m.d.sync += self.error.eq(isa.ErrorCode.ADDRESS)
                    m.next = "DRAIN"
                with m.Elif(dp.read_error):
                    m.d.sync += self.error.eq(isa.ErrorCode.AXI_READ)
                    m.next = "DRAIN"
                with m.Elif(dp.write_error):
                    m.d.sync += self.error.eq(isa.ErrorCode.AXI_WRITE)
                    m.next = "DRAIN"
                with m.Elif(self.abort):
                    m.next = "DRAIN"
                with m.Elif(dp.done):
                    m.next = "FLUSH"
            with m.State("DRAIN"):
                m.d.comb += dp.stop.eq(1)
                with m.If(dp.quiet):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.comb += [flush.eq(1), dp.stop.eq(1)]
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"
        return m


class _Datapath(Elaboratable):
    """Everything of :class:`MatrixEngine` below its command FSM (flushed as one unit).

    Drives the engine's DMA ports directly.  Inputs: the latched instruction
    ``fields``, ``dfq``/``had``/``use_bias``, ``go`` (1-cycle start), ``stop``.
    Outputs: ``done`` (results written and acknowledged), ``quiet`` (nothing
    outstanding), sticky ``window_error``, ``read_error``, ``write_error``.
    """

    def __init__(self, eng: MatrixEngine, fields, *, dfq, had, use_bias, go):
        self.eng, self.f = eng, fields
        self.dfq, self.had, self.use_bias, self.go = dfq, had, use_bias, go
        self.stop = Signal()
        self.done = Signal()
        self.quiet = Signal()
        self.window_error = Signal()
        self.read_error = Signal()
        self.write_error = Signal()

    def elaborate(self, platform):
        m = Module()
        e, f = self.eng, self.f
        tm, tn, lanes, Q = e.tm, e.tn, e.lanes, e.qlanes
        D, TM = e.sets, e.gemm_rows          # row sets; rows per row block (weight pass)
        # the fine-pipeline switch, registered (a run-level setting: no path from the
        # controller's register into the throttles' fan-out)
        fine = Signal()
        m.d.sync += fine.eq(e.fine)
        readers = {}
        for name in ("rd_act", "rd_w", "rd_ws", "rd_bias"):
            r = BurstReader(depth=e.fifo_words)
            m.submodules[name] = readers[name] = r
            wiring.connect(m, wiring.flipped(getattr(e, name)), r.bus)
            m.d.comb += [r.base.eq(e.dram_base), r.size.eq(e.dram_size), r.stop.eq(self.stop)]

        # -------------------------------------------------- sizes of this GEMM
        K, M, N = f["k"], f["m"], f["n"]
        kb_bits = ceil_log2(e.max_k // lanes)
        g_bits = ceil_log2(e.max_k // 128)
        KB = Signal(kb_bits + 1)          # beats (buffer words) per row
        G = Signal(g_bits + 1)            # groups per row
        m.d.comb += [KB.eq(K[exact_log2(lanes):]), G.eq(K[7:])]
        # the last beat's index, registered (valid from the cycle after go: the fields are
        # held from the command on, and no row is complete before RUN)
        KB_m1, KB_m2 = Signal(kb_bits + 1), Signal(kb_bits + 1)
        G_m1 = Signal(g_bits + 1)
        m.d.sync += [KB_m1.eq(KB - 1), KB_m2.eq(KB - 2), G_m1.eq(G - 1)]
        tw = tn * e.code_words            # bus words per array beat
        bpg = 128 // lanes                # array beats per group

        # ================================================= job generators
        # rd_act: the sign word (HAD), then each row (K/4 words)
        act_job = readers["rd_act"].job
        aj_left = Signal(32)       # rows still to request
        aj_addr = Signal(32)
        aj_signs = Signal()
        aj_on = Signal()
        with m.If(self.go):
            m.d.sync += [aj_left.eq(M), aj_addr.eq(f["act"]), aj_signs.eq(self.had), aj_on.eq(1)]
        m.d.comb += act_job.valid.eq(aj_on & ~self.stop)     # no job under stop (BurstReader)
        with m.If(aj_signs):
            m.d.comb += [act_job.payload.addr.eq(f["signs"]), act_job.payload.words.eq(1)]
        with m.Else():
            m.d.comb += [act_job.payload.addr.eq(aj_addr), act_job.payload.words.eq(K[2:])]
        with m.If(act_job.valid & act_job.ready):
            with m.If(aj_signs):
                m.d.sync += aj_signs.eq(0)
            with m.Else():
                m.d.sync += [aj_addr.eq(aj_addr + f["act_stride"]), aj_left.eq(aj_left - 1)]
                with m.If(aj_left == 1):
                    m.d.sync += aj_on.eq(0)

        # rd_w / rd_ws / rd_bias: per row block, per feature block
        def block_jobs(name, base, words, step, enable, addr_of=None):
            """One job per (row block, feature block); ``addr_of(f0)`` overrides the
            running address ``base + step * feature_block``."""
            job = readers[name].job
            # rows / features from this block on count down (no adder in front of a compare)
            left_r, left_f, f0, addr, on = (
                Signal(32, name=f"{name}_left_r"), Signal(32, name=f"{name}_left_f"),
                Signal(32, name=f"{name}_f0"), Signal(32, name=f"{name}_addr"),
                Signal(name=f"{name}_on"))
            with m.If(self.go):
                m.d.sync += [left_r.eq(M), left_f.eq(N), f0.eq(0), addr.eq(base), on.eq(enable)]
            m.d.comb += [job.valid.eq(on & ~self.stop), job.payload.words.eq(words),
                         job.payload.addr.eq(addr if addr_of is None else addr_of(f0))]
            with m.If(job.valid & job.ready):
                m.d.sync += [f0.eq(f0 + tn), left_f.eq(left_f - tn), addr.eq(addr + step)]
                with m.If(left_f <= tn):
                    m.d.sync += [f0.eq(0), left_f.eq(N), addr.eq(base), left_r.eq(left_r - TM)]
                    with m.If(left_r <= TM):
                        m.d.sync += on.eq(0)
            return f0
        w_words = Signal(32)
        m.d.comb += w_words.eq(KB * tw)
        block_jobs("rd_w", f["w"], w_words, w_words << 4, 1)
        s_words = Signal(32)
        m.d.comb += s_words.eq(G * e.scale_words)
        block_jobs("rd_ws", f["ws"], s_words, s_words << 4, 1)
        # bias: the words covering features [f0, f0 + tn) (bias is padded to a multiple of tn)
        bj_f0 = Signal(32)
        b_first = Signal(32)
        bias_words = Signal(32)
        m.d.comb += [b_first.eq(bj_f0 << 2),      # words: from the first one's offset on
                     bias_words.eq(((bj_f0[:2] + (tn - 1)) >> 2) + 1)]
        bj = block_jobs("rd_bias", 0, bias_words, 0, self.use_bias,
                        addr_of=lambda _: f["bias"] + Cat(Const(0, 4), b_first[4:]))
        m.d.comb += bj_f0.eq(bj)

        # ================================================= loader
        # register slices (skid_buffer) after the reader, the converter and the Hadamard unit:
        # the stream readies between the units are registered there
        act_rd = readers["rd_act"].data
        a_ready = Signal()
        a_in_ready, a_valid, a_data = skid_buffer(m, act_rd.valid, act_rd.payload, a_ready, "act")
        m.d.comb += act_rd.ready.eq(a_in_ready)
        signs = Signal(128)
        want_signs = Signal()
        with m.If(self.go):
            m.d.sync += want_signs.eq(self.had)
        m.submodules.cvt = cvt = FPUnit(FPOp.CONVERT, FP32, dst=FP16, lanes=4)
        ok_c, hook_c = _gate(m, fine, cvt.latency, "cvt")
        with m.If(want_signs):
            m.d.comb += a_ready.eq(1)
            with m.If(a_valid):
                m.d.sync += [signs.eq(a_data), want_signs.eq(0)]
        with m.Else():
            m.d.comb += [cvt.i.valid.eq(a_valid & ok_c), a_ready.eq(cvt.i.ready & ok_c),
                         cvt.i.payload.as_value().eq(a_data)]
        hook_c(cvt.i.valid & cvt.i.ready)
        c_ready = Signal()
        c_in_ready, c_valid, c_data = skid_buffer(m, cvt.o.valid, cvt.o.payload.as_value(),
                                                  c_ready, "cvt_out")
        m.d.comb += cvt.o.ready.eq(c_in_ready)

        # gearbox 4 -> Q FP16 lanes
        q_fire = Signal()
        g_ready, g_slots, g_full = _gearbox(m, c_valid, c_data, Q // 4, q_fire, "x16_")
        m.d.comb += c_ready.eq(g_ready)
        x16 = Cat(*g_slots)

        # Hadamard (flag HAD) or bypass
        m.submodules.had = hu = GroupHadamard(lanes=Q)
        m.d.comb += hu.signs.eq(signs)
        qin_valid, qin_ready, qin_data = Signal(), Signal(), Signal(16 * Q)
        ok_h, hook_h = _gate(m, fine, HAD_LATENCY, "had")
        # a register slice in front of the Hadamard unit (its ready does not reach the
        # gearbox)
        h_ready = Signal()
        h_in_ready, h_valid, h_data = skid_buffer(m, g_full, x16, h_ready, "hadin")
        m.d.comb += [q_fire.eq(g_full & h_in_ready), hu.i.payload.as_value().eq(h_data)]
        with m.If(self.had):
            m.d.comb += [hu.i.valid.eq(h_valid & ok_h), h_ready.eq(hu.i.ready & ok_h),
                         qin_valid.eq(hu.o.valid), hu.o.ready.eq(qin_ready),
                         qin_data.eq(hu.o.payload.as_value())]
        with m.Else():
            m.d.comb += [qin_valid.eq(h_valid), h_ready.eq(qin_ready), qin_data.eq(h_data)]
        hook_h(hu.i.valid & hu.i.ready)
        qs_ready = Signal()
        qs_in_ready, qs_valid, qs_data = skid_buffer(m, qin_valid, qin_data, qs_ready, "qin")
        m.d.comb += qin_ready.eq(qs_in_ready)

        # quantizers: plain (sub-op 0) and DFQ (sub-op 1); one output format for the writer
        m.submodules.qplain = qp = Quantizer(format=str(e.cfg.qkv_act), group_size=128, lanes=Q)
        m.submodules.qdfq = qd = Quantizer(format=str(e.cfg.fc2_act), group_size=128, lanes=Q)
        ok_q, hook_q = _gate(m, fine, QUANT_LATENCY, "quant")
        qo = Signal(data.StructLayout({"codes": _CODE_BITS * Q, "s_pos": 16, "s_neg": 16, "last": 1}))
        qo_valid, qo_ready = Signal(), Signal()
        for qq, sel in ((qp, ~self.dfq), (qd, self.dfq)):
            # o.ready straight from the register (the quantizer not selected is empty: it
            # gets no input in this instruction and drained its last one)
            m.d.comb += qq.o.ready.eq(qo_ready)
            with m.If(sel):
                m.d.comb += [qq.i.valid.eq(qs_valid & ok_q), qs_ready.eq(qq.i.ready & ok_q),
                             qq.i.payload.as_value().eq(qs_data),
                             qo_valid.eq(qq.o.valid),
                             qo.codes.eq(qq.o.payload.codes.as_value()),
                             qo.last.eq(qq.o.payload.last)]
        m.d.comb += [qo.s_pos.eq(Mux(self.dfq, qd.o.payload.scales[1].as_value(),
                                     qp.o.payload.scales[0].as_value())),
                     qo.s_neg.eq(Mux(self.dfq, qd.o.payload.scales[0].as_value(), 0))]
        hook_q(qs_valid & qs_ready)

        # activation buffer: per array row i, two banks of D row sets (rows s*tm + i of
        # the row block) of codes and scale pairs; address (beat or group, set, bank)
        kb_max, g_max = e.max_k // lanes, e.max_k // 128
        act_rd, sc_rd, act_wr, sc_wr = [], [], [], []

        def buf_addr(index, rset, bank):
            return Cat(index, rset, bank) if D > 1 else Cat(index, bank)
        for i in range(tm):
            am = Memory(shape=_CODE_BITS * lanes, depth=2 * D * kb_max, init=[])
            sm = Memory(shape=32, depth=2 * D * g_max, init=[])
            m.submodules[f"abuf{i}"], m.submodules[f"sbuf{i}"] = am, sm
            act_wr.append(am.write_port())
            act_rd.append(am.read_port())
            sc_wr.append(sm.write_port())
            sc_rd.append(sm.read_port())
        bank_full = Signal(2)
        set_full = Signal(2)
        clr_full = Signal(2)
        bank_full_n = Signal(2)
        m.d.comb += bank_full_n.eq((bank_full | set_full) & ~clr_full)
        m.d.sync += bank_full.eq(bank_full_n)

        # writer: R quantizer beats -> one buffer word
        R = lanes // Q
        wbank = Signal()
        wrow = Signal(range(tm))
        wset = Signal(range(max(D, 2)))
        wkb = Signal(kb_bits)
        wg = Signal(g_bits)
        wsub = Signal(range(max(R, 2)))   # one bit even when R == 1 (no zero-width signal)
        wrows_left = Signal(32)
        # registers for the loader's decisions: wkb_last = (wkb == KB - 1) (the row's last
        # word), blk_last = this row ends the row block (its TM-th row, or the GEMM's last),
        # from blk_rows = rows of the block from this one on
        wkb_last, blk_last = Signal(), Signal()
        blk_done = Signal()               # the row block's last word is written this cycle
        blk_rows = Signal(32)
        with m.If(self.go):
            m.d.sync += [wbank.eq(0), wrow.eq(0), wset.eq(0), wkb.eq(0), wg.eq(0), wsub.eq(0),
                         wrows_left.eq(M), wkb_last.eq(KB == 1),
                         blk_rows.eq(Mux(M < TM, M, TM)), blk_last.eq((M == 1) | (TM == 1))]
        hold = [Signal(_CODE_BITS * Q, name=f"wgear{k}") for k in range(R - 1)]
        # qo_ready = ~bank_full[wbank] (the loader's bank has room), as a register: from the
        # next values (the quantizer's o.ready reaches some 6 LUT levels into it)
        qo_ready_r = Signal(init=1)
        m.d.comb += qo_ready.eq(qo_ready_r)
        wfire = qo_valid & qo_ready
        word_done = Signal()
        m.d.comb += word_done.eq(wfire & (wsub == R - 1))
        with m.If(wfire):
            m.d.sync += wsub.eq(Mux(wsub == R - 1, 0, wsub + 1))
            for k in range(R - 1):
                with m.If(wsub == k):
                    m.d.sync += hold[k].eq(qo.codes)
        for i in range(tm):
            m.d.comb += [act_wr[i].addr.eq(buf_addr(wkb, wset, wbank)),
                         act_wr[i].data.eq(Cat(*hold, qo.codes)),
                         act_wr[i].en.eq(word_done & (wrow == i)),
                         sc_wr[i].addr.eq(buf_addr(wg, wset, wbank)),
                         sc_wr[i].data.eq(Cat(qo.s_pos, qo.s_neg)),
                         sc_wr[i].en.eq(wfire & qo.last & (wrow == i))]
        with m.If(wfire & qo.last):
            m.d.sync += wg.eq(wg + 1)
        with m.If(word_done):
            m.d.sync += [wkb.eq(wkb + 1), wkb_last.eq(wkb == KB_m2)]
            with m.If(wkb_last):                      # row complete
                m.d.sync += [wkb.eq(0), wg.eq(0), wrow.eq(wrow + 1), wrows_left.eq(wrows_left - 1),
                             wkb_last.eq(KB_m1 == 0),
                             blk_rows.eq(blk_rows - 1), blk_last.eq(blk_rows == 2)]
                with m.If(wrow == tm - 1):               # set complete
                    m.d.sync += [wrow.eq(0), wset.eq(wset + 1)]
                with m.If(blk_last):                      # block complete
                    m.d.comb += [set_full.bit_select(wbank, 1).eq(1), blk_done.eq(1)]
                    m.d.sync += [wrow.eq(0), wset.eq(0), wbank.eq(~wbank),
                                 blk_rows.eq(Mux(wrows_left - 1 < TM, wrows_left - 1, TM)),
                                 blk_last.eq((wrows_left == 2) | (TM == 1))]
        wbank_n = Mux(blk_done, ~wbank, Mux(self.go, 0, wbank))
        m.d.sync += qo_ready_r.eq(~bank_full_n.bit_select(wbank_n, 1))

        # ================================================= compute
        # weight and scale words through register slices: the array's ready (all cells)
        # ends there, not in the readers' FIFOs
        cw_rd, cs_rd = readers["rd_w"].data, readers["rd_ws"].data
        w_ready, s_ready = Signal(), Signal()
        cw_in_ready, cw_valid, cw_data = skid_buffer(m, cw_rd.valid, cw_rd.payload, w_ready, "w")
        cs_in_ready, cs_valid, cs_data = skid_buffer(m, cs_rd.valid, cs_rd.payload, s_ready, "ws")
        m.d.comb += [cw_rd.ready.eq(cw_in_ready), cs_rd.ready.eq(cs_in_ready)]

        # weight groups: the gearbox gathers a beat of tn weight words, the beats of a group
        # (and its scale words) go into one half of the replay buffer; the array reads the
        # group D times (once per row set) from the other half meanwhile
        p_fire = Signal()
        w_rdy, w_slots, w_full = _gearbox(m, cw_valid, cw_data, tw, p_fire, "wgear")
        p_kbi = Signal(range(bpg))          # the producer's beat within its group
        p_last = Signal()                   # p_kbi == bpg - 1, as a register
        s_rdy, s_slots, s_full = _gearbox(m, cs_valid, cs_data, e.scale_words, p_fire & p_last,
                                          "sgear")
        m.d.comb += [w_ready.eq(w_rdy), s_ready.eq(s_rdy)]
        wbuf = Memory(shape=128 * tw, depth=2 * bpg, init=[])
        m.submodules.wbuf = wbuf
        wb_wr, wb_rd = wbuf.write_port(), wbuf.read_port()
        g_scales = [Signal(128 * e.scale_words, name=f"g_scales{h}") for h in range(2)]
        half_full = Signal(2)
        half_set, half_clr = Signal(2), Signal(2)
        half_full_n = Signal(2)
        m.d.comb += half_full_n.eq((half_full | half_set) & ~half_clr)
        m.d.sync += half_full.eq(half_full_n)
        p_half = Signal()
        with m.If(self.go):
            m.d.sync += [p_half.eq(0), p_kbi.eq(0), p_last.eq(bpg == 1)]
        m.d.comb += p_fire.eq(w_full & ~half_full.bit_select(p_half, 1) & (~p_last | s_full))
        m.d.comb += [wb_wr.addr.eq(Cat(p_kbi, p_half)), wb_wr.data.eq(Cat(*w_slots)),
                     wb_wr.en.eq(p_fire)]
        with m.If(p_fire):
            m.d.sync += [p_kbi.eq(Mux(p_last, 0, p_kbi + 1)),
                         p_last.eq(Mux(p_last, bpg == 1, p_kbi == bpg - 2))]
            with m.If(p_last):
                m.d.comb += half_set.bit_select(p_half, 1).eq(1)
                m.d.sync += [g_scales[0].eq(Mux(p_half, g_scales[0], Cat(*s_slots))),
                             g_scales[1].eq(Mux(p_half, Cat(*s_slots), g_scales[1])),
                             p_half.eq(~p_half)]

        cbank = Signal()
        c_left_r = Signal(32)      # rows from this row block on (M - first row)
        c_left_f = Signal(32)      # features from this feature block on
        c_g = Signal(g_bits)
        c_kbi = Signal(range(bpg))
        c_set = Signal(range(max(D, 2)))
        c_half = Signal()
        c_on = Signal()
        with m.If(self.go):
            m.d.sync += [cbank.eq(0), c_left_r.eq(M), c_left_f.eq(N), c_g.eq(0), c_kbi.eq(0),
                         c_set.eq(0), c_half.eq(0), c_on.eq(1)]
        b_valid = Signal()
        have = Signal()
        b_ws = Signal(128 * e.scale_words)
        b_last = Signal()
        # cell (i, jc) computes columns jc*Q .. jc*Q+Q-1 of row i (one FP32 tail for Q),
        # one dot product per row set (interleave D)
        Q = e.cell_share(lanes, tn, D)
        cells = [[GroupDot(**e.cell_params(lanes, tn, D)) for _ in range(tn // Q)]
                 for _ in range(tm)]
        for i in range(tm):
            for jc in range(tn // Q):
                m.submodules[f"cell{i}_{jc}"] = cells[i][jc]
        flat = [c for row in cells for c in row]
        # every cell sees the same beats and the same o.ready (the drain takes all results
        # at once): they run in lockstep, so one cell's i.ready is the array's (no AND tree
        # over the array), as flat[0].o.valid is the array's below
        arr_ready = Signal()
        m.d.comb += arr_ready.eq(flat[0].i.ready)
        # the beat (weights, scales, activation words of every row) passes a register slice
        # (skid_buffer, MatrixEngine.ARRAY_SLICES) on its way to the array: taking a beat
        # depends on the slice's registered ready only.  The buffers' read ports give the
        # words the cycle after a_fire, with b_valid.
        beat_in = Cat(wb_rd.data, b_ws, b_last, *[act_rd[i].data for i in range(tm)],
                      *[sc_rd[i].data for i in range(tm)])
        f_in_ready, f_valid, f_beat = skid_buffer(m, b_valid, beat_in, arr_ready, "feed")
        b_take = b_valid & f_in_ready
        # cycles from a dot product's final beat to its result (every cell alike)
        ok_d, hook_d = _gate(m, fine, cells[0][0].latency, "dot")
        a_fire = Signal()
        beat_end = Signal()         # the last beat of a group (of this row set)
        group_end = Signal()        # ... and of the last row set: the weight group is done
        m.d.comb += [beat_end.eq(c_kbi == bpg - 1), group_end.eq(beat_end & (c_set == D - 1)),
                     a_fire.eq(c_on & have & ok_d & (~b_valid | b_take))]
        hook_d(a_fire)
        c_kb = Cat(c_kbi, c_g) if bpg > 1 else c_g      # beat index in the row
        for i in range(tm):
            m.d.comb += [act_rd[i].addr.eq(buf_addr(c_kb, c_set, cbank)), act_rd[i].en.eq(a_fire),
                         sc_rd[i].addr.eq(buf_addr(c_g, c_set, cbank)), sc_rd[i].en.eq(a_fire)]
        m.d.comb += [wb_rd.addr.eq(Cat(c_kbi, c_half) if bpg > 1 else c_half),
                     wb_rd.en.eq(a_fire)]
        nb_last = Signal()
        m.d.comb += nb_last.eq(c_left_f <= tn)
        # have = bank_full[cbank] & half_full[c_half] (the row block's activations and the
        # weight group are on chip), as a register: from the next values of all four
        blk_end = a_fire & group_end & (c_g == G_m1) & nb_last
        c_half_n = Mux(a_fire & group_end, ~c_half, Mux(self.go, 0, c_half))
        cbank_n = Mux(blk_end, ~cbank, Mux(self.go, 0, cbank))
        m.d.sync += have.eq(bank_full_n.bit_select(cbank_n, 1) & half_full_n.bit_select(c_half_n, 1))
        with m.If(a_fire):
            m.d.sync += [b_valid.eq(1), b_ws.eq(Mux(c_half, g_scales[1], g_scales[0])),
                         b_last.eq(c_g == G_m1), c_kbi.eq(Mux(beat_end, 0, c_kbi + 1))]
            with m.If(beat_end):
                m.d.sync += c_set.eq(Mux(c_set == D - 1, 0, c_set + 1))
            with m.If(group_end):                   # the weight group served every row set
                m.d.comb += half_clr.bit_select(c_half, 1).eq(1)
                m.d.sync += [c_half.eq(~c_half), c_g.eq(c_g + 1)]
                with m.If(c_g == G_m1):             # feature block done
                    m.d.sync += [c_g.eq(0), c_left_f.eq(c_left_f - tn)]
                    with m.If(nb_last):             # row block done: release the bank
                        m.d.comb += clr_full.bit_select(cbank, 1).eq(1)
                        m.d.sync += [c_left_f.eq(N), cbank.eq(~cbank), c_left_r.eq(c_left_r - TM)]
                        with m.If(c_left_r <= TM):
                            m.d.sync += c_on.eq(0)
        with m.Elif(b_take):
            m.d.sync += b_valid.eq(0)
        cb = 128 * e.code_words
        fields, at = [], 0
        for width in ([len(wb_rd.data), len(b_ws), 1] + [len(act_rd[i].data) for i in range(tm)]
                      + [len(sc_rd[i].data) for i in range(tm)]):
            fields.append(f_beat[at:at + width])
            at += width
        f_w, f_ws, f_last = fields[:3]
        for i in range(tm):
            a_word = fields[3 + i]
            s_pair = fields[3 + tm + i]
            for jc in range(tn // Q):
                c = cells[i][jc]
                p = c.i.payload
                m.d.comb += [c.i.valid.eq(f_valid),
                             p.a.as_value().eq(a_word),
                             p.s_a.as_value().eq(s_pair[:16]), p.s_a_neg.as_value().eq(s_pair[16:]),
                             p.last.eq(f_last), p.plain.eq(~self.dfq)]
                for q in range(Q):
                    j = jc * Q + q
                    w_j = f_w[j * cb:j * cb + _CODE_BITS * lanes]
                    s_j = f_ws[16 * j:16 * j + 16]
                    if Q == 1:
                        m.d.comb += [p.w.as_value().eq(w_j), p.s_w.as_value().eq(s_j)]
                    else:
                        m.d.comb += [p.w[q].as_value().eq(w_j), p.s_w[q].as_value().eq(s_j)]

        # ================================================= drain
        # capture: per array row, the tn results of each row set, for two feature blocks
        # (the array computes the next block while the drain empties this one)
        cap_wr, cap_rd = [], []
        for i in range(tm):
            cm = Memory(shape=32 * tn, depth=2 * D, init=[])
            m.submodules[f"cap{i}"] = cm
            cap_wr.append(cm.write_port())
            cap_rd.append(cm.read_port())
        cap_full = Signal(2)
        cap_set, cap_clr = Signal(2), Signal(2)
        m.d.sync += cap_full.eq((cap_full | cap_set) & ~cap_clr)
        k_half = Signal()
        k_set = Signal(range(max(D, 2)))
        with m.If(self.go):
            m.d.sync += [k_half.eq(0), k_set.eq(0)]
        k_ok = Signal()
        m.d.comb += k_ok.eq(~cap_full.bit_select(k_half, 1))
        for c in flat:
            m.d.comb += c.o.ready.eq(k_ok)
        k_fire = flat[0].o.valid & k_ok
        for i in range(tm):
            m.d.comb += [cap_wr[i].addr.eq(Cat(k_set, k_half) if D > 1 else k_half),
                         cap_wr[i].en.eq(k_fire),
                         cap_wr[i].data.eq(Cat(*[cells[i][j // Q].o.payload.as_value() if Q == 1
                                                 else cells[i][j // Q].o.payload[j % Q].as_value()
                                                 for j in range(tn)]))]
        with m.If(k_fire):
            m.d.sync += k_set.eq(Mux(k_set == D - 1, 0, k_set + 1))
            with m.If(k_set == D - 1):
                m.d.comb += cap_set.bit_select(k_half, 1).eq(1)
                m.d.sync += k_half.eq(~k_half)
        r_half = Signal()          # the capture half the drain empties
        cap_take = Signal()        # the drain is done with it
        with m.If(self.go):
            m.d.sync += r_half.eq(0)
        with m.If(cap_take):
            m.d.comb += cap_clr.bit_select(r_half, 1).eq(1)
            m.d.sync += r_half.eq(~r_half)

        bias = [Signal(32, name=f"bias{j}") for j in range(tn)]
        bd = readers["rd_bias"].data
        # rows / features still to drain from this row / feature block on (registers, so no
        # path subtracts from the instruction's M / N)
        d_left_r, d_left_f, d_fb = Signal(32), Signal(32), Signal(32)
        d_last_r = Signal(range(TM))           # the block's last row (registered in BIAS)
        d_cols = Signal(range(tn + 1))         # features of the block inside N (in BIAS)
        d_row_addr, d_blk_addr, d_col = Signal(32), Signal(32), Signal(32)
        d_r = Signal(range(tm))                # row of the set
        d_s = Signal(range(max(D, 2)))         # row set
        d_ra = Signal(range(TM))               # row of the block (d_s * tm + d_r)
        m.d.comb += [r.addr.eq(Cat(d_s, r_half) if D > 1 else r_half) for r in cap_rd]
        d_t = Signal(range(tn))
        # d_t == tn - 1, d_r == tm - 1, d_ra == d_last_r (EMIT) and whether the feature block
        # and the row block end with this one (FLUSH), as registers
        t_last, r_last, ra_last, last_nb_r, last_blk_r = (Signal() for _ in range(5))
        d_bw = Signal(range(tn // 4 + 3))   # bias words still to read for this feature block
        d_k = Signal(range(tn // 4 + 3))    # bias words read so far

        # stage 0 of the output pipeline (registered), then the FP32 add (an AddPipe:
        # BIAS_ADD_LATENCY stages)
        en = Signal()
        item_layout = data.StructLayout({"value": 32, "bias": 32, "addr": 32, "write": 1,
                                         "flush": 1, "final": 1})
        s0 = Signal(item_layout)
        s0_valid = Signal()
        emit = Signal()
        item = Signal(item_layout)
        ok_b, hook_b = _gate(m, fine, BIAS_ADD_LATENCY, "bias")
        # the FSM's items pass a register slice (skid_buffer: the FSM waits on a registered
        # ready, not on the output pipeline's enable) into stage 0
        sk_ready, sk_valid, sk_item = skid_buffer(m, emit, item.as_value(), en, "drain")
        with m.If(en):
            m.d.sync += [s0_valid.eq(sk_valid), s0.eq(sk_item)]
        hook_b(emit)
        # the results of the row being emitted (PICK copies row 0 of a set from the read
        # registers, each row's last item the next row): an item selects among tn values,
        # not tm x tn
        row_vals = Signal(32 * tn)
        d_r_next = Signal(range(tm + 1))       # d_r + 1
        df = Dataflow(m, en, "badd_")
        sum_ = df.add(Val(s0.value, 0), Val(s0.bias, 0))
        L = sum_.stage
        assert L == BIAS_ADD_LATENCY, f"bias add: {L} stages, BIAS_ADD_LATENCY {BIAS_ADD_LATENCY}"
        s2 = Signal(item_layout)
        m.d.comb += s2.eq(df.at(Val(s0.as_value(), 0), L))
        s2_valid = df.at(Val(s0_valid, 0), L)
        s2_value = Mux(self.use_bias, df.at(sum_, L), s2.value)

        with m.FSM(name="drain"):
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += [d_left_r.eq(M), d_left_f.eq(N), d_fb.eq(0),
                                 d_blk_addr.eq(f["out"])]
                    m.next = "BIAS"
            with m.State("BIAS"):
                m.d.sync += [last_nb_r.eq(d_left_f <= tn), last_blk_r.eq(d_left_r <= TM)]
                # the block's tn FP32 biases start at word offset d_fb[2:4] of a 16-byte word
                m.d.sync += [d_bw.eq(Mux(self.use_bias, ((d_fb[2:4] + (tn - 1)) >> 2) + 1, 0)),
                             d_k.eq(0),
                             d_last_r.eq(Mux(d_left_r < TM, d_left_r - 1, TM - 1)),
                             d_cols.eq(Mux(d_left_f < tn, d_left_f, tn))]
                m.next = "BIAS_READ"
            with m.State("BIAS_READ"):
                m.d.comb += bd.ready.eq(d_bw != 0)
                with m.If(bd.valid & (d_bw != 0)):
                    m.d.sync += [d_bw.eq(d_bw - 1), d_k.eq(d_k + 1)]
                    for j in range(tn):
                        slot = d_fb[2:4] + j            # bias j: beat slot >> 2, word slot % 4
                        with m.If((slot >> 2) == d_k):
                            m.d.sync += bias[j].eq(bd.payload.word_select(slot[:2], 32))
                with m.If(d_bw == 0):
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(cap_full.bit_select(r_half, 1)):
                    m.d.sync += [d_r.eq(0), d_s.eq(0), d_ra.eq(0), d_t.eq(0),
                                 d_row_addr.eq(d_blk_addr), d_col.eq(d_fb),
                                 t_last.eq(tn == 1), r_last.eq(tm == 1), ra_last.eq(d_last_r == 0),
                                 d_r_next.eq(1)]
                    m.next = "LOAD"
            with m.State("LOAD"):                  # the set's results into the read registers
                m.d.comb += [r.en.eq(1) for r in cap_rd]
                m.next = "PICK"
            with m.State("PICK"):                  # the set's first row
                m.d.sync += row_vals.eq(cap_rd[0].data)
                m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [emit.eq(sk_ready & ok_b),
                             item.value.eq(row_vals.word_select(d_t, 32)),
                             item.bias.eq(Array(bias)[d_t]),
                             item.addr.eq(d_row_addr + d_col),
                             item.write.eq(d_t < d_cols)]
                with m.If(emit):
                    m.d.sync += [d_t.eq(d_t + 1), d_col.eq(d_col + 4), t_last.eq(d_t == tn - 2)]
                    with m.If(t_last):
                        m.d.sync += [d_t.eq(0), d_col.eq(d_fb), d_r.eq(d_r + 1), d_ra.eq(d_ra + 1),
                                     d_row_addr.eq(d_row_addr + f["out_stride"]),
                                     t_last.eq(tn == 1), r_last.eq(d_r == tm - 2),
                                     ra_last.eq(d_ra + 1 == d_last_r),
                                     row_vals.eq(Array(r.data for r in cap_rd)[d_r_next]),
                                     d_r_next.eq(d_r_next + 1)]
                        with m.If(ra_last):
                            m.next = "FLUSH"
                        with m.Elif(r_last):
                            m.d.sync += [d_r.eq(0), d_s.eq(d_s + 1), r_last.eq(tm == 1),
                                         d_r_next.eq(1)]
                            m.next = "LOAD"
            with m.State("FLUSH"):
                last_nb, last_blk = last_nb_r, last_blk_r
                m.d.comb += [emit.eq(sk_ready & ok_b), item.flush.eq(1),
                             item.final.eq(last_nb & last_blk)]
                with m.If(emit):
                    m.d.comb += cap_take.eq(1)
                    m.d.sync += [d_left_f.eq(d_left_f - tn), d_fb.eq(d_fb + 4 * tn)]
                    with m.If(last_nb):
                        m.d.sync += [d_left_f.eq(N), d_fb.eq(0), d_left_r.eq(d_left_r - TM),
                                     d_blk_addr.eq(d_blk_addr + f["out_stride"] * TM)]
                    with m.If(last_nb & last_blk):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BIAS"

        # stage W: the item leaving the bias add, its word, and whether that word is the
        # previous written result's (``last_word``; compared here, between registers, so
        # that the merge below and ``en`` decide from registers)
        w_valid, w_same, w_inside, w_need = Signal(), Signal(), Signal(), Signal()
        w = Signal(item_layout)
        w_value = Signal(32)
        last_valid, last_word = Signal(), Signal(28)
        # write combiner: merge results that share a 16-byte word into one strobed write
        wr = e.wr
        w_window = Signal()       # a result address outside the window (sticky)
        p_addr = Signal(28)
        p_data = Signal(128)
        p_strb = Signal(16)
        req_free = ~wr.req.valid | wr.req.ready
        # w_need: W's item sends the pending word (a pending word exists and the item is a
        # flush or a write to another word); a pending word exists when W's item is combined
        # exactly when last_valid was set as it was loaded
        w_take = Signal()         # W goes through the combiner this cycle
        w_load = Signal()         # W takes s2's item (or becomes empty)
        m.d.comb += [w_take.eq(w_valid & (~w_need | req_free)),
                     w_load.eq(~w_valid | w_take),
                     # = ~s2_valid | w_load, written out over registers: one LUT
                     en.eq(~s2_valid | ~w_valid | ~w_need | ~wr.req.valid | wr.req.ready)]
        inside = _in_window(s2.addr, 4, e.dram_base, e.dram_size)
        same_word = last_word == s2.addr[4:]
        with m.If(w_load):
            m.d.sync += [w_valid.eq(s2_valid), w.eq(s2), w_value.eq(s2_value), w_inside.eq(inside),
                         w_same.eq(last_valid & same_word),
                         w_need.eq(last_valid & (s2.flush | (s2.write & ~same_word)))]
            with m.If(s2_valid & s2.flush):
                m.d.sync += last_valid.eq(0)
            with m.Elif(s2_valid & s2.write & inside):
                m.d.sync += [last_valid.eq(1), last_word.eq(s2.addr[4:])]
        new_req = w_take & w_need & ~self.stop
        with m.If(new_req):
            m.d.sync += [wr.req.valid.eq(1), wr.req.payload.addr.eq(Cat(Const(0, 4), p_addr)),
                         wr.req.payload.data.eq(p_data), wr.req.payload.strb.eq(p_strb)]
        with m.Elif(wr.req.ready):
            m.d.sync += wr.req.valid.eq(0)
        lane = w.addr[2:4]
        with m.If(w_take):          # (a flush item writes nothing: it only sends the word)
            with m.If(w.write & ~w_inside):
                m.d.sync += w_window.eq(1)
            with m.Elif(w.write & w_same):
                for k in range(4):
                    with m.If(lane == k):
                        m.d.sync += [p_data.word_select(k, 32).eq(w_value),
                                     p_strb.word_select(k, 4).eq(0xF)]
            with m.Elif(w.write):
                m.d.sync += [p_addr.eq(w.addr[4:]), p_data.eq(0)]
                for k in range(4):
                    with m.If(lane == k):
                        m.d.sync += [p_data.word_select(k, 32).eq(w_value),
                                     p_strb.eq(0xF << (4 * k))]
        final_seen = Signal()
        with m.If(self.go):
            m.d.sync += final_seen.eq(0)
        with m.If(w_take & w.final):
            m.d.sync += final_seen.eq(1)
        m.d.comb += wr.resp.ready.eq(1)
        # writes awaiting B (the write arbiter holds at most max_writes): none, as a register
        out_zero = axi.writes_pending_zero(m, wr.req.valid & wr.req.ready, wr.resp.valid,
                                           "wr_out")
        with m.If(wr.resp.valid & wr.resp.payload.err):
            m.d.sync += self.write_error.eq(1)

        # ================================================= status
        readers_quiet = Cat(*[r.quiet for r in readers.values()]).all()
        m.d.comb += [
            self.quiet.eq(readers_quiet & ~wr.req.valid & out_zero),
            self.done.eq(final_seen & self.quiet),
            self.window_error.eq(Cat(*[r.window_error for r in readers.values()]).any()
                                 | w_window),
            self.read_error.eq(Cat(*[r.read_error for r in readers.values()]).any()),
        ]
        return m
