"""Tests of self-supervised MedLAM training (medlsam.train: trainer, config, data, losses)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medlsam.errors import ConfigError
from medlsam.io import Volume
from medlsam.localization.network import build_medlam
from medlsam.train.data import Augment, fixed_pairs, load_volume, sample_batch, sample_patch
from medlsam.train.losses import mss_loss, rdr_loss
from medlsam.train.trainer import Trainer, load_train_config

PUBLISHED = """[data]
train_image_list = {lst}
valid_image_list = {lst}
iter_num = {iters}
batch_size = 2
patch_size = [64,64,64]
class_num = 3
distance_ratio = [1500,600,600]
valid_pairs = 2
[network]
net_type = MedLAM
base_feature_number = 1
drop_rate = 0
dilation = 1
class_num = 3
input_channel = 1
[training]
load_pretrained_model = False
pretrained_model_path =
learning_rate = 1e-2
decay = 1e-4
maximal_epoch = 2
start_iteration = 0
print_step = 1
random_seed = 7
model_save_name = ckpt/MedLAM
best_loss = 1000
rdr_unit_mm = 100
mss_scales = [feature0]
mss_anchors = 3
freeze_first_stage = True
"""


def _phantom(path: Path, seed: int, shape=(36, 34, 40)) -> Path:
    """A tiny CT (3 mm): air around an ellipsoid body with two brighter blobs, in HU."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    data = np.full(shape, -1000.0, dtype=np.float32)
    body = zz**2 / 0.9 + yy**2 / 0.7 + xx**2 / 0.8 < 1
    data[body] = 40.0
    data[((zz - 0.3) ** 2 + (yy - 0.2) ** 2 + xx**2) < 0.08] = 300.0
    data[((zz + 0.4) ** 2 + yy**2 + (xx + 0.3) ** 2) < 0.05] = -500.0
    data += rng.normal(0, 10, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    return path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    names = [_phantom(root / f"ct{i}.nii.gz", i).name for i in range(2)]
    (root / "train.txt").write_text("\n".join(names) + "\n")
    config = root / "train.txt.cfg"
    config.write_text(PUBLISHED.format(lst="train.txt", iters=2))
    return config


pytestmark = pytest.mark.usefixtures("one_thread")


def test_published_keys_load_and_resolve(tiny_config: Path) -> None:
    cfg = load_train_config(tiny_config)
    assert cfg.base_feature_number == 1 and cfg.batch_size == 2 and cfg.iter_num == 2
    assert cfg.distance_ratio == (1500.0, 600.0, 600.0)
    assert cfg.learning_rate == pytest.approx(1e-2) and cfg.decay == pytest.approx(1e-4)
    assert cfg.model_save_name == tiny_config.parent / "ckpt" / "MedLAM"
    assert [p.name for p in cfg.train_images] == ["ct0.nii.gz", "ct1.nii.gz"]
    assert cfg.mss_scales == ("feature0",) and cfg.freeze_first_stage


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("learning_rat = 1e-3", "did you mean 'learning_rate'"),
        ("patch_size = [32, 32, 32]", "patch_size = [32, 32, 32]"),
        ("mss_scales = [feature3]", "did you mean 'feature"),
        ("batch_size = 0", "batch_size = 0: expected an integer >= 1"),
    ],
)
def test_config_errors_name_file_key_value(
    tiny_config: Path, tmp_path: Path, line, expected
) -> None:
    text = tiny_config.read_text()
    key = line.split("=")[0].strip()
    section = "[data]" if key in ("patch_size", "batch_size") else "[training]"
    lines = [ln for ln in text.splitlines() if not ln.startswith(key + " ")]
    lines.insert(lines.index(section) + 1, line)
    bad = tiny_config.parent / f"bad_{key}.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(bad)
    message = str(info.value)
    assert str(bad) in message and expected in message and "\n" not in message


