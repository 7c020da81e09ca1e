"""Quantized model package: round trip through the numpy/json-only reader."""
import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fpqvar_quant.ptq.calibrate import generate_calibration
from fpqvar_quant.ptq.config import get_preset
from fpqvar_quant.ptq.export import export_package
from fpqvar_quant.ptq.models import ModelSpec, build_models
from fpqvar_quant.ptq.package import PACKAGE_VERSION, load_package
from fpqvar_quant.ptq.quantize_model import quant_linears, quantize_model
from fpqvar_quant.safeio import UserError


@pytest.fixture(scope="module")
def fp_model(tmp_path_factory):
    spec = ModelSpec(depth=2, patch_nums=(1, 2, 3), vae_ch=32, vocab_size=32, num_classes=8,
                     init_seed=6, outlier_channels=4)
    _, var, _ = build_models(spec)
    cs = generate_calibration(var, tmp_path_factory.mktemp("c"), num_images=1, top_k=20,
                              progress=False)
    return var, cs


def clone(var):
    vae = var.vae_proxy[0]
    return copy.deepcopy(var, {id(vae): vae})


@pytest.mark.parametrize("preset", ["fp4-fpqvar-kv6", "fp6-fpqvar", "mxfp4", "int4-rtn",
                                    "fp4-mixedformat"])
def test_package_round_trip(preset, fp_model, tmp_path):
    fp_var, cs = fp_model
    var = clone(fp_var)
    cfg = get_preset(preset, galt_epochs=1) if get_preset(preset).galt else get_preset(preset)
    report = quantize_model(var, cfg, cs, progress=False)
    path = export_package(var, report, tmp_path / "pkg")
    pkg = load_package(path)
    assert pkg.manifest["version"] == PACKAGE_VERSION
    assert pkg.model["depth"] == 2 and pkg.model["embed_dim"] == 128
    assert pkg.manifest["quant_config"]["name"] == preset
    qls = quant_linears(var)
    assert set(pkg.layers) == set(qls)
    for name, q in qls.items():
        L = pkg.layers[name]
        assert L.meta["w_fmt"] == q.lq.w_fmt and L.meta["a_fmt"] == q.lq.a_fmt
        np.testing.assert_array_equal(L.codes, q.w_codes.numpy())
        sc = q.w_scales.float().reshape(q.out_features, -1).numpy()
        np.testing.assert_array_equal(L.scales, np.broadcast_to(sc, L.scales.shape))
        np.testing.assert_array_equal(L.dequantized_weight(), q.w_dequant.numpy())
        if q.bias is None:      # mat_qkv: its bias [q_bias, 0, v_bias] is added outside
            assert L.bias is None and name.endswith("mat_qkv")
        else:
            np.testing.assert_array_equal(L.bias, q.bias.numpy())
    sd = var.state_dict()
    for k, v in pkg.float_params.items():
        np.testing.assert_array_equal(v, sd[k].float().numpy())
    assert "blocks.0.ada_lin.1.weight" in pkg.float_params and "head.weight" in pkg.float_params
    if cfg.ght:
        H = pkg.hadamard_matrix()
        np.testing.assert_allclose(H @ H.T, np.eye(128), atol=1e-12)
        assert set(np.unique(pkg.hadamard_signs)) <= {-1, 1}
        assert len(pkg.galt) == 2 * len(var.blocks)
    fc2 = pkg.layers["blocks.0.ffn.fc2"].meta
    if cfg.dfq:
        sides = fc2["dfq_formats"]
        assert sides == {"fp4": {"negative": "e1m2fn", "positive": "e2m1fn"},
                         "fp6": {"negative": "int6", "positive": "e2m3fn"}}[cfg.dfq]
        for f in sides.values():
            bits = 4 if cfg.dfq == "fp4" else 6
            assert len(pkg.manifest["element_formats"][f]["values"]) == 2 ** bits
    if cfg.kv_fmt:
        assert pkg.manifest["kv_cache"] == {"fmt": "e2m3fn", "group_size": 64, "scale_format": "fp16"}
    with pytest.raises(UserError, match="pass --overwrite"):
        export_package(var, report, path)


def test_reader_needs_no_torch(fp_model, tmp_path):
    fp_var, cs = fp_model
    var = clone(fp_var)
    report = quantize_model(var, get_preset("fp4-dfq-ght"), progress=False)
    path = export_package(var, report, tmp_path / "pkg")
    want = var.get_submodule("blocks.1.ffn.fc1").w_dequant.numpy()
    np.save(tmp_path / "want.npy", want)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any torch import now fails
        import importlib.util, numpy as np
        spec = importlib.util.spec_from_file_location("pkgreader", {str(
            __import__("fpqvar_quant.ptq.package", fromlist=["x"]).__file__)!r})
        m = importlib.util.module_from_spec(spec)
        sys.modules["pkgreader"] = m
        spec.loader.exec_module(m)
        pkg = m.load_package({str(path)!r})
        w = pkg.layers["blocks.1.ffn.fc1"].dequantized_weight()
        assert np.array_equal(w, np.load({str(tmp_path / 'want.npy')!r}))
        from fpqvar_quant.ptq.package import load_package   # the package import path too
        load_package({str(path)!r})
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="export"):
        load_package(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "fpqvar-quant-package",
                                                        "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        load_package(tmp_path)
