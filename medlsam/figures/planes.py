"""Axial, coronal and sagittal planes of a volume as a person reads them.

Whatever the voxel order on disk, a plane is shown in the radiological convention: axial with
anterior up and the patient's right on the image's left, coronal with superior up and the
patient's right on the left, sagittal with superior up and anterior on the left. Pixels are
square in millimetres (the voxel spacing sets the aspect, so no coronal view is squashed) and
resampled by nearest neighbour, so masks keep their voxel edges.

Arrays: a volume is ``(I, J, K)`` in the file's voxel order with its ``(4, 4)`` affine (voxel
``(i, j, k)`` -> RAS+ mm); a displayed plane is ``(rows, cols)`` or ``(rows, cols, 3)`` RGB in
``[0, 1]``, row 0 at the top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medlsam.figures.colors import color_table

#: Soft-tissue window (W 400 / L 40 HU).
WINDOW = (-160.0, 240.0)
#: Plane name -> (world axis of its normal, world axis of its rows, world axis of its columns).
PLANES = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}


def world_axes(affine: np.ndarray) -> tuple[list[int], list[int]]:
    """For each voxel axis, the RAS world axis it runs closest to, and the sign along it."""
    direction = np.asarray(affine, dtype=np.float64)[:3, :3]
    axes = [int(np.argmax(np.abs(direction[:, a]))) for a in range(3)]
    if len(set(axes)) < 3:  # oblique: fall back to a one-to-one assignment by strength
        order = np.argsort(-np.abs(direction).max(axis=0))
        axes, free = [0, 0, 0], [0, 1, 2]
        for a in order:
            w = max(free, key=lambda w: abs(direction[w, a]))
            axes[a] = w
            free.remove(w)
    signs = [1 if direction[axes[a], a] > 0 else -1 for a in range(3)]
    return axes, signs


@dataclass(frozen=True)
class PlaneView:
    """How one plane of a volume maps onto display pixels.

    Attributes:
        name: ``axial``, ``coronal`` or ``sagittal``.
        normal: voxel axis the plane cuts across.
        row_axis, col_axis: voxel axes that the display's rows and columns follow.
        flip_row, flip_col: whether the display runs against that voxel axis.
        in_shape: ``(n_row_axis, n_col_axis)`` voxels.
        out_shape: ``(rows, cols)`` display pixels.
    """

    name: str
    normal: int
    row_axis: int
    col_axis: int
    flip_row: bool
    flip_col: bool
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]

    @classmethod
    def make(
        cls, name: str, shape: Sequence[int], affine: np.ndarray, px_per_mm: float
    ) -> PlaneView:
        """The view of plane ``name`` at ``px_per_mm`` display pixels per millimetre."""
        axes, signs = world_axes(affine)
        spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
        normal_w, row_w, col_w = PLANES[name]
        normal, row, col = (axes.index(w) for w in (normal_w, row_w, col_w))
        in_shape = (int(shape[row]), int(shape[col]))
        out = tuple(
            max(1, round(n * float(spacing[a]) * px_per_mm))
            for n, a in zip(in_shape, (row, col), strict=True)
        )
        # up (row 0) is anterior/superior, left (col 0) is right/anterior: run against R, A, S
        return cls(name, normal, row, col, signs[row] > 0, signs[col] > 0, in_shape, out)  # type: ignore[arg-type]

    def _index(self, n_in: int, n_out: int, flip: bool) -> np.ndarray:
        src = ((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64)
        src = np.minimum(src, n_in - 1)
        return n_in - 1 - src if flip else src

    def take(self, volume: np.ndarray, index: int) -> np.ndarray:
        """Plane ``index`` (along :attr:`normal`) of ``volume`` on the display grid."""
        where: list = [slice(None)] * 3
        where[self.normal] = int(index)
        plane = volume[tuple(where)]  # a view: np.take copies, slowly for Fortran-order arrays
        rest = [a for a in range(3) if a != self.normal]
        if rest.index(self.row_axis) == 1:
            plane = plane.T
        rows = self._index(self.in_shape[0], self.out_shape[0], self.flip_row)
        cols = self._index(self.in_shape[1], self.out_shape[1], self.flip_col)
        return plane[np.ix_(rows, cols)]

    def span(self, start: float, stop: float, along_rows: bool) -> tuple[float, float]:
        """Display pixel edges of the voxel edges ``start..stop`` on the row or column axis."""
        n_in = self.in_shape[0 if along_rows else 1]
        n_out = self.out_shape[0 if along_rows else 1]
        flip = self.flip_row if along_rows else self.flip_col
        a, b = (n_in - stop, n_in - start) if flip else (start, stop)
        return a * n_out / n_in, b * n_out / n_in

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[float, float, float, float]:
        """Inclusive voxel box ``(i, j, k)`` -> display ``(row0, col0, row1, col1)`` edges."""
        r0, r1 = self.span(lo[self.row_axis], hi[self.row_axis] + 1, True)
        c0, c1 = self.span(lo[self.col_axis], hi[self.col_axis] + 1, False)
        return r0, c0, r1, c1


def grey(plane: np.ndarray, window: tuple[float, float] = WINDOW) -> np.ndarray:
    """HU plane ``(H, W)`` -> RGB ``(H, W, 3)`` float32 in ``[0, 1]`` through ``window``."""
    lo, hi = window
    g = np.clip((np.asarray(plane, np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return np.repeat(g[:, :, None], 3, axis=2)


def edges(label: np.ndarray) -> np.ndarray:
    """Pixels of ``label`` ``(H, W)`` (non-zero) that touch a pixel of another value."""
    lab = np.asarray(label)
    edge = np.zeros(lab.shape, bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


def _thicken(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:, 1:] |= mask[:, :-1]
    return out


def paint(
    rgb: np.ndarray,
    label: np.ndarray,
    colors: Mapping[int, str],
    fill: float = 0.35,
    outline: bool = True,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Tint the organs of ``label`` over ``rgb`` and outline them (in place; also returned).

    Args:
        rgb: ``(H, W, 3)`` float image in ``[0, 1]``.
        label: ``(H, W)`` class ids on the same grid; ids without a colour are left out.
        colors: class id -> colour (:func:`medlsam.figures.colors.organ_colors`).
        fill: opacity of the tint.
        outline: draw each organ's edge in its colour (1 pixel).
        reference: optional ``(H, W)`` reference label map: its organ edges are drawn 2 pixels
            wide in the organ's colour, lightened, over everything.
    """
    table = color_table(dict(colors))
    known_id = table.any(axis=1)
    lab = _known(label, known_id)
    known = lab > 0
    if fill > 0 and known.any():
        rgb[known] = rgb[known] * (1.0 - fill) + table[lab[known]] * fill
    if outline:
        edge = edges(lab)
        rgb[edge] = table[lab[edge]]
    if reference is not None:
        ref = _known(reference, known_id)
        spread = ref.copy()  # an edge pixel of the background side takes its neighbour's id
        spread[1:, :] = np.where(spread[1:, :] == 0, ref[:-1, :], spread[1:, :])
        spread[:, 1:] = np.where(spread[:, 1:] == 0, spread[:, :-1], spread[:, 1:])
        line = _thicken(edges(ref)) & (spread > 0)
        rgb[line] = 0.5 + 0.5 * table[spread[line]]
    return rgb


def _known(label: np.ndarray, known_id: np.ndarray) -> np.ndarray:
    """``label`` as int64 with every id that has no colour set to 0."""
    lab = np.asarray(label).astype(np.int64)
    lab[(lab >= len(known_id)) | (lab < 0)] = 0
    lab[~known_id[lab]] = 0
    return lab
