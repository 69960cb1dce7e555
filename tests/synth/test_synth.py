"""Tests for medlsam.synth: procedural phantoms, cohorts from a real CT, and the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from conftest import CT_TESTDATA

from medlsam.config import load_config
from medlsam.errors import InputError
from medlsam.io import Volume, read_image, read_label, read_path_list, same_grid, write_nifti
from medlsam.synth import ORGAN_NAMES, make_cohort, make_cohort_from, make_phantom, reorient
from medlsam.synth.__main__ import main, parse_classes

SMALL = (48, 48, 40)
CT_DATA = CT_TESTDATA
TS_IMAGE = CT_DATA / "totalsegmentator" / "example_ct.nii.gz"
TS_LABEL = CT_DATA / "totalsegmentator" / "example_seg_fast_force_split.nii.gz"
# TotalSegmentator "total" ids (see PROVENANCE.md of the test data)
TS_CLASSES = {5: "liver", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 52: "aorta"}


def _centroid_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """World RAS mm centre of a mask on ``volume``'s grid."""
    return volume.to_world(np.argwhere(mask).mean(axis=0))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, n=4, supports=3, seed=0, shape=SMALL)


def test_cohort_layout_lists_and_config(cohort):
    out = cohort.out
    assert len(list((out / "images").glob("*.nii.gz"))) == 4
    assert len(list((out / "labels").glob("*.nii.gz"))) == 4
    support_images = read_path_list(out / "support_image.txt")
    query_labels = read_path_list(out / "query_label.txt")
    assert [p.name for p in support_images] == [
        "synth_000.nii.gz",
        "synth_001.nii.gz",
        "synth_002.nii.gz",
    ]
    assert [p.parent.name for p in query_labels] == ["labels"]
    assert not Path((out / "query_image.txt").read_text().strip()).is_absolute()  # relative paths

    config = load_config(out / "config.txt")
    assert config.data.fg_class == tuple(range(1, 11))
    assert config.data.class_names[1] == "liver" and config.data.class_names[6] == "aorta"
    assert config.data.bbox_mode.value == "SPL" and config.data.slice_interval == 2
    assert config.data.feature_scale_ls == ("feature0", "feature1", "feature2")
    assert len(config.data.support_images) == 3 and len(config.data.query_images) == 1
    assert config.data.query_labels is not None and config.data.query_labels[0].is_file()
    assert config.vit.backend == "classic" and config.weight.medlam_load_path is None


def test_each_subject_has_organs_and_plausible_hu(cohort):
    for subject in cohort.subjects:
        image, label = read_image(subject.image), read_label(subject.label)
        assert same_grid(image, label)
        assert image.data.dtype == np.float32 and label.data.dtype == np.int32
        organs = set(np.unique(label.data).tolist()) - {0}
        assert len(organs) >= 8, (subject.name, organs)
        hu = image.data
        assert (hu < -900).mean() > 0.05  # air around the body
        assert np.percentile(hu, 99.9) > 300  # bone
        liver = hu[label.data == 1].mean()
        assert 20.0 < liver < 110.0, liver
        assert hu[label.data == 8].mean() > 250.0  # the labelled vertebra is bone
        assert -50.0 < np.median(hu[label.data == 7]) < 50.0  # bladder: urine
        assert hu[label.data == 6].mean() > 60.0  # contrast-filled aorta


def test_subjects_differ(cohort):
    shapes = {s.shape for s in cohort.subjects}
    spacings = {s.spacing for s in cohort.subjects}
    assert len(shapes) > 1 and len(spacings) == 4
    assert len({s.axcodes for s in cohort.subjects}) >= 3  # orientation variety
    first = read_image(cohort.subjects[0].image)
    second = read_image(cohort.subjects[1].image)
    assert not np.allclose(first.affine, second.affine)


def test_anatomy_is_consistent_in_world_coordinates(cohort):
    """Whatever the file orientation, organs sit in the same relative places (RAS world)."""
    for subject in cohort.subjects:
        image, label = read_image(subject.image), read_label(subject.label)
        c = {k: _centroid_mm(image, label.data == k) for k in (1, 2, 3, 4, 6, 7, 8)}
        assert c[1][0] > c[2][0] + 60  # liver right of spleen (x toward Right)
        assert c[3][0] > c[8][0] > c[4][0]  # kidneys either side of the spine
        assert c[6][1] > c[8][1]  # aorta anterior to the vertebra
        assert c[1][2] > c[8][2] > c[7][2]  # liver above L1 above the bladder
        assert c[7][1] > c[8][1]  # bladder anterior


