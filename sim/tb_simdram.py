"""cocotb side of sim/test_simdram.py: cocotbext-axi's AxiMaster on the harness's ``s``
port, ``fpqvar_sim_dram`` behind it (``dram_ext = 0``)."""
from __future__ import annotations

import logging
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiMaster, AxiResp

from fpqvar_hw.host.cosim import tb_params
from fpqvar_hw.host.simdram import Backdoor


async def _setup(dut):
    p = tb_params()
    dut.dram_ext.value = 0
    dut.dram_latency.value = p["latency"]
    dut.dram_stall.value = p["stall"]
    dut.dram_write_latency.value = p.get("wlatency", 0)
    dut.dram_seed.value = p["seed"] * 7919
    master = AxiMaster(AxiBus.from_prefix(dut, "s", bus_separator="__"), dut.clk, dut.rst)
    for ch in (master.write_if, master.read_if):
        ch.log.setLevel(logging.WARNING)
    rng = random.Random(p["seed"])
    if p["pause"]:
        def pauses():
            while True:
                yield rng.random() < p["pause"]
        for ch in (master.write_if.aw_channel, master.write_if.w_channel, master.write_if.b_channel,
                   master.read_if.ar_channel, master.read_if.r_channel):
            ch.set_pause_generator(pauses())
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    return p, master, rng, Backdoor(dut)


@cocotb.test()
async def random_traffic(dut):
    p, master, rng, bd = await _setup(dut)
    size = p["size"]
    assert bd.size == size
    shadow = bytearray(rng.randbytes(size))
    bd.write(0, bytes(shadow))                     # backdoor load
    assert bd.read(0, size) == bytes(shadow)
    for i in range(p["n"]):
        addr = rng.randrange(size - 1)
        n = min(rng.choice([1, 5, 16, 31, 64, 300, 1000, 4200]), size - addr)
        kind = rng.random()
        if kind < 0.45:
            data = rng.randbytes(n)
            await master.write(addr, data)
            shadow[addr:addr + n] = data
        elif kind < 0.9:
            got = (await master.read(addr, n)).data
            assert bytes(got) == bytes(shadow[addr:addr + n]), f"read {i} at 0x{addr:x}+{n} differs"
        else:                                       # backdoor write, then read it over AXI
            data = rng.randbytes(n)
            bd.write(addr, data)
            shadow[addr:addr + n] = data
            got = (await master.read(addr, n)).data
            assert bytes(got) == data, f"backdoor write {i} at 0x{addr:x}+{n} not seen over AXI"
    assert bd.read(0, size) == bytes(shadow), "memory differs from the shadow copy after the traffic"
    assert int(dut.dram_errors.value) == 0


@cocotb.test()
async def write_latency(dut):
    """A single-beat write is answered no earlier than ``wlatency`` cycles after its beat, and
    writes in flight overlap: 48 of them take about one latency, not 48."""
    from cocotb.triggers import RisingEdge
    from cocotb.utils import get_sim_time

    p, master, rng, bd = await _setup(dut)
    wl = p["wlatency"]
    await RisingEdge(dut.clk)
    t0 = get_sim_time("ns")
    await master.write(0x40, b"\x5a" * 16)
    one = (get_sim_time("ns") - t0) / 10
    assert wl <= one <= wl + 12, (wl, one)
    assert bd.read(0x40, 16) == b"\x5a" * 16
    t0 = get_sim_time("ns")
    await cocotb.triggers.Combine(*[cocotb.start_soon(master.write(0x1000 + 16 * k, bytes([k]) * 16))
                                    for k in range(48)])
    many = (get_sim_time("ns") - t0) / 10
    assert many < 2 * wl + 3 * 48, (wl, many)      # overlapped (48 one after another: 48 * wl)
    assert all(bd.read(0x1000 + 16 * k, 16) == bytes([k]) * 16 for k in range(48))
    assert int(dut.dram_errors.value) == 0


@cocotb.test()
async def errors(dut):
    p, master, rng, bd = await _setup(dut)
    size = p["size"]
    # out of range: SLVERR, nothing written
    res = await master.read(size, 32)
    assert res.resp == AxiResp.SLVERR, res
    res = await master.write(size - 16, bytes(48))     # crosses the end: the whole burst refused
    assert res.resp == AxiResp.SLVERR, res
    assert int(dut.dram_errors.value) == 0
    # a burst of 4-byte beats (AxiMaster uses the bus width unless told): counted
    res = await master.read(0x100, 16, size=2)
    assert int(dut.dram_errors.value) == 1, int(dut.dram_errors.value)
    # within range again: OKAY
    bd.write(0x200, b"\x11" * 16)
    assert bytes((await master.read(0x200, 16)).data) == b"\x11" * 16
    with __import__("pytest").raises(ValueError, match="outside"):
        bd.read(size - 4, 8)
