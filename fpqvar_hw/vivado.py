"""Vivado collateral for Versal boards: IP packaging Tcl, block-design Tcl, XDC.

GENERATED ONLY.  There is no Vivado in this environment: the files are written
from templates and checked for Tcl syntax (complete commands, balanced braces;
:func:`tcl_syntax_ok` uses ``tclsh`` when present), but no Vivado version has
executed them.  ``docs/build.md`` lists what was and was not verified.

Flow the files describe (Vivado 2023.2 or later, VCK190 board files installed):

1. ``package_ip.tcl``: a project with the emitted Verilog, ``fpqvar_top`` as top,
   ``ipx::package_project`` into ``ip_repo/``; the AXI4 master ``m_axi_gmem``,
   the AXI4-Lite slave ``s_axi_control``, the ``interrupt`` and ``ap_clk`` /
   ``ap_rst_n`` are inferred as bus interfaces from their names.
2. ``block_design.tcl``: CIPS with the VCK190 board preset, an AXI NoC with the
   DDR4 memory controller (board interface ``ddr4_dimm1``), the accelerator's
   AXI master into the NoC, its AXI-Lite slave behind CIPS' M_AXI_FPD, one PL
   clock at the configured frequency, the done interrupt on ``pl_ps_irq0``,
   then addresses, validation, wrapper and ``write_device_image``.
3. ``fpqvar_top.xdc``: the clock constraint for out-of-context IP synthesis.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .platform import Platform

__all__ = ["TOP_NAME", "generate", "tcl_syntax_ok", "NOT_RUN_NOTE"]

TOP_NAME = "fpqvar_top"
NOT_RUN_NOTE = ("GENERATED, NOT RUN: no Vivado in this environment. Tcl syntax checked "
                "with tclsh; the Vivado commands themselves are unverified.")
_BOARD_PARTS = {"vck190": "xilinx.com:vck190:part0:*", "vck5000": "xilinx.com:vck5000:part0:*"}


def _header(title: str, platform: Platform, top_exists: bool) -> str:
    top = ("the accelerator top (fpqvar_top.v) is part of this build" if top_exists else
           "the accelerator top (issue 8) does not exist yet: fpqvar_top.v is NOT in rtl/, so "
           "this script cannot run until it lands")
    return (f"# {title}\n# Platform {platform.name}: {platform.part}\n# {NOT_RUN_NOTE}\n"
            f"# Status: {top}.\n# Written by fpqvar build.py (fpqvar_hw/vivado.py).\n")


def package_ip_tcl(platform: Platform, top_exists: bool) -> str:
    return _header("Package the FPQVAR accelerator as an AXI IP", platform, top_exists) + f"""
