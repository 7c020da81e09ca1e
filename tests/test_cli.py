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
