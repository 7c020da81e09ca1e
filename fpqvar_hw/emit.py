"""Hierarchical Verilog emission: every distinct module configuration once.

Amaranth elaborates every instance of a component separately and emits one
Verilog module per instance (the full-size top held 9,078 modules, most of them
identical array cells).  This module emits each *distinct* configuration of an
opted-in component once, under a stable name that encodes its class and
constructor parameters, and makes parents instantiate it by name.

Opting in (base layer: a component file only adds a decorator line)::

    from fpqvar_hw.emit import hierarchical

    @hierarchical
    class GroupDot(wiring.Component):
        def __init__(self, *, a_format, w_format, lanes): ...

The decorator records the constructor arguments (the module's key) and wraps
``elaborate``: when the ``platform`` argument is an :class:`Emitter` and the
component is not the one being emitted, ``elaborate`` returns an
``amaranth.hdl.Instance`` of the named module, whose ports are the child's
``wiring`` signature flattened with ``__`` (as Amaranth names a top's ports)
plus ``clk`` / ``rst`` of the ``sync`` domain when the child has them; the
emitter elaborates and converts that configuration once on its own.  With any
other platform (``None`` in the Amaranth simulator, a build platform) nothing
changes, so simulation runs the same Python components.

``ResetInserter`` around a parent (the matrix engine's datapath flush) reaches an
instantiated child: a marker statement on each Instance fragment shows the inserted
reset controls after elaboration, and the instance's ``rst`` becomes
``rst | control...``.  ``EnableInserter`` around an instance cannot be forwarded
through a ``rst`` port and is refused with a message.

Public API: :func:`hierarchical`, :func:`module_name`, :class:`Emitter`,
:func:`emit_verilog` -> :class:`EmittedDesign`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import inspect
import re
from pathlib import Path
from typing import Any

from amaranth.hdl import ClockSignal, Fragment, Instance, ResetSignal, Signal
from amaranth.hdl import _ast, _ir
from amaranth.lib import wiring

__all__ = ["hierarchical", "module_name", "Emitter", "EmittedDesign", "emit_verilog",
           "clear_conversion_cache",
           "EmitError", "verilog_ports", "strip_zero_memory_init",
           "fast_memory_init", "memory_init_sigspec"]


class EmitError(RuntimeError):
    """A design cannot be emitted hierarchically as written (message says why)."""


# ---------------------------------------------------------------------------- naming

def _canon(v: Any) -> str:
    """A deterministic text of a constructor argument (no object ids)."""
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if isinstance(v, (bool, int, float, str)) or v is None:
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_canon(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(f"{_canon(k)}:{_canon(x)}" for k, x in sorted(v.items(),
                                                                        key=lambda kv: repr(kv[0]))) + "}"
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return type(v).__name__ + "(" + ",".join(
            f"{f.name}={_canon(getattr(v, f.name))}" for f in dataclasses.fields(v)) + ")"
    r = repr(v)
    if re.search(r" at 0x[0-9a-f]+", r):
        raise EmitError(f"{type(v).__name__} argument has no stable text ({r}); give it a "
                        f"__repr__ or make it a dataclass/enum to name its module")
    return r


def _short(v: Any) -> str | None:
    """A name fragment for simple arguments (ints, enums, short strings), else None."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, enum.Enum):
        return v.name.lower()
    if isinstance(v, str) and len(v) <= 12:
        return v
    n = getattr(v, "name", None)
    if isinstance(n, str) and len(n) <= 12:
        return n
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def verilog_ports(text: str, module: str) -> list[tuple[str, str | None]]:
    """``(name, direction)`` of every port of ``module`` in the Verilog ``text``, in header
    order: an ANSI header (``input wire [7:0] a, b``: a direction carries over) or a
    non-ANSI one with the directions declared in the body, as Amaranth emits them.
    Escaped names lose their backslash; ``direction`` is ``None`` where none is declared.
    Raises ``ValueError`` when ``text`` does not define ``module``."""
    m = re.search(rf"^\s*module\s+{re.escape(module)}\s*(?:#\s*\(.*?\)\s*)?\((.*?)\)\s*;", text,
                  re.S | re.M)
    if m is None:
        raise ValueError(f"module {module} not found in the Verilog text")
    body = text[m.end():text.find("endmodule", m.end())]

    def name_of(decl: str) -> list[str]:     # the declared name: the last word, ranges removed
        return re.sub(r"\[.*?\]", " ", decl).split()

    ports, direction = [], None
    for item in m.group(1).split(","):
        words = name_of(item)
        if not words:
            continue
        if words[0] in ("input", "output", "inout"):
            direction = words[0]
        ports.append((words[-1].lstrip("\\"), direction))
    declared = {}
    for d, decl in re.findall(r"^\s*(input|output|inout)\b([^;]*);", body, re.M):
        for item in decl.split(","):
            words = name_of(item)
            if words:
                declared[words[-1].lstrip("\\")] = d
    return [(n, d or declared.get(n)) for n, d in ports]


