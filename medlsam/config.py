"""Configuration: the published INI-style ``.txt`` format (and YAML) as frozen dataclasses.

A config has the sections ``[data]``, ``[vit]`` and ``[weight]`` of the published MedLSAM
configs, with the same keys and meanings, plus an optional ``[run]`` section for medlsam's own
settings. Every published config loads unchanged. YAML files with the same sections and keys
load too.

Values in ``.txt`` files are converted as in the published format (int, float, ``[a, b]``
lists, ``True``/``False``), without its traps: ``[]`` is an empty list, ``.5``, ``5.`` and
``1.5e-4`` are floats, and ``TRUE``/``FALSE`` are booleans.

Paths inside a config (list files, output folders, checkpoints) that are relative resolve
against the folder of the config file; paths inside list files resolve against the folder
of the list file. Output folders named with a path that does not exist yet resolve the same
way.

The names a user can type (``SEGMENTER_NAMES``, ``BoxMode``) live here, free of torch, so
they are checked before any model loads.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medlsam.errors import ConfigError
from medlsam.ini import SectionReader, parse_value, read_raw, suggest, write_config_txt
from medlsam.io import case_names, read_path_list
from medlsam.weights import demo_checkpoint, demo_settings, is_demo

__all__ = [
    "BoxMode",
    "CLASSIC_CONTRAST",
    "Config",
    "LOCALIZE_METHODS",
    "LocalizeConfig",
    "DataConfig",
    "RunConfig",
    "SEGMENTER_NAMES",
    "VitConfig",
    "WeightConfig",
    "check_case_names",
    "check_config_files",
    "load_config",
    "parse_value",
    "write_config_txt",
]


class BoxMode(str, enum.Enum):
    """How MedLAM boxes an organ: one whole box (WPL) or sub-boxes along the slice axis (SPL)."""

    WPL = "WPL"
    SPL = "SPL"


#: Segmentation backends a user can name in ``[vit] backend``.
SEGMENTER_NAMES: tuple[str, ...] = (
    "sam_vit_b",
    "sam_vit_l",
    "sam_vit_h",
    "medsam_vit_b",
    "classic",
)
NET_TYPES: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")
FEATURE_SCALES: tuple[str, ...] = ("feature0", "feature1", "feature2")
MEDSAM_NORMALIZATIONS: tuple[str, ...] = ("imagenet", "unit")
OVERLAP_RULES: tuple[str, ...] = ("score", "later")
#: ``[run] reproduce``: ``none`` (medlsam's behaviour) or ``published`` (the published code's).
REPRODUCE_MODES: tuple[str, ...] = ("none", "published")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: ``[run] engine``: how the networks run on the CPU (see medlsam.engine); CUDA runs PyTorch
ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
#: Localizers a user can name in ``[localize] method``.
LOCALIZE_METHODS: tuple[str, ...] = ("medlam", "registration")
REGISTRATION_FUSIONS: tuple[str, ...] = ("median", "vote")
#: Registration refinements after the global affine (``organ``: a local translation per organ;
#: ``both``: each support gives its organ's mask before and after that move to the fusion).
REGISTRATION_REFINES: tuple[str, ...] = ("none", "organ", "both")
#: ``[vit] classic_contrast``: keep the supports' organ intensities, or adapt them to a query
#: whose boxes show another contrast phase (needs boxes that hit the organs).
CLASSIC_CONTRAST: tuple[str, ...] = ("keep", "adapt")
#: HD95 definitions ``medlsam-eval --hd95`` takes (:mod:`medlsam.evaluation.metrics`).
HD95_DEFINITIONS: tuple[str, ...] = ("monai", "pooled")
#: ``[vit] precision`` and ``[run] medlam_precision`` (CUDA only; the CPU runs fp32)
SAM_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
MEDLAM_PRECISIONS: tuple[str, ...] = ("fp16", "fp32")


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: inputs, classes, box mode and output folders."""

    support_image_ls: Path | None
    support_label_ls: Path | None
    query_image_ls: Path
    query_label_ls: Path | None
    support_images: tuple[Path, ...]
    support_labels: tuple[Path, ...]
    query_images: tuple[Path, ...]
    query_labels: tuple[Path, ...] | None
    fg_class: tuple[int, ...]
    class_names: Mapping[int, str]
    bbox_mode: BoxMode
    slice_interval: int | None
    feature_scale_ls: tuple[str, ...]
    rdr_steps: int
    mss_share_mm: float
    gt_slice_threshold: int | None
    seg_save_path: Path
    seg_png_save_path: Path | None
    prototypes: Path | None

    @functools.cached_property
    def query_cases(self) -> list[str]:
        """The query case names, in list order (:func:`medlsam.io.case_names`)."""
        return case_names(self.query_images)


