"""``classic``: a weight-free box-prompted segmenter learned from the support scans.

Method (ours, not published):

1. **Fit.** For every organ, from the support images and labels: a histogram of the organ's
   Hounsfield units and one of everything else inside the organ's 3D bounding box (enlarged by
   10 mm in-plane), both on slices smoothed in-plane (Gaussian, sigma 1 pixel) and themselves
   smoothed (sigma 12 HU). They give a lookup table ``P(organ | HU)`` by Bayes' rule with equal
   priors, i.e. the likelihood ratio of "organ" against "the rest of its box" (the organ's
   actual share of its box, 5-30 %, would leave most small organs with no pixel above 0.5;
   the box centre, step 2, is the stronger prior).
2. **Segment one box on one slice.** Smooth the slice the same way, look ``P(organ | HU)`` up
   inside the box, keep pixels above 0.5, open with a 3x3 cross (cuts thin bridges to
   neighbours of similar density), keep the connected component with the largest
   ``area * exp(-d^2 / (2 s^2))`` (``d``: distance of the component's nearest pixel from the
   box centre, ``s``: a quarter of the box diagonal), give it back the pixel ring the opening
   took, fill its holes and close it with a 3x3 cross.

3. **Contrast phase of the query.** Before segmenting a query, the HU of the central half of
   each organ's boxes (all its slices) are fitted with the support organ's HU density moved by
   -300..+300 HU; a move of at least 24 HU that fits at least 1.5 times better than none is
   applied to the organ's density (the rest of its box kept) and said in one warning line per
   organ. Measured on the real test CT with liver/spleen/kidneys/aorta/IVC raised by
   60/80/150/200/120 HU (true whole-organ boxes): Dice liver 0.007 -> 0.89, spleen 0.012 ->
   0.83, right kidney 0.001 -> 0.71, aorta 0.0 -> 0.59; unchanged on the unmodified scan. With
   only liver (+60) and spleen (+80) raised, the spleen is found (0.003 -> 0.90) but the
   liver's move is not detected (its box centres hold too much else) and it stays at 0.01.
   Off by default (``[vit] classic_contrast = adapt`` turns it on, ``ClassicSegmenter(adapt=
   True)`` in Python): with boxes that miss their organs, as a poorly trained MedLAM gives,
   the fit can move the density of an organ whose phase did not change.

Good at: organs whose density differs from their surroundings (liver, spleen and kidneys on
contrast CT, bladder, bone, air-filled structures, contrast-filled vessels); tight boxes;
milliseconds per slice on a CPU with no weights, which makes it a baseline and a test backend.
Bad at: neighbours of the same density (liver/spleen/stomach wall on non-contrast CT,
pancreas, duodenum, bowel loops): the component choice then decides, and a loose box can pick
the wrong one or merge two; a contrast phase that changes an organ's neighbours unevenly; organs
smaller than a few pixels (the opening is skipped when it would erase everything); organs
with no support scan. ``encoder_calls`` and ``decoder_calls`` stay 0 (no networks).

Measured on the TotalSegmentator example CT (non-contrast, 3 mm; supports: its slices 82-111),
Dice with the true whole-organ boxes: liver 0.87, spleen 0.81, kidneys 0.76, gallbladder
0.74, aorta 0.71, stomach 0.21, pancreas 0.14; with per-slice boxes (the manual-box baseline):
liver 0.89, spleen 0.87, kidneys 0.86-0.92, gallbladder 0.84, aorta 0.80, stomach 0.82,
pancreas 0.54. About 15 ms per box and slice on one CPU core (122 x 101 slices).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medlsam.errors import InputError
from medlsam.io import Volume, label_on_image_grid
from medlsam.preprocess import slice_2d, slice_frame
from medlsam.segment.base import SegmenterStats, SliceRequest, SliceResult, to_slice_boxes

logger = logging.getLogger(__name__)

HU_RANGE = (-1024.0, 2048.0)
BIN_HU = 4.0
HIST_SIGMA_HU = 12.0
SLICE_SIGMA_PX = 1.0
BOX_MARGIN_MM = 10.0
#: Prior P(organ) inside a box; 0.5 = likelihood ratio (None: the share seen in the supports).
PRIOR: float | None = 0.5
#: At most this many voxels per organ and support enter the histograms (even subsample).
MAX_SAMPLES = 2_000_000
_CROSS = ndimage.generate_binary_structure(2, 1)
#: Contrast-phase check: HU of the central half of an organ's query boxes are fitted with the
#: support organ's HU density moved by up to +-MAX_SHIFT_HU; a move of at least MIN_SHIFT_HU
#: that fits MIN_SHIFT_GAIN times better than none is applied (with one warning per organ).
MAX_SHIFT_HU = 300.0
MIN_SHIFT_HU = 24.0
MIN_SHIFT_GAIN = 1.5
MIN_PHASE_VOXELS = 200


def _bins(hu: np.ndarray) -> np.ndarray:
    n = int((HU_RANGE[1] - HU_RANGE[0]) / BIN_HU)
    return np.clip(((hu - HU_RANGE[0]) / BIN_HU).astype(np.int64), 0, n - 1)


def _histogram(hu: np.ndarray) -> np.ndarray:
    n = int((HU_RANGE[1] - HU_RANGE[0]) / BIN_HU)
    if hu.size > MAX_SAMPLES:
        hu = hu[:: int(np.ceil(hu.size / MAX_SAMPLES))]
    return np.bincount(_bins(hu), minlength=n).astype(np.float64)


def smooth_in_plane(data: np.ndarray, axis: int) -> np.ndarray:
    """Gaussian smoothing (sigma 1 pixel) within each slice along ``axis``, float32."""
    sigma = [SLICE_SIGMA_PX] * 3
    sigma[axis] = 0.0
    return ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), sigma, mode="nearest")


@dataclass(frozen=True)
class OrganModel:
    """Intensity model of one organ.

    Attributes:
        class_id: the organ's label id.
        posterior: ``(n_bins,)`` float32 lookup table ``P(organ | HU bin)`` (4 HU bins from
            -1024 HU).
        mean_hu, std_hu: of the (smoothed) organ voxels, for reports.
        prior: the prior used in the lookup table (:data:`PRIOR`).
        p_organ, p_other: ``(n_bins,)`` float64 smoothed HU densities of the organ and of the
            rest of its box (the two sides of the lookup table).
    """

    class_id: int
    posterior: np.ndarray
    mean_hu: float
    std_hu: float
    prior: float
    p_organ: np.ndarray | None = None
    p_other: np.ndarray | None = None

    def shifted(self, bins: int) -> np.ndarray:
        """The lookup table with the organ's HU density moved by ``bins`` 4 HU bins (the rest of
        the box unchanged): the organ seen in another contrast phase."""
        assert self.p_organ is not None and self.p_other is not None
        organ = np.roll(self.p_organ, bins)
        if bins > 0:
            organ[:bins] = 1e-9
        elif bins < 0:
            organ[bins:] = 1e-9
        prior = self.prior
        return (prior * organ / (prior * organ + (1 - prior) * self.p_other)).astype(np.float32)

    def phase_shift(self, values: np.ndarray) -> int:
        """Bins by which the organ's HU density best fits ``values`` (HU inside the centres of
        its query boxes), or 0 when the support's own density fits as well (see
        :data:`MIN_SHIFT_HU`, :data:`MIN_SHIFT_GAIN`)."""
        if self.p_organ is None or values.size < MIN_PHASE_VOXELS:
            return 0
        seen = ndimage.gaussian_filter1d(_histogram(values), HIST_SIGMA_HU / BIN_HU)
        reach = int(MAX_SHIFT_HU / BIN_HU)
        fit = np.array([np.dot(seen, np.roll(self.p_organ, d)) for d in range(-reach, reach + 1)])
        best = int(np.argmax(fit)) - reach
        if abs(best) * BIN_HU < MIN_SHIFT_HU or fit[best + reach] < MIN_SHIFT_GAIN * fit[reach]:
            return 0
        return best


def fit_organ_model(
    supports: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, int]], class_id: int
) -> OrganModel | None:
    """Build one organ's model from ``(smoothed HU, label, spacing, slice axis)`` supports.

    Returns None when no support contains the organ.
    """
    organ = np.zeros(int((HU_RANGE[1] - HU_RANGE[0]) / BIN_HU))
    other = np.zeros_like(organ)
    total, mean_sum, sq_sum = 0, 0.0, 0.0
    for smoothed, label, spacing, axis in supports:
        mask = label == class_id
        found = [
            np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)
        ]
        if found[0].size == 0:
            continue
        crop = []
        for ax, idx in enumerate(found):
            margin = 0 if ax == axis else int(np.ceil(BOX_MARGIN_MM / spacing[ax]))
            crop.append(slice(max(0, idx[0] - margin), min(mask.shape[ax], idx[-1] + margin + 1)))
        region = smoothed[tuple(crop)]
        inside = mask[tuple(crop)]
        values = region[inside]
        organ += _histogram(values)
        other += _histogram(region[~inside])
        total += region.size
        mean_sum += float(values.sum(dtype=np.float64))
        sq_sum += float((values.astype(np.float64) ** 2).sum())
    n_organ = organ.sum()
    if n_organ == 0:
        return None
    sigma = HIST_SIGMA_HU / BIN_HU
    p_organ = ndimage.gaussian_filter1d(organ / n_organ, sigma) + 1e-9
    n_other = other.sum()
    p_other = ndimage.gaussian_filter1d(other / max(n_other, 1.0), sigma) + 1e-9
    prior = PRIOR if PRIOR is not None else float(np.clip(n_organ / max(total, 1), 0.05, 0.95))
    posterior = prior * p_organ / (prior * p_organ + (1 - prior) * p_other)
    mean = mean_sum / n_organ
    std = float(np.sqrt(max(sq_sum / n_organ - mean**2, 0.0)))
    return OrganModel(
        int(class_id), posterior.astype(np.float32), float(mean), std, prior, p_organ, p_other
    )


def _pick_component(fg: np.ndarray, centre: tuple[float, float], diag: float) -> np.ndarray:
    """The component of ``fg`` (2D bool) best placed near ``centre`` (row, col), or empty."""
    labels, n = ndimage.label(fg, structure=_CROSS)
    if n == 0:
        return np.zeros_like(fg)
    rows, cols = np.nonzero(labels)
    ids = labels[rows, cols]
    dist2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    nearest = np.full(n + 1, np.inf)
    np.minimum.at(nearest, ids, dist2)
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    s2 = max((diag / 4.0) ** 2, 1.0)
    score = area * np.exp(-nearest / (2 * s2))
    score[0] = -1
    return labels == int(np.argmax(score))


def segment_box(posterior: np.ndarray) -> tuple[np.ndarray, float]:
    """The organ's mask inside one box.

    Args:
        posterior: ``(h, w)`` float32 ``P(organ | pixel)`` of the box's pixels.

    Returns:
        the mask ``(h, w)`` bool and its mean probability (0 when empty).
    """
    h, w = posterior.shape
    if h == 0 or w == 0:
        return np.zeros(posterior.shape, dtype=bool), 0.0
    fg = posterior > 0.5
    opened = ndimage.binary_opening(fg, structure=_CROSS)
    base = opened if opened.any() else fg
    centre = ((h - 1) / 2.0, (w - 1) / 2.0)
    chosen = _pick_component(base, centre, float(np.hypot(h, w)))
    if base is opened:
        chosen = ndimage.binary_dilation(chosen, structure=_CROSS) & fg
    chosen = ndimage.binary_fill_holes(chosen)
    padded = np.pad(chosen, 2)
    chosen = ndimage.binary_closing(padded, structure=_CROSS)[2:-2, 2:-2]
    chosen = ndimage.binary_fill_holes(chosen)
    score = float(posterior[chosen].mean()) if chosen.any() else 0.0
    return chosen, score


class ClassicSegmenter:
    """The weight-free backend (see the module docstring). Call :meth:`fit` before use."""

    name = "classic"
    checkpoint_sha256: str | None = None

    def __init__(self, adapt: bool = False) -> None:
        self.adapt = adapt
        self.models: dict[int, OrganModel] = {}
        self.stats = SegmenterStats()

    @property
    def needs_supports(self) -> bool:
        """True until :meth:`fit` has learned an intensity model per organ."""
        return not self.models

    def fit(self, supports: Sequence[tuple[Volume, Volume]], classes: Sequence[int]) -> None:
        """Learn one intensity model per organ from support ``(image, label)`` pairs.

        Raises:
            InputError: no supports, a label not on its image's grid, or an organ that no
                support label contains.
        """
        if not supports:
            raise InputError("classic segmenter: no support scans to learn organ intensities from")
        prepared = []
        for image, label in supports:
            label = label_on_image_grid(label, image)  # flipped/permuted: reoriented
            axis = image.slice_axis()
            prepared.append((smooth_in_plane(image.data, axis), label.data, image.spacing, axis))
        models = {}
        for c in classes:
            model = fit_organ_model(prepared, int(c))
            if model is None:
                raise InputError(
                    f"class {c}: absent from every support label; the classic segmenter needs "
                    "at least one support scan with this organ"
                )
            models[int(c)] = model
            logger.debug(
                "classic: organ %d mean %.0f HU sd %.0f prior %.2f",
                c,
                model.mean_hu,
                model.std_hu,
                model.prior,
            )
        self.models = models

    def query_tables(
        self, volume: Volume, requests: Sequence[SliceRequest]
    ) -> dict[int, np.ndarray]:
        """Each requested organ's lookup table for this query: the support's, or moved to the
        HU found in the centres of the organ's boxes when the contrast phase differs."""
        axis = volume.slice_axis()
        row_axis, col_axis = slice_frame(volume.shape, axis)
        height, width = volume.shape[row_axis], volume.shape[col_axis]
        values: dict[int, list[np.ndarray]] = {}
        for request in requests:
            plane = slice_2d(volume.data, axis, request.index)
            boxes = to_slice_boxes(request.boxes, height, width)
            for c, (x0, y0, x1, y1) in zip(request.classes, boxes):
                dy, dx = (y1 - y0) / 4.0, (x1 - x0) / 4.0
                r0, r1 = int(np.ceil(y0 + dy)), int(np.floor(y1 - dy)) + 1
                c0, c1 = int(np.ceil(x0 + dx)), int(np.floor(x1 - dx)) + 1
                centre = plane[max(r0, 0) : min(r1, height), max(c0, 0) : min(c1, width)]
                values.setdefault(int(c), []).append(np.asarray(centre, np.float32).ravel())
        tables = {}
        for c, parts in values.items():
            model = self.models.get(c)
            if model is None:
                continue
            shift = model.phase_shift(np.concatenate(parts))
            tables[c] = model.shifted(shift) if shift else model.posterior
            if shift:
                logger.warning(
                    "%s: organ %d: HU inside its boxes fit the support scans' %+.0f HU off "
                    "(another contrast phase?); its intensity model is moved for this query",
                    volume.name,
                    c,
                    shift * BIN_HU,
                )
        return tables

    def segment(self, volume: Volume, requests: Sequence[SliceRequest]) -> Iterator[SliceResult]:
        """Segment every request; boxes are taken back from the 1024 frame to slice pixels."""
        axis = volume.slice_axis()
        row_axis, col_axis = slice_frame(volume.shape, axis)
        height, width = volume.shape[row_axis], volume.shape[col_axis]
        for request in requests:
            missing = [int(c) for c in request.classes if int(c) not in self.models]
            if missing:
                raise InputError(f"class {missing[0]}: the classic segmenter was not fitted on it")
        tables = self.query_tables(volume, requests) if self.adapt else {}
        for request in requests:
            began = time.perf_counter()
            plane = slice_2d(volume.data, axis, request.index).astype(np.float32)
            smoothed = ndimage.gaussian_filter(plane, SLICE_SIGMA_PX, mode="nearest")
            bins = _bins(smoothed)
            boxes = to_slice_boxes(request.boxes, height, width)
            n = len(request)
            masks = np.zeros((n, height, width), dtype=bool)
            probs = np.zeros((n, height, width), dtype=np.float32)
            scores = np.zeros(n, dtype=np.float32)
            for b, (c, (x0, y0, x1, y1)) in enumerate(zip(request.classes, boxes)):
                r0, c0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
                r1, c1 = min(height, int(np.floor(y1)) + 1), min(width, int(np.floor(x1)) + 1)
                if r1 <= r0 or c1 <= c0:
                    continue
                table = tables.get(int(c), self.models[int(c)].posterior)
                posterior = table[bins[r0:r1, c0:c1]]
                masks[b, r0:r1, c0:c1], scores[b] = segment_box(posterior)
                probs[b, r0:r1, c0:c1] = posterior
            self.stats.slices += 1
            self.stats.boxes += n
            self.stats.add_time("classic", time.perf_counter() - began)
            yield SliceResult(request.index, masks, scores, probs)


def build_classic_segmenter(
    checkpoint: object = None, device: object = "cpu", adapt: bool = False, **_: object
) -> ClassicSegmenter:
    """The registry builder: no checkpoint, no device (numpy on the CPU); ``adapt`` is
    ``[vit] classic_contrast = adapt``."""
    if checkpoint is not None:
        logger.info("classic segmenter: [weight] vit_load_path %s is not used", checkpoint)
    return ClassicSegmenter(adapt=adapt)