def module_name(component: Any) -> str:
    """The stable Verilog module name of an opted-in component's configuration.

    ``<class in snake case>_<simple arguments>_<8 hex of the full key>``: equal
    configurations give equal names in every process; the hash covers every
    argument, the readable part only the simple ones.
    """
    key = getattr(component, "_fpqvar_emit_key", None)
    if key is None:
        raise EmitError(f"{type(component).__name__} is not opted in (@hierarchical)")
    cls, args, kwargs = key
    text = cls + "|" + _canon(args) + "|" + _canon(kwargs)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    parts = [s for s in (_short(a) for a in args) if s]
    parts += [s for s in (_short(v) for _, v in sorted(kwargs.items())) if s]
    readable = re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts)).strip("_")[:48]
    base = _snake(cls.rsplit(".", 1)[-1])
    return "_".join(p for p in (base, readable, digest) if p)


def hierarchical(cls):
    """Class decorator: emit this component once per configuration under :class:`Emitter`."""
    init, elaborate = cls.__init__, cls.elaborate
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if not hasattr(self, "_fpqvar_emit_key"):    # the outermost decorated class names it
            bound = sig.bind(self, *args, **kwargs)   # defaults filled: equal configs, one key
            bound.apply_defaults()
            self._fpqvar_emit_key = (f"{type(self).__module__}.{type(self).__qualname__}",
                                     tuple(bound.args[1:]), dict(bound.kwargs))
        init(self, *args, **kwargs)

    @functools.wraps(elaborate)
    def wrapped(self, platform):
        if isinstance(platform, Emitter) and platform._root is not self:
            return platform._instance_of(self)
        return elaborate(self, platform)

    cls.__init__ = __init__
    cls.elaborate = wrapped
    return cls


# ---------------------------------------------------------------------------- emitter

def _ports_of(component) -> dict[str, tuple[Any, Any]]:
    """The signature's ports, named as ``amaranth.back.verilog.convert`` names a top's."""
    ports = {}
    for path, member, value in component.signature.flatten(component):
        if isinstance(value, _ast.ValueCastable):
            value = value.as_value()
        if isinstance(value, _ast.Value):
            ports["__".join(map(str, path))] = (
                value, _ir.PortDirection.Input if member.flow == wiring.In
                else _ir.PortDirection.Output)
    return ports


