"""VAR transformer semantics on tiny models (CPU, float64 where compared).

Tiny config: depth 2, embed_dim 128, 2 heads (head_dim 64 as official), V 64,
patch_nums (1, 2, 3, 4) (L = 30), VQVAE ch 32 with ch_mult (1, 1) (8x8 images).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import pytest
import torch
import torch.nn as nn

from fpqvar_quant.var import (VAR, VQVAE, SamplingStep, build_vae_var, quantization_test_init_,
                              sample_with_top_k_top_p_)

PN = (1, 2, 3, 4)
L = sum(p * p for p in PN)
V = 64


def tiny(seed: int, *, dtype=torch.float64, shared_aln: bool = False, attn_l2_norm: bool = True,
         outliers: int = 0, depth: int = 2) -> Tuple[VQVAE, VAR]:
    torch.manual_seed(seed)
    vae, var = build_vae_var(depth=depth, embed_dim=128, num_heads=2, V=V, ch=32, vae_ch_mult=(1, 1), patch_nums=PN,
                             shared_aln=shared_aln, attn_l2_norm=attn_l2_norm, dtype=dtype)
    quantization_test_init_(var, seed=seed, outlier_channels=outliers)
    return vae, var.eval()


@pytest.fixture(scope="module")
def model() -> Tuple[VQVAE, VAR]:
    return tiny(0)


def teacher_input(vae: VQVAE, B: int, seed: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = [torch.randint(0, V, (B, p * p), generator=g) for p in PN]
    return idx, vae.quantize.idxBl_to_var_input(idx)


def test_forward_shapes_and_dtype(model):
    vae, var = model
    _, x = teacher_input(vae, 3, seed=1)
    assert x.shape == (3, L - 1, 32)
    logits = var(torch.tensor([0, 5, 1000]), x)
    assert logits.shape == (3, L, V) and logits.dtype == torch.float64
    assert torch.isfinite(logits).all()


def test_forward_rejects_bad_shapes(model):
    vae, var = model
    _, x = teacher_input(vae, 2, seed=1)
    with pytest.raises(ValueError, match=r"x_BLCv_wo_first_l must be \[B, 29, 32\]"):
        var(torch.tensor([0, 1]), x[:, :-1])
    with pytest.raises(ValueError, match="label_B must have shape"):
        var(torch.tensor([0, 1, 2]), x)


def test_block_causal_mask_buffer(model):
    _, var = model
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(PN)])
    assert torch.equal(var.lvl_1L[0], lvl)
    m = var.attn_bias_for_masking[0, 0]
    allowed = lvl[None, :] <= lvl[:, None]  # [query, key]
    assert torch.equal(m == 0, allowed) and torch.isneginf(m[~allowed]).all()


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_teacher_forcing_is_scale_causal_seed3(model, scale):
    """Changing the inputs of one scale changes the logits of that scale and later ones only."""
    vae, var = model
    _, x = teacher_input(vae, 2, seed=3)
    lab = torch.tensor([4, 9])
    base = var(lab, x)
    x2 = x.clone()
    b, e = var.begin_ends[scale]
    x2[:, b - 1:e - 1] += 0.5  # x excludes the first token map
    out = var(lab, x2)
    assert torch.equal(out[:, :b], base[:, :b])
    assert (out[:, b:e] - base[:, b:e]).abs().amax() > 1e-6


def test_eval_forward_has_no_label_dropout_and_draws_nothing(model):
    vae, var = model
    _, x = teacher_input(vae, 2, seed=4)
    lab = torch.tensor([7, 8])
    torch.manual_seed(123)
    a = var(lab, x)
    state = torch.get_rng_state()
    b = var(lab, x)
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


def test_training_mode_label_dropout_uses_uncond_class():
    vae, var = tiny(5)
    for b in var.blocks:  # stochastic depth is also active in training mode
        b.drop_path = nn.Identity()
    var.train()
    var.cond_drop_rate = 1.0
    _, x = teacher_input(vae, 2, seed=5)
    dropped = var(torch.tensor([3, 4]), x)
    var.eval()
    uncond = var(torch.tensor([1000, 1000]), x)
    torch.testing.assert_close(dropped, uncond, rtol=0, atol=1e-12)


def collect(var: VAR, seed: int, **kw) -> Tuple[List[SamplingStep], torch.Tensor, List[torch.Tensor]]:
    steps: List[SamplingStep] = []
    res = var.sample_tokens(2, torch.tensor([3, 11]), g_seed=seed, step_callback=steps.append, **kw)
    return steps, res.f_hat, res.idx_Bl


@pytest.mark.parametrize("variant", ["plain", "shared_aln", "no_l2_norm", "math_attention", "kv_quantizer"])
def test_kv_cache_path_equals_masked_forward_seed6(variant):
    """The sampling path's per-scale logits (KV cache, no mask) equal the teacher-forced
    logits for the sampled tokens (full sequence, block-causal mask), both CFG halves."""
    vae, var = tiny(6, shared_aln=variant == "shared_aln", attn_l2_norm=variant != "no_l2_norm", outliers=3)
    if variant == "math_attention":
        for b in var.blocks:
            b.attn.use_sdpa = False
    calls = []
    if variant == "kv_quantizer":
        def kvq(k, v):  # a coarse per-element rounding: both paths must apply it identically
            calls.append(k.shape)
            return torch.round(k * 8) / 8, torch.round(v * 8) / 8
        for b in var.blocks:
            b.attn.kv_quantizer = kvq
    steps, _, idx = collect(var, seed=6, cfg=2.0, top_k=20, top_p=0.9)
    if variant == "kv_quantizer":
        assert [s[2] for s in calls] == [p * p for p in PN for _ in var.blocks]  # only new tokens each step
    x = vae.quantize.idxBl_to_var_input(idx)
    logits = var(torch.tensor([3, 11, 1000, 1000]), x.repeat(2, 1, 1))
    sampled = torch.cat([s.logits_2BlV for s in steps], dim=1)
    torch.testing.assert_close(sampled, logits, rtol=0, atol=1e-12)


def test_sdpa_and_math_attention_agree_seed7():
    vae, var = tiny(7)
    _, x = teacher_input(vae, 2, seed=7)
    lab = torch.tensor([1, 2])
    a = var(lab, x)
    for b in var.blocks:
        b.attn.use_sdpa = False
    torch.testing.assert_close(var(lab, x), a, rtol=0, atol=1e-12)


def test_same_seed_same_tokens_and_image_seed8(model):
    vae, var = model
    args = dict(B=2, label_B=torch.tensor([3, 11]), cfg=1.5, top_k=30, top_p=0.95)
    a = var.sample_tokens(g_seed=8, **args)
    b = var.sample_tokens(g_seed=8, **args)
    c = var.sample_tokens(g_seed=9, **args)
    assert all(torch.equal(p, q) for p, q in zip(a.idx_Bl, b.idx_Bl))
    assert not all(torch.equal(p, q) for p, q in zip(a.idx_Bl, c.idx_Bl))
    assert [t.shape for t in a.idx_Bl] == [(2, p * p) for p in PN]
    img = var.autoregressive_infer_cfg(g_seed=8, **args)
    assert img.shape == (2, 3, 8, 8) and img.min() >= 0 and img.max() <= 1
    torch.testing.assert_close(img, vae.fhat_to_img(a.f_hat).add(1).mul(0.5), rtol=0, atol=0)
    # the f_hat of sampling equals the VQVAE's accumulation of the sampled tokens
    ms_h = [vae.quantize.embedding(i).transpose(1, 2).reshape(2, 32, p, p) for i, p in zip(a.idx_Bl, PN)]
    torch.testing.assert_close(a.f_hat, vae.quantize.embed_to_fhat(ms_h, last_one=True), rtol=0, atol=1e-12)


def test_random_draw_order_matches_official_recipe_seed10(model):
    """Replays the official order of draws with an independent generator: labels (None ->
    one multinomial over uniform classes), then one multinomial per scale."""
    _, var = model
    steps: List[SamplingStep] = []
    res = var.sample_tokens(3, None, g_seed=10, cfg=1.5, top_k=0, top_p=0.0, step_callback=steps.append)
    g = torch.Generator().manual_seed(10)
    labels = torch.multinomial(torch.full((1, 1000), 1e-3), num_samples=3, replacement=True, generator=g).reshape(3)
    assert torch.equal(res.label_B, labels)
    for s in steps:
        t = 1.5 * s.si / (len(PN) - 1)
        guided = (1 + t) * s.logits_2BlV[:3] - t * s.logits_2BlV[3:]
        exp = torch.multinomial(guided.softmax(-1).view(-1, V), 1, replacement=True, generator=g).view(3, -1)
        assert torch.equal(s.idx_Bl, exp)


def test_top_k_1_is_greedy_on_guided_logits_seed11(model):
    _, var = model
    steps, _, _ = collect(var, seed=11, cfg=3.0, top_k=1, top_p=0.0)
    for s in steps:
        t = 3.0 * s.si / (len(PN) - 1)
        guided = (1 + t) * s.logits_2BlV[:2] - t * s.logits_2BlV[2:]
        assert torch.equal(s.idx_Bl, guided.argmax(-1))


def test_unconditional_int_label_and_more_smooth_seed12(model):
    _, var = model
    res = var.sample_tokens(2, -1, g_seed=12, cfg=1.0, top_k=10, top_p=0.9)
    assert torch.equal(res.label_B, torch.tensor([1000, 1000]))
    img = var.autoregressive_infer_cfg(2, 5, g_seed=12, cfg=1.5, top_k=10, top_p=0.9, more_smooth=True)
    assert img.shape == (2, 3, 8, 8) and torch.isfinite(img).all()
    with pytest.raises(ValueError, match="labels must be in 0..1000"):
        var.sample_tokens(2, torch.tensor([0, 1001]), g_seed=0)


def test_top_k_top_p_filtering_seed13():
    logits = torch.log(torch.tensor([[[0.05, 0.4, 0.3, 0.2, 0.05]]])).repeat(1, 400, 1)
    g = torch.Generator().manual_seed(13)
    # top-p 0.65: ascending cumulative [.05, .1, .3, .6, 1.0]; those <= 0.35 are dropped -> keep {1 (0.4), 2 (0.3)}
    idx = sample_with_top_k_top_p_(logits.clone(), top_p=0.65, rng=g)
    assert set(idx.unique().tolist()) == {1, 2}
    idx = sample_with_top_k_top_p_(logits.clone(), top_k=3, rng=g)
    assert set(idx.unique().tolist()) == {1, 2, 3}
    idx = sample_with_top_k_top_p_(logits.clone(), top_p=1e-6, rng=g)  # always keeps the top token
    assert set(idx.unique().tolist()) == {1}


def test_quantized_linears_are_plain_swappable_modules(model):
    _, var = model
    for b in var.blocks:
        for name in ("attn.mat_qkv", "attn.proj", "ffn.fc1", "ffn.fc2"):
            assert type(b.get_submodule(name)) is nn.Linear
    assert var.blocks[0].attn.mat_qkv.bias is None


def test_swapped_linear_is_used_in_both_paths_seed14():
    """A replacement of fc1 (here: an explicit transform y = (x H)(W H)^T + b with an orthogonal H,
    the GHT identity) is called by teacher forcing and sampling and leaves the result unchanged."""
    vae, var = tiny(14)
    _, x = teacher_input(vae, 2, seed=14)
    lab = torch.tensor([1, 2])
    ref = var(lab, x)
    q, _ = torch.linalg.qr(torch.randn(128, 128, generator=torch.Generator().manual_seed(14), dtype=torch.float64))

    class Rotated(nn.Module):
        def __init__(self, lin: nn.Linear):
            super().__init__()
            self.w, self.b, self.calls = lin.weight @ q, lin.bias, 0

        def forward(self, inp):
            self.calls += 1
            return (inp @ q) @ self.w.T + self.b

    for b in var.blocks:
        b.ffn.fc1 = Rotated(b.ffn.fc1)
    torch.testing.assert_close(var(lab, x), ref, rtol=1e-9, atol=1e-12)
    var.sample_tokens(1, 0, g_seed=0)
    assert all(b.ffn.fc1.calls == 1 + len(PN) for b in var.blocks)


def test_quantization_test_init_is_realistic_and_seeded():
    _, a = tiny(15, outliers=4)
    _, b = tiny(15, outliers=4)
    for (k, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), k
    gam = a.blocks[0].ada_lin[-1].bias.view(6, -1)[:2]
    assert gam.min() >= 0.1 and gam.max() <= 1.0
    outl = quantization_test_init_(a, seed=15, outlier_channels=4)
    seen = {}
    def grab(mod, inp, out):
        seen.setdefault("x", inp[0])

    hook = a.blocks[1].attn.mat_qkv.register_forward_hook(grab)
    a.sample_tokens(2, torch.tensor([0, 1]), g_seed=0)
    hook.remove()
    amax = seen["x"].abs().amax(dim=(0, 1))
    assert set(amax.topk(4).indices.tolist()) == set(outl.tolist())
    assert amax[outl].min() > 4 * amax.median()
    with pytest.raises(ValueError, match="gamma_range"):
        quantization_test_init_(a, gamma_range=(1.0, 0.5))


def test_official_init_is_near_identity():
    """Documented pitfall: the official init's gammas (1e-5) make blocks almost the identity."""
    torch.manual_seed(16)
    _, var = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=V, ch=32, vae_ch_mult=(1, 1), patch_nums=PN,
                           dtype=torch.float64)
    gam = var.blocks[0].ada_lin[-1].weight.view(6, 128, 128)[:2]
    assert 0 < gam.abs().max() <= 2e-5  # trunc_normal bound 2 times init_adaln_gamma


