"""Co-simulation of the matrix engine (fpqvar_hw.engines.matrix.MatrixEngine) on the emitted
Verilog: GEMM instructions against the golden model, DRAM served by
sim/dma_model.py with random latency, gaps and request backpressure.

One Verilator build (tm=2, 2 row sets, tn=2, lanes=16, quant_lanes=8, max_k=512) runs a
sequence of instructions on one engine instance: random GEMMs (M not a multiple
of tm, N not a multiple of tn, K in {128, 256, 512}, HAD on/off, BIAS on/off,
plain e2m1fn and DFQ, an all-zero group, a NaN row and an Inf-overflow row), an
out-of-window read and write (error 2, back to idle), read and write error
responses (errors 3 and 4), a field error (error 5, no access), an abort in the middle of a GEMM followed by a GEMM that must be
correct, and the same GEMM with the fine pipeline on and off (same bytes, more
cycles; the cycle counts are printed).  The whole DRAM image is compared byte
for byte, so rows >= M, padded features and row gaps must stay untouched.

Reference: ``fpqvar_hw.host.isa_sim.gemm`` (the instruction-level executor built
from ``fpqvar_quant.golden``: FP32 -> FP16, Hadamard, group quantizer, group dot
products, bias add) applied to the same DRAM image.

All co-simulations here are in the slow tier (``--run-slow``, which CI runs): the
Verilator build takes minutes.  The default tier runs the engine in the Amaranth
simulator (tests/test_hw_matrix.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from fpqvar_hw import isa
from fpqvar_hw import packing

from fpqvar_hw.host import isa_sim
from fpqvar_hw.config import get_preset
from fpqvar_hw.engines.matrix import MatrixEngine
from fpqvar_quant.golden.quantizer import quantize_groups
from sim.runner import BUILD_ROOT, run_cocotb

BASE = 0x0010_0000
SIZE = 1 << 16
SENTINEL = 0xA5
CFG = get_preset("w4a4").replace(tm=2, tn=2, lanes=16, quant_lanes=8, row_sets=2)
MAX_K = 512


@dataclass
class Case:
    name: str
    words: np.ndarray
    image: bytes
    expect: bytes
    meta: dict = field(default_factory=dict)


def _activations(rng, M, K, *, specials: bool, dfq: bool):
    x = rng.standard_normal((M, K)) * 2.0 ** rng.uniform(-6, 6, size=(M, 1))
    if dfq:       # GELU-like: bounded negatives
        x = np.where(x < 0, x * 0.1, x)
    x = x.astype(np.float32)
    if specials:
        x[0, :128] = 0.0                          # an all-zero group
        if M > 2:
            x[1, 5] = np.nan                      # a NaN input: the row's group reads NaN
            x[2, 130 % K] = 1e6                   # overflows FP16 to Inf
    return x.view(np.uint32)


def make_gemm(rng, name, *, M, K, N, had, bias, dfq, fine=True, specials=False,
              abort_after=None, corrupt=None, size=SIZE) -> Case:
    """One GEMM case: DRAM image (``size`` bytes at ``BASE``), instruction and the
    expected image.  ``corrupt``: {word index: value} overrides in the instruction."""
    tn, lanes = CFG.tn, CFG.lanes
    mem = bytearray(size)
    cursor = [0]

    def alloc(nbytes, align=16, skew=0):
        start = -(-cursor[0] // align) * align + skew
        cursor[0] = start + nbytes + 16 * int(rng.integers(0, 3))
        assert cursor[0] <= size, "case does not fit the test DRAM"
        return start

    act_stride = K * 4 + 16 * int(rng.integers(0, 3))
    x = _activations(rng, M, K, specials=specials, dfq=dfq)
    act = alloc(M * act_stride)
    for r in range(M):
        mem[act + r * act_stride:act + r * act_stride + 4 * K] = x[r].tobytes()
    signs = rng.integers(0, 2, 128).astype(np.uint8)
    sg = alloc(16)
    mem[sg:sg + 16] = packing.pack_sign_bits(signs)
    wv = (rng.standard_normal((N, K)) * 0.05).astype(np.float16).view(np.uint16)
    wq = quantize_groups(wv.reshape(N, K // 128, 128), "e2m1fn")
    w_codes = wq.codes.reshape(N, K)
    w_scales = wq.scales[..., 0]
    cbytes, sbytes = packing.pack_gemm_weights(w_codes, w_scales, tn=tn, lanes=lanes, bits=4, group=128)
    wa = alloc(len(cbytes))
    mem[wa:wa + len(cbytes)] = cbytes
    wsa = alloc(len(sbytes))
    mem[wsa:wsa + len(sbytes)] = sbytes
    npad = packing.gemm_padded_n(N, tn)
    bias_bits = (rng.standard_normal(npad) * 0.5).astype(np.float32).view(np.uint32)
    ba = alloc(4 * npad)
    mem[ba:ba + 4 * npad] = bias_bits.tobytes()
    out_stride = 4 * N + 4 * int(rng.integers(0, 4))
    oa = alloc(M * out_stride + 64, skew=4 * int(rng.integers(0, 4)))
    mem[oa:oa + M * out_stride + 64] = bytes([SENTINEL]) * (M * out_stride + 64)
    flags = (isa.GemmFlag.HAD if had else 0) | (isa.GemmFlag.BIAS if bias else 0)
    g = isa.Gemm(act_addr=BASE + act, act_stride=act_stride, m=M, k=K, n=N, w_addr=BASE + wa,
                 ws_addr=BASE + wsa, out_addr=BASE + oa, out_stride=out_stride,
                 bias_addr=BASE + ba, signs_addr=BASE + sg,
                 subop=isa.GemmSubop.DFQ if dfq else isa.GemmSubop.PLAIN, flags=int(flags))
    words = np.frombuffer(g.encode(), dtype="<u4").copy()
    if corrupt:
        for idx, val in corrupt.items():
            words[idx] = val
    dram = isa_sim.Dram(BASE, size)
    dram.mem[:] = mem
    isa_sim.gemm(dram, g, isa_sim.gemm_formats(CFG))
    return Case(name, words, bytes(mem), bytes(dram.mem),
                {"name": name, "error": 0, "fine": int(fine), "abort_after": abort_after,
                 "out_addr": BASE + oa, "out_stride": out_stride, "m": M, "n": N})


def default_cases(seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    cs = []
    cs.append(make_gemm(rng, "plain-had-bias-specials", M=5, K=256, N=5, had=True, bias=True,
                        dfq=False, specials=True))
    cs.append(make_gemm(rng, "dfq-bias", M=3, K=512, N=3, had=False, bias=True, dfq=True,
                        specials=True))
    cs.append(make_gemm(rng, "plain-nohad-nobias", M=1, K=128, N=1, had=False, bias=False,
                        dfq=False))
    # the DRAM window ends inside the weight codes: error 2 before the access, then idle
    c = make_gemm(rng, "window", M=2, K=128, N=3, had=False, bias=False, dfq=False)
    w_off = int(c.words[isa.GEMM_W]) - BASE
    c.meta["error"] = int(isa.ErrorCode.ADDRESS)
    c.meta["window"] = w_off + 32
    cs.append(c)
    # the window ends just before the outputs: error 2 raised by the write path
    c = make_gemm(rng, "window-out", M=3, K=128, N=3, had=True, bias=True, dfq=False)
    c.meta["error"] = int(isa.ErrorCode.ADDRESS)
    c.meta["window"] = int(c.words[isa.GEMM_OUT]) - BASE
    cs.append(c)
    # inside the window but beyond the DRAM model's array: error responses (3 read, 4 write)
    c = make_gemm(rng, "read-error", M=2, K=128, N=2, had=False, bias=False, dfq=True,
                  corrupt={isa.GEMM_WS: BASE + SIZE})
    c.meta.update(error=int(isa.ErrorCode.AXI_READ), window=2 * SIZE)
    cs.append(c)
    c = make_gemm(rng, "write-error", M=2, K=128, N=2, had=False, bias=False, dfq=False,
                  corrupt={isa.GEMM_OUT: BASE + SIZE + 4})
    c.meta.update(error=int(isa.ErrorCode.AXI_WRITE), window=2 * SIZE)
    cs.append(c)
    # K not a multiple of 128: error 5, nothing accessed
    c = make_gemm(rng, "field-k", M=2, K=128, N=2, had=False, bias=False, dfq=False,
                  corrupt={isa.GEMM_K: 192})
    c.meta["error"] = int(isa.ErrorCode.FIELD)
    cs.append(c)
    # abort in the middle, then a GEMM that must be exact
    c = make_gemm(rng, "abort", M=4, K=512, N=4, had=True, bias=True, dfq=True, abort_after=150)
    cs.append(c)
    cs.append(make_gemm(rng, "after-abort-dfq-had", M=3, K=256, N=4, had=True, bias=False, dfq=True))
    # the same GEMM with the fine pipeline on and off
    fine = make_gemm(np.random.default_rng(seed + 1), "fine-on", M=4, K=256, N=6, had=True,
                     bias=True, dfq=False)
    coarse = make_gemm(np.random.default_rng(seed + 1), "fine-off", M=4, K=256, N=6, had=True,
                       bias=True, dfq=False, fine=False)
    cs += [fine, coarse]
    return cs


def run_cases(cases: list[Case], tag: str, seed: int, size: int = SIZE, **dma) -> list[dict]:
    """Run ``cases`` in order on one engine (Verilator build shared by all callers);
    ``dma``: DmaMemory knobs.  Returns the testbench report (cycles per case)."""
    # small read FIFOs: the credit limit (no request whose beats would not fit) is
    # exercised against the DMA model's latencies
    dut = MatrixEngine(CFG, max_k=MAX_K, fifo_words=32)
    data = BUILD_ROOT / "vectors" / f"matrix-{tag}-s{seed}"
    data.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for c_idx, c in enumerate(cases):
        arrays[f"image{c_idx}"] = np.frombuffer(c.image, dtype=np.uint8)
        arrays[f"expect{c_idx}"] = np.frombuffer(c.expect, dtype=np.uint8)
        arrays[f"words{c_idx}"] = c.words
    np.savez(data / "cases.npz", **arrays)
    report = data / "report.json"
    knobs = {"lat_min": 2, "lat_max": 12, "gap": 0.2, "req_backpressure": 0.2}
    knobs.update(dma)
    run_cocotb(dut, name="matrix-w4a4-tm2tn2l16q8", test_module="sim.tb_matrix",
               params={"cases": str(data / "cases.npz"), "meta": [c.meta for c in cases],
                       "base": BASE, "size": size, "seed": seed, "report": str(report), **knobs})
    return json.loads(report.read_text())


@pytest.mark.slow   # the Verilator build of the engine takes minutes
def test_matrix_engine_cosim():
    rep = run_cases(default_cases(7), "default", 7)
    cyc = {r["name"]: r["cycles"] for r in rep}
    print("cycles per GEMM:", cyc)
    assert cyc["fine-off"] > cyc["fine-on"], cyc


def random_cases(seed: int, n: int) -> list[Case]:
    """``n`` random GEMMs over the shapes and modes of the default tier."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        out.append(make_gemm(
            rng, f"random{k}", M=int(rng.integers(1, 8)), K=int(rng.choice([128, 256, 512])),
            N=int(rng.integers(1, 8)), had=bool(rng.integers(2)), bias=bool(rng.integers(2)),
            dfq=bool(rng.integers(2)), specials=bool(rng.integers(2)),
            fine=bool(rng.random() < 0.8)))
    return out


