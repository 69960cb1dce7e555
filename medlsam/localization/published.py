"""The published pipeline's own arithmetic, kept for ``[run] reproduce = published``.

Each function here does what the published MedLSAM code does where medlsam deliberately does
something else by default (the README's table of departures lists them all):

* :class:`PublishedStarts`: the query start centres as one random stream over the whole query
  list (method.md 4.2): a legacy numpy generator seeded once with the run's seed (2023), ten
  centres per query in list order, each three scalar ``randint(s // 2 - 10, s // 2 + 10)`` draws
  in the axis order of the padded 3 mm array, drawn again while the centre voxel is air; never
  re-seeded between queries. A private ``RandomState`` gives exactly the draws of numpy's
  seeded global generator without touching it (the published code also seeds python
  ``random`` and torch: they only choose its PNG slice and its matching bias, which never moves
  an arg-max);
* :func:`published_label`: support labels resampled to 3 mm by trilinear interpolation of
  their one-hot channels and argmax (method.md 1.1 step 4);
* :func:`published_zoom`, :func:`published_file_points`: the 3 mm grid back to the file's
  voxels through ``1 / zoom_factor`` and rounding (method.md 4.7), not the exact grid ratio.

Frames: start centres are indices of the PADDED 3 mm LAS grid ``(z, y, x)``; points passed to
:func:`published_file_points` are on the UNPADDED 3 mm LAS grid; what it returns is in the query
file's ``(i, j, k)`` voxel indices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medlsam.errors import InputError
from medlsam.io import Volume, read_image, to_las
from medlsam.preprocess import MEDLAM_SPACING, MedlamInput, medlam_image, pad

logger = logging.getLogger(__name__)

#: Published number of start patches per query, half-width of their window, air threshold.
START_PATCHES = 10
START_HALF_WINDOW = 10
AIR_THRESHOLD = 0.001


def start_window(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of the published start window of a padded array: ``[s//2 - 10, s//2 + 10)``."""
    half = np.asarray(shape, dtype=np.int64) // 2
    return half - START_HALF_WINDOW, half + START_HALF_WINDOW


