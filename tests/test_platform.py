"""Platform descriptions: VCK190 budget figures, the generic target, registration."""
import dataclasses

import pytest

from fpqvar_hw.flow.platform import (PLATFORMS, VCK190, VERILOG, Platform, get_platform,
                                platform_names, register_platform)


def test_vck190_budget_matches_ds950():
    p = get_platform("vck190")
    assert p is VCK190
    assert (p.lut, p.ff, p.dsp, p.bram36, p.uram) == (899_840, 1_799_680, 1_968, 967, 463)
    assert p.dram_gbps == 25.6 and p.family == "versal" and "xcvc1902" in p.part
    assert p.budget == {"LUT": 899_840, "FF": 1_799_680, "DSP": 1_968, "BRAM36": 967,
                        "URAM": 463}


def test_dram_bytes_per_cycle():
    # 25.6 GB/s at 300 MHz = 85.33 bytes per cycle
    assert VCK190.dram_bytes_per_cycle == pytest.approx(25.6e9 / 300e6)


def test_verilog_platform_has_no_budget():
    p = get_platform("verilog")
    assert p is VERILOG and p.part is None
    assert all(v is None for v in p.budget.values())


def test_unknown_platform_lists_valid_names():
    with pytest.raises(ValueError, match="valid platforms: vck190, verilog"):
        get_platform("zcu999")


def test_register_a_board_in_a_few_lines():
    zcu102 = dataclasses.replace(
        VCK190, name="zcu102_test", description="ZCU102", part="xczu9eg-ffvb1156-2-e",
        family="ultrascale+", lut=274_080, ff=548_160, dsp=2_520, bram36=912, uram=0,
        dsp_name="DSP48E2", dram_gbps=19.2)
    try:
        register_platform(zcu102)
        assert "zcu102_test" in platform_names()
        assert get_platform("zcu102_test").budget["URAM"] == 0
        with pytest.raises(ValueError, match="already registered"):
            register_platform(dataclasses.replace(zcu102, lut=1))
    finally:
        PLATFORMS.pop("zcu102_test", None)


@pytest.mark.parametrize("change, msg", [
    ({"name": "VCK"}, "lower-case identifier"),
    ({"family": "spartan"}, "family"),
    ({"lut": -1}, "lut must be"),
    ({"dram_gbps": 0.0}, "dram_gbps must be > 0"),
    ({"axi_data_bits": 100}, "axi_data_bits"),
])
def test_platform_validation(change, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(VCK190, **change)


def test_as_dict_is_json_ready():
    import json
    d = VCK190.as_dict()
    assert json.loads(json.dumps(d))["io"] == list(VCK190.io)


def test_platform_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        VCK190.lut = 1  # type: ignore[misc]
    assert isinstance(VCK190, Platform)
