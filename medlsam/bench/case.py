"""A WORD-like synthetic abdomen for the benchmark: supports, one query, a config.

Each subject is a body-shaped soft-tissue cylinder with a spine and up to 16 ellipsoid organs
named and placed as in the WORD data set (liver, spleen, kidneys, stomach, ..., femoral
heads), each with its own mean HU; centres, radii and HU vary per subject (seeded), plus
Gaussian noise. It is meant for timing, not for accuracy: the shapes are crude, but the sizes,
spacing, organ count and z-extents are those of a real abdominal CT, which is what sets the
work (slices crossed by boxes, MedLAM points).

Files (under ``folder``): ``images/<name>.nii.gz`` (int16 HU, LPS-like affine, slices along
``k``), ``labels/<name>.nii.gz`` (uint8 ids), the four list files and ``config.txt`` (SPL or
WPL, backend ``sam_vit_b`` with no weights named; the benchmark supplies the networks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medlsam.config import write_config_txt
from medlsam.io import write_nifti, write_path_list

#: (id, name, centre (x left+, y posterior+, z superior+) mm, radii mm, HU); WORD's 16 organs.
ORGANS: tuple[
    tuple[int, str, tuple[float, float, float], tuple[float, float, float], float], ...
] = (
    (1, "liver", (-70, -10, 150), (80, 75, 85), 60),
    (2, "spleen", (85, 35, 140), (35, 45, 55), 50),
    (3, "kidney_l", (65, 45, 70), (28, 30, 55), 35),
    (4, "kidney_r", (-65, 45, 55), (28, 30, 55), 38),
    (5, "stomach", (45, -35, 145), (55, 40, 65), 20),
    (6, "gallbladder", (-50, -55, 95), (18, 18, 35), 10),
    (7, "esophagus", (10, 15, 215), (10, 10, 35), 42),
    (8, "pancreas", (15, 15, 95), (60, 15, 20), 45),
    (9, "duodenum", (-25, 0, 70), (25, 15, 45), 30),
    (10, "colon", (0, -30, 0), (120, 60, 70), 15),
    (11, "intestine", (0, -20, -40), (90, 55, 60), 25),
    (12, "adrenal", (40, 30, 115), (12, 8, 20), 28),
    (13, "rectum", (0, 50, -170), (20, 20, 40), 22),
    (14, "bladder", (0, -20, -170), (45, 35, 35), 5),
    (15, "head_of_femur_l", (90, 10, -200), (25, 25, 25), 400),
    (16, "head_of_femur_r", (-90, 10, -200), (25, 25, 25), 400),
)


@dataclass(frozen=True)
class CaseSpec:
    """What to draw.

    Attributes:
        shape: grid ``(I, J, K)``; ``K`` is the slice (superior) axis.
        spacing: mm along ``(i, j, k)``.
        organs: how many organs to label (the first ones whose nominal extent crosses the
            field of view, in id order).
        supports: number of support subjects (one query is drawn after them).
        z_centre: superior position (mm, anatomy frame) of the field of view's centre.
        mode: ``"SPL"`` or ``"WPL"``; slice_interval: SPL interval (3 mm voxels).
        seed: subject ``n`` is drawn from ``default_rng([seed, n])``.
    """

    shape: tuple[int, int, int] = (512, 512, 200)
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)
    organs: int = 16
    supports: int = 5
    z_centre: float = 0.0
    mode: str = "SPL"
    slice_interval: int | None = 2
    seed: int = 0

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def chosen_organs(spec: CaseSpec) -> list[tuple]:
    """The organs labelled in this case (nominal z-extent crosses the field of view)."""
    half = spec.shape[2] * spec.spacing[2] / 2
    lo, hi = spec.z_centre - half, spec.z_centre + half
    inside = [o for o in ORGANS if o[2][2] + o[3][2] > lo + 5 and o[2][2] - o[3][2] < hi - 5]
    return inside[: spec.organs]


def draw_subject(spec: CaseSpec, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``(I, J, K)`` int16 HU, label ``(I, J, K)`` uint8 and the 4x4 affine of subject n."""
    rng = np.random.default_rng([spec.seed, n])
    shape, sp = spec.shape, np.asarray(spec.spacing, dtype=np.float64)
    # world (anatomy) coordinates of voxel centres along each axis, mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * sp[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * sp[1]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * sp[2] + spec.z_centre
    image = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    bx, by = 160 * rng.uniform(0.9, 1.1), 115 * rng.uniform(0.9, 1.1)
    ring = (x[:, None] / bx) ** 2 + (y[None, :] / by) ** 2
    image[ring < 1] = -100.0  # subcutaneous fat
    image[ring < 0.8] = 40.0  # soft tissue
    spine = (x[:, None] / 20) ** 2 + ((y[None, :] - 70) / 20) ** 2 < 1
    image[spine] = 400.0
    organs = chosen_organs(spec)
    # big organs first so small ones stay visible where they overlap
    for cid, _, centre, radii, hu in sorted(organs, key=lambda o: -np.prod(o[3])):
        c = np.asarray(centre, float) + rng.normal(0, 6, 3)
        r = np.asarray(radii, float) * rng.uniform(0.9, 1.1, 3)
        lo = [np.searchsorted(ax, c[a] - r[a]) for a, ax in enumerate((x, y, z))]
        hi = [np.searchsorted(ax, c[a] + r[a], side="right") for a, ax in enumerate((x, y, z))]
        if any(h <= low for low, h in zip(lo, hi)):
            continue
        sl = tuple(slice(low, h) for low, h in zip(lo, hi))
        inside = (
            ((x[sl[0]] - c[0]) / r[0])[:, None, None] ** 2
            + ((y[sl[1]] - c[1]) / r[1])[None, :, None] ** 2
            + ((z[sl[2]] - c[2]) / r[2])[None, None, :] ** 2
        ) < 1
        image[sl][inside] = hu + rng.normal(0, 5)
        label[sl][inside] = cid
    for k in range(shape[2]):  # noise slice by slice keeps the float64 temporaries small
        image[:, :, k] += rng.normal(0, 10, shape[:2]).astype(np.float32)
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])  # LPS-like storage, as DICOM conversions
    affine[:3, 3] = [x[-1], y[-1], z[0]]
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label, affine


