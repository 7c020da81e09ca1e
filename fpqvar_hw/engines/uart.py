"""Host link over a UART (issue 18: the ULX3S's FTDI USB-UART): an 8N1 receiver and
transmitter and :class:`UartBridge`, which turns a small byte protocol into AXI4-Lite
reads and writes on a 32-bit address space (the board's decoder puts the accelerator's
register file and the DRAM in it).  The host side is :mod:`fpqvar_hw.host.uart_link`.

Protocol (every multi-byte field little-endian, ``docs/top.md`` "Host link"):

* write: ``'W'`` (0x57), address (4 bytes, a multiple of 4), ``n - 1`` (1 byte: 1 to 256
  words), then ``n`` words of 4 bytes.  The bridge writes each word as it completes
  (``wstrb`` 0xF, the address advancing by 4) and answers one status byte after the last
  write's response.
* read: ``'R'`` (0x52), address, ``n - 1``; the bridge answers ``n`` words of 4 bytes, read
  one at a time, then the status byte.
* status: bits 1:0 the OR of the bus responses of the command (0 = all OKAY, 2 = SLVERR,
  3 = DECERR), bit 7 a receive error during the command (a framing error or a byte lost
  to overrun: the written data may be wrong; write again).  Any other first byte is
  answered :data:`BAD_OP` and dropped.
* one command at a time: the host sends the next command after the reply (the receiver
  buffers one byte; bytes sent during a reply are lost and flagged as overrun);
* a command whose bytes stop arriving for ``timeout`` cycles (default 64 byte times) is
  dropped without a reply: a host that died mid-command does not leave the bridge
  waiting for the rest of it.  Nothing of a dropped write is lost except the words not
  yet received; its complete words were written.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..checked import Checked
from .axi import AXILiteSignature

__all__ = ["UartRx", "UartTx", "UartBridge", "LiteRam", "LinkTest", "OP_WRITE", "OP_READ",
           "BAD_OP", "MAX_WORDS", "ST_RX_ERROR", "AXI_DECERR", "LINK_TEST_WORDS", "divisor_for"]

OP_WRITE, OP_READ = 0x57, 0x52       # 'W', 'R'
#: the reply to an unknown command byte
BAD_OP = 0xEE
#: status bit: a receive error (framing, overrun) during the command
ST_RX_ERROR = 0x80
#: words per command (the length byte holds ``n - 1``)
MAX_WORDS = 256
#: AXI response of an address nothing answers
AXI_DECERR = 3
#: words of block RAM in the board bring-up design (:class:`LinkTest`, 16 KiB)
LINK_TEST_WORDS = 4096


def divisor_for(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; ``ValueError`` when the rounding
    is off by more than 2 % (a UART receiver tolerates about 4 % in all)."""
    d = round(clock_hz / baud)
    if d < 4 or abs(clock_hz / d / baud - 1) > 0.02:
        raise ValueError(f"{baud} baud at {clock_hz / 1e6:g} MHz: no divisor within 2 % "
                         f"(nearest {d}); choose another baud rate")
    return d


def _check_divisor(divisor) -> None:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
        raise ValueError(f"divisor must be an integer >= 4 (clock cycles per bit), got {divisor!r}")