@dataclass(frozen=True)
class VitConfig:
    """``[vit]``: the box-prompted segmenter."""

    net_type: str
    backend: str
    medsam_normalization: str
    overlap: str
    precision: str = "fp32"
    classic_contrast: str = "keep"


@dataclass(frozen=True)
class WeightConfig:
    """``[weight]``: checkpoints (never downloaded)."""

    medlam_load_path: Path | None
    vit_load_path: Path | None


@dataclass(frozen=True)
class RunConfig:
    """``[run]`` (medlsam only): seed, device and switches for reproducing the paper.

    ``reproduce = published`` turns every deliberate departure of medlsam from the published
    code back to the published behaviour (the README's table lists them); it also makes
    ``[vit] overlap = later`` and ``use_gt_slice_threshold = True`` the defaults, which an
    explicit value of either key still overrides.
    """

    seed: int = 2023
    device: str = "auto"
    use_gt_slice_threshold: bool = False
    dicom_seg: bool = False  # also write <case>.seg.dcm for queries read from DICOM
    organ_masks: bool = False  # also write <case>/<organ>.nii.gz, one binary map per organ
    medlam_precision: str = "fp16"
    engine: str = "auto"
    reproduce: str = "none"

    @property
    def published(self) -> bool:
        """Whether the run reproduces the published pipeline exactly."""
        return self.reproduce == "published"


@dataclass(frozen=True)
class LocalizeConfig:
    """``[localize]`` (medlsam only): which localizer boxes the organs.

    ``method`` is ``medlam`` (the network, ``[weight] medlam_load_path``) or ``registration``
    (weight-free atlas registration of each support scan); unset, it is ``medlam`` when a
    MedLAM checkpoint is named and ``registration`` otherwise (``chosen_by`` says which).
    ``fusion`` combines the supports' registered boxes (``median`` or ``vote``); ``refine``
    is ``both`` (default: each support's organ mask before and after a local translation
    search around the organ, both fused), ``organ`` (the searched mask only) or ``none`` (the
    global affine's mask only). ``workers``: processes registering the supports (None: one
    per CPU this process may use, shared among torchrun's processes on the node; 1: in the
    calling process); results do not depend on it.
    """

    method: str = "medlam"
    chosen_by: str = "config"
    fusion: str = "median"
    refine: str = "both"
    workers: int | None = None


