"""Loading official ``.pth`` checkpoints with errors a user can act on.

* :func:`read_state_dict` reads a ``.pth`` file (``torch.load(weights_only=True)``)
  and returns a flat ``{name: tensor}`` dict.  A missing file raises
  ``FileNotFoundError``; a truncated or corrupt file raises
  :class:`CheckpointError` naming the file and saying what to do.  Wrapped
  checkpoints (``{"state_dict": ...}``, ``{"model": ...}``, the official trainer
  format ``{"trainer": {"var_wo_ddp": ...}}``) are unwrapped.
* :func:`check_state_dict` compares a state dict with a model: missing and
  unexpected keys and shape mismatches.
* :func:`load_into` = check + ``load_state_dict(strict=True)``; a mismatch
  raises :class:`CheckpointMismatchError` listing every problem.
* :func:`infer_var_config` reads depth / embed_dim / shared_aln / patch
  numbers from a VAR state dict (to build the right model for a file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["CheckpointError", "CheckpointMismatchError", "StateDictReport", "read_state_dict",
           "verify_file", "check_state_dict", "load_into", "load_checkpoint", "infer_var_config", "VarConfig"]

PathLike = Union[str, "os.PathLike[str]"]
_WRAPPER_KEYS = ("state_dict", "model", "module", "var_wo_ddp", "vae_local", "trainer")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (truncated, corrupt, not a state dict)."""


class CheckpointMismatchError(ValueError):
    """A state dict does not match the model (see ``report``)."""

    def __init__(self, message: str, report: "StateDictReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class StateDictReport:
    """Differences between a state dict and a model's ``state_dict()``."""
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatches: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)  # key, ckpt, model

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def describe(self, limit: int = 20) -> str:
        """Human-readable list of the problems (at most ``limit`` per kind)."""
        def lst(title: str, items: List[str]) -> List[str]:
            if not items:
                return []
            more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
            return [f"  {title} ({len(items)}):"] + [f"    {s}" for s in items[:limit]] + more

        lines = lst("missing keys (in the model, not in the checkpoint)", self.missing)
        lines += lst("unexpected keys (in the checkpoint, not in the model)", self.unexpected)
        lines += lst("shape mismatches (key: checkpoint vs model)",
                     [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.shape_mismatches])
        return "\n".join(lines)


def _unwrap(obj: object, path: str, select: Optional[str]) -> Dict[str, torch.Tensor]:
    if select:
        for part in select.split("."):
            if not (isinstance(obj, Mapping) and part in obj):
                raise CheckpointError(f"{path}: no entry {select!r} (failed at {part!r}); "
                                      f"top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__}")
            obj = obj[part]
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise CheckpointError(f"{path}: does not contain a state dict (a mapping from names to tensors); "
                          f"got {type(obj).__name__}. Pass the official var_d*.pth / vae_ch160v4096z32.pth file.")


def verify_file(path: PathLike, *, sha256: Optional[str] = None, what: str = "checkpoint") -> None:
    """Check a torch file before it is loaded: its SHA-256 against ``sha256`` (hex) when
    given, and the CRC-32 of every member of the zip container (``torch.save``'s format
    since 1.6): ``torch.load`` does not check them, so a flipped byte inside a tensor
    would load silently.  Raises :class:`CheckpointError` naming the file and what to do.
    Legacy (non-zip) files have no checksums to check."""
    import hashlib
    import zipfile

    path = os.fspath(path)
    if sha256 is not None:
        want = sha256.strip().lower()
        if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
            raise CheckpointError(f"--sha256 {sha256!r} is not a 64-digit hex SHA-256 digest")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != want:
            raise CheckpointError(f"{path}: SHA-256 {h.hexdigest()} does not match the expected "
                                  f"{want}; the {what} is corrupt or another file: download it again")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: the {what} is truncated or corrupt ({e}); "
                              "write or download it again") from e
    if bad is not None:
        raise CheckpointError(f"{path}: member {bad!r} fails its CRC-32 check: the {what} is "
                              "corrupt (flipped or damaged bytes); write or download it again")


