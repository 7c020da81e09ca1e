"""Host compiler: quantized model package -> DRAM image + one program per scale step.

Imports numpy, the package reader (:mod:`fpqvar_quant.ptq.package`) and the
golden block's parameter extraction (:func:`fpqvar_quant.golden.block.block_params`,
numpy only) -- never torch (``tests/test_compiler.py`` checks it).  Encodings
come from :mod:`fpqvar_hw.isa`; the program of a step computes exactly
:func:`fpqvar_quant.golden.block.model_step` (``docs/top.md``, "What a block
step compiles to"; ``docs/numerics.md`` section 5).

Usage (the driver)::

    comp = Compiler(pkg, cfg, rows=2 * B)          # rows = 2B with CFG
    for addr, data in comp.image(): write(addr, data)             # once
    for b in range(comp.depth): write(*comp.encode_adaln(b, ada[b]))  # per image batch
    for step in range(comp.steps):
        write(comp.x_addr, comp.encode_x(x))                          # [R, L, C] FP32
        write(comp.prog_addr, comp.program(step)); start(comp.prog_addr)
        x = comp.decode_x(read(comp.x_addr, comp.x_bytes(step)), step)

DRAM layout (every region 128-byte aligned, from ``dram_base`` upward; the
addresses are attributes, :meth:`regions` lists them):

* static (:meth:`image`, ``[dram_base, static_end)``): Hadamard sign bits (16
  bytes), a zero FP32 word (the keys' temperature); per block ``b`` and layer:
  packed codes and scales (:func:`packing.pack_gemm_weights`, Hadamard-folded scales
  from ``golden.block``), FP32 bias padded to ``ceil(N/Tn)*Tn``; per block the
  temperature vector ``t`` (FP32 ``[H]``);
* ``prog_addr``: room for the longest step program (``prog_bytes``);
* per block: adaLN vectors ``[R, 6, C]`` FP32 (written by the driver,
  :meth:`encode_adaln`), the K cache FP16 ``[R, H, L_total, 64]`` (token ``j`` of row
  ``r``, head ``h`` at ``((r*H + h)*L_total + j)*128``: a key's 64 values contiguous, as
  FDOT q.K walks them) and the V cache transposed, FP16 ``[R, H, 64, L_total]`` (value
  ``d`` of token ``j`` at ``((r*H + h)*64 + d)*L_total*2 + j*2``: FDOT p.V walks the
  tokens, so its reads are contiguous bursts rather than one single-beat read per
  token); with a KV6 cache (package KV quantizer e2m3fn, config ``kv_format=e2m3fn``)
  instead K codes ``uint8 [R, H, L_total, 64]`` and V codes ``uint8 [R, H, 64,
  L_total]`` (one byte per element, same orders), each followed by its FP16 scales
  ``[R, H, L_total]`` (at ``((r*H + h)*L_total + j)*2``);
* ``x_addr``: the step's input/output ``x`` ``[R, L, C]`` FP32, dense for the
  step's ``L``;
* scratch (dense for the step's ``L``): ``h`` ``[R*L, C]``, ``qkv`` ``[R*L, 3C]``,
  ``scores`` ``[R*L, H, L_start+L]``, ``attn`` ``[R*L, C]``, ``y`` ``[R*L, C]``,
  ``f`` ``[R*L, hidden]``.

Program of a step: the step plan (:func:`fpqvar_hw.host.plan.step_plan`, shared
with the as-built throughput model), each op compiled by one method here: per
block, three phases over token tiles (:func:`fpqvar_hw.host.plan.tiles`: rows of up to
``tile_tokens`` tokens whole, several per tile, so that both CFG halves and the images of
a batch share a weight pass; longer rows in tiles of ``tile_tokens``; the ops on a row's
own adaLN vectors, caches or attention once per row of the tile): A = LNMOD, GEMM qkv, L2NT q, L2NT k, CVT16 k, CVT16 v
(cache positions ``[L_start + l0, L_start + l1)``; KV6: KVQ6 k, KVQ6 v, and
both FDOTs of B read the codes with B_KV6 and the scales as C); B = FDOT q.K
(one instruction per piece: dims x keys x queries x heads), SOFTMAX, FDOT p.V, GEMM proj,
RESID; C = LNMOD, GEMM fc1, GELU, GEMM fc2, RESID; then HALT.  Within a phase
the tiles' chains are interleaved with a skew of one stage so that the matrix
engine works on tile t+1 while the vector engine finishes tile t.
Sync flags: :func:`assign_sync` (exact byte-range RAW/WAR/WAW against the
instruction that may still run on the other engine).

CLI: ``python -m fpqvar_hw.host.compiler PACKAGE --out DIR [--preset w4a4] [--param k=v]
[--rows 2] [--dram-base 0x0]`` writes ``static.bin``, ``step{i}.bin`` and
``layout.json`` (:func:`write_bundle`) for a board driver; without ``--preset`` the
accelerator configuration is the one that computes the package's PTQ preset
(:func:`fpqvar_hw.config.accelerator_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fpqvar_quant.golden import block as _blk

from .. import isa
from .. import footprints, packing
from ..config import AcceleratorConfig, KVFormat
from ..isa import Gemm, GemmFlag, GemmSubop, Halt, Opcode, Operand, Vec, VecFlag, VecSubop
from .isa_sim import gemm_formats
from .plan import PlanOp, skew, step_plan
from .plan import tiles as _plan_tiles

__all__ = ["Compiler", "assign_sync", "Region", "write_bundle", "main", "V_CACHE_LAYOUT", "TILE_ORDER"]

_ALIGN = 128
_F32 = 4
#: head dim of the attention dataflow (the L2NT row)
HEAD_DIM = isa.L2NT_LEN
#: The V cache's DRAM order: ``"transposed"`` ``[R, H, 64, L_total]`` (since 2026-12-05;
#: ``"rows"`` ``[R, H, L_total, 64]`` before).  Cycle files of the simulated top state the
#: layout of the program they ran (``fpqvar_hw.flow.simcycles``).
V_CACHE_LAYOUT = "transposed"
#: The token tiles (:func:`fpqvar_hw.host.plan.tiles`): ``"span"`` whole rows per tile
#: where they fit (since 2026-12-06; ``"rows"`` one row per tile at most before).  Cycle
#: files state it like the V cache order.
TILE_ORDER = "span"


def _round_up(v: int, a: int = _ALIGN) -> int:
    return -(-v // a) * a


@dataclass(frozen=True)
class Region:
    """A named DRAM region."""

    name: str
    addr: int
    size: int


def assign_sync(instrs: list, footprints: list[footprints.Footprint], *, coarse: bool = True) -> list:
    """``instrs`` with ``sync`` set exactly where needed.

    Each engine runs one instruction at a time, in order, and dispatch is in
    program order, so when instruction ``k`` is dispatched the only instruction
    of the other engine that may still run is the latest one before ``k``, ``i``,
    and only if no instruction in ``[i + 1, k)`` had ``sync`` (a sync waits for
    both engines to be idle; ``i`` itself may be a sync instruction).  ``k`` gets
    ``sync`` when its footprint conflicts with ``i``'s (RAW, WAR or WAW over DRAM
    bytes).  With
    ``coarse=False`` every instruction gets ``sync`` (the hardware treats them so
    anyway).
    """
    out = []
    last_sync = -1
    last_on: dict[Opcode, int] = {}
    for k, ins in enumerate(instrs):
        if isinstance(ins, Halt):
            out.append(ins)
            continue
        other = Opcode.VEC if ins.opcode == Opcode.GEMM else Opcode.GEMM
        i = last_on.get(other)
        need = not coarse or (i is not None and i >= last_sync
                              and footprints[k].conflicts(footprints[i]))
        ins = replace(ins, sync=need)
        if need:
            last_sync = k
        last_on[ins.opcode] = k
        out.append(ins)
    return out


class Compiler:
    """Compile a quantized package for an accelerator config (module docstring).

    ``pkg``: a loaded :class:`fpqvar_quant.ptq.package.QuantizedPackage`;
    ``cfg``: :class:`AcceleratorConfig` (its formats must match the package's);
    ``rows``: R, the rows of every step (2B with CFG); ``dram_base``: first byte
    of the layout (multiple of 128); ``dram_size``: window size (default: the
    layout's size rounded up to 4 KiB; too small raises); ``tile_tokens``:
    tokens per tile (default ``cfg.gemm_rows``: a GEMM's rows fill the matrix engine's row
    sets, one weight pass per tile); ``max_kv``: the build's SOFTMAX limit.
    """

    def __init__(self, pkg, cfg: AcceleratorConfig, rows: int, *, dram_base: int = 0,
                 dram_size: int | None = None, tile_tokens: int | None = None,
                 max_kv: int = isa.MAX_KV_LEN) -> None:
        if not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive int (2 * batch with CFG), got {rows!r}")
        if dram_base % _ALIGN:
            raise ValueError(f"dram_base must be a multiple of {_ALIGN}, got 0x{dram_base:x}")
        self.pkg, self.cfg, self.rows = pkg, cfg, rows
        m = pkg.model
        self.depth, self.C, self.H = int(m["depth"]), int(m["embed_dim"]), int(m["num_heads"])
        self.hidden = int(m["mlp_hidden"])
        self.patch_nums = [int(p) for p in m["patch_nums"]]
        self.step_lens = [p * p for p in self.patch_nums]
        self.steps = len(self.step_lens)
        self.L_total = sum(self.step_lens)
        self.L_max = max(self.step_lens)
        self.tile_tokens = cfg.gemm_rows if tile_tokens is None else int(tile_tokens)
        if self.tile_tokens < 1:
            raise ValueError(f"tile_tokens must be >= 1, got {tile_tokens}")
        if self.L_total > max_kv:
            raise ValueError(f"the model attends over {self.L_total} tokens; the build's SOFTMAX "
                             f"limit is {max_kv} (max_kv)")
        if self.C > isa.MAX_LN_LEN:
            raise ValueError(f"embed_dim {self.C} exceeds the LNMOD row limit {isa.MAX_LN_LEN}")
        self.kv6 = self._kv_format(pkg.manifest.get("kv_cache"), cfg)
        self._check_shapes()
        self.params = [_blk.block_params(pkg, b) for b in range(self.depth)]
        self._check_formats()
        self.pack = dict(tn=cfg.tn, lanes=cfg.lanes, bits=cfg.qkv_weight.bits, group=cfg.group_size)
        # (gemm_formats guarantees one weight format for all four layers)
        self._layout(dram_base, dram_size)
        self._programs: dict[int, bytes] = {}

    # ---------------------------------------------------------------- checks
    @staticmethod
    def _kv_format(kv: dict | None, cfg: AcceleratorConfig) -> bool:
        """True for a KV6 cache: the package quantizes K/V with e2m3fn per
        (token, head) group of 64 with FP16 scales (``golden.attention.kv_encode``)
        and the config builds the KV6 hardware; FP16 caches when neither does."""
        want = cfg.kv_format is KVFormat.E2M3
        if kv is None:
            if want:
                raise ValueError(f"the accelerator config {cfg.preset!r} keeps the KV cache in "
                                 "e2m3fn (kv_format=e2m3fn) but the package does not quantize it; "
                                 "use a package from a *-kv6 PTQ preset or kv_format=fp16")
            return False
        got = (kv.get("fmt"), int(kv.get("group_size", 0)), kv.get("scale_format"))
        if got != ("e2m3fn", isa.KV6_GROUP, "fp16"):
            raise ValueError(f"the package quantizes the KV cache as fmt={got[0]}, group "
                             f"{got[1]}, scales {got[2]}; the accelerator's KV6 cache is e2m3fn, "
                             f"group {isa.KV6_GROUP} (one token-head), FP16 scales")
        if not want:
            raise ValueError(f"the package quantizes the KV cache (e2m3fn, KV6) but the accelerator "
                             f"config {cfg.preset!r} has kv_format={cfg.kv_format.value}: build with "
                             "--param kv_format=e2m3fn (KVQ6 / FDOT B_KV6 hardware) or use a package "
                             "without a KV quantizer")
        return True

    def _check_shapes(self) -> None:
        """Every block layer's weight codes and scales, and the per-block float vectors,
        have the shapes the package's model dimensions imply (``ValueError`` naming the
        layer, the shape expected and the shape found)."""
        C, F, H, pkg = self.C, self.hidden, self.H, self.pkg
        want = {"qkv": (3 * C, C), "proj": (C, C), "fc1": (F, C), "fc2": (C, F)}
        where = f"package {getattr(pkg, 'root', '')}".strip()
        dims = f"embed_dim {C}, mlp_hidden {F}, num_heads {H}"
        for b in range(self.depth):
            for role, rel in _blk.LAYER_NAMES.items():
                name = f"blocks.{b}.{rel}"
                lay = pkg.layers.get(name)
                if lay is None:
                    raise ValueError(f"{where}: layer {name} is missing; export the package again")
                for what, arr in (("codes", lay.codes), ("weight", lay.weight_float)):
                    if arr is not None and tuple(arr.shape) != want[role]:
                        raise ValueError(f"{where}: layer {name}: {what} shape {tuple(arr.shape)}, "
                                         f"expected {want[role]} (out, in) for the model's {dims}")
                g = int(lay.meta.get("w_group_size") or 0)
                if lay.codes is not None and lay.scale_bits is not None and g > 0:
                    ws = (want[role][0], want[role][1] // g)
                    if tuple(lay.scale_bits.shape) != ws:
                        raise ValueError(f"{where}: layer {name}: scales shape {tuple(lay.scale_bits.shape)}, "
                                         f"expected {ws} (out, in / group {g})")
            for key, n in ((f"blocks.{b}.attn.q_bias", C), (f"blocks.{b}.attn.v_bias", C),
                           (f"blocks.{b}.attn.scale_mul_1H11", H)):
                v = pkg.float_params.get(key)
                if v is not None and np.asarray(v).size != n:
                    raise ValueError(f"{where}: parameter {key}: {np.asarray(v).size} values, expected "
                                     f"{n} for the model's {dims}")

    def _check_formats(self) -> None:
        cfg = self.cfg
        gemm_formats(cfg)      # the ISA's one-plain-format / FP16-scale limits (ValueError)
        for role in ("qkv", "proj", "fc1", "fc2"):
            lay = getattr(self.params[0], role)
            want_a = cfg.act_format(role).value
            want_w = cfg.weight_format(role).value
            if lay.a_fmt != want_a or lay.w_fmt != want_w:
                raise ValueError(f"layer {role}: the package quantizes a={lay.a_fmt}, w={lay.w_fmt}; "
                                 f"the accelerator config {cfg.preset!r} computes a={want_a}, w={want_w}")
            if lay.group != cfg.group_size:
                raise ValueError(f"layer {role}: package group size {lay.group} != "
                                 f"config group_size {cfg.group_size}")
            if lay.hadamard and (role not in ("qkv", "fc1") or cfg.rotation.value != "ght"):
                raise ValueError(f"layer {role}: the package rotates its input (GHT) but the "
                                 f"accelerator rotates only the qkv/fc1 inputs, and only with "
                                 f"rotation=ght (config: {cfg.rotation})")
        if self.C % isa.K_ALIGN or self.hidden % isa.K_ALIGN:
            raise ValueError(f"embed_dim {self.C} and mlp_hidden {self.hidden} must be multiples "
                             f"of {isa.K_ALIGN}")

    # ---------------------------------------------------------------- layout
    def _layout(self, base: int, size: int | None) -> None:
        regions: list[Region] = []
        static: list[tuple[int, bytes]] = []
        cur = base

        def alloc(name: str, nbytes: int, data: bytes | None = None) -> int:
            nonlocal cur
            addr = cur
            regions.append(Region(name, addr, nbytes))
            if data is not None:
                assert len(data) <= nbytes
                static.append((addr, data))
            cur = _round_up(addr + max(nbytes, 1))
            return addr

        R, C, H, Ls = self.rows, self.C, self.H, self.L_max
        n_prog = max(len(step_plan(self.C, self.H, self.hidden, self.depth, 0, L, self.rows,
                                   self.tile_tokens, kv6=self.kv6, order=TILE_ORDER))
                     for L in self.step_lens) + 1
        signs = self.params[0].signs
        self.signs_addr = alloc("signs", 16, packing.pack_sign_bits(signs) if signs is not None else bytes(16))
        self.zero_addr = alloc("zero", 16, bytes(16))
        self.layer_addr: list[dict[str, dict[str, int]]] = []
        self.temp_addr, self.ada_addr, self.k_addr, self.v_addr = [], [], [], []
        for b, p in enumerate(self.params):
            la = {}
            for role, lay in p.layers().items():
                cb, sb = packing.pack_gemm_weights(lay.codes, lay.scales, **self.pack)
                np_ = packing.gemm_padded_n(lay.n, self.cfg.tn)
                bias = np.zeros(np_, "<f4")
                if lay.bias is not None:
                    bias[:lay.n] = lay.bias
                la[role] = {"w": alloc(f"block{b}.{role}.codes", len(cb), cb),
                            "ws": alloc(f"block{b}.{role}.scales", len(sb), sb),
                            "bias": alloc(f"block{b}.{role}.bias", 4 * np_, bias.tobytes())}
            self.layer_addr.append(la)
            self.temp_addr.append(alloc(f"block{b}.temperature", 4 * H,
                                        p.log_temp.astype("<f4").tobytes()))
        #: end of the static image (everything :meth:`image` writes lies in [dram_base, static_end))
        self.static_end = cur
        self.prog_bytes = n_prog * isa.INSTR_BYTES
        self.prog_addr = alloc("program", self.prog_bytes)
        #: bytes of one cache element (FP16 or an e2m3fn code)
        self.kv_elem = 1 if self.kv6 else 2
        kv_bytes = R * H * self.L_total * HEAD_DIM * self.kv_elem
        self.ks_addr, self.vs_addr = [], []
        for b in range(self.depth):
            self.ada_addr.append(alloc(f"block{b}.adaln", 4 * R * 6 * C))
            self.k_addr.append(alloc(f"block{b}.k_cache", kv_bytes))
            self.v_addr.append(alloc(f"block{b}.v_cache", kv_bytes))
            if self.kv6:
                self.ks_addr.append(alloc(f"block{b}.k_scales", R * H * self.L_total * 2))
                self.vs_addr.append(alloc(f"block{b}.v_scales", R * H * self.L_total * 2))
        self.x_addr = alloc("x", 4 * R * Ls * C)
        self.h_addr = alloc("scratch.h", 4 * R * Ls * C)
        self.qkv_addr = alloc("scratch.qkv", 4 * R * Ls * 3 * C)
        self.scores_addr = alloc("scratch.scores", 4 * R * Ls * H * self.L_total)
        self.attn_addr = alloc("scratch.attn", 4 * R * Ls * C)
        self.y_addr = alloc("scratch.y", 4 * R * Ls * C)
        self.f_addr = alloc("scratch.f", 4 * R * Ls * self.hidden)
        used = _round_up(cur - base, 4096)
        if size is None:
            size = used
        elif size < cur - base:
            raise ValueError(f"dram_size 0x{size:x} is too small: the layout needs 0x{cur - base:x} bytes")
        self.dram_base, self.dram_size = base, size
        self._regions, self._static = regions, static

    def regions(self) -> list[Region]:
        """Every DRAM region, in address order."""
        return list(self._regions)

    def image(self) -> list[tuple[int, bytes]]:
        """Static DRAM contents ``[(addr, bytes)]``: weights, scales, biases, signs,
        temperatures, the zero word.  Caches, adaLN, x and scratch need no initial value."""
        return list(self._static)

    # ------------------------------------------------------------ driver I/O
    def step_tokens(self, step: int) -> tuple[int, int]:
        """``(L_start, L)`` of scale step ``step``."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be in 0..{self.steps - 1}, got {step}")
        return sum(self.step_lens[:step]), self.step_lens[step]

    def x_bytes(self, step: int) -> int:
        return 4 * self.rows * self.step_tokens(step)[1] * self.C

    def encode_x(self, x) -> bytes:
        """``x`` float32 ``[R, L, C]`` -> the bytes to write at :attr:`x_addr`."""
        a = np.asarray(x, dtype=np.float32)
        if a.ndim != 3 or a.shape[0] != self.rows or a.shape[2] != self.C or a.shape[1] not in self.step_lens:
            raise ValueError(f"x must be [R={self.rows}, L (a step's token count), C={self.C}], got {a.shape}")
        return a.astype("<f4").tobytes()

    def decode_x(self, raw: bytes, step: int) -> np.ndarray:
        """The bytes read back from :attr:`x_addr` -> float32 ``[R, L, C]``."""
        L = self.step_tokens(step)[1]
        if len(raw) != self.x_bytes(step):
            raise ValueError(f"expected {self.x_bytes(step)} bytes for step {step}, got {len(raw)}")
        return np.frombuffer(raw, dtype="<f4").reshape(self.rows, L, self.C).astype(np.float32)

    def encode_adaln(self, block: int, ada) -> tuple[int, bytes]:
        """``(addr, bytes)`` writing block ``block``'s adaLN vectors: ``ada`` float32
        ``[R, 6, C]`` in the torch order (gamma1, gamma2, scale1, scale2, shift1,
        shift2), online GALT vectors folded in (``golden.block.device_modulation``)."""
        p = self.params[block]
        a = _blk.device_modulation(ada, p)
        if a.shape[0] != self.rows:
            raise ValueError(f"adaLN vectors must have R={self.rows} rows, got {a.shape[0]}")
        return self.ada_addr[block], a.astype("<f4").tobytes()

    def kv_cache(self, dram_read, block: int) -> tuple[np.ndarray, np.ndarray]:
        """FP16 bits ``(K, V)`` ``[R, H, L_total, 64]`` of a block with an FP16 cache (V
        transposed back from its DRAM order), read with ``dram_read(addr, nbytes) ->
        bytes`` (debugging and tests)."""
        if self.kv6:
            raise ValueError("this program keeps a KV6 cache: read it with kv_entries()")
        return (self._cache(dram_read, self.k_addr[block], "<u2"),
                self._cache(dram_read, self.v_addr[block], "<u2", transposed=True))

    def _cache(self, dram_read, addr: int, dtype: str, transposed: bool = False) -> np.ndarray:
        """A cache ``[R, H, L_total, 64]`` from DRAM (``transposed``: stored ``[R, H, 64,
        L_total]``, the V cache)."""
        R, H, Lt = self.rows, self.H, self.L_total
        n = R * H * Lt * HEAD_DIM * np.dtype(dtype).itemsize
        a = np.frombuffer(dram_read(addr, n), dtype=dtype)
        if transposed:
            return np.ascontiguousarray(a.reshape(R, H, HEAD_DIM, Lt).transpose(0, 1, 3, 2))
        return a.reshape(R, H, Lt, HEAD_DIM)

    def kv_entries(self, dram_read, block: int) -> tuple:
        """The block's caches as ``golden.attention.KVEntry`` ``(K, V)`` (``[R, H,
        L_total, 64]``; kv6: codes ``uint8`` and scales ``uint16 [R, H, L_total]``)."""
        from fpqvar_quant.golden.attention import KVEntry

        if not self.kv6:
            return tuple(KVEntry("fp16", bits=a) for a in self.kv_cache(dram_read, block))
        shape = (self.rows, self.H, self.L_total)
        n = int(np.prod(shape))
        return tuple(KVEntry("kv6", codes=self._cache(dram_read, c, "u1", transposed=t),
                             scales=np.frombuffer(dram_read(s, 2 * n), dtype="<u2").reshape(shape))
                     for c, s, t in ((self.k_addr[block], self.ks_addr[block], False),
                                     (self.v_addr[block], self.vs_addr[block], True)))

    # --------------------------------------------------------------- program
    def program(self, step: int) -> bytes:
        """Instruction bytes of scale step ``step`` (all blocks, then HALT), to be
        written at :attr:`prog_addr`.  Programs depend only on the step (cached)."""
        if step not in self._programs:
            self._programs[step] = isa.encode_program(self.instructions(step))
        return self._programs[step]

    def instructions(self, step: int) -> list:
        """The step's instructions with sync flags (:func:`assign_sync`)."""
        ins = self._instructions(step) + [Halt()]
        fps = [footprints.footprint(i, **self.pack) for i in ins]
        return assign_sync(ins, fps, coarse=self.cfg.coarse_pipeline)

    def plan(self, step: int) -> tuple[PlanOp, ...]:
        """The step's plan (:func:`fpqvar_hw.host.plan.step_plan`): the ops
        :meth:`instructions` emits, in order, at the shape level."""
        L_start, L = self.step_tokens(step)
        return step_plan(self.C, self.H, self.hidden, self.depth, L_start, L, self.rows,
                         self.tile_tokens, kv6=self.kv6, order=TILE_ORDER)

    def _tiles(self, L: int) -> list[tuple[int, int]]:
        return _plan_tiles(L, self.rows, self.tile_tokens, order=TILE_ORDER)

    def _instructions(self, step: int) -> list:
        L_start, L = self.step_tokens(step)
        return [self._instr(op, L_start, L) for op in self.plan(step)]

    def _instr(self, op: PlanOp, L_start: int, L: int):
        """The concrete instruction of one plan op (addresses and strides from the layout)."""
        ins = self._BUILD[op.phase, op.name](self, op.block, L_start, L, op)
        shape = (ins.m, ins.k, ins.n) if isinstance(ins, Gemm) else tuple(ins.n)
        if (ins.opcode, getattr(ins, "subop", None) if isinstance(ins, Vec) else None, shape) != \
                (op.opcode, op.subop, op.shape):
            raise AssertionError(f"plan op {op.phase} {op.name} {op.shape} compiled to {ins}")
        return ins

    # one tile = tokens [l0, l1) of row r; token rows t0.. in the step-dense buffers
    def _gemm(self, b: int, role: str, act: int, act_stride: int, m: int, out: int,
              out_stride: int) -> Gemm:
        lay = getattr(self.params[b], role)
        a = self.layer_addr[b][role]
        flags = (GemmFlag.HAD if lay.hadamard else 0) | (GemmFlag.BIAS if lay.bias is not None else 0)
        return Gemm(act_addr=act, act_stride=act_stride, m=m, k=lay.k, n=lay.n, w_addr=a["w"],
                    ws_addr=a["ws"], bias_addr=a["bias"], out_addr=out, out_stride=out_stride,
                    signs_addr=self.signs_addr, flags=int(flags),
                    subop=int(GemmSubop.DFQ if role == "fc2" else GemmSubop.PLAIN))

    def _ada(self, b: int, r: int, idx: int) -> int:
        return self.ada_addr[b] + (r * 6 + idx) * self.C * _F32

    def _lnmod(self, b: int, r: int, t0: int, n: int, scale: int, shift: int) -> Vec:
        C = self.C
        x = self.x_addr + t0 * C * _F32
        return Vec(subop=VecSubop.LNMOD, n=(C, n, 1, 1), a=Operand(x, 4, C * 4),
                   b=Operand(self._ada(b, r, scale), 4, 0), c=Operand(self._ada(b, r, shift), 4, 0),
                   d=Operand(self.h_addr + t0 * C * _F32, 4, C * 4))

    def _resid(self, b: int, r: int, t0: int, n: int, gamma: int) -> Vec:
        C = self.C
        x = Operand(self.x_addr + t0 * C * _F32, 4, C * 4)
        return Vec(subop=VecSubop.RESID, n=(C, n, 1, 1), a=x, b=Operand(self._ada(b, r, gamma), 4, 0),
                   c=Operand(self.y_addr + t0 * C * _F32, 4, C * 4), d=x)

    # ------------------------------------------------ the plan ops, one method each
    # (b, L_start, L, op): block, the step's tokens, the plan op (token rows [op.t0, op.t1)
    # of the step-dense buffers; a per-row op's row op.row, its tokens l = t - row * L)
    def _a_lnmod(self, b, L_start, L, op) -> Vec:
        return self._lnmod(b, op.row, op.t0, op.tokens, 2, 4)

    def _a_qkv(self, b, L_start, L, op) -> Gemm:
        C, t0 = self.C, op.t0
        row3 = 3 * C * _F32
        return self._gemm(b, "qkv", self.h_addr + t0 * C * _F32, C * _F32, op.tokens,
                          self.qkv_addr + t0 * row3, row3)

    def _qkv_part(self, t0: int, part: int) -> Operand:
        """q (0), k (1) or v (2) of token rows from ``t0``, per head."""
        row3 = 3 * self.C * _F32
        return Operand(self.qkv_addr + t0 * row3 + part * self.C * _F32, 4, HEAD_DIM * _F32, row3)

    def _a_l2nt(self, part: int, b, op) -> Vec:
        t_addr, t_stride = (self.temp_addr[b], 4) if part == 0 else (self.zero_addr, 0)
        a = self._qkv_part(op.t0, part)
        return Vec(subop=VecSubop.L2NT, n=(HEAD_DIM, self.H, op.tokens, 1), a=a,
                   b=Operand(t_addr, 0, t_stride, 0), d=a)

    def _a_cache(self, part: int, b, L_start, L, op) -> Vec:
        """K (1) or V (2) of the op's tokens into row ``op.row``'s cache positions
        ``[L_start + l0, L_start + l1)``."""
        H, n, E, Lt, r = self.H, op.tokens, self.kv_elem, self.L_total, op.row
        l0 = op.t0 - r * L
        head_kv = Lt * HEAD_DIM * E
        tok = r * H * Lt + L_start + l0                 # (row, head 0, first new token)
        a = self._qkv_part(op.t0, part)
        if part == 1:       # K [R, H, L_total, 64]: loops (d, h, token)
            d = Operand(self.k_addr[b] + tok * HEAD_DIM * E, E, head_kv, HEAD_DIM * E)
        else:               # V [R, H, 64, L_total]: value d of a token L_total elements apart
            d = Operand(self.v_addr[b] + (r * H * HEAD_DIM * Lt + L_start + l0) * E, Lt * E,
                        head_kv, E)
        if self.kv6:      # codes + one FP16 scale per (token, head)
            sc = (self.ks_addr if part == 1 else self.vs_addr)[b] + tok * 2
            return Vec(subop=VecSubop.KVQ6, n=(HEAD_DIM, H, n, 1), a=a, d=d,
                       c=Operand(sc, 0, self.L_total * 2, 2))
        return Vec(subop=VecSubop.CVT16, n=(HEAD_DIM, H, n, 1), flags=VecFlag.D_FP16, a=a, d=d)

    def _b_geometry(self, b, L_start, L, op):
        Lk, t0 = L_start + L, op.t0
        E = self.kv_elem
        head_kv = self.L_total * HEAD_DIM * E
        s_tok = self.H * Lk * _F32                      # scores [t, h, j]
        return Lk, t0, E, head_kv, op.row * self.H * head_kv, s_tok, self.scores_addr + t0 * s_tok

    def _b_fdot_qk(self, b, L_start, L, op) -> Vec:
        # scores[t, h, j] = sum_d q[t, h, d] * K[r, h, j, d]     loops (d, j, t, h)
        Lk, t0, E, head_kv, cache_row, s_tok, sc = self._b_geometry(b, L_start, L, op)
        row3 = 3 * self.C * _F32
        head_sc = self.L_total * 2     # KV6: the FP16 scale of key j of head h (C's own strides)
        ks = Operand(self.ks_addr[b] + op.row * self.H * head_sc, 0, 2, 0, head_sc) if self.kv6 \
            else Operand()
        return Vec(subop=VecSubop.FDOT, n=(HEAD_DIM, Lk, op.tokens, self.H),
                   flags=VecFlag.B_KV6 if self.kv6 else VecFlag.B_FP16,
                   a=Operand(self.qkv_addr + t0 * row3, 4, 0, row3, HEAD_DIM * _F32),
                   b=Operand(self.k_addr[b] + cache_row, E, HEAD_DIM * E, 0, head_kv), c=ks,
                   d=Operand(sc, 0, 4, s_tok, Lk * _F32))

    def _b_softmax(self, b, L_start, L, op) -> Vec:
        Lk, _, _, _, _, s_tok, sc = self._b_geometry(b, L_start, L, op)
        return Vec(subop=VecSubop.SOFTMAX, n=(Lk, self.H, op.tokens, 1),
                   a=Operand(sc, 4, Lk * _F32, s_tok), d=Operand(sc, 4, Lk * _F32, s_tok))

    def _b_fdot_pv(self, b, L_start, L, op) -> Vec:
        # attn[t, h*64 + d] = sum_j p[t, h, j] * V[r, h, d, j]   loops (j, d, t, h): the
        # transposed V cache makes the inner loop over tokens contiguous
        Lk, t0, E, head_kv, cache_row, s_tok, sc = self._b_geometry(b, L_start, L, op)
        C = self.C
        head_sc = self.L_total * 2     # KV6: the FP16 scale of value j of head h
        vs = Operand(self.vs_addr[b] + op.row * self.H * head_sc, 2, 0, 0, head_sc) if self.kv6 \
            else Operand()
        return Vec(subop=VecSubop.FDOT, n=(Lk, HEAD_DIM, op.tokens, self.H),
                   flags=VecFlag.B_KV6 if self.kv6 else VecFlag.B_FP16,
                   a=Operand(sc, 4, 0, s_tok, Lk * _F32),
                   b=Operand(self.v_addr[b] + cache_row, E, self.L_total * E, 0, head_kv), c=vs,
                   d=Operand(self.attn_addr + t0 * C * _F32, 0, 4, C * _F32, HEAD_DIM * _F32))

    def _b_proj(self, b, L_start, L, op) -> Gemm:
        C, t0 = self.C, op.t0
        return self._gemm(b, "proj", self.attn_addr + t0 * C * _F32, C * _F32, op.tokens,
                          self.y_addr + t0 * C * _F32, C * _F32)

    def _b_resid(self, b, L_start, L, op) -> Vec:
        return self._resid(b, op.row, op.t0, op.tokens, 0)

    def _c_lnmod(self, b, L_start, L, op) -> Vec:
        return self._lnmod(b, op.row, op.t0, op.tokens, 3, 5)

    def _c_fc1(self, b, L_start, L, op) -> Gemm:
        C, F, t0 = self.C, self.hidden, op.t0
        return self._gemm(b, "fc1", self.h_addr + t0 * C * _F32, C * _F32, op.tokens,
                          self.f_addr + t0 * F * _F32, F * _F32)

    def _c_gelu(self, b, L_start, L, op) -> Vec:
        F = self.hidden
        fo = Operand(self.f_addr + op.t0 * F * _F32, 4, F * _F32)
        return Vec(subop=VecSubop.GELU, n=(F, op.tokens, 1, 1), a=fo, d=fo)

    def _c_fc2(self, b, L_start, L, op) -> Gemm:
        C, F, t0 = self.C, self.hidden, op.t0
        return self._gemm(b, "fc2", self.f_addr + t0 * F * _F32, F * _F32, op.tokens,
                          self.y_addr + t0 * C * _F32, C * _F32)

    def _c_resid(self, b, L_start, L, op) -> Vec:
        return self._resid(b, op.row, op.t0, op.tokens, 1)

    #: (phase, plan op name) -> the method that compiles it
    _BUILD = {
        ("A", "LNMOD"): _a_lnmod,
        ("A", "qkv"): _a_qkv,
        ("A", "L2NT q"): lambda self, b, L_start, L, op: self._a_l2nt(0, b, op),
        ("A", "L2NT k"): lambda self, b, L_start, L, op: self._a_l2nt(1, b, op),
        **{("A", f"{op} {part}"): (lambda p: lambda self, *a: self._a_cache(p, *a))(i)
           for op in ("CVT16", "KVQ6") for i, part in ((1, "k"), (2, "v"))},
        ("B", "FDOT qk"): _b_fdot_qk,
        ("B", "SOFTMAX"): _b_softmax,
        ("B", "FDOT pv"): _b_fdot_pv,
        ("B", "proj"): _b_proj,
        ("B", "RESID"): _b_resid,
        ("C", "LNMOD"): _c_lnmod,
        ("C", "fc1"): _c_fc1,
        ("C", "GELU"): _c_gelu,
        ("C", "fc2"): _c_fc2,
        ("C", "RESID"): _c_resid,
    }


