"""``medlam_load_path = demo``: the shipped checkpoint by name, with its own settings as
defaults that a config can override."""

from __future__ import annotations

from conftest import ct_testdata_path

from medlsam.config import load_config
from medlsam.weights import demo_checkpoint, demo_settings


def _config(tmp_path, extra: str = "", weight: str = "demo"):
    ct = ct_testdata_path("totalsegmentator", "example_ct.nii.gz")
    seg = ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz")
    for name, path in (("images", ct), ("labels", seg)):
        (tmp_path / f"{name}.txt").write_text(f"{path}\n")
    text = (
        "[data]\nsupport_image_ls = images.txt\nsupport_label_ls = labels.txt\n"
        f"query_image_ls = images.txt\nfg_class = [1, 5]\n{extra}"
        f"[vit]\nbackend = classic\n[weight]\nmedlam_load_path = {weight}\n"
    )
    (tmp_path / "config.txt").write_text(text)
    return load_config(tmp_path / "config.txt")


def test_demo_selects_the_shipped_checkpoint_and_its_settings(tmp_path):
    config = _config(tmp_path)
    assert config.weight.medlam_load_path == demo_checkpoint()
    stored = demo_settings()["data"]
    assert config.data.feature_scale_ls == tuple(stored["feature_scale_ls"]) == ("feature0",)
    assert config.data.rdr_steps == stored["rdr_steps"] == 3
    assert config.data.bbox_mode.value == stored["bbox_mode"]


def test_the_config_overrides_the_demo_settings(tmp_path):
    extra = "rdr_steps = 1\nbbox_mode = SPL\nslice_interval = 2\n"
    config = _config(tmp_path, extra, weight="DEMO")
    assert config.weight.medlam_load_path == demo_checkpoint()
    assert config.data.rdr_steps == 1 and config.data.bbox_mode.value == "SPL"
    assert config.data.feature_scale_ls == ("feature0",)  # not overridden: the demo's


def test_a_path_keeps_the_published_defaults(tmp_path):
    config = _config(tmp_path, weight=str(demo_checkpoint()))
    assert config.data.rdr_steps == 1
    assert config.data.feature_scale_ls == ("feature0", "feature1", "feature2")


def test_medlsam_demo_uses_the_stored_settings():
    from medlsam.cli.demo import DEMO_RDR_STEPS, DEMO_SCALES

    stored = demo_settings()["data"]
    assert list(DEMO_SCALES) == stored["feature_scale_ls"] and DEMO_RDR_STEPS == stored["rdr_steps"]
