"""Apply a :class:`QuantConfig` to a VAR transformer.

Pipeline (:func:`quantize_model`):

1. **GALT** (``cfg.galt``): per block, learn the QKV and FC1 smoothing vectors
   on the calibration set; fold them into adaLN and the weights (float64), or
   keep them online for shared-adaLN models.
2. **Replace** every ``attn.mat_qkv``, ``attn.proj``, ``ffn.fc1``, ``ffn.fc2`` by a
   :class:`QuantLinear` (GHT fused into the QKV/FC1 weights in float64,
   weights quantized once, activations quantized dynamically).
3. **MixedFormat** (``cfg.mixedformat``): per layer, pick the element format
   with the lowest GEMM-output MSE on calibration inputs.
4. **KV cache** (``cfg.kv_fmt``): install the KV quantizer in every attention.

A quantized model is saved with :func:`save_quantized` (the full state dict,
config, per-layer formats, GALT vectors) and rebuilt with
:func:`load_quantized` on top of a freshly built VAR of the same shape.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibrate import CalibrationSet, quantized_layer_names
from .config import QUANTIZED_LAYERS, QuantConfig
from .galt import GaltResult, can_fold, fold_smoothing_into_block, learn_smoothing
from .kvquant import install_kv_quantizer
from .mixedformat import choose_format
from .qlinear import GHT_ROLES, ROLES, LayerQuant, QuantLinear, ght_signs

__all__ = ["QuantizationReport", "quantize_model", "replace_linears", "quant_linears",
           "save_quantized", "load_quantized", "SAVE_FORMAT"]

SAVE_FORMAT = "fpqvar-quantized-var"
_SAVE_VERSION = 1


@dataclass
class QuantizationReport:
    """What :func:`quantize_model` did."""

    config: QuantConfig
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    galt: dict[str, GaltResult] = field(default_factory=dict)
    galt_folded: bool = True
    mixed_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    kv_quantized: bool = False

    def galt_vectors(self) -> dict[str, torch.Tensor]:
        return {k: r.smooth for k, r in self.galt.items()}

    def summary(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(),
                "layers": {k: v.to_dict() for k, v in self.layers.items()},
                "galt": {k: {"initial_loss": r.initial_loss, "best_loss": r.best_loss,
                             "best_epoch": r.best_epoch} for k, r in self.galt.items()},
                "galt_folded": self.galt_folded, "mixed_scores": self.mixed_scores,
                "kv_quantized": self.kv_quantized}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def quant_linears(var: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear modules of ``var`` by module path."""
    return {n: m for n, m in var.named_modules() if isinstance(m, QuantLinear)}


def _check_model(var: nn.Module, cfg: QuantConfig) -> None:
    names = quantized_layer_names(var)
    for n in names:
        if not isinstance(var.get_submodule(n), nn.Linear):
            raise TypeError(f"{n} is a {type(var.get_submodule(n)).__name__}, not nn.Linear: "
                            "is this model already quantized?")
    C = var.blocks[0].attn.mat_qkv.in_features
    for label, g in (("weight group size", cfg.w_group_size if cfg.w_granularity == "group" else 0),
                     ("activation group size", cfg.a_group_size if cfg.a_granularity == "group" else 0),
                     ("GHT group", cfg.ght_group if cfg.ght else 0)):
        if g and C % g:
            raise ValueError(f"{label} {g} does not divide the embedding dim C={C} "
                             f"(C = 64*depth: use an even depth, e.g. 16/20/24/30)")


def replace_linears(var: nn.Module, cfg: QuantConfig,
                    layer_quant: dict[str, LayerQuant] | None = None,
                    online_smooth: dict[str, torch.Tensor] | None = None) -> dict[str, LayerQuant]:
    """Swap the four block linears for :class:`QuantLinear` (in place).

    ``layer_quant`` overrides per-layer formats (default: from ``cfg``);
    ``online_smooth`` gives GALT vectors applied online (not folded).
    Returns the per-layer :class:`LayerQuant` used.
    """
    used = {}
    for name in quantized_layer_names(var):
        rel = name.split(".", 2)[2]
        lq = (layer_quant or {}).get(name) or LayerQuant.for_role(cfg, ROLES[rel])
        s = (online_smooth or {}).get(name)
        lin = var.get_submodule(name)
        _set_submodule(var, name, QuantLinear.from_linear(lin, cfg, lq, smooth=s,
                                                          online_smooth=s is not None))
        used[name] = lq
    return used


