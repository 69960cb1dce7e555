"""medlsam.preprocess: published transforms (with stated tolerances) and the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ORIENTATIONS, ROOT, ct_testdata_path, make_ct, reorient
from scipy import ndimage

from medlsam import io
from medlsam import preprocess as pp


def test_hu_map_breakpoints():
    hu = np.array([-3000, -1000, -600, -200, 0, 200, 850, 1500, 4000], dtype=np.float32)
    np.testing.assert_allclose(
        pp.hu_to_medlam(hu), [0, 0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0, 1.0], atol=1e-6
    )


def _published_image(volume: io.Volume) -> np.ndarray:
    """The published MedLAM image transform, written from its description (float64 zoom)."""
    las, spacing, _ = io.to_las(volume)
    resampled = ndimage.zoom(np.asarray(las, np.float64), spacing / 3.0, order=3)
    return pp.hu_to_medlam(resampled)


def test_medlam_image_matches_published_spline():
    image, _ = make_ct(shape=(30, 26, 12), spacing=(1.2, 1.5, 5.0))
    ours = pp.medlam_image(image)
    ref = _published_image(image)
    assert ours.array.shape == ref.shape == (20, 13, 12)
    np.testing.assert_allclose(ours.array, ref, atol=1e-5)  # float32 vs float64 arithmetic


def test_linear_option_is_close_to_published():
    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    aff = image.affine.copy()
    aff[:3, :3] *= np.array([1.0, 1.0, 0.5])  # pretend 1.5 mm slices
    image = io.Volume(image.data, aff)
    lin = pp.medlam_image(image, interpolation="linear").array
    ref = _published_image(image)
    # stated tolerance: mean absolute difference below 0.01 of the [0, 1] range
    assert lin.shape == ref.shape
    assert float(np.abs(lin - ref).mean()) < 0.01


def test_already_3mm_passes_through():
    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    out = pp.medlam_image(image)
    las, _, _ = io.to_las(image)
    np.testing.assert_array_equal(out.array, pp.hu_to_medlam(las))


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[::5])
def test_3mm_grid_maps_back_to_the_right_world_point(perm, flips):
    image, label = make_ct(shape=(20, 18, 9), spacing=(1.5, 1.5, 4.5))
    ref = pp.medlam_image(image)
    other = reorient(image, perm, flips)
    out = pp.medlam_image(other)
    np.testing.assert_allclose(out.array, ref.array, atol=1e-6)
    grid = np.array([[0, 0, 0], [2, 5, 7], [5, 8, 9]], dtype=float)
    np.testing.assert_allclose(
        other.to_world(out.to_file_index(grid)), image.to_world(ref.to_file_index(grid)), atol=1e-6
    )
    ijk = np.array([[3.0, 4.0, 5.0]])
    np.testing.assert_allclose(out.to_file_index(out.from_file_index(ijk)), ijk, atol=1e-9)
    lab = pp.medlam_label(reorient(label, perm, flips), [1, 2], out)
    np.testing.assert_array_equal(lab, pp.medlam_label(label, [1, 2], ref))


def _published_label(label: io.Volume, spacing: np.ndarray) -> np.ndarray:
    las, _, _ = io.to_las(label)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(np.ascontiguousarray(las)).long())
    onehot = onehot.permute(3, 0, 1, 2)[None].float()
    out = torch.nn.functional.interpolate(
        onehot, scale_factor=tuple(spacing / 3.0), mode="trilinear", align_corners=False
    )
    return out[0].argmax(0).numpy()


def test_label_resampling_agrees_with_published_one_hot():
    image, label = make_ct(shape=(48, 40, 10), spacing=(1.0, 1.0, 6.0))
    grid = pp.medlam_image(image)
    ours = pp.medlam_label(label, [1, 2], grid)
    assert ours.shape == grid.array.shape  # same grid as the image, by construction
    ref = _published_label(label, np.array([6.0, 1.0, 1.0]))
    z, y, x = (min(a, b) for a, b in zip(ours.shape, ref.shape))
    agree = np.mean(ours[:z, :y, :x] == ref[:z, :y, :x])
    assert agree > 0.95  # the grids differ by a fraction of a voxel (published align_corners=False)
    for cls in (1, 2):  # per-organ Dice between the two resamplings, over the common region
        a, b = ours[:z, :y, :x] == cls, ref[:z, :y, :x] == cls
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.7


def test_label_resampling_keeps_only_requested_classes():
    image, label = make_ct(shape=(30, 30, 10), spacing=(1.0, 1.0, 3.0))
    grid = pp.medlam_image(image)
    only2 = pp.medlam_label(label, [2], grid)
    assert set(np.unique(only2)) == {0, 2}
    assert set(np.unique(pp.medlam_label(label, [7], grid))) == {0}


def test_pad():
    out = pp.pad(np.ones((2, 3, 4), np.float32))
    assert out.shape == (66, 67, 68) and out.sum() == 24 and out[0, 0, 0] == 0


def test_sam_window():
    hu = np.array([[[-1000, -500, 250, 1000, 3000]]], dtype=np.float32)
    np.testing.assert_allclose(pp.sam_window(hu)[0, 0], [0, 0, 127.5, 255, 255])
    zero = np.array([[[-500, 0, 1000]]], dtype=np.float32)
    assert pp.sam_window(zero)[0, 0, 1] > 0
    assert pp.sam_window(zero, zero_raw_zero=True)[0, 0, 1] == 0


@pytest.mark.parametrize("shape", [(512, 512), (300, 410), (1300, 1100)])
def test_sam_slice_matches_skimage_resize(shape):
    skimage = pytest.importorskip("skimage.transform", reason="scikit-image is a dev extra")
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.uniform(0, 255, shape), 3).astype(np.float32)
    img[: shape[0] // 4] = 255.0
    ours = pp.sam_slice(img)
    assert ours.shape == (1024, 1024, 3) and ours.dtype == np.uint8
    ref = skimage.resize(
        img, (1024, 1024), order=2, preserve_range=True, mode="constant", anti_aliasing=True
    )
    ref = np.clip(ref, 0, 255).astype(np.uint8)
    # identical up to float32/float64 rounding at integer boundaries of the uint8 cast
    assert np.abs(ours[..., 0].astype(int) - ref.astype(int)).max() <= 1
    assert np.array_equal(ours[..., 0], ours[..., 2])


def test_slice_frame_matches_simpleitk_convention():
    data = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    sl = pp.slice_2d(data, 2, 3)
    assert sl.shape == (5, 4)  # rows follow j, columns follow i
    assert sl[2, 1] == data[1, 2, 3]
    assert pp.slice_frame(data.shape, 2) == (1, 0)


def test_published_sam_slice_equals_the_published_pixels():
    """The published SAM input of slice k = 90 of the shared CT (../shared/parity), made by the
    published code with scikit-image; medlsam's scipy resize of the published int32 window
    gives every pixel (0 of 1,048,576 differ)."""
    ref_path = ROOT.parent / "shared" / "parity" / "reference_sam_slice_example_ct_k90.npz"
    if not ref_path.is_file():
        pytest.skip(f"published reference outputs not found at {ref_path.parent}")
    reference = np.load(ref_path)["slice_1024"]
    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    window = pp.sam_window_published(image.data)
    assert window.dtype == np.int32
    ours = pp.sam_slice(pp.slice_2d(window, 2, 90))
    assert ours.shape == (1024, 1024, 3)
    assert int((ours[..., 0] != reference).sum()) == 0
    assert np.array_equal(ours[..., 0], ours[..., 1]) and np.array_equal(ours[..., 0], ours[..., 2])
    # one slice windowed with the volume's clipped min/max gives the same pixels
    lo, hi = (float(np.clip(v, -500, 1000)) for v in (image.data.min(), image.data.max()))
    plane = pp.sam_window_published(pp.slice_2d(image.data, 2, 90), lo, hi)
    assert np.array_equal(pp.sam_slice(plane), ours)
    # medlsam's default window (0 HU kept, no int32 step) is another image
    default = pp.sam_slice(pp.slice_2d(pp.sam_window(image.data), 2, 90))
    assert int((default[..., 0] != reference).sum()) > 1000


def test_published_sam_window_truncates_and_blacks_out_raw_zero():
    hu = np.array([[[-1000, -500, 0, 1, 250, 1000]]], dtype=np.float32)
    out = pp.sam_window_published(hu)
    # (x + 500) / 1500 * 255 truncated: 1 HU -> 85.17 -> 85; 250 HU -> 127.5 -> 127
    assert out.tolist() == [[[0, 0, 0, 85, 127, 255]]]
