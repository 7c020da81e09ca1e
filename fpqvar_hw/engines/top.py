"""The accelerator top: controller, matrix engine, vector engine, one AXI4 master.

``docs/top.md`` is the contract.  Structure::

    s_axil --> Controller --cmd/busy/error/abort--> MatrixEngine, VectorEngine
                   | fetch (ReadClient)                 | rd_* (ReadClient), wr (WriteClient)
                   v                                    v
               ReadArbiter (fetch + every engine rd_*)  WriteArbiter (engine wr ports)
                   \\________________ m_axi (AXI4, single ID) ________________/

Ports: ``m_axi`` (``Out(axi.AXI4Signature())``: 128-bit data, 32-bit addresses,
one ID), ``s_axil`` (``In(axi.AXILiteSignature())``), ``irq`` (level), and the
implicit ``clk`` / ``rst`` (synchronous, active high) of the ``sync`` domain.

The read clients are arbitrated in the order :attr:`Accelerator.read_clients`
lists them (controller fetch first, then each engine's ``rd_*`` ports in
signature order); round-robin makes the order irrelevant to throughput.
"""
from __future__ import annotations

from amaranth.hdl import Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import axi

from .. import isa
from ..checked import Checked, check
from ..config import AcceleratorConfig, KVFormat
from .control import Controller, EngineLink
from .matrix import MatrixEngine
from .vecengine import VectorEngine

__all__ = ["Accelerator"]


def _client_ports(signature: wiring.Signature, kind: type) -> list[str]:
    """Names of the ports in ``signature`` whose signature is ``kind`` (ReadClient/WriteClient),
    in signature order."""
    return [name for name, member in signature.members.items()
            if member.is_signature and isinstance(member.signature, kind)]


#: The engines the arbiters serve, in arbiter order: (owner, engine class)
_ENGINES = (("matrix", MatrixEngine), ("vector", VectorEngine))


