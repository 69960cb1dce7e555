"""The prototypes file and its guards, and the support-point helpers, on hand-made values.

No network runs here: prototypes are built from small hand-written tensors, so every field
written, read back and compared is known in advance.
"""

from __future__ import annotations

import datetime
import io
import logging

import numpy as np
import pytest
import torch

from medlsam.config import BoxMode
from medlsam.errors import InputError
from medlsam.localization.prototypes import (
    ClassPrototype,
    Prototypes,
    extreme_points,
    split_count,
    split_points,
    support_points,
    template_slice,
)

SHA = "ab" * 32


def _protos(**changes) -> Prototypes:
    fc = torch.arange(18, dtype=torch.float32).reshape(6, 3) / 7
    cube = torch.arange(6 * 2 * 8, dtype=torch.float32).reshape(6, 2, 2, 2, 2) - 40
    args = dict(
        classes={
            3: ClassPrototype(fc, {"feature0": cube}, 1, ("s1", "s2")),
            1: ClassPrototype(fc * 2, {"feature0": cube * -1}, 1, ("s2",)),
        },
        mode=BoxMode.WPL,
        slice_interval=None,
        feature_scales=("feature0",),
        checkpoint_sha256=SHA,
        base_chns=16,
        meta={"label_resampling": "medlsam", 7: 8},
        numerics={"device": "cpu", "precision": "fp32"},
    )
    args.update(changes)
    return Prototypes(**args)  # type: ignore[arg-type]


def test_prototypes_roundtrip_keeps_every_field(tmp_path):
    protos = _protos(mode=BoxMode.SPL, slice_interval=3)
    path = protos.save(tmp_path / "p.pt")
    back = Prototypes.load(path)
    assert list(back.classes) == [3, 1]  # the organ order is kept
    for c in (3, 1):
        torch.testing.assert_close(back.classes[c].fc, protos.classes[c].fc, rtol=0, atol=0)
        assert list(back.classes[c].templates) == ["feature0"]
        torch.testing.assert_close(
            back.classes[c].templates["feature0"],
            protos.classes[c].templates["feature0"],
            rtol=0,
            atol=0,
        )
        assert back.classes[c].groups == 1 and back.classes[c].fc.dtype == torch.float32
    assert back.classes[3].supports == ("s1", "s2") and back.classes[1].supports == ("s2",)
    assert (back.mode, back.slice_interval, back.feature_scales) == (BoxMode.SPL, 3, ("feature0",))
    assert (back.checkpoint_sha256, back.base_chns) == (SHA, 16)
    assert back.meta == {"label_resampling": "medlsam", "7": "8"}  # stored as text
    assert back.numerics == {"device": "cpu", "precision": "fp32"}
    assert Prototypes.from_bytes(protos.to_bytes()).numerics == back.numerics
    # the payload is plain data: format name and version are what readers check
    raw = torch.load(io.BytesIO(protos.to_bytes()), weights_only=True)
    assert (raw["format"], raw["version"], raw["mode"]) == ("medlsam-prototypes", 1, "SPL")
    assert raw["classes"] == [3, 1] and raw["per_class"]["3"]["groups"] == 1


def _payload(**changes) -> bytes:
    raw = torch.load(io.BytesIO(_protos().to_bytes()), weights_only=True)
    raw.update(changes)
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


