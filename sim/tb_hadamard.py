"""cocotb testbench of fpqvar_hw.units.hadamard.GroupHadamard (driven by sim/test_hadamard.py).

Parameters: ``vectors`` (npz: ``x`` [n, 128] FP16 bits, ``signs`` [128], ``y``
[n, 128], ``overflow`` [n], ``error`` [n] from the golden model), ``lanes``,
``seed``, ``idle``, ``backpressure``.
"""
import cocotb
import numpy as np

from sim.streams import StreamTB, tb_params


def pack(x: np.ndarray, lanes: int) -> list[int]:
    return [sum(int(v) << (16 * k) for k, v in enumerate(row)) for row in x.reshape(-1, lanes)]


class HadamardTB(StreamTB):
    def __init__(self, dut, p, x):
        super().__init__(dut, seed=p["seed"])
        self.p, self.x = p, x
        self.add_source("i", idle=p["idle"])
        self.add_sink("o", backpressure=p["backpressure"], describe=self.describe, max_reports=8)

    def describe(self, idx: int, exp: int, act: int) -> str:
        L = self.p["lanes"]
        g, b = divmod(idx, 128 // L)
        out = [f"group {g} beat {b}"]
        for k in range(L):
            e, a = (exp >> (16 * k)) & 0xFFFF, (act >> (16 * k)) & 0xFFFF
            if e != a:
                out.append(f"y[{b * L + k}] exp {e:016b} ({np.uint16(e).view(np.float16)!r}) "
                           f"act {a:016b} ({np.uint16(a).view(np.float16)!r})")
        return "; ".join(out[:8])


@cocotb.test()
async def hadamard_vectors(dut):
    p = tb_params()
    v = np.load(p["vectors"])
    x, signs, y = v["x"], v["signs"], v["y"]
    dut.signs.value = sum(int(b) << j for j, b in enumerate(signs))
    tb = HadamardTB(dut, p, x)
    tb.sources["i"].send(pack(x, p["lanes"]))
    tb.scoreboards["o"].expect(pack(y, p["lanes"]))
    await tb.start()
    await tb.finish(timeout_cycles=40 * x.size // p["lanes"] + 1000)
    assert int(dut.error.value) == int(v["error"].any()), "sticky error flag differs from golden"
    assert int(dut.overflow.value) == int(v["overflow"].any()), "sticky overflow flag differs from golden"
