"""Matrix engine pieces in the Amaranth simulator.

* The dual-mode dot cell (``GroupDot(dfq=True, dual=True)``) against the golden
  ``fpqvar_quant.golden.dot`` in both modes: plain e2m1fn (with garbage, even
  NaN, negative-grid scales, which must not matter) and DFQ.
"""
from __future__ import annotations

import numpy as np
import pytest

from fpqvar_hw.dot import GroupDot
from fpqvar_hw.multiplier import MulPair
from fpqvar_quant.golden.dot import DFQ
from tests.dot_vectors import expected, make_vectors, pack_beats
from tests.test_hw_dot import check, run_dot


@pytest.mark.parametrize("plain,lanes,seed", [(True, 8, 31), (False, 8, 32), (True, 16, 33)])
def test_dual_cell_matches_golden(plain, lanes, seed):
    G = 16
    dut = GroupDot(pair=MulPair.E2M1_E2M1, dfq=True, dual=True, group_size=G, lanes=lanes)
    vec = make_vectors("e2m1fn" if plain else DFQ, "e2m1fn", n_dots=16, groups_per_dot=3,
                       group_size=G, seed=seed)
    beats = pack_beats(dut.beat_layout, vec, lanes, G)
    off_plain = dut.beat_layout["plain"].offset
    off_neg = dut.beat_layout["s_a_neg"].offset
    if plain:
        rng = np.random.default_rng(seed)
        # the negative-grid scale is ignored in plain mode, whatever it holds
        junk = rng.choice([0x7E00, 0x7C00, 0x3C00, 0x0001], size=len(beats))
        beats = [b | 1 << off_plain | int(j) << off_neg for b, j in zip(beats, junk)]
    out, _ = run_dot(dut, beats, 16, seed)
    check(out, expected(vec, G))


def test_dual_requires_dfq():
    with pytest.raises(ValueError, match="dfq=True"):
        GroupDot(pair=MulPair.E2M1_E2M1, dual=True, group_size=16, lanes=8)
