"""The volume type of medlsam and its orientation: pure geometry, no file access.

A :class:`Volume` holds the voxel array in the file's own ``(i, j, k)`` order (as nibabel reads
a NIfTI file) and a 4x4 affine to world RAS+ millimetres. :func:`to_las` gives MedLAM's LAS
``(z, y, x)`` view with an exact :class:`IndexMap` back to the file's voxels, for all 48 axis
orientations. Reading and writing files is :mod:`medlsam.io`'s job.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations as ornt_mod

from medlsam.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
KNOWN_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES


def case_name(path: str | os.PathLike[str]) -> str:
    """The file name without its image extension (``a/b/case_01.nii.gz`` -> ``case_01``)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in KNOWN_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def case_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Case names of a list of images (or label maps), one per path, in order.

    Each is :func:`case_name` of the file (a DICOM folder: the folder's name), except where
    several files share a name, as in ``subject/ct.nii.gz`` layouts: those take the name of
    their parent folder (``s01/ct.nii.gz``, ``s02/ct.nii.gz`` -> ``s01``, ``s02``). Names that
    still collide are left so; :func:`medlsam.config.check_case_names` refuses them.
    """
    names = [case_name(p) for p in paths]
    counts = Counter(names)
    return [
        Path(p).parent.name or name if counts[name] > 1 else name for p, name in zip(paths, names)
    ]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map.

    Attributes:
        data: array of shape ``(I, J, K)`` in the file's voxel order (as nibabel reads it);
            float32 Hounsfield units for CT images, an integer dtype for label maps.
        affine: ``(4, 4)`` float64, voxel ``(i, j, k, 1)`` -> world RAS+ millimetres.
        path: the file (or DICOM folder) it was read from, if any.
        case: the case name, where it is not the file's (:func:`case_names`: a
            ``subject/ct.nii.gz`` layout names the case after its folder).
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    case: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along ``(i, j, k)``, shape ``(3,)``."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def axcodes(self) -> str:
        """Orientation as three letters, for example ``"RAS"`` or ``"LPS"``."""
        return "".join(ornt_mod.aff2axcodes(self.affine))

    @property
    def name(self) -> str:
        if self.case is not None:
            return self.case
        return case_name(self.path) if self.path is not None else "volume"

    def to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` in ``(i, j, k)`` order to RAS+ mm ``(..., 3)``."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Map RAS+ mm ``(..., 3)`` to (fractional) voxel indices ``(..., 3)`` in ``(i, j, k)``."""
        inv = np.linalg.inv(self.affine)
        xyz = np.asarray(xyz, dtype=np.float64)
        return xyz @ inv[:3, :3].T + inv[:3, 3]

    def slice_axis(self) -> int:
        """The voxel axis (0, 1 or 2) closest to the body's superior-inferior direction.

        Axial slices are taken along this axis; for a usual axial CT it is 2 (``k``).
        """
        codes = self.axcodes
        for axis, code in enumerate(codes):
            if code in "SI":
                return axis
        return 2  # pragma: no cover - aff2axcodes always yields one of S/I


@dataclass(frozen=True)
class IndexMap:
    """Maps indices of the LAS ``(z, y, x)`` array back to the file's ``(i, j, k)`` indices.

    ``ijk = matrix @ zyx + offset``; ``matrix`` is a signed permutation, so the map is exact for
    integer and fractional indices alike, in every orientation.
    """

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)

    def __call__(self, zyx: np.ndarray) -> np.ndarray:
        zyx = np.asarray(zyx, dtype=np.float64)
        return zyx @ self.matrix.T + self.offset

    def inverse(self, ijk: np.ndarray) -> np.ndarray:
        """File indices ``(..., 3)`` -> LAS ``(z, y, x)`` indices."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return (ijk - self.offset) @ np.linalg.inv(self.matrix).T


def same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> bool:
    """Whether two volumes share shape and voxel-to-world matrix (within ``atol`` mm)."""
    return a.shape == b.shape and bool(np.allclose(a.affine, b.affine, atol=atol))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _mm(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in np.asarray(values, dtype=np.float64)) + "]"


def grid_difference(moving: Volume, reference: Volume) -> str:
    """What differs between two grids, with numbers: shape, spacing, origin, direction.

    ``moving`` is first put in ``reference``'s axis order (flips and permutations change no
    voxel's position), so only real differences are named, in ``reference``'s terms.
    """
    transform = ornt_mod.ornt_transform(
        ornt_mod.io_orientation(moving.affine), ornt_mod.io_orientation(reference.affine)
    )
    affine = moving.affine @ ornt_mod.inv_ornt_aff(transform, moving.shape)
    shape = tuple(moving.shape[int(a)] for a in np.argsort(transform[:, 0]))
    ref = reference.affine
    parts = []
    if shape != reference.shape:
        parts.append(f"shape {_shape_text(shape)} vs {_shape_text(reference.shape)}")
    spacing, ref_spacing = np.linalg.norm(affine[:3, :3], axis=0), reference.spacing
    if not np.allclose(spacing, ref_spacing, atol=1e-3):
        parts.append(f"spacing {_mm(spacing)} vs {_mm(ref_spacing)} mm")
    if not np.allclose(affine[:3, 3], ref[:3, 3], atol=1e-2):
        apart = float(np.linalg.norm(affine[:3, 3] - ref[:3, 3]))
        parts.append(f"origin {_mm(affine[:3, 3])} vs {_mm(ref[:3, 3])} mm ({apart:.1f} mm apart)")
    cosines = np.sum((affine[:3, :3] / spacing) * (ref[:3, :3] / ref_spacing), axis=0)
    angle = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if angle > 0.01:
        parts.append(f"direction: axes up to {angle:.1f} deg apart")
    return "; ".join(parts) or "voxel positions differ"


def align_to(
    moving: Volume, reference: Volume, what: str = "grid", against: str = ""
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``moving``'s voxels on ``reference``'s grid, exactly (no interpolation).

    ``what`` and ``against`` word the error (``"label grid"``, ``"its image "``).
    Works where both grids hold the same voxels in another axis order or orientation (a
    signed permutation of the axes, as a label map stored flipped relative to its image).

    Returns:
        data: ``reference.shape`` array (a view of ``moving.data`` where possible).
        matrix, offset: signed permutation ``(3, 3)`` and ``(3,)`` integers mapping moving
            indices to reference indices, ``ijk_ref = matrix @ ijk_moving + offset``.

    Raises:
        InputError: the grids do not coincide voxel for voxel; the message names both files
            and what differs (shape, spacing, origin, direction, with numbers).
    """
    to_ref = np.linalg.inv(reference.affine) @ moving.affine
    rot, shift = to_ref[:3, :3], to_ref[:3, 3]
    matrix, offset = np.rint(rot), np.rint(shift)
    fits = np.allclose(np.abs(matrix).sum(0), 1) and np.allclose(np.abs(matrix).sum(1), 1)
    fits = fits and np.allclose(rot, matrix, atol=1e-3) and np.allclose(shift, offset, atol=1e-2)
    perm, signs = [0, 1, 2], [1, 1, 1]
    if fits:
        perm = [int(np.nonzero(matrix[a])[0][0]) for a in range(3)]
        signs = [int(matrix[a, perm[a]]) for a in range(3)]
        for a in range(3):
            size = reference.shape[a]
            fits = fits and moving.shape[perm[a]] == size
            fits = fits and offset[a] == (0 if signs[a] > 0 else size - 1)
    if not fits:
        raise InputError(
            f"{moving.path or moving.name}: {what} does not match {against}"
            f"{reference.path or reference.name} ({grid_difference(moving, reference)}); "
            "expected the same grid, or the same voxels with axes flipped or permuted"
        )
    data = moving.data
    if perm != [0, 1, 2] or min(signs) < 0:
        data = np.transpose(data, perm)
        flips = tuple(a for a in range(3) if signs[a] < 0)
        data = np.flip(data, axis=flips) if flips else data
    return data, matrix.astype(int), offset.astype(int)


