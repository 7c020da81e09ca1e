"""fpqvar_hw.isa: encodings round-trip, layouts match docs/top.md, bad fields are rejected."""
from dataclasses import replace

import numpy as np
import pytest

from fpqvar_hw import isa
from fpqvar_hw import footprints, packing
from fpqvar_hw.isa import ErrorCode, Gemm, GemmFlag, GemmSubop, Halt, IsaError, Operand, Vec, VecFlag, VecSubop


def words(instr) -> np.ndarray:
    return np.frombuffer(instr.encode(), dtype="<u4")


def gemm(**kw) -> Gemm:
    base = dict(act_addr=0x1000, act_stride=512, m=3, k=128, n=10, w_addr=0x2000, ws_addr=0x3000,
                out_addr=0x4004, out_stride=44, bias_addr=0x5000, signs_addr=0x6000,
                subop=GemmSubop.PLAIN, flags=GemmFlag.HAD | GemmFlag.BIAS, sync=True)
    base.update(kw)
    return Gemm(**base)


def test_sizes_and_layout():
    assert isa.INSTR_WORDS == 32 and isa.INSTR_BYTES == 128
    assert isa.INSTR_LAYOUT.size == 1024 and isa.INSTR_LAYOUT.length == 32
    assert isa.REGS["CTRL"] == 0 and isa.REGS["OVERLAP_CYCLES"] == 0x2C and isa.REG_ID_VALUE == 0x46505156
    assert [isa.Opcode.HALT, isa.Opcode.GEMM, isa.Opcode.VEC] == [0, 1, 2]
    assert [e.value for e in ErrorCode] == [0, 1, 2, 3, 4, 5]
    assert (isa.GEMM_ACT, isa.GEMM_SIGNS, isa.VEC_A, isa.VEC_D) == (1, 11, 5, 20)


def test_gemm_encoding_matches_doc_words():
    g = gemm()
    w = words(g)
    assert w[0] == 0x01 | 1 << 8 | 0 << 16 | 3 << 24
    assert list(w[1:12]) == [0x1000, 512, 3, 128, 10, 0x2000, 0x3000, 0x5000, 0x4004, 44, 0x6000]
    assert not w[12:].any()
    assert isa.decode(g.encode()) == g


def test_vec_encoding_matches_doc_words_and_negative_strides():
    v = Vec(subop=VecSubop.FDOT, n=(64, 7, 2, 1), a=Operand(0x100, 4, 256, 0, 0),
            b=Operand(0x800, 2, -128, 4096, 0), d=Operand(0x900, 0, 4, 28, 0), flags=VecFlag.B_FP16)
    w = words(v)
    assert w[0] == 0x02 | 5 << 16 | 1 << 24
    assert list(w[1:5]) == [64, 7, 2, 1]
    assert list(w[5:10]) == [0x100, 4, 256, 0, 0]
    assert list(w[10:15]) == [0x800, 2, (-128) & 0xFFFFFFFF, 4096, 0]
    assert list(w[20:25]) == [0x900, 0, 4, 28, 0]
    d = isa.decode(v.encode())
    assert d == v and d.b.s1 == -128
    assert isa.decode(Halt(sync=True).encode()) == Halt(sync=True)
    prog = [gemm(), v, Halt()]
    assert isa.decode_program(isa.encode_program(prog)) == prog


@pytest.mark.parametrize("op", [0x03, 0x7F, 0xFF])
def test_unknown_opcode_is_error_1(op):
    raw = bytearray(Halt().encode())
    raw[0] = op
    with pytest.raises(IsaError, match="unknown opcode") as e:
        isa.decode(bytes(raw))
    assert e.value.code == ErrorCode.OPCODE


def test_decode_rejects_wrong_length():
    with pytest.raises(ValueError, match="128 bytes"):
        isa.decode(b"\0" * 64)


@pytest.mark.parametrize("kw, msg", [
    (dict(m=0), "M must be >= 1"), (dict(n=0), "N must be >= 1"), (dict(k=0), "K must be >= 1"),
    (dict(k=192), "multiple of 128"), (dict(act_addr=0x1004), "act_addr"),
    (dict(act_stride=520), "act_stride"), (dict(w_addr=8), "w_addr"), (dict(ws_addr=2), "ws_addr"),
    (dict(bias_addr=4), "bias_addr"), (dict(signs_addr=8), "signs_addr"),
    (dict(out_addr=2), "out_addr"), (dict(out_stride=6), "out_stride"),
    (dict(subop=2), "sub-op"), (dict(flags=4), "flag"),
])
def test_gemm_invalid_fields_are_error_5(kw, msg):
    with pytest.raises(IsaError, match=msg) as e:
        gemm(**kw).check()
    assert e.value.code == ErrorCode.FIELD


