"""Golden tests of label-grid alignment (``align_to``, ``grid_difference``, ``label_on_image_grid``)
and case naming: every expected voxel, matrix and message number is worked out by hand from
the affines built here (a flip of axis ``i`` of n voxels maps ``i -> n - 1 - i``, and so on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlsam.errors import InputError
from medlsam.volume import Volume, align_to, case_names, grid_difference, label_on_image_grid

SPACING = (0.8, 0.8, 2.5)
ORIGIN = (10.0, 20.0, 30.0)
END = "expected the same grid, or the same voxels with axes flipped or permuted"


def _affine(columns, origin=ORIGIN):
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(columns, dtype=np.float64).T  # one column per voxel axis
    aff[:3, 3] = origin
    return aff


def _reference(shape=(3, 4, 5)):
    data = np.arange(np.prod(shape)).reshape(shape)
    aff = _affine([(0.8, 0, 0), (0, 0.8, 0), (0, 0, 2.5)])
    return Volume(data=data, affine=aff, path=Path("img.nii.gz"))


def _rot_z(deg):
    t = np.radians(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _rot_x(deg):
    t = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def _rot_y(deg):
    t = np.radians(deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def test_flip_of_first_axis():
    ref = _reference()
    # voxel i' of the label is voxel 2 - i' of the image: first column negated, origin at i = 2
    aff = _affine([(-0.8, 0, 0), (0, 0.8, 0), (0, 0, 2.5)], origin=(10.0 + 2 * 0.8, 20.0, 30.0))
    moving = Volume(data=ref.data[::-1].copy(), affine=aff, path=Path("lab.nii.gz"))
    data, matrix, offset = align_to(moving, ref)
    np.testing.assert_array_equal(data, ref.data)
    np.testing.assert_array_equal(matrix, [[-1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(offset, [2, 0, 0])
    assert matrix.dtype.kind == "i" and offset.dtype.kind == "i"


def test_permutation_without_flip():
    ref = _reference()
    # label axes (a, b, c) are image axes (k, i, j): ijk_ref = (b, c, a)
    aff = _affine([(0, 0, 2.5), (0.8, 0, 0), (0, 0.8, 0)])
    moving = Volume(data=ref.data.transpose(2, 0, 1).copy(), affine=aff, path=Path("lab.nii.gz"))
    data, matrix, offset = align_to(moving, ref)
    assert data.shape == (3, 4, 5)
    np.testing.assert_array_equal(data, ref.data)
    np.testing.assert_array_equal(matrix, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(offset, [0, 0, 0])


def test_label_on_image_grid_flipped_label():
    ref = _reference()
    aff = _affine([(0.8, 0, 0), (0, -0.8, 0), (0, 0, 2.5)], origin=(10.0, 20.0 + 3 * 0.8, 30.0))
    label = Volume(data=ref.data[:, ::-1].copy(), affine=aff, path=Path("lab.nii.gz"))
    out = label_on_image_grid(label, ref)
    np.testing.assert_array_equal(out.data, ref.data)
    assert out.data.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert out.path == Path("lab.nii.gz")
    # the voxel at world (10.8, 21.6, 35.0) is image voxel (1, 2, 2) = 1*20 + 2*5 + 2
    assert out.data[1, 2, 2] == 32 and label.data[1, 3 - 2, 2] == 32


def test_label_on_image_grid_error_names_both_files():
    ref = _reference()
    label = Volume(data=np.zeros((3, 4, 6)), affine=ref.affine.copy(), path=Path("lab.nii.gz"))
    with pytest.raises(InputError) as err:
        label_on_image_grid(label, ref)
    assert str(err.value) == (
        f"lab.nii.gz: label grid does not match its image img.nii.gz (shape 3x4x6 vs 3x4x5); {END}"
    )


def test_default_wording_and_two_differences():
    ref = _reference()
    aff = ref.affine.copy()
    aff[0, 3] += 0.4 * 0.8  # 0.4 voxel (0.32 mm) along x
    moving = Volume(data=np.zeros((3, 4, 6)), affine=aff, path=Path("lab.nii.gz"))
    with pytest.raises(InputError) as err:
        align_to(moving, ref)
    assert str(err.value) == (
        "lab.nii.gz: grid does not match img.nii.gz (shape 3x4x6 vs 3x4x5; "
        "origin [10.32, 20.00, 30.00] vs [10.00, 20.00, 30.00] mm (0.3 mm apart)); " + END
    )


def test_sub_voxel_shift_is_refused():
    ref = _reference()
    aff = ref.affine.copy()
    aff[0, 3] += 0.4 * 0.8
    with pytest.raises(InputError, match=r"origin \[10\.32, 20\.00, 30\.00\]"):
        align_to(Volume(data=ref.data, affine=aff, path=Path("lab.nii.gz")), ref)


def test_rounding_noise_within_tolerance_aligns():
    ref = _reference()
    aff = ref.affine.copy()
    aff[0, 1] = 1e-4  # 1.25e-4 voxel of shear (tolerance 1e-3)
    aff[0, 3] += 5e-4  # 6.25e-4 voxel of shift (tolerance 1e-2)
    data, matrix, offset = align_to(Volume(data=ref.data, affine=aff), ref)
    np.testing.assert_array_equal(data, ref.data)
    np.testing.assert_array_equal(matrix, np.eye(3))
    np.testing.assert_array_equal(offset, [0, 0, 0])


@pytest.mark.parametrize("degrees", [10.0, 0.5])
def test_rotation_is_refused_with_its_angle(degrees):
    ref = _reference()
    aff = ref.affine.copy()
    aff[:3, :3] = _rot_z(degrees) @ aff[:3, :3]  # rotated about the origin voxel
    moving = Volume(data=ref.data, affine=aff, path=Path("lab.nii.gz"))
    assert grid_difference(moving, ref) == f"direction: axes up to {degrees:.1f} deg apart"
    with pytest.raises(InputError, match="direction"):
        align_to(moving, ref)


def test_oblique_angle_is_the_largest_axis_angle():
    # image tilted 30 deg about y, then 30 deg about x; label turned a further 10 deg about
    # world z. A voxel axis at angle phi from z turns by 2 asin(sin(phi) sin(5 deg)): less than
    # 10 deg for every axis here (none is perpendicular to z); the largest is named.
    tilt = _rot_x(30.0) @ _rot_y(30.0)
    ref_aff = np.eye(4)
    ref_aff[:3, :3] = tilt @ np.diag(SPACING)
    ref = Volume(data=np.zeros((3, 4, 5)), affine=ref_aff)
    aff = ref_aff.copy()
    aff[:3, :3] = _rot_z(10.0) @ aff[:3, :3]
    phi = np.arccos(tilt[2])  # tilt[2]: the z components of the three unit voxel axes
    expected = np.degrees(2 * np.arcsin(np.sin(phi) * np.sin(np.radians(5.0)))).max()
    assert round(expected, 1) == 9.0
    assert grid_difference(Volume(data=np.zeros((3, 4, 5)), affine=aff), ref) == (
        f"direction: axes up to {expected:.1f} deg apart"
    )


def test_spacing_on_an_oblique_grid():
    rot = _rot_z(30.0)
    ref_aff, aff = np.eye(4), np.eye(4)
    ref_aff[:3, :3] = rot @ np.diag((1.0, 1.0, 2.5))
    aff[:3, :3] = rot @ np.diag((0.8, 0.7, 2.5))
    text = grid_difference(
        Volume(data=np.zeros((3, 4, 5)), affine=aff),
        Volume(data=np.zeros((3, 4, 5)), affine=ref_aff),
    )
    assert text == "spacing [0.80, 0.70, 2.50] vs [1.00, 1.00, 2.50] mm"


def test_tolerances_of_the_description():
    ref = _reference()
    aff = ref.affine.copy()
    aff[0, 0] += 1e-4  # spacing 0.8001: below 1e-3 mm, not named
    aff[1, 3] += 1e-3  # origin 1e-3 mm off: below 1e-2 mm, not named
    moving = Volume(data=np.zeros((3, 4, 6)), affine=aff)
    assert grid_difference(moving, ref) == "shape 3x4x6 vs 3x4x5"
    aff = ref.affine.copy()
    aff[0, 0] = 1.0  # 0.2 mm coarser
    assert grid_difference(Volume(data=np.zeros((3, 4, 5)), affine=aff), ref) == (
        "spacing [1.00, 0.80, 2.50] vs [0.80, 0.80, 2.50] mm"
    )


def test_shape_is_named_in_the_reference_axis_order():
    ref = _reference()
    aff = _affine([(0, 0, 2.5), (0.8, 0, 0), (0, 0.8, 0)])  # axes (k, i, j), k has 6 slices
    moving = Volume(data=np.zeros((6, 3, 4)), affine=aff)
    assert grid_difference(moving, ref) == "shape 3x4x6 vs 3x4x5"


def test_tiny_offset_between_tolerances_has_a_plain_description():
    ref_aff = np.diag((0.5, 0.5, 0.5, 1.0))
    aff = ref_aff.copy()
    aff[0, 3] = 0.008  # 0.016 voxel: too far to align (1e-2 voxel), too close to name (1e-2 mm)
    moving, ref = Volume(np.zeros((2, 2, 2)), aff), Volume(np.zeros((2, 2, 2)), ref_aff)
    assert grid_difference(moving, ref) == "voxel positions differ"
    with pytest.raises(InputError, match="voxel positions differ"):
        align_to(moving, ref)


def test_two_axes_onto_one_is_refused():
    ref = _reference((4, 4, 5))
    aff = ref.affine.copy()
    aff[:3, 1] = (0.8, 0.8 * 4e-4, 0)  # axis j runs (almost) along x, like axis i
    with pytest.raises(InputError):
        align_to(Volume(data=np.zeros((4, 4, 5)), affine=aff), ref)
    aff[:3, 0] = (0.8, 0.8, 0)  # axis i runs diagonally in x-y, axis j (almost) nowhere
    aff[:3, 1] = (0, 0.8 * 4e-4, 0)
    with pytest.raises(InputError):
        align_to(Volume(data=np.zeros((4, 4, 5)), affine=aff), ref)


def test_case_names_of_shared_file_names():
    paths = ["a/s01/ct.nii.gz", "a/s02/ct.nii.gz", "b/x.nii", "c/y.nrrd", "z.mha"]
    assert case_names(paths) == ["s01", "s02", "x", "y", "z"]
    assert case_names([Path("ct.nii.gz"), Path("sub/ct.nii.gz")]) == ["ct", "sub"]
    assert case_names(["p/a.nii", "q/a.nii", "r/a.nii"]) == ["p", "q", "r"]
    assert case_names([]) == []
