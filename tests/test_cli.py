"""fpqvar-quant: complete --help, clear errors (in-process, fast)."""
import numpy as np
import pytest
from PIL import Image

from fpqvar_quant.cli import COMMANDS, build_parser, main, parse_classes
from fpqvar_quant.ptq.config import PRESETS

SUBCOMMANDS = ["calibrate", "quantize", "sample", "evaluate", "export"]


def _help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_top_help_lists_every_subcommand(capsys):
    out = _help([], capsys)
    for name in SUBCOMMANDS:
        assert name in out
    assert len(COMMANDS) >= 5


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_subcommand_help_complete(cmd, capsys):
    out = _help([cmd], capsys)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help"
            assert action.option_strings[-1] in out
    if cmd in ("quantize", "sample"):
        for name in PRESETS:
            assert name in out


def _err(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    return capsys.readouterr().err


def test_invalid_preset(capsys, tmp_path):
    err = _err(["quantize", "--preset", "fp3", "--out", str(tmp_path / "q.pt")], capsys)
    assert "unknown preset 'fp3'" in err and "fp4-fpqvar" in err


def test_odd_depth(capsys, tmp_path):
    err = _err(["calibrate", "--depth", "15", "--out", str(tmp_path)], capsys)
    assert "even depth" in err
    err = _err(["calibrate", "--depth", "x", "--out", str(tmp_path)], capsys)
    assert "positive integer" in err


def test_bad_paths(capsys, tmp_path):
    err = _err(["export", "--quantized", str(tmp_path / "none.pt"), "--out", str(tmp_path / "p")],
               capsys)
    assert "not found" in err
    err = _err(["calibrate", "--var-ckpt", str(tmp_path / "v.pth"), "--vae-ckpt",
                str(tmp_path / "a.pth"), "--out", str(tmp_path / "c")], capsys)
    assert "does not exist" in err
    err = _err(["quantize", "--preset", "fp4-fpqvar", "--calib", str(tmp_path / "nocal"),
                "--out", str(tmp_path / "q.pt"), "--depth", "2"], capsys)
    assert "calibrate" in err
    err = _err(["sample", "--patch-nums", "3,2", "--out", str(tmp_path)], capsys)
    assert "increasing" in err


def test_evaluate_without_inception_weights(capsys, tmp_path):
    (tmp_path / "s").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "s" / "0000_00000.png")
    np.savez(tmp_path / "ref.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    err = _err(["evaluate", "--samples", str(tmp_path / "s"), "--ref", str(tmp_path / "ref.npz"),
                "--inception-weights", str(tmp_path / "w.pth")], capsys)
    assert "cannot compute metrics here" in err
    assert "torch-fidelity" in err or "weights" in err


def test_parse_classes():
    assert parse_classes("0-3,7,2", 10) == [0, 1, 2, 3, 7]
    for bad in ("5-2", "a", "10", ""):
        with pytest.raises(ValueError, match="class"):
            parse_classes(bad, 10)


TINY = ["--depth", "2", "--patch-nums", "1,2,3", "--vae-ch", "32", "--vocab-size", "32",
        "--num-classes", "6", "--init-seed", "1", "--outlier-channels", "4", "--device", "cpu"]


def test_sample_units_shard_classes_without_overlap():
    from fpqvar_quant.cli import sample_units
    classes = list(range(10))
    per_rank = [sample_units(classes, 5, 2, r, 3) for r in range(3)]
    images = [(c, i) for units in per_rank for c, _, idx in units for i in idx]
    assert sorted(images) == [(c, i) for c in classes for i in range(5)]   # all, exactly once
    assert {c for c, _, _ in per_rank[1]} == {1, 4, 7}


def test_end_to_end_tiny_model(tmp_path, capsys):
    """calibrate -> quantize (fp4-fpqvar) -> sample (resumable) -> export -> package."""
    from fpqvar_quant.ptq.package import load_package

    cal, q, out, pkg = (tmp_path / n for n in ("cal", "q.pt", "samples", "pkg"))
    assert main(["calibrate", "--out", str(cal), "--num-images", "2", "--batch-size", "2",
                 "--top-k", "20", "--no-progress"] + TINY) == 0
    assert main(["quantize", "--preset", "fp4-fpqvar-kv6", "--calib", str(cal), "--galt-epochs",
                 "1", "--out", str(q), "--report", str(tmp_path / "r.json"), "--no-progress"]
                + TINY) == 0
    assert "GALT" not in capsys.readouterr().err
    argv = ["sample", "--quantized", str(q), "--out", str(out), "--classes", "0,4",
            "--per-class", "2", "--batch-size", "2", "--top-k", "20", "--no-progress"]
    assert main(argv) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["0000_00000.png", "0000_00001.png", "0004_00000.png", "0004_00001.png"]
    first = (out / files[0]).read_bytes()
    (out / files[-1]).unlink()                       # an interrupted run: resume redoes one batch
    capsys.readouterr()
    assert main(argv) == 0
    assert "wrote 2 PNGs, skipped 2 existing" in capsys.readouterr().out
    assert (out / files[0]).read_bytes() == first
    assert Image.open(out / files[-1]).size == (48, 48)
    assert main(["export", "--quantized", str(q), "--out", str(pkg)]) == 0
    p = load_package(pkg)
    assert p.manifest["quant_config"]["name"] == "fp4-fpqvar-kv6" and len(p.layers) == 8
    assert _err(["export", "--quantized", str(q), "--out", str(pkg)], capsys).count("exists")