@dataclasses.dataclass(frozen=True)
class EmittedDesign:
    """An emitted file set: one Verilog file per module, and the whole set as one text.

    ``modules``: module name -> Verilog text (each module exactly once; the top last).
    ``digest``: SHA-256 of the whole set (names and texts), 16 hex digits.
    """

    top: str
    modules: dict[str, str]
    instances: dict[str, dict[str, int]]   # module -> {child module: count}

    @property
    def text(self) -> str:
        """Every module once, children before parents (one file for Yosys / Verilator)."""
        return "".join(self.modules.values())

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name, text in self.modules.items():
            h.update(name.encode() + b"\0" + text.encode() + b"\0")
        return h.hexdigest()[:16]

    @property
    def size(self) -> int:
        return sum(len(t.encode()) for t in self.modules.values())

    def manifest(self) -> dict:
        return {"top": self.top, "digest": self.digest, "bytes": self.size,
                "modules": {n: {"file": f"{n}.v", "bytes": len(t.encode()),
                                "instantiates": self.instances.get(n, {})}
                            for n, t in self.modules.items()}}

    def write(self, folder: Path, *, one_file: str | None = None) -> list[Path]:
        """Write one ``<module>.v`` per module (or the whole set to ``one_file``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if one_file is not None:
            p = folder / one_file
            p.write_text(self.text)
            return [p]
        paths = []
        for n, t in self.modules.items():
            (folder / f"{n}.v").write_text(t)
            paths.append(folder / f"{n}.v")
        return paths

    def counts(self) -> dict[str, int]:
        """How many times each module occurs in the whole top (the top once)."""
        total: dict[str, int] = {}

        def walk(name: str, k: int) -> None:
            total[name] = total.get(name, 0) + k
            for child, n in self.instances.get(name, {}).items():
                walk(child, k * n)
        walk(self.top, 1)
        return total


class Emitter:
    """The ``platform`` under which opted-in children become named instances.

    One emitter holds every module converted so far (shared between the designs
    it emits, so a build emits each configuration once over all its units).
    """

    def __init__(self):
        self.modules: dict[str, str] = {}
        self.instances: dict[str, dict[str, int]] = {}
        self._root = None
        self._markers: dict[int, tuple[Signal, Instance, str]] = {}
        self._stack: list[str] = []
        self._keys: dict[str, str] = {}

    # called from the wrapped elaborate of an opted-in child
    def _instance_of(self, child) -> Instance:
        name = module_name(child)
        ports = _ports_of(child)
        key_text = repr(child._fpqvar_emit_key)
        if self._keys.setdefault(name, key_text) != key_text:   # pragma: no cover (hash clash)
            raise EmitError(f"two configurations named {name}")
        if name not in self.modules:
            self._convert(child, name)
        text = self.modules[name]
        kw = {}
        for pname, (value, d) in ports.items():
            kw[("i_" if d == _ir.PortDirection.Input else "o_") + pname] = value
        has_clk, has_rst = _has_input(text, name, "clk"), _has_input(text, name, "rst")
        if has_clk:
            kw["i_clk"] = ClockSignal("sync")
        if has_rst:
            kw["i_rst"] = ResetSignal("sync")
        inst = Instance(name, **kw)
        if has_rst:
            # marker register on the Instance fragment itself: a ResetInserter around any
            # parent adds a Switch on it, which _forward_resets turns into the instance's rst
            # (an EnableInserter is refused); the marker never reaches the Verilog
            marker = Signal(name=f"{name}_rst_marker", init=0)
            inst.add_statements("sync", marker.eq(1))
            self._markers[id(marker)] = marker
        if self._stack:
            parent = self._stack[-1]
            self.instances.setdefault(parent, {})
            self.instances[parent][name] = self.instances[parent].get(name, 0) + 1
        return inst

    def _convert(self, component, name: str) -> str:
        ck = _cache_key(component, name)
        if ck in _CONVERTED:             # converted before in this process: the same text
            self._adopt(ck)
            # emitted (from the cache), so not "created but never used": Amaranth's
            # UnusedElaboratable check reads this flag when the object is collected
            setattr(component, "_MustUse__used", True)
            return self.modules[name]
        from amaranth.back import verilog
        outer_root = self._root
        self._root = component
        self._stack.append(name)
        self.instances.setdefault(name, {})
        try:
            frag = Fragment.get(component, self)
        finally:
            self._root = outer_root
        try:
            frag = self._forward_resets(frag)
            with _without_field_aliases(), fast_memory_init():
                text, _ = verilog.convert_fragment(frag, _ports_of(component), name,
                                                   emit_src=False)
        finally:
            self._stack.pop()
        self.modules[name] = text
        if ck is not None:      # every child came through _instance_of: its key is in _keys
            _CONVERTED[ck] = (text, dict(self.instances[name]),
                              {c: self._keys[c] for c in self.instances[name]})
        return text

    def _adopt(self, ck: tuple[str, str]) -> None:
        """Take the module of cache key ``ck`` and its descendants from :data:`_CONVERTED`
        (children first, as a conversion adds them)."""
        name = ck[0]
        if name in self.modules:
            return
        text, children, child_keys = _CONVERTED[ck]
        for c in children:
            self._adopt((c, child_keys[c]))
        self._keys.setdefault(name, ck[1])
        self.instances[name] = dict(children)
        self.modules[name] = text

    def _forward_resets(self, frag):
        """Turn the marker registers' inserted resets into instance ``rst`` ports; drop markers."""
        def visit(f):
            if isinstance(f, Instance) and f.statements:
                controls = []
                for dom, stmts in f.statements.items():
                    for st in stmts:
                        if self._marker_in(st) is None:
                            raise EmitError(f"unexpected statement on instance {f.type}")
                        if isinstance(st, _ast.Assign):
                            continue
                        body = [s for _, ss, *_ in st.cases for s in ss]
                        if any(isinstance(s, _ast.Assign) and isinstance(s.rhs, _ast.Const)
                               and s.rhs.value == 0 for s in body):
                            controls.append(st.test)
                        else:
                            raise EmitError(f"instance {f.type} is under an EnableInserter (or "
                                            f"another transform): a clock enable cannot be "
                                            f"forwarded; do not opt that component in")
                rst = f.ports["rst"][0]
                for c in controls:
                    rst = rst | c.any()
                f.ports["rst"] = (rst, f.ports["rst"][1])
                f.statements.clear()
            for sub, *_ in f.subfragments:
                visit(sub)
        visit(frag)
        return frag

    def _marker_in(self, st):
        if isinstance(st, _ast.Assign) and isinstance(st.lhs, Signal) and id(st.lhs) in self._markers:
            return st.lhs
        if isinstance(st, _ast.Switch):
            for _, ss, *_ in st.cases:
                for s in ss:
                    if (isinstance(s, _ast.Assign) and isinstance(s.lhs, Signal)
                            and id(s.lhs) in self._markers and len(ss) == 1):
                        return s.lhs
        return None

    def emit(self, component, name: str) -> EmittedDesign:
        """Convert ``component`` as module ``name``; return it with every module it uses."""
        self._convert(component, name)
        used: dict[str, str] = {}

        def walk(n: str) -> None:
            for child in self.instances.get(n, {}):
                walk(child)
            used.setdefault(n, self.modules[n])
        walk(name)
        return EmittedDesign(name, used, {n: dict(self.instances.get(n, {})) for n in used})


