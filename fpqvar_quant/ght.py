"""Group-wise Hadamard Transformation (GHT) and the full-size randomized baseline.

Definitions (``docs/numerics.md`` section 2):

* ``Had_n`` is the unnormalised **Sylvester** Hadamard matrix of order
  ``n = 2^k``: ``Had_1 = [1]``, ``Had_2n = [[Had_n, Had_n], [Had_n, -Had_n]]``,
  i.e. ``Had_n[j, k] = (-1)^popcount(j & k)`` (natural order, symmetric; equal
  to ``scipy.linalg.hadamard``).  :func:`fwht` computes ``x @ Had_G`` on every
  group of ``G`` consecutive elements of the last dim in ``log2 G`` butterfly
  stages (``G log G`` adds), never as a dense matmul.
* ``H = Had_G · D / sqrt(G)`` (the FPQVAR paper's definition) with
  ``D = diag(signs)``, one ``signs`` vector of +-1 shared by all groups;
  ``H_G = blockdiag(H, ..., H)``.  ``H`` is orthogonal, so
  ``x W^T = (x H_G)(W H_G)^T``.  :func:`ght` computes
  ``x H_G = fwht(x) * signs / sqrt(G)``: **the signs multiply the transform's
  output** (column ``j`` of ``Had_G`` is scaled by ``signs[j]``).  The hardware
  Hadamard unit and its golden model (``docs/numerics.md`` section 3) use the
  same order, ``RNE_fp16(x Had D / 8)`` = ``sqrt(2) x H`` rounded once.
* The project's sign vector is data: ``assets/ght_signs_n128_seed42.json``,
  drawn once as ``1 - 2 * numpy.random.default_rng(42).integers(0, 2, 128)``:
  the same stream as the golden model's sign *bits* ``d`` (1 = negate), so
  ``signs == 1 - 2 * fpqvar_quant.golden.hadamard.random_signs(42)``.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["fwht", "hadamard_matrix", "random_signs", "ght", "ght_matrix", "fuse_ght_weight",
           "RandomizedHadamard", "SIGNS_PATH", "supported_hadamard_size"]

#: The stored sign vector (n=128, seed=42) read by the golden model and hardware.
SIGNS_PATH = Path(__file__).parent / "assets" / "ght_signs_n128_seed42.json"


def _is_torch(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _check_pow2(group: int, what: str = "group") -> None:
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1 \
            or group & (group - 1):
        raise ValueError(f"{what} must be a power of two (1, 2, 4, ... 128, ...), got {group!r}")


def _check_last_dim(shape: tuple[int, ...], group: int) -> None:
    _check_pow2(group)
    if not shape or shape[-1] % group:
        raise ValueError(f"group must divide the last dimension K={shape[-1] if shape else 0}, "
                         f"got {group}")


def fwht(x: Any, group: int = 128) -> Any:
    """Unnormalised fast Walsh-Hadamard transform of each ``group`` of the last dim.

    ``y[..., g*G:(g+1)*G] = x[..., g*G:(g+1)*G] @ Had_G`` (Sylvester order, see the
    module docstring).  numpy or torch in, same type and dtype out; exact for
    integer inputs.  ``group`` must be a power of two dividing the last dim.
    """
    _check_pow2(group)
    if _is_torch(x):
        t = x
    else:
        t = np.asarray(x)
        if t.dtype.kind not in "fiu":
            raise TypeError(f"fwht expects a real numeric array, got dtype {t.dtype}")
    _check_last_dim(tuple(t.shape), group)
    lead = tuple(t.shape[:-1])
    k = t.shape[-1]
    h = 1
    while h < group:
        v = t.reshape(*lead, k // (2 * h), 2, h)
        a, b = v[..., 0, :], v[..., 1, :]
        if _is_torch(t):
            t = torch.stack((a + b, a - b), dim=-2).reshape(*lead, k)
        else:
            t = np.stack((a + b, a - b), axis=-2).reshape(*lead, k)
        h *= 2
    return t


@lru_cache(maxsize=None)
def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard_matrix(n: int) -> np.ndarray:
    """Dense Hadamard matrix (int64): Sylvester for powers of two, otherwise
    ``kron(Paley_m, Had_2^k)`` (see :func:`supported_hadamard_size`)."""
    m, p = supported_hadamard_size(n)
    return np.kron(_paley(m), _sylvester(p)) if m > 1 else _sylvester(p).copy()


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def supported_hadamard_size(n: int) -> tuple[int, int]:
    """Split ``n = m * 2^k`` with a known Hadamard order ``m``.

    Supported: ``m = 1`` (pure Sylvester) or ``m = q + 1`` with ``q`` a prime
    ``= 3 (mod 4)`` (Paley construction I: 4, 8, 12, 20, 24, 32, 44, 48, 60, ...).
    Covers the VAR widths 1024, 1280 (20*64), 1536 (12*128), 1920 (60*32) and
    their 4x FFN widths.  Returns ``(m, 2^k)``; ``ValueError`` otherwise.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Hadamard size must be a positive integer, got {n!r}")
    n = int(n)
    p = n & -n                                   # largest power of two dividing n
    while p >= 1:
        m = n // p
        if m == 1 or (_is_prime(m - 1) and (m - 1) % 4 == 3):
            return m, p
        p //= 2
    raise ValueError(f"no Hadamard matrix of order {n} is known here: supported sizes are "
                     "m * 2^k with m = 1 or m = q + 1 for a prime q = 3 (mod 4) (e.g. 12, 20, 60)")


