"""The co-simulation suite catches a mutated multiplier (scripts/mutate_rtl.py).

One mutant (a flipped LUT entry) keeps this to a single Verilator build; run
the script itself for the full table (``python scripts/mutate_rtl.py``).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from sim.runner import REPO


def _all_killed(names: list[str], timeout: float = 600) -> None:
    """Run scripts/mutate_rtl.py on ``names``; every one must be killed."""
    proc = subprocess.run([sys.executable, "scripts/mutate_rtl.py"]
                          + [a for n in names for a in ("--only", n)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(names)} of {len(names)} mutants killed" in proc.stdout


@pytest.mark.slow
def test_flipped_lut_entry_is_caught():
    _all_killed(["lut-flip"], timeout=1200)


@pytest.mark.slow
def test_dot_v2_pipeline_mutants_are_caught():
    """The dot cell v2 mutants (dropped register, swapped partial sums, interleave off by
    one, slot restart dropped) run the Amaranth-simulator test: no Verilator build."""
    names = ["v2-register-dropped", "v2-partial-sums-swapped", "v2-interleave-off-by-one",
             "v2-slot-restart-dropped"]
    _all_killed(names)


@pytest.mark.slow
def test_dot_v1_pipeline_mutants_are_caught():
    """The v1 cell's pipelined tail (the matrix engine's array cell): a group taken before
    the accumulator loop is free, a held-back beat counted, the plain-mode bypass of the
    DFQ add unaligned, the slot counter wrapping late, and with a shared FP32 tail the
    columns summed into one accumulator or scaled by one column's scale (Amaranth-simulator
    tests: no Verilator build)."""
    _all_killed(["dot-spacing-off-by-one", "dot-untaken-beat-counted", "dot-plain-delay-dropped",
                 "dot-slot-wrap-off-by-one", "dot-shared-one-accumulator",
                 "dot-shared-scale-column"])


@pytest.mark.slow
def test_row_units_in_flight_mutants_are_caught():
    """Softmax and L2 norm keep rows in flight on two alternating partial-sum sets: a
    snapshot a cycle early, or a row started on a set still in use, changes results
    (Amaranth-simulator tests: no Verilator build)."""
    _all_killed(["sm-snapshot-early", "sm-partial-set-reused", "l2-snapshot-early",
                 "l2-partial-set-reused"])


@pytest.mark.slow
def test_matrix_row_set_mutants_are_caught():
    """The matrix engine's row sets: a loader that ignores the set, the weight replay
    buffer's scales taken from one half, a drain that repeats the first set
    (Amaranth-simulator test: no Verilator build)."""
    _all_killed(["mat-set-address-dropped", "mat-group-scales-one-half",
                 "mat-drain-set-repeated"])


@pytest.mark.slow
def test_hadamard_pipeline_mutants_are_caught():
    """The group Hadamard pipeline mutants (a dropped register in the sign delay line, the
    valid delay line off by one, the shifted-out sticky bits dropped, the input pipeline
    ignoring the stall) run the Amaranth-simulator test under backpressure: no Verilator
    build."""
    names = ["had-reg-dropped", "had-valid-early", "had-sticky-dropped", "had-no-stall"]
    _all_killed(names)


@pytest.mark.slow
def test_fpu_pipeline_mutants_are_caught():
    """The pipelined FP operator mutants (products ahead of their exponent by one register,
    the alignment sticky from the larger operand, a subtraction without its +1, the rounding
    sticky tests swapped) run the Amaranth-simulator tests of FPUnit: no Verilator build."""
    names = ["fpu-mul-products-early", "fpu-add-sticky-from-larger", "fpu-add-carry-in-dropped",
             "fpu-round-sticky-branches-swapped"]
    _all_killed(names)


@pytest.mark.slow
def test_row_partial_sum_mutants_are_caught():
    """The row units' accumulating adder (PartialSums on AddPipe, latency 7): a write-back
    to the next issue's partial, a write-back one cycle early, partials not cleared between
    rows, an issue that misses the write-back of its partial in the same cycle; the
    Amaranth-simulator FDot test catches each."""
    _all_killed(["row-partial-dst-off-by-one", "row-writeback-early", "row-clear-dropped",
                 "row-bypass-dropped"])


@pytest.mark.slow
def test_attention_array_mutants_are_caught():
    """The attention array (AttentionArray): the partials copied a cycle early, one B slot
    for every tile, a job an abort cut short resuming afterwards; the Amaranth-simulator
    tests of tests/test_hw_attention.py catch each (no Verilator build).  The other two
    array mutants (a B offset in bytes, edge-tile lanes written) are killed by the same test
    (``python scripts/mutate_rtl.py --only att-b-offset-in-bytes ...``)."""
    _all_killed(["att-snapshot-early", "att-one-b-slot", "att-stop-only-in-flush",
                 "att-snap-ignores-drain"])
