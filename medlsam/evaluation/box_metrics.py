"""Scoring of localization boxes against a label map (method.md 4.1, published bugs fixed).

Frame: boxes and label maps in the query file's voxel indices ``(i, j, k)``, boxes inclusive.

Definitions:

* ground-truth box: min and max index of the organ's voxels per axis (inclusive);
* IoU: of the two boxes counted in voxels (:func:`medlsam.boxes.box_iou`; the published code
  measured extents as ``max - min`` without the +1, which makes thin boxes score 0);
* WD (wall distance, mm): per axis the mean over the two walls of ``|pred - gt| * spacing``,
  then the mean over the three axes (as published);
* SPL: the organ is scored with the union box of its sub-boxes (the published code scored only
  the first sub-box), and every sub-box is also scored against the ground truth restricted to
  the slab of slices it covers (``sub_boxes`` in the CSV/JSON);
* an organ whose label is absent from a case is counted as ``absent`` (prediction outside, as it
  should be) or ``false_positive`` (a box was predicted); neither enters the means;
* an organ present in the label but predicted outside the image is ``missed``: IoU 0 enters the
  IoU mean, WD is undefined and does not (the published code dropped failing cases silently).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medlsam.boxes import Box3D, OrganBoxes, box_iou
from medlsam.io import atomic_write_text

STATUSES = ("scored", "missed", "absent", "false_positive")


@dataclass
class BoxScore:
    """Score of one organ in one case (see the module docstring for ``status``)."""

    case: str
    class_id: int
    status: str
    iou: float = math.nan
    wd_mm: float = math.nan
    gt_box: list | None = None
    pred_box: list | None = None
    sub_boxes: list[dict] = field(default_factory=list)


def wall_distance(pred: Box3D, gt: Box3D, spacing: Sequence[float]) -> float:
    """Mean over axes of the mean wall offset in mm (spacing along ``(i, j, k)``)."""
    per_axis = [
        (abs(p0 - g0) + abs(p1 - g1)) / 2.0 * float(s)
        for p0, p1, g0, g1, s in zip(pred.lo, pred.hi, gt.lo, gt.hi, spacing, strict=True)
    ]
    return float(np.mean(per_axis))


def union_box(boxes: Sequence[Box3D]) -> Box3D:
    lo = tuple(min(b.lo[a] for b in boxes) for a in range(3))
    hi = tuple(max(b.hi[a] for b in boxes) for a in range(3))
    return Box3D(lo, hi)  # type: ignore[arg-type]


def slab_box(mask: np.ndarray, axis: int, lo: int, hi: int) -> Box3D | None:
    """Box of the mask's voxels whose index along ``axis`` lies in ``[lo, hi]``."""
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi + 1)
    box = Box3D.from_mask(mask[tuple(index)])
    if box is None:
        return None
    shifted_lo, shifted_hi = list(box.lo), list(box.hi)
    shifted_lo[axis] += lo
    shifted_hi[axis] += lo
    return Box3D(tuple(shifted_lo), tuple(shifted_hi))  # type: ignore[arg-type]


def score_organ(
    case: str, organ: OrganBoxes, mask: np.ndarray, spacing: Sequence[float], slice_axis: int
) -> BoxScore:
    """Score one organ's boxes against its binary label ``mask`` ``(I, J, K)``."""
    gt = Box3D.from_mask(mask)
    pred = union_box(organ.boxes) if organ.boxes else None
    score = BoxScore(
        case=case,
        class_id=organ.class_id,
        status="scored",
        gt_box=[list(gt.lo), list(gt.hi)] if gt else None,
        pred_box=[list(pred.lo), list(pred.hi)] if pred else None,
    )
    if gt is None:
        score.status = "false_positive" if pred is not None else "absent"
        return score
    if pred is None:
        score.status, score.iou = "missed", 0.0
        return score
    score.iou = box_iou(pred, gt)
    score.wd_mm = wall_distance(pred, gt, spacing)
    if len(organ.boxes) > 1:
        for n, sub in enumerate(organ.boxes):
            part_gt = slab_box(mask, slice_axis, sub.lo[slice_axis], sub.hi[slice_axis])
            score.sub_boxes.append(
                {
                    "index": n,
                    "box": [list(sub.lo), list(sub.hi)],
                    "iou": box_iou(sub, part_gt) if part_gt else 0.0,
                    "wd_mm": wall_distance(sub, part_gt, spacing) if part_gt else math.nan,
                }
            )
    return score


