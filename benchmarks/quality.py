#!/usr/bin/env python3
"""Method comparison on the embedded digits VAR: one table, methods as rows.

Columns: digits-FID and class accuracy of sampled digits (proxies for FID and
IS, see docs/digits.md), mean teacher-forced KL(fp32 || method) over scales,
token agreement with FP32 at the same seed, and the mean GEMM-output SQNR of
the qkv / proj / fc1 / fc2 linears. Every row uses the same labels and seed,
and one shared FP32 calibration set (100 samples) for GALT / MixedFormat.

Writes ``--out-dir``/quality.md (the table, with the command that made it),
quality.json (all numbers, per scale and per layer) and quality_sqnr.png
(per-layer SQNR per method).

    python benchmarks/quality.py                 # all methods, 50 samples per class
    python benchmarks/quality.py --n-per-class 10 --methods fp32,int4-rtn,fp4-fpqvar
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

#: (preset, row label) in table order; labels follow the paper's ablation names.
METHODS: list[tuple[str, str]] = [
    ("fp32", "fp32"),
    ("int4-rtn", "int4-rtn (W4A4)"),
    ("int6-rtn", "int6-rtn (W6A6)"),
    ("fp4-baseline", "fp4-baseline"),
    ("fp4-afpq", "AFPQ"),
    ("fp4-dfq", "fp4 +DFQ"),
    ("fp4-dfq-ght", "fp4 +DFQ +GHT"),
    ("fp4-fpqvar", "fp4 +GALT = FPQVAR"),
    ("fp4-fpqvar-kv6", "fp4 FPQVAR +KV6"),
    ("fp4-mixedformat", "fp4-mixedformat"),
    ("fp6-baseline", "fp6-baseline"),
    ("fp6-fpqvar", "fp6-fpqvar"),
    ("mxfp4", "mxfp4"),
]


def sqnr_plot(rows: list[tuple[str, dict[str, float]]], path: Path) -> None:
    """Per-layer GEMM-output SQNR (dB), one line per quantized method; ``rows`` are
    (label, {layer: dB}) pairs (methods without quantized layers are skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(m, sq) for m, sq in rows if sq]
    if not rows:
        return
    layers = list(rows[0][1])
    short = [n.replace("blocks.", "b").replace("attn.mat_qkv", "qkv").replace("attn.", "").replace("ffn.", "")
             for n in layers]
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(layers) + 2) + 2.6, 4.2))
    for i, (m, sq) in enumerate(rows):
        six = "6" in m
        ax.plot(range(len(layers)), [sq[n] for n in layers], marker="os^vD<>"[i % 7], ms=4, color=cmap(i % 20),
                linestyle="--" if six else "-", label=m)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(short, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("GEMM-output SQNR (dB)")
    ax.set_title("digits VAR: per-layer SQNR (teacher-forced held-out digits)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- outlier block
D16_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def outlier_block_inputs(seed: int, *, C: int = 1024, tokens_per_scale: int = 48, n_outliers: int = 8):
    """Synthetic d16-shaped block (C = 1024, MLP 4096) with channel outliers that move across scales.

    Weights ~ N(0, 0.02^2) (the official init std). For every d16 scale a different set
    of ``n_outliers`` channels of the QKV / FC1 inputs carries a large, consistent-sign
    offset (|20..60|, drawn per scale) on top of N(0, 1) activations, mimicking the
    scale-dependent outlier channels of VAR's adaLN-modulated activations. The proj
    input is N(0, 0.5^2) with milder outliers (x5); the FC2 input is GELU_tanh of the FC1
    output, so it has VAR's bounded negative / long positive shape. Returns the
    weights and, per role, (calibration rows, test rows, scale index per test row); the
    calibration and test tokens are independent draws with the same per-scale outlier
    channels (outliers are a property of the model, the tokens are new).
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    H = 4 * C
    w = {"qkv": torch.randn(3 * C, C, generator=g) * 0.02, "proj": torch.randn(C, C, generator=g) * 0.02,
         "fc1": torch.randn(H, C, generator=g) * 0.02, "fc2": torch.randn(C, H, generator=g) * 0.02}
    per_scale = []
    for _ in D16_PATCH_NUMS:
        idx = torch.randperm(C, generator=g)[:n_outliers]
        mag = (20 + 40 * torch.rand(n_outliers, generator=g)) * torch.where(
            torch.rand(n_outliers, generator=g) < 0.5, -1.0, 1.0)
        per_scale.append((idx, mag))

    def draw(n_per_scale: int):
        rows = {"qkv": [], "proj": [], "fc1": []}
        scale_of = []
        for si, (pn, (idx, mag)) in enumerate(zip(D16_PATCH_NUMS, per_scale)):
            n = min(pn * pn, n_per_scale)
            for role, factor in (("qkv", 1.0), ("fc1", 1.0), ("proj", 0.125)):
                std = 0.5 if role == "proj" else 1.0
                x = torch.randn(n, C, generator=g) * std
                x[:, idx] += mag * factor * (1 + 0.1 * torch.randn(n, n_outliers, generator=g))
                rows[role].append(x)
            scale_of += [si] * n
        out = {k: torch.cat(v) for k, v in rows.items()}
        out["fc2"] = F.gelu(out["fc1"] @ w["fc1"].t(), approximate="tanh")
        return out, torch.tensor(scale_of)

    calib, _ = draw(tokens_per_scale)
    test, scale_of = draw(tokens_per_scale)
    return w, calib, test, scale_of


def outlier_block_table(methods: list[str], *, seed: int = 0, galt_epochs: int | None = None, log=print):
    """Per method and role: GEMM-output SQNR (dB) of one layer built with the PTQ code
    (``QuantLinear``, GALT's ``learn_smoothing``, MixedFormat's ``choose_format``) on
    the synthetic outlier block. Returns {method: {role: dB}}. KV-cache presets are
    skipped (no GEMM changes)."""
    import math

    import torch
    from torch import nn

    from fpqvar_quant.ptq.config import get_preset
    from fpqvar_quant.ptq.galt import learn_smoothing
    from fpqvar_quant.ptq.mixedformat import choose_format
    from fpqvar_quant.ptq.qlinear import GHT_ROLES, LayerQuant, QuantLinear, ght_signs

    w, calib, test, _ = outlier_block_inputs(seed)
    table: dict[str, dict[str, float]] = {}
    for m in methods:
        if m == "fp32":
            continue
        cfg = get_preset(m)
        if cfg.kv_fmt is not None:
            continue
        if galt_epochs is not None and cfg.galt:
            cfg = cfg.replace(galt_epochs=galt_epochs)
        row = {}
        for role, weight in w.items():
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                lin.weight.copy_(weight)
            lq = LayerQuant.for_role(cfg, role)
            smooth = None
            if cfg.galt and role in GHT_ROLES:
                signs = ght_signs(cfg) if cfg.ght else None
                smooth = learn_smoothing(weight, lambda r=role: [calib[r]], cfg, lq, signs=signs).smooth
            q = QuantLinear.from_linear(lin, cfg, lq, smooth=smooth, online_smooth=smooth is not None)
            with torch.no_grad():
                if cfg.mixedformat:
                    choose_format(q, [(calib[role], lin(calib[role]))], cfg.mixed_candidates)
                y, yq = lin(test[role]).double(), q(test[role]).double()
            err = (y - yq).square().sum().item()
            row[role] = math.inf if err == 0 else 10 * math.log10(y.square().sum().item() / err)
        table[m] = row
        log(f"outlier block {m}: " + " ".join(f"{k} {v:.1f} dB" for k, v in row.items()))
    return table


def format_outlier_table(table: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    roles = ["qkv", "proj", "fc1", "fc2"]
    lines = ["| method | " + " | ".join(f"SQNR {r} (dB)" for r in roles) + " |", "|---|" + "---|" * len(roles)]
    for m, row in table.items():
        lines.append(f"| {labels.get(m, m)} | " + " | ".join(f"{row[r]:.1f}" for r in roles) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(m for m, _ in METHODS), metavar="M1,M2,...",
                   help="comma-separated presets (default: all rows of the table)")
    p.add_argument("--n-per-class", type=int, default=50, help="samples per class (default 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every row (default 0)")
    p.add_argument("--galt-epochs", type=int, default=None, help="GALT epochs (default: the preset's 50)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="calibration rows per layer for GALT / MixedFormat (default: all 6000)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--no-outlier-block", action="store_true",
                   help="skip the layer-level table on the synthetic d16-shaped outlier block")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                   help="where quality.md / .json / _sqnr.png go (default benchmarks/results)")
    args = p.parse_args(argv)

    import torch

    from fpqvar_quant.digits.evaluate import evaluate_methods, format_table
    from fpqvar_quant.digits.metrics import real_data_baseline
    from fpqvar_quant.ptq.config import PRESETS

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m != "fp32" and m not in PRESETS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose fp32 or one of: {', '.join(PRESETS)}")
    labels = dict(METHODS)
    t0 = time.time()
    results = evaluate_methods(methods, n_per_class=args.n_per_class, seed=args.seed, galt_epochs=args.galt_epochs,
                               max_tokens=args.max_tokens)
    for r in results:
        r.method = labels.get(r.method, r.method)
    base = real_data_baseline(args.n_per_class * 10)
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = format_table(results)
    note = (f"Real training digits at the same count ({base.n}): digits-FID {base.digits_fid:.2f}, "
            f"class accuracy {base.class_accuracy:.3f}.")
    outlier = {} if args.no_outlier_block else outlier_block_table(methods, seed=args.seed,
                                                                     galt_epochs=args.galt_epochs)
    outlier_md = ""
    if outlier:
        outlier_md = ("\n\nLayer level, synthetic d16-shaped block (C = 1024) with channel outliers that move "
                      "across scales (`outlier_block_inputs`, seed "
                      f"{args.seed}); GEMM-output SQNR of each layer on held-out tokens:\n\n"
                      + format_outlier_table(outlier, labels))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "quality.md").write_text(
        f"Command: `{cmd.strip()}` ({time.time() - t0:.0f} s, torch {torch.__version__}, "
        f"{args.n_per_class} samples per class, seed {args.seed})\n\n{table}\n\n{note}{outlier_md}\n")
    (args.out_dir / "quality.json").write_text(json.dumps({
        "command": cmd.strip(), "n_per_class": args.n_per_class, "seed": args.seed,
        "real_baseline": {"digits_fid": base.digits_fid, "class_acc": base.class_accuracy, "n": base.n},
        "rows": [dict(r.row(), kl_per_scale=r.kl_per_scale, token_agreement_per_scale=r.token_agreement_per_scale,
                      sqnr_per_layer=r.sqnr) for r in results],
        "outlier_block_sqnr": outlier}, indent=2) + "\n")
    sqnr_plot([(r.method, r.sqnr) for r in results], args.out_dir / "quality_sqnr.png")
    print()
    print(table)
    print(note + outlier_md)
    print(f"written: {args.out_dir / 'quality.md'}, quality.json, quality_sqnr.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