@dataclass(frozen=True)
class Config:
    path: Path | None
    data: DataConfig
    vit: VitConfig
    weight: WeightConfig
    run: RunConfig = field(default_factory=RunConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)

    @property
    def name(self) -> str:
        """Config name as the published result files use it (``test_`` and suffix removed)."""
        if self.path is None:
            return "config"
        stem = self.path.name
        for suffix in (".txt", ".yaml", ".yml", ".ini"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        return stem.removeprefix("test_")


# Known keys per section, with whether they are required.
_KNOWN: dict[str, dict[str, bool]] = {
    "data": {
        "support_image_ls": False,
        "support_label_ls": False,
        "query_image_ls": True,
        "query_label_ls": False,
        "gt_slice_threshold": False,
        "fg_class": True,
        "fg_class_name": False,
        "bbox_mode": False,
        "slice_interval": False,
        "feature_scale_ls": False,
        "rdr_steps": False,
        "mss_share_mm": False,
        "seg_save_path": False,
        "seg_png_save_path": False,
        "prototypes": False,
    },
    "vit": {
        "net_type": False,
        "backend": False,
        "medsam_normalization": False,
        "overlap": False,
        "precision": False,
        "classic_contrast": False,
    },
    "weight": {"medlam_load_path": False, "vit_load_path": False},
    "run": {
        "seed": False,
        "device": False,
        "use_gt_slice_threshold": False,
        "dicom_seg": False,
        "organ_masks": False,
        "medlam_precision": False,
        "engine": False,
        "reproduce": False,
    },
    "localize": {"method": False, "fusion": False, "refine": False, "workers": False},
}


def _localize_config(
    reader: SectionReader, medlam_path: Path | None, prototypes: Path | None
) -> LocalizeConfig:
    """``[localize]``: an explicit method, else MedLAM when its checkpoint (or a MedLAM
    prototypes file) is named, else registration."""
    fusion = reader.choice("localize", "fusion", "median", REGISTRATION_FUSIONS)
    refine = reader.choice("localize", "refine", "both", REGISTRATION_REFINES)
    workers = reader.int_value("localize", "workers", None, minimum=1)
    if reader.get("localize", "method") is not None:
        method = reader.choice("localize", "method", "medlam", LOCALIZE_METHODS)
        why = "config"
    elif medlam_path is not None:
        method, why = "medlam", "default: [weight] medlam_load_path is set"
    elif prototypes is not None:
        method, why = "medlam", "default: [data] prototypes is set"
    else:
        method, why = "registration", "default: no [weight] medlam_load_path"
    return LocalizeConfig(method, why, fusion, refine, workers)


def _read_vit(
    reader: SectionReader, net_type: str, vit_path: Path | None, published: bool
) -> VitConfig:
    """The ``[vit]`` section (``reproduce = published`` makes ``overlap = later`` the default)."""
    return VitConfig(
        net_type=net_type,
        backend=_resolve_backend(reader, net_type, vit_path),
        medsam_normalization=reader.choice(
            "vit", "medsam_normalization", "imagenet", MEDSAM_NORMALIZATIONS
        ),
        overlap=reader.choice("vit", "overlap", "later" if published else "score", OVERLAP_RULES),
        precision=reader.choice("vit", "precision", "fp32", SAM_PRECISIONS),
        classic_contrast=reader.choice("vit", "classic_contrast", "keep", CLASSIC_CONTRAST),
    )


def _device(reader: SectionReader) -> str:
    """``[run] device``: auto, cpu, cuda or cuda:N (N = 0, 1, ...)."""
    value = str(reader.get("run", "device", "auto")).strip()
    head, _, index = value.partition(":")
    if value in DEVICES or (head == "cuda" and index.isdigit()):
        return value
    raise reader.fail("run", "device", value, "auto, cpu, cuda or cuda:N (N = 0, 1, ...)")


def _resolve_backend(reader: SectionReader, net_type: str, vit_path: Path | None) -> str:
    explicit = reader.get("vit", "backend")
    if explicit is not None:
        return reader.choice("vit", "backend", "", SEGMENTER_NAMES)
    if vit_path is None:
        return "classic"
    family = "medsam" if "medsam" in vit_path.name.lower() else "sam"
    name = f"{family}_{net_type}"
    if name not in SEGMENTER_NAMES:
        raise ConfigError(
            f"{reader.path}: [vit] net_type = {net_type!r} with {vit_path.name}: there is no "
            f"{name} backend (MedSAM is published as vit_b only); set [vit] backend"
        )
    return name


def _read_lists(reader: SectionReader, data: dict[str, Any]) -> dict[str, tuple[Path, ...] | None]:
    lists: dict[str, tuple[Path, ...] | None] = {}
    for key in ("support_image_ls", "support_label_ls", "query_image_ls", "query_label_ls"):
        list_path = data[key]
        lists[key] = None if list_path is None else tuple(_read_list(reader, key, list_path))
    pairs = (("support_image_ls", "support_label_ls"), ("query_image_ls", "query_label_ls"))
    for images_key, labels_key in pairs:
        images, labels = lists[images_key], lists[labels_key]
        if images is not None and labels is not None and len(images) != len(labels):
            raise ConfigError(
                f"{reader.path}: {data[images_key]} lists {len(images)} images but "
                f"{data[labels_key]} lists {len(labels)} labels; expected one label per image, "
                "in the same order"
            )
    if (lists["support_image_ls"] is None) != (lists["support_label_ls"] is None):
        raise ConfigError(
            f"{reader.path}: [data] support_image_ls and support_label_ls go together; "
            "give both (or neither, with a prototypes file)"
        )
    return lists


def _read_list(reader: SectionReader, key: str, list_path: Path) -> list[Path]:
    try:
        return read_path_list(list_path)
    except Exception as err:
        raise ConfigError(f"{reader.path}: [data] {key}: {err}") from err


def _read_classes(reader: SectionReader) -> tuple[list[int], dict[int, str]]:
    """``[data] fg_class`` (positive ids, no repeats) and ``fg_class_name`` (one per id)."""
    fg = reader.get("data", "fg_class")
    if isinstance(fg, int) and not isinstance(fg, bool):
        fg = [fg]
    if (
        not isinstance(fg, list)
        or not fg
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in fg)
    ):
        raise reader.fail(
            "data", "fg_class", fg, "a non-empty list of positive class ids, e.g. [1, 2, 3]"
        )
    if len(set(fg)) != len(fg):
        raise reader.fail("data", "fg_class", fg, "class ids without repeats")
    names_value = reader.get("data", "fg_class_name")
    if names_value is None:
        return fg, {c: f"class_{c}" for c in fg}
    if not isinstance(names_value, list) or len(names_value) != len(fg):
        raise reader.fail(
            "data", "fg_class_name", names_value, f"a list of {len(fg)} names, one per fg_class"
        )
    return fg, {c: str(n) for c, n in zip(fg, names_value)}


