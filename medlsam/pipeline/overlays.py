"""PNG overlays of a prediction that a person can read at a glance.

One PNG per organ that was prompted: the slice where the organ's predicted mask is largest
(the middle prompted slice when the mask is empty), shown in a soft-tissue window
(W 400 / L 40 HU) in the radiological convention (anterior up, the patient's right on the
image's left) with square physical pixels, at least 512 pixels across. Every organ's mask on
that slice is tinted in its own colour; the organ of the PNG is outlined and its box prompt(s)
drawn; a header names the case, the organ, the slice and the box score. Outputs of the
manual-prompt baseline carry a red "upper bound" banner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medlsam.io import Volume
from medlsam.png import GLYPH_H, GLYPH_W, draw_rect, draw_text, fill_rect
from medlsam.preprocess import slice_2d, slice_frame
from medlsam.segment.assemble import Prediction
from medlsam.segment.base import FRAME

WINDOW = (-160.0, 240.0)
MIN_SIZE = 512
MAX_SIZE = 1024
SCALE = 2
BASELINE_BANNER = "UPPER BOUND: BOXES FROM LABELS"
PALETTE = (
    (255, 80, 80),
    (80, 200, 255),
    (255, 210, 60),
    (120, 255, 120),
    (255, 120, 255),
    (255, 150, 40),
    (60, 120, 255),
    (200, 255, 60),
    (0, 230, 190),
    (255, 90, 160),
    (170, 120, 255),
    (255, 255, 140),
    (120, 200, 120),
    (255, 180, 180),
    (150, 230, 255),
    (210, 160, 90),
)


def organ_color(position: int) -> tuple[int, int, int]:
    """Colour of the organ at ``position`` in ``fg_class``."""
    return PALETTE[position % len(PALETTE)]


def safe_name(text: str) -> str:
    """A file-name-safe version of an organ name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "organ"


@dataclass(frozen=True)
class Display:
    """How a slice ``(H, W)`` is shown: optional transpose, flips, then nearest resizing."""

    transpose: bool
    flip_rows: bool
    flip_cols: bool
    in_shape: tuple[int, int]  # after the transpose
    out_shape: tuple[int, int]

    @classmethod
    def for_slice(cls, volume: Volume, axis: int, min_size: int = MIN_SIZE) -> Display:
        row_axis, col_axis = slice_frame(volume.shape, axis)
        d_row, d_col = volume.affine[:3, row_axis], volume.affine[:3, col_axis]
        shape = (volume.shape[row_axis], volume.shape[col_axis])
        mm = (volume.spacing[row_axis], volume.spacing[col_axis])
        transpose = abs(d_row[0]) > abs(d_col[0])  # put the left-right axis in columns
        if transpose:
            d_row, d_col, shape, mm = d_col, d_row, shape[::-1], mm[::-1]
        extent = (shape[0] * mm[0], shape[1] * mm[1])
        px_per_mm = max(min_size / max(extent), 1.0 / min(mm))
        px_per_mm = min(px_per_mm, MAX_SIZE / max(extent))
        out = (max(1, round(extent[0] * px_per_mm)), max(1, round(extent[1] * px_per_mm)))
        return cls(transpose, bool(d_row[1] > 0), bool(d_col[0] > 0), shape, out)

    def image(self, plane: np.ndarray) -> np.ndarray:
        """A slice-grid array ``(H, W, ...)`` on the display grid (nearest)."""
        a = np.swapaxes(plane, 0, 1) if self.transpose else plane
        rows = (np.arange(self.out_shape[0]) + 0.5) * self.in_shape[0] / self.out_shape[0]
        cols = (np.arange(self.out_shape[1]) + 0.5) * self.in_shape[1] / self.out_shape[1]
        rows = np.minimum(rows.astype(np.int64), self.in_shape[0] - 1)
        cols = np.minimum(cols.astype(np.int64), self.in_shape[1] - 1)
        if self.flip_rows:
            rows = self.in_shape[0] - 1 - rows
        if self.flip_cols:
            cols = self.in_shape[1] - 1 - cols
        return a[rows][:, cols]

    def box(self, xyxy: Sequence[float], slice_hw: tuple[int, int]) -> tuple[float, ...]:
        """A 1024-frame box -> display ``(r0, c0, r1, c1)`` (continuous pixel edges)."""
        x0, y0, x1, y1 = (float(v) for v in xyxy)
        r0, r1 = y0 * slice_hw[0] / FRAME, y1 * slice_hw[0] / FRAME
        c0, c1 = x0 * slice_hw[1] / FRAME, x1 * slice_hw[1] / FRAME
        if self.transpose:
            r0, r1, c0, c1 = c0, c1, r0, r1
        if self.flip_rows:
            r0, r1 = self.in_shape[0] - r1, self.in_shape[0] - r0
        if self.flip_cols:
            c0, c1 = self.in_shape[1] - c1, self.in_shape[1] - c0
        sr = self.out_shape[0] / self.in_shape[0]
        sc = self.out_shape[1] / self.in_shape[1]
        return r0 * sr, c0 * sc, r1 * sr - 1, c1 * sc - 1


