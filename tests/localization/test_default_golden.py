"""The default mode is unchanged by ``[run] reproduce``: boxes recorded before it existed.

``data/default_golden_example_ct.json`` holds the ``boxes.json`` classes that medlsam gave for
the shared example CT (support = query, classes 1, 2, 3, 5, 6; the demo checkpoint shipped in
the package; MSS on feature0; seed 2023), WPL and SPL, recorded at commit d9e5912, before the
reproduce mode was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ct_testdata_path

from medlsam.boxes import boxes_json
from medlsam.io import read_image, read_label
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import build_medlam

GOLDEN = Path(__file__).parent / "data" / "default_golden_example_ct.json"
DEMO = Path(__file__).resolve().parents[2] / "medlsam" / "data" / "medlam_demo.pth"
CLASSES = [1, 2, 3, 5, 6]


# each organ's boxes depend only on its own support points and the shared start patches, so a
# subset of the recorded organs is checked where the run would be long (SPL: 36 points each)
@pytest.mark.parametrize("mode, interval, classes", [("WPL", None, CLASSES), ("SPL", 2, [3])])
def test_default_boxes_equal_those_recorded_before_reproduce_mode(
    one_thread, mode, interval, classes
):
    golden = json.loads(GOLDEN.read_text())[mode]
    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    localizer = Localizer(
        build_medlam(DEMO, "cpu"),
        "cpu",
        mode=mode,
        slice_interval=interval,
        feature_scales=("feature0",),
        seed=2023,
    )
    localizer.fit([(image, label)], classes)
    organs = localizer.predict(image)
    doc = boxes_json("example_ct", "example_ct.nii.gz", image.affine, [organs[c] for c in classes])
    for c in classes:
        ours, theirs = doc["classes"][str(c)], golden[str(c)]
        assert ours["inside"] == theirs["inside"]
        assert ours["extreme_points"] == theirs["extreme_points"]
        assert len(ours["boxes"]) == len(theirs["boxes"])
        for box, old in zip(ours["boxes"], theirs["boxes"], strict=True):
            assert {k: box[k] for k in old} == old  # min, max, min_mm, max_mm
            # the new unclipped corners hold the clipped ones
            assert all(r <= v for r, v in zip(box["min_raw"], box["min"], strict=True))
            assert all(r >= v for r, v in zip(box["max_raw"], box["max"], strict=True))
