"""The figures ``medlsam-infer`` writes for each query (drawn by :mod:`medlsam.figures`).

Under the case's PNG folder:

* ``<class id>_<name>.png``, one per prompted organ: the axial slice where the organ's predicted
  mask is largest (the middle prompted slice when the mask is empty), every organ's mask
  tinted, this organ outlined, its box prompt(s) on that slice and the segmenter's confidence
  for them: for SAM and MedSAM the mask decoder's predicted IoU (labelled "SAM predicted IoU"),
  for ``classic`` the mean organ probability inside its mask;
* ``overview.png``: axial, coronal and sagittal planes through the centre of each organ's box
  with every organ's mask and boxes (:mod:`medlsam.figures.overview`).

Colours follow the organ's position in ``fg_class``, the same in every figure of a run. Outputs
of the manual-prompt baseline carry a red "upper bound" banner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medlsam.figures.colors import organ_colors
from medlsam.figures.organ import OrganSlice, render_organ_slice
from medlsam.figures.overview import OverviewInput, render_overview
from medlsam.io import Volume
from medlsam.segment.assemble import Prediction
from medlsam.segment.base import FRAME

BASELINE_BANNER = "UPPER BOUND: boxes from the reference labels, not MedLSAM"
OVERVIEW = "overview.png"


def safe_name(text: str) -> str:
    """A file-name-safe version of an organ name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "organ"


def confidence_name(segmenter: str) -> str:
    """What a prompt's confidence is for the segmenter named ``segmenter``."""
    if segmenter.startswith("medsam"):
        return "MedSAM predicted IoU"
    if segmenter.startswith("sam"):
        return "SAM predicted IoU"
    if segmenter == "classic":
        return "classic: mean organ probability"
    return f"{segmenter} confidence"


def choose_slice(prediction: Prediction, class_id: int) -> int | None:
    """The slice with the organ's largest predicted area, else its middle prompted slice."""
    axis = prediction.slice_axis
    area = (prediction.label == class_id).sum(axis=tuple(a for a in range(3) if a != axis))
    if area.max(initial=0) > 0:
        return int(np.argmax(area))
    prompted = np.sort(prediction.prompts["slice"][prediction.prompts["class_id"] == class_id])
    return int(prompted[len(prompted) // 2]) if prompted.size else None


def _voxel_edges(xyxy: Sequence[float], shape: Sequence[int], axis: int) -> dict[int, tuple]:
    """A 1024-frame prompt (columns along the first in-plane axis) -> voxel edges per axis."""
    first, second = (a for a in range(3) if a != axis)
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return {
        first: (x0 * shape[first] / FRAME, x1 * shape[first] / FRAME),
        second: (y0 * shape[second] / FRAME, y1 * shape[second] / FRAME),
    }


def organ_figure(
    volume: Volume,
    prediction: Prediction,
    class_id: int,
    names: Mapping[int, str],
    colors: Mapping[int, str],
    segmenter: str,
):
    """The :class:`~medlsam.figures.sheet.Sheet` of one organ, or None when never prompted."""
    index = choose_slice(prediction, class_id)
    if index is None:
        return None
    p = prediction.prompts
    rows = (p["slice"] == index) & (p["class_id"] == class_id)
    scores = p["score"][rows]
    data = OrganSlice(
        image=volume.data,
        label=prediction.label,
        affine=volume.affine,
        index=index,
        class_id=class_id,
        boxes=[_voxel_edges(b, volume.shape, prediction.slice_axis) for b in p["box"][rows]],
        confidence=float(scores.max()) if scores.size else None,
        confidence_name=confidence_name(segmenter),
        names=names,
        colors=colors,
    )
    banner = BASELINE_BANNER if prediction.baseline else None
    return render_organ_slice(data, prediction.case, banner)


def overview_figure(
    volume: Volume, prediction: Prediction, classes: Sequence[int], names: Mapping[int, str]
):
    """The overview :class:`~medlsam.figures.sheet.Sheet` of one case."""
    boxes = {c: [(b.lo, b.hi) for b in o.boxes] for c, o in prediction.organs.items()}
    data = OverviewInput(
        volume.data,
        volume.affine,
        prediction.label,
        boxes,
        [int(c) for c in classes],
        names,
        organ_colors(classes),
    )
    spacing = "x".join(f"{s:.2f}" for s in volume.spacing)
    subtitle = (
        f"{'x'.join(map(str, volume.shape))} voxels, {spacing} mm, {volume.axcodes}; "
        "filled: predicted masks, rectangles: boxes"
    )
    banner = BASELINE_BANNER if prediction.baseline else None
    return render_overview(data, f"{prediction.case}  ·  predicted organs", subtitle, banner)


def write_figures(
    volume: Volume,
    prediction: Prediction,
    folder: Path,
    classes: Sequence[int],
    class_names: Mapping[int, str],
    segmenter: str,
) -> list[Path]:
    """Write the overview and one figure per prompted organ into ``folder``; their paths."""
    names = {int(c): class_names.get(int(c), f"class_{c}") for c in classes}
    colors = organ_colors(classes)
    written = [overview_figure(volume, prediction, classes, names).save(folder / OVERVIEW)]
    for c in classes:
        sheet = organ_figure(volume, prediction, int(c), names, colors, segmenter)
        if sheet is not None:
            written.append(sheet.save(folder / f"{int(c)}_{safe_name(names[int(c)])}.png"))
    return written
