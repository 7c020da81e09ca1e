"""Logic depth across module boundaries of a hierarchically synthesised design.

:mod:`fpqvar_hw.flow.hsynth` synthesises every distinct module once with its registered
children as blackboxes, and ``ltp`` gives each module's longest path *inside* it.  A
path that leaves a module combinationally (a stream's ``ready``, an output driven
through logic) continues in the module it feeds, and neither run sees it whole.

This module closes that gap at port granularity.  From each module's mapped netlist
(flattened, children still blackboxes) :func:`port_arcs` lists the combinational arcs
between its *timing nodes*, with the LUT and carry levels of the longest path of each:

* sources: ``reg`` (flip-flops, memories, shift registers), ``("in", port)`` (an input
  port of the module), ``("child_out", instance, module, port)``;
* sinks: ``reg``, ``("out", port)``, ``("child_in", instance, module, port)``.

:func:`compose` then walks the hierarchy bottom-up: a module's input port reaches, through
its own arcs and its children's, a register ``eff_in`` levels later; an output port is
``eff_out`` levels after a register; and inside a parent, the longest register-to-register
path that crosses a child's boundary is ``eff_out(child port) + parent levels +
eff_in(child port)`` (through-paths of a child, input to output, chained in a longest
path over the parent's arcs).  A port counts as its worst bit (conservative); a LUT RAM
or SRL counts as a register (its asynchronous read is the one path under-counted, as in
the output cones of ``hsynth``).  Levels are counted like ``ltp``: a ``CARRY*`` cell is a
carry stage, any other combinational cell (LUT, MUXF, DSP) a LUT level.
"""
from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["SEQUENTIAL", "port_arcs", "unregistered_outputs", "compose", "cost"]

#: Sequential Xilinx primitives: a path starts or ends at them.
SEQUENTIAL = ("FDRE", "FDSE", "FDCE", "FDPE", "SRL16E", "SRLC32E", "RAMB18E2", "RAMB36E2",
              "URAM288", "RAM32M", "RAM32M16", "RAM64M", "RAM64M8", "RAM32X1D", "RAM64X1D",
              "RAM128X1D", "RAM256X1D", "RAM32X1S", "RAM64X1S", "RAM128X1S", "RAM256X1S")

REG = "reg"


def cost(lv: tuple[int, int]) -> int:
    """Ordering of (LUT, carry) levels by delay: a LUT level 0.45 ns, a carry stage 0.15."""
    return lv[0] * 3 + lv[1]


def _worse(a: tuple[int, int] | None, b: tuple[int, int]) -> tuple[int, int]:
    return b if a is None or cost(b) > cost(a) else a


def port_arcs(netlist: Mapping, name: str, children: Iterable[str]) -> list[list]:
    """Combinational arcs of module ``name`` in ``netlist`` (Yosys ``write_json`` of the
    mapped, flattened module; ``children``: the blackbox module names): a list of
    ``[source, sink, lut_levels, carry_levels]`` (nodes as in the module docstring, tuples
    as lists), the worst path per (source, sink) pair."""
    children = set(children)
    mod = netlist["modules"][name]
    cells = mod["cells"]
    kind: dict[str, str] = {}
    for cname, c in cells.items():
        t = c["type"]
        kind[cname] = ("child" if t in children else
                       "seq" if t in SEQUENTIAL or t.startswith("FD") else "comb")
    driver: dict[int, tuple[str, str]] = {}
    for cname, c in cells.items():
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            if dirs.get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = (cname, port)
    in_bit: dict[int, str] = {}
    for pname, p in mod["ports"].items():
        if p["direction"] == "input":
            for b in p["bits"]:
                if isinstance(b, int):
                    in_bit[b] = pname

    memo: dict[int, dict] = {}

    def arrivals(bit: int) -> dict:
        """source -> worst (LUT, carry) levels ending at ``bit`` (iterative post-order)."""
        stack = [bit]
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            d = driver.get(b)
            if d is None:
                memo[b] = {("in", in_bit[b]): (0, 0)} if b in in_bit else {}
                stack.pop()
                continue
            cname, port = d
            k = kind[cname]
            if k == "seq":
                memo[b] = {REG: (0, 0)}
            elif k == "child":
                memo[b] = {("child_out", cname, cells[cname]["type"], port): (0, 0)}
            else:
                c = cells[cname]
                dirs = c.get("port_directions", {})
                ins = [x for p, bits in c["connections"].items() if dirs.get(p) == "input"
                       for x in bits if isinstance(x, int)]
                todo = [x for x in ins if x not in memo and x != b]
                if todo:
                    stack.extend(todo)
                    continue
                step = (0, 1) if "CARRY" in c["type"] else (1, 0)
                out: dict = {}
                for x in ins:
                    for src, lv in memo.get(x, {}).items():
                        out[src] = _worse(out.get(src), (lv[0] + step[0], lv[1] + step[1]))
                # every output bit of the cell arrives the same way
                for p, bits in c["connections"].items():
                    if dirs.get(p) == "output":
                        for x in bits:
                            if isinstance(x, int):
                                memo[x] = out
            stack.pop()
        return memo[bit]

    arcs: dict[tuple, tuple[int, int]] = {}

    def sink(dst, bits) -> None:
        for b in bits:
            if isinstance(b, int):
                for src, lv in arrivals(b).items():
                    arcs[(src, dst)] = _worse(arcs.get((src, dst)), lv)

    for cname, c in cells.items():
        if kind[cname] == "comb":
            continue
        dirs = c.get("port_directions", {})
        for port, bits in c["connections"].items():
            if dirs.get(port) == "input":
                sink(REG if kind[cname] == "seq" else ("child_in", cname, c["type"], port), bits)
    for pname, p in mod["ports"].items():
        if p["direction"] == "output":
            sink(("out", pname), p["bits"])
    return [[_plain(s), _plain(d), lv[0], lv[1]] for (s, d), lv in sorted(
        arcs.items(), key=lambda kv: repr(kv[0]))]


