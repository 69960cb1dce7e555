"""Support prototypes of MedLAM (method.md 3): support points, and the saved prototypes file.

Frames: every mask and point here is on the PADDED 3 mm LAS grid, ``(z, y, x)`` order (the
image of :func:`medlsam.preprocess.medlam_image` zero-padded by 32 voxels), unless a docstring
says otherwise.

* :func:`extreme_points` (WPL, method.md 3.1) and :func:`split_points` (SPL, method.md 3.2) are
  pure numpy on binary masks.
* :class:`Prototypes` holds, per organ, the mean position code of its support points and the
  per-scale feature templates, and saves to / loads from one file: a lab can share prototypes
  without sharing the support scans. A prototypes file records the sha256 of the checkpoint
  that made it and is refused with any other, and the numerics MedLAM ran in (device type
  and precision: fp16 on CUDA moves points against fp32 on the CPU), refused with others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlsam.config import BoxMode
from medlsam.errors import InputError

if TYPE_CHECKING:  # torch only for the prototypes file: registration workers never load it
    import torch

logger = logging.getLogger(__name__)

#: At most this many SPL parts per organ (published).
MAX_SPLITS = 6
#: Half-edge, in 3 mm voxels of the 64^3 patch, of the template cube (published 8^3 centre).
TEMPLATE_RADIUS = 4
PROTOTYPES_FORMAT = "medlsam-prototypes"
PROTOTYPES_VERSION = 1


# --------------------------------------------------------------------------------------------
# support points


def _raster_middle(mask: np.ndarray, axis: int, index: int) -> tuple[int, int] | None:
    """Middle nonzero pixel (C order, element ``len // 2``) of the slice ``index`` along ``axis``.

    The slice's axes are ordered ``((axis + 1) % 3, (axis + 2) % 3)`` as published. Returns the
    two in-plane indices in that order, or None for an empty slice.
    """
    plane = np.take(mask, index, axis=axis)
    if axis == 1:  # np.take leaves (0, 2); the published order is (2, 0)
        plane = plane.T
    rows, cols = np.nonzero(plane)
    if rows.size == 0:
        return None
    mid = rows.size // 2
    return int(rows[mid]), int(cols[mid])


def _point(axis: int, index: int, inplane: tuple[int, int]) -> list[int]:
    point = [0, 0, 0]
    point[axis] = index
    point[(axis + 1) % 3] = inplane[0]
    point[(axis + 2) % 3] = inplane[1]
    return point


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-axis min and max (inclusive) of the nonzero voxels, ``((3,), (3,))`` int, or None."""
    lo, hi = [], []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        found = np.nonzero(mask.any(axis=others))[0]
        if found.size == 0:
            return None
        lo.append(int(found[0]))
        hi.append(int(found[-1]))
    return np.array(lo), np.array(hi)


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """The six extreme points of a binary mask (method.md 3.1).

    Args:
        mask: ``(Z, Y, X)`` bool/int, nonzero = organ.

    Returns:
        ``(6, 3)`` int64 ``(z, y, x)``: [min-z, min-y, min-x, max-z, max-y, max-x] points; each is
        the extreme index on its axis and the raster-middle pixel of that extreme slice.
    """
    mask = np.asarray(mask) != 0
    box = bounding_box(mask)
    if box is None:
        raise ValueError("extreme_points of an empty mask")
    points = []
    for bound in box:
        for axis in range(3):
            inplane = _raster_middle(mask, axis, int(bound[axis]))
            assert inplane is not None  # the extreme slice of a non-empty mask is non-empty
            points.append(_point(axis, int(bound[axis]), inplane))
    return np.array(points, dtype=np.int64)


def split_count(min_z_extent: int, slice_interval: int | None, mode: BoxMode) -> int:
    """Number of SPL parts of an organ (method.md 3 step 2 and 5.1); 0 means "not split".

    ``min_z_extent`` is the smallest ``max_z - min_z`` (3 mm voxels) over the supports that
    contain the organ. SPL splits only when it exceeds ``slice_interval``, into
    ``min(min_z_extent // slice_interval, 6)`` parts (possibly 1: split points of one part,
    which differ slightly from the extreme points). WPL, or SPL with a shorter organ: 0, and the
    six extreme points are used.
    """
    if BoxMode(mode) is BoxMode.WPL or slice_interval is None or min_z_extent <= slice_interval:
        return 0
    return int(min(min_z_extent // slice_interval, MAX_SPLITS))


def split_points(mask: np.ndarray, split_num: int) -> np.ndarray:
    """SPL support points: six points for each of ``split_num`` parts along z (method.md 3.2).

    Part ``i`` covers ``z`` in ``[min_z + i * step, + step)`` with ``step = (max_z - min_z) //
    split_num``; the last part ends at ``max_z`` (exclusive). A part's box is the box of the
    organ inside its slab (the previous part's if the slab is empty) with its z-range forced to
    the slab's start and end. Each bound's point takes the bound's value on its axis and, in
    the plane, the raster-middle pixel of the first non-empty slice of the WHOLE organ at or
    after the bound.

    Args:
        mask: ``(Z, Y, X)`` bool/int.
        split_num: number of parts (>= 1).

    Returns:
        ``(6 * split_num, 3)`` int64 ``(z, y, x)``; parts in increasing z, each ordered as in
        :func:`extreme_points`.
    """
    mask = np.asarray(mask) != 0
    box = bounding_box(mask)
    if box is None:
        raise ValueError("split_points of an empty mask")
    if split_num < 1:
        raise ValueError(f"split_num must be >= 1, not {split_num}")
    min_z, max_z = int(box[0][0]), int(box[1][0])
    step = (max_z - min_z) // split_num
    points: list[list[int]] = []
    previous = box
    for part in range(split_num):
        start = min_z + part * step
        end = max_z if part == split_num - 1 else start + step
        slab = np.zeros_like(mask)
        slab[start:end] = mask[start:end]
        part_box = bounding_box(slab) or previous
        previous = part_box
        lo, hi = part_box[0].copy(), part_box[1].copy()
        lo[0], hi[0] = start, end
        for bound in (lo, hi):
            for axis in range(3):
                index = int(bound[axis])
                points.append(_point(axis, index, _search_slice(mask, axis, index)))
    return np.array(points, dtype=np.int64)


def _search_slice(mask: np.ndarray, axis: int, index: int) -> tuple[int, int]:
    """Raster middle of the first non-empty slice at ``index`` or after it (then before it)."""
    n = mask.shape[axis]
    for i in list(range(max(index, 0), n)) + list(range(min(index, n) - 1, -1, -1)):
        found = _raster_middle(mask, axis, i)
        if found is not None:
            return found
    raise ValueError("empty mask")  # pragma: no cover - callers pass non-empty masks


def support_points(mask: np.ndarray, split_num: int) -> np.ndarray:
    """Split points for ``split_num >= 1`` parts, else the extreme points: ``(6 * groups, 3)``."""
    return split_points(mask, split_num) if split_num >= 1 else extreme_points(mask)


def template_slice(map_size: int, patch: int = 64) -> slice:
    """The centred cube of a feature map of edge ``map_size`` (published: 16->[7:9], 32->[14:18],
    64->[28:36]): the same 24 mm cube at every scale, half a voxel before the point."""
    radius = max(1, TEMPLATE_RADIUS * map_size // patch)
    centre = map_size // 2
    return slice(centre - radius, centre + radius)


# --------------------------------------------------------------------------------------------
# the prototypes container


@dataclass
class ClassPrototype:
    """What localization needs for one organ.

    Attributes:
        fc: ``(N, 3)`` float32, the mean position code of each support point over the supports
            that contain the organ (``N = 6 * groups``).
        templates: scale name -> ``(N, C, k, k, k)`` float32, each voxel's feature vector
            L2-normalised over channels, summed over those supports.
        groups: 1 (WPL, or an SPL organ too short to split) or the number of SPL parts.
        supports: names of the support scans that contained the organ.
    """

    fc: torch.Tensor
    templates: dict[str, torch.Tensor]
    groups: int
    supports: tuple[str, ...]


@dataclass
class Prototypes:
    """Per-organ prototypes plus how they were made (see the module docstring)."""

    classes: dict[int, ClassPrototype]
    mode: BoxMode
    slice_interval: int | None
    feature_scales: tuple[str, ...]
    checkpoint_sha256: str
    base_chns: int
    meta: dict = field(default_factory=dict)
    #: ``{"device": "cpu" | "cuda", "precision": "fp32" | "fp16"}``; empty in files written
    #: before it was recorded (accepted with a warning)
    numerics: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one file (``torch.save`` of plain tensors, lists and strings), atomically."""
        from medlsam.io import atomic_write_bytes

        return atomic_write_bytes(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The content of a prototypes file (what :meth:`save` writes)."""
        import io as _io

        payload = {
            "format": PROTOTYPES_FORMAT,
            "version": PROTOTYPES_VERSION,
            "checkpoint_sha256": self.checkpoint_sha256,
            "base_chns": int(self.base_chns),
            "mode": BoxMode(self.mode).value,
            "slice_interval": self.slice_interval,
            "feature_scales": list(self.feature_scales),
            "classes": [int(c) for c in self.classes],
            "per_class": {
                str(c): {
                    "fc": p.fc.detach().cpu().float(),
                    "templates": {k: v.detach().cpu().float() for k, v in p.templates.items()},
                    "groups": int(p.groups),
                    "supports": list(p.supports),
                }
                for c, p in self.classes.items()
            },
            "meta": {str(k): str(v) for k, v in self.meta.items()},
            "numerics": {str(k): str(v) for k, v in self.numerics.items()},
        }
        import torch

        buffer = _io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Prototypes:
        """Read a file written by :meth:`save` (weights-only unpickling; never runs code).

        Raises:
            InputError: missing, corrupt, or not a medlsam prototypes file.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: prototypes file not found")
        return cls.from_bytes(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | os.PathLike[str] = "prototypes") -> Prototypes:
        """Prototypes from the content of a file (``path`` names it in errors)."""
        import io as _io

        import torch

        try:
            raw = torch.load(_io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises many unrelated types on damaged files
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise InputError(f"{path}: cannot read prototypes file ({first})") from err
        if not isinstance(raw, Mapping) or raw.get("format") != PROTOTYPES_FORMAT:
            raise InputError(f"{path}: not a medlsam prototypes file (written by Localizer.fit)")
        if raw.get("version") != PROTOTYPES_VERSION:
            raise InputError(
                f"{path}: prototypes format version {raw.get('version')}, "
                f"expected {PROTOTYPES_VERSION}"
            )
        try:
            classes = {
                int(c): ClassPrototype(
                    fc=raw["per_class"][str(c)]["fc"].float(),
                    templates={
                        k: v.float() for k, v in raw["per_class"][str(c)]["templates"].items()
                    },
                    groups=int(raw["per_class"][str(c)]["groups"]),
                    supports=tuple(raw["per_class"][str(c)]["supports"]),
                )
                for c in raw["classes"]
            }
            return cls(
                classes=classes,
                mode=BoxMode(raw["mode"]),
                slice_interval=raw["slice_interval"],
                feature_scales=tuple(raw["feature_scales"]),
                checkpoint_sha256=str(raw["checkpoint_sha256"]),
                base_chns=int(raw["base_chns"]),
                meta=dict(raw.get("meta", {})),
                numerics=dict(raw.get("numerics", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"{path}: incomplete prototypes file (missing {err})") from err

    def check_compatible(
        self,
        source: str | os.PathLike[str],
        fingerprint: str,
        classes: Sequence[int],
        mode: BoxMode,
        slice_interval: int | None,
        feature_scales: Sequence[str],
        numerics: Mapping[str, str] | None = None,
    ) -> None:
        """Refuse prototypes made with another checkpoint, for other settings or in other
        numerics (device type and precision) than ``numerics`` (InputError, one line)."""
        if self.checkpoint_sha256 != fingerprint:
            raise InputError(
                f"{source}: prototypes were made with checkpoint sha256 "
                f"{self.checkpoint_sha256[:16]}..., not with the loaded one "
                f"({fingerprint[:16]}...); "
                "rebuild them from the support scans with this checkpoint"
            )
        missing = [c for c in classes if c not in self.classes]
        if missing:
            raise InputError(
                f"{source}: prototypes have no organ {missing} (they hold {list(self.classes)})"
            )
        if BoxMode(mode) is not BoxMode(self.mode) or (
            BoxMode(mode) is BoxMode.SPL and slice_interval != self.slice_interval
        ):
            raise InputError(
                f"{source}: prototypes were made for bbox_mode {BoxMode(self.mode).value} "
                f"slice_interval {self.slice_interval}, not {BoxMode(mode).value} {slice_interval}"
            )
        if numerics is not None:
            self._check_numerics(source, numerics)
        lacking = [s for s in feature_scales if s not in self.feature_scales]
        if lacking:
            raise InputError(
                f"{source}: prototypes lack feature scales {lacking} "
                f"(they hold {list(self.feature_scales)})"
            )

    def _check_numerics(self, source: str | os.PathLike[str], numerics: Mapping[str, str]) -> None:
        if not self.numerics:
            logger.warning(
                "%s: prototypes file does not record the device and precision it was made in; "
                "using it with MedLAM on %s in %s",
                source,
                numerics.get("device"),
                numerics.get("precision"),
            )
            return
        if dict(self.numerics) != dict(numerics):
            made = f"{self.numerics.get('device')} in {self.numerics.get('precision')}"
            now = f"{numerics.get('device')} in {numerics.get('precision')}"
            raise InputError(
                f"{source}: prototypes were made with MedLAM on {made}, this run uses {now}; "
                "delete the file to rebuild them, or match --device / [run] medlam_precision"
            )
