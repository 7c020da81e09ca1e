"""The embedded tiny VQVAE + VAR trained on the handwritten digits.

Same architecture code as the full model (``fpqvar_quant.var.build_vae_var``),
scaled down (``ModelConfig``): 8x8 greyscale digits replicated to 3 channels
(the official VQVAE's input), a VQVAE with 2x downsampling to a 4x4 token map,
vocabulary 256, ``patch_nums = (1, 2, 3, 4)`` (L = 30 tokens), and a
class-conditional VAR with ``C = 128`` (one 128-wide quantization group), head
dim 64, 10 classes (class 10 = unconditional, label dropout 0.1 in training).

Shipped files (``fpqvar_quant/assets/digits/``): ``vqvae.pt`` and ``var.pt``
(fp16 state dicts, loaded as float32 with ``strict=True``) and ``model.json``
(the ``ModelConfig``, the data hash, training losses, reconstruction error and
the default sampling settings). ``scripts/train_digits.py`` reproduces them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..var import VAR, VQVAE, build_vae_var
from .classifier import ASSET_DIR
from .data import NUM_CLASSES, DigitsSplit, load_digits_split


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training recipe of the embedded tiny VQVAE + VAR."""

    seed: int = 0
    patch_nums: tuple[int, ...] = (1, 2, 3, 4)
    vocab_size: int = 256
    cvae: int = 16
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 2)
    vae_num_res_blocks: int = 1
    share_quant_resi: int = 4
    depth: int = 2
    embed_dim: int = 128
    num_heads: int = 2
    drop_path_rate: float = 0.0
    # VQVAE training: MSE + VQ loss, AdamW, dead codes restarted from encoder residuals.
    vqvae_epochs: int = 16
    vqvae_batch: int = 32
    vqvae_lr: float = 2e-3
    vqvae_restart_epochs: int = 10
    # VAR training: teacher-forced cross-entropy, AdamW with warmup + cosine decay.
    var_epochs: int = 16
    var_batch: int = 64
    var_lr: float = 2e-3
    var_weight_decay: float = 0.05
    var_warmup_epochs: int = 3
    cond_drop_rate: float = 0.1

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class SamplingConfig:
    """Default sampling settings of the digits demo / benchmark."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0


def build_models(cfg: ModelConfig) -> tuple[VQVAE, VAR]:
    """Fresh ``(vae, var)`` (official init) for ``cfg``, on CPU, float32, VQVAE frozen."""
    vae, var = build_vae_var(device="cpu", patch_nums=cfg.patch_nums, V=cfg.vocab_size, Cvae=cfg.cvae,
                             ch=cfg.vae_ch, share_quant_resi=cfg.share_quant_resi, num_classes=NUM_CLASSES,
                             depth=cfg.depth, shared_aln=False, attn_l2_norm=True, embed_dim=cfg.embed_dim,
                             num_heads=cfg.num_heads, vae_ch_mult=cfg.vae_ch_mult,
                             vae_num_res_blocks=cfg.vae_num_res_blocks, drop_path_rate=cfg.drop_path_rate)
    var.cond_drop_rate = cfg.cond_drop_rate
    return vae, var


def to_vae_input(images01: torch.Tensor) -> torch.Tensor:
    """Grey [N, 1, H, W] in [0, 1] -> [N, 3, H, W] in [-1, 1] (grey replicated)."""
    if images01.ndim != 4 or images01.shape[1] != 1:
        raise ValueError(f"expected grey images [N, 1, H, W], got {tuple(images01.shape)}")
    return (images01 * 2.0 - 1.0).expand(-1, 3, -1, -1).contiguous()


def to_grey(images3: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] (model output) -> grey [N, 1, H, W] in [0, 1] (channel mean)."""
    return images3.mean(1, keepdim=True).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- training
