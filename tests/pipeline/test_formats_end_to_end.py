"""medlsam-infer on real files as users keep them: a DICOM query with DICOM-SEG and per-organ
outputs, a label map stored flipped relative to its image, and subject-folder layouts."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import ct_testdata_path, reorient

from medlsam import io
from medlsam.cli.evaluate import main as evaluate_main
from medlsam.cli.infer import main as infer_main


def _flipped_copy(label: io.Volume, path) -> None:
    """The same label map stored with its first and third axes reversed (same world grid)."""
    flipped = reorient(label, (0, 1, 2), (True, False, True))
    image = nib.Nifti1Image(flipped.data.astype(np.uint8), flipped.affine)
    image.set_sform(flipped.affine, code=1)
    image.set_qform(flipped.affine, code=1)
    nib.save(image, str(path))


def _config(root, images, labels, classes, names, extra=""):
    io.write_path_list(root / "images.txt", images)
    io.write_path_list(root / "labels.txt", labels)
    (root / "config.txt").write_text(
        "[data]\nsupport_image_ls = images.txt\nsupport_label_ls = labels.txt\n"
        "query_image_ls = images.txt\nquery_label_ls = labels.txt\n"
        f"fg_class = {classes}\nfg_class_name = {names}\n[vit]\nbackend = classic\n{extra}"
    )
    return root / "config.txt"


def test_dicom_query_writes_a_dicom_seg_equal_to_its_nifti(tmp_path, capsys):
    hd = pytest.importorskip("highdicom", reason="DICOM-SEG needs the dicom extra (highdicom)")
    import pydicom

    folder = tmp_path / "patient_3slice"
    folder.mkdir()
    for n in (1, 2, 3):
        shutil.copy(ct_testdata_path("dcmqi", f"ct-3slice_0{n}.dcm"), folder / f"IM{n}")
    label = io.read_label(ct_testdata_path("dcmqi", "liver_spine_seg.nrrd"))
    _flipped_copy(label, tmp_path / "liver_spine_flipped.nii.gz")  # reoriented on the way in
    config = _config(
        tmp_path, [folder], [tmp_path / "liver_spine_flipped.nii.gz"], "[1, 2]", "[liver, spine]"
    )
    out = tmp_path / "out"
    argv = ["--config", str(config), "--output", str(out), "--boxes-from-labels", "--quiet"]
    assert infer_main([*argv, "--dicom-seg", "--organ-masks"]) == 0, capsys.readouterr().err
    nifti = io.read_label(out / "patient_3slice.nii.gz")  # named after the DICOM folder
    assert set(np.unique(nifti.data)) >= {1, 2}
    seg = hd.seg.segread(str(out / "patient_3slice.seg.dcm"))
    labels = {seg.get_segment_description(n).SegmentLabel: n for n in seg.get_segment_numbers()}
    assert set(labels) == {"liver", "spine"}
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in io.dicom_series_files(folder)]
    pixels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True
    )
    back = np.zeros(pixels.shape, dtype=np.int32)
    back[pixels == labels["liver"]], back[pixels == labels["spine"]] = 1, 2
    np.testing.assert_array_equal(back.transpose(2, 1, 0), nifti.data)
    for stem, class_id in (("liver", 1), ("spine", 2)):
        mask = io.read_label(out / "patient_3slice" / f"{stem}.nii.gz")
        np.testing.assert_array_equal(mask.data, (nifti.data == class_id).astype(np.int32))
    record = json.loads((out / "run.json").read_text())["cases"]["patient_3slice"]
    assert record["outputs"]["dicom_seg"] == "patient_3slice.seg.dcm"
    assert sorted(record["outputs"]["organ_masks"]) == [
        "patient_3slice/liver.nii.gz",
        "patient_3slice/spine.nii.gz",
    ]


def test_subject_folders_run_and_evaluate_by_folder_name(tmp_path, capsys):
    ct = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    seg = ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz")
    for subject in ("s01", "s02"):
        (tmp_path / "data" / subject).mkdir(parents=True)
        shutil.copy(ct, tmp_path / "data" / subject / "ct.nii.gz")
        shutil.copy(seg, tmp_path / "data" / subject / "seg.nii.gz")
    images = [tmp_path / "data" / s / "ct.nii.gz" for s in ("s01", "s02")]
    labels = [tmp_path / "data" / s / "seg.nii.gz" for s in ("s01", "s02")]
    source = nib.load(str(ct))  # s02: a qform mirrored and 50 mm off its sform
    sform = source.affine
    qform = np.diag([-1.0, 1.0, 1.0, 1.0]) @ sform
    qform[:3, 3] += [50.0, 0.0, 0.0]
    odd = nib.Nifti1Image(np.asanyarray(source.dataobj), sform)
    odd.set_sform(sform, code=1)
    odd.set_qform(qform, code=1)
    nib.save(odd, str(images[1]))
    config = _config(tmp_path, images, labels, "[1, 5]", "[spleen, liver]")
    out = tmp_path / "out"
    argv = ["--config", str(config), "--output", str(out), "--boxes-from-labels", "--quiet"]
    assert infer_main(argv) == 0
    err = capsys.readouterr().err
    assert f"{images[1]}: sform and qform disagree" in err and "using the sform" in err
    assert (out / "s01.nii.gz").is_file() and (out / "s02.nii.gz").is_file()
    header = nib.load(str(out / "s02.nii.gz")).header
    np.testing.assert_allclose(header.get_sform(), sform, atol=1e-4)
    np.testing.assert_allclose(header.get_qform(), sform, atol=1e-4)
    (out / "s02.nii.gz").unlink()  # a case lost: scored as empty, in its own column
    (tmp_path / "labels").mkdir()  # a label folder matched by case name
    for subject in ("s01", "s02"):
        shutil.copy(seg, tmp_path / "labels" / f"{subject}.nii.gz")
    capsys.readouterr()
    rc = evaluate_main(
        ["--pred", str(out), "--labels", str(tmp_path / "labels"), "--output", str(tmp_path / "e")]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["missing_predictions"] == ["s02"]
    assert summary["classes"]["5"]["missing_prediction"] == 1
    assert summary["classes"]["5"]["dsc"]["n"] == 2
