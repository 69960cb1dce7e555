"""``medlsam-demo``: the whole method on a synthetic cohort, no download and no data of yours.

Usage::

    medlsam-demo [--out DIR] [--device cpu|cuda|auto] [--queries N] [--seed S]

Steps: (1) write a synthetic cohort with :mod:`medlsam.synth` (5 annotated support phantoms and
``N`` query phantoms, default 3) and a config for it; (2) localize every organ in every query,
side by side, with MedLAM, using the small demo checkpoint shipped inside the package
(``medlsam/data/medlam_demo.pth``, trained by ``scripts/train_demo_checkpoint.sh``), and with
weight-free registration of the supports (``[localize] method = registration``); (3) segment
slice by slice with the weight-free ``classic`` backend; (4) evaluate against the query labels
(which the method itself never reads) and print one per-organ table with both localizers
side by side (as ``medlsam-eval --compare``) and where the label maps, figures, boxes and
reports are: ``<out>/<localizer>/seg``, ``<out>/<localizer>/png``, ``<out>/eval/<localizer>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medlsam.cli import EXIT_OK, EXIT_SOME_FAILED, add_common_arguments, run_main
from medlsam.config import DEVICES
from medlsam.errors import CheckpointError
from medlsam.weights import demo_checkpoint  # noqa: F401 (re-exported: the demo's own helper)

#: Support scans of the demo (the published configs use 5).
DEMO_SUPPORTS = 5
#: Default seed of the demo cohort (the demo checkpoint was trained on seed 1000).
DEMO_SEED = 2024
#: MSS scales of the demo (the demo checkpoint trains MSS on feature0 only; the same settings
#: are stored beside it in medlam_demo.json, for ``medlam_load_path = demo``).
DEMO_SCALES: tuple[str, ...] = ("feature0",)
#: Relative-distance steps of the demo (the published code takes one; see Localizer).
DEMO_RDR_STEPS = 3
#: Localizers the demo runs side by side (``[localize] method``).
DEMO_LOCALIZERS: tuple[str, ...] = ("medlam", "registration")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-demo",
        description="Run MedLSAM end to end on a synthetic CT cohort (no download, no data "
        "needed): localize with the bundled demo MedLAM, segment with the weight-free classic "
        "backend, evaluate, print the per-organ table.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("medlsam_demo"),
        help="output folder (default ./medlsam_demo)",
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    parser.add_argument(
        "--queries", type=int, default=3, help="number of query phantoms (default 3)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEMO_SEED, help=f"cohort seed (default {DEMO_SEED})"
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("NX", "NY", "NZ"),
        help="phantom grid (default: medlsam.synth's 128 128 100)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="MedLAM checkpoint (default: the demo one)"
    )
    parser.add_argument(
        "--localizers",
        default=",".join(DEMO_LOCALIZERS),
        help="comma-separated localizers to run side by side (default medlam,registration)",
    )
    parser.add_argument("--no-png", action="store_true", help="write no figure")
    add_common_arguments(parser)
    return parser


def write_demo_config(
    cohort_dir: Path,
    out: Path,
    checkpoint: Path,
    classes: dict[int, str],
    device: str,
    seed: int,
    method: str = "medlam",
) -> Path:
    """Write ``<out>/config.txt`` (published format) for the cohort and one ``[localize]
    method``; returns its path."""
    from medlsam.config import write_config_txt

    def rel(p: Path) -> str:
        return str(Path(p).resolve())

    sections = {
        "data": {
            "support_image_ls": rel(cohort_dir / "support_image.txt"),
            "support_label_ls": rel(cohort_dir / "support_label.txt"),
            "query_image_ls": rel(cohort_dir / "query_image.txt"),
            "query_label_ls": rel(cohort_dir / "query_label.txt"),
            "fg_class": list(classes),
            "fg_class_name": list(classes.values()),
            "bbox_mode": "WPL",
            "slice_interval": False,
            "feature_scale_ls": list(DEMO_SCALES) or False,
            "rdr_steps": DEMO_RDR_STEPS,
            "seg_save_path": rel(out / "seg"),
            "seg_png_save_path": rel(out / "png"),
        },
        "vit": {"net_type": "vit_b", "backend": "classic"},
        "weight": {"medlam_load_path": rel(checkpoint)},
        "run": {"seed": seed, "device": device},
        "localize": {"method": method},
    }
    path = out / "config.txt"
    write_config_txt(path, sections)
    return path


def _body(args: argparse.Namespace) -> int:
    from medlsam.evaluation.report import compare
    from medlsam.synth import DEFAULT_SHAPE, make_cohort

    if args.queries < 1:
        raise SystemExit("medlsam-demo: error: --queries must be at least 1")
    began = time.perf_counter()
    out: Path = args.out
    checkpoint = args.checkpoint or demo_checkpoint()
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: MedLAM checkpoint not found")
    shape = tuple(args.shape) if args.shape else DEFAULT_SHAPE
    print(
        f"[1/4] synthetic cohort: {DEMO_SUPPORTS} supports + {args.queries} queries "
        f"(seed {args.seed})"
    )
    cohort = make_cohort(
        out / "cohort", DEMO_SUPPORTS + args.queries, DEMO_SUPPORTS, args.seed, shape=shape
    )
    classes = {int(c): str(n) for c, n in cohort.classes.items()}
    methods = [m.strip() for m in args.localizers.split(",") if m.strip()]
    bad = [m for m in methods if m not in DEMO_LOCALIZERS]
    if bad or not methods:
        raise SystemExit(f"medlsam-demo: error: --localizers: expected some of {DEMO_LOCALIZERS}")
    failed: list[tuple[str, str]] = []
    for n, method in enumerate(methods, start=1):
        what = f"MedLAM {Path(checkpoint).name}" if method == "medlam" else "registration"
        print(f"[2/4] localize ({what}) and [3/4] segment (classic backend): {n}/{len(methods)}")
        failed += _run_localizer(args, out, Path(checkpoint), classes, method)
    print("[4/4] evaluate against the query labels")
    print()
    print(compare([out / "eval" / m for m in methods]))
    print()
    for method in methods:
        print(f"{method}: label maps and boxes {out / method / 'seg'}/<case>.nii.gz, .boxes.json")
        print(f"{method}: PNGs {out / method / 'png'}/<case>/, evaluation {out / 'eval' / method}")
    print(f"done in {time.perf_counter() - began:.0f} s")
    if failed:
        for case, message in failed:
            print(f"  {case}: failed: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _run_localizer(
    args: argparse.Namespace, out: Path, checkpoint: Path, classes: dict[int, str], method: str
) -> list[tuple[str, str]]:
    """Localize, segment and evaluate the cohort with one ``[localize] method``; returns the
    failed cases as ``(method: case, reason)``."""
    from medlsam.config import load_config
    from medlsam.evaluation.folder import evaluate
    from medlsam.pipeline.run import run

    config_path = write_demo_config(
        out / "cohort", out / method, checkpoint, classes, args.device, args.seed, method
    )
    cfg = load_config(config_path)
    report = run(
        cfg,
        device=args.device,
        overwrite=True,
        progress=not args.quiet,
        raise_errors=args.debug,
        figures=not args.no_png,
    )
    result = evaluate(
        report.output,
        _labels(cfg),
        classes=cfg.data.fg_class,
        class_names=dict(cfg.data.class_names),
    )
    result.write(out / "eval" / method, figures=not args.no_png)
    return [(f"{method}: {case}", message) for case, message in report.failed]


def _labels(cfg) -> dict[str, Path]:
    assert cfg.data.query_labels is not None
    return {
        case: Path(lab)
        for case, lab in zip(cfg.data.query_cases, cfg.data.query_labels, strict=True)
    }


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_body, build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
