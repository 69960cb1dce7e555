"""scripts/gpu_check.py on the CPU: the dry run of the prepared GPU check (tiny models)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import gpu_check  # noqa: E402


def test_dry_run_of_the_in_process_checks_passes_and_prints_one_table(tmp_path, capsys):
    report = tmp_path / "report.json"
    rc = gpu_check.main(
        [
            "--device",
            "cpu",
            "--tiny",
            "--only",
            "cuda-tests,sam,medlam",
            "--work",
            str(tmp_path / "work"),
            "--json",
            str(report),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    table = out[out.index("| check | status |") :].splitlines()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table[2:]}
    assert rows == {"cuda-tests": "SKIP", "sam": "PASS", "medlam": "PASS"}
    import json

    results = json.loads(report.read_text())["results"]
    assert results["sam_fast_vs_stock_rel"] < 1e-4


def test_a_failing_check_is_one_row_and_a_non_zero_exit(tmp_path, capsys, monkeypatch):
    def broken(ctx):
        raise ValueError("kaput\nsecond line")

    monkeypatch.setitem(gpu_check.CHECKS, "sam", broken)
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--only", "sam", "--work", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "| sam | FAIL |" in out and "ValueError: kaput |" in out and "second line" not in out


def test_cuda_without_cuda_and_unknown_checks_are_refused(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "nope"])


@pytest.mark.slow
def test_full_dry_run_passes(tmp_path, capsys):
    """Every check: the command-line runs, training with save/resume and the overlap script
    included (minutes on a CPU)."""
    import json

    report = tmp_path / "report.json"
    args = ["--device", "cpu", "--tiny", "--work", str(tmp_path / "w"), "--budget", "1500"]
    rc = gpu_check.main([*args, "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "FAIL" not in out
    results = json.loads(report.read_text())["results"]
    assert results["train"]["resume_max_diff"] == 0.0  # resumed == uninterrupted on the CPU