def write_case(folder: str | Path, spec: CaseSpec) -> Path:
    """Draw every subject and write the case folder; returns ``config.txt`` (reused if current)."""
    folder = Path(folder)
    config = folder / "config.txt"
    stamp = folder / "spec.json"
    if config.is_file() and stamp.is_file() and stamp.read_text() == spec.key():
        return config
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    names = [f"support_{n:02d}" for n in range(spec.supports)] + ["query_00"]
    images, labels = [], []
    for n, name in enumerate(names):
        image, label, affine = draw_subject(spec, n)
        images.append(write_nifti(image, affine, folder / "images" / f"{name}.nii.gz"))
        labels.append(write_nifti(label, affine, folder / "labels" / f"{name}.nii.gz"))
    write_path_list(folder / "support_image.txt", images[:-1])
    write_path_list(folder / "support_label.txt", labels[:-1])
    write_path_list(folder / "query_image.txt", images[-1:])
    write_path_list(folder / "query_label.txt", labels[-1:])
    organs = chosen_organs(spec)
    data: dict[str, object] = {
        "support_image_ls": "support_image.txt",
        "support_label_ls": "support_label.txt",
        "query_image_ls": "query_image.txt",
        "query_label_ls": "query_label.txt",
        "fg_class": [o[0] for o in organs],
        "fg_class_name": [o[1] for o in organs],
        "bbox_mode": spec.mode,
        "feature_scale_ls": ["feature0", "feature1", "feature2"],
        "seg_save_path": "result/seg",
        "seg_png_save_path": "result/png",
    }
    if spec.mode == "SPL":
        data["slice_interval"] = spec.slice_interval
    write_config_txt(config, {"data": data, "vit": {"net_type": "vit_b", "backend": "sam_vit_b"}})
    stamp.write_text(spec.key())
    return config


def organ_names(spec: CaseSpec) -> Sequence[str]:
    return [o[1] for o in chosen_organs(spec)]


#: ``--quick``: a small case that runs in minutes on 2 CPU cores
QUICK = CaseSpec(
    shape=(256, 256, 10),
    spacing=(1.6, 1.6, 4.0),
    organs=8,
    supports=1,
    z_centre=100.0,
    mode="SPL",
    slice_interval=4,
)


def spec_from_key(key: str) -> CaseSpec:
    """The :class:`CaseSpec` of :meth:`CaseSpec.key`."""
    fields = json.loads(key)
    fields["shape"], fields["spacing"] = tuple(fields["shape"]), tuple(fields["spacing"])
    return CaseSpec(**fields)


def write_case_apart(folder: str | Path, spec: CaseSpec) -> Path:
    """:func:`write_case` in a child process (``python -m medlsam.bench.case``), so that the
    drawing's memory does not count in the benchmark's own peak RSS; returns ``config.txt``."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    subprocess.run(
        [sys.executable, "-m", "medlsam.bench.case", str(folder), spec.key()], check=True, env=env
    )
    return Path(folder) / "config.txt"


if __name__ == "__main__":  # python -m medlsam.bench.case FOLDER SPEC_JSON
    sys.stdout.write(f"{write_case(sys.argv[1], spec_from_key(sys.argv[2]))}\n")
