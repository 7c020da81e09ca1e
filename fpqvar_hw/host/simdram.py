"""The DRAM of the simulated RTL top, on the simulator side: an AXI4 slave memory in Verilog
(``fpqvar_sim_dram``) and the harness (``fpqvar_sim_top``) that puts it behind the
accelerator's ``m_axi`` port, so that a co-simulation runs no Python per clock cycle.

The harness has every port of the emitted top (``clk``, ``rst``, ``m_axi__*``,
``s_axil__*``, ``irq``) plus a few of its own, so one Verilator build serves both kinds of
test:

* ``dram_ext = 1``: ``m_axi`` is wired to the harness ports, as on the bare top; a
  cocotbext-axi ``AxiRam`` there checks the protocol (``sim/test_top.py``).
* ``dram_ext = 0``: ``m_axi`` goes to ``fpqvar_sim_dram``; the harness's own ``m_axi``
  inputs are ignored. ``dram_latency`` (cycles from an accepted read address to its first
  data beat, pipelined over up to :data:`QUEUE` bursts), ``dram_write_latency`` (cycles from a
  write burst's last beat until its B response may be shown; up to :data:`B_QUEUE`
  responses owed) and ``dram_stall`` (each of
  ARREADY, RVALID, AWREADY, WREADY and BVALID is withheld in a cycle with probability
  ``dram_stall/256``; ``dram_seed`` seeds the generator) are inputs, set from Python at
  run time. ``dram_errors`` counts the protocol errors the model saw (a burst that is not
  INCR of 16-byte beats, one crossing a 4 KiB boundary, WLAST on the wrong beat); an
  access outside the memory is answered SLVERR and is not counted as a protocol error.

The memory (``u_dram.mem``, :data:`DATA_BYTES`-byte words, little-endian byte lanes like
AXI) is public to VPI: :class:`Backdoor` reads and writes it from cocotb in zero simulated
time, between runs.
"""
from __future__ import annotations

from typing import Any

from ..engines import axi

__all__ = ["QUEUE", "B_QUEUE", "DATA_BYTES", "harness_verilog", "Backdoor", "HARNESS_TOP"]

#: bursts each of the read and write address queues holds (as many read bursts as the
#: top keeps in flight, ``Accelerator(max_outstanding=16)``: the memory is not the limit)
QUEUE = 16
#: write responses the memory owes at most (it takes no W beat beyond them; the top's
#: ``max_writes`` = 128)
B_QUEUE = 128
DATA_BYTES = axi.DATA_BYTES
#: module name of the harness (the simulator's top level)
HARNESS_TOP = "fpqvar_sim_top"

