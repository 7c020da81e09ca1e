"""cocotb module for sim/test_uart.py: the board bring-up design ``LinkTest`` (UartBridge on
the RTL AXI4-Lite RAM ``LiteRam``) driven over its UART pins with the host's command bytes
(``fpqvar_hw.host.uart_link``, the UART model of sim/tb_uart.py):

* 300 random words written and read back (two commands each way), the LEDs showing the
  last word's low byte;
* addresses past the RAM: a write answers DECERR and changes nothing, a read answers
  DECERR with zero data; the words before it are unharmed.
"""
import random

import cocotb

from fpqvar_hw.engines.uart import AXI_DECERR
from fpqvar_hw.host import uart_link as ul
from sim.streams import tb_params
from sim.tb_uart import UartTB


@cocotb.test()
async def ram_round_trip(dut):
    p = tb_params()
    tb = UartTB(dut, p, ram_model=False)
    await tb.reset()
    rng = random.Random(p["seed"])
    words = [rng.getrandbits(32) for _ in range(300)]
    await tb.write_all(0x100, words)
    assert int(dut.led.value) == words[-1] & 0xFF
    assert await tb.read_all(0x100, 300) == words


@cocotb.test()
async def unmapped_addresses(dut):
    p = tb_params()
    tb = UartTB(dut, p, ram_model=False)
    await tb.reset()
    end = 4 * p["depth"]
    ul.check_status(await tb.write(end - 8, [0x11111111, 0x22222222]), "write")
    assert await tb.write(end - 4, [0xAAAAAAAA, 0xBBBBBBBB]) == AXI_DECERR   # second word past the end
    w, st = await tb.read(end - 8, 3)
    assert st == AXI_DECERR and w == [0x11111111, 0xAAAAAAAA, 0]
    w, st = await tb.read(0, 1)          # the refused word did not wrap around to word 0
    assert (w, st) == ([0], 0)
