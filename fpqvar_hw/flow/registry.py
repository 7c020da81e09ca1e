"""The one registry through which hardware units plug into ``build.py``.

A :class:`UnitSpec` says which module holds a unit family, how to instantiate it
for an :class:`~fpqvar_hw.config.AcceleratorConfig` (one or more *variants*,
e.g. a plain and a DFQ quantizer), and how many instances of each variant the
accelerator contains (used to scale per-unit synthesis figures when the top is
too large to synthesise here).  A unit whose module is not in the tree yet is
reported as *pending* with the reason; nothing is faked in its place.

A variant is pending too when the RTL exists but cannot serve the config: the
variant function states what the variant needs (``Variant.needs``, e.g. "the
W6A6 FC2 array cell: int6 x e2m3fn and e2m3fn x e2m3fn halves") and
:func:`resolve_units` *probes* its factory (a :class:`Build`) without building
anything: the registry's own refusals (a format pair without a multiplier) and
the unit's parameter checks (:func:`fpqvar_hw.checked.check`: the class's
``check_params``, which its constructor runs before the object exists) raise
``ValueError`` / ``TypeError`` / ``NotImplementedError``, and the variant is
pending with ``needs`` plus that message.  So the registry never claims a
capability the RTL lacks, a unit that gains one (e.g. e8m0 scales in the
quantizer) is picked up without editing the registry, and no component is built
only to be probed (Amaranth would warn ``UnusedElaboratable`` for it).

To add a unit: write its module (a ``wiring.Component`` with ``manifest()``, its
parameter checks in ``check_params``: :class:`fpqvar_hw.checked.Checked`), then
append one :class:`UnitSpec` to :data:`UNITS` whose ``variants`` function maps
the config onto a :class:`Build` of the constructor.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..checked import check
from ..config import AcceleratorConfig, ElementFormat, Rotation

__all__ = ["Build", "Variant", "UnitSpec", "UNITS", "Resolved", "resolve_units", "unit_names",
           "probe", "TopShape", "top_shape", "DEFAULT_MODEL", "TOP_INSTANCE"]

#: The model whose width the accelerator top is built for unless ``build.py --model`` says
#: otherwise (the vector engine's LayerNorm is built for rows of exactly C elements).
DEFAULT_MODEL = "d16"
#: Module name of the emitted accelerator top (``rtl/fpqvar_top.v``, the Vivado IP's top).
TOP_INSTANCE = "fpqvar_top"


@dataclass(frozen=True)
class TopShape:
    """What the top is built for besides the config: the model's width ``C`` (LNMOD row
    length) and its longest KV length ``max_kv`` (SOFTMAX row)."""

    model: str
    C: int
    max_kv: int


def top_shape(model: str = DEFAULT_MODEL) -> TopShape:
    """:class:`TopShape` of a throughput-model VAR (``fpqvar_hw.flow.perf.MODELS``) or of the
    shipped digits VAR (``perf.DIGITS``: C = 128, longest KV 32; the open ECP5 build's
    size, and the CI build test's: its row buffers are 8-21x smaller than d16's)."""
    from .perf import DIGITS, MODELS
    known = {**MODELS, DIGITS.name: DIGITS}
    if model not in known:
        raise ValueError(f"unknown model {model!r}; models: {', '.join(known)}")
    m = known[model]
    return TopShape(m.name, m.C, m.kv_lengths[-1])


@dataclass(frozen=True)
class Build:
    """A variant's factory ``cls(*args, **kwargs)``, resolved when asked: ``resolve()``
    returns ``(cls, args, kwargs)`` or raises the registry's own refusal.  Calling it
    builds the component; :meth:`check` raises what building would raise for the
    parameters and builds nothing (:func:`fpqvar_hw.checked.check`)."""

    resolve: Callable[[], tuple[Any, tuple, dict]]

    @classmethod
    def of(cls, unit: Any, *args: Any, **kwargs: Any) -> "Build":
        """``unit(*args, **kwargs)``, no refusal of the registry's own."""
        return cls(lambda: (unit, args, kwargs))

    def __call__(self) -> Any:
        unit, args, kwargs = self.resolve()
        return unit(*args, **kwargs)

    def check(self) -> None:
        unit, args, kwargs = self.resolve()
        check(unit, *args, **kwargs)


