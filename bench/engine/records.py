"""Run records: one JSON file per run, written atomically, plus the environment it ran in.

A record is written when a run starts (``status: running``) and replaced when it
ends (``complete``, ``failed`` or ``nan_loss``). Writes go through
:func:`bench.util.write_json_atomic`, so a reader (or a killed sweep) only ever sees a
whole record, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.env import env_info, git_commit
from bench.util import write_json_atomic

__all__ = ["write_json_atomic", "read_record", "record_path", "env_info", "git_commit", "get_field"]

RECORD_VERSION = 1
STATUSES = ("running", "complete", "failed", "nan_loss")


def read_record(path: str | Path) -> dict:
    with open(path) as f:
        return json.load(f)


def record_path(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / f"{run_id}.json"


def get_field(rec: dict, dotted: str, default=None):
    """``rec["a"]["b"]`` for ``"a.b"``; ``default`` when any level is missing."""
    cur = rec
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur
