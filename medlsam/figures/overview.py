"""One figure per case: for each organ, the axial, coronal and sagittal planes through the centre
of its 3D box, with every organ's mask tinted and every box that the plane cuts.

Each organ gets a cell of three panels headed by its name in its colour; its own boxes are drawn
solid, other organs' boxes dashed. With a reference label map (``medlsam-eval``), reference
outlines are drawn over the prediction. An organ with no predicted box is centred on its
predicted mask, else on its reference, and says so; one with neither is listed as not found.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medlsam.figures.planes import PlaneView, grey, paint
from medlsam.figures.sheet import MUTED, Sheet, legend_image

#: Display pixels along the largest physical extent of the volume, per panel.
PANEL = 200
GAP = 6
HEADER = 22
#: Boxes per organ as inclusive voxel corners ``((i0, j0, k0), (i1, j1, k1))``.
Boxes = Mapping[int, Sequence[tuple[Sequence[int], Sequence[int]]]]


@dataclass(frozen=True)
class OverviewInput:
    """What an overview shows.

    Attributes:
        image: ``(I, J, K)`` CT in HU; ``affine`` its ``(4, 4)`` voxel-to-RAS+ matrix.
        label: ``(I, J, K)`` predicted class ids on the same grid.
        boxes: per organ, its predicted boxes (:data:`Boxes`).
        classes: organs in order (rows of the figure); names and colours by class id.
        reference: optional ``(I, J, K)`` reference label map on the same grid.
    """

    image: np.ndarray
    affine: np.ndarray
    label: np.ndarray
    boxes: Boxes
    classes: Sequence[int]
    names: Mapping[int, str]
    colors: Mapping[int, str]
    reference: np.ndarray | None = None


def _extent(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    idx = np.nonzero(mask)
    if not idx[0].size:
        return None
    return np.array([a.min() for a in idx]), np.array([a.max() for a in idx])


def organ_centre(data: OverviewInput, cid: int) -> tuple[np.ndarray | None, str]:
    """Voxel ``(i, j, k)`` at the centre of the organ's box(es), and where it came from."""
    boxes = data.boxes.get(cid) or ()
    if boxes:
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        return (lo + hi) // 2, "box"
    for source, volume in (("mask", data.label), ("reference", data.reference)):
        found = _extent(volume == cid) if volume is not None else None
        if found is not None:
            return (found[0] + found[1]) // 2, source
    return None, "none"


def _views(data: OverviewInput) -> dict[str, PlaneView]:
    shape = data.image.shape
    spacing = np.sqrt((np.asarray(data.affine)[:3, :3] ** 2).sum(axis=0))
    px_per_mm = PANEL / float(max(n * s for n, s in zip(shape, spacing, strict=True)))
    return {
        n: PlaneView.make(n, shape, data.affine, px_per_mm)
        for n in ("axial", "coronal", "sagittal")
    }


def _panel(data: OverviewInput, view: PlaneView, index: int) -> np.ndarray:
    rgb = grey(view.take(data.image, index))
    ref = view.take(data.reference, index) if data.reference is not None else None
    return paint(rgb, view.take(data.label, index), data.colors, outline=ref is None, reference=ref)


def _draw_boxes(
    sheet: Sheet, data: OverviewInput, view: PlaneView, index: int, cid: int, at: tuple[int, int]
) -> None:
    left, top = at
    for other in data.classes:
        for lo, hi in data.boxes.get(other) or ():
            if not lo[view.normal] <= index <= hi[view.normal]:
                continue
            r0, c0, r1, c1 = view.box(lo, hi)
            own = other == cid
            sheet.rect(
                left + c0,
                top + r0,
                left + c1,
                top + r1,
                data.colors.get(other, "#ffffff"),
                width=1.8 if own else 0.9,
                style="-" if own else "--",
            )


def _cell(sheet: Sheet, data: OverviewInput, views, cid: int, at: tuple[int, int]) -> None:
    centre, source = organ_centre(data, cid)
    left, top = at
    name = data.names.get(cid, f"class {cid}")
    sheet.text(left, top + 3, f"{name} ({cid})", size=10, color=data.colors[cid], weight="bold")
    where = {
        "box": "box centre",
        "mask": "no box: mask centre",
        "reference": "not predicted: reference centre",
    }[source]
    ijk = ", ".join(str(int(v)) for v in centre)
    sheet.text(
        left + cell_width(views) - 4,
        top + 5,
        f"{where} ({ijk})",
        size=8,
        color=MUTED,
        ha="right",
    )
    x = left
    for view in views.values():
        index = int(centre[view.normal])
        sheet.image(_panel(data, view, index), x, top + HEADER)
        _draw_boxes(sheet, data, view, index, cid, (x, top + HEADER))
        x += view.out_shape[1] + GAP


def cell_width(views: Mapping[str, PlaneView]) -> int:
    return sum(v.out_shape[1] for v in views.values()) + 2 * GAP


def render_overview(
    data: OverviewInput, title: str, subtitle: str = "", banner: str | None = None
) -> Sheet:
    """The overview :class:`Sheet` of one case (see the module docstring)."""
    views = _views(data)
    shown = [c for c in data.classes if organ_centre(data, c)[0] is not None]
    missing = [data.names.get(c, str(c)) for c in data.classes if c not in shown]
    cell_w = cell_width(views)
    cell_h = HEADER + max(v.out_shape[0] for v in views.values())
    per_row = 1 if len(shown) <= 3 else 2
    n_rows = -(-max(len(shown), 1) // per_row)
    top0 = 74 + (26 if banner else 0)
    width = max(per_row * cell_w + (per_row + 1) * 12, 640)
    marks = [("box of the organ", "#ffffff", "-"), ("other organs' boxes", "#ffffff", "--")]
    if data.reference is not None:
        marks.insert(0, ("reference outline (light)", "#dddddd", "-"))
    organs = [(data.names.get(c, str(c)), data.colors[c]) for c in data.classes]
    legend = legend_image(tuple(organs), tuple(marks), 5, width - 12)
    height = top0 + n_rows * (cell_h + 12) + legend.shape[0] + 8
    sheet = Sheet(width, height)
    sheet.text(12, 8, title, size=12, weight="bold")
    notes = subtitle + (f"\nnot found: {', '.join(missing)}" if missing else "")
    sheet.text(12, 30, notes, size=8, color=MUTED)
    if banner:
        sheet.rect(0, 70, width, 96, "#aa0000", fill="#aa0000")
        sheet.text(12, 74, banner, size=10, weight="bold")
    for col in range(per_row):
        x = 12 + col * (cell_w + 12)
        for view in views.values():
            sheet.text(
                x + view.out_shape[1] / 2, top0 - 16, view.name, size=9, ha="center", color=MUTED
            )
            x += view.out_shape[1] + GAP
    for n, cid in enumerate(shown):
        row, col = divmod(n, per_row)
        _cell(sheet, data, views, cid, (12 + col * (cell_w + 12), top0 + row * (cell_h + 12)))
    sheet.overlay(legend, 12, top0 + n_rows * (cell_h + 12))
    return sheet
