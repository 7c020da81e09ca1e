"""Reader of the FPQVAR "quantized model package" - numpy and json only.

This module imports nothing but the standard library and numpy, so the
hardware compiler and golden model can read packages without torch (a test
runs it with torch import blocked). The writer is :mod:`fpqvar_quant.ptq.export`.

Package layout, version 1: a directory with

``manifest.json``::

    {"format": "fpqvar-quant-package", "version": 1,
     "model": {"depth", "embed_dim", "num_heads", "head_dim", "mlp_hidden",
               "patch_nums", "shared_aln", "num_classes", "vocab_size"},
     "quant_config": {... QuantConfig fields ...},
     "element_formats": {name: {"kind", "bits", "ebits", "mbits", "bias", "max_value",
                                "values": [float value of code 0 .. 2^bits-1]}},
     "scale_format": {"name": "fp16"|"fp32"|"e8m0"|"e4m3", "storage": "uint16"|...,
                      "encoding": "..."},
     "hadamard": null | {"group": 128, "seed": 42, "signs": "<array key>" (int8 +-1),
                         "matrix": "<array key>" (float64 [n, n], T(x) = x H per group),
                         "definition": "...", "fused_into": ["qkv", "fc1"]},
     "kv_cache": null | {"fmt", "group_size", "scale_format"},
     "layers": {module path: {"role", "in_features", "out_features", "w_fmt", "a_fmt",
                "dfq", "ght", "w_granularity", "w_group_size", "a_granularity",
                "a_group_size", "codes": key|null, "scales": key|null,
                "weight": key|null (float weight when w_fmt is null),
                "bias": key|null, "smooth": key|null, "smooth_online": bool,
                "dfq_formats": {"negative": fmt, "positive": fmt} (DFQ layers only)}},
     "galt": {module path: key} (learned vectors, for reference; folded unless
              the layer says smooth_online),
     "float_params": {state-dict key: array key} (everything not quantized)}

``arrays.npz``: the arrays named by the keys above.

* ``codes``: ``uint8 [out, in]``, one element code per byte, packed like
  ml_dtypes (sign | exponent | mantissa in the low ``bits`` bits; integers in
  two's complement). Value = ``element_formats[w_fmt]["values"][code]``.
* ``scales``: ``[out, in / g]`` raw bits of the scale format: fp16 -> uint16
  IEEE binary16 bits, fp32 -> uint32 bits, e8m0 -> uint8 (2^(code-127)),
  e4m3 -> uint8 e4m3fn codes. Group ``j`` of row ``r`` covers input columns
  ``[j g, (j+1) g)`` with ``g = in / scales.shape[1]``.
* Weights are stored in the transformed domain the hardware multiplies with:
  ``W' = (W / s) H_G`` for GHT layers (GALT folded), so
  ``y = Q(T(x)) @ dequant(W')^T + bias`` with ``T(x) = (x [* s]) H_G``.
* Float arrays are float32.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PACKAGE_FORMAT", "PACKAGE_VERSION", "PACKAGE_KIND", "QuantizedPackage", "LayerPackage",
           "load_package", "decode_scales"]

PACKAGE_FORMAT = "fpqvar-quant-package"
PACKAGE_VERSION = 1
#: ``kind`` of the output marker (``fpqvar_quant.safeio``) of a package folder
PACKAGE_KIND = "fpqvar-package"


def decode_scales(bits: np.ndarray, scale_format: str) -> np.ndarray:
    """Scale values (float32) from their raw stored bits."""
    if scale_format == "fp16":
        return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)
    if scale_format == "fp32":
        return np.asarray(bits, dtype=np.uint32).view(np.float32).copy()
    if scale_format == "e8m0":
        b = np.asarray(bits, dtype=np.uint8).astype(np.int32)
        out = np.ldexp(np.float32(1.0), b - 127).astype(np.float32)
        return np.where(b == 255, np.float32(np.nan), out)
    if scale_format == "e4m3":
        b = np.asarray(bits, dtype=np.uint8).astype(np.int32)
        sign = np.where(b & 0x80, -1.0, 1.0)
        e, m = (b >> 3) & 0xF, b & 7
        val = np.where(e == 0, np.ldexp(m / 8.0, -6), np.ldexp(1 + m / 8.0, e - 7))
        val = np.where((b & 0x7F) == 0x7F, np.nan, val)
        return (sign * val).astype(np.float32)
    raise ValueError(f"unknown scale format {scale_format!r}")


@dataclass(frozen=True)
class LayerPackage:
    """One quantized linear as stored in a package."""

    name: str
    meta: dict[str, Any]
    codes: np.ndarray | None
    scale_bits: np.ndarray | None
    weight_float: np.ndarray | None
    bias: np.ndarray | None
    smooth: np.ndarray | None
    value_table: np.ndarray | None
    scale_format: str

    @property
    def scales(self) -> np.ndarray:
        """Decoded scales, float32 ``[out, n_groups]``."""
        if self.scale_bits is None:
            raise ValueError(f"{self.name} has float weights (w_fmt is null)")
        return decode_scales(self.scale_bits, self.scale_format)

    def dequantized_weight(self) -> np.ndarray:
        """``[out, in]`` float32 weight the layer multiplies with (transformed domain)."""
        if self.codes is None:
            return self.weight_float
        out, n = self.codes.shape
        sc = self.scales
        g = n // sc.shape[1]
        vals = self.value_table[self.codes].reshape(out, sc.shape[1], g)
        return (vals * sc[:, :, None]).reshape(out, n).astype(np.float32)


class QuantizedPackage:
    """A loaded package: ``manifest`` (dict), ``layers`` (name -> LayerPackage),
    ``hadamard_signs`` (int8 or None), ``galt`` (name -> vector),
    ``float_params`` (state-dict key -> float32 array)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath} not found: not an fpqvar quantized package "
                                    "(write one with `fpqvar-quant export`)")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        except ValueError as e:
            raise ValueError(f"{mpath}: not valid JSON ({e}); export the package again") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != PACKAGE_FORMAT:
            got = self.manifest.get("format") if isinstance(self.manifest, dict) else None
            raise ValueError(f"{mpath}: format is {got!r}, expected {PACKAGE_FORMAT!r}")
        if self.manifest.get("version") != PACKAGE_VERSION:
            raise ValueError(f"{mpath}: package version {self.manifest.get('version')} is not "
                             f"supported by this reader (version {PACKAGE_VERSION})")
        npz = self.root / "arrays.npz"
        try:
            with np.load(npz, allow_pickle=False) as z:
                self.arrays: dict[str, np.ndarray] = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"{npz} not found: the package is incomplete; export it "
                                    "again") from None
        except Exception as e:    # zipfile: bad CRC-32 / truncated; numpy: bad header
            raise ValueError(f"{npz}: cannot read the package arrays ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the file is corrupt "
                             "or truncated: export the package again") from None
        m = self.manifest
        try:
            _check_manifest(m, self.arrays, mpath)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{mpath}: malformed manifest ({type(e).__name__}: {e}); export the "
                             "package again") from None

        def arr(key: str | None) -> np.ndarray | None:
            return None if key is None else self.arrays[key]

        tables = {name: np.asarray(f["values"], dtype=np.float32)
                  for name, f in m["element_formats"].items()}
        sf = m["scale_format"]["name"]
        self.layers: dict[str, LayerPackage] = {}
        for name, L in m["layers"].items():
            self.layers[name] = LayerPackage(
                name=name, meta=L, codes=arr(L["codes"]), scale_bits=arr(L["scales"]),
                weight_float=arr(L["weight"]), bias=arr(L["bias"]), smooth=arr(L["smooth"]),
                value_table=tables.get(L["w_fmt"]) if L["w_fmt"] else None, scale_format=sf)
        h = m["hadamard"]
        self.hadamard_signs = None if h is None else self.arrays[h["signs"]]
        self.galt = {k: self.arrays[v] for k, v in m["galt"].items()}
        self.float_params = {k: self.arrays[v] for k, v in m["float_params"].items()}

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def hadamard_matrix(self) -> np.ndarray:
        """The orthonormal ``n x n`` block ``H`` (float64) with ``T(x) = x H`` per group,
        exactly as the exporter's transform computes it (stored, not re-derived)."""
        h = self.manifest["hadamard"]
        if h is None:
            raise ValueError("this package uses no Hadamard transform")
        return self.arrays[h["matrix"]]


