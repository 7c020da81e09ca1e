"""Per-test durations of a pytest run: where the suite's (and CI's) time goes.

Runs ``python -m pytest <args> --durations=0 --junitxml=<file>`` (default args: the CI
command's ``--run-slow``), then writes ``benchmarks/results/test_durations.md`` and
``.json``: the total wall time of the command, the pytest exit status, the sum of the
per-test times, the time per test file and every test sorted by duration (setup + call +
teardown, as the xUnit file records it), slow-tier or not.

    python scripts/test_durations.py                          # the whole CI suite (long)
    python scripts/test_durations.py -- sim/test_top.py --run-slow
    python scripts/test_durations.py --junit old.xml          # re-render an existing xUnit file

Bad input (an unreadable xUnit file, an output path that is a folder) gives a one-line
error and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "test_durations"


class UsageError(Exception):
    pass


def parse_junit(path: Path) -> list[dict]:
    """Every test case of an xUnit file: id (file::name), seconds, outcome."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise UsageError(f"cannot read the xUnit file {path}: {e}") from None
    tests = []
    for case in root.iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        # pytest writes classname "sim.test_top" (module path, dots) [+ ".Class"]
        file = cls.replace(".", "/") + ".py"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                break
        tests.append({"id": f"{file}::{name}", "file": file, "seconds": float(case.get("time", 0.0)),
                      "outcome": outcome})
    if not tests:
        raise UsageError(f"{path} holds no test cases")
    return sorted(tests, key=lambda t: -t["seconds"])


def render(tests: list[dict], *, command: str, wall_s: float | None, rc: int | None) -> str:
    total = sum(t["seconds"] for t in tests)
    per_file: dict[str, float] = defaultdict(float)
    for t in tests:
        per_file[t["file"]] += t["seconds"]
    counts = defaultdict(int)
    for t in tests:
        counts[t["outcome"]] += 1
    lines = ["# Test durations", "",
             f"Command: `{command}`  ",
             f"Wall time: {wall_s:.1f} s  " if wall_s is not None else "Wall time: not measured (re-rendered)  ",
             f"pytest exit status: {rc}  " if rc is not None else "",
             f"Tests: {len(tests)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); "
             f"sum of per-test times {total:.1f} s", "",
             "Written by `python scripts/test_durations.py` (times: setup + call + teardown per test, "
             "from pytest's xUnit file).", "",
             "## Per file", "", "| seconds | share | file |", "|---:|---:|---|"]
    for f, s in sorted(per_file.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {s:.1f} | {100 * s / total if total else 0:.1f}% | {f} |")
    lines += ["", "## Per test", "", "| seconds | outcome | test |", "|---:|---|---|"]
    lines += [f"| {t['seconds']:.2f} | {t['outcome']} | {t['id']} |" for t in tests]
    return "\n".join(lines) + "\n"


def _suite_summary(path: Path) -> tuple[float | None, int | None]:
    """pytest's own wall time and an exit status (0 or 1) from an xUnit file's testsuite."""
    suite = ET.parse(path).getroot()
    if suite.tag == "testsuites":
        suite = suite.find("testsuite")
    if suite is None or suite.get("time") is None:
        return None, None
    bad = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return float(suite.get("time")), int(bad > 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python scripts/test_durations.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--junit", type=Path, help="re-render this xUnit file instead of running pytest")
    ap.add_argument("--out", type=Path, default=OUT, help="output stem (.md and .json are written); "
                    f"default {OUT.relative_to(ROOT)}")
    ap.add_argument("--label", help="with --junit: how that file was made (the command, the "
                    "commit), shown as the command; its pytest wall time comes from the file")
    ap.add_argument("pytest_args", nargs="*", help="arguments for pytest after `--` (default: --run-slow)")
    args = ap.parse_args(argv)
    try:
        for suffix in (".md", ".json"):
            if args.out.with_suffix(suffix).is_dir():
                raise UsageError(f"--out {args.out}: {args.out.with_suffix(suffix)} is a folder; give a file stem")
        wall = rc = None
        if args.junit is not None:
            command = args.label or f"(xUnit file {args.junit})"
            tests = parse_junit(args.junit)
            wall, rc = _suite_summary(args.junit)
        else:
            pytest_args = args.pytest_args or ["--run-slow"]
            with tempfile.TemporaryDirectory() as tmp:
                junit = Path(tmp) / "junit.xml"
                cmd = [sys.executable, "-m", "pytest", *pytest_args, "--durations=0", f"--junitxml={junit}"]
                command = "python -m pytest " + " ".join(pytest_args)
                t0 = time.perf_counter()
                rc = subprocess.run(cmd, cwd=ROOT).returncode
                wall = time.perf_counter() - t0
                if not junit.exists():
                    raise UsageError(f"pytest exited with {rc} and wrote no xUnit file (bad arguments?)")
                tests = parse_junit(junit)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    md = render(tests, command=command, wall_s=wall, rc=rc)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "wall_s": wall, "pytest_rc": rc, "sum_s": sum(t["seconds"] for t in tests),
         "tests": tests}, indent=1) + "\n")
    print("\n".join(md.splitlines()[:40]))
    print(f"wrote {args.out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