@lru_cache(maxsize=None)
def _paley(m: int) -> np.ndarray:
    """Paley construction I of order m = q + 1 (q prime, q = 3 mod 4)."""
    q = m - 1
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)], np.int64)
    jac = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]      # Q[i,j] = chi(j-i)
    s = np.zeros((m, m), np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return s + np.eye(m, dtype=np.int64)


def _generate_signs(n: int, seed: int) -> np.ndarray:
    """``1 - 2 * bits`` of the seeded draw: bit 1 means "negate" (golden model's bits)."""
    return (1 - 2 * np.random.default_rng(seed).integers(0, 2, n)).astype(np.int8)


def random_signs(n: int = 128, seed: int = 42) -> np.ndarray:
    """Seeded +-1 vector (int8) of length ``n``: the diagonal ``D`` of GHT.

    ``(128, 42)`` is read from :data:`SIGNS_PATH` (the project's stored data;
    a test checks that the generator still reproduces it); other ``(n, seed)``
    are generated with ``1 - 2 * numpy.random.default_rng(seed).integers(0, 2, n)``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if (n, seed) == (128, 42):
        return load_signs()
    return _generate_signs(int(n), int(seed))


def load_signs(path: Path | str = SIGNS_PATH) -> np.ndarray:
    """Read a stored sign vector (JSON with keys n, seed, generator, signs)."""
    data = json.loads(Path(path).read_text())
    signs = np.array(data["signs"], np.int8)
    if signs.shape != (data["n"],) or not np.isin(signs, (-1, 1)).all():
        raise ValueError(f"{path}: 'signs' must be {data['n']} values of +1/-1")
    return signs


def _signs_for(signs: Any, group: int, like: Any) -> Any:
    s = np.asarray(signs.cpu() if _is_torch(signs) else signs)
    if s.shape != (group,) or not np.isin(s, (-1, 1)).all():
        raise ValueError(f"signs must be a vector of {group} values +1/-1 (one per group "
                         f"element), got shape {s.shape}")
    if _is_torch(like):
        return torch.from_numpy(s.astype(np.float64)).to(like.device, like.dtype)
    return s.astype(like.dtype)


def ght(x: Any, signs: Any, group: int = 128, normalize: bool = True) -> Any:
    """``x @ H_G`` (``H = Had_G D / sqrt(G)``) on the last dim, fast.

    ``normalize=False`` omits the ``1/sqrt(G)``.  numpy or torch floating input,
    same type and dtype out (computed in that dtype).
    """
    if _is_torch(x):
        if not x.is_floating_point():
            raise TypeError(f"ght expects floating-point data, got {x.dtype}")
    else:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            raise TypeError(f"ght expects floating-point data, got dtype {x.dtype}; "
                            "use fwht for integers")
    shp = tuple(x.shape)
    _check_last_dim(shp, group)
    y = fwht(x, group)
    y = (y.reshape(*shp[:-1], shp[-1] // group, group) * _signs_for(signs, group, y)).reshape(shp)
    if normalize:
        y = y / math.sqrt(group)
    return y


def ght_matrix(signs: Any, group: int = 128) -> np.ndarray:
    """Dense ``H = Had_G D / sqrt(G)`` (float64), for tests and offline checks."""
    _check_pow2(group)
    d = _signs_for(signs, group, np.zeros(0, np.float64))
    return _sylvester(group).astype(np.float64) * d[None, :] / math.sqrt(group)


def fuse_ght_weight(W: Any, signs: Any, group: int = 128, dtype: Any = None) -> Any:
    """Offline fusion ``W H_G`` for a weight ``W[N, K]`` (``y = x W^T``).

    Computed in float64 and rounded once to ``dtype`` (default: W's dtype), so
    ``x W^T == (x H_G)(W H_G)^T`` up to that rounding.  numpy or torch.
    """
    if _is_torch(W):
        out = ght(W.detach().to(torch.float64), signs, group)
        return out.to(dtype or W.dtype)
    W = np.asarray(W)
    out = ght(W.astype(np.float64), signs, group)
    return out.astype(dtype or W.dtype)


class RandomizedHadamard:
    """Full-size randomized Hadamard baseline: ``H = Had_n D / sqrt(n)``.

    ``n = m * 2^k`` (see :func:`supported_hadamard_size`); ``Had_n =
    kron(Paley_m, Had_2^k)`` is applied as an FWHT on the ``2^k`` part and a
    dense ``m x m`` product on the rest.  ``signs`` default to
    ``random_signs(n, seed)``.
    """

    def __init__(self, n: int, seed: int = 42, signs: Any = None):
        self.m, self.p = supported_hadamard_size(n)
        self.n = int(n)
        self.signs = np.asarray(random_signs(self.n, seed) if signs is None else signs, np.int8)
        if self.signs.shape != (self.n,) or not np.isin(self.signs, (-1, 1)).all():
            raise ValueError(f"signs must be {self.n} values +1/-1")
        self._paley = _paley(self.m).astype(np.float64) if self.m > 1 else None

    @property
    def matrix(self) -> np.ndarray:
        """Dense orthogonal ``H`` (float64)."""
        return hadamard_matrix(self.n).astype(np.float64) * self.signs[None, :] / math.sqrt(self.n)

    def apply(self, x: Any) -> Any:
        """``x @ H`` on the last dim (size n); numpy or torch floating, same dtype."""
        if (x.shape[-1] if hasattr(x, "shape") and len(x.shape) else None) != self.n:
            raise ValueError(f"last dimension must be {self.n}, got shape {tuple(np.shape(x))}")
        lead = tuple(x.shape[:-1])
        y = fwht(x.reshape(*lead, self.m, self.p), self.p)                 # X @ Had_p per row
        if self._paley is not None:
            a = self._paley
            if _is_torch(y):
                y = torch.einsum("...ij,ia->...aj", y, torch.from_numpy(a).to(y.device, y.dtype))
            else:
                y = np.einsum("...ij,ia->...aj", y, a.astype(y.dtype))
        y = y.reshape(*lead, self.n)
        return y * _signs_for(self.signs, self.n, y) / math.sqrt(self.n)

    def fuse_weight(self, W: Any, dtype: Any = None) -> Any:
        """``W H`` computed in float64, rounded once to ``dtype`` (default W's)."""
        if _is_torch(W):
            return self.apply(W.detach().to(torch.float64)).to(dtype or W.dtype)
        W = np.asarray(W)
        return self.apply(W.astype(np.float64)).astype(dtype or W.dtype)
