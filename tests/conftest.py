"""Test isolation: caches and weights in a temporary folder, no network, no empty runs."""

import os
import shutil
import tempfile

import pytest

_TMP = tempfile.mkdtemp(prefix="cxrbench-tests-")
os.environ.setdefault("CXRBENCH_CACHE", os.path.join(_TMP, "cache"))
os.environ.setdefault("CXRBENCH_WEIGHTS", os.path.join(_TMP, "weights"))
# never the user's own catalogue of `bench pretrain` entries
os.environ["CXRBENCH_CATALOGUE"] = os.path.join(_TMP, "catalogue.yaml")
os.environ["CXRBENCH_OFFLINE"] = "1"
os.environ.pop("CXRBENCH_DATA", None)
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_sessionfinish(session, exitstatus):
    # "no tests collected" must fail, whoever runs pytest
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _user_catalogue(tmp_path, monkeypatch):
    """Each test its own (empty) user catalogue of `bench pretrain` entries."""
    monkeypatch.setenv("CXRBENCH_CATALOGUE", str(tmp_path / "user-catalogue.yaml"))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private preprocessing cache ($CXRBENCH_CACHE) for one test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CXRBENCH_CACHE", str(root))
    return root


@pytest.fixture
def data(synth_data, tmp_path):
    """A private, modifiable copy of the module's ``synth_data`` dataset."""
    dst = tmp_path / "data"
    shutil.copytree(synth_data[0], dst)
    return dst
