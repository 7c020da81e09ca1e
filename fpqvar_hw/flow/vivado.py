"""Vivado collateral for Versal boards: IP packaging Tcl, block-design Tcl, XDC.

GENERATED ONLY.  There is no Vivado in this environment: the files are written
from templates and checked for Tcl syntax (complete commands, balanced braces;
:func:`tcl_syntax_ok` uses ``tclsh`` when present), but no Vivado version has
executed them.  ``docs/build.md`` lists what was and was not verified.

Flow the files describe (Vivado 2023.2 or later, VCK190 board files installed):

1. ``package_ip.tcl``: a project with ``rtl/fpqvar_top.v`` (the accelerator top,
   every unit inside it) as top, ``ipx::package_project`` into ``ip_repo/``, then
   the bus interfaces declared *explicitly*, port by port, from the top's ports
   (docs/top.md, ``fpqvar_hw/engines/axi.py``): ``m_axi`` AXI4 master (128-bit data,
   32-bit addresses, Amaranth names ``m_axi__araddr`` ...), ``s_axil`` AXI4-Lite
   slave (256-byte register map), ``irq`` level-high interrupt, ``clk`` and the
   synchronous active-high ``rst`` of Amaranth's ``sync`` domain.  Explicit maps
   instead of ``ipx::infer_bus_interfaces``: the double-underscore names are not
   a naming convention Vivado's inference is documented to recognise.
2. ``block_design.tcl``: CIPS with the VCK190 board preset, an AXI NoC with the
   DDR4 memory controller (board interface ``ddr4_dimm1``), the accelerator's
   AXI master into the NoC, its AXI-Lite slave behind CIPS' M_AXI_FPD, one PL
   clock at the configured frequency, the active-high reset from a
   ``proc_sys_reset``, the done interrupt on ``pl_ps_irq0``, then addresses,
   validation, wrapper and ``write_device_image``.
3. ``fpqvar_top.xdc``: the clock constraint for out-of-context IP synthesis.

The port maps are generated from a port list (``[{"name", "dir", "width"}]``):
the emitted top's own ports when it exists (:func:`check_top_ports` first checks
them against the contract), otherwise the contract's ports from
:func:`contract_ports` (and the headers say the top is not in the build).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .platform import Platform

__all__ = ["TOP_NAME", "generate", "tcl_syntax_ok", "NOT_RUN_NOTE", "contract_ports",
           "check_top_ports", "BUSES"]

TOP_NAME = "fpqvar_top"
NOT_RUN_NOTE = ("GENERATED, NOT RUN: no Vivado in this environment. Tcl syntax checked "
                "with tclsh; the Vivado commands themselves are unverified.")
_BOARD_PARTS = {"vck190": "xilinx.com:vck190:part0:*", "vck5000": "xilinx.com:vck5000:part0:*"}
#: (port prefix, interface mode) of the top's two AXI buses (docs/top.md, "Buses").
BUSES = (("m_axi", "master"), ("s_axil", "slave"))
CLOCK, RESET, IRQ = "clk", "rst", "irq"


def contract_ports() -> list[dict]:
    """The top's ports as docs/top.md defines them, from ``fpqvar_hw/engines/axi.py``'s signatures
    (directions seen from the top): ``m_axi__*``, ``s_axil__*``, ``irq``, ``clk``, ``rst``."""
    from amaranth.hdl import Shape
    from amaranth.lib import wiring

    from ..engines.axi import AXI4Signature, AXILiteSignature
    ports = []
    for prefix, sig, flip in (("m_axi", AXI4Signature(), False), ("s_axil", AXILiteSignature(), True)):
        for path, member in sig.members.flatten():
            out = (member.flow == wiring.Out) != flip
            ports.append({"name": prefix + "__" + "__".join(map(str, path)),
                          "dir": "out" if out else "in", "width": Shape.cast(member.shape).width})
    return ports + [{"name": IRQ, "dir": "out", "width": 1}, {"name": CLOCK, "dir": "in", "width": 1},
                    {"name": RESET, "dir": "in", "width": 1}]


def check_top_ports(ports: list[dict]) -> None:
    """Raise ``ValueError`` naming every contract port the top lacks or has with another
    direction/width (the IP packaging maps exactly these ports)."""
    have = {p["name"]: p for p in ports}
    bad = []
    for p in contract_ports():
        q = have.get(p["name"])
        if q is None:
            bad.append(f"{p['name']} missing")
        elif (q["dir"], q["width"]) != (p["dir"], p["width"]):
            bad.append(f"{p['name']} is {q['dir']} {q['width']} bit(s), contract {p['dir']} "
                       f"{p['width']}")
    if bad:
        raise ValueError("the top's ports do not match docs/top.md / fpqvar_hw/engines/axi.py: "
                         + "; ".join(bad))


def _bus_tcl(ports: list[dict]) -> str:
    """Explicit bus interfaces with one port map per signal."""
    L = ["# Bus interfaces, declared explicitly (one port map per signal, from the top's ports).",
         "ipx::remove_all_bus_interface $core"]
    for prefix, mode in BUSES:
        protocol = "AXI4" if mode == "master" else "AXI4LITE"
        L += [f"set bif [ipx::add_bus_interface {prefix} $core]",
              "set_property abstraction_type_vlnv xilinx.com:interface:aximm_rtl:1.0 $bif",
              "set_property bus_type_vlnv xilinx.com:interface:aximm:1.0 $bif",
              f"set_property interface_mode {mode} $bif",
              f"set_property value {protocol} [ipx::add_bus_parameter PROTOCOL $bif]"]
        pairs = [(p["name"][len(prefix) + 2:].upper(), p["name"]) for p in ports
                 if p["name"].startswith(prefix + "__")]
        L.append("foreach {logical physical} {" + " ".join(f"{a} {b}" for a, b in pairs) + "} {")
        L += ["    set_property physical_name $physical [ipx::add_port_map $logical $bif]", "}"]
    L += ["# s_axil: a 256-byte register map; m_axi: a 4 GiB master address space",
          "ipx::add_memory_map s_axil $core",
          "set_property slave_memory_map_ref s_axil [ipx::get_bus_interfaces s_axil -of_objects $core]",
          "set blk [ipx::add_address_block regs [ipx::get_memory_maps s_axil -of_objects $core]]",
          "set_property range 256 $blk",
          "set_property width 32 $blk",
          "ipx::add_address_space m_axi $core",
          "set_property master_address_space_ref m_axi [ipx::get_bus_interfaces m_axi -of_objects $core]",
          "set_property range 4G [ipx::get_address_spaces m_axi -of_objects $core]",
          "set_property width 128 [ipx::get_address_spaces m_axi -of_objects $core]",
          f"# {CLOCK}: the sync domain's clock; {RESET}: synchronous, ACTIVE HIGH (Amaranth)",
          f"set bif [ipx::add_bus_interface {RESET} $core]",
          "set_property abstraction_type_vlnv xilinx.com:signal:reset_rtl:1.0 $bif",
          "set_property bus_type_vlnv xilinx.com:signal:reset:1.0 $bif",
          "set_property interface_mode slave $bif",
          f"set_property physical_name {RESET} [ipx::add_port_map RST $bif]",
          "set_property value ACTIVE_HIGH [ipx::add_bus_parameter POLARITY $bif]",
          f"set bif [ipx::add_bus_interface {CLOCK} $core]",
          "set_property abstraction_type_vlnv xilinx.com:signal:clock_rtl:1.0 $bif",
          "set_property bus_type_vlnv xilinx.com:signal:clock:1.0 $bif",
          "set_property interface_mode slave $bif",
          f"set_property physical_name {CLOCK} [ipx::add_port_map CLK $bif]",
          "set_property value m_axi:s_axil [ipx::add_bus_parameter ASSOCIATED_BUSIF $bif]",
          f"set_property value {RESET} [ipx::add_bus_parameter ASSOCIATED_RESET $bif]",
          f"set bif [ipx::add_bus_interface {IRQ} $core]",
          "set_property abstraction_type_vlnv xilinx.com:signal:interrupt_rtl:1.0 $bif",
          "set_property bus_type_vlnv xilinx.com:signal:interrupt:1.0 $bif",
          "set_property interface_mode master $bif",
          f"set_property physical_name {IRQ} [ipx::add_port_map INTERRUPT $bif]",
          "set_property value LEVEL_HIGH [ipx::add_bus_parameter SENSITIVITY $bif]"]
    return "\n".join(L) + "\n"


def _header(title: str, platform: Platform, top_exists: bool) -> str:
    top = ("the accelerator top (fpqvar_top.v) is part of this build" if top_exists else
           "the accelerator top is not in this build (pending for this preset, not in the "
           "tree, or --no-top; see summary.md): fpqvar_top.v is NOT in rtl/, so this script "
           "cannot run until a build emits it")
    return (f"# {title}\n# Platform {platform.name}: {platform.part}\n# {NOT_RUN_NOTE}\n"
            f"# Status: {top}.\n# Written by fpqvar build.py (fpqvar_hw/flow/vivado.py).\n")


def package_ip_tcl(platform: Platform, top_exists: bool, ports: list[dict] | None = None) -> str:
    """``ports``: the top's ports (default: :func:`contract_ports`)."""
    ports = ports if ports is not None else contract_ports()
    return _header("Package the FPQVAR accelerator as an AXI IP", platform, top_exists) + f"""
set here [file dirname [file normalize [info script]]]
set part {platform.part}
create_project -force fpqvar_ip $here/vivado/fpqvar_ip -part $part
# the top's Verilog holds every unit it instantiates; the per-unit files in rtl/ are for
# inspection and per-unit synthesis only
add_files -norecurse $here/../rtl/{TOP_NAME}.v
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
{_bus_tcl(ports)}set_property core_revision 1 $core
ipx::create_xgui_files $core
ipx::update_checksums $core
ipx::check_integrity $core
ipx::save_core $core
close_project
"""