_DRAM = r"""
// AXI4 slave memory for simulation (fpqvar_hw.host.simdram). 1-bit IDs, echoed; responses in order;
// INCR bursts of DATA_BITS-bit beats; pipelined read latency and random handshake stalls.
module fpqvar_sim_dram #(
    parameter integer WORDS_LOG2 = 18,
    parameter integer QUEUE_LOG2 = 4,
    parameter integer BQUEUE_LOG2 = 7
) (
    input  wire         clk,
    input  wire         rst,
    input  wire [7:0]   latency,
    input  wire [7:0]   wlatency,
    input  wire [7:0]   stall,
    input  wire [31:0]  seed,
    output reg  [31:0]  errors,
    input  wire         arid, input wire awid, output reg rid, output reg bid,
    input  wire [31:0]  araddr, input wire [7:0] arlen, input wire [2:0] arsize,
    input  wire [1:0]   arburst, input wire arvalid, output wire arready,
    output reg  [127:0] rdata, output reg [1:0] rresp, output reg rlast, output reg rvalid,
    input  wire         rready,
    input  wire [31:0]  awaddr, input wire [7:0] awlen, input wire [2:0] awsize,
    input  wire [1:0]   awburst, input wire awvalid, output wire awready,
    input  wire [127:0] wdata, input wire [15:0] wstrb, input wire wlast, input wire wvalid,
    output wire         wready,
    output reg  [1:0]   bresp, output reg bvalid, input wire bready
);
    localparam integer WORDS = 1 << WORDS_LOG2;
    localparam integer Q = 1 << QUEUE_LOG2;
    reg [127:0] mem [0:WORDS-1] /*verilator public_flat_rw*/;

    // random stalls: xorshift64, one byte per handshake compared with `stall`
    reg [63:0] rng;
    wire [63:0] rng_a = rng ^ (rng << 13);
    wire [63:0] rng_b = rng_a ^ (rng_a >> 7);
    wire [63:0] rng_next = rng_b ^ (rng_b << 17);
    wire st_ar = rng[7:0] < stall, st_r = rng[15:8] < stall, st_aw = rng[23:16] < stall,
         st_w = rng[31:24] < stall, st_b = rng[39:32] < stall;
    reg [31:0] now;

    // a burst is legal when INCR, 16-byte beats, within one 4 KiB page (the start may be unaligned:
    // beats are whole words, the master's strobes and byte offsets select within them)
    function automatic legal(input [31:0] addr, input [7:0] len, input [2:0] size, input [1:0] burst);
        legal = burst == 2'd1 && size == 3'd4 && ({1'b0, addr[11:4]} + {1'b0, len}) < 9'd256;
    endfunction
    function automatic in_range(input [31:0] addr, input [7:0] len);
        in_range = ({4'd0, addr[31:4]} + {24'd0, len}) < WORDS;
    endfunction

    // ---------------------------------------------------------------- read
    reg [31:0] ar_addr [0:Q-1];
    reg [7:0]  ar_len  [0:Q-1];
    reg [31:0] ar_time [0:Q-1];
    reg        ar_ok   [0:Q-1];
    reg        ar_id   [0:Q-1];
    reg [QUEUE_LOG2:0] ar_count;
    reg [QUEUE_LOG2-1:0] ar_head, ar_tail;
    reg        r_active, r_ok, r_id;
    reg [27:0] r_word;
    reg [8:0]  r_left;
    assign arready = !rst && !ar_count[QUEUE_LOG2] && !st_ar;

    // ---------------------------------------------------------------- write
    reg [31:0] aw_addr [0:Q-1];
    reg [7:0]  aw_len  [0:Q-1];
    reg        aw_ok   [0:Q-1];
    reg        aw_id   [0:Q-1];
    reg [QUEUE_LOG2:0] aw_count;
    reg [QUEUE_LOG2-1:0] aw_head, aw_tail;
    reg        w_active, w_ok, w_id;
    reg [27:0] w_word;
    reg [8:0]  w_left;
    // write responses owed, oldest at b_head: each is due `wlatency` cycles after its last beat
    localparam integer BQ = 1 << BQUEUE_LOG2;
    reg [BQUEUE_LOG2:0] b_count;
    reg [BQUEUE_LOG2-1:0] b_head, b_tail, b_next;
    reg        b_err  [0:BQ-1];
    reg        b_ids  [0:BQ-1];
    reg [31:0] b_time [0:BQ-1];
    assign awready = !rst && !aw_count[QUEUE_LOG2] && !st_aw;
    assign wready = !rst && w_active && !b_count[BQUEUE_LOG2] && !st_w;   // < BQ owed

    integer i;
    /* verilator lint_off BLKSEQ */   // the push/pop strobes are this cycle's temporaries
    reg ar_push, ar_pop, aw_push, aw_pop, b_push, b_pop;
    always @(posedge clk) begin
        if (rst) begin
            rng <= {seed, ~seed} | 64'd1;
            now <= 0; errors <= 0;
            ar_count <= 0; ar_head <= 0; ar_tail <= 0; r_active <= 0; rvalid <= 0; rlast <= 0;
            aw_count <= 0; aw_head <= 0; aw_tail <= 0; w_active <= 0; bvalid <= 0;
            b_count <= 0; b_head <= 0; b_tail <= 0;
        end else begin
            rng <= rng_next;
            now <= now + 1;
            // read address queue
            ar_push = arvalid && arready;
            if (ar_push) begin
                ar_addr[ar_tail] <= araddr; ar_len[ar_tail] <= arlen; ar_time[ar_tail] <= now;
                ar_id[ar_tail] <= arid;
                ar_ok[ar_tail] <= legal(araddr, arlen, arsize, arburst) && in_range(araddr, arlen);
                if (!legal(araddr, arlen, arsize, arburst)) errors <= errors + 1;
                ar_tail <= ar_tail + 1;
            end
            // read data: hold an unaccepted beat; else present the next one
            ar_pop = 0;
            if (!rvalid || rready) begin
                if (!r_active && ar_count != 0 && now - ar_time[ar_head] >= {24'd0, latency}) begin
                    ar_pop = 1;
                    if (!st_r) begin
                        rvalid <= 1; rlast <= ar_len[ar_head] == 0; rid <= ar_id[ar_head];
                        rresp <= ar_ok[ar_head] ? 2'd0 : 2'd2;
                        rdata <= ar_ok[ar_head] ? mem[ar_addr[ar_head][WORDS_LOG2+3:4]] : 128'd0;
                        r_active <= ar_len[ar_head] != 0;
                        r_word <= ar_addr[ar_head][31:4] + 28'd1; r_left <= {1'b0, ar_len[ar_head]};
                    end else begin
                        rvalid <= 0;
                        r_active <= 1; r_word <= ar_addr[ar_head][31:4]; r_left <= {1'b0, ar_len[ar_head]} + 1;
                    end
                    r_ok <= ar_ok[ar_head]; r_id <= ar_id[ar_head];
                end else if (r_active && !st_r) begin
                    rvalid <= 1; rlast <= r_left == 1; rid <= r_id;
                    rresp <= r_ok ? 2'd0 : 2'd2;
                    rdata <= r_ok ? mem[r_word[WORDS_LOG2-1:0]] : 128'd0;
                    r_word <= r_word + 1; r_left <= r_left - 1;
                    r_active <= r_left != 1;
                end else begin
                    rvalid <= 0;
                end
            end
            if (ar_pop) ar_head <= ar_head + 1;
            ar_count <= ar_count + (ar_push ? 1 : 0) - (ar_pop ? 1 : 0);

            // write address queue
            aw_push = awvalid && awready;
            if (aw_push) begin
                aw_addr[aw_tail] <= awaddr; aw_len[aw_tail] <= awlen; aw_id[aw_tail] <= awid;
                aw_ok[aw_tail] <= legal(awaddr, awlen, awsize, awburst) && in_range(awaddr, awlen);
                if (!legal(awaddr, awlen, awsize, awburst)) errors <= errors + 1;
                aw_tail <= aw_tail + 1;
            end
            // write data: start the oldest burst, then take its beats
            aw_pop = 0; b_push = 0;
            if (!w_active && aw_count != 0) begin
                aw_pop = 1; w_active <= 1;
                w_word <= aw_addr[aw_head][31:4]; w_left <= {1'b0, aw_len[aw_head]} + 1; w_ok <= aw_ok[aw_head]; w_id <= aw_id[aw_head];
            end else if (wvalid && wready) begin
                if (w_ok)
                    for (i = 0; i < 16; i = i + 1)
                        if (wstrb[i]) mem[w_word[WORDS_LOG2-1:0]][8*i +: 8] <= wdata[8*i +: 8];
                if (wlast != (w_left == 1)) errors <= errors + 1;
                w_word <= w_word + 1; w_left <= w_left - 1;
                if (w_left == 1) begin
                    w_active <= 0; b_push = 1;
                    b_err[b_tail] <= !w_ok; b_ids[b_tail] <= w_id; b_time[b_tail] <= now;
                    b_tail <= b_tail + 1;
                end
            end
            if (aw_pop) aw_head <= aw_head + 1;
            aw_count <= aw_count + (aw_push ? 1 : 0) - (aw_pop ? 1 : 0);
            // write responses, in order: the one shown is b_head's; once it is accepted
            // the next one is shown when it is due
            b_pop = bvalid && bready;
            b_next = b_head + (b_pop ? 1 : 0);
            if (!bvalid || bready) begin
                if (b_count != {{BQUEUE_LOG2{1'b0}}, b_pop} && now - b_time[b_next] >= {24'd0, wlatency}
                        && !st_b) begin
                    bvalid <= 1;
                    bresp <= b_err[b_next] ? 2'd2 : 2'd0;
                    bid <= b_ids[b_next];
                end else begin
                    bvalid <= 0;
                end
            end
            if (b_pop) b_head <= b_next;
            b_count <= b_count + (b_push ? 1 : 0) - (b_pop ? 1 : 0);
        end
    end
    /* verilator lint_on BLKSEQ */
endmodule
"""


