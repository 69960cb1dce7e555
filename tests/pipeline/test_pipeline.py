"""medlsam.pipeline.run end to end on a synthetic cohort (CPU, seconds): classic and a tiny SAM."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import make_ct
from infer_helpers import FakeLocalizer, make_cohort, tiny_sam
from PIL import Image

from medlsam.config import load_config
from medlsam.errors import ConfigError, OutputError
from medlsam.io import read_image
from medlsam.pipeline.run import run, run_case
from medlsam.segment import ClassicSegmenter, SamSegmenter

SMALL = (40, 36, 6)  # few slices: a tiny-SAM slice costs ~0.5 s on one core
LPS_TRANSPOSED = ((2, 1, 0), (True, False, True))  # slice axis 0, flipped in-plane axes


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _classic(cfg) -> ClassicSegmenter:
    seg = ClassicSegmenter()
    seg.fit([make_ct(seed=1), make_ct(seed=2)], cfg.data.fg_class)
    return seg


def test_run_case_classic_with_true_boxes(tmp_path):
    config, _ = make_cohort(tmp_path, n_queries=1)
    cfg = load_config(config)
    image, label = make_ct(seed=10)
    pred = run_case(image, FakeLocalizer(label, [1, 2]), _classic(cfg), cfg)
    assert pred.label.shape == image.shape and set(np.unique(pred.label)) <= {0, 1, 2}
    assert _dice(pred.label == 1, label.data == 1) > 0.8
    assert _dice(pred.label == 2, label.data == 2) > 0.7
    slices = pred.prompts["slice"]
    assert pred.slices_segmented == len(set(slices.tolist())) > 0
    assert (
        pred.prompts["box"].shape == (len(slices), 4)
        and pred.prompts["score"].shape == slices.shape
    )
    assert {"localize", "prompts", "segment", "assemble"} <= set(pred.seconds)


@pytest.mark.parametrize("parts", [1, 3])
def test_run_case_tiny_sam_encodes_each_slice_once(tmp_path, parts):
    config, _ = make_cohort(tmp_path, n_queries=1, backend="sam_vit_b")
    cfg = load_config(config, check_files=False)
    image, label = make_ct(SMALL, seed=10)
    pred = run_case(image, FakeLocalizer(label, [1, 2], parts=parts), SamSegmenter(tiny_sam()), cfg)
    distinct = len(set(pred.prompts["slice"].tolist()))
    assert len(pred.prompts["slice"]) > distinct  # several boxes share slices
    assert pred.work["encoder_calls"] == distinct == pred.slices_segmented
    assert pred.work["decoder_calls"] == distinct
    assert pred.label.shape == image.shape and pred.label.any()


def _outputs(folder, case):
    return [folder / f"{case}.nii.gz", folder / f"{case}.npz", folder / f"{case}.boxes.json"]


def test_end_to_end_classic_without_query_labels(tmp_path):
    config, labels = make_cohort(tmp_path, n_queries=2, orientations=[None, LPS_TRANSPOSED])
    cfg = load_config(config)
    assert cfg.data.query_labels is None
    localizer = FakeLocalizer(labels, [1, 2])
    report = run(cfg, "cpu", progress=False, localizer=localizer)
    assert report.ok == ["query_0", "query_1"] and not report.failed
    seg_dir = cfg.data.seg_save_path
    label_of = {}
    for case in ("query_0", "query_1"):
        query = read_image(tmp_path / f"{case}.nii.gz")
        for path in _outputs(seg_dir, case):
            assert path.is_file()
        written = nib.load(str(seg_dir / f"{case}.nii.gz"))
        assert written.shape == query.shape
        np.testing.assert_allclose(written.affine, query.affine, atol=1e-5)
        label = label_of[case] = np.asarray(written.dataobj)
        assert _dice(label == 1, labels[case].data == 1) > 0.8
        npz = np.load(seg_dir / f"{case}.npz")
        np.testing.assert_array_equal(npz["label"], label)
        assert npz["slice_axis"] == query.slice_axis() and not npz["upper_bound_baseline"]
        assert npz["box"].shape == (len(npz["slice"]), 4) and len(npz["score"]) == len(npz["slice"])
        boxes = json.loads((seg_dir / f"{case}.boxes.json").read_text())
        assert set(boxes["classes"]) == {"1", "2"} and boxes["upper_bound_baseline"] is False
        pngs = sorted((seg_dir / "png" / case).glob("*.png"))
        assert [p.name for p in pngs] == ["1_liver.png", "2_kidney_r.png", "overview.png"]
        image = np.asarray(Image.open(pngs[0]).convert("RGB"))
        assert min(image.shape[:2]) >= 100 and max(image.shape[:2]) >= 512
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # CT, overlay, text
    doc = json.loads((seg_dir / "run.json").read_text())
    assert doc["upper_bound_baseline"] is False and doc["uses_query_labels"] == []
    assert doc["config"]["vit"]["backend"] == "classic" and "torch" in doc["versions"]
    for case in ("query_0", "query_1"):
        entry = doc["cases"][case]
        assert entry["status"] == "ok" and entry["error"] is None
        assert entry["slices_segmented"] > 0 and entry["encoder_calls"] == 0
        assert {"read", "localize", "segment", "assemble", "write", "figures"} <= set(
            entry["seconds"]
        )
        assert entry["seconds"]["figures"] > 0
        assert entry["organs"]["1"]["voxels"] == int((label_of[case] == 1).sum())


def test_corrupt_query_fails_alone_and_rerun_skips_finished(tmp_path):
    config, labels = make_cohort(tmp_path, n_queries=3)
    (tmp_path / "query_1.nii.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
    cfg = load_config(config)
    localizer = FakeLocalizer(labels, [1, 2])
    seg = _classic(cfg)
    report = run(cfg, "cpu", progress=False, localizer=localizer, segmenter=seg)
    assert report.ok == ["query_0", "query_2"]
    assert [c for c, _ in report.failed] == ["query_1"]
    assert "query_1.nii.gz" in report.failed[0][1] and "\n" not in report.failed[0][1]
    seg_dir = cfg.data.seg_save_path
    assert not (seg_dir / "query_1.nii.gz").exists() and (seg_dir / "query_2.nii.gz").exists()
    doc = json.loads((seg_dir / "run.json").read_text())
    assert doc["cases"]["query_1"]["status"] == "failed"
    assert "query_1.nii.gz" in doc["cases"]["query_1"]["error"]

    calls = localizer.calls
    again = run(cfg, "cpu", progress=False, localizer=localizer, segmenter=seg)
    assert again.skipped == ["query_0", "query_2"] and [c for c, _ in again.failed] == ["query_1"]
    assert localizer.calls == calls  # nothing localized again (the bad case fails on reading)
    (seg_dir / "query_2.npz").unlink()  # an incomplete case is redone
    third = run(cfg, "cpu", progress=False, localizer=localizer, segmenter=seg)
    assert third.ok == ["query_2"] and localizer.calls == calls + 1
    forced = run(cfg, "cpu", overwrite=True, progress=False, localizer=localizer, segmenter=seg)
    assert forced.ok == ["query_0", "query_2"] and not forced.skipped


def test_rerun_with_other_settings_is_refused(tmp_path):
    config, labels = make_cohort(tmp_path, n_queries=1)
    cfg = load_config(config)
    run(cfg, "cpu", progress=False, localizer=FakeLocalizer(labels, [1, 2]))
    other, _ = make_cohort(tmp_path, n_queries=1, extra={"vit": {"overlap": "later"}})
    with pytest.raises(OutputError, match="overlap"):
        run(load_config(other), "cpu", progress=False, localizer=FakeLocalizer(labels, [1, 2]))


def test_device_and_precisions_are_recorded_and_a_gpu_record_is_not_resumed_on_cpu(tmp_path):
    config, labels = make_cohort(tmp_path, n_queries=1)
    cfg = load_config(config)
    localizer = FakeLocalizer(labels, [1, 2])
    localizer.precision = "fp32"  # what a Localizer on the CPU reports
    report = run(cfg, "cpu", progress=False, localizer=localizer)
    doc = json.loads(report.run_json.read_text())
    assert doc["device"] == "cpu" and doc["gpu"] is None
    settings = doc["settings"]
    assert settings["device"] == "cpu" and settings["medlam_precision"] == "fp32"
    assert "sam_precision" not in settings  # classic: no SAM
    settings.update(device="cuda", medlam_precision="fp16")  # as a GPU run records them
    report.run_json.write_text(json.dumps(doc))
    with pytest.raises(OutputError) as err:
        run(cfg, "cpu", progress=False, localizer=localizer)
    message = str(err.value)
    assert "device, medlam_precision differ" in message and "\n" not in message
    again = run(cfg, "cpu", progress=False, localizer=localizer, overwrite=True)
    assert again.ok == ["query_0"]


def test_manual_box_baseline_is_marked_and_kept_apart(tmp_path):
    config, _ = make_cohort(tmp_path, n_queries=1)
    with pytest.raises(ConfigError, match="query_label_ls"):
        run(load_config(config), "cpu", boxes_from_labels=True, progress=False)
    config, labels = make_cohort(tmp_path, n_queries=1, query_labels=True)
    cfg = load_config(config)
    report = run(cfg, "cpu", boxes_from_labels=True, progress=False)
    assert report.output.name == "seg_manual_boxes" and report.ok == ["query_0"]
    doc = json.loads(report.run_json.read_text())
    assert doc["upper_bound_baseline"] is True and doc["uses_query_labels"] == ["boxes_from_labels"]
    assert doc["localizer"] is None
    npz = np.load(report.output / "query_0.npz")
    assert bool(npz["upper_bound_baseline"])
    boxes = json.loads((report.output / "query_0.boxes.json").read_text())
    assert boxes["upper_bound_baseline"] is True and boxes["bbox_mode"] == "boxes_from_labels"
    truth = labels["query_0"].data
    assert _dice(npz["label"] == 1, truth == 1) > 0.8
    assert not cfg.data.seg_save_path.exists()  # the method's folder is untouched


def test_gt_slice_threshold_is_opt_in_and_reads_labels(tmp_path):
    extra = {"run": {"use_gt_slice_threshold": True}, "data": {"gt_slice_threshold": 10}}
    config, labels = make_cohort(tmp_path, n_queries=1, extra=extra)
    cfg = load_config(config)
    with pytest.raises(ConfigError, match="use_gt_slice_threshold"):
        run(cfg, "cpu", progress=False, localizer=FakeLocalizer(labels, [1, 2]))
    config, labels = make_cohort(tmp_path, n_queries=1, query_labels=True, extra=extra)
    cfg = load_config(config)
    wide = FakeLocalizer(labels, [1, 2])
    report = run(cfg, "cpu", progress=False, localizer=wide)
    npz = np.load(report.output / "query_0.npz")
    truth = labels["query_0"].data
    counts = np.isin(truth, [1, 2]).sum(axis=(0, 1))
    assert set(npz["slice"].tolist()) <= set(np.nonzero(counts > 10)[0].tolist())
    doc = json.loads(report.run_json.read_text())
    assert doc["uses_query_labels"] == ["gt_slice_threshold"]


def test_end_to_end_tiny_sam(tmp_path):
    config, labels = make_cohort(tmp_path, n_queries=1, backend="sam_vit_b", shape=SMALL)
    cfg = load_config(config, check_files=False)
    seg = SamSegmenter(tiny_sam(), name="sam_vit_b")
    report = run(cfg, "cpu", progress=False, localizer=FakeLocalizer(labels, [1, 2]), segmenter=seg)
    doc = json.loads(report.run_json.read_text())
    assert doc["settings"]["sam_precision"] == "fp32" and doc["settings"]["device"] == "cpu"
    entry = doc["cases"]["query_0"]
    assert entry["status"] == "ok"
    assert entry["encoder_calls"] == entry["slices_segmented"] == entry["decoder_calls"] > 0
    written = nib.load(str(report.output / "query_0.nii.gz"))
    assert written.shape == labels["query_0"].shape


class _SupportFittedLocalizer(FakeLocalizer):
    """A localizer that is fitted on the supports but has no prototypes file or fingerprint."""

    def __init__(self, labels, classes) -> None:
        super().__init__(labels, classes)
        self.fitted_on: list[int] = []

    def fit(self, supports, classes) -> None:
        self.fitted_on.append(sum(1 for _ in supports))


def test_a_localizer_fitted_on_supports_is_fitted_once_and_not_when_all_is_done(tmp_path):
    from medlsam.localization.base import FewShotLocalizer, SupportLocalizer
    from medlsam.pipeline.localize import localize

    config, labels = make_cohort(tmp_path, n_queries=2)
    cfg = load_config(config)
    assert cfg.data.prototypes is None
    localizer = _SupportFittedLocalizer(labels, [1, 2])
    assert isinstance(localizer, SupportLocalizer)
    assert not isinstance(localizer, FewShotLocalizer)
    n_supports = len(cfg.data.support_images)
    report = run(cfg, "cpu", progress=False, localizer=localizer, segmenter=_classic(cfg))
    assert report.ok == ["query_0", "query_1"] and localizer.fitted_on == [n_supports]
    run(cfg, "cpu", progress=False, localizer=localizer, segmenter=_classic(cfg))
    assert localizer.fitted_on == [n_supports]  # every case done: no fit
    boxes = localize(cfg, "cpu", output=tmp_path / "boxes", progress=False, localizer=localizer)
    assert boxes.ok == ["query_0", "query_1"] and localizer.fitted_on == [n_supports] * 2
