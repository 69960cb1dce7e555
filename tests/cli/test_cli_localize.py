"""``medlsam-localize`` end to end: tiny synthetic volumes, tiny published-format checkpoint."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_ct

from medlsam.cli.localize import main
from medlsam.config import load_config, write_config_txt
from medlsam.errors import ConfigError
from medlsam.io import write_nifti, write_path_list
from medlsam.localization.network import MedLAM, save_medlam


def _config_data(root):
    return {
        "query_image_ls": root / "query_image.txt",
        "query_label_ls": root / "query_label.txt",
        "fg_class": [1, 2],
        "bbox_mode": "WPL",
        "slice_interval": False,
        "feature_scale_ls": ["feature0"],
        "seg_save_path": root / "out",
    }


def _config(root, name, data_extra, checkpoint):
    data = {**_config_data(root), **data_extra}
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


def test_needs_no_sam_weights(cohort, capsys):
    root = cohort["root"]
    out = root / "out_no_sam"
    data = {"prototypes": root / "protos.pt", "seg_save_path": out}
    # a SAM backend whose checkpoint does not exist: medlsam-infer refuses, localize runs
    sections = {
        "data": {**_config_data(root), **data},
        "vit": {"net_type": "vit_b", "backend": "sam_vit_b"},
        "weight": {
            "medlam_load_path": cohort["checkpoint"],
            "vit_load_path": root / "absent_sam_vit_b.pth",
        },
        "run": {"seed": 5, "device": "cpu"},
    }
    config = write_config_txt(root / "no_sam.txt", sections)
    with pytest.raises(ConfigError, match="absent_sam_vit_b.pth"):
        load_config(config)
    assert main(["--config", str(config), "--quiet"]) == 0
    assert (out / "query_a.boxes.json").is_file()
    record = json.loads((out / "localize.json").read_text())
    assert record["command"] == "localize" and "segmenter" not in record


def test_killed_run_resumes_without_redoing_finished_cases(cohort, capsys, monkeypatch):
    from medlsam.localization.localizer import Localizer

    root = cohort["root"]
    out = root / "out_resume"
    data = {"prototypes": root / "protos.pt", "seg_save_path": out}
    config = _config(root, "resume.txt", data, cohort["checkpoint"])
    real = Localizer.predict
    calls = []

    def killed_on_second(self, volume):
        calls.append(volume.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, volume)

    monkeypatch.setattr(Localizer, "predict", killed_on_second)
    assert main(["--config", str(config), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    record = json.loads((out / "localize.json").read_text())
    assert record["cases"]["query_a"]["status"] == "ok"
    assert record["cases"]["query_b"]["status"] == "interrupted"
    assert not (out / "query_b.boxes.json").exists()

    calls.clear()
    monkeypatch.setattr(Localizer, "predict", lambda self, v: calls.append(v.name) or real(self, v))
    assert main(["--config", str(config), "--quiet"]) == 0
    assert calls == ["query_b"]  # query_a was finished: skipped, not localized again
    record = json.loads((out / "localize.json").read_text())
    assert {c: e["status"] for c, e in record["cases"].items()} == {
        "query_a": "ok",
        "query_b": "ok",
    }
    scored = json.loads((out / "box_metrics.json").read_text())["cases"]
    assert {s["case"] for s in scored} == {"query_a", "query_b"}  # the skipped case too


def test_shards_write_their_records_and_the_last_merges(cohort, capsys):
    root = cohort["root"]
    out = root / "out_shards"
    data = {"prototypes": root / "protos.pt", "seg_save_path": out}
    config = _config(root, "shards.txt", data, cohort["checkpoint"])
    assert main(["--config", str(config), "--quiet", "--shard", "2/2"]) == 0
    assert (out / "query_b.boxes.json").is_file() and not (out / "query_a.boxes.json").exists()
    assert not (out / "localize.json").exists()
    assert main(["--config", str(config), "--quiet", "--shard", "1/2"]) == 0
    merged = json.loads((out / "localize.json").read_text())
    assert set(merged["cases"]) == {"query_a", "query_b"}
    assert sorted(merged["shards"]["records"]) == [
        "localize.shard-1-of-2.json",
        "localize.shard-2-of-2.json",
    ]
    assert "[shard 1/2]" in capsys.readouterr().err
