"""Strict loading of official-shaped checkpoints and clear errors for bad ones.

The reference tables ``var_d16_state_dict.tsv`` / ``vae_ch160v4096z32_state_dict.tsv``
list every key, shape and dtype of the official files.  They are read from
``tests/data`` (a copy) or, if absent, from ``../shared/reference``.  For other
depths the expected table is derived here from the rules of
``design/var-model.md`` (C = 64 depth, heads = depth), independently of the model code.
"""
from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from fpqvar_quant.var import (PATCH_NUMS_256, PATCH_NUMS_512, CheckpointError, CheckpointMismatchError,
                              build_vae_var, check_state_dict, infer_var_config, load_checkpoint, load_into,
                              read_state_dict)

REPO = Path(__file__).resolve().parents[1]
Table = Dict[str, Tuple[Tuple[int, ...], str]]


def reference_table(name: str) -> Table:
    for folder in (REPO / "tests" / "data", REPO.parent / "shared" / "reference"):
        path = folder / name
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            return {r["key"]: (tuple(ast.literal_eval(r["shape"])), r["dtype"]) for r in rows}
    raise FileNotFoundError(f"{name} not found in tests/data or ../shared/reference")


def model_table(model: torch.nn.Module) -> Table:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


def random_state_dict(table: Table, seed: int) -> Dict[str, torch.Tensor]:
    """Random tensors with the table's keys, shapes and dtypes.

    Each tensor is a fresh random block of 2^16 values tiled to its size (a full
    randn of 310M values would dominate the test time on 2 cores)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, (shape, dtype) in table.items():
        n = 1
        for d in shape:
            n *= d
        if dtype == "int64":
            block = torch.randint(0, 10, (min(n, 1 << 16),), generator=g, dtype=torch.int64)
        else:
            block = torch.randn(min(n, 1 << 16), generator=g, dtype=getattr(torch, dtype))
        out[k] = block.repeat(-(-n // block.numel()))[:n].view(shape)
    return out


def expected_var_table(depth: int, shared_aln: bool, patch_nums) -> Table:
    """Keys/shapes of an official VAR checkpoint from the design rules (not from the model code)."""
    C, H, V, L, S = 64 * depth, depth, 4096, sum(p * p for p in patch_nums), len(patch_nums)
    f = "float32"
    t: Table = {"pos_start": ((1, 1, C), f), "pos_1LC": ((1, L, C), f), "lvl_1L": ((1, L), "int64"),
                "attn_bias_for_masking": ((1, 1, L, L), f), "word_embed.weight": ((C, 32), f),
                "word_embed.bias": ((C,), f), "class_emb.weight": ((1001, C), f), "lvl_embed.weight": ((S, C), f)}
    if shared_aln:
        t["shared_ada_lin.1.weight"] = ((6 * C, C), f)
        t["shared_ada_lin.1.bias"] = ((6 * C,), f)
    for i in range(depth):
        p = f"blocks.{i}."
        t.update({p + "attn.scale_mul_1H11": ((1, H, 1, 1), f), p + "attn.q_bias": ((C,), f),
                  p + "attn.v_bias": ((C,), f), p + "attn.zero_k_bias": ((C,), f),
                  p + "attn.mat_qkv.weight": ((3 * C, C), f), p + "attn.proj.weight": ((C, C), f),
                  p + "attn.proj.bias": ((C,), f), p + "ffn.fc1.weight": ((4 * C, C), f), p + "ffn.fc1.bias": ((4 * C,), f),
                  p + "ffn.fc2.weight": ((C, 4 * C), f), p + "ffn.fc2.bias": ((C,), f)})
        if shared_aln:
            t[p + "ada_gss"] = ((1, 1, 6, C), f)
        else:
            t[p + "ada_lin.1.weight"] = ((6 * C, C), f)
            t[p + "ada_lin.1.bias"] = ((6 * C,), f)
    t.update({"head_nm.ada_lin.1.weight": ((2 * C, C), f), "head_nm.ada_lin.1.bias": ((2 * C,), f),
              "head.weight": ((V, C), f), "head.bias": ((V,), f)})
    return t


@pytest.fixture(scope="module")
def d16_table() -> Table:
    return reference_table("var_d16_state_dict.tsv")


@pytest.fixture(scope="module")
def vae_table() -> Table:
    return reference_table("vae_ch160v4096z32_state_dict.tsv")


def test_reference_tables_sizes(d16_table, vae_table):
    assert len(d16_table) == 220 and len(vae_table) == 324


def test_rules_reproduce_the_d16_table(d16_table):
    # the derived tables for other depths are only trustworthy if they reproduce d16 exactly
    assert expected_var_table(16, False, PATCH_NUMS_256) == d16_table


def test_d16_model_keys_shapes_dtypes_equal_reference(d16_table):
    _, var = build_vae_var(device="meta", depth=16)
    assert model_table(var) == d16_table
    assert list(var.state_dict()) == list(d16_table)  # same order as the official file


def test_vqvae_keys_shapes_dtypes_equal_reference(vae_table):
    vae, _ = build_vae_var(device="meta", depth=2)
    assert model_table(vae) == vae_table


@pytest.mark.parametrize("depth", [20, 24, 30])
def test_key_sets_other_depths(depth):
    _, var = build_vae_var(device="meta", depth=depth)
    assert model_table(var) == expected_var_table(depth, False, PATCH_NUMS_256)


def test_key_set_d36_shared_aln_512px():
    vae, var = build_vae_var(device="meta", depth=36, shared_aln=True, patch_nums=PATCH_NUMS_512)
    assert model_table(var) == expected_var_table(36, True, PATCH_NUMS_512)
    assert var.L == 2240 and var.C == 2304 and var.num_heads == 36
    assert vae.image_size == 512


def test_strict_load_d16_random_state_dict_seed0(d16_table):
    sd = random_state_dict(d16_table, seed=0)
    _, var = build_vae_var(device="meta", depth=16)
    load_into(var, sd, assign=True)  # strict; assign: no second 1.2 GB copy
    assert var.blocks[7].ffn.fc1.weight is not None
    assert torch.equal(var.blocks[7].ffn.fc1.weight, sd["blocks.7.ffn.fc1.weight"])
    assert torch.equal(var.lvl_1L, sd["lvl_1L"])
    # a d16 file does not fit a d20 model: the error names the shape problem and the missing blocks
    _, var20 = build_vae_var(device="meta", depth=20)
    with pytest.raises(CheckpointMismatchError) as ei:
        load_into(var20, sd, what="var_d16.pth")
    msg = str(ei.value)
    assert "var_d16.pth" in msg and "blocks.16.attn.mat_qkv.weight" in msg
    assert "pos_1LC: [1, 680, 1024] vs [1, 680, 1280]" in msg
    cfg = infer_var_config(sd)
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.shared_aln, cfg.patch_nums) == (16, 1024, 16, False, PATCH_NUMS_256)


def test_strict_load_vqvae_random_state_dict_seed1(vae_table):
    sd = random_state_dict(vae_table, seed=1)
    vae, var = build_vae_var(device="cpu", depth=2, init=False)  # every tensor is overwritten by the strict load
    lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(PATCH_NUMS_256)])
    assert torch.equal(var.lvl_1L[0], lvl)  # init=False still computes the buffers
    assert torch.equal(var.attn_bias_for_masking[0, 0] == 0, lvl[None, :] <= lvl[:, None])
    assert not var.blocks[0].attn.zero_k_bias.any() and not vae.quantize.ema_vocab_hit_SV.any()
    load_into(vae, sd, what="vae_ch160v4096z32.pth")
    for k in ("encoder.down.4.attn.1.qkv.weight", "decoder.up.0.block.2.conv2.bias", "quantize.embedding.weight",
              "quantize.quant_resi.qresi_ls.3.weight", "post_quant_conv.weight"):
        assert torch.equal(vae.state_dict()[k], sd[k]), k


def test_vqvae_usage_statistics_of_other_scale_count_are_replaced_seed5():
    torch.manual_seed(5)
    vae10, _ = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1))
    vae10.quantize.ema_vocab_hit_SV.uniform_()
    vae2, _ = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2))
    load_into(vae2, vae10.state_dict())  # official behaviour: stats of another S are replaced, the rest loads
    assert vae2.quantize.ema_vocab_hit_SV.shape == (2, 64)
    assert torch.equal(vae2.quantize.embedding.weight, vae10.quantize.embedding.weight)


def test_real_copy_load_roundtrip_tiny_seed2(tmp_path):
    torch.manual_seed(2)
    _, a = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2, 3))
    torch.manual_seed(3)
    _, b = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2, 3))
    path = tmp_path / "tiny.pth"
    torch.save({"trainer": {"var_wo_ddp": a.state_dict()}}, path)  # official trainer wrapping
    load_checkpoint(b, path)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


@pytest.fixture()
def tiny_ckpt(tmp_path) -> Tuple[Path, Dict[str, torch.Tensor]]:
    torch.manual_seed(4)
    _, var = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2, 3))
    path = tmp_path / "var_tiny.pth"
    torch.save(var.state_dict(), path)
    return path, var.state_dict()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9])
def test_truncated_file_clear_error(tiny_ckpt, fraction):
    path, _ = tiny_ckpt
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as ei:
        read_state_dict(path)
    assert str(path) in str(ei.value)


def test_training_checkpoint_with_python_objects_seed6(tmp_path):
    import argparse

    torch.manual_seed(6)
    vae, var = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2, 3))
    path = tmp_path / "ar-ckpt-last.pth"
    torch.save({"args": argparse.Namespace(depth=2), "trainer": {"var_wo_ddp": var.state_dict(),
                                                                  "vae_local": vae.state_dict()}}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        read_state_dict(path)
    assert set(read_state_dict(path, trusted=True)) == set(var.state_dict())
    assert set(read_state_dict(path, trusted=True, select="trainer.vae_local")) == set(vae.state_dict())
    with pytest.raises(CheckpointError, match="no entry 'trainer.vae'"):
        read_state_dict(path, trusted=True, select="trainer.vae")


def test_garbage_and_non_state_dict_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_state_dict(junk)
    lst = tmp_path / "list.pth"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="does not contain a state dict"):
        read_state_dict(lst)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pth")


def test_mismatched_keys_and_shapes_are_named(tiny_ckpt):
    _, sd = tiny_ckpt
    sd = dict(sd)
    del sd["blocks.1.ffn.fc2.bias"]
    sd["blocks.9.extra"] = torch.zeros(3)
    sd["head.weight"] = torch.zeros(65, 128)
    _, var = build_vae_var(depth=2, embed_dim=128, num_heads=2, V=64, ch=32, vae_ch_mult=(1, 1), patch_nums=(1, 2, 3))
    rep = check_state_dict(var, sd)
    assert rep.missing == ["blocks.1.ffn.fc2.bias"]
    assert rep.unexpected == ["blocks.9.extra"]
    assert rep.shape_mismatches == [("head.weight", (65, 128), (64, 128))]
    with pytest.raises(CheckpointMismatchError) as ei:
        load_into(var, sd, what="my.pth")
    msg = str(ei.value)
    for s in ("my.pth", "missing keys", "blocks.1.ffn.fc2.bias", "unexpected keys", "blocks.9.extra",
              "head.weight: [65, 128] vs [64, 128]", "infer_var_config"):
        assert s in msg, s
    assert ei.value.report == rep


def test_infer_var_config_rejects_non_var(tiny_ckpt):
    with pytest.raises(CheckpointError, match="not a VAR state dict"):
        infer_var_config({"encoder.conv_in.weight": torch.zeros(1)})


def test_builder_does_not_patch_torch_nn():
    before = {c: c.reset_parameters for c in (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Conv2d, torch.nn.Embedding)}
    build_vae_var(device="meta", depth=2)
    after = {c: c.reset_parameters for c in before}
    assert before == after