def _batches(x: torch.Tensor, size: int) -> Callable[[], list[torch.Tensor]]:
    chunks = list(torch.split(x, size))
    return lambda: chunks


def quantize_model(var: nn.Module, cfg: QuantConfig, calib: CalibrationSet | None = None, *,
                   max_tokens: int | None = None, seed: int = 0, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> QuantizationReport:
    """Quantize ``var`` in place according to ``cfg`` (see module docstring).

    ``calib`` is required when the config uses GALT or MixedFormat.
    ``max_tokens`` caps the calibration rows per layer used by GALT and
    MixedFormat (uniform random subset drawn with ``seed``; ``None`` = all).
    """
    from tqdm.auto import tqdm

    report = QuantizationReport(config=cfg)
    _check_model(var, cfg)
    if (cfg.galt or cfg.mixedformat) and calib is None:
        raise ValueError(f"preset {cfg.name!r} needs a calibration set (GALT/MixedFormat): "
                         "run `fpqvar-quant calibrate` and pass --calib DIR")
    if calib is not None:
        missing = [n for n in quantized_layer_names(var) if n not in calib.layers]
        if missing and (cfg.galt or cfg.mixedformat):
            raise ValueError(f"calibration set lacks layers {missing[:3]}...: it was made for "
                             "another model depth")
    dev = var.blocks[0].attn.mat_qkv.weight.device
    dtype = var.blocks[0].attn.mat_qkv.weight.dtype
    signs = ght_signs(cfg) if cfg.ght else None

    def rows(name: str) -> torch.Tensor:
        return torch.from_numpy(calib.token_matrix(name, max_tokens, seed)).to(dev, dtype)

    online: dict[str, torch.Tensor] = {}
    if cfg.galt:
        blocks = list(enumerate(var.blocks))
        for i, blk in tqdm(blocks, desc="GALT", disable=not progress, unit="block"):
            vec = {}
            for rel, role in ROLES.items():
                if role not in GHT_ROLES:
                    continue
                name = f"blocks.{i}.{rel}"
                lin = var.get_submodule(name)
                res = learn_smoothing(lin.weight, _batches(rows(name), cfg.galt_batch_tokens),
                                      cfg, LayerQuant.for_role(cfg, role), signs=signs)
                report.galt[name] = res
                vec[role] = res.smooth.to(dev)
                if log:
                    log(f"GALT {name}: mse {res.initial_loss:.4g} -> {res.best_loss:.4g} "
                        f"(epoch {res.best_epoch})")
            if can_fold(blk):
                fold_smoothing_into_block(blk, vec.get("qkv"), vec.get("fc1"))
            else:
                report.galt_folded = False
                online[f"blocks.{i}.attn.mat_qkv"] = vec["qkv"]
                online[f"blocks.{i}.ffn.fc1"] = vec["fc1"]

    float_layers = {n: var.get_submodule(n) for n in quantized_layer_names(var)}
    if cfg.quantizes_linears:
        report.layers = replace_linears(var, cfg, online_smooth=online)

    if cfg.mixedformat:
        qls = quant_linears(var)
        for name in tqdm(list(qls), desc="MixedFormat", disable=not progress, unit="layer"):
            x = rows(name)
            r = report.galt.get(name)
            if r is not None and name not in online:  # folded: the layer now sees x * s
                x = x * r.smooth.to(x)
            with torch.no_grad():
                pairs = [(xb, float_layers[name](xb)) for xb in torch.split(x, 4096)]
            best, scores = choose_format(qls[name], pairs, cfg.mixed_candidates)
            report.mixed_scores[name] = scores
            report.layers[name] = qls[name].lq
            if log:
                log(f"MixedFormat {name}: {best} " +
                    " ".join(f"{k}={v:.4g}" for k, v in scores.items()))

    if cfg.kv_fmt is not None:
        install_kv_quantizer(var, cfg)
        report.kv_quantized = True
    var.eval()
    return report


def save_quantized(var: nn.Module, report: QuantizationReport, path: str | Path,
                   model_kwargs: dict[str, Any]) -> None:
    """Save a quantized VAR: full state dict + config + per-layer formats + GALT
    vectors. ``model_kwargs`` are the ``build_vae_var`` keywords that rebuild
    the FP model shape (depth, patch_nums, shared_aln, ...)."""
    from ..safeio import atomic_path

    with atomic_path(path) as tmp:     # an interrupted save never leaves a partial file at path
        _save(tmp, {"format": SAVE_FORMAT, "version": _SAVE_VERSION,
                "config": report.config.to_dict(),
                "layers": {k: v.to_dict() for k, v in report.layers.items()},
                "online_smooth": {k: v.cpu() for k, v in report.galt_vectors().items()
                                  if not report.galt_folded},
                "galt": {k: v.cpu() for k, v in report.galt_vectors().items()},
                "galt_folded": report.galt_folded,
                "kv_quantized": report.kv_quantized,
                "model_kwargs": dict(model_kwargs),
                "state_dict": {k: v.cpu() for k, v in var.state_dict().items()}})


def _save(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def is_quantized_file(path: str | Path) -> bool:
    """Whether ``path`` is a file written by :func:`save_quantized` (a cheap sniff of the
    zip's pickle record, no tensor is read): the only kind ``quantize --overwrite`` replaces."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            return pkl is not None and SAVE_FORMAT.encode() in z.read(pkl)
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def read_quantized(path: str | Path) -> dict[str, Any]:
    """Load and validate a file written by :func:`save_quantized`."""
    from ..var.checkpoint import verify_file

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"quantized model {p} not found (write it with `fpqvar-quant quantize`)")
    verify_file(p, what="quantized model")          # CRC-32 of every member (flipped bytes)
    if not is_quantized_file(p):
        raise ValueError(f"{p} is not a quantized VAR written by fpqvar-quant quantize")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:     # torch.load raises many types for damaged files
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{p}: cannot read the quantized model ({type(e).__name__}: {first}); "
                         "the file is damaged: run `fpqvar-quant quantize` again") from None
    if not isinstance(obj, dict) or obj.get("format") != SAVE_FORMAT:
        raise ValueError(f"{p} is not a quantized VAR written by fpqvar-quant quantize")
    if obj.get("version") != _SAVE_VERSION:
        raise ValueError(f"{p}: unsupported version {obj.get('version')}")
    return obj


def _check_fits(var: nn.Module, sd: dict[str, torch.Tensor], where: Any) -> None:
    """One line naming the first mismatches when ``sd`` does not fit ``var`` (torch's own
    message lists every key over many lines)."""
    want = var.state_dict()
    if not isinstance(sd, dict):
        raise ValueError(f"{where}: no state dict inside; run `fpqvar-quant quantize` again")
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want]
    shape = [f"{k} {tuple(sd[k].shape)} != {tuple(want[k].shape)}" for k in want
             if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(want[k].shape)]
    if missing or extra or shape:
        parts = [f"{len(v)} {what} (first: {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", extra), ("of another shape", shape)) if v]
        raise ValueError(f"{where}: its weights do not fit the model shape it records: "
                         f"{'; '.join(parts)}; the file is damaged or edited: run "
                         "`fpqvar-quant quantize` again")


def load_quantized(var: nn.Module, path_or_obj: str | Path | dict[str, Any], *,
                   where: str | Path | None = None) -> QuantizationReport:
    """Turn a freshly built FP ``var`` (same shape) into the saved quantized model
    (``where`` names the file in errors when ``path_or_obj`` is already loaded)."""
    obj = path_or_obj if isinstance(path_or_obj, dict) else read_quantized(path_or_obj)
    cfg = QuantConfig.from_dict(obj["config"])
    layers = {k: LayerQuant(**v) for k, v in obj["layers"].items()}
    online = {k: torch.ones_like(v) for k, v in obj["online_smooth"].items()}
    report = QuantizationReport(config=cfg, galt_folded=obj["galt_folded"])
    if cfg.quantizes_linears:
        report.layers = replace_linears(var, cfg, layers, online_smooth=online)
    _check_fits(var, obj["state_dict"],
                where if where is not None else
                (path_or_obj if not isinstance(path_or_obj, dict) else "the quantized model"))
    var.load_state_dict(obj["state_dict"], strict=True)
    for q in quant_linears(var).values():
        q.refresh_weight_cache()
    if obj["kv_quantized"]:
        install_kv_quantizer(var, cfg)
        report.kv_quantized = True
    report.galt = {k: GaltResult(smooth=v, best_loss=float("nan"), initial_loss=float("nan"),
                                 best_epoch=-1) for k, v in obj["galt"].items()}
    var.eval()
    return report
