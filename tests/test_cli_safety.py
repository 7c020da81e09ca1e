"""Data safety of the model-side commands (issue "Nothing lost, nothing silently wrong").

Each test reproduces one item found by trying the CLI as a new user would, with bad input
and interruptions; every one of them failed (data loss, a mixed or silently wrong result,
or a traceback) before the fix:

* ``export --overwrite`` into a folder that is not a package deleted the user's files;
* ``sample`` / ``calibrate`` resumed under other settings mixed two runs in one folder
  (or stopped early), and images were seeded per batch, not per image;
* an interrupted ``quantize`` save left a partial ``.pt`` at the final path;
* a corrupt ``.pt``, a bad ``--out`` or a missing ``--calib`` gave a traceback, or was
  found only after minutes of model building;
* a checkpoint with flipped bytes loaded silently; a package with NaN scales or a wrong
  shape was accepted or gave a confusing message.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fpqvar_quant.cli import main
from fpqvar_quant.safeio import (OUTPUT_MARKER, UserError, atomic_output_dir, atomic_path,
                                 atomic_write_text, check_output_dir, check_writable_file,
                                 prepare_output_dir, read_marker, run_cli, write_marker)

TINY = ["--depth", "2", "--patch-nums", "1,2,3", "--vae-ch", "32", "--vocab-size", "32",
        "--num-classes", "6", "--init-seed", "1", "--device", "cpu", "--no-progress"]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:       # argparse errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


def _err(argv, capsys, *must: str) -> str:
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for m in must:
        assert m in err, err
    return err


@pytest.fixture(scope="module")
def qfile(tmp_path_factory) -> Path:
    """A quantized tiny model (fp4-dfq-ght: no calibration needed)."""
    q = tmp_path_factory.mktemp("q") / "q.pt"
    assert main(["quantize", "--preset", "fp4-dfq-ght", "--out", str(q)] + TINY) == 0
    return q


@pytest.fixture()
def no_model_building(monkeypatch):
    """Fail the test if a command builds a model (validation must come first)."""
    import fpqvar_quant.ptq.models as models

    def boom(*a, **k):
        raise AssertionError("a model was built before the arguments were validated")
    monkeypatch.setattr(models, "build_models", boom)
    monkeypatch.setattr(models, "rebuild", boom)


# ---------------------------------------------------------------- export
def test_export_overwrite_never_deletes_a_foreign_folder(qfile, tmp_path, capsys, no_model_building):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    _err(["export", "--quantized", str(qfile), "--out", str(mine), "--overwrite"], capsys,
         "not a 'fpqvar-package' folder")
    assert (mine / "chapter1.tex").read_text() == "years of work"


def test_export_overwrite_replaces_its_own_package(qfile, tmp_path, capsys):
    pkg = tmp_path / "pkg"
    assert main(["export", "--quantized", str(qfile), "--out", str(pkg)]) == 0
    assert json.loads((pkg / OUTPUT_MARKER).read_text())["kind"] == "fpqvar-package"
    (pkg / "stale.bin").write_bytes(b"x")
    assert main(["export", "--quantized", str(qfile), "--out", str(pkg), "--overwrite"]) == 0
    assert not (pkg / "stale.bin").exists() and (pkg / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pkg.")]   # no temp left


# ---------------------------------------------------------------- corrupt inputs
def _flip_inside_tensor(src: Path, dst: Path) -> None:
    """Copy ``src`` with one byte flipped inside the largest tensor's data."""
    with zipfile.ZipFile(src) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(src.read_bytes())
    off = big.header_offset + 30 + len(big.filename.encode()) + len(big.extra) + big.file_size // 2
    raw[off] ^= 0x40
    dst.write_bytes(bytes(raw))


