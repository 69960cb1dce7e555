"""Golden tests of the Localizer's own arithmetic: prototypes from several supports, prototypes
in use, the relative-distance search, and points mapped back to the file (tiny oracle network).

The scans are tiny (12^3 voxels at 3 mm) and stored with their voxel axes i, j, k running
toward S, A, L, so that a file's voxels ARE MedLAM's 3 mm LAS ``(z, y, x)`` grid. Every voxel
value of every scan occurs once, so :class:`Oracle` (a stand-in for MedLAM) knows where each
patch it is given is centred and returns a position code and feature maps that are simple
functions of that position. Expected numbers are worked out here from the positions alone
(numpy, torch), never by the code under test.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import medlsam.localization.localizer as localizer_module
from medlsam.boxes import Box3D
from medlsam.config import BoxMode
from medlsam.errors import InputError
from medlsam.io import Volume
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import FEATURE_NAMES, weights_fingerprint
from medlsam.localization.prototypes import ClassPrototype, Prototypes
from medlsam.preprocess import medlam_image, pad

SIZE = 12  # voxels per axis of every scan
PAD = 32  # the padding of the 3 mm grid, written out (method.md: 32 voxels per side)
#: position code per padded 3 mm voxel (z, y, x): distinct per axis, so a swapped axis shows
CODE_SCALE = np.array([0.004, 0.005, 0.006])


def sal_affine(spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)) -> np.ndarray:
    """Voxel axes i, j, k toward Superior, Anterior, Left (RAS+ world): the LAS (z, y, x) grid."""
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = spacing[0], spacing[1], -spacing[2], 1
    return affine


def scan(index: int, shape=(SIZE, SIZE, SIZE), spacing=(3.0, 3.0, 3.0)) -> Volume:
    """Soft tissue (-190..190 HU) whose voxel values are distinct, also across scans."""
    n = int(np.prod(shape))
    order = np.random.default_rng(index).permutation(n).reshape(shape)
    hu = -190.0 + 380.0 * (order * 4 + index) / (4 * n)
    return Volume(hu.astype(np.float32), sal_affine(spacing), Path(f"/data/scan{index}.nii.gz"))


def plus(centre) -> np.ndarray:
    """The 7 voxels of a 3D plus sign; its six extreme points in the published order (min z,
    min y, min x, max z, max y, max x) are the six arm ends."""
    c = np.asarray(centre)
    arms = np.array([[-1, 0, 0], [0, -1, 0], [0, 0, -1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    return c + arms


def label_of(image: Volume, organs: dict[int, tuple[int, int, int]]) -> Volume:
    data = np.zeros(image.shape, np.int32)
    for c, centre in organs.items():
        for p in [centre, *plus(centre)]:
            data[tuple(p)] = c
    return Volume(data, image.affine.copy(), image.path)


def code(padded_zyx) -> np.ndarray:
    return np.asarray(padded_zyx, dtype=np.float64) * CODE_SCALE


def feature_map(padded_zyx, scale: int) -> torch.Tensor:
    """``(N, 2, 16, 16, 16)``: channel 0 is ``scale + 1``, channel 1 the position's sum / 10
    plus a ramp over the map, so the template cube's place in the map matters."""
    pos = torch.as_tensor(np.asarray(padded_zyx, dtype=np.float64)).reshape(-1, 3)
    a = torch.arange(16, dtype=torch.float64)
    ramp = (a[:, None, None] + 2 * a[None, :, None] + 3 * a[None, None, :]) / 16
    out = torch.empty(len(pos), 2, 16, 16, 16, dtype=torch.float64)
    out[:, 0] = scale + 1.0
    out[:, 1] = pos.sum(dim=1)[:, None, None, None] / 10 + ramp
    return out


def template(padded_zyx, scale: int) -> torch.Tensor:
    """The published template of a 16^3 map: its central 2^3 cube [7:9], each voxel's feature
    vector divided by its Euclidean norm over the channels."""
    cube = feature_map(padded_zyx, scale)[:, :, 7:9, 7:9, 7:9]
    return (cube / cube.pow(2).sum(dim=1, keepdim=True).sqrt()).float()


class Oracle(nn.Module):
    """MedLAM stand-in: looks up the centre voxel of each patch in the scans it was given."""

    def __init__(self, *volumes: Volume, interpolation: str = "linear") -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.where: dict[float, tuple[int, int, int]] = {}
        self.calls = 0
        for volume in volumes:
            padded = pad(medlam_image(volume, interpolation).array)
            tissue = padded > 0
            self.where.update(
                zip(padded[tissue].tolist(), map(tuple, np.argwhere(tissue).tolist()))
            )

    def forward(self, x, fc=True, features=()):
        self.calls += 1
        pos = np.array([self.where[v] for v in x[:, 0, 32, 32, 32].tolist()])
        out = {}
        if fc:
            out["fc_position"] = torch.from_numpy(code(pos)).float()
        for name in features:
            out[name] = feature_map(pos, FEATURE_NAMES.index(name)).float()
        return out


class WideOracle(Oracle):
    base_chns = 3  # as MedLAM records its width


SUPPORT_ORGANS = (
    {1: (4, 5, 6), 2: (8, 6, 5)},
    {1: (5, 4, 7), 2: (7, 7, 4)},
)
SCALES = ("feature0", "feature2")


