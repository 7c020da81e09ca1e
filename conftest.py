"""Repository-wide pytest options.

``--run-slow`` enables tests marked ``@pytest.mark.slow``.  The plain ``pytest``
run stays fast for development; the README's test command and ``.ci/run`` pass
``--run-slow`` so everything runs in CI.

Under pytest-xdist (``-n 2 --dist loadfile``, the CI command) whole test files go
to the workers; the files run longest first (their last measured durations in
``benchmarks/results/test_durations.json``, written by ``scripts/test_durations.py``)
so that no long file is left to run alone at the end.  Files sharing a simulator
build or a synthesis result wait on that cache entry's lock (``fpqvar_hw.cache``).
"""
import json
from pathlib import Path

import pytest

DURATIONS = Path(__file__).resolve().parent / "benchmarks" / "results" / "test_durations.json"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (exhaustive sweeps, long co-simulations)")


def pytest_configure(config):
    # pytest-xdist would reorder the files by their number of tests; the order below
    # (longest measured duration first) is the one wanted
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def _file_seconds() -> dict[str, float]:
    try:
        tests = json.loads(DURATIONS.read_text())["tests"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    per: dict[str, float] = {}
    for t in tests:
        if isinstance(t, dict) and isinstance(t.get("file"), str):
            per[t["file"]] = per.get(t["file"], 0.0) + float(t.get("seconds") or 0.0)
    return per


def pytest_collection_modifyitems(config, items):
    # the controller sees --dist; its workers (which collect the order it schedules) see
    # dist="no" and carry ``workerinput`` instead
    if getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput"):
        per = _file_seconds()
        root = Path(str(config.rootpath))
        order = {}
        for i, item in enumerate(items):     # stable: a file keeps its own test order
            f = Path(str(item.path)).relative_to(root).as_posix() if item.path else ""
            order[id(item)] = (-per.get(f, 0.0), f, i)
        items.sort(key=lambda it: order[id(it)])
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
