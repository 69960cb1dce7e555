"""``medlsam-localize``: MedLAM localization only (the published ``MedLAM_Inference.py`` run).

Usage::

    medlsam-localize --config test_word_medlam.txt [--output DIR] [--device cpu|cuda|auto]

Builds MedLAM from ``[weight] medlam_load_path``; takes prototypes from ``[data] prototypes``
when that file exists, else computes them from the support scans (and saves them there when
the key is set); then writes ``<output>/<case>.boxes.json`` for every query (default output:
``[data] seg_save_path``). Box voxel indices are ``(i, j, k)`` of the query file as nibabel
reads it, both ends inclusive; ``*_mm`` values are world RAS+ millimetres.

With ``query_label_ls``, the boxes are scored (see :mod:`~medlsam.evaluation.box_metrics`):
``iou.txt`` and ``wd.txt`` in the published layout (one ``MedLAM box IoU for class <k>: mean
+- std`` line per class; the published files called these MedLAM boxes "MedSAM IOU"), plus
``box_metrics.csv`` and ``box_metrics.json``. A query that fails is reported and the others
go on; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medlsam.cli import EXIT_OK, EXIT_SOME_FAILED, add_common_arguments, run_main
from medlsam.errors import MedlsamError

logger = logging.getLogger("medlsam.localize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-localize",
        description="Localize organs in CT queries with MedLAM and a few annotated support "
        "scans; write one <case>.boxes.json per query (and box IoU/WD where labels are given).",
    )
    parser.add_argument("--config", type=Path, required=True, help="a MedLSAM config (.txt/YAML)")
    parser.add_argument("--output", type=Path, help="output folder (default: seg_save_path)")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="where MedLAM runs (default: [run] device)",
    )
    add_common_arguments(parser)
    return parser


def _body(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from medlsam.boxes import boxes_json
    from medlsam.config import check_case_names, load_config
    from medlsam.evaluation.box_metrics import score_organ, summarize, write_reports
    from medlsam.io import atomic_write_text, label_on_image_grid, read_image, read_label
    from medlsam.pipeline.setup import (
        build_localizer,
        prepare_localizer,
        resolve_device,
        supports_loader,
    )

    config = load_config(args.config)
    data = config.data
    cases = check_case_names(config)
    device = resolve_device(args.device or config.run.device)
    output = args.output or data.seg_save_path
    localizer = build_localizer(config, device)
    prepare_localizer(localizer, config, supports_loader(config))

    labels = data.query_labels
    scores, failures = [], []
    progress = tqdm(
        list(enumerate(data.query_images)), desc="localize", unit="case", disable=args.quiet
    )
    for n, path in progress:
        case = cases[n]
        try:
            volume = read_image(path)
            organs = localizer.predict(volume)
            doc = boxes_json(
                case,
                str(path),
                volume.affine,
                [organs[c] for c in data.fg_class],
                extra={"bbox_mode": data.bbox_mode.value, "seed": config.run.seed},
            )
            atomic_write_text(Path(output) / f"{case}.boxes.json", json.dumps(doc, indent=2))
            if labels is not None:
                label = label_on_image_grid(read_label(labels[n]), volume)
                for c in data.fg_class:
                    scores.append(
                        score_organ(
                            case, organs[c], label.data == c, volume.spacing, volume.slice_axis()
                        )
                    )
        except MedlsamError as err:
            if args.debug:
                raise
            failures.append((case, str(err)))
            logger.error("%s: %s", case, err)
    progress.close()

    if labels is not None and scores:
        summary = summarize(scores, data.fg_class)
        write_reports(Path(output), scores, summary, dict(data.class_names))
        from medlsam.evaluation.box_metrics import report_text

        iou_text, wd_text = report_text(summary, dict(data.class_names))
        print(
            iou_text + "".join(line + "\n" for line in wd_text.splitlines() if line[0] != "#"),
            end="",
        )
    stats = localizer.stats
    logger.info(
        "%d forward passes, %d patches, %.1f s in the network",
        stats["forward_passes"],
        stats["patches"],
        stats["forward_seconds"],
    )
    if failures:
        print(f"{len(failures)} of {len(cases)} queries failed:", file=sys.stderr)
        for case, message in failures:
            print(f"  {case}: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
