"""cocotb memory model for the engines' DMA clients (``fpqvar_hw.engines.axi.ReadClient`` /
``WriteClient``), serving them from a Python ``bytearray``.

An engine port ``rd0`` of a component elaborated to Verilog appears as the
streams ``rd0__req`` (out of the DUT) and ``rd0__resp`` (into the DUT), each a
``*__payload``/``*__valid``/``*__ready`` triple (:func:`sim.streams.stream_signals`);
payloads are the ``axi`` layouts, packed and unpacked with :func:`sim.streams.pack`.

Behaviour (what the AXI arbiter plus a DRAM controller would show an engine):

* **Reads**: a request ``{addr, len}`` asks for ``len + 1`` 16-byte words at
  ``addr & ~15``, ``addr & ~15 + 16``, ...; the beats come back on ``resp`` in
  request order, ``last`` on the final beat of each burst.  Each burst is
  answered no earlier than ``latency`` cycles (random in ``[lat_min, lat_max]``)
  after its request was accepted; between beats the model idles with
  probability ``gap`` per cycle.  At most ``max_outstanding`` bursts are held;
  the request stream is back-pressured beyond that and otherwise with
  probability ``req_backpressure`` per cycle.
* **Writes**: a request ``{addr, data, strb}`` writes byte ``k`` of the word at
  ``addr & ~15`` where ``strb[k]`` is set; one response ``{err}`` per request, in
  order, after a random latency.
* **Errors**: a word that is not entirely inside ``[base, base + len(mem))``
  answers ``err = 1`` (read data 0; a write changes nothing).
* **Checks** (collected in :attr:`violations`, never raised inside the
  simulation so a test can report them all): a burst longer than
  ``axi.MAX_BURST`` beats or crossing a 4 KiB boundary, an unaligned address,
  and a request that is pending (``valid`` and not ``ready``) changing or being
  withdrawn.  ``resp.ready`` low is honoured (the response is held).

Every random draw comes from ``random.Random`` seeded with ``seed`` and the port name,
so a run is reproducible.  Typical use::

    mem = DmaMemory(dut, dut.clk, bytearray(1 << 16), base=0x1000, seed=3,
                    read_ports=("rd0", "rd1"), write_ports=("wr",))
    mem.start()
    ...
    assert not mem.violations, mem.violations
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import cocotb
from cocotb.triggers import RisingEdge

from fpqvar_hw.engines.axi import DATA_BYTES, MAX_BURST, READ_REQ, READ_RESP, WRITE_REQ, WRITE_RESP
from sim.streams import pack, stream_signals, unpack

__all__ = ["DmaMemory", "DmaStats"]

_PAGE = 4096


@dataclass
class DmaStats:
    """Traffic counters of one :class:`DmaMemory` (all ports together)."""

    read_bursts: int = 0
    read_beats: int = 0
    writes: int = 0
    read_errors: int = 0
    write_errors: int = 0
    max_outstanding_reads: int = 0
    per_port: dict[str, int] = field(default_factory=dict)


class DmaMemory:
    """Serves read and write clients of a DUT from ``mem`` (byte ``i`` at address ``base + i``).

    Parameters: ``read_ports`` / ``write_ports`` are the port prefixes (``"rd0"``,
    ``"wr"``); ``lat_min``/``lat_max`` the response latency in cycles; ``gap`` the
    per-cycle probability of an idle cycle between response beats;
    ``req_backpressure`` the per-cycle probability that ``req.ready`` is low;
    ``max_outstanding`` the bursts (reads) or writes held per port before the
    request stream is back-pressured.
    """

    def __init__(self, dut: Any, clk: Any, mem: bytearray, *, base: int = 0, seed: int = 0,
                 read_ports: Iterable[str] = ("rd0",), write_ports: Iterable[str] = ("wr",),
                 lat_min: int = 2, lat_max: int = 12, gap: float = 0.2,
                 req_backpressure: float = 0.2, max_outstanding: int = 8):
        if not isinstance(mem, bytearray):
            raise TypeError(f"mem must be a bytearray (it is written in place), got {type(mem).__name__}")
        if not 1 <= lat_min <= lat_max:
            raise ValueError(f"need 1 <= lat_min <= lat_max, got {lat_min}, {lat_max}")
        for name, p in (("gap", gap), ("req_backpressure", req_backpressure)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {p}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {max_outstanding}")
        self.dut, self.clk, self.mem, self.base = dut, clk, mem, base
        self.seed = seed
        self.read_ports, self.write_ports = tuple(read_ports), tuple(write_ports)
        self.lat = (lat_min, lat_max)
        self.gap, self.req_backpressure = gap, req_backpressure
        self.max_outstanding = max_outstanding
        self.violations: list[str] = []
        self.stats = DmaStats()
        self.cycle = 0
        self._outstanding: dict[str, int] = {}
        self._tasks: list[Any] = []
        # resolve the handles now: a wrong prefix fails at construction, not mid-run
        self._sig = {p: (stream_signals(dut, f"{p}__req"), stream_signals(dut, f"{p}__resp"))
                     for p in self.read_ports + self.write_ports}

    # ------------------------------------------------------------------ memory
    def _inside(self, addr: int) -> bool:
        return self.base <= addr and addr + DATA_BYTES <= self.base + len(self.mem)

    def read_word(self, addr: int) -> int | None:
        """The 16-byte word at ``addr`` (aligned) as an integer, or None outside the memory."""
        if not self._inside(addr):
            return None
        off = addr - self.base
        return int.from_bytes(self.mem[off:off + DATA_BYTES], "little")

    def write_word(self, addr: int, data: int, strb: int) -> bool:
        """Write the strobed bytes of ``data`` to the word at ``addr``; False outside the memory."""
        if not self._inside(addr):
            return False
        off = addr - self.base
        raw = data.to_bytes(DATA_BYTES, "little")
        for k in range(DATA_BYTES):
            if strb >> k & 1:
                self.mem[off + k] = raw[k]
        return True

    @property
    def idle(self) -> bool:
        """True when no request of any port is being served."""
        return not any(self._outstanding.values())

    # ------------------------------------------------------------------ tasks
    def start(self) -> None:
        """Start serving (call after the reset, like the stream drivers of ``sim.streams``)."""
        for p in self.read_ports + self.write_ports:
            (_, _, req_ready), (_, resp_valid, _) = self._sig[p]
            req_ready.value = 0
            resp_valid.value = 0
            self._outstanding[p] = 0
        self._tasks.append(cocotb.start_soon(self._count()))
        for p in self.read_ports:
            self._tasks.append(cocotb.start_soon(self._serve(p, write=False)))
        for p in self.write_ports:
            self._tasks.append(cocotb.start_soon(self._serve(p, write=True)))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks.clear()

    async def _count(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.cycle += 1

    def _check_request(self, port: str, addr: int, beats: int) -> None:
        if addr % DATA_BYTES:
            self.violations.append(f"{port}: unaligned address {addr:#x} at cycle {self.cycle}")
        if beats > MAX_BURST:
            self.violations.append(f"{port}: burst of {beats} beats > MAX_BURST {MAX_BURST} "
                                   f"at {addr:#x}, cycle {self.cycle}")
        first = addr & ~(DATA_BYTES - 1)
        if first // _PAGE != (first + beats * DATA_BYTES - 1) // _PAGE:
            self.violations.append(f"{port}: burst {addr:#x} + {beats} beats crosses a 4 KiB "
                                   f"boundary at cycle {self.cycle}")

    async def _serve(self, port: str, *, write: bool) -> None:
        """One port: accept requests (with backpressure), answer them in order after a latency."""
        rng = random.Random(f"{self.seed}:{port}")
        (req_payload, req_valid, req_ready), (resp_payload, resp_valid, resp_ready) = self._sig[port]
        req_layout, resp_layout = (WRITE_REQ, WRITE_RESP) if write else (READ_REQ, READ_RESP)
        queue: deque[tuple[int, deque[int]]] = deque()   # (due cycle, packed response beats)
        pending_req: int | None = None     # payload of a request seen valid but not taken
        ready = False
        resp_on = False
        while True:
            await RisingEdge(self.clk)
            # ---- what happened at this edge (sampled values)
            v = req_valid.value
            valid = v.is_resolvable and int(v)
            if pending_req is not None:
                if not valid:
                    self.violations.append(f"{port}: request withdrawn before transfer at cycle {self.cycle}")
                elif int(req_payload.value) != pending_req:
                    self.violations.append(f"{port}: request payload changed while pending at cycle {self.cycle}")
            pending_req = None
            if valid and ready:
                req = unpack(req_layout, int(req_payload.value))
                queue.append((self.cycle + rng.randint(*self.lat), self._respond(port, req, write)))
                self._outstanding[port] += 1
                if not write:
                    total = sum(self._outstanding[p] for p in self.read_ports)
                    self.stats.max_outstanding_reads = max(self.stats.max_outstanding_reads, total)
            elif valid:
                pending_req = int(req_payload.value)
            if resp_on and int(resp_ready.value):
                beats = queue[0][1]
                beats.popleft()
                if not beats:
                    queue.popleft()
                    self._outstanding[port] -= 1
                resp_on = False
            # ---- drive the next cycle
            ready = len(queue) < self.max_outstanding and not (
                self.req_backpressure and rng.random() < self.req_backpressure)
            req_ready.value = int(ready)
            if not resp_on and queue and queue[0][0] <= self.cycle and not (
                    self.gap and rng.random() < self.gap):
                resp_payload.value = queue[0][1][0]
                resp_on = True
            resp_valid.value = int(resp_on)

    def _respond(self, port: str, req: dict, write: bool) -> deque[int]:
        """Perform a request on the memory now (requests are served in order per port) and
        return its packed response beats."""
        st = self.stats
        st.per_port[port] = st.per_port.get(port, 0) + 1
        if write:
            addr = req["addr"]
            self._check_request(port, addr, 1)
            ok = self.write_word(addr & ~(DATA_BYTES - 1), req["data"], req["strb"])
            st.writes += 1
            st.write_errors += not ok
            return deque([pack(WRITE_RESP, {"err": int(not ok)})])
        addr, beats = req["addr"], req["len"] + 1
        self._check_request(port, addr, beats)
        st.read_bursts += 1
        st.read_beats += beats
        out = deque()
        first = addr & ~(DATA_BYTES - 1)
        for b in range(beats):
            word = self.read_word(first + b * DATA_BYTES)
            st.read_errors += word is None
            out.append(pack(READ_RESP, {"data": word or 0, "last": int(b == beats - 1),
                                        "err": int(word is None)}))
        return out
