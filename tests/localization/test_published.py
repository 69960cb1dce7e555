"""``reproduce = published``: the published start-centre stream, label resampling and
back-mapping, checked against the published code's outputs (../shared/parity) and against the
published rules written out independently here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, ct_testdata_path, make_ct

from medlsam.errors import InputError
from medlsam.io import Volume, read_image
from medlsam.localization.published import (
    PublishedStarts,
    draw_start_centres,
    published_file_points,
    published_label,
)
from medlsam.preprocess import medlam_image, pad

PARITY = ROOT.parent / "shared" / "parity"


def parity_json() -> dict:
    path = PARITY / "reference_example_ct.json"
    if not path.is_file():
        pytest.skip(f"published reference outputs not found at {PARITY}")
    return json.loads(path.read_text())


def padded_grid(path: Path) -> np.ndarray:
    return pad(medlam_image(read_image(path), "published").array)


def legacy_stream(arrays: list[np.ndarray], seed: int = 2023) -> list[list[list[int]]]:
    """The published rule, written from its description with numpy's global legacy generator:
    seeded once; per query, 10 centres; per centre three scalar randint(s//2-10, s//2+10)
    calls in axis order, drawn again while the voxel is air (< 0.001)."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        out = []
        for array in arrays:
            centres: list[list[int]] = []
            while len(centres) < 10:
                c = [np.random.randint(s // 2 - 10, s // 2 + 10) for s in array.shape]
                if array[c[0], c[1], c[2]] >= 0.001:
                    centres.append(c)
            out.append(centres)
        return out
    finally:
        np.random.set_state(saved)


def test_start_centres_equal_the_published_ones():
    ref = parity_json()
    query = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    centres = PublishedStarts(2023).centres(padded_grid(query), query)
    assert centres.tolist() == ref["start_centres_padded"]


def test_stream_continues_across_queries_and_ignores_the_shard_layout():
    first = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    second = ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz")
    arrays = [padded_grid(first), padded_grid(second)]
    expected = legacy_stream(arrays)
    assert expected[0] == parity_json()["start_centres_padded"]
    # in list order, one stream
    stream = PublishedStarts(2023, [first, second], prepare=padded_grid)
    got = [stream.centres(arrays[0], first).tolist(), stream.centres(arrays[1], second).tolist()]
    assert got == expected and stream.replayed == 0
    # the second query alone (a shard): the first one's draws are replayed, same centres
    shard = PublishedStarts(2023, [first, second], prepare=padded_grid)
    assert shard.centres(arrays[1], second).tolist() == expected[1]
    assert shard.replayed == 1
    # asked again out of order: the stream rewinds, nothing changes
    assert shard.centres(arrays[0], first).tolist() == expected[0]
    assert shard.centres(arrays[1], second).tolist() == expected[1]
    # a fresh seed per query (medlsam's default) would give the first query's centres again
    assert expected[1] != legacy_stream([arrays[1]])[0]


def test_stream_over_synthetic_queries_in_any_order(tmp_path):
    import nibabel as nib

    paths, arrays = [], []
    for n in range(3):
        image, _ = make_ct(shape=(40, 36, 24), spacing=(2.0, 2.0, 3.0), seed=n)
        path = tmp_path / f"q{n}.nii.gz"
        nib.save(nib.Nifti1Image(image.data, image.affine), path)
        paths.append(path)
        arrays.append(padded_grid(path))
    expected = legacy_stream(arrays)
    for order in ([2, 0, 1], [1, 2, 0], [0, 1, 2]):
        stream = PublishedStarts(2023, paths, prepare=padded_grid)
        for n in order:
            assert stream.centres(arrays[n], paths[n]).tolist() == expected[n], order


def test_an_unreadable_earlier_query_uses_no_draws(tmp_path):
    import nibabel as nib

    image, _ = make_ct(seed=4)
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(image.data, image.affine), good)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file")
    array = padded_grid(good)
    stream = PublishedStarts(2023, [broken, good], prepare=padded_grid)
    assert stream.centres(array, good).tolist() == legacy_stream([array])[0]
    assert stream.replayed == 0


def test_an_all_air_start_window_is_refused_without_drawing():
    state = np.random.RandomState(2023)
    before = state.get_state()[1].copy()
    with pytest.raises(InputError, match="all air"):
        draw_start_centres(np.zeros((70, 70, 70), np.float32), state, name="air.nii.gz")
    assert np.array_equal(state.get_state()[1], before)


def one_hot_reference(label: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """The published label resampling, as described: one-hot over 0..max, trilinear
    interpolation with scale_factor = spacing / 3 (float32), argmax, int32."""
    onehot = F.one_hot(torch.from_numpy(label).long())  # (Z, Y, X, C)
    onehot = onehot.permute(3, 0, 1, 2)[None].float()
    zoom = np.asarray(spacing_zyx, dtype=np.float32) / np.float32(3)
    out = F.interpolate(onehot, scale_factor=tuple(float(z) for z in zoom), mode="trilinear")
    return out[0].argmax(dim=0).numpy().astype(np.int32)


def test_published_label_equals_one_hot_trilinear_resampling():
    rng = np.random.default_rng(3)
    # LAS (z, y, x) array = RAS data transposed (2, 1, 0) with x flipped: build in RAS
    data = np.zeros((31, 27, 13), np.int32)
    data[5:20, 4:15, 2:9] = 1
    data[12:28, 10:25, 5:12] = 3  # overlaps 1; value 2 absent
    data[rng.random(data.shape) < 0.05] = 4
    spacing = (1.3, 1.7, 2.5)  # i, j, k
    volume = Volume(data, np.diag([*spacing, 1.0]))
    ours = published_label(volume)
    las = np.flip(data, axis=0).transpose(2, 1, 0)  # RAS -> LAS, (z, y, x)
    expected = one_hot_reference(np.ascontiguousarray(las), np.array(spacing[::-1]))
    assert ours.shape == expected.shape == (10, 15, 13)  # floor(n * s / 3), not round
    assert np.array_equal(ours, expected)


def test_published_label_at_3_mm_is_the_label_itself():
    data = np.zeros((8, 9, 10), np.int32)
    data[2:5, 3:7, 1:4] = 2
    out = published_label(Volume(data, np.diag([3.0, 3.0, 3.0, 1.0])))
    assert np.array_equal(out, np.flip(data, axis=0).transpose(2, 1, 0))


def test_published_back_mapping_rounds_at_the_file_resolution():
    # RAS, 0.8 x 0.8 x 2.5 mm: LAS z = k, y = j, x = (I - 1) - i
    shape = (200, 180, 60)
    volume = Volume(np.full(shape, 40.0, np.float32), np.diag([0.8, 0.8, 2.5, 1.0]))
    grid = medlam_image(volume, "published")
    points = np.array([[10, 20, 30], [0, 0, 0]])
    ijk = published_file_points(grid, points)
    z = np.rint(np.float32(10) * (np.float32(1) / np.float32(2.5 / 3)))  # 12
    y = np.rint(np.float32(20) * (np.float32(1) / np.float32(np.float32(0.8) / np.float32(3))))
    x = np.rint(np.float32(30) * (np.float32(1) / np.float32(np.float32(0.8) / np.float32(3))))
    assert ijk[0].tolist() == [shape[0] - 1 - x, y, z]
    assert ijk[1].tolist() == [shape[0] - 1, 0, 0]
    # medlsam's exact grid ratio differs here: (I - 1) / (n_out - 1) = 199 / 52, not 3.75
    assert not np.allclose(grid.to_file_index(points[:1]), ijk[:1])


def test_prototypes_made_in_one_mode_are_refused_in_the_other(tmp_path, tiny_ct):
    from medlsam.localization.localizer import Localizer
    from medlsam.localization.network import MedLAM

    torch.manual_seed(0)
    model = MedLAM(2).eval()
    image, label = tiny_ct
    default = Localizer(model, feature_scales=())
    default.fit([(image, label)], [1, 2])
    path = default.save_prototypes(tmp_path / "p.pt")
    Localizer(model, feature_scales=()).load_prototypes(path)  # same mode: accepted
    with pytest.raises(InputError, match="medlsam support-label resampling, not the published"):
        Localizer(model, feature_scales=(), published=True).load_prototypes(path)


def test_a_two_query_run_continues_the_stream_in_the_localizer():
    """The example CT, then another CT, through ``Localizer(published=True)``: the second
    query's start centres are where the published stream goes on, computed independently."""
    from medlsam.localization.localizer import Localizer
    from medlsam.localization.network import MedLAM

    first = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    second = ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz")
    expected = legacy_stream([padded_grid(first), padded_grid(second)])
    torch.manual_seed(0)
    image = read_image(first)
    label = Volume((image.data > 100).astype(np.int32), image.affine)  # any organ will do
    localizer = Localizer(MedLAM(2).eval(), feature_scales=(), published=True)
    localizer.fit([(image, label)], [1])
    localizer.predict(image)
    assert localizer.last_start_centres.tolist() == expected[0]
    localizer.predict(read_image(second))
    assert localizer.last_start_centres.tolist() == expected[1]