@pytest.mark.slow
def test_matrix_engine_random_sweep():
    """12 random GEMMs under heavier DRAM stress (latency up to 40, 40 % gaps and
    request backpressure), with an abort in the middle of the sequence."""
    cases = random_cases(101, 12)
    ab = make_gemm(np.random.default_rng(5), "abort-late", M=5, K=512, N=5, had=True, bias=True,
                   dfq=False, abort_after=900)
    cases.insert(6, ab)
    run_cases(cases, "sweep", 101, lat_min=1, lat_max=40, gap=0.4, req_backpressure=0.4)


@pytest.mark.slow
def test_matrix_engine_cycles():
    """Cycle counts of one GEMM (M=16, K=128, N=384) with the fine pipeline on and off,
    ideal DRAM (fixed latency 8, no gaps, no backpressure); results still bit-exact."""
    size = 1 << 17
    shape = dict(M=16, K=128, N=384, had=True, bias=True, dfq=False, size=size)
    cases = [make_gemm(np.random.default_rng(9), "m16k128n384-fine-on", **shape),
             make_gemm(np.random.default_rng(9), "m16k128n384-fine-off", fine=False, **shape)]
    rep = run_cases(cases, "cycles", 9, size=size, lat_min=8, lat_max=8, gap=0.0,
                    req_backpressure=0.0)
    cyc = {r["name"]: r["cycles"] for r in rep}
    print(f"cycles per GEMM (tm={CFG.tm}, tn={CFG.tn}, lanes={CFG.lanes}, "
          f"quant_lanes={CFG.quant_lanes}):", cyc)
    assert cyc["m16k128n384-fine-off"] > cyc["m16k128n384-fine-on"]