class Accelerator(Checked, wiring.Component):
    """The FPQVAR accelerator (module docstring).

    Parameters (keyword-only except ``cfg``):

    * ``cfg``: :class:`AcceleratorConfig` of the matrix engine (``tm``, ``tn``,
      ``lanes``, ``quant_lanes``, formats); ``kv_format=e2m3fn`` adds the vector
      engine's KV6 hardware (``VectorEngine(kv6=True)``).
    * ``C``: model width (LNMOD row length of the vector engine).
    * ``max_kv``: longest SOFTMAX row (KV length) the vector engine supports.
    * ``max_k``: largest GEMM K (sizes the matrix engine's activation buffer; a
      power of two >= 128; the MLP's fc2 has K = 4*C).
    * ``max_outstanding``: read bursts in flight on the read arbiter (tag FIFO depth).
      Every burst holds a slot for a read round trip, so against a 150-cycle NoC + DDR4
      latency 16 slots carry 16 bursts per ~155 cycles: short bursts (a row of a few
      words, single beats) are bound by it (as-built d16 0.2947 images/s with 8, 0.3002
      with 16 at 64 writes; ``asbuilt.gemm_cost``, ``vec_cost``).
    * ``max_writes``: writes waiting for their B response on the write arbiter (its tag
      FIFO depth).  Every engine write is one 16-byte beat, so with a DRAM that answers
      ``L`` cycles after the beat the write side sustains ``max_writes / (L + 4)`` words
      per cycle (``asbuilt.write_bound``): the transposed V cache's single-element writes
      need more than 64 (d16 0.3002 with 64, 0.3083 with 128, 0.3097 with 256, 16 read
      slots; 8 writes would cost more than half).  A Versal NoC master unit is assumed
      to take 16 reads and 128 writes in flight.
    """

    def __init__(self, cfg: AcceleratorConfig, *, C: int, max_kv: int, max_k: int | None = None,
                 max_outstanding: int = 16, max_writes: int = 128):
        # every parameter, the engines' included, was checked by check_params before this
        # object existed: none of the engines built here is left unused by a refusal
        max_k = self.default_max_k(C) if max_k is None else max_k
        self.cfg, self.C, self.max_kv, self.max_k = cfg, C, max_kv, max_k
        self.max_outstanding, self.max_writes = max_outstanding, max_writes
        self.matrix = MatrixEngine(cfg, max_k=max_k)
        self.vector = VectorEngine(C=C, max_kv=max_kv, P=isa.VEC_P, kv6=self.has_kv6(cfg),
                                   att=(cfg.att_t, cfg.att_n), sm=cfg.sm_lanes)
        self.controller = Controller()
        #: (owner, port) of every read / write client, in arbiter order
        self.read_clients = self.read_client_ports()
        self.write_clients = self.write_client_ports()
        super().__init__({"m_axi": Out(axi.AXI4Signature()),
                          "s_axil": In(axi.AXILiteSignature()),
                          "irq": Out(1)})

    @staticmethod
    def default_max_k(C: int) -> int:
        """``max_k`` when not given: the fc2 reduction ``4*C``, next power of two."""
        return 1 << (4 * C - 1).bit_length()

    @staticmethod
    def has_kv6(cfg: AcceleratorConfig) -> bool:
        """The KV6 hardware (KVQ6, FDOT B_KV6) only when the config keeps the KV cache in e2m3fn."""
        return cfg.kv_format is KVFormat.E2M3

    @classmethod
    def check_params(cls, *, cfg: AcceleratorConfig, C: int, max_kv: int, max_k: int | None,
                     max_outstanding: int, max_writes: int) -> None:
        """Raise ``ValueError``/``TypeError`` for a top that cannot be built: ``C``, then the
        matrix and vector engines' own checks; runs before the object (or any engine) exists
        (:class:`fpqvar_hw.checked.Checked`)."""
        if not isinstance(C, int) or isinstance(C, bool) or C < 1 or C % isa.K_ALIGN:
            raise ValueError(f"C must be a positive multiple of {isa.K_ALIGN} (GEMM K), got {C!r}")
        max_k = cls.default_max_k(C) if max_k is None else max_k
        check(MatrixEngine, cfg, max_k=max_k)
        check(VectorEngine, C=C, max_kv=max_kv, P=isa.VEC_P, kv6=cls.has_kv6(cfg),
              att=(cfg.att_t, cfg.att_n), sm=cfg.sm_lanes)

    @staticmethod
    def read_client_ports() -> list[tuple[str, str]]:
        """(owner, port) of every read client in arbiter order: the controller's fetch, then
        each engine's ``ReadClient`` ports in signature order (from the engines' published
        signatures; nothing is built)."""
        return [("controller", "fetch")] + [
            (owner, name) for owner, eng in _ENGINES
            for name in _client_ports(eng.engine_signature(), axi.ReadClient)]

    @staticmethod
    def write_client_ports() -> list[tuple[str, str]]:
        """(owner, port) of every write client in arbiter order (as :meth:`read_client_ports`)."""
        return [(owner, name) for owner, eng in _ENGINES
                for name in _client_ports(eng.engine_signature(), axi.WriteClient)]

    def elaborate(self, platform):
        m = Module()
        m.submodules.controller = ctrl = self.controller
        m.submodules.matrix = mat = self.matrix
        m.submodules.vector = vec = self.vector
        owners = {"controller": ctrl, "matrix": mat, "vector": vec}
        m.submodules.rd_arb = rd = axi.ReadArbiter(len(self.read_clients),
                                                   max_outstanding=self.max_outstanding)
        m.submodules.wr_arb = wr = axi.WriteArbiter(len(self.write_clients),
                                                    max_outstanding=self.max_writes)
        for i, (owner, port) in enumerate(self.read_clients):
            wiring.connect(m, getattr(owners[owner], port), rd.clients[i])
        for i, (owner, port) in enumerate(self.write_clients):
            wiring.connect(m, getattr(owners[owner], port), wr.clients[i])
        axi.connect_axi4_halves(m, self.m_axi, rd.axi, wr.axi)

        wiring.connect(m, wiring.flipped(self.s_axil), ctrl.s_axil)
        m.d.comb += self.irq.eq(ctrl.irq)
        for link, eng in ((ctrl.gemm, mat), (ctrl.vec, vec)):
            wiring.connect(m, link.cmd, eng.cmd)
            for name, member in EngineLink().members.items():
                if name == "cmd":
                    continue
                if member.flow == Out:
                    m.d.comb += getattr(eng, name).eq(getattr(link, name))
                else:
                    m.d.comb += getattr(link, name).eq(getattr(eng, name))
        return m

    def manifest(self) -> dict:
        """JSON-ready description for build reports: ports, register map, configuration."""
        flat = {}
        for path, member, value in self.signature.flatten(self):
            name = "__".join(str(p) for p in path)
            flat[name] = {"dir": "out" if member.flow == Out else "in",
                          "width": len(Value.cast(value))}
        flat["clk"] = {"dir": "in", "width": 1}
        flat["rst"] = {"dir": "in", "width": 1}
        return {
            "top": "Accelerator",
            "contract": "docs/top.md",
            "ports": flat,
            "registers": {name: f"0x{off:02X}" for name, off in isa.REGS.items()},
            "id": f"0x{isa.REG_ID_VALUE:08X}",
            "axi": {"data_bits": axi.DATA_BITS, "addr_bits": axi.ADDR_BITS, "ids": 1,
                    "max_outstanding": self.max_outstanding, "max_writes": self.max_writes,
                    "read_clients": [f"{o}.{p}" for o, p in self.read_clients],
                    "write_clients": [f"{o}.{p}" for o, p in self.write_clients]},
            "engines": {"matrix": {"tm": self.cfg.tm, "row_sets": self.cfg.row_sets,
                                   "tn": self.cfg.tn, "lanes": self.cfg.lanes,
                                   "quant_lanes": self.cfg.quant_lanes, "max_k": self.max_k},
                        "vector": {"C": self.C, "max_kv": self.max_kv, "P": isa.VEC_P,
                                   "kv6": self.vector.kv6, "att": list(self.vector.att)}},
            "config": self.cfg.as_dict(),
        }