_SCALE_DTYPES = {"fp16": np.uint16, "fp32": np.uint32, "e8m0": np.uint8, "e4m3": np.uint8}


def _check_manifest(m: dict[str, Any], arrays: dict[str, np.ndarray], where: Path) -> None:
    """Every array the manifest names exists with the dtype and shape the manifest implies,
    every format is known, scales are finite and positive; errors name the layer."""
    from fpqvar_quant.formats import FORMATS     # absolute: the reader also runs as a standalone file

    def need(key: str | None, what: str) -> np.ndarray | None:
        if key is None:
            return None
        if key not in arrays:
            raise ValueError(f"{where}: {what}: array {key!r} is missing from arrays.npz; export "
                             "the package again")
        return arrays[key]

    sf = m["scale_format"]["name"]
    if sf not in _SCALE_DTYPES:
        raise ValueError(f"{where}: unknown scale format {sf!r}; known: {', '.join(_SCALE_DTYPES)}")
    for name in m["element_formats"]:
        if name not in FORMATS:
            raise ValueError(f"{where}: unknown element format {name!r}")
    for name, L in m["layers"].items():
        n_in, n_out = int(L["in_features"]), int(L["out_features"])
        for side in ("w_fmt", "a_fmt"):
            if L[side] is not None and L[side] not in m["element_formats"]:
                raise ValueError(f"{where}: layer {name}: {side} {L[side]!r} is not among the "
                                 "package's element_formats")
        codes, bits = need(L["codes"], f"layer {name} codes"), need(L["scales"], f"layer {name} scales")
        if L["w_fmt"] is not None:
            if codes is None or bits is None:
                raise ValueError(f"{where}: layer {name}: quantized weights need codes and scales")
            if codes.dtype != np.uint8 or codes.shape != (n_out, n_in):
                raise ValueError(f"{where}: layer {name}: codes are {codes.dtype} {codes.shape}, "
                                 f"expected uint8 {(n_out, n_in)}")
            nbits = int(m["element_formats"][L["w_fmt"]]["bits"])
            if codes.size and int(codes.max()) >= 1 << nbits:
                raise ValueError(f"{where}: layer {name}: a weight code exceeds {nbits} bits")
            g = int(L["w_group_size"]) if L["w_granularity"] == "group" else n_in
            want = (n_out, n_in // g) if L["w_granularity"] != "tensor" else None
            if bits.dtype != _SCALE_DTYPES[sf] or (want is not None and bits.shape != want
                                                     and bits.shape != (n_out, 1)):
                raise ValueError(f"{where}: layer {name}: scales are {bits.dtype} {bits.shape}, "
                                 f"expected {np.dtype(_SCALE_DTYPES[sf])} {want}")
            vals = decode_scales(bits, sf)
            if not np.isfinite(vals).all() or (vals <= 0).any():
                bad = int(np.flatnonzero(~np.isfinite(vals) | (vals <= 0))[0])
                raise ValueError(f"{where}: layer {name}: scale #{bad} is "
                                 f"{vals.reshape(-1)[bad]} (raw 0x{int(bits.reshape(-1)[bad]):x}); "
                                 "scales must be finite and positive: export the package again")
        else:
            w = need(L["weight"], f"layer {name} weight")
            if w is None or w.shape != (n_out, n_in):
                raise ValueError(f"{where}: layer {name}: float weight missing or not "
                                 f"{(n_out, n_in)}")
        b = need(L["bias"], f"layer {name} bias")
        if b is not None and (b.shape != (n_out,) or not np.isfinite(b).all()):
            raise ValueError(f"{where}: layer {name}: bias is {b.shape} or not finite, expected "
                             f"finite {(n_out,)}")
        need(L["smooth"], f"layer {name} smooth")
    h = m["hadamard"]
    if h is not None:
        need(h["signs"], "hadamard signs")
        need(h["matrix"], "hadamard matrix")
    for k, v in m["galt"].items():
        need(v, f"GALT vector {k}")
    for k, v in m["float_params"].items():
        a = need(v, f"parameter {k}")
        if a.dtype.kind == "f" and np.isnan(a).any():     # -inf is legitimate (attention masks)
            raise ValueError(f"{where}: parameter {k} has NaN values")


def load_package(root: str | Path) -> QuantizedPackage:
    """Read a package directory written by ``fpqvar-quant export``."""
    return QuantizedPackage(root)
