"""The classroom exercises (EXERCISES.md) are sound: every check fails on its blank file and passes on the project.

Runs tests/exercises twice in this process, once with STUDENT=exercises/blank (every check of every
exercise must fail, and fail because the function is not written) and once without STUDENT (the
project's own code is the reference solution: every check must pass). It also checks that
`pytest tests/exercises -k NAME`, as EXERCISES.md tells students to run it, selects that exercise's
checks and no other's.
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "exercises"))
import student  # noqa: E402  (exercises/student.py)

NAMES = list(student.EXERCISES)


class Record:
    """A pytest plugin that keeps each test's outcome, its failure text and the names -k matches against."""

    def __init__(self):
        self.outcome, self.text, self.names = {}, {}, {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            self.names[item.nodeid] = [node.name for node in item.listchain()]

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":  # a failing setup counts as a failure
            if self.outcome.get(report.nodeid) != "failed":
                self.outcome[report.nodeid] = report.outcome
                self.text[report.nodeid] = report.longreprtext


def run(student_dir):
    rec = Record()
    with pytest.MonkeyPatch.context() as mp:
        if student_dir is None:
            mp.delenv("STUDENT", raising=False)
        else:
            mp.setenv("STUDENT", student_dir)
        pytest.main([os.path.join(ROOT, "tests", "exercises"), "--rootdir", ROOT, "-q", "--tb=line",
                     "-p", "no:cacheprovider"], plugins=[rec])
    assert rec.outcome, "no exercise checks ran"
    return rec


@pytest.fixture(scope="module")
def blank():
    return run(os.path.join(ROOT, "exercises", "blank"))


@pytest.fixture(scope="module")
def reference():
    return run(None)


def selected(rec, name):
    """The tests `-k NAME` selects: NAME is a substring (any case) of the test's or one of its parents' names."""
    return [nid for nid, names in rec.names.items() if any(name.lower() in n.lower() for n in names)]


def test_every_exercise_has_a_blank_a_check_and_a_section():
    guide = open(os.path.join(ROOT, "EXERCISES.md")).read()
    for name, (file, targets) in student.EXERCISES.items():
        assert os.path.exists(os.path.join(ROOT, "exercises", "blank", file)), f"exercises/blank/{file} is missing"
        assert f"-k {name}" in guide, f"EXERCISES.md does not tell how to run the check of {name!r}"
        assert f"exercises/blank/{file}" in guide, f"EXERCISES.md does not point to exercises/blank/{file}"


@pytest.mark.parametrize("name", NAMES)
def test_k_name_selects_exactly_its_exercise(name, reference):
    checks = "test_ex" + student.EXERCISES[name][0][1:]  # e01_q_sample.py -> test_ex01_q_sample.py
    mine = [nid for nid in reference.names if nid.startswith(f"tests/exercises/{checks}::")]
    assert mine, f"no checks for {name!r}: tests/exercises/{checks} is missing"
    assert sorted(selected(reference, name)) == sorted(mine), f"-k {name} selects tests of other exercises too"


@pytest.mark.parametrize("name", NAMES)
def test_check_fails_on_the_blank(name, blank):
    ids = selected(blank, name)
    passed = [nid for nid in ids if blank.outcome[nid] != "failed"]
    assert not passed, f"{name}: these checks pass on the blank file, so they check nothing: {passed}"
    unwritten = [nid for nid in ids if "NotImplementedError" not in blank.text[nid]]
    assert not unwritten, f"{name}: these checks fail on the blank for another reason than the missing function: {unwritten}"


@pytest.mark.parametrize("name", NAMES)
def test_check_passes_on_the_reference(name, reference):
    ids = selected(reference, name)
    failed = {nid: reference.text[nid][-300:] for nid in ids if reference.outcome[nid] != "passed"}
    assert not failed, f"{name}: the project's own code fails its exercise checks: {failed}"


@pytest.mark.parametrize("argv, env, says", [(["nosuch", "sample.py"], None, "no exercise nosuch"),
                                              (["slerp", "sample.py"], "nowhere", "is not a folder"),
                                              (["slerp", "nosuch.py"], None, "no script")])
def test_the_runner_refuses_in_one_line(tmp_path, argv, env, says):
    import subprocess
    import sys
    environ = dict(os.environ, STUDENT=str(tmp_path / env)) if env else {k: v for k, v in os.environ.items() if k != "STUDENT"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "exercises", "run.py"), *argv], capture_output=True, text=True,
                       env=environ, timeout=120)
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
