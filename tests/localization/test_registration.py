"""Weight-free localization by registration: tiny synthetic volumes, bad inputs, real CT."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ct_testdata_path, make_ct, reorient

from medlsam.boxes import Box3D, box_iou
from medlsam.errors import RegistrationError
from medlsam.io import Volume
from medlsam.localization.atlas import SHRINK, Reduced, Registrar, pyramid, warp_labels
from medlsam.localization.registration import (
    Frame,
    Gathered,
    RegistrationLocalizer,
    axis_search,
    default_workers,
)
from medlsam.preprocess import PAD, medlam_image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))


def _shifted(volume: Volume, mm: tuple[float, float, float]) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] += mm
    return Volume(volume.data, affine, volume.path)


def _iou(organs, label: Volume, c: int) -> float:
    truth = Box3D.from_mask(label.data == c)
    assert truth is not None and organs[c].inside
    return box_iou(truth, organs[c].boxes[0])


def test_axis_search_finds_the_slab_offset():
    image, _ = make_ct(shape=(40, 36, 40), seed=3)
    from medlsam.preprocess import medlam_image

    full = medlam_image(image, "linear").array
    offset, score = axis_search(full[12:24], full)
    assert offset[0] == 12 and abs(offset[1]) <= 2 and abs(offset[2]) <= 2
    assert score > 0.9


@pytest.mark.parametrize("fusion", ["median", "vote"])
def test_boxes_of_a_reoriented_shifted_query(fusion):
    """Same anatomy stored flipped and 300 mm away in scanner coordinates: boxes still fit."""
    support, support_label = make_ct(seed=0)
    query, query_label = make_ct(seed=1)
    perm, flips = (1, 0, 2), (True, False, True)
    query = _shifted(reorient(query, perm, flips), (300.0, -250.0, 400.0))
    query_label = Volume(query.data * 0 + reorient(query_label, perm, flips).data, query.affine)
    loc = RegistrationLocalizer(fusion=fusion)
    loc.fit([(support, support_label)] * 2, [1, 2])
    organs = loc.predict(query)
    assert all(m.matched for m in loc.last_matches)
    assert _iou(organs, query_label, 1) > 0.6
    assert _iou(organs, query_label, 2) > 0.5


def test_partial_field_of_view_query():
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    query, query_label = make_ct(shape=(40, 36, 40), seed=1)
    cut = (slice(None), slice(None), slice(14, 26))
    affine = query.affine.copy()
    affine[:3, 3] = query.to_world(np.array([0, 0, 14]))
    affine[2, 3] += 500.0  # and other scanner coordinates
    part = Volume(query.data[cut].copy(), affine)
    part_label = Volume(query_label.data[cut].copy(), affine)
    loc = RegistrationLocalizer()
    loc.fit([(support, support_label)], [1, 2])
    organs = loc.predict(part)
    assert _iou(organs, part_label, 1) > 0.6


def test_no_overlap_and_no_match_marks_every_organ_outside(caplog):
    """A query far away in space whose content matches nothing: one warning per organ."""
    support, support_label = make_ct(seed=0)
    rng = np.random.default_rng(5)
    data = np.full((30, 30, 20), -1000.0, dtype=np.float32)
    data[5:25, 5:25] = rng.normal(0.0, 300.0, (20, 20, 20))  # no anatomy
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = 5000.0  # metres away from the support in scanner coordinates
    query = Volume(data, affine)
    loc = RegistrationLocalizer(class_names={1: "liver", 2: "spleen"})
    loc.fit([(support, support_label)], [1, 2])
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.registration"):
        organs = loc.predict(query)
    assert not organs[1].inside and not organs[2].inside
    assert organs[1].boxes == () and organs[2].boxes == ()
    for name in ("organ 1 (liver)", "organ 2 (spleen)"):
        assert sum(name in r.getMessage() for r in caplog.records) == 1
    assert not loc.last_matches[0].matched


def test_organ_registered_outside_the_query(caplog):
    """A slab that holds organ 1 but not organ 2: organ 2 is outside, with one warning."""
    support, support_label = make_ct(shape=(40, 36, 48), seed=0)
    data, lab = support.data.copy(), support_label.data.copy()
    organ2 = lab == 2
    data[organ2], lab[organ2] = 40.0, 0
    low = np.roll(organ2, -14, axis=2)  # organ 2 moves 42 mm down, below organ 1
    data[low], lab[low] = 300.0, 2
    support, support_label = Volume(data, support.affine), Volume(lab, support.affine)
    z1 = np.nonzero((lab == 1).any(axis=(0, 1)))[0]
    top = int(z1.min())
    cut = (slice(None), slice(None), slice(top, top + 14))
    affine = support.affine.copy()
    affine[:3, 3] = support.to_world(np.array([0, 0, top]))
    query = Volume(support.data[cut].copy(), affine)
    assert not (lab[cut] == 2).any()
    loc = RegistrationLocalizer()
    loc.fit([(support, support_label)], [1, 2])
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.registration"):
        organs = loc.predict(query)
    assert organs[1].inside and not organs[2].inside
    assert sum("organ 2" in r.getMessage() for r in caplog.records) == 1


def test_registration_that_fails_raises_with_its_reason(monkeypatch):
    support, support_label = make_ct(seed=0)

    def fail(self, fixed, moving):
        raise RuntimeError("itk::ERROR: All samples map outside moving image buffer")

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", fail)
    loc = RegistrationLocalizer()
    loc.fit([(support, support_label)], [1, 2])
    with pytest.raises(RegistrationError, match="did not converge: .*outside moving image"):
        loc.predict(make_ct(seed=1)[0])


def _organ2_moved(shift: int) -> tuple[Volume, Volume]:
    """make_ct's scan with organ 2 alone moved ``shift`` voxels (2 mm) along i."""
    image, label = make_ct(shape=(40, 36, 40), seed=1)
    data, lab = image.data.copy(), label.data.copy()
    data[lab == 2], lab[lab == 2] = 40.0, 0
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij")
    organ2 = ((ii - 27 - shift) / 4) ** 2 + ((jj - 21) / 4) ** 2 + ((kk - 18) / 4) ** 2 < 1
    data[organ2], lab[organ2] = 300.0, 2
    return Volume(data, image.affine), Volume(lab, image.affine)


