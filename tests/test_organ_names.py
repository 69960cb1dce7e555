"""Organ names as TotalSegmentator spells them, and one binary NIfTI per organ."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import ct_testdata_path

from medlsam import io
from medlsam.organs import organ_file_name, sct_keyword


@pytest.mark.parametrize(
    "name, stem",
    [
        ("liver", "liver"),
        ("kidney_l", "kidney_left"),
        ("kidney_R", "kidney_right"),
        ("Left Kidney", "kidney_left"),
        ("bladder", "urinary_bladder"),
        ("intestine", "small_bowel"),
        ("adrenal", "adrenal_gland"),
        ("opt_nerve_r", "optic_nerve_right"),
        ("vertebra_L1", "vertebrae_L1"),
        ("class_7", "class_7"),
        ("a/b c", "a_b_c"),
    ],
)
def test_totalsegmentator_style_names(name, stem):
    assert organ_file_name(name) == stem


def test_snomed_keywords_exist_in_pydicoms_dictionary():
    codes = pytest.importorskip("pydicom.sr.codedict").codes
    for name in ("liver", "kidney_l", "bladder", "head_of_femur_r", "spinal_cord", "pancreas"):
        assert getattr(codes.SCT, sct_keyword(name)).scheme_designator == "SCT"
    assert sct_keyword("class_7") is None


def test_one_binary_nifti_per_organ_on_the_image_grid(tmp_path):
    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = io.read_label(
        ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz")
    )
    stems = {5: "liver", 1: "spleen", 3: "kidney_left", 999: "absent_organ"}
    paths = io.write_organ_masks(label.data, image, stems, tmp_path / "case")
    assert sorted(p.name for p in paths) == sorted(f"{s}.nii.gz" for s in stems.values())
    for class_id, stem in stems.items():
        written = nib.load(str(tmp_path / "case" / f"{stem}.nii.gz"))
        np.testing.assert_allclose(written.affine, image.affine)
        data = np.asarray(written.dataobj)
        assert data.dtype == np.uint8
        np.testing.assert_array_equal(data, (label.data == class_id).astype(np.uint8))
    assert np.count_nonzero(np.asarray(nib.load(str(tmp_path / "case" / "liver.nii.gz")).dataobj))