class UartRx(Checked, wiring.Component):
    """8N1 receiver, ``divisor`` clock cycles per bit.  ``rx`` passes a two-register
    synchroniser; each bit is sampled once, in its middle.  ``o``: one byte per frame (a
    one-entry buffer); ``overrun`` pulses when a byte arrives while the previous one is
    still unread (the new byte replaces it), ``framing`` when the stop bit is low (the
    frame is dropped and the receiver waits for the line to go high again)."""

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "overrun": Out(1), "framing": Out(1)})

    @classmethod
    def check_params(cls, *, divisor) -> None:
        _check_divisor(divisor)

    def elaborate(self, platform):
        m = Module()
        D = self.divisor
        pipe = Signal(2, init=0b11)
        m.d.sync += pipe.eq(Cat(self.rx, pipe[0]))
        rx = pipe[1]
        cnt = Signal(range(D))
        nbit = Signal(3)
        shift = Signal(8)
        valid = Signal()
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(shift)]
        m.d.sync += [self.overrun.eq(0), self.framing.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += valid.eq(0)
        with m.If(cnt != 0):
            m.d.sync += cnt.eq(cnt - 1)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~rx):
                    m.d.sync += cnt.eq(D // 2 - 1)      # to the middle of the start bit
                    m.next = "START"
            with m.State("START"):
                with m.If(cnt == 0):
                    m.d.sync += [cnt.eq(D - 1), nbit.eq(0)]
                    m.next = "IDLE"
                    with m.If(~rx):                     # still low: a start bit, not a glitch
                        m.next = "DATA"
            with m.State("DATA"):
                with m.If(cnt == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], rx)), cnt.eq(D - 1), nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(cnt == 0):
                    with m.If(rx):
                        m.d.sync += [valid.eq(1), self.overrun.eq(valid & ~self.o.ready)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.framing.eq(1)
                        m.next = "BREAK"
            with m.State("BREAK"):
                with m.If(rx):
                    m.next = "IDLE"
        return m


class UartTx(Checked, wiring.Component):
    """8N1 transmitter, ``divisor`` clock cycles per bit: ``i`` is taken when the previous
    frame's stop bit has been sent; ``tx`` idles high."""

    def __init__(self, divisor: int):
        self.divisor = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    @classmethod
    def check_params(cls, *, divisor) -> None:
        _check_divisor(divisor)

    def elaborate(self, platform):
        m = Module()
        D = self.divisor
        frame = Signal(9)                   # data bits then the stop bit, LSB first
        cnt = Signal(range(D))
        left = Signal(range(11))            # bit periods left in the frame
        line = Signal(init=1)
        m.d.comb += [self.tx.eq(line), self.i.ready.eq(left == 0)]
        with m.If(left == 0):
            with m.If(self.i.valid):
                m.d.sync += [line.eq(0), frame.eq(Cat(self.i.payload, Const(1, 1))),
                             cnt.eq(D - 1), left.eq(10)]
        with m.Elif(cnt != 0):
            m.d.sync += cnt.eq(cnt - 1)
        with m.Else():
            m.d.sync += [cnt.eq(D - 1), left.eq(left - 1)]
            with m.If(left != 1):
                m.d.sync += [line.eq(frame[0]), frame.eq(frame >> 1)]
        return m


class UartBridge(Checked, wiring.Component):
    """The host link: :class:`UartRx` and :class:`UartTx` (``divisor`` cycles per bit,
    :func:`divisor_for`) and the protocol of the module docstring on ``axil``, an
    AXI4-Lite master of 32-bit addresses (one transaction at a time: AW and W together,
    then B; AR, then R).  ``timeout``: cycles without a byte after which a half-received
    command is dropped (default 64 byte times)."""

    def __init__(self, divisor: int, *, timeout: int | None = None):
        self.divisor = divisor
        self.timeout = 64 * 10 * divisor if timeout is None else timeout
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1),
                          "axil": Out(AXILiteSignature(addr_bits=32))})

    @classmethod
    def check_params(cls, *, divisor, timeout) -> None:
        _check_divisor(divisor)
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                    or timeout < 20 * divisor):
            raise ValueError(f"timeout must be an integer of at least two byte times "
                             f"({20 * divisor} cycles), got {timeout!r}")

    def elaborate(self, platform):
        m = Module()
        m.submodules.urx = urx = UartRx(self.divisor)
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        bus = self.axil

        op = Signal(8)
        addr = Signal(32)
        word = Signal(32)
        count = Signal(8)                   # words left after the current one
        k = Signal(2)                       # byte index within a field
        status = Signal(8)
        idle = Signal(range(self.timeout + 1))
        aw_done, w_done = Signal(), Signal()
        byte, got = urx.o.payload, urx.o.valid
        m.d.comb += [bus.awaddr.eq(addr), bus.araddr.eq(addr), bus.wdata.eq(word),
                     bus.wstrb.eq(0xF), bus.awprot.eq(0), bus.arprot.eq(0)]

        with m.If(urx.framing | urx.overrun):
            m.d.sync += status.eq(status | ST_RX_ERROR)

        def receiving():
            """Take a byte when one is there; drop the command after ``timeout`` idle cycles."""
            m.d.comb += urx.o.ready.eq(1)
            with m.If(got):
                m.d.sync += idle.eq(0)
            with m.Elif(idle == self.timeout):
                m.d.sync += idle.eq(0)
                m.next = "OP"
            with m.Else():
                m.d.sync += idle.eq(idle + 1)

        with m.FSM():
            with m.State("OP"):
                m.d.comb += urx.o.ready.eq(1)
                m.d.sync += [idle.eq(0), k.eq(0), status.eq(0)]
                with m.If(got):
                    m.d.sync += op.eq(byte)
                    with m.If((byte == OP_WRITE) | (byte == OP_READ)):
                        m.next = "ADDR"
                    with m.Else():
                        m.next = "BAD"
            with m.State("BAD"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(BAD_OP)]
                with m.If(utx.i.ready):
                    m.next = "OP"
            with m.State("ADDR"):
                receiving()
                with m.If(got):
                    m.d.sync += [addr.eq(Cat(addr[8:], byte)), k.eq(k + 1)]
                    with m.If(k == 3):
                        m.next = "LEN"
            with m.State("LEN"):
                receiving()
                with m.If(got):
                    m.d.sync += [count.eq(byte), k.eq(0)]
                    m.next = "WDATA"
                    with m.If(op == OP_READ):
                        m.next = "RADDR"
            with m.State("WDATA"):
                receiving()
                with m.If(got):
                    m.d.sync += [word.eq(Cat(word[8:], byte)), k.eq(k + 1)]
                    with m.If(k == 3):
                        m.d.sync += [aw_done.eq(0), w_done.eq(0)]
                        m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += [bus.awvalid.eq(~aw_done), bus.wvalid.eq(~w_done)]
                with m.If(bus.awready):
                    m.d.sync += aw_done.eq(1)
                with m.If(bus.wready):
                    m.d.sync += w_done.eq(1)
                with m.If((aw_done | bus.awready) & (w_done | bus.wready)):
                    m.next = "WRESP"
            with m.State("WRESP"):
                m.d.comb += bus.bready.eq(1)
                with m.If(bus.bvalid):
                    m.d.sync += [status.eq(status | bus.bresp), addr.eq(addr + 4),
                                 count.eq(count - 1)]
                    m.next = "WDATA"
                    with m.If(count == 0):
                        m.next = "STATUS"
            with m.State("RADDR"):
                m.d.comb += bus.arvalid.eq(1)
                with m.If(bus.arready):
                    m.next = "RDATA"
            with m.State("RDATA"):
                m.d.comb += bus.rready.eq(1)
                with m.If(bus.rvalid):
                    m.d.sync += [word.eq(bus.rdata), status.eq(status | bus.rresp), k.eq(0)]
                    m.next = "RSEND"
            with m.State("RSEND"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(word[:8])]
                with m.If(utx.i.ready):
                    m.d.sync += [word.eq(word >> 8), k.eq(k + 1)]
                    with m.If(k == 3):
                        m.d.sync += [addr.eq(addr + 4), count.eq(count - 1)]
                        m.next = "RADDR"
                        with m.If(count == 0):
                            m.next = "STATUS"
            with m.State("STATUS"):
                m.d.comb += [utx.i.valid.eq(1), utx.i.payload.eq(status)]
                with m.If(utx.i.ready):
                    m.next = "OP"
        return m