@pytest.fixture(scope="module")
def two_supports():
    images = [scan(0), scan(1)]
    labels = [label_of(im, organs) for im, organs in zip(images, SUPPORT_ORGANS)]
    model = WideOracle(*images)
    loc = Localizer(
        model, "cpu", mode="SPL", slice_interval=2, feature_scales=SCALES, interpolation="linear"
    )
    protos = loc.fit(zip(images, labels), [1, 2])  # a generator of pairs is enough
    return loc, protos, images, labels


def test_fit_averages_position_codes_and_sums_templates_over_supports(two_supports):
    loc, protos, images, _ = two_supports
    assert list(protos.classes) == [1, 2]
    for c in (1, 2):
        points = [plus(organs[c]) + PAD for organs in SUPPORT_ORGANS]  # padded 3 mm grid
        proto = protos.classes[c]
        expected_fc = (code(points[0]) + code(points[1])) / 2
        np.testing.assert_allclose(proto.fc.numpy(), expected_fc, rtol=1e-6)
        assert set(proto.templates) == set(SCALES)
        for name in SCALES:
            scale = FEATURE_NAMES.index(name)
            expected = template(points[0], scale) + template(points[1], scale)
            torch.testing.assert_close(proto.templates[name], expected)
        # SPL with slice interval 2: an organ 2 voxels long is not split (one group)
        assert proto.groups == 1
        assert proto.supports == ("scan0", "scan1") == tuple(im.name for im in images)


def test_fit_records_how_the_prototypes_were_made(two_supports):
    loc, protos, _, _ = two_supports
    assert protos.mode is BoxMode.SPL and protos.slice_interval == 2
    assert protos.feature_scales == SCALES
    assert protos.checkpoint_sha256 == weights_fingerprint(loc.model)
    assert protos.base_chns == 3
    assert protos.numerics == {"device": "cpu", "precision": "fp32"}
    assert protos.meta == {"label_resampling": "medlsam"}
    assert loc.prototypes is protos
    # a network that does not record its width: 0
    image = scan(2)
    plain = Localizer(Oracle(image), "cpu", feature_scales=(), interpolation="linear")
    made = plain.fit([(image, label_of(image, {3: (6, 6, 6)}))], [3])
    assert made.base_chns == 0 and made.mode is BoxMode.WPL and made.slice_interval is None
    assert made.feature_scales == () and made.classes[3].templates == {}


def test_fit_times_each_support_resampling(monkeypatch):
    """``resample_seconds`` adds the time spent bringing each support to 3 mm (a fake clock that
    advances 1 s per reading), and ``predict`` adds its query's."""
    images = [scan(0), scan(1)]
    labels = [label_of(im, organs) for im, organs in zip(images, SUPPORT_ORGANS)]
    readings = iter(range(1000, 2000))
    clock = SimpleNamespace(perf_counter=lambda: float(next(readings)))
    monkeypatch.setattr(localizer_module, "time", clock)
    loc = Localizer(Oracle(*images), "cpu", feature_scales=(), interpolation="linear")
    loc.stats["resample_seconds"] = 0.5
    loc.fit(zip(images, labels), [1, 2])
    assert loc.stats["resample_seconds"] == 2.5
    loc.predict(images[0])
    assert loc.stats["resample_seconds"] == 3.5


def test_fit_without_supports_is_a_one_line_error():
    loc = Localizer(Oracle(), "cpu", feature_scales=())
    with pytest.raises(InputError) as err:
        loc.fit([], [1])
    assert str(err.value) == "no support scans given (need support images and labels)"


def test_organ_absent_from_every_support_names_them_all():
    images = [scan(0), scan(1)]
    labels = [label_of(im, organs) for im, organs in zip(images, SUPPORT_ORGANS)]
    loc = Localizer(Oracle(*images), "cpu", feature_scales=(), interpolation="linear")
    with pytest.raises(InputError) as err:
        loc.fit(zip(images, labels), [1, 3])
    assert str(err.value) == (
        "organ 3 is absent from every support label map (scan0, scan1); "
        "remove it from fg_class or add a support scan that contains it"
    )


def test_organ_absent_from_one_support_comes_from_the_others(caplog):
    images = [scan(0), scan(1)]
    organs = [SUPPORT_ORGANS[0], {1: SUPPORT_ORGANS[1][1]}]  # organ 2 only in scan0
    labels = [label_of(im, o) for im, o in zip(images, organs)]
    loc = Localizer(Oracle(*images), "cpu", feature_scales=("feature1",), interpolation="linear")
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.localizer"):
        protos = loc.fit(zip(images, labels), [1, 2])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        "scan1: organ 2 is absent from this support scan; its prototype comes from the other "
        "support scans"
    ]
    only = plus(SUPPORT_ORGANS[0][2]) + PAD
    np.testing.assert_allclose(protos.classes[2].fc.numpy(), code(only), rtol=1e-6)
    torch.testing.assert_close(protos.classes[2].templates["feature1"], template(only, 1))
    assert protos.classes[2].supports == ("scan0",)
    both = [plus(o[1]) + PAD for o in organs]
    np.testing.assert_allclose(
        protos.classes[1].fc.numpy(), (code(both[0]) + code(both[1])) / 2, rtol=1e-6
    )


