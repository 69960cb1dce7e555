"""Golden values for MedLAM's query-patch arithmetic (medlsam.localization.matching).

Every expected value is computed here without the code under test: patches by an explicit loop
over voxels, search centres by hand (comments), the multi-scale similarity map with numpy (a
direct correlation loop and PyTorch's documented ``align_corners=False`` linear sampling,
``src = (dst + 0.5) * n_in / n_out - 0.5`` clamped at 0), arg-max offsets by hand.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from medlsam.localization.matching import (
    correlate,
    crop_patches,
    initial_centres,
    mss_offsets,
    search_centres,
    similarity_map,
)

# --------------------------------------------------------------------------------------------
# patches


def _patch_by_loop(array: np.ndarray, centre, size: int) -> np.ndarray:
    """Voxel p of the patch is array[centre - size // 2 + p], zero outside the array."""
    out = np.zeros((size,) * 3, np.float32)
    lo = np.asarray(centre) - size // 2
    for p in np.ndindex(size, size, size):
        src = lo + np.array(p)
        if np.all(src >= 0) and np.all(src < array.shape):
            out[p] = array[tuple(src)]
    return out


@pytest.mark.parametrize("size", [4, 5])
def test_crop_patches_against_a_voxel_loop(size):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    # inside, over the low and high ends of different axes, and entirely outside
    centres = np.array([[2, 2, 3], [-10, 2, 2], [1, 4, 6], [0, 0, 0], [2, 2, 9], [3, 1, 5]])
    patches = crop_patches(array, centres, size=size)
    assert patches.shape == (6, 1, size, size, size) and patches.dtype == np.float32
    for n, centre in enumerate(centres):
        np.testing.assert_array_equal(patches[n, 0], _patch_by_loop(array, centre, size))
    assert not patches[1].any() and not patches[4].any() and patches[5].any()
    # one centre given as a flat triple; the default edge is 64: [c - 32, c + 32) of the array
    # zero-padded by 64 on every side
    one = crop_patches(array, [1, 2, 3])
    assert one.shape == (1, 1, 64, 64, 64)
    z, y, x = np.array([1, 2, 3]) - 32 + 64
    expected = np.pad(array, 64)[z : z + 64, y : y + 64, x : x + 64]
    np.testing.assert_array_equal(one[0, 0], expected)


def test_search_centres_snap_to_the_shared_grid_and_stay_inside():
    points = np.array([[40, 41, 100], [36, 44, 3]])
    shape = (80, 90, 120)  # allowed centres: [32, s - 33] = [32, 47], [32, 57], [32, 87]
    # 24 mm = 8 voxels: 40/8 = 5 -> 40; 41/8 = 5.125 -> 40; 100/8 = 12.5 -> 12 (half to even)
    # -> 96 -> 87; 36/8 = 4.5 -> 4 -> 32; 44/8 = 5.5 -> 6 -> 48; 3/8 -> 0 -> 32
    shared = search_centres(points, 24.0, shape)
    assert shared.dtype == np.int64 and shared.tolist() == [[40, 40, 87], [32, 48, 32]]
    # 7.5 mm = 2.5 voxels -> a pitch of 2: 41/2 = 20.5 -> 20 -> 40; 3/2 = 1.5 -> 2 -> 4 -> 32
    assert search_centres(points, 7.5, shape).tolist() == [[40, 40, 87], [36, 44, 32]]
    # 1 mm rounds to a pitch of 0 -> at least 1: only the clamp acts
    assert search_centres(points, 1.0, shape).tolist() == [[40, 41, 87], [36, 44, 32]]
    # no sharing: the points themselves, not clamped
    assert search_centres(points, 0.0, shape).tolist() == points.tolist()
    assert search_centres(points, -3.0, shape).tolist() == points.tolist()


# --------------------------------------------------------------------------------------------
# start centres


def test_initial_centres_fall_back_to_the_nearest_tissue_after_the_draws(caplog):
    padded = np.zeros((70, 70, 70), np.float32)
    padded[44, 44, 44] = 0.5  # the only tissue of the 20^3 start window [25, 45): 1 in 8000
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.matching"):
        centres = initial_centres(padded, np.random.default_rng(0), n=4)
    assert centres.dtype == np.int64 and centres.tolist() == [[44, 44, 44]] * 4
    # 100 draws missed it
    assert [r.getMessage() for r in caplog.records] == [
        "the centre of the query is air; initial patches start at [44 44 44]"
    ]


def test_initial_centres_of_an_air_window_search_ever_larger_cubes():
    # nothing within 10 or 20 voxels of the centre (35, 35, 34) of a 71 x 70 x 69 grid; at
    # radius 40 two voxels 15 voxels away on either side along x: the first in C order wins
    padded = np.zeros((71, 70, 69), np.float32)
    padded[35, 35, 60] = padded[5, 35, 34] = 0.01
    assert initial_centres(padded, np.random.default_rng(0), n=3).tolist() == [[35, 35, 60]] * 3
    padded[35, 35, 60] = 0.0
    padded[35, 35, 4] = padded[35, 35, 64] = 0.5  # both 30 from x = 34: x = 4 comes first
    assert initial_centres(padded, np.random.default_rng(0), n=2).tolist() == [[5, 35, 34]] * 2
    padded[5, 35, 34] = 0.0009  # below the air threshold 0.001
    assert initial_centres(padded, np.random.default_rng(0), n=1).tolist() == [[35, 35, 4]]


def test_initial_centres_draw_in_the_start_window():
    padded = np.zeros((64, 64, 64), np.float32)
    padded[22:42, 22:42, 22:42] = 0.001  # exactly the threshold: tissue
    centres = initial_centres(padded, np.random.default_rng(5), n=50)
    assert centres.min() >= 22 and centres.max() <= 41  # [32 - 10, 32 + 10)
    assert len({tuple(c) for c in centres.tolist()}) > 40  # drawn, not one fallback voxel
    expected = np.random.default_rng(5).integers([22] * 3, [42] * 3, size=(50, 3))
    assert centres.tolist() == expected.tolist()  # one draw per centre, none rejected


# --------------------------------------------------------------------------------------------
# multi-scale similarity


def _correlate_by_loop(feat: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """conv3d (cross-correlation) of ``(C, a, b, c)`` with ``(C, k0, k1, k2)``, zero padding
    ``k // 2`` on both sides of each axis."""
    k = temp.shape[1:]
    padded = np.pad(feat, [(0, 0)] + [(n // 2, n // 2) for n in k])
    out = np.zeros([padded.shape[1 + a] - k[a] + 1 for a in range(3)])
    for z, y, x in np.ndindex(*out.shape):
        out[z, y, x] = np.sum(padded[:, z : z + k[0], y : y + k[1], x : x + k[2]] * temp)
    return out


@pytest.mark.parametrize("kernel", [(3, 2, 5), (5, 3, 2), (2, 5, 3)])
def test_correlate_with_kernels_of_three_different_edges(kernel):
    rng = np.random.default_rng(len(kernel) + kernel[0])
    feats = rng.standard_normal((2, 3, 6, 7, 5))
    temps = rng.standard_normal((2, 3, *kernel))
    got = correlate(torch.from_numpy(feats).float(), torch.from_numpy(temps).float())
    for b in range(2):
        expected = _correlate_by_loop(feats[b], temps[b])
        assert tuple(got[b].shape) == expected.shape
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-4)


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` weights of PyTorch's linear resampling with align_corners=False."""
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        weights[o, i0] += 1.0 - (src - i0)
        weights[o, i1] += src - i0
    return weights


def _similarity_by_hand(feats: dict, temps: dict, scales, size: int) -> np.ndarray:
    total = np.ones((next(iter(feats.values())).shape[0], size, size, size))
    for scale in scales:
        for b, (f, t) in enumerate(zip(feats[scale], temps[scale], strict=True)):
            unit = f / np.linalg.norm(f, axis=0, keepdims=True)
            r = _correlate_by_loop(unit, t) / t[0].size
            w = _linear_matrix(r.shape[0], size)
            total[b] += np.einsum("az,by,cx,zyx->abc", w, w, w, r)
    return total


def test_similarity_map_against_numpy():
    rng = np.random.default_rng(4)
    # two scales of different map and template edges; a third scale that is not asked for
    feats = {
        "feature0": rng.standard_normal((2, 3, 4, 4, 4)),
        "feature1": rng.standard_normal((2, 3, 6, 6, 6)),
        "feature2": rng.standard_normal((2, 3, 5, 5, 5)),
    }
    temps = {
        "feature0": rng.standard_normal((2, 3, 2, 2, 2)),
        "feature1": rng.standard_normal((2, 3, 3, 3, 3)),
        "feature2": rng.standard_normal((2, 3, 2, 2, 2)),
    }
    scales = ("feature0", "feature1")
    as_torch = {k: torch.from_numpy(v) for k, v in feats.items()}  # float64: cast to float32
    temps_torch = {k: torch.from_numpy(v).float() for k, v in temps.items()}
    got = similarity_map(as_torch, temps_torch, scales, size=8)
    assert got.shape == (2, 8, 8, 8) and got.dtype == torch.float32
    expected = _similarity_by_hand(feats, temps, scales, 8)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5, rtol=1e-5)
    one = similarity_map(as_torch, temps_torch, ("feature1",), size=5)
    np.testing.assert_allclose(
        one.numpy(), _similarity_by_hand(feats, temps, ("feature1",), 5), atol=2e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="^similarity_map needs at least one feature scale$"):
        similarity_map(as_torch, temps_torch, ())


def test_similarity_map_default_size_is_the_patch():
    feats = {"feature0": torch.ones(1, 2, 4, 4, 4)}
    temps = {"feature0": torch.ones(1, 2, 2, 2, 2)}
    got = similarity_map(feats, temps, ("feature0",))
    assert got.shape == (1, 64, 64, 64)
    # unit features (1/sqrt 2 per channel) against all-ones 2^3 templates: at an inner voxel
    # 8 voxels x 2 channels x 0.7071 / 8 = 1.4142, plus 1
    assert float(got[0, 32, 32, 32]) == pytest.approx(1.0 + np.sqrt(2.0), abs=1e-5)


def test_correlate_refuses_mismatched_batches_or_channels():
    with pytest.raises(ValueError, match=r"features \(2, 3, 4, 4, 4\) and templates"):
        correlate(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 4, 2, 2, 2))
    with pytest.raises(ValueError, match="features"):
        correlate(torch.zeros(2, 3, 4, 4, 4), torch.zeros(1, 3, 2, 2, 2))
    # more channels than one chunk (default 16): every chunk is summed
    feats, temps = torch.ones(1, 20, 3, 3, 3), torch.ones(1, 20, 1, 1, 1)
    assert correlate(feats, temps).flatten().tolist() == [20.0] * 27


def test_mss_offsets_on_a_small_map():
    score = torch.zeros(2, 8, 8, 8)
    score[0, 0, 7, 3] = 1.0  # offsets index - (8 // 2 - 1) = index - 3
    score[1] -= 1.0  # all negative but two
    score[1, 3, 3, 3] = score[1, 5, 0, 0] = 2.0  # a tie: (3, 3, 3) is first in C order
    offsets = mss_offsets(score)
    assert offsets.dtype == np.int64 and offsets.tolist() == [[-3, 4, 0], [0, 0, 0]]


def test_nearest_tissue_searches_cubes_of_radius_10_20_40(caplog):
    """The fallback takes the nearest non-air voxel of the first cube ``[c - r, c + r]`` (both
    ends) that holds one, r = 10, 20, 40, ...: not always the nearest of the whole volume."""
    shape = (90, 70, 50)  # centre (45, 35, 25); the start window [c - 10, c + 10) is air

    def fallback(*voxels, value=0.5):
        padded = np.zeros(shape, np.float32)
        for v in voxels:
            padded[v] = value
        return initial_centres(padded, np.random.default_rng(0), n=1)[0].tolist()

    # corner of the r = 10 cube (17.3 voxels away) beats a voxel 11 away outside it, along x
    assert fallback((55, 45, 35), (45, 35, 36)) == [55, 45, 35]
    assert fallback((35, 25, 15), (45, 35, 14)) == [35, 25, 15]  # the low corner, likewise
    # r = 20: its corner (34.6 away) beats a voxel 25 away, which r = 30 would have reached
    assert fallback((65, 55, 45), (45, 35, 0)) == [65, 55, 45]
    # a voxel exactly at the air threshold is tissue
    assert fallback((55, 45, 35), value=0.001) == [55, 45, 35]
    # 42^3: at r = 20 the cube reaches every high end (c + 21 = 42) but not index 0
    padded = np.zeros((42, 42, 42), np.float32)
    padded[0, 21, 21] = 0.5
    assert initial_centres(padded, np.random.default_rng(0), n=1).tolist() == [[0, 21, 21]]
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.matching"):
        air = initial_centres(np.zeros((30, 31, 32), np.float32), np.random.default_rng(0), n=2)
    assert air.tolist() == [[15, 15, 16]] * 2
    assert "initial patches start at [15 15 16]" in caplog.text


@pytest.mark.parametrize(
    "shape, tissue",
    [
        # window [c - 10, c + 10) per axis: (30..50, 20..40, 10..30) of 80 x 60 x 40
        ((80, 60, 40), (45, slice(20, 40), slice(10, 30))),  # only z 40..49 of the window
        ((80, 60, 40), (slice(30, 50), 35, slice(10, 30))),  # only y 30..39
        # (10..30, 20..40, 30..50) of 40 x 60 x 80
        ((40, 60, 80), (15, slice(20, 40), slice(30, 50))),  # only z 10..19
        ((40, 60, 80), (slice(10, 30), 25, slice(30, 50))),  # only y 20..29
    ],
)
def test_initial_centres_draw_from_the_whole_window_of_each_axis(shape, tissue):
    """Tissue in one part of the start window only: the centres are drawn there (spread over
    it), not taken from the nearest-tissue fallback (one voxel)."""
    padded = np.zeros(shape, np.float32)
    padded[tissue] = 0.5
    centres = initial_centres(padded, np.random.default_rng(1))
    assert np.all(padded[tuple(centres.T)] == 0.5)
    lo = np.array(shape) // 2 - 10
    assert np.all((centres >= lo) & (centres < lo + 20))
    assert len({tuple(c) for c in centres.tolist()}) > 5
