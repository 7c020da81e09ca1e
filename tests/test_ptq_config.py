"""QuantConfig presets: names from the paper, validation messages, round trip."""
import dataclasses

import pytest

from fpqvar_quant.ptq.config import PRESETS, QuantConfig, get_preset

PAPER_PRESETS = ["fp16", "int4-rtn", "int6-rtn", "fp4-baseline", "fp4-mixedformat", "fp4-fpqvar",
                 "fp4-fpqvar-kv6", "fp6-baseline", "fp6-fpqvar", "fp6-fpqvar-kv6", "mxfp4"]


def test_paper_presets_exist():
    for name in PAPER_PRESETS + ["fp4-afpq", "fp4-dfq", "fp4-dfq-ght", "fp6-dfq", "fp6-dfq-ght"]:
        assert get_preset(name).name == name


def test_preset_contents():
    fp4 = get_preset("fp4-fpqvar")
    assert (fp4.w_fmt, fp4.a_fmt, fp4.dfq, fp4.ght, fp4.galt, fp4.kv_fmt) == \
        ("e2m1fn", "e2m1fn", "fp4", True, True, None)
    assert (fp4.w_granularity, fp4.w_group_size, fp4.a_granularity, fp4.a_group_size) == \
        ("group", 128, "group", 128)
    assert (fp4.galt_epochs, fp4.galt_lr, fp4.ght_seed) == (50, 0.01, 42)
    kv = get_preset("fp6-fpqvar-kv6")
    assert (kv.w_fmt, kv.w_granularity, kv.a_granularity, kv.dfq, kv.kv_fmt, kv.kv_group_size) == \
        ("e2m3fn", "channel", "token", "fp6", "e2m3fn", 64)
    mx = get_preset("mxfp4")
    assert (mx.w_fmt, mx.scale_format, mx.w_group_size, mx.a_group_size) == ("e2m1fn", "e8m0", 32, 32)
    assert not get_preset("fp16").quantizes_linears
    assert get_preset("fp4-mixedformat").mixed_candidates == ("e1m2fn", "e2m1fn", "e3m0fn")
    # the ablation ladder differs in exactly one toggle per step
    ladder = ["fp4-baseline", "fp4-dfq", "fp4-dfq-ght", "fp4-fpqvar", "fp4-fpqvar-kv6"]
    for a, b in zip(ladder, ladder[1:]):
        da, db = dataclasses.asdict(get_preset(a)), dataclasses.asdict(get_preset(b))
        changed = {k for k in da if da[k] != db[k]} - {"name"}
        assert len(changed) == 1, (a, b, changed)


def test_frozen_and_overrides():
    cfg = get_preset("fp4-fpqvar", galt_epochs=3)
    assert cfg.galt_epochs == 3 and PRESETS["fp4-fpqvar"].galt_epochs == 50
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.galt_epochs = 5
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs, msg", [
    ({"w_fmt": "e9m9"}, "e9m9"),
    ({"w_fmt": "e8m0fnu"}, "scale-only"),
    ({"a_granularity": "channel", "a_fmt": "e2m1fn"}, "a_granularity"),
    ({"scale_format": "bf16"}, "scale_format"),
    ({"dfq": "fp4"}, "needs quantized activations"),
    ({"w_fmt": "e2m1fn", "w_group_size": 0}, "positive int"),
    ({"ght": True, "ght_group": 96}, "power of two"),
    ({"tie": "up"}, "tie must be"),
    ({"mixedformat": True}, "mixedformat"),
])
def test_validation_messages(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        QuantConfig(**kwargs)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="fp4-fpqvar"):
        get_preset("fp3")
    with pytest.raises(ValueError, match="unknown QuantConfig field"):
        get_preset("fp4-baseline", galt_epoch=2)


def test_specs_follow_config():
    from fpqvar_quant.ptq.qlinear import act_spec, weight_spec
    cfg = get_preset("fp6-baseline", tie="reference")
    w, a = weight_spec(cfg, "e2m3fn"), act_spec(cfg, "e2m3fn")
    assert (w.granularity.value, a.granularity.value, w.tie, a.tie) == \
        ("channel", "token", "reference", "reference")
    m = get_preset("mxfp4")
    assert (weight_spec(m, "e2m1fn").group_size, act_spec(m, "e2m1fn").scale_format) == (32, "e8m0")
