"""golden.block: one VAR block on the accelerator, composed of the unit golden models.

* ``group_dot`` (the fast all-pairs form used by ``gemm``) equals ``golden.dot.dot``
  bit for bit, special values included;
* ``gemm`` equals the explicit unit chain convert -> Hadamard -> quantize -> dot -> +bias;
* keys use the temperature 0, which equals no temperature bit for bit;
* the chained golden blocks follow the torch fake-quant model of the shipped digits
  VAR (fp4-fpqvar, and with a kv6 cache) over all four scale steps.

The quantized digits package is built once per session by :func:`digits_fpqvar`
(also used by ``tests/test_compiler.py``).
"""
from __future__ import annotations

import copy
import types

import numpy as np
import pytest

from fpqvar_quant.golden import block as gb
from fpqvar_quant.golden import fp32 as gfp32
from fpqvar_quant.golden import vector as gv
from fpqvar_quant.golden.dot import dot
from fpqvar_quant.golden.hadamard import hadamard_groups
from fpqvar_quant.golden.quantizer import quantize_groups


@pytest.fixture(scope="session")
def digits_fpqvar(tmp_path_factory):
    """(torch DigitsModel quantized with fp4-fpqvar, package path): 4 calibration
    images, 2 GALT epochs on at most 256 rows per layer (about 30 s)."""
    pytest.importorskip("torch")
    from fpqvar_quant.digits.evaluate import make_calibration
    from fpqvar_quant.digits.model import load_digits_model
    from fpqvar_quant.ptq.config import get_preset
    from fpqvar_quant.ptq.export import export_package
    from fpqvar_quant.ptq.quantize_model import quantize_model

    root = tmp_path_factory.mktemp("digits_fpqvar")
    model = load_digits_model()
    calib = make_calibration(model, root / "calib", num_images=4)
    cfg = get_preset("fp4-fpqvar", galt_epochs=2)
    report = quantize_model(model.var, cfg, calib, max_tokens=256, progress=False)
    return model, export_package(model.var, report, root / "pkg")


