"""The records of an image run, shared by the driver (:mod:`fpqvar_hw.host.driver`), the
RTL co-simulation (:mod:`fpqvar_hw.host.rtl`) and the bundle runner: sampler settings,
per-step device counters, per-step records and the whole run. Plain dataclasses (numpy
only), so the modules that produce and read them need not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Sampling", "StepPerf", "StepRecord", "ImageRun"]


@dataclass(frozen=True)
class Sampling:
    """CFG strength and top-k / top-p of the sampler (``VAR.sample_tokens``'s meaning)."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= self.top_p < 1.0:
            raise ValueError(f"top_p must be in [0, 1) (0 = off), got {self.top_p}")


@dataclass
class StepPerf:
    """What one scale step cost on the device (``None`` fields: backend has no counter)."""

    cycles: int | None = None
    gemm_cycles: int | None = None
    vec_cycles: int | None = None
    overlap_cycles: int | None = None
    instructions: int | None = None
    wall_s: float = 0.0


@dataclass
class StepRecord:
    """One scale step: tokens [B, pn*pn], device input/output [R, pn*pn, C] and the
    unguided head logits [R, pn*pn, V] (conditional rows first)."""

    si: int
    pn: int
    tokens: np.ndarray
    x_in: np.ndarray
    x_out: np.ndarray
    logits: np.ndarray
    perf: StepPerf
    shadows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


@dataclass
class ImageRun:
    """Everything :func:`generate` produced for one batch of labels."""

    labels: list[int]
    seed: int
    sampling: Sampling
    backend: str
    steps: list[StepRecord]
    images: np.ndarray           # grey [B, 8, 8] in [0, 1]
    host_seconds: float = 0.0
    device_seconds: float = 0.0

    @property
    def tokens(self) -> list[list[list[int]]]:
        """Per scale, per image, the sampled token indices."""
        return [s.tokens.tolist() for s in self.steps]
