"""Training data of MedLAM: cached preprocessing, pair sampling, augmentation (method.md 8.1-8.2).

Frames: a training volume is the MedLAM input of a raw CT (:func:`medlsam.preprocess.medlam_image`:
LAS, 3 mm, HU map, ``(Z, Y, X)`` float32, not padded). Positions are millimetres on that grid
(voxel index x 3 mm, ``(z, y, x)``).

One sample is a pair of patches of one volume, each in two copies:

* ``ori``: un-augmented 64^3 crop (used by RDR and as the MSS anchor side);
* ``aug``: the same neighbourhood, augmented (intensity re-mapping, Gaussian noise, random
  affine and elastic deformation, each with p = 0.5, as published; written here with torch and
  numpy, TorchIO is not needed), used by MSS.

Published procedure kept: centres uniform over the volume, re-drawn (up to 20 times) while on
air; an 80^3 working crop (zero outside the volume); augmented copies centre-cropped to 64^3;
un-augmented copies cropped at a random offset in ``[0, 16]^3``. Fixed: each patch draws its
own offset (the published code draws two and uses the first for both, method.md 10.2 item 5).

Near pairs (``near_fraction``, off by default as published): that share of pairs draws its
second centre within ``near_mm`` of the first on every axis (the published sampler's disabled
"small move" option, there +-60 mm). Far pairs teach the whole-body layout; near pairs the
millimetre-level displacement that decides where an iterated relative-distance step ends.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medlsam.io import atomic_write_bytes, read_image
from medlsam.preprocess import MEDLAM_SPACING, medlam_image

logger = logging.getLogger(__name__)

PATCH = 64
#: Extra margin of the working crop on every side (published ``crop_pad``).
CROP_PAD = 8
WORK = PATCH + 2 * CROP_PAD
#: A centre is re-drawn while its value is below this, at most ``CENTRE_TRIES`` times.
AIR_THRESHOLD = 0.001
CENTRE_TRIES = 20
CACHE_VERSION = "1"


# --------------------------------------------------------------------------------------------
# cached preprocessing


def cache_key(path: Path, interpolation: str) -> str:
    """Key of one input file: resolved path, size, mtime (ns) and the preprocessing settings."""
    st = path.stat()
    text = f"{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{interpolation}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_volume(path: Path, cache_dir: Path | None, interpolation: str = "spline") -> np.ndarray:
    """MedLAM input array ``(Z, Y, X)`` float32 of the CT at ``path``, cached as ``.npy``.

    The cache file is ``<cache_dir>/<name>-<key>.npy``; a changed file (size or mtime) gets a new
    key. Without ``cache_dir`` nothing is written.

    Raises:
        InputError: the file cannot be read as CT (from :func:`medlsam.io.read_image`).
    """
    path = Path(path)
    target = None
    if cache_dir is not None:
        key = cache_key(path, interpolation)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.name)
        target = Path(cache_dir) / f"{safe}-{key}.npy"
        if target.is_file():
            try:
                return np.load(target, allow_pickle=False)
            except (OSError, ValueError) as err:
                logger.warning("%s: unreadable cache file (%s); recomputing", target, err)
    array = medlam_image(read_image(path), interpolation).array.astype(np.float32)
    if target is not None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        atomic_write_bytes(target, buffer.getvalue())
    return array


# --------------------------------------------------------------------------------------------
# augmentation parameters


@dataclass(frozen=True)
class Augment:
    """Published augmentation settings (each applied with probability ``p``, per patch)."""

    p: float = 0.5
    intensity: bool = True
    noise_std: float = 0.2  # std drawn uniformly in [0, noise_std]
    scale: float = 0.1  # scale factors uniform in [1 - scale, 1 + scale] per axis
    degrees: float = 15.0  # rotation angles uniform in [-degrees, degrees] per axis
    elastic_points: int = 5  # control points per axis
    elastic_max: float = 3.0  # max displacement, voxels of the 3 mm grid

    @classmethod
    def none(cls) -> Augment:
        return cls(p=0.0)


def remap_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``sum_i 1/3 * sigmoid((x - u_i) / 0.1)``, ``u_i`` uniform in [.2,.4], [.4,.6], [.6,.8]."""
    out = np.zeros_like(x)
    for lo in (0.2, 0.4, 0.6):
        u = rng.uniform(lo, lo + 0.2)
        out += (1.0 / 3.0) / (1.0 + np.exp(-(x - u) / 0.1))
    return out.astype(np.float32)


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    a, b, c = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def sampling_coords(aug: Augment, rng: np.random.Generator, size: int = WORK) -> np.ndarray | None:
    """Source voxel coordinates ``(3, size, size, size)`` of a random affine + elastic warp of a
    ``size^3`` crop (relative to the crop's corner), or None when neither transform is drawn."""
    do_affine = rng.random() < aug.p
    do_elastic = rng.random() < aug.p
    if not (do_affine or do_elastic):
        return None
    centre = (size - 1) / 2.0
    axis = np.arange(size, dtype=np.float32) - centre
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1)
    if do_affine:
        scales = rng.uniform(1 - aug.scale, 1 + aug.scale, 3)
        angles = rng.uniform(-aug.degrees, aug.degrees, 3)
        matrix = (_rotation(angles) / scales[None, :]).astype(np.float32)
        grid = matrix @ grid
    grid = grid.reshape(3, size, size, size) + np.float32(centre)
    if do_elastic:
        n = aug.elastic_points
        control = rng.uniform(-aug.elastic_max, aug.elastic_max, (1, 3, n, n, n))
        control[..., [0, -1], :, :] = 0  # pinned borders, as a B-spline grid with fixed edges
        control[..., :, [0, -1], :] = 0
        control[..., :, :, [0, -1]] = 0
        field = F.interpolate(
            torch.from_numpy(control.astype(np.float32)),
            size=(size,) * 3,
            mode="trilinear",
            align_corners=True,
        )[0].numpy()
        grid = grid + field
    return grid.astype(np.float32)


