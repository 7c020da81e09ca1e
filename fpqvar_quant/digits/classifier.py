"""A small CNN digit classifier: the feature extractor of the proxy metrics.

It plays the role Inception-v3 plays for FID/IS on ImageNet (see
``docs/digits.md``): its 64-d penultimate activations feed the Frechet distance
("digits-FID"), its logits give the class accuracy of generated samples.

Input contract: float images [N, 1, 8, 8] in [0, 1] (``fpqvar_quant.digits.data``).
The shipped weights (``assets/digits/classifier.pt``, fp16 state dict, and
``classifier.json``, its training config + data hash + held-out accuracy) are
produced by ``scripts/train_digits.py`` via ``train_classifier``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import IMAGE_SIZE, NUM_CLASSES, DigitsSplit, load_digits_split

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "digits"
FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """conv16-conv32-pool-conv64-pool-fc64(features)-fc10 on 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (IMAGE_SIZE // 4) ** 2, FEATURE_DIM)
        self.fc2 = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.drop = nn.Dropout(0.3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, 64] (post-ReLU) of images [N, 1, 8, 8] in [0, 1]."""
        if x.ndim != 4 or x.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected images [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {tuple(x.shape)}")
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.max_pool2d(F.relu(self.conv3(h)), 2)
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 10]."""
        return self.fc2(self.drop(self.features(x)))


@dataclass(frozen=True)
class ClassifierConfig:
    """Training recipe of the shipped classifier."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1
    """Random translation (pixels) used as augmentation."""


def _augment(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Random integer translation per image (zero fill) + a random contrast gain."""
    n, s = x.shape[0], x.shape[-1]
    out = x
    if max_shift > 0:
        pad = F.pad(x, (max_shift,) * 4)
        sx = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        sy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        ar = torch.arange(s)
        rows = (sy[:, None] + ar[None, :])[:, None, :, None].expand(n, 1, s, s + 2 * max_shift)
        out = pad.gather(2, rows)
        cols = (sx[:, None] + ar[None, :])[:, None, None, :].expand(n, 1, s, s)
        out = out.gather(3, cols)
    gain = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    return (out * gain).clamp(0, 1)


def train_classifier(cfg: ClassifierConfig = ClassifierConfig(),
                     split: DigitsSplit | None = None, *, verbose: bool = False) -> DigitClassifier:
    """Train a ``DigitClassifier`` on the training split, seeded, on CPU."""
    split = split or load_digits_split()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(split.train_labels) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    x_all, y_all = split.train_images, split.train_labels
    for ep in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = _augment(x_all[idx], cfg.max_shift, g)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if verbose and (ep + 1) % 10 == 0:
            print(f"classifier epoch {ep + 1}: loss {loss.item():.4f} "
                  f"held-out acc {accuracy(model, split.test_images, split.test_labels):.4f}", flush=True)
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    was = model.training
    model.eval()
    acc = (model(images).argmax(1) == labels).float().mean().item()
    model.train(was)
    return acc


def save_classifier(model: DigitClassifier, cfg: ClassifierConfig, directory: Path = ASSET_DIR) -> None:
    """Write ``classifier.pt`` (fp16 state dict) and ``classifier.json`` (config, data hash, accuracy)."""
    directory.mkdir(parents=True, exist_ok=True)
    split = load_digits_split()
    sd = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    torch.save(sd, directory / "classifier.pt")
    # The accuracy recorded is the one of the fp16-stored weights, as they load.
    reloaded = DigitClassifier()
    reloaded.load_state_dict({k: v.float() for k, v in sd.items()})
    meta = {"config": asdict(cfg), "data_hash": split.data_hash,
            "held_out_accuracy": accuracy(reloaded, split.test_images, split.test_labels),
            "train_accuracy": accuracy(reloaded, split.train_images, split.train_labels),
            "storage": "float16 state dict, loaded as float32"}
    (directory / "classifier.json").write_text(json.dumps(meta, indent=2) + "\n")


_CACHE: dict[str, DigitClassifier] = {}


def load_classifier(directory: Path = ASSET_DIR) -> DigitClassifier:
    """The shipped classifier (float32, eval mode). Raises if the assets are missing
    or were trained on different data than ``load_digits_split`` returns."""
    key = str(directory)
    if key in _CACHE:
        return _CACHE[key]
    pt, js = directory / "classifier.pt", directory / "classifier.json"
    if not pt.exists() or not js.exists():
        raise FileNotFoundError(f"{pt} / {js} missing; run `python scripts/train_digits.py --only classifier`")
    meta = json.loads(js.read_text())
    if meta["data_hash"] != load_digits_split().data_hash:
        raise ValueError("the shipped classifier was trained on different digits data than this "
                         "scikit-learn provides; retrain with `python scripts/train_digits.py --only classifier`")
    model = DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in torch.load(pt, weights_only=True).items()})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _CACHE[key] = model
    return model