def _read_box_options(reader: SectionReader) -> tuple[str, int | None, list[str]]:
    """``[data] bbox_mode``, ``slice_interval`` (None: off) and ``feature_scale_ls``."""
    mode = reader.choice("data", "bbox_mode", "WPL", tuple(m.value for m in BoxMode))
    interval = reader.get("data", "slice_interval")
    if interval is False or interval is None:
        interval = None
    elif isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise reader.fail(
            "data", "slice_interval", interval, "a positive integer (3 mm voxels) or False"
        )
    if mode == "SPL" and interval is None:
        raise reader.fail(
            "data", "slice_interval", False, "a positive integer when bbox_mode = SPL"
        )
    scales = reader.get("data", "feature_scale_ls", list(FEATURE_SCALES))
    if not isinstance(scales, list):
        scales = []  # the published meaning: a non-list value (False) switches refinement off
    for scale in scales:
        if scale not in FEATURE_SCALES:
            raise reader.fail(
                "data",
                "feature_scale_ls",
                scales,
                f"a list of {', '.join(FEATURE_SCALES)}{suggest(str(scale), FEATURE_SCALES)}",
            )
    return mode, interval, scales


def _demo_defaults(reader: SectionReader) -> bool:
    """With ``medlam_load_path = demo``, the shipped checkpoint's own settings become the
    defaults (the config still overrides them); returns whether the demo checkpoint is named."""
    demo = is_demo(reader.get("weight", "medlam_load_path"))
    if demo:
        for section, values in demo_settings().items():
            for key, value in values.items():
                if reader.get(section, key) is None:
                    reader.raw.setdefault(section, {})[key] = value
    return demo


