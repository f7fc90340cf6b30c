"""Things several processes need at once on a fresh machine are made once: the built-in
synthetic data (``generate_once``) and the built-in pretrained encoders.

Found by the CI sweep on a fresh cache: its two workers both generated the synthetic SIIM
set, and the second rename failed ("Directory not empty"), failing a run; both pretrained
the built-in supervised encoder into one folder, one resuming from the other's epochs.
Threads here open the lock file separately, which ``flock`` treats like two processes.
"""

import json
import sys
import threading
import time

import pytest

from bench.util import generate_once

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")


def _together(n, call):
    results, errors = [None] * n, []

    def one(i):
        try:
            results[i] = call()
        except Exception as e:  # noqa: BLE001 - collected and re-raised below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_generate_once_makes_the_folder_once_for_concurrent_callers(tmp_path):
    made = []

    def make(tmp):
        made.append(tmp)
        time.sleep(0.3)  # long enough for every caller to be waiting
        (tmp / "data.txt").write_text("x")

    root = tmp_path / "synthetic" / "siim-n200"
    results = _together(4, lambda: generate_once(root, make, what="test data"))
    assert len(made) == 1 and results == [root] * 4
    assert (root / "data.txt").read_text() == "x"
    assert sorted(p.name for p in root.parent.iterdir()) == [".siim-n200.lock", "siim-n200"]  # no temp folder


def test_builtin_encoder_is_pretrained_once_for_concurrent_runs(tmp_path, monkeypatch):
    from bench.pretrain import builtin

    monkeypatch.setenv("CXRBENCH_WEIGHTS", str(tmp_path / "weights"))
    calls = []

    def fake_pretrain(method, arch, out, progress):
        calls.append(out)
        time.sleep(0.3)
        out.mkdir(parents=True)
        (out / "encoder.safetensors").write_bytes(b"weights")
        (out / "pretrain.json").write_text(json.dumps({"status": "done"}))

    monkeypatch.setattr(builtin, "_pretrain_builtin", fake_pretrain)
    paths = _together(3, lambda: builtin.builtin_encoder("supervised", "resnet18", progress=False))
    assert len(calls) == 1 and len(set(paths)) == 1 and paths[0].read_bytes() == b"weights"
