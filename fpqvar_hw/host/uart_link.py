"""The host side of the UART link (:class:`fpqvar_hw.engines.uart.UartBridge`): the
command bytes, the reply parsing and :class:`UartLink`, which reads and writes 32-bit words
of the board's address space through any byte port with ``write(bytes)`` and
``read(n) -> bytes`` (a ``serial.Serial`` opened on the ULX3S's FTDI port at the bridge's
baud rate, 8N1, with a read timeout).  The cocotb testbench of the bridge
(sim/tb_uart.py) speaks to the RTL with these same functions.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Protocol

from ..engines.uart import BAD_OP, LINK_TEST_WORDS, MAX_WORDS, OP_READ, OP_WRITE, ST_RX_ERROR

__all__ = ["LinkError", "BytePort", "write_command", "read_command", "check_status",
           "words_from_bytes", "UartLink", "selftest", "SELFTEST_WORDS", "main"]

#: the LinkTest design's RAM (``fpqvar_hw.engines.uart.LinkTest``, default depth)
SELFTEST_WORDS = LINK_TEST_WORDS

_RESP = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}


class LinkError(Exception):
    """A command the bridge refused or answered with an error, or a reply cut short."""


class BytePort(Protocol):
    def write(self, data: bytes) -> int | None: ...
    def read(self, n: int) -> bytes: ...


def _check_span(addr: int, n: int) -> None:
    if not isinstance(addr, int) or addr < 0 or addr % 4 or addr + 4 * n > 1 << 32:
        raise ValueError(f"address {addr!r}: must be a multiple of 4 with {n} words below 2^32")
    if not 1 <= n <= MAX_WORDS:
        raise ValueError(f"{n} words in one command: 1 to {MAX_WORDS} (UartLink splits longer)")


def write_command(addr: int, words: list[int]) -> bytes:
    """The bytes of one write of ``words`` (1 to 256) from ``addr``."""
    _check_span(addr, len(words))
    if any(not isinstance(w, int) or not 0 <= w < 1 << 32 for w in words):
        raise ValueError("words must be integers in [0, 2^32)")
    return (bytes([OP_WRITE]) + addr.to_bytes(4, "little") + bytes([len(words) - 1])
            + b"".join(w.to_bytes(4, "little") for w in words))


def read_command(addr: int, n: int) -> bytes:
    """The bytes of one read of ``n`` (1 to 256) words from ``addr``."""
    _check_span(addr, n)
    return bytes([OP_READ]) + addr.to_bytes(4, "little") + bytes([n - 1])


def check_status(status: int, what: str) -> None:
    """``LinkError`` unless ``status`` (the reply's last byte) says every access was OKAY."""
    if status == BAD_OP:
        raise LinkError(f"{what}: the bridge did not know the command (reply {BAD_OP:#04x}); "
                        f"check the baud rate")
    if status & ST_RX_ERROR:
        raise LinkError(f"{what}: the bridge saw a receive error (framing or overrun) during "
                        f"the command; check the baud rate and send it again")
    if status & 3:
        raise LinkError(f"{what}: bus response {_RESP[status & 3]} (status {status:#04x}); is "
                        f"the address mapped?")


def words_from_bytes(data: bytes) -> list[int]:
    """Little-endian 32-bit words of ``data`` (a multiple of 4 bytes)."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes is not a whole number of 32-bit words")
    return [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]


class UartLink:
    """Word reads and writes through the bridge, split into commands of at most
    :data:`~fpqvar_hw.engines.uart.MAX_WORDS` words, each checked by its status byte."""

    def __init__(self, port: BytePort):
        self.port = port

    def _reply(self, n: int, what: str) -> bytes:
        data = self.port.read(n)
        if len(data) != n:
            raise LinkError(f"{what}: {len(data)} of {n} reply bytes before the port's timeout; "
                            f"is the board configured and the baud rate right?")
        return data

    def write(self, addr: int, words: list[int]) -> None:
        for i in range(0, len(words), MAX_WORDS):
            chunk, a = words[i:i + MAX_WORDS], addr + 4 * i
            self.port.write(write_command(a, chunk))
            check_status(self._reply(1, f"write at {a:#010x}")[0], f"write at {a:#010x}")

    def read(self, addr: int, n: int) -> list[int]:
        out: list[int] = []
        for i in range(0, n, MAX_WORDS):
            k, a = min(MAX_WORDS, n - i), addr + 4 * i
            self.port.write(read_command(a, k))
            reply = self._reply(4 * k + 1, f"read at {a:#010x}")
            check_status(reply[-1], f"read at {a:#010x}")
            out += words_from_bytes(reply[:-1])
        return out

    def load(self, addr: int, data: bytes) -> None:
        """Write ``data`` (zero-padded to whole words) from ``addr``: e.g. a DRAM image."""
        self.write(addr, words_from_bytes(data + bytes(-len(data) % 4)))


def selftest(link: UartLink, n: int = SELFTEST_WORDS, seed: int = 0) -> float:
    """Write ``n`` random words from address 0 of the LinkTest RAM, read them back; raise
    ``LinkError`` on any difference; return the seconds taken."""
    rng = random.Random(seed)
    words = [rng.getrandbits(32) for _ in range(n)]
    t0 = time.perf_counter()
    link.write(0, words)
    got = link.read(0, n)
    bad = [i for i, (a, b) in enumerate(zip(words, got)) if a != b]
    if bad:
        i = bad[0]
        raise LinkError(f"{len(bad)} of {n} words read back differ (first at {4 * i:#x}: wrote "
                        f"{words[i]:#010x}, read {got[i]:#010x})")
    return time.perf_counter() - t0


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m fpqvar_hw.host.uart_link",
                                 description="Check the UART host link of a board loaded with "
                                             "the LinkTest bitstream (python -m fpqvar_hw.flow.board).")
    ap.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or COM3")
    ap.add_argument("--baud", type=int, default=115_200, help="the bitstream's rate (default 115200)")
    ap.add_argument("--selftest", action="store_true", required=True,
                    help="write and read back the LinkTest RAM")
    ap.add_argument("--words", type=int, default=SELFTEST_WORDS,
                    help=f"words to write and read (1 to {SELFTEST_WORDS})")
    args = ap.parse_args(argv)
    if not 1 <= args.words <= SELFTEST_WORDS:
        raise ValueError(f"--words must be 1 to {SELFTEST_WORDS}, got {args.words}")
    try:
        import serial
    except ImportError:
        raise ValueError("opening a serial port needs pyserial: pip install pyserial") from None
    try:
        port = serial.Serial(args.port, args.baud, timeout=2)
    except serial.SerialException as e:
        raise ValueError(f"cannot open {args.port}: {e}") from None
    try:
        with port:
            dt = selftest(UartLink(port), args.words)
    except LinkError as e:
        print(f"uart_link: {e}", file=sys.stderr)
        return 1
    print(f"link OK: {args.words} words written and read back in {dt:.2f} s "
          f"({8 * args.words / dt / 1e3:.1f} KB/s both ways)")
    return 0


def main(argv: "list[str] | None" = None) -> int:
    """``python -m fpqvar_hw.host.uart_link --port /dev/ttyUSB0 --selftest``: check a ULX3S
    loaded with the LinkTest bitstream (``python -m fpqvar_hw.flow.board``).  Through the
    project's one error path (``fpqvar_quant.safeio.run_cli``): bad arguments, a missing
    pyserial or port are one line and exit 2, Ctrl-C exit 130; a failed self-test 1."""
    from fpqvar_quant.safeio import run_cli
    return run_cli(_main, argv, "uart_link", errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
