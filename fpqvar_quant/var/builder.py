"""``build_vae_var``: the official builder (FoundationVision/VAR ``models/__init__.py``),
same keywords and positional order, without its process-wide hack (the official
builder replaces ``reset_parameters`` of torch.nn layer classes for speed).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from .var import VAR
from .vqvae import VQVAE

__all__ = ["build_vae_var", "PATCH_NUMS_256", "PATCH_NUMS_512", "OFFICIAL_DEPTHS", "reset_vae_parameters_"]

PATCH_NUMS_256: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512: Tuple[int, ...] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
#: depths of the released checkpoints (36: 512px, shared adaLN)
OFFICIAL_DEPTHS: Tuple[int, ...] = (16, 20, 24, 30, 36)


def build_vae_var(device: Union[str, torch.device] = "cpu", patch_nums: Sequence[int] = PATCH_NUMS_256,
                  V: int = 4096, Cvae: int = 32, ch: int = 160, share_quant_resi: int = 4,
                  num_classes: int = 1000, depth: int = 16, shared_aln: bool = False, attn_l2_norm: bool = True,
                  flash_if_available: bool = False, fused_if_available: bool = False,
                  init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                  init_std: float = -1, *, embed_dim: Optional[int] = None, num_heads: Optional[int] = None,
                  mlp_ratio: float = 4.0, dtype: torch.dtype = torch.float32,
                  vae_ch_mult: Sequence[int] = (1, 1, 2, 2, 4), vae_num_res_blocks: int = 2,
                  vae_in_channels: int = 3, drop_path_rate: Optional[float] = None,
                  init: bool = True) -> Tuple[VQVAE, VAR]:
    """Build ``(vae, var)`` like the official code: ``embed_dim = 64 * depth``,
    ``num_heads = depth``, ``drop_path_rate = 0.1 * depth / 24``, ``cond_drop_rate = 0.1``,
    then ``var.init_weights(init_adaln, init_adaln_gamma, init_head, init_std)``.

    Both models are on ``device`` with floating-point dtype ``dtype``; the VQVAE is
    in eval mode with frozen parameters (``test_mode``).  ``device="meta"`` builds
    shape-only models (key/shape checks of big depths without memory).

    ``flash_if_available`` / ``fused_if_available`` are accepted for
    compatibility and ignored: this package only has pure-PyTorch paths.

    Keyword-only extras for small models: ``embed_dim`` / ``num_heads``
    (default ``64 * depth`` / ``depth``), ``mlp_ratio``, ``vae_ch_mult``,
    ``vae_num_res_blocks``, ``vae_in_channels`` (image channels) and ``drop_path_rate``.

    ``init=False`` skips the random initialisation (parameters are allocated but
    left uninitialised, buffers are computed): for models that are loaded from a
    checkpoint right away (a d30 random init costs minutes on a CPU).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if len(patch_nums) < 2 or any(int(p) < 1 for p in patch_nums) or list(patch_nums) != sorted(patch_nums):
        raise ValueError(f"patch_nums must be >= 2 increasing positive ints, got {tuple(patch_nums)}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    embed_dim = 64 * depth if embed_dim is None else embed_dim
    num_heads = depth if num_heads is None else num_heads
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
    dpr = 0.1 * depth / 24 if drop_path_rate is None else drop_path_rate
    device = torch.device(device)
    # Construct on the meta device (no memory, no default init), then allocate on
    # ``device`` and initialise exactly once: VQVAE with PyTorch's default layer
    # init, VAR with the official ``init_weights``.  Nothing global is patched.
    with torch.device("meta"):
        vae = VQVAE(vocab_size=V, z_channels=Cvae, ch=ch, test_mode=True, share_quant_resi=share_quant_resi,
                    v_patch_nums=tuple(patch_nums), ch_mult=vae_ch_mult, num_res_blocks=vae_num_res_blocks,
                    in_channels=vae_in_channels)
        var = VAR(vae_local=vae, num_classes=num_classes, depth=depth, embed_dim=embed_dim, num_heads=num_heads,
                  mlp_ratio=mlp_ratio, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=dpr, norm_eps=1e-6,
                  shared_aln=shared_aln, cond_drop_rate=0.1, attn_l2_norm=attn_l2_norm, patch_nums=tuple(patch_nums),
                  flash_if_available=flash_if_available, fused_if_available=fused_if_available)
    vae.to_empty(device=device).to(dtype=dtype)
    var.to_empty(device=device).to(dtype=dtype)
    if device.type != "meta":
        var.reset_buffers()
        vae.quantize.ema_vocab_hit_SV.zero_()
    if device.type != "meta" and init:
        reset_vae_parameters_(vae)
        var.reset_direct_parameters()
        var.init_weights(init_adaln=init_adaln, init_adaln_gamma=init_adaln_gamma, init_head=init_head,
                         init_std=init_std)
    return vae, var


@torch.no_grad()
def reset_vae_parameters_(vae: VQVAE) -> None:
    """PyTorch's default initialisation of every VQVAE layer, zero usage statistics."""
    for m in vae.modules():
        if m is not vae and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    vae.quantize.ema_vocab_hit_SV.zero_()