#: (module name, configuration key) -> (Verilog text, {child: instances},
#: {child: its configuration key})
#: of every opted-in module converted in this process: a configuration is converted once
#: per process, not once per :class:`Emitter` (the test suite builds the same small
#: configuration several times; a build emits each unit and the top through one emitter)
_CONVERTED: dict[tuple[str, str], tuple[str, dict[str, int], dict[str, str]]] = {}


def _cache_key(component, name: str) -> "tuple[str, str] | None":
    """The conversion cache key of ``component`` emitted as ``name``; None for a component
    that is not opted in (its text is not determined by a key)."""
    key = getattr(component, "_fpqvar_emit_key", None)
    return None if key is None else (name, repr(key))


def clear_conversion_cache() -> None:
    """Forget every module converted in this process (a test of emission determinism)."""
    _CONVERTED.clear()


@contextlib.contextmanager
def _without_field_aliases():
    """Convert without Amaranth's per-field alias wires.

    For every signal with a structured layout (a stream payload of 32 lanes x
    {sign, exponent, mantissa}, an ``ArrayLayout`` of cells' operands) Amaranth's RTLIL
    backend adds one named wire per field and array element (``\\i__payload$113[3].mantissa``),
    assigned from the signal and read by nothing: waveform names only.  In the accelerator
    top they were most of the text (the matrix datapath module: 31,255 of its wire
    declarations).  The logic, the ports and every other name are unchanged.
    """
    from amaranth.back import rtlil
    saved = rtlil.ModuleEmitter.emit_signal_fields
    rtlil.ModuleEmitter.emit_signal_fields = lambda self: None
    try:
        yield
    finally:
        rtlil.ModuleEmitter.emit_signal_fields = saved


