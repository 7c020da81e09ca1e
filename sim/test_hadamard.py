"""Co-simulation of the group Hadamard unit against the golden model (zero mismatches),
seeded random groups (incl. NaN/Inf and overflowing groups) under random backpressure.

Wider lane counts (32, 64) are covered by the Amaranth-simulator tests in
tests/test_hw_hadamard.py; a 128-lane Verilator build takes about 10 minutes on
2 loaded cores, beyond this suite's time budget."""
import numpy as np
import pytest

from fpqvar_hw.units.hadamard import GroupHadamard
from fpqvar_quant.golden import hadamard as gh
from sim.runner import run_cocotb


def _run(lanes, n, *, seed, idle, backpressure, tmp_path):
    x = gh.random_groups(np.random.default_rng(seed), n)
    signs = gh.random_signs(seed)
    r = gh.hadamard_groups(x, signs)
    vec = tmp_path / "vectors.npz"
    np.savez(vec, x=x, signs=signs, y=r.y, overflow=r.overflow, error=r.error)
    run_cocotb(GroupHadamard(lanes=lanes), name=f"hadamard-l{lanes}", test_module="sim.tb_hadamard",
               params=dict(vectors=str(vec), lanes=lanes, seed=seed, idle=idle, backpressure=backpressure))


def test_random_groups_backpressure(tmp_path):
    _run(16, 400, seed=41, idle=0.3, backpressure=0.4, tmp_path=tmp_path)


@pytest.mark.slow
def test_ten_thousand_groups(tmp_path):
    _run(16, 10_000, seed=42, idle=0.02, backpressure=0.05, tmp_path=tmp_path)
