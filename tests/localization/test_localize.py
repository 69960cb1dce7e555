"""Support points, prototypes, template matching and query localization (tiny random MedLAM)."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_ct, reorient
from torch import nn

from medlsam.config import BoxMode
from medlsam.errors import InputError
from medlsam.io import Volume
from medlsam.localization.localizer import Localizer
from medlsam.localization.matching import (
    AIR_THRESHOLD,
    correlate,
    crop_patches,
    initial_centres,
    mss_offsets,
    search_centres,
)
from medlsam.localization.network import MedLAM
from medlsam.localization.prototypes import (
    ClassPrototype,
    Prototypes,
    bounding_box,
    extreme_points,
    split_count,
    split_points,
    template_slice,
)
from medlsam.preprocess import PAD, medlam_image, medlam_label

FAST = ("feature0",)  # the cheapest scale: keeps the decoder at 16^3


def tiny_model(seed: int = 0, zero_fc: bool = True) -> MedLAM:
    """Width-2 MedLAM; with ``zero_fc`` every position code is 0, so the relative-distance step
    puts every point at the mean initial patch centre (inside the image) and MSS does the rest."""
    torch.manual_seed(seed)
    model = MedLAM(2).eval()
    if zero_fc:
        with torch.no_grad():
            model.fc3.weight.zero_()
            model.fc3.bias.zero_()
    return model


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    image, label = make_ct()
    loc = Localizer(tiny_model(), "cpu", feature_scales=FAST, seed=7, interpolation="linear")
    loc.fit([(image, label)], [1, 2])
    return loc, image, label


def clone(loc: Localizer, **changes) -> Localizer:
    args = dict(
        model=loc.model,
        device="cpu",
        mode=loc.mode,
        slice_interval=loc.slice_interval,
        feature_scales=loc.feature_scales,
        seed=loc.seed,
        interpolation=loc.interpolation,
        batch_size=loc.batch_size,
    )
    args.update(changes)
    new = Localizer(**args)
    new.prototypes = copy.deepcopy(loc.prototypes)
    return new


# --------------------------------------------------------------------------------------------
# support points (method.md 3.1 / 3.2), expectations worked out by hand


def test_extreme_points_hand_made():
    mask = np.zeros((5, 6, 7), np.uint8)
    voxels = [
        (1, 2, 3),
        (1, 2, 4),
        (1, 3, 3),
        (2, 1, 2),
        (2, 2, 2),
        (2, 2, 3),
        (2, 4, 5),
        (3, 3, 4),
    ]
    for p in voxels:
        mask[p] = 1
    # min-z slice z=1 in (y, x) raster order: (2,3) (2,4) (3,3) -> middle (2,4)
    # min-y slice y=1: only (z=2, x=2); min-x slice x=2 in (z, y) order: (2,1) (2,2) -> (2,2)
    # max-z z=3: (3,3,4); max-y y=4 and max-x x=5: only (2,4,5)
    expected = [[1, 2, 4], [2, 1, 2], [2, 2, 2], [3, 3, 4], [2, 4, 5], [2, 4, 5]]
    assert extreme_points(mask).tolist() == expected


def test_extreme_point_plane_on_y_is_ordered_x_then_z():
    mask = np.zeros((5, 5, 7), bool)
    for p in [(1, 1, 5), (3, 1, 2), (2, 2, 3), (2, 3, 3)]:
        mask[p] = True
    # slice y=1 ordered (x, z): (x=2, z=3), (x=5, z=1) -> middle (element 1) is x=5, z=1;
    # (z, x) order would have given (3, 1, 2).
    assert extreme_points(mask)[1].tolist() == [1, 1, 5]


def _diagonal(gap: tuple[int, ...] = ()) -> np.ndarray:
    mask = np.zeros((13, 14, 22), bool)
    for z in range(2, 11):
        if z not in gap:
            mask[z, z, 20 - z] = True
    return mask


def test_split_points_hand_made():
    # z 2..10, step (10-2)//2 = 4: part 0 slab [2, 6) forced to z 2..6, part 1 [6, 10) -> 6..10
    expected = [
        [2, 2, 18],
        [2, 2, 18],
        [5, 5, 15],
        [6, 6, 14],
        [5, 5, 15],
        [2, 2, 18],
        [6, 6, 14],
        [6, 6, 14],
        [9, 9, 11],
        [10, 10, 10],
        [9, 9, 11],
        [6, 6, 14],
    ]
    assert split_points(_diagonal(), 2).tolist() == expected


def test_split_points_search_next_slice_of_whole_organ():
    points = split_points(_diagonal(gap=(6,)), 2)
    # part 0's top (z=6) is empty: the in-plane position comes from z=7, the z stays 6
    assert points[3].tolist() == [6, 7, 13]
    # part 1 slab lacks z=6: its box is y 7..9, x 11..13
    assert points[6:12].tolist() == [
        [6, 7, 13],
        [7, 7, 13],
        [9, 9, 11],
        [10, 10, 10],
        [9, 9, 11],
        [7, 7, 13],
    ]


def test_split_points_empty_slab_reuses_previous_box():
    mask = np.zeros((13, 14, 22), bool)
    mask[2, 2, 18] = mask[10, 10, 10] = True
    points = split_points(mask, 2)
    # part 1 slab [6, 10) is empty: it reuses part 0's box (y 2..2, x 18..18), z forced to 6..10
    assert points[6].tolist() == [6, 10, 10]  # z=6 empty -> first non-empty slice after is z=10
    assert points[7].tolist() == [2, 2, 18] and points[9].tolist() == [10, 10, 10]


@pytest.mark.parametrize(
    "extent, interval, mode, expected",
    [
        (8, 2, "SPL", 4),
        (20, 2, "SPL", 6),
        (2, 2, "SPL", 0),
        (3, 2, "SPL", 1),
        (8, 2, "WPL", 0),
        (8, None, "SPL", 0),
    ],
)
def test_split_count(extent, interval, mode, expected):
    assert split_count(extent, interval, BoxMode(mode)) == expected


def test_template_cubes_are_published():
    assert template_slice(16) == slice(7, 9)
    assert template_slice(32) == slice(14, 18)
    assert template_slice(64) == slice(28, 36)


# --------------------------------------------------------------------------------------------
# template matching


@pytest.mark.parametrize("kernel", [(2, 2, 2), (3, 3, 3), (4, 2, 3)])
def test_fft_correlation_equals_convolution(kernel):
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 12, 10, 9, generator=gen)
    temps = torch.randn(3, 5, *kernel, generator=gen)
    got = correlate(feats, temps, channel_chunk=2)
    pad = [k // 2 for k in kernel]
    for b in range(3):
        ref = F.conv3d(feats[b : b + 1], temps[b : b + 1], padding=pad)[0, 0]
        torch.testing.assert_close(got[b], ref, atol=1e-4, rtol=1e-4)


def test_argmax_offset_convention():
    score = torch.zeros(2, 64, 64, 64)
    score[0, 31, 40, 20] = 5
    score[1, 10, 10, 10] = score[1, 50, 50, 50] = 3  # tie: the first in C order wins
    assert mss_offsets(score).tolist() == [[0, 9, -11], [-21, -21, -21]]


def test_crop_patches_zero_fills_outside():
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    patch = crop_patches(array, np.array([[0, 0, 0]]), size=4)[0, 0]
    assert patch[:2, :2, :2].sum() == 0 and patch[2, 2, 2] == array[0, 0, 0]


class ShiftEquivariant(nn.Module):
    """A stand-in feature extractor that commutes with shifts away from borders (one conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.randn(6, 1, 3, 3, 3, generator=torch.Generator().manual_seed(0))

    def forward(self, x, fc=True, features=()):
        out = {"fc_position": torch.zeros(x.shape[0], 3)} if fc else {}
        out.update({name: F.conv3d(x, self.weight, padding=1) for name in features})
        return out


def _shifted_pair(shift):
    big = np.random.default_rng(0).standard_normal((130, 130, 130)).astype(np.float32)
    d = np.asarray(shift)
    support = big[10:120, 10:120, 10:120]
    query = big[10 - d[0] : 120 - d[0], 10 - d[1] : 120 - d[1], 10 - d[2] : 120 - d[2]]
    return support, query  # query[p + d] == support[p]


@pytest.mark.parametrize("error", [(0, 0, 0), (2, -1, 1), (-5, 6, 3), (9, -12, 7)])
def test_refinement_recovers_a_pure_shift(error):
    shift = np.array([3, -2, 4])
    support, query = _shifted_pair(shift)
    loc = Localizer(ShiftEquivariant(), "cpu", feature_scales=("feature2",), batch_size=2)
    points = np.array([[50, 50, 50], [60, 45, 55], [40, 70, 66]])
    _, templates = loc._support_features(support, points)
    start = points + shift + np.array(error)
    found = loc._refine(query, start, templates)
    # the published arg-max convention (index - 31 on the 65->64 resized map) lands on the point
    # or half a voxel beyond it, i.e. offset 0 or +1 per axis
    diff = found - (points + shift)
    assert np.all((diff >= 0) & (diff <= 1)), diff


@pytest.mark.parametrize("error", [(0, 0, 0), (2, -1, 1), (-5, 6, 3)])
def test_shared_search_patches_recover_a_pure_shift_with_fewer_patches(error):
    shift = np.array([3, -2, 4])
    support, query = _shifted_pair(shift)
    points = np.array([[50, 50, 50], [52, 47, 51], [49, 53, 48], [60, 45, 55]])
    start = points + shift + np.array(error)
    found, patches = {}, {}
    for share in (0.0, 24.0):
        loc = Localizer(
            ShiftEquivariant(),
            "cpu",
            feature_scales=("feature2",),
            batch_size=2,
            mss_share_mm=share,
        )
        _, templates = loc._support_features(support, points)
        before = loc.stats["patches"]
        found[share] = loc._refine(query, start, templates)
        patches[share] = loc.stats["patches"] - before
        centres = search_centres(start, share, query.shape)
        if share:  # a 24 mm grid = every 8 voxels; each centre within 4 voxels of its point
            assert np.all(centres % 8 == 0) and np.abs(centres - start).max() <= 4
    assert patches[0.0] == 4 and patches[24.0] < 4
    # both land on the true point (or half a voxel beyond), as long as it is in the window
    for share in (0.0, 24.0):
        diff = found[share] - (points + shift)
        assert np.all((diff >= 0) & (diff <= 1)), (share, diff)


def test_refinement_with_medlam_all_scales_keeps_a_correct_point():
    shift = np.array([3, -2, 4])
    support, query = _shifted_pair(shift)
    loc = Localizer(tiny_model(zero_fc=False), "cpu", batch_size=2)  # all three scales
    points = np.array([[50, 50, 50]])
    _, templates = loc._support_features(support, points)
    start = points + shift  # identical patches: features match exactly
    diff = loc._refine(query, start, templates) - start
    assert np.all((diff >= 0) & (diff <= 1)), diff


# --------------------------------------------------------------------------------------------
# query localization


def test_initial_centres_are_tissue_deterministic_and_terminate():
    padded = np.zeros((80, 90, 70), np.float32)
    padded[35:45, 40:50, 30:40] = 0.5
    a = initial_centres(padded, np.random.default_rng(3))
    b = initial_centres(padded, np.random.default_rng(3))
    assert a.tolist() == b.tolist() and a.shape == (10, 3)
    assert np.all(padded[tuple(a.T)] >= AIR_THRESHOLD)
    lo = np.array(padded.shape) // 2 - 10
    assert np.all((a >= lo) & (a < lo + 20))
    empty = np.zeros((70, 70, 70), np.float32)
    assert initial_centres(empty, np.random.default_rng(0)).tolist() == [[35, 35, 35]] * 10
    corner = np.zeros((70, 70, 70), np.float32)
    corner[2, 3, 4] = 1
    corner[1, 1, 1] = 1
    assert initial_centres(corner, np.random.default_rng(0))[0].tolist() == [2, 3, 4]


def _world_boxes(result: dict, volume: Volume) -> dict:
    out = {}
    for c, organ in result.items():
        boxes = []
        for box in organ.boxes:
            corners = volume.to_world(np.array([box.lo, box.hi]))
            boxes.append(np.stack([corners.min(0), corners.max(0)]))
        pts = volume.to_world(organ.extreme_points)
        out[c] = (organ.inside, boxes, pts)
    return out


def test_predict_is_deterministic_and_batch_size_free(fitted):
    loc, image, _ = fitted
    first = loc.predict(image)
    small = clone(loc, batch_size=1).predict(image)  # another instance, another batch size
    for c in (1, 2):
        assert first[c].boxes == small[c].boxes
        np.testing.assert_array_equal(first[c].extreme_points, small[c].extreme_points)
        assert first[c].inside and first[c].boxes
        for box in first[c].boxes:
            assert all(0 <= a <= b < s for a, b, s in zip(box.lo, box.hi, image.shape))


def test_orientation_gives_same_world_boxes(fitted):
    loc, _, _ = fitted
    query, _ = make_ct(seed=5)
    ref = _world_boxes(loc.predict(query), query)
    assert any(inside for inside, _, _ in ref.values())
    # a cyclic permutation with flips and a swap with all flips: the published back-mapping
    # is wrong for both (method.md 4 step 7)
    for perm, flips in [((1, 2, 0), (True, False, True)), ((0, 2, 1), (True, True, True))]:
        turned = reorient(query, perm, flips)
        assert turned.axcodes != query.axcodes
        got = _world_boxes(loc.predict(turned), turned)
        tol = float(query.spacing.max())
        for c in ref:
            assert ref[c][0] == got[c][0]
            assert len(ref[c][1]) == len(got[c][1])
            for a, b in zip(ref[c][1], got[c][1]):
                np.testing.assert_allclose(a, b, atol=tol)
            np.testing.assert_allclose(ref[c][2], got[c][2], atol=1e-6)


def test_organ_outside_the_field_of_view(fitted):
    loc = clone(fitted[0])
    image = fitted[1]
    loc.prototypes.classes[2].fc = loc.prototypes.classes[2].fc + 50.0  # tanh -> +1500 mm in z
    result = loc.predict(image)
    assert not result[2].inside and result[2].boxes == ()
    assert result[2].extreme_points.shape == (1, 6, 3)
    assert result[1].inside and result[1].boxes
    # only organ 1 is refined: at most 10 initial patches + its 6 points (each distinct
    # patch centre runs once, so coinciding centres cost one patch)
    assert 6 < loc.stats["patches"] <= 16


def test_tiny_and_air_queries_terminate(fitted):
    loc = clone(fitted[0])
    small = Volume(np.full((8, 10, 6), 40.0, np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    air = Volume(np.full((30, 30, 20), -1000.0, np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    for volume in (small, air):
        result = loc.predict(volume)
        assert set(result) == {1, 2}
        for organ in result.values():
            for box in organ.boxes:
                assert all(0 <= a <= b < s for a, b, s in zip(box.lo, box.hi, volume.shape))


def test_organ_absent_from_one_support_uses_the_others(fitted, caplog):
    loc, image, label = fitted
    other, other_label = make_ct(seed=3)
    no_two = Volume(
        np.where(other_label.data == 2, 0, other_label.data), other_label.affine, other_label.path
    )
    other = Volume(other.data, other.affine, other.path)
    both = clone(loc)
    with caplog.at_level(logging.WARNING):
        protos = both.fit([(image, label), (other, no_two)], [1, 2])
    assert any("organ 2" in r.getMessage() and "absent" in r.getMessage() for r in caplog.records)
    alone = loc.prototypes.classes[2]
    torch.testing.assert_close(protos.classes[2].fc, alone.fc)
    torch.testing.assert_close(protos.classes[2].templates["feature0"], alone.templates["feature0"])
    assert protos.classes[2].supports == (alone.supports[0],)
    assert len(protos.classes[1].supports) == 2
    mixed = protos.classes[1].templates["feature0"]
    assert not torch.allclose(mixed, loc.prototypes.classes[1].templates["feature0"])


def test_organ_absent_from_every_support_is_named(fitted):
    loc, image, label = fitted
    with pytest.raises(InputError, match="organ 9"):
        clone(loc).fit([(image, label)], [1, 9])


def test_label_on_another_grid_is_refused(fitted):
    loc, image, label = fitted
    moved = label.affine.copy()
    moved[2, 3] += 30
    with pytest.raises(InputError, match="does not match"):
        clone(loc).fit([(image, Volume(label.data, moved))], [1])


def test_label_stored_flipped_gives_the_same_prototypes(fitted):
    from conftest import reorient

    loc, image, label = fitted
    stored = reorient(label, (2, 0, 1), (True, False, True))  # same voxels, another axis order
    protos = clone(loc).fit([(image, stored)], [1, 2])
    for c in (1, 2):
        for scale, template in loc.prototypes.classes[c].templates.items():
            torch.testing.assert_close(protos.classes[c].templates[scale], template)


def test_prototypes_file_roundtrip_and_guards(fitted, tmp_path):
    loc, image, _ = fitted
    path = loc.save_prototypes(tmp_path / "protos.pt")
    fresh = Localizer(loc.model, "cpu", feature_scales=FAST, seed=7, interpolation="linear")
    fresh.load_prototypes(path, [1, 2])
    assert fresh.predict(image)[1].boxes == loc.predict(image)[1].boxes
    other = Localizer(tiny_model(seed=1), "cpu", feature_scales=FAST)
    with pytest.raises(InputError, match="checkpoint"):
        other.load_prototypes(path)
    spl = Localizer(loc.model, "cpu", mode="SPL", slice_interval=2, feature_scales=FAST)
    with pytest.raises(InputError, match="bbox_mode"):
        spl.load_prototypes(path)
    more = Localizer(loc.model, "cpu", feature_scales=("feature0", "feature2"))
    with pytest.raises(InputError, match="feature2"):
        more.load_prototypes(path)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match="broken.pt"):
        Prototypes.load(broken)


def test_prototypes_record_device_and_precision_and_refuse_others(fitted, tmp_path, caplog):
    loc, image, _ = fitted
    assert loc.precision == "fp32" and loc.numerics == {"device": "cpu", "precision": "fp32"}
    protos = Prototypes.load(loc.save_prototypes(tmp_path / "cpu.pt"))
    assert protos.numerics == {"device": "cpu", "precision": "fp32"}
    protos.numerics = {"device": "cuda", "precision": "fp16"}  # as a GPU run writes them
    gpu_made = protos.save(tmp_path / "gpu.pt")
    fresh = Localizer(loc.model, "cpu", feature_scales=FAST, seed=7, interpolation="linear")
    with pytest.raises(InputError) as err:
        fresh.load_prototypes(gpu_made, [1, 2])
    message = str(err.value)
    assert "gpu.pt" in message and "cuda in fp16" in message and "cpu in fp32" in message
    assert "\n" not in message
    protos.numerics = {}  # a file written before numerics were recorded: used, with a warning
    legacy = protos.save(tmp_path / "legacy.pt")
    with caplog.at_level("WARNING"):
        fresh.load_prototypes(legacy, [1, 2])
    assert "does not record the device" in caplog.text
    assert fresh.predict(image)[1].boxes == loc.predict(image)[1].boxes


def test_spl_sub_boxes(fitted):
    loc, image, label = fitted
    spl = clone(loc, mode=BoxMode.SPL, slice_interval=2)
    protos = spl.fit([(image, label)], [1, 2])
    grid = medlam_image(image, "linear")
    lab = medlam_label(label, [1, 2], grid)
    for c in (1, 2):
        lo, hi = bounding_box(lab == c)
        groups = min((hi[0] - lo[0]) // 2, 6)
        assert protos.classes[c].groups == groups > 1
        assert protos.classes[c].fc.shape == (6 * groups, 3)
    result = spl.predict(image)
    axis = image.slice_axis()
    for c in (1, 2):
        assert result[c].extreme_points.shape == (protos.classes[c].groups, 6, 3)
        starts = [b.lo[axis] for b in result[c].boxes]
        assert starts == sorted(starts) and len(starts) >= 1


def test_coinciding_patch_centres_run_once_with_the_same_features(fitted):
    loc = clone(fitted[0])
    from medlsam.preprocess import medlam_image, pad

    padded = pad(medlam_image(fitted[1], "linear").array)
    centre = np.array(padded.shape) // 2
    points = np.array([centre, centre + [0, 2, 0], centre, centre, centre + [0, 2, 0]])
    fcs, feats = loc._support_features(padded, points)
    assert loc.stats["patches"] == 2
    torch.testing.assert_close(fcs[0], fcs[2])
    torch.testing.assert_close(fcs[1], fcs[4])
    alone_fc, alone = clone(loc)._support_features(padded, points[1:2])
    torch.testing.assert_close(fcs[1], alone_fc[0], rtol=1e-5, atol=1e-5)
    for scale in loc.feature_scales:
        torch.testing.assert_close(feats[scale][4], alone[scale][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feats[scale][0], feats[scale][3])


# --------------------------------------------------------------------------------------------
# iterated relative-distance steps (rdr_steps)


class _HalfwayModel(nn.Module):
    """Reads a patch's z position from its centre voxel (the volume is a z ramp) and codes it so
    that one relative-distance step covers half the remaining distance along z."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, fc=True, features=()):
        z_mm = (x[:, 0, 32, 32, 32].double() - 0.1) / 0.005 * 3.0
        code = torch.zeros(len(x), 3, dtype=torch.float64)
        code[:, 0] = 0.5 * z_mm / 1500.0
        return {"fc_position": code.float()}


def _ramp_localizer(steps: int, target_z: int) -> tuple[Localizer, SimpleNamespace]:
    volume = (0.1 + 0.005 * np.arange(100))[:, None, None] * np.ones((1, 20, 20))
    loc = Localizer(_HalfwayModel(), "cpu", feature_scales=(), seed=3, rdr_steps=steps)
    code = np.zeros((6, 3), np.float32)
    code[:, 0] = 0.5 * target_z * 3.0 / 1500.0
    loc.prototypes = Prototypes(
        classes={1: ClassPrototype(torch.from_numpy(code), {}, 1, ("s",))},
        mode=BoxMode.WPL,
        slice_interval=None,
        feature_scales=(),
        checkpoint_sha256="test",
        base_chns=0,
    )
    return loc, SimpleNamespace(array=volume.astype(np.float32))


def test_more_rdr_steps_converge_on_the_target():
    errors = {}
    for steps in (1, 2, 6):
        loc, grid = _ramp_localizer(steps, target_z=85)
        points, inside = loc.locate(grid)[1]
        assert inside
        errors[steps] = np.abs(points[0, :, 0] - 85).max()
        # the initial 10 patches plus one fc pass per later step (6 equal points share one)
        assert loc.stats["patches"] <= 10 + (steps - 1)
    # the start is the middle (z ~ 50): each step halves the remaining 35 voxels
    assert errors[1] >= 15 and errors[2] >= 7 and errors[6] <= 2


def test_rdr_steps_stop_once_no_point_moves():
    loc, grid = _ramp_localizer(50, target_z=60)
    loc.locate(grid)
    assert loc.stats["patches"] < 10 + 49


def test_rdr_steps_must_be_positive():
    with pytest.raises(ValueError, match="rdr_steps"):
        Localizer(_HalfwayModel(), "cpu", rdr_steps=0)


def test_coarse_points_replace_the_relative_distance_search(one_thread):
    """A ``coarse_points`` hook gives the points refinement starts from: no relative-distance
    step runs (rdr_steps 3 would add fc-only patches), and without refinement the organ points
    are the hook's; resampling to 3 mm is timed in stats."""
    image, label = make_ct()
    torch.manual_seed(0)
    loc = Localizer(MedLAM(2).eval(), "cpu", feature_scales=(), seed=1, rdr_steps=3)
    loc.fit([(image, label)], [1, 2])
    assert loc.stats["resample_seconds"] > 0
    n = sum(len(p.fc) for p in loc.prototypes.classes.values())
    shapes = []

    def centre_points(padded):
        shapes.append(padded.shape)
        return np.tile(np.array(padded.shape) // 2, (n, 1))

    loc.coarse_points = centre_points
    before = dict(loc.stats)
    located = loc.locate(medlam_image(image, loc.interpolation))
    assert len(shapes) == 1
    assert loc.stats["patches"] - before["patches"] <= 10  # the start patches only
    for points, inside in located.values():
        assert inside and np.all(points == np.array(shapes[0]) // 2 - PAD)
    loc.coarse_points = None
    before = dict(loc.stats)
    loc.predict(image)
    assert loc.stats["patches"] - before["patches"] > 10  # the search's own steps again
    assert loc.stats["resample_seconds"] > before["resample_seconds"]
