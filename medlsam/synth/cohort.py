"""Writing a synthetic cohort: image/label pairs, the four list files and a ready config.

Layout of ``out/``::

    images/synth_000.nii.gz ...   int16 Hounsfield units
    labels/synth_000.nii.gz ...   uint8 organ ids, on the exact grid of the image
    support_image.txt  support_label.txt   the first K subjects
    query_image.txt    query_label.txt     the others
    config.txt                             [data] [vit] [weight], loads with load_config

Subjects are written in varying axis orientations (:data:`DEFAULT_ORIENTATIONS`): the array
and its affine are permuted and flipped together, so the anatomy stays where it is in world
coordinates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlsam.config import write_config_txt
from medlsam.errors import InputError
from medlsam.io import write_nifti, write_path_list
from medlsam.synth.phantom import DEFAULT_SHAPE, ORGAN_NAMES, make_phantom

logger = logging.getLogger(__name__)

#: Orientations subjects are written in, in turn from a seeded start: the common axial ones
#: and one with the in-plane axes swapped (PLS).
DEFAULT_ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "PLS", "LPI", "RPS")

_AXIS_OF = {
    "R": (0, 1.0),
    "L": (0, -1.0),
    "A": (1, 1.0),
    "P": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


def check_orientation(codes: str) -> str:
    """Validate three axis codes such as ``"LPS"`` (one of R/L, A/P, S/I each); upper-cased."""
    text = str(codes).upper()
    if (
        len(text) != 3
        or any(c not in _AXIS_OF for c in text)
        or len({_AXIS_OF[c][0] for c in text}) != 3
    ):
        raise InputError(
            f"orientation {codes!r}: expected three letters, one each of R/L, A/P and S/I "
            "(for example RAS or LPS)"
        )
    return text


def reorient(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip a volume into the orientation ``codes``, keeping its world geometry.

    Args:
        data: ``(I, J, K)`` array in the order of ``affine``.
        affine: ``(4, 4)`` voxel -> world RAS+ mm; its axes must be (close to) world axes.
        codes: target orientation, e.g. ``"LPS"``: axis 0 of the result runs toward Left, ...

    Returns:
        ``(array, affine)``: the same voxels, re-indexed, and the affine that maps the new
        indices to the same world points (``new_affine @ n == affine @ old_index(n)``).
    """
    codes = check_orientation(codes)
    world_of_axis = np.argmax(np.abs(affine[:3, :3]), axis=0)  # world axis each array axis follows
    if len(set(world_of_axis.tolist())) != 3:
        raise InputError("affine: axes are not aligned with distinct world axes; cannot reorient")
    perm, flips = [], []
    for code in codes:
        world, sign = _AXIS_OF[code]
        src = int(np.nonzero(world_of_axis == world)[0][0])
        perm.append(src)
        flips.append(np.sign(affine[world, src]) != sign)
    out = np.transpose(data, perm)
    index_map = np.zeros((4, 4))  # new index -> old index
    index_map[3, 3] = 1.0
    for new, (src, flip) in enumerate(zip(perm, flips)):
        if flip:
            out = np.flip(out, axis=new)
            index_map[src, new] = -1.0
            index_map[src, 3] = data.shape[src] - 1
        else:
            index_map[src, new] = 1.0
    return np.ascontiguousarray(out), affine @ index_map


@dataclass(frozen=True)
class Subject:
    """One written subject. ``role`` is ``"support"`` or ``"query"``; paths are absolute."""

    name: str
    role: str
    image: Path
    label: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axcodes: str
    organs: tuple[int, ...]


@dataclass(frozen=True)
class Cohort:
    """What :func:`write_cohort` wrote: the folder, the config, the lists and the subjects."""

    out: Path
    config: Path
    lists: Mapping[str, Path]
    subjects: tuple[Subject, ...]
    classes: Mapping[int, str]

    @property
    def supports(self) -> tuple[Subject, ...]:
        return tuple(s for s in self.subjects if s.role == "support")

    @property
    def queries(self) -> tuple[Subject, ...]:
        return tuple(s for s in self.subjects if s.role == "query")


