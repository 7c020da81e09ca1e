"""The one mapping from PTQ presets to accelerator configurations
(``fpqvar_hw.config.PTQ_TO_ACCELERATOR``), checked field by field against both preset
tables: an entry must describe exactly the quantization its PTQ preset performs, and a
PTQ preset left out must really have no accelerator preset computing it."""
from __future__ import annotations

import pytest

from fpqvar_hw.config import (LAYERS, PRESETS, PTQ_TO_ACCELERATOR, Rotation, accelerator_config,
                              get_preset)
from fpqvar_quant.ptq import config as ptq


def mismatches(q: ptq.QuantConfig, hw) -> list[str]:
    """What the accelerator config ``hw`` computes differently from the PTQ config ``q``."""
    out = []
    if q.w_fmt is None or q.a_fmt is None:
        return ["nothing quantized"]
    if q.mixedformat:
        out.append("per-layer formats are chosen by calibration")
    for layer in LAYERS:
        if hw.weight_format(layer).value != q.w_fmt:
            out.append(f"{layer} weights {hw.weight_format(layer).value} != {q.w_fmt}")
        want_a = q.a_fmt
        if layer == "fc2" and q.dfq is not None:
            want_a = {"fp4": "dfq4", "fp6": "dfq6"}.get(q.dfq, f"dfq-{q.dfq}")
        if hw.act_format(layer).value != want_a:
            out.append(f"{layer} activations {hw.act_format(layer).value} != {want_a}")
    for side in ("w", "a"):
        gran, size = getattr(q, f"{side}_granularity"), getattr(q, f"{side}_group_size")
        if gran != "group" or size != hw.group_size:
            out.append(f"{side} scales per {gran} {size if gran == 'group' else ''} != group "
                       f"{hw.group_size}")
    if q.scale_format != hw.scale_format.value:
        out.append(f"scales {hw.scale_format.value} != {q.scale_format}")
    if q.ght != (hw.rotation is Rotation.GHT) or (q.ght and q.ght_group != 128):
        out.append(f"rotation {hw.rotation.value} vs ght={q.ght}")
    kv = (q.kv_fmt, q.kv_group_size, q.kv_scale_format) if q.kv_fmt else None
    if kv not in ((None if hw.kv_format.value == "fp16" else ("e2m3fn", 64, "fp16")),):
        out.append(f"KV cache {hw.kv_format.value} vs {kv}")
    return out


@pytest.mark.parametrize("name", sorted(PTQ_TO_ACCELERATOR))
def test_every_entry_computes_its_ptq_preset(name):
    assert mismatches(ptq.get_preset(name), accelerator_config(name)) == []


@pytest.mark.parametrize("name", sorted(set(ptq.preset_names()) - set(PTQ_TO_ACCELERATOR)))
def test_presets_left_out_have_no_accelerator(name):
    """No accelerator preset (as it stands) computes a PTQ preset the table leaves out."""
    q = ptq.get_preset(name)
    assert all(mismatches(q, cfg) for cfg in PRESETS.values()), name


def test_overrides_and_errors():
    cfg = accelerator_config("fp4-fpqvar-kv6", tm=2, tn=2)
    assert (cfg.preset, cfg.kv_format.value, cfg.tm, cfg.tn) == ("w4a4", "e2m3fn", 2, 2)
    assert accelerator_config("fp4-fpqvar") == get_preset("w4a4")
    with pytest.raises(ValueError, match="no accelerator computes PTQ preset 'fp6-fpqvar'"):
        accelerator_config("fp6-fpqvar")


def test_mismatches_is_not_vacuous():
    q = ptq.get_preset("fp4-fpqvar")
    assert mismatches(q, get_preset("w4a4")) == []
    assert any("fc2 activations" in m for m in mismatches(q, get_preset("mxfp4")))
    assert any("KV cache" in m for m in mismatches(ptq.get_preset("fp4-fpqvar-kv6"), get_preset("w4a4")))