def label_on_image_grid(label: Volume, image: Volume) -> Volume:
    """A label map on its image's exact grid: as is, or reoriented where it is the same grid
    stored with axes flipped or permuted (:func:`align_to`); any other grid is an error naming
    both files and what differs."""
    if same_grid(label, image):
        return label
    data, _, _ = align_to(label, image, what="label grid", against="its image ")
    return Volume(data=np.ascontiguousarray(data), affine=image.affine.copy(), path=label.path)


_LAS = ornt_mod.axcodes2ornt(("L", "A", "S"))


def to_las(volume: Volume) -> tuple[np.ndarray, np.ndarray, IndexMap]:
    """Reorient to LAS and transpose to ``(z, y, x)``.

    Returns:
        array: the voxels, shape ``(Z, Y, X)``; axis 0 runs toward Superior, 1 toward Anterior,
            2 toward Left (a view where possible, no copy).
        spacing: ``(3,)`` mm along ``(z, y, x)``.
        index_map: LAS ``(z, y, x)`` indices -> the file's ``(i, j, k)`` indices.
    """
    original = ornt_mod.io_orientation(volume.affine)
    transform = ornt_mod.ornt_transform(original, _LAS)
    las_xyz = ornt_mod.apply_orientation(volume.data, transform)
    # inv_ornt_aff maps indices of the reoriented array (x, y, z) to indices of the original.
    to_original = ornt_mod.inv_ornt_aff(transform, volume.shape)
    reverse = np.zeros((4, 4))
    reverse[0, 2] = reverse[1, 1] = reverse[2, 0] = reverse[3, 3] = 1.0  # (z,y,x,1)->(x,y,z,1)
    full = to_original @ reverse
    index_map = IndexMap(matrix=full[:3, :3].copy(), offset=full[:3, 3].copy())
    new_affine = volume.affine @ to_original
    spacing_xyz = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))
    return las_xyz.transpose(2, 1, 0), spacing_xyz[::-1].copy(), index_map