@dataclass(frozen=True)
class Drawn:
    """A subject ready to write: ``image`` ``(I, J, K)`` int16 HU, ``label`` ``(I, J, K)``
    integer ids on the same grid, ``affine`` ``(4, 4)`` voxel -> world RAS+ mm."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    role: str


def check_counts(n: int, supports: int) -> None:
    """Refuse cohorts without a support or a query subject."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"--n {n}: expected an integer >= 2 (at least one support and one query)")
    if (
        isinstance(supports, bool)
        or not isinstance(supports, (int, np.integer))
        or not (1 <= supports < n)
    ):
        raise InputError(f"--supports {supports}: expected an integer from 1 to n - 1 = {n - 1}")


def orientation_cycle(rng: np.random.Generator, orientations: Sequence[str], n: int) -> list[str]:
    """Orientations for ``n`` subjects: the list in turn from a seeded start (variety assured)."""
    codes = [check_orientation(c) for c in orientations]
    if not codes:
        raise InputError("orientations: expected at least one, e.g. RAS")
    start = int(rng.integers(len(codes)))
    return [codes[(start + i) % len(codes)] for i in range(n)]


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(s), 3) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def write_cohort(
    out: str | os.PathLike[str],
    subjects: Iterable[Drawn],
    orientations: Sequence[str],
    classes: Mapping[int, str],
    medlam: str | os.PathLike[str] | None = None,
    prefix: str = "synth",
) -> Cohort:
    """Reorient and write every subject, then the list files and ``config.txt``.

    Labels not in ``classes`` are set to 0. ``orientations`` has one code per subject.
    """
    out = Path(out)
    written: list[Subject] = []
    for index, (drawn, codes) in enumerate(zip(subjects, orientations)):
        name = f"{prefix}_{index:03d}"
        label = np.where(np.isin(drawn.label, list(classes)), drawn.label, 0)
        label = label.astype(np.uint8 if label.max(initial=0) < 256 else np.uint16)
        image, affine = reorient(drawn.image, drawn.affine, codes)
        label, _ = reorient(label, drawn.affine, codes)  # same permutation: same grid
        image_path = write_nifti(image, affine, out / "images" / f"{name}.nii.gz")
        label_path = write_nifti(label, affine, out / "labels" / f"{name}.nii.gz")
        present = tuple(int(c) for c in np.unique(label) if c in classes)
        subject = Subject(
            name,
            drawn.role,
            image_path.resolve(),
            label_path.resolve(),
            tuple(int(s) for s in image.shape),
            _spacing(affine),
            codes,
            present,  # type: ignore[arg-type]
        )
        missing = sorted(set(classes) - set(present))
        if missing:
            logger.warning("%s (%s): no voxels of class(es) %s", name, drawn.role, missing)
        logger.info("%s %-7s %s %s mm %s", name, drawn.role, subject.shape, subject.spacing, codes)
        written.append(subject)
    names = {s.image.name for s in written}
    stale = [
        p.name for p in sorted((out / "images").glob(f"{prefix}_*.nii.gz")) if p.name not in names
    ]
    if stale:
        logger.warning(
            "%s: %d older file(s) such as %s are not part of this cohort (not in the lists)",
            out / "images",
            len(stale),
            stale[0],
        )
    supports = [s for s in written if s.role == "support"]
    queries = [s for s in written if s.role == "query"]
    lists = {
        "support_image_ls": out / "support_image.txt",
        "support_label_ls": out / "support_label.txt",
        "query_image_ls": out / "query_image.txt",
        "query_label_ls": out / "query_label.txt",
    }
    write_path_list(lists["support_image_ls"], [s.image for s in supports])
    write_path_list(lists["support_label_ls"], [s.label for s in supports])
    write_path_list(lists["query_image_ls"], [s.image for s in queries])
    write_path_list(lists["query_label_ls"], [s.label for s in queries])
    config = write_config_txt(out / "config.txt", config_sections(classes, medlam))
    return Cohort(out, config, lists, tuple(written), dict(classes))


