"""The files written for each query case, all atomically (temporary file, then rename).

Under the segmentation folder (``seg_save_path`` or ``--output``):

* ``<case>.nii.gz``: the label map on the query's own grid (same shape and affine); voxel
  values are the config's ``fg_class`` ids, 0 elsewhere;
* ``<case>.npz``: ``label`` ``(I, J, K)``; the per-slice prompts ``slice`` ``(M,)``,
  ``class_id`` ``(M,)``, ``part`` ``(M,)``, ``box`` ``(M, 4)`` (XYXY, SAM 1024 frame) and
  ``score`` ``(M,)`` (the SAM predicted IoU: SAM's own estimate for its mask, not a quality
  measure; ``classic``: the mean organ probability inside the mask); ``slice_axis``;
  ``classes``; ``upper_bound_baseline`` (bool);
* ``<case>.boxes.json``: the 3D boxes (:func:`medlsam.boxes.boxes_json`);
* with ``[run] organ_masks``: ``<case>/<organ>.nii.gz``, one binary map per organ of
  ``fg_class`` named as TotalSegmentator names its files (:mod:`medlsam.organs`);
* with ``[run] dicom_seg``, for a query read from a DICOM folder: ``<case>.seg.dcm``
  (:mod:`medlsam.dicom_seg`);

and under the PNG folder, ``<case>/overview.png`` and ``<case>/<class id>_<name>.png``
(:mod:`medlsam.pipeline.overlays`).
"""

from __future__ import annotations

import io as _bytes_io
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlsam.boxes import write_boxes_json
from medlsam.dicom_seg import write_dicom_seg
from medlsam.io import Volume, atomic_write_bytes, write_mask, write_organ_masks
from medlsam.organs import organ_file_name
from medlsam.pipeline.overlays import write_figures
from medlsam.segment.assemble import Prediction

logger = logging.getLogger(__name__)

SUFFIXES = (".nii.gz", ".npz", ".boxes.json")


def case_files(seg_dir: Path, case: str) -> dict[str, Path]:
    """The three result files of a case (``nifti``, ``npz``, ``boxes``)."""
    return {
        "nifti": seg_dir / f"{case}.nii.gz",
        "npz": seg_dir / f"{case}.npz",
        "boxes": seg_dir / f"{case}.boxes.json",
    }


def outputs_complete(seg_dir: Path, case: str, organ_masks: bool = False) -> bool:
    """Whether every result file of ``case`` exists and is not empty (with ``organ_masks``,
    its per-organ folder too; a DICOM-SEG is not checked: an empty prediction has none)."""
    files = list(case_files(seg_dir, case).values())
    if organ_masks and not (seg_dir / case).is_dir():
        return False
    return all(p.is_file() and p.stat().st_size > 0 for p in files)


def remove_case(seg_dir: Path, png_dir: Path | None, case: str) -> None:
    """Delete a case's result files and PNG folder (a failed case must leave no stale output)."""
    for path in case_files(seg_dir, case).values():
        path.unlink(missing_ok=True)
    (seg_dir / f"{case}.seg.dcm").unlink(missing_ok=True)
    if (seg_dir / case).is_dir():
        shutil.rmtree(seg_dir / case, ignore_errors=True)
    if png_dir is not None and (png_dir / case).is_dir():
        shutil.rmtree(png_dir / case, ignore_errors=True)


def npz_bytes(prediction: Prediction, classes: Sequence[int]) -> bytes:
    buffer = _bytes_io.BytesIO()
    np.savez_compressed(
        buffer,
        label=prediction.label,
        slice_axis=np.int64(prediction.slice_axis),
        classes=np.asarray(classes, dtype=np.int64),
        upper_bound_baseline=np.bool_(prediction.baseline),
        **prediction.prompts,
    )
    return buffer.getvalue()


def organ_stems(classes: Sequence[int], class_names: Mapping[int, str]) -> dict[int, str]:
    """TotalSegmentator-style file stems of the organs, made unique with the class id."""
    stems: dict[int, str] = {}
    for c in classes:
        stem = organ_file_name(class_names.get(int(c), f"class_{c}"))
        stems[int(c)] = f"{stem}_{int(c)}" if stem in stems.values() else stem
    return stems


def _write_dicom_seg(
    prediction: Prediction, volume: Volume, seg_dir: Path, class_names: Mapping[int, str]
) -> Path | None:
    if volume.path is None or not Path(volume.path).is_dir():
        logger.debug("%s: not read from DICOM, no DICOM-SEG", prediction.case)
        return None
    path = write_dicom_seg(
        prediction.label, volume, class_names, seg_dir / f"{prediction.case}.seg.dcm"
    )
    if path is None:
        logger.warning("%s: no organ predicted, so no DICOM-SEG written", prediction.case)
    return path


def _rel(path: Path, folder: Path) -> str:
    try:
        return (
            str(Path(os.path.relpath(path, folder))) if path.is_relative_to(folder) else str(path)
        )
    except ValueError:  # pragma: no cover - another drive on Windows
        return str(path)


def write_case(
    prediction: Prediction,
    volume: Volume,
    seg_dir: Path,
    png_dir: Path | None,
    classes: Sequence[int],
    class_names: Mapping[int, str],
    extra: Mapping[str, object] | None = None,
    seconds: dict[str, float] | None = None,
    organ_masks: bool = False,
    dicom_seg: bool = False,
) -> dict[str, Any]:
    """Write every output of one case; returns ``{kind: path}`` of what was written.

    Paths are returned relative to ``seg_dir`` (where ``run.json`` lives) when inside it.
    ``png_dir`` None writes no figure; otherwise the seconds spent on figures are added to
    ``seconds["figures"]``.
    ``organ_masks`` and ``dicom_seg`` add the per-organ NIfTI files and the DICOM-SEG.
    """
    files = case_files(seg_dir, prediction.case)
    atomic_write_bytes(files["npz"], npz_bytes(prediction, classes))
    write_boxes_json(
        files["boxes"],
        prediction.case,
        str(volume.path) if volume.path is not None else prediction.case,
        volume.affine,
        [prediction.organs[c] for c in classes if c in prediction.organs],
        extra={"upper_bound_baseline": prediction.baseline, **(extra or {})},
    )
    written: dict[str, Any] = {k: _rel(p, seg_dir) for k, p in files.items() if k != "nifti"}
    if png_dir is not None:
        began = time.perf_counter()
        folder = png_dir / prediction.case
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        segmenter = str((extra or {}).get("segmenter", ""))
        pngs = write_figures(volume, prediction, folder, classes, class_names, segmenter)
        written["png"] = [_rel(p, seg_dir) for p in pngs]
        if seconds is not None:
            seconds["figures"] = time.perf_counter() - began
    if organ_masks:
        stems = organ_stems(classes, class_names)
        folder = seg_dir / prediction.case
        paths = write_organ_masks(prediction.label, volume, stems, folder)
        written["organ_masks"] = [_rel(p, seg_dir) for p in paths]
    if dicom_seg:
        seg_file = _write_dicom_seg(prediction, volume, seg_dir, class_names)
        if seg_file is not None:
            written["dicom_seg"] = _rel(seg_file, seg_dir)
    # the label map last: its presence (with run.json) marks a finished case
    write_mask(prediction.label, like=volume, path=files["nifti"])
    written["nifti"] = _rel(files["nifti"], seg_dir)
    return written