def _residual_vectors(vae: VQVAE, x: torch.Tensor) -> torch.Tensor:
    """Every scale's pre-quantization residual vectors [M, Cvae] of images ``x`` (no grad)."""
    q = vae.quantize
    f = vae.quant_conv(vae.encoder(x))
    f_hats = q.f_to_idxBl_or_fhat(f, to_fhat=True)
    out = []
    for si, pn in enumerate(q.v_patch_nums):
        r = f if si == 0 else f - f_hats[si - 1]
        if pn != r.shape[-1]:
            r = F.interpolate(r, size=(pn, pn), mode="area")
        out.append(r.permute(0, 2, 3, 1).reshape(-1, r.shape[1]))
    return torch.cat(out)


@torch.no_grad()
def _restart_dead_codes(vae: VQVAE, x_all: torch.Tensor, g: torch.Generator) -> int:
    """Re-initialise codes no training image uses with random residual vectors; returns their count."""
    was = vae.training
    vae.eval()
    q = vae.quantize
    used = torch.zeros(q.vocab_size, dtype=torch.bool)
    vecs = []
    for i in range(0, len(x_all), 256):
        xb = x_all[i:i + 256]
        for idx in vae.img_to_idxBl(xb):
            used[idx.flatten()] = True
        vecs.append(_residual_vectors(vae, xb))
    dead = torch.nonzero(~used).flatten()
    if dead.numel():
        pool = torch.cat(vecs)
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=g)
        q.embedding.weight.data[dead] = pool[pick]
    vae.train(was)
    return int(dead.numel())


@torch.no_grad()
def reconstruction_mse(vae: VQVAE, images01: torch.Tensor) -> float:
    """Mean squared error (in [0, 1] pixel units) of VQVAE reconstructions of grey images."""
    vae.eval()
    rec = to_grey(vae.img_to_reconstructed_img(to_vae_input(images01), last_one=True).add(1).mul(0.5))
    return F.mse_loss(rec, images01).item()


def train_vqvae(cfg: ModelConfig, vae: VQVAE, split: DigitsSplit, *, verbose: bool = False) -> dict[str, float]:
    """Train ``vae`` in place on the training split; returns final metrics."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    for p in vae.parameters():
        p.requires_grad_(True)
    vae.train()
    x_all = to_vae_input(split.train_images)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vqvae_lr, betas=(0.9, 0.95), weight_decay=0.0)
    steps = cfg.vqvae_epochs * math.ceil(len(x_all) / cfg.vqvae_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.vqvae_lr, total_steps=steps, pct_start=0.1)
    rec_loss = vq_loss = float("nan")
    for ep in range(cfg.vqvae_epochs):
        t0 = time.time()
        perm = torch.randperm(len(x_all), generator=g)
        tot_r = tot_q = 0.0
        n = 0
        for i in range(0, len(perm), cfg.vqvae_batch):
            x = x_all[perm[i:i + cfg.vqvae_batch]]
            rec, vq = vae(x)
            rl = F.mse_loss(rec, x)
            loss = rl + vq
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_r += rl.item()
            tot_q += vq.item()
            n += 1
        rec_loss, vq_loss = tot_r / n, tot_q / n
        dead = _restart_dead_codes(vae, x_all, g) if ep < cfg.vqvae_restart_epochs else -1
        if verbose:
            print(f"vqvae epoch {ep + 1}/{cfg.vqvae_epochs}: rec {rec_loss:.4f} vq {vq_loss:.4f} "
                  f"dead codes restarted {dead if dead >= 0 else '-'} ({time.time() - t0:.1f} s)", flush=True)
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    return {"train_rec_mse_pm1": rec_loss, "train_vq_loss": vq_loss,
            "held_out_rec_mse_01": reconstruction_mse(vae, split.test_images),
            "train_rec_mse_01": reconstruction_mse(vae, split.train_images)}


@torch.no_grad()
def tokenize(vae: VQVAE, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth tokens [N, L] and VAR teacher-forcing input [N, L - 1, Cvae] of grey images."""
    vae.eval()
    idx_all, xin_all = [], []
    for i in range(0, len(images01), 256):
        idx = vae.img_to_idxBl(to_vae_input(images01[i:i + 256]))
        idx_all.append(torch.cat(idx, dim=1))
        xin_all.append(vae.quantize.idxBl_to_var_input(idx))
    return torch.cat(idx_all), torch.cat(xin_all)


