"""Box values passed from localization to segmentation and written to ``<case>.boxes.json``.

Frames:
* :class:`Box3D` is in voxel indices of the ORIGINAL query file, in the array order nibabel
  reads it, ``(i, j, k)``; ``lo`` and ``hi`` are both inclusive.
* 2D prompts are XYXY in SAM's 1024x1024 input frame (:mod:`medlsam.assemble`).

This module is pure numpy (no torch), and the one owner of the ``<case>.boxes.json`` format:
:func:`boxes_json` builds the document, :func:`write_boxes_json` writes it (atomically) and
:func:`read_boxes_json` reads it back, checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlsam.errors import InputError
from medlsam.io import atomic_write_text


@dataclass(frozen=True)
class Box3D:
    """An axis-aligned box in the query file's voxel indices ``(i, j, k)``, both ends inclusive."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    def __post_init__(self) -> None:
        if any(a > b for a, b in zip(self.lo, self.hi)):
            raise ValueError(f"box lo {self.lo} exceeds hi {self.hi}")

    @classmethod
    def from_points(cls, points: np.ndarray) -> Box3D:
        """The rounded bounding box of points ``(N, 3)`` given in ``(i, j, k)`` indices."""
        pts = np.rint(np.asarray(points, dtype=np.float64)).astype(int)
        return cls(tuple(pts.min(axis=0).tolist()), tuple(pts.max(axis=0).tolist()))  # type: ignore[arg-type]

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box3D | None:
        """The tight box of the nonzero voxels of a 3D mask, or None if it is empty."""
        idx = np.nonzero(mask)
        if idx[0].size == 0:
            return None
        lo = tuple(int(a.min()) for a in idx)
        hi = tuple(int(a.max()) for a in idx)
        return cls(lo, hi)  # type: ignore[arg-type]

    def clip(self, shape: Sequence[int]) -> Box3D | None:
        """The part of the box inside an image of ``shape``, or None if none of it is."""
        lo = [max(0, a) for a in self.lo]
        hi = [min(int(s) - 1, b) for b, s in zip(self.hi, shape)]
        if any(a > b for a, b in zip(lo, hi)):
            return None
        return Box3D(tuple(lo), tuple(hi))  # type: ignore[arg-type]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(b - a + 1 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def to_mm(self, affine: np.ndarray) -> tuple[list[float], list[float]]:
        """World RAS+ mm of the two corners ``lo`` and ``hi`` (voxel centres)."""
        corners = np.array([self.lo, self.hi], dtype=np.float64)
        world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
        return world[0].round(3).tolist(), world[1].round(3).tolist()


@dataclass(frozen=True)
class OrganBoxes:
    """What localization found for one organ (class) of one query.

    Attributes:
        class_id: the label id of the organ.
        boxes: one box (WPL) or the SPL sub-boxes (in order along the slice axis; in the
            published part order with ``reproduce = published``), already clipped to the image;
            empty when the organ lies outside the image.
        extreme_points: ``(n_boxes, 6, 3)`` float, the predicted extreme points in the query
            file's ``(i, j, k)`` voxel indices (before clipping).
        inside: False when the predicted organ lies entirely outside the query's field of view.
        raw_boxes: the same boxes before clipping, one per entry of ``boxes`` (rounded
            predicted corners, possibly outside the image); empty means "as ``boxes``".
    """

    class_id: int
    boxes: tuple[Box3D, ...]
    extreme_points: np.ndarray = field(repr=False)
    inside: bool = True
    raw_boxes: tuple[Box3D, ...] = ()

    def __post_init__(self) -> None:
        if self.raw_boxes and len(self.raw_boxes) != len(self.boxes):
            raise ValueError(
                f"organ {self.class_id}: {len(self.raw_boxes)} raw boxes for "
                f"{len(self.boxes)} boxes"
            )

    @property
    def unclipped(self) -> tuple[Box3D, ...]:
        """The boxes before clipping (``raw_boxes``, or ``boxes`` when none were given)."""
        return self.raw_boxes or self.boxes