def harness_verilog(component: Any, *, top: str = "top", words_log2: int = 18) -> str:
    """Verilog of ``fpqvar_sim_dram`` and of the harness ``fpqvar_sim_top`` around the emitted
    module ``top`` of ``component`` (e.g. an :class:`fpqvar_hw.engines.top.Accelerator`: any
    component with an ``m_axi`` port of :class:`fpqvar_hw.engines.axi.AXI4Signature`; its
    ports are read from its signature). ``words_log2``: the memory holds ``2**words_log2`` words of
    :data:`DATA_BYTES` bytes."""
    if not 4 <= words_log2 <= 24:
        raise ValueError(f"words_log2 must be 4..24 (16 words .. 256 MiB), got {words_log2!r}")
    ports = [("clk", "In", 1), ("rst", "In", 1)]
    ports += [("__".join(map(str, path)), "Out" if member.flow.name == "Out" else "In", len(value))
              for path, member, value in component.signature.flatten(component)]
    dram = {n[len("m_axi__"):]: (d, w) for n, d, w in ports if n.startswith("m_axi__")}
    for needed in ("arid", "awid", "rid", "bid", "araddr", "arlen", "arsize", "arburst", "arvalid", "rready", "awaddr", "awlen", "awsize",
                   "awburst", "awvalid", "wdata", "wstrb", "wlast", "wvalid", "bready", "arready", "rdata",
                   "rresp", "rlast", "rvalid", "awready", "wready", "bresp", "bvalid"):
        if needed not in dram:
            raise ValueError(f"the top has no m_axi__{needed} port; fpqvar_sim_dram cannot serve it")
    for field in ("arid", "awid", "rid", "bid"):
        if dram[field][1] != 1:
            raise ValueError(f"fpqvar_sim_dram has 1-bit IDs; the top's m_axi__{field} has {dram[field][1]}")

    def decl(direction: str, width: int, name: str) -> str:
        return f"    {direction} wire {f'[{width - 1}:0] ' if width > 1 else ''}{name}"

    lines = [f"module {HARNESS_TOP} ("]
    lines += [decl("input" if d == "In" else "output", w, n) + "," for n, d, w in ports]
    lines += [decl("input", 1, "dram_ext") + ",", decl("input", 8, "dram_latency") + ",",
              decl("input", 8, "dram_write_latency") + ",",
              decl("input", 8, "dram_stall") + ",", decl("input", 32, "dram_seed") + ",",
              decl("output", 32, "dram_errors"), ");"]
    body, conns, dconns = [], [], []
    for n, d, w in ports:
        if not n.startswith("m_axi__"):
            conns.append(f".{n}({n})")
            continue
        field = n[len("m_axi__"):]
        body.append(f"    wire {f'[{w - 1}:0] ' if w > 1 else ''}acc_{field};")
        conns.append(f".{n}(acc_{field})")
        if d == "Out":          # driven by the accelerator: mirrored on the harness port
            body.append(f"    assign {n} = acc_{field};")
        else:                   # driven by the slave: the harness port or the model
            body.append(f"    wire {f'[{w - 1}:0] ' if w > 1 else ''}dram_{field};")
            body.append(f"    assign acc_{field} = dram_ext ? {n} : dram_{field};")
    for field in ("arid", "awid", "araddr", "arlen", "arsize", "arburst", "rready", "awaddr", "awlen", "awsize",
                  "awburst", "wdata", "wstrb", "wlast", "bready"):
        dconns.append(f".{field}(acc_{field})")
    for field in ("arvalid", "awvalid", "wvalid"):     # no traffic reaches the model when external
        dconns.append(f".{field}(acc_{field} & ~dram_ext)")
    for field in ("arready", "rid", "rdata", "rresp", "rlast", "rvalid", "awready", "wready", "bid", "bresp",
                  "bvalid"):
        dconns.append(f".{field}(dram_{field})")
    lines += body
    lines.append(f"    {top} u_acc ({', '.join(conns)});")
    lines.append(f"    fpqvar_sim_dram #(.WORDS_LOG2({int(words_log2)})) u_dram (.clk(clk), .rst(rst), "
                 ".latency(dram_latency), .wlatency(dram_write_latency), .stall(dram_stall), .seed(dram_seed), .errors(dram_errors), "
                 + ", ".join(dconns) + ");")
    lines.append("endmodule")
    return _DRAM + "\n" + "\n".join(lines) + "\n"


