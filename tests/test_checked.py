"""No component is built only to be refused or inspected (fpqvar_hw.checked).

Amaranth warns ``UnusedElaboratable`` when an elaboratable is garbage-collected without
having been elaborated.  A rejected configuration (parameters checked before the object
exists: ``Checked.check_params``) and the class-level facts (engine signatures, the top's
client lists, latencies, the registry's probe) must not leave such an object behind.

The warning is raised from ``__del__`` (where an error filter cannot fail a test), so
each check records the warnings around a ``gc.collect()``.  Amaranth only starts issuing
the warning once a first design was elaborated (``Fragment.get``); the fixture does that,
and :func:`test_recorder_sees_an_unused_component` shows the recorder is not blind.
"""
from __future__ import annotations

import gc
import importlib
import warnings
from contextlib import contextmanager

import pytest
from amaranth.hdl import Fragment, Module, UnusedElaboratable
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from fpqvar_hw import isa
from fpqvar_hw.checked import Checked, check, latency_of
from fpqvar_hw.config import PRESETS, get_preset
from fpqvar_hw.engines.matrix import MatrixEngine
from fpqvar_hw.engines.top import Accelerator
from fpqvar_hw.engines.vecengine import KV6Quantizer, VectorEngine
from fpqvar_hw.flow.registry import UNITS, Build, resolve_units
from fpqvar_hw.units.dot import GroupDot, GroupDotV2
from fpqvar_hw.units.fpu import FP16, FP32, AddPipe, FPOp, FPUnit, RoundPackPipe
from fpqvar_hw.units.vector import (Elementwise, FDot, Func, L2NormTemperature, LayerNormModulate,
                                    Residual, Softmax)


@pytest.fixture(autouse=True, scope="module")
def _warnings_on():
    Fragment.get(Module(), None)        # Amaranth warns about unused designs from now on


@contextmanager
def no_unused_design():
    gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
        gc.collect()
    unused = [str(w.message) for w in seen if issubclass(w.category, UnusedElaboratable)]
    assert not unused, "\n".join(unused)


class _Probe(Checked, wiring.Component):
    def __init__(self, *, width: int = 4):
        self.width = width
        super().__init__({"o": Out(width)})

    @classmethod
    def check_params(cls, *, width):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")

    def elaborate(self, platform):
        return Module()


def test_recorder_sees_an_unused_component():
    """A planted unused component is reported (the checks below are not vacuous)."""
    with pytest.raises(AssertionError, match="created but never used"):
        with no_unused_design():
            _Probe(width=3)


def test_checked_refuses_before_the_object_exists():
    with no_unused_design():
        with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
            _Probe(width=0)
        with pytest.raises(TypeError, match="_Probe: got an unexpected keyword argument 'depth'"):
            _Probe(depth=3)
        check(_Probe, width=2)          # accepted: nothing built, nothing raised
    p = _Probe()                         # defaults filled in for check_params
    Fragment.get(p, None)
    assert p.width == 4


@pytest.mark.parametrize("build,match", [
    (lambda: MatrixEngine(get_preset("w4a4").replace(tm=1, tn=1), max_k=384), "max_k must be a power of two"),
    (lambda: MatrixEngine(get_preset("int4")), "MatrixEngine implements the formats"),
    (lambda: VectorEngine(C=100), "multiple of P"),
    (lambda: VectorEngine(rd_depth=8), "rd_depth"),
    (lambda: VectorEngine(sm=-1), "sm must be a non-negative integer"),
    (lambda: VectorEngine(max_kv=5000, sm=2), "max_e must be below 4096"),
    # the matrix engine would be built first inside the top: refused before either exists
    (lambda: Accelerator(get_preset("w4a4"), C=1024, max_kv=0), "max_kv must be a positive integer"),
    (lambda: Accelerator(get_preset("mxfp4"), C=1024, max_kv=680), "MatrixEngine implements the formats"),
    (lambda: Accelerator(get_preset("w4a4"), C=100, max_kv=64), "C must be a positive multiple of 128"),
    # the units
    (lambda: FPUnit(FPOp.CONVERT), "FPOp.CONVERT needs dst="),
    (lambda: FPUnit(FPOp.ADD, lanes=0), "lanes must be a positive integer"),
    (lambda: RoundPackPipe(FP32, sig_bits=1, exp_bits=10), "sig_bits must be >= 2"),
    (lambda: Elementwise(Func.GELU, lanes=0), "lanes must be a positive integer"),
    (lambda: Elementwise(Func.EXP, dst="fp8"), "dst must be FP16 or FP32"),
    (lambda: Softmax(length=0), "length must be a positive integer"),
    (lambda: LayerNormModulate(length=12, P=8), "P \\(8\\) must divide length"),
    (lambda: L2NormTemperature(head_dim=64, P=6), "P must be a power of two"),
    (lambda: FDot(P=2), "P must be a power of two"),
    (lambda: GroupDot(lanes=3), "lanes must divide group_size 128"),
    (lambda: GroupDot(dual=True), "dual=True is a DFQ unit"),
    (lambda: GroupDotV2(interleave=3), "interleave must be an integer >= "),
    (lambda: GroupDotV2(group_size=1 << 22), "group sum reach 2\\^24"),
])
def test_rejected_configuration_leaves_no_unused_design(build, match):
    with no_unused_design():
        with pytest.raises(ValueError, match=match):
            build()


