"""``medlsam-infer``: localize and segment every query of a config (the published MedLSAM run).

Usage::

    medlsam-infer --config test_word_spl_medsam.txt [--output DIR] [--device cpu|cuda|auto]
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
merged ``run.json`` (:mod:`medlsam.pipeline.shard`). SIGTERM (a scheduler's time limit) is
handled like Ctrl-C. Exit codes (:mod:`medlsam.cli`): 0 all done; 1 some cases failed;
2 config or command line; 3 input; 4 checkpoint; 5 output; 70 internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path

from medlsam.cli import EXIT_OK, EXIT_SOME_FAILED, add_common_arguments, run_main


def _shard(text: str):
    from medlsam.errors import ConfigError
    from medlsam.pipeline.shard import parse_shard

    try:
        return parse_shard(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected K/N with 1 <= K <= N, e.g. 2/8"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-infer",
        description="Localize organs with MedLAM and a few annotated support scans, segment them "
        "slice by slice with SAM, MedSAM or the weight-free classic backend, and write one label "
        "map per query.",
    )
    parser.add_argument("--config", type=Path, required=True, help="a MedLSAM config (.txt/YAML)")
    parser.add_argument("--output", type=Path, help="output folder (default: [data] seg_save_path)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where networks run (default: [run] device; under torchrun cuda:LOCAL_RANK)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="redo cases already finished in the output folder"
    )
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
        "--shard",
        type=_shard,
        metavar="K/N",
        help="run only queries K, K+N, K+2N, ... of the list (1 <= K <= N), e.g. "
        "--shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}; not with torchrun",
    )
    parser.add_argument(
        "--no-png",
        action="store_true",
        help="write no figure (overlays, overviews); report.html is still written",
    )
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    from medlsam.config import load_config
    from medlsam.pipeline.distributed import dist_env, run_sharded

    config = load_config(args.config)
    if args.organ_masks or args.dicom_seg:
        run_options = dataclasses.replace(
            config.run,
            organ_masks=config.run.organ_masks or args.organ_masks,
            dicom_seg=config.run.dicom_seg or args.dicom_seg,
        )
        config = dataclasses.replace(config, run=run_options)
    report = run_sharded(
        config,
        device=args.device or config.run.device,
        shard=args.shard,
        output=args.output,
        overwrite=args.overwrite,
        boxes_from_labels=args.boxes_from_labels,
        progress=not args.quiet,
        raise_errors=args.debug,
        figures=not args.no_png,
    )
    env = dist_env()
    if env is not None and env.rank != 0:  # rank 0 prints the whole run's summary
        return EXIT_SOME_FAILED if report.failed else EXIT_OK
    total = len(report.cases)
    kind = " (manual-box upper bound)" if args.boxes_from_labels else ""
    part = f" [shard {report.shard}]" if report.shard.count > 1 else ""
    scope = f" of {total} queries" + (
        f" (shard {report.shard} of {len(report.order)})" if report.shard.count > 1 else ""
    )
    print(
        f"medlsam-infer{kind}{part}: {len(report.ok)} done, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed{scope}; results in {report.output}",
        file=sys.stderr,
    )
    if report.failed:
        print(f"{len(report.failed)} of {total} queries failed:", file=sys.stderr)
        for case, message in report.failed:
            print(f"  {case}: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"by signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``medlsam-infer``; returns the exit code (SIGTERM acts as Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        return run_main(_body, build_parser(), argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_main(_body, build_parser(), argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
