"""Digits data, proxy metrics and the shipped classifier (fpqvar_quant.digits)."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from fpqvar_quant.digits.classifier import ASSET_DIR, DigitClassifier, accuracy, load_classifier
from fpqvar_quant.digits.data import IMAGE_SIZE, NUM_CLASSES, data_hash, load_digits_split, upsample
from fpqvar_quant.digits.metrics import (class_accuracy, digits_fid, frechet_distance, real_data_baseline,
                                         sample_quality)


def test_split_is_fixed_disjoint_and_stratified():
    s = load_digits_split()
    assert s.train_images.shape == (1438, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert s.test_images.shape == (359, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert s.train_images.dtype == torch.float32
    assert 0.0 <= s.train_images.min() and s.train_images.max() <= 1.0
    # every class is held out in proportion (20 % +- rounding)
    counts = s.test_labels.bincount(minlength=NUM_CLASSES)
    total = counts + s.train_labels.bincount(minlength=NUM_CLASSES)
    assert torch.all((counts - 0.2 * total).abs() <= 0.5)
    # no image of the held-out split is an index of the training split
    from fpqvar_quant.digits.data import raw_split
    _, _, tr, te = raw_split()
    assert not set(tr.tolist()) & set(te.tolist()) and len(tr) + len(te) == 1797


def test_data_hash_matches_the_shipped_assets():
    h = data_hash()
    assert len(h) == 64 and h == load_digits_split().data_hash
    assert json.loads((ASSET_DIR / "classifier.json").read_text())["data_hash"] == h


def test_upsample_rejects_bad_shapes_and_keeps_range():
    with pytest.raises(ValueError, match="N, H, W"):
        upsample(np.zeros((2, 1, 8, 8)))
    x = upsample(np.full((1, 8, 8), 16, dtype=np.uint8), size=16)
    assert x.shape == (1, 1, 16, 16) and torch.allclose(x, torch.ones_like(x))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(200, 6)), rng.normal(size=(200, 6)) * 1.3 + 0.2
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
    assert frechet_distance(a.mean(0), s1, b.mean(0), s2) == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert frechet_distance(a.mean(0), s1, a.mean(0), s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_shipped_classifier_loads_and_is_accurate():
    clf = load_classifier()
    s = load_digits_split()
    assert isinstance(clf, DigitClassifier) and not clf.training
    assert accuracy(clf, s.test_images, s.test_labels) > 0.95
    meta = json.loads((ASSET_DIR / "classifier.json").read_text())
    assert meta["held_out_accuracy"] == pytest.approx(accuracy(clf, s.test_images, s.test_labels))
    with pytest.raises(ValueError, match="expected images"):
        clf.features(torch.zeros(2, 1, 16, 16))


@pytest.mark.parametrize("seed", [0])
def test_metrics_rank_real_digits_far_ahead_of_noise_and_flips(seed):
    s = load_digits_split()
    real = real_data_baseline(300)
    noise = sample_quality(torch.rand(300, 1, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)),
                           s.train_labels[:300])
    flipped = sample_quality(s.train_images[:300].flip(-1), s.train_labels[:300])
    assert real.class_accuracy > 0.95 and noise.class_accuracy < 0.3
    assert real.digits_fid < flipped.digits_fid < noise.digits_fid
    assert real.digits_fid < 0.2 * flipped.digits_fid
    # wrong labels: accuracy near chance, FID unchanged (it ignores labels)
    shifted = (s.train_labels[:300] + 1) % NUM_CLASSES
    assert class_accuracy(s.train_images[:300], shifted) < 0.1
    assert digits_fid(s.train_images[:300]) == pytest.approx(real.digits_fid)
    with pytest.raises(ValueError, match="labels"):
        class_accuracy(s.train_images[:3], s.train_labels[:2])
