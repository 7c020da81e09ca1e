"""The accelerator's controller: AXI4-Lite registers, instruction fetch, dispatch, errors.

``docs/top.md`` is the contract (registers, instruction format, sync rule,
errors, abort); every offset, bit and opcode comes from :mod:`fpqvar_hw.isa`.

Structure
---------
* **Registers** (:data:`isa.REGS`) behind an :class:`axi.AXILiteBridge`.  Writes to
  PROG_ADDR, DRAM_BASE, DRAM_SIZE and to CTRL's coarse/fine bits are ignored while
  ``STATUS.busy`` (the engines see stable values during a run); ``irq_en`` and
  ``abort`` are honoured at any time; ``start`` only while idle.  Writing 1 to
  STATUS bit 1 clears ``done`` (and so ``irq``); ``error``/``aborted``/the error
  code stay until the next ``start``.  Reads have no side effects.
* **Fetch**: one 8-beat burst (``INSTR_BYTES`` = 128 bytes = 8 bus words) per
  instruction on the ``fetch`` read client, into a fetch buffer.  A second
  register holds the instruction being dispatched, so instruction ``i + 1`` is
  fetched while instruction ``i`` waits for its engine (one-deep prefetch).  A
  fetch whose 128 bytes are not inside the DRAM window is not issued; the buffer
  is marked with error 2 instead, and an AXI read error on any beat marks it
  with error 3.  Either error is raised only if that instruction is reached
  (a prefetch past the HALT never faults); nothing is fetched behind a HALT in
  the dispatch register, and a run ends only with no fetch burst in flight.  The fetch client only requests a
  burst when the buffer is free, so it never stalls the shared R channel.
* **Dispatch** (one instruction per cycle at most, in program order): HALT waits
  for both engines to be idle, then finishes the run (``PC`` = its index + 1,
  the HALT counted, as in :func:`fpqvar_hw.host.isa_sim.execute`).  GEMM goes to the
  matrix engine's ``cmd``, VEC to the vector engine's ``cmd`` as soon as that
  engine is idle; with the instruction's ``sync`` bit, or with CTRL.coarse = 0,
  both engines must be idle first.  Any other opcode is error 1.  Field and
  window checks of GEMM/VEC are the engines' (errors 2, 4, 5 and their AXI
  read errors, 3).
* **Errors and abort**: an engine that raises ``error`` (for the instruction last
  sent to it in this run), a fetch error, an unknown opcode, or a misaligned
  PROG_ADDR at start (error 5, ERR_PC 0) stops dispatch; the controller holds
  ``abort`` high to both engines until both are idle (they drain their AXI
  transactions) and its own fetch burst has drained, then sets done + error +
  code, ERR_PC (index of the erring instruction) and PC = ERR_PC (instructions
  before it).  The first error wins; when both engines report in the same
  cycle, the matrix engine's is taken.  CTRL.abort does the same (from the cycle
  after the write: an instruction may still be dispatched in the write's cycle) and
  sets done + aborted (PC = instructions dispatched).  Nothing waits on an external event
  other than the engines draining, so a run always ends.
* **Counters** (reset by ``start``): CYCLES counts every cycle with ``busy``;
  GEMM_CYCLES / VEC_CYCLES the cycles of the run in which each engine's ``busy``
  was high, OVERLAP_CYCLES those in which both were.
* ``irq`` = ``STATUS.done & CTRL.irq_en`` (level).

Latency: a dispatch happens at the earliest one cycle after the instruction is
in the dispatch register; an engine is not given a second instruction in the
cycle right after its first (``busy`` is allowed one cycle to rise).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..emit import hierarchical
from . import axi

from .. import isa
from ..isa import ErrorCode, Opcode

__all__ = ["EngineLink", "Controller", "INSTR_BEATS", "FETCH_CHECK_CYCLES"]

#: bus beats per instruction
INSTR_BEATS = isa.INSTR_BYTES // axi.DATA_BYTES
#: cycles between a new fetch address and its request: the window check is registered
FETCH_CHECK_CYCLES = 1
assert INSTR_BEATS * axi.DATA_BYTES == isa.INSTR_BYTES


class EngineLink(wiring.Signature):
    """The controller's side of one engine's control ports (``docs/top.md``,
    "Engine interface"): ``cmd`` out, ``busy``/``error`` in, ``abort``, ``fine``,
    ``dram_base``, ``dram_size`` out.  The engine's own read/write clients go to
    the arbiters, not through here."""

    def __init__(self):
        super().__init__({
            "cmd": Out(stream.Signature(isa.INSTR_LAYOUT)),
            "busy": In(1), "error": In(4),
            "abort": Out(1), "fine": Out(1), "dram_base": Out(32), "dram_size": Out(32),
        })


def _strb_mux(old, data, strb):
    """``old`` with the bytes selected by ``strb`` replaced from ``data`` (32-bit)."""
    return Cat(*[Mux(strb[k], data[8 * k:8 * k + 8], old[8 * k:8 * k + 8]) for k in range(4)])


def _bit(mask: int) -> int:
    """Index of the single set bit of a register bit mask."""
    assert mask > 0 and mask & (mask - 1) == 0, mask
    return mask.bit_length() - 1


@hierarchical
class Controller(wiring.Component):
    """Register file, instruction fetch and dispatch (module docstring).

    Ports: ``s_axil`` (``In(axi.AXILiteSignature())``, slave), ``irq`` (Out),
    ``fetch`` (``Out(axi.ReadClient())``, 8-beat bursts), ``gemm`` and ``vec``
    (``Out(EngineLink())``: to the matrix and the vector engine).
    """

    def __init__(self):
        super().__init__({
            "s_axil": In(axi.AXILiteSignature()),
            "irq": Out(1),
            "fetch": Out(axi.ReadClient()),
            "gemm": Out(EngineLink()),
            "vec": Out(EngineLink()),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = axi.AXILiteBridge()
        wiring.connect(m, wiring.flipped(self.s_axil), bridge.axil)
        R = isa.REGS

        # ------------------------------------------------------------- registers
        irq_en = Signal()
        coarse = Signal(init=1)
        fine = Signal(init=1)
        busy, done, error, aborted = Signal(), Signal(), Signal(), Signal()
        err_code = Signal(isa.STATUS_ERR_BITS)
        prog_addr, dram_base, dram_size = Signal(32), Signal(32), Signal(32)
        err_pc, pc = Signal(32), Signal(32)
        cycles, gemm_cycles, vec_cycles, overlap_cycles = (Signal(32, name=n) for n in (
            "cycles", "gemm_cycles", "vec_cycles", "overlap_cycles"))

        ctrl_bits = Signal(32)
        status_bits = Signal(32)
        m.d.comb += [
            ctrl_bits.eq((irq_en * isa.CTRL_IRQ_EN) | (coarse * isa.CTRL_COARSE)
                         | (fine * isa.CTRL_FINE)),
            status_bits.eq((busy * isa.STATUS_BUSY) | (done * isa.STATUS_DONE)
                           | (error * isa.STATUS_ERROR) | (aborted * isa.STATUS_ABORTED)
                           | (err_code << isa.STATUS_ERR_SHIFT)),
        ]
        readable = {"CTRL": ctrl_bits, "STATUS": status_bits, "PROG_ADDR": prog_addr,
                    "DRAM_BASE": dram_base, "DRAM_SIZE": dram_size, "ERR_PC": err_pc, "PC": pc,
                    "ID": Const(isa.REG_ID_VALUE, 32), "CYCLES": cycles,
                    "GEMM_CYCLES": gemm_cycles, "VEC_CYCLES": vec_cycles,
                    "OVERLAP_CYCLES": overlap_cycles}
        assert set(readable) == set(R), f"register map mismatch: {set(R) ^ set(readable)}"
        with m.Switch(bridge.r_addr):
            for name, sig in readable.items():
                with m.Case(R[name]):
                    m.d.comb += bridge.r_data.eq(sig)
            with m.Default():
                m.d.comb += bridge.r_data.eq(0)

        start_req = Signal()     # a CTRL write with start = 1 (this cycle)
        abort_req = Signal()
        abort_run = Signal()     # abort_req of the previous cycle, which was in RUN
        wd, ws = bridge.w_data, bridge.w_strb
        with m.If(bridge.w_en):
            with m.Switch(bridge.w_addr):
                with m.Case(R["CTRL"]):
                    with m.If(ws[0]):
                        m.d.comb += [start_req.eq(wd[_bit(isa.CTRL_START)]),
                                     abort_req.eq(wd[_bit(isa.CTRL_ABORT)])]
                        m.d.sync += irq_en.eq(wd[_bit(isa.CTRL_IRQ_EN)])
                        with m.If(~busy):
                            m.d.sync += [coarse.eq(wd[_bit(isa.CTRL_COARSE)]),
                                         fine.eq(wd[_bit(isa.CTRL_FINE)])]
                with m.Case(R["STATUS"]):
                    with m.If(ws[0] & wd[_bit(isa.STATUS_DONE)]):
                        m.d.sync += done.eq(0)
                for name, reg in (("PROG_ADDR", prog_addr), ("DRAM_BASE", dram_base),
                                  ("DRAM_SIZE", dram_size)):
                    with m.Case(R[name]):
                        with m.If(~busy):
                            m.d.sync += reg.eq(_strb_mux(reg, wd, ws))
        m.d.comb += self.irq.eq(done & irq_en)

        engines = (self.gemm, self.vec)
        for e in engines:
            m.d.comb += [e.fine.eq(fine), e.dram_base.eq(dram_base), e.dram_size.eq(dram_size)]

        # ----------------------------------------------------------------- fetch
        # fetch buffer: EMPTY -> (request) RECV -> FULL -> (moved to dispatch) EMPTY
        F_EMPTY, F_RECV, F_FULL = 0, 1, 2
        fstate = Signal(2)
        fbuf = Signal(isa.INSTR_BYTES * 8)
        ferr = Signal(isa.STATUS_ERR_BITS)
        fbeat = Signal(range(INSTR_BEATS))
        faddr = Signal(32)                    # address of the instruction in / next into fbuf
        fpc = Signal(32)                      # its index
        fetching = Signal()                   # the run may issue fetches
        # the window check of faddr, registered (FETCH_CHECK_CYCLES): ``win_fresh`` is low
        # in the cycle after faddr changes, while ``fetch_in_window`` still describes the
        # old one
        lim = Signal(34)                      # base + size - INSTR_BYTES (base, size static)
        m.d.sync += lim.eq(dram_base + Cat(dram_size, Const(0, 1)) - isa.INSTR_BYTES)
        fetch_in_window = Signal()
        win_fresh = Signal()
        m.d.sync += [fetch_in_window.eq((faddr >= dram_base) & (faddr <= lim)), win_fresh.eq(1)]

        # the dispatch register (declared here: the fetch stops behind a HALT)
        instr = Signal(isa.INSTR_LAYOUT)
        ivalid = Signal()
        ierr = Signal(isa.STATUS_ERR_BITS)
        ipc = Signal(32)
        ipc1 = Signal(32)                     # ipc + 1 (registered with it)
        hdr = instr[0]
        opcode = hdr[isa.HDR_OPCODE_SHIFT:isa.HDR_OPCODE_SHIFT + isa.HDR_OPCODE_BITS]
        sync_bit = hdr[isa.HDR_SYNC_BIT]
        prefetch = Signal()
        m.d.comb += prefetch.eq(fetching & win_fresh & (fstate == F_EMPTY)
                                & ~(ivalid & (ierr == 0) & (opcode == Opcode.HALT)))

        req = self.fetch.req
        m.d.comb += [req.payload.addr.eq(faddr), req.payload.len.eq(INSTR_BEATS - 1),
                     req.valid.eq(prefetch & fetch_in_window)]
        with m.If(prefetch & ~fetch_in_window):
            m.d.sync += [fstate.eq(F_FULL), ferr.eq(ErrorCode.ADDRESS)]
        with m.If(req.valid & req.ready):
            m.d.sync += [fstate.eq(F_RECV), fbeat.eq(0), ferr.eq(0)]
        resp = self.fetch.resp
        # the buffer was reserved when the burst was requested, and beats come only while
        # it is in flight (fstate RECV): always ready, a constant in front of the arbiter
        m.d.comb += resp.ready.eq(1)
        with m.If(resp.valid & resp.ready):
            with m.Switch(fbeat):
                for b in range(INSTR_BEATS):
                    with m.Case(b):
                        m.d.sync += fbuf[b * axi.DATA_BITS:(b + 1) * axi.DATA_BITS].eq(
                            resp.payload.data)
            m.d.sync += fbeat.eq(fbeat + 1)
            with m.If(resp.payload.err):
                m.d.sync += ferr.eq(ErrorCode.AXI_READ)
            with m.If(resp.payload.last):
                m.d.sync += fstate.eq(F_FULL)

        # -------------------------------------------------------------- dispatch
        # the dispatch register's decode, registered with it (no opcode compare in front of
        # the engines' cmd.valid): no fetch error, and then which opcode
        f_op = fbuf[isa.HDR_OPCODE_SHIFT:isa.HDR_OPCODE_SHIFT + isa.HDR_OPCODE_BITS]
        i_ok, i_halt, i_gemm, i_vec = Signal(), Signal(), Signal(), Signal()
        with m.If(fetching & (fstate == F_FULL) & ~ivalid):
            m.d.sync += [instr.eq(fbuf), ierr.eq(ferr), ipc.eq(fpc), ipc1.eq(fpc + 1), ivalid.eq(1),
                         fstate.eq(F_EMPTY), fpc.eq(fpc + 1),
                         faddr.eq(faddr + isa.INSTR_BYTES), win_fresh.eq(0),
                         i_ok.eq(ferr == 0), i_halt.eq(f_op == Opcode.HALT),
                         i_gemm.eq(f_op == Opcode.GEMM), i_vec.eq(f_op == Opcode.VEC)]

        settle = Signal()                     # an engine got a cmd last cycle
        m.d.sync += settle.eq(self.gemm.cmd.valid & self.gemm.cmd.ready
                              | self.vec.cmd.valid & self.vec.cmd.ready)
        gemm_idle = ~self.gemm.busy & ~settle
        vec_idle = ~self.vec.busy & ~settle
        both_idle = gemm_idle & vec_idle
        for e in engines:
            m.d.comb += e.cmd.payload.eq(instr)

        # which engine got an instruction in this run, and the index of its last one
        used = [Signal(name=f"{n}_used") for n in ("gemm", "vec")]
        last_pc = [Signal(32, name=f"{n}_last_pc") for n in ("gemm", "vec")]

        # ---------------------------------------------------------- run control
        stop_code = Signal(isa.STATUS_ERR_BITS)     # error to report when drained (0: abort)
        stop_pc = Signal(32)
        decode_err = Signal(isa.STATUS_ERR_BITS)
        eng_err = Signal(isa.STATUS_ERR_BITS)
        eng_err_pc = Signal(32)
        gemm_bad = used[0] & (self.gemm.error != 0)
        vec_bad = used[1] & (self.vec.error != 0)
        eng_bad = Signal()      # = eng_err != 0, from the engines' errors directly (not
        m.d.comb += eng_bad.eq(gemm_bad | vec_bad)      # behind eng_err's select)
        with m.If(gemm_bad):
            m.d.comb += [eng_err.eq(self.gemm.error), eng_err_pc.eq(last_pc[0])]
        with m.Elif(vec_bad):
            m.d.comb += [eng_err.eq(self.vec.error), eng_err_pc.eq(last_pc[1])]

        with m.If(busy):
            m.d.sync += [cycles.eq(cycles + 1),
                         gemm_cycles.eq(gemm_cycles + self.gemm.busy),
                         vec_cycles.eq(vec_cycles + self.vec.busy),
                         overlap_cycles.eq(overlap_cycles + (self.gemm.busy & self.vec.busy))]

        def finish():     # only when no fetch burst is in flight (fstate != F_RECV)
            m.d.sync += [busy.eq(0), done.eq(1), ivalid.eq(0), fstate.eq(F_EMPTY)]

        m.d.sync += abort_run.eq(0)      # (RUN overrides: abort_req of a RUN cycle)
        # STOP as a register of its own, set and cleared with the state's transitions: the
        # engines' abort inputs come straight from a flip-flop, not through the state decode
        stopping = Signal()
        m.d.comb += [self.gemm.abort.eq(stopping), self.vec.abort.eq(stopping)]
        with m.FSM(name="run"):
            with m.State("IDLE"):
                with m.If(start_req & ~busy):
                    m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), aborted.eq(0),
                                 err_code.eq(0), err_pc.eq(0), pc.eq(0),
                                 cycles.eq(0), gemm_cycles.eq(0), vec_cycles.eq(0),
                                 overlap_cycles.eq(0),
                                 faddr.eq(prog_addr), win_fresh.eq(0), fpc.eq(0),
                                 fstate.eq(F_EMPTY),
                                 ivalid.eq(0), used[0].eq(0), used[1].eq(0)]
                    with m.If(prog_addr[:7] != 0):
                        m.d.sync += [stop_code.eq(ErrorCode.FIELD), stop_pc.eq(0), stopping.eq(1)]
                        m.next = "STOP"
                    with m.Else():
                        m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += fetching.eq(1)
                # an abort written in RUN acts in the next cycle (registered: no path from
                # the AXI4-Lite write decode to the engines' cmd.valid)
                m.d.sync += abort_run.eq(abort_req)
                go_stop = Signal()
                with m.If(abort_run):
                    m.d.sync += stop_code.eq(0)
                    m.d.comb += go_stop.eq(1)
                with m.Elif(eng_bad):
                    m.d.sync += [stop_code.eq(eng_err), stop_pc.eq(eng_err_pc)]
                    m.d.comb += go_stop.eq(1)
                with m.Elif(ivalid):
                    with m.If(~i_ok):
                        m.d.comb += decode_err.eq(ierr)
                    with m.Elif(i_halt):
                        # no fetch burst may be left in flight: its beats would block the
                        # shared R channel after the run
                        with m.If(both_idle & (fstate != F_RECV)):
                            m.d.sync += pc.eq(ipc1)
                            finish()
                            m.next = "IDLE"
                    with m.Elif(i_gemm | i_vec):
                        ready_all = both_idle | ~(sync_bit | ~coarse)
                        for k, (e, is_op, idle) in enumerate(((self.gemm, i_gemm, gemm_idle),
                                                              (self.vec, i_vec, vec_idle))):
                            with m.If(is_op):
                                m.d.comb += e.cmd.valid.eq(idle & ready_all)
                                with m.If(e.cmd.valid & e.cmd.ready):
                                    m.d.sync += [ivalid.eq(0), used[k].eq(1), last_pc[k].eq(ipc),
                                                 pc.eq(ipc1)]
                    with m.Else():
                        m.d.comb += decode_err.eq(ErrorCode.OPCODE)
                    with m.If(decode_err != 0):
                        m.d.sync += [stop_code.eq(decode_err), stop_pc.eq(ipc)]
                        m.d.comb += go_stop.eq(1)
                with m.If(go_stop):
                    m.d.sync += stopping.eq(1)
                    m.next = "STOP"
            with m.State("STOP"):
                # abort both engines (stopping) and drain: engines idle, no fetch burst in flight
                with m.If(both_idle & (fstate != F_RECV)):
                    finish()
                    m.d.sync += stopping.eq(0)
                    with m.If(stop_code != 0):
                        m.d.sync += [error.eq(1), err_code.eq(stop_code), err_pc.eq(stop_pc),
                                     pc.eq(stop_pc)]
                    with m.Else():
                        m.d.sync += aborted.eq(1)
                    m.next = "IDLE"
        return m
