"""cocotb module for sim/test_multiplier.py: every code pair of one multiplier.

Parameters (``tb_params``): ``pair`` ([format a, format b]), ``a_bits``,
``b_bits``, ``width`` (of ``p``).  The DUT is combinational (no clock): each
pair is applied, settled, and ``p`` compared with the golden model
``fpqvar_quant.golden.multiplier`` (``==`` on the integer).  Mismatches name
the pair index, the codes by field, expected vs actual (binary and value);
at most 10 are reported, all are counted.
"""
import cocotb
import numpy as np
from cocotb.triggers import Timer

from fpqvar_quant.formats import get_format
from fpqvar_quant.golden.multiplier import multiply, product_spec
from sim.streams import tb_params


def _fields(fmt_name: str, code: int) -> str:
    f = get_format(fmt_name)
    if f.kind == "int":
        return f"{code:0{f.bits}b}"
    m = code & ((1 << f.mbits) - 1)
    e = (code >> f.mbits) & ((1 << f.ebits) - 1)
    return f"s={code >> (f.bits - 1)} e={e:0{f.ebits}b} m={m:0{f.mbits}b} ({float(f.decode(np.array([code]))[0])})"


@cocotb.test()
async def every_code_pair(dut):
    p = tb_params()
    fa, fb = p["pair"]
    na, nb, width = 1 << p["a_bits"], 1 << p["b_bits"], p["width"]
    ca, cb = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    ca, cb = ca.ravel(), cb.ravel()
    want = multiply(fa, fb, ca, cb)
    lsb = product_spec(fa, fb).lsb
    bad = 0
    for k in range(len(ca)):
        dut.a.value = int(ca[k])
        dut.b.value = int(cb[k])
        await Timer(1, unit="ns")
        raw = int(dut.p.value)
        got = raw - (1 << width) if raw >> (width - 1) else raw
        if got != want[k]:
            bad += 1
            if bad <= 10:
                dut._log.error(
                    f"pair #{k}: a={_fields(fa, int(ca[k]))} b={_fields(fb, int(cb[k]))}: expected "
                    f"{int(want[k]) & ((1 << width) - 1):0{width}b} ({int(want[k]) * lsb}), got "
                    f"{raw:0{width}b} ({got * lsb})")
    dut._log.info(f"{len(ca)} code pairs checked, {bad} mismatches")
    assert bad == 0, f"{bad} of {len(ca)} code pairs mismatched"
