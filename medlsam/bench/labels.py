"""Where a trained MedLAM would put the work, for a benchmark run with random weights.

With random MedLAM weights the predicted points and boxes mean nothing, so the count of distinct
refinement patches (and of shared ones, ``--mss-share-mm``) and of slices to segment would be
meaningless. :class:`LabelGuidedLocalizer` therefore gives the localizer the query's true organ
points in place of its relative-distance step (the localizer's ``coarse_points``; the patches,
forward passes and matching that follow are its own) and hands on, for segmentation, boxes
from the query's labels split into as many SPL sub-boxes as the localizer gave.
"""

from __future__ import annotations

import numpy as np

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.io import Volume
from medlsam.localization.localizer import Localizer
from medlsam.localization.prototypes import support_points
from medlsam.preprocess import PAD, medlam_image, medlam_label


def label_boxes(label: np.ndarray, axis: int, groups: dict[int, int]) -> dict[int, OrganBoxes]:
    """Per organ, ``groups[c]`` sub-boxes from the label map, split along the slice axis.

    As the published SPL split (method.md 3.2) but on the query's own slices: part ``i`` spans
    ``[z0 + i*step, z0 + (i+1)*step]`` (both ends, so neighbours share one slice), the last part
    ends at the organ's top slice; each part's in-plane extent is the organ's within it.
    """
    out = {}
    others = tuple(a for a in range(3) if a != axis)
    for c, n in groups.items():
        mask = label == c
        present = np.nonzero(mask.any(axis=others))[0]
        if present.size == 0:
            out[c] = OrganBoxes(c, (), np.zeros((0, 6, 3)), False)
            continue
        z0, z1 = int(present[0]), int(present[-1])
        n = max(1, min(n, z1 - z0 + 1))
        step = max(1, (z1 - z0) // n)
        boxes = []
        for i in range(n):
            lo, hi = z0 + i * step, (z1 if i == n - 1 else z0 + (i + 1) * step)
            box = Box3D.from_mask(np.take(mask, np.arange(lo, hi + 1), axis=axis))
            if box is None:
                continue
            b_lo, b_hi = list(box.lo), list(box.hi)
            b_lo[axis], b_hi[axis] = lo, hi
            boxes.append(Box3D(tuple(b_lo), tuple(b_hi)))  # type: ignore[arg-type]
        out[c] = OrganBoxes(c, tuple(boxes), np.zeros((len(boxes), 6, 3)), bool(boxes))
    return out


def true_points(localizer: Localizer, volume: Volume, label: Volume) -> np.ndarray:
    """The query's own support points (SPL split or extreme points, padded 3 mm grid), in the
    prototypes' order: where a trained MedLAM's relative-distance step would land. Organs absent
    from the query's labels get the centre of the grid."""
    protos = localizer.prototypes.classes  # type: ignore[union-attr]
    grid = medlam_image(volume, localizer.interpolation)
    lab = medlam_label(label, list(protos), grid)
    rows = []
    for c, proto in protos.items():
        mask = lab == c
        if mask.any():
            rows.append(support_points(mask, proto.groups if proto.groups > 1 else 0))
        else:
            rows.append(np.tile(np.array(lab.shape) // 2, (len(proto.fc), 1)))
    return np.concatenate(rows).astype(np.int64) + PAD


class LabelGuidedLocalizer:
    """``predict`` through the real localizer, timed (:attr:`seconds`, CUDA synchronised by
    ``now``), optionally guided by the query's labels.

    With ``label`` (random MedLAM weights) the localizer starts refinement from
    :func:`true_points` (computed before the clock starts) and the boxes handed on are
    :func:`label_boxes`, as many per organ as the localizer gave (at least the prototype's
    groups). :attr:`organs` keeps the boxes handed on, for pricing the published pattern.
    """

    def __init__(self, localizer: Localizer, now, label: Volume | None = None) -> None:
        self.localizer, self.now, self.label = localizer, now, label
        self.seconds = 0.0
        self.organs: dict[int, OrganBoxes] = {}

    def predict(self, volume: Volume) -> dict[int, OrganBoxes]:
        loc = self.localizer
        if self.label is not None:
            points = true_points(loc, volume, self.label)
            loc.coarse_points = lambda padded: points
        try:
            began = self.now()
            organs = loc.predict(volume)
            self.seconds += self.now() - began
        finally:
            loc.coarse_points = None
        if self.label is not None:
            protos = loc.prototypes.classes  # type: ignore[union-attr]
            groups = {c: max(len(organs[c].boxes), protos[c].groups) for c in organs}
            organs = label_boxes(self.label.data, volume.slice_axis(), groups)
        self.organs = organs
        return organs
