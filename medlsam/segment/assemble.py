"""From 3D boxes to per-slice 2D prompts, and from per-slice 2D masks to one label map.

Frames: 3D boxes (:class:`medlsam.boxes.Box3D`) are inclusive voxel indices ``(i, j, k)`` of
the query file; slices are taken along ``volume.slice_axis()`` and laid out as
:func:`medlsam.preprocess.slice_2d` does (rows follow ``slice_frame(shape, axis)[0]``, columns
``[1]``); 2D prompts are XYXY in SAM's 1024 frame.

**Prompts** (method.md 5.2): for every (sub-)box of an organ and every slice of its range along
the slice axis, both ends included, the same 2D box: the 3D box's in-plane extent scaled to the
1024 frame (``round(index * 1024 / size)``, half to even) and enlarged by a 10-pixel margin on
every side, then clipped to ``[0, 1024]`` (the published code does not clip).
:func:`published_prompts` is the published rule exactly (``[run] reproduce = published``).

**Sub-boxes of one organ that overlap on a slice** (SPL), ``overlap``:

* ``"score"`` (default): each pixel takes the highest confidence of the organ's sub-boxes, i.e.
  the organ's mask there is the union of the sub-box masks (for SAM, exactly the mask of the
  sub-box with the highest probability at that pixel). It does not depend on the order of the
  sub-boxes, and a sub-box whose in-plane extent cuts the organ short cannot erase what its
  neighbour found.
* ``"later"`` (published): the later sub-box (in order along the slice axis) replaces the
  earlier one's mask on the shared slices.

Measured with the ``classic`` backend on the TotalSegmentator example CT (8 organs, 3 true
sub-boxes each, corners jittered by 0, 2 or 4 voxels, 6 draws): mean Dice 0.726/0.683/0.594
with ``"score"`` against 0.724/0.685/0.594 with ``"later"``, i.e. no measurable difference,
since only one slice per pair of neighbouring sub-boxes is shared. ``"score"`` is the default
for its order independence, not for a demonstrated gain; SAM/MedSAM weights were not
available to measure it with them.

**Organs that overlap each other:** a pixel inside the masks of several organs goes to the organ
with the highest per-pixel confidence there (SAM: the up-sampled sigmoid probability; classic:
its organ probability); exact ties go to the organ listed first in ``fg_class``. Pixels in no
mask are background (0).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.config import OVERLAP_RULES
from medlsam.preprocess import slice_frame
from medlsam.segment.base import FRAME, SliceRequest, SliceResult

#: Published margin, in pixels of the 1024 frame, added to every side of a 2D prompt.
MARGIN = 10
#: The manual-prompt baseline enlarges each side by a random 0..MAX_JITTER-1 pixels.
MAX_JITTER = 20


@dataclass(frozen=True)
class Prompt:
    """One 2D box prompt on one slice.

    Attributes:
        class_id: the organ.
        part: which of the organ's boxes (SPL sub-box number; 0 for WPL and the baseline).
        index: slice index along the slice axis.
        box: XYXY in the 1024 frame (float).
    """

    class_id: int
    part: int
    index: int
    box: tuple[float, float, float, float]


def to_frame(lo: float, hi: float, size: int, frame: int = FRAME) -> tuple[float, float]:
    """Scale an inclusive pixel range of an axis of ``size`` pixels to the 1024 frame."""
    return float(np.rint(lo * frame / size)), float(np.rint(hi * frame / size))


def clip_box(box: Sequence[float], frame: int = FRAME) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(min(max(v, 0.0), frame)) for v in box)
    return x0, y0, x1, y1


def box_prompt(
    box: Box3D, shape: Sequence[int], axis: int, margin: int = MARGIN
) -> tuple[range, tuple[float, float, float, float]]:
    """The slices and the 2D prompt of one 3D box (published rule plus clipping).

    Returns:
        ``range`` of slice indices (both ends of the box included) and the XYXY box in the 1024
        frame, clipped to ``[0, 1024]``.
    """
    row_axis, col_axis = slice_frame(shape, axis)
    x0, x1 = to_frame(box.lo[col_axis], box.hi[col_axis], shape[col_axis])
    y0, y1 = to_frame(box.lo[row_axis], box.hi[row_axis], shape[row_axis])
    xyxy = clip_box((x0 - margin, y0 - margin, x1 + margin, y1 + margin))
    return range(box.lo[axis], box.hi[axis] + 1), xyxy


def organ_prompts(
    organs: Mapping[int, OrganBoxes],
    shape: Sequence[int],
    axis: int,
    classes: Sequence[int] | None = None,
    margin: int = MARGIN,
) -> list[Prompt]:
    """Prompts of every organ's (sub-)boxes, in ``classes`` order (default: ``organs`` order)."""
    prompts = []
    for c in classes if classes is not None else list(organs):
        organ = organs.get(int(c))
        if organ is None:
            continue
        for part, box in enumerate(organ.boxes):
            clipped = box.clip(shape)
            if clipped is None:
                continue
            slices, xyxy = box_prompt(clipped, shape, axis, margin)
            prompts += [Prompt(int(c), part, s, xyxy) for s in slices]
    return prompts


