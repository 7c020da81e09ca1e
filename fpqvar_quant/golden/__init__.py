"""Bit-exact golden model of the FPQVAR hardware datapath (integer numpy).

Each module models one hardware unit exactly as ``docs/numerics.md`` section 3
defines it, on integer bit patterns (FP16 inputs as ``uint16``, element codes
as ``uint8``, scales as raw bits).  It is independent of the torch fake-quant
and of ``fpqvar_hw`` (this package never imports amaranth).

Vector export: every unit registers an *exporter* with :func:`register_exporter`;
``python -m fpqvar_quant.golden <unit> --out DIR --seed S --n N`` runs it and
writes integer arrays (``vectors.npz``) plus ``manifest.json`` (unit, formats,
config, seed, version).  An exporter is a function
``(args: argparse.Namespace, rng: numpy.random.Generator) -> (arrays, config)``
with ``arrays`` a dict of integer numpy arrays and ``config`` a JSON-able dict;
it declares its own extra command-line options through ``add_arguments``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Exporter", "register_exporter", "exporters", "GOLDEN_VERSION"]

#: Bumped whenever a golden-model definition changes the bits it produces.
GOLDEN_VERSION = 1

ExportFn = Callable[[argparse.Namespace, np.random.Generator], "tuple[dict[str, np.ndarray], dict[str, Any]]"]


@dataclass(frozen=True)
class Exporter:
    """A registered vector exporter for one unit."""

    unit: str
    help: str
    run: ExportFn
    add_arguments: Callable[[argparse.ArgumentParser], None] = field(default=lambda p: None)


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(unit: str, help: str,
                      add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                      ) -> Callable[[ExportFn], ExportFn]:
    """Decorator: register ``fn`` as the vector exporter of ``unit``.

    ``add_arguments(parser)`` adds the unit's own options (formats, sizes...).
    Registering the same unit twice is an error (one exporter per unit).
    """
    if not unit.isidentifier():
        raise ValueError(f"unit name must be an identifier, got {unit!r}")

    def deco(fn: ExportFn) -> ExportFn:
        if unit in _EXPORTERS and _EXPORTERS[unit].run is not fn:
            raise ValueError(f"an exporter for unit {unit!r} is already registered")
        _EXPORTERS[unit] = Exporter(unit, help, fn, add_arguments or (lambda p: None))
        return fn

    return deco


#: Modules that define exporters; imported lazily by :func:`exporters` (add yours here).
EXPORTER_MODULES = ("quantizer", "hadamard", "multiplier", "dot", "vector", "attention")


def exporters() -> dict[str, Exporter]:
    """All registered exporters (importing the golden unit modules that define them)."""
    import importlib

    for mod in EXPORTER_MODULES:
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:  # a unit not written yet
            if e.name != f"{__name__}.{mod}":
                raise
    return dict(_EXPORTERS)
