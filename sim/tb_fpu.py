"""cocotb module for sim/test_fpu.py: FP units against golden vectors.

Parameters (``tb_params``): ``vectors`` (an ``.npz`` of raw IEEE bit-pattern
arrays, one per input and output field; its length is a multiple of ``lanes``),
``inputs``/``outputs`` (``[field, width]`` in payload order, LSB first),
``lanes``, ``seed``, ``idle``, ``backpressure``.  Lane ``l`` of beat ``t`` holds
vector ``t*lanes + l``.  The scoreboard compares whole beats with ``==`` and
reports the first differing field by vector index, decoded.
"""
import cocotb
import numpy as np

from sim.streams import StreamTB, tb_params


def _fields(bits: int, width: int) -> str:
    man = {16: 10, 32: 23}[width]
    e = (bits >> man) & ((1 << (width - 1 - man)) - 1)
    val = np.array([bits], dtype={16: np.uint16, 32: np.uint32}[width]) \
        .view({16: np.float16, 32: np.float32})[0]
    return (f"{bits:#0{width // 4 + 2}x} (s={bits >> (width - 1)} e={e:#x} "
            f"m={bits & ((1 << man) - 1):#x} = {float(val)!r})")


def _pack(vec, fields: list[list], lanes: int) -> list[int]:
    """Beats from per-field arrays (fields packed LSB first inside a lane)."""
    n = len(vec[fields[0][0]])
    lane_val = np.zeros(n, dtype=object)
    off = 0
    for name, width in fields:
        lane_val = lane_val + (vec[name].astype(np.uint64).astype(object) << off)
        off += width
    beats = []
    for t in range(n // lanes):
        v = 0
        for lane, x in enumerate(lane_val[t * lanes:(t + 1) * lanes]):
            v |= int(x) << (lane * off)
        beats.append(v)
    return beats


class FPUTB(StreamTB):
    def __init__(self, dut, p, vec):
        super().__init__(dut, seed=p["seed"])
        self.p, self.vec = p, vec
        self.add_source("i", idle=p["idle"])
        self.add_sink("o", backpressure=p["backpressure"], describe=self.describe)

    def describe(self, beat: int, expected: int, actual: int) -> str:
        lw = sum(w for _, w in self.p["outputs"])
        for lane in range(self.p["lanes"]):
            off = lane * lw
            for name, w in self.p["outputs"]:
                e, a = (expected >> off) & ((1 << w) - 1), (actual >> off) & ((1 << w) - 1)
                off += w
                if e != a:
                    idx = beat * self.p["lanes"] + lane
                    ops = ", ".join(f"{n}={_fields(int(self.vec[n][idx]), wi)}"
                                    for n, wi in self.p["inputs"])
                    return (f"vector {idx} field {name}: {ops}: expected {_fields(e, w)}, "
                            f"got {_fields(a, w)}")
        return "no differing field?"


@cocotb.test()
async def fpu_vectors(dut):
    p = tb_params()
    vec = dict(np.load(p["vectors"]))
    tb = FPUTB(dut, p, vec)
    ins = _pack(vec, p["inputs"], p["lanes"])
    tb.sources["i"].send(ins)
    tb.scoreboards["o"].expect(_pack(vec, p["outputs"], p["lanes"]))
    await tb.start()
    await tb.finish(timeout_cycles=20 * len(ins) + 1000)
    assert tb.scoreboards["o"].received == len(ins)
