"""PTQ pipeline speed on a d16-shaped VAR (depth 16, C = 1024, 16 heads, V = 4096)
with random "quantization-test" weights, on the CPU.

Measures, and prints as a table:

1. calibration capture: sampling one image (CFG doubles it to a batch of 2) with
   forward hooks streaming every quantized layer's input to disk (float16);
2. GALT: one training step (forward + STE backward + AdamW update, 4096
   calibration rows, the default batch) of the QKV + FC1 smoothing vectors of
   one block, plus one evaluation pass, extrapolated (labelled) to 50 epochs
   over the paper's 100-image calibration set (136k rows per layer);
3. teacher-forced forward time of the quantized model (fp4-fpqvar structure:
   GHT on QKV/FC1 inputs, DFQ on FC2, fake-quant activations, cached weights)
   against the fp32 model.

By default only the first ``--scales`` scales of the 256px schedule run (7:
patch nums 1..8, 155 tokens of 680) to keep the run short; ``--scales 10`` is
the full schedule. Per-image numbers are for that subset and are labelled.

    python benchmarks/ptq_speed.py [--scales 7] [--threads N] [--repeat 2]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from fpqvar_quant.ptq.calibrate import generate_calibration
from fpqvar_quant.ptq.config import get_preset
from fpqvar_quant.ptq.galt import galt_loss, learn_smoothing
from fpqvar_quant.ptq.models import ModelSpec, build_models
from fpqvar_quant.ptq.qlinear import LayerQuant, ght_signs
from fpqvar_quant.ptq.quantize_model import quantize_model

PN_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
CALIB_ROWS_PAPER = 100 * 2 * sum(p * p for p in PN_256)   # 100 images x 2 CFG halves x 680


def _time(fn, repeat: int = 1) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=int, default=7, choices=range(2, 11), metavar="2..10",
                    help="number of scales of the 256px schedule to run [7]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [torch default]")
    ap.add_argument("--repeat", type=int, default=2, help="repeats of the forward timing [2]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pns = PN_256[:args.scales]
    L = sum(p * p for p in pns)
    spec = ModelSpec(depth=16, patch_nums=pns, vae_ch=32, vocab_size=4096, num_classes=1000,
                     init_seed=0, outlier_channels=8)
    t0 = time.perf_counter()
    vae, var, _ = build_models(spec)
    build_s = time.perf_counter() - t0
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        cs = generate_calibration(var, d, num_images=1, batch_size=1, progress=False)
        cap = time.perf_counter() - t
        nbytes = sum(int(torch.tensor(s.shape).prod()) * 2 for s in cs.shards)
        t = time.perf_counter()
        var.sample_tokens(B=1, label_B=torch.tensor([0]), g_seed=0, cfg=1.5, top_k=900, top_p=0.96)
        plain = time.perf_counter() - t
        rows.append(("calibration capture, 1 image",
                     f"{cap:.2f} s ({nbytes / 2**20:.0f} MiB written)",
                     f"scales {pns}, L={L}; same sampling without hooks {plain:.2f} s"))

        cfg = get_preset("fp4-fpqvar")
        signs = ght_signs(cfg)
        bt = cfg.galt_batch_tokens
        step_s = eval_s = 0.0
        for rel, role in (("attn.mat_qkv", "qkv"), ("ffn.fc1", "fc1")):
            name = f"blocks.0.{rel}"
            x = torch.from_numpy(cs.token_matrix(name)).float()
            x = x.repeat((bt + len(x) - 1) // len(x), 1)[:bt]      # one full GALT batch
            w = var.get_submodule(name).weight
            lq = LayerQuant.for_role(cfg, role)
            ev = _time(lambda: galt_loss([x], w.float(), torch.ones(w.shape[1]), cfg, lq, signs))
            t = time.perf_counter()   # = initial eval + 1 training step + 1 eval
            learn_smoothing(w, lambda: [x], cfg, lq, signs=signs, epochs=1)
            step_s += time.perf_counter() - t - 2 * ev
            eval_s += ev
        n_batches = -(-CALIB_ROWS_PAPER // bt)
        epoch_s = n_batches * (step_s + eval_s)
        rows.append((f"GALT step, one block (QKV + FC1), {bt} rows", f"{step_s:.2f} s",
                     f"+ {eval_s:.2f} s per eval pass (best-loss tracking)"))
        rows.append(("GALT, one block, 50 epochs x 136k rows", f"{50 * epoch_s / 3600:.2f} h "
                     "(extrapolated)", f"{n_batches} batches/epoch x (step + eval); x16 blocks for d16"))

    g = torch.Generator().manual_seed(0)
    x_in = torch.randn(1, L - 1, var.Cvae, generator=g)
    label = torch.tensor([3])
    with torch.no_grad():
        fp = _time(lambda: var(label, x_in), args.repeat)
        qvar = copy.deepcopy(var, {id(vae): vae})
        t = time.perf_counter()
        quantize_model(qvar, get_preset("fp4-dfq-ght"), progress=False)
        qprep = time.perf_counter() - t
        q = _time(lambda: qvar(label, x_in), args.repeat)
    rows.append(("teacher-forced forward, fp32", f"{fp * 1e3:.0f} ms", f"B=1, L={L}"))
    rows.append(("teacher-forced forward, fp4 (GHT+DFQ fake quant)", f"{q * 1e3:.0f} ms",
                 f"{q / fp:.2f}x fp32; offline weight quantization + GHT fusion {qprep:.1f} s"))

    print(f"\nPTQ speed, d16-shaped random VAR (C=1024, 16 blocks), CPU, torch threads "
          f"{torch.get_num_threads()}, model build {build_s:.1f} s")
    w = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print(f"{'step':<{w}}  {'time':<{w2}}  notes")
    print("-" * (w + w2 + 40))
    for a, b, c in rows:
        print(f"{a:<{w}}  {b:<{w2}}  {c}")


if __name__ == "__main__":
    main()