def warp(crop: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear sample of ``crop`` ``(S, S, S)`` at voxel ``coords`` (3, S, S, S), 0 outside."""
    size = np.array(crop.shape, dtype=np.float32)
    norm = coords / (size[:, None, None, None] - 1) * 2 - 1  # align_corners=True convention
    grid = torch.from_numpy(np.ascontiguousarray(norm[::-1].transpose(1, 2, 3, 0)))[None]
    out = F.grid_sample(
        torch.from_numpy(crop)[None, None],
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# sampling


def crop(volume: np.ndarray, corner: np.ndarray, size: int) -> np.ndarray:
    """``size^3`` crop starting at ``corner`` (may lie outside), zeros outside the volume."""
    out = np.zeros((size, size, size), dtype=np.float32)
    shape = np.array(volume.shape)
    lo = np.clip(corner, 0, shape)
    hi = np.clip(corner + size, 0, shape)
    if np.all(hi > lo):
        d = lo - corner
        e = d + (hi - lo)
        out[d[0] : e[0], d[1] : e[1], d[2] : e[2]] = volume[
            lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]
        ]
    return out


def draw_centre(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform random voxel, re-drawn up to 20 times while it is air (published)."""
    shape = np.array(volume.shape)
    for _ in range(CENTRE_TRIES):
        centre = rng.integers(0, shape)
        if volume[tuple(centre)] >= AIR_THRESHOLD:
            break
    return centre


def draw_near(
    volume: np.ndarray, rng: np.random.Generator, centre: np.ndarray, near_mm: float
) -> np.ndarray:
    """A voxel within ``near_mm`` of ``centre`` on every axis (inside the volume), re-drawn up
    to 20 times while it is air."""
    reach = max(1, int(round(near_mm / MEDLAM_SPACING)))
    top = np.array(volume.shape) - 1
    for _ in range(CENTRE_TRIES):
        near = np.clip(centre + rng.integers(-reach, reach + 1, 3), 0, top)
        if volume[tuple(near)] >= AIR_THRESHOLD:
            break
    return near


def draw_pair(
    volume: np.ndarray, rng: np.random.Generator, near_fraction: float, near_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two patch centres: independent, or (with probability ``near_fraction``) a near pair."""
    first = draw_centre(volume, rng)
    if near_fraction > 0 and rng.random() < near_fraction:
        return first, draw_near(volume, rng, first, near_mm)
    return first, draw_centre(volume, rng)


def _grid_mm(corner: np.ndarray, size: int, coords: np.ndarray | None = None) -> np.ndarray:
    """Positions ``(3, size, size, size)`` in mm of a crop at ``corner`` (optionally warped)."""
    if coords is None:
        axis = np.arange(size, dtype=np.float32)
        coords = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"))
    return ((coords + corner[:, None, None, None].astype(np.float32)) * MEDLAM_SPACING).astype(
        np.float32
    )


def sample_patch(
    volume: np.ndarray,
    rng: np.random.Generator,
    aug: Augment,
    augmented: bool = True,
    centre: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One patch in two copies around ``centre`` (default: a random one; see the module
    docstring).

    Returns:
        ``ori``, ``aug``: ``(64, 64, 64)`` float32; ``ori_pos``, ``aug_pos``: ``(3, 64, 64, 64)``
        float32 mm; ``ori_centre``: ``(3,)`` float32 mm, the position of voxel (32, 32, 32).
        With ``augmented=False`` only the ``ori*`` entries (no augmentation is drawn).
    """
    if centre is None:
        centre = draw_centre(volume, rng)
    corner = centre - WORK // 2
    work = crop(volume, corner, WORK)
    # un-augmented copy: its own random offset in [0, 16]^3 inside the working crop
    offset = rng.integers(0, 2 * CROP_PAD + 1, 3)
    ori_corner = corner + offset
    ori = work[
        offset[0] : offset[0] + PATCH, offset[1] : offset[1] + PATCH, offset[2] : offset[2] + PATCH
    ]
    plain = {
        "ori": np.ascontiguousarray(ori),
        "ori_pos": _grid_mm(ori_corner, PATCH),
        "ori_centre": ((ori_corner + PATCH // 2) * MEDLAM_SPACING).astype(np.float32),
    }
    if not augmented:
        return plain
    # augmented copy: intensity, noise, affine + elastic (jointly with the positions), centre crop
    image = work
    if aug.intensity and rng.random() < aug.p:
        image = remap_intensity(image, rng)
    if rng.random() < aug.p and aug.noise_std > 0:
        std = rng.uniform(0.0, aug.noise_std)
        image = (image + rng.standard_normal(image.shape).astype(np.float32) * std).astype(
            np.float32
        )
    coords = sampling_coords(aug, rng)
    if coords is not None:
        image = warp(np.ascontiguousarray(image, dtype=np.float32), coords)
    inner = slice(CROP_PAD, CROP_PAD + PATCH)
    aug_pos = _grid_mm(corner, WORK, coords)[:, inner, inner, inner]
    return {
        **plain,
        "aug": np.ascontiguousarray(image[inner, inner, inner], dtype=np.float32),
        "aug_pos": np.ascontiguousarray(aug_pos),
    }


def sample_batch(
    volumes: Sequence[np.ndarray],
    rng: np.random.Generator,
    batch_size: int,
    aug: Augment,
    with_aug: bool = True,
    near_fraction: float = 0.0,
    near_mm: float = 60.0,
) -> dict[str, torch.Tensor]:
    """A batch of pairs, each from one random volume.

    Returns tensors (CPU): ``ori0/ori1/aug0/aug1`` ``(B, 1, 64, 64, 64)``, ``ori_pos0/1`` and
    ``aug_pos0/1`` ``(B, 3, 64, 64, 64)`` mm, ``distance`` ``(B, 3)`` mm = centre0 - centre1
    (un-augmented copies). ``with_aug=False`` leaves out the augmented copies and positions;
    ``near_fraction`` of the pairs are near pairs (module docstring).
    """
    items: dict[str, list[np.ndarray]] = {}
    for _ in range(batch_size):
        volume = volumes[int(rng.integers(len(volumes)))]
        centres = draw_pair(volume, rng, near_fraction, near_mm)
        pair = [sample_patch(volume, rng, aug, with_aug, c) for c in centres]
        for p, patch in enumerate(pair):
            for key, value in patch.items():
                items.setdefault(f"{key}{p}", []).append(value)
    out = {k: torch.from_numpy(np.stack(v)) for k, v in items.items()}
    for key in ("ori0", "ori1", "aug0", "aug1"):
        if key in out:
            out[key] = out[key][:, None]
    out["distance"] = out.pop("ori_centre0") - out.pop("ori_centre1")
    return out


def fixed_pairs(
    volumes: Sequence[np.ndarray],
    seed: int,
    n: int,
    near_fraction: float = 0.0,
    near_mm: float = 60.0,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` validation pairs (no augmentation, no crop offset): ``(patch0, patch1, mm)``,
    ``near_fraction`` of them near pairs."""
    rng = np.random.default_rng([seed, 7])
    pairs = []
    for _ in range(n):
        volume = volumes[int(rng.integers(len(volumes)))]
        centres = draw_pair(volume, rng, near_fraction, near_mm)
        patches = [crop(volume, c - PATCH // 2, PATCH) for c in centres]
        pairs.append(
            (
                patches[0],
                patches[1],
                ((centres[0] - centres[1]) * MEDLAM_SPACING).astype(np.float32),
            )
        )
    return pairs


def cache_folder(default_parent: Path, configured: str | os.PathLike[str] | None) -> Path:
    """The cache folder: the configured one, else ``<default_parent>/medlam_cache``."""
    return Path(configured) if configured else default_parent / "medlam_cache"
