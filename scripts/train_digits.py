#!/usr/bin/env python3
"""Train the embedded default models on scikit-learn's handwritten digits.

Reproducible (seeded, CPU-only, ``torch.use_deterministic_algorithms``) and
small: the whole run takes well under 30 minutes on 2 CPU cores. Writes into
``fpqvar_quant/assets/digits/`` (or ``--out``):

- ``classifier.pt`` / ``classifier.json``: the proxy-metric feature extractor,
- ``vqvae.pt`` / ``var.pt`` (fp16 state dicts) and ``model.json`` (model and
  training config, data hash, final losses, reconstruction error).

Usage::

    python scripts/train_digits.py                 # everything
    python scripts/train_digits.py --only classifier
    python scripts/train_digits.py --only var      # reuses the shipped VQVAE
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fpqvar_quant.digits.classifier import ASSET_DIR, ClassifierConfig, save_classifier, train_classifier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("all", "classifier", "vqvae", "var", "models"), default="all",
                   help="which part to train: classifier, vqvae, var (needs a VQVAE in --out), "
                        "models (vqvae then var) or all (default)")
    p.add_argument("--out", type=Path, default=ASSET_DIR, help=f"output folder (default {ASSET_DIR})")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the results do not depend on a shared machine's core count)")
    p.add_argument("--vqvae-epochs", type=int, default=None, help="override the VQVAE epochs")
    p.add_argument("--var-epochs", type=int, default=None, help="override the VAR epochs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()
    if args.only in ("all", "classifier"):
        cfg = ClassifierConfig()
        model = train_classifier(cfg, verbose=True)
        save_classifier(model, cfg, args.out)
        print(f"classifier written to {args.out} ({time.time() - t0:.0f} s)", flush=True)
    if args.only in ("all", "models", "vqvae", "var"):
        from fpqvar_quant.digits.model import ModelConfig, train_models

        mcfg = ModelConfig()
        overrides = {}
        if args.vqvae_epochs is not None:
            overrides["vqvae_epochs"] = args.vqvae_epochs
        if args.var_epochs is not None:
            overrides["var_epochs"] = args.var_epochs
        if overrides:
            mcfg = mcfg.replace(**overrides)
        parts = {"all": ("vqvae", "var"), "models": ("vqvae", "var")}.get(args.only, (args.only,))
        train_models(mcfg, args.out, parts=parts, verbose=True)
        print(f"models written to {args.out} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
