"""Measure the localization quality (per-organ 3D box IoU) of a MedLAM checkpoint.

Two cohorts, both unseen in training (the demo checkpoint was trained on phantoms of seed 1000):

* synthetic: ``medlsam.synth`` phantoms, seed 7, 5 supports + 12 queries;
* real CT: 5 + 10 deformed copies (``medlsam.synth --from``, seed 11) of
  ``../shared/ct_testdata/totalsegmentator/example_ct.nii.gz`` with its TotalSegmentator labels
  (spleen, kidneys, gallbladder, liver, stomach, pancreas, bladder, aorta); supports and
  queries are different deformations of the same scan.

Localization as in ``medlsam-demo``: WPL, MSS refinement on feature0 (``--scales``), 3
relative-distance steps (``--rdr-steps``), seed 2023.
IoU as in :mod:`~medlsam.evaluation.box_metrics`
(voxel-counted boxes; an organ predicted outside scores 0).

Usage (from the repository root)::

    python scripts/measure_demo_iou.py [--checkpoint medlsam/data/medlam_demo.pth] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CT = ROOT.parent / "shared" / "ct_testdata" / "totalsegmentator"
REAL_CLASSES = {
    1: "spleen",
    2: "kidney_R",
    3: "kidney_L",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    21: "bladder",
    52: "aorta",
}


def cohort_lists(folder: Path, make) -> tuple[list, list, list[int]]:
    """``(supports, queries, classes)`` of the cohort in ``folder``, made by ``make()`` unless
    its config is already there (the cohorts do not depend on the checkpoint)."""
    from medlsam.config import load_config

    if not (folder / "config.txt").is_file():
        make()
    data = load_config(folder / "config.txt").data
    supports = list(zip(data.support_images, data.support_labels, strict=True))
    queries = list(zip(data.query_images, data.query_labels or (), strict=True))
    return supports, queries, list(data.fg_class)


def localize_cohort(
    lists,
    checkpoint: Path,
    scales: tuple[str, ...],
    rdr_steps: int,
    share_mm: float = 0.0,
    slice_interval: int | None = None,
    method: str = "medlam",
    fusion: str = "median",
    refine: str = "both",
) -> tuple[dict[str, list], dict]:
    """Box scores of every query organ (per registration fusion: ``fusion`` ``both`` scores
    ``median`` and ``vote`` on the same registrations), and the localizer's work counts."""
    from medlsam.evaluation.box_metrics import score_organ
    from medlsam.io import case_name, read_image, read_label

    supports, queries, classes = lists
    mode = "SPL" if slice_interval else "WPL"
    if method == "registration":
        from medlsam.localization.registration import RegistrationLocalizer

        fusions = ("median", "vote") if fusion == "both" else (fusion,)
        loc = RegistrationLocalizer(
            mode, slice_interval, fusion=fusions[0], seed=2023, refine=refine
        )
        loc.stats = {"patches": 0}
    else:
        fusions = ("medlam",)
        from medlsam.localization.localizer import Localizer
        from medlsam.localization.network import build_medlam

        model = build_medlam(checkpoint, "cpu")
        loc = Localizer(
            model,
            "cpu",
            mode=mode,
            slice_interval=slice_interval,
            feature_scales=scales,
            seed=2023,
            rdr_steps=rdr_steps,
            mss_share_mm=share_mm,
        )
    loc.fit([(read_image(i), read_label(lab)) for i, lab in supports], classes)
    fit_patches = loc.stats["patches"]
    began, cpu = time.perf_counter(), time.process_time()
    workers_cpu = 0.0  # registration pairs that ran in worker processes
    scores: dict[str, list] = {f: [] for f in fusions}
    for image_path, label_path in queries:
        image, label = read_image(image_path), read_label(label_path)
        found = _query_boxes(loc, image, fusions)
        if method == "registration" and loc.pair_workers() > 1:
            workers_cpu += sum(m.cpu for m in loc.last_matches)
        for f, boxes in found.items():
            scores[f] += [
                score_organ(
                    case_name(image_path),
                    boxes[c],
                    label.data == c,
                    image.spacing,
                    image.slice_axis(),
                )
                for c in classes
            ]
    work = {
        "query_patches": loc.stats["patches"] - fit_patches,
        "queries": len(queries),
        "seconds_per_query": (time.perf_counter() - began) / max(len(queries), 1),
        "cpu_per_query": (time.process_time() - cpu + workers_cpu) / max(len(queries), 1),
    }
    return scores, work


def _query_boxes(loc, image, fusions: tuple[str, ...]) -> dict[str, dict]:
    """Boxes of one query per fusion (registration: one set of registrations for all)."""
    if fusions == ("medlam",):
        return {"medlam": loc.predict(image)}
    from medlsam.localization.registration import Frame
    from medlsam.preprocess import medlam_image

    grid = medlam_image(image, "linear")
    gathered = loc.support_organs(grid, Frame.of(image, grid), fusions)
    return {f: loc.boxes(image, grid, loc.fuse(gathered, f)) for f in fusions}


