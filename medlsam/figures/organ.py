"""One organ on one axial slice: the CT, every organ's mask tinted, this organ outlined, its box
prompt(s) on that slice and the segmenter's confidence for them, named for what it is (for
SAM and MedSAM, the mask decoder's predicted IoU)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medlsam.figures.planes import PlaneView, grey, paint
from medlsam.figures.sheet import Sheet, legend_image

#: Display pixels along the larger side of the slice (at least one pixel per voxel, at most 1024).
SIZE = 512
MAX_SIZE = 1024
#: Narrowest figure, so that the header and the legend fit.
MIN_WIDTH = 680
MARKS = (
    ("box prompt on this slice", "#ffffff", "-"),
    ("outline: this organ's mask", "#ffffff", "-"),
)


@dataclass(frozen=True)
class OrganSlice:
    """One organ's slice and what to draw on it.

    Attributes:
        image, label: the volume ``(I, J, K)`` (HU) and the label map on its grid.
        affine: ``(4, 4)`` voxel-to-RAS+ matrix.
        index: the axial slice (along the volume's superior-inferior voxel axis).
        class_id: the organ; names and colours by class id for every organ.
        boxes: the organ's box prompts on this slice as voxel edges ``((lo, hi) per in-plane
            voxel axis)``: ``{axis: (start, stop)}`` pairs, one mapping per box.
        confidence: the best confidence of those prompts, or None.
        confidence_name: what the confidence is (``"SAM predicted IoU"``).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    index: int
    class_id: int
    boxes: Sequence[Mapping[int, tuple[float, float]]]
    confidence: float | None
    confidence_name: str
    names: Mapping[int, str]
    colors: Mapping[int, str]


def axial_view(shape: Sequence[int], affine: np.ndarray, size: int = SIZE) -> PlaneView:
    """The axial :class:`PlaneView` with ``size`` pixels along its larger side (>= 1 px/voxel)."""
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    probe = PlaneView.make("axial", shape, affine, 1.0)
    mm = [probe.in_shape[0] * spacing[probe.row_axis], probe.in_shape[1] * spacing[probe.col_axis]]
    px_per_mm = max(
        size / max(mm), 1.0 / float(min(spacing[probe.row_axis], spacing[probe.col_axis]))
    )
    return PlaneView.make("axial", shape, affine, min(px_per_mm, MAX_SIZE / max(mm)))


def render_organ_slice(data: OrganSlice, title: str, banner: str | None = None) -> Sheet:
    """The figure of one organ (see the module docstring)."""
    view = axial_view(data.image.shape, data.affine)
    label = view.take(data.label, data.index)
    rgb = paint(
        grey(view.take(data.image, data.index)),
        label,
        {c: data.colors[c] for c in data.colors},
        outline=False,
    )
    own = label == data.class_id
    paint(
        rgb, np.where(own, data.class_id, 0), {data.class_id: data.colors[data.class_id]}, fill=0.0
    )
    height, width = view.out_shape
    top = 54
    organs = tuple((data.names.get(c, str(c)), data.colors[c]) for c in data.colors)
    full = max(width, MIN_WIDTH)
    legend = legend_image(organs, MARKS, 4, full - 10)
    sheet = Sheet(full, top + height + legend.shape[0] + 6 + (30 if banner else 0))
    left = (full - width) // 2
    color = data.colors[data.class_id]
    name = data.names.get(data.class_id, f"class {data.class_id}")
    sheet.text(10, 6, f"{title}  ·  {name} ({data.class_id})", size=11, color=color, weight="bold")
    voxels = int(
        np.count_nonzero(np.take(data.label, data.index, axis=view.normal) == data.class_id)
    )
    conf = f"{data.confidence:.2f}" if data.confidence is not None else "–"
    sheet.text(
        10,
        30,
        f"axial slice {'ijk'[view.normal]}={data.index}  ·  {data.confidence_name}: {conf}  ·  "
        f"mask {voxels} voxels",
        size=9,
    )
    sheet.image(rgb, left, top)
    for box in data.boxes:
        r0, r1 = view.span(*box[view.row_axis], along_rows=True)
        c0, c1 = view.span(*box[view.col_axis], along_rows=False)
        sheet.rect(left + c0, top + r0, left + c1, top + r1, color, width=2.0)
    sheet.overlay(legend, 10, top + height + 4)
    if banner:
        bottom = sheet.height - 30
        sheet.rect(0, bottom, sheet.width, sheet.height, "#aa0000", fill="#aa0000")
        sheet.text(10, bottom + 6, banner, size=10, weight="bold")
    return sheet