def block_design_tcl(platform: Platform, clock_mhz: float, top_exists: bool) -> str:
    """CIPS + NoC + DDR4 + the packaged top (its interfaces: m_axi, s_axil, irq, clk, rst)."""
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
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $acc/{CLOCK}] \\
    [get_bd_pins $rst/slowest_sync_clk]
connect_bd_net [get_bd_pins $cips/pl0_resetn] [get_bd_pins $rst/ext_reset_in]
# the accelerator's reset is synchronous and active high
connect_bd_net [get_bd_pins $rst/peripheral_reset] [get_bd_pins $acc/{RESET}]

# AXI master -> one more NoC slave port routed to the DDR4 controller.
set nsi [get_property CONFIG.NUM_SI $noc]
set si "S[format %02d $nsi]_AXI"
set nclk [get_property CONFIG.NUM_CLKS $noc]
set_property -dict [list CONFIG.NUM_SI [expr {{$nsi + 1}}] \\
    CONFIG.NUM_CLKS [expr {{$nclk + 1}}]] $noc
set_property -dict [list CONFIG.CONNECTIONS {{MC_0 {{read_bw {{12800}} write_bw {{12800}}}}}} \\
    CONFIG.CATEGORY {{pl}}] [get_bd_intf_pins $noc/$si]
