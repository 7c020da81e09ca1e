"""The vector engine: executes VEC instructions (``docs/top.md``) from and to DRAM.

:class:`VectorEngine` walks the 4-level loop nest of a VEC instruction, reads
its FP32 (FDOT: FP32 or FP16 B) operands through three DMA read clients, feeds
one element per cycle to the unit of the sub-op (all from
:mod:`fpqvar_hw.units.vector` / :mod:`fpqvar_hw.units.fpu`, each bit-exact to its golden
function) and writes the results through one write client.

Data path (one element per cycle when nothing stalls)::

    cmd -> CHECK -> issue: loop counters (i3, i2, i1, i0), one address per operand,
                   ISSUE_STAGES registers (window checks, burst end and length),
                   read requests (only when the 16-byte word changes)
                   |                                   |
                   v descriptor FIFO                   v rd_a / rd_b / rd_c
            gather: word caches + response FIFOs -> element {a, b, c, last}
                   -> unit of the sub-op -> result -> D address, merge into a
                   16-byte word -> wr (one write per word, strobes)

* **Reads.**  Each operand keeps the last word it read: an element in the same
  16-byte word as the operand's previous element costs no read, so contiguous FP32
  data needs one word per 4 elements (FP16: per 8).  When a new word is needed and
  the row walks forward in steps of at most 16 bytes (``0 < s0 <= 16``; not L2NT's
  B), one INCR burst fetches the words up to the row's last element (at most
  ``axi.MAX_BURST`` beats, never across a 4 KiB boundary, only as far as that
  element is inside the window); later elements use those words in order.
  Otherwise a single-beat read.  Up to ``rd_depth`` words per operand are
  outstanding; a request is only issued when its response FIFO has room for all its
  beats, so ``rd_*.resp.ready`` is always 1 (a shared in-order AXI read channel is
  never blocked by this engine).
* **Writes.**  Consecutive results in the same 16-byte word are merged into one
  single-beat write with byte strobes.  ``wr.resp.ready`` is always 1.
* **Window.**  Every element address (``isa.operand_address``: 32-bit wrap-around) is
  checked with ``isa.in_window`` against ``dram_base``/``dram_size`` before its read
  is issued (A, B, C) or its write is merged (D); a failure is error 2 and nothing
  of that element is accessed.
* **Validation** (error 5, before any access; the rules of ``isa.Vec.check``):
  unknown sub-op or flag bits, a zero count, B_FP16 on anything but FDOT, D_FP16
  not exactly on CVT16, misaligned base/stride of a used operand (FDOT's D and
  L2NT's B ignore s0), L2NT ``n0 != 64``, SOFTMAX ``n0 > max_kv``, and LNMOD
  ``n0 != C`` (the LayerNorm unit is built for rows of ``C``); KV6 builds add
  B_KV6 not on FDOT or with B_FP16, KVQ6 ``n0 != 64``, misaligned FP16 scales (C),
  and accept 1-byte codes anywhere; other builds reject KVQ6 (unknown sub-op) and
  B_KV6 (unknown flag).
* **KV6** (``kv6=True`` only; the FP16-only design is unchanged otherwise).  FDOT
  with B_KV6: the gather stage selects B's code byte and maps its low six bits
  through a 64-entry LUT of the e2m3fn values (FP32) and converts C's FP16 scale to
  FP32 (exact), and one more pipeline stage (:class:`~fpqvar_hw.units.fpu.FPUnit` MUL,
  2 cycles, every sub-op passes through it in KV6 builds) forms ``value * scale``
  (exact) for B.  KVQ6: :class:`KV6Quantizer` returns one code per element; the
  write side merges the code bytes like other results (byte strobes) and, with a
  row's last code, puts the row's FP16 scale into a one-entry register that the
  write request register takes when no code word is waiting (C's address from its
  own row loop nest, window-checked when the row's last code is taken).
* **Errors and abort.**  Error 2/3/4 (address, read ``err``, write ``err``) or
  ``abort`` stop the issue side (an AXI error response or an abort a cycle after it
  arrives, both registered; an error raised elsewhere one cycle later: in that cycle the issue side
  may still issue a read of an element inside the window) and
  hold the units, FIFOs and caches in reset
  (``ResetInserter``) while outstanding requests complete and their responses are
  discarded; ``busy`` falls when nothing is outstanding.  ``error`` holds the first
  error's code until the next ``cmd`` is accepted (0 after an abort).
* **Attention array** (``att = (T, N)``, default :data:`ATT_LANES`; ``None`` builds
  none).  CHECK hands every FDOT with B_FP16 (no other flag, ``fine`` = 1) to
  :class:`~fpqvar_hw.engines.attention.AttentionArray` (state OFFER, then ARRAY): the
  array either runs it on ``T x N`` lanes (same bits, ``docs/top.md``) or declines it
  without any access, and the element path below runs it.  The array and the element
  path share ``rd_a``, ``rd_b`` and ``wr`` (a mux, one side active at a time);
  ``error`` takes the array's code.
* **Softmax array** (``sm`` lanes, default :data:`SM_LANES`; 0 builds none).  CHECK
  hands every SOFTMAX (``fine`` = 1) to :class:`~fpqvar_hw.engines.smarray.SoftmaxArray`
  the same way (state OFFER, then ARRAY): it runs rows that do not overlap on ``sm``
  whole Softmax units side by side (same bits, ``docs/top.md``) or declines without any
  access.  It shares ``rd_a`` and ``wr`` with the element path.
* **fine** = 0: the unit is fed one element per ``latency`` cycles of that unit
  (its element path is never overlapped).
* **Throughput** (co-simulation, random DMA latency 2-14 cycles with gaps and
  backpressure): attention QK^T (FP32 q rows against FP16 K rows) 0.92
  elements/cycle; PV 0.53 (the V cache is walked across tokens: one single-beat read
  per element); the row units add their own per-row passes (LNMOD and SOFTMAX about
  3 cycles per element, FDOT 5 cycles per row).  KV6 build, same DMA model: KVQ6
  0.96 elements/cycle on whole heads (3072 elements), QK^T against the code cache
  0.92, PV 0.54.  ``busy`` is the cycle count the top reports as VEC_CYCLES.

Sub-op -> unit: LNMOD :class:`~fpqvar_hw.units.vector.LayerNormModulate` (length ``C``);
RESID :class:`~fpqvar_hw.units.vector.Residual`; GELU :class:`~fpqvar_hw.units.vector.Elementwise`;
L2NT :class:`~fpqvar_hw.units.vector.L2NormTemperature` (64); SOFTMAX
:class:`~fpqvar_hw.units.vector.Softmax` (rows up to ``max_kv``, ended by ``i0 = n0-1``);
FDOT :class:`~fpqvar_hw.units.vector.FDot` (B FP16 converted exactly to FP32 first; B_KV6:
LUT value times scale); CVT16 :class:`~fpqvar_hw.units.fpu.FPUnit` (CONVERT FP32 -> FP16,
RNE); KVQ6 :class:`KV6Quantizer` (CONVERT into :class:`~fpqvar_hw.units.quantizer.Quantizer`
e2m3fn, group 64, one lane).  The units' exp (SOFTMAX, L2NT, GELU), reciprocal (SOFTMAX,
GELU) and rsqrt (LNMOD, L2NT) are one :class:`~fpqvar_hw.units.vector.FunctionPipe` each,
and the pairwise tree over the partial sums (SOFTMAX, LNMOD, L2NT, FDOT) one
:class:`~fpqvar_hw.units.vector.TreePipe`, driven by the unit of the instruction's sub-op
(three FP32 function pipelines instead of seven, one tree instead of four: the same bits
and cycles).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from fpqvar_quant.formats import get_format

from ..emit import hierarchical
from .. import isa
from ..config import AcceleratorConfig
from ..checked import Checked, check, latency_of
from .attention import AttentionArray
from .smarray import SoftmaxArray
from .axi import DATA_BITS, DATA_BYTES, MAX_BURST, ReadClient, WriteClient, writes_pending_zero
from ..units.fpu import FP16, FP32, FPOp, FPUnit, fp16_to_fp32
from ..units.quantizer import LATENCY_AFTER_LAST, Quantizer
from ..units.vector import (Elementwise, FDot, Func, L2NormTemperature, LayerNormModulate,
                            Residual, Softmax, connect_function_pipes, skid_buffer)

__all__ = ["VectorEngine", "KV6Quantizer", "KV6_FORMAT", "ATT_LANES"]

#: Default attention array of the engine: ``(T, N)``, the accelerator config's default
#: ``att_t`` x ``att_n`` (32 A rows x 4 B rows, 128 MAC lanes).
ATT_LANES = (AcceleratorConfig.att_t, AcceleratorConfig.att_n)
#: Default softmax array of the engine: ``AcceleratorConfig.sm_lanes`` lanes (0: none).
SM_LANES = AcceleratorConfig.sm_lanes

#: Element format of the KV6 cache codes (``golden.attention.kv_encode``).
KV6_FORMAT = "e2m3fn"
#: Result of :class:`KV6Quantizer` (one 32-bit unit result of the engine).
KV6_OUT = data.StructLayout({"code": 6, "zero": 10, "scale": 16})


def kv6_decode_table() -> list[int]:
    """FP32 bit patterns of the 64 e2m3fn code values (the B_KV6 decode LUT)."""
    vals = get_format(KV6_FORMAT).decode(np.arange(64)).astype(np.float32)
    return [int(b) for b in vals.view(np.uint32)]


@hierarchical
class KV6Quantizer(wiring.Component):
    """KVQ6's unit: FP32 -> FP16 (RNE, :class:`~fpqvar_hw.units.fpu.FPUnit` CONVERT) into the
    group quantizer (:class:`~fpqvar_hw.units.quantizer.Quantizer`, e2m3fn, group
    ``isa.KV6_GROUP`` = 64, one lane, FP16 scale): bit-exact
    ``golden.attention.kv_encode(fp16(x), "kv6")`` for consecutive groups of 64.

    ``i``: stream of ``{x: FP32 bits}``; ``o``: stream of :data:`KV6_OUT` (32 bits),
    one per input element: ``code`` (bits [5:0]) the e2m3fn code, ``zero`` (bits
    [15:6]), ``scale`` (bits [31:16]) the group's FP16 scale (repeated on each
    element of the group).  An element appears after its whole
    group has entered (the quantizer's absmax pass); II = 1, ``o.ready`` low stalls.
    ``latency``: cycles from an element to its code when fed one element per
    ``latency`` cycles (the engine's ``fine = 0`` mode uses it).
    """

    def __init__(self):
        self.latency = self.latency_for()
        super().__init__({"i": In(stream.Signature(data.StructLayout({"x": 32}))),
                          "o": Out(stream.Signature(KV6_OUT))})

    @staticmethod
    def latency_for() -> int:
        """``latency`` without building the unit: the conversion, then the quantizer's."""
        return FPOp.CONVERT.latency + LATENCY_AFTER_LAST

    def elaborate(self, platform):
        m = Module()
        m.submodules.cvt = cvt = FPUnit(FPOp.CONVERT, FP32, dst=FP16)
        m.submodules.quant = q = Quantizer(format=KV6_FORMAT, group_size=isa.KV6_GROUP, lanes=1)
        m.d.comb += [cvt.i.valid.eq(self.i.valid), self.i.ready.eq(cvt.i.ready),
                     cvt.i.payload[0].a.as_value().eq(self.i.payload.x),
                     q.i.valid.eq(cvt.o.valid), cvt.o.ready.eq(q.i.ready),
                     q.i.payload[0].as_value().eq(cvt.o.payload[0].as_value()),
                     self.o.valid.eq(q.o.valid), q.o.ready.eq(self.o.ready),
                     self.o.payload.code.eq(q.o.payload.codes[0].as_value()),
                     self.o.payload.scale.eq(q.o.payload.scales[0].as_value())]
        return m

_READ_OPERANDS = ("a", "b", "c")
_WORD_SHIFT = (DATA_BYTES - 1).bit_length()      # 4: byte address -> 16-byte word


def _uses(operand: str) -> list[isa.VecSubop]:
    return [s for s, ops in isa.VEC_OPERANDS.items() if operand in ops]


@hierarchical
class VectorEngine(Checked, wiring.Component):
    """Executes VEC instructions (``docs/top.md``, fields and rules from :mod:`fpqvar_hw.isa`).

    Parameters
    ----------
    C : LayerNorm row length (LNMOD requires ``n0 == C``); a multiple of ``P``.
    max_kv : longest SOFTMAX row (``1 <= n0 <= max_kv``).
    P : tree-sum width of the row operations (golden ``tree_sum``; ``isa.VEC_P``).
    rd_depth : words in flight per operand (response FIFO depth, a power of two >= 16;
        default 128, eight bursts: beside a GEMM a read waits behind the matrix engine's
        15 bursts in the arbiter as well as the DRAM's latency, about 450 cycles at the
        VCK190's assumed 150, and an operand streams ``rd_depth`` words per round trip, so
        128 keeps an FP32 stream at one element per cycle there (64 did so only alone;
        32 bound SOFTMAX, GELU, RESID, L2NT to 0.8 elements per cycle even alone).  As-built
        d16 0.372 images/s with 64 words and 256 descriptors, 0.395 with 128 and 512
        (``fpqvar_hw.flow.asbuilt``; either alone gains nothing).
    kv6 : build the KV6 hardware (KVQ6, FDOT with B_KV6; accelerator config
        ``kv_format=e2m3fn``).  Without it both are error 5 and the design is exactly
        the FP16-only engine.

    Ports
    -----
    ``cmd``: In stream of ``isa.INSTR_LAYOUT`` (a VEC instruction; the opcode is not
    checked here).  Accepted only when idle and ``abort`` is low.
    ``busy``: Out(1), a register (:attr:`BUSY_DELAY` = 1 cycle behind the engine's
    state): high from the cycle after the one that accepts ``cmd`` until the cycle after
    every issued request has its response (write responses included); the controller's
    settle cycle covers the cycle in between.  ``error``: Out(4), ``isa.ErrorCode`` of the
    last instruction, held until the next ``cmd``.  ``abort``: In(1).  ``fine``: In(1)
    (fine pipelining; 0 = one element per unit latency).  ``dram_base``,
    ``dram_size``: In(32).  ``rd_a``, ``rd_b``, ``rd_c``: ``axi.ReadClient`` of operands A,
    B, C (bursts of 1 to ``axi.MAX_BURST`` beats, 16-byte aligned addresses).  ``wr``:
    ``axi.WriteClient`` (single-beat writes with strobes).
    """

    #: descriptors of issued elements waiting for their words: how far the issue side runs
    #: ahead of the gather.  512 covers a read round trip at the VCK190's assumed 150-cycle
    #: DRAM latency behind a GEMM's 15 bursts, at one element per cycle (32 did not cover
    #: even the DRAM's: a new burst's first element then waited out most of the round trip,
    #: d16 0.197 instead of 0.401 images/s in the as-built model; :meth:`lookahead_stall`).
    #: 16 bits wide, so 512 entries are one block RAM.
    DESC_DEPTH = 512
    #: elements the issue side may run ahead of the gather (:meth:`lookahead_stall`): the
    #: descriptor FIFO up to two entries short of full (its registered room flag), the
    #: descriptor register in front of it and the element waiting in the issue stage
    LOOKAHEAD = DESC_DEPTH

    @classmethod
    def lookahead_stall(cls, requests: int, elems_per_request: float, round_trip: float) -> float:
        """Cycles an operand's reads stall the element stream after its first request (the
        cycle formula of the issue side below; ``fpqvar_hw.flow.asbuilt.vec_cost`` adds it
        to the unit's cycles, and counts the first request's wait as the start).

        The issue stage runs at most :attr:`LOOKAHEAD` elements ahead of the gather (the
        descriptor FIFO, :attr:`DESC_DEPTH`, and the element waiting in the issue stage),
        whatever the response FIFO's credits allow, and an operand's read request leaves
        when the element that starts it issues.  So the first element of each later request
        (``requests`` of them, ``elems_per_request`` elements each) reaches the gather
        ``round_trip`` cycles after the gather was ``LOOKAHEAD`` elements behind it: a
        stall of ``round_trip - LOOKAHEAD`` cycles when that is positive, shared by the
        requests that fit in the lookahead window.  Per-instruction profile
        (``benchmarks/top_calibration.py``), GELU over 1,024 FP32 elements in 16-beat bursts
        at a 128-cycle read latency: 3,241 cycles simulated, 1,584 modelled without this
        term."""
        D = cls.LOOKAHEAD
        if round_trip <= D or requests < 1:
            return 0.0
        return requests * (round_trip - D) / (1 + (D - 1) // max(1, int(elems_per_request)))
    #: Registers from the loop nest to the read-issue decision (element-only work: window
    #: checks, the burst's end, its length); the first request of an instruction leaves
    #: this many cycles after RUN starts.
    ISSUE_STAGES = 5
    #: register slices around the units (the element feed and the results): one cycle each
    UNIT_SLICES = 2
    #: ``busy`` is registered: the controller sees the end of an instruction a cycle later
    BUSY_DELAY = 1

    def __init__(self, *, C: int = 128, max_kv: int = 64, P: int = isa.VEC_P, rd_depth: int = 128,
                 kv6: bool = False, att: tuple[int, int] | None = ATT_LANES,
                 sm: int = SM_LANES):
        # the parameters were checked by check_params before this object existed
        self.C, self.max_kv, self.P, self.rd_depth, self.kv6 = C, max_kv, P, rd_depth, kv6
        self.att, self.sm = att, sm
        super().__init__(self.engine_signature())

    @classmethod
    def check_params(cls, *, C: int, max_kv: int, P: int, rd_depth: int, kv6: bool,
                     att: tuple[int, int] | None, sm: int) -> None:
        """Raise ``ValueError`` for parameters the engine cannot build (class docstring);
        runs before the object exists (:class:`fpqvar_hw.checked.Checked`)."""
        if att is not None:
            if not (isinstance(att, tuple) and len(att) == 2):
                raise ValueError(f"att must be None or a tuple (T, N), got {att!r}")
            check(AttentionArray, T=att[0], N=att[1], max_e=cls.att_max_e(max_kv), P=P)
        if not isinstance(kv6, bool):
            raise ValueError(f"kv6 must be a bool, got {kv6!r}")
        for name, v in (("C", C), ("max_kv", max_kv), ("P", P), ("rd_depth", rd_depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if P < 4 or P & (P - 1):
            raise ValueError(f"P must be a power of two >= 4, got {P}")
        if C % P:
            raise ValueError(f"C ({C}) must be a multiple of P ({P})")
        if isa.L2NT_LEN % P:
            raise ValueError(f"P ({P}) must divide the L2NT head length {isa.L2NT_LEN}")
        if rd_depth < MAX_BURST or rd_depth & (rd_depth - 1):
            raise ValueError(f"rd_depth must be a power of two >= {MAX_BURST} (one burst), "
                             f"got {rd_depth}")
        if not isinstance(sm, int) or isinstance(sm, bool) or sm < 0:
            raise ValueError(f"sm must be a non-negative integer (softmax lanes), got {sm!r}")
        if sm:
            check(SoftmaxArray, R=sm, max_e=max_kv, P=P, depth=SoftmaxArray.DEPTH)

    @staticmethod
    def att_max_e(max_kv: int) -> int:
        """Longest FDOT row the attention array takes: q.K rows (64) and p.V rows (KV length)."""
        return max(isa.L2NT_LEN, max_kv)

    @staticmethod
    def engine_signature() -> wiring.Signature:
        """The engine's ports (the same for every configuration; the class docstring):
        what the top connects, readable without building an engine."""
        return wiring.Signature({
            "cmd": In(stream.Signature(isa.INSTR_LAYOUT)),
            "busy": Out(1),
            "error": Out(4),
            "abort": In(1),
            "fine": In(1, init=1),
            "dram_base": In(32),
            "dram_size": In(32),
            "rd_a": Out(ReadClient()),
            "rd_b": Out(ReadClient()),
            "rd_c": Out(ReadClient()),
            "wr": Out(WriteClient()),
        })

    # ----------------------------------------------------------------- helpers
    @property
    def subops(self) -> list[isa.VecSubop]:
        """The sub-ops this build executes (KVQ6 only with ``kv6``)."""
        return [s for s in isa.VecSubop if self.kv6 or s is not isa.VecSubop.KVQ6]

    @staticmethod
    def row_unit_specs(*, C: int, max_kv: int, P: int, kv6: bool
                       ) -> dict[isa.VecSubop, tuple[type, tuple, dict]]:
        """The sub-op -> row unit map of an engine with these parameters, as ``(class, args,
        kwargs)``: what :meth:`row_units` builds, described without building anything.
        The units' exp, reciprocal and rsqrt and their partial sums' tree are shared
        (``shared_functions``: one :class:`~fpqvar_hw.units.vector.FunctionPipe` each and
        one :class:`~fpqvar_hw.units.vector.TreePipe`; the engine runs one sub-op at a
        time)."""
        shared = {"shared_functions": True}
        specs = {
            isa.VecSubop.LNMOD: (LayerNormModulate, (), {"length": C, "P": P, **shared}),
            isa.VecSubop.RESID: (Residual, (), {}),
            isa.VecSubop.GELU: (Elementwise, (Func.GELU,), shared),
            isa.VecSubop.L2NT: (L2NormTemperature, (),
                                {"head_dim": isa.L2NT_LEN, "P": P, "temperature": True, **shared}),
            isa.VecSubop.SOFTMAX: (Softmax, (), {"length": max_kv, "P": P, **shared}),
            isa.VecSubop.FDOT: (FDot, (), {"P": P, **shared}),
            isa.VecSubop.CVT16: (FPUnit, (FPOp.CONVERT, FP32), {"dst": FP16}),
        }
        if kv6:
            specs[isa.VecSubop.KVQ6] = (KV6Quantizer, (), {})
        return specs

    @classmethod
    def row_latencies(cls, *, C: int = 128, max_kv: int = 64, P: int = isa.VEC_P,
                      kv6: bool = False) -> dict[isa.VecSubop, int]:
        """Each row unit's ``latency`` (cycles per element when fed one element per latency:
        the ``fine = 0`` throttle) for an engine with these parameters, without building the
        engine (:func:`fpqvar_hw.checked.latency_of`).  What the throughput model reads."""
        return {s: latency_of(unit, *args, **kwargs)
                for s, (unit, args, kwargs) in cls.row_unit_specs(C=C, max_kv=max_kv, P=P,
                                                                  kv6=kv6).items()}

    def row_units(self) -> dict[isa.VecSubop, wiring.Component]:
        """The sub-op -> row unit map this engine elaborates (new objects on every call)."""
        return {s: unit(*args, **kwargs) for s, (unit, args, kwargs)
                in self.row_unit_specs(C=self.C, max_kv=self.max_kv, P=self.P,
                                       kv6=self.kv6).items()}

    def elaborate(self, platform):
        m = Module()
        V = isa.VecSubop
        depth = self.rd_depth

        # ------------------------------------------------------------ instruction
        kv6 = self.kv6
        subs = self.subops

        def decode(word):
            """Fields of instruction ``word``: sub-op, flags, the B_FP16 / D_FP16 / B_KV6 flag
            bits (B_KV6 in KV6 builds), the counts n0..n3 and ``field(x, k)`` (k = 0: base,
            1..4: s0..s3)."""
            hdr = word[0]
            flags = hdr[isa.HDR_FLAGS_SHIFT:isa.HDR_FLAGS_SHIFT + isa.HDR_FLAGS_BITS]

            def bit(f):
                return flags[(int(f)).bit_length() - 1]
            return SimpleNamespace(
                sub=hdr[isa.HDR_SUBOP_SHIFT:isa.HDR_SUBOP_SHIFT + isa.HDR_SUBOP_BITS], flags=flags,
                b16=bit(isa.VecFlag.B_FP16), d16=bit(isa.VecFlag.D_FP16),
                bkv6=bit(isa.VecFlag.B_KV6) if kv6 else None,
                n=[word[isa.VEC_N + k] for k in range(4)],
                field=lambda x, k: word[isa.VEC_OPERAND_WORD[x] + k])

        ins = Signal(isa.INSTR_LAYOUT)
        d_ins = decode(ins)
        sub, b16, d16, n, field = d_ins.sub, d_ins.b16, d_ins.d16, d_ins.n, d_ins.field
        d_cmd = decode(self.cmd.payload)

        # one-hot sub-op flags, registered with the instruction (no wide compare of the
        # sub-op field in front of the units' handshakes)
        is_sub = {s: Signal(name=f"is_{s.name.lower()}") for s in subs}
        cmd_is = {s: d_cmd.sub == int(s) for s in subs}
        if kv6:
            bkv6 = d_ins.bkv6
            kv_fdot = is_sub[V.FDOT] & bkv6            # B = LUT(code) * FP16 scale of C
            kvq6 = is_sub[V.KVQ6]

        # validation (isa.Vec.check, with LNMOD n0 == C) of the command as it is taken, into
        # a register that CHECK reads (no validation logic in front of the loop nests' loads)
        known_flags = int(isa.VecFlag.B_FP16 | isa.VecFlag.D_FP16)
        if kv6:
            known_flags |= int(isa.VecFlag.B_KV6)

        def invalid(w, sf) -> list[Value]:
            """The rules the instruction of fields ``w`` (:func:`decode`; one-hot sub-op flags
            ``sf``) breaks: one term per rule group (any 1: invalid), each registered on its
            own so that CHECK only ORs flip-flops."""
            w_flags, w_sub, w_b16, w_d16, w_n = w.flags, w.sub, w.b16, w.d16, w.n
            w_used = {x: Cat(*(sf[s] for s in _uses(x) if s in subs)).any() for x in ("a", "b", "c", "d")}
            if kv6:
                w_bkv6 = w.bkv6
                w_kv_fdot, w_kvq6 = sf[V.FDOT] & w_bkv6, sf[V.KVQ6]
                w_used["c"] = w_used["c"] | w_kv_fdot
            misaligned = []
            for x in ("a", "b", "c", "d"):
                fld = [w.field(x, k) for k in range(5)]
                mask = Mux(w_b16, 1, 3) if x == "b" else Mux(w_d16, 1, 3) if x == "d" else Const(3, 2)
                skip_s0 = sf[V.FDOT] if x == "d" else sf[V.L2NT] if x == "b" else Const(0)
                if kv6:      # 1-byte codes (B_KV6's B, KVQ6's D), FP16 scales (their C)
                    mask = {"b": Mux(w_bkv6, 0, mask), "d": Mux(w_kvq6, 0, mask),
                            "c": Mux(w_kv_fdot | w_kvq6, 1, mask)}.get(x, mask)
                    if x == "c":
                        skip_s0 = w_kvq6
                bad = (fld[0][:2] & mask) != 0
                bad |= ((fld[1][:2] & mask) != 0) & ~skip_s0
                for k in (2, 3, 4):
                    bad |= (fld[k][:2] & mask) != 0
                misaligned.append(w_used[x] & bad)
            bad = [(w_sub > int(max(subs))) | ((w_flags & ~known_flags) != 0),
                   Cat(*(v == 0 for v in w_n)).any(),
                   (w_b16 & ~sf[V.FDOT]) | (w_d16 != sf[V.CVT16]),
                   (sf[V.L2NT] & (w_n[0] != isa.L2NT_LEN)) | (sf[V.SOFTMAX] & (w_n[0] > self.max_kv)),
                   sf[V.LNMOD] & (w_n[0] != self.C)] + misaligned
            if kv6:
                bad.append((w_bkv6 & ~sf[V.FDOT]) | (w_bkv6 & w_b16) | (w_kvq6 & (w_n[0] != isa.KV6_GROUP)))
            return bad
        cmd_bad = invalid(d_cmd, cmd_is)
        bad_terms = [Signal(name=f"bad_field{j}") for j in range(len(cmd_bad))]
        bad_field = Signal()
        m.d.comb += bad_field.eq(Cat(*bad_terms).any())
        n_one = [Signal(name=f"n{k}_one") for k in range(4)]     # n_k == 1, registered with ins

        # ------------------------------------------------------------ attention array
        # FDOT with an FP16 B is offered to the array first; the element path below and the
        # array share the engine's rd_a, rd_b and wr ports (one of them active at a time)
        # SOFTMAX to the softmax array (same protocol, its own read client on rd_a and wr)
        arr_sel = Signal()                 # OFFER / ARRAY: an array owns the ports
        gen_rd = {x: ReadClient().create(path=(f"gen_rd_{x}",)) for x in ("a", "b")}
        gen_rd["c"] = self.rd_c
        gen_wr = WriteClient().create(path=("gen_wr",))
        att = sma = None
        offer = Const(0)
        if self.att is not None:
            T, N = self.att
            m.submodules.att = att = AttentionArray(T=T, N=N, max_e=self.att_max_e(self.max_kv),
                                                    P=self.P)
            # (abort straight through, not through the state: an idle array ignores it,
            # and its command is offered only in OFFER)
            m.d.comb += [att.cmd.payload.eq(ins), att.dram_base.eq(self.dram_base),
                         att.dram_size.eq(self.dram_size), att.abort.eq(self.abort)]
            att_offer = is_sub[V.FDOT] & b16 & self.fine
            if kv6:
                att_offer &= ~bkv6
            offer = att_offer
        if self.sm:
            m.submodules.sma = sma = SoftmaxArray(R=self.sm, max_e=self.max_kv, P=self.P)
            m.d.comb += [sma.cmd.payload.eq(ins), sma.dram_base.eq(self.dram_base),
                         sma.dram_size.eq(self.dram_size), sma.abort.eq(self.abort)]
            offer = offer | (is_sub[V.SOFTMAX] & self.fine)
        # the array of the instruction (is_sub: registered with it): one-hot port selects of
        # the attention array and the softmax array
        sels = (arr_sel & ~is_sub[V.SOFTMAX], arr_sel & is_sub[V.SOFTMAX])
        arrays = [(a, on) for a, on in zip((att, sma), sels) if a is not None]
        clients = [(gen_rd["a"], self.rd_a, [(att.rd_a if att else None), (sma.rd if sma else None)]),
                   (gen_rd["b"], self.rd_b, [(att.rd_b if att else None), None]),
                   (gen_wr, self.wr, [(att.wr if att else None), (sma.wr if sma else None)])]
        for gen, port, alts in clients:
            alts = [(alt, on) for alt, on in zip(alts, sels) if alt is not None]
            if not alts:
                wiring.connect(m, gen, wiring.flipped(port))
                continue
            valid, payload = Mux(arr_sel, 0, gen.req.valid), Mux(arr_sel, 0, gen.req.payload.as_value())
            for alt, on in alts:
                valid = valid | Mux(on, alt.req.valid, 0)
                payload = payload | Mux(on, alt.req.payload.as_value(), 0)
                m.d.comb += [alt.req.ready.eq(port.req.ready & on),
                             alt.resp.payload.eq(port.resp.payload),
                             alt.resp.valid.eq(port.resp.valid & on)]
            m.d.comb += [port.req.valid.eq(valid), port.req.payload.eq(payload),
                         gen.req.ready.eq(port.req.ready & ~arr_sel),
                         gen.resp.payload.eq(port.resp.payload),
                         gen.resp.valid.eq(port.resp.valid & ~arr_sel),
                         # every side always takes a response (the element path reserves
                         # FIFO room by credits, the arrays' BurstReaders likewise): a
                         # constant, not a select of a child's port in front of the arbiter
                         port.resp.ready.eq(1)]

        # ------------------------------------------------------------ control state
        error = Signal(4)
        m.d.comb += self.error.eq(error)
        flush = Signal()                   # state DRAIN: units, FIFOs, caches held in reset
        in_run = Signal()                  # state RUN (error detection)
        # (both registered beside the FSM state, set and cleared with its transitions: the
        # FIFOs' enables and resets hang off them)
        running = Signal()                 # RUN and no error/abort this cycle (issue, accept)
        # abort as the issue side and RUN see it: registered (the issue side's loop nests
        # sit behind it; IDLE and CHECK answer the port at once)
        abort_q = Signal()
        m.d.sync += abort_q.eq(self.abort)
        raise_err = Signal(4)              # an error detected this cycle (0: none)
        drained = Signal()
        finished = Signal()
        # load the generators (loop nests, address and word state) from the instruction:
        # in every CHECK cycle, whatever CHECK decides (an instruction that errors or goes
        # to an array leaves them loaded and unused: nothing outside RUN reads them), and
        # again when an array declines; so no validation term sits in front of their loads
        load = Signal()

        busy_now = Signal()                # the engine's state is not IDLE
        m.d.sync += self.busy.eq(busy_now)   # (registered: BUSY_DELAY)
        # CHECK is a flag inside the FSM's IDLE state, set by the command's take: cmd.valid
        # reaches only this flag and the error register, not the state's next-state logic
        check = Signal()
        take = Signal()
        with m.FSM(name="ctl"):
            with m.State("IDLE"):
                with m.If(~check):
                    m.d.comb += self.cmd.ready.eq(~self.abort)
                    # the instruction and its decode load every idle cycle (nothing reads
                    # them before CHECK), so cmd.valid does not gate the validation logic
                    m.d.sync += [ins.eq(self.cmd.payload)]
                    m.d.sync += [is_sub[s].eq(cmd_is[s]) for s in subs]
                    m.d.sync += [r.eq(t) for r, t in zip(bad_terms, cmd_bad)]
                    m.d.sync += [o.eq(v == 1) for o, v in zip(n_one, d_cmd.n)]
                with m.Else():                  # CHECK
                    m.d.comb += [busy_now.eq(1), load.eq(1)]
                    m.d.sync += check.eq(0)
                    with m.If(self.abort):
                        pass
                    with m.Elif(bad_field):
                        m.d.sync += error.eq(isa.ErrorCode.FIELD)
                    if arrays:                      # (no OFFER state without an array)
                        with m.Elif(offer):
                            m.next = "OFFER"
                    with m.Else():
                        m.d.sync += in_run.eq(1)
                        m.next = "RUN"
            if arrays:
                # the array takes the instruction or declines it (nothing accessed)
                arr_busy = arr_declined = 0
                arr_ready = arr_error = 0
                for a, on in arrays:
                    arr_busy = arr_busy | (a.busy & on)
                    arr_declined = arr_declined | (a.declined & on)
                    arr_ready = arr_ready | (a.cmd.ready & on)
                    arr_error = arr_error | Mux(on, a.error, 0)
                with m.State("OFFER"):
                    m.d.comb += [busy_now.eq(1), arr_sel.eq(1)]
                    m.d.comb += [a.cmd.valid.eq(on & ~self.abort) for a, on in arrays]
                    with m.If(self.abort):
                        m.next = "IDLE"
                    with m.Elif(arr_ready):
                        m.next = "ARRAY"
                with m.State("ARRAY"):
                    m.d.comb += [busy_now.eq(1), arr_sel.eq(1)]
                    with m.If(~arr_busy):
                        with m.If(arr_declined & ~self.abort):
                            m.d.comb += load.eq(1)
                            m.d.sync += in_run.eq(1)
                            m.next = "RUN"
                        with m.Else():
                            m.d.sync += error.eq(arr_error)
                            m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += [busy_now.eq(1), running.eq(~abort_q & (raise_err == 0))]
                with m.If(abort_q | (raise_err != 0)):
                    m.d.sync += [error.eq(raise_err), in_run.eq(0), flush.eq(1)]
                    m.next = "DRAIN"
                with m.Elif(finished):
                    m.d.sync += in_run.eq(0)
                    m.next = "IDLE"
            with m.State("DRAIN"):
                m.d.comb += busy_now.eq(1)
                with m.If(drained):
                    m.d.sync += flush.eq(0)
                    m.next = "IDLE"
        m.d.comb += take.eq(self.cmd.valid & self.cmd.ready)     # IDLE, not CHECK, no abort
        with m.If(take):
            m.d.sync += [check.eq(1), error.eq(0)]

        # first error of the cycle by priority (address before AXI errors); an AXI error
        # response is registered first (it stops the engine a cycle after it arrives: no
        # response port reaches the issue logic, and that word goes nowhere meanwhile)
        err_addr_rd, err_addr_wr, err_rd, err_wr = Signal(), Signal(), Signal(), Signal()
        err_rd_now, err_wr_now = Signal(), Signal()
        m.d.sync += [err_rd.eq(err_rd_now), err_wr.eq(err_wr_now)]
        with m.If(err_addr_rd | err_addr_wr):
            m.d.comb += raise_err.eq(isa.ErrorCode.ADDRESS)
        with m.Elif(err_rd):
            m.d.comb += raise_err.eq(isa.ErrorCode.AXI_READ)
        with m.Elif(err_wr):
            m.d.comb += raise_err.eq(isa.ErrorCode.AXI_WRITE)

        # The window: an element of `nbytes` bytes at `addr` is inside when dram_base <= addr
        # and addr + nbytes <= dram_base + dram_size, i.e. addr <= window_limit(nbytes).
        # The window and every element size are static from CHECK on, so each limit is a
        # register (valid from the first RUN cycle) and a check is two compares, no add.
        def window_limit(nbytes, name: str) -> Signal:
            limit = Signal(signed(35), name=f"window_limit_{name}")
            m.d.sync += limit.eq(self.dram_base + self.dram_size - nbytes)
            return limit

        def in_window(addr, limit):
            return (addr >= self.dram_base) & (Cat(addr, Const(0, 3)).as_signed() <= limit)

        # ------------------------------------------------------------ loop nests
        def loop_nest(prefix: str, n0, n0_one, operands: dict[str, list]):
            """Counters over i0..i3 (``n0``, n1, n2, n3 counts; ``n0_one``: n0 == 1) and one
            address register per operand; ``step`` advances.
            Returns (first_of_row, n-1 registers, addr dict, step, at_last_element,
            last_of_row)."""
            # rem[k]: elements of level k after the current one (counting down from n_k - 1,
            # reloaded from nm1 when the level wraps); top[k] = (rem[k] == 0) as registers,
            # updated with rem: a decrement lands on 0 when rem == 1 (a compare with a
            # constant), a reload when nm1 == 0 (one1: a count of 1, a copy of the
            # command's flags kept beside the nest: using those flags directly maps the top
            # one level deeper); so no compare sits between the counters and the step
            rem = [Signal(32, name=f"{prefix}_rem{k}") for k in range(4)]
            nm1 = [Signal(32, name=f"{prefix}_nm1_{k}") for k in range(4)]
            step = Signal(name=f"{prefix}_step")
            top = [Signal(init=1, name=f"{prefix}_top{k}") for k in range(4)]
            one1 = [Signal(name=f"{prefix}_one{k}") for k in range(4)]
            first = Signal(init=1, name=f"{prefix}_first")     # i0 == 0
            addrs = {}
            with m.If(load):
                cnt = [Value.cast(n0)] + [n[k] for k in range(1, 4)]
                m.d.sync += [q.eq(v - 1) for q, v in zip(nm1, cnt)]
                m.d.sync += [q.eq(v - 1) for q, v in zip(rem, cnt)]
                ones = [n0_one] + n_one[1:]
                m.d.sync += [q.eq(v) for q, v in zip(one1, ones)]
                m.d.sync += [q.eq(v) for q, v in zip(top, ones)]
                m.d.sync += first.eq(1)
            with m.Elif(step):
                with m.If(~top[0]):
                    m.d.sync += [rem[0].eq(rem[0] - 1), top[0].eq(rem[0] == 1), first.eq(0)]
                for lvl in (1, 2, 3):
                    with m.Elif(Cat(*top[:lvl]).all() & ~top[lvl]):
                        m.d.sync += [r.eq(v) for r, v in zip(rem[:lvl], nm1[:lvl])]
                        m.d.sync += [rem[lvl].eq(rem[lvl] - 1), first.eq(1)]
                        m.d.sync += [t.eq(o) for t, o in zip(top[:lvl], one1[:lvl])]
                        m.d.sync += top[lvl].eq(rem[lvl] == 1)
            for x, strides in operands.items():
                # p[0]: current element; p[k]: first element of the current level-k block
                p = [Signal(32, name=f"{prefix}_{x}_p{k}") for k in range(4)]
                addrs[x] = p[0]
                with m.If(load):
                    m.d.sync += [q.eq(field(x, 0)) for q in p]
                with m.Elif(step):
                    with m.If(~top[0]):
                        m.d.sync += p[0].eq(p[0] + strides[0])
                    for lvl in (1, 2, 3):
                        cond = Cat(*top[:lvl]).all() & ~top[lvl]
                        with m.Elif(cond):
                            nxt = (p[lvl] + strides[lvl])[:32]
                            m.d.sync += [q.eq(nxt) for q in p[:lvl + 1]]
            return first, nm1, addrs, step, Cat(*top).all(), top[0]

        # ============================================================ issue side
        # The loop nest hands one element per step to ISSUE_STAGES registers that work out,
        # per operand, what depends on the element alone (window checks, the burst's last
        # word and length; a few logic levels per stage); the last register is the issue
        # stage, which decides the read requests against the operand's state (word cache,
        # burst words ahead, credits).  Every stage moves on `adv`: the issue stage is
        # empty or issues its element.
        strides = {x: [field(x, k) for k in range(1, 5)] for x in ("a", "b", "c", "d")}
        i_first, i_nm1, i_addr, i_step, i_final, i_last = loop_nest(
            "is", n[0], n_one[0], {x: strides[x] for x in _READ_OPERANDS})
        l_done = Signal()               # the loop nest has handed over its last element
        with m.If(load):
            m.d.sync += l_done.eq(0)
        with m.Elif(i_step & i_final):
            m.d.sync += l_done.eq(1)
        left = Signal(32, name="is_left")   # elements after the loop nest's one in its row
        with m.If(load):
            m.d.sync += left.eq(n[0] - 1)
        with m.Elif(i_step):
            m.d.sync += left.eq(Mux(i_last, i_nm1[0], left - 1))

        desc_layout = data.StructLayout({
            **{f"new_{x}": 1 for x in _READ_OPERANDS},
            **{f"off_{x}": _WORD_SHIFT for x in _READ_OPERANDS},
            "last": 1})
        m.submodules.desc_fifo = ResetInserter(flush)(
            desc_fifo := SyncFIFOBuffered(width=desc_layout.size, depth=self.DESC_DEPTH))
        desc_w = Signal(desc_layout)
        # the issued element's descriptor enters the FIFO a cycle later, from a register:
        # the FIFO's level update is not behind the issue decision (its words come a read
        # round trip later in any case)
        desc_wv = Signal(name="desc_wv")
        desc_wd = Signal(desc_layout.size, name="desc_wd")
        m.d.comb += [desc_fifo.w_data.eq(desc_wd), desc_fifo.w_en.eq(desc_wv)]

        esize = {"a": Const(4, 3), "b": Mux(b16, 2, 4), "c": Const(4, 3)}
        if kv6:
            esize["b"] = Mux(bkv6, 1, esize["b"])
            esize["c"] = Mux(kv_fdot, 2, esize["c"])
        read_limit = {x: window_limit(esize[x], x) for x in _READ_OPERANDS}

        # the stages: valid, element flags, and per operand the fields computed so far
        adv = Signal()                  # every stage moves
        gen = Signal()                  # the loop nest has an element to hand over
        # The issue side stops one cycle after an error elsewhere (the FSM leaves RUN): in
        # that cycle it may still issue a read, always inside the window (all_ok below),
        # which the drain waits for like any other; an abort stops it a cycle after it
        # arrives (registered, like an AXI error response).
        issuing = in_run & ~abort_q
        m.d.comb += [gen.eq(issuing & ~l_done), i_step.eq(adv & gen)]
        valid = [Signal(name=f"is{k}_valid") for k in range(self.ISSUE_STAGES)]
        with m.If(load | flush):
            m.d.sync += [v.eq(0) for v in valid]
        with m.Elif(adv):
            m.d.sync += [valid[0].eq(gen)] + [valid[k].eq(valid[k - 1])
                                              for k in range(1, self.ISSUE_STAGES)]

        def stage(k: int, name: str, value, shape=None):
            r = Signal(shape if shape is not None else Value.cast(value).shape(),
                       name=f"is{k}_{name}")
            with m.If(adv):
                m.d.sync += r.eq(value)
            return r

        def carry(k: int, name: str, value, end: int = self.ISSUE_STAGES):
            """``value`` (a stage-(k-1) register, or the loop nest's at k = 0) through stages
            k..end-1."""
            for j in range(k, end):
                value = stage(j, name, value)
            return value

        e_last = carry(0, "last", i_last)
        first3 = carry(0, "first", i_first, end=self.ISSUE_STAGES - 1)   # L2NT: B at i0 = 0
        # stage 0: remaining elements of the row after this one, clamped to 255
        rem = stage(0, "rem", Mux(left[8:] != 0, 255, left[:8]), 8)
        addr0 = {x: stage(0, f"addr_{x}", i_addr[x]) for x in _READ_OPERANDS}
        e_valid = valid[-1]
        e_addr, ok, in_page, burstable, differs = {}, {}, {}, {}, {}
        # the operands the element at the issue stage reads (registered into that stage: the
        # sub-op flags are static during the run)
        three_operands = is_sub[V.LNMOD] | is_sub[V.RESID]
        need_c = three_operands | kv_fdot if kv6 else three_operands
        last_stage = self.ISSUE_STAGES - 1
        need_in = {"a": Const(1),
                   "b": three_operands | is_sub[V.FDOT] | (is_sub[V.L2NT] & first3),
                   "c": need_c}
        need = {x: v if x == "a" else stage(last_stage, f"need_{x}", v) for x, v in need_in.items()}
        last_word = {x: Signal(32 - _WORD_SHIFT, name=f"last_word_{x}") for x in _READ_OPERANDS}
        for x in _READ_OPERANDS:
            s0 = strides[x][0]
            burstable[x] = (s0[31] == 0) & (s0 != 0) & (s0 <= DATA_BYTES)
            if x == "b":
                burstable[x] &= ~is_sub[V.L2NT]          # one B per row: s0 is unused
            # stage 1: the element's window check; the burst's extent in bytes
            a1 = stage(1, f"addr_{x}", addr0[x])
            win1 = stage(1, f"win_{x}", in_window(addr0[x], read_limit[x]))
            span1 = stage(1, f"ext_{x}", rem * s0[:(DATA_BYTES).bit_length()], 13)
            # stage 2: the last element the burst may cover
            a2 = stage(2, f"addr_{x}", a1)
            end2 = stage(2, f"end_{x}", a1 + span1, 34)
            # stage 3: that element inside the window; words to it; words to the 4 KiB page end
            a3 = stage(3, f"addr_{x}", a2)
            end_ok3 = stage(3, f"endok_{x}", (end2[32:] == 0) & in_window(end2[:32], read_limit[x]))
            dist3 = stage(3, f"dist_{x}", (end2[_WORD_SHIFT:32] - a2[_WORD_SHIFT:])[:9], 9)
            page3 = stage(3, f"page_{x}", (1 << (12 - _WORD_SHIFT)) - a2[_WORD_SHIFT:12],
                          range((1 << (12 - _WORD_SHIFT)) + 1))
            # stage 4 (the issue stage): burst length in words, at most MAX_BURST, not across
            # 4 KiB (the credits are applied at issue)
            span = Mux(burstable[x] & end_ok3, Mux(dist3 >= MAX_BURST - 1, MAX_BURST, dist3 + 1), 1)
            in_page[x] = stage(4, f"inpage_{x}", Mux(page3 < span, page3, span),
                               range(MAX_BURST + 1))
            e_addr[x] = stage(4, f"addr_{x}", a3)
            # the element's word against the operand's last word as it will be when the
            # element reaches the issue stage (the stage advances when the element there
            # fires or is empty; a firing element that reads x makes its word the last one)
            prev = Mux(e_valid & need[x], e_addr[x][_WORD_SHIFT:], last_word[x])
            differs[x] = stage(4, f"differs_{x}", a3[_WORD_SHIFT:] != prev)
            # the element reads x inside the window, or does not read x
            ok[x] = ~need_in[x] | carry(2, f"win_{x}", win1, end=last_stage)
        can_issue = Signal()
        # room for the descriptor, as a register: the FIFO's level from the cycle before,
        # three entries short of full (it grows by one a cycle at most, and the descriptor
        # register holds one more); the FIFO's own w_rdy compares the level in front of
        # the issue decision
        desc_room = Signal(name="desc_room")
        m.d.sync += desc_room.eq(desc_fifo.level < self.DESC_DEPTH - 3)
        m.d.comb += can_issue.eq(in_run & e_valid & desc_room)
        blocked = []
        rd_state = {}
        for x in _READ_OPERANDS:
            port = gen_rd[x]
            addr = e_addr[x]
            word = addr[_WORD_SHIFT:]
            cached = Signal(name=f"cached_{x}")
            new = Signal(name=f"new_{x}")
            m.d.comb += new.eq(need[x] & (~cached | differs[x]))
            # Words already requested ahead of this element by a burst.  A burst covers the
            # words from this element's to the one of a later element of the same row; with
            # 0 < s0 <= 16 every word in between is touched, in order, so the next new word
            # of this operand is always the next word of the burst.
            ahead = Signal(range(MAX_BURST), name=f"ahead_{x}")
            ahead_z = Signal(init=1, name=f"ahead_z_{x}")      # ahead == 0, as a register
            req_valid = Signal(name=f"req_valid_{x}")
            req_addr = Signal(32, name=f"req_addr_{x}")
            req_len = Signal(8, name=f"req_len_{x}")
            m.d.comb += [port.req.valid.eq(req_valid), port.req.payload.addr.eq(req_addr),
                         port.req.payload.len.eq(req_len)]
            # (the engine's own port's ready: an array holds the ports only outside RUN, and
            # an element issues only in RUN, so the array select is not in this decision)
            req_free = ~req_valid | getattr(self, f"rd_{x}").req.ready
            credits = Signal(range(depth + 1), name=f"credits_{x}")   # words issued, not popped
            inflight = Signal(range(depth + 1), name=f"inflight_{x}")  # words without response
            free = depth - credits
            beats = Signal(range(MAX_BURST + 1), name=f"beats_{x}")
            m.d.comb += beats.eq(Mux(free < in_page[x], free, in_page[x]))
            request = Signal(name=f"request_{x}")
            m.d.comb += request.eq(new & ahead_z)
            full = Signal(name=f"credits_full_{x}")      # credits == depth, as a register
            blocked.append(request & (~req_free | full))
            rd_state[x] = dict(port=port, new=new, word=word, last_word=last_word[x], cached=cached,
                               req_valid=req_valid, req_addr=req_addr, req_len=req_len,
                               credits=credits, full=full, inflight=inflight,
                               ahead=ahead, ahead_z=ahead_z,
                               request=request, beats=beats)
        # every operand the element reads inside the window: one register (an element
        # outside it is an address error instead of an issue)
        all_ok = stage(last_stage, "all_ok", Cat(*ok.values()).all())
        with m.If(can_issue & ~all_ok):
            m.d.comb += err_addr_rd.eq(1)
        fire = Signal()
        m.d.comb += [fire.eq(issuing & can_issue & all_ok & ~Cat(*blocked).any()),
                     adv.eq(~e_valid | fire)]
        m.d.comb += desc_w.last.eq(e_last)
        m.d.sync += [desc_wv.eq(fire & ~flush), desc_wd.eq(desc_w)]
        i_done = Signal()               # every element issued
        m.d.comb += i_done.eq(l_done & ~Cat(*valid).any())

        # response FIFOs and word caches (gather side) -------------------------
        pop = Signal()                  # gather takes the head descriptor this cycle
        desc = desc_layout(desc_fifo.r_data)
        words = {}
        fifo_ok = []
        for x in _READ_OPERANDS:
            st = rd_state[x]
            port = st["port"]
            m.d.comb += [getattr(desc_w, f"new_{x}").eq(st["new"]),
                         getattr(desc_w, f"off_{x}").eq(e_addr[x][:_WORD_SHIFT])]
            with m.If(fire & st["new"]):
                m.d.sync += [st["last_word"].eq(st["word"]), st["cached"].eq(1)]
                with m.If(st["request"]):
                    # beats == 1: min(free, in_page) with both >= 1 here (a burst is only
                    # requested with a free credit; a burst has a word)
                    m.d.sync += [st["ahead"].eq(st["beats"] - 1),
                                 st["ahead_z"].eq((st["credits"] == depth - 1) | (in_page[x] == 1))]
                with m.Else():
                    m.d.sync += [st["ahead"].eq(st["ahead"] - 1), st["ahead_z"].eq(st["ahead"] == 1)]
            with m.If(fire & st["request"]):
                m.d.sync += [st["req_valid"].eq(1), st["req_len"].eq(st["beats"] - 1),
                             st["req_addr"].eq(Cat(Const(0, _WORD_SHIFT), st["word"]))]
            with m.Elif(port.req.ready):
                m.d.sync += st["req_valid"].eq(0)
            with m.If(load | flush):
                m.d.sync += [st["cached"].eq(0), st["ahead"].eq(0), st["ahead_z"].eq(1)]
            # response FIFO: room is reserved by credits, so resp.ready is always 1
            m.submodules[f"resp_fifo_{x}"] = ResetInserter(flush)(
                fifo := SyncFIFOBuffered(width=DATA_BITS, depth=depth))
            m.d.comb += [port.resp.ready.eq(1), fifo.w_data.eq(port.resp.payload.data),
                         fifo.w_en.eq(port.resp.valid & ~flush)]
            with m.If(in_run & port.resp.valid & port.resp.payload.err):
                m.d.comb += err_rd_now.eq(1)
            issue_x = fire & st["request"]
            take = pop & getattr(desc, f"new_{x}")
            m.d.comb += fifo.r_en.eq(take)

            # credits + (beats if issued) - take, the sums from registers and the late
            # issue_x and take only selecting: c + beats = min(depth, c + in_page)
            c = st["credits"]
            c_in = Signal(range(depth + MAX_BURST + 1), name=f"credits_in_{x}")
            m.d.comb += c_in.eq(c + in_page[x])
            over = c_in > depth
            up, up1 = Mux(over, depth, c_in), Mux(over, depth - 1, c_in - 1)
            # (fire, the latest of them, selects last: the values if the element requests,
            # and the values without an issue, are worked out beside it)
            c_keep = Signal.like(c, name=f"credits_keep_{x}")
            c_req = Signal.like(c, name=f"credits_req_{x}")
            f_keep, f_req = Signal(name=f"full_keep_{x}"), Signal(name=f"full_req_{x}")
            m.d.comb += [c_keep.eq(Mux(take, c - 1, c)), f_keep.eq(~take & (c == depth)),
                         c_req.eq(Mux(st["request"], Mux(take, up1, up), c_keep)),
                         f_req.eq(Mux(st["request"], Mux(take, up1 == depth, up == depth), f_keep))]
            with m.If(flush):
                m.d.sync += [c.eq(0), st["full"].eq(0)]
            with m.Else():
                m.d.sync += [c.eq(Mux(fire, c_req, c_keep)), st["full"].eq(Mux(fire, f_req, f_keep))]
            # inflight (for quiet only) counts an issued burst a cycle late: in that cycle
            # its request register is valid, so quiet stays low
            inc = Signal(range(MAX_BURST + 1), name=f"inflight_inc_{x}")
            m.d.sync += inc.eq(Mux(issue_x, st["beats"], 0))
            f_up = st["inflight"] + inc
            m.d.sync += st["inflight"].eq(Mux(port.resp.valid, f_up - 1, f_up))
            cache = Signal(DATA_BITS, name=f"cache_{x}")
            with m.If(take):
                m.d.sync += cache.eq(fifo.r_data)
            words[x] = Mux(getattr(desc, f"new_{x}"), fifo.r_data, cache)
            fifo_ok.append(~getattr(desc, f"new_{x}") | fifo.r_rdy)

        # gather: the element register feeding the units -----------------------
        elem_layout = data.StructLayout({"a": 32, "b": 32, "c": 32, "last": 1})
        elem = Signal(elem_layout)
        elem_valid = Signal()
        elem_ready = Signal()
        elem_free = ~elem_valid | elem_ready
        m.d.comb += pop.eq(desc_fifo.r_rdy & Cat(*fifo_ok).all() & elem_free & ~flush)
        m.d.comb += desc_fifo.r_en.eq(pop)

        def lane32(word, off):
            return word.word_select(off[2:], 32)
        # an FP16 B travels as its 16 bits and is converted (exactly) after the element
        # register, in front of the feed slice: no conversion behind the word select
        b_half = words["b"].word_select(desc.off_b[1:], 16)
        b_val = Mux(b16, b_half, lane32(words["b"], desc.off_b))
        c_val = lane32(words["c"], desc.off_c)
        if kv6:
            # B_KV6: the code byte through the 64-entry decode LUT (exact FP32 values);
            # C: the FP16 scale converted exactly to FP32 (multiplied in the next stage)
            lut = Array(Const(v, 32) for v in kv6_decode_table())
            b_code = words["b"].word_select(desc.off_b, 8)
            c_half = words["c"].word_select(desc.off_c[1:], 16)
            b_val = Mux(bkv6, lut[b_code[:6]], b_val)
            c_val = Mux(kv_fdot, fp16_to_fp32(m, c_half), c_val)
        with m.If(flush):
            m.d.sync += elem_valid.eq(0)
        with m.Elif(pop):
            m.d.sync += [elem_valid.eq(1), elem.a.eq(lane32(words["a"], desc.off_a)),
                         elem.b.eq(b_val), elem.c.eq(c_val), elem.last.eq(desc.last)]
        with m.Elif(elem_ready):
            m.d.sync += elem_valid.eq(0)

        # KV6 builds: one more stage, the FP32 multiply value(code) * scale for FDOT with
        # B_KV6 (exact); the other fields travel alongside (2 cycles, stalls with it)
        if kv6:
            m.submodules.kv6_mul = mul = ResetInserter(flush)(FPUnit(FPOp.MUL, FP32))
            mul_en = ~mul.o.valid | mul.o.ready           # FPUnit's stall-all enable
            side = [Signal(elem_layout, name=f"kv6_side{k}") for k in range(mul.latency)]
            with m.If(mul_en):
                m.d.sync += [side[0].eq(elem)] + [side[k].eq(side[k - 1]) for k in range(1, len(side))]
            m.d.comb += [mul.i.valid.eq(elem_valid), elem_ready.eq(mul.i.ready),
                         mul.i.payload[0].a.as_value().eq(elem.b),
                         mul.i.payload[0].b.as_value().eq(elem.c)]
            src = Signal(elem_layout)
            src_valid, src_ready = mul.o.valid, Signal()
            m.d.comb += [src.eq(side[-1]), mul.o.ready.eq(src_ready)]
            with m.If(kv_fdot):
                m.d.comb += src.b.eq(mul.o.payload[0].as_value())
        else:
            src, src_valid, src_ready = elem, elem_valid, elem_ready

        # a register slice between the element stage and the units (skid_buffer): the
        # units' i.ready does not reach into the element pipeline's pop logic
        f_ready = Signal()
        fed = Signal(elem_layout)
        m.d.comb += [fed.eq(src), fed.b.eq(Mux(b16, fp16_to_fp32(m, src.b[:16]), src.b))]
        f_in_ready, f_valid, f_bits = skid_buffer(m, src_valid, fed.as_value(), f_ready, "feed",
                                                  clear=flush)
        fsrc = Signal(elem_layout)
        m.d.comb += [src_ready.eq(f_in_ready), fsrc.eq(f_bits)]

        # ============================================================ units
        units = self.row_units()
        for s, u in units.items():
            m.submodules[f"unit_{s.name.lower()}"] = ResetInserter(flush)(u)
        # one pipe per shared function: the selected sub-op's unit drives its argument and
        # enable (is_sub is one-hot and static for an instruction; an instruction ends with
        # its unit empty, so a pipe never holds another unit's elements), every user sees
        # its result
        connect_function_pipes(m, [(u, is_sub[s]) for s, u in units.items()
                                   if getattr(u, "shared_functions", False)])
        # fine = 0: one element per unit latency
        max_lat = max(u.latency for u in units.values())
        lat = Array(Const(units[s].latency, range(max_lat + 1)) for s in sorted(units))
        gap = Signal(range(max_lat + 1))
        throttle_ok = Signal(init=1)            # gap == 0, as a register
        feed = f_valid & throttle_ok
        # the sub-op's gap, registered (the instruction is static from CHECK on)
        gap_load, gap_one = Signal.like(gap), Signal()
        m.d.sync += [gap_load.eq(lat[sub[:3]] - 1), gap_one.eq(lat[sub[:3]] == 1)]
        with m.If(flush):
            m.d.sync += [gap.eq(0), throttle_ok.eq(1)]
        with m.Elif(feed & f_ready & ~self.fine):
            m.d.sync += [gap.eq(gap_load), throttle_ok.eq(gap_one)]
        with m.Elif(~throttle_ok):
            m.d.sync += [gap.eq(gap - 1), throttle_ok.eq(gap == 1)]
        payloads = {
            V.LNMOD: {"x": fsrc.a, "scale": fsrc.b, "shift": fsrc.c},
            V.RESID: {"x": fsrc.a, "g": fsrc.b, "y": fsrc.c},
            V.L2NT: {"x": fsrc.a, "t": fsrc.b},
            V.SOFTMAX: {"x": fsrc.a, "last": fsrc.last},
            V.FDOT: {"a": fsrc.a, "b": fsrc.b, "last": fsrc.last},
            V.KVQ6: {"x": fsrc.a},
        }
        # the selected unit's results pass a register slice (skid_buffer): the units'
        # o.ready is a register, not the write side's merge and window logic
        # (is_sub is one-hot: the selections are AND-OR, not a chain of priority muxes)
        u_valid, u_ready, u_data = Signal(), Signal(), Signal(32)
        any_ready, any_valid, any_data = Const(0), Const(0), Const(0, 32)
        for s, u in units.items():
            if s in payloads:
                for name, val in payloads[s].items():
                    m.d.comb += getattr(u.i.payload, name).eq(val)
            elif s is V.GELU:
                m.d.comb += u.i.payload[0].as_value().eq(fsrc.a)
            else:   # CVT16
                m.d.comb += u.i.payload[0].a.as_value().eq(fsrc.a)
            m.d.comb += [u.i.valid.eq(feed & is_sub[s]), u.o.ready.eq(u_ready & is_sub[s])]
            any_ready = any_ready | (is_sub[s] & u.i.ready)
            any_valid = any_valid | (is_sub[s] & u.o.valid)
            any_data = any_data | Mux(is_sub[s], u.o.payload.as_value(), 0)
        m.d.comb += [f_ready.eq(throttle_ok & any_ready), u_valid.eq(any_valid),
                     u_data.eq(any_data)]
        res_ready = Signal()
        u_in_ready, res_valid, res_data = skid_buffer(m, u_valid, u_data, res_ready, "res",
                                                      clear=flush)
        m.d.comb += u_ready.eq(u_in_ready)

        # ============================================================ write side
        d_n0 = Mux(is_sub[V.FDOT], 1, n[0])     # FDOT: one result per row, s0 unused
        _, _, d_addr, d_step, d_final, d_row_end = loop_nest("wr", d_n0, is_sub[V.FDOT] | n_one[0],
                                                             {"d": strides["d"]})
        q = d_addr["d"]
        # the same nest one element ahead (stepped once after start, then with the results),
        # so that "the next result is in this result's word" is a register (same_r), not a
        # 28-bit compare in front of the write side's decision
        _, _, a_addr, a_step, _, _ = loop_nest("wa", d_n0, is_sub[V.FDOT] | n_one[0],
                                               {"d": strides["d"]})
        primed = Signal()
        with m.If(load):
            m.d.sync += primed.eq(0)
        with m.Elif(~primed):
            m.d.sync += primed.eq(1)
        m.d.comb += a_step.eq(d_step | ~primed)     # (a load outranks a step)
        same_r = Signal()
        with m.If(d_step):
            m.d.sync += same_r.eq(q[_WORD_SHIFT:] == a_addr["d"][_WORD_SHIFT:])
        d_done = Signal()
        with m.If(load):
            m.d.sync += d_done.eq(0)
        with m.Elif(d_step & d_final):
            m.d.sync += d_done.eq(1)

        # the pending (merging) word and the write request register
        pend_valid = Signal()
        pend_word = Signal(32 - _WORD_SHIFT)
        pend_data = Signal(DATA_BITS)
        pend_strb = Signal(DATA_BYTES)
        wreq_valid = Signal()
        m.d.comb += gen_wr.req.valid.eq(wreq_valid)
        wreq_free = ~wreq_valid | gen_wr.req.ready
        m.d.comb += gen_wr.resp.ready.eq(1)
        with m.If(in_run & gen_wr.resp.valid & gen_wr.resp.payload.err):
            m.d.comb += err_wr_now.eq(1)

        new_word = q[_WORD_SHIFT:]
        lane16 = q[1:_WORD_SHIFT]
        new_data = Signal(DATA_BITS)
        new_strb = Signal(DATA_BYTES)
        with m.If(d16):
            m.d.comb += [new_data.eq(res_data[:16] << (lane16 * 16)),
                         new_strb.eq(Const(0b11, DATA_BYTES) << (lane16 * 2))]
        if kv6:      # KVQ6: one code byte
            with m.Elif(kvq6):
                m.d.comb += [new_data.eq(res_data[:8] << (q[:_WORD_SHIFT] * 8)),
                             new_strb.eq(Const(1, DATA_BYTES) << q[:_WORD_SHIFT])]
        with m.Else():
            m.d.comb += [new_data.eq(res_data << (lane16[1:] * 32)),
                         new_strb.eq(Const(0b1111, DATA_BYTES) << (lane16[1:] * 4))]
        new_mask = Cat(*(b.replicate(8) for b in new_strb))
        same = pend_valid & same_r         # = pend_valid & (pend_word == new_word)
        d_size = Mux(d16, 2, 4)
        if kv6:
            d_size = Mux(kvq6, 1, d_size)
        d_ok = in_window(q, window_limit(d_size, "d"))
        emit = Signal()                     # pending word -> write request register
        res_ok = running & ~d_done & d_ok & (~pend_valid | same | wreq_free)
        if kv6:
            # KVQ6: with a row's last code its FP16 scale goes to C (row loop nest "sc",
            # s0 unused) through a one-entry scale write register
            _, _, c_addr, c_step, _, _ = loop_nest("sc", 1, Const(1), {"c": strides["c"]})
            sc_valid = Signal()
            sc_addr = Signal(32)
            sc_data = Signal(16)
            c_ok = in_window(c_addr["c"], window_limit(2, "scale"))
            sc_take = kvq6 & d_row_end              # this result also carries the row's scale
            res_ok &= ~sc_take | (~sc_valid & c_ok)
            with m.If(in_run & res_valid & ~d_done & d_ok & sc_take & ~c_ok):
                m.d.comb += err_addr_wr.eq(1)
        m.d.comb += res_ready.eq(res_ok)
        with m.If(in_run & res_valid & ~d_done & ~d_ok):
            m.d.comb += err_addr_wr.eq(1)
        take_res = res_valid & res_ready
        m.d.comb += d_step.eq(take_res)
        with m.If(take_res):
            m.d.sync += [pend_valid.eq(1), pend_word.eq(new_word)]
            with m.If(same):
                m.d.sync += [pend_data.eq((pend_data & ~new_mask) | new_data),
                             pend_strb.eq(pend_strb | new_strb)]
            with m.Else():
                m.d.sync += [pend_data.eq(new_data), pend_strb.eq(new_strb)]
                m.d.comb += emit.eq(pend_valid)
        with m.Elif(running & d_done & pend_valid & wreq_free):
            m.d.comb += emit.eq(1)
            m.d.sync += pend_valid.eq(0)
        with m.If(flush | load):
            m.d.sync += pend_valid.eq(0)
        with m.If(emit):
            m.d.sync += [wreq_valid.eq(1),
                         gen_wr.req.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), pend_word)),
                         gen_wr.req.payload.data.eq(pend_data),
                         gen_wr.req.payload.strb.eq(pend_strb)]
        if kv6:      # the scale write takes the request register when the codes do not
            with m.Elif(running & sc_valid & wreq_free):
                sc_lane = sc_addr[1:_WORD_SHIFT]
                m.d.sync += [wreq_valid.eq(1), sc_valid.eq(0),
                             gen_wr.req.payload.addr.eq(Cat(Const(0, _WORD_SHIFT), sc_addr[_WORD_SHIFT:])),
                             gen_wr.req.payload.data.eq(sc_data << (sc_lane * 16)),
                             gen_wr.req.payload.strb.eq(Const(0b11, DATA_BYTES) << (sc_lane * 2))]
        with m.Elif(gen_wr.req.ready):
            m.d.sync += wreq_valid.eq(0)
        if kv6:
            with m.If(take_res & sc_take):
                m.d.sync += [sc_valid.eq(1), sc_addr.eq(c_addr["c"]), sc_data.eq(res_data[16:])]
                m.d.comb += c_step.eq(1)
            with m.If(flush | load):
                m.d.sync += sc_valid.eq(0)
        # writes accepted, response pending: none (a register)
        wr_zero = writes_pending_zero(m, gen_wr.req.valid & gen_wr.req.ready, gen_wr.resp.valid,
                                      "wr_out")

        # ============================================================ completion
        quiet = Cat(*(~rd_state[x]["req_valid"] & (rd_state[x]["inflight"] == 0)
                      for x in _READ_OPERANDS)).all() & ~wreq_valid & wr_zero
        done = quiet & i_done & d_done & ~pend_valid
        if kv6:
            done &= ~sc_valid
        m.d.comb += [drained.eq(quiet), finished.eq(done)]
        return m
