"""FPQVAR model side: number formats, quantizers, DFQ, GHT, GALT, the VAR model,
calibration/sampling/evaluation, and the bit-exact golden model of the hardware.

This package never imports ``amaranth`` or ``fpqvar_hw`` (a test enforces it).
"""
from .formats import Format, get_format, FORMATS

__all__ = ["Format", "get_format", "FORMATS"]
__version__ = "0.1.0"
