"""Golden values for medlsam.boxes: box construction, clipping at the image ends, overlap, IoU and
the ``boxes.json`` document (every expected number worked out by hand in the comments)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from medlsam.boxes import (
    Box3D,
    OrganBoxes,
    box_iou,
    box_overlaps,
    boxes_json,
    group_box,
    read_boxes_json,
    write_boxes_json,
)
from medlsam.errors import InputError


def test_a_one_voxel_box_is_a_box_and_an_inverted_one_is_refused():
    assert Box3D((4, 5, 6), (4, 5, 6)).size == (1, 1, 1)
    with pytest.raises(ValueError, match=r"lo \(4, 5, 7\) exceeds hi \(4, 5, 6\)"):
        Box3D((4, 5, 7), (4, 5, 6))


def test_from_points_rounds_half_to_even_then_bounds():
    # rint: 1.4 -> 1, 2.5 -> 2, 3.6 -> 4; 10.5 -> 10, 0.49 -> 0, 7.2 -> 7
    box = Box3D.from_points(np.array([[1.4, 2.5, 3.6], [10.5, 0.49, 7.2]]))
    assert box == Box3D((1, 0, 4), (10, 2, 7))
    assert all(type(v) is int for v in box.lo + box.hi)


def test_from_mask_is_the_tight_inclusive_box():
    mask = np.zeros((6, 7, 8), bool)
    mask[1, 6, 3] = mask[4, 2, 7] = True
    assert Box3D.from_mask(mask) == Box3D((1, 2, 3), (4, 6, 7))
    assert Box3D.from_mask(np.zeros((2, 2, 2))) is None


@pytest.mark.parametrize(
    "lo,hi,expected",
    [
        ((0, 3, 2), (9, 11, 5), ((0, 3, 2), (9, 11, 5))),  # exactly the image: unchanged
        ((-4, 3, 2), (12, 11, 9), ((0, 3, 2), (9, 11, 5))),  # over every end: to 0 and s - 1
        ((9, 11, 5), (14, 15, 8), ((9, 11, 5), (9, 11, 5))),  # only the last voxel inside
        ((-3, -2, -1), (0, 0, 0), ((0, 0, 0), (0, 0, 0))),  # only the first voxel inside
    ],
)
def test_clip_to_the_ends_of_the_image(lo, hi, expected):
    clipped = Box3D(lo, hi).clip((10, 12, 6))
    assert clipped == Box3D(*expected)


def test_clip_outside_the_image_is_none():
    assert Box3D((10, 0, 0), (12, 5, 5)).clip((10, 12, 6)) is None
    assert Box3D((0, -5, 0), (5, -1, 5)).clip((10, 12, 6)) is None


@pytest.mark.parametrize(
    "lo,hi,expected",
    [
        ((-3, -3, -3), (0, 0, 0), True),  # touches the first voxel
        ((9, 9, 9), (12, 12, 12), True),  # touches the last voxel
        ((10, 0, 0), (12, 5, 5), False),  # one past the last voxel on axis 0
        ((0, 0, -5), (5, 5, -1), False),  # one before the first voxel on axis 2
    ],
)
def test_box_overlaps_at_the_ends(lo, hi, expected):
    box = (np.array(lo, dtype=float), np.array(hi, dtype=float))
    assert box_overlaps(box, (10, 10, 10)) is expected


def test_box_iou_counts_voxels():
    a = Box3D((0, 0, 0), (3, 3, 3))  # 64 voxels
    # 2 voxels of overlap per axis: 8 / (64 + 64 - 8)
    assert box_iou(a, Box3D((2, 2, 2), (5, 5, 5))) == pytest.approx(8 / 120)
    # one shared corner voxel: 1 / 127
    assert box_iou(a, Box3D((3, 3, 3), (6, 6, 6))) == pytest.approx(1 / 127)
    assert box_iou(a, Box3D((4, 0, 0), (6, 3, 3))) == 0.0  # side by side
    assert box_iou(a, Box3D((0, 9, 0), (3, 12, 3))) == 0.0  # apart
    assert box_iou(a, a) == 1.0


def test_group_box_takes_each_point_on_its_own_axis():
    # points 0..2 give the low corner on axes 0, 1, 2; points 3..5 the high corner; an inverted
    # pair (point 1 above point 4) is sorted
    points = np.array(
        [[2, 50, 50], [50, 9, 50], [50, 50, 4], [7, 0, 0], [0, 3, 0], [0, 0, 8]], dtype=np.int64
    )
    lo, hi = group_box(points)
    assert lo.dtype == hi.dtype == np.float64
    assert lo.tolist() == [2.0, 3.0, 4.0] and hi.tolist() == [7.0, 9.0, 8.0]


def test_box_mm_rounded_to_a_thousandth_of_a_millimetre():
    # 0.7813 mm voxels: voxel 3 is at 2.3439 mm -> 2.344; voxel 7 at 5.4691 -> 5.469
    affine = np.diag([0.7813, 0.7813, 1.25, 1.0])
    lo_mm, hi_mm = Box3D((3, 0, 1), (7, 7, 3)).to_mm(affine)
    assert lo_mm == [2.344, 0.0, 1.25] and hi_mm == [5.469, 5.469, 3.75]


def test_boxes_json_document():
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 0.0]
    inside = OrganBoxes(
        4,
        (Box3D((1, 2, 3), (5, 6, 7)),),
        np.array([[[1.23456, 2, 3]] * 6]),
        inside=True,
        raw_boxes=(Box3D((-3, 2, 3), (5, 6, 12)),),  # before clipping to the image
    )
    outside = OrganBoxes(9, (), np.zeros((1, 6, 3), dtype=np.int64), inside=False)
    doc = json.loads(json.dumps(boxes_json("c1", "/d/c1.nii.gz", affine, [inside, outside])))
    assert doc["case"] == "c1" and doc["image"] == "/d/c1.nii.gz"
    assert doc["classes"]["4"]["boxes"] == [
        # (1, 2, 3) -> (-10 + 2, 5 + 4, 9); (5, 6, 7) -> (-10 + 10, 5 + 12, 21)
        {
            "min": [1, 2, 3],
            "max": [5, 6, 7],
            "min_mm": [-8.0, 9.0, 9.0],
            "max_mm": [0.0, 17.0, 21.0],
            "min_raw": [-3, 2, 3],
            "max_raw": [5, 6, 12],
        }
    ]
    assert doc["classes"]["4"]["extreme_points"][0][0] == [1.235, 2.0, 3.0]
    assert doc["classes"]["4"]["inside"] is True
    assert doc["classes"]["9"] == {
        "boxes": [],
        "extreme_points": [[[0.0] * 3] * 6],
        "inside": False,
    }
    assert all(type(v) is float for v in doc["classes"]["9"]["extreme_points"][0][0])
    extra = boxes_json("c1", "x", affine, [], extra={"upper_bound_baseline": True})
    assert extra == {"case": "c1", "image": "x", "classes": {}, "upper_bound_baseline": True}


def test_raw_boxes_must_pair_with_boxes():
    two = (Box3D((0, 0, 0), (1, 1, 1)), Box3D((2, 2, 2), (3, 3, 3)))
    with pytest.raises(ValueError, match=r"^organ 7: 1 raw boxes for 2 boxes$"):
        OrganBoxes(7, two, np.zeros((2, 6, 3)), raw_boxes=two[:1])


def test_boxes_file_written_with_two_space_indent_and_read_back(tmp_path):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    organ = OrganBoxes(3, (Box3D((0, 1, 2), (4, 5, 6)),), np.ones((1, 6, 3)))
    path = tmp_path / "caf\u00e9.boxes.json"
    extra = {"localizer": "registration"}
    assert (
        write_boxes_json(path, "caf\u00e9", "/d/caf\u00e9.nii.gz", affine, [organ], extra) == path
    )
    text = path.read_text(encoding="utf-8")
    # json.dumps(indent=2): the first key on its own line, indented by two spaces
    assert text.startswith('{\n  "case": "caf\\u00e9",\n  "image": "/d/caf\\u00e9.nii.gz",\n')
    doc = json.loads(text)
    assert doc["localizer"] == "registration"
    # (4, 5, 6) -> (6.0, 7.5, 12.0) mm
    assert doc["classes"]["3"]["boxes"][0]["max_mm"] == [6.0, 7.5, 12.0]
    assert read_boxes_json(path) == doc["classes"]


def test_boxes_file_read_as_utf8(tmp_path):
    path = tmp_path / "b.boxes.json"
    path.write_bytes('{"case": "\u00fc", "classes": {"1": {"boxes": []}}}'.encode("utf-8"))
    assert read_boxes_json(path) == {"1": {"boxes": []}}
    path.write_bytes(b'{"case": "\xfc", "classes": {}}')  # latin-1, not UTF-8
    with pytest.raises(InputError, match="not a boxes file"):
        read_boxes_json(path)


@pytest.mark.parametrize(
    "content,reason",
    [
        (None, r"No such file or directory"),
        ("{not json", r"Expecting property name"),
        ('{"case": "c"}', r"'classes'"),
        ('{"classes": [1, 2]}', r"\('classes' is not a mapping\)"),
    ],
)
def test_a_bad_boxes_file_is_one_line_naming_it(tmp_path, content, reason):
    path = tmp_path / "bad.boxes.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_boxes_json(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a boxes file (")
    assert message.endswith('); expected JSON with "classes": {id: {boxes}}')
    assert "\n" not in message
    assert re.search(reason, message)
