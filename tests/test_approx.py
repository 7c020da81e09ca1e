"""The torch approximations (fpqvar_quant.approx) equal the golden numpy ones bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fpqvar_quant import approx
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v

ALL_FP16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def random_bits(seed: int, n: int = 100_000) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint64) \
        .astype(np.uint32).view(np.float32)


def same(a: np.ndarray, b: torch.Tensor) -> None:
    assert b.dtype == torch.float32
    ga, gb = g.canon(a), g.canon(b.numpy())
    bad = np.nonzero(ga != gb)[0]
    assert len(bad) == 0, f"{len(bad)} differ, first at {bad[0]}: {ga[bad[0]]:#x} vs {gb[bad[0]]:#x}"


@pytest.mark.parametrize("name", ["exp", "reciprocal", "rsqrt", "gelu"])
@pytest.mark.parametrize("inputs", ["all_fp16", "random_bits_seed7"])
def test_elementwise_identical(name, inputs):
    x = ALL_FP16 if inputs == "all_fp16" else random_bits(7)
    same(getattr(v, name)(x), getattr(approx, name)(torch.from_numpy(x.copy())))


@pytest.mark.parametrize("seed", [3])
def test_row_ops_identical(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((4, 1024)) * rng.uniform(0.1, 30, (4, 1))).astype(np.float32)
    s = rng.standard_normal((1, 1024)).astype(np.float32)
    tx, ts = torch.from_numpy(x), torch.from_numpy(s)
    same(v.softmax(x), approx.softmax(tx))
    same(v.layernorm_modulate(x, s, -s), approx.layernorm_modulate(tx, ts, -ts))
    q, t = x.reshape(4, 16, 64), rng.uniform(0, 6, (16, 1)).astype(np.float32)
    same(v.l2norm_temperature(q, t), approx.l2norm_temperature(torch.from_numpy(q), torch.from_numpy(t)))
    same(v.l2norm_temperature(q), approx.l2norm_temperature(torch.from_numpy(q)))
    same(v.gamma_residual(x, s, x), approx.gamma_residual(tx, ts, tx))


@pytest.mark.parametrize("seed", [61])
def test_attention_identical(seed):
    from fpqvar_quant.golden import attention as att

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, 5, 64)).astype(np.float32)
    k, vv = rng.standard_normal((2, 2, 155, 64)).astype(np.float16).astype(np.float32)
    same(att.attention(q, k, vv), approx.attention(*(torch.from_numpy(t) for t in (q, k, vv))))
