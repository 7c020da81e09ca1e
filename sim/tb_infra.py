"""cocotb module for sim/test_infra.py: a stream FIFO that XORs its payload.

Checks the stream drivers and scoreboard themselves: random idle and
backpressure, nothing lost or duplicated, and (``expect_fail``) that a
scoreboard fed one wrong expectation reports it.
"""
import cocotb

from sim.streams import StreamTB, ScoreboardError, seeded, tb_params, unpack


class InfraTB(StreamTB):
    def __init__(self, dut, *, seed, idle, backpressure):
        super().__init__(dut, seed=seed)
        self.add_source("i", idle=idle)
        self.add_sink("o", backpressure=backpressure,
                      describe=lambda k, e, a: f"expected {e:#06x}, got {a:#06x}")


@cocotb.test()
async def stream_roundtrip(dut):
    p = tb_params()
    tb = InfraTB(dut, seed=p["seed"], idle=p["idle"], backpressure=p["backpressure"])
    rng = seeded(p["seed"], "data")
    beats = [rng.getrandbits(16) for _ in range(p["n"])]
    expected = [b ^ p["xor"] for b in beats]
    if p.get("corrupt_index") is not None:
        expected[p["corrupt_index"]] ^= 1
    if p.get("drop_last"):
        expected.pop()
    tb.sources["i"].send(beats)
    tb.scoreboards["o"].expect(expected)
    await tb.start()
    if p.get("expect_fail"):
        try:
            await tb.finish(timeout_cycles=20 * p["n"] + 100)
        except ScoreboardError as e:
            dut._log.info("scoreboard caught it as it should: %s", e)
            return
        raise AssertionError("scoreboard did not catch the injected error")
    await tb.finish(timeout_cycles=20 * p["n"] + 100)
    assert tb.scoreboards["o"].received == p["n"]