def table(title: str, scores: list, names: dict[int, str]) -> tuple[str, float]:
    lines = [
        f"### {title}",
        "",
        "| organ | n | IoU mean ± std | WD mm mean |",
        "|---|---:|---|---|",
    ]
    means = []
    for c, name in names.items():
        mine = [s for s in scores if s.class_id == c and s.status in ("scored", "missed")]
        if not mine:
            continue
        iou = np.array([s.iou for s in mine])
        wd = np.array([s.wd_mm for s in mine if np.isfinite(s.wd_mm)])
        means.append(iou.mean())
        wd_text = f"{wd.mean():.1f}" if wd.size else "–"
        lines.append(f"| {name} | {len(mine)} | {iou.mean():.3f} ± {iou.std():.3f} | {wd_text} |")
    overall = float(np.mean(means)) if means else float("nan")
    lines.append(f"| **mean over organs** | | **{overall:.3f}** | |")
    return "\n".join(lines), overall


def main(argv: list[str] | None = None) -> int:
    from medlsam.config import LOCALIZE_METHODS, REGISTRATION_FUSIONS, REGISTRATION_REFINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "medlsam" / "data" / "medlam_demo.pth"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "result" / "measure_demo_iou")
    parser.add_argument(
        "--scales",
        default=None,
        help="MSS scales, e.g. feature0,feature1, or none (default: the demo's, feature0)",
    )
    parser.add_argument(
        "--rdr-steps", type=int, default=None, help="relative-distance steps (default: the demo's)"
    )
    parser.add_argument(
        "--mss-share-mm", type=float, default=0.0, help="shared MSS search patches (fast mode)"
    )
    parser.add_argument(
        "--slice-interval", type=int, default=None, help="SPL with this interval (default WPL)"
    )
    parser.add_argument(
        "--method",
        choices=LOCALIZE_METHODS,
        default="medlam",
        help="localizer: MedLAM with --checkpoint (default) or weight-free registration",
    )
    parser.add_argument(
        "--fusion",
        choices=(*REGISTRATION_FUSIONS, "both"),
        default="median",
        help="registration only (both: each fusion on the same registrations)",
    )
    parser.add_argument(
        "--refine", choices=REGISTRATION_REFINES, default="both", help="registration only"
    )
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--cohorts-only", action="store_true", help="only write the cohorts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from medlsam.cli.demo import DEMO_RDR_STEPS, DEMO_SCALES
    from medlsam.synth import ORGAN_NAMES, make_cohort, make_cohort_from

    steps = args.rdr_steps or DEMO_RDR_STEPS

    if args.scales is None:
        scales = DEMO_SCALES
    else:
        scales = tuple(s for s in args.scales.split(",") if s and s != "none")
    began = time.perf_counter()
    folder = args.out / "synthetic"
    synth = cohort_lists(folder, lambda: make_cohort(folder, 17, 5, seed=7))
    real_folder = args.out / "real"
    make_real = lambda: make_cohort_from(  # noqa: E731
        CT / "example_ct.nii.gz",
        CT / "example_seg_fast_force_split.nii.gz",
        real_folder,
        15,
        5,
        seed=11,
        classes=REAL_CLASSES,
    )
    if args.cohorts_only:
        if not args.skip_real:
            cohort_lists(real_folder, make_real)
        return 0
    options = (
        scales,
        steps,
        args.mss_share_mm,
        args.slice_interval,
        args.method,
        args.fusion,
        args.refine,
    )
    mode = f"SPL interval {args.slice_interval}" if args.slice_interval else "WPL"
    settings = (
        f"{mode}, MSS scales {list(scales) or 'none'}, rdr_steps {steps}, "
        f"mss_share_mm {args.mss_share_mm:g}"
    )
    if args.method == "registration":
        settings = f"{mode}, registration, refine {args.refine}"
    scores, work = localize_cohort(synth, args.checkpoint, *options)
    report, means = [], []
    for label, mine in scores.items():
        text, mean = table(
            f"Synthetic phantoms (seed 7, 5 supports, 12 queries), {label}",
            mine,
            dict(ORGAN_NAMES),
        )
        means.append(mean)
        report.append(text)
        print(text, flush=True)
    text = (
        f"{settings}; MedLAM query patches per query {work['query_patches'] / 12:.1f}; "
        f"{work['seconds_per_query']:.1f} s ({work['cpu_per_query']:.1f} s CPU) per query"
    )
    report.append(text)
    print(text, flush=True)
    if not args.skip_real:
        if not (CT / "example_ct.nii.gz").is_file():
            print(f"real CT not found under {CT}; skipped", file=sys.stderr)
        else:
            real = cohort_lists(real_folder, make_real)
            scores, work = localize_cohort(real, args.checkpoint, *options)
            for label, mine in scores.items():
                text, _ = table(
                    f"Real CT, deformed copies (seed 11, 5 supports, 10 queries), {label}",
                    mine,
                    REAL_CLASSES,
                )
                report.append(text)
                print("\n" + text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "iou.md").write_text("\n\n".join(report) + "\n")
    print(f"\n{settings}; {time.perf_counter() - began:.0f} s; written {args.out / 'iou.md'}")
    return 0 if min(means) >= (0.7 if args.method == "registration" else 0.5) else 1


if __name__ == "__main__":
    raise SystemExit(main())
