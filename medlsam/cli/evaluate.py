"""``medlsam-eval``: score predicted label maps per organ (DSC, NSD, HD95, box IoU).

Usage::

    medlsam-eval --config test_word.txt [--output DIR]
    medlsam-eval --pred DIR --labels LIST.txt [--classes 1,2,3] [--output DIR]
    medlsam-eval --compare RUN1 RUN2 ... [--output DIR]

With ``--config``, predictions are read from ``[data] seg_save_path``, references from
``query_label_ls`` (each matched to the case named by its query image), classes from
``fg_class`` and names from ``fg_class_name``. Outputs go to ``--output`` (default: the
prediction folder). The table is printed on stdout; warnings on stderr.

``--pred DIR1 DIR2 ...`` scores the union of several folders (the shards of one run; one
folder holding several shards' outputs needs nothing special). A case whose prediction or
boxes file is corrupt or on another grid is not scored: it is listed under the table, in
``summary.json`` (``failed_cases``) and on stderr, the others are scored, and the exit code
is 1. A reference label map that cannot be read stops the evaluation (exit code 3).

Besides the tables, the output folder gets box plots per metric, one overview figure per case
with the reference outlines (``figures/<case>.png``; needs the case's CT: the config's query
image, or the image named in the prediction folder's ``run.json``) and ``report.html``, one
page to read the whole evaluation. ``--no-png`` skips the figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from medlsam.cli import EXIT_OK, EXIT_SOME_FAILED, add_common_arguments, run_main
from medlsam.config import HD95_DEFINITIONS
from medlsam.errors import ConfigError, InputError

_DESCRIPTION = (
    "Score predicted label maps against reference label maps per organ: Dice, normalized "
    "surface Dice, HD95 and 3D box IoU, with honest averages (an empty prediction counts "
    "DSC 0), or compare several evaluated runs side by side."
)


def _classes(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected class ids like 1,2,3") from None
    if not ids or min(ids) <= 0 or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected distinct positive class ids like 1,2,3"
        )
    return ids


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of mm") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of mm >= 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medlsam-eval", description=_DESCRIPTION)
    src = parser.add_argument_group("what to evaluate")
    src.add_argument("--config", type=Path, help="a MedLSAM config (.txt or YAML)")
    src.add_argument(
        "--pred",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="folder(s) of predictions <case>.nii.gz (overrides seg_save_path); several "
        "folders (e.g. the shards of one run) are scored together",
    )
    src.add_argument(
        "--labels",
        type=Path,
        help="reference label maps: a list file (one path a line) or a folder "
        "(<case>.nii.gz, or one label file per <case>/ sub-folder)",
    )
    src.add_argument(
        "--classes",
        type=_classes,
        help="class ids to score, e.g. 1,2,3 (default: fg_class, or every id found)",
    )
    src.add_argument(
        "--boxes",
        type=Path,
        help="folder of <case>.boxes.json for box IoU (default: the prediction folder)",
    )
    opts = parser.add_argument_group("evaluation options")
    opts.add_argument(
        "--output", type=Path, help="folder for summary.json and the other files (default: --pred)"
    )
    opts.add_argument(
        "--tolerance", type=_nonneg_float, default=2.0, help="NSD tolerance in mm (default 2)"
    )
    opts.add_argument(
        "--hd95",
        choices=HD95_DEFINITIONS,
        default="monai",
        help="HD95 definition for the averages: monai = larger of the two directed "
        "95th percentiles (default); pooled = 95th percentile of both directions "
        "pooled, as published (medpy)",
    )
    opts.add_argument(
        "--published-averages",
        action="store_true",
        help="drop organ/cases without HD95 from every average, as the published "
        "code did (biased upward; only to compare with the paper)",
    )
    opts.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave labels without a prediction file out of the scores (warning: biased "
        "averages); by default they count as empty predictions (DSC 0, column 'no pred file')",
    )
    opts.add_argument("--missing-as-empty", action="store_true", help=argparse.SUPPRESS)
    opts.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes reading and scoring cases in parallel (default 1)",
    )
    opts.add_argument(
        "--no-png",
        action="store_true",
        help="write no figure (box plots, case overviews); report.html is still written",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="print the summaries of several evaluated runs side by side and, with --output, "
        "draw them side by side per organ (compare_<metric>.png), then exit",
    )
    add_common_arguments(parser)
    return parser


def _labels_from_config(args: argparse.Namespace):
    from medlsam.config import check_case_names, load_config

    config = load_config(args.config, check_files=False)
    data = config.data
    if data.query_labels is None:
        raise ConfigError(
            f"{args.config}: [data] query_label_ls is not set; evaluation needs "
            "the query label maps (or use --pred DIR --labels LIST.txt)"
        )
    labels = dict(zip(check_case_names(config), data.query_labels, strict=True))
    images = dict(zip(check_case_names(config), data.query_images, strict=True))
    missing = [str(p) for p in labels.values() if not p.exists()]
    if missing:
        raise InputError(
            f"{args.config}: {len(missing)} query label file(s) not found: "
            + "; ".join(missing[:10])
        )
    pred = args.pred or [data.seg_save_path]
    classes = args.classes or data.fg_class
    return pred, labels, classes, dict(data.class_names), images


def _body(args: argparse.Namespace) -> int:
    from medlsam.api import evaluate
    from medlsam.evaluation import report as eval_report
    from medlsam.evaluation.case import labels_by_case
    from medlsam.io import label_folder, read_path_list

    if args.compare:
        if args.config or args.pred or args.labels:
            raise InputError(
                "--compare takes evaluated folders only; do not combine it with "
                "--config, --pred or --labels"
            )
        print(eval_report.compare(args.compare))
        if args.output is not None and not args.no_png:
            from medlsam.evaluation.figures import write_compare

            folders = [Path(d) for d in args.compare]
            summaries = [eval_report.load_summary(d) for d in folders]
            names = eval_report.run_names(folders)
            written = write_compare(args.output, folders, names, summaries)
            print(f"\nwritten: {', '.join(str(p) for p in written.values())}", file=sys.stderr)
        elif args.output is None:
            print("(give --output DIR to draw the runs side by side per organ)", file=sys.stderr)
        return 0
    if args.config is not None:
        if args.labels is not None:
            raise InputError(
                "give either --config or --labels, not both (the config names the query labels)"
            )
        pred, labels, classes, names, images = _labels_from_config(args)
    elif args.pred is not None and args.labels is not None:
        if args.labels.is_dir():
            labels = label_folder(args.labels)
        else:
            labels = labels_by_case(read_path_list(args.labels), source=args.labels)
        pred, classes, names, images = args.pred, args.classes, {}, None
    else:
        raise InputError(
            "nothing to evaluate: give --config X.txt, or --pred DIR --labels "
            "LIST.txt, or --compare DIR1 DIR2"
        )
    if args.output is None and len(pred) > 1:
        raise InputError(
            f"--pred names {len(pred)} folders: give --output DIR for the summary and tables"
        )
    result = evaluate(
        pred,
        labels,
        output=args.output or pred[0],
        figures=not args.no_png,
        classes=classes,
        class_names=names,
        tolerance_mm=args.tolerance,
        hd95_definition=args.hd95,
        published_averages=args.published_averages,
        boxes_dir=args.boxes,
        skip_missing=args.skip_missing,
        workers=args.workers,
        images=images,
    )
    print(result.table())
    print(f"\nwritten: {', '.join(str(p) for p in result.written.values())}", file=sys.stderr)
    failed = result.summary.get("failed_cases") or {}
    if failed:
        print(
            f"medlsam-eval: {len(failed)} of {len(failed) + result.summary['n_cases']} case(s) "
            "could not be scored:",
            file=sys.stderr,
        )
        for case, reason in failed.items():
            print(f"  {case}: {reason}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medlsam-eval``; returns the exit code."""
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