def test_cache_is_reused_and_keyed_by_mtime(tiny_config: Path, tmp_path: Path) -> None:
    src = tiny_config.parent / "ct0.nii.gz"
    first = load_volume(src, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and first.dtype == np.float32 and first.max() <= 1.0
    np.save(files[0], np.zeros((2, 2, 2), np.float32))  # a cached file is read, not recomputed
    assert load_volume(src, tmp_path).shape == (2, 2, 2)
    import os

    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    assert load_volume(src, tmp_path).shape == first.shape  # changed mtime -> new key
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_patch_positions_are_consistent() -> None:
    rng = np.random.default_rng(0)
    volume = np.random.default_rng(1).random((50, 40, 45)).astype(np.float32)
    plain = sample_patch(volume, rng, Augment.none())
    # un-augmented copies: the image is the volume at the grid positions
    z, y, x = (plain["ori_pos"][:, 10, 20, 30] / 3.0).astype(int)
    inside = 0 <= z < 50 and 0 <= y < 40 and 0 <= x < 45
    assert plain["ori"][10, 20, 30] == (volume[z, y, x] if inside else 0.0)
    # without augmentation the augmented copy is the centre crop, positions on the 3 mm lattice
    assert np.allclose(plain["aug_pos"][:, 1, 0, 0] - plain["aug_pos"][:, 0, 0, 0], [3, 0, 0])
    warped = sample_patch(volume, np.random.default_rng(3), Augment(p=1.0))
    step = np.diff(warped["aug_pos"], axis=1)
    assert not np.allclose(step, step[:, :1, :1, :1])  # deformed grid
    batch = sample_batch([volume], np.random.default_rng(4), 3, Augment())
    assert batch["ori0"].shape == (3, 1, 64, 64, 64) and batch["aug_pos1"].shape == (
        3,
        3,
        64,
        64,
        64,
    )
    centre = batch["ori_pos0"][:, :, 32, 32, 32] - batch["ori_pos1"][:, :, 32, 32, 32]
    assert torch.allclose(batch["distance"], centre)


def test_losses_are_finite_and_zero_for_a_perfect_regression() -> None:
    fc = torch.zeros(2, 3)
    assert rdr_loss(fc, fc, torch.zeros(2, 3)).item() == 0.0
    assert rdr_loss(fc, fc, torch.full((2, 3), 10.0), unit_mm=10).item() == pytest.approx(1.0)
    feats = {"feature0": torch.randn(2, 4, 16, 16, 16)}
    patch = torch.ones(2, 1, 64, 64, 64)
    axis = torch.arange(64.0) * 3
    pos = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))[None].repeat(2, 1, 1, 1, 1)
    value = mss_loss(
        [feats, feats],
        [feats, feats],
        [patch, patch],
        [pos, pos],
        [pos, pos],
        ["feature0"],
        np.random.default_rng(0),
        n_anchors=2,
    )
    assert torch.isfinite(value) and value.item() > 0


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tiny_config: Path) -> None:
    from dataclasses import replace

    trainer = Trainer(replace(load_train_config(tiny_config), learning_rate=1e-3))
    trainer.load_data()
    batch = trainer.draw_batch()

    def loss() -> float:
        trainer.model.eval()
        trainer.rng = np.random.default_rng(11)  # same MSS anchors every time
        with torch.no_grad():
            return trainer.losses(batch)["loss"].item()

    before = loss()
    for _ in range(8):
        trainer.rng = np.random.default_rng(11)
        trainer.train_step(batch)
    assert loss() < before