def _read_run(reader: SectionReader, reproduce: str) -> RunConfig:
    """The ``[run]`` section (``reproduce = published`` turns the gt-slice threshold on)."""
    published = reproduce == "published"
    return RunConfig(
        seed=reader.int_value("run", "seed", 2023) or 0,
        device=_device(reader),
        use_gt_slice_threshold=reader.bool_value("run", "use_gt_slice_threshold", published),
        dicom_seg=reader.bool_value("run", "dicom_seg", False),
        organ_masks=reader.bool_value("run", "organ_masks", False),
        reproduce=reproduce,
        medlam_precision=reader.choice("run", "medlam_precision", "fp16", MEDLAM_PRECISIONS),
        engine=reader.choice("run", "engine", "auto", ENGINES),
    )


def load_config(
    path: str | os.PathLike[str], check_files: bool = True, segmenter: bool = True
) -> Config:
    """Load a ``.txt`` (INI) or YAML config into a frozen :class:`Config`.

    Args:
        path: the config file.
        check_files: also check that every image, label and checkpoint named exists, and report
            all missing files together in one error.
        segmenter: the run segments (``[weight] vit_load_path`` is checked too); False for
            localization only, which never needs SAM weights.

    Raises:
        ConfigError: naming the file, the key, the value and what was expected.
    """
    path = Path(path)
    reader = SectionReader(path, read_raw(path), _KNOWN)
    demo = _demo_defaults(reader)

    fg, class_names = _read_classes(reader)
    mode, interval, scales = _read_box_options(reader)

    data_paths = {
        key: reader.path_value("data", key)
        for key in ("support_image_ls", "support_label_ls", "query_image_ls", "query_label_ls")
    }
    lists = _read_lists(reader, data_paths)

    reproduce = reader.choice("run", "reproduce", "none", REPRODUCE_MODES)
    published = reproduce == "published"
    seg_save = reader.path_value("data", "seg_save_path") or path.parent / "result" / path.stem
    net_type = reader.choice("vit", "net_type", "vit_b", NET_TYPES)
    medlam_path = demo_checkpoint() if demo else reader.path_value("weight", "medlam_load_path")
    vit_path = reader.path_value("weight", "vit_load_path")
    prototypes = reader.path_value("data", "prototypes")
    if lists["support_image_ls"] is None and prototypes is None:
        raise ConfigError(
            f"{path}: [data] needs support_image_ls and support_label_ls, or a prototypes file"
        )
    localize = _localize_config(reader, medlam_path, prototypes)
    if localize.method == "registration" and lists["support_image_ls"] is None:
        raise ConfigError(
            f"{path}: [localize] method = registration needs [data] support_image_ls and "
            "support_label_ls (a MedLAM prototypes file cannot be registered)"
        )

    config = Config(
        path=path,
        data=DataConfig(
            support_image_ls=data_paths["support_image_ls"],
            support_label_ls=data_paths["support_label_ls"],
            query_image_ls=data_paths["query_image_ls"],  # type: ignore[arg-type]
            query_label_ls=data_paths["query_label_ls"],
            support_images=lists["support_image_ls"] or (),
            support_labels=lists["support_label_ls"] or (),
            query_images=lists["query_image_ls"] or (),
            query_labels=lists["query_label_ls"],
            fg_class=tuple(fg),
            class_names=class_names,
            bbox_mode=BoxMode(mode),
            slice_interval=interval,
            feature_scale_ls=tuple(scales),
            rdr_steps=reader.int_value("data", "rdr_steps", 1, minimum=1) or 1,
            mss_share_mm=reader.number("data", "mss_share_mm", 0.0),
            gt_slice_threshold=reader.int_value("data", "gt_slice_threshold", None),
            seg_save_path=seg_save,
            seg_png_save_path=reader.path_value("data", "seg_png_save_path"),
            prototypes=prototypes,
        ),
        vit=_read_vit(reader, net_type, vit_path, published),
        weight=WeightConfig(medlam_load_path=medlam_path, vit_load_path=vit_path),
        run=_read_run(reader, reproduce),
        localize=localize,
    )
    if check_files:
        check_config_files(config, segmenter)
    return config