def boxes_json(
    case: str,
    image: str,
    affine: np.ndarray,
    organs: Iterable[OrganBoxes],
    extra: dict | None = None,
) -> dict:
    """The ``<case>.boxes.json`` document.

    Shape: ``{"case", "image", "classes": {"<id>": {"boxes": [{"min", "max", "min_mm",
    "max_mm", "min_raw", "max_raw"}], "extreme_points": [...], "inside": bool}}}``;
    ``min``/``max`` are inclusive voxel indices ``(i, j, k)`` of the image file, clipped to the
    image; ``min_raw``/``max_raw`` the same corners before clipping (they can lie outside the
    image); ``*_mm`` are world RAS+ millimetres of ``min``/``max``.
    """
    classes: dict[str, dict] = {}
    for organ in organs:
        entries = []
        for box, raw in zip(organ.boxes, organ.unclipped, strict=True):
            lo_mm, hi_mm = box.to_mm(affine)
            entries.append(
                {
                    "min": list(box.lo),
                    "max": list(box.hi),
                    "min_mm": lo_mm,
                    "max_mm": hi_mm,
                    "min_raw": list(raw.lo),
                    "max_raw": list(raw.hi),
                }
            )
        classes[str(organ.class_id)] = {
            "boxes": entries,
            "extreme_points": np.round(np.asarray(organ.extreme_points, dtype=float), 3).tolist(),
            "inside": bool(organ.inside),
        }
    doc = {"case": case, "image": image, "classes": classes}
    if extra:
        doc.update(extra)
    return doc


def write_boxes_json(
    path: Path,
    case: str,
    image: str,
    affine: np.ndarray,
    organs: Iterable[OrganBoxes],
    extra: dict | None = None,
) -> Path:
    """Write :func:`boxes_json` to ``path`` atomically; returns ``path``."""
    doc = boxes_json(case, image, affine, organs, extra)
    return atomic_write_text(Path(path), json.dumps(doc, indent=2))


def read_boxes_json(path: Path) -> dict:
    """The ``classes`` mapping of a ``<case>.boxes.json`` file (schema: :func:`boxes_json`).

    Raises:
        InputError: unreadable, not JSON, or without a ``classes`` mapping.
    """
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        classes = doc["classes"]
        if not isinstance(classes, dict):
            raise TypeError("'classes' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(
            f'{path}: not a boxes file ({err}); expected JSON with "classes": {{id: {{boxes}}}}'
        ) from err
    return classes


def box_iou(a: Box3D, b: Box3D) -> float:
    """Volume IoU of two inclusive voxel boxes (voxel counts, so a one-voxel box has volume 1)."""
    inter = 1
    for alo, ahi, blo, bhi in zip(a.lo, a.hi, b.lo, b.hi):
        overlap = min(ahi, bhi) - max(alo, blo) + 1
        if overlap <= 0:
            return 0.0
        inter *= overlap
    va = int(np.prod(a.size))
    vb = int(np.prod(b.size))
    return inter / float(va + vb - inter)


def group_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box ``(lo, hi)`` (float64) of one group of six points ``(6, 3)``: min from the first three
    points' own axes, max from the last three, sorted per axis."""
    points = np.asarray(points)
    a = np.array([points[0, 0], points[1, 1], points[2, 2]], dtype=np.float64)
    b = np.array([points[3, 0], points[4, 1], points[5, 2]], dtype=np.float64)
    return np.minimum(a, b), np.maximum(a, b)


def box_overlaps(box: tuple[np.ndarray, np.ndarray], shape: Sequence[int]) -> bool:
    """Whether the inclusive box ``(lo, hi)`` touches an array of ``shape``."""
    lo, hi = box
    return bool(np.all(hi >= 0) and np.all(lo <= np.array(shape) - 1))
