"""Co-simulation of the group dot-product unit (fpqvar_hw.units.dot) on the emitted
Verilog against the golden model, under random input gaps and output backpressure.

Default tier: a small e2m1 and a DFQ run.  Slow tier (``--run-slow``): >= 10^4
random seeded groups over e2m1 / DFQ / e3m2 x e2m3 units (16 lanes x 8 beats per
128-group) plus one full 128-lane unit; the dot cell v2 (``GroupDotV2``) as
full 128-lane DFQ and e2m1 cells and a 16-lane int8 cell, with interleaved outputs
of different lengths.  The other pairs (e2m3, int4, int8) and
variants run in the Amaranth simulator (tests/test_hw_dot.py); every verilator
build costs about a minute, which is what limits the number of configurations here.
"""
from __future__ import annotations


import numpy as np
import pytest

from fpqvar_hw.units.dot import GroupDot, GroupDotV2
from fpqvar_hw.units.multiplier import MulPair, MulVariant
from fpqvar_quant.golden.dot import DFQ
from sim.runner import BUILD_ROOT, run_cocotb
from tests.dot_vectors import expected, make_vectors, pack_beats

# (pair, dfq, variant, lanes, n_dots, groups_per_dot, seed, slow)
CASES = [
    (MulPair.E2M1_E2M1, False, MulVariant.LUT, 16, 40, 4, 101, False),
    (MulPair.E2M1_E2M1, True, MulVariant.LUT, 16, 40, 4, 102, False),
    # slow tier: 4800 + 3000 + 1000 + 1000 (+ 320 above) = 10,120 groups; the
    # builds of the first two are shared with the default tier
    (MulPair.E2M1_E2M1, False, MulVariant.LUT, 16, 1200, 4, 201, True),
    (MulPair.E2M1_E2M1, True, MulVariant.LUT, 16, 1000, 3, 202, True),
    (MulPair.E3M2_E2M3, False, MulVariant.LUT, 16, 500, 2, 204, True),
    (MulPair.E2M1_E2M1, False, MulVariant.LUT, 128, 500, 2, 207, True),
]


@pytest.mark.parametrize(
    "pair,dfq,variant,lanes,n_dots,groups,seed",
    [pytest.param(*c[:7], marks=(pytest.mark.slow,) if c[7] else ()) for c in CASES],
    ids=lambda v: getattr(v, "name", str(v)))
def test_dot_cosim(pair, dfq, variant, lanes, n_dots, groups, seed):
    G = 128
    dut = GroupDot(pair=pair, dfq=dfq, variant=variant, group_size=G, lanes=lanes)
    vec = make_vectors(DFQ if dfq else pair.value[0], pair.value[1], n_dots=n_dots,
                       groups_per_dot=groups, group_size=G, seed=seed)
    name = f"dot-{'dfq' if dfq else pair.name.lower()}-{variant.value}-l{lanes}"
    data = BUILD_ROOT / "vectors" / f"{name}-s{seed}-n{n_dots}x{groups}"
    data.mkdir(parents=True, exist_ok=True)
    (data / "beats.hex").write_text(
        "\n".join(f"{b:x}" for b in pack_beats(dut.beat_layout, vec, lanes, G)) + "\n")
    np.savez(data / "vectors.npz", expected=expected(vec, G), s_a=vec.s_a, s_w=vec.s_w)
    run_cocotb(dut, name=name, test_module="sim.tb_dot",
               params={"beats": str(data / "beats.hex"), "vectors": str(data / "vectors.npz"),
                       "seed": seed, "idle": 0.2, "backpressure": 0.3})


# Dot cell v2 (GroupDotV2): one 128-group per beat, interleaved slots of
# different dot-product lengths (tests/test_hw_dot.py's slot_vectors).
# (pair, dfq, variant, group_size, interleave beyond the loop length, seed); slow tier,
# one Verilator build each: the full 128-lane DFQ and e2m1 cells and a small int8 baseline cell
V2_CASES = [
    (MulPair.E2M1_E2M1, True, MulVariant.LUT, 128, 1, 301),
    (MulPair.INT8_INT8, False, MulVariant.DSP, 16, 0, 302),
    (MulPair.E2M1_E2M1, False, MulVariant.LUT, 128, 0, 303),
]


@pytest.mark.slow
@pytest.mark.parametrize("pair,dfq,variant,G,extra,seed", V2_CASES,
                         ids=lambda v: getattr(v, "name", str(v)))
def test_dot_v2_cosim(pair, dfq, variant, G, extra, seed):
    from tests.test_hw_dot import interleaved, slot_vectors
    D = GroupDotV2.loop_length() + extra
    dut = GroupDotV2(pair=pair, dfq=dfq, variant=variant, group_size=G, interleave=D)
    slots = slot_vectors(DFQ if dfq else pair.value[0], pair.value[1], G, D, seed)
    beats, exp = interleaved(dut.beat_layout, G, slots)
    name = f"dot2-{'dfq' if dfq else pair.name.lower()}-{variant.value}-g{G}-d{D}"
    data = BUILD_ROOT / "vectors" / f"{name}-s{seed}"
    data.mkdir(parents=True, exist_ok=True)
    (data / "beats.hex").write_text("\n".join(f"{b:x}" for b in beats) + "\n")
    np.savez(data / "vectors.npz", expected=np.array(exp, dtype=np.uint32))
    run_cocotb(dut, name=name, test_module="sim.tb_dot",
               params={"beats": str(data / "beats.hex"), "vectors": str(data / "vectors.npz"),
                       "seed": seed, "idle": 0.2, "backpressure": 0.3})
