"""The exercise checks: run with STUDENT=exercises/mine to check your code, without it to check the project's.

Each test_exNN_*.py names its exercise in EXERCISE; the fixture below swaps the student's functions
into the project before each of its tests (and restores them after). The checks therefore call the
project through its modules (diffusion.slerp, d.q_sample), never through names imported before the
swap (`from diffusion import slerp` would keep the project's own function).
"""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "exercises"))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for exercise_helpers

import student  # noqa: E402  (exercises/student.py)


@pytest.fixture(autouse=True)
def student_code(request, monkeypatch):
    name = getattr(request.module, "EXERCISE", None)
    if name is not None:
        student.install(name, set_attr=monkeypatch.setattr)
