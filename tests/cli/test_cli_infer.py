"""medlsam-infer: in-process CLI runs on a synthetic cohort (exit codes, summary, resume)."""

from __future__ import annotations

import json

import pytest
import torch
from infer_helpers import FakeLocalizer, make_cohort

from medlsam.cli.infer import main
from medlsam.localization.network import MedLAM, save_medlam
from medlsam.pipeline import run as pipeline


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


@pytest.fixture
def fake_localizer(monkeypatch):
    """Replace MedLAM by true boxes read from the (test-only) query labels."""
    made = []

    def build(cfg, device):
        from medlsam.io import read_label

        labels = {}
        for image in cfg.data.query_images:
            seg = image.with_name(image.name.replace(".nii.gz", "_seg.nii.gz"))
            labels[image.name.replace(".nii.gz", "")] = read_label(seg)
        made.append(FakeLocalizer(labels, cfg.data.fg_class))
        return made[-1]

    monkeypatch.setattr(pipeline, "build_localizer", build)
    return made


def test_end_to_end_with_a_tiny_medlam_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    save_medlam(MedLAM(2), tmp_path / "medlam_tiny.pth")
    config, _ = make_cohort(
        tmp_path, n_queries=1, extra={"weight": {"medlam_load_path": "medlam_tiny.pth"}}
    )
    assert main(["--config", str(config), "--device", "cpu", "--quiet"]) == 0
    seg_dir = tmp_path / "result" / "seg"
    doc = json.loads((seg_dir / "run.json").read_text())
    assert doc["cases"]["query_0"]["status"] == "ok"
    assert len(doc["localizer"]["checkpoint_sha256"]) == 64
    assert (seg_dir / "query_0.nii.gz").is_file() and (seg_dir / "query_0.boxes.json").is_file()
    assert "1 done" in capsys.readouterr().err


def test_failed_case_summary_exit_code_and_resume(tmp_path, capsys, fake_localizer):
    config, _ = make_cohort(tmp_path, n_queries=3)
    (tmp_path / "query_2.nii.gz").write_bytes(b"")
    out = tmp_path / "elsewhere"
    assert main(["--config", str(config), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 of 3 queries failed" in err and "query_2: " in err and "empty" in err
    assert "Traceback" not in err
    assert (out / "query_0.nii.gz").is_file() and (out / "query_1.nii.gz").is_file()
    assert (out / "png" / "query_0" / "1_liver.png").is_file()
    assert main(["--config", str(config), "--output", str(out), "--quiet"]) == 1
    assert "0 done, 2 already done, 1 failed" in capsys.readouterr().err
    assert main(["--config", str(config), "--output", str(out), "--overwrite", "--quiet"]) == 1
    assert "2 done, 0 already done" in capsys.readouterr().err


def test_corrupt_sam_checkpoint_fails_before_any_case(tmp_path, capsys, fake_localizer):
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"PK\x03\x04 truncated")
    config, _ = make_cohort(
        tmp_path,
        n_queries=1,
        backend="sam_vit_b",
        extra={"weight": {"vit_load_path": "sam_vit_b_01ec64.pth"}},
    )
    code = main(["--config", str(config), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 4 and "sam_vit_b_01ec64.pth" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "result" / "seg" / "query_0.nii.gz").exists()
    assert not fake_localizer  # nothing else was built


def test_boxes_from_labels_needs_query_labels(tmp_path, capsys):
    config, _ = make_cohort(tmp_path, n_queries=1)
    assert main(["--config", str(config), "--boxes-from-labels", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "query_label_ls" in err and len(err.strip().splitlines()) == 1


def test_boxes_from_labels_upper_bound(tmp_path, capsys):
    config, _ = make_cohort(tmp_path, n_queries=1, query_labels=True)
    assert main(["--config", str(config), "--boxes-from-labels", "--quiet"]) == 0
    assert "upper bound" in capsys.readouterr().err
    doc = json.loads((tmp_path / "result" / "seg_manual_boxes" / "run.json").read_text())
    assert doc["upper_bound_baseline"] is True


def test_no_png_writes_no_figure_but_the_report(tmp_path, fake_localizer):
    config, _ = make_cohort(tmp_path, n_queries=1)
    out = tmp_path / "out"
    assert main(["--config", str(config), "--output", str(out), "--no-png", "--quiet"]) == 0
    assert not (out / "png").exists() and not list(out.rglob("*.png"))
    entry = json.loads((out / "run.json").read_text())["cases"]["query_0"]
    assert "figures" not in entry["seconds"] and "png" not in entry["outputs"]
    page = (out / "report.html").read_text()
    assert "query_0" in page and "no figures (--no-png)" in page and "liver" in page
