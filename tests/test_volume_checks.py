"""medlsam.volume input checks at their exact boundaries, with their exact messages.

``check_hounsfield`` tells CT in Hounsfield units from MR and from CT stored with a +1024 offset:
values reach -500 HU or below -> CT; else the minimum at or above -10 with more than 2 % of the
(sub)sample at or below 100 and more than 10 % between 900 and 1200 (both included) -> offset
CT; anything else -> not CT. Volumes over a million voxels are judged on every 4th voxel per
axis. ``validate_geometry`` squeezes trailing singleton axes and refuses 2D/4D data, a NaN
matrix, an axis of 1e-6 mm or less, or a determinant of 1e-9 or less.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlsam.errors import InputError
from medlsam.volume import check_hounsfield, validate_geometry

PATH = Path("/data/ct_7.nii.gz")
OFFSET = (
    "/data/ct_7.nii.gz: values {lo}..{hi} look like CT stored with a +1024 offset (air near 0, "
    "soft tissue near 1024); expected Hounsfield units (air about -1000): subtract 1024 first"
)
NOT_CT = (
    "/data/ct_7.nii.gz: values {lo}..{hi} do not look like CT in Hounsfield units (no air below "
    "-500 HU); MedLSAM needs CT, and MR scans are not supported"
)


def _verdict(data: np.ndarray) -> str:
    try:
        check_hounsfield(np.asarray(data, dtype=np.float32), PATH)
    except InputError as err:
        text = str(err)
        if "offset" in text:
            return "offset"
        assert "do not look like CT" in text, text
        return "not CT"
    return "CT"


def _mix(n: int, **counts: float) -> np.ndarray:
    """A (4, 5, 5) volume (100 voxels): ``value=count`` pairs given as strings, rest 500."""
    flat = np.full(100, 500.0)
    start = 0
    for value, count in counts.items():
        flat[start : start + int(count)] = float(value.replace("m", "-").replace("_", "."))
        start += int(count)
    assert start <= n
    return flat.reshape(4, 5, 5)


@pytest.mark.parametrize(
    "counts,expected",
    [
        ({"m500": 1}, "CT"),  # the minimum at exactly -500 HU
        ({"m500_5": 1, "100": 50}, "CT"),
        ({"m499_5": 1, "100": 50, "1000": 40}, "not CT"),  # minimum above -500 and below -10
        ({"m10": 1, "100": 5, "1000": 20}, "offset"),  # minimum exactly -10
        ({"m10_5": 1, "100": 5, "1000": 20}, "not CT"),
        ({"100": 5, "1000": 95}, "offset"),  # 100 counts as near zero
        ({"100_5": 5, "1000": 95}, "not CT"),
        ({"100": 2, "1000": 98}, "not CT"),  # exactly 2 % near zero is not more than 2 %
        ({"100": 3, "1000": 97}, "offset"),
        ({"50": 50, "900": 20}, "offset"),  # 900 counts as tissue
        ({"50": 50, "1200": 20}, "offset"),  # 1200 counts as tissue
        ({"50": 50, "1200_5": 20}, "not CT"),
        ({"50": 50, "899_5": 20}, "not CT"),
        ({"50": 50, "1000": 10}, "not CT"),  # exactly 10 % tissue is not more than 10 %
        ({"50": 50, "1000": 11}, "offset"),
        ({"50": 50}, "not CT"),  # near zero but no tissue
        ({"1000": 50}, "not CT"),  # tissue but nothing near zero
        ({"m100": 1, "1000": 50}, "not CT"),  # tissue, minimum below -10
    ],
)
def test_hounsfield_verdict_at_the_boundaries(counts, expected):
    assert _verdict(_mix(100, **counts)) == expected


def _grid_pattern(shape: tuple[int, int, int]) -> np.ndarray:
    """500 HU on every 4th voxel of every axis (what the sample of a large volume sees); off
    that grid a third near 0 HU (50) and the rest tissue (1000): offset CT in full, not CT on
    the sample."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij", sparse=True)
    data = np.where((i + j + k) % 3 == 0, 50.0, 1000.0).astype(np.float32)
    on_grid = (i % 4 == 0) & (j % 4 == 0) & (k % 4 == 0)
    return np.where(on_grid, 500.0, data).astype(np.float32)


def test_a_million_voxels_are_judged_whole_and_more_on_every_4th():
    assert _verdict(_grid_pattern((8, 8, 8))) == "offset"
    assert _verdict(_grid_pattern((100, 100, 100))) == "offset"  # exactly 10**6: whole
    assert _verdict(_grid_pattern((101, 100, 100))) == "not CT"  # sampled: only the grid


def test_hounsfield_messages():
    with pytest.raises(InputError) as err:
        check_hounsfield(_mix(100, **{"100": 5, "1000": 95}).astype(np.float32), PATH)
    assert str(err.value) == OFFSET.format(lo=100, hi=1000)
    with pytest.raises(InputError) as err:
        check_hounsfield(_mix(100, **{"0": 1}).astype(np.float32), PATH)
    assert str(err.value) == NOT_CT.format(lo=0, hi=500)


def test_trailing_singleton_axes_are_dropped():
    data = np.zeros((4, 5, 6, 1, 1), np.float32)
    assert validate_geometry(PATH, data, np.eye(4)).shape == (4, 5, 6)
    flat = np.zeros((4, 5, 1), np.float32)
    with pytest.raises(InputError) as err:
        validate_geometry(PATH, flat, np.eye(4))
    assert str(err.value) == f"{PATH}: image is 2D (shape 4x5x1); expected a 3D CT volume"
    with pytest.raises(InputError) as err:
        validate_geometry(PATH, np.zeros((4, 5, 6, 2)), np.eye(4))
    assert str(err.value) == f"{PATH}: image is 4D (shape 4x5x6x2); expected a 3D CT volume"


def test_nan_matrix_is_refused():
    affine = np.eye(4)
    affine[1, 3] = np.nan
    with pytest.raises(InputError) as err:
        validate_geometry(PATH, np.zeros((4, 5, 6)), affine)
    assert str(err.value) == f"{PATH}: voxel-to-world matrix contains NaN or infinity"


def _spacing_error(affine: np.ndarray) -> str | None:
    try:
        validate_geometry(PATH, np.zeros((4, 5, 6)), affine)
    except InputError as err:
        return str(err)
    return None


def test_spacing_is_the_length_of_each_column():
    # columns (0, 0.12345678, 0), (0, 0, 0), (2, 0, 0): spacing [0.1235, 0.0, 2.0]; the rows
    # would give [2, 0.1235, 0]; a translation must not count
    affine = np.array(
        [[0, 0, 2, 7.5], [0.12345678, 0, 0, -3], [0, 0, 0, 1.5], [0, 0, 0, 1]], dtype=float
    )
    assert _spacing_error(affine) == (
        f"{PATH}: voxel spacing [0.1235, 0.0, 2.0] mm has a zero axis; "
        "expected positive spacing on all three axes"
    )


def test_spacing_and_determinant_limits():
    assert _spacing_error(np.diag([1e-6, 1e3, 1e3, 1.0])) is not None  # exactly 1e-6 mm
    assert _spacing_error(np.diag([2e-6, 1e3, 1e3, 1.0])) is None
    assert _spacing_error(np.diag([1e-7, 1e4, 1e4, 1.0])) is not None  # det 10, axis too short
    collinear = np.eye(4)
    collinear[:3, 1] = collinear[:3, 0]  # positive spacing, determinant 0
    assert _spacing_error(collinear) is not None