@torch.no_grad()
def teacher_forced_eval(var: VAR, labels: torch.Tensor, gt: torch.Tensor, xin: torch.Tensor) -> dict[str, float]:
    """Mean cross-entropy and top-1 token accuracy of teacher-forced logits (eval mode)."""
    was = var.training
    var.eval()
    logits = var(labels, xin)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gt.reshape(-1)).item()
    acc = (logits.argmax(-1) == gt).float().mean().item()
    var.train(was)
    return {"ce": ce, "token_acc": acc}


def train_var(cfg: ModelConfig, vae: VQVAE, var: VAR, split: DigitsSplit, *, verbose: bool = False) -> dict[str, float]:
    """Train ``var`` in place (teacher forcing) on the tokenized training split; returns final metrics."""
    torch.manual_seed(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    gt, xin = tokenize(vae, split.train_images)
    gt_te, xin_te = tokenize(vae, split.test_images)
    y = split.train_labels
    var.train()
    decay = [p for n, p in var.named_parameters() if p.ndim >= 2 and "emb" not in n and "pos_" not in n]
    no_decay = [p for n, p in var.named_parameters() if not (p.ndim >= 2 and "emb" not in n and "pos_" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.var_weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.var_lr, betas=(0.9, 0.95))
    spe = math.ceil(len(y) / cfg.var_batch)
    total, warm = cfg.var_epochs * spe, cfg.var_warmup_epochs * spe

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))) * 0.99 + 0.01

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    train_ce = float("nan")
    for ep in range(cfg.var_epochs):
        t0 = time.time()
        perm = torch.randperm(len(y), generator=g)
        tot, n = 0.0, 0
        for i in range(0, len(perm), cfg.var_batch):
            b = perm[i:i + cfg.var_batch]
            logits = var(y[b], xin[b])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), gt[b].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
            opt.step()
            sched.step()
            tot += loss.item()
            n += 1
        train_ce = tot / n
        if verbose and ((ep + 1) % 5 == 0 or ep == 0 or ep + 1 == cfg.var_epochs):
            te = teacher_forced_eval(var, split.test_labels, gt_te, xin_te)
            print(f"var epoch {ep + 1}/{cfg.var_epochs}: train ce {train_ce:.4f} held-out ce {te['ce']:.4f} "
                  f"token acc {te['token_acc']:.3f} ({time.time() - t0:.1f} s/epoch)", flush=True)
    var.eval()
    te = teacher_forced_eval(var, split.test_labels, gt_te, xin_te)
    return {"train_ce_last_epoch": train_ce, "held_out_ce": te["ce"], "held_out_token_acc": te["token_acc"]}


# --------------------------------------------------------------------------- storage
def _fp16_state_dict(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).clone()
            for k, v in m.state_dict().items()}


def _fp32_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def train_models(cfg: ModelConfig, out: Path = ASSET_DIR, parts: Sequence[str] = ("vqvae", "var"),
                 *, verbose: bool = False) -> None:
    """Train the VQVAE and/or the VAR and write ``vqvae.pt``, ``var.pt``, ``model.json`` into ``out``.

    Training only the VAR reuses the VQVAE stored in ``out`` (its config must match ``cfg``)."""
    bad = sorted(set(parts) - {"vqvae", "var"})
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from 'vqvae', 'var'")
    out.mkdir(parents=True, exist_ok=True)
    split = load_digits_split()
    vae, var = build_models(cfg)
    meta_path = out / "model.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "vqvae" in parts:
        t0 = time.time()
        meta = {"vqvae_metrics": train_vqvae(cfg, vae, split, verbose=verbose),
                "vqvae_train_seconds": round(time.time() - t0, 1)}
        torch.save(_fp16_state_dict(vae), out / "vqvae.pt")
        _write_meta(meta_path, meta, cfg, split.data_hash)  # a VAR-only rerun can start from here
    else:
        if not (out / "vqvae.pt").exists():
            raise FileNotFoundError(f"{out / 'vqvae.pt'} missing: train the VQVAE first (--only vqvae)")
        if meta.get("config", {}) and ModelConfig.from_dict(meta["config"]).replace(
                var_epochs=cfg.var_epochs, var_batch=cfg.var_batch, var_lr=cfg.var_lr,
                var_weight_decay=cfg.var_weight_decay, var_warmup_epochs=cfg.var_warmup_epochs,
                cond_drop_rate=cfg.cond_drop_rate) != cfg:
            raise ValueError("the stored VQVAE was trained with another ModelConfig; retrain both (--only models)")
        vae.load_state_dict(_fp32_state_dict(torch.load(out / "vqvae.pt", weights_only=True)), strict=True)
        vae.eval()
        meta.setdefault("vqvae_metrics", {"held_out_rec_mse_01": reconstruction_mse(vae, split.test_images),
                                          "train_rec_mse_01": reconstruction_mse(vae, split.train_images)})
    # The VAR is trained on the fp16-rounded VQVAE, exactly as it is shipped.
    vae.load_state_dict(_fp32_state_dict(_fp16_state_dict(vae)), strict=True)
    if "var" in parts:
        t0 = time.time()
        meta["var_metrics"] = train_var(cfg, vae, var, split, verbose=verbose)
        meta["var_train_seconds"] = round(time.time() - t0, 1)
        torch.save(_fp16_state_dict(var), out / "var.pt")
    _write_meta(meta_path, meta, cfg, split.data_hash)


