"""The UART host link on Verilator (sim/tb_uart.py): a small transfer through
``fpqvar_hw.engines.uart.UartBridge`` with the host's own command bytes, the error replies
and an interrupted command."""
from fpqvar_hw.engines.uart import UartBridge
from sim.runner import run_cocotb

DIVISOR, TIMEOUT = 8, 400


def test_uart_bridge_cosim():
    run_cocotb(UartBridge(DIVISOR, timeout=TIMEOUT), name="uart-bridge", test_module="sim.tb_uart",
               params=dict(seed=1, divisor=DIVISOR, timeout=TIMEOUT))
