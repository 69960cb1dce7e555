"""The bad-input catalogue: every case runs the real CLI in-process on tiny synthetic data.

Each test checks the exit code documented in :mod:`medlsam.cli`, that no traceback is shown,
and that the message names the file (or key, or organ) and what was expected:

* an error that stops the run (config 2, input 3, checkpoint 4, output 5, interrupt 130) is
  exactly ONE line on stderr;
* a bad QUERY fails alone (exit 1): the run goes on, and the summary's line for that case
  (``  <case>: <reason>``) is the one-line reason.

Backend ``classic`` and a width-2 MedLAM with prototypes computed once per module (see
``robust_helpers``), so most tests take well under a second.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ORIENTATIONS, ct_testdata_path, make_ct, reorient
from infer_helpers import FakeLocalizer
from robust_helpers import build_kit, ct_like, files_of, save, write_config

from medlsam import io as mio
from medlsam.cli.evaluate import main as evaluate_main
from medlsam.cli.infer import main as infer_main
from medlsam.cli.localize import main as localize_main
from medlsam.config import load_config
from medlsam.errors import ConfigError
from medlsam.io import read_image, read_label, write_mask, write_path_list
from medlsam.pipeline import run as pipeline
from medlsam.pipeline.run import run, run_case
from medlsam.preprocess import medlam_image
from medlsam.segment import ClassicSegmenter


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs with one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return build_kit(tmp_path_factory.mktemp("kit"), n_queries=2)


def infer(config: Path, *extra: str) -> int:
    return infer_main(["--config", str(config), "--device", "cpu", "--quiet", *extra])


def one_line(capsys, rc: int, code: int, *needles: str) -> str:
    """A run-stopping error: exit ``code`` and exactly one stderr line holding ``needles``."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert rc == code, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def case_failed(capsys, rc: int, case: str, *needles: str) -> str:
    """A bad query: exit 1, the summary names ``case`` and why, in one line."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc == 1, err
    lines = [line for line in err.splitlines() if line.startswith(f"  {case}: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def bad_query(tmp_path, kit, name: str, write) -> tuple[Path, Path]:
    """A config whose only query is ``tmp_path/name``, written by ``write(path)``."""
    path = tmp_path / name
    write(path)
    return write_config(tmp_path, kit, [path]), path


# --------------------------------------------------------------------------------------------
# a bad query fails alone (exit 1)


def test_missing_query_is_a_config_error_naming_it(tmp_path, capsys, kit):
    config = write_config(tmp_path, kit, [kit.queries[0], tmp_path / "gone.nii.gz"])
    one_line(capsys, infer(config), 2, "gone.nii.gz", "not found", "query image")


def test_query_vanishing_during_the_run_fails_alone(tmp_path, kit):
    gone = tmp_path / "vanishing.nii.gz"
    gone.write_bytes(kit.queries[0].read_bytes())
    cfg = load_config(write_config(tmp_path, kit, [gone]))
    gone.unlink()  # after the config's file check
    report = run(cfg, device="cpu", progress=False)
    assert report.failed == [("vanishing", f"{gone}: file not found")]


def test_empty_query(tmp_path, capsys, kit):
    config, path = bad_query(tmp_path, kit, "empty.nii.gz", lambda p: p.write_bytes(b""))
    case_failed(capsys, infer(config), "empty", str(path), "empty", "expected a CT volume")


def test_truncated_query(tmp_path, capsys, kit):
    whole = kit.queries[0].read_bytes()
    config, path = bad_query(
        tmp_path, kit, "cut.nii.gz", lambda p: p.write_bytes(whole[: len(whole) // 2])
    )
    case_failed(capsys, infer(config), "cut", str(path), "expected NIfTI")


def test_corrupt_query(tmp_path, capsys, kit):
    junk = gzip.compress(np.random.default_rng(0).bytes(5000))
    config, path = bad_query(tmp_path, kit, "junk.nii.gz", lambda p: p.write_bytes(junk))
    case_failed(capsys, infer(config), "junk", str(path), "cannot read")


def test_corrupt_query_among_good_ones_fails_alone(tmp_path, capsys, kit):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b not really gzip")
    config = write_config(tmp_path, kit, [junk, kit.queries[0]])
    rc = infer(config)
    line = case_failed(capsys, rc, "junk", str(junk))
    assert "1 done" not in line
    out = tmp_path / "out"
    assert (out / "query_0.nii.gz").is_file() and not (out / "junk.nii.gz").exists()
    doc = json.loads((out / "run.json").read_text())
    assert doc["cases"]["query_0"]["status"] == "ok"
    assert doc["cases"]["junk"]["status"] == "failed" and str(junk) in doc["cases"]["junk"]["error"]


def test_2d_image(tmp_path, capsys, kit):
    config, path = bad_query(
        tmp_path, kit, "flat.nii.gz", lambda p: save(np.full((40, 36), -1000.0), np.eye(4), p)
    )
    case_failed(capsys, infer(config), "flat", str(path), "2D", "expected a 3D CT volume")


def test_4d_image(tmp_path, capsys, kit):
    config, path = bad_query(
        tmp_path, kit, "time.nii.gz", lambda p: save(np.full((8, 8, 8, 3), -1000.0), np.eye(4), p)
    )
    case_failed(capsys, infer(config), "time", str(path), "4D", "expected a 3D CT volume")


def test_mr_scan_given_as_ct(tmp_path, capsys, kit):
    mr = ct_testdata_path("totalsegmentator", "example_mr_sm.nii.gz")
    config = write_config(tmp_path, kit, [mr])
    case_failed(capsys, infer(config), "example_mr_sm", str(mr), "MR", "Hounsfield")


def test_ct_stored_with_a_1024_offset(tmp_path, capsys, kit):
    shifted = ct_like(kit)
    config, path = bad_query(
        tmp_path, kit, "offset.nii.gz", lambda p: save(shifted.data + 1024, shifted.affine, p)
    )
    case_failed(capsys, infer(config), "offset", str(path), "+1024 offset", "subtract 1024")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_or_infinite_voxels(tmp_path, capsys, kit, value):
    image = ct_like(kit)
    image.data[3, 4, 5] = value
    config, path = bad_query(tmp_path, kit, "nonfinite.nii.gz", lambda p: save(image, None, p))
    case_failed(capsys, infer(config), "nonfinite", str(path), "NaN or infinite", "finite")


def _nifti_with_pixdim(path: Path, pixdim: tuple[float, float, float], sform: bool) -> None:
    data = np.full((12, 12, 12), -1000, np.int16)
    data[3:9, 3:9, 3:9] = 40
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.int16)
    header["pixdim"][1:4] = pixdim
    if sform:
        affine = np.diag([*pixdim, 1.0])
        header["sform_code"] = 1
        header["srow_x"], header["srow_y"], header["srow_z"] = affine[:3]
    else:
        header["qform_code"] = 1
    with open(path, "wb") as handle:  # raw: nibabel would "fix" the header while saving
        handle.write(header.binaryblock + b"\0" * 4 + data.tobytes())


@pytest.mark.parametrize(
    "kind", ["zero_sform", "zero_pixdim", "negative_pixdim", "zero_mha"], ids=str
)
def test_zero_or_negative_spacing(tmp_path, capsys, kit, kind):
    def write(path: Path) -> None:
        if kind == "zero_mha":
            data = np.full((12, 12, 12), -1000, np.float32).tobytes()
            path.write_bytes(
                b"ObjectType = Image\nNDims = 3\nDimSize = 12 12 12\nElementSpacing = 0 1 1\n"
                b"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + data
            )
        else:
            spacing = (0.0, 1.0, 1.0) if kind.startswith("zero") else (-1.0, 1.0, 1.0)
            _nifti_with_pixdim(path, spacing, sform=kind == "zero_sform")

    name = "spacing.mha" if kind == "zero_mha" else "spacing.nii"
    config, path = bad_query(tmp_path, kit, name, write)
    case_failed(capsys, infer(config), "spacing", str(path), "spacing", "expected positive")


def test_5000_slice_volume_meets_the_memory_guard(tmp_path, capsys, kit):
    def header_only(path: Path) -> None:  # 512 x 512 x 5000 int16: 2.5 GB of voxels, not written
        header = nib.Nifti1Header()
        header.set_data_shape((512, 512, 5000))
        header.set_data_dtype(np.int16)
        header.set_zooms((0.7, 0.7, 0.5))
        path.write_bytes(header.binaryblock + b"\0" * 4)

    config, path = bad_query(tmp_path, kit, "huge.nii", header_only)
    line = case_failed(capsys, infer(config), "huge", str(path), "512x512x5000", "memory guard")
    assert "would need about 14.6 GiB" in line


def test_dicom_folder_meets_the_memory_guard_before_loading(tmp_path, capsys, kit, monkeypatch):
    folder = ct_testdata_path("dcmqi")  # 3 slices of 512 x 512
    monkeypatch.setattr(mio, "MAX_VOXELS", 512 * 512 * 2)
    config = write_config(tmp_path, kit, [folder])
    case_failed(capsys, infer(config), "dcmqi", str(folder), "512x512x3", "memory guard")


def test_volume_smaller_than_one_medlam_patch_works(tmp_path, capsys, kit):
    small, _ = make_ct((20, 18, 8), seed=12)  # 40 x 36 x 24 mm: a 64^3 patch is 192 mm wide
    config, path = bad_query(tmp_path, kit, "small.nii.gz", lambda p: save(small, None, p))
    assert infer(config) == 0, capsys.readouterr().err
    written = nib.load(str(tmp_path / "out" / "small.nii.gz"))
    assert written.shape == small.shape and np.allclose(written.affine, small.affine)


# --------------------------------------------------------------------------------------------
# every orientation works: a cheap check per orientation


@pytest.fixture(scope="module")
def oriented_reference(tmp_path_factory, kit):
    """A fitted classic segmenter, a config, a RAS query, its label and its predicted label."""
    segmenter = ClassicSegmenter()
    segmenter.fit([make_ct(seed=1), make_ct(seed=2)], [1, 2])
    cfg = load_config(write_config(tmp_path_factory.mktemp("orient"), kit))
    image, label = make_ct(seed=10)
    ras = run_case(image, FakeLocalizer(label, [1, 2]), segmenter, cfg).label
    assert (ras == 1).any() and (ras == 2).any()
    return segmenter, cfg, image, label, ras


@pytest.mark.parametrize("perm,flips", ORIENTATIONS, ids=lambda v: "".join(map(str, v)))
def test_every_orientation_works(tmp_path, oriented_reference, perm, flips):
    """Read the query in this orientation, localize (true boxes), segment, write, read back:
    the label map equals the RAS one reoriented, and MedLAM sees the same 3 mm image whose
    points map back to the same world positions."""
    segmenter, cfg, image, label, ras = oriented_reference
    moved = reorient(image, perm, flips)
    path = save(moved, None, tmp_path / "q.nii.gz")
    query = read_image(path)
    pred = run_case(query, FakeLocalizer(reorient(label, perm, flips), [1, 2]), segmenter, cfg)
    back = read_label(write_mask(pred.label, like=query, path=tmp_path / "q_seg.nii.gz"))
    expected = reorient(mio.Volume(ras, image.affine), perm, flips)
    assert np.array_equal(back.data, expected.data) and np.allclose(back.affine, query.affine)
    grid, grid_ras = medlam_image(query, "linear"), medlam_image(image, "linear")
    assert np.array_equal(grid.array, grid_ras.array)
    points = np.random.default_rng(0).uniform(0, np.array(grid.array.shape) - 1, (20, 3))
    assert np.allclose(
        query.to_world(grid.to_file_index(points)), image.to_world(grid_ras.to_file_index(points))
    )


# --------------------------------------------------------------------------------------------
# lists and classes (config 2, input 3)


def test_label_list_longer_than_image_list(tmp_path, capsys, kit):
    config = write_config(
        tmp_path, kit, support_labels=[*kit.support_labels, kit.support_labels[0]]
    )
    one_line(
        capsys, infer(config), 2, "support_image.txt", "2 images", "3 labels", "one label per image"
    )


def test_query_label_list_longer_than_query_list(tmp_path, capsys, kit):
    labels = [kit.root / "query_0_seg.nii.gz", kit.root / "query_1_seg.nii.gz"]
    config = write_config(tmp_path, kit, [kit.queries[0]], query_labels=labels)
    one_line(capsys, infer(config), 2, "query_label.txt", "1 images", "2 labels")


def test_empty_query_list(tmp_path, capsys, kit):
    config = write_config(tmp_path, kit, [])
    one_line(capsys, infer(config), 2, "query_image.txt", "lists no query image")


def test_class_id_no_support_label_has(tmp_path, capsys, kit):
    config = write_config(tmp_path, kit, fg_class=(1, 2, 7), prototypes=False)
    rc = infer(config)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and not any("Traceback" in line for line in err)
    needles = ("organ 7", "absent from every support", "support_0", "support_1")
    assert err[-1].startswith("medlsam-infer: error: ") and all(n in err[-1] for n in needles)
    assert not (tmp_path / "out" / "query_0.nii.gz").exists()


def test_class_id_no_support_label_has_is_one_line(tmp_path, capsys, kit):
    config = write_config(tmp_path, kit, fg_class=(1, 2, 7), prototypes=False)
    one_line(capsys, infer(config), 3, "organ 7", "absent from every support")


def test_organ_absent_from_some_supports_works_with_a_warning(tmp_path, capsys, kit):
    label = read_label(kit.support_labels[1])
    partial = save(np.where(label.data == 2, 0, label.data), label.affine, tmp_path / "s1.nii.gz")
    config = write_config(
        tmp_path,
        kit,
        [kit.queries[0]],
        support_labels=[kit.support_labels[0], partial],
        prototypes=False,
    )
    rc = infer(config)
    err = capsys.readouterr().err
    assert rc == 0, err
    warning = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "support_1" in warning[0] and "organ 2" in warning[0]
    assert (tmp_path / "out" / "query_0.nii.gz").is_file()


def test_support_image_and_label_on_different_grids(tmp_path, capsys, kit):
    label = read_label(kit.support_labels[0])
    moved = label.affine.copy()
    moved[0, 3] += 7.0
    shifted = save(label.data, moved, tmp_path / "shifted_seg.nii.gz")
    config = write_config(tmp_path, kit, support_labels=[shifted, kit.support_labels[1]])
    one_line(capsys, infer(config), 3, str(shifted), "does not match its image", "support_0")


def test_support_with_nan_voxels_stops_the_run(tmp_path, capsys, kit):
    image = ct_like(kit)
    image.data[0, 0, 0] = np.nan
    bad = save(image, None, tmp_path / "support_nan.nii.gz")
    config = write_config(tmp_path, kit, supports=[bad, kit.supports[1]])
    one_line(capsys, infer(config), 3, str(bad), "NaN")


def test_corrupt_prototypes_file(tmp_path, capsys, kit):
    bad = tmp_path / "protos.pt"
    bad.write_bytes(b"not a prototypes file")
    config = write_config(tmp_path, kit)
    text = config.read_text().replace(str(kit.prototypes), str(bad))
    config.write_text(text)
    one_line(capsys, infer(config), 3, str(bad), "prototypes")


# --------------------------------------------------------------------------------------------
# checkpoints (4), before any case runs


def test_medlam_checkpoint_of_another_architecture(tmp_path, capsys, kit):
    other = tmp_path / "medlam_other.pth"
    torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), other)
    config = write_config(tmp_path, kit, medlam=other)
    one_line(capsys, infer(config), 4, str(other), "does not fit MedLAM")
    assert not (tmp_path / "out" / "query_0.nii.gz").exists()


@pytest.mark.parametrize("cut", [0, 100, 2000], ids=["empty", "head", "truncated"])
def test_truncated_medlam_checkpoint(tmp_path, capsys, kit, cut):
    whole = kit.medlam.read_bytes()
    bad = tmp_path / "medlam_cut.pth"
    bad.write_bytes(whole[:cut])
    config = write_config(tmp_path, kit, medlam=bad)
    err = one_line(capsys, infer(config), 4, str(bad))
    assert ("empty" if cut == 0 else "truncated") in err


def test_vit_l_checkpoint_with_net_type_vit_b(tmp_path, capsys, kit):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in sam_model_registry["vit_l"]().state_dict().items()}
    wanted = ["image_encoder.patch_embed.proj.weight", "image_encoder.pos_embed"]
    state = {k: torch.zeros(shapes[k]) for k in wanted}  # vit_l shapes, two keys: ~20 MB
    checkpoint = tmp_path / "sam_vit_l_0b3195.pth"
    torch.save(state, checkpoint)
    config = write_config(
        tmp_path,
        kit,
        vit={"backend": "sam_vit_b", "net_type": "vit_b"},
        weight={"vit_load_path": str(checkpoint)},
    )
    one_line(
        capsys,
        infer(config),
        4,
        str(checkpoint),
        "does not fit SAM vit_b",
        "[1024, 3, 16, 16] (expected [768, 3, 16, 16])",
        "set [vit] net_type = vit_l",
    )


# --------------------------------------------------------------------------------------------
# outputs (5), interrupts (130)


def test_unwritable_output_folder(tmp_path, capsys, kit):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = write_config(tmp_path, kit)
    out = blocker / "results"
    one_line(capsys, infer(config, "--output", str(out)), 5, str(out), "not writable")
    if os.geteuid() != 0:  # root writes anywhere: the permission case needs another user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line(capsys, infer(config, "--output", str(locked)), 5, str(locked), "not writable")


def _failing_save(monkeypatch, error: BaseException, after: int = 0) -> None:
    """nibabel's save writes part of the file, then raises ``error`` (from call ``after``)."""
    real = nib.save
    calls = []

    def save_then_fail(image, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) <= after:
            return real(image, filename, *args, **kwargs)
        with open(filename, "wb") as handle:
            handle.write(b"\x1f\x8b" + b"\0" * 300)  # a half-written file
        raise error

    monkeypatch.setattr(mio.nib, "save", save_then_fail)


