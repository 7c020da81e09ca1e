"""cocotb testbench of fpqvar_hw.units.quantizer.Quantizer (driven by sim/test_quantizer.py).

Parameters (sim.streams.tb_params): ``vectors`` (npz with ``x`` [n, G] FP16 bits,
``codes`` [n, G], ``scales`` [n, S], ``error`` [n] from the golden model),
``lanes``, ``code_bits``, ``n_scales``, ``scale_bits`` (16 for FP16 scales, 8 for
e8m0; default 16), ``seed``, ``idle``, ``backpressure``.
"""
import cocotb
import numpy as np

from sim.streams import StreamTB, tb_params


def pack_inputs(x: np.ndarray, lanes: int) -> list[int]:
    return [sum(int(v) << (16 * k) for k, v in enumerate(row)) for row in x.reshape(-1, lanes)]


def pack_outputs(codes: np.ndarray, scales: np.ndarray, lanes: int, code_bits: int,
                 scale_bits: int = 16) -> list[int]:
    n, G = codes.shape
    B = G // lanes
    out = []
    for g in range(n):
        sc = 0
        for s, v in enumerate(scales[g]):
            sc |= int(v) << (scale_bits * s)
        for b in range(B):
            v = 0
            for k in range(lanes):
                v |= int(codes[g, b * lanes + k]) << (code_bits * k)
            v |= sc << (code_bits * lanes)
            v |= int(b == B - 1) << (code_bits * lanes + scale_bits * scales.shape[1])
            out.append(v)
    return out


class QuantizerTB(StreamTB):
    def __init__(self, dut, p, x):
        super().__init__(dut, seed=p["seed"])
        self.p, self.x = p, x
        self.add_source("i", idle=p["idle"])
        self.add_sink("o", backpressure=p["backpressure"], describe=self.describe, max_reports=8)

    def fields(self, v: int):
        L, cb, S = self.p["lanes"], self.p["code_bits"], self.p["n_scales"]
        sb = self.p.get("scale_bits", 16)
        codes = [(v >> (cb * k)) & ((1 << cb) - 1) for k in range(L)]
        scales = [(v >> (cb * L + sb * s)) & ((1 << sb) - 1) for s in range(S)]
        last = (v >> (cb * L + sb * S)) & 1
        return codes, scales, last

    def describe(self, idx: int, exp: int, act: int) -> str:
        L, cb = self.p["lanes"], self.p["code_bits"]
        B = self.x.shape[1] // L
        g, b = divmod(idx, B)
        ec, es, el = self.fields(exp)
        ac, as_, al = self.fields(act)
        parts = [f"group {g} beat {b}"]
        if es != as_:
            if self.p.get("scale_bits", 16) == 8:       # e8m0 code: 2^(code - 127)
                parts.append("e8m0 scales exp " + ",".join(f"{s:#04x}(2^{s - 127})" for s in es)
                             + " act " + ",".join(f"{s:#04x}(2^{s - 127})" for s in as_))
            else:
                parts.append("scales exp " + ",".join(f"{s:#06x}({np.uint16(s).view(np.float16)})" for s in es)
                             + " act " + ",".join(f"{s:#06x}({np.uint16(s).view(np.float16)})" for s in as_))
        if el != al:
            parts.append(f"last exp {el} act {al}")
        for k in range(L):
            if ec[k] != ac[k]:
                xb = int(self.x[g, b * L + k])
                parts.append(f"lane {k}: x={xb:#06x} ({np.uint16(xb).view(np.float16)!r}) code exp "
                             f"{ec[k]:0{cb}b} act {ac[k]:0{cb}b}")
        return "; ".join(parts[:12])


@cocotb.test()
async def quantizer_vectors(dut):
    p = tb_params()
    v = np.load(p["vectors"])
    x, codes, scales, error = v["x"], v["codes"], v["scales"], v["error"]
    tb = QuantizerTB(dut, p, x)
    tb.sources["i"].send(pack_inputs(x, p["lanes"]))
    tb.scoreboards["o"].expect(pack_outputs(codes, scales, p["lanes"], p["code_bits"],
                                            p.get("scale_bits", 16)))
    await tb.start()
    await tb.finish(timeout_cycles=40 * x.size // p["lanes"] + 1000)
    assert int(dut.error.value) == int(error.any()), \
        f"sticky error flag {int(dut.error.value)} but golden says {bool(error.any())}"
