"""MedLSAM end to end: localize organs in each query, segment them slice by slice, write results.

:func:`run_case` does one query with components passed in (a localizer, a segmenter); :func:`run`
builds the components once from a config and loops over the query list, writing the outputs of
:mod:`medlsam.pipeline.outputs` and ``run.json`` (:mod:`medlsam.pipeline.record`).

Query labels are never read, with two explicit exceptions, both recorded in ``run.json``
(``uses_query_labels``):

* ``[run] use_gt_slice_threshold = True`` reproduces the published ``gt_slice_threshold``
  (method.md 5.4): slices whose labelled voxels (all ``fg_class`` together) number at most
  ``[data] gt_slice_threshold`` (0 when unset) are left unsegmented. It suppresses false
  positives with the ground truth, so it is for matching the paper's numbers only;
* ``boxes_from_labels=True`` (``medlsam-infer --boxes-from-labels``) is the published
  manual-prompt baseline (method.md 6): per-slice boxes from the query's labels, each side
  enlarged by a random 0-19 pixels (seeded per case). Its outputs go by default to
  ``<seg_save_path>_manual_boxes``; ``run.json``, the npz, the boxes JSON and every PNG are
  marked as an upper bound, never to be mistaken for the method.

A failing case (any error while reading, localizing, segmenting or writing it) is recorded with
its one-line reason, its partial outputs are removed, and the next case goes on; a full disk or
an interrupt stops the run cleanly (:mod:`medlsam.pipeline.loop`). ``shard`` runs a
deterministic part of the query list with its own record (:mod:`medlsam.pipeline.shard`).

Nothing here seeds a global generator: segmentation is deterministic, the localizer seeds its
own generator per query, and the baseline's jitter comes from :func:`case_rng` (seed and case
name), so results do not depend on the order or the sharding of the query list.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.config import Config, check_case_names
from medlsam.dicom_seg import check_available as check_dicom_seg
from medlsam.errors import ConfigError, InputError
from medlsam.io import Volume, label_on_image_grid, read_image, read_label
from medlsam.pipeline.loop import run_cases
from medlsam.pipeline.outputs import outputs_complete, write_case
from medlsam.pipeline.record import RunRecord, run_header
from medlsam.pipeline.report import write_infer_report
from medlsam.pipeline.setup import (
    build_localizer,
    check_writable,
    output_folders,
    prepare_localizer,
    resolve_device,
    supports_loader,
)
from medlsam.pipeline.shard import Shard, merge_if_complete, sibling_entries
from medlsam.segment import BoxSegmenter, build_segmenter
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

logger = logging.getLogger(__name__)


class LocalizerLike(Protocol):
    def predict(self, volume: Volume) -> dict[int, OrganBoxes]: ...


@dataclass
class RunReport:
    """What :func:`run` did: the output folder, its record and each case's fate.

    ``cases`` are this run's queries (its shard's), ``order`` the whole query list;
    ``record`` is the record written (``run.json`` or the shard's).
    """

    output: Path
    run_json: Path
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    shard: Shard = field(default_factory=Shard)
    cases: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return not self.failed


def case_rng(seed: int, case: str) -> np.random.Generator:
    """A case's own generator: the same boxes whatever the order or sharding of the queries."""
    return np.random.default_rng([int(seed), zlib.crc32(case.encode("utf-8"))])


def _truth_boxes(reference: np.ndarray, classes: Sequence[int]) -> dict[int, OrganBoxes]:
    organs = {}
    for c in classes:
        box = Box3D.from_mask(reference == c)
        organs[int(c)] = OrganBoxes(
            int(c), (box,) if box is not None else (), np.zeros((0, 6, 3)), box is not None
        )
    return organs


def run_case(
    volume: Volume,
    localizer: LocalizerLike | None,
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
        boxes_from_labels: the manual-prompt upper bound (see the module docstring).
        rng: the baseline's generator (default: :func:`case_rng`).
        progress: show a progress bar over the segmented slices.
    """
    classes = [int(c) for c in cfg.data.fg_class]
    axis = volume.slice_axis()
    seconds: dict[str, float] = {}
    needs_labels = boxes_from_labels or cfg.run.use_gt_slice_threshold
    if needs_labels and reference is None:
        raise InputError(f"{volume.path}: this mode needs the query's label map")
    if reference is not None:  # the same grid, or its axes flipped/permuted: reoriented
        reference = label_on_image_grid(reference, volume)
    began = time.perf_counter()
    if boxes_from_labels:
        assert reference is not None
        organs = _truth_boxes(reference.data, classes)
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

    assembler = LabelAssembler(volume.shape, axis, classes, cfg.vit.overlap)
    before = segmenter.stats.copy()
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
    work = (segmenter.stats - before).as_dict()
    return Prediction(
        case=volume.name,
        label=assembler.label,
        slice_axis=axis,
        organs=organs,
        prompts=prompt_table(rows),
        seconds=seconds,
        work=work,
        baseline=boxes_from_labels,
    )


# --------------------------------------------------------------------------------------------
# the whole run


@dataclass
class _Run:
    """What every case of a run shares."""

    cfg: Config
    segmenter: BoxSegmenter
    localizer: LocalizerLike | None
    seg_dir: Path
    png_dir: Path | None
    boxes_from_labels: bool
    progress: bool
    extra: dict[str, Any]


def _do_case(job: _Run, n: int, bar: Any) -> dict[str, Any]:
    """Read, localize, segment and write query ``n``; returns its ``run.json`` entry."""
    cfg, data = job.cfg, job.cfg.data
    case = data.query_cases[n]
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    bar.set_postfix_str(f"{case}: read")
    volume = dataclasses.replace(read_image(data.query_images[n]), case=case)
    reference = None
    if job.boxes_from_labels or cfg.run.use_gt_slice_threshold:
        reference = read_label(data.query_labels[n])  # type: ignore[index]
    seconds["read"] = time.perf_counter() - began
    bar.set_postfix_str(f"{case}: localize, segment")
    pred = run_case(
        volume,
        job.localizer,
        job.segmenter,
        cfg,
        reference=reference,
        boxes_from_labels=job.boxes_from_labels,
        rng=case_rng(cfg.run.seed, case),
        progress=job.progress,
    )
    seconds.update(pred.seconds)
    bar.set_postfix_str(f"{case}: write")
    t = time.perf_counter()
    classes = [int(c) for c in data.fg_class]
    outputs = write_case(
        pred,
        volume,
        job.seg_dir,
        job.png_dir,
        classes,
        data.class_names,
        job.extra,
        organ_masks=cfg.run.organ_masks,
        dicom_seg=cfg.run.dicom_seg,
        seconds=seconds,
    )
    seconds["write"] = time.perf_counter() - t - seconds.get("figures", 0.0)
    seconds["total"] = time.perf_counter() - began
    return {
        "image": str(data.query_images[n]),
        "status": "ok",
        "error": None,
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "slices_segmented": pred.slices_segmented,
        "encoder_calls": pred.work["encoder_calls"],
        "decoder_calls": pred.work["decoder_calls"],
        "work": pred.work,
        "organs": organ_volumes(pred.label, classes, volume.spacing),
        "outputs": outputs,
    }


def organ_volumes(label: np.ndarray, classes: Sequence[int], spacing: np.ndarray) -> dict:
    """``{"<id>": {"voxels": n, "ml": volume}}`` of each class in a predicted label map."""
    counts = np.bincount(label.ravel(), minlength=max(classes, default=0) + 1)
    ml = float(np.prod(spacing)) / 1000.0
    return {
        str(c): {"voxels": int(counts[c]), "ml": round(int(counts[c]) * ml, 3)} for c in classes
    }


def run(
    cfg: Config,
    device: str = "auto",
    output: str | Path | None = None,
    overwrite: bool = False,
    boxes_from_labels: bool = False,
    progress: bool = True,
    segmenter: BoxSegmenter | None = None,
    localizer: LocalizerLike | None = None,
    raise_errors: bool = False,
    shard: Shard | None = None,
    merge: bool = True,
    figures: bool = True,
) -> RunReport:
    """Run MedLSAM (or the manual-box baseline) on every query of ``cfg`` (or of one shard).

    Components are built once, in an order that makes checkpoint and configuration errors
    appear before any case runs (segmenter, then localizer, then the support scans, only if
    some case is left to do); ``segmenter`` / ``localizer`` may be passed in (tests, or a
    fitted localizer reused). ``raise_errors`` re-raises a case's error instead of recording
    it (``--debug``).

    Nothing is lost: every file is written atomically; a case that fails is recorded with its
    reason and its partial outputs are removed; an error that would fail every later case too
    (full disk, unwritable folder: :class:`OutputError`) and an interrupt
    (``KeyboardInterrupt``) stop the run after removing the current case's partial outputs. A
    re-run skips every case that a record of the folder with the same settings marks ``ok``
    and whose files are complete, and redoes the others.

    ``shard`` runs only its part of the query list with its own record
    (:mod:`medlsam.pipeline.shard`); with ``merge``, the last shard to finish merges the
    records into ``run.json``.

    ``figures=False`` (``--no-png``) writes no figure; otherwise each case's seconds spent on
    figures are recorded as ``seconds["figures"]`` in its ``run.json`` entry. With ``merge``,
    ``report.html`` is (re)written from the folder's records
    (:mod:`medlsam.pipeline.report`).
    """
    data = cfg.data
    shard = shard or Shard()
    cases = check_case_names(cfg)
    if (boxes_from_labels or cfg.run.use_gt_slice_threshold) and data.query_labels is None:
        why = "--boxes-from-labels" if boxes_from_labels else "[run] use_gt_slice_threshold"
        hint = ""
        if not boxes_from_labels and cfg.run.published:
            why += " (on by default with [run] reproduce = published)"
            hint = "; or set [run] use_gt_slice_threshold = False"
        raise ConfigError(f"{cfg.path}: {why} needs [data] query_label_ls (the query labels){hint}")
    if cfg.run.dicom_seg:
        check_dicom_seg()  # highdicom missing: one line before any case
    device = resolve_device(device)
    seg_dir, png_dir = output_folders(cfg, Path(output) if output else None, boxes_from_labels)
    check_writable(seg_dir)
    if not figures:
        png_dir = None

    if segmenter is None:  # checkpoint errors surface here, before any case
        segmenter = build_segmenter(
            cfg.vit,
            cfg.weight.vit_load_path,
            device,
            engine=cfg.run.engine,
            published=cfg.run.published,
        )
    if localizer is None and not boxes_from_labels:
        localizer = build_localizer(cfg, device)
    header = run_header(cfg, device, segmenter, localizer, boxes_from_labels)
    mine = shard.select(len(cases))
    if shard.count > 1:
        header["shard"] = {
            "index": shard.index,
            "count": shard.count,
            "cases": [cases[n] for n in mine],
        }
    record = RunRecord.open(seg_dir / shard.record_name, header, overwrite)
    others = sibling_entries(seg_dir, shard.record_name, header["settings"], overwrite)
    report = RunReport(
        seg_dir, record.path, shard=shard, cases=[cases[n] for n in mine], order=cases
    )
    for n in mine:
        case = cases[n]
        if overwrite or not outputs_complete(seg_dir, case, cfg.run.organ_masks):
            continue
        if not record.is_ok(case) and case in others:
            record.cases[case] = others[case]  # done by another shard layout or run
        if record.is_ok(case):
            report.skipped.append(case)
    if report.skipped:
        logger.info("%d case(s) already done in %s, skipped", len(report.skipped), seg_dir)
    record.save()
    done = set(report.skipped)
    todo = [n for n in mine if cases[n] not in done]
    if todo:
        fit_classic = segmenter.name == "classic" and not getattr(segmenter, "models", None)
        supports = supports_loader(cfg, keep=fit_classic)  # the classic backend reads them too
        if not boxes_from_labels and hasattr(localizer, "fit"):
            prepare_localizer(localizer, cfg, supports)
        if fit_classic:
            segmenter.fit(supports(), data.fg_class)
        del supports  # the full-resolution support scans are not needed for the queries
        mode = "boxes_from_labels" if boxes_from_labels else data.bbox_mode.value
        extra = {"segmenter": segmenter.name, "seed": cfg.run.seed, "bbox_mode": mode}
        job = _Run(cfg, segmenter, localizer, seg_dir, png_dir, boxes_from_labels, progress, extra)
        run_cases(
            partial(_do_case, job),
            job.seg_dir,
            job.png_dir,
            todo,
            cases,
            cfg.data.query_images,
            record,
            report,
            raise_errors,
            progress,
        )
    report.record = record.doc
    if merge and shard.count > 1:
        merge_if_complete(seg_dir, shard, header, cases)
    if merge:
        write_infer_report(seg_dir)
    return report
