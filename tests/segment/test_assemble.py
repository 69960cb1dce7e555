"""segment.assemble: slice prompts (margin, clipping, inclusive ranges), overlap rules, layout."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ORIENTATIONS, make_ct, reorient

from medlsam import preprocess as pp
from medlsam.boxes import Box3D, OrganBoxes
from medlsam.io import Volume
from medlsam.segment import SliceRequest, SliceResult
from medlsam.segment.assemble import (
    LabelAssembler,
    box_prompt,
    group_by_slice,
    gt_slice_filter,
    label_prompts,
    organ_prompts,
)


def test_box_prompt_scales_adds_margin_and_includes_both_end_slices():
    shape = (200, 100, 30)  # slices (H, W) = (100, 200) along axis 2
    slices, box = box_prompt(Box3D((50, 20, 4), (99, 60, 9)), shape, axis=2)
    assert list(slices) == [4, 5, 6, 7, 8, 9]
    # x follows i (W = 200): 50 * 1024 / 200 = 256, 99 * 1024 / 200 = 506.88 -> 507
    # y follows j (H = 100): 20 * 1024 / 100 = 204.8 -> 205, 60 * 1024 / 100 = 614.4 -> 614
    assert box == (246.0, 195.0, 517.0, 624.0)


def test_box_prompt_is_clipped_to_the_frame():
    shape = (200, 64, 10)  # x follows i (W = 200), y follows j (H = 64)
    box = Box3D((0, 1, 0), (199, 63, 2))
    _, clipped = box_prompt(box, shape, axis=2)
    # published, unclipped: x -10 .. 1019 + 10 = 1029; y 16 - 10 = 6 .. 1008 + 10 = 1018
    assert clipped == (0.0, 6.0, 1024.0, 1018.0)
    _, no_margin = box_prompt(box, shape, axis=2, margin=0)
    assert no_margin == (0.0, 16.0, 1019.0, 1008.0)


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[::5])
def test_prompt_box_covers_the_organ_on_its_slices_in_any_orientation(perm, flips):
    image, label = make_ct(shape=(30, 26, 12))
    label = reorient(label, perm, flips)
    axis = label.slice_axis()
    box = Box3D.from_mask(label.data == 1)
    slices, (x0, y0, x1, y1) = box_prompt(box, label.shape, axis)
    row_axis, col_axis = pp.slice_frame(label.shape, axis)
    h, w = label.shape[row_axis], label.shape[col_axis]
    present = np.nonzero((label.data == 1).any(axis=tuple(a for a in range(3) if a != axis)))[0]
    assert list(slices) == list(range(present[0], present[-1] + 1))
    for s in present:
        rows, cols = np.nonzero(pp.slice_2d(label.data, axis, int(s)) == 1)
        assert x0 <= cols.min() * 1024 / w and cols.max() * 1024 / w <= x1
        assert y0 <= rows.min() * 1024 / h and rows.max() * 1024 / h <= y1


def test_spl_sub_boxes_share_a_slice_and_group_into_one_request():
    organs = {
        3: OrganBoxes(
            3, (Box3D((2, 2, 0), (9, 9, 4)), Box3D((3, 3, 4), (8, 8, 7))), np.zeros((2, 6, 3))
        ),
        1: OrganBoxes(1, (Box3D((0, 0, 6), (5, 5, 6)),), np.zeros((1, 6, 3))),
        2: OrganBoxes(2, (), np.zeros((0, 6, 3)), inside=False),
    }
    prompts = organ_prompts(organs, (12, 12, 8), axis=2, classes=[1, 2, 3])
    shared = [p for p in prompts if p.index == 4]
    assert sorted(p.part for p in shared) == [0, 1] and {p.class_id for p in shared} == {3}
    requests = group_by_slice(prompts)
    assert [r.index for r in requests] == list(range(8))
    by_index = {r.index: r for r in requests}
    assert sorted(by_index[6].classes.tolist()) == [1, 3]
    assert len(by_index[4]) == 2 and by_index[4].boxes.shape == (2, 4)
    assert len(prompts) == 5 + 4 + 1


def test_manual_baseline_jitters_each_side_by_0_to_19_and_is_seeded():
    label = np.zeros((64, 64, 6), np.int32)
    label[20:40, 10:30, 1:4] = 2
    label[0:64, 0:5, 2] = 2
    prompts = label_prompts(label, [2], 2, np.random.default_rng(5))
    again = label_prompts(label, [2], 2, np.random.default_rng(5))
    assert prompts == again and sorted({p.index for p in prompts}) == [1, 2, 3]
    tight = {1: (320.0, 160.0, 624.0, 464.0)}  # cols 20..39 -> x, rows 10..29 -> y
    x0, y0, x1, y1 = prompts[0].box
    tx0, ty0, tx1, ty1 = tight[1]
    grow = [tx0 - x0, ty0 - y0, x1 - tx1, y1 - ty1]
    assert all(0 <= g <= 19 for g in grow)
    many = label_prompts(label, [2], 2, np.random.default_rng(0))
    boxes = np.array([p.box for p in many if p.index == 2])
    assert boxes.min() >= 0 and boxes.max() <= 1024


def test_gt_slice_filter_keeps_slices_above_threshold():
    label = np.zeros((8, 8, 5), np.int32)
    label[:2, :2, 1] = 1  # 4 voxels
    label[:4, :4, 3] = 2  # 16 voxels
    label[:, :, 4] = 9  # not a requested class
    assert gt_slice_filter(label, [1, 2], 2, 4) == {3}
    assert gt_slice_filter(label, [1, 2], 2, 0) == {1, 3}


def _result(index, masks, probs) -> SliceResult:
    masks = np.asarray(masks, bool)
    return SliceResult(index, masks, np.ones(len(masks), np.float32), np.asarray(probs, np.float32))


def _request(index, classes, parts) -> SliceRequest:
    n = len(classes)
    return SliceRequest(index, np.zeros((n, 4)), np.asarray(classes), np.asarray(parts))


def test_overlap_rules_for_sub_boxes_of_one_organ():
    a = np.zeros((4, 4), bool)
    a[:, :2] = True
    b = np.zeros((4, 4), bool)
    b[:2, :] = True
    request = _request(0, [5, 5], [0, 1])
    result = _result(0, [a, b], [a * 0.9, b * 0.7])
    score = LabelAssembler((4, 4, 1), 2, [5], "score").slice_labels(request, result)
    later = LabelAssembler((4, 4, 1), 2, [5], "later").slice_labels(request, result)
    np.testing.assert_array_equal(score == 5, a | b)
    np.testing.assert_array_equal(later == 5, b)


def test_organs_overlapping_take_the_highest_probability_and_first_on_ties():
    one = np.ones((3, 3), bool)
    p1 = np.full((3, 3), 0.6)
    p2 = np.full((3, 3), 0.6)
    p2[0, 0] = 0.9
    assembler = LabelAssembler((3, 3, 1), 2, [7, 4])
    labels = assembler.slice_labels(_request(0, [4, 7], [0, 0]), _result(0, [one, one], [p2, p1]))
    assert labels[0, 0] == 4  # higher probability
    assert (labels.ravel()[1:] == 7).all()  # tie: 7 comes first in fg_class


@pytest.mark.parametrize("axis_perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_assembler_writes_slices_where_slice_2d_reads_them(axis_perm):
    base = Volume(np.zeros((6, 5, 4), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    volume = reorient(base, axis_perm, (False, True, False))
    axis = volume.slice_axis()
    rng = np.random.default_rng(0)
    truth = rng.random(volume.shape) > 0.5
    assembler = LabelAssembler(volume.shape, axis, [3])
    for s in range(volume.shape[axis]):
        plane = pp.slice_2d(truth, axis, s)
        assembler.add(_request(s, [3], [0]), _result(s, [plane], [plane * 0.9]))
    np.testing.assert_array_equal(assembler.label == 3, truth)
    assert assembler.label.dtype == np.uint8
