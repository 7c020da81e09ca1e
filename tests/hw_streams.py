"""Stream drivers for the fast Amaranth-simulator tests (tests/test_hw_*.py).

The Amaranth-simulator counterpart of the cocotb drivers in ``sim/streams.py``:
:func:`drive` is a source with random idle cycles, :func:`collect` a sink with
random backpressure, and :func:`simulate` runs them (and any other testbench)
against a component under one clock with a hang watchdog::

    rng = np.random.default_rng(seed)
    _, out = simulate(dut,
                      lambda ctx: drive(ctx, dut.i, beats, rng, idle=0.3),
                      lambda ctx: collect(ctx, dut.o, n_out, np.random.default_rng(seed + 1),
                                          stall=0.3, quiet=dut.latency + 4),
                      max_cycles=10_000)

Protocol (``amaranth.lib.stream``): a beat transfers at a rising clock edge
where ``valid & ready``; :func:`drive` holds ``valid`` and the payload stable
from the cycle it raises ``valid`` until that transfer (``valid`` never depends
on ``ready``).  Payloads are the raw packed bits of the stream's payload shape
(``Value.cast(stream.payload)``), so one helper serves plain signals and
``amaranth.lib.data`` layouts alike.

Cycle numbers: both coroutines count the clock edges they await, starting at 0
for the first edge after they were called.  Testbenches that call them before
their first ``await`` therefore share one time base, and the cycle lists they
fill (``accepted`` / ``transferred``) can be subtracted to measure latency.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

import numpy as np
from amaranth.hdl import Value
from amaranth.sim import Simulator

__all__ = ["drive", "collect", "simulate"]


async def drive(ctx, stream, beats: Sequence[int], rng: np.random.Generator, *,
                idle: float = 0.0, accepted: list[int] | None = None) -> None:
    """Send ``beats`` (packed payload integers) into the DUT's input ``stream``, in order.

    Before each beat the source idles (``valid`` low) for a geometric number of
    cycles: it keeps idling while ``rng.random() < idle`` (``idle=0`` never idles,
    so an always-ready DUT takes one beat per cycle).  It then raises ``valid``
    with the beat and holds both until the edge where ``ready`` is high (what
    ``await ctx.tick().until(stream.ready)`` does, but counting cycles).  After
    the last beat ``valid`` is lowered.  The cycle number of each transfer is
    appended to ``accepted`` if a list is given.
    """
    if not 0.0 <= idle < 1.0:
        raise ValueError(f"idle must be a probability in [0, 1), got {idle}")
    payload = Value.cast(stream.payload)
    cycle = 0
    for beat in beats:
        while rng.random() < idle:
            ctx.set(stream.valid, 0)
            await ctx.tick()
            cycle += 1
        ctx.set(payload, int(beat))
        ctx.set(stream.valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            cycle += 1
            if ready:
                break
        if accepted is not None:
            accepted.append(cycle - 1)
    ctx.set(stream.valid, 0)


async def collect(ctx, stream, n: int, rng: np.random.Generator, *, stall: float = 0.0,
                  transferred: list[int] | None = None, quiet: int = 0) -> list[int]:
    """Receive ``n`` beats from the DUT's output ``stream``; return their packed payloads.

    Every cycle the sink drives ``ready`` low with probability ``stall``
    (``rng.random() < stall``; ``stall=0`` is always ready) and takes the payload
    sampled at each edge where ``valid & ready``.  The cycle number of each
    transfer is appended to ``transferred`` if a list is given.  After the n-th
    beat it holds ``ready`` high for ``quiet`` more cycles and fails if ``valid``
    rises in any of them (the DUT produced more beats than expected).

    It waits as long as it takes: run it under :func:`simulate`, whose watchdog
    ends a hung simulation.
    """
    if not 0.0 <= stall < 1.0:
        raise ValueError(f"stall must be a probability in [0, 1), got {stall}")
    payload = Value.cast(stream.payload)
    out: list[int] = []
    cycle = 0
    while len(out) < n:
        ready = int(rng.random() >= stall)
        ctx.set(stream.ready, ready)
        _, _, valid, bits = await ctx.tick().sample(stream.valid, payload)
        if valid and ready:
            out.append(int(bits))
            if transferred is not None:
                transferred.append(cycle)
        cycle += 1
    if quiet:
        ctx.set(stream.ready, 1)
        for k in range(quiet):
            _, _, valid = await ctx.tick().sample(stream.valid)
            assert not valid, f"an extra beat {k + 1} cycles after the expected {n}"
    return out


def simulate(dut, *testbenches: Callable[[Any], Awaitable[Any]], max_cycles: int,
             period: float = 1e-8) -> list[Any]:
    """Run ``testbenches`` concurrently against ``dut`` (one clock of ``period`` s).

    Each testbench is a callable taking the simulator context and returning an
    awaitable (an ``async def``, or a lambda calling :func:`drive` /
    :func:`collect`); they run in the order given within each time step.
    Returns their results in the same order once all of them have finished.
    Raises ``AssertionError`` naming the unfinished ones if any is still running
    after ``max_cycles`` clock cycles (a hung DUT or lost beats); an exception in
    a testbench propagates.
    """
    results: list[Any] = [None] * len(testbenches)
    running = set(range(len(testbenches)))

    def wrap(k, tb):
        async def testbench(ctx):
            results[k] = await tb(ctx)
            running.discard(k)
        return testbench

    async def watchdog(ctx):
        for _ in range(max_cycles):     # plain ticks: a background testbench left waiting
            await ctx.tick()            # inside .repeat() warns when the simulation ends
        names = [f"#{k} {getattr(testbenches[k], '__name__', '')}" for k in sorted(running)]
        raise AssertionError(f"testbenches {names} (numbered from 0 in the order given) still "
                             f"running after {max_cycles} cycles: the DUT hung or lost beats")

    sim = Simulator(dut)
    sim.add_clock(period)
    for k, tb in enumerate(testbenches):
        sim.add_testbench(wrap(k, tb))
    sim.add_testbench(watchdog, background=True)
    sim.run()
    return results


def run_engine_dram(engine, jobs, mem: bytearray, *, ports: Sequence[str], base: int,
                    rng: np.random.Generator, max_cycles: int) -> list[tuple[int, int, int, bytes]]:
    """Run one engine instruction per job in the Amaranth simulator against a small
    in-order DRAM model over ``mem`` (the window starting at ``base``, changed in place).

    The engine is an ``docs/top.md`` engine: ``cmd``, ``busy``, ``error``, ``abort``,
    ``fine``, ``dram_base``/``dram_size``, read clients ``ports`` and write client
    ``wr``.  The model gives each request channel random backpressure (ready 80 %),
    each response channel random gaps (valid 85 %), answers an access outside ``mem``
    with ``err``, and applies write strobes byte by byte.

    ``jobs``: dicts with ``word`` (the instruction as one integer), and optionally
    ``image`` (bytes ``mem`` is set to first), ``window`` (DRAM_SIZE, default
    ``len(mem)``), ``fine`` (default 1), ``abort_after`` (assert ``abort`` in that
    cycle) and ``what`` (named when the engine hangs).  Returns per job ``(cycles,
    error, requests issued, mem after)``; fails if a transaction is still outstanding
    when ``busy`` falls."""
    results = []

    async def tb(ctx):
        ctx.set(engine.dram_base, base)
        queues = {p: [] for p in ports}
        wq = []
        n = len(ports)
        for job in jobs:
            if "image" in job:
                mem[:] = job["image"]
            ctx.set(engine.dram_size, job.get("window", len(mem)))
            ctx.set(engine.fine, job.get("fine", 1))
            ctx.set(engine.cmd.payload.as_value(), job["word"])
            ctx.set(engine.cmd.valid, 1)
            cycles, started, requests = 0, False, 0
            while True:
                rr = {p: int(rng.random() < 0.8) for p in ports}
                for p in ports:
                    port = getattr(engine, p)
                    ctx.set(port.req.ready, rr[p])
                    q = queues[p]
                    if q and rng.random() < 0.85:
                        a = q[0]
                        ok = 0 <= a - base and a - base + 16 <= len(mem)
                        word = int.from_bytes(mem[a - base:a - base + 16], "little") if ok else 0
                        ctx.set(port.resp.valid, 1)
                        ctx.set(port.resp.payload, {"data": word, "last": 0, "err": int(not ok)})
                    else:
                        ctx.set(port.resp.valid, 0)
                wr_ready = int(rng.random() < 0.8)
                ctx.set(engine.wr.req.ready, wr_ready)
                ctx.set(engine.wr.resp.valid, int(bool(wq)))
                ctx.set(engine.wr.resp.payload, {"err": int(wq[0]) if wq else 0})
                ctx.set(engine.abort, int(job.get("abort_after") == cycles))
                s = await ctx.tick().sample(
                    engine.cmd.valid, engine.cmd.ready, engine.busy, engine.error,
                    *[getattr(engine, p).req.valid for p in ports],
                    *[getattr(engine, p).req.payload for p in ports],
                    *[getattr(engine, p).resp.valid for p in ports],
                    *[getattr(engine, p).resp.ready for p in ports],
                    engine.wr.req.valid, engine.wr.req.payload, engine.wr.resp.ready)
                s = s[2:]          # tick().sample returns the clock and reset first
                cv, cr, busy, err = s[:4]
                rv, rp, sv, sr = (s[4 + k * n:4 + (k + 1) * n] for k in range(4))
                wv, wp, wrr = s[4 + 4 * n:]
                if cv and cr:
                    ctx.set(engine.cmd.valid, 0)
                    started = True
                for k, p in enumerate(ports):
                    if rv[k] and rr[p]:
                        a, beats = int(rp[k].addr), int(rp[k].len) + 1
                        queues[p].extend(a + 16 * j for j in range(beats))
                        requests += 1
                    if sv[k] and sr[k]:
                        queues[p].pop(0)
                if wq and wrr:
                    wq.pop(0)
                if wv and wr_ready:
                    requests += 1
                    a, strb = int(wp.addr) & ~15, int(wp.strb)
                    raw = int(wp.data).to_bytes(16, "little")
                    ok = 0 <= a - base and a - base + 16 <= len(mem)
                    if ok:
                        for b in range(16):
                            if strb >> b & 1:
                                mem[a - base + b] = raw[b]
                    wq.append(not ok)
                if started:
                    cycles += 1
                    if cycles > 2 and not busy:
                        break
                assert cycles < max_cycles, f"engine hung on {job.get('what', 'the instruction')}"
            ctx.set(engine.abort, 0)
            assert not any(queues.values()) and not wq, "transactions outstanding after busy fell"
            results.append((cycles, int(err), requests, bytes(mem)))

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return results