def test_prototypes_files_that_are_not_ours_are_named(tmp_path):
    with pytest.raises(InputError, match=r"^.*missing\.pt: prototypes file not found$"):
        Prototypes.load(tmp_path / "missing.pt")
    try:  # what torch says of a file that is not its own: its first line, cut to 160 characters
        torch.load(io.BytesIO(b"not a torch file"), weights_only=True)
    except Exception as err:
        said = str(err).strip().splitlines()[0]
    assert len(said) > 160
    with pytest.raises(InputError) as caught:
        Prototypes.from_bytes(b"not a torch file", "x.pt")
    assert str(caught.value) == f"x.pt: cannot read prototypes file ({said[:160]})"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a torch file")
    with pytest.raises(InputError, match=r"^.*garbage\.pt: cannot read prototypes file \("):
        Prototypes.load(garbage)
    # pickled objects other than tensors and plain data are refused (weights-only unpickling)
    buffer = io.BytesIO()
    torch.save(
        {"format": "medlsam-prototypes", "version": 1, "when": datetime.date(2020, 1, 1)}, buffer
    )
    with pytest.raises(InputError, match=r"^y\.pt: cannot read prototypes file \(Weights only"):
        Prototypes.from_bytes(buffer.getvalue(), "y.pt")
    with pytest.raises(InputError, match=r"^y\.pt: not a medlsam prototypes file"):
        Prototypes.from_bytes(_payload(format="other"), "y.pt")
    buffer = io.BytesIO()
    torch.save([1, 2], buffer)
    with pytest.raises(InputError, match="not a medlsam prototypes file"):
        Prototypes.from_bytes(buffer.getvalue())
    with pytest.raises(InputError, match=r"^z\.pt: prototypes format version 2, expected 1$"):
        Prototypes.from_bytes(_payload(version=2), "z.pt")
    with pytest.raises(InputError, match=r"^prototypes: incomplete prototypes file \(missing"):
        Prototypes.from_bytes(_payload(base_chns=None))
    raw = torch.load(io.BytesIO(_protos().to_bytes()), weights_only=True)
    del raw["per_class"]["1"]["fc"]
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    with pytest.raises(InputError, match=r"incomplete prototypes file \(missing 'fc'\)"):
        Prototypes.from_bytes(buffer.getvalue())
    # files written before numerics were recorded read back with none
    legacy = torch.load(io.BytesIO(_protos().to_bytes()), weights_only=True)
    del legacy["numerics"], legacy["meta"]
    buffer = io.BytesIO()
    torch.save(legacy, buffer)
    old = Prototypes.from_bytes(buffer.getvalue())
    assert old.numerics == {} and old.meta == {}


def test_check_compatible_names_each_mismatch(caplog):
    protos = _protos()
    fine = dict(
        fingerprint=SHA,
        classes=[1, 3],
        mode=BoxMode.WPL,
        slice_interval=5,  # ignored for WPL
        feature_scales=("feature0",),
        numerics={"device": "cpu", "precision": "fp32"},
    )
    protos.check_compatible("f.pt", **fine)
    protos.check_compatible("f.pt", **{**fine, "numerics": None})
    with pytest.raises(InputError) as caught:
        protos.check_compatible("f.pt", **{**fine, "fingerprint": "cd" * 32})
    assert str(caught.value) == (
        "f.pt: prototypes were made with checkpoint sha256 abababababababab..., not with the "
        "loaded one (cdcdcdcdcdcdcdcd...); rebuild them from the support scans with this checkpoint"
    )
    with pytest.raises(InputError, match=r"no organ \[2\] \(they hold \[3, 1\]\)"):
        protos.check_compatible("f.pt", **{**fine, "classes": [1, 2]})
    with pytest.raises(InputError, match="bbox_mode WPL slice_interval None, not SPL 5"):
        protos.check_compatible("f.pt", **{**fine, "mode": BoxMode.SPL})
    spl = _protos(mode=BoxMode.SPL, slice_interval=3)
    spl.check_compatible("f.pt", **{**fine, "mode": "SPL", "slice_interval": 3})
    with pytest.raises(InputError, match="bbox_mode SPL slice_interval 3, not SPL 4"):
        spl.check_compatible("f.pt", **{**fine, "mode": "SPL", "slice_interval": 4})
    with pytest.raises(InputError, match=r"lack feature scales \['feature2'\]"):
        protos.check_compatible("f.pt", **{**fine, "feature_scales": ("feature0", "feature2")})
    with pytest.raises(InputError) as caught:
        protos.check_compatible(
            "f.pt", **{**fine, "numerics": {"device": "cuda", "precision": "fp16"}}
        )
    assert str(caught.value) == (
        "f.pt: prototypes were made with MedLAM on cpu in fp32, this run uses cuda in fp16; "
        "delete the file to rebuild them, or match --device / [run] medlam_precision"
    )
    unrecorded = _protos(numerics={})
    gpu = {"device": "cuda", "precision": "fp16"}
    with caplog.at_level(logging.WARNING, logger="medlsam.localization.prototypes"):
        unrecorded.check_compatible("old.pt", **{**fine, "numerics": gpu})
    assert [r.getMessage() for r in caplog.records] == [
        "old.pt: prototypes file does not record the device and precision it was made in; "
        "using it with MedLAM on cuda in fp16"
    ]


