"""fpqvar_hw.registry: pending units and variants are reported with their reason, never faked."""
from __future__ import annotations

import pytest

from fpqvar_hw.config import get_preset
from fpqvar_hw.registry import UNITS, UnitSpec, Variant, resolve_units


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
    from fpqvar_hw.multiplier import MulPair
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

    from fpqvar_hw.dot import GroupDot
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
def test_fp16_presets_have_no_pending_variant(preset):
    assert not [k for k, x in _variants(preset).items() if x.pending]
