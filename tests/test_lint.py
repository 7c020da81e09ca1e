"""fpqvar_hw.flow.lint.lint_modules: each distinct module linted once with its children
as port-only stubs; instance connections are still checked against the child's ports."""
from __future__ import annotations

import pytest

from fpqvar_hw.emit import EmittedDesign
from fpqvar_hw.flow.lint import lint_modules, verilator_available

pytestmark = pytest.mark.skipif(not verilator_available(), reason="verilator not installed")

CHILD = """module child(input clk, input [3:0] a, input [3:0] b, output reg [3:0] q);
  always @(posedge clk) q <= a ^ b;
endmodule
"""
PARENT = """module parent(input clk, input [3:0] a, output [3:0] q);
  child u(.clk(clk), .a(a), .b(~a), .q(q));
endmodule
"""


def design(parent=PARENT, child=CHILD, top="parent") -> EmittedDesign:
    return EmittedDesign(top=top, modules={"child": child, "parent": parent},
                         instances={"child": {}, "parent": {"child": 1}})


def test_clean_design_each_module_once(tmp_path):
    r = lint_modules([design(), design()], tmp_path)
    assert set(r) == {"child", "parent"} and all(x.clean for x in r.values()), r
    assert (tmp_path / "parent.stubs.v").exists() and not (tmp_path / "child.stubs.v").exists()


def test_instance_connection_is_checked_against_the_child_ports(tmp_path):
    r = lint_modules([design(parent=PARENT.replace(", .b(~a)", ""))], tmp_path)
    assert r["child"].clean and not r["parent"].clean
    assert any("PINMISSING" in m and "'b'" in m for m in r["parent"].messages), r["parent"]


def test_a_submodule_port_named_like_a_cpp_word_is_not_a_warning(tmp_path):
    child = CHILD.replace("input [3:0] b", "input [3:0] abort").replace("a ^ b", "a ^ abort")
    parent = PARENT.replace(".b(~a)", ".abort(~a)")
    r = lint_modules([design(parent=parent, child=child)], tmp_path)
    assert r["child"].clean, r["child"]
    alone = EmittedDesign(top="child", modules={"child": child}, instances={"child": {}})
    r2 = lint_modules([alone], tmp_path / "alone")      # a design's top: its ports are C++
    assert any("SYMRSVDWORD" in m for m in r2["child"].messages)


def test_two_texts_for_one_module_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="two different texts"):
        lint_modules([design(), design(child=CHILD.replace("a ^ b", "a & b"))], tmp_path)