@dataclass(frozen=True)
class Variant:
    """One instance kind of a unit: its emitted module name, factory and count.

    ``count``: instances of this variant in the accelerator.  ``inside``: name of
    the unit that contains these instances (their resources are already part of
    that unit, so totals must not add them again); ``None`` for a top-level unit.
    ``needs``: what this variant must do for the config, in words (used in the
    pending reason when the RTL cannot).  ``pending``: set by
    :func:`resolve_units` when the factory refused the config (the reason).
    """

    instance: str
    factory: Callable[[], Any]
    count: int
    inside: str | None = None
    params: dict = field(default_factory=dict)
    needs: str = ""
    pending: str | None = None


@dataclass(frozen=True)
class UnitSpec:
    """A unit family: registry name, module path and the config -> variants mapping."""

    name: str
    module: str
    role: str
    variants: Callable[..., list[Variant]]
    is_top: bool = False
    #: ``variants(mod, config, shape)`` (a :class:`TopShape`) instead of ``variants(mod, config)``
    uses_shape: bool = False


@dataclass(frozen=True)
class Resolved:
    """A unit after resolution: ``variants`` (empty when the whole unit is pending) and
    the unit's ``pending`` reason.  Individual variants may be pending on their own
    (:attr:`Variant.pending`); :attr:`ready` are the ones to emit."""

    spec: UnitSpec
    variants: tuple[Variant, ...]
    pending: str | None

    @property
    def ready(self) -> tuple[Variant, ...]:
        return tuple(v for v in self.variants if v.pending is None)

    @property
    def pending_variants(self) -> dict[str, str]:
        return {v.instance: v.pending for v in self.variants if v.pending is not None}


def _kw(cls: Any, **candidates: Any) -> dict:
    """Keep only the keyword arguments ``cls`` accepts (constructors differ per unit)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return candidates
    return {k: v for k, v in candidates.items() if k in params}


def _fmt(f: ElementFormat) -> str:
    return f.value


def _act_formats(config: AcceleratorConfig) -> list[ElementFormat]:
    """Distinct activation formats the quantizer path must produce, in layer order."""
    out: list[ElementFormat] = []
    for layer in ("qkv", "proj", "fc1", "fc2"):
        f = config.act_format(layer)
        if f not in out:
            out.append(f)
    return out


def _find_class(mod: Any, names: tuple[str, ...]) -> Any:
    for n in names:
        if hasattr(mod, n):
            return getattr(mod, n)
    raise LookupError(f"{mod.__name__} defines none of {', '.join(names)}")


def _quantizer_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """One Quantizer per distinct activation format (plain formats share one instance)."""
    out = []
    for f in _act_formats(c):
        kw = {"format": f.value, "group_size": c.group_size, "lanes": c.quant_lanes,
              "scale_format": c.scale_format.value}
        sf = "" if c.scale_format.value == "fp16" else f"_{c.scale_format.value}"
        out.append(Variant(f"quantizer_{f.value}_g{c.group_size}_l{c.quant_lanes}{sf}",
                           Build.of(mod.Quantizer, **kw), 1, None, kw,
                           needs=f"{f.value} codes with {c.scale_format} scales"))
    return out


def _hadamard_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """One GroupHadamard (128-groups) at the quantizer path's width, when GHT is on."""
    if c.rotation is not Rotation.GHT:
        return []
    kw = {"lanes": c.quant_lanes, "group_size": 128}
    return [Variant(f"hadamard_l{c.quant_lanes}", Build.of(mod.GroupHadamard, **kw), 1, None, kw)]


