"""AXI4 / AXI4-Lite signatures and the engines' DMA client interfaces.

``docs/top.md`` describes how they are used.  The top's AXI4 master has
``DATA_BITS``-bit data, ``ADDR_BITS``-bit byte addresses and a single ID (all
responses in order); field names follow the AXI spec so that Amaranth's
flattened port names (``m_axi__araddr`` ...) match cocotbext-axi's
``AxiBus.from_prefix(dut, "m_axi", bus_separator="__")``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from ..emit import hierarchical
from ..units.vector import skid_buffer

__all__ = ["DATA_BITS", "DATA_BYTES", "ADDR_BITS", "LITE_ADDR_BITS", "AXI4Signature",
           "AXI4ReadSignature", "AXI4WriteSignature", "AXILiteSignature", "ReadClient",
           "WriteClient", "READ_REQ", "READ_RESP", "WRITE_REQ", "WRITE_RESP", "MAX_BURST",
           "AXI_OKAY", "ReadArbiter", "WriteArbiter", "AXILiteBridge", "connect_axi4_halves",
           "writes_pending_zero", "round_robin"]

DATA_BITS = 128
DATA_BYTES = DATA_BITS // 8
ADDR_BITS = 32
LITE_ADDR_BITS = 8
#: longest burst an engine may request (AXI4 INCR allows 256 beats; 4 KiB boundary
#: rule: a burst must not cross a 4096-byte boundary, the requester splits)
MAX_BURST = 16
#: RRESP/BRESP value of a successful transfer; anything else is an error
AXI_OKAY = 0
_BURST_INCR = 1
_SIZE_LOG2 = ceil_log2(DATA_BYTES)   # arsize/awsize: 16-byte beats

READ_REQ = data.StructLayout({"addr": ADDR_BITS, "len": 8})          # len = beats - 1
READ_RESP = data.StructLayout({"data": DATA_BITS, "last": 1, "err": 1})
WRITE_REQ = data.StructLayout({"addr": ADDR_BITS, "data": DATA_BITS, "strb": DATA_BYTES})
WRITE_RESP = data.StructLayout({"err": 1})


_AXI4_READ_MEMBERS = ("arid", "araddr", "arlen", "arsize", "arburst", "arcache", "arprot", "arvalid",
                      "arready", "rid", "rdata", "rresp", "rlast", "rvalid", "rready")
_AXI4_WRITE_MEMBERS = ("awid", "awaddr", "awlen", "awsize", "awburst", "awcache", "awprot", "awvalid",
                       "awready", "wdata", "wstrb", "wlast", "wvalid", "wready", "bid",
                       "bresp", "bvalid", "bready")


def _axi4_members(addr_bits: int, data_bits: int) -> dict:
    # one ID: awid/arid are constant 0 and bid/rid are ignored; they exist (1 bit) so
    # that AXI models and interconnects which expect ID signals connect unchanged
    return {
        "awid": Out(1), "awaddr": Out(addr_bits), "awlen": Out(8), "awsize": Out(3), "awburst": Out(2),
        "awcache": Out(4), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_bits), "wstrb": Out(data_bits // 8), "wlast": Out(1),
        "wvalid": Out(1), "wready": In(1),
        "bid": In(1), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "arid": Out(1), "araddr": Out(addr_bits), "arlen": Out(8), "arsize": Out(3), "arburst": Out(2),
        "arcache": Out(4), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
        "rid": In(1), "rdata": In(data_bits), "rresp": In(2), "rlast": In(1), "rvalid": In(1),
        "rready": Out(1),
    }


class AXI4Signature(wiring.Signature):
    """AXI4 master port (Out = driven by the master), no user/qos/region/lock.  Single
    ID: 1-bit ``awid``/``arid`` driven 0, ``bid``/``rid`` ignored."""

    def __init__(self, *, addr_bits: int = ADDR_BITS, data_bits: int = DATA_BITS):
        super().__init__(_axi4_members(addr_bits, data_bits))


class AXI4ReadSignature(wiring.Signature):
    """The read half (AR and R channels) of :class:`AXI4Signature`, same member names."""

    def __init__(self, *, addr_bits: int = ADDR_BITS, data_bits: int = DATA_BITS):
        m = _axi4_members(addr_bits, data_bits)
        super().__init__({k: m[k] for k in _AXI4_READ_MEMBERS})


class AXI4WriteSignature(wiring.Signature):
    """The write half (AW, W and B channels) of :class:`AXI4Signature`, same member names."""

    def __init__(self, *, addr_bits: int = ADDR_BITS, data_bits: int = DATA_BITS):
        m = _axi4_members(addr_bits, data_bits)
        super().__init__({k: m[k] for k in _AXI4_WRITE_MEMBERS})


def connect_axi4_halves(m: Module, bus, rd, wr) -> None:
    """Drive AXI4 master ``bus`` from a read half ``rd`` and a write half ``wr`` (both
    masters, e.g. the ``axi`` ports of :class:`ReadArbiter` and :class:`WriteArbiter`)."""
    for half, names in ((rd, _AXI4_READ_MEMBERS), (wr, _AXI4_WRITE_MEMBERS)):
        sig = half.signature
        for name in names:
            if sig.members[name].flow == Out:
                m.d.comb += getattr(bus, name).eq(getattr(half, name))
            else:
                m.d.comb += getattr(half, name).eq(getattr(bus, name))


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


def writes_pending_zero(m: Module, sent, answered, name: str) -> Signal:
    """A write client's writes awaiting their response, counted up by ``sent`` (a request
    accepted this cycle) and down by ``answered`` (a response this cycle); returns ``count
    == 0`` as a register, for an engine's ``quiet``.  The count moves by at most one a
    cycle, so it is 0 next when it is 0 and stays, or 1 and falls: no compare of the count
    sits in front of ``quiet``."""
    count = Signal(16, name=f"{name}_count")
    zero = Signal(init=1, name=f"{name}_zero")
    m.d.sync += [count.eq(count + sent - answered),
                 zero.eq(Mux(sent == answered, zero, (count == 1) & answered))]
    return zero


# ------------------------------------------------------------------ arbiters
def round_robin(m: Module, valids: list, can, name: str):
    """One-hot grant among ``valids`` when ``can``: the first requester after the previously
    granted one in circular order.  Flat logic for timing (no priority chain through a
    ``Switch``): ``mask`` (registered) has the bits above the last grant set; the lowest set
    bit of ``valids & mask`` wins, else the lowest set bit of ``valids``.  Returns the
    one-hot grant (zero unless ``can``) and ``any`` (a grant happens)."""
    n = len(valids)
    v = Signal(n, name=f"{name}_req")
    m.d.comb += v.eq(Cat(*valids))
    mask = Signal(n, name=f"{name}_mask")       # bits above the last granted index
    masked = Signal(n, name=f"{name}_masked")
    m.d.comb += masked.eq(v & mask)

    def lowest(x):
        return Cat(*[x[i] & ~x[:i].any() if i else x[0] for i in range(n)])

    g = Signal(n, name=f"{name}_grant")
    anyv = Signal(name=f"{name}_any")
    m.d.comb += [anyv.eq(can & v.any()),
                 g.eq(Mux(masked.any(), lowest(masked), lowest(v)) & anyv.replicate(n))]
    with m.If(anyv):
        # new mask: the bits above the granted one (grant one-hot: OR of its higher bits)
        m.d.sync += mask.eq(Cat(*[g[:i].any() if i else Const(0, 1) for i in range(n)]))
    return g, anyv


def _onehot_mux(sel, values):
    """AND-OR multiplexer: ``values[i]`` where the one-hot ``sel`` has bit ``i`` set."""
    out = 0
    for i, val in enumerate(values):
        out = out | Mux(sel[i], val, 0)
    return out


class _TagQueue:
    """FIFO of the owners (one-hot client masks) of the bursts in flight, in flip-flops:
    ``owner`` (the oldest owner where there is one, else 0: a register, so a response's
    valid per client is ``valid & owner[i]``, one gate behind flip-flops) and ``head_ok``;
    ``push``/``w_data`` (one-hot) when ``w_rdy``; ``pop`` retires the head.  Flip-flops
    instead of a LUT RAM keep every path register-to-register (a LUT RAM's write port is
    not a path, but the logic-depth count cannot tell it from its read port)."""

    def __init__(self, m: Module, n: int, depth: int, name: str):
        self.w_data = Signal(n, name=f"{name}_w_data")
        self.push = Signal(name=f"{name}_push")
        self.pop = Signal(name=f"{name}_pop")
        self.head_ok = Signal(name=f"{name}_head_ok")
        self.owner = Signal(n, name=f"{name}_owner")
        self.w_rdy = Signal(name=f"{name}_w_rdy")
        # the entries behind the head: a shift register, slot 0 next in line
        slots = [Signal(n, name=f"{name}_slot{k}") for k in range(depth - 1)]
        cnt = Signal(range(depth), name=f"{name}_cnt")       # entries in slots
        full = Signal(name=f"{name}_full")                     # head_ok & cnt == depth - 1
        m.d.comb += self.w_rdy.eq(~full)
        take = Signal(name=f"{name}_take")                     # the head is (re)filled
        m.d.comb += take.eq(~self.head_ok | self.pop)
        with m.If(take):
            m.d.sync += self.head_ok.eq((cnt != 0) | self.push)
            m.d.sync += self.owner.eq(Mux(cnt != 0, slots[0] if slots else 0,
                                          Mux(self.push, self.w_data, 0)))
        # slots: shift on a refill from them, append the pushed entry behind the rest
        from_slots = take & (cnt != 0)
        for k in range(depth - 1):
            nxt = slots[k + 1] if k + 1 < depth - 1 else Const(0, n)
            with m.If(from_slots):
                m.d.sync += slots[k].eq(nxt)
            with m.If(self.push & ~(take & (cnt == 0))):
                # the push lands at cnt (or cnt - 1 when a slot moves to the head now)
                with m.If(Mux(from_slots, cnt - 1, cnt) == k):
                    m.d.sync += slots[k].eq(self.w_data)
        grow = self.push & ~(take & (cnt == 0))
        with m.If(grow & ~from_slots):
            m.d.sync += [cnt.eq(cnt + 1), full.eq(cnt == depth - 2)]
        with m.Elif(from_slots & ~grow):
            m.d.sync += [cnt.eq(cnt - 1), full.eq(0)]
        with m.Else():
            m.d.sync += full.eq(Mux(take, (cnt != 0) | self.push, 1) & (cnt == depth - 1))


def _sliced_grant(m: Module, clients, layout, can, tags: "_TagQueue", name: str):
    """Both arbiters' request side: each client's ``req`` through a register slice
    (``req.ready`` is a register, so no client's logic waits on another client's valid
    through the grant), a round-robin one-hot grant ``g`` among the slices when ``can``,
    the owner pushed into ``tags``.  Returns ``(g, grant, payloads)``: the one-hot grant,
    whether one happens, and the slices' payloads (``layout`` views)."""
    g = Signal(len(clients), name=f"{name}_g")
    valids, payloads = [], []
    for i, c in enumerate(clients):
        in_ready, v, p = skid_buffer(m, c.req.valid, c.req.payload.as_value(), g[i], f"req{i}")
        m.d.comb += c.req.ready.eq(in_ready)
        valids.append(v)
        payloads.append(layout(p))
    gg, grant = round_robin(m, valids, can, name)
    m.d.comb += [g.eq(gg), tags.push.eq(grant), tags.w_data.eq(g)]
    return g, grant, payloads


