"""Metric math of the evaluator (no Inception network, nothing downloaded)."""
import numpy as np
import pytest

from fpqvar_quant.ptq.evaluate import (EvaluatorUnavailable, find_weights, feature_stats,
                                       fid_from_stats, inception_score, list_sample_pngs,
                                       load_reference_batch, precision_recall)


def test_fid_closed_form_seed0():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    d1, d2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    # diagonal covariances: FID = |mu1-mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert fid_from_stats(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(want, rel=1e-9)
    x = rng.normal(size=(500, 8))
    mu, sig = feature_stats(x)
    assert fid_from_stats(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-8)


def test_inception_score_bounds():
    n, k = 100, 10
    assert inception_score(np.zeros((n, k))) == pytest.approx(1.0)      # uniform predictions
    confident = np.full((n, k), -50.0)
    confident[np.arange(n), np.arange(n) % k] = 50.0
    assert inception_score(confident) == pytest.approx(k, rel=1e-6)    # sure and balanced


def test_precision_recall_seed1():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(200, 4))
    p, r = precision_recall(ref, ref.copy())
    assert p == 1.0 and r == 1.0
    far = ref + 100.0
    assert precision_recall(ref, far) == (0.0, 0.0)
    # samples collapsed onto one reference point (mode collapse): precise, no recall
    p, r = precision_recall(ref, ref[:1] + 1e-3 * rng.normal(size=(20, 4)))
    assert p == 1.0 and r <= 0.01


def test_inputs_and_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="reference batch"):
        load_reference_batch(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="arr_0"):
        load_reference_batch(tmp_path / "bad.npz")
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=np.zeros(4),
             sigma=np.eye(4))
    ref = load_reference_batch(tmp_path / "ref.npz")
    assert ref["images"].shape == (2, 8, 8, 3) and "mu" in ref
    with pytest.raises(ValueError, match="no .png"):
        list_sample_pngs(tmp_path)
    with pytest.raises(EvaluatorUnavailable, match="not found"):
        find_weights(tmp_path / "missing.pth")
