"""Calibration set: inputs of every quantized linear captured while the FP model
samples, streamed to disk, and a reader that iterates them chunk by chunk.

On-disk layout (version 1) of a calibration directory::

    index.json                      manifest (below), rewritten after every batch
    <layer>/s<SS>_b<BBBBB>.npy      one shard: inputs of <layer> at scale SS during
                                    sampling batch BBBBB, shape [2B, pn*pn, in_features]

``<layer>`` is the module path, e.g. ``blocks.3.ffn.fc2``. Rows ``[0, B)`` of a
shard are the conditional CFG half (labels), rows ``[B, 2B)`` the unconditional
half (class 1000). ``index.json``::

    {"format": "fpqvar-calibration", "version": 1, "dtype": "float16",
     "patch_nums": [...], "layers": {name: in_features},
     "settings": {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "seed": 0, ...},
     "batches": [{"index": k, "labels": [...], "g_seed": s}],
     "shards": [{"layer": name, "scale": si, "batch": k, "file": rel, "shape": [...]}]}

Shards are written as soon as a scale's forward pass finishes, so RAM holds at
most one scale of one batch; a d30 calibration (about 110 GB in float16 for
100 images) needs disk, not memory. An interrupted run resumes: batches already
in the index are skipped.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import QUANTIZED_LAYERS

__all__ = ["quantized_layer_names", "capture_inputs", "CalibrationWriter", "CalibrationSet",
           "generate_calibration", "CALIB_FORMAT", "CALIB_VERSION"]

CALIB_FORMAT = "fpqvar-calibration"
CALIB_VERSION = 1
_DTYPES = ("float16", "float32")


def quantized_layer_names(var: nn.Module) -> list[str]:
    """Module paths of the quantized linears of ``var``, block by block."""
    blocks = getattr(var, "blocks", None)
    if blocks is None:
        raise TypeError("expected a VAR model with a .blocks ModuleList")
    return [f"blocks.{i}.{rel}" for i in range(len(blocks)) for rel in QUANTIZED_LAYERS]


@contextmanager
def capture_inputs(var: nn.Module, sink: Callable[[str, int, torch.Tensor], None],
                   patch_nums: Sequence[int], layers: Iterable[str] | None = None):
    """Context manager: forward pre-hooks on ``layers`` (default: all quantized
    linears) call ``sink(layer, scale_index, input)`` for every call during
    sampling. The scale index is recovered from the token count (pn*pn is
    distinct per scale); an input of another length (e.g. teacher forcing) is
    reported with scale -1."""
    tokens_to_scale = {pn * pn: si for si, pn in enumerate(patch_nums)}
    handles = []
    try:
        for name in (quantized_layer_names(var) if layers is None else layers):
            mod = var.get_submodule(name)

            def hook(_m, args, _name=name):
                x = args[0]
                sink(_name, tokens_to_scale.get(x.shape[-2], -1), x.detach())
            handles.append(mod.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def _atomic_write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def is_calibration_dir(path: Path) -> bool:
    """A calibration folder written before output markers existed (its ``index.json``
    names the calibration format): resumable like a marked one."""
    try:
        return json.loads((Path(path) / "index.json").read_text()).get("format") == CALIB_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class CalibrationWriter:
    """Streams captured inputs to a calibration directory (see module docstring)."""

    def __init__(self, root: str | Path, *, patch_nums: Sequence[int], layers: dict[str, int],
                 dtype: str = "float16", settings: dict | None = None) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index_path = self.root / "index.json"
        if index_path.exists():
            self.index = json.loads(index_path.read_text())
            if self.index.get("format") != CALIB_FORMAT:
                raise ValueError(f"{index_path} is not a calibration index")
            if self.index["patch_nums"] != list(patch_nums) or self.index["layers"] != layers \
                    or self.index["dtype"] != dtype:
                raise ValueError(f"{self.root} holds a calibration set of another model or dtype; "
                                 "use an empty directory")
            old = self.index.get("settings", {})
            diff = [k for k in sorted(set(old) | set(settings or {}))
                    if old.get(k) != (settings or {}).get(k)]
            if diff:
                what = ", ".join(f"{k} {old.get(k)!r} -> {(settings or {}).get(k)!r}" for k in diff)
                raise ValueError(f"{self.root} holds a calibration set made with other settings "
                                 f"({what}); resume with the same settings or use a new --out")
        else:
            self.index = {"format": CALIB_FORMAT, "version": CALIB_VERSION, "dtype": dtype,
                          "patch_nums": list(patch_nums), "layers": dict(layers),
                          "settings": dict(settings or {}), "batches": [], "shards": []}
        self._pending: list[dict] = []

    @property
    def done_batches(self) -> set[int]:
        return {b["index"] for b in self.index["batches"]}

    def add(self, layer: str, scale: int, batch: int, x: torch.Tensor | np.ndarray) -> None:
        """Write one shard now (its index entry is committed by :meth:`commit_batch`)."""
        if layer not in self.index["layers"]:
            raise ValueError(f"unknown layer {layer!r}")
        arr = x.float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        arr = arr.astype(self.index["dtype"])
        rel = f"{layer}/s{scale:02d}_b{batch:05d}.npy"
        (self.root / layer).mkdir(exist_ok=True)
        np.save(self.root / rel, arr)
        self._pending.append({"layer": layer, "scale": scale, "batch": batch, "file": rel,
                              "shape": list(arr.shape)})

    def commit_batch(self, batch: int, labels: Sequence[int], g_seed: int) -> None:
        """Record batch ``batch`` and its shards in ``index.json`` (atomic rewrite)."""
        self.index["shards"].extend(self._pending)
        self._pending = []
        self.index["batches"].append({"index": batch, "labels": [int(c) for c in labels],
                                      "g_seed": int(g_seed)})
        _atomic_write_json(self.root / "index.json", self.index)


@dataclass(frozen=True)
class Shard:
    layer: str
    scale: int
    batch: int
    file: str
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1]))


class CalibrationSet:
    """Reader of a calibration directory; loads one shard at a time (memory-mapped)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} not found: run `fpqvar-quant calibrate` first "
                                    "or pass the directory it wrote")
        self.index = json.loads(index_path.read_text())
        if self.index.get("format") != CALIB_FORMAT:
            raise ValueError(f"{index_path} is not an fpqvar calibration index")
        if self.index.get("version") != CALIB_VERSION:
            raise ValueError(f"calibration format version {self.index.get('version')} is not "
                             f"supported (expected {CALIB_VERSION})")
        self.shards = [Shard(s["layer"], s["scale"], s["batch"], s["file"], tuple(s["shape"]))
                       for s in self.index["shards"]]

    @property
    def layers(self) -> dict[str, int]:
        return dict(self.index["layers"])

    @property
    def patch_nums(self) -> list[int]:
        return list(self.index["patch_nums"])

    @property
    def num_images(self) -> int:
        return sum(len(b["labels"]) for b in self.index["batches"])

    def layer_shards(self, layer: str, scales: Iterable[int] | None = None) -> list[Shard]:
        if layer not in self.index["layers"]:
            raise KeyError(f"layer {layer!r} not in this calibration set")
        keep = None if scales is None else set(scales)
        return [s for s in self.shards if s.layer == layer and (keep is None or s.scale in keep)]

    def load(self, shard: Shard) -> np.ndarray:
        return np.load(self.root / shard.file, mmap_mode="r")

    def iter_layer(self, layer: str, scales: Iterable[int] | None = None
                   ) -> Iterator[tuple[Shard, np.ndarray]]:
        """Yield ``(shard, array [2B, pn*pn, C])`` for ``layer`` in index order."""
        for sh in self.layer_shards(layer, scales):
            yield sh, self.load(sh)

    def num_rows(self, layer: str) -> int:
        return sum(s.rows for s in self.layer_shards(layer))

    def token_matrix(self, layer: str, max_tokens: int | None = None, seed: int = 0,
                     dtype: np.dtype = np.float32) -> np.ndarray:
        """All input rows of ``layer`` as ``[N, C]``; with ``max_tokens`` a uniform
        random subset (without replacement, rng ``seed``) read shard by shard."""
        shards = self.layer_shards(layer)
        total = sum(s.rows for s in shards)
        C = self.index["layers"][layer]
        if max_tokens is None or max_tokens >= total:
            pick = None
            out = np.empty((total, C), dtype=dtype)
        else:
            pick = np.sort(np.random.default_rng(seed).choice(total, size=max_tokens, replace=False))
            out = np.empty((max_tokens, C), dtype=dtype)
        pos = start = 0
        for sh in shards:
            a = self.load(sh).reshape(-1, C)
            if pick is None:
                out[pos:pos + len(a)] = a
                pos += len(a)
            else:
                lo, hi = np.searchsorted(pick, [start, start + len(a)])
                out[pos:pos + hi - lo] = a[pick[lo:hi] - start]
                pos += hi - lo
            start += len(a)
        return out