def _operand_pairs(c: AcceleratorConfig) -> list[tuple[ElementFormat, ElementFormat]]:
    """Distinct (activation, weight) format pairs of the four GEMMs, DFQ split into grids."""
    pairs: list[tuple[ElementFormat, ElementFormat]] = []
    for layer in ("qkv", "proj", "fc1", "fc2"):
        p = (c.act_format(layer), c.weight_format(layer))
        if p not in pairs:
            pairs.append(p)
    return pairs


def _mul_pairs(c: AcceleratorConfig) -> list[tuple[str, str]]:
    """Distinct (activation grid, weight grid) registry-name pairs the array multiplies.

    DFQ activations contribute one pair per grid; a layer wider than the array's
    native width (LiteVAR's int8 FC2 input on an int4 array) is decomposed into
    native-width passes and adds no pair of its own.
    """
    native = max(c.qkv_act.bits, c.qkv_weight.bits)
    pairs: list[tuple[str, str]] = []
    for a, w in _operand_pairs(c):
        if a.is_integer and w.is_integer and max(a.bits, w.bits) > native:
            a, w = c.qkv_act, c.qkv_weight
        for ga in a.registry_names:
            for gw in w.registry_names:
                if (ga, gw) not in pairs:
                    pairs.append((ga, gw))
    return pairs


def _multiplier_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    pair_enum = mod.MulPair
    variant_enum = mod.MulVariant
    by_value = {p.value: p for p in pair_enum}
    out = []
    n = c.tm * c.tn * c.lanes
    dfq6_neg = ElementFormat.DFQ6.registry_names[0]
    for ga, gw in _mul_pairs(c):
        def make(ga=ga, gw=gw):
            if (ga, gw) not in by_value:
                raise ValueError(f"no multiplier for {ga} x {gw} in {mod.__name__}.MulPair")
            pair = by_value[(ga, gw)]
            var = variant_enum.DSP if pair.fmt_a.bits > 4 and not pair.is_float \
                else variant_enum.LUT
            return mod.Multiplier, (), {"pair": pair, "variant": var}
        needs = (f"the dfq6 negative half ({ga} codes 0..31 x {gw} weights)" if ga == dfq6_neg
                 and ElementFormat.DFQ6 in _act_formats(c) else f"{ga} x {gw} products")
        out.append(Variant(f"multiplier_{ga}_{gw}", Build(make), n, "dot", {"pair": f"{ga} x {gw}"},
                           needs=needs))
    return out