set here [file dirname [file normalize [info script]]]
set part {platform.part}
create_project -force fpqvar_ip $here/vivado/fpqvar_ip -part $part
add_files -norecurse [glob $here/../rtl/*.v]
add_files -fileset constrs_1 -norecurse $here/{TOP_NAME}.xdc
set_property used_in_synthesis true [get_files $here/{TOP_NAME}.xdc]
set_property top {TOP_NAME} [current_fileset]
update_compile_order -fileset sources_1

ipx::package_project -root_dir $here/ip_repo -vendor fpqvar.org -library fpqvar \\
    -taxonomy /UserIP -import_files -set_current true
set core [ipx::current_core]
set_property name {TOP_NAME} $core
set_property display_name "FPQVAR accelerator" $core
set_property version 1.0 $core
ipx::infer_bus_interfaces xilinx.com:interface:aximm_rtl:1.0 $core
ipx::infer_bus_interfaces xilinx.com:signal:clock_rtl:1.0 $core
ipx::infer_bus_interfaces xilinx.com:signal:reset_rtl:1.0 $core
ipx::infer_bus_interfaces xilinx.com:signal:interrupt_rtl:1.0 $core
ipx::associate_bus_interfaces -busif m_axi_gmem -clock ap_clk $core
ipx::associate_bus_interfaces -busif s_axi_control -clock ap_clk $core
ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core
set_property core_revision 1 $core
ipx::create_xgui_files $core
ipx::update_checksums $core
ipx::check_integrity $core
ipx::save_core $core
close_project
"""


def block_design_tcl(platform: Platform, clock_mhz: float, top_exists: bool) -> str:
    board = _BOARD_PARTS.get(platform.name, "")
    board_line = (f"set_property board_part [lindex [lsort [get_board_parts {board}]] end] "
                  f"[current_project]" if board else "# no board part known for this platform")
    return _header("VCK190 block design: CIPS + NoC + DDR4 + FPQVAR", platform,
                   top_exists) + f"""
set here [file dirname [file normalize [info script]]]
set part {platform.part}
set clk_mhz {clock_mhz:g}
create_project -force fpqvar_{platform.name} $here/vivado/fpqvar_{platform.name} -part $part
{board_line}
set_property ip_repo_paths $here/ip_repo [current_project]
update_ip_catalog
create_bd_design fpqvar_bd

# Versal CIPS with the board preset; the automation adds an AXI NoC with one DDR4 controller.
set cips [create_bd_cell -type ip -vlnv xilinx.com:ip:versal_cips:* versal_cips_0]
apply_bd_automation -rule xilinx.com:bd_rule:cips -config {{ \\
    board_preset {{Yes}} boot_config {{Custom}} configure_noc {{Add new AXI NoC}} \\
    debug_config {{JTAG}} design_flow {{Full System}} mc_type {{DDR}} num_mc_ddr {{1}} \\
    num_mc_lpddr {{None}} pl_clocks {{1}} pl_resets {{1}} }} $cips
set_property -dict [list \\
    CONFIG.PS_PMC_CONFIG [list PS_USE_M_AXI_FPD 1 PS_USE_PMCPL_CLK0 1 PS_NUM_FABRIC_RESETS 1 \\
        PMC_CRP_PL0_REF_CTRL_FREQMHZ $clk_mhz PS_IRQ_USAGE {{{{CH0 1}}}}] \\
] $cips
set noc [get_bd_cells -filter {{VLNV =~ *axi_noc*}}]

# The accelerator.
set acc [create_bd_cell -type ip -vlnv fpqvar.org:fpqvar:{TOP_NAME}:1.0 fpqvar_0]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset:* rst_pl0]
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $acc/ap_clk] \\
    [get_bd_pins $rst/slowest_sync_clk]
connect_bd_net [get_bd_pins $cips/pl0_resetn] [get_bd_pins $rst/ext_reset_in]
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $acc/ap_rst_n]

# AXI master -> one more NoC slave port routed to the DDR4 controller.
set nsi [get_property CONFIG.NUM_SI $noc]
set si "S[format %02d $nsi]_AXI"
set nclk [get_property CONFIG.NUM_CLKS $noc]
set_property -dict [list CONFIG.NUM_SI [expr {{$nsi + 1}}] \\
    CONFIG.NUM_CLKS [expr {{$nclk + 1}}]] $noc
set_property -dict [list CONFIG.CONNECTIONS {{MC_0 {{read_bw {{12800}} write_bw {{12800}}}}}} \\
    CONFIG.CATEGORY {{pl}}] [get_bd_intf_pins $noc/$si]
connect_bd_intf_net [get_bd_intf_pins $acc/m_axi_gmem] [get_bd_intf_pins $noc/$si]
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $noc/aclk$nclk]
set_property CONFIG.ASSOCIATED_BUSIF $si [get_bd_pins $noc/aclk$nclk]

# AXI-Lite control from the APU through a SmartConnect.
set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect:* sc_ctrl]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 1] $sc
connect_bd_intf_net [get_bd_intf_pins $cips/M_AXI_FPD] [get_bd_intf_pins $sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $acc/s_axi_control]
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $sc/aclk] \\
    [get_bd_pins $cips/m_axi_fpd_aclk]
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $sc/aresetn]

# Done interrupt.
connect_bd_net [get_bd_pins $acc/interrupt] [get_bd_pins $cips/pl_ps_irq0]

assign_bd_address
validate_bd_design
save_bd_design
set wrapper [make_wrapper -files [get_files fpqvar_bd.bd] -top]
add_files -norecurse $wrapper
set_property top fpqvar_bd_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs impl_1 -to_step write_device_image -jobs 8
wait_on_run impl_1
"""


def xdc(platform: Platform, clock_mhz: float) -> str:
    period = 1000.0 / clock_mhz
    return (f"# FPQVAR accelerator ({TOP_NAME}) on {platform.name}: out-of-context IP constraints.\n"
            f"# {NOT_RUN_NOTE}\n"
            f"# In the block design the clock comes from CIPS pl0_ref_clk ({clock_mhz:g} MHz),\n"
            f"# which Vivado constrains itself; this file constrains ap_clk for IP synthesis.\n"
            f"create_clock -period {period:.3f} -name ap_clk [get_ports ap_clk]\n"
            f"set_false_path -from [get_ports ap_rst_n]\n")


def generate(out_dir: Path, platform: Platform, clock_mhz: float, *, top_exists: bool
             ) -> list[Path]:
    """Write the Tcl/XDC files under ``out_dir`` (``versal`` platforms only); return paths."""
    if platform.family != "versal":
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "package_ip.tcl": package_ip_tcl(platform, top_exists),
        "block_design.tcl": block_design_tcl(platform, clock_mhz, top_exists),
        f"{TOP_NAME}.xdc": xdc(platform, clock_mhz),
        "README.txt": (f"{NOT_RUN_NOTE}\nRun (once Vivado and the VCK190 board files are "
                       f"installed):\n  vivado -mode batch -source package_ip.tcl\n"
                       f"  vivado -mode batch -source block_design.tcl\n"),
    }
    paths = []
    for name, text in files.items():
        p = out_dir / name
        p.write_text(text)
        paths.append(p)
    return paths


def tcl_syntax_ok(text: str) -> tuple[bool, str]:
    """Check that ``text`` splits into complete Tcl commands (``info complete`` in tclsh).

    Returns ``(ok, detail)``; ``(True, "tclsh not available ...")`` is never returned:
    without tclsh the check falls back to brace/bracket balance in Python.
    """
    tclsh = shutil.which("tclsh")
    if tclsh:
        script = ("set f [open [lindex $argv 0]]; set s [read $f]; close $f\n"
                  "set cmd {}; set n 0\n"
                  "foreach line [split $s \\n] { incr n; append cmd $line \\n;"
                  " if {[info complete $cmd]} { set cmd {} } }\n"
                  "if {[string trim $cmd] ne {}} { puts \"incomplete command ending at line $n\";"
                  " exit 1 }\nputs ok\n")
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "x.tcl"
            chk = Path(d) / "chk.tcl"
            src.write_text(text)
            chk.write_text(script)
            p = subprocess.run([tclsh, str(chk), str(src)], capture_output=True, text=True)
            return p.returncode == 0, (p.stdout + p.stderr).strip() + " (tclsh info complete)"
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False, "unbalanced braces"
    return depth == 0, "brace balance (no tclsh)"
