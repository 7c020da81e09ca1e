"""Safe output for every command that writes: atomic files and folders, output markers,
one-line user errors.

Rules every writing command of the project follows (``fpqvar-quant``, ``build.py``, the
compiler, the driver):

* A file is written to a temporary sibling and renamed into place (:func:`atomic_path`),
  so an interrupted run never leaves a partial file at the final path.
* An output folder is built in a temporary sibling and swapped in when complete
  (:func:`atomic_output_dir`); the old folder is removed only after the new one is whole.
* A folder this project wrote carries a marker (:data:`OUTPUT_MARKER`, JSON with its
  ``kind``).  Nothing replaces or writes into a folder without the marker of its own kind,
  whatever the flags: a user's unrelated folder is never deleted.
* Problems the user can fix raise :class:`UserError` with one line that names the file and
  what to do; :func:`run_cli` prints it (exit status 2, no traceback unless ``--debug``).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import threading
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["UserError", "atomic_path", "atomic_write_bytes", "atomic_write_text", "OUTPUT_MARKER",
           "write_marker", "read_marker", "prepare_output_dir", "check_output_dir",
           "atomic_output_dir", "check_writable_file", "run_cli", "FORMAT_ERRORS", "Terminated"]

#: Marker file of an output folder written by this project.
OUTPUT_MARKER = ".fpqvar-output.json"


class UserError(ValueError):
    """A bad input or output path the user can fix.  The message is one line that names
    the file and says what is wrong and what to do.

    It is a ``ValueError`` (hence an ``Exception``) so that callers that already catch the
    validation errors of the loaders (``except ValueError``) keep working."""


#: Errors of a file in a wrong or damaged format (besides :class:`UserError` and
#: ``OSError``), which :func:`run_cli` reports in one line by default: ``ValueError``
#: (bad values, JSON), a damaged zip/torch checkpoint, a truncated pickle.
FORMAT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is renamed onto
    ``path`` (``os.replace``, atomic on one file system), on any exception removed."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_marker(folder: str | os.PathLike, kind: str, **meta: Any) -> None:
    """Mark ``folder`` as an output of ``kind`` (with JSON-able ``meta``)."""
    atomic_write_text(Path(folder) / OUTPUT_MARKER,
                      json.dumps({"kind": kind, **meta}, indent=1, sort_keys=True))


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` (``None``: no marker, or an unreadable one)."""
    try:
        doc = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("kind"), str) else None


def _check_parent(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{what} {path}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: the folder {parent} is not writable")


def prepare_output_dir(path: str | os.PathLike, kind: str, *, overwrite: bool = False,
                       resume: bool = False, own: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``path`` may receive an output folder of ``kind`` and return it.

    Allowed: a new path in a writable folder; an empty folder; a folder with the marker of
    ``kind`` (or, for folders written before markers existed, one that ``own`` recognises)
    when ``resume`` (written into) or ``overwrite`` (replaced whole).  Anything else raises
    :class:`UserError` -- in particular a folder of another kind, which is never replaced,
    whatever the flags.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder; choose a folder path")
    if not path.exists():
        _check_parent(path, "--out")
        return path
    if not any(path.iterdir()):
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"--out {path} is not writable")
        return path
    marker = read_marker(path)
    if (marker is None or marker["kind"] != kind) and not (marker is None and own and own(path)):
        what = "no fpqvar output" if marker is None else f"a {marker['kind']!r} output"
        raise UserError(f"--out {path} exists and is {what}, not a {kind!r} folder: refusing to "
                        "write into or replace it; choose a new --out (or delete it yourself)")
    if not (resume or overwrite):
        raise UserError(f"--out {path} already exists (a {kind!r} output); pass --overwrite to "
                        "replace it or choose a new --out")
    if overwrite:               # replaced whole: the swap happens in the parent folder
        _check_parent(path, "--out")
    elif not os.access(path, os.W_OK | os.X_OK):       # resumed: written into
        raise UserError(f"--out {path} is not writable")
    return path


#: The former name of :func:`prepare_output_dir` (``build.py`` and the compiler use it).
check_output_dir = prepare_output_dir


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, kind: str, *, overwrite: bool = False,
                      meta: dict | None = None, own: Callable[[Path], bool] | None = None
                      ) -> Iterator[Path]:
    """Build a whole output folder of ``kind`` in a temporary sibling (yielded), then mark
    it and swap it into place; the previous folder (checked by :func:`check_output_dir`)
    is removed only after the new one is complete.  On an exception nothing changes."""
    path = prepare_output_dir(path, kind, overwrite=overwrite, own=own)
    tmp = _sibling(path, "new")
    tmp.mkdir()
    try:
        yield tmp
        write_marker(tmp, kind, **(meta or {}))
        if path.exists():
            old = _sibling(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_writable_file(path: str | os.PathLike, *, overwrite: bool = False,
                        what: str = "--out", own: Callable[[Path], bool] | None = None) -> Path:
    """Check that a single output file may be written at ``path`` (before any work is
    done).  An existing file needs ``overwrite``; with ``own`` (a check that the file is
    this command's kind of output) a file of another kind is never replaced."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file path")
    _check_parent(path, what)
    if path.exists():
        if own is not None and not own(path):
            raise UserError(f"{what} {path} exists and is not an output of this command: "
                            "refusing to replace it; choose another path")
        if not overwrite:
            raise UserError(f"{what} {path} exists; pass --overwrite to replace it")
        if not os.access(path, os.W_OK):
            raise UserError(f"{what} {path} is not writable")
    return path


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an exception by :func:`run_cli`, so that temporary files and
    folders are cleaned up as on Ctrl-C (``atomic_path`` and ``atomic_output_dir`` remove
    them on any exception)."""


_TERM_PID: list[int] = []      # the process whose run_cli installed the SIGTERM handler


def _raise_terminated(signum, frame):
    if _TERM_PID and _TERM_PID[-1] != os.getpid():
        # a forked worker (multiprocessing) inherited the handler: die as by default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def run_cli(main_fn: Callable[[list[str]], int], argv: list[str] | None = None,
            prog: str | None = None, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main_fn(argv)`` with the project's one error path: :class:`UserError`,
    ``OSError``, :data:`FORMAT_ERRORS` and the extra ``errors`` print
    ``prog: error: <one line>`` on stderr and return 2; ``KeyboardInterrupt`` prints one
    line and returns 130, SIGTERM (while ``main_fn`` runs in the main thread) the same and
    returns 143, in both cases after the temporary outputs are removed.  ``--debug`` in ``argv`` (removed before ``main_fn`` sees it)
    re-raises instead, with the traceback.  ``argv`` ``None`` means ``sys.argv[1:]``;
    ``prog`` defaults to the program name."""
    if prog is None:
        prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "fpqvar"
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _raise_terminated)
        _TERM_PID.append(os.getpid())
    try:
        return int(main_fn(argv) or 0)
    except KeyboardInterrupt as e:
        if debug:
            raise
        term = isinstance(e, Terminated)
        print(f"{prog}: {'terminated' if term else 'interrupted'}", file=sys.stderr)
        return 143 if term else 130
    except (UserError, OSError, *FORMAT_ERRORS, *errors) as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        text = " ".join(str(msg).split()) or type(e).__name__
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
            _TERM_PID.pop()
