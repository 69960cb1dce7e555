"""Geometry on real files: sform/qform disagreement, label maps stored flipped or permuted
relative to their image, and messages that say what differs between two grids."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
from conftest import ct_testdata_path, reorient

from medlsam import io
from medlsam.errors import InputError
from medlsam.volume import Volume, align_to, grid_difference, label_on_image_grid

CT = ("totalsegmentator", "example_ct.nii.gz")
SEG = ("totalsegmentator", "example_seg_fast_force_split.nii.gz")


def _save(volume: Volume, path) -> None:
    image = nib.Nifti1Image(np.asarray(volume.data), volume.affine)
    image.set_sform(volume.affine, code=1)
    image.set_qform(volume.affine, code=1)
    nib.save(image, str(path))


def _disagreeing_copy(tmp_path):
    """The shared CT with a qform mirrored left-right and 100 mm off from its sform."""
    source = nib.load(str(ct_testdata_path(*CT)))
    sform = source.affine.copy()
    qform = np.diag([-1.0, 1.0, 1.0, 1.0]) @ sform
    qform[:3, 3] += [100.0, 0.0, 0.0]
    image = nib.Nifti1Image(np.asanyarray(source.dataobj), sform)
    image.set_sform(sform, code=2)
    image.set_qform(qform, code=1)
    path = tmp_path / "disagree.nii.gz"
    nib.save(image, str(path))
    return path, sform, qform


def test_sform_qform_disagreement_warns_once_and_uses_the_sform(tmp_path, caplog):
    path, sform, qform = _disagreeing_copy(tmp_path)
    with caplog.at_level(logging.WARNING, logger="medlsam"):
        volume = io.read_image(path)
    lines = [r.getMessage() for r in caplog.records if "qform" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert str(path) in lines[0] and "using the sform" in lines[0]
    assert "RAS" in lines[0] and "LAS" in lines[0]  # both named, by their axes
    assert f"{np.linalg.norm(sform[:3, 3] - qform[:3, 3]):.1f} mm apart" in lines[0]
    np.testing.assert_allclose(volume.affine, sform, atol=1e-4)


def test_outputs_have_sform_equal_to_qform_equal_to_the_one_used(tmp_path, caplog):
    path, sform, _ = _disagreeing_copy(tmp_path)
    volume = io.read_image(path)
    label = io.read_label(ct_testdata_path(*SEG))
    out = io.write_mask(label.data, volume, tmp_path / "out.nii.gz")
    header = nib.load(str(out)).header
    assert int(header["sform_code"]) > 0 and int(header["qform_code"]) > 0
    np.testing.assert_allclose(header.get_sform(), sform, atol=1e-4)
    np.testing.assert_allclose(header.get_qform(), sform, atol=1e-4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medlsam"):
        io.read_label(out)
    assert not [r for r in caplog.records if "qform" in r.getMessage()]


def test_agreeing_or_single_transform_files_do_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="medlsam"):
        io.read_image(ct_testdata_path(*CT))  # sform only
        io.read_label(ct_testdata_path("word", "word_annotation_template_label.nii.gz"))  # qform
    assert not [r for r in caplog.records if "qform" in r.getMessage()]


@pytest.mark.parametrize(
    "perm, flips",
    [
        ((0, 1, 2), (True, False, False)),
        ((0, 1, 2), (False, True, True)),
        ((2, 0, 1), (True, False, True)),
    ],
)
def test_flipped_or_permuted_label_is_put_on_the_image_grid(tmp_path, perm, flips):
    image = io.read_image(ct_testdata_path(*CT))
    label = io.read_label(ct_testdata_path(*SEG))
    path = tmp_path / "flipped_seg.nii.gz"
    _save(reorient(label, perm, flips), path)
    stored = io.read_label(path)
    assert stored.shape != label.shape or not np.array_equal(stored.data, label.data)
    on_grid = label_on_image_grid(stored, image)
    assert on_grid.shape == image.shape
    np.testing.assert_array_equal(on_grid.data, label.data)
    np.testing.assert_allclose(on_grid.affine, image.affine)


def test_shifted_label_message_names_the_origin_with_numbers(tmp_path):
    image = io.read_image(ct_testdata_path(*CT))
    label = io.read_label(ct_testdata_path(*SEG))
    shifted = label.affine.copy()
    shifted[:3, 3] += [0.0, 0.0, 100.0]
    path = tmp_path / "shifted_seg.nii.gz"
    _save(Volume(label.data, shifted), path)
    with pytest.raises(InputError) as err:
        label_on_image_grid(io.read_label(path), image)
    text = str(err.value)
    assert str(path) in text and "does not match its image" in text and str(image.path) in text
    assert "origin" in text and "100.0 mm apart" in text
    assert "shape" not in text and "spacing" not in text and "direction" not in text


def test_real_mismatch_names_shape_spacing_and_direction():
    """The cropped CT (30 slices) against the full scan's labels (112 slices)."""
    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    label = io.read_label(ct_testdata_path(*SEG))
    with pytest.raises(InputError, match=r"shape 122x101x112 vs 122x101x30"):
        label_on_image_grid(label, image)
    resampled = Volume(label.data, label.affine @ np.diag([1.5, 1.0, 1.0, 1.0]))
    assert "spacing [4.50, 3.00, 3.00] vs [3.00, 3.00, 3.00] mm" in grid_difference(
        resampled, io.read_image(ct_testdata_path(*CT))
    )
    turn = np.eye(4)
    turn[:2, :2] = [[np.cos(0.2), -np.sin(0.2)], [np.sin(0.2), np.cos(0.2)]]
    rotated = Volume(label.data, turn @ label.affine)
    text = grid_difference(rotated, io.read_image(ct_testdata_path(*CT)))
    assert f"direction: axes up to {np.degrees(0.2):.1f} deg apart" in text


def test_align_to_returns_the_index_map_of_a_flip():
    label = io.read_label(ct_testdata_path(*SEG))
    flipped = reorient(label, (0, 1, 2), (True, False, False))
    data, matrix, offset = align_to(flipped, label)
    np.testing.assert_array_equal(data, label.data)
    np.testing.assert_array_equal(matrix, np.diag([-1, 1, 1]))
    np.testing.assert_array_equal(offset, [label.shape[0] - 1, 0, 0])
