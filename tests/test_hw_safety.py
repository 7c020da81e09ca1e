"""Issue 16, hardware side: nothing lost, nothing silently wrong in the compiler,
build.py, the driver and the bundle runner (``fpqvar_hw.host.run``).

Each test reproduces an item of the issue's "Why" list that failed on the old code:
stale ``step*.bin`` beside a new bundle, tracebacks (rc 1) on damaged packages and
bad ``--out``, NaN scales compiled silently, a confusing message for a wrong-shape
package, the driver's argument errors only after the package was built, and no way
to run a user's compiled bundle.  The package is the driver's fast ``fp4-dfq-ght``
digits package (built in seconds, cached under build/tiny-image/cache).
"""
from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

import build
from fpqvar_hw.host import compiler, run
from fpqvar_hw.host import backends, records
from fpqvar_hw.host import driver as drv
from fpqvar_hw.host import package as hostpkg

pytest.importorskip("torch")

FAST = hostpkg.PackageSettings(preset="fp4-dfq-ght")


@pytest.fixture(scope="module")
def package_dir():
    return hostpkg.build_package(FAST)


@pytest.fixture(scope="module")
def bundle_dir(package_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert compiler.main([str(package_dir), "--out", str(out)]) == 0
    return out


def _cli(capsys, main_fn, argv) -> tuple[int, str]:
    """Exit code and stderr of a CLI main; never a traceback."""
    try:
        code = main_fn([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and ": error: " in lines[0], err
    return lines[0]


def _copy_package(src, dst):
    shutil.copytree(src, dst)
    return dst


def _layer_arrays(pkg_dir):
    m = json.loads((pkg_dir / "manifest.json").read_text())
    name = "blocks.0.attn.mat_qkv"
    return m, name, m["layers"][name], dict(np.load(pkg_dir / "arrays.npz"))


# ----------------------------------------------------------------- 1. whole bundles
def test_recompiling_leaves_no_stale_step_programs(capsys, package_dir, tmp_path):
    """Story: a folder from an earlier 10-step build kept step4..9.bin beside a new
    4-step bundle (the compiler wrote file by file into it)."""
    out = tmp_path / "bundle"
    assert _cli(capsys, compiler.main, [package_dir, "--out", out])[0] == 0
    for s in range(4, 10):                        # what the earlier, longer model left
        (out / f"step{s}.bin").write_bytes(b"\0" * 32)
    assert _cli(capsys, compiler.main, [package_dir, "--out", out])[0] == 0
    assert sorted(p.name for p in out.glob("step*.bin")) == [f"step{s}.bin" for s in range(4)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary sibling left behind"


def test_compiler_never_replaces_a_folder_that_is_not_a_bundle(capsys, package_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, err = _cli(capsys, compiler.main, [package_dir, "--out", out])
    assert code == 2 and "not a 'compiler-bundle' folder" in _one_error_line(err)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


# ----------------------------------------------------------------- 2. one-line errors
def _flip(p):
    b = bytearray((p / "arrays.npz").read_bytes())
    b[len(b) // 2] ^= 0xFF
    (p / "arrays.npz").write_bytes(bytes(b))


def _truncate(p):
    b = (p / "arrays.npz").read_bytes()
    (p / "arrays.npz").write_bytes(b[:len(b) // 2])


def _drop_scales(p):
    _, _, L, z = _layer_arrays(p)
    del z[L["scales"]]
    np.savez(p / "arrays.npz", **z)


def _nan_scale(p):
    _, _, L, z = _layer_arrays(p)
    s = z[L["scales"]].copy()
    s.flat[5] = 0x7E00                               # FP16 NaN
    z[L["scales"]] = s
    np.savez(p / "arrays.npz", **z)


def _wrong_dims(p):
    m = json.loads((p / "manifest.json").read_text())
    m["model"]["embed_dim"] = 256                    # the arrays are for C = 128
    (p / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage, msg", [
    (_flip, "arrays.npz: cannot read the package arrays (BadZipFile: Bad CRC-32"),
    (_truncate, "arrays.npz: cannot read the package arrays"),
    (_drop_scales, "array 'blocks.0.attn.mat_qkv/scales' is missing"),
    # 3. silent acceptance: NaN scale bits were compiled into the image
    (_nan_scale, "layer blocks.0.attn.mat_qkv: scale #5 is nan (raw 0x7e00)"),
    # 3. a wrong-shape package: "could not broadcast ..." / "weight group 128 and activation
    # group 128 must be equal" before; now the layer and both shapes
    (_wrong_dims, "layer blocks.0.attn.mat_qkv: codes shape (384, 128), expected (768, 256)"),
], ids=["flipped-npz", "truncated-npz", "missing-array", "nan-scale", "wrong-shape"])
def test_compiler_bad_package_is_one_line_exit_2(capsys, package_dir, tmp_path, damage, msg):
    pkg = _copy_package(package_dir, tmp_path / "pkg")
    damage(pkg)
    code, err = _cli(capsys, compiler.main, [pkg, "--out", tmp_path / "bundle"])
    assert code == 2 and msg in _one_error_line(err)
    assert not (tmp_path / "bundle").exists()


def test_out_is_a_file_compiler_and_build_py(capsys, package_dir, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    for main_fn, argv in ((compiler.main, [package_dir, "--out", f]), (build.main, ["--out", f])):
        code, err = _cli(capsys, main_fn, argv)
        assert code == 2 and f"--out {f} is a file" in _one_error_line(err)
    assert f.read_text() == "keep"


def test_debug_flag_shows_the_traceback(package_dir, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep")
    with pytest.raises(ValueError, match="is a file"):
        compiler.main([str(package_dir), "--out", str(f), "--debug"])


# ----------------------------------------------------------------- 4. late validation
@pytest.mark.parametrize("argv, msg", [
    (["--class", "11"], "--class 11: the model has classes 0..9"),
    (["--max-steps", "0"], "--max-steps must be in 1..4"),
    (["--seed", "-1"], "--seed must be an integer"),
])
def test_driver_validates_arguments_before_any_model(capsys, monkeypatch, tmp_path, argv, msg):
    """Story: --class 11 / --max-steps 0 failed only after 15-27 s of package building."""
    def no_work(*a, **k):
        raise AssertionError("a package was built / loaded before the arguments were checked")

    monkeypatch.setattr(drv, "build_package", no_work)
    monkeypatch.setattr(drv, "load_package_checked", no_work)
    monkeypatch.setattr(drv, "load_shipped_model", no_work)
    code, err = _cli(capsys, drv.main, [*argv, "--out", tmp_path / "o"])
    assert code == 2 and msg in _one_error_line(err)


def test_driver_never_writes_into_a_foreign_folder(capsys, monkeypatch, tmp_path):
    """The driver writes tokens.json, PNGs and cycles.json into --out: only into a new
    folder or one of its own runs (marker), never into a user's folder."""
    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(drv, "build_package", no_work)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    code, err = _cli(capsys, drv.main, ["--out", foreign])
    assert code == 2 and "refusing" in _one_error_line(err)
    assert sorted(q.name for q in foreign.iterdir()) == ["thesis.tex"]


# ----------------------------------------------------------------- 6. bundle runner
def test_bundle_runner_tokens_equal_the_driver_golden_backend(capsys, package_dir, bundle_dir, tmp_path):
    """The compiled bundle, run from its files on the reference executor, samples
    exactly the tokens of the driver's golden backend (same package, seed, class)."""
    pkg = hostpkg.load_package_checked(package_dir)
    want = asyncio.run(drv.generate(hostpkg.host_model_from_package(pkg), backends.GoldenBackend(pkg, rows=2),
                                    [5], 7, records.Sampling()))
    out = tmp_path / "run"
    code, err = _cli(capsys, run.main, [bundle_dir, "--package", package_dir, "--class", 5, "--seed", 7,
                                        "--out", out])
    assert code == 0, err
    doc = json.loads((out / "tokens.json").read_text())
    assert doc["tokens"] == want.tokens and doc["labels"] == [5] and doc["seed"] == 7
    assert (out / "image.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run into the same folder needs --overwrite; a foreign folder never
    code, err = _cli(capsys, run.main, [bundle_dir, "--package", package_dir, "--class", 5, "--out", out])
    assert code == 2 and "--overwrite" in _one_error_line(err)


def test_bundle_runner_refuses_a_bundle_of_other_weights(package_dir, bundle_dir, tmp_path):
    """Same shapes, one weight byte changed: refused, naming the region, instead of
    sampling with the wrong weights."""
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    pkg = hostpkg.load_package_checked(package_dir)
    lay = json.loads((b / "layout.json").read_text())
    region = next(r for r in lay["regions"] if r["name"].startswith("block1."))
    static = bytearray((b / "static.bin").read_bytes())
    static[region["addr"] - lay["dram_base"] + 3] ^= 0x10
    (b / "static.bin").write_bytes(bytes(static))
    with pytest.raises(run.BundleMismatch, match=f"region {region['name']}"):
        run.BundleBackend(pkg, run.load_bundle(b))


@pytest.mark.parametrize("damage, msg", [
    (lambda b: (b / "step2.bin").unlink(), "step2.bin is missing from the bundle"),
    (lambda b: (b / "static.bin").write_bytes(b"\0" * 100), "static.bin: 100 bytes, the layout says"),
    (lambda b: (b / "layout.json").write_text("{"), "layout.json: not valid JSON"),
    (lambda b: (b / "step1.bin").write_bytes(b"\xff" * (b / "step1.bin").stat().st_size),
     "reference executor stopped with error"),
], ids=["missing-step", "short-static", "bad-layout", "garbled-program"])
def test_bundle_runner_damaged_bundle_is_one_line(capsys, package_dir, bundle_dir, tmp_path, damage, msg):
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    damage(b)
    code, err = _cli(capsys, run.main, [b, "--package", package_dir, "--class", 3, "--out", tmp_path / "o"])
    assert code == 2 and msg in _one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_bundle_runner_rtl_refuses_models_too_large_to_simulate(capsys, package_dir, bundle_dir, tmp_path):
    run.check_rtl_size({"embed_dim": run.RTL_C, "patch_nums": [1, 2, 3, 4]})      # the digits model fits
    with pytest.raises(run.UserError, match="C = 128 .* KV length <= 30 .* this model has C = 1024, KV length 680"):
        run.check_rtl_size({"embed_dim": 1024, "patch_nums": [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]})
    big = _copy_package(package_dir, tmp_path / "pkg")
    m = json.loads((big / "manifest.json").read_text())
    m["model"]["patch_nums"] = [1, 2, 3, 4, 5]
    (big / "manifest.json").write_text(json.dumps(m))
    code, err = _cli(capsys, run.main, [bundle_dir, "--package", big, "--class", 3, "--backend", "rtl",
                                        "--out", tmp_path / "o"])
    assert code == 2 and "too large to simulate; use --backend golden" in _one_error_line(err)
