"""``medlsam-localize`` end to end: tiny synthetic volumes, tiny published-format checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_ct

from medlsam.cli.localize import main
from medlsam.config import write_config_txt
from medlsam.io import write_nifti, write_path_list
from medlsam.localization.network import MedLAM, save_medlam


def _config(root, name, data_extra, checkpoint):
    data = {
        "query_image_ls": root / "query_image.txt",
        "query_label_ls": root / "query_label.txt",
        "fg_class": [1, 2],
        "bbox_mode": "WPL",
        "slice_interval": False,
        "feature_scale_ls": ["feature0"],
        "seg_save_path": root / "out",
    }
    data.update(data_extra)
    return write_config_txt(
        root / name,
        {
            "data": data,
            "weight": {"medlam_load_path": checkpoint},
            "run": {"seed": 5, "device": "cpu"},
        },
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cohort")
    images, labels = {}, {}
    for name, seed in (("support_0", 0), ("query_a", 1), ("query_b", 2)):
        image, label = make_ct(seed=seed)
        data = label.data
        if name == "query_b":
            data = np.where(data == 2, 0, data)  # organ 2 absent from this case
        images[name] = write_nifti(image.data, image.affine, root / f"{name}.nii.gz")
        labels[name] = write_nifti(data.astype(np.int16), label.affine, root / f"{name}_seg.nii.gz")
    write_path_list(root / "support_image.txt", [images["support_0"]])
    write_path_list(root / "support_label.txt", [labels["support_0"]])
    write_path_list(root / "query_image.txt", [images["query_a"], images["query_b"]])
    write_path_list(root / "query_label.txt", [labels["query_a"], labels["query_b"]])
    torch.manual_seed(0)
    model = MedLAM(2)
    with torch.no_grad():  # all position codes 0: every organ starts at the query's centre
        model.fc3.weight.zero_()
        model.fc3.bias.zero_()
    checkpoint = save_medlam(model, root / "medlam.pth", half=True)
    config = _config(
        root,
        "fit.txt",
        {
            "support_image_ls": root / "support_image.txt",
            "support_label_ls": root / "support_label.txt",
            "prototypes": root / "protos.pt",
        },
        checkpoint,
    )
    rc = main(["--config", str(config), "--quiet"])
    return {"root": root, "rc": rc, "checkpoint": checkpoint, "images": images}


def test_writes_boxes_and_published_iou_table(cohort, capsys):
    root = cohort["root"]
    assert cohort["rc"] == 0
    assert (root / "protos.pt").is_file()
    for case in ("query_a", "query_b"):
        doc = json.loads((root / "out" / f"{case}.boxes.json").read_text())
        assert doc["case"] == case and set(doc["classes"]) == {"1", "2"}
        for entry in doc["classes"].values():
            assert entry["inside"] == bool(entry["boxes"])
            for box in entry["boxes"]:
                assert all(0 <= a <= b < s for a, b, s in zip(box["min"], box["max"], (40, 36, 24)))
                assert len(box["min_mm"]) == 3
    iou = (root / "out" / "iou.txt").read_text().splitlines()
    assert re.fullmatch(r"MedLAM box IoU for class 1: \d\.\d{3} \+- \d\.\d{3}", iou[0])
    assert iou[1].startswith("MedLAM box IoU for class 2: ")
    assert any("class 2" in line and "1 absent" in line for line in iou)
    wd = (root / "out" / "wd.txt").read_text().splitlines()
    assert re.fullmatch(r"MedLAM box WD \(mm\) for class 1: \d+\.\d{3} \+- \d+\.\d{3}", wd[0])
    metrics = json.loads((root / "out" / "box_metrics.json").read_text())
    assert metrics["summary"]["2"]["cases"] == 2
    assert metrics["summary"]["2"]["absent"] + metrics["summary"]["2"]["false_positive"] == 1
    rows = (root / "out" / "box_metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,box,status,iou") and len(rows) >= 5


def test_prototypes_alone_give_the_same_boxes(cohort, capsys):
    root = cohort["root"]
    config = _config(
        root,
        "reuse.txt",
        {"prototypes": root / "protos.pt", "seg_save_path": root / "out2"},
        cohort["checkpoint"],
    )
    assert main(["--config", str(config), "--quiet", "--device", "cpu"]) == 0
    for case in ("query_a", "query_b"):
        first = json.loads((root / "out" / f"{case}.boxes.json").read_text())
        second = json.loads((root / "out2" / f"{case}.boxes.json").read_text())
        assert first["classes"] == second["classes"]
    assert "MedLAM box IoU for class 1" in capsys.readouterr().out


def test_failing_query_is_reported_and_the_rest_go_on(cohort, capsys):
    root = cohort["root"]
    bad = root / "query_bad.nii.gz"
    bad.write_bytes(b"not a nifti file")
    write_path_list(root / "mixed.txt", [bad, cohort["images"]["query_a"]])
    config = _config(
        root,
        "mixed.txt.cfg.txt",
        {
            "prototypes": root / "protos.pt",
            "query_image_ls": root / "mixed.txt",
            "query_label_ls": None,
            "seg_save_path": root / "out3",
        },
        cohort["checkpoint"],
    )
    assert main(["--config", str(config), "--quiet"]) == 1
    assert (root / "out3" / "query_a.boxes.json").is_file()
    err = capsys.readouterr().err
    assert "1 of 2 queries failed" in err and "query_bad" in err


def test_mis_shaped_checkpoint_is_one_line(cohort, capsys):
    root = cohort["root"]
    state = torch.load(cohort["checkpoint"], weights_only=True)
    state["module.fc1.weight"] = state["module.fc1.weight"][:, :10]
    torch.save(state, root / "bad.pth")
    config = _config(root, "bad.txt", {"prototypes": root / "protos.pt"}, root / "bad.pth")
    assert main(["--config", str(config)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pth" in err[0] and "fc1.weight" in err[0]
