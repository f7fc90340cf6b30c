"""The ray and submitit (slurm) executors give the same records as the local one.

Two tiny real runs per executor (synthetic SIIM, resnet18, 64 px, 1 thread per run so CPU
results repeat exactly), on a local 2-CPU Ray instance started once for the module and
on submitit's local executor (subprocesses, no Slurm).
"""

from __future__ import annotations

import pytest

from bench.engine.records import read_record, record_path
from bench.experiments.run import run_sweep
from bench.experiments.sweep import parse_sweep

ray = pytest.importorskip("ray")
pytest.importorskip("submitit")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from tasks.siim import synth

    root = tmp_path_factory.mktemp("execdata") / "siim"
    synth(root, n=40, seed=0, size=64, progress=False)
    return root


def tiny_sweep(out, data_root):
    return parse_sweep(
        {
            "name": "exec",
            "out": str(out),
            "grid": {"protocol": ["linear", "frozen"]},
            "settings": {
                "task": "siim",
                "init": "random",
                "arch": "resnet18",
                "image_size": 64,
                "epochs": 1,
                "data_root": str(data_root),
                "device": "cpu",
            },
        }
    )


@pytest.fixture(scope="module")
def local_records(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("local")
    sweep = tiny_sweep(out, data_root)
    result = run_sweep(sweep, "local", options={"threads": 1}, log=lambda _: None)
    assert not result.failed
    return {c.run_id: read_record(record_path(out, c.run_id)) for c in sweep.runs}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _assert_same_as_local(sweep, result, local_records, executor):
    assert not result.failed, [o.line() for o in result.failed]
    assert sorted(o.run_id for o in result.outcomes) == sorted(local_records)
    assert all(o.action == "ran" and o.status == "complete" for o in result.outcomes)
    for cfg in sweep.runs:
        rec = read_record(record_path(sweep.out, cfg.run_id))
        ref = local_records[cfg.run_id]
        assert rec["status"] == "complete" and rec["env"]["threads"] == ref["env"]["threads"] == 1
        assert rec["metrics"] == ref["metrics"], executor
        assert [h["train_loss"] for h in rec["history"]] == [
            h["train_loss"] for h in ref["history"]
        ]


def test_ray_executor_matches_local(tmp_path, data_root, local_records, ray_cluster):
    sweep = tiny_sweep(tmp_path / "ray", data_root)
    sweep.executor["ray"] = {"num_cpus": 1, "threads": 1}
    result = run_sweep(sweep, "ray", log=lambda _: None)
    _assert_same_as_local(sweep, result, local_records, "ray")
    assert ray.is_initialized()  # an instance it did not start is left running

    # resume on ray: nothing left to do
    again = run_sweep(sweep, "ray", log=lambda _: None)
    assert {o.action for o in again.outcomes} == {"skipped"}


def test_submitit_local_executor_matches_local(tmp_path, data_root, local_records):
    sweep = tiny_sweep(tmp_path / "slurm", data_root)
    sweep.executor["slurm"] = {"timeout_min": 10, "cpus_per_task": 1}
    result = run_sweep(
        sweep, "slurm", options={"cluster": "local", "threads": 1}, log=lambda _: None
    )
    _assert_same_as_local(sweep, result, local_records, "submitit")
    assert list((tmp_path / "slurm" / ".submitit").glob("*_log.out"))  # submitit's own logs


def test_local_workers_match_local(tmp_path, data_root, local_records):
    sweep = tiny_sweep(tmp_path / "workers", data_root)
    result = run_sweep(sweep, "local", options={"workers": 2, "threads": 1}, log=lambda _: None)
    _assert_same_as_local(sweep, result, local_records, "local --workers 2")
