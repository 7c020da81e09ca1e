"""cocotb module for sim/test_uart.py: the UART host link (``fpqvar_hw.engines.uart.UartBridge``)
between a bit-level UART model on ``rx``/``tx`` and cocotbext-axi's ``AxiLiteRam`` on
``axil``.  The command bytes and the replies' checks are the host's own
(``fpqvar_hw.host.uart_link``), so what is tested is what a user's PC sends.

* a small transfer: 300 random words written from 0x1000 (two commands, 256 + 44) and read
  back (two commands), the RAM holding exactly them, every status OKAY;
* errors: an unknown command byte is answered ``BAD_OP``; a write and a read at an address
  the RAM model refuses give status SLVERR (``check_status`` raises); a frame with a low stop
  bit inside a write sets the receive-error bit;
* an interrupted command (three bytes, then silence past the timeout) is dropped, and the
  next command, sent 3 % slower than the bridge's baud rate, works.
"""
import random

import cocotb
from cocotb.clock import Clock
from cocotb.queue import Queue
from cocotb.triggers import ClockCycles, FallingEdge, Timer, with_timeout
from cocotbext.axi import AxiLiteBus, AxiLiteRam

from fpqvar_hw.engines.uart import BAD_OP, MAX_WORDS, ST_RX_ERROR
from fpqvar_hw.host import uart_link as ul
from sim.streams import tb_params

PERIOD_NS = 10
BAD_BASE = 0xF000_0000          # the RAM model refuses these addresses (SLVERR)


class UartTB:
    def __init__(self, dut, p, *, ram_model: bool = True):
        """``ram_model``: serve the DUT's ``axil`` master with cocotbext-axi's AxiLiteRam
        (the bridge alone); without it the DUT holds its own RAM (``LinkTest``)."""
        self.dut, self.D = dut, p["divisor"]
        self.ram = None
        if ram_model:
            self._add_ram_model()
        self.replies: Queue = Queue()
        dut.rx.value = 1
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
        cocotb.start_soon(self._receiver())

    def _add_ram_model(self):
        dut = self.dut
        self.ram = AxiLiteRam(AxiLiteBus.from_prefix(dut, "axil", bus_separator="__"),
                              dut.clk, dut.rst, size=1 << 16)
        for side in (self.ram.write_if, self.ram.read_if):
            side.log.setLevel("WARNING")
            inner = side._write if side is self.ram.write_if else side._read

            async def guarded(address, *rest, inner=inner):
                if address >= BAD_BASE:
                    raise ValueError("unmapped")
                return await inner(address, *rest)
            if side is self.ram.write_if:
                side._write = guarded
            else:
                side._read = guarded

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 4)

    async def send(self, data: bytes, *, bad_stop_at: int | None = None, slow: float = 1.0):
        """Bytes on ``rx``, 8N1 LSB first; ``slow`` stretches the bit time; the frame at
        index ``bad_stop_at`` has a low stop bit (a framing error)."""
        bit_ns = round(self.D * PERIOD_NS * slow)
        for i, b in enumerate(data):
            stop = 0 if i == bad_stop_at else 1
            for bit in [0] + [(b >> j) & 1 for j in range(8)] + [stop]:
                self.dut.rx.value = bit
                await Timer(bit_ns, unit="ns")
            if stop == 0:
                self.dut.rx.value = 1
                await Timer(bit_ns, unit="ns")

    async def _receiver(self):
        """Frames on ``tx``, sampled mid-bit; a low stop bit fails the test."""
        D, clk = self.D, self.dut.clk
        while True:
            await FallingEdge(self.dut.tx)
            await ClockCycles(clk, D // 2)
            assert int(self.dut.tx.value) == 0, "tx: start bit not low in its middle"
            b = 0
            for j in range(8):
                await ClockCycles(clk, D)
                b |= int(self.dut.tx.value) << j
            await ClockCycles(clk, D)
            assert int(self.dut.tx.value) == 1, "tx: stop bit low"
            await self.replies.put(b)

    async def reply(self, n: int) -> bytes:
        out = bytearray()
        for _ in range(n):
            out.append(await with_timeout(self.replies.get(), 40 * self.D * PERIOD_NS * 300, "ns"))
        return bytes(out)

    async def write(self, addr: int, words: list[int], **kw) -> int:
        await self.send(ul.write_command(addr, words), **kw)
        return (await self.reply(1))[0]

    async def read(self, addr: int, n: int, **kw) -> tuple[list[int], int]:
        await self.send(ul.read_command(addr, n), **kw)
        r = await self.reply(4 * n + 1)
        return ul.words_from_bytes(r[:-1]), r[-1]

    async def write_all(self, addr: int, words: list[int]) -> None:
        """``words`` in commands of up to 256 (UartLink's split), every status OKAY."""
        for i in range(0, len(words), MAX_WORDS):
            ul.check_status(await self.write(addr + 4 * i, words[i:i + MAX_WORDS]), "write")

    async def read_all(self, addr: int, n: int) -> list[int]:
        out = []
        for i in range(0, n, MAX_WORDS):
            w, st = await self.read(addr + 4 * i, min(MAX_WORDS, n - i))
            ul.check_status(st, "read")
            out += w
        return out


@cocotb.test()
async def small_transfer(dut):
    p = tb_params()
    tb = UartTB(dut, p)
    await tb.reset()
    rng = random.Random(p["seed"])
    words = [rng.getrandbits(32) for _ in range(300)]
    await tb.write_all(0x1000, words)
    assert ul.words_from_bytes(tb.ram.read(0x1000, 1200)) == words
    assert tb.ram.read(0xFFC, 4) == bytes(4) and tb.ram.read(0x1000 + 1200, 4) == bytes(4)
    assert await tb.read_all(0x1000, 300) == words


@cocotb.test()
async def errors(dut):
    p = tb_params()
    tb = UartTB(dut, p)
    await tb.reset()
    await tb.send(bytes([0x00]))
    assert await tb.reply(1) == bytes([BAD_OP])
    st = await tb.write(BAD_BASE, [1, 2])
    assert st == 2, hex(st)
    try:
        ul.check_status(st, "write")
        raise AssertionError("SLVERR not raised")
    except ul.LinkError as e:
        assert "SLVERR" in str(e)
    w, st = await tb.read(BAD_BASE + 8, 1)
    assert st == 2 and w == [0]
    # a frame with a low stop bit inside a write's data: dropped, the error reported; the
    # word completes with the next byte
    cmd = ul.write_command(0x2000, [0x44332211])
    await tb.send(cmd[:8] + bytes([0x99]) + cmd[8:], bad_stop_at=8)
    st = (await tb.reply(1))[0]
    assert st == ST_RX_ERROR, hex(st)
    assert tb.ram.read(0x2000, 4) == bytes([0x11, 0x22, 0x33, 0x44])
    # the next command is clean again
    w, st = await tb.read(0x2000, 1)
    assert (w, st) == ([0x44332211], 0)


@cocotb.test()
async def interrupted_command(dut):
    p = tb_params()
    tb = UartTB(dut, p)
    await tb.reset()
    tb.ram.write(0x3000, bytes(range(16)))
    await tb.send(ul.write_command(0x3000, [0xDEADBEEF])[:3])      # the host dies here
    await ClockCycles(dut.clk, p["timeout"] + 50)
    w, st = await tb.read(0x3000, 4, slow=1.03)
    assert st == 0 and w == ul.words_from_bytes(bytes(range(16)))