def test_local_affine_follows_an_organ_that_moved_alone():
    """Organ 2 moved 10 mm while the body and organ 1 stayed: the global affine follows the
    body, the organ's local search follows the organ."""
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    query, query_label = _organ2_moved(5)
    ious = {}
    for refine in ("none", "organ"):
        loc = RegistrationLocalizer(refine=refine)
        loc.fit([(support, support_label)], [1, 2])
        ious[refine] = _iou(loc.predict(query), query_label, 2)
    assert ious["organ"] > 0.7, ious
    assert ious["organ"] > ious["none"] + 0.1, ious


def test_both_fuses_the_global_and_the_moved_mask():
    """``refine = both``: the support's organ mask before and after its local move both reach
    the fusion, so the fused box lies between the global box (wrong: organ 2 moved alone) and
    the moved one, closer to the truth than the global box."""
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    query, query_label = _organ2_moved(5)
    ious, gathered = {}, {}
    for refine in ("none", "organ", "both"):
        loc = RegistrationLocalizer(refine=refine)
        loc.fit([(support, support_label)], [1, 2])
        grid = medlam_image(query, "linear")
        found = loc.support_organs(grid, Frame.of(query, grid))
        ious[refine] = _iou(loc.boxes(query, grid, loc.fuse(found)), query_label, 2)
        gathered[refine] = found[2]
    assert [len(gathered[r].points) for r in ("none", "organ", "both")] == [1, 1, 2]
    np.testing.assert_array_equal(gathered["both"].points[0], gathered["none"].points[0])
    np.testing.assert_array_equal(gathered["both"].points[1], gathered["organ"].points[0])
    assert ious["both"] > ious["none"] + 0.05, ious
    assert ious["organ"] > ious["both"], ious