@torch.no_grad()
def generate_calibration(var: nn.Module, root: str | Path, *, num_images: int = 100,
                         classes: Sequence[int] | None = None, batch_size: int = 25,
                         cfg: float = 1.5, top_k: int = 900, top_p: float = 0.96, seed: int = 0,
                         dtype: str = "float16", progress: bool = True,
                         record: dict | None = None) -> CalibrationSet:
    """Sample ``num_images`` images with the FP model and stream every quantized
    layer's input (all scales, both CFG halves) to ``root``.

    Defaults follow the paper: 100 images, classes 0..99 (one each), cfg 1.5,
    top-k 900, top-p 0.96, seed 0. Batch ``k`` (``batch_size`` images) uses
    ``g_seed = seed + k``; with ``batch_size >= num_images`` a single call with
    ``g_seed = seed``. Uses ``var.sample_tokens`` (the token loop of
    ``autoregressive_infer_cfg`` with the same random draws, without the final
    VQVAE decode, which no quantized layer sees). Resumes an interrupted run in the same
    directory; the settings (model digest, classes, seed, cfg, top-k/top-p, batch size) are
    recorded and a resume under other settings is refused, naming what differs.  The batch
    size is one of them: it fixes which images share a generator (batch ``k``), so a resume
    under the recorded batch size redoes exactly the missing batches and the set is the
    uninterrupted one.  ``record``: more settings of the caller to record and compare (the
    CLI's ``--amp``).
    """
    from tqdm.auto import tqdm

    classes = list(range(num_images)) if classes is None else [int(c) for c in classes]
    if len(classes) != num_images:
        raise ValueError(f"got {len(classes)} classes for num_images={num_images}")
    if num_images <= 0 or batch_size <= 0:
        raise ValueError("num_images and batch_size must be positive")
    top_k = min(top_k, int(var.V))  # top-k with k >= V keeps everything (tiny vocabularies)
    patch_nums = [int(p) for p in var.patch_nums]
    names = quantized_layer_names(var)
    layers = {n: int(var.get_submodule(n).in_features) for n in names}
    from .models import state_digest
    settings = dict(num_images=num_images, classes=classes, cfg=cfg, top_k=top_k, top_p=top_p,
                    seed=seed, batch_size=batch_size, model_digest=state_digest(var),
                    **(record or {}))
    writer = CalibrationWriter(root, patch_nums=patch_nums, layers=layers, dtype=dtype,
                               settings=settings)
    device = next(var.parameters()).device
    batches = [classes[i:i + batch_size] for i in range(0, num_images, batch_size)]
    state = {"batch": 0}

    def sink(layer: str, scale: int, x: torch.Tensor) -> None:
        if scale >= 0:
            writer.add(layer, scale, state["batch"], x)

    var.eval()
    with capture_inputs(var, sink, patch_nums):
        for k, labels in enumerate(tqdm(batches, desc="calibration", disable=not progress,
                                        unit="batch")):
            if k in writer.done_batches:
                continue
            state["batch"] = k
            label_B = torch.tensor(labels, device=device, dtype=torch.long)
            # only the transformer matters: sample tokens, skip the VQVAE decode
            var.sample_tokens(B=len(labels), label_B=label_B, g_seed=seed + k,
                              cfg=cfg, top_k=top_k, top_p=top_p)
            writer.commit_batch(k, labels, seed + k)
    return CalibrationSet(root)
