"""Tests of ``medlsam-demo`` (end to end on a synthetic cohort) and its packaged checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medlsam.cli.demo import demo_checkpoint, main
from medlsam.localization.network import build_medlam

pytestmark = pytest.mark.usefixtures("one_thread")


def test_packaged_demo_checkpoint_is_small_and_loads() -> None:
    path = demo_checkpoint()
    assert path.stat().st_size <= 10 * 1024 * 1024
    model = build_medlam(path)
    keys = torch.load(path, weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys)
    assert model.base_chns >= 1


def _check_outputs(out: Path, printed: str, queries: int) -> None:
    assert "| liver |" in printed and "mean over organs" in printed
    header = next(line for line in printed.splitlines() if line.startswith("| id | organ"))
    assert "DSC medlam" in header and "DSC registration" in header  # side by side
    for method in ("medlam", "registration"):
        seg = out / method / "seg"
        cases = sorted(p.name for p in seg.glob("*.boxes.json"))
        assert len(cases) == queries
        boxes = json.loads((seg / cases[0]).read_text())
        assert boxes["classes"]  # something was localized
        assert len(list(seg.glob("*.nii.gz"))) == queries
        assert any((out / method / "png").rglob("*.png"))
        summary = json.loads((out / "eval" / method / "summary.json").read_text())
        assert summary["n_cases"] == queries
        record = json.loads((seg / "run.json").read_text())
        assert record["localizer"]["method"] == method


def test_demo_runs_end_to_end_on_a_tiny_cohort(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(
        ["--out", str(out), "--queries", "1", "--shape", "48", "48", "40", "--device", "cpu"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    _check_outputs(out, printed, 1)


@pytest.mark.slow
def test_demo_default_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--device", "cpu"]) == 0
    _check_outputs(out, capsys.readouterr().out, 3)


def test_demo_reports_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    code = main(["--out", str(tmp_path), "--checkpoint", str(tmp_path / "none.pth")])
    err = capsys.readouterr().err
    assert code == 4 and "none.pth" in err and "Traceback" not in err