@pytest.mark.parametrize("build,match", [
    (lambda: FPUnit("add"), "op must be an FPOp"),
    (lambda: AddPipe("fp32"), "fmt must be a FloatFormat"),
    (lambda: Elementwise("gelu"), "func must be a Func"),
    (lambda: GroupDot(pair="e2m1"), "pair must be a MulPair"),
])
def test_rejected_type_leaves_no_unused_design(build, match):
    with no_unused_design():
        with pytest.raises(TypeError, match=match):
            build()


def test_signatures_and_client_lists_are_class_facts():
    with no_unused_design():
        assert set(MatrixEngine.engine_signature().members) >= {"cmd", "rd_act", "wr"}
        assert set(VectorEngine.engine_signature().members) >= {"cmd", "rd_a", "wr"}
        rd, wr = Accelerator.read_client_ports(), Accelerator.write_client_ports()
    assert rd == [("controller", "fetch"), ("matrix", "rd_act"), ("matrix", "rd_w"),
                  ("matrix", "rd_ws"), ("matrix", "rd_bias"), ("vector", "rd_a"), ("vector", "rd_b"),
                  ("vector", "rd_c")]
    assert wr == [("matrix", "wr"), ("vector", "wr")]


def test_latency_queries_build_nothing():
    with no_unused_design():
        lat = VectorEngine.row_latencies(C=64, max_kv=32, P=8, kv6=True)
        cell = MatrixEngine.cell_latency(16)
    assert lat[isa.VecSubop.KVQ6] == KV6Quantizer.latency_for()
    assert set(lat) == set(isa.VecSubop) and cell > 0


def test_latency_of_needs_latency_for():
    """A class that publishes no ``latency_for`` is refused, not built."""
    with no_unused_design():
        with pytest.raises(TypeError, match="_Probe publishes no latency_for"):
            latency_of(_Probe, width=3)
        with pytest.raises(ValueError, match="sig_bits must be >= 2"):   # checked first
            latency_of(RoundPackPipe, FP32, sig_bits=1, exp_bits=10)
        assert latency_of(Residual) == 8 + 7          # MulPipe, then AddPipe
        assert latency_of(Softmax, length=16) == 1


#: Elementwise latencies (FP32 -> FP32) as the pre-``latency_for`` code computed them (a
#: scratch Module scheduled by a dry Dataflow, 2026-12-04); an FP16 end adds a convert
#: front end register and a RoundPackPipe (5 cycles) each; an FP16 result replaces the
#: FP32 result's canonical-NaN register (1 cycle) with the RoundPackPipe
_ELEMENTWISE_FP32 = {Func.EXP: 157, Func.RECIPROCAL: 68, Func.RSQRT: 70, Func.GELU: 278}


@pytest.mark.parametrize("func", list(Func))
def test_elementwise_latency_for(func):
    """The dry schedule (no Module) gives every Func x src x dst the latency the unit
    had before; ``elaborate`` asserts the built schedule equals it."""
    with no_unused_design():
        for src in (FP32, FP16):
            for dst in (FP32, FP16):
                want = _ELEMENTWISE_FP32[func] + 5 * (src is FP16) + 4 * (dst is FP16)
                assert Elementwise.latency_for(func=func, src=src, dst=dst) == want
                assert latency_of(Elementwise, func, lanes=4, src=src, dst=dst) == want
    if func is Func.RECIPROCAL:   # the cheapest to elaborate: elaborate's schedule check runs
        u = Elementwise(func, lanes=2, src=FP16, dst=FP16)
        assert u.latency == _ELEMENTWISE_FP32[func] + 9
        Fragment.get(u, None)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_registry_probe_builds_nothing(preset):
    """Every factory (dot2 cells included) is a Build, probed by its checks."""
    with no_unused_design():
        resolved = resolve_units(get_preset(preset), UNITS)
    assert all(isinstance(v.factory, Build) for r in resolved for v in r.variants)
    assert any(v.instance.startswith("dot2_") for r in resolved for v in r.variants)