def _write_meta(path: Path, meta: dict[str, Any], cfg: ModelConfig, data_hash: str) -> None:
    meta.update({"config": cfg.to_dict(), "data_hash": data_hash,
                 "sampling": dataclasses.asdict(meta_sampling(meta)),
                 "storage": "float16 state dicts, loaded as float32 (strict=True)",
                 "torch": torch.__version__})
    path.write_text(json.dumps(meta, indent=2) + "\n")


def meta_sampling(meta: dict[str, Any]) -> SamplingConfig:
    return SamplingConfig(**meta["sampling"]) if "sampling" in meta else SamplingConfig()


# --------------------------------------------------------------------------- loading
@dataclass
class DigitsModel:
    """The loaded embedded model: VQVAE, VAR (float32, eval, frozen), config and metadata."""

    vae: VQVAE
    var: VAR
    config: ModelConfig
    sampling: SamplingConfig
    meta: dict[str, Any]


def load_digits_model(directory: Path = ASSET_DIR) -> DigitsModel:
    """Load the shipped tiny VQVAE + VAR (a fresh copy on every call: callers may quantize it)."""
    paths = [directory / n for n in ("model.json", "vqvae.pt", "var.pt")]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing {missing}; run `python scripts/train_digits.py --only models`")
    meta = json.loads(paths[0].read_text())
    if meta.get("data_hash") != load_digits_split().data_hash:
        raise ValueError("the shipped digits model was trained on other data than this scikit-learn provides; "
                         "retrain with `python scripts/train_digits.py`")
    cfg = ModelConfig.from_dict(meta["config"])
    vae, var = build_models(cfg)
    vae.load_state_dict(_fp32_state_dict(torch.load(paths[1], weights_only=True)), strict=True)
    var.load_state_dict(_fp32_state_dict(torch.load(paths[2], weights_only=True)), strict=True)
    vae.eval()
    var.eval()
    for p in list(vae.parameters()) + list(var.parameters()):
        p.requires_grad_(False)
    return DigitsModel(vae=vae, var=var, config=cfg, sampling=meta_sampling(meta), meta=meta)


@torch.no_grad()
def generate(var: VAR, labels: torch.Tensor, seed: int, sampling: SamplingConfig = SamplingConfig()) -> torch.Tensor:
    """Sample grey images [B, 1, 8, 8] in [0, 1] for ``labels`` [B] with ``var.autoregressive_infer_cfg``.

    Deterministic for a given (model, labels, seed, sampling): all draws come
    from the model's generator seeded with ``seed``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    imgs = var.autoregressive_infer_cfg(B=labels.numel(), label_B=labels, g_seed=seed, cfg=sampling.cfg,
                                        top_k=sampling.top_k, top_p=sampling.top_p)
    return to_grey(imgs)
