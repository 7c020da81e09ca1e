"""Calibration capture: the streaming reader returns exactly what the hooks saw."""
import json

import numpy as np
import pytest
import torch

from fpqvar_quant.ptq.calibrate import (CalibrationSet, capture_inputs, generate_calibration,
                                        quantized_layer_names)
from fpqvar_quant.var import build_vae_var

PATCH_NUMS = (1, 2, 3)


@pytest.fixture(scope="module")
def tiny_var():
    torch.manual_seed(0)
    _, var = build_vae_var(patch_nums=PATCH_NUMS, V=32, ch=32, depth=2, num_classes=8)
    return var.eval()


def test_reader_returns_captured_inputs_seed0(tiny_var, tmp_path):
    cs = generate_calibration(tiny_var, tmp_path / "cal", num_images=3, batch_size=2, top_k=20,
                              dtype="float32", progress=False)
    assert cs.num_images == 3 and cs.patch_nums == list(PATCH_NUMS)
    names = quantized_layer_names(tiny_var)
    assert sorted(cs.layers) == sorted(names) and cs.layers["blocks.1.ffn.fc2"] == 512
    # one shard per layer x scale x batch, shape [2B, pn^2, C]
    assert len(cs.shards) == len(names) * len(PATCH_NUMS) * 2
    # recapture the same sampling (same seeds) in memory and compare bit for bit
    seen = {}
    with capture_inputs(tiny_var, lambda n, s, x: seen.setdefault((n, s), []).append(x.clone()),
                        PATCH_NUMS):
        for k, labels in enumerate([[0, 1], [2]]):
            tiny_var.sample_tokens(B=len(labels), label_B=torch.tensor(labels), g_seed=k,
                                   cfg=1.5, top_k=20, top_p=0.96)
    for name in names:
        for si, pn in enumerate(PATCH_NUMS):
            got = [a for sh, a in cs.iter_layer(name, scales=[si])]
            assert len(got) == 2
            for k, arr in enumerate(got):
                want = seen[(name, si)][k].numpy()
                assert arr.shape == want.shape == (2 * (2 if k == 0 else 1), pn * pn, cs.layers[name])
                np.testing.assert_array_equal(arr, want)
    # both CFG halves are there: the unconditional rows differ from the conditional ones
    a = next(cs.iter_layer("blocks.0.attn.mat_qkv", scales=[0]))[1]
    assert not np.array_equal(a[:2], a[2:])


def test_token_matrix_subset_and_resume_seed3(tiny_var, tmp_path):
    root = tmp_path / "cal"
    cs = generate_calibration(tiny_var, root, num_images=2, batch_size=1, top_k=20,
                              progress=False)
    full = cs.token_matrix("blocks.0.ffn.fc1")
    assert full.shape == (2 * 2 * sum(p * p for p in PATCH_NUMS), 128)
    sub = cs.token_matrix("blocks.0.ffn.fc1", max_tokens=7, seed=3)
    pick = np.sort(np.random.default_rng(3).choice(len(full), size=7, replace=False))
    np.testing.assert_array_equal(sub, full[pick])
    # resume: nothing is redone, the index is unchanged
    before = (root / "index.json").read_text()
    mtime = (root / cs.shards[0].file).stat().st_mtime_ns
    generate_calibration(tiny_var, root, num_images=2, batch_size=1, top_k=20, progress=False)
    assert (root / "index.json").read_text() == before
    assert (root / cs.shards[0].file).stat().st_mtime_ns == mtime
    # an interrupted run (batch 1 missing from the index) redoes only that batch
    idx = json.loads(before)
    idx["batches"] = idx["batches"][:1]
    idx["shards"] = [s for s in idx["shards"] if s["batch"] == 0]
    (root / "index.json").write_text(json.dumps(idx))
    cs2 = generate_calibration(tiny_var, root, num_images=2, batch_size=1, top_k=20, progress=False)
    assert len(cs2.shards) == len(cs.shards)
    np.testing.assert_array_equal(cs2.token_matrix("blocks.0.ffn.fc1"), full)


def test_reader_errors(tmp_path, tiny_var):
    with pytest.raises(FileNotFoundError, match="calibrate"):
        CalibrationSet(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an fpqvar calibration"):
        CalibrationSet(tmp_path)
    with pytest.raises(ValueError, match="another model"):
        generate_calibration(tiny_var, tmp_path / "x", num_images=1, top_k=20, progress=False)
        _, other = build_vae_var(patch_nums=(1, 2), V=32, ch=32, depth=2, num_classes=8)
        generate_calibration(other, tmp_path / "x", num_images=1, top_k=20, progress=False)
