"""Golden vector-unit definitions: accuracy against float64, special values, sum order."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v

ALL_FP16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
ULP = 2.0 ** -23


def rel_err(y: np.ndarray, ref: np.ndarray, floor: float = 2.0 ** -126) -> np.ndarray:
    """Relative error where the exact result is a finite FP32 value >= ``floor``."""
    with np.errstate(over="ignore"):
        ok = np.isfinite(ref.astype(np.float32)) & (np.abs(ref) >= floor)
    assert np.array_equal(np.isinf(y), np.isinf(ref.astype(np.float32))), "overflow mismatch"
    return np.abs(y.astype(np.float64)[ok] - ref[ok]) / np.abs(ref[ok])


def gelu64(x: np.ndarray) -> np.ndarray:
    """GELU(tanh) in float64 written without cancellation: x / (1 + exp(-2u))."""
    x = x.astype(np.float64)
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-2 * u))


@pytest.mark.parametrize("name,ref,bound_ulp", [
    ("exp", np.exp, 2), ("reciprocal", lambda x: 1 / x, 2), ("rsqrt", lambda x: 1 / np.sqrt(x), 3),
    ("gelu", gelu64, 128)])  # the tail x < -5 inherits exp's conditioning: |d exp(u)| = |u| * |du|
def test_accuracy_all_fp16(name, ref, bound_ulp):
    """Every finite FP16 input: relative error bound where the result is normal.

    GELU's far negative tail (|GELU(x)| < 2^-100, x < -9.9) returns -0 because
    exp(-2u) overflows first; the absolute error there is below 2^-100.
    """
    x = ALL_FP16[np.isfinite(ALL_FP16)]
    if name in ("reciprocal", "rsqrt"):
        x = x[x > 0]
    with np.errstate(all="ignore"):
        y, r = getattr(v, name)(x), ref(x.astype(np.float64))
    floor = 2.0 ** -100 if name == "gelu" else 2.0 ** -126
    e = rel_err(y, r, floor)
    assert e.max() <= bound_ulp * ULP, f"{name}: max rel err {e.max():.3g}"
    tiny = np.abs(r) < floor
    assert np.abs(y[tiny] - r[tiny]).max(initial=0) < floor


@pytest.mark.parametrize("fn,x,want", [
    ("exp", [0.0, -0.0, np.inf, -np.inf, np.nan, 89.0, -104.0], [1.0, 1.0, np.inf, 0.0, np.nan, np.inf, 0.0]),
    ("reciprocal", [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 2.0, -4.0],
     [np.inf, -np.inf, 0.0, -0.0, np.nan, np.inf, 0.5, -0.25]),
    ("rsqrt", [0.0, -0.0, np.inf, -1.0, np.nan, 1e-40, 4.0, 0.25], [np.inf, np.inf, 0.0, np.nan, np.nan, np.inf, 0.5, 2.0]),
    ("gelu", [0.0, -0.0, np.inf, -np.inf, np.nan, -20.0], [0.0, -0.0, np.inf, np.nan, np.nan, -0.0]),
])
def test_special_values(fn, x, want):
    got = g.canon(getattr(v, fn)(np.array(x, np.float32)))
    assert list(got) == list(g.canon(np.array(want, np.float32)))


@pytest.mark.parametrize("P", [1, 2, 8])
def test_tree_sum_order(P):
    x = np.random.default_rng(P).standard_normal((3, 64)).astype(np.float32) * 1e4
    got = v.tree_sum(x, P)
    for r in range(3):
        parts = []
        for j in range(P):
            acc = np.float32(0.0)
            for i in range(j, 64, P):
                acc = np.float32(acc + x[r, i])
            parts.append(acc)
        while len(parts) > 1:
            parts = [np.float32(parts[k] + parts[k + 1]) for k in range(0, len(parts), 2)]
        assert got[r, 0].view(np.uint32) == parts[0].view(np.uint32)
    with pytest.raises(ValueError, match="power of two"):
        v.tree_sum(x, 3)
    # a length that P does not divide: same as padding with +0.0
    assert np.array_equal(v.tree_sum(x[:, :61], P).view(np.uint32),
                          v.tree_sum(np.concatenate([x[:, :61], np.zeros((3, 3), np.float32)], 1), P)
                          .view(np.uint32))


@pytest.mark.parametrize("seed", [21])
def test_row_ops_close_to_float64(seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((8, 1024)) * 4 + rng.standard_normal((8, 1))).astype(np.float32)
    xd = x.astype(np.float64)
    sm = np.exp(xd - xd.max(-1, keepdims=True))
    sm /= sm.sum(-1, keepdims=True)
    assert np.abs(v.softmax(x) - sm).max() < 1e-6
    sc, sh = rng.standard_normal((2, 1, 1024)).astype(np.float32)
    ln = (xd - xd.mean(-1, keepdims=True)) / np.sqrt(xd.var(-1, keepdims=True) + 1e-6)
    assert np.abs(v.layernorm_modulate(x, sc, sh) - (ln * (1 + sc) + sh)).max() < 1e-5
    q = x.reshape(8, 16, 64)
    t = np.full((16, 1), 10.0, np.float32)   # clamped at ln 100
    qn = np.linalg.norm(v.l2norm_temperature(q, t).astype(np.float64), axis=-1)
    assert np.abs(qn - 100).max() < 1e-4


@pytest.mark.parametrize("kind,nq,nk,seed", [("fp16", 4, 680, 51), ("kv6", 9, 14, 52)])
def test_attention_close_to_float64(kind, nq, nk, seed):
    """Golden attention over a decoded KV cache (KV length up to 680) vs float64 math."""
    from fpqvar_quant.golden import attention as att

    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, nq, 64)).astype(np.float32)
    q = (q / np.linalg.norm(q, axis=-1, keepdims=True) * 4).astype(np.float32)
    k16, v16 = (rng.standard_normal((2, 2, nk, 64)).astype(np.float16).view(np.uint16))
    k, vv = (att.kv_decode(att.kv_encode(t, kind)) for t in (k16, v16))
    if kind == "kv6":   # e2m3fn codes: at most half a grid step of error per element
        assert np.abs(k - k16.view(np.float16)).max() <= 0.125 * np.abs(k16.view(np.float16)).max()
    out = att.attention(q, k, vv)
    qd, kd, vd = (t.astype(np.float64) for t in (q, k, vv))
    s = qd @ kd.transpose(0, 2, 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ vd
    assert out.shape == (2, nq, 64) and np.abs(out - ref).max() < 1e-5
    with pytest.raises(ValueError, match="KV cache format"):
        att.kv_encode(k16, "kv4")


def _export(tmp_path, unit: str, *extra: str, seed: int = 3):
    """Run ``python -m fpqvar_quant.golden UNIT`` in a subprocess; return (arrays, manifest)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "-".join((unit,) + extra).replace(" ", "")
    subprocess.run([sys.executable, "-m", "fpqvar_quant.golden", unit, "--out", str(out),
                    "--seed", str(seed), *extra], check=True, capture_output=True, text=True)
    return dict(np.load(out / "vectors.npz")), json.loads((out / "manifest.json").read_text())


