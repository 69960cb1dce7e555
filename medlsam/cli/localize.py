"""``medlsam-localize``: MedLAM localization only (the published ``MedLAM_Inference.py`` run).

Usage::

    medlsam-localize --config test_word_medlam.txt [--output DIR] [--device cpu|cuda[:N]|auto]
                     [--medlam-precision fp16|fp32] [--overwrite] [--shard K/N] [--debug]
                     [--quiet]
    torchrun --nproc_per_node 4 -m medlsam.cli.localize --config X.txt   # one GPU per rank

Builds MedLAM from ``[weight] medlam_load_path`` (SAM weights are never needed); takes
prototypes from ``[data] prototypes`` when that file exists, else computes them from the
support scans (and saves them there when the key is set); then writes
``<output>/<case>.boxes.json`` for every query (default output: ``[data] seg_save_path``) and
a ``localize.json`` record. Box voxel indices are ``(i, j, k)`` of the query file as nibabel
reads it, both ends inclusive; ``*_mm`` values are world RAS+ millimetres.

It runs through the same case loop as ``medlsam-infer`` (:mod:`medlsam.pipeline.loop`): a
query that fails is reported and the others go on (exit code 1); a re-run skips the queries
already done unless ``--overwrite``; ``--shard`` and ``torchrun`` split the query list; Ctrl-C
or SIGTERM removes the query in progress (exit code 130) and the same command resumes.

With ``query_label_ls``, the boxes are scored (see :mod:`~medlsam.evaluation.box_metrics`):
``iou.txt`` and ``wd.txt`` in the published layout (one ``MedLAM box IoU for class <k>: mean
+- std`` line per class; the published files called these MedLAM boxes "MedSAM IOU"), plus
``box_metrics.csv`` and ``box_metrics.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medlsam.cli import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_common_arguments,
    add_run_arguments,
    report_cases,
    run_main_sigterm,
)

logger = logging.getLogger("medlsam.localize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-localize",
        description="Localize organs in CT queries with MedLAM and a few annotated support "
        "scans; write one <case>.boxes.json per query (and box IoU/WD where labels are given).",
    )
    add_run_arguments(parser, sam=False)
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    from medlsam.api import localize
    from medlsam.config import load_config, with_precision
    from medlsam.evaluation.box_metrics import report_text
    from medlsam.pipeline.distributed import dist_env

    config = with_precision(load_config(args.config, segmenter=False), medlam=args.medlam_precision)
    report = localize(
        config,
        output=args.output,
        device=args.device,
        overwrite=args.overwrite,
        shard=args.shard,
        progress=not args.quiet,
        raise_errors=args.debug,
    )
    env = dist_env()
    if env is not None and env.rank != 0:  # rank 0 prints the whole run's summary
        return EXIT_SOME_FAILED if report.failed else EXIT_OK
    if getattr(report, "summary", None):
        names = dict(report.class_names)
        iou_text, wd_text = report_text(report.summary, names)
        print(
            iou_text + "".join(line + "\n" for line in wd_text.splitlines() if line[0] != "#"),
            end="",
        )
    return report_cases("medlsam-localize", report)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medlsam-localize``; returns the exit code (SIGTERM acts as Ctrl-C)."""
    return run_main_sigterm(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
