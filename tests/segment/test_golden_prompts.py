"""Golden values for 3D box -> 2D prompts in SAM's 1024 frame -> masks back into the volume.

Slices are non-square (300 x 410 and 410 x 300), taken along each of the three axes, so a swap
of rows and columns, of width and height, or of the slice axis changes the numbers. The rule
(published): the box's in-plane extent scaled by ``round(index * 1024 / size)`` and enlarged by
10 pixels, here clipped to [0, 1024]; x follows the slice's columns, y its rows. Every expected
value is worked out by hand in the comments, or computed by torch (nearest resizing).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.preprocess import sam_slice, sam_window, slice_2d
from medlsam.segment.assemble import (
    LabelAssembler,
    Prompt,
    box_prompt,
    group_by_slice,
    label_prompts,
    organ_prompts,
    prompt_table,
    published_prompts,
)
from medlsam.segment.base import SliceRequest, SliceResult, nearest_index, to_slice_boxes

# in-plane extent i 30..150 (of 300), j 100..300 (of 410), slices 4..9:
# 30*1024/300 = 102.4 -> 102, 150*1024/300 = 512; 100*1024/410 = 249.76 -> 250,
# 300*1024/410 = 749.27 -> 749; minus/plus the 10-pixel margin.
WIDE_300 = (92.0, 240.0, 522.0, 759.0)  # columns follow the 300-voxel axis
WIDE_410 = (240.0, 92.0, 759.0, 522.0)  # columns follow the 410-voxel axis

CASES = [
    # shape, slice axis, box lo, box hi, expected prompt
    ((300, 410, 20), 2, (30, 100, 4), (150, 300, 9), WIDE_300),  # rows j, columns i
    ((410, 300, 20), 2, (100, 30, 4), (300, 150, 9), WIDE_410),
    ((20, 300, 410), 0, (4, 30, 100), (9, 150, 300), WIDE_300),  # rows axis 2, columns axis 1
    ((20, 410, 300), 0, (4, 100, 30), (9, 300, 150), WIDE_410),
    ((300, 20, 410), 1, (30, 4, 100), (150, 9, 300), WIDE_300),  # rows axis 2, columns axis 0
    ((410, 20, 300), 1, (100, 4, 30), (300, 9, 150), WIDE_410),
]


@pytest.mark.parametrize("shape,axis,lo,hi,expected", CASES)
def test_prompt_of_a_3d_box_on_non_square_slices(shape, axis, lo, hi, expected):
    slices, xyxy = box_prompt(Box3D(lo, hi), shape, axis)
    assert xyxy == expected
    assert list(slices) == [4, 5, 6, 7, 8, 9]


def test_prompt_at_the_ends_of_the_axes_is_clipped():
    # lo (0, 0): -10 -> 0; hi i 299: 299*1024/300 = 1020.59 -> 1021 + 10 -> 1024;
    # hi j 409: 409*1024/410 = 1021.50 -> 1022 + 10 -> 1024
    slices, xyxy = box_prompt(Box3D((0, 0, 0), (299, 409, 19)), (300, 410, 20), 2)
    assert xyxy == (0.0, 0.0, 1024.0, 1024.0) and list(slices) == list(range(20))
    # lo i 5: 17.07 -> 17 - 10 = 7; lo j 5: 12.49 -> 12 - 10 = 2
    _, xyxy = box_prompt(Box3D((5, 5, 0), (299, 409, 0)), (300, 410, 20), 2)
    assert xyxy == (7.0, 2.0, 1024.0, 1024.0)


def test_organ_prompts_clip_boxes_to_the_image_and_keep_class_order():
    organs = {
        2: OrganBoxes(2, (Box3D((30, 100, 18), (150, 300, 25)),), np.zeros((1, 6, 3))),
        1: OrganBoxes(1, (Box3D((-5, 100, 0), (150, 300, 1)),), np.zeros((1, 6, 3))),
    }
    prompts = organ_prompts(organs, (300, 410, 20), 2, classes=[1, 2])
    assert [(p.class_id, p.index) for p in prompts] == [(1, 0), (1, 1), (2, 18), (2, 19)]
    assert prompts[0].box == (0.0, 240.0, 522.0, 759.0)  # i from -5 clipped to 0
    assert prompts[2].box == WIDE_300


def test_baseline_prompts_from_labels_without_jitter():
    label = np.zeros((300, 410, 20), np.int32)
    label[30:151, 100:301, 4:10] = 2
    prompts = label_prompts(label, [2], 2, np.random.default_rng(0), max_jitter=1)
    assert [p.index for p in prompts] == [4, 5, 6, 7, 8, 9]
    assert {p.box for p in prompts} == {(102.0, 250.0, 512.0, 749.0)}


@pytest.mark.parametrize("shape,axis,lo,hi,expected", CASES[:2] + CASES[4:5])
def test_prompt_covers_the_organ_on_the_sam_image(shape, axis, lo, hi, expected):
    """On the 1024 x 1024 image SAM is shown, the organ's pixels lie inside the prompt, and the
    prompt's edges minus the margin sit on the organ's edges (the high edge up to one slice
    pixel inside: the published rule scales the last pixel's index, not its far side)."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[tuple(slice(a, b + 1) for a, b in zip(lo, hi))] = 500.0
    image = sam_slice(slice_2d(sam_window(hu), axis, lo[axis]))[..., 0]
    rows, cols = np.nonzero(image > 127)
    x0, y0, x1, y1 = expected
    assert x0 <= cols.min() and cols.max() <= x1 and y0 <= rows.min() and rows.max() <= y1
    h, w = slice_2d(hu, axis, 0).shape
    assert abs(cols.min() - (x0 + 10)) <= 1 and abs(rows.min() - (y0 + 10)) <= 1
    assert 0 <= cols.max() - (x1 - 10) <= 1024 / w + 1
    assert 0 <= rows.max() - (y1 - 10) <= 1024 / h + 1


def test_prompt_back_to_slice_pixels():
    # x * 300 / 1024 and y * 410 / 1024 (width 300, height 410)
    got = to_slice_boxes(np.array([WIDE_300]), 410, 300)
    np.testing.assert_allclose(got, [[26.953125, 96.09375, 152.9296875, 303.896484375]])


@pytest.mark.parametrize("size", [300, 410, 512, 77])
def test_nearest_index_matches_torch_nearest_resize(size):
    frame = torch.arange(1024, dtype=torch.float64)[None, None]
    ref = torch.nn.functional.interpolate(frame, size=size, mode="nearest")[0, 0]
    assert nearest_index(size).tolist() == ref.long().tolist()


@pytest.mark.parametrize(
    "shape,axis,voxel",
    [((6, 9, 4), 2, (2, 7, 3)), ((4, 6, 9), 0, (3, 2, 7)), ((6, 4, 9), 1, (2, 3, 7))],
)
def test_mask_pixel_lands_on_its_voxel(shape, axis, voxel):
    # one pixel at row 7, column 2 of slice 3; the slice is 9 rows by 6 columns in every case,
    # so the voxel has index 3 on the slice axis, 7 on the 9-voxel axis and 2 on the 6-voxel one
    masks = np.zeros((1, 9, 6), bool)
    masks[0, 7, 2] = True
    request = SliceRequest(3, np.array([[0.0, 0.0, 1024.0, 1024.0]]), np.array([5]), np.array([0]))
    assembler = LabelAssembler(shape, axis, [5])
    assembler.add(request, SliceResult(3, masks, np.ones(1, np.float32), masks.astype(np.float32)))
    assert np.argwhere(assembler.label).tolist() == [list(voxel)]
    assert assembler.label[voxel] == 5


# --------------------------------------------------------------------------------------------
# what is recorded: per-slice requests, the npz prompt table, the baseline's jitter


def test_requests_group_prompts_by_slice_in_order():
    prompts = [
        Prompt(2, 1, 7, (1.0, 2.0, 3.0, 4.0)),
        Prompt(1, 0, 3, (5.0, 6.0, 7.0, 8.0)),
        Prompt(1, 2, 7, (9.0, 10.0, 11.0, 12.0)),
    ]
    requests = group_by_slice(prompts)
    assert [r.index for r in requests] == [3, 7]
    assert requests[1].boxes.tolist() == [[1, 2, 3, 4], [9, 10, 11, 12]]
    assert requests[1].classes.tolist() == [2, 1] and requests[1].parts.tolist() == [1, 2]
    assert requests[1].boxes.dtype == np.float64 and requests[1].classes.dtype == np.int64


def test_prompt_table_of_nothing_and_of_two_slices():
    empty = prompt_table([])
    assert set(empty) == {"slice", "class_id", "part", "box", "score"}
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {
        "slice": ((0,), np.int64),
        "class_id": ((0,), np.int64),
        "part": ((0,), np.int64),
        "box": ((0, 4), np.float64),
        "score": ((0,), np.float32),
    }
    a = SliceRequest(3, np.array([[1, 2, 3, 4]]), np.array([5], np.int32), np.array([0], np.int32))
    b = SliceRequest(8, np.array([[5, 6, 7, 8], [9, 9, 9, 9]]), np.array([1, 5]), np.array([2, 0]))
    table = prompt_table([(a, np.array([0.5])), (b, np.array([0.25, 0.75]))])
    assert table["slice"].tolist() == [3, 8, 8] and table["slice"].dtype == np.int64
    assert table["class_id"].tolist() == [5, 1, 5] and table["class_id"].dtype == np.int64
    assert table["part"].tolist() == [0, 2, 0] and table["part"].dtype == np.int64
    assert table["box"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
    assert table["box"].dtype == np.float64
    assert table["score"].tolist() == [0.5, 0.25, 0.75] and table["score"].dtype == np.float32


def test_organ_prompts_skip_missing_organs_and_boxes_outside():
    inside = Box3D((30, 100, 4), (150, 300, 5))
    outside = Box3D((30, 100, 40), (150, 300, 45))  # beyond the 20 slices
    organs = {
        1: OrganBoxes(1, (outside, inside), np.zeros((2, 6, 3))),
        3: OrganBoxes(3, (inside,), np.zeros((1, 6, 3))),
    }
    prompts = organ_prompts(organs, (300, 410, 20), 2, classes=[9, 1, 3], margin=0)
    assert [(p.class_id, p.part, p.index) for p in prompts] == [
        (1, 1, 4), (1, 1, 5), (3, 0, 4), (3, 0, 5)
    ]  # fmt: skip
    assert prompts[0].box == (102.0, 250.0, 512.0, 749.0)  # no margin
    default = organ_prompts(organs, (300, 410, 20), 2)  # the order of ``organs``
    assert [p.class_id for p in default] == [1, 1, 3, 3]


# Published prompts on slices along axis 0 and 1 (rows follow the 410-voxel axis, columns the
# 300-voxel one). Organ 5: i/j/k 4..9 along the slice axis, in-plane as the WIDE_300 case;
# organ 2 starts 2 slices before the image and covers the whole plane: columns 0 -> 0,
# 299 -> 299*1024/300 = 1020.59 -> 1021; rows 0 -> 0, 409 -> 409*1024/410 = 1021.50 -> 1022;
# margin 10, not clipped: (-10, -10, 1031, 1032). Slice range: z_min = max(0, min(4, -2)) = 0,
# z_max = min(20, max(9, 3)) = 9 (exclusive): organ 5 on 4..8, organ 2 on 0..3.
PUBLISHED_CASES = [
    ((20, 300, 410), 0, lambda s, a, b: (s, a, b)),
    ((300, 20, 410), 1, lambda s, a, b: (a, s, b)),
]


@pytest.mark.parametrize("shape,axis,place", PUBLISHED_CASES)
def test_published_prompts_on_non_square_slices_in_organ_or_class_order(shape, axis, place):
    five = Box3D(place(4, 30, 100), place(9, 150, 300))
    two = Box3D(place(-2, 0, 0), place(3, 299, 409))
    none = np.zeros((1, 6, 3))
    organs = {
        5: OrganBoxes(5, (five,), none),
        7: OrganBoxes(7, (), np.zeros((0, 6, 3)), inside=False),  # outside the image
        2: OrganBoxes(2, (two.clip(shape),), none, raw_boxes=(two,)),
    }
    expect_five = [(5, 0, s, WIDE_300) for s in range(4, 9)]
    expect_two = [(2, 0, s, (-10.0, -10.0, 1031.0, 1032.0)) for s in range(0, 4)]

    def rows(prompts):
        return [(p.class_id, p.part, p.index, p.box) for p in prompts]

    assert rows(published_prompts(organs, shape, axis)) == expect_five + expect_two
    assert rows(published_prompts(organs, shape, axis, [9, 2, 7, 5])) == expect_two + expect_five
    # organ 5 alone: z_min = 4, z_max = 9, margin 0 -> the bare scaled extent
    alone = published_prompts(organs, shape, axis, [5], margin=0)
    assert rows(alone) == [(5, 0, s, (102.0, 250.0, 512.0, 749.0)) for s in range(4, 9)]
    assert published_prompts(organs, shape, axis, [7, 9]) == []


def test_baseline_jitter_pushes_each_side_out_independently():
    # along axis 0 of a (6, 300, 410) label: columns follow axis 1, rows axis 2
    label = np.zeros((6, 300, 410), np.int32)
    label[2:4, 30:151, 100:301] = 4
    prompts = label_prompts(label, [4], 0, np.random.default_rng(5))
    twin = np.random.default_rng(5)  # the same draws: 4 per slice, sides x0, y0, x1, y1
    for prompt, index in zip(prompts, [2, 3], strict=True):
        j = twin.integers(0, 20, size=4)
        assert (prompt.class_id, prompt.part, prompt.index) == (4, 0, index)
        assert prompt.box == (102.0 - j[0], 250.0 - j[1], 512.0 + j[2], 749.0 + j[3])


@pytest.mark.parametrize(
    "classes,dtype",
    [
        ([], np.uint8),
        ([255], np.uint8),
        ([256], np.int16),
        ([3, 32767], np.int16),
        ([32768], np.int32),
    ],
)
def test_label_map_dtype_holds_the_largest_class(classes, dtype):
    assert LabelAssembler((2, 3, 4), 2, classes).label.dtype == dtype


def test_organ_outside_its_mask_never_wins_a_pixel():
    # pixel (0, 0): organ 1 is not there (its confidence 0.9 must not count), organ 2 is (0.2)
    masks = np.array([[[False, True]], [[True, True]]])
    probs = np.array([[[0.9, 0.9]], [[0.2, 0.1]]], np.float32)
    request = SliceRequest(0, np.zeros((2, 4)), np.array([1, 2]), np.array([0, 0]))
    assembler = LabelAssembler((2, 1, 1), 2, [1, 2])
    labels = assembler.slice_labels(request, SliceResult(0, masks, np.ones(2), probs))
    assert labels.tolist() == [[2, 1]]


def test_assembler_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"overlap must be one of \('score', 'later'\), not 'max'"):
        LabelAssembler((2, 2, 2), 2, [1], overlap="max")
    request = SliceRequest(3, np.zeros((1, 4)), np.array([1]), np.array([0]))
    result = SliceResult(4, np.zeros((1, 2, 2), bool), np.ones(1), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="result of slice 4 given for slice 3"):
        LabelAssembler((2, 2, 5), 2, [1]).add(request, result)
