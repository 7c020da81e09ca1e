"""Every mutant of scripts/mutate_rtl.py still finds its target line exactly once.

The mutation run copies the sources and rewrites one line per mutant; a refactor
that changes a target line breaks that run (``found 0; update MUTANTS``) without
failing any co-simulation.  This check is instant, so the default tier catches it.
"""
from __future__ import annotations

from tests.script_loader import REPO, load_script


def _mutants():
    return load_script("scripts/mutate_rtl.py", "mutate_rtl").MUTANTS


def test_every_mutant_target_occurs_exactly_once():
    mutants = _mutants()
    assert len({m.name for m in mutants}) == len(mutants), "duplicate mutant names"
    bad = {m.name: (REPO / m.file).read_text().count(m.old) for m in mutants}
    assert {k: n for k, n in bad.items() if n != 1} == {}
    assert all(m.old != m.new for m in mutants)


def test_every_mutant_names_a_collected_test_file():
    for m in _mutants():
        assert (REPO / m.test.split("::")[0]).is_file(), (m.name, m.test)
