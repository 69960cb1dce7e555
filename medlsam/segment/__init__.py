"""Box-prompted slice segmentation: the interface, the backends and their registry.

``SEGMENTERS`` maps every name of :data:`medlsam.config.SEGMENTER_NAMES` (what a user types in
``[vit] backend``, or what ``net_type`` + ``vit_load_path`` resolve to) to a builder
``builder(checkpoint, device, **options) -> BoxSegmenter``:

=================  ===============================================================
``sam_vit_b/l/h``  SAM (``segment_anything``), a published ``sam_vit_*`` checkpoint
``medsam_vit_b``   MedSAM weights in the SAM ViT-B network; normalisation selectable
``classic``        weight-free intensity models learned from the support scans
=================  ===============================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from medlsam.config import VitConfig
from medlsam.errors import ConfigError
from medlsam.io import Volume
from medlsam.segment.base import (
    FRAME,
    BoxSegmenter,
    SegmenterStats,
    SliceRequest,
    SliceResult,
)
from medlsam.segment.classic import ClassicSegmenter, build_classic_segmenter
from medlsam.segment.sam import SamSegmenter, build_sam_model, build_sam_segmenter

__all__ = [
    "FRAME",
    "SEGMENTERS",
    "BoxSegmenter",
    "ClassicSegmenter",
    "SamSegmenter",
    "SegmenterStats",
    "SliceRequest",
    "SliceResult",
    "build_sam_model",
    "build_segmenter",
]

SEGMENTERS: dict[str, Callable[..., BoxSegmenter]] = {
    "sam_vit_b": partial(build_sam_segmenter, family="sam", net_type="vit_b"),
    "sam_vit_l": partial(build_sam_segmenter, family="sam", net_type="vit_l"),
    "sam_vit_h": partial(build_sam_segmenter, family="sam", net_type="vit_h"),
    "medsam_vit_b": partial(build_sam_segmenter, family="medsam", net_type="vit_b"),
    "classic": build_classic_segmenter,
}


def build_segmenter(
    vit: VitConfig,
    checkpoint: str | os.PathLike[str] | None,
    device: torch.device | str = "cpu",
    supports: Sequence[tuple[Volume, Volume]] | None = None,
    classes: Sequence[int] | None = None,
    engine: str = "torch",
    published: bool = False,
    **options: object,
) -> BoxSegmenter:
    """Build the backend named by ``vit.backend`` (and fit it when supports are given).

    Args:
        vit: the ``[vit]`` section (backend, MedSAM normalisation, precision on CUDA).
        checkpoint: ``[weight] vit_load_path`` (ignored by ``classic``).
        device: where a network runs.
        supports, classes: support ``(image, label)`` pairs and organ ids; when given,
            :meth:`BoxSegmenter.fit` is called (the ``classic`` backend needs it).
        engine: ``[run] engine``, how a SAM-family encoder runs on the CPU (``classic`` has
            no network and ignores it).
        published: SAM backends build their slice images as the published code does
            (``[run] reproduce = published``: :func:`medlsam.preprocess.sam_window_published`).
        options: passed to the builder (for SAM: ``batch_size``, ``precision``,
            ``workers``, ``worker_kind``).

    Raises:
        ConfigError: unknown backend name.
        CheckpointError: missing, corrupt or mismatched checkpoint (before any case runs).
    """
    builder = SEGMENTERS.get(vit.backend)
    if builder is None:
        raise ConfigError(
            f"[vit] backend = {vit.backend!r}: expected one of {', '.join(SEGMENTERS)}"
        )
    if vit.backend.startswith("medsam"):
        options = {"normalization": vit.medsam_normalization, **options}
    if vit.backend != "classic":
        options = {"engine": engine, **options}
    if published and vit.backend != "classic":
        options = {"window": "published", **options}
    if vit.backend != "classic":
        options = {"precision": vit.precision, **options}
    else:
        options = {"adapt": vit.classic_contrast == "adapt", **options}
    segmenter = builder(Path(checkpoint) if checkpoint is not None else None, device, **options)
    if supports is not None:
        segmenter.fit(supports, list(classes or ()))
    return segmenter
