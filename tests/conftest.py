"""Shared fixtures: tiny synthetic CT volumes and the real CT test data folder."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medlsam.io import Volume

ROOT = Path(__file__).resolve().parents[1]

# MEDLSAM_TF32=1/0 switches TF32 matmuls and convolutions on/off for the CUDA tests
# (scripts/gpu_check.sh runs them both ways); unset leaves torch's defaults.
if os.environ.get("MEDLSAM_TF32") in ("0", "1"):
    torch.backends.cuda.matmul.allow_tf32 = os.environ["MEDLSAM_TF32"] == "1"
    torch.backends.cudnn.allow_tf32 = os.environ["MEDLSAM_TF32"] == "1"
#: ``MEDLSAM_CT_TESTDATA`` points elsewhere (a checkout that is not beside ``shared/``).
CT_TESTDATA = Path(os.environ.get("MEDLSAM_CT_TESTDATA") or ROOT.parent / "shared" / "ct_testdata")

#: All 48 axis orientations as (permutation, flips).
ORIENTATIONS = [
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
]


def ct_testdata_path(*parts: str) -> Path:
    """A file of ../shared/ct_testdata, or skip the test when the folder is absent."""
    path = CT_TESTDATA.joinpath(*parts)
    if not CT_TESTDATA.is_dir():
        pytest.skip(f"real CT test data not found at {CT_TESTDATA} (only in the project's CI)")
    if not path.exists():
        pytest.skip(f"{path} is missing from the real CT test data")
    return path


def reorient(volume: Volume, perm: tuple[int, ...], flips: tuple[bool, ...]) -> Volume:
    """The same image (same world geometry) stored with permuted and flipped voxel axes.

    New axis ``a`` is old axis ``perm[a]``, reversed where ``flips[a]``.
    """
    data = volume.data.transpose(perm)
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis=axis)
    new_to_old = np.zeros((4, 4))
    new_to_old[3, 3] = 1
    for axis, old in enumerate(perm):
        if flips[axis]:
            new_to_old[old, axis] = -1
            new_to_old[old, 3] = data.shape[axis] - 1
        else:
            new_to_old[old, axis] = 1
    return Volume(np.ascontiguousarray(data), volume.affine @ new_to_old, volume.path)


def make_ct(
    shape: tuple[int, int, int] = (40, 36, 24),
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
    seed: int = 0,
) -> tuple[Volume, Volume]:
    """A tiny CT (float32 HU) in RAS with two ellipsoid organs, and its label map (1, 2)."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    c = np.array(shape) / 2
    body = ((ii - c[0]) / (0.45 * shape[0])) ** 2 + ((jj - c[1]) / (0.42 * shape[1])) ** 2 < 1
    data = np.where(body, 40.0, -1000.0).astype(np.float32)
    organ1 = ((ii - c[0] + 6) / 6) ** 2 + ((jj - c[1]) / 5) ** 2 + ((kk - c[2]) / 6) ** 2 < 1
    organ2 = ((ii - c[0] - 7) / 4) ** 2 + ((jj - c[1] - 3) / 4) ** 2 + (
        (kk - c[2] + 2) / 4
    ) ** 2 < 1
    data[organ1] = 120.0
    data[organ2] = 300.0
    data += rng.normal(0, 5, shape).astype(np.float32)
    label = np.zeros(shape, np.int32)
    label[organ1] = 1
    label[organ2] = 2
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-100.0, -80.0, 20.0]
    return Volume(data, affine), Volume(label, affine.copy())


@pytest.fixture
def tiny_ct() -> tuple[Volume, Volume]:
    return make_ct()


@pytest.fixture
def one_thread():
    """Run the test with one torch thread, then restore the previous count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _export_cache(tmp_path_factory):
    """Networks exported for an inference engine go to a temporary folder, never the user's
    cache (``MEDLSAM_CACHE_DIR``; subprocesses inherit it)."""
    import os

    old = os.environ.get("MEDLSAM_CACHE_DIR")
    os.environ["MEDLSAM_CACHE_DIR"] = str(tmp_path_factory.mktemp("medlsam_cache"))
    yield
    if old is None:
        os.environ.pop("MEDLSAM_CACHE_DIR", None)
    else:
        os.environ["MEDLSAM_CACHE_DIR"] = old
