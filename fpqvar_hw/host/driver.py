"""Host driver: generate an image of the shipped tiny digits VAR with the
transformer blocks executed by an accelerator backend.

Division of work (``docs/top.md``):

* **host** (this module, torch float32): class embedding, the adaLN linears of
  every block (once per image), the first step's input (sos + level/position
  embeddings), the word embedding of the next scale's input, the head and the
  CFG-guided top-k/top-p sampling with a seeded ``torch.Generator``, the VQ
  residual update and the VQVAE decode;
* **device** (a :class:`~fpqvar_hw.host.backends.BlockBackend`): all transformer blocks of one scale step
  on ``x`` ``[R, L, C]`` FP32 (``R = 2B`` rows: conditional rows first, then the
  unconditional ones), keeping its own KV cache between the steps of an image.

The host's float parameters are the quantized model package's ``float_params``
(:mod:`fpqvar_quant.ptq.package`; GALT is folded into the adaLN linears there),
the VQVAE is the shipped one. The random draws are exactly those of
``VAR.sample_tokens`` (one ``multinomial`` per scale from a generator seeded
with ``seed``), so the torch backends reproduce the existing sampler's tokens
bit for bit (``tests/test_driver.py``).

Module map: the package and the host's float models are :mod:`fpqvar_hw.host.package`,
the block backends :mod:`fpqvar_hw.host.backends`; this module is the run loop, the
outputs and the command line.  Backends:

* :class:`~fpqvar_hw.host.backends.GoldenBackend`: the compiled programs (``fpqvar_hw.host.compiler``) run by
  the instruction-level reference executor ``fpqvar_hw.host.isa_sim`` on a numpy DRAM;
* :class:`fpqvar_hw.host.rtl_tb.RtlBackend`: the same programs and DRAM image on the
  simulated RTL top (inside a cocotb test), with the perf registers read after every step;
* :class:`~fpqvar_hw.host.backends.TorchBlocksBackend`: the blocks of a torch VAR (the FP32 model or the
  fake-quant model), the references the device is measured against.

The run loop :func:`generate` is ``async`` so the same code drives the cocotb
test and the plain Python backends (``asyncio.run``).

Command line (``python -m fpqvar_hw.host.driver --help``)::

    python -m fpqvar_hw.host.driver --backend golden --seed 0 --class 3 --out build/tiny-image

writes ``tokens.json``, ``device.png``, ``fp32.png``, ``fakequant.png``,
``side_by_side.png`` and ``cycles.json`` into ``--out``; ``--backend rtl`` runs the image
on the simulated RTL top instead (:func:`fpqvar_hw.host.rtl.run_rtl_image`, the top at
:func:`~fpqvar_hw.host.backends.rtl_config`, ``max_kv``
:data:`~fpqvar_hw.host.backends.RTL_MAX_KV`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fpqvar_quant.safeio import atomic_path, atomic_write_text, prepare_output_dir, write_marker

from .backends import (RTL_DRAM_BASE, RTL_MAX_KV, BlockBackend, GoldenBackend, GoldenBlockBackend,
                       TorchBlocksBackend, rtl_config)
from .package import (DEFAULT_OUT, DEFAULT_PRESET, HostModel, PackageSettings, build_package,
                      fakequant_model_from_package, host_model_from_package, load_package_checked,
                      load_shipped_model)
from .compiler import TILE_ORDER, V_CACHE_LAYOUT
from .records import ImageRun, Sampling, StepRecord

__all__ = ["generate", "save_png", "save_side_by_side", "write_cycles_json", "write_run", "kl_rows",
           "step_errors", "build_parser", "package_dims", "validate_args", "main", "reference_images"]

#: ``kind`` of the output marker of a driver run folder (``fpqvar_quant.safeio``)
RUN_KIND = "tiny-image-run"


# --------------------------------------------------------------------------- run loop
async def generate(host: HostModel, backend: BlockBackend, labels: Sequence[int], seed: int,
                   sampling: Sampling = Sampling(), *, shadows: Sequence[BlockBackend] = (),
                   max_steps: int | None = None, log: Callable[[str], None] | None = None) -> ImageRun:
    """Sample one image per label with the blocks on ``backend``.

    Same computation and random draws as ``VAR.sample_tokens(B, labels, g_seed=seed,
    cfg, top_k, top_p)`` followed by ``vae.fhat_to_img``. ``shadows``: other backends fed
    the same block inputs every step (their outputs and head logits are recorded in
    ``StepRecord.shadows`` for the numerical comparisons; they never steer the sampling).
    ``max_steps``: stop after that many scale steps (slow simulations); the image is then
    decoded from the partial ``f_hat``."""
    import torch

    from fpqvar_quant.var.helpers import sample_with_top_k_top_p_

    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    if max_steps is not None and not 1 <= max_steps <= len(host.patch_nums):
        raise ValueError(f"max_steps must be in 1..{len(host.patch_nums)}, got {max_steps}")
    label_B = host.check_labels(labels)
    B = label_B.numel()
    var, quant = host.var, host.vae.quantize
    SN = len(host.patch_nums)
    rng = torch.Generator().manual_seed(seed)
    host_s = dev_s = 0.0
    steps: list[StepRecord] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        cond_BD = host.condition(label_B)
        adaln = host.adaln(cond_BD)
        next_map = host.first_input(cond_BD)
        cond_np = cond_BD.numpy().astype(np.float32)
        lvl_pos = var.lvl_pos()
        f_hat = torch.zeros(B, var.Cvae, host.patch_nums[-1], host.patch_nums[-1])
    everyone = [backend, *shadows]
    host_s += time.perf_counter() - t0
    try:
        for b in everyone:
            await b.begin(cond_np, adaln)
        cur_L = 0
        for si, pn in enumerate(host.patch_nums[:max_steps]):
            x_in = np.ascontiguousarray(next_map.numpy(), dtype=np.float32)
            t0 = time.perf_counter()
            x_out, perf = await backend.step(si, x_in)
            dev_s += time.perf_counter() - t0
            if x_out.shape != x_in.shape or x_out.dtype != np.float32:
                raise RuntimeError(f"backend {backend.name} returned {x_out.dtype} {x_out.shape}, "
                                   f"expected float32 {x_in.shape}")
            shadow_out = {}
            for sb in shadows:
                y, _ = await sb.step(si, x_in)
                with torch.no_grad():
                    shadow_out[sb.name] = {"x_out": y, "logits": host.logits(torch.from_numpy(y), cond_BD).numpy()}
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = host.logits(torch.from_numpy(x_out), cond_BD)
                cur_L += pn * pn
                t = sampling.cfg * si / (SN - 1)
                guided = (1 + t) * logits[:B] - t * logits[B:]
                idx = sample_with_top_k_top_p_(guided, rng=rng, top_k=sampling.top_k, top_p=sampling.top_p,
                                               num_samples=1)[:, :, 0]
                h = quant.embedding(idx).transpose(1, 2).reshape(B, var.Cvae, pn, pn)
                f_hat, next_map = quant.get_next_autoregressive_input(si, SN, f_hat, h)
                if si != SN - 1:
                    nxt = next_map.view(B, var.Cvae, -1).transpose(1, 2)
                    next_map = (var.word_embed(nxt) + lvl_pos[:, cur_L:cur_L + host.patch_nums[si + 1] ** 2]
                                ).repeat(2, 1, 1)
            steps.append(StepRecord(si, pn, idx.numpy().copy(), x_in, x_out, logits.numpy(), perf, shadow_out))
            host_s += time.perf_counter() - t0
            if log:
                cyc = f", {perf.cycles} cycles" if perf.cycles is not None else ""
                log(f"step {si} (pn={pn}): tokens {idx[0].tolist()} ({perf.wall_s:.2f} s{cyc})")
    finally:
        for b in everyone:
            await b.end()
    t0 = time.perf_counter()
    with torch.no_grad():
        img = host.vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
        grey = img.mean(1).clamp(0.0, 1.0).numpy()
    host_s += time.perf_counter() - t0
    return ImageRun([int(k) for k in label_B], seed, sampling, backend.name, steps, grey, host_s, dev_s)


# --------------------------------------------------------------------------- outputs
def save_png(image: np.ndarray, path: Path, scale: int = 32) -> Path:
    """Grey [H, W] in [0, 1] as a PNG, nearest-neighbour upscaled ``scale`` times (white = 0 ink,
    drawn like the digits demo: dark strokes on white)."""
    from PIL import Image

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a grey [H, W] image, got shape {a.shape}")
    u8 = np.round(255.0 * (1.0 - np.clip(a, 0.0, 1.0))).astype(np.uint8)
    u8 = np.kron(u8, np.ones((scale, scale), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(u8, mode="L").save(tmp, format="PNG")
    return path


def save_side_by_side(images: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """One PNG with the images next to each other, each titled with its key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2.0 * len(images), 2.5), squeeze=False)
    for ax, (name, img) in zip(axes[0], images.items()):
        ax.imshow(np.asarray(img), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def write_cycles_json(run: ImageRun, path: Path, *, coarse: bool, fine: bool,
                      device: dict[str, Any] | None = None) -> Path:
    """Per-step and total device counters of ``run`` (format version 1)::

        {"format": "fpqvar-tiny-image-cycles", "version": 1, "backend", "model": {...},
         "rows", "coarse_pipeline", "fine_pipeline", "device": {...} (the top's config),
         "v_cache" (the program's V cache order, ``compiler.V_CACHE_LAYOUT``), "tiles"
         (its token tiles, ``compiler.TILE_ORDER``),
         "steps": [{"si", "pn", "new_tokens", "kv_len", "instructions", "cycles",
                    "gemm_cycles", "vec_cycles", "overlap_cycles", "wall_s"}],
         "total": {same counters summed; null where a step has none}}

    Counters are ``null`` for a backend without them (the golden backend counts
    instructions only; cycles come from the RTL's CYCLES/GEMM_CYCLES/VEC_CYCLES/
    OVERLAP_CYCLES registers)."""
    keys = ("instructions", "cycles", "gemm_cycles", "vec_cycles", "overlap_cycles")
    steps, kv = [], 0
    for s in run.steps:
        kv += s.pn * s.pn
        steps.append({"si": s.si, "pn": s.pn, "new_tokens": s.pn * s.pn, "kv_len": kv,
                      **{k: getattr(s.perf, k) for k in keys}, "wall_s": round(s.perf.wall_s, 4)})
    total: dict[str, Any] = {}
    for k in keys:
        vals = [st[k] for st in steps]
        total[k] = None if any(v is None for v in vals) else int(sum(vals))
    total["wall_s"] = round(sum(st["wall_s"] for st in steps), 4)
    doc = {"format": "fpqvar-tiny-image-cycles", "version": 1, "backend": run.backend,
           "model": {"name": "digits VAR", "patch_nums": [s.pn for s in run.steps]},
           "rows": 2 * len(run.labels), "labels": run.labels, "seed": run.seed,
           "coarse_pipeline": bool(coarse), "fine_pipeline": bool(fine), "device": device or {},
           "v_cache": V_CACHE_LAYOUT, "tiles": TILE_ORDER, "steps": steps, "total": total}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def write_run(run: ImageRun, out: Path, *, stem: str = "device") -> dict[str, Path]:
    """``<stem>.png`` (first image) and ``tokens.json`` (per scale token lists, labels, seed,
    sampling, backend) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": save_png(run.images[0], out / f"{stem}.png")}
    doc = {"backend": run.backend, "labels": run.labels, "seed": run.seed, "sampling": asdict(run.sampling),
           "tokens": run.tokens, "host_seconds": round(run.host_seconds, 3),
           "device_seconds": round(run.device_seconds, 3)}
    paths["tokens"] = out / "tokens.json"
    atomic_write_text(paths["tokens"], json.dumps(doc, indent=1) + "\n")
    return paths


# --------------------------------------------------------------------------- comparisons
def kl_rows(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows and tokens of KL(softmax(ref) || softmax(logits)) in nats (float64)."""
    a = np.asarray(ref_logits, dtype=np.float64)
    b = np.asarray(logits, dtype=np.float64)
    la = a - a.max(-1, keepdims=True)
    la -= np.log(np.exp(la).sum(-1, keepdims=True))
    lb = b - b.max(-1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(-1, keepdims=True))
    return float((np.exp(la) * (la - lb)).sum(-1).mean())


def step_errors(run: ImageRun) -> list[dict[str, Any]]:
    """Per step, the distance of the run's backend to every shadow and between the shadows
    (``(reference, compared)`` pairs: ``(shadow, backend)`` for each shadow, then
    ``(shadow_i, shadow_j)`` for i < j): max / mean absolute difference of the last block's
    output and ``KL(softmax(reference logits) || softmax(compared logits))`` of the head
    logits (mean over both CFG rows and the step's tokens)."""
    rows = []
    for s in run.steps:
        outs = {run.backend: {"x_out": s.x_out, "logits": s.logits}, **s.shadows}
        sh = list(s.shadows)
        pairs = [(n, run.backend) for n in sh] + [(a, b) for i, a in enumerate(sh) for b in sh[i + 1:]]
        for ref, other in pairs:
            d = np.abs(outs[other]["x_out"].astype(np.float64) - outs[ref]["x_out"])
            rows.append({"si": s.si, "pn": s.pn, "reference": ref, "compared": other,
                         "max_abs": float(d.max()), "mean_abs": float(d.mean()),
                         "ref_max_abs": float(np.abs(outs[ref]["x_out"]).max()),
                         "kl": kl_rows(outs[ref]["logits"], outs[other]["logits"])})
    return rows


# --------------------------------------------------------------------------- command line
BACKENDS = ("golden", "golden-block", "rtl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fpqvar_hw.host.driver",
        description="Generate one image of the shipped tiny digits VAR with the transformer blocks on "
                    "the accelerator (golden: compiled programs on the instruction-level reference "
                    "executor; golden-block: the bit-exact numpy block model without the ISA; rtl: the "
                    "simulated RTL top, Verilator). Also writes the FP32 and fake-quant models' images "
                    "for the same seed and class, a side-by-side PNG, tokens.json and cycles.json.")
    p.add_argument("--backend", choices=BACKENDS, default="golden", help="who runs the blocks (default golden)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (torch.Generator), default 0")
    p.add_argument("--class", dest="label", type=int, default=3,
                   help="digit class 0..9, or 10 for unconditional (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--package", type=Path, default=None,
                   help="quantized package directory (default: build the tiny model's --preset package, "
                        "cached under <out>/cache)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"PTQ preset of the built package (default {DEFAULT_PRESET})")
    p.add_argument("--rebuild-package", action="store_true", help="rebuild the cached package")
    p.add_argument("--cfg", type=float, default=None, help="CFG strength (default: the model's, 1.5)")
    p.add_argument("--top-k", type=int, default=None, help="top-k (default: the model's, 0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="top-p (default: the model's, 0 = off)")
    p.add_argument("--no-coarse", action="store_true", help="disable the coarse (between-engine) pipeline")
    p.add_argument("--no-fine", action="store_true", help="disable the fine (in-unit) pipeline")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many scale steps (1..4; the image is decoded from the partial "
                        "f_hat): a quick check of the slow rtl backend")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the FP32 / fake-quant shadow blocks and their images")
    return p


def package_dims(package: Path | None) -> tuple[int, int]:
    """(num_classes, number of scale steps) of the package's model, or of the shipped
    digits model: read from JSON only, before any model is built."""
    if package is not None:
        mpath = Path(package) / "manifest.json"
        try:
            m = json.loads(mpath.read_text())["model"]
            return int(m["num_classes"]), len(m["patch_nums"])
        except FileNotFoundError:
            raise FileNotFoundError(f"{mpath} not found: --package must be a folder written by "
                                    "`fpqvar-quant export`") from None
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{mpath}: not a package manifest ({e})") from None
    from fpqvar_quant.digits.classifier import ASSET_DIR
    from fpqvar_quant.digits.data import NUM_CLASSES

    cfg = json.loads((ASSET_DIR / "model.json").read_text())["config"]
    return NUM_CLASSES, len(cfg["patch_nums"])


def validate_args(args: argparse.Namespace) -> None:
    """Every argument the user can get wrong, checked in milliseconds before a package is
    built or a model loaded (``ValueError`` / ``FileNotFoundError`` with one line)."""
    num_classes, steps = package_dims(args.package)
    if not 0 <= args.label <= num_classes:
        raise ValueError(f"--class {args.label}: the model has classes 0..{num_classes - 1} "
                         f"({num_classes} = unconditional)")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer in [0, 2^63), got {args.seed}")
    if args.max_steps is not None and not 1 <= args.max_steps <= steps:
        raise ValueError(f"--max-steps must be in 1..{steps}, got {args.max_steps}")
    if args.cfg is not None and args.cfg < 0:
        raise ValueError(f"--cfg must be >= 0, got {args.cfg}")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not 0 <= args.top_p <= 1:
        raise ValueError(f"--top-p must be in [0, 1], got {args.top_p}")
    # a run writes into its own folder only (resumable: the package cache lives there too)
    prepare_output_dir(args.out, RUN_KIND, resume=True,
                       own=lambda p: (p / "tokens.json").is_file() or (p / "cache").is_dir())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fpqvar_hw.host.driver``: errors print one line (exit 2; ``--debug`` for
    the traceback)."""
    from fpqvar_quant.safeio import run_cli

    return run_cli(_main, None if argv is None else list(argv), "python -m fpqvar_hw.host.driver",
                   errors=(ValueError, KeyError))


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    validate_args(args)
    t_start = time.time()
    out: Path = args.out
    if args.package is None:
        settings = PackageSettings(preset=args.preset)
        if args.rebuild_package:
            import shutil

            from fpqvar_quant.digits.classifier import ASSET_DIR
            shutil.rmtree(out / "cache" / settings.key(ASSET_DIR), ignore_errors=True)
        pkg_path = build_package(settings, out / "cache")
    else:
        pkg_path = args.package
    pkg = load_package_checked(pkg_path)
    host = host_model_from_package(pkg)
    host.check_labels([args.label])
    base = load_shipped_model().sampling
    sampling = Sampling(cfg=base.cfg if args.cfg is None else args.cfg,
                        top_k=base.top_k if args.top_k is None else args.top_k,
                        top_p=base.top_p if args.top_p is None else args.top_p)
    coarse, fine = not args.no_coarse, not args.no_fine
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, RUN_KIND)
    print(f"package {pkg_path} ({pkg.manifest['quant_config']['name']}); class {args.label}, seed {args.seed}, "
          f"{sampling}; backend {args.backend}")
    if args.backend == "rtl":
        from .rtl import run_rtl_image

        run = run_rtl_image(pkg_path, config=rtl_config(), C=host.C, max_kv=RTL_MAX_KV, dram_base=RTL_DRAM_BASE,
                            label=args.label, seed=args.seed, sampling=sampling, out=out,
                            coarse=coarse, fine=fine, max_steps=args.max_steps)
        errors: list[dict[str, Any]] = []
    else:
        shadows: list[BlockBackend] = []
        if not args.no_compare:
            fp = load_shipped_model()
            shadows = [TorchBlocksBackend(fp.var, "fp32"),
                       TorchBlocksBackend(fakequant_model_from_package(pkg).var, "fakequant")]
        backend: BlockBackend = (GoldenBackend(pkg, rows=2, coarse=coarse, fine=fine) if args.backend == "golden"
                                 else GoldenBlockBackend(pkg))
        run = asyncio.run(generate(host, backend, [args.label], args.seed, sampling, shadows=shadows,
                                   max_steps=args.max_steps, log=print))
        write_run(run, out)
        write_cycles_json(run, out / "cycles.json", coarse=coarse, fine=fine,
                          device=getattr(backend, "device_info", lambda: {})())
        errors = step_errors(run)
        atomic_write_text(out / "errors.json", json.dumps(errors, indent=1) + "\n")
    images = {f"device ({run.backend})": run.images[0]}
    if not args.no_compare:
        ref = reference_images(pkg, args.label, args.seed, sampling)
        for name, (img, toks) in ref.items():
            save_png(img, out / f"{name}.png")
            agree = np.mean(np.concatenate([(np.asarray(a) == b.tokens[0]).ravel()
                                            for a, b in zip(toks, run.steps)]))
            print(f"{name}: token agreement with the device {agree:.3f}")
            images[name] = img
        save_side_by_side(images, out / "side_by_side.png",
                          f"digits VAR, class {args.label}, seed {args.seed} ({pkg.manifest['quant_config']['name']})")
    for e in errors:
        if e["compared"] == run.backend:
            print(f"step {e['si']}: |{run.backend} - {e['reference']}| max {e['max_abs']:.4g} "
                  f"mean {e['mean_abs']:.4g}, KL {e['kl']:.3g}")
    print(f"wrote {out} ({time.time() - t_start:.1f} s; blocks {run.device_seconds:.1f} s, host {run.host_seconds:.1f} s)")
    return 0


def reference_images(pkg: Any, label: int, seed: int, sampling: Sampling) -> dict[str, tuple[np.ndarray, list]]:
    """``{"fp32": (image, tokens), "fakequant": ...}`` from the existing sampler
    (``VAR.sample_tokens`` + ``fhat_to_img``) of the FP32 model and of the package's
    fake-quant model, same label, seed and sampling."""
    import torch

    out = {}
    for name, model in (("fp32", load_shipped_model()), ("fakequant", fakequant_model_from_package(pkg))):
        with torch.no_grad():
            res = model.var.sample_tokens(1, torch.tensor([label]), g_seed=seed, cfg=sampling.cfg,
                                          top_k=sampling.top_k, top_p=sampling.top_p)
            img = model.vae.fhat_to_img(res.f_hat).add_(1).mul_(0.5).mean(1).clamp(0, 1)[0].numpy()
        out[name] = (img, [t[0].numpy() for t in res.idx_Bl])
    return out


if __name__ == "__main__":
    sys.exit(main())
