"""Golden values for file voxel <-> MedLAM 3 mm grid <-> padded grid.

Every expected number here is written out by hand (derivation in the comments) or computed by an
independent library: nibabel for orientation and world coordinates (``as_closest_canonical``,
``apply_affine``), scipy for the published resampling grid (``ndimage.zoom`` of an index ramp,
the call the published code makes). Nothing is computed with the code under test.

Spacings are anisotropic and not 3 mm, so the exact grid ratio ``(n_in - 1) / (n_out - 1)``
differs from ``n_in / n_out`` and from ``3 / spacing`` (the published back-mapping): a wrong
ratio moves the far end of an axis by one to three voxels.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine
from scipy import ndimage

from medlsam import preprocess as pp
from medlsam.boxes import Box3D
from medlsam.io import Volume
from medlsam.volume import same_grid, to_las

_AXES = {
    "R": (0, 1.0),
    "L": (0, -1.0),
    "A": (1, 1.0),
    "P": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


def affine_for(codes: str, spacing, origin=(-30.0, -20.0, 40.0)) -> np.ndarray:
    """Voxel -> RAS+ mm for axis codes such as ``"LPS"`` (file axis a points toward codes[a])."""
    affine = np.eye(4)
    for axis, code in enumerate(codes):
        world, sign = _AXES[code]
        affine[:3, axis] = 0.0
        affine[world, axis] = sign * spacing[axis]
    affine[:3, 3] = origin
    return affine


# codes, file shape, file spacing, LAS 3 mm shape (z, y, x), file index of 3 mm node (0, 0, 0),
# file index of the last node. By hand, n_out = round(n * spacing / 3) (Python's round, as
# scipy.ndimage.zoom computes its output shape):
# RAS (64, 50, 23) @ 0.8/0.8/2.5: z<-k 23*2.5/3=19.17->19, y<-j 50*.8/3=13.33->13,
#     x<-i 64*.8/3=17.07->17; LAS x runs toward Left, i toward Right: node x=0 is i=63.
# LPS (65, 52, 20) @ .98/.98/2: z<-k 13.33->13, y<-j 16.99->17, x<-i 21.23->21; j runs toward
#     Posterior: node y=0 is j=51.
# PSR (41, 30, 36) @ 1.5: z<-axis1 15.0->15, y<-axis0 20.5->20 (half to even), x<-axis2
#     18.0->18; axis0 toward P and axis2 toward R are both reversed.
# AIL (48, 21, 55) @ .98/2/.98: z<-axis1 14.0->14, y<-axis0 15.68->16, x<-axis2 17.97->18;
#     axis1 runs toward Inferior: node z=0 is axis1 index 20.
CASES = [
    ("RAS", (64, 50, 23), (0.8, 0.8, 2.5), (19, 13, 17), (63, 0, 0), (0, 49, 22)),
    ("LPS", (65, 52, 20), (0.98, 0.98, 2.0), (13, 17, 21), (0, 51, 0), (64, 0, 19)),
    ("PSR", (41, 30, 36), (1.5, 1.5, 1.5), (15, 20, 18), (40, 0, 35), (0, 29, 0)),
    ("AIL", (48, 21, 55), (0.98, 2.0, 0.98), (14, 16, 18), (0, 20, 0), (47, 0, 54)),
]
IDS = [c[0] for c in CASES]


def _volume(codes, shape, spacing, data=None) -> Volume:
    if data is None:
        data = np.zeros(shape, np.float32)
    return Volume(np.asarray(data, np.float32), affine_for(codes, spacing))


def _oracle_file_index(codes, shape, spacing, zyx: np.ndarray) -> np.ndarray:
    """File (i, j, k) of 3 mm LAS nodes, from nibabel's canonical image and scipy's grid."""
    img = nib.Nifti1Image(np.zeros(shape, np.float32), affine_for(codes, spacing))
    ras = nib.as_closest_canonical(img)
    n_ras = np.array(ras.shape)
    # scipy.ndimage.zoom of an index ramp gives the input position of each output node ("nearest":
    # the last node can land a rounding error past the last voxel, where "constant" gives 0)
    las_full = (n_ras[2], n_ras[1], n_ras[0])  # LAS (z, y, x) lengths at the file resolution
    zyx = np.asarray(zyx)
    pos = np.empty(zyx.shape, dtype=np.float64)
    for axis in range(3):
        n_in = las_full[axis]
        n_out = int(round(n_in * _las_spacing(ras)[axis] / 3.0))
        ramp = ndimage.zoom(np.arange(n_in, dtype=float), n_out / n_in, order=1, mode="nearest")
        assert ramp.shape == (n_out,)
        pos[..., axis] = ramp[zyx[..., axis]]
    # LAS (z, y, x) -> RAS voxel (n_x - 1 - x, y, z) -> world -> file voxel
    ras_ijk = np.stack([n_ras[0] - 1 - pos[..., 2], pos[..., 1], pos[..., 0]], axis=-1)
    world = apply_affine(ras.affine, ras_ijk)
    return apply_affine(np.linalg.inv(img.affine), world)


def _las_spacing(ras: nib.Nifti1Image) -> np.ndarray:
    zooms = np.array(ras.header.get_zooms()[:3], dtype=np.float64)
    return zooms[::-1]


def _edges(out_shape) -> np.ndarray:
    """Every node along the three grid edges through (0, 0, 0), plus the far corner."""
    nodes = [np.zeros(3, int)]
    for axis, n in enumerate(out_shape):
        for o in range(n):
            node = np.zeros(3, int)
            node[axis] = o
            nodes.append(node)
    nodes.append(np.array(out_shape) - 1)
    return np.array(nodes)


@pytest.mark.parametrize("codes,shape,spacing,out_shape,first,last", CASES, ids=IDS)
def test_3mm_grid_shape_and_axis_ends(codes, shape, spacing, out_shape, first, last):
    vol = _volume(codes, shape, spacing)
    assert vol.axcodes == codes
    grid = pp.medlam_image(vol, "linear")
    assert grid.array.shape == out_shape
    ends = grid.to_file_index(np.array([[0, 0, 0], np.array(out_shape) - 1]))
    # the corner-aligned grid puts the first and last nodes exactly on the first and last voxels
    np.testing.assert_allclose(ends, [first, last], rtol=0, atol=1e-9)
    back = grid.from_file_index(np.array([first, last], dtype=float))
    np.testing.assert_allclose(back, [[0, 0, 0], np.array(out_shape) - 1], atol=1e-12)


@pytest.mark.parametrize("codes,shape,spacing,out_shape,first,last", CASES, ids=IDS)
def test_3mm_grid_nodes_agree_with_nibabel_and_scipy(codes, shape, spacing, out_shape, first, last):
    grid = pp.medlam_image(_volume(codes, shape, spacing), "linear")
    nodes = _edges(out_shape)
    expected = _oracle_file_index(codes, shape, spacing, nodes)
    np.testing.assert_allclose(grid.to_file_index(nodes), expected, atol=1e-9)
    np.testing.assert_allclose(grid.from_file_index(expected), nodes, atol=1e-9)


def test_3mm_grid_hand_values_inside_the_axes():
    # RAS (64, 50, 23): steps k 22/18, j 49/12, i 63/16 file voxels per 3 mm node.
    # node (9, 6, 8): k = 9*22/18 = 11, j = 6*49/12 = 24.5, i = 63 - 8*63/16 = 31.5
    # node (18, 12, 16) (the far corner): k = 22, j = 49, i = 0; node (1, 1, 1):
    # k = 22/18 = 1.2222, j = 49/12 = 4.08333, i = 63 - 63/16 = 59.0625
    grid = pp.medlam_image(_volume("RAS", (64, 50, 23), (0.8, 0.8, 2.5)), "linear")
    got = grid.to_file_index(np.array([[9, 6, 8], [18, 12, 16], [1, 1, 1]]))
    np.testing.assert_allclose(
        got, [[31.5, 24.5, 11.0], [0.0, 49.0, 22.0], [59.0625, 49 / 12, 22 / 18]], atol=1e-12
    )
    # LPS (65, 52, 20): steps k 19/12, j 51/16, i 64/20; node (6, 8, 10):
    # k = 6*19/12 = 9.5, j = 51 - 8*51/16 = 25.5, i = 10*64/20 = 32
    grid = pp.medlam_image(_volume("LPS", (65, 52, 20), (0.98, 0.98, 2.0)), "linear")
    np.testing.assert_allclose(grid.to_file_index(np.array([6, 8, 10])), [32, 25.5, 9.5])


def _ramp(codes, shape, spacing, world_axis: int) -> tuple[Volume, float, float]:
    """HU linear in one world coordinate, kept in [-150, 150] where the HU map is linear."""
    affine = affine_for(codes, spacing)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    coord = apply_affine(affine, ijk)[..., world_axis]
    lo, hi = float(coord.min()), float(coord.max())
    gain = 300.0 / (hi - lo)
    hu = (coord - lo) * gain - 150.0
    return Volume(hu.astype(np.float32), affine), lo, gain


@pytest.mark.parametrize("codes,shape,spacing,out_shape,first,last", CASES, ids=IDS)
def test_resampled_voxels_hold_the_world_point_their_index_maps_to(
    codes, shape, spacing, out_shape, first, last
):
    """The 3 mm array is sampled where the index map says: a linear ramp in world x (y, z)
    resampled linearly stays exact, so each node's value gives back its world coordinate,
    which must match nibabel's for the node, and the padded grid holds it 32 voxels further."""
    nodes = _edges(out_shape)
    expected_world = apply_affine(
        affine_for(codes, spacing), _oracle_file_index(codes, shape, spacing, nodes)
    )
    for world_axis in range(3):
        vol, lo, gain = _ramp(codes, shape, spacing, world_axis)
        grid = pp.medlam_image(vol, "linear")
        padded = pp.pad(grid.array)
        assert padded.shape == tuple(n + 64 for n in out_shape)
        # normalised value -> HU (linear part of the map: -200..200 HU -> 0.2..0.8) -> mm
        values = padded[tuple((nodes + pp.PAD).T)].astype(np.float64)
        world = ((values - 0.2) / 0.6 * 400.0 - 200.0 + 150.0) / gain + lo
        np.testing.assert_allclose(world, expected_world[:, world_axis], atol=2e-3)
        mapped = vol.to_world(grid.to_file_index(nodes))[:, world_axis]
        np.testing.assert_allclose(world, mapped, atol=2e-3)
        assert not padded[: pp.PAD].any() and not padded[:, -pp.PAD :].any()


