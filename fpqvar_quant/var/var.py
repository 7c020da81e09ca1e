"""The VAR transformer (FoundationVision/VAR ``models/var.py``, commit 78b9539 semantics).

Parameter/buffer names equal the official ones (``var_d{16,20,24,30}.pth`` load
with ``strict=True``; ``var_d36`` with ``shared_aln=True`` and the 512px patch
numbers).  The VQVAE is referenced, not a submodule (no ``vae.*`` keys).

Differences from the official module, all without effect on the results of a
model in eval mode:

* no flash-attn / xformers / fused MLP: attention is
  ``F.scaled_dot_product_attention`` (what the official code runs without those
  packages) or an explicit matmul path (``attn.use_sdpa = False``);
* label dropout (``cond_drop_rate``) is applied only in training mode (the
  official code also draws ``torch.rand`` in eval; we do not touch the global
  RNG in eval);
* logits are computed in ``promote(dtype, float32)`` so float64 models stay float64;
* ``sample_tokens`` exposes the sampling loop (indices, ``f_hat``, per-step
  callback); ``autoregressive_infer_cfg`` is ``sample_tokens`` + decoding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .basic import AdaLNBeforeHead, AdaLNSelfAttn
from .helpers import gumbel_softmax_with_rng, sample_with_top_k_top_p_
from .vqvae import VQVAE

__all__ = ["VAR", "SharedAdaLin", "SamplingStep", "SampleResult"]


class SharedAdaLin(nn.Linear):
    """Linear(D, 6C) whose output is viewed as [B, 1, 6, C] (shared adaLN, d36)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.weight.shape[0] // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


@dataclass(frozen=True)
class SamplingStep:
    """What :meth:`VAR.sample_tokens` reports after sampling scale ``si``.

    ``logits_2BlV`` are the unguided logits of both CFG halves (conditional rows
    first), before guidance, top-k/top-p; ``idx_Bl`` the sampled tokens [B, pn*pn].
    """
    si: int
    pn: int
    logits_2BlV: torch.Tensor
    idx_Bl: torch.Tensor


@dataclass(frozen=True)
class SampleResult:
    """Tokens per scale (each [B, pn*pn]), the final ``f_hat`` [B, Cvae, pn_last, pn_last] and the labels used."""
    idx_Bl: List[torch.Tensor]
    f_hat: torch.Tensor
    label_B: torch.Tensor