def _owner_ready(tags: "_TagQueue", clients):
    """The response channel's ready: the owning client's (``tags.owner``) ``resp.ready``."""
    return Cat(*[tags.owner[i] & c.resp.ready for i, c in enumerate(clients)]).any()


def _check_clients(n_clients: int, max_outstanding: int) -> None:
    if not isinstance(n_clients, int) or n_clients < 1:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    if not isinstance(max_outstanding, int) or max_outstanding < 1:
        raise ValueError(f"max_outstanding must be a positive integer, got {max_outstanding!r}")


@hierarchical
class ReadArbiter(wiring.Component):
    """``n_clients`` :class:`ReadClient` ports -> the read half of one AXI4 master (one ID).

    Ports: ``clients[i]`` (``In(ReadClient())``: the arbiter receives ``req`` and
    drives ``resp``), ``axi`` (:class:`AXI4ReadSignature`, master).

    * Requests: round-robin among the clients with a pending ``req`` (the one after
      the last granted index wins).  A grant registers the burst into the AR channel
      (``arsize`` = 16-byte beats, ``arburst`` = INCR, ``arlen`` = ``req.len``) and
      pushes the client index into a tag FIFO.  One AR may be granted per cycle;
      ``req.ready`` is high in the cycle of the grant.  A client must keep every
      burst within one 4 KiB page and at most 256 beats (AXI4 INCR rules); the
      engines use at most :data:`MAX_BURST` beats.
    * Up to ``max_outstanding`` bursts may be in flight (tag FIFO depth).  With one
      ID the slave answers in order, so the head tag names the owner of every R
      beat: ``resp`` gets ``data``, ``last`` (= ``rlast``) and ``err`` (``rresp`` !=
      OKAY, per beat).  ``rready`` follows the owning client's ``resp.ready``: a
      client that stalls its responses stalls everyone behind it, so a client
      should only request what it can accept.
    * Latency: each client's request passes a register slice (``req.ready`` is a
      register: :data:`REQUEST_SLICES`), then the grant registers AR: AR valid two cycles
      after ``req``; R -> ``resp`` is combinational.
    """

    #: cycles a request spends in its client's register slice before it can be granted
    REQUEST_SLICES = 1

    def __init__(self, n_clients: int, *, max_outstanding: int = 8):
        _check_clients(n_clients, max_outstanding)
        self.n_clients = n_clients
        self.max_outstanding = max_outstanding
        super().__init__({"clients": In(ReadClient()).array(n_clients),
                          "axi": Out(AXI4ReadSignature())})

    def elaborate(self, platform):
        m = Module()
        n, axi = self.n_clients, self.axi
        tags = _TagQueue(m, n, self.max_outstanding, "tags")
        m.d.comb += [axi.arid.eq(0), axi.arsize.eq(_SIZE_LOG2), axi.arburst.eq(_BURST_INCR),
                     axi.arcache.eq(0), axi.arprot.eq(0)]
        g, grant, reqs = _sliced_grant(m, self.clients, READ_REQ,
                                       (~axi.arvalid | axi.arready) & tags.w_rdy, tags, "ar")
        with m.If(grant):
            m.d.sync += [axi.arvalid.eq(1),
                         axi.araddr.eq(_onehot_mux(g, [p.addr for p in reqs])),
                         axi.arlen.eq(_onehot_mux(g, [p.len for p in reqs]))]
        with m.Elif(axi.arready):
            m.d.sync += axi.arvalid.eq(0)

        for i, c in enumerate(self.clients):
            m.d.comb += [c.resp.payload.data.eq(axi.rdata), c.resp.payload.last.eq(axi.rlast),
                         c.resp.payload.err.eq(axi.rresp != AXI_OKAY),
                         c.resp.valid.eq(axi.rvalid & tags.owner[i])]
        m.d.comb += [axi.rready.eq(_owner_ready(tags, self.clients)),
                     tags.pop.eq(axi.rvalid & axi.rready & axi.rlast)]
        return m


