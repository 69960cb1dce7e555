"""Where two scans meet along the body axis, found by image content: the start of each
registration of :mod:`medlsam.localization.atlas` (step 2 of
:mod:`medlsam.localization.registration`), and the correlations that decide whether a
support matches a query at all.

Scanner coordinates of two scans need not agree (another scanner, a re-based origin, a crop
that kept its parent's affine), so the offset comes from the body: its in-plane centre per
slice, and along the body axis the slice offset whose overlap correlates best inside the
query's body, on a 6 mm in-plane grid. Arrays are ``(Z, Y, X)`` medlam-normalised on ~3 mm
grids (:func:`medlsam.preprocess.medlam_image`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Medlam-normalised value above which a voxel is body (about -500 HU).
BODY_LEVEL = 0.125
#: In-plane block size of the body-axis search (2 -> 6 mm).
SEARCH_BLOCK = 2


def body_mask(array: np.ndarray) -> np.ndarray:
    """Body voxels of a medlam-normalised ``(Z, Y, X)`` array (per-slice holes filled)."""
    mask = array > BODY_LEVEL
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    return mask


def _blocks(array: np.ndarray, block: int) -> np.ndarray:
    """Mean over ``block x block`` in-plane blocks of a ``(Z, Y, X)`` array (edges cropped)."""
    z, y, x = array.shape
    y, x = y // block * block, x // block * block
    a = array[:, :y, :x].reshape(z, y // block, block, x // block, block)
    return a.mean(axis=(2, 4))


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation of two equal-size value sets (0 when either is flat)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def axis_search(query: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, float]:
    """Best offset of ``support`` against ``query`` (both ``(Z, Y, X)`` on ~3 mm grids).

    Returns ``(offset, score)``: ``offset`` ``(dz, dy, dx)`` in 3 mm voxels such that query
    voxel ``v`` meets support voxel ``v + offset``, and the correlation inside the query's body
    over the overlap (``-1`` when no offset overlaps enough).
    """
    b = SEARCH_BLOCK
    q, s = _blocks(query, b), _blocks(support, b)
    qb, sb = body_mask(q), body_mask(s)
    q_centre = _slice_centres(qb)
    s_centre = _slice_centres(sb)
    nq, ns = len(q), len(s)
    need = max(3, int(np.ceil(0.5 * min(nq, ns))))
    pad = max(s.shape[1:])
    s_pad = np.pad(s, ((0, 0), (pad, pad), (pad, pad)))
    best, best_offset = -1.0, np.zeros(3)
    for dz in range(-nq + need, ns - need + 1):
        k0, k1 = max(0, -dz), min(nq, ns - dz)
        qc, sc = q_centre[k0:k1], s_centre[k0 + dz : k1 + dz]
        ok = np.isfinite(qc[:, 0]) & np.isfinite(sc[:, 0])
        if ok.sum() < need:
            continue
        shift = np.rint((sc[ok] - qc[ok]).mean(axis=0)).astype(int)
        y0, x0 = pad + shift[0], pad + shift[1]
        window = s_pad[k0 + dz : k1 + dz, y0 : y0 + q.shape[1], x0 : x0 + q.shape[2]]
        if window.shape != q[k0:k1].shape:
            continue
        inside = qb[k0:k1]
        score = ncc(q[k0:k1][inside], window[inside])
        if score > best:
            best, best_offset = score, np.array([dz, shift[0] * b, shift[1] * b], dtype=float)
    return best_offset, best


def _slice_centres(mask: np.ndarray) -> np.ndarray:
    """In-plane centre ``(y, x)`` of each slice's body mask, NaN for empty slices."""
    out = np.full((len(mask), 2), np.nan)
    for z, plane in enumerate(mask):
        ys, xs = np.nonzero(plane)
        if ys.size >= 4:
            out[z] = ys.mean(), xs.mean()
    return out
