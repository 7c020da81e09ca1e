"""The handwritten-digits data set the embedded tiny VAR is trained on.

Source: ``sklearn.datasets.load_digits`` (1797 greyscale 8x8 images, values
0..16, 10 classes; shipped inside scikit-learn, no download).

Contract:
- ``load_digits_split()`` returns a fixed split, stratified per class: 20 % of
  each class held out (359 images), the rest (1438) for training, drawn with a
  numpy ``default_rng(SPLIT_SEED)`` permutation.
- Images keep their native 8x8 resolution (``IMAGE_SIZE``; the tiny VQVAE
  downsamples 2x to a 4x4 token map, patch_nums (1, 2, 3, 4)) and are stored as
  float32 in [0, 1] (value / 16), shape [N, 1, 8, 8]. ``upsample`` can resize
  them bilinearly for other model sizes. ``to_model_range`` maps [0, 1] to
  [-1, 1], the VQVAE's input range.
- ``data_hash()`` is the SHA-256 of the raw arrays (uint8 images, int64 labels)
  and of the split indices; training configs record it so a checkpoint can be
  matched to the exact data it saw.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 8
"""Side of the images the models see (the native 8x8 of the data set)."""
NUM_CLASSES = 10
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class DigitsSplit:
    """Train / held-out tensors. Images: float32 [N, 1, S, S] in [0, 1]; labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    data_hash: str


@lru_cache(maxsize=1)
def raw_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw uint8 8x8 images, int64 labels, and the train / held-out index arrays."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.asarray(d.images)
    if images.shape != (1797, 8, 8) or images.min() < 0 or images.max() > 16:
        raise ValueError(
            f"sklearn load_digits returned unexpected data (shape {images.shape}); "
            "install a scikit-learn release that ships the UCI 8x8 digits (>= 1.4)")
    images = images.astype(np.uint8)
    labels = np.asarray(d.target, dtype=np.int64)
    # Stratified split by class with a fixed permutation (no sklearn RNG dependence).
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(NUM_CLASSES):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(idx.size * HELD_OUT_FRACTION))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return images, labels, np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def data_hash() -> str:
    """SHA-256 (hex) of the raw images, labels and split indices."""
    images, labels, tr, te = raw_split()
    h = hashlib.sha256()
    for a in (images, labels, tr.astype(np.int64), te.astype(np.int64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def upsample(images_u8: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Map raw 0..16 images [N, 8, 8] to float32 [N, 1, size, size] in [0, 1] (bilinear if size != 8)."""
    x = torch.as_tensor(np.asarray(images_u8), dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"expected images of shape [N, H, W], got {tuple(x.shape)}")
    x = (x / 16.0).unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (VQVAE input range)."""
    return images01 * 2.0 - 1.0


def from_model_range(images_pm1: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images_pm1 + 1.0) * 0.5).clamp(0.0, 1.0)


@lru_cache(maxsize=2)
def load_digits_split(size: int = IMAGE_SIZE) -> DigitsSplit:
    """The fixed train / held-out split at ``size`` x ``size`` (see module docstring)."""
    images, labels, tr, te = raw_split()
    x = upsample(images, size)
    y = torch.from_numpy(labels)
    return DigitsSplit(
        train_images=x[tr], train_labels=y[tr],
        test_images=x[te], test_labels=y[te],
        data_hash=data_hash(),
    )