def test_3mm_input_passes_through_voxel_for_voxel():
    # LPS (10, 12, 8) at 3 mm: LAS z = k, y = 11 - j, x = i; a bright voxel at file (7, 2, 5)
    # is at LAS (5, 9, 7), i.e. padded (37, 41, 39)
    data = np.full((10, 12, 8), -1000.0, np.float32)
    data[7, 2, 5] = 200.0
    grid = pp.medlam_image(_volume("LPS", (10, 12, 8), (3.0, 3.0, 3.0), data))
    padded = pp.pad(grid.array)
    assert padded.shape == (72, 76, 74)
    assert np.argwhere(padded > 0.5).tolist() == [[37, 41, 39]]
    np.testing.assert_array_equal(grid.to_file_index(np.array([5, 9, 7])), [7, 2, 5])


# --------------------------------------------------------------------------------------------
# world millimetres of boxes


@pytest.mark.parametrize("codes,shape,spacing,out_shape,first,last", CASES, ids=IDS)
def test_box_corners_in_mm_are_voxel_centres(codes, shape, spacing, out_shape, first, last):
    affine = affine_for(codes, spacing)
    box = Box3D((1, 2, 3), (shape[0] - 1, shape[1] - 2, shape[2] - 1))
    lo_mm, hi_mm = box.to_mm(affine)
    img = nib.Nifti1Image(np.zeros(shape, np.uint8), affine)
    np.testing.assert_allclose(lo_mm, apply_affine(img.affine, box.lo), atol=1e-9)
    np.testing.assert_allclose(hi_mm, apply_affine(img.affine, box.hi), atol=1e-9)