def summarize(scores: Sequence[BoxScore], classes: Sequence[int]) -> dict[int, dict]:
    """Per class: counts by status, IoU and WD mean and population std (ddof 0)."""
    summary = {}
    for c in classes:
        mine = [s for s in scores if s.class_id == c]
        ious = [s.iou for s in mine if s.status in ("scored", "missed")]
        wds = [s.wd_mm for s in mine if s.status == "scored"]
        entry: dict = {"cases": len(mine)}
        entry.update({status: sum(s.status == status for s in mine) for status in STATUSES})
        entry["iou_mean"], entry["iou_std"] = _mean_std(ious)
        entry["wd_mean"], entry["wd_std"] = _mean_std(wds)
        summary[int(c)] = entry
    return summary


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values))


def report_text(summary: dict[int, dict], names: dict[int, str] | None = None) -> tuple[str, str]:
    """The ``iou`` and ``wd`` text files in the published layout, plus ``#`` lines with the case
    counts. The published files headed these MedLAM box scores "MedSAM IOU"/"MedSAM WD"; here
    they say what they measure: ``MedLAM box IoU`` and ``MedLAM box WD (mm)``."""
    iou = [
        f"MedLAM box IoU for class {c}: {e['iou_mean']:.3f} +- {e['iou_std']:.3f}"
        for c, e in summary.items()
    ]
    wd = [
        f"MedLAM box WD (mm) for class {c}: {e['wd_mean']:.3f} +- {e['wd_std']:.3f}"
        for c, e in summary.items()
    ]
    counts = [
        f"# class {c}{' (' + names[c] + ')' if names and c in names else ''}: {e['cases']} cases, "
        f"{e['scored']} scored, {e['missed']} missed (predicted outside), {e['absent']} absent "
        f"from the label, {e['false_positive']} absent but boxed"
        for c, e in summary.items()
    ]
    return "\n".join(iou + counts) + "\n", "\n".join(wd + counts) + "\n"


def write_reports(
    folder: Path,
    scores: Sequence[BoxScore],
    summary: dict[int, dict],
    names: dict[int, str] | None = None,
) -> list[Path]:
    """Write ``iou.txt``, ``wd.txt``, ``box_metrics.csv`` and ``box_metrics.json`` in ``folder``."""
    iou_text, wd_text = report_text(summary, names)
    written = [
        atomic_write_text(folder / "iou.txt", iou_text),
        atomic_write_text(folder / "wd.txt", wd_text),
    ]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "case",
            "class",
            "box",
            "status",
            "iou",
            "wd_mm",
            "pred_min",
            "pred_max",
            "gt_min",
            "gt_max",
        ]
    )
    for s in scores:
        pred = s.pred_box or [None, None]
        gt = s.gt_box or [None, None]
        writer.writerow(
            [
                s.case,
                s.class_id,
                "all",
                s.status,
                _num(s.iou),
                _num(s.wd_mm),
                _ijk(pred[0]),
                _ijk(pred[1]),
                _ijk(gt[0]),
                _ijk(gt[1]),
            ]
        )
        for sub in s.sub_boxes:
            writer.writerow(
                [
                    s.case,
                    s.class_id,
                    sub["index"],
                    s.status,
                    _num(sub["iou"]),
                    _num(sub["wd_mm"]),
                    _ijk(sub["box"][0]),
                    _ijk(sub["box"][1]),
                    "",
                    "",
                ]
            )
    written.append(atomic_write_text(folder / "box_metrics.csv", buffer.getvalue()))
    doc = {
        "definitions": __doc__,
        "summary": {str(c): _json_safe(e) for c, e in summary.items()},
        "cases": [_json_safe(asdict(s)) for s in scores],
    }
    written.append(atomic_write_text(folder / "box_metrics.json", json.dumps(doc, indent=2)))
    return written


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6f}"


def _ijk(value: list | None) -> str:
    return "" if value is None else " ".join(str(v) for v in value)


def _json_safe(obj):  # NaN is not JSON: write null
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj
