"""FPQVAR accelerator: Amaranth 0.5 description of the hardware units and the top.

Imports from ``fpqvar_quant`` are limited to the format descriptors
(``fpqvar_quant.formats``); never its arithmetic (a test enforces it).
"""
