"""The UART host link on Verilator: ``UartBridge`` against cocotbext-axi's AxiLiteRam
(sim/tb_uart.py: a small transfer with the host's own command bytes, the error replies,
an interrupted command) and the board bring-up design ``LinkTest`` with its RTL RAM
(sim/tb_linktest.py)."""
from fpqvar_hw.engines.uart import LinkTest, UartBridge
from sim.runner import run_cocotb

DIVISOR, TIMEOUT = 8, 400


def test_uart_bridge_cosim():
    run_cocotb(UartBridge(DIVISOR, timeout=TIMEOUT), name="uart-bridge", test_module="sim.tb_uart",
               params=dict(seed=1, divisor=DIVISOR, timeout=TIMEOUT))


def test_link_test_design_cosim():
    run_cocotb(LinkTest(DIVISOR, depth=512, timeout=TIMEOUT), name="uart-linktest",
               test_module="sim.tb_linktest",
               params=dict(seed=2, divisor=DIVISOR, timeout=TIMEOUT, depth=512))
