"""MedLAM through ONNX Runtime / OpenVINO: same outputs as PyTorch, same boxes on the real CT."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ct_testdata_path

from medlsam.export_cache import ExportCache
from medlsam.io import read_image, read_label
from medlsam.localization.engine import EngineMedLAM
from medlsam.localization.localizer import Localizer
from medlsam.localization.network import FEATURE_NAMES, MedLAM, build_medlam

ENGINES = ["onnxruntime", "openvino"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("engine", ENGINES)
def test_every_output_combination_matches_torch(engine, tmp_path, one_thread):
    pytest.importorskip(engine)
    torch.manual_seed(0)
    net = MedLAM(2).eval()
    wrapped = EngineMedLAM(net, engine, ExportCache(tmp_path))
    x = torch.randn(3, 1, 64, 64, 64)
    for fc, feats in [
        (True, ()),
        (True, FEATURE_NAMES),
        (False, ("feature0",)),
        (False, ("feature2", "feature0")),
    ]:
        with torch.inference_mode():
            ref = net(x, fc=fc, features=feats)
            out = wrapped(x, fc=fc, features=feats)
        assert sorted(out) == sorted(ref)
        for key in ref:
            assert out[key].shape == ref[key].shape
            assert _rel(out[key], ref[key]) < 1e-4, (engine, fc, feats, key)
    assert len(wrapped._graphs) == 4  # one graph per combination of outputs
    assert wrapped.base_chns == 2 and set(wrapped.state_dict()) == set(net.state_dict())
    # a patch that is not 64^3 runs the network itself
    small = torch.randn(1, 1, 32, 32, 32)
    with torch.inference_mode():
        same = wrapped(small, fc=False, features=("feature0",))["feature0"]
        assert torch.equal(same, net(small, fc=False, features=("feature0",))["feature0"])


@pytest.mark.parametrize("engine, voxels", [("onnxruntime", 0), ("openvino", 1)])
def test_boxes_on_the_real_ct(engine, voxels, tmp_path, one_thread):
    """The demo checkpoint localizes the real test CT with the engine as with PyTorch: the same
    boxes with ONNX Runtime (the engine ``auto`` picks), within one voxel with OpenVINO.

    Both sum in another order than PyTorch (outputs within 1e-4 relative), so a point can round
    to the neighbouring voxel; on this CT that moves no box with ONNX Runtime and one box wall by
    one voxel with OpenVINO."""
    pytest.importorskip(engine)
    image = read_image(ct_testdata_path("totalsegmentator", "example_ct_sm.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg.nii.gz"))
    demo = Path(str(resources.files("medlsam") / "data" / "medlam_demo.pth"))
    net = build_medlam(demo, "cpu")
    classes = [5, 1, 2]  # liver, spleen, right kidney
    results = []
    for model in (net, EngineMedLAM(net, engine, ExportCache(tmp_path))):
        loc = Localizer(model, "cpu", mode="SPL", slice_interval=4, feature_scales=["feature0"])
        loc.fit([(image, label)], classes)
        results.append(loc.predict(image))
    ref, got = results
    assert sorted(ref) == sorted(got) == sorted(classes)
    for c in classes:
        assert len(got[c].boxes) == len(ref[c].boxes)
        for a, b in zip(got[c].boxes, ref[c].boxes):
            walls = np.abs(np.array([a.lo, a.hi]) - np.array([b.lo, b.hi]))
            assert walls.max() <= voxels, (c, a, b)
        assert np.abs(got[c].extreme_points - ref[c].extreme_points).max() <= 1, c
