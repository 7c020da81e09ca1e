"""The UART host link's host side (fpqvar_hw.host.uart_link) and the bridge's parameter
checks; the bridge itself is co-simulated in sim/test_uart.py with these command bytes."""
from __future__ import annotations

import pytest

from fpqvar_hw.checked import check
from fpqvar_hw.engines.uart import (BAD_OP, MAX_WORDS, OP_READ, OP_WRITE, ST_RX_ERROR, UartBridge,
                                    UartRx, divisor_for)
from fpqvar_hw.host import uart_link as ul


class FakeBridge:
    """The protocol of fpqvar_hw.engines.uart in Python over a word memory (the replies a
    board gives), for UartLink's splitting and checks; ``status`` forces a status byte,
    ``cut`` drops the reply's last bytes (a port timeout)."""

    def __init__(self, status: int = 0, cut: int = 0):
        self.mem: dict[int, int] = {}
        self.out = b""
        self.status, self.cut, self.commands = status, cut, []

    def write(self, data: bytes) -> None:
        op, addr, n = data[0], int.from_bytes(data[1:5], "little"), data[5] + 1
        self.commands.append((chr(op), addr, n))
        if op == OP_WRITE:
            assert len(data) == 6 + 4 * n
            for i, w in enumerate(ul.words_from_bytes(data[6:])):
                self.mem[addr + 4 * i] = w
            reply = bytes([self.status])
        else:
            assert op == OP_READ and len(data) == 6
            reply = b"".join(self.mem.get(addr + 4 * i, 0).to_bytes(4, "little")
                             for i in range(n)) + bytes([self.status])
        self.out += reply[:len(reply) - self.cut]

    def read(self, n: int) -> bytes:
        r, self.out = self.out[:n], self.out[n:]
        return r


def test_commands_bytes():
    assert ul.write_command(0x10, [0x04030201]) == bytes([OP_WRITE, 0x10, 0, 0, 0, 0, 1, 2, 3, 4])
    assert ul.read_command(0x80000000, 256) == bytes([OP_READ, 0, 0, 0, 0x80, 255])
    for bad in ((2, 1), (-4, 1), (0, 0), (0, MAX_WORDS + 1), ((1 << 32) - 4, 2)):
        with pytest.raises(ValueError):
            ul.read_command(*bad)
    with pytest.raises(ValueError, match="words must be"):
        ul.write_command(0, [1 << 32])


def test_link_splits_and_round_trips():
    port = FakeBridge()
    link = ul.UartLink(port)
    words = list(range(1000, 1000 + 600))
    link.write(0x100, words)
    assert port.commands == [("W", 0x100, 256), ("W", 0x500, 256), ("W", 0x900, 88)]
    assert link.read(0x100, 600) == words
    link.load(0x4000, b"\x01\x02\x03\x04\x05")
    assert link.read(0x4000, 2) == [0x04030201, 0x05]


@pytest.mark.parametrize("status,match", [(2, "SLVERR"), (3, "DECERR"), (BAD_OP, "did not know"),
                                          (ST_RX_ERROR, "receive error")])
def test_error_statuses_raise(status, match):
    link = ul.UartLink(FakeBridge(status=status))
    with pytest.raises(ul.LinkError, match=match):
        link.write(0, [1])
    with pytest.raises(ul.LinkError, match=match):
        link.read(0, 3)


def test_short_reply_is_an_error_not_short_data():
    with pytest.raises(ul.LinkError, match="12 of 13 reply bytes"):
        ul.UartLink(FakeBridge(cut=1)).read(0, 3)


def test_divisor_and_parameters():
    assert divisor_for(25e6, 115200) == 217
    assert divisor_for(25e6, 1_000_000) == 25
    with pytest.raises(ValueError, match="no divisor within 2 %"):
        divisor_for(25e6, 3_000_000)
    for bad in (3, 8.0, True):
        with pytest.raises(ValueError, match="divisor"):
            check(UartRx, bad)
    with pytest.raises(ValueError, match="timeout"):
        check(UartBridge, 8, timeout=100)
    check(UartBridge, 217)


def test_selftest_and_cli_refusals(capsys):
    port = FakeBridge()
    assert ul.selftest(ul.UartLink(port), 300, seed=3) >= 0
    assert [c[0] for c in port.commands] == ["W", "W", "R", "R"]

    class Corrupting(FakeBridge):
        def read(self, n):
            r = super().read(n)
            return bytes([r[0] ^ 1]) + r[1:] if n > 1 else r
    with pytest.raises(ul.LinkError, match="1 of 10 words read back differ"):
        ul.selftest(ul.UartLink(Corrupting()), 10)
    assert ul.main(["--port", "/dev/null", "--selftest", "--words", "0"]) == 2
    assert "--words must be 1 to 4096" in capsys.readouterr().err
    try:
        import serial  # noqa: F401
    except ImportError:
        assert ul.main(["--port", "/dev/null", "--selftest"]) == 2
        assert "needs pyserial" in capsys.readouterr().err