@hierarchical
class WriteArbiter(wiring.Component):
    """``n_clients`` :class:`WriteClient` ports -> the write half of one AXI4 master (one ID).

    Ports: ``clients[i]`` (``In(WriteClient())``), ``axi`` (:class:`AXI4WriteSignature`,
    master).

    * Every request is one 16-byte beat; it passes its client's register slice
      (``req.ready`` is a register, :data:`REQUEST_SLICES`), then a round-robin grant
      registers it into both
      the AW channel (``awlen`` = 0, ``awsize`` = 16 bytes, INCR) and the W channel
      (``wlast`` = 1, ``wstrb`` from the request).  The two channels complete
      independently (AXI allows W before or after AW); the next grant waits until
      both registers are free (or freeing in that cycle), so AW and W stay in the
      same order and at most one beat apart.
    * Up to ``max_outstanding`` writes wait for their B response (tag FIFO).  B
      responses come in order (one ID) and go to the owning client's ``resp``
      with ``err`` = (``bresp`` != OKAY).
    """

    #: cycles a write spends in its client's register slice before it can be granted
    REQUEST_SLICES = 1

    def __init__(self, n_clients: int, *, max_outstanding: int = 8):
        _check_clients(n_clients, max_outstanding)
        self.n_clients = n_clients
        self.max_outstanding = max_outstanding
        super().__init__({"clients": In(WriteClient()).array(n_clients),
                          "axi": Out(AXI4WriteSignature())})

    def elaborate(self, platform):
        m = Module()
        n, axi = self.n_clients, self.axi
        tags = _TagQueue(m, n, self.max_outstanding, "tags")
        m.d.comb += [axi.awid.eq(0), axi.awlen.eq(0), axi.awsize.eq(_SIZE_LOG2), axi.awburst.eq(_BURST_INCR),
                     axi.awcache.eq(0), axi.awprot.eq(0), axi.wlast.eq(1)]
        can = (~axi.awvalid | axi.awready) & (~axi.wvalid | axi.wready) & tags.w_rdy
        g, grant, reqs = _sliced_grant(m, self.clients, WRITE_REQ, can, tags, "aw")
        pick = lambda f: _onehot_mux(g, [f(p) for p in reqs])  # noqa: E731
        with m.If(grant):
            m.d.sync += [axi.awvalid.eq(1), axi.awaddr.eq(pick(lambda p: p.addr)),
                         axi.wvalid.eq(1), axi.wdata.eq(pick(lambda p: p.data)),
                         axi.wstrb.eq(pick(lambda p: p.strb))]
        with m.Else():
            with m.If(axi.awready):
                m.d.sync += axi.awvalid.eq(0)
            with m.If(axi.wready):
                m.d.sync += axi.wvalid.eq(0)

        for i, c in enumerate(self.clients):
            m.d.comb += [c.resp.payload.err.eq(axi.bresp != AXI_OKAY),
                         c.resp.valid.eq(axi.bvalid & tags.owner[i])]
        m.d.comb += [axi.bready.eq(_owner_ready(tags, self.clients)),
                     tags.pop.eq(axi.bvalid & axi.bready)]
        return m