connect_bd_intf_net [get_bd_intf_pins $acc/m_axi] [get_bd_intf_pins $noc/$si]
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $noc/aclk$nclk]
set_property CONFIG.ASSOCIATED_BUSIF $si [get_bd_pins $noc/aclk$nclk]

# AXI-Lite control from the APU through a SmartConnect.
set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect:* sc_ctrl]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 1] $sc
connect_bd_intf_net [get_bd_intf_pins $cips/M_AXI_FPD] [get_bd_intf_pins $sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins $sc/M00_AXI] [get_bd_intf_pins $acc/s_axil]
connect_bd_net [get_bd_pins $cips/pl0_ref_clk] [get_bd_pins $sc/aclk] \\
    [get_bd_pins $cips/m_axi_fpd_aclk]
connect_bd_net [get_bd_pins $rst/peripheral_aresetn] [get_bd_pins $sc/aresetn]

# Done interrupt.
connect_bd_net [get_bd_pins $acc/{IRQ}] [get_bd_pins $cips/pl_ps_irq0]

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
            f"# which Vivado constrains itself; this file constrains {CLOCK} for IP synthesis.\n"
            f"create_clock -period {period:.3f} -name {CLOCK} [get_ports {CLOCK}]\n")


def generate(out_dir: Path, platform: Platform, clock_mhz: float, *, top_exists: bool,
             ports: list[dict] | None = None) -> list[Path]:
    """Write the Tcl/XDC files under ``out_dir`` (``versal`` platforms only); return paths.

    ``ports``: the emitted top's ports (checked against the contract, ``ValueError`` if
    they differ); ``None`` uses the contract's ports.
    """
    if platform.family != "versal":
        return []
    if ports is not None:
        check_top_ports(ports)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "package_ip.tcl": package_ip_tcl(platform, top_exists, ports),
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
