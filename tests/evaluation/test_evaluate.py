"""Folder evaluation: matching, honest averages, box IoU, outputs, the CLI and --compare."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ct_testdata_path, reorient
from PIL import Image

from medlsam.cli.evaluate import main
from medlsam.errors import InputError
from medlsam.evaluation.case import CaseJob, score_case
from medlsam.evaluation.folder import evaluate
from medlsam.io import Volume, read_label, write_nifti, write_path_list

SPACING = (2.0, 1.0, 0.5)
AFFINE = np.diag([*SPACING, 1.0])


def _cubes() -> np.ndarray:
    """Organ 1: 3x3x3 cube; organ 2: 2x2x2 cube; organ 3: 2x3x2 block (shape 10x10x10)."""
    label = np.zeros((10, 10, 10), np.uint8)
    label[1:4, 1:4, 1:4] = 1
    label[6:8, 6:8, 6:8] = 2
    label[1:3, 6:9, 6:8] = 3
    return label


def _write(folder: Path, case: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    return write_nifti(data.astype(np.uint8), affine, folder / f"{case}.nii.gz")


def _cohort(tmp_path: Path) -> tuple[Path, Path]:
    """Three labelled cases; predictions for a (perfect), b (organ 1 empty) and an extra z."""
    pred_dir, lab_dir = tmp_path / "pred", tmp_path / "labels"
    labels = []
    for case in ("a", "b", "c"):
        label = _cubes()
        if case == "b":
            label[label == 3] = 0  # organ 3 absent from label b ...
        labels.append(_write(lab_dir, case, label))
        pred = label.copy()
        if case == "b":
            pred[pred == 1] = 0  # ... and from prediction b; organ 1 missed in b
        if case != "c":  # c has no prediction
            _write(pred_dir, case, pred)
    _write(pred_dir, "z", _cubes())  # a prediction without label
    list_file = tmp_path / "labels.txt"
    write_path_list(list_file, labels)
    return pred_dir, list_file


def test_empty_prediction_lowers_mean_and_absent_is_excluded(tmp_path, caplog):
    pred_dir, list_file = _cohort(tmp_path)
    caplog.set_level(logging.WARNING)
    from medlsam.io import read_path_list

    result = evaluate(pred_dir, read_path_list(list_file), classes=[1, 2, 3], skip_missing=True)
    c = result.summary["classes"]
    # organ 1: case a DSC 1, case b empty prediction DSC 0 -> mean 0.5, std 0.5 (population)
    assert (c["1"]["n"], c["1"]["dsc"]["mean"], c["1"]["dsc"]["std"]) == (2, 0.5, 0.5)
    assert c["1"]["nsd"]["mean"] == 0.5 and c["1"]["empty_prediction"] == 1
    assert c["1"]["hd95"] == {"mean": 0.0, "std": 0.0, "n": 1} and c["1"]["hd95_missing"] == 1
    # organ 3: absent from both in case b -> excluded and counted
    assert (c["3"]["n"], c["3"]["absent"], c["3"]["dsc"]["mean"]) == (1, 1, 1.0)
    assert result.summary["excluded"]["absent"] == 1
    assert result.summary["mean"]["dsc"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    # missing on either side is reported
    assert result.summary["missing_predictions"] == ["c"]
    assert result.summary["missing_labels"] == ["z"]
    assert result.summary["n_cases"] == 2
    text = caplog.text
    assert "no prediction" in text and "c" in text and "have no label" in text

    assert "--skip-missing" in text and "biased upward" in text
    published = evaluate(
        pred_dir, read_path_list(list_file), [1, 2, 3], published_averages=True, skip_missing=True
    )
    p1 = published.summary["classes"]["1"]
    assert (p1["n"], p1["dsc"]["mean"], p1["dropped"]) == (1, 1.0, 1)
    assert "biases DSC upward" in caplog.text

    as_empty = evaluate(pred_dir, read_path_list(list_file), [1, 2, 3])  # the default
    e1 = as_empty.summary["classes"]["1"]
    assert (e1["n"], e1["empty_prediction"], e1["missing_prediction"]) == (3, 1, 1)
    assert e1["dsc"]["mean"] == pytest.approx(1 / 3)
    assert as_empty.summary["excluded"]["missing_predictions"] == 0


def test_false_positive_and_classes_found_automatically(tmp_path):
    lab_dir, pred_dir = tmp_path / "l", tmp_path / "p"
    label = _cubes()
    label[label == 2] = 0
    pred = _cubes()  # predicts organ 2, absent from the label
    pred[0, 0, 9] = 9  # an id present in no label
    labels = [_write(lab_dir, "a", label)]
    _write(pred_dir, "a", pred)
    scored = evaluate(pred_dir, labels, classes=[1, 2, 3])
    c2 = scored.summary["classes"]["2"]
    assert (c2["n"], c2["false_positive"], c2["dsc"]["mean"], c2["hd95_missing"]) == (1, 1, 0.0, 1)
    auto = evaluate(pred_dir, labels)  # classes from the labels: 1 and 3 only
    assert list(auto.summary["classes"]) == ["1", "3"]


def test_box_iou_from_boxes_json(tmp_path):
    lab_dir, pred_dir = tmp_path / "l", tmp_path / "p"
    labels = [_write(lab_dir, "a", _cubes())]
    _write(pred_dir, "a", _cubes())
    doc = {
        "case": "a",
        "classes": {
            # two SPL sub-boxes whose enclosing box is organ 1's box [1..3]^3 -> IoU 1
            "1": {
                "boxes": [
                    {"min": [1, 1, 1], "max": [3, 3, 2]},
                    {"min": [2, 1, 2], "max": [3, 3, 3]},
                ]
            },
            # organ 2's box is [6..7]^3 (8 voxels); predicted [6..7]x[6..7]x[6..8] (12) -> 8/12
            "2": {"boxes": [{"min": [6, 6, 6], "max": [7, 7, 8]}]},
            "3": {"boxes": [], "inside": False},  # outside the image -> IoU 0
        },
    }
    (pred_dir / "a.boxes.json").write_text(json.dumps(doc))
    result = evaluate(pred_dir, labels, classes=[1, 2, 3])
    ious = {s.class_id: s.iou for s in result.scores}
    assert ious == pytest.approx({1: 1.0, 2: 8 / 12, 3: 0.0})
    assert result.summary["classes"]["2"]["iou"]["mean"] == pytest.approx(8 / 12)
    (pred_dir / "a.boxes.json").write_text("{not json")
    with pytest.raises(InputError, match="a.boxes.json"):
        evaluate(pred_dir, labels, classes=[1])


def test_prediction_in_another_orientation_is_put_on_the_label_grid(tmp_path):
    label = Volume(_cubes().astype(np.int32), AFFINE)
    lab = write_nifti(label.data.astype(np.uint8), label.affine, tmp_path / "a_label.nii.gz")
    pred = label.data.copy()
    pred[1:4, 1:4, 4] = 1  # organ 1 one voxel longer along axis 2 -> DSC 6/7, HD95 0.5 mm
    moved = reorient(Volume(pred, AFFINE), (2, 0, 1), (True, False, True))
    pred_file = write_nifti(moved.data.astype(np.uint8), moved.affine, tmp_path / "a_pred.nii.gz")
    scores = score_case(CaseJob("a", lab, pred_file, None, (1, 2), 2.0))
    assert scores[0].dsc == pytest.approx(6 / 7) and scores[0].hd95_monai == pytest.approx(0.5)
    assert scores[1].dsc == 1.0
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    bad = write_nifti(pred.astype(np.uint8), shifted, tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match="does not match the label"):
        score_case(CaseJob("a", lab, bad, None, (1,), 2.0))


@pytest.mark.parametrize(
    "parts",
    [
        ("word", "word_annotation_template_label.nii.gz"),
        ("totalsegmentator", "example_seg.nii.gz"),
    ],
)
def test_real_label_map_against_itself(parts):
    path = ct_testdata_path(*parts)
    scores = score_case(CaseJob("self", path, path, None, None, 2.0))
    present = np.unique(read_label(path).data)
    assert len(scores) == len(present[present > 0]) >= 10
    for s in scores:
        assert (s.status, s.dsc, s.nsd, s.hd95_monai, s.hd95_pooled) == ("ok", 1.0, 1.0, 0.0, 0.0)


def test_real_label_map_against_a_shifted_copy(tmp_path):
    path = ct_testdata_path("totalsegmentator", "example_seg.nii.gz")
    label = read_label(path)
    shifted = np.zeros_like(label.data)
    shifted[1:] = label.data[:-1]  # one voxel along i
    pred = write_nifti(shifted.astype(np.uint8), label.affine, tmp_path / "p.nii.gz")
    scores = score_case(CaseJob("s", path, pred, None, None, 2.0))
    step = float(label.spacing[0])
    assert len(scores) >= 10
    for s in scores:
        assert 0.0 <= s.dsc < 1.0
        # every surface voxel moved by one voxel: no distance exceeds one step along i
        assert 0.0 < s.hd95_pooled <= step + 1e-6 and 0.0 < s.hd95_monai <= step + 1e-6


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cli_writes_every_output(tmp_path, capsys):
    pred_dir, list_file = _cohort(tmp_path)
    out = tmp_path / "out"
    rc = main(
        [
            "--pred",
            str(pred_dir),
            "--labels",
            str(list_file),
            "--classes",
            "1,2,3",
            "--output",
            str(out),
            "--hd95",
            "pooled",
            "--tolerance",
            "1.5",
            "--skip-missing",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "--skip-missing" in captured.err and "biased upward" in captured.err
    assert "| 1 | class_1 | 2 | 0.500 ± 0.500 |" in captured.out
    assert "mean over organs" in captured.out and "labels without prediction: 1 (c)" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["classes"]["1"]) >= {"name", "n", "dsc", "nsd", "hd95", "iou"}
    assert set(summary["mean"]) == {"dsc", "nsd", "hd95", "iou"}
    assert summary["settings"]["hd95_definition"] == "pooled"
    assert summary["settings"]["tolerance_mm"] == 1.5
    lines = (out / "dsc.txt").read_text().splitlines()
    assert lines[0] == "DSC for class 1: 0.500 +- 0.500" and len(lines) == 3
    assert all(
        re.fullmatch(r"HD95 for class \d+: \S+ \+- \S+", line)
        for line in (out / "hd95.txt").read_text().splitlines()
    )
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    statuses = {(r["case"], r["class_id"]): r["status"] for r in rows}
    assert statuses[("b", "1")] == "empty_prediction" and statuses[("b", "3")] == "absent"
    assert statuses[("c", "")] == "missing_prediction" and statuses[("z", "")] == "missing_label"
    image = _read_png(out / "boxplot_dsc.png")
    assert image.shape[0] > 100 and (image != 255).any()
    names = {p.name for p in out.iterdir()}
    assert {"boxplot_nsd.png", "boxplot_hd95.png", "report.html"} <= names
    assert "boxplot_iou.png" not in names  # no boxes file: no box IoU to plot


def test_cli_counts_a_missing_prediction_as_empty_in_its_own_column(tmp_path, capsys):
    pred_dir, list_file = _cohort(tmp_path)
    out = tmp_path / "out"
    args = ["--pred", str(pred_dir), "--labels", str(list_file), "--classes", "1,2,3"]
    assert main([*args, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    head = next(line for line in captured.out.splitlines() if line.startswith("| id "))
    column = [c.strip() for c in head.split("|")].index("no pred file")
    row = next(line for line in captured.out.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3] == "3" and cells[4].startswith("0.333") and cells[column] == "1"
    assert "scored as empty predictions" in captured.err
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    statuses = {(r["case"], r["class_id"]): r["status"] for r in rows}
    assert statuses[("c", "1")] == "missing_prediction" and statuses[("c", "2")] == (
        "missing_prediction"
    )
    assert ("c", "") not in statuses  # scored, so not listed as an unscored case


def test_cli_config_mode_uses_names_and_seg_save_path(tmp_path, capsys):
    pred_dir, list_file = _cohort(tmp_path)
    images = tmp_path / "images.txt"
    write_path_list(images, [tmp_path / "img" / f"{c}.nii.gz" for c in ("a", "b", "c")])
    config = tmp_path / "test_cfg.txt"
    config.write_text(
        "[data]\n"
        f"support_image_ls = {images}\nsupport_label_ls = {list_file}\n"
        f"query_image_ls = {images}\nquery_label_ls = {list_file}\n"
        "fg_class = [1, 2]\nfg_class_name = [liver, spleen]\n"
        f"seg_save_path = {pred_dir}\n"
    )
    assert main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | liver |" in out and "| 2 | spleen |" in out and "class_3" not in out
    assert (pred_dir / "summary.json").is_file()  # default output: the prediction folder


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    rc = main(["--pred", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "none.txt")])
    err = capsys.readouterr().err
    assert rc == InputError.exit_code
    assert "none.txt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([]) != 0
    (tmp_path / "empty").mkdir()
    write_path_list(tmp_path / "one.txt", [_write(tmp_path / "l", "q", _cubes())])
    rc = main(["--pred", str(tmp_path / "empty"), "--labels", str(tmp_path / "one.txt")])
    assert rc == InputError.exit_code and "no prediction matches" in capsys.readouterr().err
    pred_dir, list_file = _cohort(tmp_path)
    (list_file.parent / "labels" / "a.nii.gz").write_bytes(b"garbage")
    rc = main(["--pred", str(pred_dir), "--labels", str(list_file), "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == InputError.exit_code and "a.nii.gz" in err and "Traceback" not in err


def test_compare_two_runs_side_by_side(tmp_path, capsys):
    pred_dir, list_file = _cohort(tmp_path)
    better = tmp_path / "better"
    for case in ("a", "b", "c"):
        label = read_label(tmp_path / "labels" / f"{case}.nii.gz")
        _write(better, case, label.data)
    run1, run2 = tmp_path / "sam", tmp_path / "medsam"
    for pred, out in ((pred_dir, run1), (better, run2)):
        assert (
            main(
                [
                    "--pred",
                    str(pred),
                    "--labels",
                    str(list_file),
                    "--classes",
                    "1,2",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert main(["--compare", str(run1), str(run2)]) == 0
    table = capsys.readouterr().out
    header = table.splitlines()[0]
    assert "DSC sam" in header and "DSC medsam" in header
    row1 = next(line for line in table.splitlines() if line.startswith("| 1 |"))
    # run 1: DSC 1 (a), 0 (b: empty), 0 (c: no prediction file) -> 1/3 ± sqrt(2)/3
    assert "0.333 ± 0.471" in row1 and "1.000 ± 0.000" in row1
    assert main(["--compare", str(tmp_path / "missing")]) == InputError.exit_code


def test_parallel_workers_give_the_same_scores(tmp_path):
    pred_dir, list_file = _cohort(tmp_path)
    from medlsam.io import read_path_list

    one = evaluate(pred_dir, read_path_list(list_file), [1, 2, 3], workers=1)
    two = evaluate(pred_dir, read_path_list(list_file), [1, 2, 3], workers=2)
    key = [(s.case, s.class_id, s.status, f"{s.dsc:.12f}") for s in one.scores]
    assert key == [(s.case, s.class_id, s.status, f"{s.dsc:.12f}") for s in two.scores]
    assert not any(math.isnan(s.dsc) for s in one.scores if s.status != "absent")


def test_no_png_and_compare_draws_runs_side_by_side(tmp_path, capsys):
    pred_dir, list_file = _cohort(tmp_path)
    runs = []
    for name, extra in (("honest", []), ("published", ["--published-averages"])):
        out = tmp_path / name
        args = ["--pred", str(pred_dir), "--labels", str(list_file), "--classes", "1,2,3"]
        assert main([*args, "--output", str(out), "--no-png", *extra]) == 0
        assert not list(out.rglob("*.png")) and (out / "report.html").is_file()
        runs.append(out)
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert "figure_seconds" not in summary
    capsys.readouterr()
    assert main(["--compare", *map(str, runs)]) == 0
    assert "give --output DIR to draw" in capsys.readouterr().err
    assert main(["--compare", *map(str, runs), "--output", str(tmp_path / "cmp")]) == 0
    image = _read_png(tmp_path / "cmp" / "compare_dsc.png")
    assert image.shape[0] > 200 and len(np.unique(image.reshape(-1, 3), axis=0)) > 10
