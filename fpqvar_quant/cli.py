"""``fpqvar-quant``: calibrate, quantize, sample, evaluate and export VAR models.

Typical flow with the official weights on a GPU::

    fpqvar-quant calibrate --var-ckpt var_d16.pth --vae-ckpt vae_ch160v4096z32.pth --out calib_d16
    fpqvar-quant quantize  --var-ckpt var_d16.pth --vae-ckpt vae_ch160v4096z32.pth \\
                           --preset fp4-fpqvar --calib calib_d16 --out d16_fp4.pt
    torchrun --nproc_per_node 8 -m fpqvar_quant.cli sample --quantized d16_fp4.pt \\
                           --vae-ckpt vae_ch160v4096z32.pth --out samples_fp4
    fpqvar-quant evaluate  --samples samples_fp4 --ref VIRTUAL_imagenet256_labeled.npz
    fpqvar-quant export    --quantized d16_fp4.pt --out d16_fp4_pkg

Without checkpoints every command runs on a random "quantization-test" model
(``--depth 2 --patch-nums 1,2,3 --vae-ch 16 --vocab-size 64`` is a CPU-sized one).

Adding a subcommand: write ``add_<name>(subparsers)`` that creates its parser
and calls ``set_defaults(func=run_<name>)`` (``run_<name>(args) -> int``), then
append it to :data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "build_parser", "COMMANDS", "parse_classes"]


# ------------------------------------------------------------------ helpers
from .safeio import UserError  # noqa: E402  (one-line user errors, exit status 2)

#: ``kind`` of the output markers (``fpqvar_quant.safeio``) of the folders written here
CALIB_KIND, SAMPLES_KIND = "calibration-set", "samples"


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _depth(text: str) -> int:
    v = _positive_int(text)
    if v % 2:
        raise argparse.ArgumentTypeError(
            f"depth {v} is odd: C = 64*depth must be a multiple of 128 (the quantization "
            "group size); use an even depth (official: 16, 20, 24, 30, 36)")
    return v


def _patch_nums(text: str) -> tuple[int, ...]:
    from .ptq.models import parse_patch_nums
    try:
        return parse_patch_nums(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _sha256_hex(text: str) -> str:
    v = text.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise argparse.ArgumentTypeError(f"expected a SHA-256 digest (64 hex digits), got {text!r}")
    return v


def _preset(text: str) -> str:
    from .ptq.config import PRESETS
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose one of: "
                                         f"{', '.join(PRESETS)}")
    return text


def parse_classes(text: str, num_classes: int) -> list[int]:
    """``"0-9,15,20-21"`` -> sorted unique class ids, each in ``[0, num_classes)``."""
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(t) for t in part.split("-", 1))
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"bad class list {text!r}: use ids and ranges like 0-99,150") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad or not out:
        raise ValueError(f"class ids must be in 0..{num_classes - 1}, got {text!r}")
    return sorted(out)


def _device(name: str | None) -> str:
    import torch
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (official checkpoints, or a random quantization-test model)")
    g.add_argument("--var-ckpt", metavar="PTH", help="official VAR checkpoint (var_d16.pth ...); "
                   "depth/patch nums are read from it. Needs --vae-ckpt.")
    g.add_argument("--vae-ckpt", metavar="PTH", help="official VQVAE checkpoint "
                   "(vae_ch160v4096z32.pth)")
    g.add_argument("--depth", type=_depth, default=16,
                   help="depth of a random model (even; C = 64*depth) [16]")
    g.add_argument("--patch-nums", type=_patch_nums, default=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                   metavar="N,N,...", help="scales of a random model [256px schedule]")
    g.add_argument("--shared-aln", action="store_true",
                   help="random model with shared adaLN (d36 style)")
    g.add_argument("--vae-ch", type=_positive_int, default=160,
                   help="VQVAE width of a random model (multiple of 32) [160]")
    g.add_argument("--vocab-size", type=_positive_int, default=4096,
                   help="codebook size of a random model [4096]")
    g.add_argument("--num-classes", type=_positive_int, default=1000,
                   help="classes of a random model [1000]")
    g.add_argument("--init-seed", type=_nonneg_int, default=0, help="seed of the random init [0]")
    g.add_argument("--outlier-channels", type=_nonneg_int, default=0,
                   help="random model: channels with large activations, as in trained models [0]")
    g.add_argument("--var-sha256", type=_sha256_hex, metavar="HEX", help="expected SHA-256 of --var-ckpt "
                   "(checked before loading; every checkpoint's zip CRC-32s are always checked)")
    g.add_argument("--vae-sha256", type=_sha256_hex, metavar="HEX", help="expected SHA-256 of --vae-ckpt")
    g.add_argument("--device", help="torch device [cuda if available, else cpu]")


def _model_spec(args):
    from .ptq.models import ModelSpec
    return ModelSpec(depth=args.depth, patch_nums=args.patch_nums, shared_aln=args.shared_aln,
                     var_ckpt=args.var_ckpt, vae_ckpt=args.vae_ckpt, init_seed=args.init_seed,
                     vae_ch=args.vae_ch, vocab_size=args.vocab_size, num_classes=args.num_classes,
                     outlier_channels=args.outlier_channels, var_sha256=args.var_sha256,
                     vae_sha256=args.vae_sha256)


def _recorded_settings(folder: str | Path, kind: str) -> dict | None:
    """The settings recorded in ``folder``'s marker of ``kind`` (``None``: none yet)."""
    from .safeio import read_marker

    marker = read_marker(folder)
    if marker is None or marker.get("kind") != kind:
        return None
    return dict(marker.get("settings", {}))


