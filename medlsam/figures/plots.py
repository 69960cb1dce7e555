"""Per-organ box plots of one run, and several runs side by side per organ.

Each box spans the first to the third quartile with the median as a line and whiskers to the
furthest values within 1.5 interquartile ranges (matplotlib's defaults); every value is also
drawn as a dot, since runs often have only a few cases. Tick labels name the organ and its
number of values (``n``). Non-finite values are left out and counted nowhere.
"""

from __future__ import annotations

import io as _bytes_io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medlsam.io import atomic_write_bytes

#: Colours of runs compared side by side (organ colours are for one run).
RUN_COLORS = ("#4363d8", "#f58231", "#3cb44b", "#e6194b", "#911eb4", "#42d4f4", "#9a6324")


def finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _figure(n_groups: int, per_group: int = 1) -> tuple[Figure, object]:
    width = min(max(4.5, 0.9 + 0.62 * n_groups * max(1, per_group) ** 0.7), 22.0)
    fig = Figure(figsize=(width, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _style(ax, title: str, ylabel: str, y_range: tuple[float, float] | None) -> None:
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("organ")
    ax.grid(axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    if y_range is not None:
        ax.set_ylim(*y_range)


def _dots(ax, x: float, values: np.ndarray, color: str, spread: float, seed: int) -> None:
    jitter = np.random.default_rng(seed).uniform(-spread, spread, values.size)
    ax.scatter(
        x + jitter, values, s=10, color=color, edgecolors="#222222", linewidths=0.4, zorder=3
    )


def boxplot_figure(
    groups: Sequence[tuple[str, str, Sequence[float]]],
    ylabel: str,
    title: str,
    y_range: tuple[float, float] | None = None,
) -> Figure:
    """One box per organ: ``groups`` are ``(organ name, colour, values)``, left to right."""
    fig, ax = _figure(len(groups))
    data = [finite(v) for _, _, v in groups]
    shown = [n for n, d in enumerate(data) if d.size]
    if shown:
        parts = ax.boxplot(
            [data[n] for n in shown],
            positions=[n + 1 for n in shown],
            widths=0.6,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "#222222", "linewidth": 1.5},
        )
        for patch, n in zip(parts["boxes"], shown, strict=True):
            patch.set_facecolor(groups[n][1])
            patch.set_alpha(0.55)
        for n in shown:
            _dots(ax, n + 1, data[n], groups[n][1], 0.12, n)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels(
        [f"{name}\nn={d.size}" for (name, _, _), d in zip(groups, data, strict=True)],
        rotation=45 if len(groups) > 6 else 0,
        ha="right" if len(groups) > 6 else "center",
        fontsize=8,
    )
    ax.set_xlim(0.4, len(groups) + 0.6)
    _style(ax, title, ylabel, y_range)
    return fig


def compare_figure(
    organs: Sequence[str],
    runs: Sequence[tuple[str, Sequence[Sequence[float]]]],
    ylabel: str,
    title: str,
    y_range: tuple[float, float] | None = None,
) -> Figure:
    """Per organ, one box per run side by side: ``runs`` are ``(run name, values per organ)``."""
    fig, ax = _figure(len(organs), len(runs))
    width = 0.8 / max(1, len(runs))
    counts = [[finite(v).size for v in values] for _, values in runs]
    for r, (_, values) in enumerate(runs):
        color = RUN_COLORS[r % len(RUN_COLORS)]
        offset = (r - (len(runs) - 1) / 2) * width
        data = [finite(v) for v in values]
        shown = [n for n, d in enumerate(data) if d.size]
        if not shown:
            continue
        parts = ax.boxplot(
            [data[n] for n in shown],
            positions=[n + 1 + offset for n in shown],
            widths=width * 0.85,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": "#222222", "linewidth": 1.3},
        )
        for patch in parts["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.55)
        for n in shown:
            _dots(ax, n + 1 + offset, data[n], color, width * 0.2, 100 * r + n)
    labels = []
    for n, organ in enumerate(organs):
        ns = sorted({c[n] for c in counts})
        labels.append(
            f"{organ}\nn={ns[0]}"
            if len(ns) == 1
            else f"{organ}\nn={'/'.join(str(c[n]) for c in counts)}"
        )
    ax.set_xticks(range(1, len(organs) + 1))
    ax.set_xticklabels(
        labels,
        rotation=45 if len(organs) > 6 else 0,
        ha="right" if len(organs) > 6 else "center",
        fontsize=8,
    )
    ax.set_xlim(0.4, len(organs) + 0.6)
    _style(ax, title, ylabel, y_range)
    handles = [
        Patch(facecolor=RUN_COLORS[r % len(RUN_COLORS)], alpha=0.55, label=name)
        for r, (name, _) in enumerate(runs)
    ]
    ax.legend(handles=handles, fontsize=8, loc="best", title="run", title_fontsize=8)
    return fig


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure as PNG, atomically."""
    buffer = _bytes_io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return atomic_write_bytes(path, buffer.getvalue())