def test_pairs_in_worker_processes_give_the_same_points():
    """The pairs run in worker processes (2 and 3 workers) or in this one (1, with ITK's
    global default at 2 threads): the gathered points, vote counts and match scores are the
    same, matches in support order."""
    supports = [make_ct(shape=(40, 36, 40), seed=s) for s in (0, 2, 3)]
    query, _ = _organ2_moved(4)
    grid = medlam_image(query, "linear")
    frame = Frame.of(query, grid)
    runs = {}
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        for workers in (1, 2, 3):
            loc = RegistrationLocalizer(refine="both", workers=workers)
            loc.fit(supports, [1, 2])
            assert loc.pair_workers() == workers
            assert (loc._pool() is None) == (workers == 1)
            runs[workers] = (loc.support_organs(grid, frame, ("vote",)), loc.last_matches)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    first, first_matches = runs[1]
    for workers in (2, 3):
        gathered, matches = runs[workers]
        assert [m.support for m in matches] == [m.support for m in first_matches]
        assert [m.score for m in matches] == [m.score for m in first_matches]
        for c in (1, 2):
            key = lambda p: p.tobytes()  # noqa: E731 (arrival order may differ)
            assert sorted(map(key, gathered[c].points)) == sorted(map(key, first[c].points))
            assert len(gathered[c].points) == 6
            np.testing.assert_array_equal(gathered[c].votes, first[c].votes)
    assert RegistrationLocalizer().workers == default_workers()
    with pytest.raises(ValueError, match="workers must be at least 1"):
        RegistrationLocalizer(workers=0)


def test_a_pair_gives_the_same_transform_in_every_run():
    """Parts of an ITK registration take their threads from ITK's global default and sum in
    the order the work finished: each pair runs on one ITK thread, so two runs give the same
    transform to the last bit, and the global default is restored."""
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    query, _ = make_ct(shape=(40, 36, 40), seed=1)
    loc = RegistrationLocalizer(workers=1)
    loc.fit([(support, support_label)], [1, 2])
    grid = medlam_image(query, "linear")
    frame = Frame.of(query, grid)
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        runs = [loc.registrar.register(grid.array, frame, loc.atlases[0]) for _ in range(3)]
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    params = {m.transform.GetParameters() for m in runs}
    assert len(params) == 1 and runs[0].matched
    assert len({m.score for m in runs}) == 1


