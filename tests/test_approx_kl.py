"""Effect of the hardware approximations on the shipped tiny digits VAR
(``benchmarks/approx_error.py --kl``; numbers in ``docs/numerics.md`` section 4).

Bound.  If the hardware perturbs every logit of a token by ``delta`` with
``|delta| <= D``, then ``q ~ p * exp(delta)`` and Hoeffding's lemma gives
``KL(p || q) = log E_p[exp(delta)] - E_p[delta] <= (2D)^2 / 8 = D^2 / 2``.  The
approximations are within 2 ulp of the exact function (GELU: 16 ulp for
x >= -3, larger only where |GELU| < 1e-5; docs/numerics.md section 4), i.e.
relative errors of order 1e-7, the size of float32 rounding itself; the measured
logit differences are below 1e-5 (float32 alone, float64 vs float32 model: 8e-6).
``D = 1e-4`` (more than ten times that, about 100 float32 ulp of logits of
magnitude 10) gives the per-token bound ``KL_MAX = 5e-9`` nats; anything
larger means an approximation is wrong, not merely rounded differently.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.script_loader import load_script

D_MAX = 1e-4                 # allowed max |logit difference| (see the module docstring)
KL_MAX = D_MAX ** 2 / 2      # Hoeffding: KL <= D^2 / 2 = 5e-9 nats per token


def _bench():
    return load_script("benchmarks/approx_error.py", "approx_error_bench")


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def model():
    from fpqvar_quant.digits.model import load_digits_model

    torch.set_flush_denormal(False)
    return load_digits_model()


@pytest.fixture(scope="module")
def result(bench, model):
    configs = {"none": (), "all": bench.APPROXIMATIONS, "gelu": ("gelu",)}
    return bench.approx_kl(model, classes=list(range(10)), seeds=[0], configs=configs)


def test_kl_zero_when_off(result):
    r = result["configs"]["none"]
    assert r["kl_max"] == 0.0 and r["max_abs_logit_diff"] == 0.0 and r["argmax_agree"] == 1.0


@pytest.mark.parametrize("config", ["all", "gelu"])
def test_kl_finite_small_nonzero(result, config):
    r = result["configs"][config]
    assert result["sequences"] == 10 and len(r["steps"]) == 4
    for s in r["steps"]:
        assert math.isfinite(s["kl_mean"]) and 0.0 <= s["kl_mean"] <= s["kl_max"] <= KL_MAX, s
    assert math.isfinite(r["kl_max"]) and r["kl_max"] <= KL_MAX, r
    assert r["max_abs_logit_diff"] <= D_MAX, r
    # the approximations do change the numbers (the patch is active) ...
    assert r["kl_mean"] > 0.0 and r["max_abs_logit_diff"] > 0.0
    # ... and the KL obeys the Hoeffding bound of the measured logit differences
    assert r["kl_max"] <= r["max_abs_logit_diff"] ** 2 / 2 * (1 + 1e-6) + 1e-18


def test_patch_restored_and_validated(bench, model):
    """The context manager restores the model on exit, and rejects unknown groups."""
    var = model.var
    labels = torch.tensor([3, 7])
    xin = torch.zeros(2, var.L - var.first_l, var.Cvae)
    with torch.no_grad():
        before = var(labels, xin)
        with bench.hardware_approximations(var):
            during = var(labels, xin)
        after = var(labels, xin)
    assert torch.equal(before, after) and not torch.equal(before, during)
    assert all("forward" not in vars(m) for m in var.modules())
    with pytest.raises(ValueError, match="unknown approximation"):
        with bench.hardware_approximations(var, ("softmax",)):
            pass


def test_hardware_attention_matches_golden_attention(bench):
    """The benchmark's masked attention equals golden.attention (unmasked, over the
    visible keys) bit for bit: the block-causal mask only adds exact zeros."""
    import numpy as np

    from fpqvar_quant.golden import attention as att

    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((3, 2, 13, 64)) * [[[[3]]], [[[1]]], [[[1]]]]).astype(np.float32)
    mask = torch.zeros(13, 13)
    mask[:4, 4:] = -math.inf           # queries 0..3 see keys 0..3; queries 4..12 see all 13
    got = bench.hardware_attention(*(torch.from_numpy(a) for a in (q, k, v)), mask, 8).numpy()
    assert np.array_equal(got[:, 4:], att.attention(q[:, 4:], k, v, P=8))
    assert np.array_equal(got[:, :4], att.attention(q[:, :4], k[:, :4], v[:, :4], P=8))
