"""Arithmetic units: FP building blocks, LUT multipliers, group quantizer, Hadamard, dot cells,
FP32 vector units.  Imports only the base layer (``fpqvar_hw.config``, ``fpqvar_hw.isa``)."""