def _blend(rgb: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float) -> None:
    rgb[mask] = (rgb[mask] * (1 - alpha) + np.asarray(color) * alpha).astype(np.uint8)


def choose_slice(prediction: Prediction, class_id: int) -> int | None:
    """The slice with the organ's largest predicted area, else its middle prompted slice."""
    axis = prediction.slice_axis
    area = (prediction.label == class_id).sum(axis=tuple(a for a in range(3) if a != axis))
    if area.max(initial=0) > 0:
        return int(np.argmax(area))
    prompted = np.sort(prediction.prompts["slice"][prediction.prompts["class_id"] == class_id])
    return int(prompted[len(prompted) // 2]) if prompted.size else None


def render_organ(
    volume: Volume,
    prediction: Prediction,
    class_id: int,
    classes: Sequence[int],
    class_names: Mapping[int, str],
) -> np.ndarray | None:
    """The ``(H, W, 3)`` uint8 overlay of one organ, or None when it was never prompted."""
    index = choose_slice(prediction, class_id)
    if index is None:
        return None
    axis = prediction.slice_axis
    display = Display.for_slice(volume, axis)
    plane = slice_2d(volume.data, axis, index)
    labels = display.image(slice_2d(prediction.label, axis, index))
    grey = np.clip((display.image(plane) - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1)
    rgb = np.repeat((grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    position = {int(c): n for n, c in enumerate(classes)}
    color = organ_color(position.get(class_id, 0))
    others = []
    for c in np.unique(labels):
        if c == 0:
            continue
        focus = int(c) == class_id
        _blend(rgb, labels == c, organ_color(position.get(int(c), 0)), 0.45 if focus else 0.3)
        if not focus:
            others.append(class_names.get(int(c), str(int(c))))
    organ = labels == class_id
    rgb[organ & ~ndimage.binary_erosion(organ)] = color
    rows = (prediction.prompts["slice"] == index) & (prediction.prompts["class_id"] == class_id)
    slice_hw = plane.shape
    for xyxy in prediction.prompts["box"][rows]:
        draw_rect(rgb, *display.box(xyxy, slice_hw), color=color, width=2)
    scores = prediction.prompts["score"][rows]
    name = class_names.get(class_id, f"class_{class_id}")
    lines = [
        (f"{prediction.case}  {name} ({class_id})", color),
        (
            f"slice {'ijk'[axis]}={index}  box score "
            + (f"{float(scores.max()):.2f}" if scores.size else "-")
            + f"  mask {int((slice_2d(prediction.label, axis, index) == class_id).sum())} px",
            (255, 255, 255),
        ),
    ]
    if others:
        lines.append(("also: " + ", ".join(others), (200, 200, 200)))
    return _frame(rgb, lines, BASELINE_BANNER if prediction.baseline else None)


def _frame(
    rgb: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]], banner: str | None
) -> np.ndarray:
    """Add a header band with ``lines`` (and a red bottom banner) around the image."""
    step = GLYPH_H * SCALE + 8
    fits = max(1, (rgb.shape[1] - 12) // ((GLYPH_W + 1) * SCALE))
    lines = [(text if len(text) <= fits else text[: fits - 2] + "..", c) for text, c in lines]
    header = np.zeros((len(lines) * step + 8, rgb.shape[1], 3), dtype=np.uint8)
    for n, (text, color) in enumerate(lines):
        draw_text(header, text, 6 + n * step, 6, color=color, scale=SCALE, background=None)
    parts = [header, rgb]
    if banner:
        banner = banner[:fits]
        band = np.zeros((step + 8, rgb.shape[1], 3), dtype=np.uint8)
        fill_rect(band, 0, 0, band.shape[0], band.shape[1], (170, 0, 0))
        draw_text(band, banner, 8, 6, color=(255, 255, 255), scale=SCALE, background=None)
        parts.append(band)
    return np.concatenate(parts, axis=0)