def step_inputs(var, labels, seed: int):
    """Per-step block inputs [R, L_step, C] of a teacher-forced pass with random
    token embeddings (first step: class sos), and the adaLN vectors [R, 6, C] per block."""
    import torch

    R = len(labels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        cond = var.class_emb(torch.tensor(labels))
        sos = cond.unsqueeze(1) + var.pos_start
        words = var.word_embed(torch.randn(R, var.L - 1, var.Cvae, generator=g))
        full = torch.cat([sos, words], 1) + var.lvl_embed(var.lvl_1L.expand(R, -1)) + var.pos_1LC
        gss = var.shared_ada_lin(cond)
        ada = [torch.stack(b.modulation(gss), 1).reshape(R, 6, -1).numpy() for b in var.blocks]
    return [full[:, bg:ed] for bg, ed in var.begin_ends], gss, ada


# ----------------------------------------------------------------- group_dot
@pytest.mark.parametrize("a_fmt, w_fmt, bits, seed", [
    ("e2m1fn", "e2m1fn", 4, 0), ("dfq", "e2m1fn", 4, 1), ("e2m3fn", "e2m3fn", 6, 2),
    ("int4", "int4", 4, 3), ("e3m2fn", "e2m3fn", 6, 4)])
def test_group_dot_equals_golden_dot(a_fmt, w_fmt, bits, seed):
    rng = np.random.default_rng(seed)
    M, N, K, G = 6, 9, 384, 128
    a = rng.integers(0, 1 << bits, (M, K)).astype(np.uint8)
    w = rng.integers(0, 1 << bits, (N, K)).astype(np.uint8)
    sa = rng.integers(0, 0x7C00, (M, K // G)).astype(np.uint16)
    sw = rng.integers(0, 0x7C00, (N, K // G)).astype(np.uint16)
    sn = rng.integers(0, 0x7C00, (M, K // G)).astype(np.uint16) if a_fmt == "dfq" else None
    sa[0, 0] = 0x7E00            # the quantizer's NaN marker
    sa[1, 1] = 0x7C00            # Inf scale
    sa[2, :] = 0                 # zero groups
    sw[3, 2] = 0xFC00            # -Inf weight scale
    sw[4, :] = 0x7BFF            # large scales: overflow to Inf in the accumulator
    sa[4, :] = 0x7BFF
    got = gb.group_dot(a_fmt, w_fmt, a, w, sa, sw, G, sn)
    bc = np.broadcast_to
    ref = dot(a_fmt, w_fmt, bc(a[:, None], (M, N, K)), bc(w[None], (M, N, K)),
              bc(sa[:, None], (M, N, K // G)), bc(sw[None], (M, N, K // G)), G,
              None if sn is None else bc(sn[:, None], (M, N, K // G)))
    np.testing.assert_array_equal(got, ref)
    assert np.isnan(got.view(np.float32)).any() and np.isinf(got.view(np.float32)).any()


def _layer(rng, n, k, a_fmt, *, had, bias):
    w_bits = 4
    return gb.GemmLayer(name="t", codes=rng.integers(0, 1 << w_bits, (n, k)).astype(np.uint8),
                        scales=(rng.integers(0x2000, 0x3000, (n, k // 128))).astype(np.uint16),
                        bias=rng.standard_normal(n).astype(np.float32) if bias else None,
                        a_fmt=a_fmt, w_fmt="e2m1fn", group=128, hadamard=had)


@pytest.mark.parametrize("a_fmt, had, bias, seed", [("e2m1fn", True, True, 0), ("dfq4", False, True, 1),
                                                   ("e2m1fn", False, False, 2)])
def test_gemm_is_the_unit_chain(a_fmt, had, bias, seed):
    rng = np.random.default_rng(seed)
    M, N, K = 5, 7, 256
    layer = _layer(rng, N, K, a_fmt, had=had, bias=bias)
    signs = rng.integers(0, 2, 128).astype(np.uint8)
    x = (rng.standard_normal((M, K)) * 3).astype(np.float32)
    x[0, 3] = 1e6                                      # overflows FP16 -> Inf -> NaN group
    got = gb.gemm(x, layer, signs)
    x16 = gfp32.convert(x.view(np.uint32), "fp32", "fp16")
    if had:
        x16 = hadamard_groups(x16.reshape(M, 2, 128), signs).y.reshape(M, K)
    q = quantize_groups(x16.reshape(M, 2, 128), a_fmt)
    for m in range(M):
        for n in range(N):
            if a_fmt == "dfq4":
                r = dot("dfq", "e2m1fn", q.codes[m].ravel(), layer.codes[n], q.scales[m, :, 1],
                        layer.scales[n], 128, q.scales[m, :, 0])
            else:
                r = dot(a_fmt, "e2m1fn", q.codes[m].ravel(), layer.codes[n], q.scales[m, :, 0],
                        layer.scales[n], 128)
            if bias:
                r = gfp32.add(r, layer.bias[n:n + 1].view(np.uint32))
            assert got[m, n].view(np.uint32) == r, (m, n)
    assert np.isnan(got[0]).all()


def test_hadamard_gemm_matches_orthonormal_transform():
    """The sqrt(2) gain of the Hadamard unit is compensated by the weight-scale fold."""
    from fpqvar_quant.ght import ght_matrix

    rng = np.random.default_rng(5)
    signs = rng.integers(0, 2, 128).astype(np.uint8)
    H = ght_matrix(1 - 2 * signs.astype(np.int64), group=128)     # orthonormal, x H per group
    w = rng.standard_normal((16, 128))
    wt = w @ H                                                   # W' = W H (package domain)
    q = quantize_groups(wt.astype(np.float16).view(np.uint16), "e2m1fn")
    layer = gb.GemmLayer("h", q.codes, gb.hadamard_weight_scales(q.scales), None,
                         "e2m1fn", "e2m1fn", 128, True)
    x = rng.standard_normal((8, 128)).astype(np.float32)
    y = gb.gemm(x, layer, signs)
    ref = x.astype(np.float64) @ w.T
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 0.2, rel          # 4-bit weights and activations: ~10 % noise, no sqrt(2) bias
    assert abs(np.sum(y * ref) / np.sum(ref * ref) - 1) < 0.05


def test_hadamard_weight_scales_fold():
    s = np.array([0x3C00, 0x0000, 0x0001, 0x7BFF, 0x3555], dtype=np.uint16)
    f = gb.hadamard_weight_scales(s).view(np.float16).astype(np.float64)
    exact = s.view(np.float16).astype(np.float64) / np.sqrt(2)
    assert f[1] == 0 and f[0] == np.float16(1 / np.sqrt(2))
    # nearest FP16: no FP16 value lies strictly closer
    up = np.nextafter(f.astype(np.float16), np.float16(np.inf)).astype(np.float64)
    dn = np.nextafter(f.astype(np.float16), np.float16(-np.inf)).astype(np.float64)
    assert np.all(np.abs(f - exact) <= np.abs(up - exact)) and np.all(np.abs(f - exact) <= np.abs(dn - exact))


@pytest.mark.parametrize("seed", [0, 1])
def test_key_temperature_zero_is_no_temperature(seed):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((3, 4, 5, 64)) * 10.0 ** rng.uniform(-20, 8, (3, 4, 5, 1))).astype(np.float32)
    q[0, 0, 0] = 0.0
    a = gv.l2norm_temperature(q, np.zeros((1, 4, 1, 1), np.float32), gb.P)
    b = gv.l2norm_temperature(q, None, gb.P)
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert gv.exp(np.float32(0.0)) == np.float32(1.0)


def test_kv_cache_append_and_decode():
    rng = np.random.default_rng(3)
    c = gb.KVCache(2, 3)
    k1 = rng.standard_normal((2, 3, 1, 64)).astype(np.float16).view(np.uint16)
    k2 = rng.standard_normal((2, 3, 4, 64)).astype(np.float16).view(np.uint16)
    c.append(k1, k1)
    c.append(k2, k2)
    K, V = c.decoded()
    assert c.length == 5 and K.shape == (2, 3, 5, 64)
    np.testing.assert_array_equal(c.fp16_bits()[0], np.concatenate([k1, k2], axis=2))
    with pytest.raises(ValueError, match="R=2, H=3"):
        c.append(k1[:1], k1[:1])
    c6 = gb.KVCache(2, 3, kind="kv6")
    c6.append(k2, k2)
    assert np.abs(c6.decoded()[0] - k2.view(np.float16)).max() < 0.5
    with pytest.raises(ValueError, match="no FP16 bits"):
        c6.fp16_bits()


def test_device_modulation_folds_online_smoothing():
    rng = np.random.default_rng(4)
    C = 128
    s = rng.uniform(0.5, 2, C).astype(np.float32)
    p = types.SimpleNamespace(embed_dim=C, smooth_qkv=s, smooth_fc1=None)
    ada = (rng.standard_normal((2, 6, C)) * 0.3).astype(np.float32)
    out = gb.device_modulation(ada, p)
    y = rng.standard_normal((2, C))
    want = (y * (1 + ada[:, 2].astype(np.float64)) + ada[:, 4]) * s
    got = y * (1 + out[:, 2].astype(np.float64)) + out[:, 4]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, [0, 1, 3, 5]], ada[:, [0, 1, 3, 5]])
    with pytest.raises(ValueError, match=r"\[R, 6, 128\]"):
        gb.device_modulation(ada[:, :5], p)


# ------------------------------------------------------- package and torch
def test_block_params_from_package(digits_fpqvar):
    from fpqvar_quant.ptq.package import load_package

    _, path = digits_fpqvar
    pkg = load_package(path)
    p = gb.block_params(pkg, 1)
    C = pkg.model["embed_dim"]
    assert (p.qkv.n, p.qkv.k, p.fc1.n, p.fc2.k) == (3 * C, C, pkg.model["mlp_hidden"], pkg.model["mlp_hidden"])
    assert p.qkv.hadamard and p.fc1.hadamard and not p.proj.hadamard and not p.fc2.hadamard
    assert p.fc2.a_fmt == "dfq4" and p.qkv.a_fmt == "e2m1fn"
    np.testing.assert_array_equal(p.qkv.bias[C:2 * C], 0)
    np.testing.assert_array_equal(p.qkv.scales, gb.hadamard_weight_scales(pkg.layers["blocks.1.attn.mat_qkv"].scale_bits))
    np.testing.assert_array_equal(p.proj.scales, pkg.layers["blocks.1.attn.proj"].scale_bits)
    assert p.smooth_qkv is None and p.signs.shape == (128,)
    with pytest.raises(ValueError, match="out of range"):
        gb.block_params(pkg, 2)


def _patched(pkg, **manifest_changes):
    p = copy.copy(pkg)
    p.manifest = {**pkg.manifest, **manifest_changes}
    return p


def test_block_params_rejects_unsupported_packages(digits_fpqvar):
    from fpqvar_quant.ptq.package import load_package

    pkg = load_package(digits_fpqvar[1])
    with pytest.raises(ValueError, match="scale format 'e8m0'"):
        gb.block_params(_patched(pkg, scale_format={"name": "e8m0"}), 0)
    with pytest.raises(ValueError, match="head_dim 32"):
        gb.block_params(_patched(pkg, model={**pkg.model, "head_dim": 32}), 0)
    with pytest.raises(ValueError, match="DFQ variant 'fp6'"):
        gb.block_params(_with_layer(pkg, "blocks.0.ffn.fc2", meta={"dfq": "fp6"}), 0)
    with pytest.raises(ValueError, match="granularity"):
        gb.block_params(_with_layer(pkg, "blocks.0.attn.proj", meta={"a_granularity": "token"}), 0)
    with pytest.raises(ValueError, match="float weights"):
        gb.block_params(_with_layer(pkg, "blocks.0.attn.proj", codes=None), 0)


def _with_layer(pkg, name, **changes):
    p = copy.copy(pkg)
    p.layers = dict(pkg.layers)
    lp = pkg.layers[name]
    meta = {**lp.meta, **changes.pop("meta", {})}
    p.layers[name] = type(lp)(**{**lp.__dict__, "meta": meta, **changes})
    return p


def test_online_smoothing_is_folded_into_the_adaln_vectors(digits_fpqvar):
    """A shared-adaLN package keeps its GALT vectors online (smooth_online): block_params
    picks them up and device_modulation folds them into scale1/shift1 (qkv) per row."""
    from fpqvar_quant.ptq.package import load_package

    pkg = load_package(digits_fpqvar[1])
    s = np.linspace(0.5, 2.0, pkg.model["embed_dim"]).astype(np.float32)
    p = gb.block_params(_with_layer(pkg, "blocks.0.attn.mat_qkv", meta={"smooth_online": True}, smooth=s), 0)
    np.testing.assert_array_equal(p.smooth_qkv, s)
    assert p.smooth_fc1 is None
    ada = np.random.default_rng(0).standard_normal((2, 6, s.size)).astype(np.float32)
    out = gb.device_modulation(ada, p)
    np.testing.assert_array_equal(out[:, 4], (ada[:, 4].astype(np.float64) * s).astype(np.float32))
    np.testing.assert_array_equal(out[:, 3], ada[:, 3])
    with pytest.raises(ValueError, match="online smoothing on proj"):
        gb.block_params(_with_layer(pkg, "blocks.0.attn.proj", meta={"smooth_online": True}, smooth=s), 0)


@pytest.mark.parametrize("kv", ["fp16", "kv6"])
def test_golden_blocks_follow_torch_fake_quant(digits_fpqvar, kv):
    """Chained over 2 blocks x 4 scale steps (KV cache growing to 30 tokens), the
    golden block stays within a few percent of the torch fake-quant model (FP16
    rounding of activations flips some 4-bit codes; nothing systematic)."""
    import torch

    from fpqvar_quant.ptq.config import get_preset
    from fpqvar_quant.ptq.kvquant import install_kv_quantizer, remove_kv_quantizer
    from fpqvar_quant.ptq.package import load_package

    model, path = digits_fpqvar
    var = model.var
    pkg = load_package(path)
    labels = [3, 10]
    xs, gss, ada = step_inputs(var, labels, seed=0)
    params = [gb.block_params(pkg, i) for i in range(len(var.blocks))]
    caches = [gb.KVCache(len(labels), p.num_heads, kind=kv) for p in params]
    if kv == "kv6":
        install_kv_quantizer(var, get_preset("fp4-fpqvar-kv6"))
    try:
        for b in var.blocks:
            b.attn.kv_caching(True)
        errs = []
        with torch.no_grad():
            for si, x in enumerate(xs):
                xt, xg = x, x.numpy()
                for i, b in enumerate(var.blocks):
                    xt = b(xt, gss, None)
                    xg = gb.block_step(xg, gb.device_modulation(ada[i], params[i]), params[i], caches[i])
                    ref = xt.numpy()
                    errs.append(np.linalg.norm(xg - ref) / np.linalg.norm(ref))
    finally:
        for b in var.blocks:
            b.attn.kv_caching(False)
        remove_kv_quantizer(var)
    assert caches[0].length == var.L == 30
    assert errs[0] < 2e-3 and max(errs) < 0.05, errs
