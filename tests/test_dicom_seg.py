"""DICOM-SEG output, read back and compared voxel for voxel with the NIfTI label map, on the
shared DICOM example (3 CT slices with liver, spine and heart label maps)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import ct_testdata_path

from medlsam import io

hd = pytest.importorskip("highdicom", reason="DICOM-SEG needs the dicom extra (highdicom)")
pydicom = pytest.importorskip("pydicom")

from medlsam.dicom_seg import write_dicom_seg  # noqa: E402

NAMES = {1: "liver", 2: "spine", 3: "heart"}


@pytest.fixture
def dicom_case(tmp_path):
    folder = tmp_path / "patient_3slice"
    folder.mkdir()
    for n in (1, 2, 3):
        shutil.copy(ct_testdata_path("dcmqi", f"ct-3slice_0{n}.dcm"), folder / f"IM{n}")
    image = io.read_image(folder)
    label = np.zeros(image.shape, dtype=np.int32)
    for name, value in (("liver_spine_seg.nrrd", None), ("heart_seg.nrrd", 3)):
        part = io.label_on_image_grid(io.read_label(ct_testdata_path("dcmqi", name)), image)
        label[part.data > 0] = part.data[part.data > 0] if value is None else value
    return folder, image, label


def test_dicom_seg_matches_the_nifti_voxel_for_voxel(tmp_path, dicom_case):
    folder, image, label = dicom_case
    assert set(np.unique(label)) == {0, 1, 2, 3}
    nifti = io.read_label(io.write_mask(label, image, tmp_path / "out" / "case.nii.gz"))
    path = write_dicom_seg(label, image, NAMES, tmp_path / "out" / "case.seg.dcm")
    seg = hd.seg.segread(str(path))
    by_label = {seg.get_segment_description(n).SegmentLabel: n for n in seg.get_segment_numbers()}
    assert sorted(by_label) == ["heart", "liver", "spine"]
    to_class = {by_label[name]: cid for cid, name in NAMES.items()}
    files = io.dicom_series_files(folder)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    pixels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True
    )
    back = np.zeros_like(pixels, dtype=np.int32)
    for number, cid in to_class.items():
        back[pixels == number] = cid
    np.testing.assert_array_equal(back.transpose(2, 1, 0), nifti.data)  # (k, row, col) -> ijk


def test_dicom_seg_references_the_source_series_and_codes_the_organs(tmp_path, dicom_case):
    folder, image, label = dicom_case
    path = write_dicom_seg(label, image, NAMES, tmp_path / "case.seg.dcm")
    ds = pydicom.dcmread(path)
    source = pydicom.dcmread(io.dicom_series_files(folder)[0], stop_before_pixels=True)
    assert ds.Modality == "SEG"
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.PatientID == source.PatientID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    (ref,) = ds.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    uids = {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        for f in io.dicom_series_files(folder)
    }
    assert {item.ReferencedSOPInstanceUID for item in ref.ReferencedInstanceSequence} == uids
    codes = {
        s.SegmentLabel: s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence
    }
    from pydicom.sr.codedict import codes as dicom_codes

    assert codes == {
        "liver": dicom_codes.SCT.Liver.value,
        "spine": dicom_codes.SCT.Spine.value,
        "heart": dicom_codes.SCT.Heart.value,
    }


def test_an_empty_prediction_writes_no_dicom_seg(tmp_path, dicom_case):
    _, image, label = dicom_case
    assert write_dicom_seg(np.zeros_like(label), image, NAMES, tmp_path / "x.seg.dcm") is None
    assert not (tmp_path / "x.seg.dcm").exists()


def test_a_nifti_query_is_refused_in_one_line(tmp_path):
    from medlsam.errors import InputError

    image = io.read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    label = np.zeros(image.shape, dtype=np.int32)
    label[10:20, 10:20, 5:8] = 1
    with pytest.raises(InputError, match="needs a query read from a DICOM folder"):
        write_dicom_seg(label, image, NAMES, tmp_path / "x.seg.dcm")
