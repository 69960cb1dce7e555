"""Time and peak memory of MedLAM and SAM preprocessing on a large synthetic CT.

    python scripts/measure_preprocess.py [--shape 512 512 300] [--spacing 0.8 0.8 1.0] [--organs 16]

Prints seconds per step and the process's peak resident memory (MiB).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from medlsam import io
from medlsam import preprocess as pp


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.0])
    parser.add_argument("--organs", type=int, default=16)
    args = parser.parse_args()
    shape = tuple(args.shape)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        image = np.full(shape, -1000, np.int16)
        label = np.zeros(shape, np.uint8)
        ii, jj = np.ogrid[: shape[0], : shape[1]]
        body = ((ii - shape[0] / 2) / (0.45 * shape[0])) ** 2 + (
            (jj - shape[1] / 2) / (0.4 * shape[1])
        ) ** 2 < 1
        image[body] = 40
        for organ in range(1, args.organs + 1):
            c = rng.uniform(0.3, 0.7, 3) * shape
            r = rng.uniform(0.03, 0.1, 3) * shape
            sl = tuple(slice(int(a - b), int(a + b)) for a, b in zip(c, r))
            label[sl] = organ
            image[sl] = 40 + 10 * organ
        affine = np.diag([*args.spacing, 1.0])
        io.write_nifti(image, affine, Path(tmp) / "ct.nii.gz")
        io.write_nifti(label, affine, Path(tmp) / "lab.nii.gz")
        del image, label, body
        base = _peak_mb()
        steps = {}
        t = time.perf_counter()
        volume = io.read_image(Path(tmp) / "ct.nii.gz")
        labels = io.read_label(Path(tmp) / "lab.nii.gz")
        steps["read image + label"] = time.perf_counter() - t
        t = time.perf_counter()
        grid = pp.medlam_image(volume)
        steps["MedLAM image (3 mm, spline)"] = time.perf_counter() - t
        t = time.perf_counter()
        pp.medlam_label(labels, range(1, args.organs + 1), grid)
        steps[f"MedLAM label ({args.organs} classes)"] = time.perf_counter() - t
        t = time.perf_counter()
        window = pp.sam_window(volume.data)
        steps["SAM window (volume)"] = time.perf_counter() - t
        t = time.perf_counter()
        pp.sam_slice(pp.slice_2d(window, 2, shape[2] // 2))
        steps["SAM slice (one, to 1024)"] = time.perf_counter() - t
    print(f"volume {'x'.join(map(str, shape))} at {args.spacing} mm, {args.organs} organs")
    for name, seconds in steps.items():
        print(f"  {name:32s} {seconds:7.2f} s")
    print(f"  peak RSS {_peak_mb():.0f} MiB (after building the test files: {base:.0f} MiB)")


if __name__ == "__main__":
    main()
