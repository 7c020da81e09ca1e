"""cocotb testbench of fpqvar_hw.engines.matrix.MatrixEngine (driven by sim/test_matrix.py).

Parameters (``sim.streams.tb_params``): ``cases`` (an ``.npz``: per case ``c``,
``image{c}`` (the DRAM bytes before), ``expect{c}`` (after; ignored for aborted
or failing cases), ``words{c}`` (the 32 instruction words)), ``meta`` (a list of
dicts per case: ``name``, ``error`` (expected code), ``fine``, ``abort_after``
(cycles after ``cmd`` is taken to pulse ``abort``, or null), ``window``
(optional DRAM_SIZE for this case, default ``size``), ``out_addr``,
``out_stride``, ``m``, ``n``), ``base`` (DRAM byte address of ``image[0]``),
``size`` (DRAM_SIZE given to the engine), ``seed``, DMA model knobs ``lat_min``,
``lat_max``, ``gap``, ``req_backpressure``, and ``report`` (a JSON file this
testbench writes: cycles per case).

Every case runs on the same engine instance, one after another (the DRAM
image is replaced between cases), so an aborted or failed GEMM must leave the
engine ready for the next one.  Per case: ``cmd`` is presented, the cycles from
its acceptance until ``busy`` falls are counted, ``error`` is compared, and for
successful cases the whole DRAM image is compared byte for byte (outputs, and
every byte that must not be written: rows >= M, padded features, gaps); an
instruction with a field error (5) must not access DRAM at all.
"""
import json

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from sim.dma_model import DmaMemory
from sim.streams import StreamTB, tb_params

READ_PORTS = ("rd_act", "rd_w", "rd_ws", "rd_bias")


def _f32(bits: int) -> str:
    return f"{bits:#010x} ({float(np.uint32(bits).view(np.float32))!r})"


class MatrixTB(StreamTB):
    def __init__(self, dut, p):
        super().__init__(dut, seed=p["seed"])
        self.p = p
        self.add_source("cmd")
        self.mem = bytearray(p["size"])
        self.dma = DmaMemory(dut, self.clk, self.mem, base=p["base"], seed=p["seed"],
                             read_ports=READ_PORTS, write_ports=("wr",),
                             lat_min=p["lat_min"], lat_max=p["lat_max"], gap=p["gap"],
                             req_backpressure=p["req_backpressure"])

    async def start(self, reset_cycles: int = 3) -> None:
        d = self.dut
        d.abort.value = 0
        d.fine.value = 1
        d.dram_base.value = self.p["base"]
        d.dram_size.value = self.p["size"]
        await super().start(reset_cycles)
        self.dma.start()

    async def run_case(self, words, meta) -> tuple[int, int]:
        """Issue one instruction; return (cycles from acceptance to busy low, error)."""
        d = self.dut
        d.fine.value = int(meta["fine"])
        d.dram_size.value = meta.get("window", self.p["size"])
        src = self.sources["cmd"]
        sent = src.sent
        src.send([sum(int(w) << (32 * k) for k, w in enumerate(words))])
        limit = 2_000_000
        while src.sent == sent:
            await RisingEdge(self.clk)
            limit -= 1
            assert limit > 0, f"{meta['name']}: cmd never accepted"
        start = self.cycles
        abort_at = meta.get("abort_after")
        while True:
            await RisingEdge(self.clk)
            n = self.cycles - start
            if abort_at is not None:
                d.abort.value = int(n == abort_at)
            if n > 2 and not int(d.busy.value):
                break
            assert n < limit, f"{meta['name']}: busy never fell ({n} cycles)"
        d.abort.value = 0
        return self.cycles - start, int(d.error.value)

    def compare(self, name, expect: bytes, meta) -> list[str]:
        got = np.frombuffer(bytes(self.mem), dtype=np.uint8)
        exp = np.frombuffer(expect, dtype=np.uint8)
        bad = np.nonzero(got != exp)[0]
        out = []
        seen = set()
        for off in bad:
            word = int(off) & ~3
            if word in seen:
                continue
            seen.add(word)
            rel = word - (meta["out_addr"] - self.p["base"])
            r, col = divmod(rel, meta["out_stride"]) if rel >= 0 else (-1, rel)
            e = int.from_bytes(exp[word:word + 4].tobytes(), "little")
            a = int.from_bytes(got[word:word + 4].tobytes(), "little")
            where = (f"out[{r}, {col // 4}]" if 0 <= r < meta["m"] and col % 4 == 0
                     and col // 4 < meta["n"] else f"byte offset {word:#x} (must stay untouched)")
            out.append(f"{name}: {where}: expected {_f32(e)}, got {_f32(a)}")
            if len(out) >= 12:
                break
        if len(bad):
            out.append(f"{name}: {len(bad)} bytes differ")
        return out


@cocotb.test()
async def gemm_cases(dut):
    p = tb_params()
    z = np.load(p["cases"])
    meta = p["meta"]
    tb = MatrixTB(dut, p)
    await tb.start()
    errors, report = [], []
    for c, mt in enumerate(meta):
        tb.mem[:] = z[f"image{c}"].tobytes()
        traffic = (tb.dma.stats.read_bursts, tb.dma.stats.writes)
        cycles, err = await tb.run_case(z[f"words{c}"], mt)
        if mt["error"] == 5 and traffic != (tb.dma.stats.read_bursts, tb.dma.stats.writes):
            errors.append(f"{mt['name']}: an invalid instruction accessed DRAM")
        report.append({"name": mt["name"], "cycles": cycles, "error": err, "fine": mt["fine"]})
        dut._log.info(f"case {c} {mt['name']}: {cycles} cycles, error {err}")
        if err != mt["error"]:
            errors.append(f"{mt['name']}: error {err}, expected {mt['error']}")
        elif mt["error"] == 0 and mt.get("abort_after") is None:
            errors += tb.compare(mt["name"], z[f"expect{c}"].tobytes(), mt)
        # nothing may still be in flight once busy is low
        for _ in range(4):
            await RisingEdge(tb.clk)
        if not tb.dma.idle:
            errors.append(f"{mt['name']}: DMA transactions still outstanding after busy fell")
    errors += tb.dma.violations[:10]
    with open(p["report"], "w") as f:
        json.dump(report, f, indent=1)
    assert not errors, "\n".join(errors)
