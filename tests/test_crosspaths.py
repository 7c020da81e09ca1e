"""fpqvar_hw.flow.crosspaths on hand-built netlists (Yosys JSON shape): the arcs between
registers, ports and children, and their composition over a hierarchy."""
from __future__ import annotations

from fpqvar_hw.flow.crosspaths import compose, port_arcs, unregistered_outputs


def cell(type_, ins: dict, outs: dict) -> dict:
    return {"type": type_, "port_directions": {**{p: "input" for p in ins},
                                               **{p: "output" for p in outs}},
            "connections": {**ins, **outs}}


def netlist(name, ports, cells) -> dict:
    return {"modules": {name: {"ports": {p: {"direction": d, "bits": b}
                                         for p, (d, b) in ports.items()}, "cells": cells}}}


# leaf: input a(2) -> LUT -> CARRY -> FF(3) ; FF(3) -> LUT -> LUT -> output y(6)
LEAF = netlist("leaf", {"a": ("input", [2]), "y": ("output", [6])}, {
    "l0": cell("LUT2", {"I0": [2]}, {"O": [10]}),
    "c0": cell("CARRY8", {"S": [10]}, {"O": [11]}),
    "ff": cell("FDRE", {"D": [11]}, {"Q": [3]}),
    "l1": cell("LUT1", {"I0": [3]}, {"O": [5]}),
    "l2": cell("LUT1", {"I0": [5]}, {"O": [6]}),
})
# parent: child u0 (leaf).y -> LUT -> child u1 (leaf).a ; input a -> u0.a ; u1.y -> FF
PARENT = netlist("par", {"a": ("input", [2]), "q": ("output", [9])}, {
    "u0": cell("leaf", {"a": [2]}, {"y": [4]}),
    "lx": cell("LUT1", {"I0": [4]}, {"O": [5]}),
    "u1": cell("leaf", {"a": [5]}, {"y": [6]}),
    "ff": cell("FDRE", {"D": [6]}, {"Q": [9]}),
})


def test_port_arcs_of_a_leaf():
    arcs = port_arcs(LEAF, "leaf", [])
    assert [["in", "a"], "reg", 1, 1] in arcs          # LUT + carry into the register
    assert ["reg", ["out", "y"], 2, 0] in arcs          # two LUTs after it
    assert unregistered_outputs(arcs) == {"y": {"depth": 2, "lut_levels": 2, "carry_levels": 0}}


def test_compose_chains_child_ports_through_the_parent():
    arcs = {"leaf": port_arcs(LEAF, "leaf", []), "par": port_arcs(PARENT, "par", ["leaf"])}
    assert [["child_out", "u0", "leaf", "y"], ["child_in", "u1", "leaf", "a"], 1, 0] in arcs["par"]
    cp = compose(arcs, ["leaf", "par"])
    assert cp["leaf"]["eff_in"]["a"] == (1, 1) and cp["leaf"]["eff_out"]["y"] == (2, 0)
    # u0's register -> 2 LUTs -> par's LUT -> u1's LUT + carry -> u1's register
    assert cp["par"]["worst"] == (4, 1)
    assert cp["par"]["path"] == [["child_out", "u0", "leaf", "y"], ["child_in", "u1", "leaf", "a"]]
    assert cp["par"]["eff_in"]["a"] == (1, 1)           # straight into u0's input logic


def test_a_through_path_of_a_child_is_chained():
    # a child whose output is its input through one LUT, between two registers of the parent
    thru = netlist("thru", {"i": ("input", [2]), "o": ("output", [3])},
                   {"l": cell("LUT1", {"I0": [2]}, {"O": [3]})})
    par = netlist("p2", {}, {
        "f0": cell("FDRE", {"D": [9]}, {"Q": [4]}),
        "l0": cell("LUT1", {"I0": [4]}, {"O": [5]}),
        "t": cell("thru", {"i": [5]}, {"o": [6]}),
        "l1": cell("LUT1", {"I0": [6]}, {"O": [7]}),
        "f1": cell("FDRE", {"D": [7]}, {"Q": [9]}),
    })
    cp = compose({"thru": port_arcs(thru, "thru", []), "p2": port_arcs(par, "p2", ["thru"])},
                 ["thru", "p2"])
    assert cp["thru"]["through"] == {("i", "o"): (1, 0)}
    assert cp["p2"]["worst"] == (3, 0)                  # LUT, the child's LUT, LUT
