"""MedLSAM end to end: localize organs in each query, segment them slice by slice, write results.

:func:`~medlsam.pipeline.case.run_case` does one query with components passed in (a
localizer, a segmenter); :func:`run` builds the components once from a config and drives the
shared case loop (:func:`medlsam.pipeline.loop.run_task`) over the query list, writing the
outputs of :mod:`medlsam.pipeline.outputs` and ``run.json`` (:mod:`medlsam.pipeline.record`).

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlsam.config import Config, check_case_names, force_reproduce
from medlsam.dicom_seg import check_available as check_dicom_seg
from medlsam.errors import ConfigError
from medlsam.io import Volume, read_image, read_label
from medlsam.localization.base import BoxLocalizer, SupportLocalizer
from medlsam.pipeline.case import case_rng, run_case, truth_boxes  # noqa: F401 (public names)
from medlsam.pipeline.loop import RunOptions, RunReport, run_options, run_task
from medlsam.pipeline.outputs import outputs_complete, remove_case, write_case
from medlsam.pipeline.record import run_header
from medlsam.pipeline.report import write_infer_report
from medlsam.pipeline.setup import (
    build_localizer,
    check_writable,
    output_folders,
    prepare_or_share,
    resolve_device,
    supports_loader,
)
from medlsam.records import RUN
from medlsam.segment import BoxSegmenter, build_segmenter

__all__ = ["RunOptions", "RunReport", "case_rng", "run", "run_case"]


@dataclass
class InferTask:
    """``medlsam-infer``'s work on one query (a :class:`~medlsam.pipeline.loop.CaseTask`)."""

    cfg: Config
    segmenter: BoxSegmenter
    localizer: BoxLocalizer | None
    folder: Path
    png_dir: Path | None
    header: dict[str, Any]
    options: RunOptions
    stem: str = RUN

    def complete(self, case: str) -> bool:
        return outputs_complete(self.folder, case, self.cfg.run.organ_masks)

    def remove(self, case: str) -> None:
        remove_case(self.folder, self.png_dir, case)

    def prepare(self, needed: bool) -> None:
        """Fit the localizer (or load its prototypes) and a segmenter that needs supports,
        when ``needed`` (some case is left); ``options.share`` is called either way."""
        fit_segmenter = needed and self.segmenter.needs_supports
        # the classic backend reads the supports too: keep them for it, else stream them
        supports = supports_loader(self.cfg, keep=fit_segmenter)
        needs_prototypes = (
            needed
            and not self.options.boxes_from_labels
            and isinstance(self.localizer, SupportLocalizer)
        )
        prepare_or_share(self.options.share, self.localizer, self.cfg, supports, needs_prototypes)
        if fit_segmenter:
            self.segmenter.fit(supports(), self.cfg.data.fg_class)

    @property
    def extra(self) -> dict[str, Any]:
        """What every boxes JSON of the run says about how it was made."""
        mode = "boxes_from_labels" if self.options.boxes_from_labels else None
        return {
            "segmenter": self.segmenter.name,
            "seed": self.cfg.run.seed,
            "bbox_mode": mode or self.cfg.data.bbox_mode.value,
        }

    def do_case(self, n: int, bar: Any) -> dict[str, Any]:
        return _do_case(self, n, bar)


def _read_query(task: InferTask, n: int) -> tuple[Volume, Volume | None]:
    data = task.cfg.data
    volume = dataclasses.replace(read_image(data.query_images[n]), case=data.query_cases[n])
    reference = None
    if task.options.boxes_from_labels or task.cfg.run.use_gt_slice_threshold:
        reference = read_label(data.query_labels[n])  # type: ignore[index]
    return volume, reference


