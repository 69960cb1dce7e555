"""Preprocessing for the two stages, as published, with each step's way back to the original voxels.

MedLAM input (method.md 1.1): reorient to LAS, transpose to ``(z, y, x)``, resample to 3 mm
isotropic, map Hounsfield units piecewise linearly to [0, 1], zero-pad by 32 voxels. Departures
from the published code, all deliberate:

* volumes already at 3 mm are passed through (the published code crashes on them);
* the image and its label are resampled onto the same grid (the published label resampler can
  be one voxel short), and labels are resampled one requested class at a time inside that
  class's bounding box, never as a full-resolution one-hot volume (gigabytes);
* the image is resampled with the published cubic spline (``scipy.ndimage.zoom`` order 3, on
  float32: identical values to float64 within 1e-6, half the memory), except that the last
  node of an axis is never dropped: for some lengths (30 voxels at 1.5 mm, 512 at 2.5 mm) float
  rounding puts it just past the last voxel and the published call fills it with 0 HU, a
  plane of soft tissue at the edge of the scan; ``interpolation="linear"``
  is a faster separable trilinear option. Both use the published grid: output index ``o``
  samples input position ``o * (n_in - 1) / (n_out - 1)``, ``n_out = round(n_in * spacing / 3)``.
* non-CT input is refused when it is read (``io.check_hounsfield``) instead of silently being fed
  to the network un-normalised.

SAM input (method.md 1.2): window [-500, 1000], min-max to [0, 255] over the volume, each
slice resized to 1024x1024 (order-2 spline on pixel centres, as ``skimage.transform.resize``
does) and replicated to 3 channels. Departures: values are clipped to [0, 255] before the
uint8 cast (the published cast wraps overshoot around), and voxels whose raw value is exactly 0
HU keep their window value (the published code forces them to black; ``zero_raw_zero=True``
restores that). :func:`sam_window_published` is the published window exactly (``[run]
reproduce = published``): 0 HU black and an int32 truncation before the resize, which
:func:`sam_slice` then does in float64 as scikit-image does.

2D slice convention: the slice of a volume along axis ``a`` is returned with rows along the
larger remaining axis and columns along the smaller one; for the usual ``a = 2`` this is
``data[:, :, k].T``, shape ``(J, I)``: rows follow ``j``, columns follow ``i``, exactly the
``(y, x)`` slice SimpleITK gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medlsam.io import IndexMap, Volume, to_las

PATCH = 64
PAD = 32
MEDLAM_SPACING = 3.0
HU_POINTS = (-1000.0, -200.0, 200.0, 1500.0)
HU_VALUES = (0.0, 0.2, 0.8, 1.0)
SAM_WINDOW = (-500.0, 1000.0)
SAM_SIZE = 1024


def hu_to_medlam(hu: np.ndarray) -> np.ndarray:
    """MedLAM's piecewise-linear HU map: -1000, -200, 200, 1500 HU -> 0, 0.2, 0.8, 1 (clipped)."""
    return np.interp(hu, HU_POINTS, HU_VALUES).astype(np.float32)


def _out_shape(shape: Sequence[int], spacing: Sequence[float], target: float) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / target))) for n, s in zip(shape, spacing))


def _positions(n_in: int, n_out: int) -> np.ndarray:
    """Input positions sampled by output indices on the published (corner-aligned) grid."""
    if n_out == 1:
        return np.zeros(1)
    return np.arange(n_out) * ((n_in - 1) / (n_out - 1))


def _linear_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at fractional ``positions``."""
    n = array.shape[axis]
    lo = np.clip(np.floor(positions).astype(np.int64), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = (positions - lo).astype(np.float32)
    shape = [1] * array.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(array, lo, axis=axis).astype(np.float32, copy=False)
    b = np.take(array, hi, axis=axis).astype(np.float32, copy=False)
    return a * (1 - w) + b * w


def resample_linear(array: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Separable trilinear resampling to ``out_shape`` on the corner-aligned grid (float32).

    Axes are processed in order of decreasing shrinkage so intermediate arrays stay small.
    """
    order = sorted(range(array.ndim), key=lambda a: out_shape[a] / array.shape[a])
    out = array
    for axis in order:
        if out.shape[axis] != out_shape[axis]:
            out = _linear_axis(out, _positions(array.shape[axis], out_shape[axis]), axis)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True, eq=False)