class LiteRam(Checked, wiring.Component):
    """AXI4-Lite slave: ``depth`` 32-bit words (a power of two) of block RAM at byte
    addresses ``[0, 4 * depth)``, byte strobes honoured; any other address answers DECERR
    (a write changes nothing, a read returns zero).  One transaction at a time: AW and W
    are taken together, a read's data comes the cycle after its address."""

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__({"axil": In(AXILiteSignature(addr_bits=32))})

    @classmethod
    def check_params(cls, *, depth) -> None:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2 or depth & (depth - 1):
            raise ValueError(f"depth must be a power of two >= 2 (32-bit words), got {depth!r}")

    def elaborate(self, platform):
        m = Module()
        bus, k = self.axil, ceil_log2(self.depth)
        m.submodules.mem = mem = Memory(shape=32, depth=self.depth, init=[])
        wp, rp = mem.write_port(granularity=8), mem.read_port()

        def mapped(addr):
            return addr[2 + k:] == 0

        take_w = bus.awvalid & bus.wvalid & ~bus.bvalid
        m.d.comb += [bus.awready.eq(take_w), bus.wready.eq(take_w),
                     wp.addr.eq(bus.awaddr[2:2 + k]), wp.data.eq(bus.wdata),
                     wp.en.eq(Mux(take_w & mapped(bus.awaddr), bus.wstrb, 0))]
        with m.If(take_w):
            m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(Mux(mapped(bus.awaddr), 0, AXI_DECERR))]
        with m.Elif(bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        take_r = bus.arvalid & ~bus.rvalid
        hit = Signal()
        m.d.comb += [bus.arready.eq(take_r), rp.addr.eq(bus.araddr[2:2 + k]), rp.en.eq(take_r),
                     bus.rdata.eq(Mux(hit, rp.data, 0)), bus.rresp.eq(Mux(hit, 0, AXI_DECERR))]
        with m.If(take_r):
            m.d.sync += [bus.rvalid.eq(1), hit.eq(mapped(bus.araddr))]
        with m.Elif(bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        return m


class LinkTest(Checked, wiring.Component):
    """The board bring-up design of the host link: :class:`UartBridge` on a :class:`LiteRam`
    of ``depth`` words; ``led`` shows the low byte of the last word written.  A user with
    the board loads its bitstream (``python -m fpqvar_hw.flow.board``) and runs
    ``python -m fpqvar_hw.host.uart_link --port ... --selftest`` before the accelerator."""

    def __init__(self, divisor: int, *, depth: int = LINK_TEST_WORDS, timeout: int | None = None):
        self.divisor, self.depth, self.timeout = divisor, depth, timeout
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "led": Out(8)})

    @classmethod
    def check_params(cls, *, divisor, depth, timeout) -> None:
        UartBridge.check_params(divisor=divisor, timeout=timeout)
        LiteRam.check_params(depth=depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = UartBridge(self.divisor, timeout=self.timeout)
        m.submodules.ram = ram = LiteRam(self.depth)
        wiring.connect(m, bridge.axil, ram.axil)
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx)]
        with m.If(bridge.axil.wvalid & bridge.axil.wready):
            m.d.sync += self.led.eq(bridge.axil.wdata[:8])
        return m