def _do_case(task: InferTask, n: int, bar: Any) -> dict[str, Any]:
    """Read, localize, segment and write query ``n``; returns its ``run.json`` entry."""
    cfg, data = task.cfg, task.cfg.data
    case = data.query_cases[n]
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    bar.set_postfix_str(f"{case}: read")
    volume, reference = _read_query(task, n)
    seconds["read"] = time.perf_counter() - began
    bar.set_postfix_str(f"{case}: localize, segment")
    pred = run_case(
        volume,
        task.localizer,
        task.segmenter,
        cfg,
        reference=reference,
        boxes_from_labels=task.options.boxes_from_labels,
        rng=case_rng(cfg.run.seed, case),
        progress=task.options.progress,
    )
    seconds.update(pred.seconds)
    bar.set_postfix_str(f"{case}: write")
    t = time.perf_counter()
    classes = [int(c) for c in data.fg_class]
    outputs = write_case(
        pred,
        volume,
        task.folder,
        task.png_dir,
        classes,
        data.class_names,
        task.extra,
        organ_masks=cfg.run.organ_masks,
        dicom_seg=cfg.run.dicom_seg,
        seconds=seconds,
    )
    seconds["write"] = time.perf_counter() - t - seconds.get("figures", 0.0)
    seconds["total"] = time.perf_counter() - began
    entry = {
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
    case_report = getattr(task.localizer, "case_report", None)
    if callable(case_report) and not task.options.boxes_from_labels:
        entry["localizer"] = case_report()
    return entry


def organ_volumes(label: np.ndarray, classes: Sequence[int], spacing: np.ndarray) -> dict:
    """``{"<id>": {"voxels": n, "ml": volume}}`` of each class in a predicted label map."""
    counts = np.bincount(label.ravel(), minlength=max(classes, default=0) + 1)
    ml = float(np.prod(spacing)) / 1000.0
    return {
        str(c): {"voxels": int(counts[c]), "ml": round(int(counts[c]) * ml, 3)} for c in classes
    }


def _check_label_modes(cfg: Config, boxes_from_labels: bool) -> None:
    if (boxes_from_labels or cfg.run.use_gt_slice_threshold) and cfg.data.query_labels is None:
        why = "--boxes-from-labels" if boxes_from_labels else "[run] use_gt_slice_threshold"
        hint = ""
        if not boxes_from_labels and cfg.run.published:
            why += " (on by default with [run] reproduce = published)"
            hint = "; or set [run] use_gt_slice_threshold = False"
        raise ConfigError(f"{cfg.path}: {why} needs [data] query_label_ls (the query labels){hint}")


def run(cfg: Config, options: RunOptions | str | None = None, **overrides: Any) -> RunReport:
    """Run MedLSAM (or the manual-box baseline) on every query of ``cfg`` (or of one shard).

    ``options`` (:class:`~medlsam.pipeline.loop.RunOptions`, or just the device; its fields
    may also be given as keywords: ``run(cfg, device="cpu", output=folder)``) says where and
    how.

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
    records into ``run.json``. ``share(localizer, cfg, supports, needed)``, when given, takes
    the place of loading or fitting the prototypes and is called whether or not this process
    has a case left (under ``torchrun`` every rank must take part:
    :mod:`medlsam.pipeline.distributed`).

    ``figures=False`` (``--no-png``) writes no figure; otherwise each case's seconds spent on
    figures are recorded as ``seconds["figures"]`` in its ``run.json`` entry. With ``merge``,
    ``report.html`` is (re)written from the folder's records
    (:mod:`medlsam.pipeline.report`).
    """
    opts = run_options(options, **overrides)
    cfg = force_reproduce(cfg)
    cases = check_case_names(cfg)
    _check_label_modes(cfg, opts.boxes_from_labels)
    if cfg.run.dicom_seg:
        check_dicom_seg()  # highdicom missing: one line before any case
    device = resolve_device(opts.device)
    output = Path(opts.output) if opts.output else None
    seg_dir, png_dir = output_folders(cfg, output, opts.boxes_from_labels)
    check_writable(seg_dir)
    if not opts.figures:
        png_dir = None
    segmenter = opts.segmenter
    if segmenter is None:  # checkpoint errors surface here, before any case
        segmenter = build_segmenter(
            cfg.vit,
            cfg.weight.vit_load_path,
            device,
            engine=cfg.run.engine,
            published=cfg.run.published,
        )
    localizer = opts.localizer
    if localizer is None and not opts.boxes_from_labels:
        localizer = build_localizer(cfg, device)
    header = run_header(cfg, device, segmenter, localizer, opts.boxes_from_labels)
    task = InferTask(cfg, segmenter, localizer, seg_dir, png_dir, header, opts)
    report = run_task(task, cases, cfg.data.query_images, opts)
    if opts.merge:
        write_infer_report(seg_dir)
    return report