class MedlamInput:
    """A volume on MedLAM's 3 mm LAS grid.

    Attributes:
        array: ``(Z, Y, X)`` float32, normalised by :func:`hu_to_medlam`, NOT padded.
        las_shape: shape ``(Z, Y, X)`` of the LAS array at the file's own resolution.
        index_map: LAS ``(z, y, x)`` indices at the file's resolution -> file ``(i, j, k)``.
        spacing: ``(3,)`` mm of the LAS array at the file's resolution.
    """

    array: np.ndarray
    las_shape: tuple[int, int, int]
    index_map: IndexMap
    spacing: np.ndarray

    @property
    def step(self) -> np.ndarray:
        """Original LAS voxels per 3 mm voxel along ``(z, y, x)`` (the exact grid ratio)."""
        n_in = np.asarray(self.las_shape, dtype=np.float64)
        n_out = np.asarray(self.array.shape, dtype=np.float64)
        return np.where(n_out > 1, (n_in - 1) / np.maximum(n_out - 1, 1), 1.0)

    def to_file_index(self, zyx: np.ndarray) -> np.ndarray:
        """3 mm grid indices ``(..., 3)`` (unpadded, ``(z, y, x)``) -> file ``(i, j, k)`` floats."""
        return self.index_map(np.asarray(zyx, dtype=np.float64) * self.step)

    def from_file_index(self, ijk: np.ndarray) -> np.ndarray:
        """File ``(i, j, k)`` indices ``(..., 3)`` -> 3 mm grid indices ``(z, y, x)`` (floats)."""
        return self.index_map.inverse(ijk) / self.step


def _grid(volume: Volume) -> tuple[np.ndarray, np.ndarray, IndexMap, tuple[int, ...]]:
    las, spacing, index_map = to_las(volume)
    return las, spacing, index_map, _out_shape(las.shape, spacing, MEDLAM_SPACING)


def medlam_image(volume: Volume, interpolation: str = "spline") -> MedlamInput:
    """MedLAM input of a CT image (float32 HU): LAS, 3 mm, piecewise HU map.

    Args:
        volume: CT in Hounsfield units.
        interpolation: ``"spline"`` (default, the published cubic spline on float32),
            ``"linear"``, or ``"published"``: the cubic spline on float64 with the published
            float32 ``zoom_factor`` (spacing / 3), which also sets the output shape.
    """
    las, spacing, index_map, out_shape = _grid(volume)
    if interpolation == "published":
        zoom = np.asarray(spacing, dtype=np.float32) / np.float32(MEDLAM_SPACING)
        if np.all(zoom == 1):
            resampled = np.asarray(las, dtype=np.float32)
        else:
            resampled = ndimage.zoom(np.asarray(las, dtype=np.float64), zoom, order=3)
    elif out_shape == las.shape:
        resampled = np.asarray(las, dtype=np.float32)
    elif interpolation == "linear":
        resampled = resample_linear(las, out_shape)
    elif interpolation == "spline":
        zoom = [o / i for o, i in zip(out_shape, las.shape)]
        # mode "mirror": the published spline values everywhere (same prefilter as the default
        # "constant"), but the last node of an axis, which float rounding can put a hair past
        # the last voxel, keeps its value instead of becoming 0 HU (e.g. 512 slices at 2.5 mm)
        resampled = ndimage.zoom(np.asarray(las, dtype=np.float32), zoom, order=3, mode="mirror")
    else:
        raise ValueError(
            f"interpolation must be 'spline', 'linear' or 'published', not {interpolation!r}"
        )
    return MedlamInput(
        array=hu_to_medlam(resampled),
        las_shape=tuple(int(s) for s in las.shape),  # type: ignore[arg-type]
        index_map=index_map,
        spacing=spacing,
    )


