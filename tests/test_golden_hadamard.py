"""Checks of the golden Hadamard model: float64 reference where it is exact,
orthogonality, overflow/NaN policy, exporter."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fpqvar_quant.golden import hadamard as gh


def test_matrix_is_sylvester_and_orthogonal():
    h = gh.hadamard_matrix(128)
    assert np.array_equal(h @ h.T, 128 * np.eye(128, dtype=np.int64))
    assert np.array_equal(h[:2, :2], [[1, 1], [1, -1]])
    assert np.array_equal(h, np.kron(gh.hadamard_matrix(2), gh.hadamard_matrix(64)))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_float64_where_exact(seed):
    # Values with exponents in [-10, 10]: the float64 sum of 128 terms is exact,
    # so numpy's single float16 rounding is the exact RNE.
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((500, 128)) * 2.0 ** rng.integers(-8, 8, (500, 1))).astype(np.float16)
    x = np.where(np.abs(x) < 2.0 ** -10, np.float16(0), x)
    d = gh.random_signs(seed)
    r = gh.hadamard_groups(x.view(np.uint16), d)
    ref = ((x.astype(np.float64) @ gh.hadamard_matrix().T) * np.where(d == 1, -1.0, 1.0)) / 8
    assert np.array_equal(r.y, ref.astype(np.float16).view(np.uint16))
    assert not r.overflow.any() and not r.error.any()


def test_overflow_saturates_and_nan_group():
    x = np.full((3, 128), 0x7BFF, np.uint16)        # 65504 everywhere: y_0 = 128*65504/8
    x[1] = 0
    x[2, 7] = 0x7C00
    r = gh.hadamard_groups(x, np.zeros(128, np.uint8))
    assert r.y[0, 0] == 0x7BFF and r.overflow.tolist() == [True, False, False]
    assert np.all(r.y[1] == 0) and np.all(r.y[2] == 0x7E00) and r.error.tolist() == [False, False, True]


def test_negative_results_and_subnormals():
    x = np.zeros((1, 128), np.uint16)
    x[0, 0] = 0x0001                                  # 2^-24 / 8 rounds to +0 (tie -> even)
    x[0, 1] = 0x8008                                  # -8 * 2^-24
    r = gh.hadamard_groups(x, np.zeros(128, np.uint8))
    # y_0 = (1 - 8) * 2^-27 -> -7/8 ulp -> -1 ulp; y_1 = (1 + 8) * 2^-27 -> 9/8 ulp -> 1 ulp
    assert r.y[0, 0] == 0x8001 and r.y[0, 1] == 0x0001


def test_bad_signs():
    with pytest.raises(ValueError, match="signs"):
        gh.hadamard_groups(np.zeros((1, 128), np.uint16), np.full(128, 2))


def test_exporter_cli(tmp_path):
    subprocess.run([sys.executable, "-m", "fpqvar_quant.golden", "hadamard", "--out", str(tmp_path),
                    "--seed", "1", "--n", "16"], check=True)
    man = json.loads((tmp_path / "manifest.json").read_text())
    v = np.load(tmp_path / "vectors.npz")
    assert man["unit"] == "hadamard" and v["y"].shape == (16, 128)
    assert np.array_equal(gh.hadamard_groups(v["x"], v["signs"]).y, v["y"])
