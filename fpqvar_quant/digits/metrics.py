"""Proxy quality metrics for generated digits (see ``docs/digits.md``).

- ``digits_fid``: Frechet distance between Gaussians fitted to the shipped
  classifier's 64-d penultimate features of generated images and of the
  held-out real digits (the FID recipe with a digit CNN instead of Inception-v3).
- ``class_accuracy``: fraction of generated images the classifier assigns to
  the class they were requested for (the conditional analogue of IS).

Images are float [N, 1, 16, 16] in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .classifier import DigitClassifier, load_classifier
from .data import load_digits_split


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64 (the FID formula)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    # Tr((S1 S2)^1/2) = Tr((R S2 R)^1/2) with R = S1^1/2 symmetric: a symmetric PSD
    # eigenproblem, stable for the rank-deficient covariances of ReLU features.
    w1, v1 = np.linalg.eigh(s1)
    r = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


@torch.no_grad()
def features(images: torch.Tensor, classifier: DigitClassifier | None = None) -> np.ndarray:
    """Classifier penultimate features [N, 64] (float64) of images in [0, 1]."""
    clf = classifier or load_classifier()
    return clf.features(images.float()).double().numpy()


def _stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if f.shape[0] < 2:
        raise ValueError("a Frechet distance needs at least 2 images")
    return f.mean(0), np.cov(f, rowvar=False)


def reference_stats(classifier: DigitClassifier | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the held-out real digits' features."""
    return _stats(features(load_digits_split().test_images, classifier))


def digits_fid(images: torch.Tensor, classifier: DigitClassifier | None = None) -> float:
    """Frechet distance of ``images`` to the held-out real digits in classifier-feature space.

    Like FID it is biased upward for small sample counts: compare values at the
    same N only (the demo and benchmark use fixed N for every method)."""
    clf = classifier or load_classifier()
    mu_r, s_r = reference_stats(clf)
    mu_g, s_g = _stats(features(images, clf))
    return frechet_distance(mu_g, s_g, mu_r, s_r)


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: DigitClassifier | None = None) -> float:
    """Fraction of ``images`` the classifier assigns to their requested ``labels`` (chance 0.1)."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    clf = classifier or load_classifier()
    return (clf(images.float()).argmax(1) == labels).float().mean().item()


@dataclass(frozen=True)
class SampleQuality:
    """digits-FID and class accuracy of one set of samples."""

    digits_fid: float
    class_accuracy: float
    n: int


def sample_quality(images: torch.Tensor, labels: torch.Tensor,
                   classifier: DigitClassifier | None = None) -> SampleQuality:
    """Both proxy metrics of a set of generated images."""
    clf = classifier or load_classifier()
    return SampleQuality(digits_fid(images, clf), class_accuracy(images, labels, clf), int(images.shape[0]))


def real_data_baseline(n: int | None = None, classifier: DigitClassifier | None = None) -> SampleQuality:
    """The metrics of real *training* digits (first ``n`` of them, all if None): what
    real data scores at that sample count (a reference, not a strict floor)."""
    split = load_digits_split()
    x, y = split.train_images, split.train_labels
    if n is not None:
        x, y = x[:n], y[:n]
    return sample_quality(x, y, classifier)
