"""Write a quantized VAR as a "quantized model package" (format in
:mod:`fpqvar_quant.ptq.package`, which reads it with numpy + json only)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..formats import get_format
from ..ght import ght
from ..safeio import atomic_output_dir, prepare_output_dir
from .package import PACKAGE_FORMAT, PACKAGE_KIND, PACKAGE_VERSION
from .qlinear import QuantLinear
from .quantize_model import QuantizationReport, quant_linears

__all__ = ["export_package", "model_dims", "scale_bits"]

_SCALE_STORAGE = {"fp16": ("uint16", "IEEE binary16 bits"),
                  "fp32": ("uint32", "IEEE binary32 bits"),
                  "e8m0": ("uint8", "OCP e8m0fnu: 2^(code-127), 0xFF = NaN"),
                  "e4m3": ("uint8", "OCP e4m3fn code")}


def _dfq_sides() -> dict[str, tuple[str, str]]:
    from ..dfq import DFQSpec
    return {v: tuple(sp.fmt for sp in DFQSpec(variant=v).side_specs())
            for v in ("fp4", "fp6", "afpq")}


_DFQ_SIDES = _dfq_sides()


def model_dims(var: nn.Module) -> dict:
    """Shape facts of a VAR the hardware compiler needs."""
    blk = var.blocks[0]
    C = blk.attn.mat_qkv.in_features
    return {"depth": len(var.blocks), "embed_dim": C, "num_heads": blk.attn.num_heads,
            "head_dim": blk.attn.head_dim, "mlp_hidden": blk.ffn.fc1.out_features,
            "patch_nums": [int(p) for p in var.patch_nums],
            "shared_aln": bool(getattr(blk, "shared_aln", False)),
            "num_classes": int(var.num_classes), "vocab_size": int(var.head.out_features)}


def scale_bits(scales: torch.Tensor, scale_format: str) -> np.ndarray:
    """Raw bits of scale values in ``scale_format`` (exact: scales are representable)."""
    s = scales.detach().cpu().to(torch.float32).numpy()
    if scale_format == "fp16":
        h = s.astype(np.float16)
        if not np.array_equal(h.astype(np.float32), s, equal_nan=True):
            raise ValueError("fp16 scales are not exactly representable in binary16")
        return h.view(np.uint16)
    if scale_format == "fp32":
        return s.view(np.uint32).copy()
    if scale_format == "e8m0":
        return np.asarray(get_format("e8m0fnu").encode(s), dtype=np.uint8)
    if scale_format == "e4m3":
        return np.asarray(get_format("e4m3fn").encode(s), dtype=np.uint8)
    raise ValueError(f"unknown scale format {scale_format!r}")


def _format_entry(name: str) -> dict:
    f = get_format(name)
    vals = [float(v) if np.isfinite(v) else None for v in f.decode(np.arange(1 << f.bits,
                                                                             dtype=np.uint8))]
    return {"kind": f.kind, "bits": f.bits, "ebits": f.ebits, "mbits": f.mbits, "bias": f.bias,
            "max_value": f.max_value, "values": vals}


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def export_package(var: nn.Module, report: QuantizationReport, out_dir: str | Path, *,
                   overwrite: bool = False) -> Path:
    """Write ``var`` (quantized by :func:`quantize_model` or :func:`load_quantized`)
    as a package directory ``out_dir``; returns its path.

    The folder is built beside ``out_dir`` and swapped in whole
    (:func:`fpqvar_quant.safeio.atomic_output_dir`).  An existing ``out_dir`` is replaced
    only with ``overwrite`` and only when it is a package (marker, or a package manifest);
    any other folder raises :class:`fpqvar_quant.safeio.UserError`, whatever the flag."""
    out = prepare_output_dir(out_dir, PACKAGE_KIND, overwrite=overwrite, own=is_package_dir)
    cfg = report.config
    qls = quant_linears(var)
    arrays: dict[str, np.ndarray] = {}
    layers: dict[str, dict] = {}
    fmts: set[str] = set()
    for name, q in qls.items():
        q.refresh_weight_cache()
        lq = q.lq
        entry = {**lq.to_dict(), "in_features": q.in_features, "out_features": q.out_features,
                 "w_granularity": cfg.w_granularity, "w_group_size": cfg.w_group_size,
                 "a_granularity": cfg.a_granularity, "a_group_size": cfg.a_group_size,
                 "codes": None, "scales": None, "weight": None, "bias": None, "smooth": None,
                 "smooth_online": q.smooth is not None}
        for fmt in (lq.w_fmt, lq.a_fmt):
            if fmt:
                fmts.add(fmt)
        if lq.dfq is not None:      # the two grids of the FC2-input dual format
            entry["dfq_formats"] = {"negative": _DFQ_SIDES[lq.dfq][0],
                                    "positive": _DFQ_SIDES[lq.dfq][1]}
            fmts.update(_DFQ_SIDES[lq.dfq])
        def put(field: str, arr: np.ndarray) -> None:
            entry[field] = f"{name}/{field}"
            arrays[entry[field]] = arr

        if lq.w_fmt is None:
            put("weight", _f32(q.weight))
        else:
            codes = q.w_codes.detach().cpu().numpy().astype(np.uint8).reshape(q.out_features,
                                                                               q.in_features)
            sc = q.w_scales.detach().cpu().to(torch.float32)
            sc = sc.expand(q.out_features, 1) if sc.numel() == 1 else sc.reshape(q.out_features, -1)
            put("codes", codes)
            put("scales", scale_bits(sc, cfg.scale_format))
        if q.bias is not None:
            put("bias", _f32(q.bias))
        if q.smooth is not None:
            put("smooth", _f32(q.smooth))
        layers[name] = entry
    if cfg.kv_fmt:
        fmts.add(cfg.kv_fmt)
    hadamard = None
    if cfg.ght:
        signs = next(q.ght_signs for q in qls.values() if q.ght_signs is not None)
        eye = torch.eye(cfg.ght_group, dtype=torch.float64)
        arrays["hadamard/signs"] = signs.detach().cpu().numpy().astype(np.int8)
        arrays["hadamard/matrix"] = ght(eye, signs.to(torch.float64),
                                        group=cfg.ght_group).numpy()
        hadamard = {"group": cfg.ght_group, "seed": cfg.ght_seed, "signs": "hadamard/signs",
                    "matrix": "hadamard/matrix",
                    "definition": "orthonormal H = rows of ght(I); T(x) = x H for every group of "
                                  f"{cfg.ght_group} channels; weights stored as (W/s) H_G",
                    "fused_into": ["qkv", "fc1"]}
    galt = {}
    for name, vec in report.galt_vectors().items():
        arrays[galt.setdefault(name, f"galt/{name}")] = _f32(vec)
    skip = {f"{n}.{b}" for n in qls for b in ("weight", "bias", "ght_signs", "smooth")}
    float_params = {}
    for k, v in var.state_dict().items():
        if k in skip or not v.is_floating_point():
            continue
        arrays[float_params.setdefault(k, f"fp/{k}")] = _f32(v)
    manifest = {
        "format": PACKAGE_FORMAT, "version": PACKAGE_VERSION, "model": model_dims(var),
        "quant_config": cfg.to_dict(),
        "element_formats": {f: _format_entry(f) for f in sorted(fmts)},
        "scale_format": {"name": cfg.scale_format, "storage": _SCALE_STORAGE[cfg.scale_format][0],
                         "encoding": _SCALE_STORAGE[cfg.scale_format][1]},
        "hadamard": hadamard,
        "kv_cache": None if cfg.kv_fmt is None else {"fmt": cfg.kv_fmt,
                                                     "group_size": cfg.kv_group_size,
                                                     "scale_format": cfg.kv_scale_format},
        "galt_folded": report.galt_folded,
        "layers": layers, "galt": galt, "float_params": float_params}
    with atomic_output_dir(out, PACKAGE_KIND, overwrite=overwrite, own=is_package_dir) as tmp:
        np.savez(tmp / "arrays.npz", **arrays)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def is_package_dir(path: Path) -> bool:
    """A package folder written before output markers existed (its manifest names the
    package format): replaceable by ``--overwrite`` like a marked one."""
    try:
        return json.loads((Path(path) / "manifest.json").read_text()).get("format") == PACKAGE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
