"""One query, start to finish in memory: localize, prompt, segment and assemble.

:func:`run_case` takes the components (a localizer, a segmenter) and returns a
:class:`~medlsam.segment.assemble.Prediction`; it reads and writes nothing. Query labels are
used only in the two modes that say so (``boxes_from_labels``, ``use_gt_slice_threshold``;
see :mod:`medlsam.pipeline.run`).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.config import Config
from medlsam.errors import InputError
from medlsam.io import Volume, label_on_image_grid
from medlsam.localization.base import BoxLocalizer
from medlsam.segment.assemble import (
    LabelAssembler,
    Prediction,
    group_by_slice,
    gt_slice_filter,
    label_prompts,
    organ_prompts,
    prompt_table,
    published_prompts,
)
from medlsam.segment.base import BoxSegmenter, SliceRequest


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A case's own generator: the same boxes whatever the order or sharding of the queries."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8"))])


def truth_boxes(reference: np.ndarray, classes: Sequence[int]) -> dict[int, OrganBoxes]:
    """Each organ's box from a label map (the manual-prompt baseline)."""
    organs = {}
    for c in classes:
        box = Box3D.from_mask(reference == c)
        organs[int(c)] = OrganBoxes(
            int(c), (box,) if box is not None else (), np.zeros((0, 6, 3)), box is not None
        )
    return organs


def _check_reference(volume: Volume, reference: Volume | None, needs_labels: bool) -> Volume | None:
    """The reference on the image's grid (reoriented where its axes are flipped/permuted)."""
    if needs_labels and reference is None:
        raise InputError(f"{volume.path}: this mode needs the query's label map")
    return label_on_image_grid(reference, volume) if reference is not None else None


def case_prompts(
    volume: Volume,
    localizer: BoxLocalizer | None,
    cfg: Config,
    reference: Volume | None,
    boxes_from_labels: bool,
    rng: np.random.Generator | None,
    seconds: dict[str, float],
) -> tuple[dict[int, OrganBoxes], list[SliceRequest]]:
    """The organs' 3D boxes and the per-slice requests to segment (times into ``seconds``)."""
    classes = [int(c) for c in cfg.data.fg_class]
    axis = volume.slice_axis()
    began = time.perf_counter()
    if boxes_from_labels:
        assert reference is not None
        organs = truth_boxes(reference.data, classes)
        rng = rng if rng is not None else case_rng(cfg.run.seed, volume.name)
        prompts = label_prompts(reference.data, classes, axis, rng)
    else:
        if localizer is None:
            raise ValueError("run_case needs a localizer unless boxes_from_labels is set")
        organs = localizer.predict(volume)
        seconds["localize"] = time.perf_counter() - began
        began = time.perf_counter()
        make = published_prompts if cfg.run.published else organ_prompts
        prompts = make(organs, volume.shape, axis, classes)
    if cfg.run.use_gt_slice_threshold:
        assert reference is not None
        keep = gt_slice_filter(reference.data, classes, axis, cfg.data.gt_slice_threshold or 0)
        prompts = [p for p in prompts if p.index in keep]
    requests = group_by_slice(prompts)
    seconds["prompts"] = time.perf_counter() - began
    return organs, requests


def segment_requests(
    volume: Volume,
    segmenter: BoxSegmenter,
    requests: Sequence[SliceRequest],
    assembler: LabelAssembler,
    seconds: dict[str, float],
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Segment every request into ``assembler``; returns the prompt table (times in ``seconds``)."""
    rows: list[tuple[Any, np.ndarray]] = []
    assemble_s = 0.0
    began = time.perf_counter()
    bar = tqdm(
        total=len(requests),
        desc=f"{volume.name}: segment",
        unit="slice",
        leave=False,
        disable=not progress,
    )
    for request, result in zip(requests, segmenter.segment(volume, requests), strict=True):
        t = time.perf_counter()
        assembler.add(request, result)
        rows.append((request, np.asarray(result.scores, dtype=np.float32)))
        assemble_s += time.perf_counter() - t
        bar.update(1)
    bar.close()
    seconds["segment"] = time.perf_counter() - began - assemble_s
    seconds["assemble"] = assemble_s
    return prompt_table(rows)


def run_case(
    volume: Volume,
    localizer: BoxLocalizer | None,
    segmenter: BoxSegmenter,
    cfg: Config,
    *,
    reference: Volume | None = None,
    boxes_from_labels: bool = False,
    rng: np.random.Generator | None = None,
    progress: bool = False,
) -> Prediction:
    """Localize, prompt, segment and assemble one query (a CT in HU).

    Args:
        volume: the query image.
        localizer: gives ``predict(volume) -> {class id: OrganBoxes}`` (unused with
            ``boxes_from_labels``).
        segmenter: the box-prompted backend (fitted).
        cfg: classes, SPL overlap rule, seed and the gt-slice switch.
        reference: the query's label map, ONLY for ``boxes_from_labels`` or
            ``cfg.run.use_gt_slice_threshold``; never read otherwise.
        boxes_from_labels: the manual-prompt upper bound (see :mod:`medlsam.pipeline.run`).
        rng: the baseline's generator (default: :func:`case_rng`).
        progress: show a progress bar over the segmented slices.
    """
    needs_labels = boxes_from_labels or cfg.run.use_gt_slice_threshold
    reference = _check_reference(volume, reference, needs_labels)
    seconds: dict[str, float] = {}
    organs, requests = case_prompts(
        volume, localizer, cfg, reference, boxes_from_labels, rng, seconds
    )
    classes = [int(c) for c in cfg.data.fg_class]
    axis = volume.slice_axis()
    assembler = LabelAssembler(volume.shape, axis, classes, cfg.vit.overlap)
    before = segmenter.stats.copy()
    table = segment_requests(volume, segmenter, requests, assembler, seconds, progress)
    return Prediction(
        case=volume.name,
        label=assembler.label,
        slice_axis=axis,
        organs=organs,
        prompts=table,
        seconds=seconds,
        work=(segmenter.stats - before).as_dict(),
        baseline=boxes_from_labels,
    )
