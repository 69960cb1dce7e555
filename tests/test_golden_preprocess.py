"""Golden values for the resampling arithmetic of medlsam.preprocess.

Linear resampling, the label resampler and the SAM window are checked on small hand-made arrays
(expected values in the comments) and, for labels, against scipy: each class's binary mask
interpolated linearly at the published grid positions (``ndimage.map_coordinates``, order 1),
the highest score winning, background where it does not beat the sum of the others.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medlsam import preprocess as pp
from medlsam.io import Volume


def test_linear_axis_hand_values():
    # [0, 10, 0, 5] at 0, 0.5, 1.5, 2.25, 2.5, 3: 0, 5, 5, 1.25, 2.5, 5
    array = np.array([0.0, 10.0, 0.0, 5.0])
    positions = np.array([0.0, 0.5, 1.5, 2.25, 2.5, 3.0])
    out = pp._linear_axis(array, positions, 0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 5, 5, 1.25, 2.5, 5], atol=1e-6)


def test_linear_axis_along_a_middle_axis():
    array = np.zeros((2, 4, 3))
    array[:, :, 1] = [0.0, 10.0, 0.0, 5.0]
    out = pp._linear_axis(array, np.array([2.5, 0.5]), 1)
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[1, :, 1], [2.5, 5.0], atol=1e-6)
    assert not out[:, :, [0, 2]].any()


def test_resample_linear_is_float32_on_the_corner_aligned_grid():
    # 4 -> 3 along axis 0: positions 0, 1.5, 3; 5 -> 5 along axis 1 (unchanged)
    array = np.zeros((4, 5, 1))
    array[:, 2, 0] = [0.0, 10.0, 0.0, 5.0]
    out = pp.resample_linear(array, (3, 5, 1))
    assert out.dtype == np.float32 and out.shape == (3, 5, 1)
    np.testing.assert_allclose(out[:, 2, 0], [0.0, 5.0, 5.0], atol=1e-6)
    assert pp.resample_linear(array, array.shape).dtype == np.float32


def test_an_axis_shorter_than_one_and_a_half_3mm_voxels_keeps_one_node():
    # k: 2 voxels of 2 mm -> round(4 / 3) = 1 node, at the first voxel; j: 3 x 1 mm -> 1 node
    data = np.full((6, 3, 2), -1000.0, np.float32)
    data[:, 0, 0] = 200.0  # the first voxel of j and k
    for interpolation in ("linear", "spline"):
        grid = pp.medlam_image(Volume(data, np.diag([3.0, 1.0, 2.0, 1.0])), interpolation)
        assert grid.array.shape == (1, 1, 6)
        np.testing.assert_allclose(grid.array[0, 0], pp.hu_to_medlam(np.full(6, 200.0)), atol=1e-5)
        np.testing.assert_allclose(grid.to_file_index(np.array([0, 0, 5])), [0, 0, 0])


def test_sam_window_dtype_and_constant_volume():
    out = pp.sam_window(np.array([[[-600.0, 250.0, 1000.0]]]))  # float64 in
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.0, 127.5, 255.0])
    flat = pp.sam_window(np.full((2, 2, 2), 40.0, np.float32))
    assert flat.dtype == np.float32 and not flat.any()


def _oracle_labels(label: np.ndarray, classes, out_shape) -> np.ndarray:
    """The label resampler's rule written with scipy, on the whole volume."""
    axes = []
    for n_in, n_out in zip(label.shape, out_shape):
        ramp = np.arange(n_in, dtype=float)
        axes.append(ndimage.zoom(ramp, n_out / n_in, order=1, mode="nearest"))
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    scores = np.stack(
        [ndimage.map_coordinates((label == c).astype(float), coords, order=1) for c in classes]
    )
    best = scores.max(axis=0)
    winner = np.asarray(classes)[scores.argmax(axis=0)]
    return np.where(best > 1.0 - scores.sum(axis=0), winner, 0)