def test_same_seed_same_subjects(tmp_path):
    a = make_phantom(np.random.default_rng(3), shape=SMALL)
    b = make_phantom(np.random.default_rng(3), shape=SMALL)
    c = make_phantom(np.random.default_rng(4), shape=SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)

    first = make_cohort(tmp_path / "a", n=2, supports=1, seed=5, shape=SMALL)
    again = make_cohort(tmp_path / "b", n=2, supports=1, seed=5, shape=SMALL)
    for s, t in zip(first.subjects, again.subjects):
        x, y = read_image(s.image), read_image(t.image)
        assert np.array_equal(x.data, y.data) and np.array_equal(x.affine, y.affine)
        assert np.array_equal(read_label(s.label).data, read_label(t.label).data)


def test_queries_keep_organs_supports_keep_them_whole():
    for seed in range(3):
        support = make_phantom(np.random.default_rng([seed, 0]), shape=SMALL, role="support")
        query = make_phantom(np.random.default_rng([seed, 0]), shape=SMALL, role="query")
        assert set(np.unique(support.label)) == set(range(11))
        assert len(set(np.unique(query.label)) - {0}) >= 8
        # supports: no organ touches the first or last slice (the aorta runs through)
        ends = np.concatenate([support.label[:, :, 0].ravel(), support.label[:, :, -1].ravel()])
        assert set(np.unique(ends)) <= {0, 6}


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "PLS", "SRA", "ILP"])
def test_reorient_preserves_world_geometry(codes):
    phantom = make_phantom(np.random.default_rng(1), shape=SMALL)
    before = Volume(phantom.label, phantom.affine)
    data, affine = reorient(phantom.label, phantom.affine, codes)
    after = Volume(data, affine)
    assert after.axcodes == codes
    assert sorted(after.shape) == sorted(before.shape)
    for organ in (1, 3, 7):
        np.testing.assert_allclose(
            _centroid_mm(before, before.data == organ),
            _centroid_mm(after, after.data == organ),
            atol=1e-6,
        )
    # a voxel's value is found at the same world point
    ijk = np.array([20, 30, 10])
    new = np.rint(after.to_index(before.to_world(ijk))).astype(int)
    assert after.data[tuple(new)] == before.data[tuple(ijk)]


def test_reorient_all_48_orientations_round_trip():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    world = Volume(data, affine).to_world(np.argwhere(data >= 0))
    values = data[data >= 0]
    count = 0
    for perm in itertools.permutations(("RL", "AP", "SI")):
        for picks in itertools.product((0, 1), repeat=3):
            codes = "".join(pair[p] for pair, p in zip(perm, picks))
            new, new_affine = reorient(data, affine, codes)
            vol = Volume(new, new_affine)
            assert vol.axcodes == codes
            idx = np.rint(vol.to_index(world)).astype(int)
            assert np.array_equal(new[tuple(idx.T)], values)
            back, back_affine = reorient(new, new_affine, "RAS")
            assert np.array_equal(back, data) and np.allclose(back_affine, affine)
            count += 1
    assert count == 48


def test_class_subset_and_names(tmp_path):
    result = make_cohort(
        tmp_path,
        n=2,
        supports=1,
        seed=1,
        shape=SMALL,
        classes={1: "leber", 7: None},
        orientations=("LPS",),
    )
    for subject in result.subjects:
        assert set(np.unique(read_label(subject.label).data).tolist()) == {0, 1, 7}
        assert subject.axcodes == "LPS"
    config = load_config(tmp_path / "config.txt")
    assert config.data.fg_class == (1, 7)
    assert config.data.class_names == {1: "leber", 7: "bladder"}


def test_bad_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="supports"):
        make_cohort(tmp_path, n=3, supports=3, seed=0, shape=SMALL)
    with pytest.raises(InputError, match="class 42"):
        make_cohort(tmp_path, n=2, supports=1, seed=0, shape=SMALL, classes=[1, 42])
    with pytest.raises(InputError, match="orientation"):
        make_cohort(tmp_path, n=2, supports=1, seed=0, shape=SMALL, orientations=("RAX",))


