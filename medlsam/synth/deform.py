"""A cohort made from one real CT and its label map (``python -m medlsam.synth --from``).

Each subject is the source scan under a random affine + elastic deformation (MONAI
``Rand3DElasticd``: rotation, scaling, translation and a smooth displacement field, applied to
image and label together: linear interpolation for the image, nearest neighbour for the label),
a random crop of the field of view along the body axis, random intensity changes (MONAI
``RandScaleIntensityd``, ``RandShiftIntensityd``, ``RandGaussianNoised``), and a random axis
orientation on disk. The label is deformed with the image, so it stays on its exact grid.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medlsam.errors import InputError
from medlsam.io import Volume, label_on_image_grid, read_image, read_label
from medlsam.synth.cohort import (
    DEFAULT_ORIENTATIONS,
    Cohort,
    Drawn,
    check_counts,
    orientation_cycle,
    select_classes,
    write_cohort,
)

logger = logging.getLogger(__name__)

#: Largest cut (mm) into the highest and lowest selected organ a query's crop may make.
QUERY_CUT_MM = 10.0
#: Largest fraction of the slices a crop removes from either end of the body axis.
MAX_CROP = 0.25
#: Air offset: the deformation pads with zeros, so it runs on ``HU + AIR_SHIFT`` (air -> 0).
AIR_SHIFT = 1000.0


def _deform(
    image: np.ndarray, label: np.ndarray, spacing: np.ndarray, slice_axis: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One random affine + elastic deformation and intensity change of ``(I, J, K)`` arrays.

    Returns ``(image float32 HU, label int32)`` on the same grid.
    """
    import torch
    from monai.transforms import (
        Compose,
        Rand3DElasticd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    rotate = [0.05, 0.05, 0.05]
    rotate[slice_axis] = 0.15  # mostly in-plane rotation (radians)
    translate = [float(10.0 / s) for s in spacing]  # up to 10 mm, in voxels
    elastic = Rand3DElasticd(
        keys=("image", "label"),
        sigma_range=(7.0, 9.0),
        magnitude_range=(80.0, 250.0),
        prob=1.0,
        rotate_range=rotate,
        scale_range=(0.08, 0.08, 0.08),
        translate_range=translate,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
    )
    # on Hounsfield units: scaling about 0 HU changes contrast (air +-30 HU, soft tissue +-2)
    intensity = Compose(
        [
            RandScaleIntensityd(keys="image", factors=0.03, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=10.0, prob=1.0),
            RandGaussianNoised(keys="image", mean=0.0, std=12.0, prob=1.0),
        ]
    )
    elastic.set_random_state(seed=seed)
    intensity.set_random_state(seed=seed + 1)
    data = {
        "image": torch.from_numpy(np.ascontiguousarray(image[None] + AIR_SHIFT, np.float32)),
        "label": torch.from_numpy(np.ascontiguousarray(label[None], np.float32)),
    }
    out = elastic(data)
    out["image"] = torch.as_tensor(out["image"]) - AIR_SHIFT
    out = intensity({"image": out["image"], "label": out["label"]})
    new_image = torch.as_tensor(out["image"]).detach().cpu().numpy()[0]
    new_label = np.rint(torch.as_tensor(out["label"]).detach().cpu().numpy()[0]).astype(np.int32)
    return new_image.astype(np.float32), new_label


def _crop(
    rng: np.random.Generator,
    label: np.ndarray,
    classes: Sequence[int],
    axis: int,
    spacing: float,
    role: str,
) -> tuple[int, int]:
    """Slices ``[k0, k1)`` along ``axis`` to keep.

    Supports keep every selected organ whole; queries may cut up to :data:`QUERY_CUT_MM`;
    neither end loses more than :data:`MAX_CROP` of the slices.
    """
    others = tuple(a for a in range(3) if a != axis)
    present = np.isin(label, list(classes)).any(axis=others)
    n = label.shape[axis]
    if not present.any():
        return 0, n
    ks = np.nonzero(present)[0]
    lo, hi = int(ks[0]), int(ks[-1])
    cut = min(int(QUERY_CUT_MM / spacing), (hi - lo) // 4) if role == "query" else 0
    most = int(MAX_CROP * n)  # never crop more than this from either end
    k0 = int(rng.integers(0, min(lo + cut, most) + 1))
    k1 = n - int(rng.integers(0, min(n - 1 - hi + cut, most) + 1))
    return k0, max(k1, k0 + 1)


def _cropped(volume: np.ndarray, axis: int, k0: int, k1: int) -> np.ndarray:
    index = [slice(None)] * 3
    index[axis] = slice(k0, k1)
    return np.ascontiguousarray(volume[tuple(index)])


def deform_subject(
    rng: np.random.Generator,
    image: Volume,
    label: Volume,
    classes: Sequence[int],
    role: str = "support",
    tries: int = 3,
) -> Drawn:
    """One deformed, cropped, intensity-changed copy of ``image`` and ``label``.

    ``image`` float32 HU and ``label`` integer ids share one grid ``(I, J, K)``. A support is
    drawn again (up to ``tries`` times) if the deformation pushed a selected class out of view.
    """
    axis = image.slice_axis()
    spacing = image.spacing
    wanted = set(int(c) for c in classes) & set(np.unique(label.data).tolist())
    for attempt in range(tries):
        seed = int(rng.integers(0, 2**31 - 2))
        new_image, new_label = _deform(image.data, label.data, spacing, axis, seed)
        k0, k1 = _crop(rng, new_label, list(classes), axis, float(spacing[axis]), role)
        new_image = _cropped(new_image, axis, k0, k1)
        new_label = _cropped(new_label, axis, k0, k1)
        lost = wanted - set(np.unique(new_label).tolist())
        if not lost or role == "query" or attempt == tries - 1:
            break
        logger.debug("support lost class(es) %s; drawing again", sorted(lost))
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, axis] * k0
    hu = np.clip(np.rint(new_image), -1024, 3071).astype(np.int16)
    return Drawn(hu, new_label, affine, role)


def load_source(
    image_path: str | os.PathLike[str], label_path: str | os.PathLike[str]
) -> tuple[Volume, Volume]:
    """Read the source CT and its label map and check that they share one grid."""
    image = read_image(image_path)
    return image, label_on_image_grid(read_label(label_path), image)


def make_cohort_from(
    image: str | os.PathLike[str],
    label: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n: int,
    supports: int,
    seed: int,
    classes: Mapping[int, str | None] | Sequence[int] | None = None,
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    medlam: str | os.PathLike[str] | None = None,
    prefix: str = "synth",
) -> Cohort:
    """Write a cohort of ``n`` deformed copies of one real CT; the first ``supports`` are supports.

    Args:
        image, label: the source CT (Hounsfield units) and its label map, on one grid.
        classes: label ids to keep (others become 0), optionally with names for the config;
            default: every id present in the source label, named ``class_<id>``.
        orientations: axis codes the subjects are written in, in turn.
        medlam: a MedLAM checkpoint to name in ``[weight] medlam_load_path``.

    Subject ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: same seed, same cohort.
    """
    check_counts(n, supports)
    source_image, source_label = load_source(image, label)
    ids = [int(c) for c in np.unique(source_label.data) if c > 0]
    if not ids:
        raise InputError(f"{label}: label map has no labelled voxels; expected organ ids > 0")
    chosen = select_classes({c: f"class_{c}" for c in ids}, classes, str(label))
    codes = orientation_cycle(np.random.default_rng(seed), orientations, n)

    def draw() -> Iterable[Drawn]:
        for i in range(n):
            role = "support" if i < supports else "query"
            rng = np.random.default_rng([seed, i])
            yield deform_subject(rng, source_image, source_label, list(chosen), role)

    logger.info("deforming %s into %d subjects (seed %d) in %s", Path(image).name, n, seed, out)
    return write_cohort(out, draw(), codes, chosen, medlam, prefix)