def medlam_label(label: Volume, classes: Sequence[int], like: MedlamInput) -> np.ndarray:
    """Resample the requested classes of a label map onto ``like``'s 3 mm grid.

    Each class is resampled as a binary mask, linearly, inside its own bounding box; a 3 mm voxel
    takes the class with the highest interpolated score, or 0 when the summed score of all other
    labels (background included) is higher (the argmax of the published one-hot resampling,
    with unrequested labels merged into the background).

    Returns:
        ``(Z, Y, X)`` int32 on the same grid as ``like.array``.
    """
    las, _, _ = to_las(label)
    if tuple(las.shape) != like.las_shape:
        raise ValueError(f"label LAS shape {las.shape} differs from image {like.las_shape}")
    out_shape = like.array.shape
    best = np.zeros(out_shape, dtype=np.float32)
    total = np.zeros(out_shape, dtype=np.float32)
    result = np.zeros(out_shape, dtype=np.int32)
    for cls in classes:
        mask = las == cls
        idx = (
            np.nonzero(mask.any(axis=(1, 2)))[0],
            np.nonzero(mask.any(axis=(0, 2)))[0],
            np.nonzero(mask.any(axis=(0, 1)))[0],
        )
        if idx[0].size == 0:
            continue
        region_out, crops, positions = [], [], []
        for axis, found in enumerate(idx):
            pos = _positions(las.shape[axis], out_shape[axis])
            keep = np.nonzero((pos > found.min() - 1) & (pos < found.max() + 1))[0]
            if keep.size == 0:
                break
            lo = int(np.floor(pos[keep[0]]))
            hi = min(int(np.ceil(pos[keep[-1]])) + 1, las.shape[axis])
            region_out.append(keep)
            crops.append(slice(lo, hi))
            positions.append(pos[keep] - lo)
        if len(region_out) < 3:
            continue
        sub = mask[tuple(crops)].astype(np.float32)
        for axis, pos in enumerate(positions):
            sub = _linear_axis(sub, pos, axis)
        sl = tuple(slice(int(r[0]), int(r[-1]) + 1) for r in region_out)
        total[sl] += sub
        win = sub > best[sl]
        best[sl] = np.where(win, sub, best[sl])
        result[sl] = np.where(win, cls, result[sl])
    result[best <= 1.0 - total] = 0
    return result


def pad(array: np.ndarray, width: int = PAD) -> np.ndarray:
    """Zero-pad every side of every axis by ``width`` (0 is the normalised value of air)."""
    return np.pad(array, width, mode="constant", constant_values=0)


# --------------------------------------------------------------------------------------------
# SAM / MedSAM input


