"""Quantize the embedded digits VAR with a PTQ preset and measure it against FP32.

Shared by ``fpqvar_quant.digits.demo`` and ``benchmarks/quality.py``. Every
method sees the same labels and the same sampling seed, so token agreement with
FP32 and the per-scale teacher-forced KL compare like with like.

Measures (all deterministic for a given model, preset, labels and seed):

- digits-FID and class accuracy of sampled images (``metrics``),
- token agreement: fraction of sampled tokens equal to FP32's at the same seed
  (per scale and overall; a token that differs at an early scale changes the
  condition of every later scale, so this is a trajectory-level measure),
- teacher-forced KL(p_fp32 || p_method) of the next-token distributions on the
  tokenized held-out digits (conditional half, eval mode, no label dropout),
  averaged per scale,
- per-layer GEMM-output SQNR: for every quantized linear, on the inputs it
  receives in the quantized model's own teacher-forced pass,
  10 log10(sum y^2 / sum (y - y_q)^2) where y is the same layer in full
  precision (``(x s) H_G`` times ``((W / s) H_G)^T``, equal to the original
  ``x W^T`` up to float rounding) and y_q its quantized output.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .classifier import ASSET_DIR
from .data import NUM_CLASSES, load_digits_split
from .metrics import SampleQuality, sample_quality
from .model import DigitsModel, SamplingConfig, load_digits_model, to_grey, tokenize

REFERENCE = "fp32"
"""Name of the unquantized reference row (the shipped fp16-stored weights computed in float32)."""
ROLE_OF = {"attn.mat_qkv": "qkv", "attn.proj": "proj", "ffn.fc1": "fc1", "ffn.fc2": "fc2"}
CALIB_IMAGES = 100
CALIB_SEED = 0


def balanced_labels(n_per_class: int) -> torch.Tensor:
    """[0, 1, ..., 9, 0, 1, ...]: ``n_per_class`` of every class, interleaved."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    return torch.arange(NUM_CLASSES).repeat(n_per_class)


def make_calibration(model: DigitsModel, root: Path, *, num_images: int = CALIB_IMAGES, seed: int = CALIB_SEED):
    """The paper's calibration recipe scaled to digits: ``num_images`` FP32 samples,
    classes 0..9 in turn, the model's sampling settings, one batch with ``g_seed = seed``;
    inputs of every quantized layer at every scale, both CFG halves."""
    from ..ptq.calibrate import generate_calibration

    s = model.sampling
    return generate_calibration(model.var, root, num_images=num_images,
                                classes=[i % NUM_CLASSES for i in range(num_images)],
                                batch_size=num_images, cfg=s.cfg, top_k=s.top_k or model.var.V,
                                top_p=s.top_p, seed=seed, dtype="float32", progress=False)


def quantized_model(method: str, calib: Any = None, model_dir: Path = ASSET_DIR,
                    max_tokens: int | None = None, **overrides: Any) -> tuple[DigitsModel, dict[str, Any]]:
    """A fresh copy of the shipped model quantized with preset ``method`` (``"fp32"``:
    unquantized; ``overrides`` change preset fields, ``max_tokens`` caps the calibration rows
    per layer GALT / MixedFormat use). Returns the model and the quantization report summary
    (``{}`` for fp32)."""
    model = load_digits_model(model_dir)
    if method == REFERENCE:
        return model, {}
    from ..ptq.config import get_preset
    from ..ptq.quantize_model import quantize_model

    cfg = get_preset(method, **overrides)
    report = quantize_model(model.var, cfg, calib, max_tokens=max_tokens, seed=CALIB_SEED, progress=False)
    return model, report.summary()


