"""Test isolation: caches and weights in a temporary folder, no network, no empty runs."""

import os
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="cxrbench-tests-")
os.environ.setdefault("CXRBENCH_CACHE", os.path.join(_TMP, "cache"))
os.environ.setdefault("CXRBENCH_WEIGHTS", os.path.join(_TMP, "weights"))
os.environ["CXRBENCH_OFFLINE"] = "1"
os.environ.pop("CXRBENCH_DATA", None)
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_sessionfinish(session, exitstatus):
    # "no tests collected" must fail, whoever runs pytest
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
