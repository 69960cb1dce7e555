"""Seconds to draw one case's figures, as ``medlsam-infer`` and ``medlsam-eval`` write them.

A synthetic 10-organ phantom (:func:`medlsam.synth.make_phantom`, default grid 128x128x~100)
stands in for a query: its label map is the prediction (slightly eroded, so the reference
outline of the evaluation figure differs from it), its organ boxes the localization, and one
box prompt per organ and slice with a random confidence the segmenter's output. Reports wall
and CPU seconds per case (median over ``--repeat``) of the inference figures (overview + one
figure per organ) and of the evaluation overview, and their sizes.

    python scripts/benchmark_figures.py [--repeat 3] [--shape 128 128 100] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from medlsam.boxes import Box3D, OrganBoxes
from medlsam.evaluation.figures import case_overview
from medlsam.io import Volume, write_mask, write_nifti
from medlsam.pipeline.overlays import write_figures
from medlsam.segment.assemble import Prediction
from medlsam.synth import ORGAN_NAMES, make_phantom


def synthetic_case(shape, seed: int = 0) -> tuple[Volume, Prediction, np.ndarray]:
    """A phantom, a prediction made from its labels, and its reference label map."""
    rng = np.random.default_rng(seed)
    ph = make_phantom(rng, shape=shape, role="query")
    volume = Volume(ph.image.astype(np.float32), ph.affine)
    classes = sorted(ORGAN_NAMES)
    label = np.zeros_like(ph.label)
    organs, rows = {}, []
    for c in classes:
        mask = ph.label == c
        label[ndimage.binary_erosion(mask)] = c
        box = Box3D.from_mask(mask)
        if box is None:
            continue
        organs[c] = OrganBoxes(c, (box,), np.zeros((1, 6, 3)))
        for k in range(box.lo[2], box.hi[2] + 1):
            x0, x1 = (v * 1024 / shape[0] for v in (box.lo[0], box.hi[0] + 1))
            y0, y1 = (v * 1024 / shape[1] for v in (box.lo[1], box.hi[1] + 1))
            rows.append((k, c, [x0, y0, x1, y1], rng.uniform(0.6, 1.0)))
    prompts = {
        "slice": np.array([r[0] for r in rows]),
        "class_id": np.array([r[1] for r in rows]),
        "part": np.zeros(len(rows), np.int64),
        "box": np.array([r[2] for r in rows], np.float32),
        "score": np.array([r[3] for r in rows], np.float32),
    }
    pred = Prediction("synth", label, 2, organs, prompts, {}, {})
    return volume, pred, ph.label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 100))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    volume, pred, reference = synthetic_case(tuple(args.shape))
    classes = sorted(ORGAN_NAMES)
    names = {c: ORGAN_NAMES[c] for c in classes}
    timings: dict[str, list[tuple[float, float]]] = {"infer": [], "eval": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image_file = write_nifti(volume.data.astype(np.int16), volume.affine, folder / "ct.nii.gz")
        pred_file = write_mask(pred.label, volume, folder / "pred.nii.gz")
        ref_file = write_mask(reference, volume, folder / "ref.nii.gz")
        files = {"image": image_file, "prediction": pred_file, "label": ref_file, "boxes": None}
        sizes = {}
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            pngs = write_figures(volume, pred, folder / "png", classes, names, "sam_vit_b")
            timings["infer"].append((time.perf_counter() - wall, time.process_time() - cpu))
            wall, cpu = time.perf_counter(), time.process_time()
            path = case_overview("synth", files, classes, names, folder / "eval.png")
            timings["eval"].append((time.perf_counter() - wall, time.process_time() - cpu))
        sizes = {p.name: p.stat().st_size for p in [*pngs, path]}
    result = {
        "shape": list(volume.shape),
        "organs": len(pred.organs),
        "infer_figures": len(pngs),
        "seconds": {
            k: {
                "wall_median": statistics.median(w for w, _ in v),
                "cpu_median": statistics.median(c for _, c in v),
                "runs": v,
            }
            for k, v in timings.items()
        },
        "bytes": sizes,
    }
    for kind, t in result["seconds"].items():
        print(
            f"{kind:5s}: {t['wall_median']:.2f} s wall, {t['cpu_median']:.2f} s CPU per case "
            f"(median of {args.repeat})"
        )
    print(f"{len(pngs)} inference figures, {sum(sizes.values()) / 1e6:.2f} MB with the eval one")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
