"""The shipped tiny digits VQVAE + VAR and the demo (fpqvar_quant.digits)."""
import json

import pytest
import torch

from fpqvar_quant.digits.classifier import ASSET_DIR
from fpqvar_quant.digits.data import load_digits_split
from fpqvar_quant.digits.evaluate import balanced_labels, kl_per_scale, sample
from fpqvar_quant.digits.metrics import class_accuracy
from fpqvar_quant.digits.model import ModelConfig, load_digits_model, reconstruction_mse


@pytest.fixture(scope="module")
def model():
    return load_digits_model()


def test_shipped_assets_are_small_and_describe_their_training():
    total = sum(p.stat().st_size for p in ASSET_DIR.iterdir() if p.is_file())
    assert total < 5 * 2 ** 20, f"shipped digits assets are {total} bytes (budget 5 MiB)"
    meta = json.loads((ASSET_DIR / "model.json").read_text())
    assert meta["data_hash"] == load_digits_split().data_hash
    cfg = ModelConfig.from_dict(meta["config"])
    assert cfg.embed_dim % 128 == 0 and cfg.embed_dim // cfg.num_heads == 64
    assert {"vqvae_metrics", "var_metrics", "sampling"} <= set(meta)


def test_shipped_model_loads_strictly_with_official_structure(model):
    var, vae = model.var, model.vae
    assert var.num_classes == 10 and var.class_emb.num_embeddings == 11
    assert var.patch_nums == model.config.patch_nums and var.L == sum(p * p for p in var.patch_nums)
    assert all(p.dtype == torch.float32 for p in var.parameters())
    # strict round trip of the official key set
    var.load_state_dict(var.state_dict(), strict=True)
    assert vae.image_size == 8


def test_vqvae_reconstructs_held_out_digits(model):
    mse = reconstruction_mse(model.vae, load_digits_split().test_images)
    assert mse < 0.02  # [0, 1] pixels; a blank image scores ~0.2
    assert mse == pytest.approx(model.meta["vqvae_metrics"]["held_out_rec_mse_01"], rel=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_generates_the_requested_class_well_above_chance(model, seed):
    labels = balanced_labels(5)
    imgs, toks = sample(model, labels, seed)
    assert imgs.shape == (50, 1, 8, 8) and 0.0 <= imgs.min() and imgs.max() <= 1.0
    assert class_accuracy(imgs, labels) >= 0.6  # chance is 0.1
    imgs2, toks2 = sample(model, labels, seed)
    assert torch.equal(imgs, imgs2) and all(torch.equal(a, b) for a, b in zip(toks, toks2))


@pytest.mark.parametrize("seed", [0])
def test_kl_per_scale_is_zero_for_identical_logits_and_positive_otherwise(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(2, 30, 16, generator=g)
    assert kl_per_scale(a, a, (1, 2, 3, 4)) == [0.0] * 4
    kl = kl_per_scale(a, a + torch.randn(2, 30, 16, generator=g), (1, 2, 3, 4))
    assert len(kl) == 4 and all(k > 0 for k in kl)


@pytest.mark.slow
def test_demo_runs_and_writes_the_grid(tmp_path):
    from fpqvar_quant.digits.demo import run

    png = tmp_path / "grid.png"
    res = run(["fp32", "fp4-fpqvar", "fp6-fpqvar"], out=png, n_per_class=4, galt_epochs=1, max_tokens=256,
              held_out_limit=32, quiet=True)
    assert png.stat().st_size > 1000
    assert [r.method for r in res] == ["fp32", "fp4-fpqvar", "fp6-fpqvar"]
    assert res[0].token_agreement == 1.0 and res[0].mean_kl == 0.0
    for r in res[1:]:
        assert r.mean_kl > 0 and set(r.sqnr) and all(v > 0 for v in r.sqnr.values())
    # W6A6 stays closer to FP32 than W4A4 in logit space
    assert res[2].mean_kl < res[1].mean_kl


def test_demo_cli_rejects_unknown_methods(capsys):
    from fpqvar_quant.digits.demo import main

    assert main(["--methods", "fp32,fp5-magic"]) == 2
    assert "unknown method" in capsys.readouterr().err