def test_vector_exporter_elementwise(tmp_path):
    """Exported element-wise vectors reproduce from the golden model, are seeded, and
    the FP32-source set covers NaN, Inf, subnormal and ordinary inputs."""
    a, man = _export(tmp_path, "vector", "--func", "gelu", "--n", "300")
    assert man["unit"] == "vector" and man["config"]["func"] == "gelu" and man["seed"] == 3
    x = a["x"].view(np.float32)
    assert a["x"].dtype == np.uint32 and a["y"].dtype == np.uint32 and len(x) == 300
    assert np.isnan(x).any() and np.isinf(x).any() and (np.abs(x) < np.finfo(np.float32).tiny).any()
    assert np.array_equal(a["y"], g.canon(v.gelu(x)))
    again, _ = _export(tmp_path, "vector", "--func", "gelu", "--n", "301")
    assert np.array_equal(again["x"][:100], a["x"][:100])        # same seed, same stream
    for func in ("exp", "rsqrt"):
        h, man = _export(tmp_path, "vector", "--func", func, "--src", "fp16", "--dst", "fp16", "--n", "200")
        xf = g.to_float(g.convert(h["x"], "fp16", "fp32"))
        assert h["x"].dtype == np.uint16 and h["y"].dtype == np.uint16 and man["config"]["dst"] == "fp16"
        assert np.array_equal(h["y"], g.convert(g.canon(getattr(v, func)(xf)), "fp32", "fp16"))


def test_vector_exporter_rows(tmp_path):
    f = lambda b: b.view(np.float32)  # noqa: E731
    s, man = _export(tmp_path, "vector", "--func", "softmax", "--n", "3", "--length", "40")
    assert s["x"].shape == (3, 40) and man["config"]["length"] == 40
    assert np.array_equal(s["y"], g.canon(v.softmax(f(s["x"]), P=8)))
    ln, _ = _export(tmp_path, "vector", "--func", "layernorm_modulate", "--n", "2", "--P", "4")
    assert np.array_equal(ln["y"], g.canon(v.layernorm_modulate(f(ln["x"]), f(ln["scale"]),
                                                               f(ln["shift"]), P=4)))
    l2, man = _export(tmp_path, "vector", "--func", "l2norm_temperature", "--n", "5")
    assert l2["q"].shape == (5, 64) and l2["t"].shape == (5,) and man["config"]["temperature"]
    assert np.array_equal(l2["y"], g.canon(v.l2norm_temperature(f(l2["q"]), f(l2["t"])[:, None])))
    k, man = _export(tmp_path, "vector", "--func", "l2norm_temperature", "--n", "2", "--no-temperature")
    assert "t" not in k and np.array_equal(k["y"], g.canon(v.l2norm_temperature(f(k["q"]), None)))


@pytest.mark.parametrize("kv", ["fp16", "kv6"])
def test_attention_exporter(tmp_path, kv):
    from fpqvar_quant.golden import attention as att

    a, man = _export(tmp_path, "attention", "--n", "5", "--keys", "19", "--kv", kv)
    assert man["config"]["kv"] == kv and a["q"].shape == (2, 5, 64) and a["out"].shape == (2, 5, 64)
    if kv == "fp16":
        k, vv = (att.kv_decode(att.KVEntry("fp16", bits=a[n])) for n in ("k", "v"))
    else:
        k, vv = (att.kv_decode(att.KVEntry("kv6", codes=a[f"{n}_codes"], scales=a[f"{n}_scales"]))
                 for n in ("k", "v"))
        assert a["k_codes"].dtype == np.uint8 and a["k_scales"].shape == (2, 19)
    assert k.shape == (2, 19, 64)
    assert np.array_equal(a["out"], g.canon(att.attention(a["q"].view(np.float32), k, vv)))


def test_exporter_bad_options(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fpqvar_quant.golden", "vector", "--func", "softmax",
                        "--src", "fp16", "--out", str(tmp_path), "--seed", "1"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "only apply to element-wise" in r.stderr