def _dot_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """One GroupDot per distinct operand pair; the array cell (count tm*tn) is the DFQ-FP4
    variant when FC2 uses it (it holds both grids' adder trees), else the first pair."""
    from ..units.multiplier import MulPair, MulVariant
    by_value = {p.value: p for p in MulPair}
    native = max(c.qkv_act.bits, c.qkv_weight.bits)
    specs: list[tuple[str, dict]] = []
    for a, w in _operand_pairs(c):
        if a.is_integer and w.is_integer and max(a.bits, w.bits) > native:
            continue          # runs as native-width passes on the same array
        dfq = a is ElementFormat.DFQ4
        key = ("e2m1fn", w.value) if dfq else (a.value, w.value)
        name = f"dot_{a.value}_{w.value}_g{c.group_size}_l{c.lanes}"
        specs.append((name, {"key": key, "dfq": dfq, "dual": a.is_dual}))
    # The array cell (count tm*tn) is the DFQ-FP4 cell when FC2 uses it (it holds both grids'
    # trees).  A dfq6 cell has no RTL (pending, below), so a W6A6 array is counted as its
    # plain e2m3fn x e2m3fn cells and the missing int6 tree is listed as not included.
    cell = next((i for i, (_, sp) in enumerate(specs) if sp["dfq"]), 0)
    params = inspect.signature(mod.GroupDot).parameters
    takes_scale_format = "scale_format" in params
    # The matrix engine's cell serves the plain e2m1fn layers and the DFQ-FP4 FC2 with one
    # dual-mode unit (GroupDot dual=True): count that cell when the RTL has it.
    plain_too = any(a is ElementFormat.E2M1 and w is ElementFormat.E2M1 for a, w in _operand_pairs(c))
    if "dual" in params and plain_too and specs[cell][1]["dfq"]:
        name, sp = specs[cell]
        specs[cell] = (name.replace("dot_", "dot_dual_", 1), {**sp, "dual_cell": True})
        # the plain e2m1fn cell is then not in the design: do not emit or synthesise it
        specs = [x for x in specs if x[1]["dfq"] or x[1]["key"] != ("e2m1fn", "e2m1fn")]
        cell = next(i for i, (_, sp) in enumerate(specs) if sp.get("dual_cell"))
    out = []
    for i, (name, sp) in enumerate(specs):
        def make(sp=sp):
            if c.scale_format.value != "fp16" and not takes_scale_format:
                raise ValueError(f"{mod.__name__}.GroupDot has FP16 scale ports (s_a, s_w); "
                                 f"scale_format={c.scale_format} is not implemented in RTL")
            if sp["dual"] and not sp["dfq"]:
                raise ValueError(f"{mod.__name__}.GroupDot's DFQ mode is DFQ-FP4 only (dfq=True: "
                                 "e1m2fn / e2m1fn halves on e2m1fn weights)")
            if sp["key"] not in by_value:
                raise ValueError(f"no multiplier pair {sp['key'][0]} x {sp['key'][1]}")
            pair = by_value[sp["key"]]
            var = MulVariant.DSP if pair.fmt_a.bits > 4 and not pair.is_float else MulVariant.LUT
            kw = {"scale_format": c.scale_format.value} if takes_scale_format else {}
            if sp.get("dual_cell"):
                kw["dual"] = True
            if "interleave" in params:
                # the planned array interleaves rows in each cell so that its pipelined
                # accumulator takes a group every group_size/lanes beats (the v1 matrix
                # engine feeds one output at a time: MatrixEngine.cell_params, interleave 1)
                kw["interleave"] = mod.GroupDot.interleave_for(group_size=c.group_size,
                                                               lanes=c.lanes)
            return mod.GroupDot, (), dict(pair=pair, group_size=c.group_size, lanes=c.lanes,
                                          variant=var, dfq=sp["dfq"], **kw)
        a, w = sp["key"]
        if sp["dual"] and not sp["dfq"]:
            needs = ("the W6A6 FC2 cell (dfq6 activations: int6 x e2m3fn and e2m3fn x e2m3fn "
                     "halves, two scales; the array is counted as plain cells without it)")
        else:
            needs = f"{a} x {w} group dot products with {c.scale_format} scales"
        if sp.get("dual_cell"):
            needs = "the matrix engine's dual-mode cell (plain e2m1fn and DFQ-FP4 modes)"
        out.append(Variant(name, Build(make), c.tm * c.tn if i == cell else 0, None,
                           {"pair": " x ".join(sp["key"]), "dfq": sp["dfq"],
                            "dual": bool(sp.get("dual_cell")),
                            "group_size": c.group_size, "lanes": c.lanes}, needs=needs))
    # Dot cell v2 (GroupDotV2, issue 14): one whole group per beat, pipelined FP32 tail with
    # interleaved accumulators.  Reported beside the matrix engine's GroupDot cells (count 0:
    # the v1 matrix engine still instantiates GroupDot).
    if hasattr(mod, "GroupDotV2"):
        for key, dfq in dict.fromkeys((sp["key"], sp["dfq"]) for _, sp in specs
                                      if not (sp["dual"] and not sp["dfq"])):
            def make2(key=key, dfq=dfq):
                if c.scale_format.value != "fp16":
                    raise ValueError(f"{mod.__name__}.GroupDotV2 has FP16 scale ports (s_a, s_w); "
                                     f"scale_format={c.scale_format} is not implemented in RTL")
                if key not in by_value:
                    raise ValueError(f"no multiplier pair {key[0]} x {key[1]}")
                pair = by_value[key]
                var = MulVariant.DSP if pair.fmt_a.bits > 4 and not pair.is_float else MulVariant.LUT
                return mod.GroupDotV2, (), dict(pair=pair, group_size=c.group_size, variant=var,
                                                dfq=dfq)
            tag = "dfq4_e2m1fn" if dfq else f"{key[0]}_{key[1]}"
            out.append(Variant(f"dot2_{tag}_g{c.group_size}", Build(make2), 0, None,
                               {"pair": " x ".join(key), "dfq": dfq, "group_size": c.group_size,
                                "lanes": c.group_size,
                                "interleave": mod.GroupDotV2.loop_length()},
                               needs="dot cell v2 (one group per beat; not yet in the matrix engine)"))
    return out


