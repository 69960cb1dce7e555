"""The files written for each query case, all atomically (temporary file, then rename).

Under the segmentation folder (``seg_save_path`` or ``--output``):

* ``<case>.nii.gz``: the label map on the query's own grid (same shape and affine); voxel
  values are the config's ``fg_class`` ids, 0 elsewhere;
* ``<case>.npz``: ``label`` ``(I, J, K)``; the per-slice prompts ``slice`` ``(M,)``,
  ``class_id`` ``(M,)``, ``part`` ``(M,)``, ``box`` ``(M, 4)`` (XYXY, SAM 1024 frame) and
  ``score`` ``(M,)``; ``slice_axis``; ``classes``; ``upper_bound_baseline`` (bool);
* ``<case>.boxes.json``: the 3D boxes (:func:`medlsam.boxes.boxes_json`);

and under the PNG folder, ``<case>/<class id>_<name>.png`` (:mod:`medlsam.pipeline.overlays`).
"""

from __future__ import annotations

import io as _bytes_io
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlsam.boxes import boxes_json
from medlsam.io import Volume, atomic_write_bytes, atomic_write_text, write_mask
from medlsam.pipeline.overlays import render_organ, safe_name
from medlsam.png import write_png
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


def outputs_complete(seg_dir: Path, case: str) -> bool:
    """Whether every result file of ``case`` exists and is not empty."""
    return all(p.is_file() and p.stat().st_size > 0 for p in case_files(seg_dir, case).values())


def remove_case(seg_dir: Path, png_dir: Path | None, case: str) -> None:
    """Delete a case's result files and PNG folder (a failed case must leave no stale output)."""
    for path in case_files(seg_dir, case).values():
        path.unlink(missing_ok=True)
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
) -> dict[str, Any]:
    """Write every output of one case; returns ``{kind: path}`` of what was written.

    Paths are returned relative to ``seg_dir`` (where ``run.json`` lives) when inside it.
    """
    files = case_files(seg_dir, prediction.case)
    atomic_write_bytes(files["npz"], npz_bytes(prediction, classes))
    doc = boxes_json(
        prediction.case,
        str(volume.path) if volume.path is not None else prediction.case,
        volume.affine,
        [prediction.organs[c] for c in classes if c in prediction.organs],
        extra={"upper_bound_baseline": prediction.baseline, **(extra or {})},
    )
    atomic_write_text(files["boxes"], json.dumps(doc, indent=2))
    written: dict[str, Any] = {k: _rel(p, seg_dir) for k, p in files.items() if k != "nifti"}
    if png_dir is not None:
        folder = png_dir / prediction.case
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        pngs = []
        for c in classes:
            image = render_organ(volume, prediction, int(c), classes, class_names)
            if image is None:
                continue
            name = safe_name(class_names.get(int(c), f"class_{c}"))
            pngs.append(_rel(write_png(folder / f"{int(c)}_{name}.png", image), seg_dir))
        written["png"] = pngs
    # the label map last: its presence (with run.json) marks a finished case
    write_mask(prediction.label, like=volume, path=files["nifti"])
    written["nifti"] = _rel(files["nifti"], seg_dir)
    return written
