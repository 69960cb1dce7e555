"""Golden tests of the published preprocessing (``reproduce = published``): the MedLAM input
resampled as the published code does (cubic spline on float64 with the float32 zoom factor
spacing / 3, which also sets the output shape) and the published SAM window. Expected values
come from scipy directly and from plain Python arithmetic, not from medlsam."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medlsam.preprocess import hu_to_medlam, medlam_image, sam_window_published
from medlsam.volume import Volume


def _las_volume(spacing, shape=(4, 5, 9), seed=0):
    """An int16 CT stored LAS (x toward Left, y Anterior, z Superior); LAS (z, y, x) is the
    data transposed."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    return Volume(data=data, affine=np.diag((-spacing[0], spacing[1], spacing[2], 1.0))), data


def test_published_zoom_factor_sets_the_shape():
    # 15 slices of 0.7 mm: scipy multiplies 15 by the float32 factor float32(0.7) / float32(3)
    # and gets 3.5 in float32 -> 4 slices (round half to even); the float64 ratio gives
    # 3.4999999999999996 -> 3 slices. x and y are 3 mm already (factor exactly 1).
    vol, data = _las_volume((3.0, 3.0, 0.7), shape=(4, 5, 15))
    las = data.transpose(2, 1, 0).astype(np.float64)
    zoom = np.array([np.float32(0.7) / np.float32(3.0), 1.0, 1.0], dtype=np.float32)
    expected = hu_to_medlam(ndimage.zoom(las, zoom, order=3))
    assert expected.shape == (4, 5, 4)
    out = medlam_image(vol, interpolation="published")
    assert out.array.shape == (4, 5, 4)
    np.testing.assert_array_equal(out.array, expected)


def test_published_resamples_every_axis():
    # 1.5 x 1.5 x 0.7 mm: factors 0.5, 0.5 and float32(0.7) / float32(3) on every axis;
    # (x, y, z) = (4, 6, 15) voxels -> LAS (z, y, x) = (4, 3, 2)
    vol, data = _las_volume((1.5, 1.5, 0.7), shape=(4, 6, 15), seed=2)
    las = data.transpose(2, 1, 0).astype(np.float64)
    zoom = np.array([np.float32(0.7), np.float32(1.5), np.float32(1.5)]) / np.float32(3.0)
    expected = hu_to_medlam(ndimage.zoom(las, zoom, order=3))
    out = medlam_image(vol, interpolation="published")
    assert out.array.shape == (4, 3, 2)
    np.testing.assert_array_equal(out.array, expected)


def test_published_at_3mm_keeps_the_voxels():
    vol, data = _las_volume((3.0, 3.0, 3.0), shape=(3, 4, 5), seed=1)
    out = medlam_image(vol, interpolation="published")
    np.testing.assert_array_equal(out.array, hu_to_medlam(data.transpose(2, 1, 0)))


def test_published_window_uses_the_given_volume_range():
    plane = np.array([[100, 400], [-700, 0]], dtype=np.int16)
    lo, hi = -500.0, 1000.0  # the whole volume's, not this slice's (-500 after clipping, 400)
    expected = [[int((100 - lo) / (hi - lo) * 255.0), int((400 - lo) / (hi - lo) * 255.0)], [0, 0]]
    out = sam_window_published(plane, lo, hi)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    # without lo/hi, the slice's own clipped range: 100 -> (600 / 900) * 255 = 170
    np.testing.assert_array_equal(sam_window_published(plane), [[170, 255], [0, 0]])


def test_published_window_of_a_flat_range_is_zero():
    plane = np.full((2, 3), 100, dtype=np.int16)
    out = sam_window_published(plane, 100.0, 100.0)
    np.testing.assert_array_equal(out, np.zeros((2, 3), dtype=np.int32))


def test_published_window_is_float64_arithmetic():
    # float32 658.82355 is 658.8235473...; (658.8235473 + 500) / 1500 * 255 = 197.0000030 -> 197.
    # The same arithmetic in float32 lands just under 197 and truncates to 196.
    plane = np.array([[658.82355, 1000.0]], dtype=np.float32)
    np.testing.assert_array_equal(sam_window_published(plane, -500.0, 1000.0), [[197, 255]])