#: the published numerics (method.md 1.2 and 4): SAM in fp32, MedLAM under fp16 autocast
PUBLISHED_PRECISION: Mapping[str, str] = {"sam": "fp32", "medlam": "fp16"}


def with_precision(config: Config, sam: str | None = None, medlam: str | None = None) -> Config:
    """``config`` with ``[vit] precision`` and/or ``[run] medlam_precision`` replaced (the CLI's
    ``--sam-precision`` / ``--medlam-precision``); None keeps the config's value."""
    if sam is not None and sam not in SAM_PRECISIONS:
        raise ConfigError(f"SAM precision {sam!r}: expected one of {', '.join(SAM_PRECISIONS)}")
    if medlam is not None and medlam not in MEDLAM_PRECISIONS:
        raise ConfigError(
            f"MedLAM precision {medlam!r}: expected one of {', '.join(MEDLAM_PRECISIONS)}"
        )
    vit = config.vit if sam is None else replace(config.vit, precision=sam)
    run = config.run if medlam is None else replace(config.run, medlam_precision=medlam)
    return replace(config, vit=vit, run=run)


def published_precision(config: Config) -> Config:
    """``config`` with the published precisions forced (``[run] reproduce = published``)."""
    return with_precision(config, PUBLISHED_PRECISION["sam"], PUBLISHED_PRECISION["medlam"])


def force_reproduce(config: Config) -> Config:
    """``config`` with the published precisions forced when ``[run] reproduce = published``
    (a warning names any precision asked for that this overrides); else ``config``."""
    if getattr(config.run, "reproduce", "none") != "published":
        return config
    forced = published_precision(config)
    changed = [
        f"{key} {old} -> {new}"
        for key, old, new in (
            ("[vit] precision", config.vit.precision, forced.vit.precision),
            ("[run] medlam_precision", config.run.medlam_precision, forced.run.medlam_precision),
        )
        if old != new
    ]
    if changed:
        import logging

        logging.getLogger(__name__).warning(
            "reproduce = published forces the published precisions: %s", ", ".join(changed)
        )
    return forced


def check_config_files(config: Config, segmenter: bool = True) -> None:
    """Raise one :class:`ConfigError` listing every image, label or checkpoint that is missing.

    ``segmenter=False``: the SAM checkpoint is not needed (localization only).
    """
    data = config.data
    named: list[tuple[str, Path]] = []
    named += [("support image", p) for p in data.support_images]
    named += [("support label", p) for p in data.support_labels]
    named += [("query image", p) for p in data.query_images]
    named += [("query label", p) for p in data.query_labels or ()]
    if config.weight.medlam_load_path is not None:
        named.append(("[weight] medlam_load_path", config.weight.medlam_load_path))
    needs_sam = segmenter and config.vit.backend != "classic"
    if config.weight.vit_load_path is not None and needs_sam:
        named.append(("[weight] vit_load_path", config.weight.vit_load_path))
    missing = [f"{what} {p}" for what, p in named if not p.exists()]
    if not data.query_images:
        raise ConfigError(f"{config.path}: {data.query_image_ls} lists no query image")
    if missing:
        shown = "; ".join(missing[:20]) + (
            f"; and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise ConfigError(f"{config.path}: {len(missing)} file(s) not found: {shown}")


def check_case_names(config: Config) -> list[str]:
    """The query case names (:func:`medlsam.io.case_names`), refusing names used twice.

    A case is named after its file (a DICOM folder: after the folder); files that share a
    name (``subject/ct.nii.gz`` layouts) take their parent folder's name. Outputs are named
    after the case, so two queries with one name would overwrite each other.
    """
    cases = config.data.query_cases
    first: dict[str, Path] = {}
    for name, path in zip(cases, config.data.query_images):
        if name in first:
            raise ConfigError(
                f"{config.path}: query images {first[name]} and {path} share the case name "
                f"{name!r} (file and parent folder names alike); their outputs would overwrite "
                "each other"
            )
        first[name] = path
    return cases