def _las_volume(label: np.ndarray, spacing) -> Volume:
    """A volume whose LAS (z, y, x) array is ``label``: LAS file axes (i -> x toward L...)."""
    # file axis 0 toward L, 1 toward A, 2 toward S: LAS array = data.transpose(2, 1, 0)
    affine = np.diag([-spacing[2], spacing[1], spacing[0], 1.0])
    return Volume(np.ascontiguousarray(label.transpose(2, 1, 0)), affine)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_resampling_agrees_with_scipy(seed):
    rng = np.random.default_rng(seed)
    shape = (13, 17, 11)  # LAS (z, y, x) at 2.5 x 0.9 x 1.3 mm -> (11, 5, 5) nodes
    label = np.zeros(shape, np.int32)
    for c in (1, 2, 3):  # overlapping random boxes, one touching the first and last voxels
        lo = rng.integers(0, 6, 3)
        hi = lo + rng.integers(2, 9, 3)
        label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c
    label[-3:, :2, -4:] = 2
    label[0, 5, 5] = 4  # one voxel: below the nodes
    vol = _las_volume(label, (2.5, 0.9, 1.3))
    grid = pp.medlam_image(Volume(np.zeros(vol.shape, np.float32), vol.affine), "linear")
    assert grid.array.shape == (11, 5, 5)
    for classes in ([1, 2, 3, 4], [3, 1], [4, 2]):
        got = pp.medlam_label(vol, classes, grid)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, _oracle_labels(label, classes, (11, 5, 5)))


def _line(values, n_out: int) -> np.ndarray:
    """Resample a 1D label line (LAS x axis) to ``n_out`` nodes with medlam_label."""
    label = np.asarray(values, np.int32)[None, None, :]
    vol = _las_volume(label, (3.0, 3.0, 3.0 * n_out / label.shape[2]))
    grid = pp.medlam_image(Volume(np.zeros(vol.shape, np.float32), vol.affine), "linear")
    assert grid.array.shape == (1, 1, n_out)
    return pp.medlam_label(vol, sorted(set(values) - {0}) or [1], grid)[0, 0]


def test_label_ties_and_the_background_rule():
    # 10 voxels -> 5 nodes at 0, 2.25, 4.5, 6.75, 9
    # classes 1 (0..4) and 2 (5..9) meet at 4.5: 0.5 each, together 1 -> the first class wins
    assert _line([1] * 5 + [2] * 5, 5).tolist() == [1, 1, 1, 2, 2]
    # class 1 on voxels 0..4 alone: 4.5 scores exactly 0.5 = 1 - 0.5 -> background
    assert _line([1] * 5 + [0] * 5, 5).tolist() == [1, 1, 0, 0, 0]
    # class 1 on 0..4 and class 2 on voxel 7: 6.75 scores 0.75 for class 2 -> 2; 9 -> 0
    assert _line([1] * 5 + [0, 0, 2, 0, 0], 5).tolist() == [1, 1, 0, 2, 0]
    # class 1 on voxels 2..4: 2.25 scores 1; 4.5 scores 0.5 <= 1 - 0.5 -> background
    assert _line([0, 0, 1, 1, 1, 0, 0, 0, 0, 0], 5).tolist() == [0, 1, 0, 0, 0]


def test_label_classes_absent_or_between_nodes_do_not_stop_the_others():
    # voxel 1 only (class 3): nodes at 0 and 2.25 score 0 and 0 -> nothing; class 1 still found
    label = [0, 3, 0, 0, 0, 0, 1, 1, 1, 1]
    vol_line = np.asarray(label, np.int32)[None, None, :]
    vol = _las_volume(vol_line, (3.0, 3.0, 1.5))
    grid = pp.medlam_image(Volume(np.zeros(vol.shape, np.float32), vol.affine), "linear")
    for classes in ([7, 3, 1], [3, 1], [1, 3]):
        out = pp.medlam_label(vol, classes, grid)
        assert out is not None and out[0, 0].tolist() == [0, 0, 0, 1, 1]


def test_label_on_another_grid_is_refused_with_both_shapes():
    grid = pp.medlam_image(Volume(np.zeros((6, 6, 6), np.float32), np.diag([3.0] * 3 + [1])))
    with pytest.raises(ValueError, match=r"label LAS shape \(6, 6, 5\) differs from image"):
        pp.medlam_label(Volume(np.zeros((5, 6, 6), np.int32), np.diag([3.0] * 3 + [1])), [1], grid)