def sam_window(data: np.ndarray, zero_raw_zero: bool = False) -> np.ndarray:
    """Window a CT volume for SAM: clip to [-500, 1000] HU, min-max over the volume to [0, 255].

    Returns float32 of the same shape (the uint8 cast happens per slice after resizing).
    """
    clipped = np.clip(data, *SAM_WINDOW).astype(np.float32)
    lo, hi = float(clipped.min()), float(clipped.max())
    scaled = (clipped - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(clipped)
    if zero_raw_zero:
        scaled[data == 0] = 0
    return scaled


def sam_window_published(
    data: np.ndarray, lo: float | None = None, hi: float | None = None
) -> np.ndarray:
    """The published SAM window (``reproduce = published``): int32, same shape as ``data``.

    Clip to [-500, 1000] HU, ``(x - lo) / (hi - lo) * 255`` in float64 with ``lo``/``hi`` the
    clipped VOLUME's minimum and maximum (pass them when ``data`` is one slice), voxels whose raw
    value is exactly 0 set to 0, then cast to int32 (truncation) before any resizing.
    """
    clipped = np.clip(np.asarray(data, dtype=np.float64), *SAM_WINDOW)
    lo = float(clipped.min()) if lo is None else float(lo)
    hi = float(clipped.max()) if hi is None else float(hi)
    scaled = (clipped - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(clipped)
    scaled[np.asarray(data) == 0] = 0
    return scaled.astype(np.int32)


def slice_2d(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` along ``axis`` as ``(H, W)``; see the module docstring for axes."""
    plane = np.take(data, index, axis=axis)
    return plane.T


def slice_frame(shape: Sequence[int], axis: int) -> tuple[int, int]:
    """``(row_axis, col_axis)``: the volume axes that a slice's rows and columns follow."""
    rest = [a for a in range(3) if a != axis]
    return rest[1], rest[0]


def sam_slice(window_slice: np.ndarray, size: int = SAM_SIZE) -> np.ndarray:
    """Resize a windowed slice ``(H, W)`` to ``(size, size, 3)`` uint8 (order-2 spline).

    This is ``skimage.transform.resize(order=2, mode="constant", anti_aliasing=True,
    preserve_range=True)`` as the published code calls it (pixel centres aligned, a Gaussian
    anti-aliasing filter with sigma ``(factor - 1) / 2`` when shrinking, output clipped to the
    input's range), written with scipy so scikit-image is not needed. Integer and float64
    slices are resized in float64, as scikit-image does (the published int32 window gives the
    published pixels exactly); float32 slices in float32.
    """
    img = np.asarray(window_slice)
    exact = img.dtype == np.float64 or img.dtype.kind in "iu"
    img = img.astype(np.float64 if exact else np.float32, copy=False)
    lo, hi = float(img.min()), float(img.max())
    factors = np.array(img.shape, dtype=np.float64) / size
    sigma = np.maximum(0.0, (factors - 1) / 2)
    if np.any(sigma > 0):
        img = ndimage.gaussian_filter(img, sigma, mode="grid-constant", cval=0.0)
    zoom = [size / n for n in img.shape]
    resized = ndimage.zoom(img, zoom, order=2, mode="grid-constant", cval=0.0, grid_mode=True)
    # like skimage: clip to the input's range, keeping pixels that equal the fill value 0
    keep_zero = (resized == 0) if lo > 0 else None
    resized = np.clip(resized, lo, hi)
    if keep_zero is not None:
        resized[keep_zero] = 0
    out = np.clip(resized, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def sam_slice_from_hu(
    plane: np.ndarray, lo: float, hi: float, zero_raw_zero: bool = False, window: str = "medlsam"
) -> np.ndarray:
    """The published SAM input ``(1024, 1024, 3)`` uint8 of one HU slice ``(H, W)``.

    ``lo``/``hi`` are the whole volume's minimum and maximum clipped to :data:`SAM_WINDOW`, so
    this equals ``sam_slice`` of the slice of ``sam_window(volume)`` without windowing the
    whole volume; ``window="published"`` windows as :func:`sam_window_published`.
    """
    if window == "published":
        return sam_slice(sam_window_published(plane, lo, hi))
    clipped = np.clip(plane, *SAM_WINDOW).astype(np.float32)
    scaled = (clipped - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(clipped)
    if zero_raw_zero:
        scaled[plane == 0] = 0
    return sam_slice(scaled)


def sam_slices_from_hu(
    planes: np.ndarray, lo: float, hi: float, zero_raw_zero: bool = False, window: str = "medlsam"
) -> tuple[np.ndarray, float]:
    """:func:`sam_slice_from_hu` of every slice of ``planes`` ``(B, H, W)``.

    Returns the ``(B, 1024, 1024, 3)`` uint8 images and the seconds it took (a worker process
    reports its time this way). Plain numpy/scipy: safe to run in a process pool.
    """
    import time

    began = time.perf_counter()
    images = np.stack([sam_slice_from_hu(p, lo, hi, zero_raw_zero, window) for p in planes])
    return images, time.perf_counter() - began
