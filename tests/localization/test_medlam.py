"""MedLAM network: published names, shapes and size; checkpoint loading and saving."""

from __future__ import annotations

import pytest
import torch

from medlsam.checkpoint import file_sha256
from medlsam.errors import CheckpointError
from medlsam.localization.network import (
    MedLAM,
    build_medlam,
    count_parameters,
    parameter_shapes,
    save_medlam,
    weights_fingerprint,
)

STAGES = range(9)


def published_shapes(b: int) -> dict[str, tuple[int, ...]]:
    """The 44 published keys (method.md 2.4, without ``module.``) and shapes, from the tables
    of method.md 2.2 written out by hand."""
    convs = {  # (in, out) per block
        "conv0_1": (1, 2 * b),
        "conv0_2": (2 * b, 2 * b),
        "conv1_1": (2 * b, 2 * b),
        "conv1_2": (2 * b, 2 * b),
        "conv2_1": (2 * b, 2 * b),
        "conv2_2": (2 * b, 4 * b),
        "conv3_1": (4 * b, 4 * b),
        "conv3_2": (4 * b, 8 * b),
        "conv4_1": (8 * b, 8 * b),
        "conv4_2": (8 * b, 16 * b),
        "conv5_1": (24 * b, 8 * b),
        "conv5_2": (8 * b, 8 * b),
        "conv6_1": (12 * b, 4 * b),
        "conv6_2": (4 * b, 4 * b),
        "conv7_1": (6 * b, 4 * b),
        "conv7_2": (4 * b, 4 * b),
        "conv8_1": (6 * b, 4 * b),
        "conv8_2": (4 * b, 4 * b),
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for s in STAGES:
        for k in (1, 2):
            cin, cout = convs[f"conv{s}_{k}"]
            shapes[f"conv{s}_{k}.model.conv1_1.Conv.weight"] = (cout, cin, 3, 3, 3)
            shapes[f"conv{s}_{k}.model.conv1_1.Conv.bias"] = (cout,)
    shapes["classification.0.weight"] = (3, 4 * b, 1, 1, 1)
    shapes["classification.0.bias"] = (3,)
    shapes["fc1.weight"] = (8 * b, 1024 * b)
    shapes["fc1.bias"] = (8 * b,)
    shapes["fc2.weight"] = (4 * b, 8 * b)
    shapes["fc2.bias"] = (4 * b,)
    shapes["fc3.weight"] = (3, 4 * b)
    shapes["fc3.bias"] = (3,)
    return shapes


def published_state(b: int, seed: int = 0, prefix: str = "module.", dtype=torch.float16) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        prefix + k: (torch.randn(shape, generator=gen) * 0.1).to(dtype)
        for k, shape in published_shapes(b).items()
    }


def test_published_width_has_15067878_parameters_and_44_keys():
    assert count_parameters(24) == 15_067_878
    shapes = parameter_shapes(24)
    expected = published_shapes(24)
    assert list(shapes) == list(expected)  # names and registration order
    assert shapes == expected
    assert shapes["fc1.weight"] == (192, 24576)


def test_small_model_parameter_count_matches_listing():
    model = MedLAM(3)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(3)
    assert not any("norm" in k for k in model.state_dict())  # InstanceNorm without affine


def test_forward_shapes_and_subsets():
    torch.manual_seed(0)
    model = MedLAM(2).eval()
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        full = model(x, classification=True)
    assert full["fc_position"].shape == (2, 3)
    assert full["feature0"].shape == (2, 8, 16, 16, 16)
    assert full["feature1"].shape == (2, 8, 32, 32, 32)
    assert full["feature2"].shape == (2, 8, 64, 64, 64)
    assert full["prob"].shape == (2, 3, 64, 64, 64)
    with torch.no_grad():
        part = model(x, fc=False, features=["feature1"])
    assert set(part) == {"feature1"}
    torch.testing.assert_close(part["feature1"], full["feature1"])


def test_forward_skips_unneeded_decoder_stages():
    model = MedLAM(2).eval()
    called: list[str] = []
    for name in ("conv5_1", "conv7_1", "conv8_1"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: called.append(n))
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        model(x, fc=True, features=())
        assert called == []
        model(x, fc=False, features=["feature0"])
        assert called == ["conv5_1"]
        called.clear()
        model(x, fc=False, features=["feature1"])
        assert called == ["conv5_1", "conv7_1"]


def test_input_checks():
    model = MedLAM(2)
    with pytest.raises(ValueError, match="64"):
        model(torch.rand(1, 1, 32, 32, 32), fc=True)
    with pytest.raises(ValueError, match="feature9"):
        model(torch.rand(1, 1, 64, 64, 64), features=["feature9"])
    out = model(torch.rand(1, 1, 32, 32, 48), fc=False, features=["feature2"])
    assert out["feature2"].shape == (1, 8, 32, 32, 48)


def test_published_format_fp16_with_prefix_loads(tmp_path):
    state = published_state(3)
    path = tmp_path / "medlam.pth"
    torch.save(state, path)
    model = build_medlam(path, "cpu")
    assert model.base_chns == 3
    assert not model.training
    loaded = model.state_dict()
    for key, value in state.items():
        assert loaded[key[len("module.") :]].dtype == torch.float32
        torch.testing.assert_close(loaded[key[len("module.") :]], value.float())
    assert weights_fingerprint(model) == file_sha256(path)


def test_training_file_and_bare_keys_load(tmp_path):
    path = tmp_path / "train.tar"
    torch.save({"epoch": 7, "state_dict": published_state(2, dtype=torch.float32)}, path)
    assert build_medlam(path, "cpu").base_chns == 2
    bare = tmp_path / "bare.pth"
    torch.save(published_state(2, prefix=""), bare)
    assert build_medlam(bare, "cpu", base_chns=2).base_chns == 2


def test_save_roundtrip_in_published_format(tmp_path):
    torch.manual_seed(1)
    model = MedLAM(2).eval()
    path = save_medlam(model, tmp_path / "out" / "m.pth")
    raw = torch.load(path, weights_only=True)
    assert len(raw) == 44 and all(k.startswith("module.") for k in raw)
    again = build_medlam(path, "cpu")
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        expected = model(x, features=())["fc_position"]
        torch.testing.assert_close(again(x, features=())["fc_position"], expected)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_mis_shaped_checkpoint_is_one_line_naming_file_and_key(tmp_path):
    state = published_state(2)
    state["module.fc2.weight"] = torch.zeros(5, 5, dtype=torch.float16)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_medlam(path, "cpu")
    text = _one_line(err)
    assert str(path) in text and "fc2.weight" in text and "[5, 5]" in text


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = published_state(2)
    del state["module.fc3.bias"]
    state["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        build_medlam(path, "cpu")
    text = _one_line(err)
    assert "fc3.bias" in text and "extra.weight" in text


def test_width_disagreement_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(published_state(2), path)
    with pytest.raises(CheckpointError, match="width 2"):
        build_medlam(path, "cpu", base_chns=24)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing", "not_a_dict"])
def test_unreadable_checkpoints_are_one_line(tmp_path, damage):
    path = tmp_path / "broken.pth"
    if damage != "missing":
        torch.save(published_state(2), path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError) as err:
        build_medlam(path, "cpu")
    assert str(path) in _one_line(err)