def test_gemm_unused_addresses_are_not_checked():
    gemm(flags=0, bias_addr=3, signs_addr=5).check()


@pytest.mark.parametrize("kw, msg", [
    (dict(n=(0, 1, 1, 1)), "loop counts"), (dict(n=(8, 1, 0, 1)), "loop counts"),
    (dict(subop=8), "unknown sub-op"), (dict(flags=8), "flag bits"),
    (dict(subop=VecSubop.KVQ6, n=(64, 1, 1, 1)), "no KV6 hardware"),
    (dict(subop=VecSubop.FDOT, flags=VecFlag.B_KV6), "no KV6 hardware"),
    (dict(a=Operand(0x102, 4)), "operand A"), (dict(d=Operand(0x100, 6)), "operand D"),
    (dict(flags=VecFlag.D_FP16), "CVT16"), (dict(flags=VecFlag.B_FP16), "only defined for FDOT"),
])
def test_vec_invalid_fields_are_error_5(kw, msg):
    base = dict(subop=VecSubop.RESID, n=(8, 1, 1, 1), a=Operand(0x100, 4), b=Operand(0x200, 4),
                c=Operand(0x300, 4), d=Operand(0x400, 4))
    base.update(kw)
    with pytest.raises(IsaError, match=msg) as e:
        Vec(**base).check()
    assert e.value.code == ErrorCode.FIELD


def test_vec_row_limits_and_fp16_alignment():
    with pytest.raises(IsaError, match="n0 must be 64"):
        Vec(subop=VecSubop.L2NT, n=(32, 1, 1, 1)).check()
    with pytest.raises(IsaError, match="exceeds"):
        Vec(subop=VecSubop.SOFTMAX, n=(33, 1, 1, 1)).check(max_kv=32)
    Vec(subop=VecSubop.SOFTMAX, n=(32, 1, 1, 1)).check(max_kv=32)
    ln = dict(subop=VecSubop.LNMOD, a=Operand(0, 4), b=Operand(0, 4), c=Operand(0, 4), d=Operand(0, 4))
    Vec(n=(96, 1, 1, 1), **ln).check()
    Vec(n=(128, 1, 1, 1), **ln).check(ln_len=128)
    with pytest.raises(IsaError, match="engine's C=128"):
        Vec(n=(96, 1, 1, 1), **ln).check(ln_len=128)
    with pytest.raises(IsaError, match="exceeds"):
        Vec(n=(isa.MAX_LN_LEN + 1, 1, 1, 1), **ln).check()
    # FP16 destination: 2-byte alignment suffices; unused operands are ignored
    Vec(subop=VecSubop.CVT16, n=(8, 1, 1, 1), a=Operand(0x100, 4), b=Operand(3, 3),
        d=Operand(0x102, 2), flags=VecFlag.D_FP16).check()
    # FDOT ignores D's s0
    Vec(subop=VecSubop.FDOT, n=(8, 2, 1, 1), a=Operand(0, 4), b=Operand(0, 4),
        d=Operand(0x100, 3, 4)).check()