class VAR(nn.Module):
    """Visual autoregressive transformer over ``patch_nums`` token maps.

    Token sequence of length ``L = sum(pn^2)``; the first ``first_l = pn_0^2``
    tokens are the start tokens (class embedding + ``pos_start``), the rest are
    ``word_embed`` of the teacher-forcing input.  ``lvl_embed(lvl_1L) + pos_1LC``
    is added to every token.  ``attn_bias_for_masking`` [1, 1, L, L] is 0 where
    the key's scale <= the query's scale and -inf elsewhere.
    """

    def __init__(self, vae_local: VQVAE, num_classes: int = 1000, depth: int = 16, embed_dim: int = 1024,
                 num_heads: int = 16, mlp_ratio: float = 4.0, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False,
                 cond_drop_rate: float = 0.1, attn_l2_norm: bool = False,
                 patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 flash_if_available: bool = False, fused_if_available: bool = False) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        if tuple(patch_nums) != tuple(vae_local.quantize.v_patch_nums):
            raise ValueError(f"patch_nums {tuple(patch_nums)} differ from the VQVAE's v_patch_nums "
                             f"{tuple(vae_local.quantize.v_patch_nums)}; build both with the same patch_nums")
        self.Cvae, self.V = vae_local.Cvae, vae_local.vocab_size
        self.depth, self.C, self.D, self.num_heads = depth, embed_dim, embed_dim, num_heads
        self.cond_drop_rate = cond_drop_rate
        self.prog_si = -1
        self.patch_nums: Tuple[int, ...] = tuple(int(p) for p in patch_nums)
        self.L = sum(pn ** 2 for pn in self.patch_nums)
        self.first_l = self.patch_nums[0] ** 2
        self.begin_ends: List[Tuple[int, int]] = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn ** 2))
            cur += pn ** 2
        self.num_stages_minus_1 = len(self.patch_nums) - 1
        self.rng: Optional[torch.Generator] = None  # created on the model's device at first seeded sampling

        self.vae_proxy: Tuple[VQVAE] = (vae_local,)
        self.vae_quant_proxy = (vae_local.quantize,)
        self.word_embed = nn.Linear(self.Cvae, self.C)

        init_std = math.sqrt(1 / self.C / 3)
        self.num_classes = num_classes
        # ``_weight``: skip nn.Embedding's default normal_ init, overwritten right away
        self.class_emb = nn.Embedding(num_classes + 1, self.C, _weight=torch.empty(num_classes + 1, self.C))
        nn.init.trunc_normal_(self.class_emb.weight.data, mean=0, std=init_std)
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, self.C))
        nn.init.trunc_normal_(self.pos_start.data, mean=0, std=init_std)
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, self.C))
        nn.init.trunc_normal_(self.pos_1LC.data, mean=0, std=init_std)
        self.lvl_embed = nn.Embedding(len(self.patch_nums), self.C, _weight=torch.empty(len(self.patch_nums), self.C))
        nn.init.trunc_normal_(self.lvl_embed.weight.data, mean=0, std=init_std)

        self.shared_ada_lin = (nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(self.D, 6 * self.C))
                               if shared_aln else nn.Identity())
        self.drop_path_rate = drop_path_rate
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth, device="cpu")]
        self.blocks = nn.ModuleList([
            AdaLNSelfAttn(block_idx=i, embed_dim=self.C, cond_dim=self.D, shared_aln=shared_aln, num_heads=num_heads,
                          norm_eps=norm_eps, mlp_ratio=mlp_ratio, drop=drop_rate, attn_drop=attn_drop_rate,
                          drop_path=dpr[i], attn_l2_norm=attn_l2_norm)
            for i in range(depth)
        ])

        lvl_1L, attn_bias = self._make_buffers(None)  # None: the default device (honours ``with torch.device``)
        self.register_buffer("lvl_1L", lvl_1L)
        self.register_buffer("attn_bias_for_masking", attn_bias)

        self.head_nm = AdaLNBeforeHead(self.C, self.D, norm_eps=norm_eps)
        self.head = nn.Linear(self.C, self.V)

    def _make_buffers(self, device: Optional[torch.device]) -> Tuple[torch.Tensor, torch.Tensor]:
        target = torch.empty(0).device if device is None else device
        d = torch.cat([torch.full((pn * pn,), i, device="cpu") for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        dT = d.transpose(1, 2)
        attn_bias = torch.where(d >= dT, 0.0, -torch.inf).reshape(1, 1, self.L, self.L).contiguous()
        return dT[:, 0].contiguous().to(target), attn_bias.to(target)

    @torch.no_grad()
    def reset_direct_parameters(self) -> None:
        """Constructor values of the parameters that are not inside a torch.nn layer: ``pos_start``, ``pos_1LC``
        (trunc-normal, std ``sqrt(1/3C)``), ``q_bias``/``v_bias`` (0), ``scale_mul_1H11`` (log 4),
        ``ada_gss`` (randn / sqrt(C)).  Layer weights are set by :meth:`init_weights`."""
        std = math.sqrt(1 / self.C / 3)
        nn.init.trunc_normal_(self.pos_start.data, mean=0, std=std)
        nn.init.trunc_normal_(self.pos_1LC.data, mean=0, std=std)
        for b in self.blocks:
            b.attn.q_bias.data.zero_()
            b.attn.v_bias.data.zero_()
            if b.attn.attn_l2_norm:
                b.attn.scale_mul_1H11.data.fill_(math.log(4.0))
            if b.shared_aln:
                b.ada_gss.data.normal_().div_(self.C ** 0.5)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the non-learned buffers (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``) in place,
        e.g. after ``to_empty()``."""
        lvl_1L, attn_bias = self._make_buffers(self.lvl_1L.device)
        self.lvl_1L.copy_(lvl_1L)
        self.attn_bias_for_masking.copy_(attn_bias)
        for b in self.blocks:
            b.attn.zero_k_bias.zero_()

    # ------------------------------------------------------------------ helpers
    @property
    def vae(self) -> VQVAE:
        """The VQVAE this model samples with (not a submodule)."""
        return self.vae_proxy[0]

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """``head(head_nm(h, cond))`` computed in at least float32."""
        dt = torch.promote_types(h.dtype, torch.float32)
        return self.head(self.head_nm(h.to(dt), cond_BD).to(dt)).to(dt)

    def lvl_pos(self) -> torch.Tensor:
        """``lvl_embed(lvl_1L) + pos_1LC``: [1, L, C]."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def _cond_labels(self, B: int, label_B: Optional[Union[int, torch.Tensor]],
                     rng: Optional[torch.Generator]) -> torch.Tensor:
        dev = self.lvl_1L.device
        if label_B is None:
            uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, dtype=torch.float32, device=dev)
            if isinstance(rng, list):
                return torch.cat([torch.multinomial(uniform, num_samples=1, replacement=True, generator=g).reshape(1)
                                  for g in rng])
            return torch.multinomial(uniform, num_samples=B, replacement=True, generator=rng).reshape(B)
        if isinstance(label_B, int):
            return torch.full((B,), fill_value=self.num_classes if label_B < 0 else label_B, device=dev)
        label_B = torch.as_tensor(label_B, device=dev)
        if label_B.shape != (B,):
            raise ValueError(f"label_B must have shape ({B},), got {tuple(label_B.shape)}")
        if label_B.numel() and (int(label_B.min()) < 0 or int(label_B.max()) > self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes} ({self.num_classes} = unconditional)")
        return label_B

    # ------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_tokens(self, B: int, label_B: Optional[Union[int, torch.LongTensor]],
                      g_seed: Optional[Union[int, Sequence[int]]] = None,
                      cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                      step_callback: Optional[Callable[[SamplingStep], None]] = None) -> SampleResult:
        """The sampling loop of :meth:`autoregressive_infer_cfg`, without decoding.

        Random draws (all from ``self.rng`` seeded with ``g_seed``, or the global
        RNG when ``g_seed`` is None; a sequence of ``B`` seeds gives every image its own
        generator, so an image does not depend on the batch it is sampled in), in order:
        labels when ``label_B`` is None;
        then per scale one multinomial (and, with ``more_smooth``, one
        exponential_ draw for the Gumbel noise).  CFG: the batch is doubled
        (labels, then B copies of class ``num_classes``); guidance
        ``t = cfg * si / (S - 1)``; ``logits = (1 + t) cond - t uncond``.
        """
        if B < 1:
            raise ValueError(f"B must be >= 1, got {B}")
        if g_seed is None:
            rng = None
        elif not isinstance(g_seed, int):      # one seed per image: rows independent of the batch
            seeds = [int(s) for s in g_seed]
            if len(seeds) != B:
                raise ValueError(f"g_seed has {len(seeds)} seeds for B={B} images")
            dev = self.lvl_1L.device
            rng = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        else:
            dev = self.lvl_1L.device
            if self.rng is None or self.rng.device != dev:
                self.rng = torch.Generator(device=dev)
            self.rng.manual_seed(g_seed)
            rng = self.rng
        label_B = self._cond_labels(B, label_B, rng)
        quant = self.vae_quant_proxy[0]
        SN = len(self.patch_nums)

        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, fill_value=self.num_classes)), dim=0))
        lvl_pos = self.lvl_pos()
        next_token_map = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1)
                          + self.pos_start.expand(2 * B, self.first_l, -1) + lvl_pos[:, :self.first_l])
        cur_L = 0
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        f_hat = f_hat.to(torch.promote_types(f_hat.dtype, quant.embedding.weight.dtype))
        ms_idx: List[torch.Tensor] = []
        for b in self.blocks:
            b.attn.kv_caching(True)
        try:
            for si, pn in enumerate(self.patch_nums):
                ratio = si / self.num_stages_minus_1
                cur_L += pn * pn
                cond_BD_or_gss = self.shared_ada_lin(cond_BD)
                x = next_token_map
                for b in self.blocks:
                    x = b(x=x, cond_BD=cond_BD_or_gss, attn_bias=None)
                logits_2BlV = self.get_logits(x, cond_BD)
                t = cfg * ratio
                logits_BlV = (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]
                idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=top_p, num_samples=1)[:, :, 0]
                if step_callback is not None:
                    step_callback(SamplingStep(si=si, pn=pn, logits_2BlV=logits_2BlV, idx_Bl=idx_Bl))
                ms_idx.append(idx_Bl)
                if not more_smooth:
                    h_BlC = quant.embedding(idx_Bl)
                else:  # visualisation only (not used for FID/IS)
                    gum_t = max(0.27 * (1 - ratio * 0.95), 0.005)
                    h_BlC = gumbel_softmax_with_rng(logits_BlV.mul(1 + ratio), tau=gum_t, hard=False, dim=-1, rng=rng) \
                        @ quant.embedding.weight.unsqueeze(0)
                h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn).to(f_hat.dtype)
                f_hat, next_token_map = quant.get_next_autoregressive_input(si, SN, f_hat, h_BChw)
                if si != self.num_stages_minus_1:
                    next_token_map = next_token_map.view(B, self.Cvae, -1).transpose(1, 2)
                    next_token_map = (self.word_embed(next_token_map.to(self.word_embed.weight.dtype))
                                      + lvl_pos[:, cur_L:cur_L + self.patch_nums[si + 1] ** 2])
                    next_token_map = next_token_map.repeat(2, 1, 1)
        finally:
            for b in self.blocks:
                b.attn.kv_caching(False)
        return SampleResult(idx_Bl=ms_idx, f_hat=f_hat, label_B=label_B)

    @torch.no_grad()
    def autoregressive_infer_cfg(self, B: int, label_B: Optional[Union[int, torch.LongTensor]],
                                 g_seed: Optional[Union[int, Sequence[int]]] = None, cfg: float = 1.5,
                                 top_k: int = 0, top_p: float = 0.0,
                                 more_smooth: bool = False) -> torch.Tensor:
        """Sample B images [B, 3, H, W] in [0, 1] (official signature and random-draw order).

        ``label_B``: None (uniformly random classes), an int (< 0: unconditional)
        or a LongTensor [B].  See :meth:`sample_tokens`.
        """
        res = self.sample_tokens(B, label_B, g_seed=g_seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return self.vae_proxy[0].fhat_to_img(res.f_hat).add_(1).mul_(0.5)

    # ------------------------------------------------------ teacher forcing
    def forward(self, label_B: torch.LongTensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, L, V].

        ``x_BLCv_wo_first_l``: [B, L - first_l, Cvae], e.g. from
        ``vae.quantize.idxBl_to_var_input``.  In training mode labels are
        replaced by the unconditional class with probability ``cond_drop_rate``
        (one ``torch.rand(B)`` from the global RNG); in eval mode never.
        """
        bg, ed = self.begin_ends[self.prog_si] if self.prog_si >= 0 else (0, self.L)
        B = x_BLCv_wo_first_l.shape[0]
        if x_BLCv_wo_first_l.shape[1:] != (ed - self.first_l, self.Cvae):
            raise ValueError(f"x_BLCv_wo_first_l must be [B, {ed - self.first_l}, {self.Cvae}], "
                             f"got {list(x_BLCv_wo_first_l.shape)}")
        if label_B.shape != (B,):
            raise ValueError(f"label_B must have shape ({B},), got {tuple(label_B.shape)}")
        if self.training and self.cond_drop_rate > 0:
            label_B = torch.where(torch.rand(B, device=label_B.device) < self.cond_drop_rate, self.num_classes, label_B)
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        if self.prog_si == 0:
            x_BLC = sos
        else:
            x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.to(self.word_embed.weight.dtype))), dim=1)
        x_BLC = x_BLC + (self.lvl_embed(self.lvl_1L[:, :ed].expand(B, -1)) + self.pos_1LC[:, :ed])
        attn_bias = self.attn_bias_for_masking[:, :, :ed, :ed]
        cond_BD_or_gss = self.shared_ada_lin(cond_BD)
        for b in self.blocks:
            x_BLC = b(x=x_BLC, cond_BD=cond_BD_or_gss, attn_bias=attn_bias)
        return self.get_logits(x_BLC, cond_BD)

    # --------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     init_std: float = 0.02, conv_std_or_gain: float = 0.02) -> None:
        """The official initialisation (``init_std < 0``: ``sqrt(1 / 3C)``).

        Linear/Embedding weights ~ trunc_normal(std), biases 0; head weight
        scaled by ``init_head``; ``proj`` and ``fc2`` divided by ``sqrt(2 depth)``;
        adaLN weights scaled by ``init_adaln`` (gamma rows by ``init_adaln_gamma``,
        which makes a fresh model almost the identity: see
        :func:`fpqvar_quant.var.init.quantization_test_init_` for test models).
        """
        if init_std < 0:
            init_std = (1 / self.C / 3) ** 0.5
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight.data, std=init_std)
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight.data, std=init_std)
                if m.padding_idx is not None:
                    m.weight.data[m.padding_idx].zero_()
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.data.fill_(1.0)
                if m.bias is not None:
                    m.bias.data.zero_()
        if init_head >= 0:
            self.head.weight.data.mul_(init_head)
            self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        depth = len(self.blocks)
        for sab in self.blocks:
            sab.attn.proj.weight.data.div_(math.sqrt(2 * depth))
            sab.ffn.fc2.weight.data.div_(math.sqrt(2 * depth))
            if not sab.shared_aln:
                sab.ada_lin[-1].weight.data[2 * self.C:].mul_(init_adaln)
                sab.ada_lin[-1].weight.data[:2 * self.C].mul_(init_adaln_gamma)
                sab.ada_lin[-1].bias.data.zero_()
            else:
                sab.ada_gss.data[:, :, 2:].mul_(init_adaln)
                sab.ada_gss.data[:, :, :2].mul_(init_adaln_gamma)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, embed_dim={self.C}, num_heads={self.num_heads}, "
                f"patch_nums={self.patch_nums}, L={self.L}, V={self.V}")
