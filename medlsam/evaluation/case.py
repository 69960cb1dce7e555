"""One case of an evaluation: find the files, put the prediction on the label's grid, score it.

* Predictions are matched to references by case name (:func:`medlsam.io.case_name`):
  ``<pred_dir>/<case>.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha`` ...), one label map per case
  whose voxel values are class ids.
* Metrics are computed on the reference's own voxel grid with its spacing. A prediction on the
  same grid stored in another axis order or orientation (a signed permutation of the axes) is
  reoriented onto it exactly; any other grid is an error naming both files.
* Box IoU uses ``<case>.boxes.json`` (schema in :mod:`medlsam.boxes`; inclusive voxel indices
  of the image file, which is the prediction's grid).

Status of an organ in a case: ``ok`` (in both), ``empty_prediction`` (in the reference only),
``missing_prediction`` (in the reference, and the case has no prediction file: scored as an
empty prediction), ``false_positive`` (in the prediction only), ``absent`` (in neither).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlsam.boxes import Box3D, box_iou, read_boxes_json
from medlsam.errors import InputError
from medlsam.evaluation import metrics
from medlsam.io import KNOWN_SUFFIXES, Volume, case_name, case_names, read_label
from medlsam.records import SHARD_RECORD, read_record, record_files
from medlsam.volume import align_to

logger = logging.getLogger(__name__)

OK = "ok"
EMPTY_PREDICTION = "empty_prediction"
MISSING_PREDICTION = "missing_prediction"  # no prediction file: scored as empty (DSC 0)
FALSE_POSITIVE = "false_positive"
ABSENT = "absent"


class PredictionError(InputError):
    """One case's prediction or boxes file cannot be used: that case fails, the others go on."""


@dataclass(frozen=True)
class OrganScore:
    """One organ of one case. Metric values are NaN where undefined or not available."""

    case: str
    class_id: int
    status: str
    gt_voxels: int
    pred_voxels: int
    dsc: float
    nsd: float
    hd95_monai: float
    hd95_pooled: float
    iou: float


@dataclass(frozen=True)
class CaseJob:
    """Everything needed to score one case (picklable, for worker processes)."""

    case: str
    label: Path
    prediction: Path | None  # None: score as an empty prediction
    boxes: Path | None
    classes: tuple[int, ...] | None
    tolerance_mm: float


# --------------------------------------------------------------------------------------------
# matching


def _suffix_rank(name: str) -> int:
    lower = name.lower()
    return next(i for i, suffix in enumerate(KNOWN_SUFFIXES) if lower.endswith(suffix))


def find_predictions(pred_dir: Path) -> dict[str, Path]:
    """Label-map files in ``pred_dir`` by case name.

    Hidden files (an atomic write in progress) are skipped. Where one case has several files
    (``a.nii.gz`` and ``a.nrrd``), the first suffix of :data:`medlsam.io.KNOWN_SUFFIXES` wins,
    with a warning.
    """
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder not found")
    candidates = [
        p
        for p in pred_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(KNOWN_SUFFIXES)
    ]
    found: dict[str, Path] = {}
    for path in sorted(candidates, key=lambda p: (case_name(p), _suffix_rank(p.name), p.name)):
        case = case_name(path)
        if case in found:
            logger.warning("%s: ignored, %s is the prediction of %s", path, found[case].name, case)
            continue
        found[case] = path
    return found


def union_predictions(pred_dirs: Sequence[Path]) -> dict[str, Path]:
    """Prediction files by case over several folders (the first folder wins, with a warning)."""
    found: dict[str, Path] = {}
    for folder in pred_dirs:
        for case, path in find_predictions(folder).items():
            if case in found:
                logger.warning("%s: ignored, %s is the prediction of %s", path, found[case], case)
                continue
            found[case] = path
    return found


def inference_records(pred_dirs: Sequence[Path]) -> dict[str, dict]:
    """Case entries of ``medlsam-infer``'s records (``run.json``, ``run.shard-K-of-N.json``).

    Warns when a folder holds some shard records of a layout but not all (and no merged
    ``run.json`` covering it): the missing shards' cases may not have been run.
    """
    entries: dict[str, dict] = {}
    for folder in pred_dirs:
        layouts: dict[int, set[int]] = {}
        merged = 0
        for path in record_files(folder):
            match = SHARD_RECORD.match(path.name)
            doc = read_record(path)
            if doc is None:
                continue
            cases = doc["cases"]
            if match is not None:
                layouts.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
            else:
                merged = int((doc.get("shards") or {}).get("count", 0) or 0)
            for case, entry in cases.items():
                if isinstance(entry, dict) and entries.get(case, {}).get("status") != "ok":
                    entries[case] = entry
        for count, have in sorted(layouts.items()):
            lacking = sorted(set(range(1, count + 1)) - have)
            if lacking and merged != count:
                logger.warning(
                    "%s: shard record(s) %s of %d missing: those shards' cases may not have run",
                    folder,
                    ", ".join(str(k) for k in lacking),
                    count,
                )
    return entries


