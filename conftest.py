"""Repository-wide pytest options.

``--run-slow`` enables tests marked ``@pytest.mark.slow``.  The plain ``pytest``
run stays fast for development; the README's test command and ``.ci/run`` pass
``--run-slow`` so everything runs in CI.
"""
import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (exhaustive sweeps, long co-simulations)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
