"""python -m medlsam.bench on a tiny case: the stages' counts, the report, and --sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from infer_helpers import tiny_sam

from medlsam.bench.__main__ import main
from medlsam.bench.case import CaseSpec, write_case
from medlsam.bench.labels import label_boxes
from medlsam.bench.options import parse_args
from medlsam.bench.report import table
from medlsam.bench.run import run_benchmark
from medlsam.bench.stages import STAGES
from medlsam.engine import resolve_engine

#: counts that must not depend on replaying network calls
COUNTS = ("encoder_calls", "decoder_calls", "slices_segmented", "boxes_prompted")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """Two organs, one support, WPL, MedLAM's coarsest feature scale only: seconds per run."""
    folder = tmp_path_factory.mktemp("bench_case")
    spec = CaseSpec(shape=(40, 40, 6), spacing=(9.0, 9.0, 12.0), organs=2, supports=1, mode="WPL")
    config = write_case(folder, spec)
    text = config.read_text().replace("[feature0, feature1, feature2]", "[feature0]")
    config.write_text(text)
    return config


def _run(config, *extra: str) -> dict:
    torch.manual_seed(0)
    args = parse_args(
        ["--config", str(config), "--device", "cpu", "--threads", "1", "--medlam-width", "2"]
        + ["--engine", "torch", *extra]
    )
    return run_benchmark(args, sam_model=tiny_sam())


@pytest.fixture(scope="module")
def full_and_sampled(tiny_config):
    threads = torch.get_num_threads()
    try:
        return _run(tiny_config), _run(tiny_config, "--sample", "1")
    finally:
        torch.set_num_threads(threads)


def test_replayed_run_counts_the_same_work_as_a_full_run(full_and_sampled):
    full, sampled = full_and_sampled
    assert not full["projected"] and sampled["projected"]
    for key in COUNTS + ("published_encoder_calls",):
        assert sampled[key] == full[key], key
    for part in ("prototypes", "localization"):
        assert sampled["medlam"][part] == full["medlam"][part], part
    kinds = sampled["sampling"]["kinds"]
    assert sum(k["replayed_items"] for k in kinds.values()) > 0
    assert kinds["medlam_fc"]["replayed_items"] == 0  # fc-only calls always run
    patches = sum(full["medlam"][p]["patches"] for p in ("prototypes", "localization"))
    medlam = [k for name, k in kinds.items() if name.startswith("medlam")]
    assert sum(k["real_items"] + k["replayed_items"] for k in medlam) == patches
    sam = kinds["sam_encoder"]
    assert sam["real_items"] + sam["replayed_items"] == full["encoder_calls"]


def test_report_reads_the_stages_counts_and_seconds(full_and_sampled):
    full, _ = full_and_sampled
    assert set(full["stages"]) == set(STAGES) == set(full["published_stages"])
    assert full["stages"]["prototypes"] > 0 and full["stages"]["localization"] > 0
    assert full["stages"]["preprocess"] > 0 and full["stages"]["encoder"] > 0
    assert full["encoder_calls"] == full["slices_segmented"] > 0  # one image per slice
    assert full["published_encoder_calls"] >= full["encoder_calls"]
    med = full["medlam"]
    assert med["prototypes"]["patches"] == med["prototypes"]["published_patches"] == 12
    assert med["localization"]["patches"] > 10  # 10 start patches + refinement
    assert med["random_weights"] and full["boxes"] == "labels"
    assert full["cpu_seconds_total"] > 0 and full["peak_rss_mb"] > 0
    text = table(full)
    assert "MedLAM patches, prototypes" in text and "SAM encoder calls" in text


def test_main_writes_the_json_report(tiny_config, tmp_path, monkeypatch, capsys):
    import medlsam.bench.__main__ as entry

    def tiny(args):  # the command line's own path, with the tiny SAM of the tests
        return run_benchmark(args, sam_model=tiny_sam())

    monkeypatch.setattr(entry, "run_benchmark", tiny)
    out = tmp_path / "report.json"
    threads = torch.get_num_threads()
    try:
        args = ["--config", str(tiny_config), "--device", "cpu", "--threads", "1"]
        assert main(args + ["--medlam-width", "2", "--sample", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["projected"] and "PROJECTED" in capsys.readouterr().out
    # the config's engine (auto): MedLAM in the first CPU engine installed, SAM on PyTorch
    assert report["engine"] == {"medlam": resolve_engine("auto", "cpu"), "sam_encoder": "torch"}
    assert report["medlam"]["eager_seconds_per_patch"] > 0


def test_label_boxes_split_an_organ_along_the_slice_axis():
    label = np.zeros((6, 7, 9), np.uint8)
    label[1:4, 2:5, 1:8] = 3
    organs = label_boxes(label, 2, {3: 3, 5: 1})
    boxes = organs[3].boxes
    assert [(b.lo[2], b.hi[2]) for b in boxes] == [(1, 3), (3, 5), (5, 7)]
    assert all(b.lo[:2] == (1, 2) and b.hi[:2] == (3, 4) for b in boxes)
    assert organs[5].boxes == () and not organs[5].inside
