"""Query patches of MedLAM: where the search starts (method.md 4.2), patch cropping, and the
multi-scale similarity (MSS) template matching (method.md 4.5).

Frames: patch centres are indices on the padded 3 mm LAS grid ``(z, y, x)``; a patch around
centre ``c`` covers ``[c - 32, c + 32)`` on every axis. Offsets returned by
:func:`mss_offsets` are in 3 mm voxels, to be added to the patch centres.

The published code matches each organ's templates with one grouped 3D convolution per organ and
scale (random bias). Here every point of every organ is matched in one batch by FFT
cross-correlation, which gives the same response maps (up to float rounding and the constant
bias, which never moves an arg-max) at a fraction of the cost for the 8^3 templates at full
resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medlsam.preprocess import MEDLAM_SPACING

#: Patch edge in 3 mm voxels (published ``patch_size``).
PATCH = 64
#: Offset convention of the published arg-max: ``offset = index - (PATCH // 2 - 1)``.
ARGMAX_ORIGIN = PATCH // 2 - 1


logger = logging.getLogger(__name__)

#: Number of initial query patches and half-width of their start window (3 mm voxels).
INITIAL_PATCHES = 10
START_HALF_WINDOW = 10
#: A patch centre is tissue when its normalised value is at least this (published).
AIR_THRESHOLD = 0.001
#: Draws per initial patch before falling back to the nearest non-air voxel.
MAX_DRAWS = 100


def initial_centres(
    padded: np.ndarray, rng: np.random.Generator, n: int = INITIAL_PATCHES
) -> np.ndarray:
    """Centres of the initial patches on the padded 3 mm grid, ``(n, 3)`` int64 ``(z, y, x)``.

    Each axis is drawn uniformly in ``[s//2 - 10, s//2 + 10)`` and re-drawn while the voxel is
    air; see the module docstring for the guaranteed-termination fallback.
    """
    shape = np.array(padded.shape)
    lo = shape // 2 - START_HALF_WINDOW
    hi = shape // 2 + START_HALF_WINDOW
    window = padded[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    fallback = None if (window >= AIR_THRESHOLD).any() else _nearest_tissue(padded)
    centres = []
    for _ in range(n):
        chosen = fallback
        if chosen is None:
            for _ in range(MAX_DRAWS):
                draw = rng.integers(lo, hi)
                if padded[tuple(draw)] >= AIR_THRESHOLD:
                    chosen = draw
                    break
            else:
                chosen = fallback = _nearest_tissue(padded)
        centres.append(chosen)
    if fallback is not None:
        logger.warning("the centre of the query is air; initial patches start at %s", fallback)
    return np.array(centres, dtype=np.int64)


def _nearest_tissue(padded: np.ndarray) -> np.ndarray:
    """The non-air voxel nearest the centre (first in C order on ties), else the centre."""
    centre = np.array(padded.shape) // 2
    radius = START_HALF_WINDOW
    while True:
        lo = np.maximum(centre - radius, 0)
        hi = np.minimum(centre + radius + 1, padded.shape)
        found = np.argwhere(padded[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] >= AIR_THRESHOLD)
        if found.size:
            found = found + lo
            best = np.argmin(((found - centre) ** 2).sum(axis=1))
            return found[best].astype(np.int64)
        if np.all(lo == 0) and np.all(hi == padded.shape):
            return centre.astype(np.int64)
        radius *= 2


def search_centres(points: np.ndarray, share_mm: float, shape: Sequence[int]) -> np.ndarray:
    """Centre of each point's MSS search patch on the padded 3 mm grid: the point itself, or,
    with ``share_mm > 0``, its point on a grid of that pitch (clamped to ``[32, s - 33]``), so
    that the points of one grid cell share one patch."""
    if share_mm <= 0:
        return points
    pitch = max(1, int(round(share_mm / MEDLAM_SPACING)))
    snapped = np.rint(points / pitch).astype(np.int64) * pitch
    return np.clip(snapped, PATCH // 2, np.array(shape) - PATCH // 2 - 1)


def crop_patches(array: np.ndarray, centres: np.ndarray, size: int = PATCH) -> np.ndarray:
    """Cubes ``[c - size//2, c + size//2)`` around each centre, zero outside the array.

    Args:
        array: ``(Z, Y, X)`` float32 volume.
        centres: ``(N, 3)`` integer indices into ``array``.

    Returns:
        ``(N, 1, size, size, size)`` float32.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3)
    out = np.zeros((len(centres), 1, size, size, size), dtype=np.float32)
    shape = np.array(array.shape)
    for n, centre in enumerate(centres):
        lo = centre - size // 2
        src_lo = np.clip(lo, 0, shape)
        src_hi = np.clip(lo + size, 0, shape)
        if np.any(src_hi <= src_lo):
            continue
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        out[n, 0, dst_lo[0] : dst_hi[0], dst_lo[1] : dst_hi[1], dst_lo[2] : dst_hi[2]] = array[
            src_lo[0] : src_hi[0], src_lo[1] : src_hi[1], src_lo[2] : src_hi[2]
        ]
    return out


def correlate(
    features: torch.Tensor, templates: torch.Tensor, channel_chunk: int = 16
) -> torch.Tensor:
    """Per-sample cross-correlation of a feature map with its own template, via FFT.

    Equal to ``conv3d(features[b:b+1], templates[b:b+1], padding=k // 2)`` for every ``b``
    (zero padding, no bias, summed over channels), computed for the whole batch at once.

    Args:
        features: ``(B, C, D, H, W)`` float32.
        templates: ``(B, C, k0, k1, k2)`` float32.
        channel_chunk: channels transformed at once (bounds memory).

    Returns:
        ``(B, D + 2*(k0//2) - k0 + 1, ...)`` float32 response maps.
    """
    if features.shape[:2] != templates.shape[:2]:
        raise ValueError(f"features {tuple(features.shape)} and templates {tuple(templates.shape)}")
    kernel = templates.shape[2:]
    pads = [k // 2 for k in kernel]
    full = [m + 2 * p for m, p in zip(features.shape[2:], pads, strict=True)]
    out_size = [n - k + 1 for n, k in zip(full, kernel, strict=True)]
    dims = (-3, -2, -1)
    spectrum = None
    for start in range(0, features.shape[1], channel_chunk):
        part = features[:, start : start + channel_chunk].float()
        part = F.pad(part, (pads[2], pads[2], pads[1], pads[1], pads[0], pads[0]))
        f_hat = torch.fft.rfftn(part, s=full, dim=dims)
        kernel_part = templates[:, start : start + channel_chunk].float()
        t_hat = torch.fft.rfftn(kernel_part, s=full, dim=dims)
        term = (f_hat * t_hat.conj()).sum(dim=1)
        spectrum = term if spectrum is None else spectrum + term
    assert spectrum is not None
    response = torch.fft.irfftn(spectrum, s=full, dim=dims)
    return response[:, : out_size[0], : out_size[1], : out_size[2]]


def similarity_map(
    features: Mapping[str, torch.Tensor],
    templates: Mapping[str, torch.Tensor],
    scales: Sequence[str],
    size: int = PATCH,
) -> torch.Tensor:
    """The published MSS score map: ones + sum over scales of the resized mean cosine similarity.

    For each scale the query feature map is L2-normalised over channels, correlated with each
    point's template (already normalised per voxel and summed over supports), divided by the
    number of template voxels, and trilinearly resized to ``size^3`` (``align_corners=False``).

    Args:
        features: scale -> ``(B, C, m, m, m)`` query features of the patches.
        templates: scale -> ``(B, C, k, k, k)``, one template per patch.

    Returns:
        ``(B, size, size, size)`` float32.
    """
    total = None
    for scale in scales:
        feat = F.normalize(features[scale].float(), dim=1)
        temp = templates[scale].to(feat.device, torch.float32)
        response = correlate(feat, temp) / float(np.prod(temp.shape[2:]))
        response = F.interpolate(
            response[:, None], size=(size,) * 3, mode="trilinear", align_corners=False
        )[:, 0]
        total = response if total is None else total + response
    if total is None:
        raise ValueError("similarity_map needs at least one feature scale")
    return total + 1.0


def mss_offsets(score: torch.Tensor) -> np.ndarray:
    """Arg-max of each score map (first maximum in C order) as an offset from the patch centre.

    Args:
        score: ``(B, S, S, S)``.

    Returns:
        ``(B, 3)`` int64 offsets ``index - (S // 2 - 1)`` (the published convention).
    """
    flat = torch.argmax(score.reshape(score.shape[0], -1), dim=1).cpu().numpy()
    index = np.stack(np.unravel_index(flat, score.shape[1:]), axis=1)
    return (index - (score.shape[1] // 2 - 1)).astype(np.int64)
