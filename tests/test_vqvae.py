"""Multi-scale VQVAE: Phi schedule, nearest code, pyramid consistency, training path."""
from __future__ import annotations

from typing import List

import pytest
import torch

from fpqvar_quant.var import VQVAE, VectorQuantizer2
from fpqvar_quant.var.quant import PhiNonShared, PhiPartiallyShared, PhiShared

PN = (1, 2, 3, 4)


def tiny_vae(seed: int, dtype=torch.float64, **kw) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(vocab_size=64, z_channels=8, ch=32, v_patch_nums=PN, ch_mult=(1, 1), **kw).to(dtype)


@pytest.fixture(scope="module")
def vae() -> VQVAE:
    return tiny_vae(0)


def test_phi_schedule_of_the_official_vae():
    q = VectorQuantizer2(vocab_size=16, Cvae=4, using_znorm=False, share_quant_resi=4)
    assert isinstance(q.quant_resi, PhiPartiallyShared)
    assert q.phi_indices() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]  # design/var-model.md
    assert q.phi(2, 10) is q.quant_resi.qresi_ls[1]  # the exact tie at 2/9 goes to index 1, as numpy decides
    shared = VectorQuantizer2(vocab_size=16, Cvae=4, using_znorm=False, share_quant_resi=1)
    assert isinstance(shared.quant_resi, PhiShared) and shared.phi(0, 10) is shared.phi(9, 10)
    non = VectorQuantizer2(vocab_size=16, Cvae=4, using_znorm=False, share_quant_resi=0)
    assert isinstance(non.quant_resi, PhiNonShared) and non.phi_indices() == list(range(10))
    assert [k for k in non.state_dict() if k.endswith("weight")][:2] == ["quant_resi.0.weight", "quant_resi.1.weight"]


def test_phi_is_half_identity_half_conv_seed1():
    q = VectorQuantizer2(vocab_size=16, Cvae=4, using_znorm=False, share_quant_resi=4).double()
    h = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    phi = q.quant_resi.qresi_ls[2]
    exp = 0.5 * h + 0.5 * torch.nn.functional.conv2d(h, phi.weight, phi.bias, padding=1)
    torch.testing.assert_close(phi(h), exp, rtol=0, atol=1e-14)


def test_nearest_code_matches_brute_force_seed2(vae):
    z = torch.randn(500, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exp = torch.cdist(z, vae.quantize.embedding.weight).argmin(dim=1)
    assert torch.equal(vae.quantize.nearest_code(z), exp)
    # a code vector maps to itself
    assert torch.equal(vae.quantize.nearest_code(vae.quantize.embedding.weight[[5, 17]]), torch.tensor([5, 17]))


def images(seed: int, B: int = 2) -> torch.Tensor:
    return torch.rand(B, 3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def test_shapes_and_image_size(vae):
    assert vae.image_size == 8 and vae.downsample == 2
    idx = vae.img_to_idxBl(images(3))
    assert [tuple(i.shape) for i in idx] == [(2, p * p) for p in PN]
    assert all(int(i.max()) < 64 and int(i.min()) >= 0 for i in idx)
    img = vae.idxBl_to_img(idx, same_shape=True, last_one=True)
    assert img.shape == (2, 3, 8, 8) and img.abs().max() <= 1
    with pytest.raises(ValueError, match="last patch size"):
        vae.quantize.f_to_idxBl_or_fhat(torch.zeros(1, 8, 5, 5), to_fhat=False)


def test_pyramid_views_agree_seed4(vae):
    """f_to_idxBl_or_fhat(to_fhat) == embed_to_fhat(indices) == get_next_autoregressive_input chain,
    and idxBl_to_var_input == area-downsampled running f_hat."""
    q = vae.quantize
    f = vae.quant_conv(vae.encoder(images(4)))
    idx: List[torch.Tensor] = q.f_to_idxBl_or_fhat(f, to_fhat=False)
    fhats = q.f_to_idxBl_or_fhat(f, to_fhat=True)
    ms_h = [q.embedding(i).transpose(1, 2).reshape(2, 8, p, p) for i, p in zip(idx, PN)]
    for a, b in zip(q.embed_to_fhat(ms_h), fhats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    f_hat = torch.zeros_like(f)
    nexts = []
    for si, h in enumerate(ms_h):
        f_hat, nxt = q.get_next_autoregressive_input(si, len(PN), f_hat, h)
        nexts.append(nxt)
        torch.testing.assert_close(f_hat, fhats[si], rtol=0, atol=1e-12)
    var_in = q.idxBl_to_var_input(idx)
    assert var_in.shape == (2, sum(p * p for p in PN[1:]), 8)
    exp = torch.cat([n.reshape(2, 8, -1).transpose(1, 2) for n in nexts[:-1]], dim=1)
    torch.testing.assert_close(var_in, exp, rtol=0, atol=1e-12)


def test_reconstruction_paths_agree_seed5(vae):
    x = images(5)
    rec = vae.img_to_reconstructed_img(x, last_one=True)
    idx = vae.img_to_idxBl(x)
    torch.testing.assert_close(vae.idxBl_to_img(idx, same_shape=True, last_one=True), rec, rtol=0, atol=1e-12)
    assert len(vae.img_to_reconstructed_img(x)) == len(PN)


def test_training_forward_straight_through_and_usage_seed6():
    vae = tiny_vae(6, test_mode=False).train()
    x = images(6)
    rec, loss = vae(x)
    assert rec.shape == x.shape and loss.ndim == 0 and torch.isfinite(loss)
    (rec.square().mean() + loss).backward()
    assert vae.encoder.conv_in.weight.grad is not None and vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.decoder.conv_out.weight.grad.abs().sum() > 0
    hits = vae.quantize.ema_vocab_hit_SV
    assert torch.equal(hits.sum(dim=1), torch.tensor([2.0 * p * p for p in PN], dtype=hits.dtype))


def test_test_mode_freezes(vae):
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


def test_groupnorm_channel_error():
    with pytest.raises(ValueError, match="multiples of 32"):
        VQVAE(vocab_size=16, z_channels=8, ch=48, v_patch_nums=PN, ch_mult=(1, 1))