def published_prompts(
    organs: Mapping[int, OrganBoxes],
    shape: Sequence[int],
    axis: int,
    classes: Sequence[int] | None = None,
    margin: int = MARGIN,
) -> list[Prompt]:
    """Prompts as the published code makes them (``[run] reproduce = published``, method.md 5.2).

    From the boxes BEFORE clipping (:attr:`OrganBoxes.unclipped`, in their published order):
    the 2D prompt is not clipped to the 1024 frame, and the slices of each box are those of its
    range (both ends included) that lie in the image and in the run's slice range
    ``[z_min, z_max)``, where ``z_min`` is the smallest first-box minimum and ``z_max`` the
    largest last-box maximum over the organs (so the top slice ``z_max`` itself is left out).
    """
    order = classes if classes is not None else list(organs)
    boxes = {int(c): organs[int(c)].unclipped for c in order if int(c) in organs}
    boxes = {c: b for c, b in boxes.items() if b}
    if not boxes:
        return []
    z_min = max(0, min(b[0].lo[axis] for b in boxes.values()))
    z_max = min(int(shape[axis]), max(b[-1].hi[axis] for b in boxes.values()))
    row_axis, col_axis = slice_frame(shape, axis)
    prompts = []
    for c, organ_boxes in boxes.items():
        for part, box in enumerate(organ_boxes):
            x0, x1 = to_frame(box.lo[col_axis], box.hi[col_axis], shape[col_axis])
            y0, y1 = to_frame(box.lo[row_axis], box.hi[row_axis], shape[row_axis])
            xyxy = (x0 - margin, y0 - margin, x1 + margin, y1 + margin)
            first, last = max(box.lo[axis], z_min), min(box.hi[axis], z_max - 1)
            prompts += [Prompt(c, part, s, xyxy) for s in range(first, last + 1)]
    return prompts


def label_prompts(
    label: np.ndarray,
    classes: Sequence[int],
    axis: int,
    rng: np.random.Generator,
    max_jitter: int = MAX_JITTER,
) -> list[Prompt]:
    """The published manual-prompt baseline (method.md 6): boxes from the query's labels.

    On every slice where an organ is labelled, its 2D bounding box in the 1024 frame, each of
    the four sides pushed outwards by an independent random 0..``max_jitter - 1`` pixels, clipped
    to ``[0, 1024]``. Uses ground truth: an upper bound, not the method.
    """
    shape = label.shape
    row_axis, col_axis = slice_frame(shape, axis)
    prompts = []
    for c in classes:
        mask = label == c
        present = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        for s in present:
            plane = np.take(mask, int(s), axis=axis)  # axes (rest[0], rest[1]) = (col, row)
            cols = np.nonzero(plane.any(axis=1))[0]
            rows = np.nonzero(plane.any(axis=0))[0]
            x0, x1 = to_frame(cols[0], cols[-1], shape[col_axis])
            y0, y1 = to_frame(rows[0], rows[-1], shape[row_axis])
            jitter = rng.integers(0, max_jitter, size=4)
            box = (x0 - jitter[0], y0 - jitter[1], x1 + jitter[2], y1 + jitter[3])
            prompts.append(Prompt(int(c), 0, int(s), clip_box(box)))
    return prompts


def gt_slice_filter(
    label: np.ndarray, classes: Sequence[int], axis: int, threshold: int
) -> set[int]:
    """Slices whose labelled voxels (all ``classes`` together) exceed ``threshold``.

    The published ``gt_slice_threshold`` (method.md 5.4): every other slice is left
    unsegmented. It reads the ground truth, so it exists only to reproduce the paper's numbers.
    """
    fg = np.isin(label, np.asarray(classes))
    counts = fg.sum(axis=tuple(a for a in range(3) if a != axis))
    return {int(s) for s in np.nonzero(counts > threshold)[0]}


def group_by_slice(prompts: Iterable[Prompt]) -> list[SliceRequest]:
    """One request per slice holding every prompt on it, slices in increasing order."""
    by_slice: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_slice.setdefault(p.index, []).append(p)
    requests = []
    for index in sorted(by_slice):
        group = by_slice[index]
        requests.append(
            SliceRequest(
                index=index,
                boxes=np.array([p.box for p in group], dtype=np.float64).reshape(-1, 4),
                classes=np.array([p.class_id for p in group], dtype=np.int64),
                parts=np.array([p.part for p in group], dtype=np.int64),
            )
        )
    return requests