def test_kv6_encoding_and_fields():
    """KVQ6 (sub-op 7) and FDOT with B_KV6 (flag bit 2): words, element sizes,
    operands, alignment of the 1-byte codes and FP16 scales, KV6-build-only."""
    q = Vec(subop=VecSubop.KVQ6, n=(64, 3, 2, 1), a=Operand(0x100, 4, 256, 768),
            c=Operand(0x802, 0, 40, 2), d=Operand(0x1001, 1, 1280, 64))
    w = words(q)
    assert w[0] == 0x02 | 7 << 16 and list(w[15:20]) == [0x802, 0, 40, 2, 0]
    assert isa.decode(q.encode()) == q
    assert q.operands == ("a", "c", "d") and q.writes == ("c", "d")
    assert (q.elem_bytes("a"), q.elem_bytes("c"), q.elem_bytes("d")) == (4, 2, 1)
    assert q.row_const("c") and not q.row_const("d")
    q.check(kv6=True)                              # odd code address: bytes need no alignment
    assert footprints.vec_addresses(q, "c").shape == (1, 2, 3, 1)
    f = Vec(subop=VecSubop.FDOT, n=(64, 5, 1, 1), flags=VecFlag.B_KV6, a=Operand(0x100, 4),
            b=Operand(0x1003, 1, 64), c=Operand(0x2002, 0, 2), d=Operand(0x3000, 0, 4))
    assert words(f)[0] == 0x02 | 5 << 16 | 4 << 24 and isa.decode(f.encode()) == f
    assert f.operands == ("a", "b", "c", "d") and f.writes == ("d",)
    assert (f.elem_bytes("b"), f.elem_bytes("c")) == (1, 2)
    f.check(kv6=True)
    for v, msg in [
            (replace(q, n=(32, 1, 1, 1)), "n0 must be 64"),
            (replace(q, c=Operand(0x801, 0, 2)), "operand C"),
            (replace(q, c=Operand(0x800, 3, 2)), None),                  # C's s0 is unused
            (replace(f, c=Operand(0x2000, 0, 3)), "operand C"),
            (replace(f, c=Operand(0x2000, 1, 2)), "operand C"),          # FDOT's C uses s0
            (replace(f, flags=VecFlag.B_KV6 | VecFlag.B_FP16), "exclusive"),
            (replace(q, flags=VecFlag.B_KV6), "only defined for FDOT"),
            (replace(q, flags=VecFlag.D_FP16), "CVT16")]:
        if msg is None:
            v.check(kv6=True)
            continue
        with pytest.raises(IsaError, match=msg) as e:
            v.check(kv6=True)
        assert e.value.code == ErrorCode.FIELD
    fp = footprints.footprint(q, tn=8, lanes=32, bits=4, group=128)
    assert fp.reads.tolist() == [[0x100, 0x100 + 4 * 64 * 3 * 2]]         # A only: C is written
    want_w = footprints.merge_intervals(*[np.array([[a, a + 1]]) for a in footprints.vec_addresses(q, "d").ravel()],
                                 *[np.array([[a, a + 2]]) for a in footprints.vec_addresses(q, "c").ravel()])
    assert fp.writes.tolist() == want_w.tolist()
    fpf = footprints.footprint(f, tn=8, lanes=32, bits=4, group=128)
    assert fpf.reads.tolist() == footprints.merge_intervals(
        np.array([[0x100, 0x200], [0x1003, 0x1003 + 5 * 64], [0x2002, 0x2002 + 5 * 2]])).tolist()


def test_field_ranges_rejected_at_construction():
    with pytest.raises(ValueError, match="unsigned 32-bit"):
        gemm(m=1 << 32)
    with pytest.raises(ValueError, match="signed 32-bit"):
        Operand(0, 1 << 31)
    with pytest.raises(ValueError, match="four loop counts"):
        Vec(subop=0, n=(1, 1, 1))


def test_operand_address_wraps_and_window():
    assert isa.operand_address(0x10, (4, -32, 0, 0), (3, 1, 0, 0)) == (0x10 + 12 - 32) & 0xFFFFFFFF
    assert isa.in_window(0x100, 4, 0x100, 0x10) and isa.in_window(0x10C, 4, 0x100, 0x10)
    assert not isa.in_window(0x10E, 4, 0x100, 0x10) and not isa.in_window(0xFC, 4, 0x100, 0x10)


def test_pack_gemm_weights_layout_by_hand():
    """tn=2, lanes=32, 4-bit: entry (nb, kb, t) is 16 bytes, lane j at bits 4j.."""
    n, k = 3, 128
    codes = np.zeros((n, k), dtype=np.uint8)
    codes[0, 0], codes[0, 1] = 0x3, 0xA          # feature 0, beat 0, lanes 0 and 1
    codes[1, 33] = 0x7                            # feature 1, beat 1, lane 1
    codes[2, 127] = 0xF                           # feature 2 (block 1), beat 3, lane 31
    scales = np.array([[0x3C00], [0x4000], [0x1234]], dtype=np.uint16)
    cb, sb = packing.pack_gemm_weights(codes, scales, tn=2, lanes=32, bits=4, group=128)
    assert len(cb) == 2 * 4 * 2 * 16 and len(sb) == 2 * 1 * 16
    entry = lambda nb, kb, t: cb[((nb * 4 + kb) * 2 + t) * 16:][:16]  # noqa: E731
    assert entry(0, 0, 0)[0] == 0xA3 and not any(entry(0, 0, 0)[1:])
    assert entry(0, 1, 1)[0] == 0x70
    assert entry(1, 3, 0)[15] == 0xF0
    assert not any(entry(1, 3, 1))                # padded feature 3: zero codes
    s = np.frombuffer(sb, dtype="<u2")
    assert list(s[:2]) == [0x3C00, 0x4000] and list(s[8:10]) == [0x1234, 0] and not s[2:8].any()


