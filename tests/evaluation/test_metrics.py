"""Metrics on hand-made masks with anisotropic spacing, checked by hand and against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medlsam.boxes import Box3D
from medlsam.evaluation import metrics

SPACING = (2.0, 1.0, 0.5)  # mm along axes 0, 1, 2


def _line(k_stop: int) -> np.ndarray:
    """A one-voxel-thin line at (i=1, j=1), k = 0 .. k_stop-1: every voxel is a surface voxel."""
    mask = np.zeros((3, 3, 8), bool)
    mask[1, 1, :k_stop] = True
    return mask


def test_line_by_hand_separates_the_two_hd95_definitions():
    gt, pred = _line(4), _line(6)
    # DSC = 2*4 / (4 + 6) = 0.8
    assert metrics.dice(pred, gt) == pytest.approx(0.8)
    # pred->gt: k=0..3 at 0 mm, k=4 at 1*0.5 = 0.5 mm, k=5 at 2*0.5 = 1.0 mm; gt->pred: 4 x 0.
    # monai: q95 of [0,0,0,0,0.5,1.0] (linear, position 0.95*5 = 4.75) = 0.5 + 0.75*0.5 = 0.875;
    #        q95 of gt->pred = 0; max = 0.875.
    assert metrics.hd95(pred, gt, SPACING, "monai") == pytest.approx(0.875)
    # pooled: 10 values, 8 zeros, 0.5, 1.0; position 0.95*9 = 8.55 -> 0.5 + 0.55*0.5 = 0.775.
    assert metrics.hd95(pred, gt, SPACING, "pooled") == pytest.approx(0.775)
    # NSD at 0.6 mm: pred within 5 of 6, gt within 4 of 4 -> 9/10.
    assert metrics.nsd(pred, gt, SPACING, tolerance_mm=0.6) == pytest.approx(0.9)
    # The same line along an axis with 2 mm spacing doubles every distance of axis 2 by 4.
    swapped = (0.5, 1.0, 2.0)
    assert metrics.hd95(pred, gt, swapped, "monai") == pytest.approx(4 * 0.875)


def _cube(extend_axis: int | None = None) -> np.ndarray:
    """A 3x3x3 cube at [1:4]^3 in a 6^3 image, optionally one voxel longer along an axis."""
    mask = np.zeros((6, 6, 6), bool)
    stop = [4, 4, 4]
    if extend_axis is not None:
        stop[extend_axis] = 5
    mask[1 : stop[0], 1 : stop[1], 1 : stop[2]] = True
    return mask


def test_cube_by_hand_uses_surface_voxels_and_spacing():
    gt = _cube()
    pred = _cube(extend_axis=2)  # 3x3x4 = 36 voxels
    # DSC = 2*27 / (27 + 36) = 6/7.
    assert metrics.dice(pred, gt) == pytest.approx(6 / 7)
    d = metrics.surface_distances(pred, gt, SPACING)
    # Surfaces (voxels minus 6-neighbour erosion): gt 27-1 = 26, pred 36-2 = 34.
    assert d.pred_to_gt.size == 34 and d.gt_to_pred.size == 26
    # pred's 9-voxel end face k=4 lies one voxel (0.5 mm) beyond gt's face k=3; its other 25
    # surface voxels are gt surface voxels. gt's face centre (2,2,3) is inside pred; its nearest
    # pred surface voxel is (2,2,4), 0.5 mm away; gt's other 25 surface voxels are pred's.
    assert sorted(d.pred_to_gt.tolist()) == [0.0] * 25 + [0.5] * 9
    assert sorted(d.gt_to_pred.tolist()) == [0.0] * 25 + [0.5]
    assert metrics.hd95(pred, gt, SPACING, "monai") == pytest.approx(0.5)
    assert metrics.hd95(pred, gt, SPACING, "pooled") == pytest.approx(0.5)
    # NSD at 0.4 mm: (25 + 25) / 60; at 0.5 mm everything is within.
    assert metrics.nsd(pred, gt, SPACING, 0.4) == pytest.approx(50 / 60)
    assert metrics.nsd(pred, gt, SPACING, 0.5) == pytest.approx(1.0)


def test_cube_extended_along_the_coarse_axis():
    gt = _cube()
    pred = _cube(extend_axis=0)  # the extra face is 2 mm away (axis 0 spacing)
    # pred->gt: 25 x 0 and 9 x 2.0 mm. gt->pred: 25 x 0, and gt's face centre (3,2,2) is
    # 0.5 mm from the pred surface voxel (3,2,1) along axis 2 (not 2 mm along axis 0).
    d = metrics.surface_distances(pred, gt, SPACING)
    assert sorted(d.pred_to_gt.tolist()) == [0.0] * 25 + [2.0] * 9
    assert sorted(d.gt_to_pred.tolist()) == [0.0] * 25 + [0.5]
    # monai: q95 of 34 values (position 31.35) = 2.0; pooled: 60 values, position 56.05,
    # sorted[56] = sorted[57] = 2.0.
    assert metrics.hd95(pred, gt, SPACING, "monai") == pytest.approx(2.0)
    assert metrics.hd95(pred, gt, SPACING, "pooled") == pytest.approx(2.0)
    # NSD at 1 mm: (25 + 26) / 60 = 0.85.
    assert metrics.nsd(pred, gt, SPACING, 1.0) == pytest.approx(0.85)


def test_empty_masks():
    empty = np.zeros((4, 4, 4), bool)
    full = _cube()[:4, :4, :4]
    assert math.isnan(metrics.dice(empty, empty))
    assert metrics.dice(empty, full) == 0.0 and metrics.dice(full, empty) == 0.0
    assert metrics.nsd(empty, full, SPACING) == 0.0
    assert math.isnan(metrics.nsd(empty, empty, SPACING))
    assert math.isnan(metrics.hd95(empty, full, SPACING))
    assert math.isnan(metrics.hd95(full, empty, SPACING, "pooled"))
    m = metrics.organ_metrics(empty, full, SPACING)
    assert (m.gt_voxels, m.pred_voxels, m.dsc, m.nsd) == (int(full.sum()), 0, 0.0, 0.0)
    assert math.isnan(m.hd95_monai) and math.isnan(m.hd95_pooled)
    m = metrics.organ_metrics(empty, empty, SPACING)
    assert math.isnan(m.dsc) and m.gt_voxels == 0


def test_identical_masks_and_image_border():
    mask = np.zeros((5, 6, 7), bool)
    mask[0:3, 2:6, 3:7] = True  # touches three image borders
    m = metrics.organ_metrics(mask, mask, SPACING)
    assert (m.dsc, m.nsd, m.hd95_monai, m.hd95_pooled) == (1.0, 1.0, 0.0, 0.0)


def test_bad_arguments():
    a = np.zeros((3, 3, 3), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.dice(a, np.zeros((3, 3, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        metrics.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="HD95 definition"):
        metrics.hd95(a, a, SPACING, "medpy")


def _random_pairs(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        shape = tuple(int(s) for s in rng.integers(5, 16, 3))
        gt = ndimage.binary_dilation(rng.random(shape) < 0.03, iterations=int(rng.integers(0, 3)))
        pred = ndimage.binary_dilation(rng.random(shape) < 0.03, iterations=int(rng.integers(0, 3)))
        if len(out) % 3 == 0:
            pred = gt.copy()
            pred[int(rng.integers(0, shape[0]))] = False
        if gt.any() and pred.any():
            out.append((pred, gt, tuple(float(s) for s in rng.uniform(0.3, 3.0, 3))))
    return out


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    for pred, gt, spacing in _random_pairs(12):
        p = torch.from_numpy(pred[None, None].astype(np.float32))
        g = torch.from_numpy(gt[None, None].astype(np.float32))
        ref_hd = monai_metrics.compute_hausdorff_distance(
            p, g, percentile=95, spacing=list(spacing)
        )
        ref_nsd = monai_metrics.compute_surface_dice(
            p, g, class_thresholds=[1.5], spacing=list(spacing), include_background=True
        )
        ref_dsc = monai_metrics.compute_dice(p, g, include_background=True)
        m = metrics.organ_metrics(pred, gt, spacing, tolerance_mm=1.5)
        assert m.hd95_monai == pytest.approx(float(ref_hd), abs=1e-4)
        assert m.nsd == pytest.approx(float(ref_nsd), abs=1e-6)
        assert m.dsc == pytest.approx(float(ref_dsc), abs=1e-6)


def test_pooled_matches_medpy_style_distance_transform():
    cross = ndimage.generate_binary_structure(3, 1)

    def directed(a, b, spacing):  # medpy's __surface_distances, connectivity 1
        border_a = a ^ ndimage.binary_erosion(a, structure=cross)
        border_b = b ^ ndimage.binary_erosion(b, structure=cross)
        return ndimage.distance_transform_edt(~border_b, sampling=spacing)[border_a]

    for pred, gt, spacing in _random_pairs(8, seed=5):
        ref = np.percentile(
            np.hstack([directed(pred, gt, spacing), directed(gt, pred, spacing)]), 95
        )
        assert metrics.hd95(pred, gt, spacing, "pooled") == pytest.approx(ref, abs=1e-9)


def test_score_label_maps_all_organs_at_once():
    gt = np.zeros((8, 9, 10), np.int32)
    gt[1:4, 1:4, 1:4] = 1
    gt[5:7, 5:8, 5:9] = 2
    gt[0, 0, 9] = 7  # an extra class in the label
    pred = gt.copy()
    pred[pred == 7] = 0
    pred[1:4, 1:4, 4] = 1  # organ 1 one voxel longer along axis 2
    pred[5:7, 5:8, 5:9] = 0  # organ 2 missed
    pred[7, 0, 0] = 3  # false positive of organ 3
    scores = metrics.score_label_maps(pred, gt, SPACING, classes=[1, 2, 3, 4])
    assert scores[1].dsc == pytest.approx(6 / 7) and scores[1].hd95_monai == pytest.approx(0.5)
    assert (scores[2].dsc, scores[2].nsd, scores[2].pred_voxels) == (0.0, 0.0, 0)
    assert (scores[3].dsc, scores[3].gt_voxels, scores[3].pred_voxels) == (0.0, 0, 1)
    assert math.isnan(scores[4].dsc) and scores[4].gt_voxels == 0
    every = metrics.score_label_maps(pred, gt, SPACING)
    assert sorted(every) == [1, 2, 3, 7]
    # Fortran-ordered input (as NIfTI arrives) gives the same numbers.
    f_scores = metrics.score_label_maps(np.asfortranarray(pred), np.asfortranarray(gt), SPACING)
    assert f_scores == every


def test_bounding_boxes_and_box_iou():
    label = np.zeros((6, 7, 8), np.int32)
    label[1:3, 2:5, 3:8] = 4
    label[5, 6, 0] = 2
    for arr in (label, np.asfortranarray(label)):
        boxes = metrics.label_bounding_boxes(arr)
        assert set(boxes) == {2, 4}
        assert metrics.slices_to_box(boxes[4]) == Box3D((1, 2, 3), (2, 4, 7))
    # Inclusive voxel boxes: 2x3x5 = 30 and 2x3x4 = 24 voxels, overlap 2x3x4 = 24 -> 24/30.
    a, b = Box3D((1, 2, 3), (2, 4, 7)), Box3D((1, 2, 4), (2, 4, 7))
    assert metrics.box_iou(a, b) == pytest.approx(24 / 30)
    assert metrics.box_iou(a, Box3D((3, 0, 0), (4, 1, 1))) == 0.0


def test_organ_metrics_name_their_hd95():
    m = metrics.OrganMetrics(10, 12, 0.5, 0.75, 3.0, 2.5)
    assert m.hd95() == 3.0 and m.hd95("monai") == 3.0 and m.hd95("pooled") == 2.5
    with pytest.raises(ValueError, match=r"HD95 definition 'max': expected one of"):
        m.hd95("max")


def test_bounding_boxes_of_empty_negative_and_very_large_ids():
    assert metrics.label_bounding_boxes(np.zeros((0, 3, 4), np.int32)) == {}
    assert metrics.label_bounding_boxes(np.zeros((3, 3, 4), np.int32)) == {}
    assert metrics.label_bounding_boxes(np.full((3, 3, 4), -2, np.int32)) == {}
    label = np.zeros((6, 7, 8), np.int64)
    label[1:3, 2:5, 3:8] = 200_000  # ids above 100000 are boxed one by one
    label[5, 6, 0] = 1
    label[0, 0, 0] = -1  # negative ids are not organs
    for arr in (label, np.asfortranarray(label)):
        boxes = metrics.label_bounding_boxes(arr)
        assert sorted(boxes) == [1, 200_000]
        assert all(type(k) is int for k in boxes)
        assert boxes[200_000] == (slice(1, 3), slice(2, 5), slice(3, 8))
        assert boxes[1] == (slice(5, 6), slice(6, 7), slice(0, 1))
    # one voxel, and a map whose only organ is 1
    assert metrics.label_bounding_boxes(np.full((1, 1, 1), 3)) == {3: (slice(0, 1),) * 3}
    only_one = np.zeros((2, 3, 4), np.int16)
    only_one[1, 2, 3] = 1
    assert metrics.label_bounding_boxes(only_one) == {1: (slice(1, 2), slice(2, 3), slice(3, 4))}
    # exactly 100000 still takes the one-pass path
    small = np.zeros((2, 2, 2), np.int32)
    small[1, 1, 1] = 100_000
    assert metrics.label_bounding_boxes(small) == {100_000: (slice(1, 2),) * 3}


def test_default_nsd_tolerance_is_2_mm_and_crops_cover_both_masks():
    gt, pred = _line(4), _line(6)
    spacing = (1.0, 1.0, 1.25)
    # pred->gt: k 0..3 at 0, k=4 at 1.25 mm, k=5 at 2.5 mm; gt->pred: 4 x 0. Within 2 mm: 9/10
    assert metrics.nsd(pred, gt, spacing) == pytest.approx(0.9)
    m = metrics.organ_metrics(pred, gt, spacing)
    assert m.nsd == pytest.approx(0.9) and (m.gt_voxels, m.pred_voxels) == (4, 6)
    scores = metrics.score_label_maps(pred.astype(np.int32), gt.astype(np.int32), spacing)
    assert scores[1].nsd == pytest.approx(0.9)
    # a prediction far outside the reference's box: pred->gt 4 voxels of 1 mm along axis 0
    far_gt = np.zeros((9, 3, 3), bool)
    far_gt[0:2, 1, 1] = True
    far_pred = np.zeros((9, 3, 3), bool)
    far_pred[0:6, 1, 1] = True
    d = metrics.surface_distances(far_pred, far_gt)
    assert sorted(d.pred_to_gt.tolist()) == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    for m in (metrics.organ_metrics(far_pred, far_gt), metrics.organ_metrics(far_gt, far_pred)):
        # monai: q95 of [0, 0, 1, 2, 3, 4] at position 4.75 = 3.75 (the other direction is 0)
        assert m.hd95_monai == pytest.approx(3.75) and m.dsc == pytest.approx(4 / 8)


def test_both_masks_empty_gives_zero_counts_and_nan_metrics():
    empty = np.zeros((3, 4, 5), bool)
    m = metrics.organ_metrics(empty, empty, SPACING)
    assert (m.gt_voxels, m.pred_voxels) == (0, 0)
    assert all(math.isnan(v) for v in (m.dsc, m.nsd, m.hd95_monai, m.hd95_pooled))
    d = metrics.surface_distances(empty, empty, SPACING)
    assert d.pred_to_gt.size == 0 and d.gt_to_pred.size == 0
    assert math.isnan(metrics.hd95_from_distances(d)) and math.isnan(
        metrics.nsd_from_distances(d, 1)
    )
    absent = metrics.score_label_maps(empty.astype(np.int32), empty.astype(np.int32), SPACING, [5])
    m = absent[5]
    assert (m.gt_voxels, m.pred_voxels) == (0, 0)
    assert all(math.isnan(v) for v in (m.dsc, m.nsd, m.hd95_monai, m.hd95_pooled))


def test_single_voxel_masks_by_hand():
    gt = np.zeros((3, 3, 6), bool)
    gt[1, 1, 1:4] = True  # a line of 3 voxels, all on its surface
    pred = np.zeros_like(gt)
    pred[1, 1, 1] = True  # one voxel, shared with gt's surface
    # pred->gt: [0]; gt->pred: 0, 1, 2 (1 mm voxels)
    # monai: max(0, q95 of [0, 1, 2] at position 1.9 = 1.9) = 1.9;
    # pooled: [0, 0, 1, 2] at position 2.85 = 1 + 0.85 = 1.85; NSD at 1.5 mm: (1 + 2) / 4
    for p, g in ((pred, gt), (gt, pred)):
        m = metrics.organ_metrics(p, g, tolerance_mm=1.5)
        assert m.dsc == pytest.approx(0.5) and m.nsd == pytest.approx(0.75)
        assert m.hd95_monai == pytest.approx(1.9) and m.hd95_pooled == pytest.approx(1.85)
        assert metrics.hd95(p, g) == pytest.approx(1.9)
        assert metrics.hd95(p, g, definition="pooled") == pytest.approx(1.85)
    # one voxel against nothing: DSC and NSD 0, HD95 undefined
    m = metrics.organ_metrics(pred, np.zeros_like(gt))
    assert (m.dsc, m.nsd, m.gt_voxels, m.pred_voxels) == (0.0, 0.0, 0, 1)
    assert math.isnan(m.hd95_monai) and math.isnan(m.hd95_pooled)


def test_surface_distances_to_an_empty_mask_are_infinite():
    full = np.zeros((4, 4, 4), bool)
    full[1:3, 1:3, 1:3] = True  # 8 voxels, all on the surface
    empty = np.zeros_like(full)
    d = metrics.surface_distances(full, empty)
    assert d.pred_to_gt.dtype == np.float64 and d.pred_to_gt.tolist() == [math.inf] * 8
    assert d.gt_to_pred.size == 0
    d = metrics.surface_distances(empty, full)
    assert d.pred_to_gt.size == 0 and d.gt_to_pred.tolist() == [math.inf] * 8


def test_hd95_and_nsd_of_hand_made_distances():
    def dist(a, b):
        return metrics.SurfaceDistances(np.array(a, float), np.array(b, float))

    assert math.isnan(metrics.hd95_from_distances(dist([1.0, math.inf], [0.0])))
    assert math.isnan(metrics.hd95_from_distances(dist([1.0], [math.inf])))
    assert math.isnan(metrics.hd95_from_distances(dist([], [1.0])))
    assert math.isnan(metrics.hd95_from_distances(dist([1.0], []), "pooled"))
    assert metrics.hd95_from_distances(dist([1.0], [3.0])) == 3.0
    assert metrics.hd95_from_distances(dist([1.0], [3.0]), "pooled") == pytest.approx(2.9)
    assert metrics.nsd_from_distances(dist([0.5], []), 1.0) == 1.0
    assert metrics.nsd_from_distances(dist([], [2.0]), 1.0) == 0.0
    assert math.isnan(metrics.nsd_from_distances(dist([], []), 1.0))


def test_score_label_maps_goes_on_after_an_absent_organ():
    gt = np.zeros((4, 4, 4), np.int32)
    gt[1:3, 1:3, 1:3] = 1
    scores = metrics.score_label_maps(gt, gt, (1.0, 1.0, 1.0), classes=[9, 1])
    assert list(scores) == [9, 1] and scores[1].dsc == 1.0 and math.isnan(scores[9].dsc)