def test_box_corners_in_mm_hand_values():
    # LPS at 0.98/0.98/2.0 from (-30, -20, 40): x = -30 - 0.98 i, y = -20 - 0.98 j, z = 40 + 2 k
    lo_mm, hi_mm = Box3D((0, 10, 3), (64, 51, 19)).to_mm(affine_for("LPS", (0.98, 0.98, 2.0)))
    assert lo_mm == pytest.approx([-30.0, -29.8, 46.0], abs=1e-9)
    assert hi_mm == pytest.approx([-92.72, -69.98, 78.0], abs=1e-9)


# --------------------------------------------------------------------------------------------
# the published spline call drops the last node of some axes


@pytest.mark.parametrize(
    "shape,spacing",
    [((30, 8, 6), (1.5, 1.5, 1.5)), ((4, 4, 512), (3.0, 3.0, 2.5)), ((30, 6, 8), (0.8, 3, 3))],
)
def test_spline_resampling_keeps_the_last_node_of_every_axis(shape, spacing):
    # 30 voxels at 1.5 mm -> 15 nodes: the last one samples input position 14 * (29 / 14), which
    # float arithmetic puts a hair past 29; scipy's zoom in its default "constant" mode then
    # returns 0 HU there (normalised 0.5: soft tissue) in a scan that is all air
    air = np.full(shape, -1000.0, np.float32)
    out = pp.medlam_image(Volume(air, np.diag([*spacing, 1.0])), "spline").array
    assert out.shape == tuple(int(round(n * s / 3)) for n, s in zip(shape[::-1], spacing[::-1]))
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# volume geometry: slice axis, oblique spacing, same grid