def _plain(node):
    return list(node) if isinstance(node, tuple) else node


def _node(x):
    return tuple(x) if isinstance(x, list) else x


def unregistered_outputs(arcs: list[list]) -> dict[str, dict]:
    """Output ports driven through logic: port -> depth, LUT and carry levels of the worst
    path from a register or a registered child ending at it (an arc from an input port
    is a through path, reported by :func:`compose`)."""
    out: dict[str, tuple[int, int]] = {}
    for s, d, lut, carry in arcs:
        d, s = _node(d), _node(s)
        if isinstance(d, tuple) and d[0] == "out" and not (isinstance(s, tuple) and s[0] == "in") \
                and (lut or carry):
            out[d[1]] = _worse(out.get(d[1]), (lut, carry))
    return {p: {"depth": lv[0] + lv[1], "lut_levels": lv[0], "carry_levels": lv[1]}
            for p, lv in sorted(out.items())}


def compose(arcs: Mapping[str, list[list]], order: list[str]) -> dict[str, dict]:
    """Hierarchical depth of every module.  ``arcs``: module -> :func:`port_arcs`;
    ``order``: modules with children before parents.  Returns module -> ``{"eff_in": port
    -> levels, "eff_out": port -> levels, "through": (in, out) -> levels, "worst":
    (lut, carry) of the longest register-to-register path inside the module or crossing
    the boundary of one of its children, "path": that path's nodes}``."""
    res: dict[str, dict] = {}
    for name in order:
        own = [(_node(s), _node(d), (lut, carry)) for s, d, lut, carry in arcs.get(name, [])]
        # graph over this module's nodes: its arcs + the children's through arcs
        edges: dict = {}
        for s, d, lv in own:
            edges.setdefault(s, []).append((d, lv))
        for s, d, lv in own:
            for node in (s, d):
                if isinstance(node, tuple) and node[0] == "child_in":
                    inst, mod_, port = node[1:]
                    for (pi, po), tlv in res.get(mod_, {}).get("through", {}).items():
                        if pi == port:
                            e = (("child_out", inst, mod_, po), tlv)
                            if e not in edges.setdefault(node, []):
                                edges[node].append(e)

        def start_level(node) -> tuple[int, int] | None:
            if node == REG:
                return (0, 0)
            if node[0] == "child_out":       # a child output straight from a register: 0
                return res.get(node[2], {}).get("eff_out", {}).get(node[3], (0, 0))
            return None

        def end_level(node) -> tuple[int, int] | None:
            if node == REG:
                return (0, 0)
            if node[0] == "child_in":       # None: no register behind this child port
                return res.get(node[2], {}).get("eff_in", {}).get(node[3])
            return None

        # longest paths from every node to a sink (memoised DFS; a register ends a path,
        # so the graph walked is acyclic unless the design has a combinational loop)
        tail: dict = {}

        def to_sink(node, seen=frozenset()) -> tuple[tuple[int, int] | None, list]:
            if node in tail:
                return tail[node]
            best, path = end_level(node), [node]
            if node != REG:
                for nxt, lv in edges.get(node, []):
                    if nxt in seen:
                        continue
                    sub, sp = to_sink(nxt, seen | {node})
                    if sub is not None:
                        cand = (lv[0] + sub[0], lv[1] + sub[1])
                        if best is None or cost(cand) > cost(best):
                            best, path = cand, [node] + sp
            tail[node] = (best, path)
            return tail[node]

        worst, wpath = (0, 0), []
        nodes = set(edges) | {d for s, d, _ in own}
        for node in nodes:
            st = start_level(node)
            if st is None:
                continue
            for nxt, lv in edges.get(node, []):
                sub, sp = to_sink(nxt)
                if sub is not None:
                    cand = (st[0] + lv[0] + sub[0], st[1] + lv[1] + sub[1])
                    if cost(cand) > cost(worst):
                        worst, wpath = cand, [node] + sp
        eff_in, eff_out, through = {}, {}, {}
        for node in nodes:
            if isinstance(node, tuple) and node[0] == "in":
                sub, _ = to_sink(node)
                if sub is not None:
                    eff_in[node[1]] = sub
        # output ports: worst arrival from a register / child output (own arcs and through)
        for s, d, lv in own:
            if isinstance(d, tuple) and d[0] == "out":
                if isinstance(s, tuple) and s[0] == "in":
                    through[(s[1], d[1])] = _worse(through.get((s[1], d[1])), lv)
                    continue
                st = start_level(s) or (0, 0)
                eff_out[d[1]] = _worse(eff_out.get(d[1]), (st[0] + lv[0], st[1] + lv[1]))
        res[name] = {"eff_in": eff_in, "eff_out": eff_out, "through": through,
                     "worst": worst, "path": [_plain(n) for n in wpath]}
    return res
