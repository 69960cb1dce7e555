"""A per-organ box plot drawn with numpy (:mod:`medlsam.png`) and written as a PNG.

No matplotlib: the image is an ``(H, W, 3)`` uint8 RGB array, row 0 at the top. Each group
(organ) gets a box from the first to the third quartile, a median line, whiskers to the
furthest values within 1.5 interquartile ranges, dots for values beyond them, and its label
below it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlsam.png import draw_rect, draw_text, fill_rect, text_size, write_png

_WHITE = (255, 255, 255)
_BLACK = (30, 30, 30)
_GRID = (225, 225, 225)
_BOX = (158, 202, 225)
_EDGE = (33, 102, 172)
_MEDIAN = (214, 96, 77)
_SCALE = 1  # font scale: 7-pixel-high glyphs


def _box_stats(values: np.ndarray) -> tuple[float, float, float, float, float, np.ndarray]:
    """Quartiles, whisker ends (furthest values within 1.5 IQR) and the outliers."""
    q1, med, q3 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    reach = 1.5 * (q3 - q1)
    inside = values[(values >= q1 - reach) & (values <= q3 + reach)]
    outliers = values[(values < q1 - reach) | (values > q3 + reach)]
    return q1, med, q3, float(inside.min()), float(inside.max()), outliers


def _text(img: np.ndarray, text: str, row: int, col: int) -> None:
    draw_text(img, text, row, col, color=_BLACK, scale=_SCALE, background=None)


def render_boxplot(
    groups: Sequence[tuple[str, Sequence[float]]],
    title: str = "",
    y_range: tuple[float, float] | None = None,
    height: int = 320,
) -> np.ndarray:
    """Render one box per group.

    Args:
        groups: ``(label, values)`` pairs, left to right; non-finite values are ignored and a
            group without values is left empty (label only).
        title: printed at the top left.
        y_range: axis limits; default from the data (0..1 when all values lie there).
        height: image height in pixels.

    Returns:
        ``(height, W, 3)`` uint8 RGB image.
    """
    clean = [
        (str(lbl), np.asarray([v for v in vals if np.isfinite(v)], float)) for lbl, vals in groups
    ]
    every = np.concatenate([v for _, v in clean]) if clean else np.zeros(0)
    if y_range is None:
        lo, hi = (0.0, 1.0) if every.size == 0 else (float(every.min()), float(every.max()))
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        y_range = (min(lo, 0.0), hi if hi > lo else lo + 1.0)
    y_lo, y_hi = y_range
    glyph_h = text_size("0", _SCALE)[0]
    step = max(28, max((text_size(lbl, _SCALE)[1] for lbl, _ in clean), default=0) + 8)
    left, right, top, bottom = 44, 12, 24, 24
    width = left + right + step * max(len(clean), 1)
    img = np.full((height, width, 3), _WHITE, np.uint8)
    plot_h = height - top - bottom

    def to_row(value: float) -> int:
        frac = (value - y_lo) / (y_hi - y_lo)
        return int(round(top + plot_h * (1.0 - float(np.clip(frac, 0.0, 1.0)))))

    for tick in np.linspace(y_lo, y_hi, 5):
        row = to_row(tick)
        fill_rect(img, row, left, row + 1, width - right, _GRID)
        label = f"{tick:.2f}" if abs(y_hi - y_lo) <= 5 else f"{tick:.0f}"
        _text(img, label, row - glyph_h // 2, left - 5 - text_size(label, _SCALE)[1])
    fill_rect(img, top, left, top + plot_h + 1, left + 1, _BLACK)
    fill_rect(img, top + plot_h, left, top + plot_h + 1, width - right, _BLACK)
    _text(img, title, 8, left)

    for n, (label, values) in enumerate(clean):
        centre = left + step * n + step // 2
        _text(img, label, top + plot_h + 8, centre - text_size(label, _SCALE)[1] // 2)
        if values.size == 0:
            continue
        q1, med, q3, w_lo, w_hi, outliers = _box_stats(values)
        half = max(step // 3, 4)
        fill_rect(img, to_row(w_hi), centre, to_row(w_lo) + 1, centre + 1, _EDGE)  # whiskers
        for end in (w_lo, w_hi):
            fill_rect(
                img, to_row(end), centre - half // 2, to_row(end) + 1, centre + half // 2 + 1, _EDGE
            )
        fill_rect(img, to_row(q3), centre - half, to_row(q1) + 1, centre + half + 1, _BOX)
        draw_rect(img, to_row(q3), centre - half, to_row(q1), centre + half, _EDGE, width=1)
        fill_rect(img, to_row(med), centre - half, to_row(med) + 2, centre + half + 1, _MEDIAN)
        for value in outliers:
            row = to_row(float(value))
            fill_rect(img, row - 1, centre - 1, row + 2, centre + 2, _EDGE)
    return img


def write_boxplot(
    path: str | os.PathLike[str],
    groups: Sequence[tuple[str, Sequence[float]]],
    title: str = "",
    y_range: tuple[float, float] | None = None,
) -> Path:
    """Render :func:`render_boxplot` and write it as a PNG, atomically."""
    return write_png(path, render_boxplot(groups, title, y_range))
