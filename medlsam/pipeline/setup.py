"""Setting up a run: devices, output folders, support scans and the localizer.

Used by :func:`medlsam.pipeline.run.run`; each function is small and replaceable in tests.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from medlsam.config import Config
from medlsam.errors import ConfigError, OutputError
from medlsam.io import Volume, label_on_image_grid, read_image, read_label
from medlsam.localization.base import FewShotLocalizer

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda[:N]`` checked to exist
    (:func:`medlsam.devices.resolve_device`)."""
    from medlsam.devices import resolve_device as resolve

    return resolve(name)


def output_folders(cfg: Config, output: Path | None, boxes_from_labels: bool) -> tuple[Path, Path]:
    """``(segmentation folder, PNG folder)`` for a run (see the CLI's help)."""
    if output is not None:
        return Path(output), Path(output) / "png"
    seg = cfg.data.seg_save_path
    png = cfg.data.seg_png_save_path or seg / "png"
    if boxes_from_labels:
        seg = seg.with_name(seg.name + "_manual_boxes")
        png = (
            png.with_name(png.name + "_manual_boxes") if cfg.data.seg_png_save_path else seg / "png"
        )
    return seg, png


def check_writable(folder: Path) -> None:
    """Create ``folder`` and check a file can be written there (else :class:`OutputError`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a unique name: shards starting together in one folder must not race on the probe
        fd, probe = tempfile.mkstemp(prefix=".medlsam_write_test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(
            f"{folder}: output folder is not writable ({err.strerror or err})"
        ) from err


def read_supports(cfg: Config) -> Iterator[tuple[Volume, Volume]]:
    """The support image/label pairs, read one pair at a time (checked to share a grid)."""
    data = cfg.data
    if not data.support_images:
        raise ConfigError(f"{cfg.path}: [data] support_image_ls is needed for this run")
    for image_path, label_path in zip(data.support_images, data.support_labels, strict=True):
        image = read_image(image_path)
        yield image, label_on_image_grid(read_label(label_path), image)


def supports_loader(
    cfg: Config, keep: bool = True
) -> Callable[[], Iterable[tuple[Volume, Volume]]]:
    """A function giving the support pairs: read once and kept for reuse (``keep``), or read
    afresh, one pair at a time, on every call (the localizer alone needs them once, and then
    never holds more than one full-resolution support scan)."""
    cache: list[tuple[Volume, Volume]] = []

    def load() -> Iterable[tuple[Volume, Volume]]:
        if not keep:
            return read_supports(cfg)
        if not cache:
            cache.extend(read_supports(cfg))
        return cache

    return load


def build_localizer(cfg: Config, device: str, network: Any = None) -> Any:
    """The ``[localize] method`` localizer, not fitted: MedLAM from ``[weight] medlam_load_path``
    in a :class:`Localizer`, or the weight-free :class:`RegistrationLocalizer`.

    ``network`` (MedLAM only): the network to run in place of the checkpoint's (which runs in
    ``[run] engine``), used as given (already on ``device``; random weights, an engine's
    wrapper, or a wrapper called like the network, as the benchmark's); every other setting
    still comes from ``cfg``.
    """
    method = cfg.localize
    if method.method == "registration":
        logger.info("localizer: registration (%s)", method.chosen_by)
        from medlsam.localization.registration import RegistrationLocalizer

        return RegistrationLocalizer(
            mode=cfg.data.bbox_mode,
            slice_interval=cfg.data.slice_interval,
            fusion=method.fusion,
            refine=method.refine,
            workers=method.workers,
            seed=cfg.run.seed,
            class_names=dict(cfg.data.class_names),
        )
    from medlsam.localization.engine import with_engine
    from medlsam.localization.localizer import Localizer
    from medlsam.localization.network import build_medlam

    if network is not None:
        model = network
    elif cfg.weight.medlam_load_path is None:
        raise ConfigError(f"{cfg.path}: [weight] medlam_load_path is needed (a MedLAM .pth)")
    else:
        model = with_engine(
            build_medlam(cfg.weight.medlam_load_path, device), cfg.run.engine, device
        )
    logger.info("localizer: medlam (%s)", method.chosen_by)  # after the checkpoint is read
    starts = None
    if cfg.run.published:  # one start stream over the whole query list, whatever the shard
        from medlsam.localization.published import PublishedStarts, padded_query

        starts = PublishedStarts(cfg.run.seed, cfg.data.query_images, prepare=padded_query)
    return Localizer(
        model,
        device,
        mode=cfg.data.bbox_mode,
        slice_interval=cfg.data.slice_interval,
        feature_scales=cfg.data.feature_scale_ls,
        seed=cfg.run.seed,
        rdr_steps=cfg.data.rdr_steps,
        mss_share_mm=cfg.data.mss_share_mm,
        published=cfg.run.published,
        starts=starts,
        precision=cfg.run.medlam_precision,
    )


def prepare_localizer(localizer: Any, cfg: Config, supports: Callable[[], Iterable]) -> None:
    """Load ``[data] prototypes`` when the file exists, else fit (and save there when named)."""
    path = cfg.data.prototypes if hasattr(localizer, "load_prototypes") else None
    if path is not None and Path(path).is_file():
        localizer.load_prototypes(path, cfg.data.fg_class)
        logger.info("prototypes read from %s", path)
        return
    localizer.fit(supports(), cfg.data.fg_class)
    if path is not None and hasattr(localizer, "save_prototypes"):
        localizer.save_prototypes(path)
        logger.info("prototypes saved to %s", path)


def prepare_or_share(
    share: Callable[..., None] | None,
    localizer: Any,
    cfg: Config,
    supports: Callable[[], Iterable],
    needed: bool,
) -> None:
    """Get the localizer's prototypes: ``share(localizer, cfg, supports, needed)`` when given
    (under ``torchrun`` every rank takes part, needed or not:
    :mod:`medlsam.pipeline.distributed`), else :func:`prepare_localizer` when ``needed``."""
    if share is not None and isinstance(localizer, FewShotLocalizer):
        share(localizer, cfg, supports, needed)
    elif needed:  # every rank fits a localizer without prototypes itself (registration: cheap)
        prepare_localizer(localizer, cfg, supports)