class Constant(nn.Module):
    """A network whose outputs do not depend on the patch (for tests of the labels alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, fc=True, features=()):
        return {"fc_position": torch.zeros(len(x), 3)} if fc else {}


def _thin_organ_support() -> tuple[Volume, Volume]:
    """A scan at 1.5 mm along z (10 slices -> 5 of 3 mm) whose organ 2 is one voxel on the last
    slice. By hand: medlsam's corner-aligned grid samples z at 0, 9/4, 9/2, 27/4 and 9, so the
    last 3 mm slice IS file slice 9 (organ 2 present); the published half-voxel grid samples z
    at 2 n + 0.5, and file slice 9 gets weight 1/2 at z = 8.5 only, a tie that the published
    argmax gives to the background (organ 2 absent). Organ 1, a 2 x 3 x 3 block on file slices
    4-5, is kept by both (z = 4.5)."""
    image = scan(5, shape=(10, 8, 8), spacing=(1.5, 3.0, 3.0))
    data = np.zeros(image.shape, np.int32)
    data[4:6, 2:5, 2:5] = 1
    data[9, 4, 4] = 2
    return image, Volume(data, image.affine.copy(), image.path)


def test_support_labels_go_to_3mm_as_the_run_asks():
    image, label = _thin_organ_support()
    own = Localizer(Constant(), "cpu", feature_scales=(), interpolation="linear")
    protos = own.fit([(image, label)], [1, 2])
    assert protos.meta == {"label_resampling": "medlsam"} and set(protos.classes) == {1, 2}
    published = Localizer(Constant(), "cpu", feature_scales=(), published=True)
    with pytest.raises(InputError, match="organ 2 is absent from every support label map"):
        published.fit([(image, label)], [1, 2])
    protos = published.fit([(image, label)], [1])
    assert protos.meta == {"label_resampling": "published"}


# --------------------------------------------------------------------------------------------
# prototypes in use


def _made_for(loc: Localizer, classes=(1, 2, 3), **changes) -> Prototypes:
    fields = dict(
        classes={
            c: ClassPrototype(torch.full((6, 3), float(c)), {}, 1, (f"s{c}",)) for c in classes
        },
        mode=loc.mode,
        slice_interval=loc.slice_interval,
        feature_scales=loc.feature_scales,
        checkpoint_sha256=loc.fingerprint,
        base_chns=0,
        numerics=loc.numerics,
        meta={"label_resampling": "medlsam"},
    )
    fields.update(changes)
    return Prototypes(**fields)


def test_use_prototypes_keeps_the_classes_asked_for(tmp_path):
    loc = Localizer(Constant(), "cpu", feature_scales=())
    kept = loc.use_prototypes(_made_for(loc), "p.pt", [3, 1])
    assert list(kept.classes) == [3, 1] and loc.prototypes is kept
    assert kept.classes[3].fc[0, 0] == 3.0
    every = loc.use_prototypes(_made_for(loc), "p.pt")
    assert list(every.classes) == [1, 2, 3]
    path = _made_for(loc).save(tmp_path / "p.pt")
    assert list(loc.load_prototypes(path, [2]).classes) == [2]
    assert list(loc.load_prototypes(path).classes) == [1, 2, 3]


def test_use_prototypes_refuses_a_missing_class():
    loc = Localizer(Constant(), "cpu", feature_scales=())
    with pytest.raises(InputError, match=r"p\.pt: prototypes have no organ \[9\]"):
        loc.use_prototypes(_made_for(loc), "p.pt", [1, 9])


def test_use_prototypes_checks_the_spl_interval():
    loc = Localizer(Constant(), "cpu", mode="SPL", slice_interval=2, feature_scales=())
    assert loc.use_prototypes(_made_for(loc), "p.pt", [1]).slice_interval == 2
    with pytest.raises(InputError, match="slice_interval 3, not SPL 2"):
        loc.use_prototypes(_made_for(loc, slice_interval=3), "p.pt", [1])


def test_use_prototypes_checks_the_label_resampling():
    own = Localizer(Constant(), "cpu", feature_scales=())
    published = Localizer(Constant(), "cpu", feature_scales=(), published=True)
    # files written before the resampling was recorded were made the medlsam way
    assert own.use_prototypes(_made_for(own, meta={}), "old.pt", [1]).meta == {}
    with pytest.raises(InputError) as err:
        published.use_prototypes(_made_for(published, meta={}), "old.pt", [1])
    assert str(err.value) == (
        "old.pt: prototypes were made with the medlsam support-label resampling, not the "
        "published one this run uses ([run] reproduce); rebuild them from the support scans"
    )
    made = _made_for(published, meta={"label_resampling": "published"})
    assert published.use_prototypes(made, "pub.pt", [1]) is made
    with pytest.raises(InputError) as err:
        own.use_prototypes(_made_for(own, meta={"label_resampling": "published"}), "pub.pt")
    assert str(err.value).startswith(
        "pub.pt: prototypes were made with the published support-label resampling, not the "
        "medlsam one"
    )


# --------------------------------------------------------------------------------------------
# the query: start patches, one relative-distance step, organs outside, refinement's inputs

DIS_MM = np.array([1500.0, 600.0, 600.0])  # published dis_ratio, mm along (z, y, x)


def _prototypes(fcs: dict[int, np.ndarray], **changes) -> Prototypes:
    fields = dict(
        classes={
            c: ClassPrototype(torch.tensor(fc, dtype=torch.float32), {}, len(fc) // 6, ("s",))
            for c, fc in fcs.items()
        },
        mode=BoxMode.WPL,
        slice_interval=None,
        feature_scales=(),
        checkpoint_sha256="oracle",
        base_chns=0,
    )
    fields.update(changes)
    return Prototypes(**fields)


def _expected_starts(query: Volume, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The padded query and its 10 start centres, drawn as matching.initial_centres documents:
    per centre one draw of ``integers([s//2 - 10] * 3, [s//2 + 10] * 3)`` from the query's own
    generator, drawn again while the voxel is air (< 0.001)."""
    padded = pad(medlam_image(query, "linear").array)
    rng = np.random.default_rng(seed)
    lo, hi = np.array(padded.shape) // 2 - 10, np.array(padded.shape) // 2 + 10
    centres = []
    while len(centres) < 10:
        draw = rng.integers(lo, hi)
        if padded[tuple(draw)] >= 0.001:
            centres.append(draw)
    return padded, np.array(centres)


