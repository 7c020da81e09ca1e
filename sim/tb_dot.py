"""cocotb module for sim/test_dot.py: the group dot-product unit against golden vectors.

Parameters (``tb_params``): ``beats`` (a text file, one packed input beat in
hex per line), ``vectors`` (an ``.npz`` with ``expected`` FP32 bit patterns,
one per dot product, and optionally the ``s_a``/``s_w`` group scales for reports),
``seed``, ``idle``, ``backpressure``.  The scoreboard compares every result
with ``==``; mismatches name the dot-product index, its group scales, and
expected vs actual FP32 by field and as a value.
"""
import cocotb
import numpy as np

from sim.streams import StreamTB, tb_params


def _f32(bits: int) -> str:
    v = float(np.uint32(bits).view(np.float32))
    return f"{bits:#010x} (s={bits >> 31} e={(bits >> 23) & 0xFF:08b} m={bits & 0x7FFFFF:023b} = {v!r})"


class DotTB(StreamTB):
    def __init__(self, dut, p, vec):
        super().__init__(dut, seed=p["seed"])
        self.vec = vec
        self.add_source("i", idle=p["idle"])
        self.add_sink("o", backpressure=p["backpressure"], describe=self.describe)

    def describe(self, index: int, expected: int, actual: int) -> str:
        if "s_a" not in self.vec:     # interleaved results (GroupDotV2): no per-dot scale rows
            return f"result #{index}: expected {_f32(expected)}, got {_f32(actual)}"
        sa = [hex(x) for x in self.vec["s_a"][index]]
        sw = [hex(x) for x in self.vec["s_w"][index]]
        return f"dot #{index} (s_a {sa}, s_w {sw}): expected {_f32(expected)}, got {_f32(actual)}"


@cocotb.test()
async def dot_vectors(dut):
    p = tb_params()
    vec = dict(np.load(p["vectors"]))
    with open(p["beats"]) as f:
        beats = [int(line, 16) for line in f if line.strip()]
    tb = DotTB(dut, p, vec)
    tb.sources["i"].send(beats)
    tb.scoreboards["o"].expect(int(x) for x in vec["expected"])
    await tb.start()
    await tb.finish(timeout_cycles=30 * len(beats) + 1000)
    assert tb.scoreboards["o"].received == len(vec["expected"])
    dut._log.info(f"{len(beats)} beats, {len(vec['expected'])} dot products: all equal")
