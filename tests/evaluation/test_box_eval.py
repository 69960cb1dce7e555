"""Box scoring of the localization run: hand-computed IoU, WD, SPL sub-boxes and statuses."""

from __future__ import annotations

import csv
import json
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
    assert score.sub_boxes == []  # one box: no sub-box scores
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


def _spl_case():
    """An organ at i 1..3, j 2..9, k 1..3 (slices along j) and three sub-boxes: the first exact,
    the second two slices too long, the third beyond the organ."""
    mask = np.zeros((6, 12, 6), bool)
    mask[1:4, 2:10, 1:4] = True
    subs = [
        Box3D((1, 2, 1), (3, 5, 3)),
        Box3D((1, 6, 1), (3, 11, 3)),
        Box3D((1, 10, 1), (3, 11, 3)),
    ]
    return mask, subs


def test_sub_boxes_along_another_axis_by_hand():
    mask, subs = _spl_case()
    spacing = (1.0, 2.0, 0.5)
    score = score_organ("c", organ(subs), mask, spacing, 1)
    # union (1, 2, 1)..(3, 11, 3): 3*10*3 = 90 voxels around the 3*8*3 = 72 of the organ
    assert score.iou == pytest.approx(72 / 90)
    # walls: only j's top is off, by 2 voxels of 2 mm: (0 + 4) / 2 = 2 mm; mean over axes 2/3
    assert score.wd_mm == pytest.approx(2 / 3)
    assert score.gt_box == [[1, 2, 1], [3, 9, 3]] and score.pred_box == [[1, 2, 1], [3, 11, 3]]
    subs_scored = [(s["index"], s["box"], s["iou"], s["wd_mm"]) for s in score.sub_boxes]
    assert subs_scored[0] == (0, [[1, 2, 1], [3, 5, 3]], pytest.approx(1.0), pytest.approx(0.0))
    # slab j 6..11 holds the organ's j 6..9: 36 of the sub-box's 54 voxels; j's top 2 mm off
    assert subs_scored[1][2:] == (pytest.approx(36 / 54), pytest.approx(2 / 3))
    # slab j 10..11 is empty: IoU 0, no wall distance
    assert subs_scored[2][2] == 0.0 and math.isnan(subs_scored[2][3])
    # slabs along i and k shift their boxes back to the volume's indices
    assert slab_box(mask, 0, 2, 4) == Box3D((2, 2, 1), (3, 9, 3))
    assert slab_box(mask, 2, 3, 5) == Box3D((1, 2, 3), (3, 9, 3))
    assert slab_box(mask, 2, 4, 5) is None
    assert slab_box(mask, 0, 0, 4) == Box3D((1, 2, 1), (3, 9, 3))  # the organ starts at i 1
    assert wall_distance(Box3D((0, 0, 0), (4, 4, 4)), Box3D((1, 2, 3), (4, 4, 4)), (2, 1, 1)) == (
        pytest.approx((1.0 + 1.0 + 1.5) / 3)
    )  # per axis (1 + 0) / 2 * 2, (2 + 0) / 2 * 1, (3 + 0) / 2 * 1


def test_box_reports_by_hand(tmp_path):
    mask, subs = _spl_case()
    spacing = (1.0, 2.0, 0.5)
    scores = [
        score_organ("c", organ(subs), mask, spacing, 1),
        score_organ("d", organ([]), mask, spacing, 1),  # missed: IoU 0, no WD
    ]
    summary = summarize(scores, [1])
    # IoU mean of 0.8 and 0 = 0.4, population std 0.4; WD of the scored case only
    assert summary[1]["iou_mean"] == pytest.approx(0.4) and summary[1]["iou_std"] == 0.4
    assert summary[1]["wd_mean"] == pytest.approx(2 / 3) and summary[1]["wd_std"] == 0.0
    counts = "2 cases, 1 scored, 1 missed (predicted outside), 0 absent from the label, "
    counts += "0 absent but boxed"
    iou_text, wd_text = report_text(summary)
    assert iou_text == f"MedLAM box IoU for class 1: 0.400 +- 0.400\n# class 1: {counts}\n"
    assert wd_text == f"MedLAM box WD (mm) for class 1: 0.667 +- 0.000\n# class 1: {counts}\n"
    assert report_text(summary, {2: "spleen"})[0].endswith(f"# class 1: {counts}\n")
    write_reports(tmp_path, scores, summary, {1: "liver"})
    assert (tmp_path / "wd.txt").read_text().endswith(f"# class 1 (liver): {counts}\n")
    assert (tmp_path / "iou.txt").read_text().startswith("MedLAM box IoU for class 1: 0.400")
    with open(tmp_path / "box_metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [
        ["case", "class", "box", "status", "iou", "wd_mm", "pred_min", "pred_max", "gt_min",
         "gt_max"],
        ["c", "1", "all", "scored", "0.800000", "0.666667", "1 2 1", "3 11 3", "1 2 1", "3 9 3"],
        ["c", "1", "0", "scored", "1.000000", "0.000000", "1 2 1", "3 5 3", "", ""],
        ["c", "1", "1", "scored", "0.666667", "0.666667", "1 6 1", "3 11 3", "", ""],
        ["c", "1", "2", "scored", "0.000000", "", "1 10 1", "3 11 3", "", ""],
        ["d", "1", "all", "missed", "0.000000", "", "", "", "1 2 1", "3 9 3"],
    ]  # fmt: skip
    text = (tmp_path / "box_metrics.json").read_text()
    assert text.startswith('{\n  "definitions": "Scoring')  # indented by two spaces
    doc = json.loads(text)
    assert doc["definitions"].startswith("Scoring of localization boxes against a label map")
    assert doc["summary"]["1"]["iou_mean"] == pytest.approx(0.4)
    assert doc["summary"]["1"]["cases"] == 2 and doc["summary"]["1"]["missed"] == 1
    assert doc["cases"][1]["wd_mm"] is None and doc["cases"][1]["pred_box"] is None
    assert doc["cases"][0]["sub_boxes"][2]["wd_mm"] is None
    assert doc["cases"][0]["sub_boxes"][1]["box"] == [[1, 6, 1], [3, 11, 3]]
    assert doc["cases"][0]["gt_box"] == [[1, 2, 1], [3, 9, 3]]
    assert [c["case"] for c in doc["cases"]] == ["c", "d"]
