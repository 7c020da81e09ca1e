"""fpqvar_hw.flow.registry: pending units and variants are reported with their reason, never faked."""
from __future__ import annotations

import importlib.util

import pytest

from fpqvar_hw.config import get_preset
from fpqvar_hw.flow.registry import (TOP_INSTANCE, UNITS, TopShape, UnitSpec, Variant, resolve_units,
                                top_shape)


def _variants(preset: str) -> dict[str, Variant]:
    return {v.instance: v for r in resolve_units(get_preset(preset)) for v in r.variants}


def test_missing_module_unservable_unit_and_refusing_variant_are_pending():
    def refuse(mod, c):
        raise ValueError("format not implemented")

    def too_wide():
        raise ValueError("lanes too wide")
    specs = (UnitSpec("ghost", "fpqvar_hw.no_such_unit", "missing", lambda m, c: []),
             UnitSpec("picky", "fpqvar_hw.config", "cannot serve", refuse),
             UnitSpec("ok", "fpqvar_hw.config", "serves",
                      lambda m, c: [Variant("ok_unit", lambda: None, c.tm * c.tn),
                                    Variant("wide_unit", too_wide, 1, needs="a 4096-lane unit")]))
    res = {r.spec.name: r for r in resolve_units(get_preset("w4a4"), specs)}
    assert res["ghost"].pending == "fpqvar_hw.no_such_unit is not in the tree yet"
    assert "format not implemented" in res["picky"].pending and not res["picky"].variants
    ok = res["ok"]
    assert ok.pending is None and [v.instance for v in ok.ready] == ["ok_unit"]
    assert ok.ready[0].count == get_preset("w4a4").tm * get_preset("w4a4").tn
    assert ok.pending_variants == {"wide_unit": "a 4096-lane unit: ValueError: lanes too wide"}
    assert {u.name for u in UNITS} >= {"quantizer", "hadamard", "multiplier", "dot", "vector",
                                       "attention", "top"}


def test_w6a6_dfq6_quantizer_is_built_and_missing_fc2_arithmetic_is_pending():
    """dfq6 (W6A6 FC2 input): the quantizer RTL exists; the int6 x e2m3fn products and the
    dual-grid dot cell are pending with a reason exactly when the RTL lacks them."""
    from fpqvar_hw.units.multiplier import MulPair
    v = _variants("w6a6")
    q = v["quantizer_dfq6_g128_l32"]
    assert q.pending is None and q.factory().manifest()["config"]["format"] == "dfq6"
    mul = v["multiplier_int6_e2m3fn"]
    if ("int6", "e2m3fn") in {p.value for p in MulPair}:
        assert mul.pending is None
    else:
        assert "dfq6 negative half" in mul.pending and "MulPair" in mul.pending
    cell = v["dot_dfq6_e2m3fn_g128_l32"]
    if cell.pending is not None:
        assert "W6A6 FC2 cell" in cell.pending and "DFQ-FP4 only" in cell.pending
    # the array is counted once: the plain e2m3fn cell stands for it while dfq6 is pending
    counted = [x for x in v.values() if x.instance.startswith("dot_") and x.count]
    assert len(counted) == 1 and counted[0].count == get_preset("w6a6").tm * get_preset("w6a6").tn


def test_mxfp4_quantizer_has_e8m0_scales_and_the_dot_side_is_pending_until_it_does():
    import inspect

    from fpqvar_hw.units.dot import GroupDot
    v = _variants("mxfp4")
    q = v["quantizer_e2m1fn_g32_l32_e8m0"]
    assert q.pending is None
    assert q.factory().manifest()["formats"]["scales"] == ["e8m0"]
    dot = v["dot_e2m1fn_e2m1fn_g32_l32"]
    if "scale_format" in inspect.signature(GroupDot).parameters:
        assert dot.pending is None
    else:
        assert "e8m0" in dot.pending and "FP16 scale ports" in dot.pending


@pytest.mark.parametrize("preset", ["w4a4", "int4", "int8"])
def test_fp16_presets_have_no_pending_unit_variant(preset):
    """Every unit variant of these presets has RTL (the top is checked below)."""
    assert not [k for k, x in _variants(preset).items() if x.pending and k != TOP_INSTANCE]


def test_top_shape():
    assert top_shape("d16") == TopShape("d16", 1024, 680)
    assert top_shape("d36").C == 2304
    assert top_shape("digits") == TopShape("digits", 128, 30)     # 1 + 4 + 9 + 16 tokens
    with pytest.raises(ValueError, match="unknown model 'd99'"):
        top_shape("d99")


@pytest.mark.skipif(importlib.util.find_spec("fpqvar_hw.engines.top") is None,
                    reason="fpqvar_hw.engines.top not in the tree yet")
def test_top_adapter_builds_the_real_accelerator_for_the_model():
    """The registry constructs fpqvar_hw.engines.top's Accelerator for the preset and the model's
    width; a preset its engines cannot serve leaves the top pending with their reason."""
    from fpqvar_hw.engines import top as top_mod
    from fpqvar_hw.flow.vivado import check_top_ports
    shape = top_shape("d20")
    res = {r.spec.name: r for r in resolve_units(get_preset("w4a4"), shape=shape)}
    (v,) = res["top"].variants
    if v.pending is None:
        acc = v.factory()
        assert isinstance(acc, top_mod.Accelerator) and (acc.C, acc.max_kv) == (1280, 680)
        import build
        check_top_ports(build.top_ports(acc))        # the ports the Vivado IP maps
        arb = {x.instance for x in res["arbiters"].ready}
        assert arb == {f"read_arbiter_{len(acc.read_clients)}",
                       f"write_arbiter_{len(acc.write_clients)}"}
    int4_top = _variants("int4")[TOP_INSTANCE]
    if int4_top.pending is not None:
        assert "accelerator top for preset int4" in int4_top.pending


def test_w4a4_array_cell_is_the_matrix_engines_dual_mode_cell():
    """The counted cell is the one the MatrixEngine instantiates (plain e2m1fn + DFQ-FP4
    modes in one unit) when dot.py has it; the unused plain cell is then not emitted."""
    import inspect

    from fpqvar_hw.units.dot import GroupDot
    v = _variants("w4a4")
    counted = [x for x in v.values() if x.instance.startswith("dot_") and x.count]
    assert len(counted) == 1 and counted[0].count == 16 * 8
    if "dual" in inspect.signature(GroupDot).parameters:
        cell = counted[0]
        assert cell.instance == "dot_dual_dfq4_e2m1fn_g128_l32" and cell.params["dual"]
        dut = cell.factory()
        assert dut.dual and dut.dfq and dut.lanes == 32
        assert "dot_e2m1fn_e2m1fn_g128_l32" not in v