#: Element-wise FP32 function pipelines of the vector unit and how many the accelerator
#: holds: per-element functions once per vector lane, per-row functions once.
_VECTOR_FUNCS = (("gelu", "lanes"), ("exp", "lanes"), ("rsqrt", 1), ("reciprocal", 1))


def _vector_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """One-lane Elementwise pipelines (synthesised once, counted per lane)."""
    out = []
    for fname, per in _VECTOR_FUNCS:
        func = mod.Func(fname)
        count = c.vector_lanes if per == "lanes" else per
        out.append(Variant(f"vector_{fname}", Build.of(mod.Elementwise, func, lanes=1),
                           count, None, {"func": fname, "lanes": 1}))
    return out


def _attention_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """Attention runs on the vector engine (FDOT / SOFTMAX instructions, docs/top.md): its
    attention array and Softmax unit are inside fpqvar_top.v.  The planned array of
    ``attn_macs`` multiply-adds per cycle, which the throughput model assumes, is not built."""
    softmax = _find_class(mod, ("Softmax",))
    raise NotImplementedError(
        f"no attention array of {c.attn_macs} multiply-adds/cycle (the throughput model's "
        f"figure); the RTL top runs attention FDOTs on the vector engine's AttentionArray of "
        f"{c.att_t} x {c.att_n} FP32 MAC lanes and SOFTMAX on its softmax array of "
        f"{c.sm_lanes} {softmax.__name__} lanes (one element per cycle each), inside fpqvar_top.v")


def _top_variants(mod: Any, c: AcceleratorConfig, shape: TopShape) -> list[Variant]:
    """The accelerator top (``Accelerator(cfg, C=..., max_kv=...)``, docs/top.md), built for
    ``shape``; emitted as :data:`TOP_INSTANCE` (ports m_axi, s_axil, irq, clk, rst)."""
    cls = _find_class(mod, ("Accelerator", "FPQVARTop", "Top"))
    kw = _kw(cls, C=shape.C, max_kv=shape.max_kv)
    return [Variant(TOP_INSTANCE, Build.of(cls, c, **kw), 1, None,
                    {"model": shape.model, **kw},
                    needs=f"the accelerator top for preset {c.preset} and {shape.model} "
                          f"(C={shape.C}, KV up to {shape.max_kv})")]


def _control_variants(mod: Any, c: AcceleratorConfig) -> list[Variant]:
    """The top's controller (register file, instruction fetch, dispatch): one instance."""
    return [Variant("controller", Build.of(mod.Controller), 1, None, {},
                    needs="the AXI4-Lite register file, fetch and dispatch")]


def _arbiter_variants(mod: Any, c: AcceleratorConfig, shape: TopShape) -> list[Variant]:
    """The top's read / write arbiters, sized by the top's client lists (pending until
    ``fpqvar_hw.engines.top`` exists: the client count comes from it)."""
    if importlib.util.find_spec("fpqvar_hw.engines.top") is None:
        raise LookupError("the arbiters' client counts come from fpqvar_hw.engines.top, not in the "
                          "tree yet")
    top_cls = _find_class(importlib.import_module("fpqvar_hw.engines.top"), ("Accelerator",))
    try:
        check(top_cls, c, **_kw(top_cls, C=shape.C, max_kv=shape.max_kv))
    except (ValueError, TypeError, NotImplementedError) as e:
        raise LookupError(f"the top cannot be built for this config ({e})") from None
    # the client lists are class-level facts of the top (its engines' signatures)
    n_rd, n_wr = len(top_cls.read_client_ports()), len(top_cls.write_client_ports())
    return [Variant(f"read_arbiter_{n_rd}", Build.of(mod.ReadArbiter, n_rd), 1, None,
                    {"n_clients": n_rd}, needs="the AXI4 read arbiter"),
            Variant(f"write_arbiter_{n_wr}", Build.of(mod.WriteArbiter, n_wr), 1, None,
                    {"n_clients": n_wr}, needs="the AXI4 write arbiter")]


