"""``medlsam-localize``'s run: MedLAM boxes for every query, through the shared case loop.

Per query ``<case>``, under the output folder (default ``[data] seg_save_path``):
``<case>.boxes.json`` (:func:`medlsam.boxes.write_boxes_json`), and one ``localize.json``
record for the run (``localize.shard-K-of-N.json`` per shard), in the layout of ``run.json``
(:mod:`medlsam.pipeline.record`) with ``"command": "localize"`` and no segmenter. The case loop
is :func:`medlsam.pipeline.loop.run_task`: a failing query is recorded and the others go on,
an interrupted run resumes, ``--shard`` and ``torchrun`` split the queries.

No SAM weights are needed (no segmenter is built). With ``[data] query_label_ls`` each case's
boxes are scored (:mod:`medlsam.evaluation.box_metrics`); the scores are kept in the record, so
a resumed run reports every case, and the run writes ``iou.txt``, ``wd.txt``,
``box_metrics.csv`` and ``box_metrics.json`` (a sharded run: once its record is merged).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medlsam.boxes import write_boxes_json
from medlsam.config import Config, check_case_names, force_reproduce
from medlsam.evaluation.box_metrics import BoxScore, score_organ, summarize, write_reports
from medlsam.io import label_on_image_grid, read_image, read_label
from medlsam.localization.base import BoxLocalizer, FewShotLocalizer, SupportLocalizer
from medlsam.pipeline.loop import RunOptions, RunReport, run_options, run_task
from medlsam.pipeline.record import localize_header
from medlsam.pipeline.setup import (
    build_localizer,
    check_writable,
    prepare_or_share,
    resolve_device,
    supports_loader,
)
from medlsam.records import LOCALIZE

logger = logging.getLogger(__name__)


@dataclass
class LocalizeReport(RunReport):
    """A :class:`~medlsam.pipeline.loop.RunReport` plus the box scores (with query labels).

    ``scores`` are every scored case's organs (this run's and those a resumed run skipped);
    ``summary`` is :func:`medlsam.evaluation.box_metrics.summarize` of them.
    """

    scores: list[BoxScore] = field(default_factory=list)
    summary: dict[int, dict] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


def _score_from(entry: dict[str, Any]) -> BoxScore:
    nan = {k: math.nan if entry[k] is None else entry[k] for k in ("iou", "wd_mm")}
    return BoxScore(**{**entry, **nan})


@dataclass
class LocalizeTask:
    """``medlsam-localize``'s work on one query (a :class:`~medlsam.pipeline.loop.CaseTask`)."""

    cfg: Config
    localizer: BoxLocalizer
    folder: Path
    header: dict[str, Any]
    stem: str = LOCALIZE
    share: Any = None

    def boxes_file(self, case: str) -> Path:
        return self.folder / f"{case}.boxes.json"

    def complete(self, case: str) -> bool:
        path = self.boxes_file(case)
        return path.is_file() and path.stat().st_size > 0

    def remove(self, case: str) -> None:
        self.boxes_file(case).unlink(missing_ok=True)

    def prepare(self, needed: bool) -> None:
        """Load the prototypes, or fit them on the support scans (streamed one at a time),
        when ``needed`` (some case is left); ``share`` is called either way."""
        needs_prototypes = needed and isinstance(self.localizer, SupportLocalizer)
        supports = supports_loader(self.cfg, keep=False)
        prepare_or_share(self.share, self.localizer, self.cfg, supports, needs_prototypes)

    def do_case(self, n: int, bar: Any) -> dict[str, Any]:
        data = self.cfg.data
        path = data.query_images[n]
        case = data.query_cases[n]
        began = time.perf_counter()
        bar.set_postfix_str(f"{case}: localize")
        volume = dataclasses.replace(read_image(path), case=case)
        organs = self.localizer.predict(volume)
        scores = self._score(n, volume, organs) if data.query_labels is not None else None
        extra = {"bbox_mode": data.bbox_mode.value, "seed": self.cfg.run.seed}
        boxes = [organs[c] for c in data.fg_class]
        write_boxes_json(self.boxes_file(case), case, str(path), volume.affine, boxes, extra)
        entry: dict[str, Any] = {
            "image": str(path),
            "status": "ok",
            "error": None,
            "seconds": {"total": round(time.perf_counter() - began, 4)},
            "outputs": {"boxes": self.boxes_file(case).name},
        }
        if scores is not None:
            entry["box_scores"] = [_nan_to_none(asdict(s)) for s in scores]
        return entry

    def _score(self, n: int, volume: Any, organs: dict) -> list[BoxScore]:
        data = self.cfg.data
        label_path = data.query_labels[n]  # type: ignore[index]
        label = label_on_image_grid(read_label(label_path), volume)
        axis = volume.slice_axis()
        return [
            score_organ(volume.name, organs[c], label.data == c, volume.spacing, axis)
            for c in data.fg_class
        ]


def box_scores(report: RunReport, cfg: Config) -> LocalizeReport:
    """The report with the box scores of the record's ``ok`` cases, in query order."""
    out = LocalizeReport(**{f: getattr(report, f) for f in RunReport.__dataclass_fields__})
    out.class_names = dict(cfg.data.class_names)
    cases = report.record.get("cases", {})
    for case in report.order:
        entry = cases.get(case, {})
        if entry.get("status") == "ok" and "box_scores" in entry:
            out.scores.extend(_score_from(s) for s in entry["box_scores"])
    if out.scores:
        out.summary = summarize(out.scores, cfg.data.fg_class)
    return out


def localize(
    cfg: Config, options: RunOptions | str | None = None, **overrides: Any
) -> LocalizeReport:
    """Localize every query of ``cfg`` (or of ``options.shard``); write one boxes JSON each.

    ``options`` (:class:`~medlsam.pipeline.loop.RunOptions`, or its fields as keywords):
    ``device``, ``output``, ``overwrite``, ``progress``, ``raise_errors``, ``shard``,
    ``merge``, ``share`` (the prototypes under ``torchrun``) and a ``localizer`` built
    already. A re-run skips cases that the folder's
    ``localize`` records mark ``ok`` and whose boxes file exists. Needs MedLAM weights only
    (``[weight] medlam_load_path``), never SAM's.

    Returns:
        a :class:`LocalizeReport`; with query labels, ``iou.txt``, ``wd.txt`` and
        ``box_metrics.csv``/``.json`` are written too (a shard: by the one that merges).
    """
    opts = run_options(options, **overrides)
    cfg = force_reproduce(cfg)
    cases = check_case_names(cfg)
    device = resolve_device(opts.device)
    folder = Path(opts.output) if opts.output else cfg.data.seg_save_path
    check_writable(folder)
    localizer = opts.localizer if opts.localizer is not None else build_localizer(cfg, device)
    header = localize_header(cfg, device, localizer)
    task = LocalizeTask(cfg, localizer, folder, header, share=opts.share)
    report = box_scores(run_task(task, cases, cfg.data.query_images, opts), cfg)
    if report.scores and report.shard.count == 1:
        write_reports(folder, report.scores, report.summary, report.class_names)
    if isinstance(localizer, FewShotLocalizer):
        stats = localizer.stats
        logger.info(
            "%d forward passes, %d patches, %.1f s in the network",
            stats["forward_passes"],
            stats["patches"],
            stats["forward_seconds"],
        )
    return report
