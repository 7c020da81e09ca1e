"""Target platform descriptions for ``build.py``.

Amaranth 0.5's ``XilinxPlatform`` does not recognise Versal parts (it files
``xcvc1902`` as an ISE "virtex") and amaranth-boards has no VCK190, so the
project keeps its own, deliberately small description: what the build needs to
size the accelerator (programmable-logic budget), to predict throughput (clock,
DRAM bandwidth) and to write vendor collateral (part number, I/O).  Nothing here
drives a vendor tool; :mod:`fpqvar_hw.flow.vivado` only *generates* Tcl/XDC.

Adding a board is one :class:`Platform` literal plus :func:`register_platform`
(see ``docs/build.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..config import SMALL_ARRAYS

__all__ = ["Platform", "PLATFORMS", "VCK190", "VERILOG", "ULX3S", "get_platform",
           "register_platform", "platform_names"]


@dataclass(frozen=True)
class Platform:
    """One build target.

    Attributes
    ----------
    name: CLI name (``--platform``), lower case.
    description: one line for ``--help`` and the reports.
    part: full FPGA part number, or ``None`` for a vendor-neutral target.
    family: ``"versal"``, ``"ultrascale+"``, ``"ecp5"`` or ``"generic"``; selects the
        Vivado collateral (:mod:`fpqvar_hw.flow.vivado` writes it for ``"versal"`` only).
    lut, ff, dsp, bram36, uram: programmable-logic budget (LUT6, flip-flops,
        DSP slices, 36 Kb block RAMs, 288 Kb UltraRAMs); ``None`` = unbounded
        (no fit check).
    dsp_name: ``"DSP58"`` (Versal) or ``"DSP48E2"`` (UltraScale+), for reports.
    dram: human-readable memory description.
    dram_gbps: peak DRAM bandwidth in GB/s (10^9 bytes/s) available to the PL.
    clock_mhz: default accelerator clock (a config may override it).
    axi_data_bits: width of the accelerator's AXI4 master data bus.
    io: the top's interfaces, as they appear in the generated block design.
    host: where the host-side work (sampling, VQVAE decoder) runs.
    host_gflops: sustained FP32 GFLOP/s assumed for the host-side VQVAE decoder.
    budget_source: where the budget figures come from.
    default_params: ``key=value`` configuration overrides the build applies before the
        user's ``--param`` (which win): the platform's own array size where the
        preset's (sized for the VCK190) cannot be meant, e.g. the ULX3S's smallest arrays.
    """

    name: str
    description: str
    part: str | None
    family: str
    lut: int | None
    ff: int | None
    dsp: int | None
    bram36: int | None
    uram: int | None
    dsp_name: str
    dram: str
    dram_gbps: float
    clock_mhz: float
    axi_data_bits: int
    io: tuple[str, ...]
    host: str
    host_gflops: float
    budget_source: str
    default_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower() or not self.name.isidentifier():
            raise ValueError(f"platform name must be a lower-case identifier, got {self.name!r}")
        if self.family not in ("versal", "ultrascale+", "ecp5", "generic"):
            raise ValueError(f"platform family must be versal, ultrascale+, ecp5 or generic, "
                             f"got {self.family!r}")
        for f in ("lut", "ff", "dsp", "bram36", "uram"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or v < 0):
                raise ValueError(f"platform {self.name}: {f} must be a non-negative int or None, "
                                 f"got {v!r}")
        for f in ("dram_gbps", "clock_mhz", "host_gflops"):
            if not getattr(self, f) > 0:
                raise ValueError(f"platform {self.name}: {f} must be > 0, got {getattr(self, f)!r}")
        if self.axi_data_bits not in (32, 64, 128, 256, 512):
            raise ValueError(f"platform {self.name}: axi_data_bits must be 32..512 (power of two), "
                             f"got {self.axi_data_bits}")

    @property
    def budget(self) -> dict[str, int | None]:
        """Resource budget keyed like :class:`fpqvar_hw.flow.resources` reports (LUT, FF, ...)."""
        return {"LUT": self.lut, "FF": self.ff, "DSP": self.dsp, "BRAM36": self.bram36,
                "URAM": self.uram}

    @property
    def dram_bytes_per_cycle(self) -> float:
        """Peak DRAM bytes per accelerator clock cycle at ``clock_mhz``."""
        return self.dram_gbps * 1e9 / (self.clock_mhz * 1e6)

    def as_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self)}


#: AMD-Xilinx VCK190 evaluation kit, Versal AI Core XCVC1902-2MSEVSVA2197 (DS950 budget).
VCK190 = Platform(
    name="vck190",
    description="AMD VCK190 (Versal AI Core XCVC1902-2MSEVSVA2197), PL only, DDR4 via NoC",
    part="xcvc1902-vsva2197-2MP-e-S",
    family="versal",
    lut=899_840, ff=1_799_680, dsp=1_968, bram36=967, uram=463,
    dsp_name="DSP58",
    dram="DDR4 DIMM 8 GB, 64-bit @ 3200 MT/s through the NoC (plus 8 GB LPDDR4, unused)",
    dram_gbps=25.6,
    # 300 MHz: LightMamba closed 400 MHz on the same PL; we plan with margin and
    # justify the figure by the logic depth reported by resources.py.
    clock_mhz=300.0,
    axi_data_bits=128,
    io=("s_axil: AXI4-Lite slave (control/status registers, docs/top.md)",
        "m_axi: AXI4 master 128-bit to DDR4 through the NoC",
        "irq: level-high done interrupt to the CIPS PL-PS IRQ",
        "clk / rst (active high): one PL clock and reset from the CIPS"),
    host="on-board Arm Cortex-A72 APU (2 cores, 1.4 GHz)",
    # 2 cores x 1.4 GHz x 8 FP32 FLOP/cycle (2x128-bit NEON FMA) = 22 GFLOP/s peak;
    # 15 assumed sustained for conv layers.
    host_gflops=15.0,
    budget_source="AMD DS950 (Versal AI Core data sheet), XCVC1902",
)

#: Vendor-neutral Verilog: same clock/DRAM assumptions as the VCK190, no budget check,
#: no vendor collateral.
VERILOG = Platform(
    name="verilog",
    description="generic Verilog: RTL, manifests and reports only, no resource budget",
    part=None,
    family="generic",
    lut=None, ff=None, dsp=None, bram36=None, uram=None,
    dsp_name="DSP",
    dram="assumed 25.6 GB/s DRAM (same as the VCK190's DDR4)",
    dram_gbps=25.6,
    clock_mhz=300.0,
    axi_data_bits=128,
    io=("s_axil: AXI4-Lite slave", "m_axi: AXI4 master", "irq", "clk / rst"),
    host="a host CPU assumed at 15 GFLOP/s sustained",
    host_gflops=15.0,
    budget_source="none (unbounded)",
)



def _ulx3s() -> Platform:
    """ULX3S 85F from amaranth-boards' ``ULX3S_85F_Platform`` (device, package, speed,
    clock, SDRAM); the fabric budget is the LFE5U-85F's (:data:`fpqvar_hw.flow.ecp5.LFE5U_85F`,
    Lattice FPGA-DS-02012).  The budget keys are the Xilinx report's: ``lut`` counts LUT4s,
    ``dsp`` MULT18X18D, ``bram36`` pairs of 18 Kb DP16KD (208 / 2); no UltraRAM."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    b = ULX3S_85F_Platform()
    sd = b.resources[("sdram", 0)]
    dq = next(s for s in sd.ios if getattr(s, "name", "") == "dq")
    dq_bits = len(dq.ios[0].names)
    clk_mhz = b.default_clk_frequency / 1e6
    return Platform(
        name="ulx3s",
        description=(f"Radiona ULX3S 85F (Lattice {b.device}-{b.speed}{b.package}), "
                     f"open flow: Yosys synth_ecp5 + nextpnr-ecp5"),
        part=f"{b.device}-{b.speed}{b.package}",
        family="ecp5",
        lut=83_640, ff=83_640, dsp=156, bram36=104, uram=0,
        dsp_name="MULT18X18D",
        dram=f"32 MB SDR SDRAM, {dq_bits}-bit (amaranth-boards resource sdram; no controller yet)",
        # 16-bit SDR at the board clock: one word per cycle, peak.
        dram_gbps=dq_bits / 8 * clk_mhz * 1e6 / 1e9,
        clock_mhz=clk_mhz,
        axi_data_bits=32,
        io=(f"{b.default_clk}: {clk_mhz:g} MHz board oscillator (the accelerator clock, no PLL)",
            "uart: FTDI USB-UART (the planned host link)",
            "sdram: 16-bit SDR SDRAM"),
        host="a PC over the USB-UART",
        host_gflops=15.0,
        budget_source="Lattice FPGA-DS-02012 (ECP5 family data sheet), LFE5U-85F; "
                      "checked against nextpnr's utilisation report",
        # the simulated RTL top's arrays (fpqvar_hw.config.SMALL_ARRAYS: its tiny image is
        # checked against the golden tokens, sim/test_tiny_image.py) and one vector lane (the
        # v1 vector engine is one element per cycle; vector_lanes sizes the report's per-lane
        # function units and the planned model)
        default_params=tuple(f"{k}={v}" for k, v in SMALL_ARRAYS.items()) + ("vector_lanes=1",),
    )


#: Radiona ULX3S 85F (LFE5U-85F), the open-flow target (issue 18): ``build.py --platform ulx3s``.
ULX3S = _ulx3s()

PLATFORMS: dict[str, Platform] = {}


def register_platform(platform: Platform) -> Platform:
    """Add ``platform`` to :data:`PLATFORMS` (``ValueError`` if the name is taken)."""
    if not isinstance(platform, Platform):
        raise TypeError(f"register_platform expects a Platform, got {type(platform).__name__}")
    if platform.name in PLATFORMS and PLATFORMS[platform.name] != platform:
        raise ValueError(f"platform {platform.name!r} is already registered")
    PLATFORMS[platform.name] = platform
    return platform


for _p in (VCK190, VERILOG, ULX3S):
    register_platform(_p)


def platform_names() -> tuple[str, ...]:
    return tuple(PLATFORMS)


def get_platform(name: str | Platform) -> Platform:
    """Look up a platform by name; ``ValueError`` lists the valid names."""
    if isinstance(name, Platform):
        return name
    try:
        return PLATFORMS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown platform {name!r}; valid platforms: "
                         f"{', '.join(PLATFORMS)}") from None