def test_full_disk_stops_the_run_and_leaves_no_partial_file(tmp_path, capsys, kit, monkeypatch):
    _failing_save(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    config = write_config(tmp_path, kit)
    out = tmp_path / "out"
    one_line(capsys, infer(config), 5, "query_0.nii.gz", "No space left on device")
    assert files_of(out) == ["run.json"]  # no NIfTI, npz, PNG or temporary file
    cases = json.loads((out / "run.json").read_text())["cases"]
    assert cases["query_0"]["status"] == "failed" and "query_1" not in cases  # stopped


@pytest.mark.parametrize("stage", ["localize", "segment", "write"])
def test_interrupt_inside_a_stage(tmp_path, capsys, kit, monkeypatch, stage):
    if stage == "write":
        _failing_save(monkeypatch, KeyboardInterrupt())
    else:

        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt

        target = {
            "localize": "medlsam.localization.localizer.Localizer.predict",
            "segment": "medlsam.segment.classic.ClassicSegmenter.segment",
        }[stage]
        monkeypatch.setattr(target, interrupt)
    config = write_config(tmp_path, kit, [kit.queries[0]])
    one_line(capsys, infer(config), 130, "interrupted during query_0", "resume")
    out = tmp_path / "out"
    assert files_of(out) == ["run.json"]
    assert json.loads((out / "run.json").read_text())["cases"]["query_0"]["status"] == "interrupted"


def test_interrupted_run_resumes_without_redoing_finished_cases(tmp_path, capsys, kit, monkeypatch):
    _failing_save(monkeypatch, KeyboardInterrupt(), after=1)  # query_0 written, query_1 cut
    config = write_config(tmp_path, kit)
    one_line(capsys, infer(config), 130, "during query_1")
    out = tmp_path / "out"
    assert not any(name.startswith(("query_1", ".query_1")) for name in files_of(out))
    first = (out / "query_0.nii.gz").stat().st_mtime_ns
    monkeypatch.undo()
    assert infer(config) == 0
    assert "1 done, 1 already done, 0 failed" in capsys.readouterr().err
    assert (out / "query_0.nii.gz").stat().st_mtime_ns == first  # not redone
    cases = json.loads((out / "run.json").read_text())["cases"]
    assert [cases[c]["status"] for c in ("query_0", "query_1")] == ["ok", "ok"]


def test_sigterm_is_an_interrupt(tmp_path, capsys, kit, monkeypatch):
    real = pipeline.read_image

    def read_then_terminated(path):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(path)

    monkeypatch.setattr(pipeline, "read_image", read_then_terminated)
    config = write_config(tmp_path, kit, [kit.queries[0]])
    before = signal.getsignal(signal.SIGTERM)
    one_line(capsys, infer(config), 130, "interrupted during query_0")
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is removed again


def test_record_of_other_settings_in_the_folder(tmp_path, capsys, kit):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "run.shard-2-of-3.json"
    stale.write_text(json.dumps({"format": "medlsam-run", "settings": {"seed": 1}, "cases": {}}))
    config = write_config(tmp_path, kit)
    one_line(capsys, infer(config), 5, str(stale), "other settings", "--overwrite")


def test_corrupt_run_record(tmp_path, capsys, kit):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run.json").write_text("{ half a record")
    config = write_config(tmp_path, kit)
    one_line(capsys, infer(config), 5, "run.json", "unreadable run record")


# --------------------------------------------------------------------------------------------
# command line, internal errors, --debug


def test_bad_shard_argument(capsys, tmp_path, kit):
    config = write_config(tmp_path, kit)
    for value in ("0/2", "3/2", "half"):
        with pytest.raises(SystemExit) as info:
            infer(config, "--shard", value)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --shard: {value!r}: expected K/N with 1 <= K <= N" in err


def test_shard_under_torchrun_is_refused(tmp_path, capsys, kit, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = write_config(tmp_path, kit)
    one_line(capsys, infer(config, "--shard", "1/2"), 2, "--shard 1/2 under torchrun")


def test_cuda_asked_without_cuda(tmp_path, capsys, kit):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    config = write_config(tmp_path, kit)
    rc = infer_main(["--config", str(config), "--device", "cuda", "--quiet"])
    one_line(capsys, rc, 2, "'cuda'", "CUDA is not available")


def test_missing_gpu_index_and_bad_device_names_are_one_line(tmp_path, capsys, kit, monkeypatch):
    config = write_config(tmp_path, kit)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rc = infer_main(["--config", str(config), "--device", "cuda:2", "--quiet"])
    one_line(capsys, rc, 2, "'cuda:2'", "shows 2 CUDA device(s), cuda:0 to cuda:1")
    rc = infer_main(["--config", str(config), "--device", "gpu0", "--quiet"])
    one_line(capsys, rc, 2, "'gpu0'", "expected auto, cpu, cuda or cuda:N")


def test_unexpected_error_in_a_case_fails_alone_and_debug_shows_it(
    tmp_path, capsys, kit, monkeypatch
):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(pipeline, "run_case", broken)
    config = write_config(tmp_path, kit, [kit.queries[0]])
    case_failed(capsys, infer(config), "query_0", "ValueError: an internal bug")
    with pytest.raises(ValueError, match="an internal bug"):
        infer(config, "--debug", "--overwrite")
    assert not (tmp_path / "out" / "query_0.npz").exists()


def test_debug_shows_the_traceback_of_a_stopping_error(tmp_path, kit):
    config = write_config(tmp_path, kit, [])
    with pytest.raises(ConfigError, match="lists no query image"):
        infer(config, "--debug")


# --------------------------------------------------------------------------------------------
# medlsam-eval and medlsam-localize


def _eval_folder(tmp_path: Path, kit) -> tuple[Path, Path]:
    """Predictions = the kit's query labels (perfect), and the label list."""
    pred, refs = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir()
    refs.mkdir()
    labels = []
    for case, label in kit.labels.items():
        (pred / f"{case}.nii.gz").write_bytes(label.path.read_bytes())
        labels.append(refs / f"{case}.nii.gz")
        labels[-1].write_bytes(label.path.read_bytes())
    write_path_list(tmp_path / "labels.txt", labels)
    return pred, tmp_path / "labels.txt"


@pytest.mark.parametrize("broken", ["prediction", "boxes", "grid"])
def test_eval_goes_on_past_a_bad_prediction(tmp_path, capsys, kit, broken):
    pred, labels = _eval_folder(tmp_path, kit)
    if broken == "prediction":
        bad = pred / "query_1.nii.gz"
        bad.write_bytes(b"\x1f\x8b broken")
    elif broken == "boxes":
        bad = pred / "query_1.boxes.json"
        bad.write_text("{ not json")
    else:
        bad = pred / "query_1.nii.gz"
        label = kit.labels["query_1"]
        save(label.data[:-1], label.affine, bad)
    rc = evaluate_main(["--pred", str(pred), "--labels", str(labels), "--classes", "1,2"])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err
    line = [x for x in captured.err.splitlines() if x.startswith("  query_1: ")]
    assert len(line) == 1 and str(bad) in line[0]
    assert "could not be scored" in captured.err
    assert "Failed (not scored): 1 case(s)" in captured.out and "- query_1: " in captured.out
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["n_cases"] == 1 and list(summary["failed_cases"]) == ["query_1"]
    assert summary["classes"]["1"]["dsc"]["mean"] == 1.0  # query_0 scored


def test_eval_with_every_prediction_broken_is_one_error(tmp_path, capsys, kit):
    pred, labels = _eval_folder(tmp_path, kit)
    for case in kit.labels:
        (pred / f"{case}.nii.gz").write_bytes(b"\x1f\x8b broken")
    rc = evaluate_main(["--pred", str(pred), "--labels", str(labels)])
    one_line(capsys, rc, 3, "query_0.nii.gz", "cannot read", "the 1 other case(s) failed too")


def test_localize_cli_bad_query_fails_alone(tmp_path, capsys, kit):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"")
    config = write_config(tmp_path, kit, [junk])
    rc = localize_main(["--config", str(config), "--device", "cpu", "--quiet"])
    case_failed(capsys, rc, "junk", str(junk), "empty")
