"""The quantized model package on the host side: build (or reuse) a package of the
shipped tiny digits VAR, load and check it, and build the host's float models from it
(:class:`HostModel`: class embedding, adaLN linears, first input, head; the fake-quant
reference model).  Used by the host loop (:mod:`fpqvar_hw.host.driver`), the bundle
runner (:mod:`fpqvar_hw.host.run`) and the RTL testbench (:mod:`fpqvar_hw.host.rtl_tb`).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fpqvar_quant.safeio import atomic_write_text

__all__ = ["DEFAULT_PRESET", "DEFAULT_OUT", "PackageSettings", "build_package", "build_random_package",
           "load_shipped_model",
           "load_package_checked", "fakequant_model_from_package", "host_model_from_package",
           "HostModel", "ADALN_NAMES"]

REPO = Path(__file__).resolve().parents[2]
#: the driver's default output folder (the package cache is its ``cache/``)
DEFAULT_OUT = REPO / "build" / "tiny-image"
#: The W4A4 FPQVAR preset (DFQ on the FC2 input, GHT on QKV/FC1, GALT folded into adaLN;
#: FP16 KV cache, which is what the accelerator's attention implements).
DEFAULT_PRESET = "fp4-fpqvar"


# --------------------------------------------------------------------------- package
@dataclass(frozen=True)
class PackageSettings:
    """How the tiny model's quantized package is made (the digits demo's settings:
    ``fpqvar_quant.digits.demo``: 100 FP32 calibration images, GALT with 20 epochs on at
    most 2048 calibration rows per layer)."""

    preset: str = DEFAULT_PRESET
    galt_epochs: int = 20
    max_tokens: int = 2048

    def key(self, model_dir: Path) -> str:
        """Cache folder name: the settings plus a hash of the shipped model files."""
        h = hashlib.sha256()
        for name in ("model.json", "vqvae.pt", "var.pt"):
            h.update((model_dir / name).read_bytes())
        return f"{self.preset}-e{self.galt_epochs}-t{self.max_tokens}-{h.hexdigest()[:10]}"


def build_package(settings: PackageSettings = PackageSettings(), cache_root: Path = DEFAULT_OUT / "cache",
                  *, model_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """The quantized package of the shipped digits VAR under ``settings``; built once
    (about a minute: calibration + GALT) and cached in ``cache_root/<key>/package``."""
    from fpqvar_quant.digits.classifier import ASSET_DIR
    from fpqvar_quant.ptq.config import get_preset

    model_dir = Path(model_dir or ASSET_DIR)
    cfg = get_preset(settings.preset)            # unknown preset -> ValueError naming the known ones
    folder = Path(cache_root) / settings.key(model_dir)
    pkg = folder / "package"
    if (pkg / "manifest.json").is_file():
        return pkg
    import tempfile

    from fpqvar_quant.digits.evaluate import make_calibration
    from fpqvar_quant.digits.model import load_digits_model
    from fpqvar_quant.ptq.export import export_package
    from fpqvar_quant.ptq.quantize_model import quantize_model

    t0 = time.time()
    log(f"building the {settings.preset} package of the digits VAR (cached in {folder}) ...")
    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"galt_epochs": settings.galt_epochs} if cfg.galt else {}
    with tempfile.TemporaryDirectory(prefix="fpqvar_tiny_calib_") as tmp:
        calib = None
        if cfg.galt or cfg.mixedformat:
            calib = make_calibration(load_digits_model(model_dir), Path(tmp) / "calib")
        model = load_digits_model(model_dir)
        report = quantize_model(model.var, cfg.replace(**overrides), calib, max_tokens=settings.max_tokens,
                                seed=0, progress=False)
        tmp_pkg = folder / "package.tmp"
        export_package(model.var, report, tmp_pkg, overwrite=True)
    tmp_pkg.rename(pkg)
    atomic_write_text(folder / "settings.json", json.dumps(asdict(settings), indent=1) + "\n")
    log(f"package written to {pkg} ({time.time() - t0:.1f} s)")
    return pkg


def build_random_package(depth: int, *, preset: str = "fp4-dfq-ght", seed: int = 0,
                         cache_root: Path = DEFAULT_OUT / "cache") -> Path:
    """A package of the digits VAR's architecture at another ``depth`` (``C = 64 * depth``,
    ``depth`` heads of 64, like :class:`fpqvar_hw.flow.perf.ModelSpec`) with the official
    random initialisation (``torch.manual_seed(seed)``), quantized with ``preset`` (one that
    needs no calibration data).  Its weights mean nothing: it exists to time the RTL top on
    a wider model (``benchmarks/top_calibration.py``); the top's cycles do not depend on the
    values.  Built once (seconds) and cached in ``cache_root/random-d<depth>-...``."""
    import tempfile

    import torch

    from fpqvar_quant.digits.model import ModelConfig, build_models
    from fpqvar_quant.ptq.config import get_preset
    from fpqvar_quant.ptq.export import export_package
    from fpqvar_quant.ptq.quantize_model import quantize_model

    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    cfg = get_preset(preset)
    if cfg.galt or cfg.mixedformat:
        raise ValueError(f"preset {preset!r} needs calibration data; a random package takes one "
                         f"that does not (e.g. fp4-dfq-ght)")
    from fpqvar_quant.digits.classifier import ASSET_DIR
    meta = json.loads((Path(ASSET_DIR) / "model.json").read_text())
    mc = ModelConfig.from_dict({**meta["config"], "depth": depth, "embed_dim": 64 * depth,
                                "num_heads": depth})
    key = hashlib.sha256(json.dumps([mc.to_dict(), preset, seed], sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_root) / f"random-d{depth}-{preset}-s{seed}-{key}"
    pkg = folder / "package"
    if (pkg / "manifest.json").is_file():
        return pkg
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    _, var = build_models(mc)
    var.eval()
    report = quantize_model(var, cfg, None, seed=seed, progress=False)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        export_package(var, report, Path(tmp) / "package", overwrite=True)
        (Path(tmp) / "package").rename(pkg)
    return pkg


_SHIPPED: dict[str, Any] = {}


def load_shipped_model(model_dir: Path | None = None) -> Any:
    """``fpqvar_quant.digits.model.load_digits_model`` once per process and directory; every
    call returns a fresh deep copy of the VAR (callers quantize or overwrite it) sharing the
    (frozen, never modified) VQVAE."""
    import copy
    import dataclasses

    from fpqvar_quant.digits.model import load_digits_model

    key = str(model_dir)
    if key not in _SHIPPED:
        _SHIPPED[key] = load_digits_model() if model_dir is None else load_digits_model(Path(model_dir))
    m = _SHIPPED[key]
    return dataclasses.replace(m, var=copy.deepcopy(m.var, {id(m.vae): m.vae}))


def _check_package_matches(manifest: dict[str, Any], var: Any, where: Path) -> None:
    """The package must describe the loaded VAR (same shapes)."""
    from fpqvar_quant.ptq.export import model_dims

    want = model_dims(var)
    got = manifest.get("model", {})
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        raise ValueError(f"package {where} was made for another model: "
                         + ", ".join(f"{k} {a} (package) != {b} (digits VAR)" for k, (a, b) in diff.items())
                         + "; rebuild it with `python -m fpqvar_hw.host.driver --rebuild-package`")


def load_package_checked(package: Path) -> Any:
    """``fpqvar_quant.ptq.package.load_package`` with an error that says what to pass."""
    from fpqvar_quant.ptq.package import load_package

    package = Path(package)
    if not package.is_dir():
        raise FileNotFoundError(f"package directory {package} does not exist; omit --package to build "
                                "the tiny model's package under build/tiny-image/cache, or pass a directory "
                                "written by `fpqvar-quant export`")
    return load_package(package)


def fakequant_model_from_package(pkg: Any, model_dir: Path | None = None) -> Any:
    """The torch fake-quant digits model equal to the one the package was exported from.

    Rebuilt from the package alone: the shipped FP32 model, its four block linears
    replaced by ``QuantLinear`` with the package's formats, their (transformed-domain)
    weights set to the package's dequantized weights and re-quantized (the codes and
    scales are checked to equal the package's, so nothing drifts), every float
    parameter (GALT-folded adaLN included) taken from the package, the KV quantizer
    installed when the package quantizes the KV cache. Returns a ``DigitsModel``."""
    import torch

    from fpqvar_quant.ptq.config import QuantConfig
    from fpqvar_quant.ptq.kvquant import install_kv_quantizer
    from fpqvar_quant.ptq.qlinear import LayerQuant
    from fpqvar_quant.ptq.quantize_model import quant_linears, replace_linears

    model = load_shipped_model(model_dir)
    var = model.var
    _check_package_matches(pkg.manifest, var, pkg.root)
    cfg = QuantConfig.from_dict(pkg.manifest["quant_config"])
    lqs = {n: LayerQuant(**{k: L.meta[k] for k in ("role", "w_fmt", "a_fmt", "dfq", "ght")})
           for n, L in pkg.layers.items()}
    online = {n: torch.from_numpy(L.smooth.copy()) for n, L in pkg.layers.items() if L.meta["smooth_online"]}
    if cfg.quantizes_linears:
        replace_linears(var, cfg, lqs, online_smooth=online)
    qls = quant_linears(var)
    if set(qls) != set(pkg.layers):
        raise ValueError(f"package {pkg.root} quantizes {sorted(pkg.layers)[:3]}..., the model has "
                         f"{sorted(qls)[:3]}...")
    with torch.no_grad():
        for name, q in qls.items():
            L = pkg.layers[name]
            q.weight.copy_(torch.from_numpy(L.dequantized_weight()))
            q.refresh_weight_cache()
            if L.codes is not None and not (np.array_equal(q.w_codes.numpy(), L.codes)
                                            and np.array_equal(q.w_dequant.numpy(), L.dequantized_weight())):
                raise ValueError(f"{name}: re-quantizing the package's weight does not give its codes back")
            if L.bias is not None:
                q.bias.copy_(torch.from_numpy(L.bias))
        sd = var.state_dict()
        unknown = sorted(set(pkg.float_params) - set(sd))
        if unknown:
            raise ValueError(f"package {pkg.root} has float parameters the model lacks: {unknown[:5]}")
        for k, v in pkg.float_params.items():
            sd[k].copy_(torch.from_numpy(v))
    if pkg.manifest.get("kv_cache"):
        install_kv_quantizer(var, cfg)
    var.eval()
    return model


def host_model_from_package(pkg: Any, model_dir: Path | None = None) -> "HostModel":
    """The host side of the accelerated model: the shipped VAR's structure and VQVAE with
    every float parameter taken from the package (class / position / level embeddings,
    word embedding, GALT-folded adaLN linears, head adaLN and head)."""
    import torch

    model = load_shipped_model(model_dir)
    _check_package_matches(pkg.manifest, model.var, pkg.root)
    sd = model.var.state_dict()
    with torch.no_grad():
        for k, v in pkg.float_params.items():
            if k not in sd:
                raise ValueError(f"package {pkg.root} has a float parameter {k!r} the model lacks")
            sd[k].copy_(torch.from_numpy(v))
    return HostModel(model.var, model.vae, name=f"host({pkg.manifest['quant_config']['name']})")


# --------------------------------------------------------------------------- host side
ADALN_NAMES = ("gamma1", "gamma2", "scale1", "scale2", "shift1", "shift2")
"""Order of ``AdaLNSelfAttn.modulation``'s outputs (and of the six [R, C] rows per block)."""


