"""As-built throughput model: the RTL top that exists, instruction by instruction.

The planned-architecture model (:mod:`fpqvar_hw.flow.perf`) counts the units the design
aims at; this module counts what the RTL top (``fpqvar_hw/engines/top.py``: Controller +
MatrixEngine + VectorEngine, docs/top.md) does with the program the compiler emits:
:func:`top_step_program` (the compiler's program at the shape level),
:func:`gemm_cost` / :func:`vec_cost` (each engine's cycles from its micro-architecture),
:func:`schedule_top` (the controller's dispatch and the shared R channel),
:func:`evaluate_top` (images/s of the top that exists).  Nothing here is fitted to
simulated cycle counts; ``tests/test_perf_vs_sim.py`` states how close it gets
(:mod:`fpqvar_hw.flow.simcycles`).
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ..config import AcceleratorConfig
from ..host.plan import tiles as plan_tiles
from .perf import DIGITS, MODELS, ModelSpec
from .platform import Platform
from .topprog import TILE_ORDERS, V_CACHE_LAYOUTS, TopInstr, top_step_program
from .topbuild import (ENGINE_END, ENGINE_START, MATRIX_DRAIN_STATES, READ_PATH,  # noqa: F401
                       WRITE_PATH, EngineCost, TopBuild, bursts, top_build, top_latencies,
                       write_bound)
from .topmem import (AXIRAM_READ_LATENCY, AXIRAM_WRITE_LATENCY, VCK190_READ_LATENCY,  # noqa: F401
                     TopMemory, platform_memory, sim_memory, simdram_memory)

__all__ = ["TopMemory", "sim_memory", "simdram_memory", "platform_memory", "TopBuild", "top_build", "EngineCost",
           "gemm_cost", "vec_cost", "TopInstr", "top_step_program", "V_CACHE_LAYOUTS", "TILE_ORDERS", "TopRun", "schedule_top",
           "instr_cost", "top_step", "TopModelResult", "evaluate_top", "step_breakdown",
           "operand_words", "bus_speeds", "fair_speeds", "words_ahead", "cost_beside",
           "top_latencies", "write_bound", "att_cost", "sm_cost"]


def gemm_cost(M: int, K: int, N: int, *, had: bool, bias: bool, fine: bool, b: TopBuild,
              mem: TopMemory) -> EngineCost:
    """Cycles of one GEMM instruction on the MatrixEngine (``matrix.py``).

    Row blocks of ``tm * sets`` rows (``sets`` row sets of ``tm``) are the outer loop and
    every row block re-reads all the weights.  Per row block and feature block of ``tn``
    outputs the weights arrive as ``K/lanes`` beats of ``tn * code_words`` words (one word
    per cycle from the weight FIFO) and the array takes every beat once per row set (one
    beat per cycle, or one per ``dot`` latency with the fine pipeline off), its ``K/128 *
    sets`` groups at least ``dot_group`` cycles apart (the cell's accumulator loop); the
    drain needs ``rows * tn`` results (x ``bias``, the bias add's latency, with the fine
    pipeline off) + ``drain_set`` cycles per row set holding rows + its bias words +
    ``MATRIX_DRAIN_STATES``.  The loader (1 bus word = 4 FP32 per cycle,
    or one item per unit latency with the fine pipeline off) fills the first row block
    before the array starts and the next one meanwhile (double bank).  The R channel
    carries weights, scales, bias and activations: ``words / beat_rate`` cycles at least,
    and every read burst holds one of the arbiter's ``max_outstanding`` slots for a read
    round trip (``read_latency + READ_PATH + 1``), which bounds a long-latency memory.
    """
    if min(M, K, N) < 1 or K % 128:
        raise ValueError(f"GEMM M={M}, K={K}, N={N}: M, N >= 1 and K a multiple of 128")
    L = b.lat
    KB, G = K // b.lanes, K // 128
    TM = b.tm * b.sets
    NB, B = -(-N // b.tn), -(-M // TM)
    tw = b.tn * b.code_words
    bw = -(-4 * b.tn // 16) if bias else 0
    fb_words = KB * tw + G * b.scale_words + bw
    act_words = M * K // 4 + (1 if had else 0)
    words = B * NB * fb_words + act_words
    requests = B * NB * (bursts(KB * tw, b) + bursts(G * b.scale_words, b) + bursts(bw, b)) \
        + M * bursts(K // 4, b) + (1 if had else 0)
    if mem.shared:
        t_bus = words / mem.beat_rate
    else:   # one beat per cycle per client: the weight stream is the largest
        t_bus = B * NB * KB * tw / mem.beat_rate
    rd = mem.read_latency + READ_PATH + b.lat["rd_slice"]
    # at most max_outstanding bursts in flight on the read arbiter: each burst holds its
    # slot for a read round trip, so short bursts (scales, bias, narrow feature blocks)
    # make a long-latency memory the bound
    writes = M * -(-N // 4)                                 # a row's results: whole words
    t_bus = max(t_bus, requests * (rd + 1) / b.max_outstanding, write_bound(writes, b, mem))
    # a feature block: KB weight beats, KB * sets array beats, and its G * sets groups no
    # closer than the cell's accumulator loop (GroupDot.group_interval_for)
    block = max(KB * tw, KB * b.sets * (1 if fine else L["dot"]), G * b.sets * L["dot_group"])
    if fine:
        load_row = K / 4
    else:
        load_row = max(K / 4 * L["cvt"], K / b.quant_lanes * L["quant"],
                       K / b.quant_lanes * L["had"] if had else 0)
    first = rd + min(M, TM) * load_row + L["cvt"] + (L["had"] if had else 0) + L["quant"] \
        + L["load_slices"]
    compute = 0.0
    for blk in range(B):
        rows = min(TM, M - blk * TM)
        drain = rows * b.tn * (1 if fine else L["bias"]) + L["drain_set"] * -(-rows // b.tm) \
            + bw + MATRIX_DRAIN_STATES
        nxt = min(TM, M - (blk + 1) * TM) * load_row if blk + 1 < B else 0
        compute += max(NB * max(block, drain), nxt)
    last_rows = M - (B - 1) * TM
    tail = L["arr_slice"] + L["dot"] + last_rows * b.tn + L["drain_set"] * -(-last_rows // b.tm) \
        + L["bias"] + L["drain_slice"] + mem.write_latency + WRITE_PATH + L["wr_slice"]
    cyc = ENGINE_START + max(first + compute, rd + t_bus) + tail + ENGINE_END
    return EngineCost(int(round(cyc)), int(words), int(requests), writes)


def result_words(n: tuple[int, int, int, int], s0: int, s1: int, esize: int) -> float:
    """16-byte writes of a VEC instruction's results (``vecengine.py``: results in loop order,
    consecutive ones in the same word merged).  ``s0 = 0``: one result per ``(i1, i2, i3)``
    (FDOT), runs along ``s1``; else runs of ``n0`` along ``s0``.  A contiguous run takes its
    words, half a word more on average when its length is not a word multiple (runs start
    anywhere); a run of results 16 bytes or more apart one word per result."""
    run, stride, runs = (n[1], s1, n[2] * n[3]) if s0 == 0 else (n[0], s0, n[1] * n[2] * n[3])
    if abs(stride) >= 16:
        return float(runs * run)
    nbytes = run * max(abs(stride), esize)
    return runs * (-(-nbytes // 16) + (0.5 if nbytes % 16 else 0.0))


def operand_words(n: tuple[int, int, int, int], s0: int, s1: int, esize: int, *,
                   max_burst: int, once_per_row: bool = False) -> tuple[int, int]:
    """(words, read requests) of an operand of a VEC instruction (``vecengine.py``: a word is
    read when the element's 16-byte word differs from the operand's last one; ``0 < s0 <=
    16`` rows are fetched as bursts of up to ``max_burst`` words to the row's end, any other
    stride one single-beat request per word)."""
    rows = n[1] * n[2] * n[3]
    if once_per_row:                 # L2NT's B: read at i0 = 0, walks s1 across rows
        w = max(1, -(-n[1] * abs(s1) // 16)) * n[2] * n[3] if s1 else n[2] * n[3]
        return w, w
    if 0 < s0 <= 16:
        per_row = -(-n[0] * s0 // 16)
        req_row = -(-per_row // max_burst)
    else:                            # s0 = 0: one word per row; wider strides: every word
        per_row = 1 if s0 == 0 else n[0]
        req_row = per_row
    if s1 == 0 and per_row == 1:     # every row re-reads the same word: the cache keeps it
        return n[2] * n[3], n[2] * n[3]
    return rows * per_row, rows * req_row


def vec_cost(subop: int, n: tuple[int, int, int, int], operands: Mapping[str, tuple[int, int, int]],
             *, fine: bool, b: TopBuild, mem: TopMemory,
             out: tuple[int, int, int] | None = None) -> EngineCost:
    """Cycles of one VEC instruction on the VectorEngine (``vecengine.py``, ``vector.py``).

    ``operands``: the read operands the sub-op uses, ``name -> (s0, s1, element bytes)``.
    The first read leaves ``vec_issue`` cycles into the instruction (the engine's issue
    pipeline).  One element per cycle enters the sub-op's unit (one per ``gap_<SUBOP>`` cycles with
    the fine pipeline off); the row units add their phases per row: LNMOD keeps rows in
    flight (``LayerNormModulate.stream_cycles``; an older RTL ``3*n0`` + mean, variance
    and rsqrt latencies per row); FDOT ``n0`` + its pause; SOFTMAX and L2NT keep rows
    in flight (their units' ``stream_cycles``).  Reads: bus words at
    ``beat_rate``; every read request (a burst, or a single beat) holds one of the read
    arbiter's ``max_outstanding`` slots for a round trip, and each operand has at most
    ``vec_rd_depth`` words in flight.  ``out`` = ``(s0, s1, element bytes)`` of the results:
    their writes (:func:`result_words`) bound it too (:func:`write_bound`).
    """
    from ..isa import VecSubop as V
    from ..engines.vecengine import VectorEngine
    from ..units.vector import L2NormTemperature, LayerNormModulate, Softmax
    if any(v < 1 for v in n):
        raise ValueError(f"VEC loop counts must be >= 1, got {n}")
    L = b.lat
    s = V(subop)
    if s is V.FDOT and fine and L["att_T"] and _array_shape(operands):
        return att_cost(n, operands, b=b, mem=mem)
    if s is V.SOFTMAX and fine and L["sma_lanes"] and _softmax_shape(n, operands):
        return sm_cost(n, b=b, mem=mem)
    writes = result_words(n, *out) if out is not None else 0.0
    t_wr = write_bound(writes, b, mem)
    n0, rows = n[0], n[1] * n[2] * n[3]
    g = 1 if fine else max(1, L[f"gap_{s.name}"])
    d = L["drain"]
    if s is V.LNMOD and L["ln_slots"]:
        unit = LayerNormModulate.stream_cycles(rows, n0, var=L["ln_var"], mean=L["ln_mean"],
                                               rsqrt=L["ln_rsqrt"] - L["ln_mean"],
                                               out=L["ln_out"], drain=d, slots=L["ln_slots"]) \
            + rows * n0 * (g - 1)       # fine pipeline off: LOAD takes an element per gap
    elif s is V.LNMOD:      # older RTL (ln_slots 0): one row at a time, three passes
        unit = rows * (n0 * g + 2 * n0 + (L["ln_mean"] + d + 1)
                       + (L["ln_var"] + d + L["ln_rsqrt"] + 1)) + L["ln_out"]
    elif s is V.L2NT and L["l2_slots"]:
        unit = L2NormTemperature.stream_cycles(rows, n0, sq=L["l2_sq"], gain=L["l2_gain"],
                                               drain=d, mul=L["mul"], slots=L["l2_slots"])
    elif s is V.L2NT:       # older RTL (l2_slots 0): one head at a time
        unit = rows * (n0 * g + n0 + L["l2_sq"] + d + L["l2_gain"] + 1) + L["mul"]
    elif s is V.SOFTMAX and L["sm_slots"]:
        unit = Softmax.stream_cycles(rows, n0, exp=L["sm_exp"], recip=L["sm_recip"], drain=d,
                                     mul=L["mul"], slots=L["sm_slots"])
    elif s is V.SOFTMAX:    # older RTL (sm_slots 0): one row at a time, a 1-element row waits
        unit = rows * (n0 * g + 2 * n0 + L["sm_exp"] + d + L["sm_recip"] + 2 + (n0 == 1)) + L["mul"]
    elif s is V.FDOT:
        unit = rows * max(n0 * g, n0 + L["fdot"]) + L["fdot_tree"]
    else:
        unit = rows * n0 * g + {V.RESID: L["resid"], V.GELU: L["gelu"], V.CVT16: L["cvt16"]}[s]
    words = requests = widest = 0
    rd = mem.read_latency + READ_PATH + b.lat["rd_slice"]
    stall = 0.0
    elems = rows * n0
    for name, (s0, s1, esize) in operands.items():
        w, r = operand_words(n, s0, s1, esize, max_burst=b.max_burst,
                             once_per_row=(s is V.L2NT and name == "b"))
        words += w
        requests += r
        widest = max(widest, w)
        # an element waits for every operand: requested in the same cycle, the others'
        # bursts come first on the R channel
        behind = (len(operands) - 1) * min(b.max_burst, w / max(1, r)) / mem.beat_rate
        stall = max(stall, behind + VectorEngine.lookahead_stall(r - 1, elems / max(1, r),
                                                                 rd + 1 + behind))
    unit += stall
    t_bus = words / mem.beat_rate
    # every request holds an arbiter slot for a read round trip (short bursts and single
    # beats make a long-latency memory the bound)
    t_req = requests * (rd + 1) / min(b.max_outstanding, b.vec_rd_depth)
    # an operand has at most vec_rd_depth words in flight, each for a read round trip
    t_depth = widest * (rd + 1) / b.vec_rd_depth
    # an FDOT with an FP16 B the array declines: offered first (OFFER + the array's check)
    offered = 1 + L["att_check"] if (s is V.FDOT and fine and L["att_T"]
                                      and operands.get("b", (0, 0, 0))[2] == 2) else 0
    if s is V.SOFTMAX and fine and L["sma_lanes"]:      # a SOFTMAX the softmax array declines
        offered = 1 + L["sma_check"]
    cyc = ENGINE_START + offered + L["vec_issue"] + L["vec_slices"] + rd + 1 \
        + max(unit, t_bus, t_req, t_depth, t_wr) \
        + mem.write_latency + WRITE_PATH + L["wr_slice"] + ENGINE_END + L["vec_busy"]
    return EngineCost(int(round(cyc)), int(words), int(requests), int(round(writes)))


def _array_shape(operands: Mapping[str, tuple[int, int, int]]) -> bool:
    """The FDOT operands the attention array takes (``attention.py``): A FP32 rows
    (``s0 = 4``) that do not depend on i1 (``s1 = 0``), B FP16 rows (``s0 = 2``); the
    compiler's B never depends on i2 and its ranges are inside the window and apart."""
    a, bb = operands.get("a"), operands.get("b")
    return (a is not None and bb is not None and "c" not in operands
            and a[0] == 4 and a[1] == 0 and a[2] == 4 and bb[0] == 2 and bb[2] == 2)


def _softmax_shape(n: tuple[int, int, int, int], operands: Mapping[str, tuple[int, int, int]]) -> bool:
    """The SOFTMAX shapes the softmax array takes (``smarray.py``): FP32 rows (``s0 = 4``)
    that do not overlap (``s1 >= 4 n0``), ``n3 = 1``; the compiler's rows of a step are
    back to back (``s2 = n1 s1``), in place, inside the window."""
    a = operands.get("a")
    return a is not None and a[0] == 4 and a[2] == 4 and n[3] == 1 \
        and (n[1] == 1 or a[1] >= 4 * n[0])


def sm_cost(n: tuple[int, int, int, int], *, b: TopBuild, mem: TopMemory) -> EngineCost:
    """Cycles of a SOFTMAX on the vector engine's softmax array (``smarray.py``).

    ``rows = n1 * n2`` rows of ``n0``, row ``j`` on lane ``j mod sma_lanes``: each lane runs
    its rows through its Softmax unit (``SoftmaxArray.row_cycles``: the unit's own
    recursion, one element per cycle in, rows in flight).  Words: every row once
    (``ceil(16-byte words)``, 0.75 of a word more on average: rows start anywhere), in
    bursts of at most ``max_burst``; the same number of single-beat writes.  Bounds as
    :func:`vec_cost`: bus words, arbiter slots, the reader's ``sma_depth`` words in flight,
    and a lane's FIFO: a burst is requested when ``max_burst`` words are free, so at most
    ``sma_words`` words of a lane are in flight or waiting.  Before the first row: the offer
    and check (``1 + sma_check``), a read round trip and the first word; after the last:
    the output multiply, the merge and the write."""
    from ..engines.smarray import SoftmaxArray
    L = b.lat
    n0, rows, R = n[0], n[1] * n[2] * n[3], L["sma_lanes"]
    per_lane = -(-rows // R)
    row_words = -(-4 * n0 // 16) + (0.75 if (4 * n0) % 16 else 0.0)
    words = rows * row_words
    requests = rows * -(-int(row_words + 0.5) // b.max_burst)
    rd = mem.read_latency + READ_PATH + L["rd_slice"]
    lane = SoftmaxArray.row_cycles(per_lane, n0, b.P)
    t_bus = words / mem.beat_rate
    t_req = requests * (rd + 1) / b.max_outstanding
    t_depth = words * (rd + 1) / L["sma_depth"]
    t_lane = per_lane * row_words * (rd + 1 + 2) / max(1, L["sma_words"] - b.max_burst)
    t_wr = write_bound(words, b, mem)
    cyc = ENGINE_START + 1 + L["sma_check"] + rd + 1 + 2 \
        + max(lane, t_bus, t_req, t_depth, t_lane, t_wr) \
        + mem.write_latency + WRITE_PATH + L["wr_slice"] + ENGINE_END + L["vec_busy"]
    return EngineCost(int(round(cyc)), int(words), int(requests), int(round(words)))


def att_cost(n: tuple[int, int, int, int], operands: Mapping[str, tuple[int, int, int]], *,
             b: TopBuild, mem: TopMemory) -> EngineCost:
    """Cycles of an FDOT on the vector engine's attention array (``attention.py``).

    ``n3 * ceil(n2/T)`` A tiles of ``T`` rows, each with ``ceil(n1/N)`` B tiles of ``N``
    rows; a tile takes ``att_tile + n0`` cycles once its rows are on chip
    (``AttentionArray.tile_cycles``), or the drain's one result per cycle when longer
    (``AttentionArray.drain_cycles``), the next tile's rows load meanwhile.  Words: every A
    row once, every B row once per A tile (``ceil(16-byte words)``, half a word more on
    average when rows are not word multiples: they start anywhere).  Requests: a burst of
    at most ``max_burst`` words per row, B rows back to back (``s1 = 2*n0``, ``n0`` a
    multiple of 8: the K cache) as one job per tile.  Bounds as :func:`vec_cost`: bus words,
    arbiter slots (``max_outstanding`` bursts per round trip), ``att_depth`` words in
    flight per operand.  Before the first tile: the offer and check (``1 + att_check``) and
    the first tile's rows; after the last: ``att_tail`` + its results + the write.  Writes:
    an A row's ``N`` results of a B tile merge into one write (two when the row's results
    are not word aligned, 3 in 4 of its tiles), bounded as :func:`write_bound`.
    """
    L, (n0, n1, n2, n3), s1_b = b.lat, n, operands["b"][1]
    T, N = L["att_T"], L["att_N"]
    a_tiles, b_tiles = n3 * -(-n2 // T), -(-n1 // N)
    tiles = a_tiles * b_tiles

    def row_words(nbytes: int) -> float:
        return -(-nbytes // 16) + (0.5 if nbytes % 16 else 0.0)

    wa, wb = row_words(4 * n0), row_words(2 * n0)
    words_a, words_b = n3 * n2 * wa, a_tiles * n1 * wb
    req_a = n3 * n2 * -(-int(wa + 0.5) // b.max_burst)
    if s1_b == 2 * n0 and n0 % 8 == 0:      # K rows back to back: one job per tile
        req_b = a_tiles * sum(-(-int(min(N, n1 - k * N) * wb) // b.max_burst) for k in range(b_tiles))
    else:
        req_b = a_tiles * n1 * -(-int(wb + 0.5) // b.max_burst)
    rd = mem.read_latency + READ_PATH + b.lat["rd_slice"]
    if mem.shared:
        t_bus = (words_a + words_b) / mem.beat_rate
    else:
        t_bus = max(words_a, words_b) / mem.beat_rate
    t_req = (req_a + req_b) * (rd + 1) / b.max_outstanding
    t_depth = max(words_a, words_b) * (rd + 1) / L["att_depth"]
    chunk = -(-4 * min(N, n1) // 16) + (0.75 if (4 * n1) % 16 else 0.0)
    writes = n3 * n2 * b_tiles * chunk
    t_wr = write_bound(writes, b, mem)
    first = rd + 1 + (min(T, n2) * wa + min(N, n1) * wb) / mem.beat_rate
    # att_slots B slots per lane: tile k + slots - 1's B rows are requested when tile k
    # starts, so slots - 1 tiles take at least a round trip plus one tile's transfer (a
    # job per row, or one for rows back to back, two cycles each to hand to the reader)
    contig = s1_b == 2 * n0 and n0 % 8 == 0
    b_rows = min(N, n1)
    load = rd + 1 + 2 * (1 if contig else b_rows) + b_rows * wb / mem.beat_rate
    from ..engines.attention import AttentionArray
    drain = AttentionArray.drain_cycles(min(T, n2), min(N, n1), L["att_drains"])
    compute = tiles * max(L["att_tile"] + n0, drain, load / (L["att_slots"] - 1))
    last = AttentionArray.drain_results(min(T, n2 - (-(-n2 // T) - 1) * T),
                                        min(N, n1 - (b_tiles - 1) * N), L["att_drains"])
    cyc = ENGINE_START + 1 + L["att_check"] + max(first + compute, rd + t_bus, t_req, t_depth, t_wr) \
        + L["att_tail"] + last + mem.write_latency + WRITE_PATH + L["wr_slice"] + ENGINE_END \
        + L["vec_busy"]
    return EngineCost(int(round(cyc)), int(words_a + words_b), int(req_a + req_b), int(round(writes)))


@dataclass(frozen=True)
class TopRun:
    """Counters of one simulated-by-model step (the top's CYCLES, GEMM_CYCLES, VEC_CYCLES,
    OVERLAP_CYCLES) and the instruction count including the HALT."""

    instructions: int
    cycles: int
    gemm_cycles: int
    vec_cycles: int
    overlap_cycles: int


def fair_speeds(u: Mapping[int, float], cap: float) -> dict:
    """Max-min fair share of a channel of capacity ``cap`` between users of demand ``u``
    (per cycle when alone): each one's speed (1 = as fast as alone)."""
    act = list(u)
    if len(act) < 2 or sum(u.values()) <= cap:
        return {e: 1.0 for e in act}
    lo, hi = sorted(act, key=u.get)
    if u[lo] <= cap / 2:
        return {lo: 1.0, hi: (cap - u[lo]) / u[hi]}
    return {e: cap / 2 / u[e] for e in act}


def bus_speeds(run: dict, mem: TopMemory) -> dict:
    """Each running instruction's speed (1 = as fast as alone) on the shared channels: the R
    channel (its words per cycle against ``beat_rate``) and the write channel (its
    single-beat writes x ``write_burst_cycles`` per cycle against 1), max-min fair; the
    slower of the two."""
    act = [e for e, r in run.items() if r is not None]
    if len(act) < 2 or not mem.shared:
        return {e: 1.0 for e in act}
    rd = fair_speeds({e: run[e][1] for e in act}, mem.beat_rate)
    wr = fair_speeds({e: run[e][2] for e in act}, 1.0)
    return {e: min(rd[e], wr[e]) for e in act}


def schedule_top(instrs: list[TopInstr], costs: list[EngineCost], *, coarse: bool,
                 mem: TopMemory, rd_slice: int = 0, beside=None) -> TopRun:
    """Run ``instrs`` through the controller's dispatch rules (``control.py``): in program
    order, one instruction per engine, the next instruction fetched (one 8-beat burst)
    while the current one waits, dispatch when its engine is idle -- both idle with
    ``sync`` or with the coarse pipeline off --, at most one dispatch per 2 cycles
    (``settle``), an engine busy from the cycle after it takes ``cmd``; the HALT ends the
    run when both are idle.  Two instructions running at once share the R and write
    channels (:func:`bus_speeds`).  ``rd_slice``: the read arbiter's request slice (``rd_slice``
    of :func:`top_latencies`), on the instruction fetch too.  ``beside(k, j)``: the cycles
    of instruction ``k`` while instruction ``j`` runs on the other engine (:func:`top_step`:
    :func:`cost_beside` with :func:`words_ahead`); while both engines run each advances at
    ``cycles / beside`` of its speed on top of its share of the channels (None: as alone)."""
    from ..engines.control import FETCH_CHECK_CYCLES, INSTR_BEATS

    GEMM, VEC = 1, 2
    run: dict = {GEMM: None, VEC: None}          # [remaining cycles alone, words per cycle]
    busy = {GEMM: 0.0, VEC: 0.0}
    state = {"t": 1.0, "overlap": 0.0}           # start -> RUN: 1 cycle
    fetch = FETCH_CHECK_CYCLES + 1 + rd_slice + mem.read_latency + INSTR_BEATS / mem.beat_rate + 1

    def step_to(T: float | None) -> None:
        """Advance to the first completion, or to ``T`` if that comes first."""
        act = [e for e in run if run[e] is not None]
        if not act:
            state["t"] = max(state["t"], T)
            return
        sp = bus_speeds(run, mem)
        if len(act) == 2 and beside is not None:
            for e, k, j in ((VEC, vec_at["k"], gemm_at["k"]), (GEMM, gemm_at["k"], vec_at["k"])):
                alone = costs[k].cycles
                sp[e] *= alone / max(alone, beside(k, j))
        left = {e: run[e][0] / sp[e] for e in act}
        step = min(left.values())
        if T is not None and T - state["t"] < step:
            step = max(0.0, T - state["t"])
        if len(act) == 2:
            state["overlap"] += step
        for e in act:
            busy[e] += step
            if left[e] - step <= 1e-6:      # completes now
                run[e] = None
            else:
                run[e][0] -= step * sp[e]
        state["t"] += step

    def advance(T: float) -> None:
        while state["t"] < T:
            step_to(T)

    def until_idle(engines) -> None:
        while any(run[e] is not None for e in engines):
            step_to(None)

    valid = state["t"] + fetch + 1
    last = -math.inf
    vec_at, gemm_at = {"k": 0}, {"k": 0}      # the instruction each engine runs
    for k, (ins, cost) in enumerate(zip(instrs, costs)):
        advance(max(valid, last + 2))
        until_idle((GEMM, VEC) if (ins.sync or not coarse) else (ins.opcode,))
        d = state["t"]
        advance(d + 1)
        run[ins.opcode] = [float(cost.cycles), cost.words / max(1, cost.cycles),
                           cost.writes * mem.write_burst_cycles / max(1, cost.cycles)]
        (gemm_at if ins.opcode == GEMM else vec_at)["k"] = k
        valid = max(valid + fetch, d + 1) + 1
        last = d
    until_idle((GEMM, VEC))
    end = max(state["t"], valid) + 1
    return TopRun(len(instrs) + 1, int(round(end)), int(round(busy[GEMM])), int(round(busy[VEC])),
                  int(round(state["overlap"])))


def instr_cost(ins: TopInstr, *, fine: bool, b: TopBuild, mem: TopMemory) -> EngineCost:
    """:func:`gemm_cost` or :func:`vec_cost` of one :class:`TopInstr`."""
    if ins.gemm is not None:
        M, K, N, had, bias = ins.gemm
        return gemm_cost(M, K, N, had=had, bias=bias, fine=fine, b=b, mem=mem)
    subop, n, ops = ins.vec
    return vec_cost(subop, n, {o[0]: o[1:] for o in ops}, fine=fine, b=b, mem=mem, out=ins.out)


def words_ahead(vec: bool, mine: EngineCost, other: EngineCost, *, max_outstanding: int,
                mem: TopMemory) -> float:
    """Words of the other engine's reads ahead of each read of ``mine`` (one ID, in order)
    while both run: a GEMM keeps the read arbiter's ``max_outstanding`` slots busy (its FIFOs
    have room), so a VEC request (``vec``) waits for ``max_outstanding - 1`` of its bursts;
    the vector engine holds what it streams in a round trip (its word rate x that wait,
    Little's law), at most ``max_outstanding - 1`` of its bursts."""
    g, v = (other, mine) if vec else (mine, other)
    behind_gemm = (max_outstanding - 1) * g.words / max(1, g.bursts)
    if vec:
        return behind_gemm
    rt = mem.read_latency + behind_gemm / mem.beat_rate
    return min((max_outstanding - 1) * v.words / max(1, v.bursts), v.words / max(1, v.cycles) * rt)


def cost_beside(ins: TopInstr, ahead: float, *, fine: bool, b: TopBuild, mem: TopMemory) -> int:
    """Cycles of ``ins`` while the other engine reads too: one ID and in-order responses, so
    each of its reads comes after the ``ahead`` words of the other engine's already
    requested (:func:`schedule_top` says how many): :func:`instr_cost` at that longer read
    latency."""
    queued = dataclasses.replace(mem, read_latency=mem.read_latency + ahead / mem.beat_rate)
    return instr_cost(ins, fine=fine, b=b, mem=queued).cycles


#: Steps whose program is longer than this are timed on one block and scaled by the depth
#: (blocks are separated by a dependency on x, so they barely overlap), and a block with more
#: than ``_MAX_SCHEDULED / 16`` tiles on its first tiles, scaled by the tile count (every
#: tile of a step has the same shape; the pipeline is in steady state after a few).
_MAX_SCHEDULED = 2_048


def _sample(L: int, rows: int, tile: int, tiles: str) -> tuple[int, int]:
    """(tiles of the step, tiles to schedule): at most ``_MAX_SCHEDULED / 16`` tiles, a
    sample of full-size tiles only (spanning tiles: all but the last are)."""
    n = len(plan_tiles(L, rows, tile, order=tiles))
    sampled = min(n, max(1, _MAX_SCHEDULED // 16))
    if tiles == "rows" and sampled < n and L % tile and L >= tile:
        sampled = min(sampled, L // tile)
    return n, sampled


def top_step(C: int, H: int, hidden: int, depth: int, L_start: int, L: int, rows: int,
             config: AcceleratorConfig, mem: TopMemory, *, L_total: int, tile: int | None = None,
             lat: Mapping[str, int] | None = None, v_cache: str = V_CACHE_LAYOUTS[0],
             tiles: str = TILE_ORDERS[0]) -> TopRun:
    """Model of one scale step on the as-built top: every instruction's engine cycles
    (:func:`instr_cost`) scheduled by :func:`schedule_top` with the config's pipeline
    switches; ``tile`` tokens per tile (default ``config.gemm_rows``, the compiler's default);
    ``L_total``, ``v_cache``, ``tiles``: the KV caches and the tiles (:func:`top_step_program`);
    ``lat``: unit latencies of another RTL version (:func:`top_build`)."""
    b = top_build(config, C, lat=lat)
    tile = tile or config.gemm_rows
    n_tiles, sampled = _sample(L, rows, tile, tiles)
    blocks = depth if depth * 16 * n_tiles <= _MAX_SCHEDULED else 1
    prog = top_step_program(C, H, hidden, blocks, L_start, L, rows, tile, L_total=L_total,
                            coarse=config.coarse_pipeline, v_cache=v_cache, tiles=tiles,
                            max_tiles=sampled if sampled < n_tiles else None)
    cache: dict = {}
    costs = []
    for ins in prog:
        key = (ins.gemm, ins.vec, ins.out)
        if key not in cache:
            cache[key] = instr_cost(ins, fine=config.fine_pipeline, b=b, mem=mem)
        costs.append(cache[key])
    near: dict = {}

    def beside(k: int, j: int) -> int:
        ins = prog[k]
        ahead = words_ahead(ins.vec is not None, costs[k], costs[j],
                            max_outstanding=b.max_outstanding, mem=mem)
        key = (ins.gemm, ins.vec, ins.out, round(ahead))
        if key not in near:
            near[key] = cost_beside(ins, ahead, fine=config.fine_pipeline, b=b, mem=mem)
        return near[key]

    r = schedule_top(prog, costs, coarse=config.coarse_pipeline, mem=mem,
                     rd_slice=b.lat["rd_slice"], beside=beside)
    if blocks == depth and sampled == n_tiles:
        return r
    k = depth / blocks * n_tiles / sampled
    return TopRun(int(round(len(prog) * k)) + 1, int(r.cycles * k), int(r.gemm_cycles * k),
                  int(r.vec_cycles * k), int(r.overlap_cycles * k))


@dataclass(frozen=True)
class TopModelResult:
    """The as-built top running every scale step of ``model`` (one batch)."""

    model: str
    batch: int
    clock_mhz: float
    memory: TopMemory
    steps: tuple[TopRun, ...]

    @property
    def cycles(self) -> int:
        return sum(s.cycles for s in self.steps)

    @property
    def images_per_s(self) -> float:
        """Transformer-only throughput (accelerator time only), as :class:`ModelResult`."""
        return self.batch / (self.cycles / (self.clock_mhz * 1e6))

    def as_dict(self) -> dict:
        return {"model": self.model, "batch": self.batch, "clock_mhz": self.clock_mhz,
                "memory": self.memory.name, "read_latency": self.memory.read_latency,
                "beat_rate": self.memory.beat_rate, "cycles": self.cycles,
                "images_per_s": self.images_per_s,
                "steps": [dataclasses.asdict(s) for s in self.steps]}


def evaluate_top(model: ModelSpec | str, config: AcceleratorConfig, platform: Platform,
                 memory: TopMemory | None = None) -> TopModelResult:
    """The as-built top (``fpqvar_hw/engines/top.py``, built for ``model``'s width) on ``platform``:
    :func:`top_step` for every scale step, rows = batch x 2 (CFG), tiles of ``config.gemm_rows``
    tokens, ``memory`` default :func:`platform_memory` at the config's DRAM efficiency.
    Only the w4a4 formats exist in the RTL; other presets are timed as if they did."""
    if isinstance(model, str):
        try:
            model = MODELS[model] if model != DIGITS.name else DIGITS
        except KeyError:
            raise ValueError(f"unknown model {model!r}; models: {', '.join(MODELS)}") from None
    clock = config.clock_mhz or platform.clock_mhz
    mem = memory or platform_memory(platform, clock, config.dram_efficiency)
    rows = config.batch * (2 if config.cfg else 1)
    steps = tuple(top_step(model.C, model.heads, 4 * model.C, model.depth, Ls, n, rows, config, mem,
                           L_total=model.kv_lengths[-1])
                  for Ls, n in zip((k - n for k, n in zip(model.kv_lengths, model.tokens)),
                                   model.tokens))
    return TopModelResult(model.name, config.batch, clock, mem, steps)


def step_breakdown(model: ModelSpec | str, config: AcceleratorConfig,
                   memory: TopMemory) -> list[dict[str, float]]:
    """Engine cycles per instruction kind (``TopInstr.name``) in each scale step of
    ``model``, largest first (standalone cycles, before the engines overlap): what limits
    each step of the as-built top."""
    if isinstance(model, str):
        model = MODELS[model]
    b = top_build(config, model.C)
    rows = config.batch * (2 if config.cfg else 1)
    out = []
    for Ls_end, n in zip(model.kv_lengths, model.tokens):
        n_tiles, k = _sample(n, rows, config.gemm_rows, TILE_ORDERS[0])
        prog = top_step_program(model.C, model.heads, 4 * model.C, 1, Ls_end - n, n, rows,
                                config.gemm_rows, L_total=model.kv_lengths[-1],
                                coarse=config.coarse_pipeline,
                                max_tiles=k if k < n_tiles else None)
        cache: dict = {}
        tot: dict[str, float] = {}
        for ins in prog:
            key = (ins.gemm, ins.vec, ins.out)
            if key not in cache:
                cache[key] = instr_cost(ins, fine=config.fine_pipeline, b=b, mem=memory).cycles
            tot[ins.name] = tot.get(ins.name, 0.0) + cache[key] * n_tiles / k * model.depth
        out.append(dict(sorted(tot.items(), key=lambda kv: -kv[1])))
    return out
