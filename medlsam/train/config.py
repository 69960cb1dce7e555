"""Training config of MedLAM: the published ``.txt`` (INI) format, parsed into a frozen dataclass.

The published file ``train_position_full_size_with_fc.txt`` (method.md 7) loads unchanged:

.. code-block:: ini

    [data]
    train_image_list = train_images.txt
    iter_num = 1000
    batch_size = 4
    patch_size = [64, 64, 64]
    distance_ratio = [1500, 600, 600]
    [network]
    net_type = MedLAM
    base_feature_number = 24
    drop_rate = 0.2
    [training]
    learning_rate = 1e-4
    decay = 1e-4
    maximal_epoch = 300
    random_seed = 2023
    model_save_name = checkpoints/MedLAM

``train_image_list`` names RAW CT files (any format :func:`medlsam.io.read_image` reads; paths
relative to the list file), not preprocessed ones. Relative paths in the config resolve against
the config's folder. An "epoch" is ``iter_num`` steps; the learning rate is multiplied by
``lr_gamma`` every ``lr_step_epochs`` epochs (published: 0.8 every 10).

Keys added by medlsam (all optional): ``[data] cache_dir`` (default
``<model_save_name folder>/medlam_cache``), ``valid_pairs`` (50), ``interpolation``
(``spline``), ``augment`` (True); ``[training] rdr_unit_mm`` (1.0), ``rdr_weight`` (1.0),
``mss_weight`` (1.0), ``mss_scales`` (``[feature0, feature1, feature2]``, ``[]`` = RDR only),
``mss_anchors`` (20), ``lr_step_epochs`` (10), ``lr_gamma`` (0.8), ``save_every``
(``iter_num``), ``freeze_first_stage`` (False: train ``conv0_1``/``conv0_2`` too; True keeps
them at their initial weights, ~5x faster on a CPU); ``[data] near_pair_fraction`` (0: every
pair's centres independent, as published) and ``near_pair_mm`` (60): that share of training and
validation pairs has its second centre within ``near_pair_mm`` of the first on every axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medlsam.config import FEATURE_SCALES
from medlsam.errors import ConfigError
from medlsam.ini import SectionReader, read_raw, suggest
from medlsam.io import read_path_list


@dataclass(frozen=True)
class TrainConfig:
    """A parsed training config; paths absolute or relative to the current directory."""

    path: Path | None
    train_images: tuple[Path, ...]
    valid_images: tuple[Path, ...]
    iter_num: int = 1000
    batch_size: int = 4
    distance_ratio: tuple[float, float, float] = (1500.0, 600.0, 600.0)
    base_feature_number: int = 24
    drop_rate: float = 0.2
    learning_rate: float = 1e-4
    decay: float = 1e-4
    maximal_epoch: int = 300
    print_step: int = 100
    random_seed: int = 2023
    model_save_name: Path = Path("checkpoint/MedLAM")
    pretrained_model_path: Path | None = None
    cache_dir: Path | None = None
    valid_pairs: int = 50
    interpolation: str = "spline"
    augment: bool = True
    rdr_unit_mm: float = 1.0
    rdr_weight: float = 1.0
    mss_weight: float = 1.0
    mss_scales: tuple[str, ...] = FEATURE_SCALES
    mss_anchors: int = 20
    lr_step_epochs: int = 10
    lr_gamma: float = 0.8
    save_every: int = 1000
    freeze_first_stage: bool = False
    near_pair_fraction: float = 0.0
    near_pair_mm: float = 60.0
    #: processes preparing batches (None: 4 on CUDA, 0 = in the training process on the CPU)
    num_workers: int | None = None
    #: mixed precision on CUDA (bfloat16 autocast where supported, else float16 + loss scaling)
    amp: bool = False


# section -> key -> required
_KNOWN: dict[str, dict[str, bool]] = {
    "data": {
        "train_image_list": True,
        "valid_image_list": False,
        "iter_num": False,
        "batch_size": False,
        "patch_size": False,
        "class_num": False,
        "distance_ratio": False,
        "cache_dir": False,
        "valid_pairs": False,
        "interpolation": False,
        "augment": False,
        "near_pair_fraction": False,
        "near_pair_mm": False,
        "num_workers": False,
    },
    "network": {
        "net_type": False,
        "base_feature_number": False,
        "drop_rate": False,
        "dilation": False,
        "class_num": False,
        "input_channel": False,
    },
    "training": {
        "load_pretrained_model": False,
        "pretrained_model_path": False,
        "learning_rate": False,
        "decay": False,
        "maximal_epoch": False,
        "start_iteration": False,
        "print_step": False,
        "random_seed": False,
        "model_save_name": False,
        "best_loss": False,
        "rdr_unit_mm": False,
        "rdr_weight": False,
        "mss_weight": False,
        "mss_scales": False,
        "mss_anchors": False,
        "lr_step_epochs": False,
        "lr_gamma": False,
        "save_every": False,
        "freeze_first_stage": False,
        "amp": False,
    },
}


class _Reader(SectionReader):
    """The shared section reader plus the training config's own value kinds."""

    def integer(self, section: str, key: str, default: int, minimum: int = 1) -> int:
        value = self.int_value(section, key, default, minimum)
        assert value is not None
        return value

    def boolean(self, section: str, key: str, default: bool) -> bool:
        return self.bool_value(section, key, default)

    def images(self, key: str) -> tuple[Path, ...]:
        list_path = self.path_value("data", key)
        if list_path is None:
            return ()
        try:
            paths = tuple(read_path_list(list_path))
        except Exception as err:
            raise ConfigError(f"{self.path}: [data] {key}: {err}") from err
        if not paths:
            raise ConfigError(f"{self.path}: [data] {key} = {list_path}: the list is empty")
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            shown = ", ".join(missing[:3]) + (
                f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            )
            raise ConfigError(f"{self.path}: [data] {key}: files not found: {shown}")
        return paths


