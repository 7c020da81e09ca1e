"""Post-training quantization of VAR: configs/presets, quantized linears, GALT,
MixedFormat, KV-cache quantization, calibration capture, export and evaluation.

Importing this package imports nothing heavy: :mod:`fpqvar_quant.ptq.package`
(the numpy/json-only reader of exported packages) must stay usable without
torch. Import the submodules you need, e.g. ``from fpqvar_quant.ptq.config
import get_preset``.
"""
