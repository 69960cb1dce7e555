"""``reproduce = published`` against the published code's own outputs (../shared/parity).

The published code was run on the shared example CT (support = query, classes 1, 2, 3, 5, 6,
all three MSS scales) with the random checkpoint that ``torch.manual_seed(0)`` and the
width-24 network give; its start centres, WPL boxes, SPL boxes and predicted extreme points are
in ``reference_example_ct.json``. Here the same checkpoint is rebuilt, the same run is made with
``Localizer(published=True)``, and every number must be equal.

The full-width network costs tens of seconds per 64^3 patch on a CPU, so these tests are
``slow`` (``pytest -m slow``). Setting ``MEDLSAM_PARITY_CACHE`` to a folder memoizes the
network's outputs there, keyed by the sha256 of each input patch and of the weights, so a rerun
costs seconds; the first run computes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, ct_testdata_path

from medlsam.config import BoxMode
from medlsam.io import read_image, read_label
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import FEATURE_NAMES, MedLAM, weights_fingerprint
from medlsam.localization.published import PublishedStarts

pytestmark = pytest.mark.slow

PARITY = ROOT.parent / "shared" / "parity" / "reference_example_ct.json"
CLASSES = (1, 2, 3, 5, 6)


class CachedMedLAM(torch.nn.Module):
    """MedLAM whose per-patch outputs are memoized on disk (see the module docstring)."""

    def __init__(self, model: MedLAM, folder: Path) -> None:
        super().__init__()
        self.model = model
        self.base_chns = model.base_chns
        self.checkpoint_sha256 = weights_fingerprint(model)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def forward(self, x: torch.Tensor, fc: bool = True, features=FEATURE_NAMES) -> dict:
        names = (["fc_position"] if fc else []) + list(features)
        keys = [
            hashlib.sha256(self.checkpoint_sha256.encode() + p.numpy().tobytes()).hexdigest()
            for p in x
        ]
        files = [self.folder / f"{k}.pt" for k in keys]
        cached = [torch.load(f) if f.is_file() else {} for f in files]
        todo = [n for n, c in enumerate(cached) if not all(name in c for name in names)]
        if todo:
            wanted = FEATURE_NAMES if features else ()  # all scales at once, or fc only
            out = self.model(x[todo], fc=True, features=wanted)
            for row, n in enumerate(todo):
                cached[n].update({k: v[row].clone() for k, v in out.items()})
                torch.save(cached[n], files[n])
        return {name: torch.stack([c[name] for c in cached]) for name in names}


@pytest.fixture(scope="module")
def reference() -> dict:
    if not PARITY.is_file():
        pytest.skip(f"published reference outputs not found at {PARITY.parent}")
    return json.loads(PARITY.read_text())


@pytest.fixture(scope="module")
def example():
    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    return image, label


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    model = MedLAM(24).eval()
    cache = os.environ.get("MEDLSAM_PARITY_CACHE")
    return CachedMedLAM(model, Path(cache)) if cache else model


def published_run(network, example, mode, interval, classes):
    image, label = example
    localizer = Localizer(
        network,
        "cpu",
        mode=mode,
        slice_interval=interval,
        feature_scales=FEATURE_NAMES,
        published=True,
        starts=PublishedStarts(2023),
    )
    localizer.fit([(image, label)], classes)
    organs = localizer.predict(image)
    return localizer, organs


def as_boxes(organ) -> list[list[list[int]]]:
    return [[list(b.lo), list(b.hi)] for b in organ.raw_boxes]


def as_ints(nested) -> list:
    return np.asarray(nested, dtype=np.int64).tolist()


def point_set(points) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in p) for p in np.asarray(points)}


# each organ's points depend only on its own support points and the shared start patches, so
# organs are checked one at a time (the same numbers as one run over all five)
@pytest.mark.parametrize("c", CLASSES)
def test_wpl_boxes_and_extreme_points_equal_the_published_ones(reference, example, network, c):
    localizer, organs = published_run(network, example, BoxMode.WPL, None, (c,))
    assert localizer.last_start_centres.tolist() == reference["start_centres_padded"]
    ref = reference["WPL"][str(c)]
    assert as_boxes(organs[c]) == as_ints(ref["boxes_ijk"])
    for ours, theirs in zip(organs[c].extreme_points, ref["extreme_points_ijk"], strict=True):
        assert point_set(ours) == point_set(theirs)
    # class 5's relative-distance box lies outside the image: clamped and refined, not dropped
    assert organs[c].inside and organs[c].boxes


@pytest.mark.parametrize("c", CLASSES)
def test_spl_boxes_equal_the_published_ones_in_published_order(reference, example, network, c):
    _, organs = published_run(network, example, BoxMode.SPL, 2, (c,))
    ref = reference["SPL_slice_interval_2"][str(c)]
    ours, theirs = as_boxes(organs[c]), as_ints(ref["boxes_ijk"])
    assert sorted(ours) == sorted(theirs)  # as a set
    assert ours == theirs  # and in the published part order
    for mine, published in zip(organs[c].extreme_points, ref["extreme_points_ijk"], strict=True):
        assert point_set(mine) == point_set(published)
