"""cocotb module for sim/test_vector.py::test_softmax_rows_verilator,
test_l2norm_heads_verilator and test_layernorm_rows_verilator: the row units that keep
rows in flight (``fpqvar_hw.units.vector.Softmax``, ``L2NormTemperature``,
``LayerNormModulate``) on Verilator.

Parameters (``tb_params``): ``unit`` (``"softmax"``, ``"l2nt"`` or ``"lnmod"``), ``seed``, ``cases``: a
list of ``[rows, n, idle, backpressure]``.  Each case streams ``rows`` seeded rows of
``n`` FP32 elements (softmax: ended by ``last``, every third row longer than 7 has -Inf
entries, ``n`` may be a list of the ``rows`` lengths, one per row; l2nt: heads of
``n`` = 64 with per-head log-temperatures around the ln 100 clamp, every fifth head all
zero; lnmod: rows of ``n`` = the unit's length with offsets, scales and per-row adaLN
scale/shift) and checks every result bit for bit against the golden model.  A case without stalls (``idle = backpressure = 0``) also counts its
cycles from the first element in to the last result out and asserts that they equal
the unit's ``cycles_for`` (the cycle model the throughput model uses).
"""
import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from fpqvar_hw.units.vector import L2NormTemperature, LayerNormModulate, Softmax
from fpqvar_quant.golden import fp32 as g
from fpqvar_quant.golden import vector as v
from sim.streams import StreamTB, tb_params


def _softmax_case(rng, rows: int, n: "int | list[int]") -> tuple[list[int], list[int]]:
    lengths = n if isinstance(n, list) else [n] * rows
    assert len(lengths) == rows, (rows, n)
    beats, want = [], []
    for j, length in enumerate(lengths):
        x = (rng.standard_normal(length) * rng.uniform(0.1, 30)).astype(np.float32)
        if j % 3 == 2 and length > 7:
            x[::7] = -np.inf
        beats += [int(b) | (int(k == length - 1) << 32) for k, b in enumerate(x.view(np.uint32))]
        want += [int(b) for b in g.canon(v.softmax(x[None, :], P=8)).reshape(-1)]
    return beats, want


def _l2nt_case(rng, rows: int, n: int) -> tuple[list[int], list[int]]:
    q = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 20, (rows, 1))).astype(np.float32)
    q[4::5] = 0.0
    t = rng.uniform(-3.0, 7.0, (rows, 1)).astype(np.float32)
    want = [int(b) for b in g.canon(v.l2norm_temperature(q, t, P=8)).reshape(-1)]
    tt = np.repeat(t, n, axis=1)
    beats = [int(a) | (int(b) << 32) for a, b in zip(q.view(np.uint32).reshape(-1),
                                                      tt.view(np.uint32).reshape(-1))]
    return beats, want


def _lnmod_case(rng, rows: int, n: int) -> tuple[list[int], list[int]]:
    x = (rng.standard_normal((rows, n)) * rng.uniform(0.01, 50, (rows, 1))
         + rng.standard_normal((rows, 1)) * 5).astype(np.float32)
    sc, sh = (rng.standard_normal((2, rows, n)) * 0.5).astype(np.float32)
    want = [int(b) for b in g.canon(v.layernorm_modulate(x, sc, sh, P=8)).reshape(-1)]
    u = [a.view(np.uint32).reshape(-1) for a in (x, sc, sh)]
    beats = [int(a) | (int(b) << 32) | (int(c) << 64) for a, b, c in zip(*u)]
    return beats, want


UNITS = {"softmax": (_softmax_case, Softmax.cycles_for),
         "l2nt": (_l2nt_case, L2NormTemperature.cycles_for),
         "lnmod": (_lnmod_case, LayerNormModulate.cycles_for)}


async def _span(tb: StreamTB, n_out: int) -> int:
    """Cycles from the first ``i`` transfer to the ``n_out``-th ``o`` transfer."""
    dut, first, seen = tb.dut, None, 0
    while True:
        await RisingEdge(tb.clk)
        if first is None and dut.i__valid.value and dut.i__ready.value:
            first = tb.cycles
        if dut.o__valid.value and dut.o__ready.value:
            seen += 1
            if seen == n_out:
                return tb.cycles - first + 1


@cocotb.test()
async def row_unit_cycles(dut):
    p = tb_params()
    make, model_cycles = UNITS[p["unit"]]
    rng = np.random.default_rng(p["seed"])
    tb = StreamTB(dut, seed=p["seed"])
    src = tb.add_source("i")
    sink = tb.add_sink("o")
    await tb.start()
    for rows, n, idle, bp in p["cases"]:
        src.idle, sink.backpressure = idle, bp
        beats, want = make(rng, rows, n)
        span = cocotb.start_soon(_span(tb, len(want)))
        tb.scoreboards["o"].expect(want)
        src.send(beats)
        await tb.wait_drained(timeout_cycles=3 * len(beats) + 400 * rows + 2000)
        tb.scoreboards["o"].finish()
        if idle == 0 and bp == 0 and not isinstance(n, list):
            got = await span
            model = model_cycles(rows, n)
            text = f"{p['unit']} {rows} x {n}: simulated {got} cycles, model {model}"
            dut._log.info(text)
            assert model == got, text
        else:
            span.cancel()
    await tb.finish(timeout_cycles=1000)