@pytest.mark.parametrize("bits, lanes, tn, group, n, k, seed", [
    (4, 32, 8, 128, 13, 256, 0), (6, 32, 8, 128, 9, 128, 1), (4, 16, 3, 32, 7, 384, 2),
    (8, 8, 5, 64, 11, 128, 3), (6, 64, 4, 128, 4, 256, 4),
])
def test_pack_unpack_round_trip(bits, lanes, tn, group, n, k, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, (n, k)).astype(np.uint8)
    scales = rng.integers(0, 1 << 16, (n, k // group)).astype(np.uint16)
    cb, sb = packing.pack_gemm_weights(codes, scales, tn=tn, lanes=lanes, bits=bits, group=group)
    assert len(cb) == packing.gemm_code_bytes(n, k, tn=tn, lanes=lanes, bits=bits) and len(cb) % 16 == 0
    assert len(sb) == packing.gemm_scale_bytes(n, k, tn=tn, group=group) and len(sb) % 16 == 0
    c2, s2 = packing.unpack_gemm_weights(cb, sb, n, k, tn=tn, lanes=lanes, bits=bits, group=group)
    np.testing.assert_array_equal(c2, codes)
    np.testing.assert_array_equal(s2, scales)


def test_pack_gemm_weights_validation():
    c = np.zeros((4, 128), np.uint8)
    s = np.zeros((4, 1), np.uint16)
    with pytest.raises(ValueError, match="multiple of 128"):
        packing.pack_gemm_weights(np.zeros((4, 96), np.uint8), s, tn=2, lanes=32, bits=4, group=32)
    with pytest.raises(ValueError, match="scales must be"):
        packing.pack_gemm_weights(c, np.zeros((4, 2), np.uint16), tn=2, lanes=32, bits=4, group=128)
    with pytest.raises(ValueError, match="fit in 4 bits"):
        packing.pack_gemm_weights(c + 16, s, tn=2, lanes=32, bits=4, group=128)
    with pytest.raises(ValueError, match="must divide"):
        packing.pack_gemm_weights(c, s, tn=2, lanes=48, bits=4, group=128)
    with pytest.raises(ValueError, match="expected"):
        packing.unpack_gemm_weights(b"\0" * 16, b"\0" * 16, 4, 128, tn=2, lanes=32, bits=4, group=128)


def test_pack_signs():
    pm = np.ones(128, dtype=np.int8)
    pm[[0, 9, 127]] = -1
    raw = packing.pack_signs(pm)
    assert len(raw) == 16 and raw[0] == 0x01 and raw[1] == 0x02 and raw[15] == 0x80
    np.testing.assert_array_equal(packing.unpack_signs(raw), (pm < 0).astype(np.uint8))
    assert packing.pack_sign_bits((pm < 0).astype(np.uint8)) == raw
    assert packing.pack_signs(np.ones(128)) == bytes(16)       # all +1: nothing negated
    with pytest.raises(ValueError, match="pack_sign_bits"):
        packing.pack_signs(np.zeros(128))
    with pytest.raises(ValueError, match="128"):
        packing.pack_signs(np.ones(64))


def test_footprint_vec_exact_bytes():
    v = Vec(subop=VecSubop.RESID, n=(2, 2, 1, 1), a=Operand(0x100, 4, 16), b=Operand(0x200, 0, 4),
            c=Operand(0x300, -4, 0), d=Operand(0x400, 8, 4))
    fp = footprints.footprint(v, tn=8, lanes=32, bits=4, group=128)
    assert fp.reads.tolist() == [[0x100, 0x108], [0x110, 0x118], [0x200, 0x208], [0x2FC, 0x304]]
    assert fp.writes.tolist() == [[0x400, 0x410]]
    f = footprints.footprint(Vec(subop=VecSubop.FDOT, n=(4, 3, 1, 1), a=Operand(0, 4), b=Operand(0x40, 2, 8),
                          d=Operand(0x80, 99, 4), flags=VecFlag.B_FP16), tn=8, lanes=32, bits=4, group=128)
    assert f.writes.tolist() == [[0x80, 0x8C]] and f.reads.tolist() == [[0, 0x10], [0x40, 0x58]]


def test_footprint_gemm_and_conflicts():
    kw = dict(tn=8, lanes=32, bits=4, group=128)
    g = gemm(m=2, k=128, n=10, act_stride=1024, flags=GemmFlag.BIAS)
    fp = footprints.footprint(g, **kw)
    code = packing.gemm_code_bytes(10, 128, tn=8, lanes=32, bits=4)
    assert [0x1000, 0x1200] in fp.reads.tolist() and [0x1400, 0x1600] in fp.reads.tolist()
    assert [0x2000, 0x2000 + code] in fp.reads.tolist() and [0x5000, 0x5000 + 64] in fp.reads.tolist()
    assert fp.writes.tolist() == [[0x4004, 0x4004 + 40], [0x4004 + 44, 0x4004 + 84]]
    reader = footprints.footprint(Vec(subop=VecSubop.GELU, n=(1, 1, 1, 1), a=Operand(0x4004 + 40, 4),
                               d=Operand(0x9000, 4)), **kw)
    assert not fp.conflicts(reader)                     # the 4-byte gap between output rows
    reader2 = footprints.footprint(Vec(subop=VecSubop.GELU, n=(1, 1, 1, 1), a=Operand(0x4004 + 44, 4),
                                d=Operand(0x9000, 4)), **kw)
    assert fp.conflicts(reader2) and reader2.conflicts(fp)


@pytest.mark.parametrize("seed", range(3))
def test_window_check_equals_footprint_bounds(seed):
    rng = np.random.default_rng(seed)
    kw = dict(tn=8, lanes=32, bits=4, group=128)
    for _ in range(200):
        if rng.random() < 0.5:
            ins = Vec(subop=int(rng.integers(0, 8)), n=tuple(int(v) for v in rng.integers(1, 5, 4)),
                      flags=int(rng.choice([0, VecFlag.B_KV6])),
                      **{o: Operand(int(rng.integers(0, 0x3000)) * 4, *(int(s) * 4 for s in rng.integers(-64, 64, 4)))
                         for o in "abcd"})
        else:
            ins = gemm(act_addr=int(rng.integers(0, 0x800)) * 16, w_addr=int(rng.integers(0, 0x800)) * 16,
                       out_addr=int(rng.integers(0, 0x3000)) * 4, m=int(rng.integers(1, 4)))
        want = footprints.footprint(ins, **kw).within(0x1000, 0x8000)
        assert footprints.accesses_in_window(ins, 0x1000, 0x8000, **kw) == want


@pytest.mark.parametrize("seed", range(3))
def test_footprint_intervals_equal_element_enumeration(seed):
    """The collapsed-loop interval computation equals merging every element's bytes."""
    rng = np.random.default_rng(seed)
    for _ in range(300):
        sub = int(rng.integers(0, 8))
        n = tuple(int(v) for v in rng.integers(1, 6, 4))
        ops = {o: Operand(0x10000 + int(rng.integers(0, 64)) * 4,
                          *(int(rng.choice([0, 1, 2, 4, 8, 16, -4, -12, 64])) * 4 for _ in range(4)))
               for o in "abcd"}
        flags = {VecSubop.CVT16: VecFlag.D_FP16,
                 VecSubop.FDOT: int(rng.choice([0, VecFlag.B_FP16, VecFlag.B_KV6]))}.get(sub, 0)
        v = Vec(subop=sub, n=n, **ops, flags=flags)
        fp = footprints.footprint(v, tn=8, lanes=32, bits=4, group=128)

        def elems(names):
            return footprints.merge_intervals(*[
                footprints.merge_intervals(*[np.array([[a, a + v.elem_bytes(o)]])
                                      for a in footprints.vec_addresses(v, o).ravel()]) for o in names])
        want_r = elems([o for o in v.operands if o not in v.writes])
        want_w = elems(v.writes)
        assert fp.reads.tolist() == want_r.tolist() and fp.writes.tolist() == want_w.tolist(), v