def _settings_diff(folder: str | Path, old: dict, new: dict, keys=None) -> None:
    """Raise :class:`UserError` naming every setting of ``keys`` (default: all) that
    differs between ``old`` (recorded) and ``new``."""
    keys = sorted(set(old) | set(new)) if keys is None else keys
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:
        what = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise UserError(f"{folder} was written with other settings ({what}); rerun with the "
                        "same settings to resume, or choose a new --out")


def _check_settings(folder: Path, kind: str, settings: dict) -> None:
    """Refuse to resume ``folder`` (an output of ``kind``) under other ``settings`` than
    the ones recorded in its marker; record them in a new folder."""
    from .safeio import write_marker

    old = _recorded_settings(folder, kind)
    if old is not None:
        _settings_diff(folder, old, settings)
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind, settings=settings)


def json_output_of(*keys: str) -> Callable[[Path], bool]:
    """Predicate for :func:`fpqvar_quant.safeio.check_writable_file`: an existing file is
    this command's JSON output (a JSON object with ``keys``), which a rerun may replace;
    any other file is never replaced."""
    def own(path: Path) -> bool:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and all(k in doc for k in keys)
    return own


def _add_sampling_args(p: argparse.ArgumentParser, batch: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance [1.5]")
    g.add_argument("--top-k", type=_nonneg_int, default=900, help="top-k [900]")
    g.add_argument("--top-p", type=float, default=0.96, help="top-p [0.96]")
    g.add_argument("--seed", type=_nonneg_int, default=0, help="sampling seed [0]")
    g.add_argument("--batch-size", type=_positive_int, default=batch,
                   help=f"images per forward batch [{batch}]")
    g.add_argument("--amp", choices=("none", "fp16", "bf16"), default="none",
                   help="run under torch.autocast with this dtype (the official demo uses fp16 "
                   "on GPUs) [none: the model dtype, fp32]")


def _autocast(args, device: str):
    """``torch.autocast`` context for ``--amp`` (a no-op context for "none")."""
    import contextlib

    import torch
    if args.amp == "none":
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.amp]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` (read back with :func:`_progress`)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _progress(args) -> bool:
    """Whether to show progress bars (no ``--no-progress``)."""
    return not getattr(args, "no_progress", False)


# ------------------------------------------------------------------ calibrate
def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="sample with the FP model and store every quantized "
                       "layer's inputs (calibration set)",
                       description="Generate the calibration set: the FP model samples "
                       "--num-images images (classes 0..N-1, one each) and the inputs of every "
                       "attn.mat_qkv / attn.proj / ffn.fc1 / ffn.fc2 at all scales and both CFG "
                       "halves are streamed to --out as .npy shards + index.json. Resumable: "
                       "rerun the same command; a resume under other settings (seed, cfg, "
                       "top-k/top-p, batch size, image count, model) is refused, naming the "
                       "setting.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--num-images", type=_positive_int, default=100, help="images [100]")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage dtype of the captured inputs [float16]")
    _add_progress_arg(p)
    _add_sampling_args(p, batch=25)
    _add_model_args(p)
    p.set_defaults(func=run_calibrate)


def run_calibrate(args) -> int:
    from .ptq.calibrate import generate_calibration, is_calibration_dir
    from .ptq.models import build_models
    from .safeio import prepare_output_dir, write_marker

    prepare_output_dir(args.out, CALIB_KIND, resume=True, own=is_calibration_dir)
    if not args.var_ckpt and args.num_images > args.num_classes:
        raise UserError(f"--num-images {args.num_images} exceeds the {args.num_classes} classes "
                        "(one image per class)")
    index = Path(args.out) / "index.json"
    if is_calibration_dir(Path(args.out)):   # a resume: the settings known now must agree
        old = json.loads(index.read_text()).get("settings", {})
        now = {"num_images": args.num_images, "seed": args.seed, "cfg": args.cfg,
               "top_p": args.top_p, "batch_size": args.batch_size, "amp": args.amp}
        _settings_diff(args.out, old, now, keys=sorted(now))
    spec = _model_spec(args)
    device = _device(args.device)
    _, var, _ = build_models(spec, device=device)
    if args.num_images > var.num_classes:
        raise UserError(f"--num-images {args.num_images} exceeds the {var.num_classes} classes "
                        "(one image per class)")
    Path(args.out).mkdir(exist_ok=True)
    write_marker(args.out, CALIB_KIND)
    with _autocast(args, device):
        cs = generate_calibration(var, args.out, num_images=args.num_images,
                                  batch_size=args.batch_size, cfg=args.cfg, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed, dtype=args.dtype,
                                  progress=_progress(args), record={"amp": args.amp})
    print(f"calibration set: {cs.num_images} images, {len(cs.layers)} layers, "
          f"{len(cs.shards)} shards in {args.out}")
    return 0


# ------------------------------------------------------------------ quantize
def add_quantize(sub) -> None:
    from .ptq.config import PRESETS
    p = sub.add_parser("quantize", help="apply a preset (GALT, MixedFormat, GHT, DFQ, KV) and save "
                       "the quantized model",
                       description="Quantize a VAR with a named preset and save it "
                       "(state dict + config) for `sample` and `export`. Presets: "
                       + ", ".join(PRESETS) + ". Presets with GALT or MixedFormat need --calib.")
    p.add_argument("--preset", type=_preset, required=True, help="preset name (see above)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .pt file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (only a quantized model written by this command)")
    p.add_argument("--calib", metavar="DIR", help="calibration set from `fpqvar-quant calibrate`")
    p.add_argument("--galt-epochs", type=_positive_int, help="override GALT epochs [50]")
    p.add_argument("--max-tokens", type=_positive_int,
                   help="calibration rows per layer for GALT/MixedFormat (random subset) [all]")
    p.add_argument("--report", metavar="JSON",
                   help="also write a JSON summary (formats, GALT losses)")
    _add_progress_arg(p)
    _add_model_args(p)
    p.set_defaults(func=run_quantize)


def run_quantize(args) -> int:
    from .ptq.calibrate import CalibrationSet
    from .ptq.config import get_preset
    from .ptq.models import build_models
    from .ptq.quantize_model import quantize_model, save_quantized

    from .ptq.quantize_model import is_quantized_file
    from .safeio import atomic_write_text, check_writable_file

    cfg = get_preset(args.preset, **({"galt_epochs": args.galt_epochs} if args.galt_epochs else {}))
    # everything the user can get wrong is checked before any model is built
    if (cfg.galt or cfg.mixedformat) and not args.calib:
        raise UserError(f"preset {cfg.name} needs a calibration set (GALT/MixedFormat): pass "
                        "--calib DIR from `fpqvar-quant calibrate`")
    if args.calib and not (Path(args.calib) / "index.json").is_file():
        raise UserError(f"--calib {args.calib} is not a calibration set (no index.json): run "
                        "`fpqvar-quant calibrate` first")
    check_writable_file(args.out, overwrite=args.overwrite, own=is_quantized_file)
    if args.report:
        check_writable_file(args.report, overwrite=True, what="--report",
                            own=json_output_of("config", "layers"))
    spec = _model_spec(args)
    calib = CalibrationSet(args.calib) if args.calib else None
    _, var, shape = build_models(spec, device=_device(args.device))
    report = quantize_model(var, cfg, calib, max_tokens=args.max_tokens, progress=_progress(args))
    save_quantized(var, report, args.out, {"shape": shape.to_dict(), "vae_ckpt": spec.vae_ckpt,
                                           "var_ckpt": spec.var_ckpt})
    if args.report:
        atomic_write_text(args.report, json.dumps(report.summary(), indent=1))
    print(f"{cfg.name}: {len(report.layers)} quantized linears, GALT {len(report.galt)} vectors, "
          f"KV {'quantized' if report.kv_quantized else 'fp'} -> {args.out}")
    return 0


def _load_quantized_models(path: str, vae_ckpt: str | None, device: str,
                           vae_sha256: str | None = None):
    from .ptq.models import ModelSpec, rebuild
    from .ptq.quantize_model import load_quantized, read_quantized
    from .var.checkpoint import verify_file

    obj = read_quantized(path)
    meta = obj["model_kwargs"]
    vae_ckpt = vae_ckpt or meta.get("vae_ckpt")
    if vae_ckpt is not None and not Path(vae_ckpt).is_file():
        raise UserError(f"VQVAE checkpoint {vae_ckpt} not found: pass --vae-ckpt")
    if vae_sha256 is not None:
        if vae_ckpt is None:
            raise UserError("--vae-sha256 checks a VQVAE checkpoint, but none is given (--vae-ckpt) "
                            f"or recorded in {path}")
        verify_file(vae_ckpt, sha256=vae_sha256, what="VQVAE checkpoint")
    vae, var = rebuild(ModelSpec.from_dict(meta["shape"]), vae_ckpt, device=device)
    report = load_quantized(var, obj, where=path)
    return vae, var, report


# ------------------------------------------------------------------ sample
def add_sample(sub) -> None:
    from .ptq.config import PRESETS
    p = sub.add_parser("sample", help="generate PNG samples (resumable, multi-GPU with torchrun)",
                       description="Write <out>/<class>_<index>.png for every class and index. "
                       "Existing PNGs are skipped, so an interrupted run (or a failed rank) is "
                       "resumed by rerunning the same command; the folder records the settings "
                       "(model digest, seed, cfg, top-k/top-p, images per class, amp) and "
                       "a rerun with other settings is refused, naming the setting (the batch "
                       "size too: an image differs in its last bits with the batch it is "
                       "computed in); --classes may change. Under torchrun each rank takes "
                       "the classes c with c % WORLD_SIZE == RANK. Image i of class c has its "
                       "own generator seeded with seed*10^9 + c*10^5 + i, so images never repeat "
                       "and do not depend on the number of ranks.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--quantized", metavar="FILE", help="quantized model from `quantize`")
    src.add_argument("--preset", type=_preset, help="quantize on the fly (" + ", ".join(PRESETS) +
                     "); GALT/MixedFormat presets need --calib [fp model]")
    p.add_argument("--calib", metavar="DIR", help="calibration set for --preset")
    p.add_argument("--classes", default=None, metavar="LIST",
                   help="class ids/ranges, e.g. 0-999 or 0-9,42 [all classes]")
    p.add_argument("--per-class", type=_positive_int, default=50, help="images per class [50]")
    _add_progress_arg(p)
    _add_sampling_args(p, batch=25)
    _add_model_args(p)
    p.set_defaults(func=run_sample)


def _dist_info() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def sample_units(classes: list[int], per_class: int, batch_size: int, rank: int, world: int
                 ) -> list[tuple[int, int, list[int]]]:
    """Work of one rank: ``(class, batch index, image indices)``; class c belongs to
    rank ``c % world`` so no image is generated twice."""
    units = []
    for c in classes:
        if c % world != rank:
            continue
        for j, start in enumerate(range(0, per_class, batch_size)):
            units.append((c, j, list(range(start, min(start + batch_size, per_class)))))
    return units


def png_name(c: int, i: int) -> str:
    return f"{c:04d}_{i:05d}.png"


#: How ``sample`` seeds its images (recorded in the output folder)
SAMPLE_SEEDING = "per image: seed*10^9 + c*10^5 + i"


def image_seed(seed: int, c: int, i: int) -> int:
    """The sampling seed of image ``i`` of class ``c`` (its own generator)."""
    return seed * 10**9 + c * 10**5 + i


def run_sample(args) -> int:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    rank, world, local = _dist_info()
    device = _device(args.device)
    if world > 1:
        import torch.distributed as dist
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    from .ptq.models import state_digest
    from .safeio import prepare_output_dir

    if args.calib and not args.preset:
        raise UserError("--calib is only used with --preset")
    if args.per_class > 10**5:
        raise UserError(f"--per-class {args.per_class}: at most 100000 images per class")
    prepare_output_dir(args.out, SAMPLES_KIND, resume=True)
    if args.quantized and not Path(args.quantized).is_file():
        raise UserError(f"--quantized {args.quantized} not found")
    if args.calib and not (Path(args.calib) / "index.json").is_file():
        raise UserError(f"--calib {args.calib} is not a calibration set (no index.json): run "
                        "`fpqvar-quant calibrate` first")
    # settings known before the model exists are compared now, the model digest after
    settings = {"seed": args.seed, "cfg": args.cfg, "top_p": args.top_p,
                "batch_size": args.batch_size, "per_class": args.per_class, "amp": args.amp,
                "seeding": SAMPLE_SEEDING}
    old = _recorded_settings(args.out, SAMPLES_KIND)
    if old is not None:
        _settings_diff(args.out, old, settings, keys=sorted(settings))
    if args.quantized:
        if args.var_sha256:
            raise UserError("--var-sha256 checks --var-ckpt; with --quantized the VAR weights "
                            f"come from {args.quantized} (its zip CRC-32s are checked)")
        vae, var, _ = _load_quantized_models(args.quantized, args.vae_ckpt, device,
                                             vae_sha256=args.vae_sha256)
    else:
        from .ptq.models import build_models
        _, var, _ = build_models(_model_spec(args), device=device)
        if args.preset:
            from .ptq.calibrate import CalibrationSet
            from .ptq.config import get_preset
            from .ptq.quantize_model import quantize_model
            quantize_model(var, get_preset(args.preset),
                           CalibrationSet(args.calib) if args.calib else None,
                           progress=_progress(args) and rank == 0)
    classes = (list(range(var.num_classes)) if args.classes is None
               else parse_classes(args.classes, var.num_classes))
    out = Path(args.out)
    # every image has its own generator (no duplicates whatever the batch size), but its
    # last bits depend on the batch it is computed in: the batch size is a setting too
    _check_settings(out, SAMPLES_KIND, {**settings, "model_digest": state_digest(var),
                                        "top_k": min(args.top_k, int(var.V))})
    units = sample_units(classes, args.per_class, args.batch_size, rank, world)
    todo = [u for u in units if not all((out / png_name(u[0], i)).exists() for i in u[2])]
    written = 0
    for c, j, idx in tqdm(todo, desc=f"sample r{rank}", disable=not _progress(args), unit="batch"):
        with _autocast(args, device):
            imgs = var.autoregressive_infer_cfg(B=len(idx),
                                                label_B=torch.full((len(idx),), c, device=device),
                                                g_seed=[image_seed(args.seed, c, i) for i in idx],
                                                cfg=args.cfg, top_k=min(args.top_k, int(var.V)),
                                                top_p=args.top_p)
        arr = imgs.float().mul(255).round().clamp(0, 255).to(torch.uint8)
        arr = arr.permute(0, 2, 3, 1).cpu().numpy()
        for i, a in zip(idx, arr):
            tmp = out / (png_name(c, i) + ".tmp")
            Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
            os.replace(tmp, out / png_name(c, i))
            written += 1
    skipped = sum(len(u[2]) for u in units) - sum(len(u[2]) for u in todo)
    print(f"rank {rank}/{world}: wrote {written} PNGs, skipped {skipped} existing, in {out}")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return 0


# ------------------------------------------------------------------ evaluate
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="FID / IS / precision / recall of a PNG folder against an "
                       "ADM reference batch",
                       description="Compute FID, Inception Score, precision and recall (ADM "
                       "evaluator definitions) of the PNGs under --samples against --ref "
                       "(VIRTUAL_imagenet256_labeled.npz layout: arr_0 images [+ mu, sigma]). "
                       "Needs torch-fidelity and its Inception weights file on this machine; "
                       "nothing is downloaded. Exit status 2 with instructions when missing.")
    p.add_argument("--samples", required=True, metavar="DIR", help="folder of PNG samples")
    p.add_argument("--ref", required=True, metavar="NPZ", help="ADM reference batch")
    p.add_argument("--inception-weights", metavar="PTH",
                   help="weights-inception-2015-12-05-6726825d.pth [torch hub cache]")
    p.add_argument("--batch-size", type=_positive_int, default=100, help="images per batch [100]")
    p.add_argument("--device", help="torch device [cuda if available, else cpu]")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    _add_progress_arg(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args) -> int:
    from .ptq.evaluate import EvaluatorUnavailable, evaluate_folder
    from .safeio import atomic_write_text, check_writable_file

    if args.json:       # before minutes of feature extraction
        check_writable_file(args.json, overwrite=True, what="--json", own=json_output_of("fid"))
    try:
        m = evaluate_folder(args.samples, args.ref, inception_weights=args.inception_weights,
                            batch_size=args.batch_size, device=_device(args.device),
                            progress=_progress(args))
    except EvaluatorUnavailable as e:
        print(f"fpqvar-quant evaluate: cannot compute metrics here: {e}", file=sys.stderr)
        return 2
    print(f"FID {m.fid:.3f}  IS {m.inception_score:.2f}  precision {m.precision:.3f}  "
          f"recall {m.recall:.3f}  ({m.num_samples} samples, {m.num_reference} reference)")
    if args.json:
        atomic_write_text(args.json, json.dumps(m.to_dict(), indent=1))
    return 0


# ------------------------------------------------------------------ export
def add_export(sub) -> None:
    p = sub.add_parser("export", help="write the quantized model package (numpy + json)",
                       description="Export a quantized model (from `quantize`) as a versioned "
                       "package directory: manifest.json + arrays.npz with weight codes, raw scale "
                       "bits, Hadamard signs, GALT vectors, per-layer config and model dims. "
                       "Read it with fpqvar_quant.ptq.package (numpy/json only).")
    p.add_argument("--quantized", required=True, metavar="FILE", help="quantized model (.pt)")
    p.add_argument("--out", required=True, metavar="DIR", help="package directory to create")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (only a package folder: any other folder is "
                   "never replaced)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from .ptq.export import is_package_dir
    from .ptq.package import PACKAGE_KIND
    from .ptq.quantize_model import load_quantized, read_quantized
    from .safeio import prepare_output_dir

    prepare_output_dir(args.out, PACKAGE_KIND, overwrite=args.overwrite, own=is_package_dir)
    obj = read_quantized(args.quantized)
    from .ptq.export import export_package
    from .ptq.models import ModelSpec, rebuild

    _, var = rebuild(ModelSpec.from_dict(obj["model_kwargs"]["shape"]))
    report = load_quantized(var, obj, where=args.quantized)
    path = export_package(var, report, args.out, overwrite=args.overwrite)
    print(f"package written to {path} ({len(report.layers)} layers)")
    return 0


# ------------------------------------------------------------------ main
#: (registration function) for every subcommand, in --help order. Append to extend.
from .digits.demo import add_demo  # noqa: E402  (the embedded digits demo; light import)

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_calibrate, add_quantize, add_sample, add_evaluate, add_export, add_demo]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpqvar-quant",
        description="FPQVAR post-training quantization of VAR models: calibrate -> quantize -> "
                    "sample -> evaluate, and export for the hardware.",
        epilog="Run `fpqvar-quant COMMAND --help` for each command's options. Errors print one "
               "line and exit with status 2; add --debug anywhere for the traceback.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """``fpqvar-quant``: one error path (:func:`fpqvar_quant.safeio.run_cli`): user errors
    print one line and return 2; ``--debug`` shows the traceback."""
    from .safeio import run_cli

    def run(av: list[str]) -> int:
        args = build_parser().parse_args(av)
        return int(args.func(args))
    prog = "fpqvar-quant"
    av = list(sys.argv[1:] if argv is None else argv)
    cmd = next((a for a in av if not a.startswith("-")), None)
    return run_cli(run, av, f"{prog} {cmd}" if cmd else prog, errors=(ValueError, TypeError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