def test_corrupt_quantized_model_is_one_line_error(qfile, tmp_path, capsys):
    flipped, cut = tmp_path / "flipped.pt", tmp_path / "cut.pt"
    _flip_inside_tensor(qfile, flipped)
    cut.write_bytes(qfile.read_bytes()[: qfile.stat().st_size // 2])
    for bad in (flipped, cut):
        _err(["export", "--quantized", str(bad), "--out", str(tmp_path / f"pkg-{bad.stem}")],
             capsys, str(bad))
        _err(["sample", "--quantized", str(bad), "--out", str(tmp_path / f"s-{bad.stem}"),
              "--device", "cpu", "--no-progress"], capsys, str(bad))
    assert not (tmp_path / "pkg-flipped").exists()
    # a model whose recorded shape does not fit its weights: one line, not torch's key list
    obj = torch.load(qfile, weights_only=False)
    obj["model_kwargs"]["shape"]["depth"] = 4
    edited = tmp_path / "edited.pt"
    torch.save(obj, edited)
    _err(["export", "--quantized", str(edited), "--out", str(tmp_path / "pkg-edited")], capsys,
         str(edited), "do not fit", "missing")


def test_checkpoint_with_flipped_bytes_is_refused(tmp_path):
    from fpqvar_quant.var import CheckpointError, read_state_dict

    good, bad = tmp_path / "w.pth", tmp_path / "w-bad.pth"
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, good)
    _flip_inside_tensor(good, bad)
    assert torch.equal(read_state_dict(good)["w"], torch.arange(4096, dtype=torch.float32))
    # torch.load alone reads the damaged tensor without complaint: the CRC check is ours
    assert not torch.equal(torch.load(bad, weights_only=True)["w"], torch.arange(4096, dtype=torch.float32))
    with pytest.raises(CheckpointError, match="CRC-32"):
        read_state_dict(bad)
    import hashlib
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    read_state_dict(good, sha256=digest)
    with pytest.raises(CheckpointError, match="does not match"):
        read_state_dict(good, sha256="0" * 64)


def test_sample_checks_the_vae_digest(qfile, tmp_path, capsys, no_model_building):
    """--vae-sha256 with --quantized was silently ignored (only the model spec checked it)."""
    vae = tmp_path / "vae.pth"
    torch.save({"x": torch.zeros(3)}, vae)
    base = ["sample", "--quantized", str(qfile), "--out", str(tmp_path / "s"), "--device", "cpu"]
    _err(base + ["--vae-ckpt", str(vae), "--vae-sha256", "0" * 64], capsys, str(vae),
         "does not match")
    _err(base + ["--var-sha256", "0" * 64], capsys, "--var-sha256 checks --var-ckpt")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- quantize
def test_quantize_validates_before_building_models(tmp_path, capsys, no_model_building):
    (tmp_path / "afolder").mkdir()
    _err(["quantize", "--preset", "fp4-fpqvar", "--out", str(tmp_path / "q.pt")] + TINY, capsys,
         "needs a calibration set", "--calib")
    base = ["quantize", "--preset", "fp4-dfq-ght"] + TINY
    _err(base + ["--out", str(tmp_path / "afolder")], capsys, "is a folder")
    _err(base + ["--out", str(tmp_path / "no" / "such" / "q.pt")], capsys, "does not exist")
    (tmp_path / "notes.pt").write_text("my notes")
    _err(base + ["--out", str(tmp_path / "notes.pt"), "--overwrite"], capsys, "not an output")
    assert (tmp_path / "notes.pt").read_text() == "my notes"
    if os.geteuid() != 0:          # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _err(base + ["--out", str(ro / "q.pt")], capsys, "not writable")


def test_reports_and_grids_never_replace_a_foreign_file(tmp_path, capsys, no_model_building,
                                                       monkeypatch):
    """--report / --json / the demo grid were written at the end, over whatever was there."""
    import fpqvar_quant.ptq.evaluate as ev

    def boom(*a, **k):
        raise AssertionError("the evaluation ran before --json was checked")
    monkeypatch.setattr(ev, "evaluate_folder", boom)
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    base = ["quantize", "--preset", "fp4-dfq-ght", "--out", str(tmp_path / "q.pt")] + TINY
    _err(base + ["--report", str(notes)], capsys, "--report", "not an output")
    _err(base[:2] + ["fp4-fpqvar"] + base[3:] + ["--calib", str(tmp_path / "nocal")], capsys,
         "not a calibration set")
    _err(["evaluate", "--samples", str(tmp_path), "--ref", str(tmp_path / "r.npz"),
          "--json", str(notes)], capsys, "--json", "not an output")
    _err(["demo", "--out", str(notes)], capsys, "PNG")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a jpeg named .png")
    _err(["demo", "--out", str(photo)], capsys, "not an output")
    assert notes.read_text() == '{"my": "notes"}' and photo.read_bytes().startswith(b"\xff\xd8")


def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import fpqvar_quant.ptq.quantize_model as qm

    def dies_midway(path, obj):
        Path(path).write_bytes(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt     # what SIGINT (or a SIGTERM handler) does mid-write
    monkeypatch.setattr(qm, "_save", dies_midway)
    out = tmp_path / "q.pt"
    with pytest.raises(KeyboardInterrupt):
        qm.save_quantized(torch.nn.Linear(2, 2), qm.QuantizationReport(config=qm.QuantConfig()),
                          out, {})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- sample
SAMPLE = ["--classes", "0,1", "--per-class", "2", "--top-k", "10", "--device", "cpu",
          "--no-progress"]


@pytest.fixture(scope="module")
def samples(qfile, tmp_path_factory) -> Path:
    """An uninterrupted sample folder: classes 0 and 1, two images each, batches of 2."""
    out = tmp_path_factory.mktemp("s") / "s"
    assert main(["sample", "--quantized", str(qfile), "--out", str(out), "--batch-size", "2"]
                + SAMPLE) == 0
    return out


def test_sample_resume_refuses_other_settings(qfile, samples, tmp_path, capsys):
    out = tmp_path / "s"
    shutil.copytree(samples, out)
    base = ["sample", "--quantized", str(qfile), "--out", str(out)] + SAMPLE
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert len(before) == 4 and len(set(before.values())) == 4       # no duplicate images
    for extra, name in ((["--batch-size", "1"], "batch_size 2 -> 1"),
                        (["--batch-size", "2", "--seed", "1"], "seed 0 -> 1"),
                        (["--batch-size", "2", "--cfg", "3"], "cfg 1.5 -> 3.0"),
                        (["--batch-size", "2", "--top-p", "0.5"], "top_p 0.96 -> 0.5"),
                        (["--batch-size", "2", "--per-class", "3"], "per_class 2 -> 3")):
        _err(base + extra, capsys, name, "other settings")
    # another model (the random FP one instead of the quantized file)
    _err(["sample", "--out", str(out), "--batch-size", "2"] + SAMPLE + TINY, capsys,
         "model_digest")
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before   # nothing mixed in


def test_sample_resume_gives_the_uninterrupted_result(qfile, samples, tmp_path):
    """An interrupted folder, resumed, ends up exactly as an uninterrupted run writes it
    (the batch size is recorded: another one is refused above)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(samples, resumed)
    (resumed / "0001_00001.png").unlink()                 # "interrupted"
    assert main(["sample", "--quantized", str(qfile), "--out", str(resumed), "--batch-size", "2"]
                + SAMPLE) == 0
    want = {p.name: p.read_bytes() for p in samples.glob("*.png")}
    assert {p.name: p.read_bytes() for p in resumed.glob("*.png")} == want


def test_sample_images_are_seeded_per_image_not_per_batch(qfile, samples, tmp_path):
    """Image i of class c is the same whatever the batch it was sampled in (before: the
    batch number seeded the batch, so another --batch-size gave other images and
    duplicates).  Up to one grey level: the GEMMs of another batch shape round their last
    bits differently (which is why a resume keeps the recorded batch size)."""
    out = tmp_path / "b1"
    assert main(["sample", "--quantized", str(qfile), "--out", str(out), "--batch-size", "1"]
                + SAMPLE[:1] + ["1"] + SAMPLE[2:]) == 0
    got = {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}
    assert sorted(got) == ["0001_00000.png", "0001_00001.png"]
    for k, a in got.items():
        diff = np.abs(a.astype(int) - np.asarray(Image.open(samples / k)).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, k


def test_sample_refuses_a_folder_that_is_not_its_own(qfile, tmp_path, capsys, no_model_building):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "0000_00000.png").write_bytes(b"holiday")
    _err(["sample", "--quantized", str(qfile), "--out", str(tmp_path / "photos"),
          "--device", "cpu"], capsys, "not a 'samples' folder")


# ---------------------------------------------------------------- calibrate
def test_calibrate_resume_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "cal"
    base = ["calibrate", "--out", str(out), "--num-images", "3", "--top-k", "10"] + TINY
    assert main(base + ["--batch-size", "3"]) == 0
    idx = (out / "index.json").read_bytes()
    _err(base + ["--batch-size", "3", "--seed", "7"], capsys, "seed 0 -> 7")
    _err(base + ["--batch-size", "3", "--cfg", "2"], capsys, "cfg 1.5 -> 2.0")
    _err(base + ["--batch-size", "3", "--amp", "bf16"], capsys, "amp 'none' -> 'bf16'")
    _err(base[:4] + ["4"] + base[5:] + ["--batch-size", "3"], capsys, "num_images 3 -> 4")
    assert (out / "index.json").read_bytes() == idx
    assert main(base + ["--batch-size", "3"]) == 0          # same settings: resumes (nothing to do)
    from fpqvar_quant.ptq.calibrate import CalibrationSet
    assert CalibrationSet(out).num_images == 3


def test_calibrate_resume_reaches_every_image(tmp_path, capsys):
    """Before: batches were numbered by --batch-size, so a resume with another one skipped
    images (55 of 100) and exited 0.  Now the batch size is a recorded setting (another one
    is refused, naming it), so the batch numbers keep their meaning and the resumed set is
    exactly the uninterrupted one."""
    from fpqvar_quant.ptq.calibrate import CalibrationSet

    base = ["calibrate", "--num-images", "3", "--top-k", "10", "--dtype", "float32",
            "--batch-size", "1"] + TINY
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main(base + ["--out", str(whole)]) == 0
    shutil.copytree(whole, resumed)
    idx = json.loads((resumed / "index.json").read_text())      # interrupted after batch 0
    idx["batches"] = idx["batches"][:1]
    idx["shards"] = [s for s in idx["shards"] if s["batch"] == 0]
    (resumed / "index.json").write_text(json.dumps(idx))
    assert CalibrationSet(resumed).num_images == 1
    _err(base[:8] + ["3"] + base[9:] + ["--out", str(resumed)], capsys, "batch_size 1 -> 3")
    assert main(base + ["--out", str(resumed)]) == 0
    a, b = CalibrationSet(whole), CalibrationSet(resumed)
    assert b.num_images == 3
    assert sorted(sum((x["labels"] for x in b.index["batches"]), [])) == [0, 1, 2]
    for layer in a.layers:
        np.testing.assert_array_equal(a.token_matrix(layer), b.token_matrix(layer))


# ---------------------------------------------------------------- packages
@pytest.fixture(scope="module")
def pkg(qfile, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pkg") / "pkg"
    assert main(["export", "--quantized", str(qfile), "--out", str(p)]) == 0
    return p


def _copy_pkg(pkg: Path, dst: Path, mutate) -> Path:
    dst.mkdir()
    m = json.loads((pkg / "manifest.json").read_text())
    with np.load(pkg / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    mutate(m, arrays)
    (dst / "manifest.json").write_text(json.dumps(m))
    np.savez(dst / "arrays.npz", **arrays)
    return dst


def test_package_checks_name_the_layer(pkg, tmp_path):
    from fpqvar_quant.ptq.package import load_package

    layer = "blocks.1.attn.proj"

    def nan_scale(m, a):
        key = m["layers"][layer]["scales"]
        a[key] = a[key].copy()
        a[key].reshape(-1)[3] = 0x7E00            # FP16 NaN
    def wrong_shape(m, a):
        key = m["layers"][layer]["codes"]
        a[key] = a[key][:, :64].copy()
    def missing(m, a):
        del a[m["layers"][layer]["codes"]]
    def bad_format(m, a):
        m["layers"][layer]["w_fmt"] = "e9m9"
    for mutate, text in ((nan_scale, "scale #3"), (wrong_shape, "expected uint8"),
                         (missing, "missing from arrays.npz"), (bad_format, "'e9m9'")):
        bad = _copy_pkg(pkg, tmp_path / mutate.__name__, mutate)
        with pytest.raises(ValueError, match=text) as e:
            load_package(bad)
        assert layer in str(e.value) or mutate is bad_format
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "manifest.json").write_bytes((pkg / "manifest.json").read_bytes())
    (trunc / "arrays.npz").write_bytes((pkg / "arrays.npz").read_bytes()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_package(trunc)


# ---------------------------------------------------------------- the shared helpers
def test_atomic_path_and_output_dir(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "o"
    with atomic_output_dir(out, "k") as d:
        (d / "a").write_text("1")
    assert read_marker(out)["kind"] == "k"
    with pytest.raises(UserError, match="pass --overwrite"):
        prepare_output_dir(out, "k")
    assert prepare_output_dir(out, "k", resume=True) == out
    with pytest.raises(UserError, match="not a 'j' folder"):
        prepare_output_dir(out, "j", overwrite=True)
    assert check_output_dir is prepare_output_dir        # the name build.py/the compiler use
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, "k", overwrite=True) as d:
            (d / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a"]   # old output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_foreign_folders_and_files_are_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.txt").write_text("keep")
    for flags in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(UserError, match="no fpqvar output"):
            prepare_output_dir(mine, "k", **flags)
    with pytest.raises(UserError):
        with atomic_output_dir(mine, "k", overwrite=True):
            raise AssertionError("not reached")
    write_marker(mine, "other")
    with pytest.raises(UserError, match="a 'other' output, not a 'k' folder"):
        prepare_output_dir(mine, "k", overwrite=True)
    assert (mine / "data.txt").read_text() == "keep"
    with pytest.raises(UserError, match="does not exist"):
        prepare_output_dir(tmp_path / "a" / "b", "k")
    f = tmp_path / "f.txt"
    atomic_write_text(f, "one")
    with pytest.raises(UserError, match="pass --overwrite"):
        check_writable_file(f)
    with pytest.raises(UserError, match="not an output"):
        check_writable_file(f, overwrite=True, own=lambda p: False)
    with pytest.raises(UserError, match="is a folder"):
        check_writable_file(mine, overwrite=True)
    assert check_writable_file(f, overwrite=True) == f and f.read_text() == "one"


def test_run_cli_one_line_and_debug(capsys, tmp_path):
    tmp_dir = tmp_path
    def fails(argv):
        raise UserError("bad thing\nwith detail")
    assert run_cli(fails, [], "prog") == 2
    assert capsys.readouterr().err == "prog: error: bad thing with detail\n"
    with pytest.raises(UserError):
        run_cli(fails, ["--debug"], "prog")

    def truncated(argv):      # a format error of a damaged file, no traceback either
        raise EOFError("Ran out of input")
    assert run_cli(truncated, []) == 2
    assert capsys.readouterr().err.endswith("error: Ran out of input\n")

    def interrupted(argv):
        raise KeyboardInterrupt
    assert run_cli(interrupted, [], "prog") == 130
    assert capsys.readouterr().err == "prog: interrupted\n"

    def killed_while_saving(argv):   # SIGTERM mid-write: no partial file, no temp left
        with atomic_path(tmp_dir / "q.pt") as tmp:
            tmp.write_bytes(b"PK half")
            os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")
    assert run_cli(killed_while_saving, [], "prog") == 143
    assert capsys.readouterr().err == "prog: terminated\n" and list(tmp_dir.iterdir()) == []

    def bug(argv):            # a programming error is not turned into a user error
        raise ZeroDivisionError
    with pytest.raises(ZeroDivisionError):
        run_cli(bug, [], "prog")
