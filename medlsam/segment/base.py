"""The box-prompted segmenter interface shared by every backend.

A segmenter turns 2D box prompts on slices of one query volume into 2D masks. Frames:

* a slice is ``preprocess.slice_2d(volume.data, axis, index)``: shape ``(H, W)``, rows follow
  ``slice_frame(shape, axis)[0]`` and columns ``slice_frame(shape, axis)[1]`` of the volume;
  ``axis`` is ``volume.slice_axis()``;
* boxes are XYXY in SAM's 1024 x 1024 input frame (x along columns, y along rows):
  ``x_1024 = x_slice * 1024 / W``, ``y_1024 = y_slice * 1024 / H``;
* masks and per-pixel confidences come back on the slice's own ``(H, W)`` grid.

Backends stream: :meth:`BoxSegmenter.segment` takes the requests of a whole volume (one per
slice, each holding every box that crosses that slice) and yields one result per request, so
the caller can assemble the label map slice by slice with bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol, runtime_checkable

import numpy as np

from medlsam.io import Volume

#: Side of SAM's square input frame, in which box prompts are given.
FRAME = 1024


@dataclass(frozen=True, eq=False)
class SliceRequest:
    """Every box prompt that crosses one slice of a query.

    Attributes:
        index: slice index along the volume's slice axis.
        boxes: ``(N, 4)`` float64, XYXY in the 1024 frame.
        classes: ``(N,)`` int, the organ (class id) of each box.
        parts: ``(N,)`` int, which of the organ's boxes (SPL sub-box number, 0 for WPL).
    """

    index: int
    boxes: np.ndarray
    classes: np.ndarray
    parts: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True, eq=False)
class SliceResult:
    """What a segmenter returns for one :class:`SliceRequest`.

    Attributes:
        index: the slice index of the request.
        masks: ``(N, H, W)`` bool on the slice's own grid, one per box, in request order.
        scores: ``(N,)`` float32, a box-level confidence (SAM: the decoder's predicted IoU;
            classic: the mean organ probability inside the mask).
        probs: ``(N, H, W)`` float32 in [0, 1], a per-pixel confidence used where masks of
            different organs overlap (SAM: the up-sampled sigmoid probability).
    """

    index: int
    masks: np.ndarray
    scores: np.ndarray
    probs: np.ndarray


@dataclass
class SegmenterStats:
    """Work counters and timers (seconds) of a segmenter; subtract two to get one case's share.

    ``encoder_calls`` counts slice images sent through the image encoder (several may share one
    batched forward pass, counted in ``encoder_batches``); ``decoder_calls`` counts batched
    prompt-encoder + mask-decoder calls (one per segmented slice, all its boxes at once).
    """

    slices: int = 0
    boxes: int = 0
    encoder_calls: int = 0
    encoder_batches: int = 0
    decoder_calls: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def copy(self) -> SegmenterStats:
        return SegmenterStats(
            self.slices,
            self.boxes,
            self.encoder_calls,
            self.encoder_batches,
            self.decoder_calls,
            dict(self.seconds),
        )

    def __sub__(self, other: SegmenterStats) -> SegmenterStats:
        counts = {
            f.name: getattr(self, f.name) - getattr(other, f.name)
            for f in fields(self)
            if f.name != "seconds"
        }
        secs = {k: v - other.seconds.get(k, 0.0) for k, v in self.seconds.items()}
        return SegmenterStats(**counts, seconds=secs)

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "seconds"}
        out["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
        return out


@runtime_checkable
class BoxSegmenter(Protocol):
    """A box-prompted 2D segmenter (SAM family or classic).

    Attributes:
        name: the registry name (``config.SEGMENTER_NAMES``).
        stats: cumulative :class:`SegmenterStats`.
        checkpoint_sha256: sha256 of the weights file, or None for a weight-free backend.
        needs_supports: True while the backend still has to learn from support scans.
    """

    name: str
    stats: SegmenterStats
    checkpoint_sha256: str | None

    @property
    def needs_supports(self) -> bool:
        """Whether :meth:`fit` on the support scans must run before :meth:`segment` can."""
        ...

    def fit(self, supports: Sequence[tuple[Volume, Volume]], classes: Sequence[int]) -> None:
        """Learn what the backend needs from support ``(image, label)`` pairs (may do nothing)."""
        ...

    def segment(self, volume: Volume, requests: Sequence[SliceRequest]) -> Iterator[SliceResult]:
        """Segment every request of one query (a CT in HU); one result per request, in order."""
        ...


def to_slice_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes ``(N, 4)`` XYXY in the 1024 frame -> the same boxes in slice pixels (float)."""
    scale = np.array([width, height, width, height], dtype=np.float64) / FRAME
    return np.asarray(boxes, dtype=np.float64) * scale


def nearest_index(size: int, frame: int = FRAME) -> np.ndarray:
    """Which of ``frame`` pixels each of ``size`` output pixels takes under nearest resizing.

    ``floor(o * frame / size)``: the convention of OpenCV's ``INTER_NEAREST`` (and torch's
    ``"nearest"``), which the published code uses to bring SAM's 1024 masks back to the slice.
    """
    return (np.arange(size, dtype=np.int64) * frame) // size