def test_checkpoint_reloads_and_localizes(tiny_config: Path) -> None:
    from medlsam.localization.localizer import Localizer

    trainer = Trainer(load_train_config(tiny_config))
    result = trainer.fit(steps=1, progress=False)
    model = build_medlam(result.weights)  # the published format: bare state dict, module. keys
    assert model.base_chns == 1
    keys = torch.load(result.weights, weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys) and len(keys) == 44
    assert build_medlam(result.state).base_chns == 1  # the resumable file loads too
    image = nib.load(tiny_config.parent / "ct0.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    label = np.zeros(data.shape, np.int32)
    label[14:22, 12:20, 16:24] = 1
    vol = Volume(data, image.affine, None)
    loc = Localizer(model, "cpu", feature_scales=["feature0"])
    loc.fit([(vol, Volume(label, image.affine, None))], [1])
    boxes = loc.predict(vol)
    assert set(boxes) == {1}


def test_resume_continues_steps_and_matches_uninterrupted(
    tiny_config: Path, tmp_path: Path
) -> None:
    cfg = load_train_config(tiny_config)
    from dataclasses import replace

    straight = Trainer(replace(cfg, model_save_name=tmp_path / "a" / "m"))
    straight.fit(steps=3, progress=False)
    first = Trainer(replace(cfg, model_save_name=tmp_path / "b" / "m"))
    part = first.fit(steps=2, progress=False)
    resumed = Trainer(replace(cfg, model_save_name=tmp_path / "b" / "m"))
    resumed.resume(part.state)
    assert resumed.step == 2
    assert resumed.optimizer.state_dict()["state"]  # Adam moments restored
    resumed.fit(steps=3, progress=False)
    assert resumed.step == 3
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    steps = [json.loads(line).get("step") for line in part.log.read_text().splitlines()]
    assert steps[-1] == 3 and 1 in steps


def test_cli_reports_config_errors_on_one_line(tmp_path: Path, capsys) -> None:
    from medlsam.cli.train import main

    bad = tmp_path / "t.txt"
    bad.write_text("[data]\niter_num = 2\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "train_image_list is required" in err and "Traceback" not in err


def test_near_pairs_stay_within_reach_and_far_pairs_do_not() -> None:
    volume = np.full((120, 60, 60), 0.5, np.float32)
    near = sample_batch([volume], np.random.default_rng(0), 16, Augment.none(), False, 1.0, 30.0)
    # centres within 30 mm, plus each copy's own crop offset of at most 8 voxels (24 mm)
    assert near["distance"].abs().max() <= 30.0 + 2 * 24.0
    far = sample_batch([volume], np.random.default_rng(0), 16, Augment.none(), False, 0.0)
    assert far["distance"].abs().max() > 30.0 + 2 * 24.0
    pairs = fixed_pairs([volume], 1, 8, near_fraction=1.0, near_mm=15.0)
    assert all(np.abs(mm).max() <= 15.0 for _, _, mm in pairs)


def test_near_pair_keys_load(tiny_config: Path, tmp_path: Path) -> None:
    text = tiny_config.read_text().replace(
        "[data]", "[data]\nnear_pair_fraction = 0.5\nnear_pair_mm = 45", 1
    )
    good = tiny_config.parent / "near.txt"
    good.write_text(text)
    cfg = load_train_config(good)
    assert cfg.near_pair_fraction == 0.5 and cfg.near_pair_mm == 45.0
    bad = tiny_config.parent / "near_bad.txt"
    bad.write_text(text.replace("near_pair_fraction = 0.5", "near_pair_fraction = 2"))
    with pytest.raises(ConfigError, match="near_pair_fraction = 2"):
        load_train_config(bad)


def test_resume_with_loader_workers_equals_an_uninterrupted_run(tiny_config: Path, tmp_path):
    """Dropout on, MSS on, batches from 2 DataLoader worker processes: bit for bit."""
    from dataclasses import replace

    cfg = replace(load_train_config(tiny_config), drop_rate=0.3, num_workers=2)
    straight = Trainer(replace(cfg, model_save_name=tmp_path / "a" / "m"))
    straight.fit(steps=4, progress=False)
    inline = replace(cfg, model_save_name=tmp_path / "b" / "m", num_workers=0)
    part = Trainer(inline).fit(steps=2, progress=False)  # the first half without workers
    resumed = Trainer(replace(cfg, model_save_name=tmp_path / "b" / "m"))
    resumed.resume(part.state)
    resumed.fit(steps=4, progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert straight.timing["data_s"] > 0 and straight.timing["compute_s"] > 0
    logged = [json.loads(line) for line in part.log.read_text().splitlines()]
    assert "data_s" in logged[0] and "compute_s" in logged[0]
    state = torch.load(part.state, weights_only=True)
    assert state["device_type"] == "cpu" and state["cuda_rng"] is None


def test_step_batches_do_not_depend_on_workers(tiny_config: Path) -> None:
    from medlsam.train.loader import batches

    trainer = Trainer(load_train_config(tiny_config))
    trainer.load_data()
    data = trainer.dataset()
    inline = list(batches(data, 3, 5, workers=0, pin_memory=False))
    pooled = list(batches(data, 3, 5, workers=2, pin_memory=False))
    assert len(inline) == len(pooled) == 2
    for a, b in zip(inline, pooled, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trainer.step = 4
    assert torch.equal(trainer.draw_batch()["ori0"], inline[1]["ori0"])
    assert not torch.equal(inline[0]["ori0"], inline[1]["ori0"])


def test_resume_on_another_device_type_warns_and_amp_is_cuda_only(
    tiny_config: Path, tmp_path: Path, caplog
) -> None:
    from dataclasses import replace

    cfg = replace(load_train_config(tiny_config), model_save_name=tmp_path / "m", amp=True)
    with caplog.at_level("WARNING"):
        trainer = Trainer(cfg)
    assert trainer.amp_dtype is None and "amp applies on CUDA only" in caplog.text
    result = trainer.fit(steps=1, progress=False)
    state = torch.load(result.state, weights_only=True)
    state["device_type"] = "cuda"  # as a GPU run saves it
    moved = tmp_path / "gpu_state.tar"
    torch.save(state, moved)
    with caplog.at_level("WARNING"):
        Trainer(cfg).resume(moved)
    assert "saved on cuda, resumed on cpu" in caplog.text


def test_cli_names_a_missing_gpu_in_one_line(tiny_config: Path, capsys, monkeypatch) -> None:
    from medlsam.cli.train import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["--config", str(tiny_config), "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'cuda:1'" in err and "1 CUDA device(s), cuda:0 " in err
