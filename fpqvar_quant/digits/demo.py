"""``fpqvar-quant demo`` / ``python -m fpqvar_quant.digits.demo``: the embedded tiny
VAR (trained on scikit-learn's 8x8 digits, shipped in the package) in FP32,
W4A4 FPQVAR and W6A6 FPQVAR.

Loads the shipped model, builds a 100-image FP32 calibration set, quantizes a
fresh copy per method, samples the same labels with the same seed for every
method, writes a PNG grid (rows = methods, columns = classes 0..9) and prints
the proxy metrics (digits-FID, class accuracy, teacher-forced KL vs FP32, token
agreement with FP32). A few minutes at most on a CPU.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

DEFAULT_METHODS = ("fp32", "fp4-fpqvar", "fp6-fpqvar")
GRID_SAMPLES = 4
"""Samples shown per (method, class) cell of the PNG (a 2x2 mosaic)."""


def save_grid(results, path: Path, samples_per_cell: int = GRID_SAMPLES) -> Path:
    """PNG: one row per method, one column per class; each cell a mosaic of the first
    ``samples_per_cell`` samples of that class (nearest-neighbour upscaled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data import NUM_CLASSES
    from .evaluate import balanced_labels

    side = int(round(samples_per_cell ** 0.5))
    if side * side != samples_per_cell:
        raise ValueError(f"samples_per_cell must be a square number, got {samples_per_cell}")
    n_rows = len(results)
    fig, axes = plt.subplots(n_rows, NUM_CLASSES, figsize=(NUM_CLASSES * 0.9, n_rows * 1.0 + 0.4),
                             squeeze=False)
    for i, r in enumerate(results):
        labels = balanced_labels(r.images.shape[0] // NUM_CLASSES)
        for c in range(NUM_CLASSES):
            imgs = r.images[labels == c][:samples_per_cell, 0]
            if imgs.shape[0] < samples_per_cell:
                raise ValueError(f"need {samples_per_cell} samples per class, got {imgs.shape[0]}")
            rows = [torch.cat(list(imgs[k * side:(k + 1) * side]), dim=1) for k in range(side)]
            ax = axes[i, c]
            ax.imshow(torch.cat(rows, dim=0).numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(str(c), fontsize=9)
            if c == 0:
                ax.set_ylabel(r.method, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle("digits VAR samples (same labels and seed per row)", fontsize=9)
    fig.tight_layout()
    from ..safeio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:      # an interrupted save never leaves half a PNG
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


DEMO_GALT_EPOCHS = 20
DEMO_MAX_TOKENS = 2048


def run(methods: Sequence[str] = DEFAULT_METHODS, *, out: Path = Path("digits_demo.png"), n_per_class: int = 20,
        seed: int = 0, galt_epochs: int | None = DEMO_GALT_EPOCHS, max_tokens: int | None = DEMO_MAX_TOKENS,
        held_out_limit: int | None = None, quiet: bool = False) -> list:
    """Run the demo; returns the ``MethodResult`` list (see ``fpqvar_quant.digits.evaluate``).

    ``held_out_limit`` caps the held-out digits used for the teacher-forced KL / SQNR (all 359 by default)."""
    import torch

    from .evaluate import evaluate_methods, format_table
    from .metrics import real_data_baseline

    if n_per_class < GRID_SAMPLES:
        raise ValueError(f"n_per_class must be >= {GRID_SAMPLES} (the grid shows {GRID_SAMPLES} per class)")
    log = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    results = evaluate_methods(methods, n_per_class=n_per_class, seed=seed, galt_epochs=galt_epochs,
                               max_tokens=max_tokens, held_out_limit=held_out_limit, log=log)
    save_grid(results, out)
    base = real_data_baseline(n_per_class * 10)
    if not quiet:
        print()
        print(format_table(results, sqnr=False))
        print(f"\nreal training digits, same count ({base.n}): digits-FID {base.digits_fid:.2f}, "
              f"class acc {base.class_accuracy:.3f} (real data at this sample count; FID differences of ~1-3 points are noise at this N)")
        print(f"grid written to {out}")
    return results


def add_demo(sub) -> None:
    """Register the ``demo`` subcommand on an argparse subparsers object."""
    p = sub.add_parser("demo", help="quantize the shipped tiny digits VAR, write a sample grid + metrics",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    _add_arguments(p)
    p.set_defaults(func=run_args)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), metavar="M1,M2,...",
                   help=f"comma-separated presets ('fp32' = unquantized; default {','.join(DEFAULT_METHODS)}; "
                        "any `fpqvar-quant quantize --preset` name)")
    p.add_argument("--out", type=Path, default=Path("digits_demo.png"), metavar="PNG",
                   help="sample grid to write (default digits_demo.png)")
    p.add_argument("--n-per-class", type=int, default=20, metavar="N",
                   help="samples per class for the metrics (default 20; >= 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every method (default 0)")
    p.add_argument("--galt-epochs", type=int, default=DEMO_GALT_EPOCHS, metavar="E",
                   help=f"GALT epochs for the fpqvar presets (default {DEMO_GALT_EPOCHS}; the paper's preset: 50)")
    p.add_argument("--max-tokens", type=int, default=DEMO_MAX_TOKENS, metavar="N",
                   help=f"calibration rows per layer for GALT (default {DEMO_MAX_TOKENS} of 6000; 0 = all)")


def _check_grid_path(path: Path) -> None:
    """Before any work: ``--out`` may be a new file or a PNG (an earlier grid, replaced);
    never a folder or another kind of file."""
    from ..safeio import UserError, check_writable_file

    def is_png(p: Path) -> bool:
        try:
            with open(p, "rb") as f:
                return f.read(8) == b"\x89PNG\r\n\x1a\n"
        except OSError:
            return False
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: the sample grid is a PNG; give a path ending in .png")
    check_writable_file(path, overwrite=True, own=is_png)


def run_args(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError("--methods is empty; give e.g. fp32,fp4-fpqvar,fp6-fpqvar")
    from ..ptq.config import PRESETS

    unknown = [m for m in methods if m != "fp32" and m not in PRESETS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose fp32 or one of: {', '.join(PRESETS)}")
    if args.n_per_class < GRID_SAMPLES or args.galt_epochs < 1 or args.max_tokens < 0:
        raise ValueError(f"need --n-per-class >= {GRID_SAMPLES}, --galt-epochs >= 1, --max-tokens >= 0")
    _check_grid_path(Path(args.out))
    run(methods, out=args.out, n_per_class=args.n_per_class, seed=args.seed, galt_epochs=args.galt_epochs,
        max_tokens=args.max_tokens or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fpqvar_quant.digits.demo",
                                description=__doc__.split("\n\n")[1].replace("\n", " "))
    _add_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_args(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
