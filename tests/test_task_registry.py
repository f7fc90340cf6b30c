"""The task registry's declarations that bench reads: image sources (tasks_seen_by) and
metric definitions."""

import dataclasses

import pytest

from tasks import MetricDef, get_task, register, task_names, tasks_seen_by, unregister


def test_builtin_image_sources():
    assert get_task("rsna").image_sources == ("NIH ChestX-ray14",)
    assert get_task("siim").image_sources == ("NIH ChestX-ray14",)
    assert get_task("rsna").metric_defs == {"rsna_score": MetricDef("iou_sweep_score", {"min_score": 0.5})}


def test_tasks_seen_by_matches_case_insensitively_in_registry_order():
    assert tasks_seen_by(["NIH ChestX-ray14"]) == ("siim", "rsna")
    assert tasks_seen_by(["nih chestx-ray14", "PadChest"]) == ("siim", "rsna")
    assert tasks_seen_by(iter(["  NIH ChestX-ray14 "])) == ("siim", "rsna")  # any iterable, stripped
    assert tasks_seen_by(["MIMIC-CXR"]) == tasks_seen_by([]) == ()
    assert tasks_seen_by(["ChestX-ray14"]) == ()  # whole names only

    base = get_task("siim")
    first = dataclasses.replace(base, name="toy_first", image_sources=("PadChest", "NIH ChestX-ray14"))
    second = dataclasses.replace(base, name="toy_second", image_sources=("padchest",))
    register(first)
    register(second)
    try:
        assert task_names()[-2:] == ("toy_first", "toy_second")
        assert tasks_seen_by(["NIH ChestX-ray14"]) == ("siim", "rsna", "toy_first")
        assert tasks_seen_by(["PADCHEST"]) == ("toy_first", "toy_second")
        assert tasks_seen_by(["PadChest", "NIH ChestX-ray14"]) == ("siim", "rsna", "toy_first", "toy_second")
    finally:
        unregister("toy_first")
        unregister("toy_second")


def test_spec_declarations_are_checked():
    base = get_task("rsna")
    with pytest.raises(ValueError, match="tuple of data set names"):
        dataclasses.replace(base, name="bad", image_sources="NIH ChestX-ray14")
    with pytest.raises(ValueError, match=r"metric_defs for metric\(s\) \['nope'\]"):
        dataclasses.replace(base, name="bad", metric_defs={"nope": MetricDef("iou_sweep_score")})
