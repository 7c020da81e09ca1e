"""VAR's multi-scale VQVAE (FoundationVision/VAR ``models/vqvae.py``).

``vae_ch160v4096z32.pth`` is ``VQVAE(vocab_size=4096, z_channels=32, ch=160,
share_quant_resi=4)`` with the default ``ch_mult=(1, 1, 2, 2, 4)`` (16x
downsampling).  ``ch_mult``, ``num_res_blocks`` and ``in_channels`` are exposed
for small test models; the official values are the defaults.

Difference from the official class: the training ``forward`` returns
``(reconstruction, vq_loss)`` (no codebook-usage percentages, which need
torch.distributed); the quantizer's usage statistics are still tracked in
``quantize.ema_vocab_hit_SV``.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .basic_vae import Decoder, Encoder
from .quant import PatchNums, VectorQuantizer2

__all__ = ["VQVAE"]


class VQVAE(nn.Module):
    """Encoder -> ``quant_conv`` -> multi-scale VQ -> ``post_quant_conv`` -> decoder.

    Images are in [-1, 1]; ``fhat_to_img`` clamps to [-1, 1].  With
    ``test_mode=True`` (default, as official) the model is put in eval mode and
    its parameters are frozen.
    """

    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 128, dropout: float = 0.0,
                 beta: float = 0.25, using_znorm: bool = False, quant_conv_ks: int = 3, quant_resi: float = 0.5,
                 share_quant_resi: int = 4, default_qresi_counts: int = 0,
                 v_patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), test_mode: bool = True, *,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.test_mode = test_mode
        self.V, self.Cvae = vocab_size, z_channels
        dd = dict(dropout=dropout, ch=ch, z_channels=z_channels, in_channels=in_channels, ch_mult=tuple(ch_mult),
                  num_res_blocks=num_res_blocks, using_sa=True, using_mid_sa=True)
        self.encoder = Encoder(double_z=False, **dd)
        self.decoder = Decoder(**dd)
        self.vocab_size = vocab_size
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.quantize = VectorQuantizer2(vocab_size=vocab_size, Cvae=z_channels, using_znorm=using_znorm, beta=beta,
                                         default_qresi_counts=default_qresi_counts, v_patch_nums=v_patch_nums,
                                         quant_resi=quant_resi, share_quant_resi=share_quant_resi)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=quant_conv_ks // 2)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, quant_conv_ks, stride=1, padding=quant_conv_ks // 2)
        if test_mode:
            self.eval()
            for p in self.parameters():
                p.requires_grad_(False)

    @property
    def image_size(self) -> int:
        """Side of the images this VQVAE maps to ``v_patch_nums[-1]`` tokens."""
        return self.quantize.v_patch_nums[-1] * self.downsample

    def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: ``(reconstruction, vq_loss)`` with a straight-through ``f_hat``."""
        f_hat, vq_loss = self.quantize(self.quant_conv(self.encoder(inp)))
        return self.decoder(self.post_quant_conv(f_hat)), vq_loss

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """``decoder(post_quant_conv(f_hat))`` clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor, v_patch_nums: Optional[PatchNums] = None) -> List[torch.Tensor]:
        """Image [B, 3, H, W] in [-1, 1] -> token indices per scale, each [B, pn*pn]."""
        f = self.quant_conv(self.encoder(inp_img_no_grad))
        return self.quantize.f_to_idxBl_or_fhat(f, to_fhat=False, v_patch_nums=v_patch_nums)

    def idxBl_to_img(self, ms_idx_Bl: List[torch.Tensor], same_shape: bool,
                     last_one: bool = False) -> Union[List[torch.Tensor], torch.Tensor]:
        B = ms_idx_Bl[0].shape[0]
        ms_h = []
        for idx_Bl in ms_idx_Bl:
            pn = round(idx_Bl.shape[1] ** 0.5)
            ms_h.append(self.quantize.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn))
        return self.embed_to_img(ms_h, all_to_max_scale=same_shape, last_one=last_one)

    def embed_to_img(self, ms_h_BChw: List[torch.Tensor], all_to_max_scale: bool,
                     last_one: bool = False) -> Union[List[torch.Tensor], torch.Tensor]:
        if last_one:
            return self.fhat_to_img(self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=True))
        return [self.fhat_to_img(f) for f in self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale)]

    def img_to_reconstructed_img(self, x: torch.Tensor, v_patch_nums: Optional[PatchNums] = None,
                                 last_one: bool = False) -> Union[List[torch.Tensor], torch.Tensor]:
        f = self.quant_conv(self.encoder(x))
        f_hats = self.quantize.f_to_idxBl_or_fhat(f, to_fhat=True, v_patch_nums=v_patch_nums)
        if last_one:
            return self.fhat_to_img(f_hats[-1])
        return [self.fhat_to_img(f) for f in f_hats]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; like the official code, an ``ema_vocab_hit_SV``
        with another number of scales (usage statistics only) is replaced by this model's."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape[0] != self.quantize.ema_vocab_hit_SV.shape[0]:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