def draw_start_centres(
    padded: np.ndarray, state: np.random.RandomState, n: int = START_PATCHES, name: str = "query"
) -> np.ndarray:
    """Draw ``n`` start centres ``(n, 3)`` int64 from ``state``, as the published code does.

    Per centre: one scalar ``state.randint(lo, hi)`` per axis of ``padded`` in axis order,
    repeated while the voxel there is air (``< 0.001``).

    Raises:
        InputError: the whole start window is air (the published code loops forever there);
            nothing is drawn then.
    """
    lo, hi = start_window(padded.shape)
    window = padded[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if not (window >= AIR_THRESHOLD).any():
        raise InputError(
            f"{name}: the central {2 * START_HALF_WINDOW}^3 voxels of the 3 mm grid are all air; "
            "the published start search never ends there (reproduce = published)"
        )
    centres = np.zeros((n, 3), dtype=np.int64)
    for row in range(n):
        while True:
            centre = [int(state.randint(lo[a], hi[a])) for a in range(3)]
            if padded[tuple(centre)] >= AIR_THRESHOLD:
                break
        centres[row] = centre
    return centres


def padded_query(path: str | Path) -> np.ndarray:
    """A query file's padded 3 mm MedLAM array as the published code makes it (for replays)."""
    return pad(medlam_image(read_image(path), "published").array)


def _key(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


class PublishedStarts:
    """The published start-centre stream over a query list.

    Args:
        seed: seeded once (published: 2023).
        queries: the query list, in order (file paths). A query's centres depend on how many
            draws the queries before it used, so when a query of the list is asked for out of
            order (a shard of the list, a resumed run), the draws of the queries before it are
            replayed first: each is read and preprocessed with ``prepare`` (no network). Its
            centres are then those of one published run over the whole list, whatever the shard
            layout. A query that cannot be read or preprocessed uses no draws.
        prepare: query path -> its padded 3 mm array (needed only to replay).

    Volumes not in ``queries`` (or any volume when it is empty) take the next draws of the
    stream, in the order asked.
    """

    def __init__(
        self,
        seed: int = 2023,
        queries: Sequence[str | Path] = (),
        prepare: Callable[[Path], np.ndarray] | None = None,
    ) -> None:
        self.seed = int(seed)
        self.queries = [Path(q) for q in queries]
        self._index = {_key(q): n for n, q in enumerate(self.queries)}
        self.prepare = prepare
        self._state = np.random.RandomState(self.seed)
        # generator state before query n of the list, for every n reached so far
        self._before: dict[int, Any] = {0: self._state.get_state()}
        self.replayed = 0

    def index_of(self, path: str | Path | None) -> int | None:
        """Position of ``path`` in the query list, or None."""
        return self._index.get(_key(path)) if path is not None else None

    def centres(self, padded: np.ndarray, path: str | Path | None = None) -> np.ndarray:
        """The start centres ``(10, 3)`` of the query ``path`` whose padded 3 mm array is
        ``padded`` (see the class docstring for the order of the stream)."""
        name = str(path) if path is not None else "query"
        n = self.index_of(path)
        if n is None:
            return draw_start_centres(padded, self._state, name=name)
        self._seek(n)
        centres = draw_start_centres(padded, self._state, name=name)
        self._before[n + 1] = self._state.get_state()
        return centres

    def _seek(self, n: int) -> None:
        """Set the generator to its state before query ``n``, replaying earlier queries."""
        known = max(k for k in self._before if k <= n)
        self._state.set_state(self._before[known])
        for m in range(known, n):
            self._replay(m)
            self._before[m + 1] = self._state.get_state()

    def _replay(self, m: int) -> None:
        path = self.queries[m]
        if self.prepare is None:
            raise RuntimeError("PublishedStarts needs prepare() to replay earlier queries")
        try:
            padded = self.prepare(path)
            draw_start_centres(padded, self._state, name=str(path))
        except Exception as err:  # an unreadable query uses no draws (the case fails itself)
            logger.warning("%s: no start draws replayed (%s)", path, err)
            return
        self.replayed += 1


def published_label(label: Volume) -> np.ndarray:
    """A label map resampled to 3 mm as the published code does it (``reproduce = published``).

    The argmax over every label value of the trilinear interpolation (``align_corners=False``,
    half-pixel grid) of its one-hot channel with ``scale_factor`` = spacing / 3 mm (float32),
    output size ``floor(size * scale)`` (which can be one voxel shorter than the image's 3 mm
    grid). Computed one label value at a time (the same numbers as the one-hot volume, without
    its memory); ties go to the lower value, as ``argmax`` gives them.

    Returns:
        ``(Z, Y, X)`` int32 on the label's own 3 mm grid (LAS ``(z, y, x)``).
    """
    las, spacing, _ = to_las(label)
    zoom = published_zoom(spacing)
    if np.all(zoom == 1):
        return np.asarray(las, dtype=np.int32)
    scale = tuple(float(z) for z in zoom)
    best: np.ndarray | None = None
    result: np.ndarray | None = None
    for value in np.unique(las):  # absent values never win: the interpolated channels sum to 1
        mask = torch.from_numpy(np.ascontiguousarray(las == value, dtype=np.float32))
        score = F.interpolate(mask[None, None], scale_factor=scale, mode="trilinear")[0, 0]
        score = score.numpy()
        if best is None or result is None:
            best, result = score, np.full(score.shape, int(value), dtype=np.int32)
            continue
        win = score > best
        best[win] = score[win]
        result[win] = int(value)
    assert result is not None  # an array always has at least one value
    return result


def published_zoom(spacing: Sequence[float]) -> np.ndarray:
    """The published ``zoom_factor`` ``(3,)`` float32: LAS ``(z, y, x)`` spacing / 3 mm.

    float32 as the published code has it (NIfTI header zooms are float32).
    """
    return np.asarray(spacing, dtype=np.float32) / np.float32(MEDLAM_SPACING)


def published_file_points(grid: MedlamInput, points: np.ndarray) -> np.ndarray:
    """Points on the unpadded 3 mm grid ``(..., 3)`` ``(z, y, x)`` -> file ``(i, j, k)`` float,
    as published: multiplied by ``1 / zoom_factor`` (float32) and rounded at the file's
    resolution, then mapped to the file's voxel axes (exactly: an integer permutation/flip)."""
    zoom = published_zoom(grid.spacing)
    las = np.rint(np.asarray(points).astype(np.float32) * (np.float32(1.0) / zoom))
    return grid.index_map(las.astype(np.float64))