def test_template_cube_at_other_patch_and_map_sizes():
    # radius max(1, 4 * map // patch), centre map // 2
    assert template_slice(8) == slice(3, 5)  # 4 * 8 // 64 = 0 -> 1
    assert template_slice(16, patch=32) == slice(6, 10)  # radius 2
    assert template_slice(64, patch=128) == slice(30, 34)
    assert template_slice(5, patch=5) == slice(-2, 6)  # radius 4 around 2
    assert template_slice(24) == slice(11, 13)  # 4 * 24 // 64 = 1 (not 1.5)
    assert type(template_slice(24).start) is int


def test_split_count_caps_at_six_parts():
    assert split_count(13, 2, BoxMode.SPL) == 6  # 13 // 2 = 6
    assert split_count(14, 2, "SPL") == 6  # 7 -> 6
    assert split_count(11, 2, BoxMode.SPL) == 5


def test_support_points_choose_extreme_or_split_points_and_refuse_empty_masks():
    mask = np.zeros((13, 14, 22), bool)
    for z in range(2, 11):
        mask[z, z, 20 - z] = True
    assert support_points(mask, 0).tolist() == extreme_points(mask).tolist()
    assert support_points(mask, 2).tolist() == split_points(mask, 2).tolist()
    assert support_points(mask, 1).tolist() == split_points(mask, 1).tolist()
    assert split_points(mask, 1).tolist() != extreme_points(mask).tolist()
    # one part: its slab is z 2..9 (max_z 10 exclusive): box y 2..9, x 11..18, z forced to
    # 2..10; x = 11 is the voxel (9, 9, 11), y = 9 the same, z = 10 the voxel (10, 10, 10)
    assert split_points(mask, 1).tolist() == [
        [2, 2, 18], [2, 2, 18], [9, 9, 11], [10, 10, 10], [9, 9, 11], [2, 2, 18]
    ]  # fmt: skip
    with pytest.raises(ValueError, match="^extreme_points of an empty mask$"):
        extreme_points(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="^split_points of an empty mask$"):
        split_points(np.zeros((3, 3, 3)), 2)
    with pytest.raises(ValueError, match="split_num must be >= 1, not 0"):
        split_points(mask, 0)


def test_split_points_take_the_raster_middle_of_slices_with_several_voxels():
    mask = np.zeros((8, 6, 9), bool)
    mask[1:7, 2, 3] = True  # z 1..6 at (y 2, x 3)
    mask[3, 4, 7] = True
    # 3 parts of step (6 - 1) // 3 = 1; the last starts at z 3 and its slab holds z 3..5
    # (6 exclusive): box y 2..4, x 3..7, z forced to 3..6.
    # lo: z = 3 has (y, x) = (2, 3), (4, 7): element 2 // 2 = 1 -> (4, 7); y = 2 in (x, z)
    # order has z 1..6 at x 3: element 3 -> z 4; x = 3 in (z, y) order: z 1..6 -> z 4.
    # hi: z = 6 -> (2, 3); y = 4 and x = 7 -> the voxel (3, 4, 7).
    points = split_points(mask, 3)
    assert points.shape == (18, 3)
    assert points[12:].tolist() == [
        [3, 4, 7], [4, 2, 3], [4, 2, 3], [6, 2, 3], [3, 4, 7], [3, 4, 7]
    ]  # fmt: skip
    # the first part [1, 2): box of z 1 alone, z forced to 1..2; the z = 2 plane is (2, 3)
    assert points[:6].tolist() == [
        [1, 2, 3], [4, 2, 3], [4, 2, 3], [2, 2, 3], [4, 2, 3], [4, 2, 3]
    ]  # fmt: skip


def test_split_points_of_a_mask_at_index_0():
    mask = np.zeros((4, 5, 5), bool)
    mask[0, 1, 1] = mask[1, 2, 2] = mask[2, 3, 3] = True
    # one part: slab z 0..1 (2 exclusive): box y 1..2, x 1..2, z forced to 0..2; the bound
    # z = 0 takes its own slice's voxel (0, 1, 1), not the next slice's
    points = split_points(mask, 1)
    assert points[0].tolist() == [0, 1, 1]
    assert points.tolist() == [
        [0, 1, 1], [0, 1, 1], [0, 1, 1], [2, 3, 3], [1, 2, 2], [1, 2, 2]
    ]  # fmt: skip