def test_from_rejects_label_on_another_grid(tmp_path):
    image = np.full((8, 8, 8), -1000, np.int16)
    image[2:6, 2:6, 2:6] = 40
    write_nifti(image, np.eye(4), tmp_path / "ct.nii.gz")
    write_nifti(np.ones((8, 8, 7), np.uint8), np.eye(4), tmp_path / "seg.nii.gz")
    with pytest.raises(InputError, match="does not match"):
        make_cohort_from(tmp_path / "ct.nii.gz", tmp_path / "seg.nii.gz", tmp_path / "out", 2, 1, 0)


@pytest.mark.skipif(not TS_IMAGE.is_file(), reason=f"real CT test data not found in {CT_DATA}")
def test_from_real_ct_keeps_labels_on_the_anatomy(tmp_path):
    source_image, source_label = read_image(TS_IMAGE), read_label(TS_LABEL)
    source_liver = source_image.data[source_label.data == 5]
    result = make_cohort_from(
        TS_IMAGE, TS_LABEL, tmp_path, n=2, supports=1, seed=0, classes=TS_CLASSES
    )
    assert len(list((tmp_path / "images").glob("*.nii.gz"))) == 2
    config = load_config(tmp_path / "config.txt")
    assert config.data.fg_class == (5, 1, 2, 3, 52)
    assert config.data.class_names[5] == "liver"
    for subject in result.subjects:
        image, label = read_image(subject.image), read_label(subject.label)
        assert same_grid(image, label)
        assert set(np.unique(label.data).tolist()) <= {0, *TS_CLASSES}
        liver = image.data[label.data == 5]
        assert liver.size > 0.5 * source_liver.size
        # the deformed liver label still covers liver tissue: same HU as the source liver
        assert abs(np.median(liver) - np.median(source_liver)) < 25.0
        assert np.mean((liver > -100) & (liver < 200)) > 0.9
        assert not np.array_equal(label.data.shape, source_label.data.shape) or not np.array_equal(
            label.data, source_label.data
        )
    assert result.subjects[0].axcodes != result.subjects[1].axcodes


def test_cli_writes_cohort_and_prints_summary(tmp_path, capsys):
    rc = main(
        [
            "--out",
            str(tmp_path),
            "--n",
            "2",
            "--supports",
            "1",
            "--seed",
            "2",
            "--shape",
            *map(str, SMALL),
            "--medlam",
            str(tmp_path / "medlam.pth"),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "synth_000" in printed and "config.txt" in printed and "1 liver" in printed
    text = (tmp_path / "config.txt").read_text()
    assert f"medlam_load_path = {tmp_path / 'medlam.pth'}" in text
    config = load_config(tmp_path / "config.txt", check_files=False)
    assert config.weight.medlam_load_path == tmp_path / "medlam.pth"
    assert read_path_list(tmp_path / "query_image.txt")[0].is_file()


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    rc = main(["--out", str(tmp_path), "--n", "2", "--supports", "2", "--shape", *map(str, SMALL)])
    assert rc == InputError.exit_code
    err = capsys.readouterr().err
    assert "--supports 2" in err and "Traceback" not in err
    rc = main(
        ["--out", str(tmp_path), "--from", "ct.nii.gz", "seg.nii.gz", "--shape", "32", "32", "32"]
    )
    assert rc == InputError.exit_code and "--shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--classes", "liver"])


def test_parse_classes():
    assert parse_classes("5:liver, 1=spleen,2") == {5: "liver", 1: "spleen", 2: None}
    assert list(ORGAN_NAMES) == list(range(1, 11))


@pytest.mark.parametrize("role", ["support", "query"])
def test_from_crop_keeps_organs_and_bounds_the_cut(role):
    from medlsam.synth.deform import _crop

    label = np.zeros((4, 4, 40), np.int32)
    label[1:3, 1:3, 12:25] = 5
    for seed in range(20):
        k0, k1 = _crop(np.random.default_rng(seed), label, [5], axis=2, spacing=3.0, role=role)
        cut = 3 if role == "query" else 0  # 10 mm at 3 mm, at most a quarter of the organ
        assert k0 <= 12 + cut and k1 >= 25 - cut
        assert k0 <= 10 and k1 >= 30  # at most 25 % of the slices from either end
