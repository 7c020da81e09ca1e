"""The memory behind the as-built top's AXI4 master, as :mod:`fpqvar_hw.flow.asbuilt` sees
it: the co-simulation's ``AxiRam``, the simulator-side DRAM of the driver's RTL runs
(:mod:`fpqvar_hw.host.simdram`) and a board's DRAM through the NoC."""
from __future__ import annotations

from dataclasses import dataclass

from .platform import Platform

__all__ = ["TopMemory", "sim_memory", "simdram_memory", "platform_memory",
           "AXIRAM_READ_LATENCY", "AXIRAM_WRITE_LATENCY", "VCK190_READ_LATENCY"]


@dataclass(frozen=True)
class TopMemory:
    """The memory behind the top's AXI4 master, as the as-built model sees it.

    ``read_latency``: cycles from an AR handshake to its first R beat;
    ``write_latency``: from the W beat to its B response; ``beat_rate``: R beats per
    cycle the memory sustains (<= 1, the 128-bit bus); ``shared``: all read clients share
    one R channel (the top) -- ``False`` models the per-port test memory of the engine
    testbenches (``sim/dma_model.py``), where each client gets its own beat per cycle;
    ``write_burst_cycles``: cycles the memory spends on a single-beat write burst (the
    engines write one 16-byte beat per burst), so it takes at most ``1 / write_burst_cycles``
    writes per cycle.
    """

    name: str
    read_latency: float
    write_latency: float
    beat_rate: float
    source: str
    shared: bool = True
    write_burst_cycles: float = 1.0

    def __post_init__(self) -> None:
        if self.write_burst_cycles < 1:
            raise ValueError(f"{self.name}: write_burst_cycles must be >= 1, got {self.write_burst_cycles}")
        if not 0 < self.beat_rate <= 1:
            raise ValueError(f"{self.name}: beat_rate must be in (0, 1], got {self.beat_rate}")
        if self.read_latency < 0 or self.write_latency < 0:
            raise ValueError(f"{self.name}: latencies must be >= 0")


#: cocotbext-axi ``AxiRam`` (the co-simulation's DRAM): a channel item is taken at one
#: clock edge by its coroutine and answered on a later edge; 2 cycles AR -> R and 3 cycles
#: W -> B are the model's reading of that (not measured separately).
AXIRAM_READ_LATENCY = 2
AXIRAM_WRITE_LATENCY = 3
#: VCK190 PL -> NoC -> DDR4 read latency in PL cycles (matrix.py docstring: "~100-200-cycle
#: latency of the VCK190 NoC + DDR4"); a design assumption, no board measurement.
VCK190_READ_LATENCY = 150


def sim_memory(pause: float = 0.0) -> TopMemory:
    """The co-simulation's ``AxiRam``; ``pause`` = the testbench's per-channel, per-cycle
    pause probability (``sim/tb_top.py``): beats come at ``1 - pause`` per cycle and every
    handshake waits ``1 / (1 - pause)`` times as long."""
    if not 0 <= pause < 1:
        raise ValueError(f"pause must be in [0, 1), got {pause}")
    s = 1 / (1 - pause)
    return TopMemory(f"AxiRam (pause {pause:g})" if pause else "AxiRam",
                     AXIRAM_READ_LATENCY * s, AXIRAM_WRITE_LATENCY * s, 1 - pause,
                     "cocotbext-axi AxiRam in the top's co-simulation", write_burst_cycles=s)


def simdram_memory(latency: int, stall: int, write_latency: int = 0) -> TopMemory:
    """The simulator-side DRAM of :mod:`fpqvar_hw.host.simdram` (the driver's RTL runs):
    ``latency`` cycles from an accepted read address until its burst may start, one cycle
    to start it; every handshake withheld with probability ``stall/256``, so beats come at
    ``1 - stall/256`` per cycle and each handshake waits ``1 / (1 - stall/256)`` cycles;
    a write burst starts a cycle after its address and is answered ``write_latency`` + 1
    cycles after its last beat (the model's reading of the Verilog, checked against the
    driver's runs).  Single-beat writes go at one per ``1 + 2 / rate`` cycles: the memory
    takes a burst's W beat only from the cycle after it moved the address out of its queue,
    and the top's write arbiter offers the next AW and W together once the W beat is taken
    (AW handshake, the move, the W handshake; ``CVT16`` of the V cache, 512 single FP16
    writes at stall 16/256: 3.19 cycles each in ``benchmarks/top_calibration.py``'s
    per-instruction profile)."""
    if not (0 <= latency < 256 and 0 <= stall < 256 and 0 <= write_latency < 256):
        raise ValueError(f"latency, stall and write_latency must be in [0, 256), got {latency}, "
                         f"{stall}, {write_latency}")
    rate = 1 - stall / 256
    wl = f", write latency {write_latency}" if write_latency else ""
    return TopMemory(f"fpqvar_sim_dram (latency {latency}, stall {stall}/256{wl})",
                     latency + 1 + 1 / rate, write_latency + 2 + 1 / rate, rate,
                     "the simulator-side AXI4 memory of fpqvar_hw.host.simdram",
                     write_burst_cycles=1 + 2 / rate)


def platform_memory(platform: Platform, clock_mhz: float, efficiency: float = 1.0) -> TopMemory:
    """The platform's DRAM behind the 128-bit master: at most one beat per cycle, fewer
    when ``dram_gbps x efficiency`` is below 16 bytes per cycle."""
    rate = min(1.0, platform.dram_gbps * 1e9 * efficiency / (clock_mhz * 1e6) / 16)
    return TopMemory(platform.name, VCK190_READ_LATENCY, VCK190_READ_LATENCY, rate,
                     f"{platform.dram} ({platform.dram_gbps} GB/s x {efficiency}); read latency "
                     f"{VCK190_READ_LATENCY} cycles assumed")