class Backdoor:
    """Zero-time access to ``fpqvar_sim_dram``'s memory from a cocotb test (``dut`` is the
    harness): byte-granular reads and writes over :data:`DATA_BYTES`-byte words."""

    def __init__(self, dut: Any) -> None:
        self.mem = dut.u_dram.mem
        self.size = len(self.mem) * DATA_BYTES

    def _check(self, addr: int, n: int) -> None:
        if addr < 0 or n < 0 or addr + n > self.size:
            raise ValueError(f"DRAM access [0x{addr:x}, 0x{addr + n:x}) outside the simulated "
                             f"memory of {self.size} bytes")

    def _word(self, i: int) -> bytes:
        return int(self.mem[i].value).to_bytes(DATA_BYTES, "little")

    def write(self, addr: int, data: bytes) -> None:
        from cocotb.handle import Immediate

        data = bytes(data)
        self._check(addr, len(data))
        pos = 0
        while pos < len(data):
            word, off = divmod(addr + pos, DATA_BYTES)
            take = min(DATA_BYTES - off, len(data) - pos)
            if take == DATA_BYTES:
                chunk = data[pos:pos + take]
            else:
                old = bytearray(self._word(word))
                old[off:off + take] = data[pos:pos + take]
                chunk = bytes(old)
            self.mem[word].value = Immediate(int.from_bytes(chunk, "little"))
            pos += take

    def read(self, addr: int, n: int) -> bytes:
        self._check(addr, n)
        if n == 0:
            return b""
        first, last = addr // DATA_BYTES, (addr + n - 1) // DATA_BYTES
        raw = b"".join(self._word(i) for i in range(first, last + 1))
        off = addr - first * DATA_BYTES
        return raw[off:off + n]
