"""Box IoU and Dice per organ on every real CT with labels: MedLAM (demo weights) vs registration.

Data: ``../shared/ct_testdata/totalsegmentator`` (relative to the repository root, or
``--ct-dir``). There is one subject with labels (the TotalSegmentator example CT, 3 mm,
TotalSegmentator's own labels); it is the one support, and the queries are that scan, its
30-slice crop (``example_ct_sm``, whose affine was NOT shifted: its scanner coordinates are
246 mm off) and copies of it changed the way another scanner or another subject would:

* ``slab40``: a 42 mm slab of the upper abdomen (14 slices: liver, spleen, stomach, kidneys);
* ``contrast``: HU raised inside organs as in a portal-venous phase (liver +60, spleen +80,
  kidneys +150, aorta +200, IVC +120, pancreas +40);
* ``flipped``: stored with the first two voxel axes reversed (LPS on disk, same world);
* ``resampled``: 0.98 x 0.98 x 2 mm (linear; labels nearest neighbour);
* ``shifted``: scanner coordinates moved by (+250, -300, +400) mm;
* ``derived``: all of these at once, the closest we have to another subject's
  contrast-enhanced partial-field-of-view scan.

Both localizers then run through the whole pipeline (``medlsam.pipeline.run``: WPL boxes,
``classic`` segmentation fitted on the support) and ``medlsam.evaluate`` scores the outputs.
MedLAM uses the demo checkpoint as ``medlsam-demo`` does (MSS on feature0, 3 relative-distance
steps). Prints one table (per organ: box IoU and Dice, mean over the queries, for each method),
then a per-query table of the mean over organs and the headline number: mean box IoU of liver,
spleen and stomach on ``derived`` (target >= 0.7).

Usage (from the repository root)::

    python scripts/measure_real_ct.py [--ct-dir DIR] [--out DIR] [--methods medlam,registration]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
CT_DIR = ROOT.parent / "shared" / "ct_testdata"
ORGANS = {
    5: "liver",
    1: "spleen",
    6: "stomach",
    2: "kidney_R",
    3: "kidney_L",
    4: "gallbladder",
    7: "pancreas",
    52: "aorta",
}
HEADLINE = (5, 1, 6)
#: HU added inside organs to mimic a portal-venous contrast phase.
CONTRAST_HU = {5: 60, 1: 80, 2: 150, 3: 150, 52: 200, 63: 120, 7: 40}
SLAB = (92, 105)  # slices of the example CT kept by the 42 mm slab (3 mm slices)


# --------------------------------------------------------------------------------------------
# derived queries (image and label changed together)


def crop_slab(image, label, k0: int, k1: int):
    """Slices ``k0..k1`` (inclusive) along axis 2, with the affine moved to match."""
    from medlsam.io import Volume

    affine = image.affine.copy()
    affine[:3, 3] = image.to_world(np.array([0.0, 0.0, k0]))
    cut = (slice(None), slice(None), slice(k0, k1 + 1))
    return Volume(image.data[cut].copy(), affine), Volume(label.data[cut].copy(), affine)


def add_contrast(image, label, shifts: dict[int, float] = CONTRAST_HU):
    from medlsam.io import Volume

    data = image.data.astype(np.float32).copy()
    for c, hu in shifts.items():
        data[label.data == c] += hu
    return Volume(data, image.affine), label


def flip_storage(image, label):
    """Reverse the first two voxel axes (RAS -> LPS on disk); the world stays the same."""
    from medlsam.io import Volume

    flip = np.eye(4)
    for axis in (0, 1):
        flip[axis, axis] = -1.0
        flip[axis, 3] = image.shape[axis] - 1
    affine = image.affine @ flip
    return (
        Volume(np.ascontiguousarray(image.data[::-1, ::-1]), affine),
        Volume(np.ascontiguousarray(label.data[::-1, ::-1]), affine),
    )


def resample(image, label, spacing=(0.98, 0.98, 2.0)):
    """Linear image / nearest-neighbour label on a grid of ``spacing`` mm (same corner voxel)."""
    from medlsam.io import Volume

    old = image.spacing
    new = np.asarray(spacing, dtype=np.float64)
    shape = np.floor((np.array(image.shape) - 1) * old / new).astype(int) + 1
    coords = np.meshgrid(
        *[np.arange(n) * new[a] / old[a] for a, n in enumerate(shape)], indexing="ij"
    )
    data = ndimage.map_coordinates(image.data.astype(np.float32), coords, order=1, mode="nearest")
    lab = ndimage.map_coordinates(label.data, coords, order=0, mode="nearest")
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] @ np.diag(new / old)
    return Volume(data.astype(np.float32), affine), Volume(lab.astype(np.int16), affine)


def shift_world(image, label, mm=(250.0, -300.0, 400.0)):
    from medlsam.io import Volume

    affine = image.affine.copy()
    affine[:3, 3] += np.asarray(mm)
    return Volume(image.data, affine), Volume(label.data, affine)


def derived(image, label):
    """Slab, contrast, flipped, resampled and shifted together."""
    pair = crop_slab(image, label, *SLAB)
    pair = add_contrast(*pair)
    pair = flip_storage(*pair)
    pair = resample(*pair)
    return shift_world(*pair)


def write_queries(ct_dir: Path, out: Path) -> list[tuple[str, Path, Path, str]]:
    """Write every query and its label under ``out``; ``(name, image, label, what)`` each."""
    from medlsam.io import read_image, read_label, write_nifti

    ts = ct_dir / "totalsegmentator"
    image = read_image(ts / "example_ct.nii.gz")
    label = read_label(ts / "example_seg_fast_force_split.nii.gz")
    made = {
        "slab40": (crop_slab(image, label, *SLAB), "42 mm slab of the upper abdomen"),
        "contrast": (add_contrast(image, label), "HU raised inside organs"),
        "flipped": (flip_storage(image, label), "voxel axes i, j reversed on disk"),
        "resampled": (resample(image, label), "0.98 x 0.98 x 2 mm"),
        "shifted": (shift_world(image, label), "scanner coordinates +250, -300, +400 mm"),
        "derived": (derived(image, label), "all of the above at once"),
    }
    queries = [
        (
            "example_ct",
            ts / "example_ct.nii.gz",
            ts / "example_seg_fast_force_split.nii.gz",
            "the support itself",
        ),
        (
            "example_ct_sm",
            ts / "example_ct_sm.nii.gz",
            ts / "example_seg.nii.gz",
            "its slices 82-111, affine 246 mm off",
        ),
    ]
    folder = out / "queries"
    folder.mkdir(parents=True, exist_ok=True)
    for name, ((img, lab), what) in made.items():
        ip, lp = folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz"
        write_nifti(img.data.astype(np.int16), img.affine, ip)
        write_nifti(lab.data.astype(np.uint8), lab.affine, lp)
        queries.append((name, ip, lp, what))
    return queries


# --------------------------------------------------------------------------------------------
# running and scoring


def run_method(
    method: str, support: tuple[Path, Path], queries, out: Path, refine: str = "both"
) -> tuple[dict, tuple[float, float]]:
    """Run the pipeline with one localizer; per case and organ ``(box IoU, Dice)``, and the
    ``(wall, CPU)`` seconds of the run (CPU: this process, all its threads, and the
    registration pairs that ran in worker processes)."""
    from medlsam.cli.demo import DEMO_RDR_STEPS, DEMO_SCALES, demo_checkpoint
    from medlsam.config import load_config, write_config_txt
    from medlsam.evaluation.folder import evaluate
    from medlsam.io import write_path_list
    from medlsam.pipeline.run import run

    folder = out / method
    folder.mkdir(parents=True, exist_ok=True)
    write_path_list(folder / "support_image.txt", [support[0]])
    write_path_list(folder / "support_label.txt", [support[1]])
    write_path_list(folder / "query_image.txt", [q[1] for q in queries])
    data = {
        "support_image_ls": str(folder / "support_image.txt"),
        "support_label_ls": str(folder / "support_label.txt"),
        "query_image_ls": str(folder / "query_image.txt"),
        "fg_class": list(ORGANS),
        "fg_class_name": list(ORGANS.values()),
        "bbox_mode": "WPL",
        "slice_interval": False,
        "feature_scale_ls": list(DEMO_SCALES),
        "rdr_steps": DEMO_RDR_STEPS,
        "seg_save_path": str(folder / "seg"),
    }
    sections = {"data": data, "vit": {"backend": "classic"}, "run": {"device": "cpu"}}
    sections["localize"] = {"method": method}
    if method == "registration":
        sections["localize"]["refine"] = refine
    if method == "medlam":
        sections["weight"] = {"medlam_load_path": str(demo_checkpoint())}
    write_config_txt(folder / "config.txt", sections)
    began, cpu = time.perf_counter(), time.process_time()
    report = run(load_config(folder / "config.txt"), device="cpu", overwrite=True, progress=False)
    cpu = time.process_time() - cpu
    for case in json.loads(report.run_json.read_text())["cases"].values():
        pairs = case.get("localizer", {})
        if pairs.get("workers", 1) > 1:
            cpu += sum(p["cpu_seconds"] for p in pairs["pairs"])
    seconds = (time.perf_counter() - began, cpu)
    labels = {q[1].name.split(".")[0]: q[2] for q in queries}
    result = evaluate(report.output, labels, classes=list(ORGANS), class_names=ORGANS)
    scores: dict[str, dict[int, tuple[float, float]]] = {}
    for s in result.scores:
        if s.gt_voxels > 0:
            scores.setdefault(s.case, {})[s.class_id] = (float(s.iou), float(s.dsc))
    return scores, seconds


def _mean(values) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def tables(results: dict[str, dict], queries) -> str:
    methods = list(results)
    head = ["organ"] + [f"{k} {m}" for m in methods for k in ("box IoU", "Dice")] + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for c, name in ORGANS.items():
        row, n = [name], 0
        for m in methods:
            pairs = [case[c] for case in results[m].values() if c in case]
            n = max(n, len(pairs))
            row += [f"{_mean([p[0] for p in pairs]):.3f}", f"{_mean([p[1] for p in pairs]):.3f}"]
        lines.append("| " + " | ".join(row + [str(n)]) + " |")
    row = ["**mean over organs**"]
    for m in methods:
        for k in (0, 1):
            per = [_mean([case[c][k] for case in results[m].values() if c in case]) for c in ORGANS]
            row.append(f"**{_mean(per):.3f}**")
    lines.append("| " + " | ".join(row + [""]) + " |")
    lines += ["", "| query | what | " + " | ".join(f"box IoU / Dice {m}" for m in methods) + " |"]
    lines.append("|---|---|" + "---:|" * len(methods))
    for name, _, _, what in queries:
        cells = []
        for m in methods:
            values = list(results[m].get(name, {}).values())
            iou, dice = _mean([v[0] for v in values]), _mean([v[1] for v in values])
            cells.append(f"{iou:.3f} / {dice:.3f}")
        lines.append(f"| {name} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medlsam.config import REGISTRATION_REFINES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-dir", type=Path, default=CT_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "result" / "measure_real_ct")
    parser.add_argument("--methods", default="medlam,registration")
    parser.add_argument(
        "--refine", choices=REGISTRATION_REFINES, default="both", help="registration only"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take a method's scores from OUT/METHOD.json when an earlier run wrote them",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if not (args.ct_dir / "totalsegmentator" / "example_ct.nii.gz").is_file():
        print(f"{args.ct_dir}: no real CT test data there (--ct-dir)", file=sys.stderr)
        return 2
    ts = args.ct_dir / "totalsegmentator"
    support = (ts / "example_ct.nii.gz", ts / "example_seg_fast_force_split.nii.gz")
    queries = write_queries(args.ct_dir, args.out)
    results, seconds = {}, {}
    for method in args.methods.split(","):
        saved = args.out / f"{method}.json"
        if args.reuse and saved.is_file():
            kept = json.loads(saved.read_text())
            seconds[method] = tuple(kept["seconds"])
            results[method] = {
                case: {int(c): tuple(v) for c, v in organs.items()}
                for case, organs in kept["scores"].items()
            }
            continue
        results[method], seconds[method] = run_method(
            method, support, queries, args.out, args.refine
        )
        saved.write_text(json.dumps({"seconds": seconds[method], "scores": results[method]}) + "\n")
    text = tables(results, queries)
    lines = [text, ""]
    for method in results:
        case = results[method].get("derived", {})
        headline = _mean([case.get(c, (np.nan,))[0] for c in HEADLINE])
        lines.append(
            f"{method}: derived query, mean box IoU of liver, spleen, stomach {headline:.3f}; "
            f"{seconds[method][0]:.0f} s wall, {seconds[method][1]:.0f} s CPU for "
            f"{len(queries)} queries (localize + segment)"
        )
    report = "\n".join(lines)
    print(report)
    (args.out / "real_ct.md").write_text(report + "\n")
    (args.out / "real_ct.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