def test_spline_image_is_resampled_in_float32_whatever_it_is_given():
    rng = np.random.default_rng(3)
    data = rng.uniform(-1000, 1000, (20, 18, 9))
    affine = np.diag([1.5, 1.5, 4.5, 1.0])
    as64 = pp.medlam_image(Volume(data, affine), "spline")
    as32 = pp.medlam_image(Volume(data.astype(np.float32), affine), "spline")
    np.testing.assert_array_equal(as64.array, as32.array)
    assert as64.array.dtype == np.float32
    np.testing.assert_allclose(as64.spacing, [4.5, 1.5, 1.5])  # LAS (z, y, x) at file resolution
    with pytest.raises(ValueError, match="interpolation must be .*, not 'cubic'"):
        pp.medlam_image(Volume(data, affine), "cubic")


@pytest.mark.parametrize("shape", [(3072, 2048), (2048, 700)])
def test_sam_slice_shrinking_matches_skimage(shape):
    """Slices larger than 1024 are smoothed before shrinking (sigma (factor - 1) / 2, zero
    outside), as skimage's anti-aliasing does: 3x and 2x shrinks make that visible."""
    skimage = pytest.importorskip("skimage.transform", reason="scikit-image is a dev extra")
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, shape).astype(np.float32)
    img[:, : shape[1] // 8] = 0.0
    ours = pp.sam_slice(img)[..., 0].astype(int)
    ref = skimage.resize(
        img, (1024, 1024), order=2, preserve_range=True, mode="constant", anti_aliasing=True
    )
    assert np.abs(ours - np.clip(ref, 0, 255).astype(np.uint8).astype(int)).max() <= 1


def _hu_plane() -> np.ndarray:
    """A 20 x 30 HU slice: a -1000 HU band, a 0 HU block (raw zero), a ramp, 1400 HU bone."""
    plane = np.linspace(-300.0, 900.0, 600).reshape(20, 30)
    plane[:, :6] = -1000.0
    plane[5:15, 10:20] = 0.0
    plane[18:, 25:] = 1400.0
    return plane


@pytest.mark.parametrize("zero_raw_zero", [False, True])
def test_sam_slice_of_one_hu_slice_windows_with_the_volume_range(zero_raw_zero):
    """One slice windowed with the volume's clipped range (-500, 1000 HU, not the slice's own
    -500 .. 1000 by chance: here lo = -450, hi = 800), by hand: clip to [-500, 1000], then
    (x - lo) * 255 / (hi - lo) in float32; raw 0 HU set to 0 only when asked."""
    plane = _hu_plane()
    lo, hi = -450.0, 800.0
    window = (np.clip(plane, -500.0, 1000.0).astype(np.float32) - lo) * np.float32(255.0 / 1250.0)
    if zero_raw_zero:
        window[plane == 0.0] = 0.0
    # the 0 HU block: (0 + 450) * 255 / 1250 = 91.8; bone clipped to 1000: 306 (the resize clips
    # to the input range, the uint8 cast to 255)
    assert window[10, 15] == pytest.approx(0.0 if zero_raw_zero else 91.8)
    expected = pp.sam_slice(window)
    if zero_raw_zero:
        got = pp.sam_slice_from_hu(plane, lo, hi, zero_raw_zero)
    else:  # the defaults: raw 0 HU kept, medlsam's window
        got = pp.sam_slice_from_hu(plane, lo, hi)
    assert got.dtype == np.uint8 and got.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(got, expected)


def test_sam_slice_of_one_hu_slice_in_the_published_window():
    """window="published": float64 arithmetic, raw 0 HU always 0, truncated to int32 before
    resizing: 1 HU with lo = -500, hi = 1000 is 501 / 1500 * 255 = 85.17 -> 85."""
    plane = _hu_plane()
    plane[0, 29] = 1.0
    lo, hi = -500.0, 1000.0
    window = np.clip(plane, -500.0, 1000.0)
    window = (window - lo) / (hi - lo) * 255.0
    window[plane == 0.0] = 0.0
    window = window.astype(np.int32)
    assert window[0, 29] == 85 and window[10, 15] == 0
    np.testing.assert_array_equal(
        pp.sam_slice_from_hu(plane, lo, hi, window="published"), pp.sam_slice(window)
    )
    # a flat volume range gives an all-zero image in both windows
    for window_name in ("medlsam", "published"):
        flat = pp.sam_slice_from_hu(plane, 40.0, 40.0, window=window_name)
        assert flat.shape == (1024, 1024, 3) and not flat.any()


def test_sam_slices_of_a_stack_equal_each_slice_and_report_seconds():
    planes = np.stack([_hu_plane(), _hu_plane()[::-1]])
    images, seconds = pp.sam_slices_from_hu(planes, -450.0, 800.0, True, "medlsam")
    assert images.shape == (2, 1024, 1024, 3) and images.dtype == np.uint8
    for plane, image in zip(planes, images):
        window = (np.clip(plane, -500.0, 1000.0).astype(np.float32) + 450.0) * np.float32(
            255.0 / 1250.0
        )
        window[plane == 0.0] = 0.0
        np.testing.assert_array_equal(image, pp.sam_slice(window))
    assert not np.array_equal(images[0], images[1])
    kept, _ = pp.sam_slices_from_hu(planes[:1], -450.0, 800.0)  # default: raw 0 HU kept
    np.testing.assert_array_equal(kept[0], pp.sam_slice_from_hu(planes[0], -450.0, 800.0))
    assert not np.array_equal(kept[0], images[0])
    assert 0.0 <= seconds < 60.0
    published, _ = pp.sam_slices_from_hu(planes, -500.0, 1000.0, window="published")
    np.testing.assert_array_equal(
        published[1], pp.sam_slice_from_hu(planes[1], -500.0, 1000.0, window="published")
    )


def _scipy_sam_resize(img: np.ndarray, dtype) -> np.ndarray:
    """skimage's resize(order=2, mode="constant", anti_aliasing=True) as scipy calls, in dtype:
    a Gaussian of sigma (factor - 1) / 2 along shrunk axes, an order-2 zoom on aligned pixel
    centres, zero outside, clipped to the input's range, then to [0, 255]."""
    x = img.astype(dtype)
    sigma = np.maximum(0.0, (np.array(x.shape) / 1024 - 1) / 2)  # anti-aliasing when shrinking
    if sigma.any():
        x = ndimage.gaussian_filter(x, sigma, mode="grid-constant", cval=0.0)
    zoomed = ndimage.zoom(
        x, [1024 / n for n in x.shape], order=2, mode="grid-constant", cval=0.0, grid_mode=True
    )
    return np.clip(np.clip(zoomed, img.min(), img.max()), 0, 255).astype(np.uint8)


def test_float32_slices_are_resized_in_float32_others_in_float64():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (64, 80)).astype(np.float32)
    single, double = _scipy_sam_resize(img, np.float32), _scipy_sam_resize(img, np.float64)
    assert (single != double).sum() > 0  # the two precisions round a few pixels differently
    np.testing.assert_array_equal(pp.sam_slice(img)[..., 0], single)
    np.testing.assert_array_equal(pp.sam_slice(img.astype(np.float64))[..., 0], double)
    as_int = np.rint(img).astype(np.int32)  # integer windows (published) in float64
    np.testing.assert_array_equal(pp.sam_slice(as_int)[..., 0], _scipy_sam_resize(as_int, float))
    as_uint = np.rint(img).astype(np.uint8)
    np.testing.assert_array_equal(pp.sam_slice(as_uint)[..., 0], _scipy_sam_resize(as_uint, float))


def test_sam_slice_clips_to_the_uint8_range_and_smooths_when_shrinking():
    rng = np.random.default_rng(2)
    wide = rng.uniform(-50, 300, (64, 80)).astype(np.float32)  # outside [0, 255] both ways
    out = pp.sam_slice(wide)[..., 0]
    np.testing.assert_array_equal(out, _scipy_sam_resize(wide, np.float32))
    assert out.min() == 0 and out.max() == 255
    tall = rng.uniform(1, 255, (1300, 90)).astype(np.float32)  # shrunk along axis 0 only
    np.testing.assert_array_equal(pp.sam_slice(tall)[..., 0], _scipy_sam_resize(tall, np.float32))
    # a 3x shrink (sigma 1): the Gaussian reaches past the border, where the fill is 0
    long = rng.uniform(1, 255, (3072, 40)).astype(np.float32)
    np.testing.assert_array_equal(pp.sam_slice(long)[..., 0], _scipy_sam_resize(long, np.float32))
    ones = pp.sam_slice(np.ones((30, 50), np.float32))  # a flat slice stays flat
    assert ones.min() == ones.max() == 1
