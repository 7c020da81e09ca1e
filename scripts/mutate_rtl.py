"""Mutation check: does the co-simulation suite catch small RTL bugs?

    python scripts/mutate_rtl.py                 # every mutant
    python scripts/mutate_rtl.py --only lut-flip # one (see --list)

Each mutant is a one-line change to an RTL generator (a flipped LUT entry, an
off-by-one shift, a swapped sign, a dropped carry between beats; in the
pipelined dot cell v2 dropped pipeline registers (scale path, adder-tree sign
flag, loop read), swapped partial sums (DFQ halves, adder-tree operands), a
lost carry-in, a control word one stage short, an off-by-one interleave counter
and loop length; in the v1 cell's FP32 tail a group taken one cycle too early for
the accumulator loop, a held-back beat counted, the plain-mode bypass of the DFQ add
unaligned; in the pipelined FP operators a product ahead of its exponent, a
wrong sticky source, a lost +1 of a subtraction, swapped rounding sticky tests; in
the row units' accumulating adder a write-back to the wrong partial or one cycle early,
and partials not cleared between rows; in the attention array a B offset in bytes, the
snapshot a cycle early, one B slot for all tiles, edge-tile lanes written, a cut-short
job resuming after an abort; in the softmax array a row's offset dropped, a merged word
closed early, overlapping rows taken, lanes kept after an abort).  For each,
the script copies the sources into a scratch folder, applies the change there
(the working tree is never touched, so concurrent test runs are unaffected),
runs the relevant ``pytest sim/...`` cocotb test on the mutated Verilog, and
records whether the suite failed ("killed") or passed ("SURVIVED").  It prints
a table and exits 1 if any mutant survived (or if the unmutated baseline
fails, with ``--baseline``).  Every mutant needs one Verilator build (about a
minute; the v2 mutants run the Amaranth-simulator test, a few seconds).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPY = ("fpqvar_hw", "fpqvar_quant", "sim", "tests", "conftest.py", "pyproject.toml")
MUL_TEST = "sim/test_multiplier.py::test_multiplier_exhaustive[E2M1_E2M1-LUT]"
MUL_DEC_TEST = "sim/test_multiplier.py::test_multiplier_exhaustive[E2M1_E2M1-DECOMPOSED]"
DOT_TEST = "sim/test_dot.py::test_dot_cosim[E2M1_E2M1-False-LUT-16-40-4-101]"
HAD_TEST = "tests/test_hw_hadamard.py::test_random_groups_match_golden[32-1]"
#: dot cell v2 (GroupDotV2): the Amaranth-simulator test of a DFQ cell with 3 interleaved
#: slots of different lengths under backpressure (a few seconds, no Verilator build)
DOT2_TEST = "tests/test_hw_dot.py::test_dot_v2_interleaved[E2M1_E2M1-True-8-LUT-1-1-41]"
#: the same with e2m1 activations at the smallest interleave (interleave = the loop length)
DOT2_E2M1_TEST = "tests/test_hw_dot.py::test_dot_v2_interleaved[E2M1_E2M1-False-8-LUT-0-1-40]"
#: the v1 cell (GroupDot) fed back to back: groups spaced by the accumulator loop
DOT_SPACING_TEST = "tests/test_hw_dot.py::test_group_spacing_at_full_rate[2-False]"
#: the v1 cell with a shared FP32 tail (share = 4 columns, DFQ, idle input and backpressure)
DOT_SHARED_TEST = ("tests/test_hw_dot.py::"
                   "test_shared_tail_columns_match_the_golden_model[4-4-True-True-0.3-0.3-71]")
#: the matrix engine's dual-mode cell in plain mode, against the golden model
DUAL_TEST = "tests/test_hw_matrix.py::test_dual_cell_matches_golden[True-8-31]"
#: the pipelined FP operators (fpu.AddPipe / MulPipe / RoundPackPipe inside FPUnit): the
#: Amaranth-simulator tests of biased random operands under input gaps and backpressure
FPU_ADD_TEST = "tests/test_hw_fpu.py::test_random_biased[add-fp32-11-400]"
FPU_MUL_TEST = "tests/test_hw_fpu.py::test_random_biased[mul-fp16-11-400]"
#: the row units' accumulating adder (vector.PartialSums on AddPipe): FDot rows of 1-70
#: elements back to back under input gaps and backpressure (Amaranth simulator)
ROW_TEST = "tests/test_hw_vecengine.py::test_fdot_rows[11]"
#: Softmax(length=2) in the Amaranth simulator: 12 rows back to back without input gaps
#: (a row's partial-sum set is still draining when the row two later arrives; no Verilator
#: build: the Softmax(length=680) Verilator test took a minute to build per mutant)
SOFTMAX_TEST = "sim/test_vector.py::test_softmax_amaranth[2-12-42-0.0]"
#: heads of 8 back to back (a partial-sum set is reused before the head two earlier is done)
L2_SHORT_TEST = "sim/test_vector.py::test_l2norm_short_heads_amaranth[83-False]"
#: the vector engine's attention array (AttentionArray, 2 x 4 lanes) in the Amaranth
#: simulator: p.V rows at odd offsets with edge tiles; abort at several points then a
#: correct instruction
ATT_TEST = "tests/test_hw_attention.py::test_array_matches_the_reference[2-4]"
ATT_ABORT_TEST = "tests/test_hw_attention.py::test_abort_at_any_point_then_a_correct_instruction"
#: the vector engine with its softmax array (3 lanes) on Verilator: the softmax_array
#: testcase (rows at any offset, in place and apart, declined shapes, AXI errors, aborts)
#: among the engine's others (one build, about three minutes)
SM_TEST = "sim/test_vecengine.py::test_vecengine_cosim[2]"
#: the matrix engine with row sets (tm=1, 4 sets) in the Amaranth simulator: a GEMM over two
#: row blocks (4 rows, then 2) and a DFQ GEMM, bit-exact
MATRIX_SETS_TEST = "tests/test_hw_matrix.py::test_engine_small_gemms_amaranth"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str       # relative to the repository root
    old: str        # must occur exactly once
    new: str
    test: str       # pytest node id that must fail
    story: str


MUTANTS = [
    Mutant("lut-flip", "fpqvar_hw/units/multiplier.py",
           "self._table(m, Cat(mag_a, mag_b), self.magnitude_table, mag)",
           "self._table(m, Cat(mag_a, mag_b), [v ^ (k == 45) for k, v in "
           "enumerate(self.magnitude_table)], mag)",
           MUL_TEST, "bit 0 of table entry 45 flipped (3 x 3 -> 37/4 instead of 36/4)"),
    Mutant("shift-off-by-one", "fpqvar_hw/units/multiplier.py",
           "return Mux(e == 0, 0, (e - 1)[:len(e)])",
           "return Mux(e == 0, 0, e)",
           MUL_DEC_TEST, "DECOMPOSED: significand shifted by E instead of E-1"),
    Mutant("sign-swap", "fpqvar_hw/units/multiplier.py",
           "m.d.comb += self.p.eq(Mux(sign, -mag, mag))",
           "m.d.comb += self.p.eq(Mux(sign, mag, -mag))",
           MUL_TEST, "product negated when the signs agree"),
    Mutant("scale-exp-off-by-one", "fpqvar_hw/units/dot.py",
           "head.exp.eq(ua.exp + uw.exp + (lsb_exp - 2 * FP16.man_bits + sig_bits - 1)),",
           "head.exp.eq(ua.exp + uw.exp + (lsb_exp - 2 * FP16.man_bits + sig_bits)),",
           DOT_TEST, "group result scaled by 2 (product LSB exponent off by one)"),
    Mutant("sign-carry-dropped", "fpqvar_hw/units/dot.py",
           "+ Cat(f, rs.as_unsigned() ^ f.replicate(width)).as_signed())",
           "+ Cat(Const(0, 1), rs.as_unsigned() ^ f.replicate(width)).as_signed())",
           DOT_TEST, "the group sum adds the ones' complement of a negative tree root "
                     "(its +1 carry-in is lost)"),
    Mutant("beat-carry-dropped", "fpqvar_hw/units/dot.py",
           "m.d.sync += [S.eq(total), part.eq(total)]",
           "m.d.sync += [S.eq(total), part.eq(tree_out)]",
           DOT_TEST, "partial group sum keeps only the latest beat"),
    Mutant("v2-register-dropped", "fpqvar_hw/units/dot.py",
           'head = reg(head, f"{tag}_head2")',
           "head = head",
           DOT2_TEST, "v2: one pipeline register of the scale path's exponent/flags dropped "
                      "(the record meets the product of the next group)"),
    Mutant("v2-partial-sums-swapped", "fpqvar_hw/units/dot.py",
           "for (r, f, _), (pair, _) in zip(roots, self._halves)]",
           "for (r, f, _), (pair, _) in zip(roots[::-1], self._halves)]",
           DOT2_TEST, "v2: the DFQ positive and negative group sums swapped before scaling"),
    Mutant("v2-tree-operands-swapped", "fpqvar_hw/units/dot.py",
           "(x, fx, mx), (y, fy, my) = level[j], level[j + 1]",
           "(y, fx, mx), (x, fy, my) = level[j], level[j + 1]",
           DOT2_E2M1_TEST, "v2 adder tree: the two partial sums of a node swapped but not "
                           "their sign flags (wrong sign wherever the flags differ)"),
    Mutant("v2-tree-carry-dropped", "fpqvar_hw/units/dot.py",
           "+ Cat(f, rs.as_unsigned() ^ f.replicate(width)).as_signed())",
           "+ Cat(Const(0, 1), rs.as_unsigned() ^ f.replicate(width)).as_signed())",
           DOT2_E2M1_TEST, "flagged add (the v2 adder tree's nodes, the v1 totals): the +1 of "
           "the conditional negation is lost"),
    Mutant("v2-tree-flag-register-dropped", "fpqvar_hw/units/dot.py",
           'f if isinstance(f, Const) else reg(f, f"r_{tag}{depth}_{k}_f"), mx)',
           "f, mx)",
           DOT2_E2M1_TEST, "v2 adder tree: a node's sign flag skips its pipeline register "
                           "(meets the next group's partial sum)"),
    Mutant("v2-round-delay-off-by-one", "fpqvar_hw/units/dot.py",
           'ctrl = delay(ctrl, 3 + round_latency, "ctrl_f")',
           'ctrl = delay(ctrl, 2 + round_latency, "ctrl_f")',
           DOT2_E2M1_TEST, "v2: the control word one register short of the scale and "
                           "RoundPackPipe path (slot and last meet the wrong group)"),
    Mutant("v2-loop-too-short", "fpqvar_hw/units/dot.py",
           "return fpu.AddPipe.latency_for(fmt=FP32) + 2",
           "return fpu.AddPipe.latency_for(fmt=FP32) + 1",
           "tests/test_hw_dot.py::test_dot_v2_full_rate[False]",
           "v2: the loop length (smallest interleave) one cycle short: a slot is read "
           "before its previous sum is written back"),
    Mutant("v2-loop-read-register-dropped", "fpqvar_hw/units/dot.py",
           'acc_rd = reg(acc_sel, "acc_rd", 32)',
           "acc_rd = acc_sel",
           DOT2_E2M1_TEST, "v2 accumulator loop: the slot read skips its register "
                           "(the partial sum meets the previous group)"),
    Mutant("v2-interleave-off-by-one", "fpqvar_hw/units/dot.py",
           "m.d.sync += slot_in.eq(Mux(slot_in == D - 1, 0, slot_in + 1))",
           "m.d.sync += slot_in.eq(Mux(slot_in == D, 0, slot_in + 1))",
           DOT2_TEST, "v2: the interleave counter wraps after D + 1 beats (3 slots -> 4)"),
    Mutant("v2-slot-restart-dropped", "fpqvar_hw/units/dot.py",
           ".eq(Mux(ctrl.last, 0, acc_next))",
           ".eq(acc_next)",
           DOT2_TEST, "v2: a slot's accumulator is not reset to +0.0 after its last group"),
    Mutant("dot-spacing-off-by-one", "fpqvar_hw/units/dot.py",
           "spaced.eq(since == gap - 2)",
           "spaced.eq(since == gap - 3)",
           DOT_SPACING_TEST, "v1 cell: a group's final beat taken one cycle before the "
           "accumulator loop has written the previous group's sum back"),
    Mutant("dot-shared-one-accumulator", "fpqvar_hw/units/dot.py",
           "ser_in.slot.eq((hold_ctrl.slot * Q + ser_k) if D > 1 else ser_k)",
           "ser_in.slot.eq((hold_ctrl.slot * Q + ser_k) if D > 1 else 0)",
           DOT_SHARED_TEST, "shared-tail cell: every column accumulates into one partial sum"),
    Mutant("dot-shared-scale-column", "fpqvar_hw/units/dot.py",
           "ser_in.scales[1].eq(Array(hold_ctrl.scales[1 + q] for q in range(Q))[ser_k])",
           "ser_in.scales[1].eq(hold_ctrl.scales[1])",
           DOT_SHARED_TEST, "shared-tail cell: every column scaled by column 0's weight scale"),
    Mutant("sm-snapshot-early", "fpqvar_hw/units/vector.py",
           "Cat(valid & last, par, slot), PartialSums.DRAIN)",
           "Cat(valid & last, par, slot), PartialSums.DRAIN - 1)",
           SOFTMAX_TEST, "rows in flight (RowSums): the partial sums are snapshotted a cycle "
           "before the row's last issue is in them (softmax test)"),
    Mutant("sm-partial-set-reused", "fpqvar_hw/units/vector.py",
           "loaded.bit_select(es, 1) & ~sums.busy.bit_select(par, 1)",
           "loaded.bit_select(es, 1)",
           SOFTMAX_TEST, "softmax: a row starts on a partial-sum set whose previous row is "
           "not yet snapshotted"),
    Mutant("l2-snapshot-early", "fpqvar_hw/units/vector.py",
           "Cat(valid & last, par, slot), PartialSums.DRAIN)",
           "Cat(valid & last, par, slot), PartialSums.DRAIN - 1)",
           L2_SHORT_TEST, "rows in flight (RowSums): the partial sums are snapshotted a cycle "
           "before the row's last issue is in them (L2 norm test)"),
    Mutant("l2-partial-set-reused", "fpqvar_hw/units/vector.py",
           "busy_n = first_n & sums.busy_next.bit_select(par_n, 1)",
           "busy_n = Const(0)",
           L2_SHORT_TEST, "L2 norm: a head starts on a partial-sum set whose previous head "
           "is not yet snapshotted"),
    Mutant("dot-untaken-beat-counted", "fpqvar_hw/units/dot.py",
           "ctrl_in.valid.eq(self.i.valid & self.i.ready)",
           "ctrl_in.valid.eq(self.i.valid)",
           DOT_SPACING_TEST, "v1 cell: a beat held back by the group spacing enters the "
           "pipeline as valid anyway (counted once per waiting cycle)"),
    Mutant("dot-slot-wrap-off-by-one", "fpqvar_hw/units/dot.py",
           "slot_in.eq(Mux(slot_in + 1 == D, 0, slot_in + 1))",
           "slot_in.eq(Mux(slot_in == D, 0, slot_in + 1))",
           "tests/test_hw_dot.py::test_interleaved_slots[4-3-True-0.0-61]",
           "v1 cell with 3 slots: the slot counter wraps after 4 groups (a group is added "
           "to another row's sum)"),
    Mutant("dot-plain-delay-dropped", "fpqvar_hw/units/dot.py",
           'g = Mux(ctrl.plain, delay(g_parts[0], add_latency, "g_plain"), g)',
           "g = Mux(ctrl.plain, g_parts[0], g)",
           DUAL_TEST, "dual cell, plain mode: the positive half bypasses the delay that matches "
           "the DFQ add (a group result meets a later group's control word)"),
    Mutant("fpu-mul-products-early", "fpqvar_hw/units/fpu.py",
           "s = st(**parts, **flags)",
           "s = st(**flags); s.__dict__.update(parts)",
           FPU_MUL_TEST, "the significand products skip the DSP M register while exponent, "
           "sign and flags are registered (a product meets the previous input's exponent)"),
    Mutant("fpu-add-sticky-from-larger", "fpqvar_hw/units/fpu.py",
           "sig2 & below, f\"{p}add_out\")",
           "Cat(Const(0, 2), s.big_sig) & below, f\"{p}add_out\")",
           FPU_ADD_TEST, "the sticky bit of the alignment shift is taken from the larger "
           "operand's significand"),
    Mutant("fpu-add-carry-in-dropped", "fpqvar_hw/units/fpu.py",
           "s.big + (s.aligned ^ sub_mask) + s.sub",
           "s.big + (s.aligned ^ sub_mask)",
           FPU_ADD_TEST, "an effective subtraction adds the one's complement (no +1)"),
    Mutant("fpu-round-sticky-branches-swapped", "fpqvar_hw/units/fpu.py",
           "low = Mux(s.right, ",
           "low = Mux(~s.right, ",
           FPU_MUL_TEST, "RoundPack's sticky test of a right shift used for a left shift "
           "and the other way round"),
    Mutant("row-partial-dst-off-by-one", "fpqvar_hw/units/vector.py",
           "m.d.sync += Array(self.acc)[dst[-1]].eq(add.o.as_value())",
           "m.d.sync += Array(self.acc)[dst[-2]].eq(add.o.as_value())",
           ROW_TEST, "row partial sums: a sum is written back to the partial of the next "
           "issue (destination delay line one register short)"),
    Mutant("row-writeback-early", "fpqvar_hw/units/vector.py",
           "wb = valid[-1]",
           "wb = valid[-2]",
           ROW_TEST, "row partial sums: the write-back fires one cycle before the adder's "
           "result arrives (valid delay line off by one)"),
    Mutant("row-clear-dropped", "fpqvar_hw/units/vector.py",
           "            m.d.sync += [a.eq(0) for a in self.acc]",
           "            pass",
           ROW_TEST, "row partial sums: not reset to +0.0 between rows"),
    Mutant("row-bypass-dropped", "fpqvar_hw/units/vector.py",
           "opa.eq(Mux(wb & (dst[-1] == part1), add.o.as_value(), Array(self.acc)[part1]))",
           "opa.eq(Array(self.acc)[part1])",
           ROW_TEST, "row partial sums: an issue to the partial being written back that cycle "
           "reads its old sum (no bypass)"),
    Mutant("att-b-offset-in-bytes", "fpqvar_hw/engines/attention.py",
           "set_off(b_off, N, b_tiles[:sb_bits], ld_row, b_row[1:_WORD_SHIFT])",
           "set_off(b_off, N, b_tiles[:sb_bits], ld_row, b_row[:_WORD_SHIFT - 1])",
           ATT_TEST, "attention array: a B row's first-element offset taken in bytes, not "
           "FP16 elements"),
    Mutant("att-snapshot-early", "fpqvar_hw/engines/attention.py",
           "with m.If(wait == MacLane.DRAIN_CYCLES + self.FEED_STAGES - 2):",
           "with m.If(wait == MacLane.DRAIN_CYCLES + self.FEED_STAGES - 3):",
           ATT_TEST, "attention array: the partials are copied one cycle before the last "
           "element's sum is written back"),
    Mutant("att-one-b-slot", "fpqvar_hw/engines/attention.py",
           "c_slot_a, c_slot_b = c_a[:sa_bits], c_tile[:sb_bits]",
           "c_slot_a, c_slot_b = c_a[:sa_bits], Const(0, sb_bits)",
           ATT_TEST, "attention array: compute reads B slot 0 for every tile (the slot being "
           "loaded for the next tile)"),
    Mutant("att-edge-lanes-written", "fpqvar_hw/engines/attention.py",
           "with m.If(dr_n == d_nv):",
           "with m.If(dr_n == N - 1):",
           ATT_TEST, "attention array: an edge tile writes the sums of lanes without a B row"),
    Mutant("att-snap-ignores-drain", "fpqvar_hw/engines/attention.py",
           "with m.If(~snap_full):",
           "with m.If(1):",
           "tests/test_hw_attention.py::test_array_waits_for_the_drains_on_short_rows",
           "attention array: SNAP does not wait for the drain of the previous tile (its "
           "snapshots are overwritten while being emitted, on tiles of more lanes than cycles)"),
    Mutant("att-stop-only-in-flush", "fpqvar_hw/engines/attention.py",
           "m.d.comb += stop.eq(~running)",
           "m.d.comb += stop.eq(flush)",
           ATT_ABORT_TEST, "attention array: a job an abort cut short resumes its bursts after "
           "the flush, and their words land in the next instruction"),
    Mutant("sm-row-offset-dropped", "fpqvar_hw/engines/smarray.py",
           "slot.eq(ROW_LAYOUT(rf.r_data).off)",
           "slot.eq(0)",
           SM_TEST, "softmax array: a lane reads a row from its first word's first element, "
           "not from the row's (rows at any 4-byte offset)"),
    Mutant("sm-word-closed-early", "fpqvar_hw/engines/smarray.py",
           "closes.eq((lane32 == _PER_WORD - 2) | (o_left == 1))",
           "closes.eq((lane32 == _PER_WORD - 3) | (o_left == 1))",
           SM_TEST, "softmax array: a lane writes its merged word one result early (the "
           "word's last result then goes out alone over the merged ones' bytes)"),
    Mutant("sm-overlapping-rows-taken", "fpqvar_hw/engines/smarray.py",
           "sep[x].eq(((n[1] == 1) | (field(x, 2) >= row_bytes))",
           "sep[x].eq(((n[1] == 1) | (field(x, 2) >= row_bytes >> 1))",
           SM_TEST, "softmax array: takes rows that overlap (each row then reads the original "
           "of the bytes the row before it writes, the element path's results differ)"),
    Mutant("sm-lanes-kept-after-abort", "fpqvar_hw/engines/smarray.py",
           "ResetInserter(start | flush)(SoftmaxLane",
           "ResetInserter(start)(SoftmaxLane",
           SM_TEST, "softmax array: an abort leaves the lanes' rows and words in place "
           "(they are only cleared when the next instruction starts)"),
    Mutant("had-reg-dropped", "fpqvar_hw/units/hadamard.py",
           "q2_neg.eq(q1_neg)",
           "q2_neg.eq(q0_neg)",
           HAD_TEST, "output pipeline: the sign delay line skips a register (sign of the next row)"),
    Mutant("had-valid-early", "fpqvar_hw/units/hadamard.py",
           "q2_v.eq(q1_v)",
           "q2_v.eq(q0_v)",
           HAD_TEST, "output pipeline: valid delay line one stage short of the data (off by one)"),
    Mutant("had-sticky-dropped", "fpqvar_hw/units/hadamard.py",
           "q2_sticky.eq(lost | (shifted[:OUT_SHIFT - 1] != 0))",
           "q2_sticky.eq(shifted[:OUT_SHIFT - 1] != 0)",
           HAD_TEST, "round stage: the bits lost in the normalising shift miss the sticky bit"),
    Mutant("had-no-stall", "fpqvar_hw/units/hadamard.py",
           "en_in.eq(~s1_valid | s1_take)",
           "en_in.eq(1)",
           HAD_TEST, "input pipeline ignores the accumulator's stall (beats overwritten)"),
    Mutant("mat-set-address-dropped", "fpqvar_hw/engines/matrix.py",
           "act_wr[i].addr.eq(buf_addr(wkb, wset, wbank))",
           "act_wr[i].addr.eq(buf_addr(wkb, wset & 0, wbank))",
           MATRIX_SETS_TEST, "row sets: the loader writes every set's codes into set 0"),
    Mutant("mat-group-scales-one-half", "fpqvar_hw/engines/matrix.py",
           "b_ws.eq(Mux(c_half, g_scales[1], g_scales[0]))",
           "b_ws.eq(g_scales[0])",
           MATRIX_SETS_TEST, "weight replay buffer: every group takes the scales of the first "
           "half"),
    Mutant("mat-drain-set-repeated", "fpqvar_hw/engines/matrix.py",
           "m.d.sync += [d_r.eq(0), d_s.eq(d_s + 1), r_last.eq(tm == 1),",
           "m.d.sync += [d_r.eq(0), d_s.eq(d_s), r_last.eq(tm == 1),",
           MATRIX_SETS_TEST, "row sets: the drain writes the first set's results for every set"),
]


def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", ".pytest_cache")
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    runtime = REPO / "build" / "sim" / "_verilator_runtime"
    if runtime.exists():   # reuse the compiled Verilator runtime (design independent)
        (dst / "build" / "sim").mkdir(parents=True)
        shutil.copytree(runtime, dst / "build" / "sim" / "_verilator_runtime")


def run_case(mutant: "Mutant | None", test: str, *, verbose: bool) -> tuple[bool, float, str]:
    """Run ``test`` on a scratch copy, mutated by ``mutant``; return (passed, seconds, tail)."""
    with tempfile.TemporaryDirectory(prefix="fpqvar-mutant-") as tmp:
        root = Path(tmp)
        _copy_tree(root)
        if mutant is not None:
            path = root / mutant.file
            text = path.read_text()
            n = text.count(mutant.old)
            if n != 1:
                raise SystemExit(f"mutant {mutant.name}: expected exactly one occurrence of its "
                                 f"target in {mutant.file}, found {n}; update MUTANTS")
            path.write_text(text.replace(mutant.old, mutant.new))
        env = dict(os.environ, PYTHONPATH=str(root))
        env.pop("PYTEST_CURRENT_TEST", None)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                               "--run-slow", test], cwd=root, env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        if verbose:
            print(out)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"pytest could not run {test} (exit {proc.returncode}):\n{out[-3000:]}")
        return proc.returncode == 0, time.time() - t0, out.strip().splitlines()[-1] if out else ""


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this mutant (repeatable; see --list)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--baseline", action="store_true",
                    help="first check that the unmutated sources pass each test used")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest output")
    args = ap.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = set(args.only) - names
    if unknown:
        ap.error(f"unknown mutant(s) {sorted(unknown)}; choose from {sorted(names)}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:22s} {m.file:26s} {m.story}")
        return 0
    if args.baseline:
        for test in sorted({m.test for m in chosen}):
            ok, secs, tail = run_case(None, test, verbose=args.verbose)
            print(f"baseline {test}: {'pass' if ok else 'FAIL'} ({secs:.0f} s) {tail}", flush=True)
            if not ok:
                print("the unmutated sources fail; mutation results would mean nothing", file=sys.stderr)
                return 1
    rows = []
    for m in chosen:
        print(f"running mutant {m.name} ...", file=sys.stderr, flush=True)
        passed, secs, tail = run_case(m, m.test, verbose=args.verbose)
        rows.append((m, "SURVIVED" if passed else "killed", secs))
    print(f"{'mutant':22s} {'result':9s} {'time':>6s}  test / what changed")
    for m, res, secs in rows:
        print(f"{m.name:22s} {res:9s} {secs:5.0f}s  {m.test}\n{'':40s}{m.story}")
    survived = [m.name for m, res, _ in rows if res == "SURVIVED"]
    print(f"{len(rows) - len(survived)} of {len(rows)} mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
