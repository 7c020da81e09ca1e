"""Reusable cocotb drivers for Amaranth ``lib.stream`` ports, and a testbench base.

An Amaranth stream port ``name`` of a component elaborated with
``amaranth.back.verilog`` appears in the Verilog as ``name__payload``,
``name__valid`` and ``name__ready`` (see :func:`stream_signals`).  Payloads are
``amaranth.lib.data`` layouts; :func:`pack` / :func:`unpack` convert between a
packed integer and nested Python dicts/lists so a testbench sets and reads
fields by name.

Protocol assumed (and checked by :class:`StreamMonitor`): a beat transfers on a
rising clock edge where ``valid & ready``; a source that raised ``valid`` keeps
``valid`` and ``payload`` stable until the transfer (``valid`` never depends on
``ready``).

Sampling convention (the one cocotbext-axi uses): after ``await RisingEdge(clk)``
the handles still read the values the flip-flops sampled at that edge; new
drive values written then take effect after the edge.

Anatomy of a testbench (house style): one :class:`StreamTB` subclass per DUT
owns the clock, the reset, one :class:`StreamSource` per input, one
:class:`StreamSink` per output, and a :class:`Scoreboard`; ``await tb.finish()``
checks that every expected beat arrived exactly once and nothing extra did.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, Timer

from fpqvar_hw.host.cosim import tb_params  # re-exported for the testbenches

__all__ = ["pack", "unpack", "stream_signals", "StreamSource", "StreamSink", "StreamMonitor",
           "Scoreboard", "StreamTB", "tb_params", "ScoreboardError"]


# --------------------------------------------------------------------- layouts
def pack(layout: Any, value: Any) -> int:
    """Pack ``value`` into the integer bit pattern of an ``amaranth.lib.data`` layout.

    ``value`` is an ``int`` (taken as the raw bits of the field), a ``dict``
    (struct fields by name; missing fields are 0) or a sequence (array elements).
    """
    from amaranth.lib import data

    if isinstance(value, int):
        size = _size(layout)
        if value < 0:
            value &= (1 << size) - 1
        if value >> size:
            raise ValueError(f"value {value:#x} does not fit in {size} bits")
        return value
    if isinstance(layout, data.ArrayLayout):
        if len(value) != layout.length:
            raise ValueError(f"array layout has {layout.length} elements, got {len(value)}")
        w = _size(layout.elem_shape)
        return sum(pack(layout.elem_shape, v) << (i * w) for i, v in enumerate(value))
    if isinstance(layout, data.StructLayout | data.UnionLayout | data.FlexibleLayout):
        out = 0
        for name, field in layout:
            if name in value:
                out |= pack(field.shape, value[name]) << field.offset
        unknown = set(value) - {n for n, _ in layout}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; layout has {[n for n, _ in layout]}")
        return out
    raise TypeError(f"cannot pack {type(value).__name__} into {layout!r}")


def unpack(layout: Any, bits: int) -> Any:
    """Inverse of :func:`pack`: nested dicts/lists of raw unsigned field integers."""
    from amaranth.lib import data

    if isinstance(layout, data.ArrayLayout):
        w = _size(layout.elem_shape)
        return [unpack(layout.elem_shape, (bits >> (i * w)) & ((1 << w) - 1))
                for i in range(layout.length)]
    if isinstance(layout, data.Layout):
        return {name: unpack(field.shape, (bits >> field.offset) & ((1 << field.width) - 1))
                for name, field in layout}
    return bits


def _size(shape: Any) -> int:
    from amaranth.lib import data
    from amaranth.hdl import Shape

    if isinstance(shape, data.Layout):
        return shape.size
    return Shape.cast(shape).width


def stream_signals(dut: Any, name: str) -> tuple[Any, Any, Any]:
    """The (payload, valid, ready) handles of stream port ``name`` of ``dut``."""
    try:
        return (getattr(dut, f"{name}__payload"), getattr(dut, f"{name}__valid"),
                getattr(dut, f"{name}__ready"))
    except AttributeError as e:
        raise AttributeError(f"DUT has no stream port {name!r} (looked for {name}__payload/"
                             f"__valid/__ready): {e}") from None


# ---------------------------------------------------------------------- drivers
class StreamSource:
    """Drives ``name`` (payload/valid) from a queue of packed integers.

    Between beats the source idles for a random number of cycles: with
    probability ``idle`` it inserts one more idle cycle (geometric), drawn from
    ``random.Random(seed)``.  ``valid`` is raised independently of ``ready`` and
    held with a stable payload until the beat is taken.
    """

    def __init__(self, dut: Any, name: str, clk: Any, *, idle: float = 0.0, seed: int | str = 0):
        if not 0.0 <= idle < 1.0:
            raise ValueError(f"idle probability must be in [0, 1), got {idle}")
        self.name = name
        self.payload, self.valid, self.ready = stream_signals(dut, name)
        self.clk = clk
        self.idle = idle
        self.rng = random.Random(seed)
        self.queue: deque[int] = deque()
        self.sent = 0
        self._task = None

    def send(self, beats: Iterable[int]) -> None:
        """Queue packed beats (they are driven in order)."""
        self.queue.extend(int(b) for b in beats)

    def start(self) -> None:
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        valid = False
        while True:
            await RisingEdge(self.clk)
            if valid and int(self.ready.value):
                self.sent += 1
                valid = False
            if not valid and self.queue and not (self.idle and self.rng.random() < self.idle):
                self.payload.value = self.queue.popleft()
                valid = True
            self.valid.value = int(valid)
            self._valid = valid

    @property
    def idle_now(self) -> bool:
        """True when nothing is queued and no beat is waiting to be taken."""
        return not self.queue and not getattr(self, "_valid", False)


class StreamMonitor:
    """Passively records every transfer of stream ``name`` and checks the protocol.

    Raises (at the next edge) if ``valid`` drops, or the payload changes, while a
    beat is pending (valid and not ready) - the "valid never depends on ready"
    rule seen from outside.
    """

    def __init__(self, dut: Any, name: str, clk: Any, *, callback: Callable[[int], None] | None = None,
                 check_protocol: bool = True):
        self.name = name
        self.payload, self.valid, self.ready = stream_signals(dut, name)
        self.clk = clk
        self.callback = callback
        self.check_protocol = check_protocol
        self.beats: list[int] = []
        self.protocol_errors: list[str] = []
        self._task = None

    def start(self) -> None:
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        pending: int | None = None
        cycle = 0
        while True:
            await RisingEdge(self.clk)
            cycle += 1
            v = self.valid.value
            if not v.is_resolvable:
                continue
            valid = int(v)
            if pending is not None and self.check_protocol:
                if not valid:
                    self.protocol_errors.append(f"{self.name}: valid dropped without transfer at cycle {cycle}")
                elif int(self.payload.value) != pending:
                    self.protocol_errors.append(f"{self.name}: payload changed while pending at cycle {cycle}")
            if valid and int(self.ready.value):
                beat = int(self.payload.value)
                self.beats.append(beat)
                if self.callback is not None:
                    self.callback(beat)
                pending = None
            elif valid:
                pending = int(self.payload.value)
            else:
                pending = None


class StreamSink:
    """Drives ``ready`` of ``name`` with random backpressure and collects the beats.

    Each cycle ``ready`` is low with probability ``backpressure`` (drawn from
    ``random.Random(seed)``).  Received beats go to ``callback`` (e.g. a
    :class:`Scoreboard`) and to ``self.beats``.
    """

    def __init__(self, dut: Any, name: str, clk: Any, *, backpressure: float = 0.0, seed: int | str = 0,
                 callback: Callable[[int], None] | None = None):
        if not 0.0 <= backpressure < 1.0:
            raise ValueError(f"backpressure probability must be in [0, 1), got {backpressure}")
        self.name = name
        self.payload, self.valid, self.ready = stream_signals(dut, name)
        self.clk = clk
        self.backpressure = backpressure
        self.rng = random.Random(seed)
        self.monitor = StreamMonitor(dut, name, clk, callback=callback)
        self._task = None

    @property
    def beats(self) -> list[int]:
        return self.monitor.beats

    def start(self) -> None:
        self.ready.value = 0
        self.monitor.start()
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.ready.value = int(not (self.backpressure and self.rng.random() < self.backpressure))


# -------------------------------------------------------------------- scoreboard
class ScoreboardError(AssertionError):
    pass


@dataclass
class Scoreboard:
    """In-order comparison of received beats with expected beats.

    ``describe(index, expected, actual)`` renders one mismatch (decoded fields,
    expected vs actual); at most ``max_reports`` are logged, all are counted.
    :meth:`finish` fails if anything mismatched, was lost, or was extra.
    """

    name: str
    describe: Callable[[int, int, int], str] | None = None
    max_reports: int = 10
    log: Any = None

    def __post_init__(self) -> None:
        self.expected: deque[int] = deque()
        self.received = 0
        self.mismatches = 0
        self.extra = 0
        self.reports: list[str] = []

    def expect(self, beats: Iterable[int]) -> None:
        self.expected.extend(int(b) for b in beats)

    def __call__(self, actual: int) -> None:
        idx = self.received
        self.received += 1
        if not self.expected:
            self.extra += 1
            self._report(f"{self.name}: unexpected extra beat #{idx}: {actual:#x}")
            return
        exp = self.expected.popleft()
        if exp != actual:
            self.mismatches += 1
            text = (self.describe(idx, exp, actual) if self.describe
                    else f"expected {exp:#x}, got {actual:#x}")
            self._report(f"{self.name}: mismatch at beat #{idx}: {text}")

    def _report(self, text: str) -> None:
        if len(self.reports) < self.max_reports:
            self.reports.append(text)
            if self.log is not None:
                self.log.error(text)

    def finish(self) -> None:
        lost = len(self.expected)
        if self.mismatches or lost or self.extra:
            raise ScoreboardError(
                f"{self.name}: {self.mismatches} mismatching, {lost} lost, {self.extra} extra beats "
                f"(of {self.received} received); first reports:\n  " + "\n  ".join(self.reports))


# ------------------------------------------------------------------- TB base
class StreamTB:
    """Base testbench: clock, synchronous reset, stream drivers, scoreboards.

    Subclasses add their sources/sinks in ``__init__`` with :meth:`add_source`
    and :meth:`add_sink`, then a test does::

        tb = MyTB(dut, seed=...)
        await tb.start()
        ... tb.sources["i"].send(beats); tb.scoreboards["o"].expect(expected)
        await tb.finish()
    """

    def __init__(self, dut: Any, *, seed: int, clk: str = "clk", rst: str = "rst",
                 period_ns: int = 10):
        self.dut = dut
        self.seed = seed
        self.clk = getattr(dut, clk)
        self.rst = getattr(dut, rst)
        self.period_ns = period_ns
        self.sources: dict[str, StreamSource] = {}
        self.sinks: dict[str, StreamSink] = {}
        self.scoreboards: dict[str, Scoreboard] = {}
        self.log = dut._log
        self.cycles = 0

    def add_source(self, name: str, *, idle: float = 0.0) -> StreamSource:
        src = StreamSource(self.dut, name, self.clk, idle=idle, seed=f"{self.seed}:{name}:src")
        self.sources[name] = src
        return src

    def add_sink(self, name: str, *, backpressure: float = 0.0,
                 describe: Callable[[int, int, int], str] | None = None,
                 max_reports: int = 10) -> StreamSink:
        sb = Scoreboard(name, describe=describe, max_reports=max_reports, log=self.log)
        sink = StreamSink(self.dut, name, self.clk, backpressure=backpressure,
                          seed=f"{self.seed}:{name}:sink", callback=sb)
        self.sinks[name] = sink
        self.scoreboards[name] = sb
        return sink

    async def start(self, reset_cycles: int = 3) -> None:
        cocotb.start_soon(Clock(self.clk, self.period_ns, unit="ns").start())
        cocotb.start_soon(self._count())
        for s in self.sources.values():
            s.valid.value = 0
        for s in self.sinks.values():
            s.ready.value = 0
        self.rst.value = 1
        await ClockCycles(self.clk, reset_cycles)
        self.rst.value = 0
        await RisingEdge(self.clk)
        for s in self.sources.values():
            s.start()
        for s in self.sinks.values():
            s.start()

    async def _count(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.cycles += 1

    async def wait_drained(self, *, timeout_cycles: int, quiet_cycles: int = 64) -> None:
        """Wait until all sources are empty and every scoreboard has all it expects,
        then ``quiet_cycles`` more (to catch extra beats).  Fails after ``timeout_cycles``."""
        start = self.cycles
        while True:
            done = all(s.idle_now for s in self.sources.values()) and \
                all(not sb.expected for sb in self.scoreboards.values())
            if done:
                break
            if self.cycles - start > timeout_cycles:
                pending = {n: len(sb.expected) for n, sb in self.scoreboards.items()}
                raise ScoreboardError(f"timeout after {timeout_cycles} cycles; beats still expected: "
                                      f"{pending}; queued at sources: "
                                      f"{ {n: len(s.queue) for n, s in self.sources.items()} }")
            await RisingEdge(self.clk)
        await ClockCycles(self.clk, quiet_cycles)

    async def finish(self, *, timeout_cycles: int = 1_000_000) -> None:
        """Drain, then check scoreboards (nothing lost, duplicated or wrong) and protocol."""
        await self.wait_drained(timeout_cycles=timeout_cycles)
        errors = []
        for sink in self.sinks.values():
            errors += sink.monitor.protocol_errors[:5]
        for sb in self.scoreboards.values():
            try:
                sb.finish()
            except ScoreboardError as e:
                errors.append(str(e))
        if errors:
            raise ScoreboardError("\n".join(errors))
        self.log.info("scoreboards clean: %s in %d cycles",
                      {n: sb.received for n, sb in self.scoreboards.items()}, self.cycles)


def seeded(seed: int, *labels: Any) -> random.Random:
    """A ``random.Random`` derived deterministically from ``seed`` and labels."""
    return random.Random(f"{seed}:" + ":".join(map(str, labels)))


async def settle() -> None:
    """Let combinational values settle (one zero-time step)."""
    await Timer(1, unit="step")