def test_one_relative_distance_step_by_hand():
    """Method.md 4 steps 2-4: mean start code, displacement ``dis_ratio * tanh(support - query)``
    mm from the mean start centre, rounded to 3 mm voxels; an organ is outside when every group
    box misses the unpadded grid."""
    query = scan(3)
    padded, centres = _expected_starts(query, seed=11)
    # the oracle's codes are float32, averaged in float64
    query_code = code(centres).astype(np.float32).astype(np.float64).mean(axis=0)
    origin = centres.mean(axis=0)  # padded voxels

    # support codes: organ 1 a few voxels from the start (z -3 voxels: 500 tanh(d) = -3),
    # organ 2 two groups, one inside and one 40 voxels beyond the top of the image,
    # organ 3 every point 20 voxels below the image in z
    def shifted(voxels):
        v = np.asarray(voxels, dtype=np.float64)
        return query_code + np.arctanh(v * 3.0 / DIS_MM)

    arms = plus((0, 0, 0)).astype(np.float64)
    fcs = {
        1: np.stack([shifted(a + [-3, 1, 2]) for a in arms]),
        2: np.concatenate(
            [
                np.stack([shifted(a + [2, -2, 1]) for a in arms]),
                np.stack([shifted(a + [40, 0, 0]) for a in arms]),
            ]
        ),
        3: np.stack([shifted(a + [-origin[0] + 32 - 20, 0, 0]) for a in arms]),
    }
    oracle = Oracle(query)
    loc = Localizer(oracle, "cpu", feature_scales=(), interpolation="linear", seed=11, batch_size=3)
    loc.prototypes = _prototypes(fcs)
    located = loc.locate(medlam_image(query, "linear"))
    np.testing.assert_array_equal(loc.last_start_centres, centres)
    assert list(located) == [1, 2, 3]
    for c, fc in fcs.items():
        support = fc.astype(np.float32).astype(np.float64)
        points = np.rint((DIS_MM * np.tanh(support - query_code) + origin * 3.0) / 3.0)
        expected = (points - PAD).reshape(-1, 6, 3)
        got, inside = located[c]
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
        on_grid = [np.all((g >= 0) & (g <= SIZE - 1)) for g in expected]
        assert inside == {1: True, 2: True, 3: False}[c]
        assert inside == any(on_grid)
    # by hand: organ 1 lies 3 voxels below the mean start centre in z, organ 3 below the grid
    assert np.all(located[3][0][..., 0] < 0)
    # each distinct start centre runs once, three patches per forward pass
    distinct = len(np.unique(centres, axis=0))
    assert loc.stats["patches"] == distinct
    assert loc.stats["forward_passes"] == oracle.calls == -(-distinct // 3)
    assert loc.stats["forward_seconds"] > 0


def test_refinement_starts_from_the_clamped_points_of_the_organs_inside(monkeypatch):
    """MSS refinement (method.md 4 step 6) gets the points of the organs inside only, clamped
    to [32, s - 33] of the padded grid, with their templates in the same order, and its result
    replaces exactly those organs' points."""
    query = scan(3)
    padded = pad(medlam_image(query, "linear").array)
    assert padded.shape == (SIZE + 2 * PAD,) * 3
    top = SIZE + PAD - 1  # 43: the last voxel of the image on the padded grid
    arms = plus((0, 0, 0))
    coarse = {
        1: arms + [PAD - 1, 40, 36],  # one voxel into the padding at low z: clamped to 32
        2: arms + [PAD - 30, 36, 36],  # wholly below the image: not refined
        3: np.concatenate([arms + [38, top + 1, 35], arms + [41, 37, top]]),
        4: arms + [36, 36, 37],
    }
    fcs = {c: np.zeros((len(p), 3)) for c, p in coarse.items()}
    templates = {
        name: {c: torch.full((len(p), 2, 2, 2, 2), 10.0 * c + k) for c, p in coarse.items()}
        for k, name in enumerate(SCALES)
    }
    loc = Localizer(Oracle(query), "cpu", feature_scales=SCALES, interpolation="linear")
    loc.prototypes = _prototypes(fcs, feature_scales=SCALES)
    for c, proto in loc.prototypes.classes.items():
        proto.templates = {name: templates[name][c] for name in SCALES}
    seen = {}

    def hook(array):
        seen.update(hooked=array)
        return np.concatenate([coarse[c] for c in (1, 2, 3, 4)])

    loc.coarse_points = hook

    def fake_refine(array, start, temps):
        seen.update(array=array, start=start.copy(), templates=temps)
        return start + np.arange(len(start))[:, None] * [1, 0, -1]

    monkeypatch.setattr(loc, "_refine", fake_refine)
    located = loc.locate(medlam_image(query, "linear"))
    np.testing.assert_array_equal(seen["array"], padded)
    np.testing.assert_array_equal(seen["hooked"], padded)
    start = np.concatenate([np.clip(coarse[c], PAD, top) for c in (1, 3, 4)])
    np.testing.assert_array_equal(seen["start"], start)
    assert seen["start"][0].tolist() == [32, 40, 36]  # (31, 40, 36) clamped
    assert sorted(seen["templates"]) == sorted(SCALES)
    for k, name in enumerate(SCALES):
        values = seen["templates"][name][:, 0, 0, 0, 0].tolist()
        assert values == [10.0 + k] * 6 + [30.0 + k] * 12 + [40.0 + k] * 6
    moved = start + np.arange(len(start))[:, None] * [1, 0, -1] - PAD
    np.testing.assert_array_equal(located[1][0], moved[:6].reshape(1, 6, 3))
    np.testing.assert_array_equal(located[3][0], moved[6:18].reshape(2, 6, 3))
    np.testing.assert_array_equal(located[4][0], moved[18:].reshape(1, 6, 3))
    np.testing.assert_array_equal(located[2][0], (coarse[2] - PAD).reshape(1, 6, 3))
    assert [located[c][1] for c in (1, 2, 3, 4)] == [True, False, True, True]
    # without feature scales nothing is refined
    plain = Localizer(Oracle(query), "cpu", feature_scales=(), interpolation="linear")
    plain.prototypes = _prototypes(fcs)
    plain.coarse_points = loc.coarse_points
    monkeypatch.setattr(plain, "_refine", lambda *a: pytest.fail("refined without scales"))
    unrefined = plain.locate(medlam_image(query, "linear"))
    np.testing.assert_array_equal(unrefined[1][0], (coarse[1] - PAD).reshape(1, 6, 3))


# --------------------------------------------------------------------------------------------
# points back to the file's voxels, boxes, part order


def _hooked(query: Volume, points: np.ndarray, groups: int = 1, **kw) -> Localizer:
    """A localizer whose coarse points are ``points`` (unpadded 3 mm grid), not refined."""
    how = "published" if kw.get("published") else "linear"
    loc = Localizer(
        Oracle(query, interpolation=how), "cpu", feature_scales=(), interpolation=how, **kw
    )
    loc.prototypes = _prototypes({1: np.zeros((6 * groups, 3))})
    loc.coarse_points = lambda _: np.asarray(points) + PAD
    return loc


def test_points_go_back_to_the_file_by_the_exact_grid_ratio_or_as_published():
    """A scan of 10 slices of 1.5 mm along z has 5 slices of 3 mm: the exact grid ratio maps 3 mm
    slice z to file slice 9 z / 4; the published code multiplies by 1 / zoom_factor = 2 and
    rounds. The file's axes are the LAS grid's (i = z, j = y, k = x)."""
    query = scan(6, shape=(10, 8, 8), spacing=(1.5, 3.0, 3.0))
    points = plus((2, 4, 3))  # z 1..3, y 3..5, x 2..4 on the 3 mm grid
    exact = _hooked(query, points).predict(query)[1]
    expected = points.astype(np.float64) * [9 / 4, 1, 1]
    np.testing.assert_allclose(exact.extreme_points, expected[None], atol=1e-12)
    # box: z 9/4 .. 27/4 -> rint 2 .. 7
    assert exact.boxes == (Box3D((2, 3, 2), (7, 5, 4)),) and exact.inside
    oracle = Oracle(query, interpolation="published")
    published = Localizer(oracle, "cpu", feature_scales=(), published=True)
    published.prototypes = _prototypes({1: np.zeros((6, 3))})
    published.coarse_points = lambda _: points + PAD
    got = published.predict(query)[1]
    np.testing.assert_array_equal(got.extreme_points, (points * [2, 1, 1])[None])
    assert got.boxes == (Box3D((2, 3, 2), (6, 5, 4)),)


def test_start_centres_follow_the_published_stream_over_the_query_list():
    """``reproduce = published``: query b, second in the list, asked for first, takes the draws
    after those of query a (replayed), from one RandomState seeded once (method.md 4.2)."""
    from medlsam.localization.published import PublishedStarts

    a, b = scan(7), scan(8)
    a = Volume(a.data, a.affine, Path("/data/a.nii.gz"))
    b = Volume(b.data, b.affine, Path("/data/b.nii.gz"))
    padded = {p.path: pad(medlam_image(p, "published").array) for p in (a, b)}
    starts = PublishedStarts(5, [a.path, b.path], prepare=lambda path: padded[path])
    loc = _hooked(b, plus((5, 5, 5)), published=True, starts=starts)
    loc.predict(b)
    state = np.random.RandomState(5)
    drawn = []
    for volume in (a, b):
        lo = np.array(padded[volume.path].shape) // 2 - 10
        centres = []
        while len(centres) < 10:
            draw = [int(state.randint(lo[axis], lo[axis] + 20)) for axis in range(3)]
            if padded[volume.path][tuple(draw)] >= 0.001:
                centres.append(draw)
        drawn.append(centres)
    assert loc.last_start_centres.tolist() == drawn[1] != drawn[0]


def test_spl_parts_are_sorted_along_the_slice_axis_unless_published():
    """Part 0 of the prototype lies above part 1 (z = file axis 0, the slice axis): medlsam
    orders the boxes along the slice axis, the published code keeps the part order."""
    query = scan(4)
    upper, lower = plus((8, 5, 5)), plus((3, 6, 6))
    points = np.concatenate([upper, lower])
    ordered = _hooked(query, points, groups=2).predict(query)[1]
    assert [b.lo[0] for b in ordered.boxes] == [2, 7]
    assert ordered.boxes[0] == Box3D((2, 5, 5), (4, 7, 7))
    np.testing.assert_array_equal(ordered.extreme_points, np.stack([lower, upper]))
    kept = _hooked(query, points, groups=2, published=True).predict(query)[1]
    assert [b.lo[0] for b in kept.boxes] == [7, 2]
    np.testing.assert_array_equal(kept.extreme_points, np.stack([upper, lower]))


def test_boxes_are_clipped_and_raw_boxes_kept(caplog):
    query = scan(4)
    points = plus((1, 10, 5)) + [-2, 0, 0]  # z -2..0, y 9..11: sticks out below z = 0
    with caplog.at_level(logging.INFO, logger="medlsam.localization.localizer"):
        result = _hooked(query, points).predict(query)[1]
    assert result.raw_boxes == (Box3D((-2, 9, 4), (0, 11, 6)),)
    assert result.boxes == (Box3D((0, 9, 4), (0, 11, 6)),) and result.inside
    assert "outside" not in caplog.text
    with caplog.at_level(logging.INFO, logger="medlsam.localization.localizer"):
        outside = _hooked(query, plus((1, 5, 5)) + [-10, 0, 0]).predict(query)[1]
    assert not outside.inside and outside.boxes == () and outside.raw_boxes == ()
    np.testing.assert_array_equal(outside.extreme_points, (plus((1, 5, 5)) + [-10, 0, 0])[None])
    assert [r.getMessage() for r in caplog.records if "outside" in r.getMessage()] == [
        "scan4: organ 1 is predicted outside the image"
    ]


def test_an_organ_outside_the_3mm_grid_stays_outside_on_thick_slices():
    """4 slices of 7.5 mm are 10 of 3 mm (file slice = 3 mm slice / 3): an organ whose 3 mm box
    ends at z = -1 lies outside the grid, although z = -1 rounds to file slice 0."""
    query = scan(9, shape=(4, 8, 8), spacing=(7.5, 3.0, 3.0))
    points = plus((-2, 4, 4))  # z -3..-1
    result = _hooked(query, points).predict(query)[1]
    assert not result.inside and result.boxes == ()
    np.testing.assert_allclose(result.extreme_points[0], points * [1 / 3, 1, 1], atol=1e-12)


# --------------------------------------------------------------------------------------------
# settings


def test_settings_are_checked_and_kept():
    from medlsam.localization.published import PublishedStarts

    model = Constant()
    loc = Localizer(model, "cpu", mode="SPL", slice_interval=3, feature_scales=["feature1"])
    assert loc.device == torch.device("cpu") and loc.precision == "fp32"  # fp16 is CUDA-only
    assert loc.mode is BoxMode.SPL and loc.slice_interval == 3
    assert loc.feature_scales == ("feature1",) and loc.seed == 2023
    assert loc.batch_size == 4 and loc.interpolation == "spline" and loc.rdr_steps == 1
    assert loc.mss_share_mm == 0.0 and loc.published is False
    assert isinstance(loc.starts, PublishedStarts) and loc.starts.seed == 2023
    assert loc.prototypes is None and loc.last_start_centres is None and loc.coarse_points is None
    assert loc.stats == {
        "forward_passes": 0,
        "patches": 0,
        "forward_seconds": 0.0,
        "resample_seconds": 0.0,
    }
    assert loc.numerics == {"device": "cpu", "precision": "fp32"}
    hook = lambda padded: padded  # noqa: E731
    starts = PublishedStarts(9)
    other = Localizer(
        model,
        "cpu",
        seed="7",
        batch_size=2,
        interpolation="linear",
        rdr_steps="3",
        mss_share_mm=6,
        published=True,
        starts=starts,
        coarse_points=hook,
    )
    assert other.seed == 7 and other.batch_size == 2 and other.rdr_steps == 3
    assert other.mss_share_mm == 6.0 and isinstance(other.mss_share_mm, float)
    assert other.published is True and other.interpolation == "published"
    assert other.starts is starts and other.coarse_points is hook
    assert Localizer(model, seed=4).starts.seed == 4
    assert Localizer(model, batch_size=-3).batch_size == 1
    assert Localizer(model, batch_size=0).batch_size == 4


def test_bad_settings_are_refused_with_what_was_expected():
    model = Constant()
    with pytest.raises(ValueError) as err:
        Localizer(model, feature_scales=("feature0", "feature7"))
    assert str(err.value) == (
        "unknown feature scales ['feature7']; expected some of ('feature0', 'feature1', 'feature2')"
    )
    with pytest.raises(ValueError) as err:
        Localizer(model, rdr_steps=0)
    assert str(err.value) == "rdr_steps must be at least 1, got 0"
    assert Localizer(model, rdr_steps=1).rdr_steps == 1
    with pytest.raises(ValueError) as err:
        Localizer(model, mss_share_mm=-1.5)
    assert str(err.value) == "mss_share_mm must be >= 0, got -1.5"
    with pytest.raises(ValueError, match="mss_share_mm must be >= 0, got nan"):
        Localizer(model, mss_share_mm=float("nan"))
    with pytest.raises(ValueError, match="precision"):
        Localizer(model, precision="fp8")


def test_fingerprint_is_the_recorded_checkpoint_and_asked_once():
    model = Constant()
    model.checkpoint_sha256 = "ab" * 32
    loc = Localizer(model)
    assert loc.fingerprint == "ab" * 32
    model.checkpoint_sha256 = "cd" * 32  # asked once, then kept
    assert loc.fingerprint == "ab" * 32
    assert Localizer(Constant()).fingerprint == weights_fingerprint(Constant())


def test_no_prototypes_is_a_clear_error():
    loc = Localizer(Constant(), feature_scales=())
    with pytest.raises(RuntimeError) as err:
        loc.predict(scan(0))
    assert str(err.value) == "Localizer has no prototypes: call fit() or load_prototypes()"
    with pytest.raises(RuntimeError, match="no prototypes"):
        loc.save_prototypes("p.pt")


def test_spl_splits_by_the_shortest_support_organ():
    """SPL, slice interval 2: organ 1 spans z 2..7 (extent 5) in one support and z 1..8 (7) in
    the other; the shortest extent, 5, gives 5 // 2 = 2 parts (method.md 3 step 2)."""
    images = [scan(0), scan(1)]
    labels = []
    for image, (z, y, x) in zip(
        images, [(slice(2, 8), slice(1, 4), slice(2, 5)), (slice(1, 9), slice(5, 9), slice(5, 8))]
    ):
        data = np.zeros(image.shape, np.int32)
        data[z, y, x] = 1
        labels.append(Volume(data, image.affine.copy(), image.path))
    loc = Localizer(
        Oracle(*images),
        "cpu",
        mode="SPL",
        slice_interval=2,
        feature_scales=(),
        interpolation="linear",
    )
    proto = loc.fit(zip(images, labels), [1]).classes[1]
    assert proto.groups == 2 and proto.fc.shape == (12, 3)
    wpl = Localizer(Oracle(*images), "cpu", feature_scales=(), interpolation="linear")
    assert wpl.fit(zip(images, labels), [1]).classes[1].groups == 1


def test_prototypes_from_another_device_or_file_are_refused_naming_the_file(tmp_path):
    loc = Localizer(Constant(), "cpu", feature_scales=())
    gpu = _made_for(loc, numerics={"device": "cuda", "precision": "fp16"})
    with pytest.raises(InputError, match="made with MedLAM on cuda in fp16, this run uses cpu"):
        loc.use_prototypes(gpu, "gpu.pt", [1])
    loc.use_prototypes(_made_for(loc), "p.pt")
    path = loc.save_prototypes(tmp_path / "p.pt")
    assert path == tmp_path / "p.pt" and list(Prototypes.load(path).classes) == [1, 2, 3]
    with pytest.raises(InputError) as err:
        loc.load_prototypes(path, [1, 9])
    assert str(err.value).startswith(f"{path}: prototypes have no organ [9]")


def test_cuda_runs_take_bigger_batches_in_half_precision():
    # nothing runs here, so no GPU is needed to check what a CUDA localizer would do
    loc = Localizer(Constant(), "cuda")
    assert loc.batch_size == 16 and loc.precision == "fp16"
    assert Localizer(Constant(), "cuda", precision="fp32", batch_size=3).batch_size == 3


# --------------------------------------------------------------------------------------------
# what the network is asked for


class Recording(Oracle):
    """The oracle, recording how it is called (``fc`` and ``features`` exactly as passed)."""

    def __init__(self, *volumes: Volume) -> None:
        super().__init__(*volumes)
        self.asked: list[tuple] = []
        self.devices: list[str] = []

    def forward(self, x, fc=None, features=None):
        self.asked.append((fc, features))
        self.devices.append(x.device.type)
        if x.device.type == "meta":
            return {"fc_position": torch.zeros(len(x), 3)}
        return super().forward(x, bool(fc), features or ())


def _query_prototypes(query_code: np.ndarray, scales=(), templates=None) -> Prototypes:
    """Organ 1 three voxels from the start in every axis; its templates ``templates``."""
    arms = plus((0, 0, 0)).astype(np.float64)
    fc = np.stack([query_code + np.arctanh((a + 3) * 3.0 / DIS_MM) for a in arms])
    protos = _prototypes({1: fc}, feature_scales=scales)
    protos.classes[1].templates = templates or {}
    return protos


def test_the_network_is_asked_for_codes_then_feature_maps():
    """Start patches and later relative-distance steps ask for position codes only, refinement
    for the feature maps only (the fc head is skipped there)."""
    query = scan(3)
    _, centres = _expected_starts(query, seed=11)
    query_code = code(centres).astype(np.float32).astype(np.float64).mean(axis=0)
    model = Recording(query)
    loc = Localizer(
        model, "cpu", feature_scales=("feature0",), interpolation="linear", seed=11, rdr_steps=2
    )
    templates = {"feature0": torch.rand(6, 2, 2, 2, 2, generator=torch.Generator().manual_seed(0))}
    loc.prototypes = _query_prototypes(query_code, ("feature0",), templates)
    located = loc.locate(medlam_image(query, "linear"))
    assert located[1][1]  # inside, so refined
    kinds = [a for n, a in enumerate(model.asked) if n == 0 or a != model.asked[n - 1]]
    assert kinds == [(True, ()), (False, ("feature0",))]
    starts = -(-len(np.unique(centres, axis=0)) // 4)
    assert model.asked.count((True, ())) > starts  # the second step ran too
    assert set(model.devices) == {"cpu"}


def test_patches_are_sent_to_the_localizer_device():
    model = Recording()
    loc = Localizer(model, "meta", feature_scales=())
    fcs, _ = loc._support_features(np.ones((70, 70, 70), np.float32), np.array([[35, 35, 35]]))
    assert model.devices == ["meta"] and fcs.shape == (1, 3)


@pytest.mark.parametrize(
    "precision, expected",
    [
        ("fp16", ("cuda", torch.float16, True)),
        ("bf16", ("cuda", torch.bfloat16, True)),
        ("fp32", ("cuda", torch.float16, False)),
    ],
)
def test_the_network_runs_under_autocast_in_the_run_precision(monkeypatch, precision, expected):
    """On CUDA MedLAM runs under ``torch.autocast("cuda", dtype)`` for fp16/bf16 and without it
    for fp32. Checked on the CPU by recording what is asked of torch.autocast."""
    import contextlib

    asked = []

    def autocast(device_type, dtype=None, enabled=None):
        asked.append((device_type, dtype, enabled))
        return contextlib.nullcontext()

    query = scan(3)
    padded = pad(medlam_image(query, "linear").array)
    monkeypatch.setattr(torch, "autocast", autocast)
    loc = Localizer(Recording(query), "cpu", feature_scales=())
    loc.precision = precision  # what a CUDA localizer holds
    loc._support_features(padded, np.array([[35, 36, 37]]))
    assert asked == [expected]


def test_forward_seconds_add_up_over_passes(monkeypatch):
    class OneSecond:
        def __init__(self, device):
            self.device = torch.device(device)
            self.seconds = 0.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.seconds = 1.0

    monkeypatch.setattr(localizer_module, "Stopwatch", OneSecond)
    query = scan(3)
    padded = pad(medlam_image(query, "linear").array)
    loc = Localizer(Oracle(query), "cpu", feature_scales=(), batch_size=2)
    loc.stats["forward_seconds"] = 0.25
    centres = np.array([[33, 33, 33], [34, 33, 33], [35, 33, 33], [33, 33, 33], [36, 40, 41]])
    fcs, _ = loc._support_features(padded, centres)
    # 4 distinct centres, 2 per pass: 2 passes of one (fake) second each
    assert loc.stats["forward_seconds"] == 2.25
    assert loc.stats["forward_passes"] == 2 and loc.stats["patches"] == 4
    np.testing.assert_allclose(fcs.numpy(), code(centres), rtol=1e-6)


def test_later_relative_distance_steps_by_hand():
    """rdr_steps = 3 (method.md 4, medlsam's iterated step): from step 2 on, each point's own
    patch, centred on its last estimate clamped to [32, s - 33], moves it by
    ``dis_ratio * tanh(support - code)`` mm; the oracle's z code grows twice as fast as the
    displacement it undoes, so points overshoot in z and get clamped at both ends."""
    query = scan(3)
    _, centres = _expected_starts(query, seed=11)
    query_code = code(centres).astype(np.float32).astype(np.float64).mean(axis=0)
    origin = centres.mean(axis=0)
    arms = plus((0, 0, 0)).astype(np.float64)
    targets = {1: arms + [8, 1, -2], 2: arms + [-9, 3, 3], 3: arms + [1, -4, 4]}
    fcs = {
        c: np.stack([query_code + np.arctanh(t * 3.0 / DIS_MM) for t in v])
        for c, v in targets.items()
    }
    oracle = Oracle(query)
    loc = Localizer(oracle, "cpu", feature_scales=(), interpolation="linear", seed=11, rdr_steps=3)
    loc.prototypes = _prototypes(fcs)
    located = loc.locate(medlam_image(query, "linear"))
    support = np.concatenate([fcs[c] for c in (1, 2, 3)]).astype(np.float32).astype(np.float64)
    points = np.rint((DIS_MM * np.tanh(support - query_code) + origin * 3.0) / 3.0)
    clamped_low = clamped_high = moved_in_last_step = False
    for _ in range(2):
        start = np.clip(points, PAD, PAD + SIZE - 1)
        clamped_low |= bool(np.any(points < PAD))
        clamped_high |= bool(np.any(points > PAD + SIZE - 1))
        codes = code(start).astype(np.float32).astype(np.float64)
        moved = np.rint(start + DIS_MM * np.tanh(support - codes) / 3.0)
        moved_in_last_step = not np.array_equal(moved, points)
        points = moved
    assert clamped_low and clamped_high and moved_in_last_step
    got = np.concatenate([located[c][0].reshape(-1, 3) for c in (1, 2, 3)])
    np.testing.assert_array_equal(got, points - PAD)


def test_refinement_matches_at_most_batch_size_points_at_a_time(monkeypatch):
    """Points that share search patches are matched in chunks of ``batch_size``, each once."""
    query = scan(3)
    padded = pad(medlam_image(query, "linear").array)
    loc = Localizer(Oracle(query), "cpu", feature_scales=("feature0",), batch_size=2)
    points = np.array([[36, 37, 38]] * 3 + [[40, 39, 38]] * 2 + [[35, 41, 36]])
    templates = {"feature0": torch.arange(6.0)[:, None, None, None, None].expand(6, 2, 2, 2, 2)}
    matched = []
    real = localizer_module.similarity_map

    def recording(feats, batch, scales):
        matched.append(batch["feature0"][:, 0, 0, 0, 0].tolist())
        return real(feats, batch, scales)

    monkeypatch.setattr(localizer_module, "similarity_map", recording)
    found = loc._refine(padded, points, templates)
    assert all(len(rows) <= 2 for rows in matched)
    assert sorted(sum(matched, [])) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert found.shape == (6, 3) and found.dtype == np.int64