def _ratio_scales_interpolation(r: _Reader) -> tuple[list, list, str]:
    """``[data] distance_ratio``, ``[training] mss_scales`` and ``[data] interpolation``."""
    ratio = r.get("data", "distance_ratio", [1500.0, 600.0, 600.0])
    if not (
        isinstance(ratio, list)
        and len(ratio) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in ratio)
    ):
        raise r.fail(
            "data", "distance_ratio", ratio, "three positive numbers, e.g. [1500, 600, 600]"
        )
    scales = r.get("training", "mss_scales", list(FEATURE_SCALES))
    if scales is False:
        scales = []
    if not isinstance(scales, list) or any(s not in FEATURE_SCALES for s in scales):
        bad = (
            next((s for s in scales if s not in FEATURE_SCALES), scales)
            if isinstance(scales, list)
            else scales
        )
        raise r.fail(
            "training",
            "mss_scales",
            scales,
            f"a list of {', '.join(FEATURE_SCALES)}{suggest(str(bad), list(FEATURE_SCALES))}",
        )
    interpolation = r.get("data", "interpolation", "spline")
    if interpolation not in ("spline", "linear"):
        raise r.fail(
            "data",
            "interpolation",
            interpolation,
            f"spline or linear{suggest(str(interpolation), ['spline', 'linear'])}",
        )
    return ratio, scales, interpolation


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Load a MedLAM training config (published ``.txt`` format plus medlsam's keys).

    Raises:
        ConfigError: one line naming the file, the key, the value and what was expected (with
            the closest known key for a misspelt one), or the missing list files.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: training config not found")
    r = _Reader(path, read_raw(path), _KNOWN)
    r.fixed("data", "patch_size", [64, 64, 64])
    r.fixed("data", "class_num", 3)
    r.fixed("network", "class_num", 3)
    r.fixed("network", "net_type", "MedLAM")
    r.fixed("network", "dilation", 1)
    r.fixed("network", "input_channel", 1)
    ratio, scales, interpolation = _ratio_scales_interpolation(r)
    pretrained = None
    if r.boolean("training", "load_pretrained_model", False):
        pretrained = r.path_value("training", "pretrained_model_path")
        if pretrained is None or not pretrained.is_file():
            raise r.fail(
                "training",
                "pretrained_model_path",
                r.get("training", "pretrained_model_path"),
                "an existing checkpoint (load_pretrained_model is True)",
            )
    iter_num = r.integer("data", "iter_num", 1000)
    drop = r.number("network", "drop_rate", 0.2)
    if drop >= 1:
        raise r.fail("network", "drop_rate", drop, "a number in [0, 1)")
    cache = r.path_value("data", "cache_dir")
    near_fraction = r.number("data", "near_pair_fraction", 0.0)
    if not 0.0 <= near_fraction <= 1.0:
        raise r.fail("data", "near_pair_fraction", near_fraction, "a number in [0, 1]")
    near_mm = r.number("data", "near_pair_mm", 60.0, strict=True)
    return TrainConfig(
        path=path,
        train_images=r.images("train_image_list"),
        valid_images=r.images("valid_image_list"),
        iter_num=iter_num,
        batch_size=r.integer("data", "batch_size", 4),
        distance_ratio=tuple(float(v) for v in ratio),  # type: ignore[arg-type]
        base_feature_number=r.integer("network", "base_feature_number", 24),
        drop_rate=drop,
        learning_rate=r.number("training", "learning_rate", 1e-4, strict=True),
        decay=r.number("training", "decay", 1e-4),
        maximal_epoch=r.integer("training", "maximal_epoch", 300),
        print_step=r.integer("training", "print_step", 100),
        random_seed=r.integer("training", "random_seed", 2023, minimum=0),
        model_save_name=r.path_value("training", "model_save_name")
        or path.parent / "checkpoint/MedLAM",
        pretrained_model_path=pretrained,
        cache_dir=cache,
        valid_pairs=r.integer("data", "valid_pairs", 50, minimum=0),
        interpolation=interpolation,
        augment=r.boolean("data", "augment", True),
        rdr_unit_mm=r.number("training", "rdr_unit_mm", 1.0, strict=True),
        rdr_weight=r.number("training", "rdr_weight", 1.0),
        mss_weight=r.number("training", "mss_weight", 1.0),
        mss_scales=tuple(scales),
        mss_anchors=r.integer("training", "mss_anchors", 20),
        lr_step_epochs=r.integer("training", "lr_step_epochs", 10),
        lr_gamma=r.number("training", "lr_gamma", 0.8, strict=True),
        save_every=r.integer("training", "save_every", iter_num),
        freeze_first_stage=r.boolean("training", "freeze_first_stage", False),
        near_pair_fraction=near_fraction,
        near_pair_mm=near_mm,
        num_workers=r.int_value("data", "num_workers", None, minimum=0),
        amp=r.boolean("training", "amp", False),
    )
