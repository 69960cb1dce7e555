"""The public Python API (``medlsam.load_config/infer/localize/evaluate``) on a tiny cohort."""

from __future__ import annotations

import json

import pytest
import torch
from infer_helpers import make_cohort

import medlsam
from medlsam.errors import ConfigError
from medlsam.localization.network import MedLAM, save_medlam


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    checkpoint = save_medlam(MedLAM(2), root / "medlam.pth", half=True)
    extra = {
        "weight": {"medlam_load_path": checkpoint, "vit_load_path": root / "absent_sam.pth"},
        "data": {"feature_scale_ls": ["feature0"]},
        "run": {"device": "cpu"},
    }
    config, labels = make_cohort(root, n_queries=2, query_labels=True, extra=extra)
    return root, config, labels


def test_load_config_checks_files_and_names_them(cohort):
    root, config, _ = cohort
    cfg = medlsam.load_config(config)
    assert [p.name for p in cfg.data.query_images] == ["query_0.nii.gz", "query_1.nii.gz"]
    broken = root / "broken.txt"
    broken.write_text(config.read_text().replace("query_image.txt", "nowhere.txt"))
    with pytest.raises(ConfigError, match="nowhere.txt"):
        medlsam.load_config(broken)


def test_infer_returns_the_record_it_wrote(cohort, tmp_path):
    _, config, _ = cohort
    report = medlsam.infer(config, output=tmp_path / "seg", device="cpu")
    assert report.ok == ["query_0", "query_1"] and not report.failed
    on_disk = json.loads(report.run_json.read_text())
    assert report.run_json == tmp_path / "seg" / "run.json"
    assert on_disk["cases"] == json.loads(json.dumps(report.record["cases"]))
    assert (tmp_path / "seg" / "query_1.nii.gz").is_file()
    again = medlsam.infer(medlsam.load_config(config), output=tmp_path / "seg", device="cpu")
    assert again.skipped == ["query_0", "query_1"] and again.ok == []


def test_localize_needs_no_sam_weights_and_scores_boxes(cohort, tmp_path):
    root, config, _ = cohort
    # a SAM backend whose checkpoint does not exist: segmenting refuses, localizing runs
    sam = root / "sam_config.txt"
    sam.write_text(config.read_text().replace("classic", "sam_vit_b"))
    assert "sam_vit_b" in sam.read_text()
    with pytest.raises(ConfigError, match="absent_sam.pth"):
        medlsam.load_config(sam)
    report = medlsam.localize(sam, output=tmp_path / "boxes", device="cpu")
    assert report.ok == ["query_0", "query_1"] and not report.failed
    assert report.run_json == tmp_path / "boxes" / "localize.json"
    on_disk = json.loads(report.run_json.read_text())
    assert on_disk["command"] == "localize" and "segmenter" not in on_disk
    assert on_disk["cases"] == json.loads(json.dumps(report.record["cases"]))
    assert {s.case for s in report.scores} == {"query_0", "query_1"}
    assert set(report.summary) == {1, 2} and (tmp_path / "boxes" / "iou.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "boxes").glob("*.boxes.json")) == [
        "query_0.boxes.json",
        "query_1.boxes.json",
    ]


def test_evaluate_scores_a_folder_and_writes_when_asked(cohort, tmp_path):
    _, config, labels = cohort
    medlsam.infer(config, output=tmp_path / "seg", device="cpu")
    result = medlsam.evaluate(
        tmp_path / "seg",
        {case: volume.path for case, volume in labels.items()},
        output=tmp_path / "eval",
        classes=[1, 2],
    )
    assert result.summary["n_cases"] == 2
    dsc = [s.dsc for s in result.scores]
    assert len(dsc) == 4 and all(0.0 <= d <= 1.0 for d in dsc)
    assert result.written["summary"] == tmp_path / "eval" / "summary.json"
    assert json.loads(result.written["summary"].read_text())["n_cases"] == 2
    by_case = {case: volume.path for case, volume in labels.items()}
    assert medlsam.evaluate(tmp_path / "seg", by_case).written == {}  # no output: no files
