"""Box scoring of the localization run: hand-computed IoU, WD, SPL sub-boxes and statuses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.evaluation.box_metrics import (
    report_text,
    score_organ,
    slab_box,
    summarize,
    union_box,
    wall_distance,
    write_reports,
)


def organ(boxes, class_id=1):
    return OrganBoxes(class_id, tuple(boxes), np.zeros((max(len(boxes), 1), 6, 3)), bool(boxes))


def test_iou_and_wall_distance_by_hand():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:6, 2:6, 2:6] = True  # gt box 2..5 (4^3 = 64 voxels)
    pred = Box3D((3, 3, 3), (6, 6, 6))  # overlap 3^3 = 27; union 64 + 64 - 27 = 101
    score = score_organ("c", organ([pred]), mask, (1.0, 2.0, 3.0), 2)
    assert score.status == "scored"
    assert score.iou == pytest.approx(27 / 101)
    # each wall is 1 voxel off: per axis 1 * spacing -> mean(1, 2, 3) = 2 mm
    assert score.wd_mm == pytest.approx(2.0)
    assert wall_distance(pred, Box3D((2, 2, 2), (5, 5, 5)), (1, 1, 1)) == pytest.approx(1.0)


def test_spl_union_and_slab_scores():
    mask = np.zeros((6, 6, 12), bool)
    mask[1:4, 1:4, 2:10] = True
    subs = [Box3D((1, 1, 2), (3, 3, 5)), Box3D((1, 1, 6), (3, 3, 9))]
    assert union_box(subs) == Box3D((1, 1, 2), (3, 3, 9))
    assert slab_box(mask, 2, 6, 11) == Box3D((1, 1, 6), (3, 3, 9))
    score = score_organ("c", organ(subs), mask, (1, 1, 1), 2)
    assert score.iou == pytest.approx(1.0)
    assert [s["iou"] for s in score.sub_boxes] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_statuses_and_summary():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:3, 1:3] = True
    empty = np.zeros_like(mask)
    box = Box3D((1, 1, 1), (2, 2, 2))
    scores = [
        score_organ("a", organ([box]), mask, (1, 1, 1), 2),
        score_organ("b", organ([]), mask, (1, 1, 1), 2),
        score_organ("c", organ([]), empty, (1, 1, 1), 2),
        score_organ("d", organ([box]), empty, (1, 1, 1), 2),
    ]
    assert [s.status for s in scores] == ["scored", "missed", "absent", "false_positive"]
    summary = summarize(scores, [1, 2])
    entry = summary[1]
    assert entry["cases"] == 4 and entry["missed"] == 1 and entry["absent"] == 1
    assert entry["iou_mean"] == pytest.approx(0.5) and entry["iou_std"] == pytest.approx(0.5)
    assert entry["wd_mean"] == pytest.approx(0.0)
    assert math.isnan(summary[2]["iou_mean"])
    iou_text, wd_text = report_text(summary)
    assert iou_text.splitlines()[:2] == [
        "MedLAM box IoU for class 1: 0.500 +- 0.500",
        "MedLAM box IoU for class 2: nan +- nan",
    ]
    assert wd_text.startswith("MedLAM box WD (mm) for class 1: 0.000 +- 0.000")


def test_reports_are_written(tmp_path):
    mask = np.zeros((5, 5, 5), bool)
    mask[1:3, 1:3, 1:3] = True
    scores = [score_organ("a", organ([Box3D((1, 1, 1), (2, 2, 2))]), mask, (1, 1, 1), 2)]
    paths = write_reports(tmp_path, scores, summarize(scores, [1]), {1: "liver"})
    assert {p.name for p in paths} == {"iou.txt", "wd.txt", "box_metrics.csv", "box_metrics.json"}
    assert "liver" in (tmp_path / "iou.txt").read_text()