# --------------------------------------------------------------------------------------------
# checks of voxels and geometry (no file access)


def validate_geometry(path: Path, data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    shape_text = "x".join(str(s) for s in data.shape)
    if data.ndim < 3 or (data.ndim == 3 and min(data.shape) == 1):
        raise InputError(f"{path}: image is 2D (shape {shape_text}); expected a 3D CT volume")
    if data.ndim > 3:
        raise InputError(
            f"{path}: image is {data.ndim}D (shape {shape_text}); expected a 3D CT volume"
        )
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: voxel-to-world matrix contains NaN or infinity")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(spacing <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        raise InputError(
            f"{path}: voxel spacing {np.round(spacing, 4).tolist()} mm has a zero axis; "
            "expected positive spacing on all three axes"
        )
    return data


def check_hounsfield(data: np.ndarray, path: Path | str) -> None:
    """Refuse volumes whose values do not look like CT in Hounsfield units.

    A CT scan of a body contains air around it (about -1000 HU), so its minimum lies far
    below zero. An MR scan (non-negative or barely negative values) and CT stored without its
    rescale (a +1024 offset, air near 0) do not, and either would reach the networks as noise.
    """
    lo = float(data.min())
    hi = float(data.max())
    if lo <= -500:
        return
    sample = data[::4, ::4, ::4] if data.size > 10**6 else data
    near_zero = float(np.mean(sample <= 100))  # air moved to about +24
    tissue = float(np.mean((sample >= 900) & (sample <= 1200)))  # soft tissue moved to ~1000+
    if lo >= -10 and near_zero > 0.02 and tissue > 0.1:
        raise InputError(
            f"{path}: values {lo:.0f}..{hi:.0f} look like CT stored with a +1024 offset "
            "(air near 0, soft tissue near 1024); expected Hounsfield units (air about -1000): "
            "subtract 1024 first"
        )
    raise InputError(
        f"{path}: values {lo:.0f}..{hi:.0f} do not look like CT in Hounsfield units "
        "(no air below -500 HU); MedLSAM needs CT, and MR scans are not supported"
    )
