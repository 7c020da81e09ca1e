"""scripts/test_durations.py re-renders an xUnit file: per-test times, pytest's wall time
and the pass/fail status from the file itself; bad files give exit code 2."""
from __future__ import annotations

import json

from tests.script_loader import load_script

XML = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="{failures}" skipped="1" tests="3" time="123.5"><testcase classname="sim.test_top"
name="test_a" time="100.0"/><testcase classname="tests.test_x" name="test_b[1]" time="2.5">{fail}
</testcase><testcase classname="tests.test_x" name="test_c" time="0.0"><skipped/></testcase>
</testsuite></testsuites>"""


def _script():
    return load_script("scripts/test_durations.py", "test_durations_script")


def test_rerender_reads_times_wall_and_status(tmp_path, capsys):
    mod = _script()
    for failures, fail, rc in ((0, "", 0), (1, "<failure message='x'/>", 1)):
        xml = tmp_path / f"j{failures}.xml"
        xml.write_text(XML.format(failures=failures, fail=fail))
        out = tmp_path / f"d{failures}"
        assert mod.main(["--junit", str(xml), "--out", str(out), "--label", "CI run"]) == 0
        data = json.loads(out.with_suffix(".json").read_text())
        assert (data["command"], data["wall_s"], data["pytest_rc"]) == ("CI run", 123.5, rc)
        assert [t["id"] for t in data["tests"]] == ["sim/test_top.py::test_a",
                                                    "tests/test_x.py::test_b[1]",
                                                    "tests/test_x.py::test_c"]
        assert data["sum_s"] == 102.5
        md = out.with_suffix(".md").read_text()
        assert "Wall time: 123.5 s" in md and f"pytest exit status: {rc}" in md
    capsys.readouterr()


def test_bad_xunit_file_is_exit_2(tmp_path, capsys):
    mod = _script()
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites><testsuite")
    assert mod.main(["--junit", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "cannot read the xUnit file" in capsys.readouterr().err
    empty = tmp_path / "empty.xml"
    empty.write_text("<testsuites><testsuite time='1'/></testsuites>")
    assert mod.main(["--junit", str(empty), "--out", str(tmp_path / "d")]) == 2