def memory_init_sigspec(init, width: int) -> str:
    """The RTLIL constant of a memory's initial contents (``init``: one integer per word,
    word 0 in the lowest bits), the text Amaranth's ``sigspec`` writes for the same
    bits."""
    mask = (1 << width) - 1
    return f"{width * len(init)}'" + "".join(format(row & mask, f"0{width}b")
                                              for row in reversed(init))


@contextlib.contextmanager
def fast_memory_init():
    """Convert with each memory's initial contents written as one constant at once.

    Amaranth's RTLIL backend builds a memory's ``$meminit_v2`` data one bit at a time
    (a constant net object per bit): 7.7 million of them for the accelerator top's buffers
    (16 x 2,048-word activation buffers and the rest), about a tenth of the top's
    emission time.  :func:`memory_init_sigspec` writes the same text from the words;
    everything else about the cell is Amaranth's (tests compare both texts)."""
    from amaranth.back import rtlil
    saved = rtlil.ModuleEmitter.emit_memory

    def emit_memory(self, cell_idx, cell):
        if not cell.width or not cell.depth:
            return saved(self, cell_idx, cell)
        self.builder.cell("$meminit_v2", ports={
            "ADDR": self.sigspec(),
            "DATA": memory_init_sigspec(cell.init, cell.width),
            "EN": self.sigspec(rtlil._nir.Value.ones(cell.width)),
        }, parameters={
            "MEMID": self.memories[cell_idx].memid,
            "ABITS": 0,
            "WIDTH": cell.width,
            "WORDS": cell.depth,
            "PRIORITY": 0,
        }, src_loc=cell.src_loc)

    rtlil.ModuleEmitter.emit_memory = emit_memory
    try:
        yield
    finally:
        rtlil.ModuleEmitter.emit_memory = saved


def _has_input(text: str, module: str, port: str) -> bool:
    header = text.split(f"module {module}(", 1)[1].split(";", 1)[0]
    return re.search(rf"\b{port}\b", header) is not None


def emit_verilog(component, *, name: str = "", toplevel: str = "top",
                 emitter: Emitter | None = None) -> EmittedDesign:
    """Emit ``component`` hierarchically with its top module named ``toplevel``.

    ``name`` is the caller's label of the design (a build folder name); it does not
    change the Verilog.  Pass one ``emitter`` to several calls to share converted
    modules between them.
    """
    if name and any(c in name for c in "/\\ "):
        raise ValueError(f"build name must be a non-empty path-safe string, got {name!r}")
    return (emitter or Emitter()).emit(component, toplevel)


_ZERO_INIT = re.compile(r"\s*(?:\\\S+ |[A-Za-z_][\w$]*)\[\d+\] = \d+'[hbd]0+;")


def strip_zero_memory_init(text: str) -> str:
    """``text`` without the ``initial`` blocks that set every word of a memory to zero
    (Amaranth writes one per ``Memory``, one line per word).  Yosys' Verilog frontend takes
    minutes over a few ten thousand such lines (the matrix engine's activation buffers:
    16 x 2,048 words), and zero is what Xilinx block RAM, LUT RAM and flip-flops hold
    without an INIT: the synthesised netlist and its counts are the same.  Verilator's C++
    compile spends minutes on them too; its builds (``fpqvar_hw.host.cosim``) read this
    text with ``--x-initial 0``, which sets what has no initialiser to zero.  Only the text
    the tools read is changed (the emitted RTL keeps its initial values)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "initial begin":
            j = i + 1
            while j < len(lines) and _ZERO_INIT.fullmatch(lines[j]):
                j += 1
            if j > i + 1 and j < len(lines) and lines[j].strip() == "end":
                i = j + 1
                continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)
