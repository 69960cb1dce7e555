"""The classic segmenter on a query in another contrast phase than its supports."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import ct_testdata_path, make_ct

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.io import Volume
from medlsam.segment.assemble import group_by_slice, organ_prompts
from medlsam.segment.classic import ClassicSegmenter


def _dice_of_organ(
    seg: ClassicSegmenter, image: Volume, label: Volume, c: int, classes=(1, 2)
) -> float:
    """Dice of organ ``c`` segmented in its true whole-organ boxes (axial slices)."""
    organs = {
        k: OrganBoxes(k, (Box3D.from_mask(label.data == k),), np.zeros((1, 6, 3))) for k in classes
    }
    requests = group_by_slice(organ_prompts(organs, label.shape, 2, list(classes)))
    pred = np.zeros(label.shape, bool)
    for request, result in zip(requests, seg.segment(image, requests), strict=True):
        for b, k in enumerate(request.classes):
            if k == c:
                pred[:, :, request.index] |= result.masks[b].T
    truth = label.data == c
    return 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())


def _enhanced(hu: float) -> tuple[Volume, Volume]:
    image, label = make_ct(seed=2)
    data = image.data.copy()
    data[label.data == 1] += hu
    return Volume(data, image.affine), label


def test_organ_brighter_in_the_query_is_found_with_one_warning(caplog):
    seg = ClassicSegmenter(adapt=True)
    seg.fit([make_ct(seed=1)], [1, 2])
    image, label = _enhanced(90.0)  # organ 1: 120 HU in the support, 210 HU here
    fixed = ClassicSegmenter(adapt=False)
    fixed.models = seg.models
    before = _dice_of_organ(fixed, image, label, 1)
    with caplog.at_level(logging.WARNING, logger="medlsam.segment.classic"):
        after = _dice_of_organ(seg, image, label, 1)
    assert after > 0.8 and after >= before - 0.02
    warnings = [r.getMessage() for r in caplog.records if "organ 1" in r.getMessage()]
    assert len(warnings) == 1 and "+" in warnings[0] and "contrast phase" in warnings[0]
    assert not any("organ 2" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("hu", [0.0, 10.0])
def test_same_phase_leaves_the_model_alone(hu, caplog):
    seg = ClassicSegmenter(adapt=True)
    seg.fit([make_ct(seed=1)], [1, 2])
    image, label = _enhanced(hu)
    with caplog.at_level(logging.WARNING, logger="medlsam.segment.classic"):
        dice = _dice_of_organ(seg, image, label, 1)
    assert dice > 0.8
    assert not caplog.records


def test_phase_shift_estimate():
    seg = ClassicSegmenter(adapt=True)
    seg.fit([make_ct(seed=1)], [1, 2])
    model = seg.models[1]
    rng = np.random.default_rng(0)
    mode = -1024.0 + 4.0 * (int(np.argmax(model.p_organ)) + 0.5)  # the support organ's HU
    assert model.phase_shift(rng.normal(mode, 8.0, 5000)) == 0
    assert model.phase_shift(rng.normal(mode + 80, 8.0, 5000)) * 4 == pytest.approx(80, abs=8)
    assert model.phase_shift(rng.normal(mode - 60, 8.0, 5000)) * 4 == pytest.approx(-60, abs=8)
    assert model.phase_shift(rng.normal(mode + 80, 8.0, 50)) == 0  # too few voxels to tell


def test_contrast_enhanced_real_ct():
    """Liver and spleen brighter by 60 and 80 HU than in the support: the support's model
    finds nearly nothing; moved to the query's HU it finds the spleen."""
    from medlsam.io import read_image, read_label

    image = read_image(ct_testdata_path("totalsegmentator", "example_ct.nii.gz"))
    label = read_label(ct_testdata_path("totalsegmentator", "example_seg_fast_force_split.nii.gz"))
    data = image.data.copy()
    data[label.data == 5] += 60.0
    data[label.data == 1] += 80.0
    query = Volume(data, image.affine)
    seg = ClassicSegmenter(adapt=True)
    seg.fit([(image, label)], [5, 1])
    fixed = ClassicSegmenter(adapt=False)
    fixed.models = seg.models
    assert _dice_of_organ(fixed, query, label, 1, (5, 1)) < 0.1
    assert _dice_of_organ(seg, query, label, 1, (5, 1)) > 0.8
    # the liver's box centres hold too much else to tell a +60 HU move here: no harm done
    liver = _dice_of_organ(seg, query, label, 5, (5, 1))
    assert liver >= _dice_of_organ(fixed, query, label, 5, (5, 1)) - 0.02


def test_contrast_adaptation_is_chosen_in_the_config(tmp_path):
    """``[vit] classic_contrast``: ``keep`` (default) builds a fixed backend, ``adapt`` one that
    moves the organ densities; anything else is a one-line config error."""
    from medlsam.config import load_config
    from medlsam.errors import ConfigError
    from medlsam.segment import build_segmenter

    def built(extra: str):
        path = tmp_path / "c.txt"
        for name in ("s_img", "s_lab", "q_img"):
            (tmp_path / f"{name}.txt").write_text("x.nii.gz\n")
        path.write_text(
            "[data]\nsupport_image_ls = s_img.txt\nsupport_label_ls = s_lab.txt\n"
            "query_image_ls = q_img.txt\nfg_class = [1]\n[vit]\nbackend = classic\n"
            + extra
            + "[weight]\n"
        )
        cfg = load_config(path, check_files=False)
        return build_segmenter(cfg.vit, None)

    assert built("").adapt is False
    assert built("classic_contrast = adapt\n").adapt is True
    with pytest.raises(ConfigError, match="classic_contrast"):
        built("classic_contrast = maybe\n")
