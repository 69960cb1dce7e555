"""One colour per organ: the organ's position in the run's class list picks it, so every figure
of a run (overlays, overviews, box plots, the report) shows an organ in the same colour."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Distinct, saturated colours that stay visible tinted over a grey CT (no greys, no near-white).
PALETTE = (
    "#e6194b",  # red
    "#3cb44b",  # green
    "#4363d8",  # blue
    "#f58231",  # orange
    "#911eb4",  # purple
    "#42d4f4",  # cyan
    "#f032e6",  # magenta
    "#bfef45",  # lime
    "#ffe119",  # yellow
    "#469990",  # teal
    "#9a6324",  # brown
    "#dcbeff",  # lavender
    "#800000",  # maroon
    "#aaffc3",  # mint
    "#808000",  # olive
    "#fabed4",  # pink
    "#000075",  # navy
    "#ffd8b1",  # apricot
)


def hex_to_rgb(color: str) -> tuple[float, float, float]:
    """``"#rrggbb"`` -> ``(r, g, b)`` in ``[0, 1]``."""
    return tuple(int(color[n : n + 2], 16) / 255.0 for n in (1, 3, 5))  # type: ignore[return-value]


def organ_colors(classes: Iterable[int]) -> dict[int, str]:
    """``{class id: "#rrggbb"}`` by position in ``classes`` (cycling past the palette)."""
    return {int(c): PALETTE[n % len(PALETTE)] for n, c in enumerate(classes)}


def color_table(colors: dict[int, str]) -> np.ndarray:
    """``(max id + 1, 3)`` float32 RGB lookup table indexed by class id (black where unused)."""
    table = np.zeros((max(colors, default=0) + 1, 3), np.float32)
    for cid, color in colors.items():
        table[cid] = hex_to_rgb(color)
    return table
