"""medlsam.segment: registry, SAM checkpoints, batched SAM vs SamPredictor, classic."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ct_testdata_path, make_ct
from infer_helpers import tiny_sam
from segment_anything import SamPredictor, sam_model_registry

from medlsam import preprocess as pp
from medlsam.config import SEGMENTER_NAMES, VitConfig
from medlsam.errors import CheckpointError, InputError
from medlsam.io import read_image, read_label
from medlsam.segment import SEGMENTERS, SamSegmenter, SliceRequest, build_segmenter
from medlsam.segment.base import nearest_index
from medlsam.segment.classic import ClassicSegmenter
from medlsam.segment.fast import accelerate_image_encoder
from medlsam.segment.sam import build_sam_model, check_sam_state, read_sam_state_dict

# slice index -> boxes (XYXY, 1024 frame), organ ids and sub-box numbers
REQUESTS = {
    10: ([[200, 220, 640, 700], [150, 100, 500, 420], [180, 240, 660, 720]], [1, 2, 1], [0, 0, 1]),
    13: ([[0, 0, 1024, 1024]], [2], [0]),
    14: ([[300, 300, 700, 650], [310, 280, 690, 640]], [1, 1], [0, 1]),
}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


def _requests() -> list[SliceRequest]:
    return [
        SliceRequest(k, np.array(b, float), np.array(c), np.array(p))
        for k, (b, c, p) in REQUESTS.items()
    ]


def _published(sam, image: np.ndarray, box: np.ndarray, out_hw) -> tuple[np.ndarray, float]:
    """The published per-box call: set_image (encoder) then predict, sigmoid > 0.5 route."""
    predictor = SamPredictor(sam)
    predictor.set_image(image)  # published: the encoder runs again for every box
    _, iou, low = predictor.predict(box=box, multimask_output=False)
    prob = torch.sigmoid(torch.from_numpy(low)[None])
    prob = F.interpolate(prob, size=(1024, 1024), mode="bilinear", align_corners=False)[0, 0]
    rows = (np.arange(out_hw[0]) * 1024) // out_hw[0]  # cv2 INTER_NEAREST: floor(r * 1024 / H)
    cols = (np.arange(out_hw[1]) * 1024) // out_hw[1]
    return prob.numpy()[rows][:, cols], float(iou[0])


def test_registry_matches_config_names():
    assert set(SEGMENTERS) == set(SEGMENTER_NAMES)


def test_nearest_index_is_opencv_floor():
    np.testing.assert_array_equal(nearest_index(4), [0, 256, 512, 768])
    np.testing.assert_array_equal(nearest_index(3), [0, 341, 682])


def test_slice_image_equals_published_window_and_resize():
    image, _ = make_ct(shape=(30, 26, 8))
    seg = SamSegmenter(tiny_sam())
    lo, hi = (float(np.clip(v, -500, 1000)) for v in (image.data.min(), image.data.max()))
    ours = seg.slice_image(image, 2, 3, lo, hi)
    expected = pp.sam_slice(pp.slice_2d(pp.sam_window(image.data), 2, 3))
    np.testing.assert_array_equal(ours, expected)


def test_batched_path_matches_sam_predictor_box_by_box():
    image, _ = make_ct()
    sam = tiny_sam()
    seg = SamSegmenter(sam)
    requests = _requests()
    results = list(seg.segment(image, requests))
    out_hw = pp.slice_2d(image.data, 2, 0).shape
    lo, hi = (float(np.clip(v, -500, 1000)) for v in (image.data.min(), image.data.max()))
    mismatched, checked = 0, 0
    for request, result in zip(requests, results, strict=True):
        assert result.index == request.index
        assert result.masks.shape == (len(request), *out_hw)
        slice_image = seg.slice_image(image, 2, request.index, lo, hi)
        for b, box in enumerate(request.boxes):
            prob, iou = _published(sam, slice_image, box, out_hw)
            # batched decoding reorders float sums: agree to 1e-5; a mask pixel may differ
            # only where the published probability is within 1e-5 of the 0.5 threshold
            np.testing.assert_allclose(result.probs[b], prob, atol=1e-5)
            assert abs(result.scores[b] - iou) < 1e-5
            certain = np.abs(prob - 0.5) > 1e-5
            mismatched += int((result.masks[b] != (prob > 0.5))[certain].sum())
            checked += int(certain.sum())
            assert 0 < result.masks[b].sum() < result.masks[b].size or b == 0
    assert mismatched == 0 and checked > 0
    # least work: one encoder pass per distinct slice, one decoder call per slice
    assert seg.stats.encoder_calls == len(REQUESTS) == seg.stats.decoder_calls
    assert seg.stats.boxes == sum(len(r) for r in requests)


def test_encoder_batches_slices_and_streams():
    image, _ = make_ct()
    seg = SamSegmenter(tiny_sam(), batch_size=2)
    results = list(seg.segment(image, _requests()))
    ref = list(SamSegmenter(tiny_sam(), batch_size=1).segment(image, _requests()))
    assert seg.stats.encoder_calls == 3 and seg.stats.encoder_batches == 2
    for a, b in zip(results, ref, strict=True):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batched_precisions_agree_with_cpu_float32():
    """A tiny SAM with a global-attention block whose relative-position mask is split into
    head chunks (the paths ViT-B takes), on CUDA in each precision against the CPU in fp32.
    The fp32 tolerance holds with TF32 matmuls and convolutions on (about 1e-3 relative)."""
    image, _ = make_ct()
    model = tiny_sam(global_attn=True)
    cpu_seg = SamSegmenter(copy.deepcopy(model), batch_size=2)
    accelerate_image_encoder(cpu_seg.model, max_mask_bytes=4096 * 4096 * 4)  # 1 head a chunk
    cpu = list(cpu_seg.segment(image, _requests()))
    for precision, tolerance in (("fp32", 2e-2), ("bf16", 0.08), ("fp16", 0.05)):
        seg = SamSegmenter(
            copy.deepcopy(model), device="cuda", batch_size=2, precision=precision, workers=2
        )
        accelerate_image_encoder(seg.model, max_mask_bytes=4096 * 4096 * 4)
        gpu = list(seg.segment(image, _requests()))
        seg.close()
        assert seg.precision == precision and seg.worker_kind == "process"
        assert seg.stats.encoder_calls == 3 and seg.stats.encoder_batches == 2
        for a, b in zip(cpu, gpu, strict=True):
            assert np.abs(a.probs - b.probs).max() < tolerance, precision
            assert (a.masks == b.masks).mean() > 0.98, precision


def test_cpu_runs_float32_whatever_the_precision_asked():
    seg = SamSegmenter(tiny_sam(), precision="bf16")
    assert seg.precision == "fp32" and seg.autocast_dtype is None
    with pytest.raises(ValueError, match="precision"):
        SamSegmenter(tiny_sam(), precision="fp8")


def test_process_workers_prepare_the_same_slices_as_threads():
    image, _ = make_ct()
    threads = SamSegmenter(tiny_sam(), batch_size=2, workers=2, worker_kind="thread")
    processes = SamSegmenter(tiny_sam(), batch_size=2, workers=2, worker_kind="process")
    try:
        a = list(threads.segment(image, _requests()))
        b = list(processes.segment(image, _requests()))
    finally:
        processes.close()
    assert processes.stats.seconds.get("slice_preprocess", 0) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.probs, y.probs)
        np.testing.assert_array_equal(x.masks, y.masks)


def test_unit_normalization_scales_each_image_to_0_1():
    seg = SamSegmenter(tiny_sam(), normalization="unit")
    images = torch.tensor([[[[10, 20, 30]] * 2] * 2], dtype=torch.uint8)  # (1, 2, 2, 3)
    x = seg.normalize(images)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    imagenet = SamSegmenter(tiny_sam()).normalize(images)
    expected = (images.permute(0, 3, 1, 2).float() - seg.model.pixel_mean) / seg.model.pixel_std
    torch.testing.assert_close(imagenet, expected)


# --------------------------------------------------------------------------------------------
# checkpoints


def test_state_dict_with_sam_keys_loads_and_mismatch_fails(tmp_path):
    good = tiny_sam(seed=1)
    path = tmp_path / "tiny.pth"
    torch.save({"module." + k: v for k, v in good.state_dict().items()}, path)
    state = read_sam_state_dict(path)
    target = tiny_sam(seed=2)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    check_sam_state(state, expected, path, "tiny SAM")
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(target.image_encoder.pos_embed, good.image_encoder.pos_embed)

    deeper = tiny_sam(depth=3, embed_dim=24)
    wrong = {k: tuple(v.shape) for k, v in deeper.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        check_sam_state(state, wrong, path, "tiny SAM depth 3")
    text = str(err.value)
    assert str(path) in text and "\n" not in text
    assert "image_encoder.pos_embed" in text and "missing keys image_encoder.blocks.2" in text


@pytest.mark.parametrize("content", [None, b"", b"this is not a checkpoint"])
def test_missing_empty_or_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "sam_vit_b.pth"
    if content is not None:
        path.write_bytes(content)
    began = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        build_segmenter(VitConfig("vit_b", "sam_vit_b", "imagenet", "score"), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - began < 5  # fails before building any network


def test_vit_l_checkpoint_with_net_type_vit_b(tmp_path):
    with torch.device("meta"):
        vit_l = sam_model_registry["vit_l"]()
    state = {k: torch.zeros(1) for k in vit_l.state_dict()}
    state["image_encoder.patch_embed.proj.weight"] = torch.zeros(1024, 3, 16, 16)
    path = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_sam_model("vit_b", path)
    text = str(err.value)
    assert str(path) in text and "mis-shaped" in text and "image_encoder.blocks.12" in text
    assert "vit_l" in text and "\n" not in text


def test_missing_vit_load_path_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="vit_load_path"):
        build_segmenter(VitConfig("vit_b", "medsam_vit_b", "imagenet", "score"), None)


@pytest.mark.slow
def test_full_size_vit_b_checkpoint_round_trip(tmp_path):
    model = sam_model_registry["vit_b"]()
    path = tmp_path / "medsam_vit_b.pth"
    torch.save(model.state_dict(), path)
    seg = build_segmenter(VitConfig("vit_b", "medsam_vit_b", "unit", "score"), path)
    assert seg.normalization == "unit" and len(seg.checkpoint_sha256) == 64
    torch.testing.assert_close(seg.model.image_encoder.pos_embed, model.image_encoder.pos_embed)


# --------------------------------------------------------------------------------------------
# classic


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _true_box_requests(label: np.ndarray, classes, axis: int = 2) -> list[SliceRequest]:
    from medlsam.boxes import Box3D, OrganBoxes
    from medlsam.segment.assemble import group_by_slice, organ_prompts

    organs = {
        c: OrganBoxes(c, (Box3D.from_mask(label == c),), np.zeros((1, 6, 3))) for c in classes
    }
    return group_by_slice(organ_prompts(organs, label.shape, axis, classes))


def test_classic_segments_synthetic_organs():
    support = make_ct(seed=1)
    image, label = make_ct(seed=2)
    seg = ClassicSegmenter()
    seg.fit([support], [1, 2])
    assert seg.models[1].mean_hu == pytest.approx(120, abs=15)
    requests = _true_box_requests(label.data, [1, 2])
    for request, result in zip(requests, seg.segment(image, requests), strict=True):
        truth = pp.slice_2d(label.data, 2, request.index)
        for b, c in enumerate(request.classes):
            if (truth == c).sum() >= 9:
                assert _dice(result.masks[b], truth == c) > 0.8
    assert seg.stats.encoder_calls == 0 and seg.stats.slices == len(requests)


def test_classic_needs_every_organ_in_the_supports():
    support = make_ct(seed=1)
    with pytest.raises(InputError, match="class 7"):
        ClassicSegmenter().fit([support], [1, 7])


def test_classic_liver_on_real_ct():
    support_image = read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    support_label = read_label(ct_testdata_path("totalsegmentator", "example_seg.nii.gz"))
    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    liver = 5
    seg = ClassicSegmenter()
    seg.fit([(support_image, support_label)], [liver])
    requests = _true_box_requests(label.data, [liver])
    pred = np.zeros(label.shape, bool)
    for request, result in zip(requests, seg.segment(image, requests), strict=True):
        pred[:, :, request.index] = result.masks[0].T
    assert _dice(pred, label.data == liver) > 0.75
