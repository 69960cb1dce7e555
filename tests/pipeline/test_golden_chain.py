"""A box of known world position localized through the whole chain, checked to the voxel.

Support = query = one synthetic CT (0.8 x 0.8 x 2.5 mm, not 3 mm) whose label is the block of
voxel centres in x [-14, 6], y [-12, 10.4], z [52.5, 82.5] mm; the query is the same scan stored
as RAS, LPS or a permuted orientation. MedLAM is replaced by an oracle that knows where each
patch is (see :class:`OracleMedLAM`), so the localizer finds the support points exactly and
every number below is set by the coordinate chain alone: support label -> 3 mm LAS grid ->
padded grid -> support points -> query points -> file voxels -> boxes -> ``boxes.json`` and
the label map written on the query's grid. Expected values are worked out by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import reorient
from nibabel.affines import apply_affine
from torch import nn

from medlsam.config import RunConfig
from medlsam.io import Volume
from medlsam.localization.localizer import DIS_RATIO, Localizer
from medlsam.pipeline.outputs import write_case
from medlsam.pipeline.run import run_case
from medlsam.preprocess import medlam_image, pad, slice_2d
from medlsam.segment.base import SegmenterStats, SliceResult, to_slice_boxes

SHAPE = (64, 50, 23)
SPACING = (0.8, 0.8, 2.5)
ORIGIN = (-30.0, -20.0, 40.0)
#: the organ: every voxel whose centre lies in this world block (RAS+ mm, both ends included)
BLOCK_MM = ((-14.0, 6.0), (-12.0, 10.4), (52.5, 82.5))


class OracleMedLAM(nn.Module):
    """A stand-in for MedLAM that reads each patch's position exactly.

    The scan is noise, so the value of a patch's centre voxel occurs once in the padded 3 mm
    array; the oracle looks it up and returns the position code ``position * 3 mm /
    DIS_RATIO``. With a few relative-distance steps each query point converges on the position
    whose code equals its support code: the support point itself.
    """

    def __init__(self, reference: np.ndarray) -> None:
        super().__init__()
        self.reference = reference
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, fc=True, features=()):
        positions = []
        for value in x[:, 0, 32, 32, 32].numpy():
            hits = np.argwhere(self.reference == value)
            assert len(hits) == 1, "the patch is not a patch of the reference scan"
            positions.append(hits[0])
        code = np.asarray(positions, dtype=np.float64) * 3.0 / DIS_RATIO
        return {"fc_position": torch.from_numpy(code).float()}


def _support() -> tuple[Volume, Volume]:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    xyz = apply_affine(affine, ijk)
    inside = np.ones(SHAPE, bool)
    for axis, (lo, hi) in enumerate(BLOCK_MM):
        inside &= (xyz[..., axis] >= lo - 1e-6) & (xyz[..., axis] <= hi + 1e-6)
    # by hand: x = -30 + 0.8 i in [-14, 6] -> i 20..45; y = -20 + 0.8 j -> j 10..38;
    # z = 40 + 2.5 k -> k 5..17
    assert np.argwhere(inside).min(0).tolist() == [20, 10, 5]
    assert np.argwhere(inside).max(0).tolist() == [45, 38, 17]
    hu = np.random.default_rng(0).uniform(-150, 150, SHAPE).astype(np.float32)
    hu[inside] += 500.0
    return Volume(hu, affine), Volume(3 * inside.astype(np.int32), affine.copy())


# Expected, by hand. LAS 3 mm grid of the support: z <- k (23 -> 19 nodes, 22/18 voxels a node),
# y <- j (50 -> 13, 49/12), x <- 63 - i (64 -> 17, 63/16). A node is in the organ when the
# linearly interpolated label exceeds 0.5, i.e. its position lies within half a voxel of the
# block: k in (4.5, 17.5) -> nodes 4..14 (4.889 .. 17.111); j in (9.5, 38.5) -> nodes 3..9
# (12.25 .. 36.75); 63 - i in (17.5, 43.5) -> nodes 5..11 (i = 43.3125 .. 19.6875).
# Rounded: i 20..43, j 12..37, k 5..17 in the RAS file. World of those voxel centres:
# x = -30 + 0.8 * (20, 43) = (-14.0, 4.4); y = -20 + 0.8 * (12, 37) = (-10.4, 9.6);
# z = 40 + 2.5 * (5, 17) = (52.5, 82.5).
# The other orientations store the same voxels: LPS flips i and j (i' = 63 - i, j' = 49 - j);
# the permuted scan has axes (k, 63 - i, j).
EXPECTED = {
    "RAS": (None, [20, 12, 5], [43, 37, 17], [-14.0, -10.4, 52.5], [4.4, 9.6, 82.5]),
    "LPS": (
        ((0, 1, 2), (True, True, False)),
        [20, 12, 5],
        [43, 37, 17],
        [4.4, 9.6, 52.5],  # voxel (20, 12, 5) of the LPS file is RAS voxel (43, 37, 5)
        [-14.0, -10.4, 82.5],
    ),
    "SLA": (
        ((2, 0, 1), (False, True, False)),
        [5, 20, 12],
        [17, 43, 37],
        [4.4, -10.4, 52.5],  # (5, 20, 12) is RAS voxel (63 - 20, 12, 5) = (43, 12, 5)
        [-14.0, 9.6, 82.5],
    ),
}
#: the extreme points' own-axis file coordinates, unrounded: k 4.889 and 17.111 (min-z and
#: max-z points), j 12.25 and 36.75, i 43.3125 and 19.6875 (RAS)
EXTREME_RAS = {0: (2, 44 / 9), 3: (2, 154 / 9), 1: (1, 12.25), 4: (1, 36.75), 2: (0, 43.3125)}


@pytest.fixture(scope="module")
def fitted():
    image, label = _support()
    reference = pad(medlam_image(image, "linear").array)
    loc = Localizer(
        OracleMedLAM(reference), "cpu", feature_scales=(), interpolation="linear", rdr_steps=6
    )
    loc.fit([(image, label)], [3])
    return loc, image, label


def _query(name: str, image: Volume, label: Volume) -> tuple[Volume, Volume]:
    turn = EXPECTED[name][0]
    if turn is None:
        return image, label
    return reorient(image, *turn), reorient(label, *turn)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_known_box_through_localization_and_boxes_json(fitted, name):
    loc, image, label = fitted
    query, _ = _query(name, image, label)
    assert query.axcodes == name
    _, lo, hi, lo_mm, hi_mm = EXPECTED[name]
    organs = loc.predict(query)
    (box,) = organs[3].boxes
    assert list(box.lo) == lo and list(box.hi) == hi
    from medlsam.boxes import boxes_json

    doc = json.loads(json.dumps(boxes_json("q", "q.nii.gz", query.affine, organs.values())))
    (entry,) = doc["classes"]["3"]["boxes"]
    assert entry["min"] == lo and entry["max"] == hi
    assert entry["min_raw"] == lo and entry["max_raw"] == hi  # inside the image: nothing clipped
    assert entry["min_mm"] == pytest.approx(lo_mm, abs=1e-9)
    assert entry["max_mm"] == pytest.approx(hi_mm, abs=1e-9)
    if name == "RAS":
        points = np.asarray(doc["classes"]["3"]["extreme_points"])[0]
        for row, (axis, value) in EXTREME_RAS.items():
            assert points[row, axis] == pytest.approx(value, abs=1e-3)


class BrightInBox:
    """A segmenter stand-in: the bright voxels (> 300 HU) whose pixel centre is inside the
    prompt box taken back to slice pixels."""

    name = "bright"
    checkpoint_sha256 = None

    def __init__(self) -> None:
        self.stats = SegmenterStats()

    def segment(self, volume, requests):
        axis = volume.slice_axis()
        for request in requests:
            plane = slice_2d(volume.data, axis, request.index)
            h, w = plane.shape
            rows, cols = np.mgrid[0:h, 0:w]
            masks = []
            for x0, y0, x1, y1 in to_slice_boxes(request.boxes, h, w):
                masks.append(
                    (plane > 300) & (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
                )
            masks = np.array(masks)
            yield SliceResult(
                request.index, masks, np.ones(len(masks), np.float32), masks.astype(np.float32)
            )


def _cfg():
    return SimpleNamespace(
        data=SimpleNamespace(fg_class=(3,), gt_slice_threshold=None),
        vit=SimpleNamespace(overlap="score"),
        run=RunConfig(),  # medlsam's defaults
    )


# world points (RAS+ mm): the block's centre voxel, a voxel inside near its low corner, and
# points one voxel outside each low face (all voxel centres of the support grid)
INSIDE_MM = [(-4.4, -0.8, 67.5), (-13.2, -9.6, 55.0)]
OUTSIDE_MM = [(-14.8, -0.8, 67.5), (-4.4, -12.8, 67.5), (-4.4, -0.8, 50.0), (6.8, -0.8, 67.5)]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_label_map_written_back_read_by_nibabel_and_simpleitk(fitted, name, tmp_path):
    loc, image, label = fitted
    query, _ = _query(name, image, label)
    query = Volume(query.data, query.affine, tmp_path / f"{name}.nii.gz")
    prediction = run_case(query, loc, BrightInBox(), _cfg())
    write_case(prediction, query, tmp_path, None, [3], {3: "block"})
    doc = json.loads((tmp_path / f"{name}.boxes.json").read_text())
    assert doc["classes"]["3"]["boxes"][0]["min_mm"] == pytest.approx(EXPECTED[name][3])
    nii = nib.load(tmp_path / f"{name}.nii.gz")
    data = np.asarray(nii.dataobj)
    itk = sitk.ReadImage(str(tmp_path / f"{name}.nii.gz"))
    array = sitk.GetArrayFromImage(itk)  # (k, j, i)
    for points, expected in ((INSIDE_MM, 3), (OUTSIDE_MM, 0)):
        for x, y, z in points:
            ijk = np.rint(apply_affine(np.linalg.inv(nii.affine), (x, y, z))).astype(int)
            assert data[tuple(ijk)] == expected, (name, (x, y, z), "nibabel")
            i, j, k = itk.TransformPhysicalPointToIndex((-x, -y, z))  # ITK is LPS
            assert array[k, j, i] == expected, (name, (x, y, z), "SimpleITK")