def test_pyramid_levels_are_smoothed_and_shrunk_in_place():
    """The global affine's levels: the smoothed image on a grid of f times the spacing,
    centred on the image (ITK's shrink), so an image and its mask shrink alike."""
    image, _ = make_ct(shape=(40, 36, 40), seed=0)
    grid = medlam_image(image, "linear")
    frame = Frame.of(image, grid)
    levels = pyramid(grid.array, frame)
    assert len(levels) == len(SHRINK)
    for f, level in zip(SHRINK, levels, strict=True):
        np.testing.assert_allclose(level.spacing, frame.spacing * f)
        assert level.array.shape == tuple(n // f for n in grid.array.shape)
        first = (level.origin - frame.origin) / frame.spacing - (f - 1) / 2  # (x, y, z)
        spare = np.array(grid.array.shape[::-1]) % f  # input voxels left over per axis
        np.testing.assert_allclose(first, spare / 2, atol=1e-9)  # centred on the image
        assert level.array.dtype == np.float32
        # each voxel holds the smoothed image around its own position
        z, y, x = np.meshgrid(*[np.arange(n) for n in level.array.shape], indexing="ij")
        mm = level.origin + level.spacing * np.stack([x, y, z], axis=-1)
        index = np.rint((mm - frame.origin) / frame.spacing).astype(int)[..., ::-1]
        under = grid.array[tuple(np.moveaxis(index, -1, 0))]
        assert np.corrcoef(level.array.ravel(), under.ravel())[0, 1] > 0.8
        assert level.array.std() < under.std()  # smoothed
        back = level.image()
        assert (
            back.GetSpacing() == tuple(level.spacing) and back.GetSize()[::-1] == level.array.shape
        )


class _DyingRegistrar(Registrar):
    """A registrar whose worker process dies in the middle of a registration."""

    def register(self, query, q_frame, atlas, levels=None):
        os._exit(3)


def test_a_worker_that_dies_fails_the_query_alone():
    """A worker process that dies (killed for memory, say): the query fails with a
    RegistrationError that says so, and the next query runs in a new pool."""
    supports = [make_ct(shape=(40, 36, 40), seed=s) for s in (0, 2)]
    query, query_label = make_ct(shape=(40, 36, 40), seed=1)
    loc = RegistrationLocalizer(workers=2)
    loc.fit(supports, [1, 2])
    good = loc.registrar
    loc.registrar = _DyingRegistrar(good.seed, good.iterations, good.refine)
    with pytest.raises(RegistrationError, match="registration worker process stopped"):
        loc.predict(query)
    loc.registrar = good
    assert _iou(loc.predict(query), query_label, 1) > 0.6


@pytest.mark.parametrize("splits", [0, 1, 3])
def test_reduced_masks_keep_the_points_and_the_voxels(splits):
    """A warped mask reduced in a worker: its points are those of the whole padded mask
    (taken on its bounding box), and its crop puts back every voxel for vote counts."""
    from medlsam.localization.prototypes import support_points

    rng = np.random.default_rng(splits)
    for _ in range(40):
        mask = np.zeros((30, 28, 26), dtype=bool)
        lo = rng.integers(0, 12, 3)
        hi = lo + rng.integers(4, 14, 3)
        cut = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        mask[cut] = rng.random(tuple(hi - lo)) < rng.uniform(0.05, 1.0)
        if not mask.any():
            continue
        reduced = Reduced.of(mask, splits, crop=True)
        np.testing.assert_array_equal(reduced.points, support_points(mask, splits))
        gathered = Gathered(splits, count=True)
        gathered.take(reduced)
        gathered.take(Reduced.of(mask, splits, crop=True))
        np.testing.assert_array_equal(gathered.votes, 2 * mask)
        assert Reduced.of(mask, splits, crop=False).crop is None
    with pytest.raises(ValueError, match="vote counts need the mask's voxels"):
        Gathered(splits, count=True).take(Reduced.of(mask, splits, crop=False))
    with pytest.raises(ValueError, match="empty mask"):
        Reduced.of(np.zeros((4, 4, 4), dtype=bool), splits, crop=False)


def test_gathered_points_fuse_as_the_full_masks_did(monkeypatch):
    """Each warped mask is reduced to its points (and a vote count for ``vote`` only) on
    arrival; the fused points equal those of the kept full-size masks (3 supports, each
    organ's mask before and after its local move: 6 masks per organ)."""
    from medlsam.localization.prototypes import support_points

    supports = [make_ct(shape=(40, 36, 40), seed=s) for s in (0, 2, 3)]
    query, _ = _organ2_moved(3)
    loc = RegistrationLocalizer(refine="both", workers=1)
    loc.fit(supports, [1, 2])
    grid = medlam_image(query, "linear")
    frame = Frame.of(query, grid)
    masks: dict[int, list[np.ndarray]] = {1: [], 2: []}
    matches, moved = {}, {}
    registrar = loc.registrar
    for atlas in loc.atlases:
        matches[id(atlas)] = match = registrar.register(grid.array, frame, atlas)
        warped = warp_labels(atlas, frame, grid.array.shape, match.transform)
        for c in masks:
            masks[c].append(warped == c)
            moved[id(atlas), c] = registrar.refine_organ(
                grid.array, frame, atlas, match.transform, warped == c, c
            )
            masks[c].append(moved[id(atlas), c])
    # the same registrations and local moves again, not recomputed
    monkeypatch.setattr(
        registrar, "register", lambda query, q_frame, atlas, levels=None: matches[id(atlas)]
    )
    monkeypatch.setattr(registrar, "refine_organ", lambda q, f, atlas, t, w, c: moved[id(atlas), c])
    median_only = loc.support_organs(grid, frame)
    assert all(g.votes is None for g in median_only.values())
    both = loc.support_organs(grid, frame, ("median", "vote"))
    for c, kept in masks.items():
        points = np.stack([support_points(m, 1) for m in kept])
        expected = np.median(points, axis=0) - PAD
        np.testing.assert_array_equal(loc.fuse(median_only)[c][0], expected)
        np.testing.assert_array_equal(loc.fuse(both, "median")[c][0], expected)
        votes = np.sum(kept, axis=0)
        np.testing.assert_array_equal(both[c].votes, votes)
        majority = votes >= int(np.ceil(len(kept) / 2))
        expected = support_points(majority if majority.any() else votes == votes.max(), 1)
        np.testing.assert_array_equal(loc.fuse(both, "vote")[c][0], expected - PAD)
    with pytest.raises(ValueError, match="vote fusion needs the votes"):
        loc.fuse(median_only, "vote")


def test_fit_refuses_an_organ_in_no_support(tiny_ct):
    from medlsam.errors import InputError

    with pytest.raises(InputError, match="organ 7 is absent from every support"):
        RegistrationLocalizer().fit([tiny_ct], [1, 7])


def test_spl_sub_boxes():
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    loc = RegistrationLocalizer(mode="SPL", slice_interval=2)
    loc.fit([(support, support_label)], [1, 2])
    organs = loc.predict(make_ct(shape=(40, 36, 40), seed=2)[0])
    assert loc.splits[1] >= 2
    assert len(organs[1].boxes) == loc.splits[1]
    starts = [b.lo[2] for b in organs[1].boxes]
    assert starts == sorted(starts)


# --------------------------------------------------------------------------------------------
# real CT


def test_real_ct_derived_query():
    """One support vs a contrast-shifted, flipped, resampled, 42 mm slab at other scanner
    coordinates (the same subject: see scripts/measure_real_ct.py)."""
    from measure_real_ct import derived

    from medlsam.io import read_image, read_label

    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    query, query_label = derived(image, label)
    loc = RegistrationLocalizer()
    loc.fit([(image, label)], [5, 1, 6])
    organs = loc.predict(query)
    ious = [_iou(organs, query_label, c) for c in (5, 1, 6)]
    assert np.mean(ious) >= 0.7, ious


def test_real_ct_crop_with_wrong_scanner_coordinates():
    """example_ct_sm keeps the full scan's affine (246 mm off): content, not coordinates,
    places it."""
    from medlsam.io import read_image, read_label

    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    query = read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    query_label = read_label(ct_testdata_path("totalsegmentator", "example_seg.nii.gz"))
    loc = RegistrationLocalizer()
    loc.fit([(image, label)], [5, 1])
    organs = loc.predict(query)
    assert _iou(organs, query_label, 5) > 0.7
    assert _iou(organs, query_label, 1) > 0.7


# --------------------------------------------------------------------------------------------
# through the pipeline


def _write_cohort(tmp_path: Path, n_queries: int = 2, extra: str = "") -> Path:
    from medlsam.io import write_nifti, write_path_list

    paths = []
    for n in range(1 + n_queries):
        image, label = make_ct(seed=n)
        ip, lp = tmp_path / f"case{n}.nii.gz", tmp_path / f"case{n}_label.nii.gz"
        write_nifti(image.data.astype(np.int16), image.affine, ip)
        write_nifti(label.data.astype(np.uint8), label.affine, lp)
        paths.append((ip, lp))
    write_path_list(tmp_path / "si.txt", [paths[0][0]])
    write_path_list(tmp_path / "sl.txt", [paths[0][1]])
    write_path_list(tmp_path / "qi.txt", [p[0] for p in paths[1:]])
    config = tmp_path / "config.txt"
    config.write_text(
        "[data]\nsupport_image_ls = si.txt\nsupport_label_ls = sl.txt\nquery_image_ls = qi.txt\n"
        "fg_class = [1, 2]\nseg_save_path = out\n[vit]\nbackend = classic\n" + extra
    )
    return config


def test_registration_is_the_default_without_medlam_weights(tmp_path, caplog):
    from medlsam.config import load_config
    from medlsam.pipeline.run import run

    cfg = load_config(_write_cohort(tmp_path, 1))
    assert cfg.localize.method == "registration"
    with caplog.at_level(logging.INFO, logger="medlsam"):
        report = run(cfg, device="cpu", progress=False)
    assert report.ok == ["case1"]
    assert any("localizer: registration (default" in r.getMessage() for r in caplog.records)
    record = json.loads(report.run_json.read_text())
    assert record["localizer"]["method"] == "registration"
    assert "no [weight] medlam_load_path" in record["localizer"]["chosen_by"]
    boxes = json.loads((report.output / "case1.boxes.json").read_text())
    assert boxes["classes"]["1"]["inside"] and boxes["classes"]["1"]["boxes"]
    pairs = record["cases"]["case1"]["localizer"]["pairs"]
    assert pairs[0]["support"] == "case0" and pairs[0]["matched"]
    assert 0 < pairs[0]["cpu_seconds"] and record["cases"]["case1"]["localizer"]["workers"] == 1


def test_failed_registration_fails_its_case_alone(tmp_path, monkeypatch):
    from medlsam.config import load_config
    from medlsam.pipeline.run import run

    calls = {"n": 0}
    original = sitk.ImageRegistrationMethod.Execute

    def first_fails(self, fixed, moving):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("itk::ERROR: optimizer diverged")
        return original(self, fixed, moving)

    monkeypatch.setattr(sitk.ImageRegistrationMethod, "Execute", first_fails)
    cfg = load_config(_write_cohort(tmp_path, 2, "[localize]\nmethod = registration\n"))
    report = run(cfg, device="cpu", progress=False)
    assert report.ok == ["case2"]
    record = json.loads(report.run_json.read_text())
    entry = record["cases"]["case1"]
    assert entry["status"] == "failed"
    assert "registration of support case0 did not converge" in entry["error"]
    assert "optimizer diverged" in entry["error"]


def test_unknown_localize_method_is_a_config_error(tmp_path):
    from medlsam.config import load_config
    from medlsam.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[localize\] method.*did you mean 'registration'"):
        load_config(_write_cohort(tmp_path, 1, "[localize]\nmethod = registation\n"))


def test_localize_refine_is_read_and_checked(tmp_path):
    from medlsam.config import load_config
    from medlsam.errors import ConfigError

    assert load_config(_write_cohort(tmp_path, 1)).localize.refine == "both"
    for refine in ("none", "organ", "both"):
        cfg = load_config(_write_cohort(tmp_path, 1, f"[localize]\nrefine = {refine}\n"))
        assert cfg.localize.refine == refine
    with pytest.raises(ConfigError, match=r"\[localize\] refine"):
        load_config(_write_cohort(tmp_path, 1, "[localize]\nrefine = organs\n"))


def test_localize_workers_is_read_checked_and_used(tmp_path):
    """``[localize] workers``: unset is one per CPU; a number >= 1 reaches the localizer (at
    most one worker per support); anything else is a config error."""
    from medlsam.config import load_config
    from medlsam.errors import ConfigError
    from medlsam.pipeline.setup import build_localizer

    assert load_config(_write_cohort(tmp_path, 1)).localize.workers is None
    cfg = load_config(_write_cohort(tmp_path, 1, "[localize]\nworkers = 3\n"))
    assert cfg.localize.workers == 3
    loc = build_localizer(cfg, "cpu")
    assert loc.workers == 3
    loc.fit([make_ct(seed=0)], [1, 2])
    assert loc.pair_workers() == 1  # one support
    assert build_localizer(load_config(_write_cohort(tmp_path, 1)), "cpu").workers == (
        default_workers()
    )
    for bad in ("0", "two", "1.5"):
        with pytest.raises(ConfigError, match=r"\[localize\] workers.*integer >= 1"):
            load_config(_write_cohort(tmp_path, 1, f"[localize]\nworkers = {bad}\n"))


def test_a_query_of_three_slices_is_registered_or_outside_never_a_crash():
    """A 9 mm query (3 slices on the 3 mm grid, too short for a recursive Gaussian): its
    pyramid is made with a Gaussian kernel, and the query gets boxes or organs marked
    outside, with no error."""
    support, support_label = make_ct(shape=(40, 36, 40), seed=0)
    query, _ = make_ct(shape=(40, 36, 40), seed=1)
    cut = (slice(None), slice(None), slice(16, 19))
    affine = query.affine.copy()
    affine[:3, 3] = query.to_world(np.array([0, 0, 16]))
    part = Volume(query.data[cut].copy(), affine)
    grid = medlam_image(part, "linear")
    assert min(grid.array.shape) < 4
    levels = pyramid(grid.array, Frame.of(part, grid))
    assert [lv.array.shape[0] for lv in levels] == [1, 1]
    loc = RegistrationLocalizer(workers=1)
    loc.fit([(support, support_label)], [1, 2])
    organs = loc.predict(part)
    assert set(organs) == {1, 2}


def test_default_workers_share_the_cpus_among_torchrun_ranks(monkeypatch):
    """Each ``torchrun`` process on a node takes its share of the CPUs (at least one)."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cpus = default_workers()
    assert cpus >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_workers() == max(1, cpus // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cpus))
    assert default_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")
    assert default_workers() == cpus
