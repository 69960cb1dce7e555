"""``[run] reproduce = published`` through the configuration and the whole pipeline: its
defaults, the published prompts, the published SAM slice, and one start stream over the query
list that no shard layout changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, ct_testdata_path
from infer_helpers import tiny_sam
from robust_helpers import build_kit, write_config

from medlsam.boxes import Box3D, OrganBoxes, boxes_json
from medlsam.cli.infer import main as infer_main
from medlsam.config import load_config
from medlsam.errors import ConfigError
from medlsam.io import read_image
from medlsam.pipeline.run import run
from medlsam.segment import SamSegmenter
from medlsam.segment.assemble import published_prompts

CASES = ["query_0", "query_1", "query_2"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_kit(tmp_path_factory.mktemp("kit"), n_queries=3)


def reproduce_config(folder: Path, kit, run_section: str = "reproduce = published\n", **kw) -> Path:
    path = write_config(folder, kit, prototypes=False, **kw)
    path.write_text(path.read_text() + "\n[run]\n" + run_section)
    return path


# --------------------------------------------------------------------------------------------
# configuration


def test_reproduce_defaults_and_explicit_overrides(tmp_path, kit):
    default = load_config(write_config(tmp_path / "a", kit))
    assert default.run.reproduce == "none" and not default.run.published
    assert default.vit.overlap == "score" and not default.run.use_gt_slice_threshold
    published = load_config(reproduce_config(tmp_path / "b", kit))
    assert published.run.published
    assert published.vit.overlap == "later" and published.run.use_gt_slice_threshold
    mixed = load_config(
        reproduce_config(
            tmp_path / "c",
            kit,
            "reproduce = published\nuse_gt_slice_threshold = False\n",
            vit={"overlap": "score"},
        )
    )
    assert mixed.run.published and mixed.vit.overlap == "score"
    assert not mixed.run.use_gt_slice_threshold
    with pytest.raises(ConfigError, match=r"reproduce.*one of none, published"):
        load_config(reproduce_config(tmp_path / "d", kit, "reproduce = paper\n"))


def test_published_default_gt_threshold_needs_query_labels(tmp_path, kit):
    cfg = load_config(reproduce_config(tmp_path, kit))
    with pytest.raises(ConfigError, match="reproduce = published.*use_gt_slice_threshold = False"):
        run(cfg, device="cpu", progress=False)


# --------------------------------------------------------------------------------------------
# prompts


def organ(c: int, *raw: Box3D, shape=(100, 80, 40)) -> OrganBoxes:
    clipped = tuple(b.clip(shape) for b in raw)
    return OrganBoxes(c, clipped, np.zeros((len(raw), 6, 3)), True, raw_boxes=raw)  # type: ignore[arg-type]


def test_published_prompts_use_unclipped_boxes_and_the_published_slice_range():
    shape = (100, 80, 40)  # slices along k; rows follow j (80), columns follow i (100)
    organs = {
        1: organ(1, Box3D((-5, 10, 30), (50, 40, 45))),  # leaves the image at i < 0 and k > 39
        2: organ(2, Box3D((20, 0, -3), (30, 79, 5)), Box3D((20, 0, 5), (30, 79, 12))),
    }
    prompts = published_prompts(organs, shape, axis=2, classes=[1, 2])
    by = {}
    for p in prompts:
        by.setdefault((p.class_id, p.part), []).append(p)
    # x = round(i * 1024 / 100), y = round(j * 1024 / 80), 10-pixel margin, not clipped
    assert {p.box for p in by[(1, 0)]} == {(-51.0 - 10, 128.0 - 10, 512.0 + 10, 512.0 + 10)}
    assert {p.box for p in by[(2, 0)]} == {(205.0 - 10, -10.0, 307.0 + 10, 1011.0 + 10)}
    # slice range: z_min = max(0, min first-box z-min) = 0; z_max = max last-box z-max = 45,
    # clipped to 40, exclusive: slices 0..39; each box's own range inclusive within it
    assert [p.index for p in by[(1, 0)]] == list(range(30, 40))
    assert [p.index for p in by[(2, 0)]] == list(range(0, 6))
    assert [p.index for p in by[(2, 1)]] == list(range(5, 13))
    # the global top slice is left out, as published: organ 1 alone, ending inside the image
    alone = published_prompts({1: organ(1, Box3D((10, 10, 5), (20, 20, 9)))}, shape, 2, [1])
    assert [p.index for p in alone] == [5, 6, 7, 8]


# --------------------------------------------------------------------------------------------
# SAM slice


def test_sam_backend_builds_the_published_slice_in_this_mode():
    path = ROOT.parent / "shared" / "parity" / "reference_sam_slice_example_ct_k90.npz"
    if not path.is_file():
        pytest.skip(f"published reference outputs not found at {path.parent}")
    reference = np.load(path)["slice_1024"]
    volume = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    lo, hi = (float(np.clip(v, -500, 1000)) for v in (volume.data.min(), volume.data.max()))
    published = SamSegmenter(tiny_sam(), "cpu", window="published")
    image = published.slice_image(volume, 2, 90, lo, hi)
    assert int((image[..., 0] != reference).sum()) == 0
    default = SamSegmenter(tiny_sam(), "cpu").slice_image(volume, 2, 90, lo, hi)
    assert int((default[..., 0] != reference).sum()) > 1000


# --------------------------------------------------------------------------------------------
# boxes.json


def test_boxes_json_has_unclipped_corners():
    raw = Box3D((-4, 10, 2), (30, 90, 7))
    organs = [organ(3, raw, shape=(20, 50, 8))]
    entry = boxes_json("c", "c.nii.gz", np.eye(4), organs)["classes"]["3"]["boxes"][0]
    assert entry["min"] == [0, 10, 2] and entry["max"] == [19, 49, 7]
    assert entry["min_raw"] == [-4, 10, 2] and entry["max_raw"] == [30, 90, 7]


# --------------------------------------------------------------------------------------------
# the start stream through the pipeline


def _boxes(folder: Path) -> dict[str, dict]:
    return {c: json.loads((folder / f"{c}.boxes.json").read_text())["classes"] for c in CASES}


def _infer(config: Path, *extra: str) -> int:
    return infer_main(["--config", str(config), "--device", "cpu", "--quiet", *extra])


NO_GT = "reproduce = published\nuse_gt_slice_threshold = False\n"


def test_results_do_not_depend_on_the_shard_layout(tmp_path, kit):
    single = reproduce_config(tmp_path / "single", kit, NO_GT)
    assert _infer(single) == 0
    whole = _boxes(tmp_path / "single" / "out")
    sharded = reproduce_config(tmp_path / "sharded", kit, NO_GT)
    assert _infer(sharded, "--shard", "2/2") == 0  # query_1 first: query_0's draws replayed
    assert _infer(sharded, "--shard", "1/2") == 0
    assert _boxes(tmp_path / "sharded" / "out") == whole
    record = json.loads((tmp_path / "sharded" / "out" / "run.json").read_text())
    assert record["settings"]["reproduce"] == "published"
    assert len(record["settings"]["query_images"]) == 3
    # a later query redone alone (a resumed run): the queries before it are replayed
    for suffix in (".nii.gz", ".npz", ".boxes.json"):
        (tmp_path / "single" / "out" / f"query_2{suffix}").unlink()
    assert _infer(single) == 0
    redone = json.loads((tmp_path / "single" / "out" / "run.json").read_text())
    assert redone["cases"]["query_2"]["status"] == "ok"
    assert _boxes(tmp_path / "single" / "out") == whole
