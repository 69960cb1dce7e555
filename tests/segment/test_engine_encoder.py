"""SAM image encoder through ONNX Runtime / OpenVINO: same embeddings, same masks on real CT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ct_testdata_path
from infer_helpers import tiny_sam

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.export_cache import ExportCache
from medlsam.io import read_image, read_label
from medlsam.segment import SamSegmenter
from medlsam.segment.assemble import group_by_slice, organ_prompts
from medlsam.segment.engine import EngineEncoder

ENGINES = ["onnxruntime", "openvino"]


@pytest.mark.parametrize("engine, pixels", [("onnxruntime", 0), ("openvino", 1e-4)])
def test_masks_on_the_real_ct(engine, pixels, tmp_path, one_thread):
    """Liver, spleen and right kidney boxes from the labels, every third slice they span:
    ONNX Runtime's masks equal PyTorch's pixel for pixel; OpenVINO's differ in at most a
    ``pixels`` share (one pixel of 36,966 here: a probability within float32 reordering of 0.5).
    Embeddings within 1e-4 relative for both."""
    pytest.importorskip(engine)
    image = read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg.nii.gz"))
    classes = [5, 1, 2]
    organs = {
        c: OrganBoxes(c, (Box3D.from_mask(label.data == c),), np.zeros((1, 6, 3))) for c in classes
    }
    requests = group_by_slice(organ_prompts(organs, label.shape, 2, classes))[::3]
    sam = tiny_sam(global_attn=True)
    ref = SamSegmenter(sam)
    fast = SamSegmenter(sam, engine=engine, export_cache=ExportCache(tmp_path))
    assert isinstance(fast.encoder, EngineEncoder) and ref.encoder is sam.image_encoder
    for want, got in zip(ref.segment(image, requests), fast.segment(image, requests), strict=True):
        assert (got.masks != want.masks).mean() <= pixels
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-4)
    assert fast.stats.encoder_calls == ref.stats.encoder_calls == len(requests)
    x = torch.randn(2, 3, 1024, 1024)
    with torch.inference_mode():
        want, got = sam.image_encoder(x), fast.encoder(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4


def test_cuda_and_torch_engines_run_pytorch():
    sam = tiny_sam()
    assert SamSegmenter(sam, engine="torch").engine == "torch"
    assert SamSegmenter(sam, engine="auto").engine == "torch"  # the export needs > 6 GB
    if torch.cuda.is_available():
        seg = SamSegmenter(tiny_sam(), device="cuda", engine="openvino")
        assert seg.engine == "torch" and seg.encoder is seg.model.image_encoder
