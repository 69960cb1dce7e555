"""medlsam.config: the published .txt format, YAML, and errors that say what to fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from medlsam.config import (
    SEGMENTER_NAMES,
    BoxMode,
    load_config,
    parse_value,
    write_config_txt,
)
from medlsam.errors import ConfigError

PUBLISHED = """\
[data]
support_image_ls      = config/data/WORD/support_image.txt
support_label_ls      = config/data/WORD/support_label.txt
query_image_ls        = config/data/WORD/query_image.txt
query_label_ls        = config/data/WORD/query_label.txt
gt_slice_threshold    = 10
bbox_mode             = SPL
slice_interval        = 2
fg_class              = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]
seg_save_path         = result/npz/WORD/medlam_medsam
seg_png_save_path     = result/png/WORD/medlam_medsam

[vit]
net_type              = vit_b

[weight]
medlam_load_path   = checkpoint/medlam.pth
vit_load_path  = checkpoint/medsam_vit_b.pth
"""


def _tree(tmp_path: Path, n_support: int = 5, n_query: int = 3) -> Path:
    data = tmp_path / "config" / "data" / "WORD"
    data.mkdir(parents=True)
    (tmp_path / "img").mkdir()
    for kind, n in (("support", n_support), ("query", n_query)):
        for what in ("image", "label"):
            names = [f"../../../img/{kind}_{what}_{i}.nii.gz" for i in range(n)]
            (data / f"{kind}_{what}.txt").write_text("\n".join(names) + "\n")
            for i in range(n):
                (tmp_path / "img" / f"{kind}_{what}_{i}.nii.gz").write_bytes(b"x")
    (tmp_path / "checkpoint").mkdir()
    for name in ("medlam.pth", "medsam_vit_b.pth", "sam_vit_b_01ec64.pth"):
        (tmp_path / "checkpoint" / name).write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize(
    "text,expected",
    [
        ("12", 12),
        ("-3", -3),
        ("0.2", 0.2),
        ("1e-4", 1e-4),
        ("1e4", 10000.0),
        ("-1e-4", -1e-4),
        (".5", 0.5),
        ("5.", 5.0),
        ("1.5e-4", 1.5e-4),
        ("1E-4", 1e-4),
        ("[]", []),
        ("[feature0, feature1]", ["feature0", "feature1"]),
        ("[1.5, a, true]", [1.5, "a", True]),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("-", "-"),
        ("1.2.3", "1.2.3"),
        ("", None),
        ("checkpoint/medlam.pth", "checkpoint/medlam.pth"),
    ],
)
def test_parse_value(text, expected):
    assert parse_value(text) == expected


def test_published_config_loads_unchanged(tmp_path):
    root = _tree(tmp_path)
    (root / "test_word_medlam_medsam.txt").write_text(PUBLISHED)
    cfg = load_config(root / "test_word_medlam_medsam.txt")
    assert cfg.data.fg_class == tuple(range(1, 17))
    assert cfg.data.bbox_mode is BoxMode.SPL and cfg.data.slice_interval == 2
    assert cfg.data.feature_scale_ls == ("feature0", "feature1", "feature2")
    assert len(cfg.data.support_images) == 5 and len(cfg.data.query_labels) == 3
    assert cfg.data.support_images[0].resolve() == (root / "img/support_image_0.nii.gz").resolve()
    assert cfg.vit.backend == "medsam_vit_b"
    assert cfg.weight.medlam_load_path == root / "checkpoint" / "medlam.pth"
    assert cfg.name == "word_medlam_medsam"
    assert cfg.run.use_gt_slice_threshold is False
    assert cfg.data.rdr_steps == 1  # one relative-distance step, as published
    sam = PUBLISHED.replace("medsam_vit_b.pth", "sam_vit_b_01ec64.pth")
    (root / "sam.txt").write_text(
        sam.replace("bbox_mode             = SPL", "bbox_mode = WPL").replace(
            "slice_interval        = 2", "slice_interval = False"
        )
    )
    cfg = load_config(root / "sam.txt")
    assert cfg.vit.backend == "sam_vit_b" and cfg.data.bbox_mode is BoxMode.WPL
    assert cfg.data.slice_interval is None


def test_yaml_with_same_keys(tmp_path):
    root = _tree(tmp_path)
    (root / "c.yaml").write_text(
        textwrap.dedent("""\
        data:
          support_image_ls: config/data/WORD/support_image.txt
          support_label_ls: config/data/WORD/support_label.txt
          query_image_ls: config/data/WORD/query_image.txt
          fg_class: [1, 2]
          fg_class_name: [liver, spleen]
          bbox_mode: WPL
        vit:
          backend: classic
        """)
    )
    cfg = load_config(root / "c.yaml")
    assert cfg.data.class_names == {1: "liver", 2: "spleen"}
    assert cfg.data.query_labels is None  # inference never needs query labels
    assert cfg.vit.backend == "classic"


def _write(root: Path, text: str) -> Path:
    path = root / "c.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            ("bbox_mode             = SPL", "bbox_mode = SPX"),
            r"bbox_mode = 'SPX': expected one of WPL, SPL",
        ),
        (("slice_interval        = 2", "slice_intervall = 2"), r"did you mean 'slice_interval'"),
        (("net_type              = vit_b", "net_type = vit_q"), r"net_type = 'vit_q'"),
        (
            ("fg_class              = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]", "fg_class = []"),
            "fg_class",
        ),
        (
            (
                "fg_class              = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]",
                "fg_class = [1, 1]",
            ),
            "repeats",
        ),
        (("[vit]", "[vitt]"), r"did you mean 'vit'"),
        (
            ("slice_interval        = 2", "slice_interval = False"),
            "positive integer when bbox_mode = SPL",
        ),
        (("feature_scale_ls", "x"), None),
        (("bbox_mode             = SPL", "bbox_mode = SPL\nrdr_steps = 0"), "rdr_steps = 0"),
    ],
)
def test_errors_name_file_key_and_expectation(tmp_path, edit, match):
    root = _tree(tmp_path)
    text = PUBLISHED.replace(*edit)
    if match is None:
        text = PUBLISHED + "[data]\n"
        match = "not a valid INI config"
    path = _write(root, text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_rdr_steps_key(tmp_path):
    root = _tree(tmp_path)
    path = _write(
        root, PUBLISHED.replace("bbox_mode             = SPL", "bbox_mode = SPL\nrdr_steps = 3")
    )
    assert load_config(path).data.rdr_steps == 3
    assert load_config(path).data.mss_share_mm == 0.0  # one search patch per point, published
    shared = _write(root, path.read_text().replace("rdr_steps = 3", "mss_share_mm = 24"))
    assert load_config(shared).data.mss_share_mm == 24.0


def test_all_missing_files_reported_together(tmp_path):
    root = _tree(tmp_path)
    for name in ("support_image_1.nii.gz", "query_label_2.nii.gz"):
        (root / "img" / name).unlink()
    (root / "checkpoint" / "medlam.pth").unlink()
    with pytest.raises(ConfigError, match="3 file") as info:
        load_config(_write(root, PUBLISHED))
    message = str(info.value)
    assert "support_image_1" in message and "query_label_2" in message and "medlam.pth" in message


def test_mismatched_lists(tmp_path):
    root = _tree(tmp_path)
    lst = root / "config/data/WORD/support_label.txt"
    lst.write_text(lst.read_text() + "../../../img/support_label_0.nii.gz\n")
    with pytest.raises(ConfigError, match="5 images but .* 6 labels"):
        load_config(_write(root, PUBLISHED))


def test_missing_list_file_is_named(tmp_path):
    root = _tree(tmp_path)
    (root / "config/data/WORD/query_image.txt").unlink()
    with pytest.raises(ConfigError, match="query_image.txt"):
        load_config(_write(root, PUBLISHED))


def test_written_config_reads_back(tmp_path):
    root = _tree(tmp_path)
    path = write_config_txt(
        root / "w.txt",
        {
            "data": {
                "support_image_ls": "config/data/WORD/support_image.txt",
                "support_label_ls": "config/data/WORD/support_label.txt",
                "query_image_ls": "config/data/WORD/query_image.txt",
                "fg_class": [3, 5],
                "fg_class_name": ["kidney", "stomach"],
                "bbox_mode": "SPL",
                "slice_interval": 2,
            },
            "vit": {"backend": "classic"},
            "run": {"seed": 7, "device": "cpu"},
        },
    )
    cfg = load_config(path)
    assert cfg.data.fg_class == (3, 5) and cfg.run.seed == 7 and cfg.run.device == "cpu"


def test_backend_names_are_torch_free():
    import subprocess
    import sys

    code = "import sys, medlsam.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert "classic" in SEGMENTER_NAMES and "medsam_vit_b" in SEGMENTER_NAMES


SHIPPED = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.txt")
    if p.name.startswith(("structseg_", "word_"))
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path, check_files=False)
    assert cfg.data.fg_class == tuple(range(1, len(cfg.data.class_names) + 1))
    assert cfg.vit.backend in ("sam_vit_b", "medsam_vit_b")
    assert cfg.vit.backend.startswith("medsam") == ("medsam" in path.name)
    assert (cfg.data.bbox_mode is BoxMode.SPL) == ("_spl_" in path.name)
    assert len(cfg.data.support_images) == 5
    if "structseg" in path.name:
        assert len(cfg.data.query_images) == 45 and len(cfg.data.class_names) == 22


def test_inline_comments_are_ignored(tmp_path):
    root = _tree(tmp_path)
    text = PUBLISHED.replace("bbox_mode             = SPL", "bbox_mode = SPL   # or WPL")
    assert load_config(_write(root, text)).data.bbox_mode is BoxMode.SPL


def test_query_case_names_must_be_unique(tmp_path):
    from medlsam.config import check_case_names

    root = _tree(tmp_path, n_query=2)
    cfg = load_config(_write(root, PUBLISHED))
    assert check_case_names(cfg) == ["query_image_0", "query_image_1"]
    (root / "other" / "img").mkdir(parents=True)  # same file name, same parent folder name
    (root / "other" / "img" / "query_image_0.nii.gz").write_bytes(b"x")
    lst = root / "config/data/WORD/query_image.txt"
    lst.write_text(lst.read_text() + "../../../other/img/query_image_0.nii.gz\n")
    lab = root / "config/data/WORD/query_label.txt"
    lab.write_text(lab.read_text() + "../../../img/query_label_0.nii.gz\n")
    with pytest.raises(ConfigError, match="share the case name 'img'"):
        check_case_names(load_config(_write(root, PUBLISHED)))


def test_run_engine_key(tmp_path):
    root = _tree(tmp_path)
    assert load_config(_write(root, PUBLISHED)).run.engine == "auto"
    path = _write(root, PUBLISHED + "\n[run]\nengine = openvino\n")
    assert load_config(path).run.engine == "openvino"
    bad = _write(root, PUBLISHED + "\n[run]\nengine = tensorrt\n")
    with pytest.raises(ConfigError, match=r"engine = 'tensorrt': expected one of auto, torch"):
        load_config(bad)
