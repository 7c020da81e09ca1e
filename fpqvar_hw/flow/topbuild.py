"""The as-built top's build: its parameters and unit latencies, read from the RTL classes
(:func:`top_build`, :func:`top_latencies`), and the vocabulary of an instruction's cost on
an engine (:class:`EngineCost`, the request and write paths, :func:`write_bound`) that the
engine models of :mod:`fpqvar_hw.flow.asbuilt` share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..config import AcceleratorConfig
from .topmem import TopMemory

__all__ = ["TopBuild", "top_build", "top_latencies", "EngineCost", "write_bound", "bursts",
           "MATRIX_DRAIN_STATES", "ENGINE_START", "ENGINE_END", "READ_PATH", "WRITE_PATH"]

# ===================================================================== the as-built top
# One instruction at a time per engine, in program order, sync flags as
# compiler.assign_sync sets them; one 128-bit AXI master (16 bytes per cycle at most).

#: ``matrix.py`` drain FSM: BIAS, the cycle after the last BIAS_READ word, WAIT, FLUSH
#: -- cycles per feature block on top of the emitted results and the bias words.
MATRIX_DRAIN_STATES = 4
#: ``vecengine.py`` / ``matrix.py`` command FSMs: IDLE -> CHECK -> RUN (2 cycles before
#: the first request) and the FLUSH / finished cycle at the end.
ENGINE_START, ENGINE_END = 2, 1
#: Cycles between a read client's request and the AR beat, plus the response FIFO and the
#: element/loader register: the ReadArbiter registers AR (axi.py "Latency: AR valid one cycle
#: after req"), the engines register the request (1) and the response word (1).
READ_PATH = 3
#: Same for a write: write-request register, WriteArbiter AW/W register, the merge register.
WRITE_PATH = 3


@dataclass(frozen=True)
class TopBuild:
    """Build parameters and unit latencies of the as-built top (:func:`top_build`).

    ``lat`` holds cycle counts read from the RTL classes: matrix ``cvt`` (FP32->FP16
    converter), ``had`` / ``quant`` (``LATENCY_AFTER_LAST``), ``dot`` (one array cell);
    vector ``gap_<SUBOP>`` (the unit latency that spaces elements with the fine pipeline
    off), ``tree`` (pairwise tree over ``P`` partials), ``drain`` (``PartialSums.DRAIN``),
    ``mul``, the row units' phase latencies (``ln_mean``, ``ln_var``, ``ln_rsqrt``,
    ``ln_out``, ``sm_exp``, ``sm_recip``, ``l2_sq``, ``l2_gain``; those after a reduction
    include the tree), ``sm_slots``, ``l2_slots`` (the row units' buffers in flight),
    ``gelu``, ``resid``, ``cvt16``, ``fdot`` (pause after a row) and ``fdot_tree``.
    """

    tm: int
    tn: int
    sets: int                # row sets: a row block (weight pass) is tm * sets rows
    lanes: int
    quant_lanes: int
    C: int
    P: int
    code_words: int          # bus words per (beat, feature) weight entry
    scale_words: int         # bus words per (feature block, group) of FP16 scales
    max_outstanding: int     # bursts in flight on the read arbiter
    max_writes: int          # single-beat writes awaiting their B response (write arbiter)
    vec_rd_depth: int        # words in flight per vector-engine operand
    mat_fifo_words: int      # words per matrix-engine read FIFO
    max_burst: int
    lat: Mapping[str, int]


_TOP_BUILDS: dict = {}      # (lanes, attention array, tn, row sets) -> unit latencies


def top_build(config: AcceleratorConfig, C: int, *,
              lat: Mapping[str, int] | None = None) -> TopBuild:
    """The as-built top for ``config`` and model width ``C``: every latency is read from the
    unit classes (:func:`top_latencies`; needs Amaranth).  The engine defaults are those
    :class:`fpqvar_hw.engines.top.Accelerator` builds (``max_outstanding``, ``rd_depth``,
    ``fifo_words``).  ``lat``: the unit latencies of another RTL version instead (a cycle
    file measured on an older top states its own, :mod:`fpqvar_hw.flow.simcycles`); it must
    have exactly the keys of :func:`top_latencies`."""
    import inspect

    from ..engines import axi

    from .. import isa, packing
    from ..engines.matrix import MatrixEngine
    from ..engines.top import Accelerator
    from ..engines.vecengine import VectorEngine
    if C < 1 or C % isa.VEC_P:
        raise ValueError(f"C must be a positive multiple of {isa.VEC_P}, got {C}")
    acc = inspect.signature(Accelerator.__init__).parameters["max_outstanding"].default
    acc_w = inspect.signature(Accelerator.__init__).parameters["max_writes"].default
    mat = inspect.signature(MatrixEngine.__init__).parameters["fifo_words"].default
    rd = inspect.signature(VectorEngine.__init__).parameters["rd_depth"].default
    return TopBuild(tm=config.tm, tn=config.tn, sets=config.row_sets, lanes=config.lanes,
                    quant_lanes=config.quant_lanes,
                    C=C, P=isa.VEC_P,
                    code_words=packing.gemm_code_word_bytes(config.lanes, 4) // axi.DATA_BYTES,
                    scale_words=-(-2 * config.tn // axi.DATA_BYTES), max_outstanding=acc,
                    max_writes=acc_w,
                    vec_rd_depth=rd, mat_fifo_words=mat, max_burst=axi.MAX_BURST,
                    lat=_checked_latencies(lat, config.lanes) if lat is not None
                    else top_latencies(config.lanes, (config.att_t, config.att_n), config.tn,
                                       config.row_sets, config.sm_lanes))


#: Cycle files measured before the pipelined array cell, bias add and vector-engine read
#: issue (2026-12-05) do not state them: that cell took a group every ``group/lanes``
#: beats, which the weight stream already bounds, so 1 reproduces it; the bias add took 2
#: stages; the vector engine issued its first read straight from the loop nest.
_OLDER_RTL_LATENCIES = {"dot_group": 1, "bias": 2, "vec_issue": 0,   # ... no attention array;
                        "att_T": 0, "att_N": 0, "att_check": 0, "att_tile": 0, "att_tail": 0,
                        "att_depth": 0, "att_slots": 2, "att_drains": 1,  # the first: 2 B slots, 1 drain
                        "sma_lanes": 0, "sma_check": 0, "sma_words": 0, "sma_depth": 0,  # no softmax array
                        "vec_slices": 0, "load_slices": 0,  # no register slices
                        "rd_slice": 0, "wr_slice": 0,
                        "vec_busy": 0,                      # a combinational busy
                        "arr_slice": 0,                     # beats straight to the array
                        "drain_slice": 0, "drain_set": 1,   # drain: no slices, LOAD alone
                        "sm_slots": 0, "l2_slots": 0, "ln_slots": 0}   # row units: a row at a time


def _checked_latencies(lat: Mapping[str, int], lanes: int) -> dict[str, int]:
    want = set(top_latencies(lanes, (1, 1)))       # the keys
    lat = {**_OLDER_RTL_LATENCIES, **lat}
    if set(lat) != want or not all(isinstance(v, int) and v >= 0 for v in lat.values()):
        raise ValueError(f"unit latencies must map exactly {sorted(want)} to cycle counts, got "
                         f"{dict(lat)}")
    return dict(lat)


def top_latencies(lanes: int, att: tuple[int, int], tn: int = 1, sets: int = 1,
                  sm: int = 0) -> dict[str, int]:
    """:attr:`TopBuild.lat` for an array of ``lanes`` and an attention array of ``att`` =
    ``(att_t, att_n)`` MAC lanes, ``sm`` softmax lanes and ``tn`` array columns (the config's; cached; from the
    unit classes' ``latency_for`` and a dry Dataflow: nothing is built; ``tn`` sets the
    columns per array cell, ``MatrixEngine.cell_share``, ``sets`` the row sets).  No latency
    depends on the model
    width.  Cycle files of the simulated top record it as ``unit_latencies`` (the RTL they
    were measured on)."""
    if (lanes, att, tn, sets, sm) in _TOP_BUILDS:
        return dict(_TOP_BUILDS[(lanes, att, tn, sets, sm)])
    from amaranth.hdl import Signal

    from .. import isa
    from ..engines.axi import ReadArbiter, WriteArbiter
    from ..engines.matrix import BIAS_ADD_LATENCY, MatrixEngine
    from ..engines.vecengine import VectorEngine
    from ..units.fpu import FPOp
    from ..units.hadamard import LATENCY_AFTER_LAST as HAD
    from ..units.quantizer import LATENCY_AFTER_LAST as QUANT
    from ..units.vector import (Dataflow, L2NormTemperature, LayerNormModulate, PartialSums,
                                Softmax, Val)

    from ..engines.attention import AttentionArray
    from ..engines.smarray import SoftmaxArray, SoftmaxLane
    P = isa.VEC_P
    # the row units' phase latencies, scheduled exactly as vector.py schedules them (a dry
    # Dataflow: stage counts only, nothing built)
    df = Dataflow(None, None, dry=True)

    def x():
        return Val(Signal(32), 0)
    level = [x() for _ in range(P)]
    while len(level) > 1:
        level = [df.add(level[q], level[q + 1]) for q in range(0, len(level), 2)]
    tree = level[0].stage
    tv = Val(Signal(32), tree)
    held = Val(Signal(32), -1)
    # the sub-op -> unit latencies of the engine (they do not depend on C)
    units = VectorEngine.row_latencies(C=P, max_kv=64, P=P)
    lnmod_out = df.add(df.mul(df.mul(x(), held), df.add(x(), df.const(0))), x())
    sm_exp, sm_recip = Softmax.pipeline_cycles(P)          # the units' own pipelines
    l2_sq, l2_gain = L2NormTemperature.pipeline_cycles(P)
    lat = {
        "cvt": FPOp.CONVERT.latency, "had": HAD, "quant": QUANT,
        "dot": MatrixEngine.cell_latency(lanes, tn, sets),
        "dot_group": MatrixEngine.cell_group_interval(lanes, sets),
        "bias": BIAS_ADD_LATENCY,
        "vec_issue": VectorEngine.ISSUE_STAGES, "vec_slices": VectorEngine.UNIT_SLICES,
        "vec_busy": VectorEngine.BUSY_DELAY, "arr_slice": MatrixEngine.ARRAY_SLICES,
        "drain_slice": MatrixEngine.DRAIN_SLICES, "drain_set": MatrixEngine.DRAIN_SET_CYCLES,
        "load_slices": MatrixEngine.LOADER_SLICES, "rd_slice": ReadArbiter.REQUEST_SLICES,
        "wr_slice": WriteArbiter.REQUEST_SLICES,
        # the vector engine's attention array (T = 0: none); AttentionArray's own timing
        "att_T": att[0] if att else 0, "att_N": att[1] if att else 0,
        "att_check": AttentionArray.CHECK_CYCLES, "att_tile": AttentionArray.tile_cycles(0),
        "att_tail": AttentionArray.tail_cycles(0), "att_depth": AttentionArray.DEPTH,
        "att_slots": AttentionArray.B_SLOTS, "att_drains": AttentionArray.DRAINS,
        # the vector engine's softmax array (0 lanes: none); SoftmaxArray's own timing
        "sma_lanes": sm, "sma_check": SoftmaxArray.CHECK_CYCLES,
        "sma_words": SoftmaxLane.WORDS, "sma_depth": SoftmaxArray.DEPTH,
        **{f"gap_{s.name}": u for s, u in units.items()},
        "tree": tree, "drain": PartialSums.DRAIN, "mul": FPOp.MUL.latency,
        "ln_mean": df.mul(tv, df.const(0)).stage,
        "ln_var": df.mul(df.sub(x(), held), df.sub(x(), held)).stage,
        "ln_rsqrt": df.rsqrt(df.add(df.mul(tv, df.const(0)), df.const(0))).stage,
        "ln_out": lnmod_out.stage,
        "sm_exp": sm_exp, "sm_recip": sm_recip,
        "sm_slots": Softmax.SLOTS, "l2_slots": L2NormTemperature.SLOTS,
        "ln_slots": LayerNormModulate.SLOTS,
        "l2_sq": l2_sq, "l2_gain": l2_gain,
        "gelu": units[isa.VecSubop.GELU], "resid": units[isa.VecSubop.RESID],
        "cvt16": units[isa.VecSubop.CVT16], "fdot": units[isa.VecSubop.FDOT],
        "fdot_tree": tree,
    }
    _TOP_BUILDS[(lanes, att, tn, sets, sm)] = lat
    return dict(lat)


@dataclass(frozen=True)
class EngineCost:
    """One instruction on its engine: ``cycles`` its ``busy`` is high when it runs alone,
    ``words`` 16-byte words it reads over the shared R channel in ``bursts`` requests."""

    cycles: int
    words: int
    #: read requests (bursts or single beats) it makes
    bursts: int = 0
    #: single-beat writes it makes
    writes: int = 0


def write_bound(words: float, b: TopBuild, mem: TopMemory) -> float:
    """Cycles ``words`` single-beat writes need at least: each holds one of the write
    arbiter's ``max_writes`` tags from its grant to its B response (``write_latency`` + 2),
    and the memory takes one per ``write_burst_cycles``."""
    return words * max((mem.write_latency + 2) / b.max_writes, mem.write_burst_cycles)


def bursts(words: int, b: TopBuild) -> int:
    """Read bursts of a ``words``-word job (bursts of at most ``max_burst`` words)."""
    return -(-words // b.max_burst)
