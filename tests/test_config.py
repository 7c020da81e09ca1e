"""AcceleratorConfig presets and --param overrides."""
import dataclasses

import pytest

from fpqvar_hw.config import (PRESETS, AcceleratorConfig, ElementFormat, Rotation, ScaleFormat,
                              apply_overrides, get_preset, parse_param, preset_names)


def test_preset_names():
    assert preset_names() == ("w4a4", "w6a6", "int4", "int8", "mxfp4")


def test_w4a4_is_fpqvar_default():
    c = get_preset("w4a4")
    assert {c.act_format(l) for l in ("qkv", "proj", "fc1")} == {ElementFormat.E2M1}
    assert c.fc2_act is ElementFormat.DFQ4 and c.fc2_act.registry_names == ("e1m2fn", "e2m1fn")
    assert all(c.weight_format(l) is ElementFormat.E2M1 for l in ("qkv", "proj", "fc1", "fc2"))
    assert c.rotation is Rotation.GHT and c.group_size == 128
    assert c.scale_format is ScaleFormat.FP16 and not c.is_integer


def test_integer_baselines_litevar_scope():
    c4 = get_preset("int4")
    assert c4.is_integer and c4.fc2_act is ElementFormat.INT8 and c4.qkv_act is ElementFormat.INT4
    assert get_preset("int8").is_integer


def test_mxfp4_and_w6a6():
    mx = get_preset("mxfp4")
    assert mx.group_size == 32 and mx.scale_format is ScaleFormat.E8M0
    w6 = get_preset("w6a6")
    assert w6.fc2_act is ElementFormat.DFQ6 and w6.qkv_weight.bits == 6


def test_unknown_preset():
    with pytest.raises(ValueError, match="valid presets: w4a4"):
        get_preset("w3a3")


def test_overrides_parse_each_type():
    c = apply_overrides(get_preset("w4a4"), ["tm=8", "fc2_act=e2m1fn", "cfg=false",
                                             "dram_efficiency=0.5", "clock_mhz=250",
                                             "rotation=none", "batch=0x4"])
    assert (c.tm, c.fc2_act, c.cfg, c.dram_efficiency, c.clock_mhz, c.rotation, c.batch) == \
        (8, ElementFormat.E2M1, False, 0.5, 250.0, Rotation.NONE, 4)
    assert apply_overrides(c, ["clock_mhz=none"]).clock_mhz is None
    # the preset object itself is untouched (frozen)
    assert get_preset("w4a4").cfg is True and get_preset("w4a4").batch == 1


@pytest.mark.parametrize("param, msg", [
    ("tm", "expects key=value"),
    ("=3", "expects key=value"),
    ("bogus=1", "unknown parameter 'bogus'; valid parameters: qkv_act"),
    ("preset=int4", "use --preset"),
    ("tm=eight", "tm must be an integer"),
    ("tm=0", "tm must be a positive integer"),
    ("cfg=maybe", "cfg is a bool"),
    ("qkv_act=e9m9", "qkv_act must be one of e2m1fn"),
    ("qkv_weight=dfq4", "dual formats"),
    ("qkv_act=dfq4", "FC2 input"),
    ("group_size=96", "group_size must divide 1024"),
    ("lanes=48", "lanes must divide group_size=128"),
    ("dram_efficiency=1.5", "dram_efficiency must be in"),
    ("clock_mhz=5000", "clock_mhz must be between"),
    ("scale_format=e8m0", "cannot be combined with a DFQ"),
    ("group_size=256", "rotation=ght rotates 128-groups"),
])
def test_invalid_overrides(param, msg):
    with pytest.raises(ValueError, match=msg):
        apply_overrides(get_preset("w4a4"), [param])


def test_duplicate_override():
    with pytest.raises(ValueError, match="given twice"):
        apply_overrides(get_preset("w4a4"), ["tm=2", "tm=4"])


def test_parse_param_strips():
    assert parse_param(" tm = 8 ") == ("tm", "8")


def test_as_dict_round_trips_through_overrides():
    c = get_preset("int4")
    d = c.as_dict()
    d.pop("preset")
    again = apply_overrides(get_preset("w4a4"), {k: str(v) for k, v in d.items()})
    assert dataclasses.replace(again, preset="int4") == c


def test_every_field_can_be_overridden_with_its_own_value():
    for name, cfg in PRESETS.items():
        for f in dataclasses.fields(AcceleratorConfig):
            if f.name == "preset":
                continue
            v = getattr(cfg, f.name)
            text = "none" if v is None else str(v)
            assert getattr(apply_overrides(cfg, [f"{f.name}={text}"]), f.name) == v, (name, f.name)