@torch.no_grad()
def sample(model: DigitsModel, labels: torch.Tensor, seed: int,
           sampling: SamplingConfig | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Grey images [B, 1, 8, 8] in [0, 1] and tokens per scale ([B, pn^2] each).

    Same random draws as ``autoregressive_infer_cfg(g_seed=seed)``."""
    s = sampling or model.sampling
    res = model.var.sample_tokens(B=labels.numel(), label_B=labels, g_seed=seed, cfg=s.cfg,
                                  top_k=s.top_k, top_p=s.top_p)
    imgs = model.vae.fhat_to_img(res.f_hat).add_(1).mul_(0.5)
    return to_grey(imgs), res.idx_Bl


@dataclass
class HeldOut:
    """Tokenized held-out digits (teacher-forcing inputs)."""

    labels: torch.Tensor
    tokens: torch.Tensor
    var_input: torch.Tensor


def held_out_tokens(model: DigitsModel, limit: int | None = None) -> HeldOut:
    split = load_digits_split()
    x, y = split.test_images, split.test_labels
    if limit is not None:
        x, y = x[:limit], y[:limit]
    gt, xin = tokenize(model.vae, x)
    return HeldOut(y, gt, xin)


@torch.no_grad()
def teacher_forced_logits(model: DigitsModel, data: HeldOut) -> torch.Tensor:
    model.var.eval()
    return model.var(data.labels, data.var_input).float()


def kl_per_scale(ref_logits: torch.Tensor, logits: torch.Tensor, patch_nums: Sequence[int]) -> list[float]:
    """Mean over tokens of KL(softmax(ref) || softmax(logits)) (nats), per scale."""
    kl = F.kl_div(logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True,
                  reduction="none").sum(-1)  # [B, L]
    out, cur = [], 0
    for pn in patch_nums:
        out.append(kl[:, cur:cur + pn * pn].mean().item())
        cur += pn * pn
    return out


@torch.no_grad()
def layer_sqnr(model: DigitsModel, data: HeldOut) -> dict[str, float]:
    """GEMM-output SQNR (dB) of every quantized linear (see module docstring). Empty for fp32."""
    from ..ptq.quantize_model import quant_linears

    qls = quant_linears(model.var)
    acc: dict[str, list[float]] = {n: [0.0, 0.0] for n in qls}
    handles = []

    def hook(mod, args, out, name):
        x = args[0]
        y = F.linear(mod.transform_input(x), mod.weight.to(x.dtype),
                     None if mod.bias is None else mod.bias.to(x.dtype))
        acc[name][0] += y.double().square().sum().item()
        acc[name][1] += (out.double() - y.double()).square().sum().item()

    for n, m in qls.items():
        handles.append(m.register_forward_hook(lambda mod, a, o, _n=n: hook(mod, a, o, _n)))
    try:
        teacher_forced_logits(model, data)
    finally:
        for h in handles:
            h.remove()
    return {n: (math.inf if e == 0 else 10.0 * math.log10(s / e)) for n, (s, e) in acc.items()}


def sqnr_by_role(per_layer: dict[str, float]) -> dict[str, float]:
    """Mean over blocks of the per-layer SQNR (dB) for qkv / proj / fc1 / fc2."""
    out: dict[str, list[float]] = {}
    for name, v in per_layer.items():
        rel = name.split(".", 2)[2]
        out.setdefault(ROLE_OF[rel], []).append(v)
    return {r: sum(v) / len(v) for r, v in out.items()}


def _uses_galt(method: str) -> bool:
    from ..ptq.config import get_preset

    return method != REFERENCE and get_preset(method).galt


@dataclass
class MethodResult:
    """Everything measured for one method."""

    method: str
    quality: SampleQuality
    token_agreement: float
    token_agreement_per_scale: list[float]
    kl_per_scale: list[float]
    sqnr: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    images: torch.Tensor | None = None

    @property
    def mean_kl(self) -> float:
        return sum(self.kl_per_scale) / len(self.kl_per_scale)

    def row(self) -> dict[str, Any]:
        r = {"method": self.method, "digits_fid": self.quality.digits_fid,
             "class_acc": self.quality.class_accuracy, "mean_kl": self.mean_kl,
             "token_agree": self.token_agreement}
        r.update({f"sqnr_{k}": v for k, v in sqnr_by_role(self.sqnr).items()})
        r["seconds"] = self.seconds
        return r


def evaluate_methods(methods: Sequence[str], *, n_per_class: int = 50, seed: int = 0,
                     held_out_limit: int | None = None, galt_epochs: int | None = None,
                     max_tokens: int | None = None, model_dir: Path = ASSET_DIR, log=print) -> list[MethodResult]:
    """Quantize, sample and measure every method (first the FP32 reference).

    One calibration set (FP32 samples) serves every preset that needs one;
    ``galt_epochs`` / ``max_tokens`` (None: the preset's 50 epochs / all 6000 rows)
    trade GALT quality for time."""
    methods = list(methods)
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)
    labels = balanced_labels(n_per_class)
    results: list[MethodResult] = []
    with tempfile.TemporaryDirectory(prefix="fpqvar_digits_calib_") as tmp:
        ref_model = load_digits_model(model_dir)
        t0 = time.time()
        calib = make_calibration(ref_model, Path(tmp) / "calib")
        log(f"calibration set: {CALIB_IMAGES} FP32 samples ({time.time() - t0:.1f} s)")
        data = held_out_tokens(ref_model, held_out_limit)
        ref_logits = teacher_forced_logits(ref_model, data)
        ref_tokens: list[torch.Tensor] | None = None
        for m in methods:
            t0 = time.time()
            overrides = {"galt_epochs": galt_epochs} if galt_epochs is not None and _uses_galt(m) else {}
            model, _ = quantized_model(m, calib, model_dir, max_tokens, **overrides)
            imgs, toks = sample(model, labels, seed)
            if ref_tokens is None:
                ref_tokens = toks
            agree = [(a == b).float().mean().item() for a, b in zip(toks, ref_tokens)]
            n_tok = [t.shape[1] for t in toks]
            overall = sum(a * n for a, n in zip(agree, n_tok)) / sum(n_tok)
            kl = kl_per_scale(ref_logits, teacher_forced_logits(model, data), model.config.patch_nums)
            sq = layer_sqnr(model, data) if m != REFERENCE else {}
            res = MethodResult(m, sample_quality(imgs, labels), overall, agree, kl, sq,
                               time.time() - t0, imgs)
            results.append(res)
            log(f"{m}: digits-FID {res.quality.digits_fid:.2f}  class acc {res.quality.class_accuracy:.3f}  "
                f"KL {res.mean_kl:.4f}  token agreement {overall:.3f}  ({res.seconds:.1f} s)")
    return results


def format_table(results: Sequence[MethodResult], *, sqnr: bool = True) -> str:
    """A GitHub-markdown table, one row per method."""
    roles = ["qkv", "proj", "fc1", "fc2"] if sqnr else []
    head = ["method", "digits-FID", "class acc", "mean KL vs fp32", "token agree"] + [f"SQNR {r} (dB)" for r in roles]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        by_role = sqnr_by_role(r.sqnr)
        cells = [r.method, f"{r.quality.digits_fid:.2f}", f"{r.quality.class_accuracy:.3f}",
                 f"{r.mean_kl:.4f}", f"{r.token_agreement:.3f}"]
        cells += [f"{by_role[k]:.1f}" if k in by_role else "-" for k in roles]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
