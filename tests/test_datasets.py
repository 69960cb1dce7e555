"""Dataset layouts as users keep them: subject folders, DICOM folders, lists and configs saved
by Windows editors (byte-order mark, CRLF line ends)."""

from __future__ import annotations

import shutil

import pytest
from conftest import ct_testdata_path

from medlsam import io
from medlsam.config import check_case_names, load_config
from medlsam.errors import ConfigError, InputError

CONFIG = """[data]
support_image_ls = support_image.txt
support_label_ls = support_label.txt
query_image_ls = query_image.txt
query_label_ls = query_label.txt
fg_class = [1, 5]
fg_class_name = [spleen, liver]
bbox_mode = WPL

[vit]
backend = classic
"""


def _subject_tree(tmp_path, subjects=("s01", "s02", "s03")):
    """``subject/ct.nii.gz`` + ``subject/seg.nii.gz`` copies of the shared CT."""
    ct = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    seg = ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz")
    for subject in subjects:
        (tmp_path / subject).mkdir(parents=True)
        shutil.copy(ct, tmp_path / subject / "ct.nii.gz")
        shutil.copy(seg, tmp_path / subject / "seg.nii.gz")
    return [tmp_path / s / "ct.nii.gz" for s in subjects], [
        tmp_path / s / "seg.nii.gz" for s in subjects
    ]


def _write_lists(root, images, labels, newline="\n", bom=""):
    def text(paths):
        return bom + newline.join(str(p.relative_to(root)) for p in paths) + newline

    (root / "support_image.txt").write_bytes(text(images[:1]).encode("utf-8"))
    (root / "support_label.txt").write_bytes(text(labels[:1]).encode("utf-8"))
    (root / "query_image.txt").write_bytes(text(images[1:]).encode("utf-8"))
    (root / "query_label.txt").write_bytes(text(labels[1:]).encode("utf-8"))


def test_subject_folders_name_cases_after_the_folder(tmp_path):
    images, labels = _subject_tree(tmp_path)
    _write_lists(tmp_path, images, labels)
    (tmp_path / "config.txt").write_text(CONFIG)
    config = load_config(tmp_path / "config.txt")
    assert check_case_names(config) == ["s02", "s03"]
    assert io.case_names(labels) == ["s01", "s02", "s03"]  # labels pair up by the same rule


def test_file_names_that_do_not_collide_keep_the_file_name(tmp_path):
    names = [tmp_path / "a" / "liver_01.nii.gz", tmp_path / "a" / "liver_02.nii.gz"]
    names.append(tmp_path / "b" / "liver_03.nii.gz")
    assert io.case_names(names) == ["liver_01", "liver_02", "liver_03"]


def test_colliding_folder_names_too_are_refused_naming_both(tmp_path):
    images, labels = _subject_tree(tmp_path, ("x/s01", "y/s01", "s02"))
    _write_lists(tmp_path, [images[2], images[0], images[1]], [labels[2], labels[0], labels[1]])
    (tmp_path / "config.txt").write_text(CONFIG)
    config = load_config(tmp_path / "config.txt")
    with pytest.raises(ConfigError, match="share the case name 's01'") as err:
        check_case_names(config)
    assert str(images[0]) in str(err.value) and str(images[1]) in str(err.value)


def test_a_dicom_folder_case_is_the_folder_name(tmp_path):
    folder = tmp_path / "patient_7"
    folder.mkdir()
    for n in (1, 2, 3):
        source = ct_testdata_path("dcmqi", f"ct-3slice_0{n}.dcm")
        shutil.copy(source, folder / f"IM{n:04d}")  # DICOM files often have no suffix
    volume = io.read_image(folder)
    assert volume.name == "patient_7" and volume.shape[2] == 3
    assert io.case_names([folder, tmp_path / "other.nii.gz"]) == ["patient_7", "other"]
    two = [tmp_path / "a" / "dicom", tmp_path / "b" / "dicom"]  # subject/dicom/ layouts
    assert io.case_names(two) == ["a", "b"]


@pytest.mark.parametrize("bom, newline", [("\ufeff", "\r\n"), ("\ufeff", "\n"), ("", "\r\n")])
def test_byte_order_mark_and_crlf_in_config_and_lists(tmp_path, bom, newline):
    images, labels = _subject_tree(tmp_path, ("s01", "s02"))
    _write_lists(tmp_path, images, labels, newline=newline, bom=bom)
    text = bom + CONFIG.replace("\n", newline)
    (tmp_path / "config.txt").write_bytes(text.encode("utf-8"))
    config = load_config(tmp_path / "config.txt")  # checks that every listed file exists
    assert config.data.support_images == (images[0],)
    assert config.data.query_labels == (labels[1],)
    assert config.data.class_names == {1: "spleen", 5: "liver"}
    volume = io.read_image(config.data.query_images[0])
    assert volume.shape == (122, 101, 112)


def test_byte_order_mark_in_a_yaml_config(tmp_path):
    images, labels = _subject_tree(tmp_path, ("s01", "s02"))
    _write_lists(tmp_path, images, labels)
    yaml_text = (
        "\ufeffdata:\r\n  support_image_ls: support_image.txt\r\n"
        "  support_label_ls: support_label.txt\r\n  query_image_ls: query_image.txt\r\n"
        "  fg_class: [1]\r\n"
    )
    (tmp_path / "config.yaml").write_bytes(yaml_text.encode("utf-8"))
    assert load_config(tmp_path / "config.yaml").data.query_images == (images[1],)


def test_a_list_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "config.txt").write_bytes(b"[data]\nquery_image_ls = \xff\xfe\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(tmp_path / "config.txt")


def test_label_folder_by_file_or_by_sub_folder(tmp_path):
    seg = ct_testdata_path("totalsegmentator", "example_seg.nii.gz")
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in ("case_01", "case_02"):
        shutil.copy(seg, flat / f"{case}.nii.gz")
    (flat / ".case_03.nii.gz.tmp").write_bytes(b"")  # hidden: an atomic write in progress
    assert io.label_folder(flat) == {c: flat / f"{c}.nii.gz" for c in ("case_01", "case_02")}
    nested = tmp_path / "nested"
    for case in ("s01", "s02"):
        (nested / case).mkdir(parents=True)
        shutil.copy(seg, nested / case / "segmentation.nii.gz")
    assert io.label_folder(nested) == {
        c: nested / c / "segmentation.nii.gz" for c in ("s01", "s02")
    }
    shutil.copy(seg, nested / "s02" / "ct.nii.gz")
    with pytest.raises(InputError, match="2 label files .* expected one label map per case"):
        io.label_folder(nested)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label maps found"):
        io.label_folder(tmp_path / "empty")
    with pytest.raises(InputError, match="label folder not found"):
        io.label_folder(tmp_path / "absent")