class HostModel:
    """The host's part of a VAR image (torch float32, no grad). ``var`` supplies the float
    parameters; its blocks are never run here (that is the backend's job)."""

    def __init__(self, var: Any, vae: Any, name: str = "host") -> None:
        self.var, self.vae, self.name = var, vae, name
        self.patch_nums = tuple(int(p) for p in var.patch_nums)
        self.C, self.depth, self.num_classes = int(var.C), len(var.blocks), int(var.num_classes)

    def check_labels(self, labels: Sequence[int]) -> "Any":
        import torch

        labels = [int(k) for k in labels]
        if not labels:
            raise ValueError("need at least one class label")
        bad = [k for k in labels if not 0 <= k <= self.num_classes]
        if bad:
            raise ValueError(f"class index {bad[0]} out of range: the digits VAR has classes 0..{self.num_classes - 1} "
                             f"and {self.num_classes} = unconditional")
        return torch.tensor(labels, dtype=torch.long)

    def condition(self, label_B: "Any") -> "Any":
        """``cond_BD`` [2B, C]: class embeddings of the labels, then B unconditional rows."""
        import torch

        return self.var.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))

    def adaln(self, cond_BD: "Any") -> list[np.ndarray]:
        """Per block the six modulation vectors as FP32 ``[R, 6, C]`` in :data:`ADALN_NAMES`
        order (computed once per image)."""
        import torch

        out = []
        for blk in self.var.blocks:
            mods = blk.modulation(cond_BD)
            out.append(np.ascontiguousarray(torch.stack([m[:, 0] for m in mods], dim=1).numpy(),
                                            dtype=np.float32))
        return out

    def first_input(self, cond_BD: "Any") -> "Any":
        """Step 0 input [R, first_l, C]: sos + ``pos_start`` + level/position embedding."""
        var = self.var
        R = cond_BD.shape[0]
        return (cond_BD.unsqueeze(1).expand(R, var.first_l, -1) + var.pos_start.expand(R, var.first_l, -1)
                + var.lvl_pos()[:, :var.first_l])

    def logits(self, x: "Any", cond_BD: "Any") -> "Any":
        """Head logits [R, l, V] of the last block's output (``VAR.get_logits``)."""
        return self.var.get_logits(x, cond_BD)