#: per-tile chains interleaved with a skew of one stage (:func:`fpqvar_hw.host.plan.skew`)
_skew = skew


# --------------------------------------------------------------------- CLI
#: ``kind`` of the output marker of a compiled bundle (``fpqvar_quant.safeio``)
BUNDLE_KIND = "compiler-bundle"


def is_bundle_dir(path) -> bool:
    """A bundle written before output markers existed (its ``layout.json`` has the
    compiler's keys): replaceable like a marked one."""
    import json
    from pathlib import Path

    try:
        lay = json.loads((Path(path) / "layout.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(lay, dict) and {"dram_base", "static_end", "steps", "config"} <= set(lay)


def write_bundle(comp: Compiler, out_dir) -> dict:
    """Write what a board driver needs into ``out_dir``: ``static.bin`` (the bytes of
    ``[dram_base, static_end)``, i.e. :meth:`Compiler.image` with zero gaps),
    ``step{i}.bin`` (the programs) and ``layout.json`` (addresses, window, steps,
    regions, config).  Returns the layout dict.

    The bundle is built in a temporary sibling and swapped in whole, so no file of an
    earlier bundle (e.g. ``step9.bin`` of a 10-step model) survives beside a new one; a
    folder that is not a bundle is never replaced (:class:`fpqvar_quant.safeio.UserError`)."""
    from fpqvar_quant.safeio import atomic_output_dir

    with atomic_output_dir(out_dir, BUNDLE_KIND, overwrite=True, own=is_bundle_dir) as out:
        return _write_bundle_files(comp, out)


def _write_bundle_files(comp: Compiler, out) -> dict:
    import json

    static = bytearray(comp.static_end - comp.dram_base)
    for addr, data in comp.image():
        static[addr - comp.dram_base:addr - comp.dram_base + len(data)] = data
    (out / "static.bin").write_bytes(bytes(static))
    steps = []
    for s in range(comp.steps):
        (out / f"step{s}.bin").write_bytes(comp.program(s))
        L_start, L = comp.step_tokens(s)
        steps.append({"step": s, "L_start": L_start, "L": L, "program": f"step{s}.bin",
                      "instructions": len(comp.program(s)) // isa.INSTR_BYTES,
                      "x_bytes": comp.x_bytes(s)})
    layout = {"dram_base": comp.dram_base, "dram_size": comp.dram_size, "static_end": comp.static_end,
              "prog_addr": comp.prog_addr, "prog_bytes": comp.prog_bytes, "x_addr": comp.x_addr,
              "ada_addr": comp.ada_addr, "rows": comp.rows, "embed_dim": comp.C,
              "depth": comp.depth, "tile_tokens": comp.tile_tokens, "steps": steps,
              "kv_cache": "kv6 (e2m3fn codes + FP16 scale per token-head)" if comp.kv6 else "fp16",
              "x_layout": "FP32 little-endian [rows, L, C]",
              "adaln_layout": "FP32 little-endian [rows, 6, C]: gamma1, gamma2, scale1, scale2, shift1, shift2",
              "config": comp.cfg.as_dict(),
              "regions": [{"name": r.name, "addr": r.addr, "size": r.size} for r in comp.regions()]}
    (out / "layout.json").write_text(json.dumps(layout, indent=1))
    return layout


def main(argv: list[str] | None = None) -> int:
    """``python -m fpqvar_hw.host.compiler``: errors print one line (exit 2; ``--debug``
    for the traceback)."""
    from fpqvar_quant.safeio import run_cli

    return run_cli(_main, argv, "python -m fpqvar_hw.host.compiler", errors=(ValueError, KeyError))


def _main(argv: list[str]) -> int:
    import argparse

    from fpqvar_quant.ptq.package import load_package
    from fpqvar_quant.safeio import check_output_dir

    from ..config import accelerator_config, apply_overrides, get_preset, preset_names

    p = argparse.ArgumentParser(prog="python -m fpqvar_hw.host.compiler",
                                description="Compile a quantized model package (fpqvar-quant export) "
                                            "into a DRAM image and one program per scale step.",
                                epilog="Errors print one line (exit status 2); --debug shows the traceback.")
    p.add_argument("package", help="package directory (manifest.json + arrays.npz)")
    p.add_argument("--out", required=True, help="output directory (static.bin, step*.bin, layout.json); "
                   "an existing bundle there is replaced whole, any other folder is refused")
    p.add_argument("--preset", default=None, choices=preset_names(),
                   help="accelerator preset (default: the one that computes the package's PTQ preset, "
                        "fpqvar_hw.config.PTQ_TO_ACCELERATOR)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override an accelerator config field (repeatable), e.g. --param tn=4")
    p.add_argument("--rows", type=int, default=2, help="rows per step, 2 x batch with CFG (default 2)")
    p.add_argument("--dram-base", type=lambda t: int(t, 0), default=0,
                   help="first byte of the layout, multiple of 128 (default 0)")
    p.add_argument("--tile-tokens", type=int, default=None, help="tokens per tile (default: the config's tm)")
    a = p.parse_args(argv)
    check_output_dir(a.out, BUNDLE_KIND, overwrite=True, own=is_bundle_dir)   # before any work
    pkg = load_package(a.package)
    base = get_preset(a.preset) if a.preset else accelerator_config(pkg.manifest["quant_config"]["name"])
    cfg = apply_overrides(base, a.param)
    comp = Compiler(pkg, cfg, a.rows, dram_base=a.dram_base, tile_tokens=a.tile_tokens)
    lay = write_bundle(comp, a.out)
    print(f"{a.out}: static image {lay['static_end'] - lay['dram_base']} bytes at 0x{lay['dram_base']:x}, "
          f"window 0x{lay['dram_size']:x} bytes, {len(lay['steps'])} step programs "
          f"({', '.join(str(s['instructions']) for s in lay['steps'])} instructions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