def config_sections(
    classes: Mapping[int, str], medlam: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, object]]:
    """The ``config.txt`` of a cohort (paths relative to the cohort folder)."""
    for cid, name in classes.items():
        if not name or any(c in name for c in ",[]\n=:") or name != name.strip():
            raise InputError(
                f"class {cid} name {name!r}: expected a name without , [ ] = : or outer spaces"
            )
    medlam_path = None if medlam is None else str(Path(medlam).expanduser().resolve())
    return {
        "data": {
            "support_image_ls": "support_image.txt",
            "support_label_ls": "support_label.txt",
            "query_image_ls": "query_image.txt",
            "query_label_ls": "query_label.txt",
            "fg_class": list(classes),
            "fg_class_name": list(classes.values()),
            "bbox_mode": "SPL",
            "slice_interval": 2,
            "feature_scale_ls": ["feature0", "feature1", "feature2"],
            "seg_save_path": "result/seg",
            "seg_png_save_path": "result/png",
        },
        "vit": {"net_type": "vit_b", "backend": "classic"},
        "weight": {"medlam_load_path": medlam_path},
    }


def select_classes(
    available: Mapping[int, str],
    wanted: Mapping[int, str | None] | Sequence[int] | None,
    source: str,
) -> dict[int, str]:
    """The classes to keep, with names: ``wanted`` ids (names optional) among ``available``."""
    if wanted is None:
        return dict(available)
    pairs = wanted.items() if isinstance(wanted, Mapping) else ((c, None) for c in wanted)
    chosen: dict[int, str] = {}
    for cid, name in pairs:
        if cid not in available:
            known = ", ".join(str(c) for c in list(available)[:40])
            raise InputError(f"{source}: class {cid} is not in it (classes there: {known})")
        chosen[int(cid)] = name or available[cid]
    if not chosen:
        raise InputError(f"{source}: no classes selected; expected at least one class id")
    return chosen


def make_cohort(
    out: str | os.PathLike[str],
    n: int,
    supports: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    orientations: Sequence[str] = DEFAULT_ORIENTATIONS,
    classes: Mapping[int, str | None] | Sequence[int] | None = None,
    medlam: str | os.PathLike[str] | None = None,
    prefix: str = "synth",
) -> Cohort:
    """Write a cohort of ``n`` procedural phantoms; the first ``supports`` are supports.

    Subject ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so a seed always gives
    the same subjects (and a larger ``n`` only appends subjects). Supports keep every organ
    inside the field of view; queries may lose up to 12 mm of the highest and lowest organs.

    Args:
        out: the cohort folder (created; files of the same names are replaced).
        shape: nominal grid ``(NX, NY, NZ)``, see :func:`~medlsam.synth.phantom.make_phantom`.
        orientations: axis codes used in turn, e.g. ``("RAS", "LPS")``.
        classes: organ ids to label (default: all of :data:`~medlsam.synth.phantom.ORGANS`),
            optionally with names to use in the config.
        medlam: a MedLAM checkpoint to name in ``[weight] medlam_load_path``.
    """
    check_counts(n, supports)
    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise InputError(f"--shape {tuple(shape)}: expected three sizes, each >= 16")
    chosen = select_classes(ORGAN_NAMES, classes, "the phantom's organs")
    codes = orientation_cycle(np.random.default_rng(seed), orientations, n)

    def draw() -> Iterable[Drawn]:
        for i in range(n):
            role = "support" if i < supports else "query"
            p = make_phantom(np.random.default_rng([seed, i]), shape=shape, role=role)
            yield Drawn(p.image, p.label, p.affine, role)

    logger.info("drawing %d phantom subjects (seed %d) into %s", n, seed, out)
    return write_cohort(out, draw(), codes, chosen, medlam, prefix)