class LabelAssembler:
    """Builds the label map ``(I, J, K)`` of a query slice by slice (rules: module docstring).

    Args:
        shape: the query's shape ``(I, J, K)``.
        axis: the slice axis.
        classes: organ ids in ``fg_class`` order (first wins exact ties).
        overlap: ``"score"`` or ``"later"`` for sub-boxes of one organ on one slice.
    """

    def __init__(
        self, shape: Sequence[int], axis: int, classes: Sequence[int], overlap: str = "score"
    ) -> None:
        if overlap not in OVERLAP_RULES:
            raise ValueError(f"overlap must be one of {OVERLAP_RULES}, not {overlap!r}")
        self.shape = tuple(int(s) for s in shape)
        self.axis = axis
        self.classes = [int(c) for c in classes]
        self.overlap = overlap
        top = max(self.classes, default=0)
        dtype = np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32
        self.label = np.zeros(self.shape, dtype=dtype)

    def organ_masks(
        self, request: SliceRequest, result: SliceResult
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Merge the sub-boxes of each organ: ids ``(K,)``, masks and confidences ``(K, H, W)``."""
        ids, masks, confs = [], [], []
        order = [c for c in self.classes if c in set(request.classes.tolist())]
        order += sorted(set(request.classes.tolist()) - set(order))
        for c in order:
            rows = np.nonzero(request.classes == c)[0]
            if self.overlap == "later":
                last = rows[np.argmax(request.parts[rows])]
                mask, conf = result.masks[last], result.probs[last]
            else:
                mask = result.masks[rows].any(axis=0)
                conf = result.probs[rows].max(axis=0)
            ids.append(int(c))
            masks.append(mask)
            confs.append(conf)
        return ids, np.stack(masks), np.stack(confs)

    def slice_labels(self, request: SliceRequest, result: SliceResult) -> np.ndarray:
        """The ``(H, W)`` label slice of one segmented slice."""
        ids, masks, confs = self.organ_masks(request, result)
        best = np.argmax(np.where(masks, confs, -np.inf), axis=0)
        return np.where(masks.any(axis=0), np.asarray(ids)[best], 0).astype(self.label.dtype)

    def add(self, request: SliceRequest, result: SliceResult) -> None:
        """Write one slice's labels into the volume."""
        if request.index != result.index:
            raise ValueError(f"result of slice {result.index} given for slice {request.index}")
        index: list[slice | int] = [slice(None)] * 3
        index[self.axis] = request.index
        self.label[tuple(index)] = self.slice_labels(request, result).T


@dataclass(eq=False)
class Prediction:
    """Everything one query produced.

    Attributes:
        case: the case name (image file name without extension).
        label: ``(I, J, K)`` label map on the query's grid (values: ``fg_class`` ids, 0 else).
        slice_axis: the axis slices were taken along.
        organs: class id -> the 3D boxes that prompted it (query voxels ``(i, j, k)``).
        prompts: the per-slice 2D prompts as arrays of length M: ``slice`` (int), ``class_id``
            (int), ``part`` (int), ``box`` ``(M, 4)`` XYXY in the 1024 frame, ``score``
            (float32, the segmenter's box-level confidence).
        seconds: wall seconds per stage.
        work: the segmenter's counters for this case (:meth:`SegmenterStats.as_dict`).
        baseline: True for the manual-prompt upper bound (boxes from the query's labels).
    """

    case: str
    label: np.ndarray
    slice_axis: int
    organs: dict[int, OrganBoxes]
    prompts: dict[str, np.ndarray]
    seconds: dict[str, float]
    work: dict
    baseline: bool = False

    @property
    def slices_segmented(self) -> int:
        return int(np.unique(self.prompts["slice"]).size)


def prompt_table(pairs: Sequence[tuple[SliceRequest, np.ndarray]]) -> dict[str, np.ndarray]:
    """The :attr:`Prediction.prompts` arrays of segmented ``(request, scores (N,))`` pairs."""
    if not pairs:
        return {
            "slice": np.zeros(0, np.int64),
            "class_id": np.zeros(0, np.int64),
            "part": np.zeros(0, np.int64),
            "box": np.zeros((0, 4)),
            "score": np.zeros(0, np.float32),
        }
    return {
        "slice": np.concatenate([np.full(len(q), q.index, np.int64) for q, _ in pairs]),
        "class_id": np.concatenate([q.classes for q, _ in pairs]).astype(np.int64),
        "part": np.concatenate([q.parts for q, _ in pairs]).astype(np.int64),
        "box": np.concatenate([q.boxes for q, _ in pairs]).astype(np.float64),
        "score": np.concatenate([scores for _, scores in pairs]).astype(np.float32),
    }
