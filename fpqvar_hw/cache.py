"""Shared on-disk caches (Yosys results, simulator builds, ECP5 routes) that several
processes may fill at once: a lock per cache entry and atomic file writes.

Two processes that need the same entry (two pytest workers building the same
simulator model, two builds synthesising the same module) serialise on the entry's
lock; the second finds the first one's finished result instead of rebuilding it in
the same folder.  Results are written to a temporary sibling and renamed into place,
so a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

__all__ = ["entry_lock", "write_text_atomic"]


@contextlib.contextmanager
def entry_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on cache entry ``folder`` (``<folder>.lock`` next to it).

    Blocks while another process holds it.  The lock is released when the block ends
    or the process dies (``flock``), so an interrupted run never leaves a stale lock.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
