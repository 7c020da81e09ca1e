"""Co-simulation of the matrix engine (fpqvar_hw.matrix.MatrixEngine) on the emitted
Verilog: GEMM instructions against the golden model, DRAM served by
sim/dma_model.py with random latency, gaps and request backpressure.

One Verilator build (tm=2, tn=2, lanes=16, quant_lanes=8, max_k=512) runs a
sequence of instructions on one engine instance: random GEMMs (M not a multiple
of tm, N not a multiple of tn, K in {128, 256, 512}, HAD on/off, BIAS on/off,
plain e2m1fn and DFQ, an all-zero group, a NaN row and an Inf-overflow row), an
out-of-window address (error 2, back to idle), a field error (error 5, no
access), an abort in the middle of a GEMM followed by a GEMM that must be
correct, and the same GEMM with the fine pipeline on and off (same bytes, more
cycles; the cycle counts are printed).  The whole DRAM image is compared byte
for byte, so rows >= M, padded features and row gaps must stay untouched.

Reference per row (``docs/top.md``): ``golden.fp32.convert`` FP32 -> FP16,
``golden.hadamard.hadamard_groups`` (HAD), ``golden.quantizer.quantize_groups``,
``golden.dot.dot``, ``golden.fp32.add`` of the bias (BIAS).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest

from fpqvar_hw import isa
from fpqvar_hw.config import get_preset
from fpqvar_hw.matrix import MatrixEngine
from fpqvar_quant.golden import dot as gdot
from fpqvar_quant.golden import fp32 as gfp32
from fpqvar_quant.golden.hadamard import hadamard_groups
from fpqvar_quant.golden.quantizer import quantize_groups
from sim.runner import BUILD_ROOT, run_cocotb

BASE = 0x0010_0000
SIZE = 1 << 16
SENTINEL = 0xA5
CFG = get_preset("w4a4").replace(tm=2, tn=2, lanes=16, quant_lanes=8)
MAX_K = 512


def reference_gemm(x_bits, w_codes, w_scales, *, dfq: bool, signs=None, bias_bits=None):
    """Golden GEMM: FP32 bits ``x [M, K]``, e2m1fn weight codes ``[N, K]`` and FP16
    scales ``[N, K/128]`` -> FP32 output bits ``[M, N]``."""
    M, K = x_bits.shape
    N = w_codes.shape[0]
    G = K // 128
    x16 = gfp32.convert(x_bits, "fp32", "fp16").reshape(M, G, 128)
    if signs is not None:
        x16 = hadamard_groups(x16, signs).y
    q = quantize_groups(x16, "dfq4" if dfq else "e2m1fn")
    a = np.broadcast_to(q.codes.reshape(M, 1, K), (M, N, K))
    w = np.broadcast_to(w_codes.reshape(1, N, K), (M, N, K))
    sw = np.broadcast_to(w_scales.reshape(1, N, G), (M, N, G))
    if dfq:
        s_pos = np.broadcast_to(q.scales[:, None, :, 1], (M, N, G))
        s_neg = np.broadcast_to(q.scales[:, None, :, 0], (M, N, G))
        out = gdot.dot(gdot.DFQ, "e2m1fn", a, w, s_pos, sw, 128, s_neg)
    else:
        out = gdot.dot("e2m1fn", "e2m1fn", a, w, np.broadcast_to(q.scales[:, None, :, 0], (M, N, G)),
                       sw, 128)
    if bias_bits is not None:
        out = gfp32.add(out, np.broadcast_to(bias_bits[None, :N], (M, N)))
    return np.asarray(out, dtype=np.uint32)


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
              window_size=SIZE, abort_after=None, corrupt=None) -> Case:
    """One GEMM case: DRAM image, instruction and the expected image."""
    tn, lanes = CFG.tn, CFG.lanes
    mem = bytearray(SIZE)
    cursor = [0]

    def alloc(nbytes, align=16, skew=0):
        start = -(-cursor[0] // align) * align + skew
        cursor[0] = start + nbytes + 16 * int(rng.integers(0, 3))
        assert cursor[0] <= SIZE, "case does not fit the test DRAM"
        return start

    act_stride = K * 4 + 16 * int(rng.integers(0, 3))
    x = _activations(rng, M, K, specials=specials, dfq=dfq)
    act = alloc(M * act_stride)
    for r in range(M):
        mem[act + r * act_stride:act + r * act_stride + 4 * K] = x[r].tobytes()
    signs = rng.integers(0, 2, 128).astype(np.uint8)
    sg = alloc(16)
    mem[sg:sg + 16] = isa.pack_sign_bits(signs)
    wv = (rng.standard_normal((N, K)) * 0.05).astype(np.float16).view(np.uint16)
    wq = quantize_groups(wv.reshape(N, K // 128, 128), "e2m1fn")
    w_codes = wq.codes.reshape(N, K)
    w_scales = wq.scales[..., 0]
    cbytes, sbytes = isa.pack_gemm_weights(w_codes, w_scales, tn=tn, lanes=lanes, bits=4, group=128)
    wa = alloc(len(cbytes))
    mem[wa:wa + len(cbytes)] = cbytes
    wsa = alloc(len(sbytes))
    mem[wsa:wsa + len(sbytes)] = sbytes
    npad = isa.gemm_padded_n(N, tn)
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
    out = reference_gemm(x, w_codes, w_scales, dfq=dfq, signs=signs if had else None,
                         bias_bits=bias_bits if bias else None)
    expect = bytearray(mem)
    for r in range(M):
        o = oa + r * out_stride
        expect[o:o + 4 * N] = out[r].astype("<u4").tobytes()
    return Case(name, words, bytes(mem), bytes(expect),
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


def run_cases(cases: list[Case], tag: str, seed: int, **dma) -> list[dict]:
    dut = MatrixEngine(CFG, max_k=MAX_K)
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
                       "base": BASE, "size": SIZE, "seed": seed, "report": str(report), **knobs})
    return json.loads(report.read_text())


def test_matrix_engine_cosim():
    rep = run_cases(default_cases(7), "default", 7)
    cyc = {r["name"]: r["cycles"] for r in rep}
    print("cycles per GEMM:", cyc)
    assert cyc["fine-off"] > cyc["fine-on"], cyc