def test_builder_validation():
    with pytest.raises(ValueError, match="depth must be >= 1"):
        build_vae_var(device="meta", depth=0)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        build_vae_var(device="meta", depth=2, embed_dim=130, num_heads=4)
    with pytest.raises(ValueError, match="patch_nums"):
        build_vae_var(device="meta", depth=2, patch_nums=(2, 1))
    with pytest.raises(TypeError, match="floating-point"):
        build_vae_var(device="meta", depth=2, dtype=torch.int32)
    _, var = build_vae_var(device="meta", depth=4)
    assert (var.C, var.num_heads, var.blocks[0].attn.head_dim, var.L) == (256, 4, 64, 680)


def test_block_and_head_follow_the_design_equations_seed17():
    """Independent re-statement of design/var-model.md for one block and the head (float64)."""
    _, var = tiny(17, outliers=2)
    blk = var.blocks[1]
    blk.attn.scale_mul_1H11.data[0, 1] = 5.0  # above ln(100): must be clamped
    g = torch.Generator().manual_seed(17)
    B, Lq, C, H = 2, 5, 128, 2
    x = torch.randn(B, Lq, C, generator=g, dtype=torch.float64)
    cond = var.class_emb(torch.tensor([3, 1000]))

    def ln(t):
        return (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-6)

    mod = (torch.nn.functional.silu(cond) @ blk.ada_lin[1].weight.T + blk.ada_lin[1].bias).view(B, 1, 6, C)
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (mod[:, :, i] for i in range(6))
    a = blk.attn
    h = ln(x) * (1 + scale1) + shift1
    qkv = h @ a.mat_qkv.weight.T + torch.cat([a.q_bias, torch.zeros(C, dtype=torch.float64), a.v_bias])
    q, k, v = (qkv[..., i * C:(i + 1) * C].view(B, Lq, H, 64).transpose(1, 2) for i in range(3))
    temp = torch.exp(torch.clamp(a.scale_mul_1H11, max=math.log(100)))
    q = q / q.norm(dim=-1, keepdim=True) * temp
    k = k / k.norm(dim=-1, keepdim=True)
    o = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, C)
    x1 = x + gamma1 * (o @ a.proj.weight.T + a.proj.bias)
    f = blk.ffn
    h2 = ln(x1) * (1 + scale2) + shift2
    u = h2 @ f.fc1.weight.T + f.fc1.bias
    gelu = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
    x2 = x1 + gamma2 * (gelu @ f.fc2.weight.T + f.fc2.bias)
    torch.testing.assert_close(blk(x, cond, attn_bias=None), x2, rtol=1e-12, atol=1e-12)

    hm = var.head_nm.ada_lin[1]
    scale, shift = (torch.nn.functional.silu(cond) @ hm.weight.T + hm.bias).view(B, 1, 2, C).unbind(2)
    logits = (ln(x2) * (1 + scale) + shift) @ var.head.weight.T + var.head.bias
    torch.testing.assert_close(var.get_logits(x2, cond), logits, rtol=1e-12, atol=1e-12)


def test_token_embedding_composition_seed18(model):
    """First token = class_emb(label) + pos_start + lvl_embed(0) + pos_1LC[0]; others =
    word_embed(x) + lvl_embed(scale) + pos_1LC[i]  (design/var-model.md)."""
    vae, var = model
    _, x = teacher_input(vae, 2, seed=18)
    lab = torch.tensor([6, 1000])
    seen = {}

    def grab(mod, args, kwargs):
        seen["x"] = kwargs["x"]

    hook = var.blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    var(lab, x)
    hook.remove()
    lvl = var.lvl_1L[0]
    first = var.class_emb(lab) + var.pos_start[0, 0] + var.lvl_embed.weight[0] + var.pos_1LC[0, 0]
    rest = x @ var.word_embed.weight.T + var.word_embed.bias + var.lvl_embed.weight[lvl[1:]] + var.pos_1LC[0, 1:]
    torch.testing.assert_close(seen["x"][:, 0], first, rtol=0, atol=1e-12)
    torch.testing.assert_close(seen["x"][:, 1:], rest, rtol=0, atol=1e-12)