def read_state_dict(path: PathLike, map_location: Union[str, torch.device] = "cpu", *,
                    select: Optional[str] = None, trusted: bool = False,
                    sha256: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read a flat state dict from a ``.pth`` file.

    ``select``: dotted path of the state dict inside a wrapped file, e.g.
    ``"trainer.vae_local"`` for the VQVAE of an official training checkpoint
    (default: the first of ``state_dict``/``model``/``module``/``var_wo_ddp``/
    ``vae_local``/``trainer``, recursively).  The file is checked first
    (:func:`verify_file`: zip CRC-32s, and ``sha256`` when given).  ``trusted=False`` (default) loads
    with ``weights_only=True`` (no code execution); training checkpoints that
    pickle Python objects need ``trusted=True``, only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}. Download the official weights "
                                f"(e.g. var_d16.pth, vae_ch160v4096z32.pth) and pass their path.")
    verify_file(path, sha256=sha256)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=not trusted)
    except Exception as e:  # torch.load raises many types for damaged files (RuntimeError, EOFError, IndexError, ...)
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path}: the file pickles Python objects besides tensors (e.g. a training checkpoint); "
                f"refusing to execute them. Pass trusted=True only if you trust the file's source.") from e
        size = os.path.getsize(path)
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: cannot read the checkpoint ({size} bytes): it is truncated or corrupt, or not a PyTorch "
            f"file ({type(e).__name__}: {first}). "
            f"Download it again and compare its size/checksum with the official release.") from e
    return _unwrap(obj, path, select)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> StateDictReport:
    """Compare keys and shapes of ``state_dict`` with ``model.state_dict()`` (dtypes are cast on load)."""
    own = model.state_dict()
    rep = StateDictReport()
    rep.missing = [k for k in own if k not in state_dict]
    rep.unexpected = [k for k in state_dict if k not in own]
    from .vqvae import VQVAE

    for k, t in state_dict.items():
        if isinstance(model, VQVAE) and k == "quantize.ema_vocab_hit_SV":
            continue  # usage statistics: VQVAE.load_state_dict replaces another number of scales (as official)
        if k in own and tuple(t.shape) != tuple(own[k].shape):
            rep.shape_mismatches.append((k, tuple(t.shape), tuple(own[k].shape)))
    return rep


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str = "checkpoint",
              assign: bool = False) -> None:
    """Strictly load ``state_dict`` into ``model`` or raise :class:`CheckpointMismatchError`.

    ``what`` names the source in the message (e.g. the file path).  With
    ``assign=True`` the tensors are assigned instead of copied (for models
    built on the ``meta`` device).
    """
    rep = check_state_dict(model, state_dict)
    if not rep.ok:
        raise CheckpointMismatchError(
            f"{what} does not match {type(model).__name__}:\n{rep.describe()}\n"
            f"Build the model with the configuration of the checkpoint (depth, shared_aln, patch_nums, V, Cvae, ch); "
            f"for VAR files infer_var_config(state_dict) tells it.", rep)
    model.load_state_dict(state_dict, strict=True, assign=assign)


def load_checkpoint(model: nn.Module, path: PathLike, map_location: Union[str, torch.device] = "cpu", *,
                    select: Optional[str] = None, trusted: bool = False) -> None:
    """:func:`read_state_dict` + :func:`load_into` (strict; clear errors)."""
    sd = read_state_dict(path, map_location=map_location, select=select, trusted=trusted)
    load_into(model, sd, what=os.fspath(path))


@dataclass(frozen=True)
class VarConfig:
    """Configuration read from a VAR state dict (keywords of ``build_vae_var``)."""
    depth: int
    embed_dim: int
    num_heads: int
    shared_aln: bool
    num_classes: int
    V: int
    Cvae: int
    patch_nums: Optional[Tuple[int, ...]]  # None when L matches no known schedule


def infer_var_config(state_dict: Mapping[str, torch.Tensor]) -> VarConfig:
    """Infer the VAR configuration from key names and shapes (raises ``CheckpointError`` if not a VAR)."""
    from .builder import PATCH_NUMS_256, PATCH_NUMS_512

    need = ("pos_1LC", "class_emb.weight", "head.weight", "word_embed.weight")
    if any(k not in state_dict for k in need):
        raise CheckpointError(f"not a VAR state dict: it lacks {[k for k in need if k not in state_dict]}")
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    C = int(state_dict["class_emb.weight"].shape[1])
    sm = state_dict.get("blocks.0.attn.scale_mul_1H11")
    heads = int(sm.shape[1]) if sm is not None else depth
    L = int(state_dict["pos_1LC"].shape[1])
    pns = next((p for p in (PATCH_NUMS_256, PATCH_NUMS_512) if sum(x * x for x in p) == L), None)
    return VarConfig(depth=depth, embed_dim=C, num_heads=heads, shared_aln="shared_ada_lin.1.weight" in state_dict,
                     num_classes=int(state_dict["class_emb.weight"].shape[0]) - 1,
                     V=int(state_dict["head.weight"].shape[0]), Cvae=int(state_dict["word_embed.weight"].shape[1]),
                     patch_nums=pns)