UNITS: tuple[UnitSpec, ...] = (
    UnitSpec("quantizer", "fpqvar_hw.units.quantizer", "LUT-based group quantizer (FP16 in, codes "
             "+ scale out)", _quantizer_variants),
    UnitSpec("hadamard", "fpqvar_hw.units.hadamard", "group Hadamard (fast Walsh-Hadamard, 128)",
             _hadamard_variants),
    UnitSpec("multiplier", "fpqvar_hw.units.multiplier", "LUT-based code x code multiplier",
             _multiplier_variants),
    UnitSpec("dot", "fpqvar_hw.units.dot", "group dot-product unit (matrix-engine cell)",
             _dot_variants),
    UnitSpec("vector", "fpqvar_hw.units.vector", "FP32 vector unit: element-wise GELU/exp/rsqrt/"
             "reciprocal pipelines",
             _vector_variants),
    UnitSpec("attention", "fpqvar_hw.units.vector", "attention (QK^T, softmax, PV)",
             _attention_variants),
    UnitSpec("control", "fpqvar_hw.engines.control", "controller: AXI4-Lite registers, instruction "
             "fetch, dispatch", _control_variants),
    UnitSpec("arbiters", "fpqvar_hw.engines.axi", "AXI4 read/write arbiters (engine clients -> m_axi)",
             _arbiter_variants, uses_shape=True),
    UnitSpec("top", "fpqvar_hw.engines.top", "accelerator top (controller, matrix and vector engines, "
             "one AXI4 master)", _top_variants, is_top=True, uses_shape=True),
)


def unit_names() -> tuple[str, ...]:
    return tuple(u.name for u in UNITS)


def resolve_units(config: AcceleratorConfig, units: tuple[UnitSpec, ...] = UNITS, *,
                  shape: TopShape | None = None) -> list[Resolved]:
    """Resolve every registered unit for ``config``.

    A missing module makes the unit *pending* (reason: not in the tree yet); a
    module that exists but cannot serve the config (e.g. a format it does not
    implement) is pending with the unit's own error message.  Errors in a unit
    module's import are not swallowed beyond ``ImportError`` of the module itself.
    ``shape``: what the top is built for (default: :func:`top_shape` of :data:`DEFAULT_MODEL`).
    """
    shape = shape or top_shape()
    out = []
    for spec in units:
        if importlib.util.find_spec(spec.module) is None:
            out.append(Resolved(spec, (), f"{spec.module} is not in the tree yet"))
            continue
        mod = importlib.import_module(spec.module)
        try:
            variants = (spec.variants(mod, config, shape) if spec.uses_shape
                        else spec.variants(mod, config))
        except (LookupError, ValueError, TypeError, NotImplementedError) as e:
            out.append(Resolved(spec, (), f"{spec.module}: {e}"))
            continue
        out.append(Resolved(spec, tuple(probe(v) for v in variants), None))
    return out


def probe(v: Variant) -> Variant:
    """Check ``v``'s parameters without building it (:meth:`Build.check`); a refusal makes
    the variant pending.  A factory that is a plain callable, not a :class:`Build`, can only
    be probed by calling it: the component it returns is never elaborated (Amaranth then
    warns ``UnusedElaboratable`` for it), so every factory should be a :class:`Build`."""
    if v.pending is not None:
        return v
    try:
        if isinstance(v.factory, Build):
            v.factory.check()
        else:
            v.factory()
    except (ValueError, TypeError, NotImplementedError) as e:
        what = f"{v.needs}: " if v.needs else ""
        return replace(v, pending=f"{what}{type(e).__name__}: {e}")
    return v