def labels_by_case(labels: Sequence[Path], source: str | Path = "") -> dict[str, Path]:
    """Reference label files by case name (:func:`medlsam.io.case_names`: the file's name, or
    its folder's where file names collide); duplicate names and missing files are errors.

    ``source`` (the list file) is named in the error messages.
    """
    where = f"{source}: " if source else ""
    by_case: dict[str, Path] = {}
    missing = [str(p) for p in labels if not p.exists()]
    if missing:
        shown = "; ".join(missing[:10]) + (
            f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise InputError(f"{where}{len(missing)} label file(s) not found: {shown}")
    for case, path in zip(case_names(labels), labels):
        if case in by_case:
            raise InputError(
                f"{path}: case name {case!r} also names {by_case[case]}; expected unique names"
            )
        by_case[case] = path
    return by_case


# --------------------------------------------------------------------------------------------
# one case


def align_to_label(pred: Volume, label: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prediction's voxels on the reference's grid, exactly (no interpolation).

    Returns:
        data: ``label.shape`` array of the prediction's class ids in the label's ``(i, j, k)``.
        matrix, offset: signed permutation ``(3, 3)`` and ``(3,)`` integers mapping prediction
            indices to label indices, ``ijk_label = matrix @ ijk_pred + offset``.

    Raises:
        InputError: the grids do not coincide voxel for voxel (the message says what differs).
    """
    return align_to(pred, label, what="prediction grid", against="the label ")


def predicted_box(
    classes: Mapping, class_id: int, matrix: np.ndarray, offset: np.ndarray, path: Path
) -> Box3D | None:
    """The box enclosing every predicted box of an organ, on the label grid (None: no box).

    Args:
        classes: :func:`read_boxes_json` of ``path``.
        matrix, offset: prediction-grid -> label-grid index map (:func:`align_to_label`).
    """
    entry = classes.get(str(class_id))
    if not entry or not entry.get("boxes"):
        return None
    try:
        corners = np.array([[b["min"], b["max"]] for b in entry["boxes"]], dtype=float)
        corners = corners.reshape(-1, 3)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(
            f'{path}: class {class_id}: expected boxes as [{{"min": [i, j, k], "max": [i, j, k]}}]'
        ) from err
    return Box3D.from_points(corners @ matrix.T + offset)


def _status(gt_voxels: int, pred_voxels: int, no_file: bool = False) -> str:
    if gt_voxels and pred_voxels:
        return OK
    if gt_voxels:
        return MISSING_PREDICTION if no_file else EMPTY_PREDICTION
    return FALSE_POSITIVE if pred_voxels else ABSENT


def score_case(job: CaseJob) -> list[OrganScore]:
    """Read one prediction and its reference and score every requested organ.

    With ``job.classes`` None, every id present in either map is scored.

    Raises:
        PredictionError: the prediction or the boxes file is missing, corrupt or on another
            grid (the case fails alone).
        InputError: the reference label map cannot be read (the evaluation stops).
    """
    start = time.perf_counter()
    label = read_label(job.label)  # a bad reference stops the evaluation (InputError)
    if job.prediction is None:
        pred_data = np.zeros(label.shape, dtype=np.int32)
        matrix, offset = np.eye(3, dtype=int), np.zeros(3, dtype=int)
    else:
        try:
            pred_data, matrix, offset = align_to_label(read_label(job.prediction), label)
        except InputError as err:
            raise PredictionError(str(err)) from err
    gt_boxes = metrics.label_bounding_boxes(label.data)
    pred_boxes = metrics.label_bounding_boxes(pred_data)
    organ = metrics.score_label_maps(
        pred_data,
        label.data,
        label.spacing,
        job.classes,
        job.tolerance_mm,
        pred_boxes=pred_boxes,
        gt_boxes=gt_boxes,
    )
    try:
        box_doc = read_boxes_json(job.boxes) if job.boxes is not None else None
    except InputError as err:
        raise PredictionError(str(err)) from err
    scores = []
    for cls, m in organ.items():
        # DSC and NSD are already 0 where exactly one side is empty; HD95 is NaN there.
        iou = math.nan
        if box_doc is not None and cls in gt_boxes:
            try:
                pred_box = predicted_box(box_doc, cls, matrix, offset, job.boxes)
            except InputError as err:
                raise PredictionError(str(err)) from err
            gt_box = metrics.slices_to_box(gt_boxes[cls])
            iou = 0.0 if pred_box is None else box_iou(pred_box, gt_box)
        scores.append(
            OrganScore(
                job.case,
                cls,
                _status(m.gt_voxels, m.pred_voxels, job.prediction is None),
                m.gt_voxels,
                m.pred_voxels,
                m.dsc,
                m.nsd,
                m.hd95_monai,
                m.hd95_pooled,
                iou,
            )
        )
    logger.debug(
        "%s: scored %d organs in %.2f s", job.case, len(scores), time.perf_counter() - start
    )
    return scores