# ----------------------------------------------------------- AXI4-Lite slave
@hierarchical
class AXILiteBridge(wiring.Component):
    """AXI4-Lite slave -> a simple synchronous register bus (one access at a time).

    Ports: ``axil`` (``In(AXILiteSignature())``, the slave side), and the register
    bus seen by the register file:

    * ``w_en`` (one-cycle pulse), ``w_addr`` (word-aligned byte address), ``w_data``,
      ``w_strb``: a write; the register file applies it in that cycle.
    * ``r_addr`` (Out), ``r_data`` (In): while ``r_en`` pulses, the register file
      drives ``r_data`` combinationally from ``r_addr``; the bridge registers it
      into ``rdata``.  A read has no side effects.

    A write is accepted when AW and W are both valid and no B response is pending
    (``awready`` = ``wready`` = that condition); B (OKAY) follows one cycle later.
    A read is accepted when no R response is pending; R (OKAY) follows one cycle
    later.  Address bits [1:0] are ignored; every response is OKAY (unmapped
    offsets read 0 and ignore writes).
    """

    def __init__(self, *, addr_bits: int = LITE_ADDR_BITS):
        super().__init__({
            "axil": In(AXILiteSignature(addr_bits=addr_bits)),
            "w_en": Out(1), "w_addr": Out(addr_bits), "w_data": Out(32), "w_strb": Out(4),
            "r_en": Out(1), "r_addr": Out(addr_bits), "r_data": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        a = self.axil
        m.d.comb += [a.bresp.eq(AXI_OKAY), a.rresp.eq(AXI_OKAY)]
        take_w = a.awvalid & a.wvalid & ~a.bvalid
        m.d.comb += [a.awready.eq(take_w), a.wready.eq(take_w),
                     self.w_en.eq(take_w), self.w_addr.eq(a.awaddr & ~3),
                     self.w_data.eq(a.wdata), self.w_strb.eq(a.wstrb)]
        with m.If(take_w):
            m.d.sync += a.bvalid.eq(1)
        with m.Elif(a.bready):
            m.d.sync += a.bvalid.eq(0)
        take_r = a.arvalid & ~a.rvalid
        m.d.comb += [a.arready.eq(take_r), self.r_en.eq(take_r), self.r_addr.eq(a.araddr & ~3)]
        with m.If(take_r):
            m.d.sync += [a.rvalid.eq(1), a.rdata.eq(self.r_data)]
        with m.Elif(a.rready):
            m.d.sync += a.rvalid.eq(0)
        return m
