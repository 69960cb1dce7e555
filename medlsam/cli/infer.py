"""``medlsam-infer``: localize and segment every query of a config (the published MedLSAM run).

Usage::

    medlsam-infer --config test_word_spl_medsam.txt [--output DIR] [--device cpu|cuda[:N]|auto]
                  [--sam-precision fp32|bf16|fp16] [--medlam-precision fp16|fp32]
                  [--overwrite] [--boxes-from-labels] [--organ-masks] [--dicom-seg]
                  [--shard K/N] [--debug] [--quiet]
    torchrun --nproc_per_node 4 -m medlsam.cli.infer --config X.txt      # one GPU per rank

Writes, per query ``<case>``, under ``--output`` (default ``[data] seg_save_path``):
``<case>.nii.gz`` (label map on the query's grid), ``<case>.npz`` (label map, per-slice boxes
and SAM predicted IoUs), ``<case>.boxes.json`` (3D boxes), figures under ``png/<case>/`` (or
``[data] seg_png_save_path/<case>/`` without ``--output``; ``--no-png`` skips them), one
``run.json`` for the run and ``report.html``, a page to look at the whole run.
Query labels are never read, except by ``--boxes-from-labels`` (the published manual-prompt
upper bound, written by default beside ``seg_save_path`` with the suffix ``_manual_boxes``)
and by ``[run] use_gt_slice_threshold = True``.

A case that fails is reported and the others go on; the exit code is then 1 and a summary
names each failed case and why. A re-run skips cases already finished unless ``--overwrite``.
``--shard K/N`` runs every N-th query from the K-th (round robin) and records them in
``run.shard-K-of-N.json``; the last shard to finish merges the records into ``run.json``.
Under ``torchrun`` each rank takes its shard on ``cuda:LOCAL_RANK`` and rank 0 writes the
merged ``run.json`` (:mod:`medlsam.pipeline.distributed`). SIGTERM (a scheduler's time limit) is
handled like Ctrl-C. Exit codes (:mod:`medlsam.cli`): 0 all done; 1 some cases failed;
2 config or command line; 3 input; 4 checkpoint; 5 output; 70 internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from medlsam.cli import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_common_arguments,
    add_run_arguments,
    report_cases,
    run_main_sigterm,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-infer",
        description="Localize organs with MedLAM and a few annotated support scans, segment them "
        "slice by slice with SAM, MedSAM or the weight-free classic backend, and write one label "
        "map per query.",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--boxes-from-labels",
        action="store_true",
        help="manual-prompt UPPER BOUND (not MedLSAM): per-slice boxes from query_label_ls, each "
        "side enlarged by a random 0-19 px, as the paper's 'manual box' columns",
    )
    parser.add_argument(
        "--organ-masks",
        action="store_true",
        help="also write <case>/<organ>.nii.gz, one binary map per organ named as "
        "TotalSegmentator names its files ([run] organ_masks)",
    )
    parser.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write <case>.seg.dcm (DICOM-SEG) for queries read from a DICOM folder "
        '([run] dicom_seg; needs pip install "medlsam[dicom]")',
    )
    parser.add_argument(
        "--no-png",
        action="store_true",
        help="write no figure (overlays, overviews); report.html is still written",
    )
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    from medlsam.api import infer
    from medlsam.config import load_config, with_precision
    from medlsam.pipeline.distributed import dist_env

    config = with_precision(load_config(args.config), args.sam_precision, args.medlam_precision)
    if args.organ_masks or args.dicom_seg:
        run_options = dataclasses.replace(
            config.run,
            organ_masks=config.run.organ_masks or args.organ_masks,
            dicom_seg=config.run.dicom_seg or args.dicom_seg,
        )
        config = dataclasses.replace(config, run=run_options)
    report = infer(
        config,
        output=args.output,
        device=args.device,
        overwrite=args.overwrite,
        shard=args.shard,
        boxes_from_labels=args.boxes_from_labels,
        progress=not args.quiet,
        raise_errors=args.debug,
        figures=not args.no_png,
    )
    env = dist_env()
    if env is not None and env.rank != 0:  # rank 0 prints the whole run's summary
        return EXIT_SOME_FAILED if report.failed else EXIT_OK
    kind = " (manual-box upper bound)" if args.boxes_from_labels else ""
    return report_cases("medlsam-infer", report, kind)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medlsam-infer``; returns the exit code (SIGTERM acts as Ctrl-C)."""
    return run_main_sigterm(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
