"""Score predicted label maps against reference label maps: per case and organ, then per organ.

Inputs:

* predictions: one label map per case, ``<pred_dir>/<case>.nii.gz`` (also ``.nii``, ``.nrrd``,
  ``.mha`` ...), whose voxel values are class ids, on the grid of the case's image;
* references: label maps named by a list file or by a config's ``query_label_ls``; their
  extra classes are ignored;
* optionally ``<case>.boxes.json`` (schema in :mod:`medlsam.boxes`) for 3D box IoU.

Predictions and references are matched by case name (:func:`medlsam.io.case_names`). A
reference without a prediction file is scored as an empty prediction (DSC 0, status
``missing_prediction``, its own column of the table), unless ``skip_missing`` leaves it out
(with a warning: the averages are then biased upward). A prediction without a reference is
reported (log warning, summary, table footer) and not scored.

Metrics are computed on the reference's own voxel grid with its spacing (definitions in
:mod:`~.metrics`). A prediction on the same grid in another axis order or orientation
(a signed permutation of the axes) is reoriented onto it exactly; any other grid is an error.

Averaging policy ("honest", the default), per organ and case:

=====================  ==========================  ======================================
reference / prediction status                      averages
=====================  ==========================  ======================================
present / present      ``ok``                      DSC, NSD, HD95
present / empty        ``empty_prediction``        DSC 0, NSD 0; HD95 missing (counted)
present / no file      ``missing_prediction``      as ``empty_prediction`` (counted apart)
absent / present       ``false_positive``          DSC 0, NSD 0; HD95 missing (counted)
absent / absent        ``absent``                  excluded (counted)
=====================  ==========================  ======================================

Box IoU: the predicted box of an organ is the box enclosing all its boxes in the JSON (one
for WPL; the SPL sub-boxes together); an organ in the reference with no predicted box (not
in the JSON, or outside the image) scores IoU 0; an organ absent from the reference has no
IoU. IoU counts voxels with both ends inclusive (:func:`medlsam.boxes.box_iou`), unlike the
published evaluation, which omits the ``+1`` (method.md 4.1).

``published_averages=True`` reproduces the published behaviour (method.md 5.5 and 10.1
items 9-10): an organ/case whose HD95 cannot be computed (either mask empty) is dropped from
every average, which biases DSC upward. It exists only to compare with the paper.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import multiprocessing
import platform
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medlsam.errors import InputError
from medlsam.evaluation import figures as eval_figures
from medlsam.evaluation import metrics
from medlsam.evaluation import report as eval_report
from medlsam.evaluation import report_html as eval_html
from medlsam.evaluation.case import (
    ABSENT,
    EMPTY_PREDICTION,
    FALSE_POSITIVE,
    MISSING_PREDICTION,
    OK,
    CaseJob,
    OrganScore,
    PredictionError,
    inference_records,
    labels_by_case,
    score_case,
    union_predictions,
)

logger = logging.getLogger(__name__)

METRICS = ("dsc", "nsd", "hd95", "iou")


@dataclass
class EvalResult:
    """Per-organ-and-case scores plus the summary (see :func:`summarize`)."""

    scores: list[OrganScore]
    summary: dict
    class_names: dict[int, str] = field(default_factory=dict)
    #: per scored case, its files: ``image`` (or None), ``prediction``, ``label``, ``boxes``
    #: and ``inference_figures`` (the PNGs medlsam-infer wrote for it)
    cases: dict[str, dict] = field(default_factory=dict)
    #: ``{kind: path}`` of the files :func:`medlsam.evaluate` wrote (empty: none)
    written: dict[str, Path] = field(default_factory=dict)

    def write(self, out_dir: str | Path, figures: bool = True) -> dict[str, Path]:
        """Write ``summary.json``, ``per_case.csv``, ``dsc.txt``, ``hd95.txt``, the figures
        (box plots, case overviews; none with ``figures=False``) and ``report.html``.

        The seconds spent on each case's overview go to ``summary["figure_seconds"]``.
        """
        out = Path(out_dir)
        classes = [int(c) for c in self.summary["classes"]]
        plots: dict[str, Path] = {}
        done: dict[str, dict] = {}
        if figures:
            colors = eval_html.run_colors(self.summary)
            plots = eval_figures.write_boxplots(out, self.scores, self.summary, colors)
            names = {int(c): e["name"] for c, e in self.summary["classes"].items()}
            done = eval_figures.write_case_figures(out, self.cases, classes, names, colors)
            self.summary["figure_seconds"] = {
                c: d["seconds"] for c, d in done.items() if "seconds" in d
            }
            self.summary["figure_errors"] = {c: d["error"] for c, d in done.items() if "error" in d}
        written = eval_report.write_outputs(out, self.scores, self.summary, self.class_names)
        written.update(plots)
        written["report"] = eval_html.write_eval_report(
            out, self, list(plots.values()), self.cases, done, _versions()
        )
        return written

    def table(self) -> str:
        """The per-organ Markdown table, then the cases that could not be scored and why."""
        text = eval_report.markdown_table(self.summary)
        failed = self.summary.get("failed_cases") or {}
        if failed:
            text += f"\nFailed (not scored): {len(failed)} case(s):\n" + "".join(
                f"- {case}: {reason}\n" for case, reason in failed.items()
            )
        lost = self.summary.get("inference_failed") or {}
        if lost:
            text += f"\nFailed at inference (no prediction): {len(lost)} case(s):\n" + "".join(
                f"- {case}: {reason}\n" for case, reason in lost.items()
            )
        return text


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("medlsam", "numpy", "scipy", "nibabel", "SimpleITK", "monai", "matplotlib"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# --------------------------------------------------------------------------------------------
# averages


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(
    scores: Sequence[OrganScore],
    classes: Sequence[int],
    class_names: Mapping[int, str],
    hd95_definition: str = "monai",
    published_averages: bool = False,
) -> dict:
    """Per-organ mean and population std of each metric, the mean over organs and the counts.

    Returns a JSON-ready dict: ``{"classes": {"<id>": {"name", "n", "dsc": {"mean", "std",
    "n"}, "nsd", "hd95", "iou", "absent", "empty_prediction", "missing_prediction",
    "false_positive", "hd95_missing", "dropped"}}, "mean": {metric: mean over organs},
    "mean_std": {metric: mean of the organs' std, as the paper's "Average" rows},
    "excluded": {totals}}``.
    ``None`` stands for "no value".
    """
    by_class: dict[int, list[OrganScore]] = {c: [] for c in classes}
    for s in scores:
        if s.class_id in by_class:
            by_class[s.class_id].append(s)
    out: dict[str, dict] = {}
    totals = {
        "absent": 0,
        "empty_prediction": 0,
        "missing_prediction": 0,
        "false_positive": 0,
        "hd95_missing": 0,
        "dropped": 0,
    }
    for cls in classes:
        rows = by_class[cls]
        kinds = (ABSENT, EMPTY_PREDICTION, MISSING_PREDICTION, FALSE_POSITIVE)
        counts = {k: sum(r.status == k for r in rows) for k in kinds}
        scored = [r for r in rows if r.status != ABSENT]
        dropped = sum(r.status != OK for r in scored) if published_averages else 0
        if published_averages:
            scored = [r for r in scored if r.status == OK]
        hd = [r.hd95_monai if hd95_definition == "monai" else r.hd95_pooled for r in scored]
        entry = {
            "name": class_names.get(cls, f"class_{cls}"),
            "n": len(scored),
            "dsc": _stats([r.dsc for r in scored]),
            "nsd": _stats([r.nsd for r in scored]),
            "hd95": _stats([v for v in hd if not math.isnan(v)]),
            "iou": _stats([r.iou for r in scored if not math.isnan(r.iou)]),
            "absent": counts[ABSENT],
            "empty_prediction": counts[EMPTY_PREDICTION],
            "missing_prediction": counts[MISSING_PREDICTION],
            "false_positive": counts[FALSE_POSITIVE],
            "hd95_missing": sum(math.isnan(v) for v in hd),
            "dropped": dropped,
        }
        for key in totals:
            totals[key] += entry[key]
        out[str(cls)] = entry
    mean = {}
    mean_std = {}
    n_organs = {}
    for metric in METRICS:
        vals = [e[metric] for e in out.values() if e[metric]["n"]]
        mean[metric] = float(np.mean([v["mean"] for v in vals])) if vals else None
        mean_std[metric] = float(np.mean([v["std"] for v in vals])) if vals else None
        n_organs[metric] = len(vals)
    return {
        "classes": out,
        "mean": mean,
        "mean_std": mean_std,
        "n_organs": n_organs,
        "excluded": totals,
    }


# --------------------------------------------------------------------------------------------
# the whole folder


@dataclass(frozen=True)
class EvalOptions:
    """How :func:`evaluate` scores.

    Attributes:
        classes: class ids to score; None scores every id found in any reference.
        class_names: ``{id: name}`` for the tables (default ``class_<id>``).
        tolerance_mm: NSD tolerance in mm.
        hd95_definition: ``"monai"`` or ``"pooled"`` (the published one), for the averages;
            both are always in the per-case scores.
        published_averages: drop organ/cases without HD95 from every average (paper only).
        boxes_dir: where ``<case>.boxes.json`` are looked for (default: beside each
            prediction).
        skip_missing: leave a reference without prediction file out of the scores (with a
            warning); by default it is scored as an empty prediction (DSC 0).
        workers: processes reading and scoring cases in parallel.
        images: ``{case: CT image}`` for the case overviews (default: the image each case's
            ``run.json`` entry names, where there is one).
    """

    classes: Sequence[int] | None = None
    class_names: Mapping[int, str] | None = None
    tolerance_mm: float = 2.0
    hd95_definition: str = "monai"
    published_averages: bool = False
    boxes_dir: str | Path | None = None
    skip_missing: bool = False
    workers: int = 1
    images: Mapping[str, Path] | None = None

    def check(self) -> None:
        if self.hd95_definition not in metrics.HD95_DEFINITIONS:
            raise InputError(
                f"HD95 definition {self.hd95_definition!r}: expected one of "
                f"{metrics.HD95_DEFINITIONS}"
            )
        if not self.tolerance_mm >= 0:
            raise InputError(f"NSD tolerance {self.tolerance_mm} mm: expected a number >= 0")


@dataclass
class _Inputs:
    """What :func:`evaluate` found: folders, predictions by case, and what is unmatched."""

    pred_dirs: list[Path]
    where: str
    by_case: dict[str, Path]
    predictions: dict[str, Path]
    missing_pred: list[str]
    missing_label: list[str]


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")


def collect(
    pred_dir: str | Path | Sequence[str | Path],
    labels: Mapping[str, Path] | Sequence[Path],
    options: EvalOptions,
) -> _Inputs:
    """Match predictions to labels by case name; warn about either without the other."""
    pred_dirs = (
        [Path(pred_dir)] if isinstance(pred_dir, (str, Path)) else [Path(d) for d in pred_dir]
    )
    if not pred_dirs:
        raise InputError("no prediction folder given")
    where = str(pred_dirs[0]) if len(pred_dirs) == 1 else f"{len(pred_dirs)} prediction folders"
    by_case = dict(labels) if isinstance(labels, Mapping) else labels_by_case(list(labels))
    if not by_case:
        raise InputError("no reference label maps given (the label list is empty)")
    predictions = union_predictions(pred_dirs)
    missing_pred = [c for c in by_case if c not in predictions]
    missing_label = sorted(c for c in predictions if c not in by_case)
    if missing_pred:
        logger.warning(
            "%d case(s) have a label but no prediction in %s%s: %s",
            len(missing_pred),
            where,
            " (not scored: --skip-missing; the averages leave them out and are biased upward)"
            if options.skip_missing
            else " (scored as empty predictions, DSC 0; --skip-missing leaves them out)",
            _listed(missing_pred),
        )
    if missing_label:
        logger.warning(
            "%d prediction(s) in %s have no label (not scored): %s",
            len(missing_label),
            where,
            _listed(missing_label),
        )
    if len(missing_pred) == len(by_case):
        raise InputError(
            f"{where}: no prediction matches a label case ({len(predictions)} prediction(s), "
            f"e.g. {sorted(predictions)[:3]}; labels e.g. {list(by_case)[:3]}); expected "
            "<case>.nii.gz named like the label (or query image) files"
        )
    return _Inputs(pred_dirs, where, by_case, predictions, missing_pred, missing_label)


def case_jobs(found: _Inputs, options: EvalOptions) -> list[CaseJob]:
    """One scoring job per labelled case (with a prediction only, ``skip_missing``)."""
    wanted = None if options.classes is None else tuple(int(c) for c in options.classes)
    jobs = []
    for case, label in found.by_case.items():
        if case not in found.predictions and options.skip_missing:
            continue
        pred = found.predictions.get(case)
        folder = (
            Path(options.boxes_dir)
            if options.boxes_dir is not None
            else (pred or found.pred_dirs[0]).parent
        )
        box_file = folder / f"{case}.boxes.json"
        boxes = box_file if box_file.is_file() else None
        jobs.append(CaseJob(case, Path(label), pred, boxes, wanted, float(options.tolerance_mm)))
    return jobs


def score_jobs(
    jobs: list[CaseJob], workers: int
) -> tuple[list[CaseJob], list[OrganScore], dict[str, str]]:
    """``(jobs scored, their scores, {case: reason} of those that failed)``.

    A failing case fails alone; only when every case fails is it an :class:`InputError`.
    """
    start = time.perf_counter()
    outcomes = _run_jobs(jobs, workers)
    failed = {job.case: error for job, (_, error) in zip(jobs, outcomes) if error is not None}
    if failed and len(failed) == len(jobs):
        first = next(iter(failed.values()))
        more = f" (and the {len(failed) - 1} other case(s) failed too)" if len(failed) > 1 else ""
        raise InputError(f"{first}{more}")
    for case, error in failed.items():
        logger.error("%s: not scored: %s", case, error)
    done = [job for job in jobs if job.case not in failed]
    scores = [s for result, error in outcomes if error is None for s in result]
    logger.info("scored %d case(s) in %.1f s", len(done), time.perf_counter() - start)
    return done, scores, failed


def _classes_found(
    scores: list[OrganScore], cases: list[str]
) -> tuple[tuple[int, ...], list[OrganScore]]:
    """The classes present in some reference, and the scores with absent organs filled in."""
    wanted = tuple(sorted({s.class_id for s in scores if s.gt_voxels}))
    pred_only = sorted({s.class_id for s in scores} - set(wanted))
    if pred_only:
        logger.warning(
            "class ids %s appear only in predictions, in no label; not scored "
            "(name them with classes to count them as false positives)",
            pred_only,
        )
    return wanted, _fill_absent([s for s in scores if s.class_id in wanted], cases, wanted)


def _settings(found: _Inputs, options: EvalOptions) -> dict:
    dirs = found.pred_dirs
    return {
        "tolerance_mm": float(options.tolerance_mm),
        "hd95_definition": options.hd95_definition,
        "averages": "published" if options.published_averages else "honest",
        "missing_as_empty": not options.skip_missing,
        "predictions": str(dirs[0]) if len(dirs) == 1 else [str(d) for d in dirs],
    }


def _add_counts(
    summary: dict,
    found: _Inputs,
    options: EvalOptions,
    n_cases: int,
    failed: dict[str, str],
    records: dict[str, dict],
) -> None:
    summary["n_cases"] = n_cases
    summary["missing_predictions"] = found.missing_pred
    summary["missing_labels"] = found.missing_label
    summary["failed_cases"] = failed
    summary["inference_failed"] = {
        c: records[c].get("error") or "failed"
        for c in found.missing_pred
        if records.get(c, {}).get("status") == "failed"
    }
    excluded = summary["excluded"]
    excluded["missing_predictions"] = len(found.missing_pred) if options.skip_missing else 0
    excluded["missing_labels"] = len(found.missing_label)
    excluded["failed_cases"] = len(failed)


def evaluate(
    pred_dir: str | Path | Sequence[str | Path],
    labels: Mapping[str, Path] | Sequence[Path],
    classes: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    **overrides: object,
) -> EvalResult:
    """Score every prediction in ``pred_dir`` against its reference label map.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label maps (and ``<case>.boxes.json``), or
            several folders (the shards of one run) whose union is scored; a case found in
            two folders is taken from the first (warning).
        labels: reference label files, or ``{case: label file}`` where the case names come
            from elsewhere (a config's query images).
        classes: class ids to score (as ``options.classes``).
        options: :class:`EvalOptions`; its fields may also be given as keywords.

    A case whose prediction or boxes file is corrupt or on another grid fails alone: it is
    logged, listed in ``summary["failed_cases"]`` (``{case: reason}``) and under the table,
    and left out of the averages. Only when no case at all can be scored is it an error.
    Cases that ``medlsam-infer`` recorded as failed (``run.json`` or shard records in the
    prediction folders) are listed in ``summary["inference_failed"]``.

    Raises:
        InputError: bad settings, no label, no matching prediction, an unreadable reference
            label map, or every case failing.
    """
    if classes is not None:
        overrides["classes"] = classes
    opts = replace(options or EvalOptions(), **overrides)  # type: ignore[arg-type]
    opts.check()
    found = collect(pred_dir, labels, opts)
    if opts.published_averages:
        logger.warning(
            "published averages: organs/cases without HD95 (empty prediction) are dropped "
            "from every average, which biases DSC upward; use only to compare with the paper"
        )
    jobs, scores, failed = score_jobs(case_jobs(found, opts), opts.workers)
    if opts.classes is None:
        wanted, scores = _classes_found(scores, [j.case for j in jobs])
    else:
        wanted = tuple(int(c) for c in opts.classes)
    names = {c: (opts.class_names or {}).get(c, f"class_{c}") for c in wanted}
    summary = summarize(scores, wanted, names, opts.hd95_definition, opts.published_averages)
    summary["settings"] = _settings(found, opts)
    records = inference_records(found.pred_dirs)
    _add_counts(summary, found, opts, len(jobs), failed, records)
    files = {job.case: _case_files(job, records.get(job.case, {}), opts.images) for job in jobs}
    return EvalResult(scores=scores, summary=summary, class_names=names, cases=files)


def _case_files(job: CaseJob, record: Mapping, images: Mapping[str, Path] | None) -> dict:
    """Where a scored case's image, prediction, reference, boxes and inference figures are."""
    image = (images or {}).get(job.case) or record.get("image")
    pngs = (record.get("outputs") or {}).get("png") or []
    folder = job.prediction.parent if job.prediction is not None else None
    return {
        "image": Path(image) if image else None,
        "prediction": job.prediction,
        "label": job.label,
        "boxes": job.boxes,
        "inference_figures": [folder / p for p in pngs] if folder is not None else [],
    }


def _fill_absent(
    scores: list[OrganScore], cases: list[str], classes: Sequence[int]
) -> list[OrganScore]:
    have = {(s.case, s.class_id) for s in scores}
    nan = math.nan
    filled = list(scores)
    for case in cases:
        for cls in classes:
            if (case, cls) not in have:
                filled.append(OrganScore(case, cls, ABSENT, 0, 0, nan, nan, nan, nan, nan))
    order = {c: i for i, c in enumerate(cases)}
    return sorted(filled, key=lambda s: (order[s.case], s.class_id))


def _score_or_fail(job: CaseJob) -> tuple[list[OrganScore], str | None]:
    """``(scores, None)``, or ``([], reason)`` when the case's prediction or boxes fail."""
    try:
        return score_case(job), None
    except PredictionError as err:
        return [], str(err)


def _run_jobs(jobs: list[CaseJob], workers: int) -> list[tuple[list[OrganScore], str | None]]:
    if workers <= 1 or len(jobs) <= 1:
        return [_score_or_fail(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # safe whatever threads the caller runs
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(pool.map(_score_or_fail, jobs))
