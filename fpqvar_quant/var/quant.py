"""Multi-scale residual vector quantizer of VAR (FoundationVision/VAR ``models/quant.py``).

One codebook ``embedding`` (V x Cvae) is shared by all scales.  Scale ``si`` of
``SN`` quantizes the area-downsampled residual to ``pn x pn`` tokens (nearest
code by L2 distance, or by cosine with ``using_znorm``), upsamples the code
embeddings bicubically to the full ``H x W`` (not at the last scale), applies
``Phi_k(h) = (1 - r) h + r conv3x3(h)`` and adds the result to ``f_hat``.
The ``Phi`` used at scale ``si`` is chosen by ``si / (SN - 1)`` exactly like the
official code (``np.argmin(|ticks - ratio|)``); for 10 scales and 4 partially
shared convs that is ``[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["VectorQuantizer2", "Phi", "PhiShared", "PhiPartiallyShared", "PhiNonShared"]

PatchNums = Sequence[Union[int, Tuple[int, int]]]


def _ticks(K: int) -> np.ndarray:
    return np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def _nearest_tick(ticks: np.ndarray, at_from_0_to_1: float) -> int:
    return int(np.argmin(np.abs(ticks - at_from_0_to_1)).item())


class Phi(nn.Conv2d):
    """``h * (1 - r) + conv3x3(h) * r`` with ``r = |quant_resi|``."""

    def __init__(self, embed_dim: int, quant_resi: float) -> None:
        super().__init__(in_channels=embed_dim, out_channels=embed_dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiShared(nn.Module):
    """One ``Phi`` for every scale (``share_quant_resi == 1``)."""

    def __init__(self, qresi: nn.Module) -> None:
        super().__init__()
        self.qresi = qresi

    def __getitem__(self, _: float) -> nn.Module:
        return self.qresi


class PhiPartiallyShared(nn.Module):
    """``K`` convs ``qresi_ls.{0..K-1}``, scale ratio mapped to the nearest tick."""

    def __init__(self, qresi_ls: nn.ModuleList) -> None:
        super().__init__()
        self.qresi_ls = qresi_ls
        self.ticks = _ticks(len(qresi_ls))

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:
        return self.qresi_ls[_nearest_tick(self.ticks, at_from_0_to_1)]

    def extra_repr(self) -> str:
        return f"ticks={self.ticks}"


class PhiNonShared(nn.ModuleList):
    """One ``Phi`` per scale (``share_quant_resi == 0``), keys ``quant_resi.{i}``."""

    def __init__(self, qresi: List[nn.Module]) -> None:
        super().__init__(qresi)
        self.ticks = _ticks(len(qresi))

    def __getitem__(self, at_from_0_to_1: float) -> nn.Module:  # type: ignore[override]
        return super().__getitem__(_nearest_tick(self.ticks, at_from_0_to_1))

    def extra_repr(self) -> str:
        return f"ticks={self.ticks}"


class VectorQuantizer2(nn.Module):
    """Multi-scale VQ with residual ``Phi`` (see module docstring).

    Buffer ``ema_vocab_hit_SV`` [SN, V] (codebook usage statistics, only updated
    by :meth:`forward` in training mode) exists so official checkpoints load.
    """

    def __init__(self, vocab_size: int, Cvae: int, using_znorm: bool, beta: float = 0.25,
                 default_qresi_counts: int = 0, v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 quant_resi: float = 0.5, share_quant_resi: int = 4) -> None:
        super().__init__()
        if len(v_patch_nums) < 2:
            raise ValueError(f"v_patch_nums needs at least 2 scales, got {tuple(v_patch_nums)}")
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
        self.vocab_size, self.Cvae, self.using_znorm = vocab_size, Cvae, using_znorm
        self.v_patch_nums: Tuple[int, ...] = tuple(v_patch_nums)
        self.quant_resi_ratio = quant_resi

        def make_phi() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            self.quant_resi: nn.Module = PhiNonShared([make_phi() for _ in range(default_qresi_counts or len(self.v_patch_nums))])
        elif share_quant_resi == 1:
            self.quant_resi = PhiShared(make_phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([make_phi() for _ in range(share_quant_resi)]))
        self.register_buffer("ema_vocab_hit_SV", torch.full((len(self.v_patch_nums), vocab_size), fill_value=0.0))
        self.record_hit = 0
        self.beta = beta
        # default N(0, 1) init; skipped on the meta device (where normal_ is needlessly slow)
        self.embedding = nn.Embedding(vocab_size, Cvae, _weight=torch.empty(vocab_size, Cvae))
        if self.embedding.weight.device.type != "meta":
            nn.init.normal_(self.embedding.weight)

    def extra_repr(self) -> str:
        return f"{self.v_patch_nums}, znorm={self.using_znorm}, beta={self.beta}, quant_resi={self.quant_resi_ratio}"

    def phi(self, si: int, SN: int) -> nn.Module:
        """The ``Phi`` module used at scale ``si`` of ``SN``."""
        return self.quant_resi[si / (SN - 1)]

    def phi_indices(self, SN: Optional[int] = None) -> List[int]:
        """Index of the ``Phi`` used at each scale (partially shared / non-shared), e.g. [0,0,1,1,1,2,2,3,3,3]."""
        SN = SN or len(self.v_patch_nums)
        ticks = getattr(self.quant_resi, "ticks", None)
        if ticks is None:
            return [0] * SN
        return [_nearest_tick(ticks, si / (SN - 1)) for si in range(SN)]

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``z_NC`` [N, Cvae] (ties: lowest index)."""
        w = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(w.T, dim=0), dim=1)
        d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(w.square(), dim=1, keepdim=False)
        d.addmm_(z_NC, w.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    # ---------------------------------------------------------------- training
    def forward(self, f_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Quantize ``f`` over all scales (VQVAE training).

        Returns ``(f_hat_ste, vq_loss)``: ``f_hat`` with a straight-through
        gradient to ``f`` and the mean over scales of
        ``beta * mse(f_hat.detach(), f) + mse(f_hat, f.detach())``.
        In training mode also updates ``ema_vocab_hit_SV`` (single process).
        """
        B, C, H, W = f_BChw.shape
        f_no_grad = f_BChw.detach()
        f_rest = f_no_grad.clone()
        f_hat = torch.zeros_like(f_rest)
        SN = len(self.v_patch_nums)
        loss = f_BChw.new_zeros(())
        for si, pn in enumerate(self.v_patch_nums):
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))
            if self.training:
                hit_V = idx_N.bincount(minlength=self.vocab_size).to(self.ema_vocab_hit_SV.dtype)
                if self.record_hit == 0:
                    self.ema_vocab_hit_SV[si].copy_(hit_V)
                elif self.record_hit < 100:
                    self.ema_vocab_hit_SV[si].mul_(0.9).add_(hit_V.mul(0.1))
                else:
                    self.ema_vocab_hit_SV[si].mul_(0.99).add_(hit_V.mul(0.01))
            h = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.phi(si, SN)(h.contiguous())
            f_hat = f_hat + h
            f_rest = f_rest - h
            loss = loss + F.mse_loss(f_hat.data, f_BChw).mul_(self.beta) + F.mse_loss(f_hat, f_no_grad)
        if self.training:
            self.record_hit += 1
        return (f_hat.data - f_no_grad).add_(f_BChw), loss / SN

    # --------------------------------------------------------------- inference
    def f_to_idxBl_or_fhat(self, f_BChw: torch.Tensor, to_fhat: bool,
                           v_patch_nums: Optional[PatchNums] = None) -> List[torch.Tensor]:
        """Per scale: token indices [B, ph*pw] (``to_fhat=False``) or the cumulative ``f_hat`` clones."""
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        patch_hws = [(pn, pn) if isinstance(pn, int) else (pn[0], pn[1]) for pn in (v_patch_nums or self.v_patch_nums)]
        if patch_hws[-1] != (H, W):
            raise ValueError(f"the last patch size {patch_hws[-1]} must equal the feature map size {(H, W)}")
        SN = len(patch_hws)
        out: List[torch.Tensor] = []
        for si, (ph, pw) in enumerate(patch_hws):
            rest = F.interpolate(f_rest, size=(ph, pw), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.embedding(idx_N.view(B, ph, pw)).permute(0, 3, 1, 2)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.phi(si, SN)(h.contiguous())
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, ph * pw))
        return out

    def embed_to_fhat(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool = True,
                      last_one: bool = False) -> Union[List[torch.Tensor], torch.Tensor]:
        """Accumulate per-scale code embeddings [B, Cvae, pn, pn] into ``f_hat`` (list per scale, or the last)."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        dtype = torch.promote_types(ms_h_BChw[0].dtype, torch.float32)
        outs: List[torch.Tensor] = []
        if all_to_max_scale:
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, W, dtype=dtype)
            for si in range(SN):
                h = ms_h_BChw[si]
                if si < SN - 1:
                    h = F.interpolate(h, size=(H, W), mode="bicubic")
                f_hat.add_(self.phi(si, SN)(h))
                outs.append(f_hat.clone())
        else:  # experimental in the official code: upsample f_hat itself scale by scale
            f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, self.v_patch_nums[0], self.v_patch_nums[0], dtype=dtype)
            for si, pn in enumerate(self.v_patch_nums):
                f_hat = F.interpolate(f_hat, size=(pn, pn), mode="bicubic")
                f_hat.add_(self.phi(si, SN)(ms_h_BChw[si]))
                outs.append(f_hat)
        return outs[-1] if last_one else outs

    def idxBl_to_var_input(self, gt_ms_idx_Bl: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """Teacher-forcing input of VAR: [B, L - first_l, Cvae] (area-downsampled running ``f_hat``)."""
        B = gt_ms_idx_Bl[0].shape[0]
        C = self.Cvae
        H = W = self.v_patch_nums[-1]
        SN = len(self.v_patch_nums)
        dtype = torch.promote_types(self.embedding.weight.dtype, torch.float32)
        f_hat = torch.zeros(B, C, H, W, dtype=dtype, device=gt_ms_idx_Bl[0].device)
        next_scales = []
        pn_next = self.v_patch_nums[0]
        for si in range(SN - 1):
            h = self.embedding(gt_ms_idx_Bl[si]).transpose(1, 2).reshape(B, C, pn_next, pn_next)
            f_hat.add_(self.phi(si, SN)(F.interpolate(h, size=(H, W), mode="bicubic")))
            pn_next = self.v_patch_nums[si + 1]
            next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(next_scales, dim=1) if next_scales else None

    def get_next_autoregressive_input(self, si: int, SN: int, f_hat: torch.Tensor,
                                      h_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add scale ``si``'s embeddings to ``f_hat`` (in place) and return ``(f_hat, next input map)``."""
        HW = self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.phi(si, SN)(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic")))
            nxt = self.v_patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(nxt, nxt), mode="area")
        f_hat.add_(self.phi(si, SN)(h_BChw))
        return f_hat, f_hat
