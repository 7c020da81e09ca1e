"""AXI4 / AXI4-Lite signatures and the engines' DMA client interfaces.

``docs/top.md`` describes how they are used.  The top's AXI4 master has
``DATA_BITS``-bit data, ``ADDR_BITS``-bit byte addresses and a single ID (all
responses in order); field names follow the AXI spec so that Amaranth's
flattened port names (``m_axi__araddr`` ...) match cocotbext-axi's
``AxiBus.from_prefix(dut, "m_axi", bus_separator="__")``.
"""
from __future__ import annotations

from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["DATA_BITS", "DATA_BYTES", "ADDR_BITS", "LITE_ADDR_BITS", "AXI4Signature",
           "AXILiteSignature", "ReadClient", "WriteClient", "READ_REQ", "READ_RESP",
           "WRITE_REQ", "WRITE_RESP", "MAX_BURST"]

DATA_BITS = 128
DATA_BYTES = DATA_BITS // 8
ADDR_BITS = 32
LITE_ADDR_BITS = 8
#: longest burst an engine may request (AXI4 INCR allows 256 beats; 4 KiB boundary
#: rule: a burst must not cross a 4096-byte boundary, the requester splits)
MAX_BURST = 16

READ_REQ = data.StructLayout({"addr": ADDR_BITS, "len": 8})          # len = beats - 1
READ_RESP = data.StructLayout({"data": DATA_BITS, "last": 1, "err": 1})
WRITE_REQ = data.StructLayout({"addr": ADDR_BITS, "data": DATA_BITS, "strb": DATA_BYTES})
WRITE_RESP = data.StructLayout({"err": 1})


class AXI4Signature(wiring.Signature):
    """AXI4 master port (Out = driven by the master), single ID, no user/qos/region."""

    def __init__(self, *, addr_bits: int = ADDR_BITS, data_bits: int = DATA_BITS):
        super().__init__({
            "awaddr": Out(addr_bits), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
            "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_bits), "wstrb": Out(data_bits // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_bits), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
            "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_bits), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
            "rready": Out(1),
        })


class AXILiteSignature(wiring.Signature):
    """AXI4-Lite port seen from the master (use ``.flip()`` / ``In(...)`` on a slave)."""

    def __init__(self, *, addr_bits: int = LITE_ADDR_BITS):
        super().__init__({
            "awaddr": Out(addr_bits), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_bits), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


class ReadClient(wiring.Signature):
    """An engine's read port (engine side): burst requests out, data beats back in order."""

    def __init__(self):
        super().__init__({"req": Out(stream.Signature(READ_REQ)),
                          "resp": In(stream.Signature(READ_RESP))})


class WriteClient(wiring.Signature):
    """An engine's write port (engine side): single-beat writes out, one response each."""

    def __init__(self):
        super().__init__({"req": Out(stream.Signature(WRITE_REQ)),
                          "resp": In(stream.Signature(WRITE_RESP))})
