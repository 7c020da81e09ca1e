"""fpqvar_hw.cache: cache entries shared by parallel processes (pytest workers, builds)."""
from __future__ import annotations

import subprocess
import sys
import time

from fpqvar_hw.cache import entry_lock, write_text_atomic

HOLD = """
import sys, time
from fpqvar_hw.cache import entry_lock
with entry_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(1.5)
"""


def test_entry_lock_serialises_processes(tmp_path):
    entry = tmp_path / "entry"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(entry)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with entry_lock(entry):          # blocks until the other process lets go
            waited = time.monotonic() - t0
        assert waited > 0.5
    finally:
        p.wait(timeout=30)
    with entry_lock(entry):              # released: taken at once
        pass


def test_entry_lock_released_when_the_holder_dies(tmp_path):
    entry = tmp_path / "entry"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(entry)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    p.kill()
    p.wait(timeout=30)
    t0 = time.monotonic()
    with entry_lock(entry):
        pass
    assert time.monotonic() - t0 < 1.0


def test_write_text_atomic_leaves_no_temporary(tmp_path):
    f = tmp_path / "r.json"
    write_text_atomic(f, "a")
    write_text_atomic(f, "b")
    assert f.read_text() == "b" and [x.name for x in tmp_path.iterdir()] == ["r.json"]
