"""medlsam.io: reading, geometry, orientation and writing."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ORIENTATIONS, ct_testdata_path, make_ct, reorient

from medlsam import io
from medlsam.errors import InputError, OutputError


def _save(volume: io.Volume, path):
    return io.write_nifti(volume.data, volume.affine, path)


def test_nifti_round_trip_keeps_grid(tmp_path):
    image, label = make_ct()
    path = io.write_mask(label.data, like=image, path=tmp_path / "mask.nii.gz")
    back = io.read_label(path)
    assert back.shape == image.shape
    np.testing.assert_allclose(back.affine, image.affine)
    np.testing.assert_array_equal(back.data, label.data)


@pytest.mark.parametrize("perm,flips", ORIENTATIONS)
def test_las_view_is_the_same_for_all_48_orientations(perm, flips):
    image, _ = make_ct(shape=(9, 7, 5), spacing=(1.5, 2.0, 3.5))
    ref, ref_spacing, _ = io.to_las(image)
    other = reorient(image, perm, flips)
    las, spacing, index_map = io.to_las(other)
    np.testing.assert_array_equal(las, ref)
    np.testing.assert_allclose(spacing, ref_spacing)
    # every LAS index maps to the file voxel holding the same value, at the same world point
    rng = np.random.default_rng(sum(perm) + 7 * sum(flips))
    zyx = np.stack([rng.integers(0, n, 20) for n in las.shape], axis=1)
    ijk = index_map(zyx)
    np.testing.assert_allclose(ijk, np.rint(ijk))
    ijk = np.rint(ijk).astype(int)
    np.testing.assert_array_equal(other.data[tuple(ijk.T)], las[tuple(zyx.T)])
    _, _, ref_map = io.to_las(image)
    np.testing.assert_allclose(other.to_world(ijk), image.to_world(ref_map(zyx)), atol=1e-6)
    np.testing.assert_allclose(index_map.inverse(ijk), zyx, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_world_round_trip_random_orientation_and_spacing(seed):
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.3, 5.0, 3))
    image, _ = make_ct(shape=(8, 6, 5), spacing=spacing)
    perm, flips = ORIENTATIONS[rng.integers(len(ORIENTATIONS))]
    other = reorient(image, perm, flips)
    points = rng.uniform(0, 5, (10, 3))
    np.testing.assert_allclose(other.to_index(other.to_world(points)), points, atol=1e-9)
    # a box's corners in world mm are the same whichever way the file stores the voxels
    _, _, m_ref = io.to_las(image)
    _, _, m_other = io.to_las(other)
    corners = np.array([[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(
        image.to_world(m_ref(corners)), other.to_world(m_other(corners)), atol=1e-6
    )


def test_sitk_formats_match_nibabel_geometry(tmp_path):
    image, _ = make_ct(shape=(10, 8, 6), spacing=(0.7, 0.9, 2.5))
    other = reorient(image, (1, 0, 2), (True, False, True))
    nii = _save(other, tmp_path / "a.nii.gz")
    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"a{suffix}"
        sitk.WriteImage(sitk.ReadImage(str(nii)), str(path))
        back = io.read_image(path)
        np.testing.assert_allclose(back.affine, other.affine, atol=1e-5)
        np.testing.assert_array_equal(back.data, other.data)


def test_dicom_folder_and_nrrd_labels_share_the_grid():
    folder = ct_testdata_path("dcmqi")
    image = io.read_image(folder)
    assert image.shape == (512, 512, 3)
    assert image.data.min() < -1000  # rescaled to HU by the reader
    for name in ("liver_seg.nrrd", "spine_seg.nrrd", "heart_seg.nrrd"):
        label = io.read_label(folder / name)
        assert io.same_grid(image, label), name
    assert image.slice_axis() == 2


def test_real_crop_keeps_its_unshifted_affine():
    full = io.read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    crop = io.read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    seg = io.read_label(ct_testdata_path("totalsegmentator", "example_seg.nii.gz"))
    assert io.same_grid(crop, seg)
    # the crop holds slices 82..111 of the full scan, but its header was not shifted: geometry
    # is taken from the header as stored, never guessed
    np.testing.assert_array_equal(crop.data[..., 0], full.data[..., 82])
    np.testing.assert_allclose(crop.affine, full.affine)


def test_mr_scan_is_refused():
    with pytest.raises(InputError, match="MR"):
        io.read_image(ct_testdata_path("totalsegmentator", "example_mr_sm.nii.gz"))


def test_offset_ct_is_refused(tmp_path):
    image, _ = make_ct()
    path = _save(io.Volume((image.data + 1024).astype(np.uint16), image.affine), tmp_path / "u.nii")
    with pytest.raises(InputError, match=r"\+1024 offset"):
        io.read_image(path)


@pytest.mark.parametrize(
    "shape,match", [((20, 30), "2D"), ((20, 30, 1), "2D"), ((5, 6, 7, 2), "4D")]
)
def test_wrong_dimensions(tmp_path, shape, match):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.full(shape, -1000, np.int16), np.eye(4)), str(path))
    with pytest.raises(InputError, match=match) as info:
        io.read_image(path)
    assert str(path) in str(info.value)


def test_single_dicom_slice_is_2d():
    with pytest.raises(InputError, match="2D"):
        io.read_image(ct_testdata_path("dcmqi", "ct-3slice_01.dcm"))


def test_nan_and_zero_spacing(tmp_path):
    image, _ = make_ct()
    data = image.data.copy()
    data[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        io.read_image(_save(io.Volume(data, image.affine), tmp_path / "nan.nii.gz"))
    affine = image.affine.copy()
    affine[2, 2] = 0
    path = tmp_path / "zero.nii.gz"
    zero = nib.Nifti1Image(image.data, None)
    zero.set_sform(affine, code=1)
    nib.save(zero, str(path))
    with pytest.raises(InputError, match="spacing"):
        io.read_image(path)


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        io.read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        io.read_image(tmp_path / "empty.nii.gz")
    image, _ = make_ct()
    good = _save(image, tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match="trunc.nii.gz"):
        io.read_image(tmp_path / "trunc.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not an image at all" * 40))
    with pytest.raises(InputError, match="junk.nii.gz"):
        io.read_image(tmp_path / "junk.nii.gz")


def test_memory_guard_names_the_need(tmp_path, monkeypatch):
    image, _ = make_ct()
    path = _save(image, tmp_path / "big.nii.gz")
    monkeypatch.setattr(io, "MAX_VOXELS", 1000)
    with pytest.raises(InputError, match=r"would need about \d+ MiB"):
        io.read_image(path)


def test_label_reading(tmp_path):
    image, _ = make_ct()
    path = tmp_path / "float_label.nii.gz"
    nib.save(nib.Nifti1Image(np.full(image.shape, 2.0, np.float32), image.affine), str(path))
    assert io.read_label(path).data.dtype == np.int32
    nib.save(nib.Nifti1Image(np.full(image.shape, 0.5, np.float32), image.affine), str(path))
    with pytest.raises(InputError, match="non-integer"):
        io.read_label(path)


def test_path_lists_resolve_against_their_folder(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "l.txt").write_text("# comment\n\n../a.nii.gz\n  /abs/b.nii.gz  \n")
    paths = io.read_path_list(sub / "l.txt")
    assert paths == [tmp_path / "a.nii.gz", io.Path("/abs/b.nii.gz")]  # normalised
    io.write_path_list(sub / "w.txt", [tmp_path / "a.nii.gz"])
    assert io.read_path_list(sub / "w.txt")[0].resolve() == (tmp_path / "a.nii.gz").resolve()


def test_case_names():
    assert io.case_name("/x/y/case_01.nii.gz") == "case_01"
    assert io.case_name("a.b.nrrd") == "a.b"
    assert io.case_name("/dicom/folder") == "folder"


def test_unwritable_output(tmp_path):
    image, label = make_ct()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        io.write_mask(label.data, like=image, path=blocker / "sub" / "m.nii.gz")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    image, label = make_ct()

    def broken_save(img, filename):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.nib, "save", broken_save)
    with pytest.raises(OutputError, match="No space left"):
        io.write_mask(label.data, like=image, path=tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_the_mode_open_would_give(tmp_path):
    """Atomic writes must not leave outputs private (mkstemp's 0600): same mode as open()."""
    import os
    import stat

    image, label = make_ct()
    mask = io.write_mask(label.data, like=image, path=tmp_path / "m.nii.gz")
    text = io.atomic_write_text(tmp_path / "t.json", "{}")
    plain = tmp_path / "plain"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    for path in (mask, text):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
