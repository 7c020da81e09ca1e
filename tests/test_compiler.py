"""fpqvar_hw.host.compiler + fpqvar_hw.host.isa_sim on the shipped digits VAR (fp4-fpqvar package).

* executing the compiled step programs gives bit for bit the x (and KV caches)
  of ``golden.block.model_step`` applied step by step;
* any execution order the coarse pipeline may produce under the emitted sync
  flags gives the same DRAM, and clearing the flags breaks it (the test can fail);
* bad programs stop with the right error code, ERR_PC and PC;
* the compiler imports without torch.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fpqvar_hw import isa
from fpqvar_hw import footprints, packing

from fpqvar_hw.host import isa_sim
from fpqvar_hw.host.compiler import Compiler, assign_sync
from fpqvar_hw.host.plan import segments
from fpqvar_hw.config import get_preset
from fpqvar_hw.isa import ErrorCode, Gemm, Halt, Opcode, Operand, Vec, VecFlag, VecSubop
from fpqvar_quant.golden import block as gb
from fpqvar_quant.golden import fp32 as gfp32
from fpqvar_quant.golden import vector as gv

from .test_golden_block import digits_fpqvar  # noqa: F401  (session fixture: the package)

ROOT = Path(__file__).resolve().parents[1]
CFG = get_preset("w4a4")
BASE = 0x40000


@pytest.fixture(scope="module")
def pkg(digits_fpqvar):  # noqa: F811
    from fpqvar_quant.ptq.package import load_package
    return load_package(digits_fpqvar[1])


@pytest.fixture(scope="module")
def comp(pkg):
    return Compiler(pkg, CFG, rows=2, dram_base=BASE, tile_tokens=8)


class Run:
    """A DRAM image with the compiled model, adaLN vectors and a golden twin."""

    def __init__(self, comp: Compiler, seed: int, cfg=CFG):
        self.comp, self.cfg = comp, cfg
        self.rng = np.random.default_rng(seed)
        R, C = comp.rows, comp.C
        self.dram = isa_sim.Dram(comp.dram_base, comp.dram_size)
        self.dram.load(comp.image())
        self.ada = [(self.rng.standard_normal((R, 6, C)) * 0.3).astype(np.float32)
                    for _ in range(comp.depth)]
        for b in range(comp.depth):
            self.dram.write(*comp.encode_adaln(b, self.ada[b]))
        self.caches = [gb.KVCache(R, comp.H, kind="kv6" if comp.kv6 else "fp16")
                       for _ in range(comp.depth)]

    def x(self, step: int) -> np.ndarray:
        L = self.comp.step_tokens(step)[1]
        return self.rng.standard_normal((self.comp.rows, L, self.comp.C)).astype(np.float32)

    def device(self, step: int, x: np.ndarray, prog: bytes | None = None, **kw) -> isa_sim.RunResult:
        c = self.comp
        self.dram.write(c.x_addr, c.encode_x(x))
        self.dram.write(c.prog_addr, c.program(step) if prog is None else prog)
        return isa_sim.execute(self.dram, c.prog_addr, self.cfg, **kw)

    def x_out(self, step: int) -> np.ndarray:
        c = self.comp
        return c.decode_x(self.dram.read(c.x_addr, c.x_bytes(step)), step)

    def golden(self, x: np.ndarray) -> np.ndarray:
        return gb.model_step(x, [gb.device_modulation(a, p) for a, p in zip(self.ada, self.comp.params)],
                             self.comp.params, self.caches)


def test_compiled_steps_are_bit_exact_against_golden_block(comp):
    run = Run(comp, seed=0)
    for step in range(comp.steps):
        x = run.x(step)
        res = run.device(step, x)
        n = len(comp.instructions(step))
        assert res.ok and res.pc == n, res.message
        assert res.counts[Opcode.HALT] == 1 and res.counts[Opcode.GEMM] == comp.depth * 4 * len(comp._tiles(x.shape[1]))
        got, want = run.x_out(step), run.golden(x)
        np.testing.assert_array_equal(got.view(np.uint32), gfp32.canon(want))
        assert np.isfinite(got).all() and not np.array_equal(got, x)
        Lk = sum(comp.step_lens[:step + 1])
        for b in range(comp.depth):
            k, v = comp.kv_cache(run.dram.read, b)
            gk, gv_ = run.caches[b].fp16_bits()
            np.testing.assert_array_equal(k[:, :, :Lk], gk)
            np.testing.assert_array_equal(v[:, :, :Lk], gv_)


def test_small_array_config_pads_and_stays_exact(pkg):
    """Tn = 3 (N padded: 384 -> 384, 128 -> 129, 512 -> 513), 16 lanes, 4-token tiles."""
    cfg = CFG.replace(tn=3, lanes=16, quant_lanes=16, tm=4, row_sets=1)
    c = Compiler(pkg, cfg, rows=2, dram_base=BASE)
    assert c.tile_tokens == 4 and c.pack == dict(tn=3, lanes=16, bits=4, group=128)
    run = Run(c, seed=4, cfg=cfg)
    for step in range(2):
        x = run.x(step)
        res = run.device(step, x)
        assert res.ok, res.message
        np.testing.assert_array_equal(run.x_out(step).view(np.uint32), gfp32.canon(run.golden(x)))


def test_one_tile_per_row_and_fine_tiles_give_the_same_bits(pkg):
    outs = []
    for tile in (3, 64):
        c = Compiler(pkg, CFG, rows=2, dram_base=BASE, tile_tokens=tile)
        run = Run(c, seed=1)
        for step in range(3):
            assert run.device(step, run.x(step)).ok
        outs.append(run.x_out(2))
    for o in outs[1:]:
        np.testing.assert_array_equal(o.view(np.uint32), outs[0].view(np.uint32))


def test_sync_flags_make_every_legal_interleaving_equal(comp):
    step = 2
    run = Run(comp, seed=2)
    ins = comp.instructions(step)
    assert 0 < sum(i.sync for i in ins) < len(ins) - 1        # overlap is possible, not everywhere
    check_interleavings(comp, run, step)


def check_interleavings(comp, run, step: int) -> None:
    """Run steps ``0..step-1`` (the KV caches), then ``step`` in program order and in 3
    random orders the sync flags allow: identical DRAM; with the flags cleared, some
    order must differ (else the check is blind)."""
    for s in range(step):
        assert run.device(s, run.x(s)).ok
    x = run.x(step)
    start = run.dram.copy()

    def replay(prog: bytes, seed):
        run.dram = start.copy()
        res = run.device(step, x, prog=prog, interleave_seed=seed)
        assert res.ok, res.message
        return bytes(run.dram.mem)

    ref = replay(comp.program(step), None)
    for seed in range(3):
        assert replay(comp.program(step), seed) == ref, seed
    stripped = isa.encode_program([replace(i, sync=False) for i in comp.instructions(step)])
    assert any(replay(stripped, seed) != ref for seed in range(3)), \
        "clearing the sync flags changed nothing: the interleaving test is blind"


def test_assign_sync_rules():
    kw = dict(tn=8, lanes=32, bits=4, group=128)
    g = Gemm(act_addr=0x000, act_stride=512, m=1, k=128, n=8, w_addr=0x1000, ws_addr=0x2000,
             out_addr=0x3000, out_stride=32)                          # writes [0x3000, 0x3020)
    rd_out = Vec(subop=VecSubop.GELU, n=(8, 1, 1, 1), a=Operand(0x3000, 4), d=Operand(0x4000, 4))
    other = Vec(subop=VecSubop.GELU, n=(8, 1, 1, 1), a=Operand(0x5000, 4), d=Operand(0x6000, 4))
    wr_act = Vec(subop=VecSubop.GELU, n=(8, 1, 1, 1), a=Operand(0x5000, 4), d=Operand(0x0, 4))

    def flags(prog, coarse=True):
        prog = prog + [Halt()]
        return [i.sync for i in assign_sync(prog, [footprints.footprint(i, **kw) for i in prog], coarse=coarse)][:-1]

    assert flags([g, rd_out]) == [False, True]                        # RAW
    assert flags([g, wr_act]) == [False, True]                        # WAR
    assert flags([g, other]) == [False, False]                        # independent: overlap
    assert flags([g, other, rd_out]) == [False, False, True]          # g may still run
    assert flags([g, rd_out, other, rd_out]) == [False, True, False, False]   # g done at the sync
    assert flags([g, other, g]) == [False, False, False]              # same engine: in order
    assert flags([g, other], coarse=False) == [True, True]


# --------------------------------------------------------------- bad programs
@pytest.fixture(scope="module")
def small():
    """A 0x4000-byte window at 0x1000 with a 4-instruction valid program at 0x1000."""
    d = isa_sim.Dram(0x1000, 0x4000)
    rng = np.random.default_rng(3)
    d.write_array(0x2000, rng.standard_normal(64).astype("<f4"))
    prog = [Vec(subop=VecSubop.GELU, n=(16, 1, 1, 1), a=Operand(0x2000, 4), d=Operand(0x2100, 4)),
            Vec(subop=VecSubop.CVT16, n=(16, 1, 1, 1), a=Operand(0x2000, 4), d=Operand(0x2200, 2),
                flags=VecFlag.D_FP16),
            Vec(subop=VecSubop.SOFTMAX, n=(8, 2, 1, 1), a=Operand(0x2000, 4, 32), d=Operand(0x2300, 4, 32)),
            Vec(subop=VecSubop.RESID, n=(4, 4, 1, 1), a=Operand(0x2000, 4, 16), b=Operand(0x2040, 0, 4),
                c=Operand(0x2000 + 60, -4, -16), d=Operand(0x2400, 16, 4))]
    return d, prog


def _run_small(small, prog, prog_addr=0x1000):
    d0, _ = small
    d = d0.copy()
    d.write(prog_addr, isa.encode_program(prog))
    return d, isa_sim.execute(d, prog_addr, CFG)


def test_small_program_semantics(small):
    d, res = _run_small(small, small[1] + [Halt()])
    assert res.ok and res.pc == 5 and res.counts[Opcode.VEC] == 4
    x = d.read_array(0x2000, "<f4", 64)
    np.testing.assert_array_equal(d.read_array(0x2100, "<f4", 16), gv.gelu(x[:16]))
    np.testing.assert_array_equal(d.read_array(0x2200, "<u2", 16), gfp32.convert(x[:16].view(np.uint32), "fp32", "fp16"))
    np.testing.assert_array_equal(d.read_array(0x2300, "<f4", 16).reshape(2, 8), gv.softmax(x[:16].reshape(2, 8)))
    # RESID: A rows of 4, B = one gamma per row (s0 = 0), C reversed, D transposed
    a = x[:16].reshape(4, 4)
    gam = x[16:20][:, None]
    c = x[:16][::-1].reshape(4, 4)
    want = gv.gamma_residual(a, gam, c)          # [i1, i0]
    np.testing.assert_array_equal(d.read_array(0x2400, "<f4", 16).reshape(4, 4), want.T)


@pytest.mark.parametrize("bad_index", [0, 2, 3])
@pytest.mark.parametrize("kind, code", [
    ("opcode", ErrorCode.OPCODE), ("window", ErrorCode.ADDRESS), ("misaligned", ErrorCode.FIELD),
    ("zero_count", ErrorCode.FIELD), ("subop", ErrorCode.FIELD), ("gemm_window", ErrorCode.ADDRESS),
    ("softmax_len", ErrorCode.FIELD)])
def test_bad_instruction_stops_with_error(small, kind, code, bad_index):
    d0, prog = small
    good = {"x": Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=Operand(0x2000, 4), d=Operand(0x2800, 4))}
    bad = {
        "window": Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=Operand(0x2000, 4), d=Operand(0x4FF8, 4)),
        "misaligned": Vec(subop=VecSubop.GELU, n=(4, 1, 1, 1), a=Operand(0x2002, 4), d=Operand(0x2800, 4)),
        "zero_count": Vec(subop=VecSubop.GELU, n=(4, 0, 1, 1), a=Operand(0x2000, 4), d=Operand(0x2800, 4)),
        "subop": Vec(subop=9, n=(4, 1, 1, 1)),
        "gemm_window": Gemm(act_addr=0x2000, act_stride=512, m=1, k=128, n=8, w_addr=0x4F00,
                            ws_addr=0x2000, out_addr=0x2800, out_stride=32),
        "softmax_len": Vec(subop=VecSubop.SOFTMAX, n=(isa.MAX_KV_LEN + 1, 1, 1, 1), a=Operand(0x2000, 4),
                           d=Operand(0x2800, 4)),
    }.get(kind, good["x"])
    p = list(prog[:bad_index]) + [bad] + [good["x"], Halt()]
    d = d0.copy()
    d.write(0x1000, isa.encode_program(p))
    if kind == "opcode":
        d.write(0x1000 + 128 * bad_index, bytes([0x05]))
    before = bytes(d.mem)
    res = isa_sim.execute(d, 0x1000, CFG)
    assert (res.error, res.err_pc, res.pc) == (code, bad_index, bad_index), res.message
    assert res.counts[Opcode.VEC] + res.counts[Opcode.GEMM] == bad_index and res.message
    assert bytes(d.mem[0x2800 - 0x1000:0x2810 - 0x1000]) == before[0x1800:0x1810]   # nothing after it ran


def test_fetch_and_prog_addr_errors(small):
    d0, prog = small
    d = d0.copy()
    d.write(0x4F80, isa.encode_program(prog[:1]))          # last slot of the window, no HALT after it
    res = isa_sim.execute(d, 0x4F80, CFG)
    assert (res.error, res.err_pc, res.pc) == (ErrorCode.ADDRESS, 1, 1)
    res = isa_sim.execute(d0.copy(), 0x1040, CFG)
    assert (res.error, res.err_pc) == (ErrorCode.FIELD, 0) and "aligned" in res.message


def test_dram_rejects_bad_windows_and_accesses():
    with pytest.raises(ValueError, match="multiples of 16"):
        isa_sim.Dram(8, 64)
    d = isa_sim.Dram(0x100, 0x100)
    d.write_u32(0x1FC, 0xDEADBEEF)
    assert d.read_u32(0x1FC) == 0xDEADBEEF
    with pytest.raises(IndexError, match="outside the DRAM window"):
        d.read(0x1FE, 4)


# ------------------------------------------------------------------ layout
def test_layout_regions_and_image(comp):
    regs = comp.regions()
    assert all(r.addr % 128 == 0 for r in regs)
    for a, b in zip(regs, regs[1:]):
        assert a.addr + a.size <= b.addr, (a, b)
    assert regs[0].addr == BASE and regs[-1].addr + regs[-1].size <= BASE + comp.dram_size
    for addr, data in comp.image():
        assert any(r.addr <= addr and addr + len(data) <= r.addr + r.size for r in regs)
    for step in range(comp.steps):
        assert len(comp.program(step)) <= comp.prog_bytes
        for ins in comp.instructions(step):
            ins.check()
            assert footprints.footprint(ins, **comp.pack).within(comp.dram_base, comp.dram_size)
    # the packed qkv weights of block 1 are the golden block's device weights
    lay = comp.params[1].qkv
    a = comp.layer_addr[1]["qkv"]
    img = dict(comp.image())
    codes, scales = packing.unpack_gemm_weights(img[a["w"]], img[a["ws"]], lay.n, lay.k, **comp.pack)
    np.testing.assert_array_equal(codes, lay.codes)
    np.testing.assert_array_equal(scales, lay.scales)


def test_driver_helpers(comp):
    x = np.arange(2 * 4 * comp.C, dtype=np.float32).reshape(2, 4, comp.C)
    raw = comp.encode_x(x)
    assert len(raw) == comp.x_bytes(1) and np.array_equal(comp.decode_x(raw, 1), x)
    with pytest.raises(ValueError, match="x must be"):
        comp.encode_x(x[:, :3])
    ada = np.ones((2, 6, comp.C), np.float32)
    addr, data = comp.encode_adaln(1, ada)
    assert addr == comp.ada_addr[1] and data == ada.astype("<f4").tobytes()
    assert comp.step_tokens(3) == (1 + 4 + 9, 16)
    with pytest.raises(ValueError, match="step must be"):
        comp.step_tokens(4)


def test_compiler_rejects_mismatches(pkg):
    with pytest.raises(ValueError, match="computes a=int4"):
        Compiler(pkg, get_preset("int4"), rows=2)
    with pytest.raises(ValueError, match="dfq6"):
        Compiler(pkg, get_preset("w6a6"), rows=2)
    with pytest.raises(ValueError, match="too small"):
        Compiler(pkg, CFG, rows=2, dram_size=0x1000)
    with pytest.raises(ValueError, match="SOFTMAX"):
        Compiler(pkg, CFG, rows=2, max_kv=16)
    with pytest.raises(ValueError, match="rows"):
        Compiler(pkg, CFG, rows=0)


# ------------------------------------------------------------------ KV6 cache
CFG6 = CFG.replace(kv_format="e2m3fn")


def _with_kv(pkg, kv):
    """The package with another ``kv_cache`` manifest entry (same weights)."""
    import copy
    out = copy.copy(pkg)
    out.manifest = {**pkg.manifest, "kv_cache": kv}
    return out


@pytest.fixture(scope="module")
def kv6_pkg(pkg):
    """The digits package as the fp4-fpqvar-kv6 PTQ preset exports it: the KV
    quantizer is installed after calibration (``quantize_model``), so the weights
    equal fp4-fpqvar's and only the manifest's ``kv_cache`` entry differs."""
    from fpqvar_quant.ptq.config import get_preset as ptq_preset
    q = ptq_preset("fp4-fpqvar-kv6")
    return _with_kv(pkg, {"fmt": q.kv_fmt, "group_size": q.kv_group_size,
                          "scale_format": q.kv_scale_format})


def test_kv6_compiled_steps_are_bit_exact_against_golden_block(kv6_pkg):
    """KVQ6 + FDOT(B_KV6) programs == golden.block.model_step with kv6 caches, all
    steps: x and the cache codes/scales bit for bit."""
    comp = Compiler(kv6_pkg, CFG6, rows=2, dram_base=BASE, tile_tokens=8)
    assert comp.kv6 and comp.kv_elem == 1
    run = Run(comp, seed=5, cfg=CFG6)
    for step in range(comp.steps):
        x = run.x(step)
        ins = comp.instructions(step)
        subs = [i.subop for i in ins if isinstance(i, Vec)]
        L = x.shape[1]      # one KVQ6 k and v per piece of a tile in one row
        assert VecSubop.CVT16 not in subs and subs.count(VecSubop.KVQ6) == 2 * comp.depth * sum(
            len(segments(t0, t1, L)) for t0, t1 in comp._tiles(L))
        assert all(i.flags == VecFlag.B_KV6 for i in ins if isinstance(i, Vec) and i.subop == VecSubop.FDOT)
        res = run.device(step, x)
        assert res.ok and res.pc == len(ins), res.message
        np.testing.assert_array_equal(run.x_out(step).view(np.uint32), gfp32.canon(run.golden(x)))
        Lk = sum(comp.step_lens[:step + 1])
        for b in range(comp.depth):
            for got, want in zip(comp.kv_entries(run.dram.read, b), (run.caches[b].k, run.caches[b].v)):
                assert got.kind == want.kind == "kv6"
                np.testing.assert_array_equal(got.codes[:, :, :Lk], want.codes)
                np.testing.assert_array_equal(got.scales[:, :, :Lk], want.scales)
    # the same program on a build without the KV6 hardware stops at the first KVQ6 (error 5)
    run.dram.write(comp.prog_addr, comp.program(0))
    res = isa_sim.execute(run.dram, comp.prog_addr, CFG6, kv6=False)
    first = next(i for i, ins in enumerate(comp.instructions(0))
                 if isinstance(ins, Vec) and ins.subop == VecSubop.KVQ6)
    assert res.error == ErrorCode.FIELD and res.err_pc == first and "KV6" in res.message


def test_kv6_sync_flags_make_every_legal_interleaving_equal(kv6_pkg):
    """The KV6 code and scale caches enter the sync analysis (KVQ6 writes C and D,
    FDOT with B_KV6 reads C): every legal order gives the same DRAM, and clearing the
    flags breaks it."""
    comp = Compiler(kv6_pkg, CFG6, rows=2, dram_base=BASE, tile_tokens=4)
    step = 1
    check_interleavings(comp, Run(comp, seed=2, cfg=CFG6), step)


def test_compiler_kv_cache_format_must_match_config(pkg, kv6_pkg):
    with pytest.raises(ValueError, match="--param kv_format=e2m3fn"):
        Compiler(kv6_pkg, CFG, rows=2)
    with pytest.raises(ValueError, match="does not quantize it"):
        Compiler(pkg, CFG6, rows=2)
    with pytest.raises(ValueError, match="group 32"):
        Compiler(_with_kv(pkg, {"fmt": "e2m3fn", "group_size": 32, "scale_format": "fp16"}), CFG6, rows=2)
    with pytest.raises(ValueError, match="fmt=e2m1fn"):
        Compiler(_with_kv(pkg, {"fmt": "e2m1fn", "group_size": 64, "scale_format": "fp16"}), CFG6, rows=2)
    with pytest.raises(ValueError, match="kv_entries"):
        Compiler(kv6_pkg, CFG6, rows=2).kv_cache(lambda a, n: bytes(n), 0)


def test_coarse_pipeline_off_sets_every_sync(pkg):
    c = Compiler(pkg, CFG.replace(coarse_pipeline=False), rows=2)
    assert all(i.sync for i in c.instructions(0)[:-1])


def test_compiler_imports_without_torch(digits_fpqvar):  # noqa: F811
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any torch import now fails
        from fpqvar_hw.host.compiler import Compiler
        from fpqvar_hw.config import get_preset
        from fpqvar_hw.host import isa_sim
        from fpqvar_quant.ptq.package import load_package
        c = Compiler(load_package({str(digits_fpqvar[1])!r}), get_preset("w4a4"), rows=2)
        assert len(c.program(0)) > 0
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_cli_bundle(pkg, digits_fpqvar, tmp_path, capsys):  # noqa: F811
    import json

    from fpqvar_hw.host.compiler import main

    assert main([str(digits_fpqvar[1]), "--out", str(tmp_path), "--rows", "2", "--dram-base", "0x40000",
                 "--param", "tn=4"]) == 0
    assert "4 step programs" in capsys.readouterr().out
    lay = json.loads((tmp_path / "layout.json").read_text())
    cfg = CFG.replace(tn=4)
    c = Compiler(pkg, cfg, rows=2, dram_base=0x40000)
    assert (lay["dram_base"], lay["static_end"], lay["prog_addr"], lay["x_addr"]) == \
        (0x40000, c.static_end, c.prog_addr, c.x_addr)
    static = (tmp_path / "static.bin").read_bytes()
    for addr, data in c.image():
        assert static[addr - 0x40000:addr - 0x40000 + len(data)] == data
    assert all((tmp_path / s["program"]).read_bytes() == c.program(s["step"]) for s in lay["steps"])
    assert main([str(digits_fpqvar[1]), "--out", str(tmp_path), "--param", "tn=0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m fpqvar_hw.host.compiler: error: tn") and err.count("\n") == 1
