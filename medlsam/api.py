"""The Python API: what the ``medlsam-*`` commands do, as functions.

>>> import medlsam
>>> report = medlsam.infer("configs/word_spl_medsam.txt", output="out/", device="cuda")
>>> report.ok, report.failed, report.run_json           # the cases done, and the record
>>> boxes = medlsam.localize("configs/word_medlam.txt")  # boxes only: no SAM weights needed
>>> result = medlsam.evaluate("out/", labels=["labels/case_0.nii.gz", ...])

Each function takes a config file (or a :class:`~medlsam.config.Config` from
:func:`load_config`), raises a :class:`~medlsam.errors.MedlsamError` subclass with a one-line
message for bad input, and returns what it wrote: the run's report with the record written
(``report.record``, also at ``report.run_json``) for :func:`infer` and :func:`localize`, the
scores and summary for :func:`evaluate`. Under ``torchrun`` every rank takes its shard and the
report covers the whole run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlsam.config import Config, load_config

__all__ = ["evaluate", "infer", "load_config", "localize"]

PathLike = str | os.PathLike[str]


def _config(config: Config | PathLike, segmenter: bool = True) -> Config:
    return config if isinstance(config, Config) else load_config(config, segmenter=segmenter)


def infer(
    config: Config | PathLike,
    output: PathLike | None = None,
    device: str | None = "auto",
    *,
    overwrite: bool = False,
    shard: Any = None,
    boxes_from_labels: bool = False,
    progress: bool = False,
    raise_errors: bool = False,
    figures: bool = True,
) -> Any:
    """Localize and segment every query of ``config``; write one label map per query.

    Args:
        config: a config file (``.txt``/YAML) or a loaded :class:`~medlsam.config.Config`.
        output: output folder (default: the config's ``[data] seg_save_path``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; None: the config's ``[run] device``.
        overwrite: redo cases already finished there (default: resume, skipping them).
        shard: a :class:`~medlsam.pipeline.shard.Shard` (or ``"K/N"``): every N-th query from
            the K-th, with its own record.
        boxes_from_labels: the manual-prompt upper bound (reads the query labels).
        progress: show progress bars.
        raise_errors: re-raise a case's error instead of recording it and going on.
        figures: write the PNG figures (False: none; ``report.html`` is still written).

    Returns:
        a :class:`~medlsam.pipeline.loop.RunReport`: ``ok``, ``skipped`` and ``failed``
        (``(case, reason)``) cases, ``output``, and the record written (``record`` as a dict,
        ``run_json`` its path).
    """
    from medlsam.pipeline.distributed import run_sharded
    from medlsam.pipeline.run import run

    cfg = _config(config)
    return run_sharded(
        run,
        cfg,
        device=device or cfg.run.device,
        shard=_shard(shard),
        output=output,
        overwrite=overwrite,
        boxes_from_labels=boxes_from_labels,
        progress=progress,
        raise_errors=raise_errors,
        figures=figures,
    )


def localize(
    config: Config | PathLike,
    output: PathLike | None = None,
    device: str | None = "auto",
    *,
    overwrite: bool = False,
    shard: Any = None,
    progress: bool = False,
    raise_errors: bool = False,
) -> Any:
    """Localize every query of ``config`` with MedLAM; write one ``<case>.boxes.json`` each.

    Needs ``[weight] medlam_load_path`` and the support scans (or ``[data] prototypes``);
    never SAM weights. Arguments as :func:`infer`. With ``[data] query_label_ls`` the boxes
    are scored against the labels (``iou.txt``, ``wd.txt``, ``box_metrics.csv/.json``).

    Returns:
        a :class:`~medlsam.pipeline.localize.LocalizeReport`: the cases as in :func:`infer`,
        the record written (``record``, ``run_json`` = ``localize.json``), and with labels the
        box ``scores`` and their ``summary``.
    """
    from medlsam.pipeline.distributed import run_sharded
    from medlsam.pipeline.localize import localize as run_localize

    cfg = _config(config, segmenter=False)
    return run_sharded(
        run_localize,
        cfg,
        device=device or cfg.run.device,
        shard=_shard(shard),
        output=output,
        overwrite=overwrite,
        progress=progress,
        raise_errors=raise_errors,
    )


def evaluate(
    predictions: PathLike | Sequence[PathLike],
    labels: Mapping[str, Path] | Sequence[PathLike],
    output: PathLike | None = None,
    figures: bool = True,
    **options: Any,
) -> Any:
    """Score predicted label maps (and their boxes) against reference label maps.

    Args:
        predictions: a folder of ``<case>.nii.gz`` (and ``<case>.boxes.json``), or several
            (the shards of one run).
        labels: reference label files (cases named after the files) or ``{case: file}``.
        output: where to write ``summary.json``, ``per_case.csv``, ``dsc.txt``, ``hd95.txt``,
            the figures and ``report.html`` (default: nothing is written).
        figures: draw the box plots and case overviews (with ``output``).
        options: :class:`~medlsam.evaluation.folder.EvalOptions` fields (``classes``,
            ``class_names``, ``tolerance_mm``, ``hd95_definition``, ``workers``, ...).

    Returns:
        an :class:`~medlsam.evaluation.folder.EvalResult` (``scores``, ``summary``), with
        ``written`` = ``{kind: path}`` of the files written.
    """
    from medlsam.evaluation.folder import evaluate as score_folder

    labels_in = labels if isinstance(labels, Mapping) else [Path(p) for p in labels]
    result = score_folder(predictions, labels_in, **options)
    if output is not None:
        result.written = result.write(output, figures=figures)
    return result


def _shard(shard: Any) -> Any:
    if shard is None or not isinstance(shard, str):
        return shard
    from medlsam.pipeline.shard import parse_shard

    return parse_shard(shard)