@pytest.mark.parametrize(
    "codes,axis", [("RAS", 2), ("LPS", 2), ("PSR", 1), ("AIL", 1), ("SLA", 0), ("IPL", 0)]
)
def test_slice_axis_is_the_superior_inferior_axis(codes, axis):
    assert _volume(codes, (5, 6, 7), (1.0, 1.0, 1.0)).slice_axis() == axis


def test_las_spacing_of_an_oblique_scan_comes_from_the_columns():
    # 30 degrees about z, voxels 0.8 x 2.0 x 2.5: the axes stay closest to R, A, S, so the LAS
    # spacing (z, y, x) is (2.5, 2.0, 0.8), as nibabel's canonical image has it reversed
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 2.0, 2.5])
    vol = Volume(np.zeros((6, 5, 4), np.float32), affine)
    _, spacing, _ = to_las(vol)
    ras = nib.as_closest_canonical(nib.Nifti1Image(vol.data, affine))
    np.testing.assert_allclose(spacing, [2.5, 2.0, 0.8], atol=1e-12)
    np.testing.assert_allclose(spacing, np.array(ras.header.get_zooms()[:3])[::-1], atol=1e-6)


def test_same_grid_within_a_thousandth_of_a_millimetre():
    affine = affine_for("LPS", (0.98, 0.98, 2.0))
    a = Volume(np.zeros((4, 5, 6)), affine)
    nudged = affine.copy()
    nudged[0, 3] += 5e-4  # within the default 1e-3 mm
    assert same_grid(a, Volume(np.zeros((4, 5, 6)), nudged))
    moved = affine.copy()
    moved[0, 3] += 0.5
    assert not same_grid(a, Volume(np.zeros((4, 5, 6)), moved))
    assert not same_grid(a, Volume(np.zeros((4, 5, 7)), affine))
