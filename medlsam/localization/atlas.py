"""One support scan (an atlas) registered to one query: the per-pair work of
:class:`medlsam.localization.registration.RegistrationLocalizer` (its module docstring says
what each step does and why).

Everything here is picklable, so
:class:`~medlsam.localization.registration.RegistrationLocalizer` runs it in worker
processes: SimpleITK keeps the GIL while it runs (two threads, each smoothing a volume with
one ITK thread, take as long as one thread doing both), so threads would not run two
registrations at once.

**One ITK thread.** Parts of an ITK registration take their threads from ITK's global
default, whatever the registration method is told, and their sums then depend on how the
work was split and in what order it finished: on 2 threads, five registrations of one
synthetic query gave other transforms (by about 1e-6 mm) in every run, and in two runs of the
demo one organ's box in one query moved by up to 3.5 mm. So every pair runs with
the global default at one thread (:func:`one_itk_thread`, restored afterwards): a pair gives
the same result in every run, on every machine, whatever the number of workers (tested).

Frames: a support's arrays and the query's are ``(Z, Y, X)`` on their own 3 mm LAS grids
(:func:`medlsam.preprocess.medlam_image`), placed in LAS millimetres by a :class:`Frame`;
warped masks are on the query's grid padded by :data:`~medlsam.preprocess.PAD` voxels.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medlsam.config import REGISTRATION_REFINES
from medlsam.errors import RegistrationError
from medlsam.io import Volume
from medlsam.localization.prototypes import bounding_box, support_points
from medlsam.localization.search import axis_search, body_mask, ncc
from medlsam.preprocess import PAD, MedlamInput, medlam_image, medlam_label

#: Normalised cross-correlation inside the query's body below which a support does not match.
MIN_MATCH = 0.2
#: Scales an affine may reach before it counts as not converged.
SCALE_RANGE = (0.5, 2.0)
#: Margin (3 mm voxels) around an organ's warped box that its local search looks at.
LOCAL_MARGIN = 5
#: Voxels (3 mm) around the support's organ that its local metric looks at (0: no limit).
LOCAL_SHELL = 3
#: Exhaustive local search, coarse to fine: (steps each way per axis, 3 mm voxels per step).
LOCAL_STEPS = ((2, 2), (1, 1))
#: Random samples of the local metric (fewer query voxels: all of them).
LOCAL_SAMPLES = 8000
#: Fewest query voxels the local region must hold (else the global affine stands).
LOCAL_MIN_VOXELS = 200
#: Levels of the global affine (shrink factors of the 3 mm grid: 12 mm, then 6 mm).
SHRINK = [4, 2]
#: Random samples of the global metric per level.
SAMPLES = 20_000

_itk_lock = threading.Lock()
_F = TypeVar("_F", bound=Callable)


@contextmanager
def one_itk_thread() -> Iterator[None]:
    """ITK's global default number of threads set to 1 inside the block, restored after (see
    the module docstring; nests)."""
    with _itk_lock:
        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        with _itk_lock:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def _on_one_itk_thread(method: _F) -> _F:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with one_itk_thread():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Frame:
    """A 3 mm LAS grid in LAS millimetres: ``p = origin + spacing * (x, y, z)`` (SimpleITK
    order, index ``(x, y, z)`` of the ``(z, y, x)`` array)."""

    origin: np.ndarray
    spacing: np.ndarray

    @classmethod
    def of(cls, volume: Volume, grid: MedlamInput) -> Frame:
        """The frame of ``grid`` (the 3 mm LAS view of ``volume``) from ``volume``'s affine."""
        zyx = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=np.float64)
        world = volume.to_world(grid.to_file_index(zyx)) * np.array([-1.0, 1.0, 1.0])  # RAS->LAS
        spacing = np.abs(np.diag(world[1:] - world[0])).copy()
        spacing = np.where(spacing > 1e-6, spacing, 3.0)
        return cls(world[0], spacing)

    def image(self, array: np.ndarray, pad: int = 0, start: np.ndarray | None = None) -> sitk.Image:
        """``array`` on this frame, padded by ``pad`` voxels, or a crop whose first voxel is
        ``start`` ``(z, y, x)``."""
        img = sitk.GetImageFromArray(np.pad(array, pad) if pad else array)
        img.SetSpacing(self.spacing.tolist())
        first = -pad if start is None else np.asarray(start, dtype=np.float64)[::-1]
        img.SetOrigin((self.origin + first * self.spacing).tolist())
        return img


@dataclass(frozen=True)
class Level:
    """One level of the global affine's pyramid: an image smoothed and shrunk, in LAS mm."""

    array: np.ndarray  # (Z, Y, X) float32
    origin: np.ndarray
    spacing: np.ndarray

    def image(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetOrigin(self.origin.tolist())
        img.SetSpacing(self.spacing.tolist())
        return img


def pyramid(array: np.ndarray, frame: Frame) -> tuple[Level, ...]:
    """The levels of the global affine for a 3 mm image: for each factor ``f`` of
    :data:`SHRINK`, Gaussian smoothing (sigma ``f / 2`` voxels; recursive, or a kernel for an
    image under 4 voxels along an axis) then every ``f``-th voxel (at least one)."""
    image = frame.image(np.asarray(array, dtype=np.float32))
    short = min(array.shape) < 4  # the recursive filter needs 4 voxels along every axis
    levels = []
    for f in SHRINK:
        sigma = frame.spacing * f / 2.0
        if short:
            smooth = sitk.DiscreteGaussian(image, (sigma**2).tolist(), 32, 0.01, True)
        else:
            smooth = sitk.SmoothingRecursiveGaussian(image, sigma.tolist())
        small = sitk.Shrink(smooth, [f] * 3)
        levels.append(
            Level(
                sitk.GetArrayFromImage(small),
                np.array(small.GetOrigin()),
                np.array(small.GetSpacing()),
            )
        )
    return tuple(levels)


@dataclass
class Atlas:
    """One support scan on its 3 mm LAS grid, and the levels of its global affine."""

    name: str
    image: np.ndarray  # (Z, Y, X) float32, medlam-normalised
    label: np.ndarray  # (Z, Y, X), requested classes only, the smallest integer type for them
    frame: Frame
    levels: tuple[Level, ...] = ()

    def __post_init__(self) -> None:
        if not self.levels:
            with one_itk_thread():
                self.levels = pyramid(self.image, self.frame)

    @classmethod
    def of(cls, image: Volume, label: Volume, classes: Sequence[int]) -> Atlas:
        """A support pair on its 3 mm LAS grid (labels by nearest neighbour, as MedLAM's)."""
        grid = medlam_image(image, "linear")
        lab = medlam_label(label, classes, grid)
        small = lab.astype(np.min_scalar_type(max([0, *classes])))
        return cls(image.name, grid.array, small, Frame.of(image, grid))


@dataclass
class Match:
    """How one support met one query: the transform (query mm -> support mm) and its scores."""

    support: str
    transform: sitk.Transform | None
    search_score: float
    score: float
    seconds: float
    cpu: float = 0.0  # CPU seconds of the process that ran the pair

    @property
    def matched(self) -> bool:
        return self.transform is not None and self.score >= MIN_MATCH


@dataclass
class Placed:
    """The organs of one support placed on a query (:meth:`Registrar.organs`): class id ->
    its reduced masks, and the wall and CPU seconds taken."""

    masks: dict[int, list[Reduced]]
    seconds: float
    cpu: float


@dataclass(frozen=True)
class Reduced:
    """One warped organ mask reduced to what fusion needs: its points (``(groups * 6, 3)`` on
    the padded grid), and for ``vote`` the mask cropped to its bounding box, first voxel
    ``start``, of a grid of ``shape``."""

    points: np.ndarray
    shape: tuple[int, int, int]
    start: tuple[int, int, int] = (0, 0, 0)
    crop: np.ndarray | None = None

    @classmethod
    def of(cls, mask: np.ndarray, splits: int, crop: bool) -> Reduced:
        """``mask`` (bool, not empty) reduced; ``crop``: keep its voxels too. The points are
        taken on the mask's bounding box (the same points: every rule of
        :func:`~medlsam.localization.prototypes.support_points` moves with the organ), a
        fraction of the time on a padded grid."""
        box = bounding_box(mask)
        if box is None:
            raise ValueError("cannot reduce an empty mask")
        lo, hi = box
        cut = mask[tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))]
        points = support_points(cut, splits) + lo
        shape = tuple(int(n) for n in mask.shape)
        start = tuple(int(a) for a in lo)
        return cls(points, shape, start, cut.copy() if crop else None)  # type: ignore[arg-type]


def _mattes(share: float, seed: int) -> sitk.ImageRegistrationMethod:
    """A registration on Mattes mutual information (32 bins, linear interpolation) over
    ``share`` of the fixed voxels, drawn at random with ``seed`` (all of them at 1)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM if share < 1 else method.NONE)
    method.SetMetricSamplingPercentage(share, seed)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _mi_method(share: float, seed: int, iterations: int, step: float):
    """A Mattes-MI affine registration by regular step gradient descent (:func:`_mattes`)."""
    method = _mattes(share, seed)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step,
        minStep=1e-3,
        numberOfIterations=iterations,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    return method


def _moved(mask: np.ndarray, move: np.ndarray) -> np.ndarray:
    """``mask`` read ``move`` voxels ``(z, y, x)`` further: ``out[v] = mask[v + move]``
    (zero where that falls outside)."""
    out = np.zeros_like(mask)
    src = tuple(slice(max(m, 0), n + min(m, 0)) for m, n in zip(move, mask.shape, strict=True))
    dst = tuple(slice(max(-m, 0), n - max(m, 0)) for m, n in zip(move, mask.shape, strict=True))
    out[dst] = mask[src]
    return out


def _scales(transform: sitk.AffineTransform) -> np.ndarray:
    return np.linalg.svd(np.array(transform.GetMatrix()).reshape(3, 3), compute_uv=False)


@dataclass
class Registrar:
    """How a support meets a query (the settings of
    :class:`~medlsam.localization.registration.RegistrationLocalizer`).

    Args:
        seed: seed of the metrics' random sampling.
        iterations: optimizer iterations per level of the global affine.
        refine: ``organ`` (a local translation per organ after the global affine), ``both``
            (each organ's mask before and after it) or ``none``.
    """

    seed: int = 2023
    iterations: int = 100
    refine: str = "both"

    def __post_init__(self) -> None:
        if self.refine not in REGISTRATION_REFINES:
            raise ValueError(f"refine must be one of {REGISTRATION_REFINES}, not {self.refine!r}")

    @_on_one_itk_thread
    def register(
        self,
        query: np.ndarray,
        q_frame: Frame,
        atlas: Atlas,
        levels: Sequence[Level] | None = None,
    ) -> Match:
        """Register ``atlas`` to ``query`` (``(Z, Y, X)`` medlam-normalised on ``q_frame``;
        ``levels``: its :func:`pyramid`, made here when not given).

        Raises:
            RegistrationError: the registration raised, or its scales left
                :data:`SCALE_RANGE` (did not converge).
        """
        began, cpu = time.perf_counter(), time.process_time()
        offset, search = axis_search(query, atlas.image)
        if search < MIN_MATCH:
            seconds = time.perf_counter() - began
            return Match(atlas.name, None, search, search, seconds, time.process_time() - cpu)
        # query voxel v meets support voxel v + offset: query mm p -> support mm p + t
        t = atlas.frame.origin - q_frame.origin + atlas.frame.spacing * offset[::-1]
        dz = int(offset[0])
        k0, k1 = max(0, -dz), min(len(query), len(atlas.image) - dz)
        centre = (
            q_frame.origin
            + q_frame.spacing * (np.array([query.shape[2], query.shape[1], k0 + k1]) - 1) / 2.0
        )
        affine = sitk.AffineTransform(3)
        affine.SetCenter(centre.tolist())
        affine.SetTranslation(t.tolist())
        overlap = np.zeros(query.shape, dtype=np.uint8)
        overlap[k0:k1] = 1
        overlap_image = q_frame.image(overlap)
        levels = levels or pyramid(query, q_frame)
        for f, fixed, moving in zip(SHRINK, levels, atlas.levels, strict=True):
            mask = sitk.Shrink(overlap_image, [f] * 3)
            voxels = max(int(sitk.GetArrayViewFromImage(mask).sum()), 1)
            method = _mi_method(min(1.0, SAMPLES / voxels), self.seed, self.iterations, 2.0)
            method.SetMetricFixedMask(mask)
            method.SetInitialTransform(affine, inPlace=True)
            try:
                method.Execute(fixed.image(), moving.image())
            except RuntimeError as err:
                reason = str(err).strip().splitlines()[-1][:200]
                raise RegistrationError(
                    f"registration of support {atlas.name} did not converge: {reason}"
                ) from err
        scales = _scales(affine)
        if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
            raise RegistrationError(
                f"registration of support {atlas.name} did not converge: affine scales "
                f"{np.round(scales, 2).tolist()} outside {list(SCALE_RANGE)} "
                f"({method.GetOptimizerStopConditionDescription()})"
            )
        full = (q_frame.image(query), atlas.frame.image(atlas.image))
        score = after_score(query, *full, affine)
        seconds = time.perf_counter() - began
        return Match(atlas.name, affine, search, score, seconds, time.process_time() - cpu)

    @_on_one_itk_thread
    def organs(
        self,
        query: np.ndarray,
        q_frame: Frame,
        atlas: Atlas,
        transform: sitk.Transform,
        splits: dict[int, int],
        crop: bool = False,
    ) -> Placed:
        """Each organ of ``splits`` (class id -> SPL parts) that ``atlas`` places on the
        query: its warped mask after the global ``transform`` (``refine`` ``none`` and
        ``both``) and after its local move (``organ`` and ``both``), each :class:`Reduced`
        (``crop``: with its voxels, for ``vote``)."""
        began, cpu = time.perf_counter(), time.process_time()
        warped = warp_labels(atlas, q_frame, query.shape, transform)
        found: dict[int, list[Reduced]] = {}
        for c, parts in splits.items():
            mask = warped == c
            if not mask.any():
                continue
            kept = found[c] = []
            if self.refine != "organ":
                kept.append(Reduced.of(mask, parts, crop))
            if self.refine != "none":
                moved = self.refine_organ(query, q_frame, atlas, transform, mask, c)
                if moved.any():
                    kept.append(Reduced.of(moved, parts, crop))
        return Placed(found, time.perf_counter() - began, time.process_time() - cpu)

    @_on_one_itk_thread
    def refine_organ(
        self,
        query: np.ndarray,
        q_frame: Frame,
        atlas: Atlas,
        transform: sitk.Transform,
        warped: np.ndarray,
        c: int,
    ) -> np.ndarray:
        """One organ's mask on the padded grid after a local translation: organs of two
        subjects move against each other, which one affine cannot follow. The translation is
        searched exhaustively (:data:`LOCAL_STEPS`, whole 3 mm voxels; gradient descent stalls
        on such small regions), Mattes MI between the query within :data:`LOCAL_MARGIN` of the
        organ's warped box (``warped``, after the global ``transform``) and the support's
        organ with a :data:`LOCAL_SHELL` shell; the warped mask then moves by the same voxels.
        ``warped`` stands when the region is under :data:`LOCAL_MIN_VOXELS` or the search
        raises."""
        box, s_box = bounding_box(warped), bounding_box(atlas.label == c)
        if box is None or s_box is None:
            return warped
        top = np.array(query.shape) - 1
        lo = np.clip(box[0] - PAD - LOCAL_MARGIN, 0, top)
        hi = np.clip(box[1] - PAD + LOCAL_MARGIN, 0, top)
        roi = query[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
        if roi.size < LOCAL_MIN_VOXELS:
            return warped
        s_lo = np.maximum(s_box[0] - LOCAL_SHELL - 1, 0)
        s_hi = np.minimum(s_box[1] + LOCAL_SHELL + 1, np.array(atlas.label.shape) - 1)
        cut = tuple(slice(a, b + 1) for a, b in zip(s_lo, s_hi, strict=True))
        organ = ndimage.binary_dilation(atlas.label[cut] == c, iterations=LOCAL_SHELL)
        local = sitk.CompositeTransform(
            [sitk.AffineTransform(transform), sitk.TranslationTransform(3)]
        )
        share = min(1.0, LOCAL_SAMPLES / roi.size)
        for steps, voxels in LOCAL_STEPS:
            method = _mattes(share, self.seed)
            method.SetMetricUseFixedImageGradientFilter(False)  # no gradients in an
            method.SetMetricUseMovingImageGradientFilter(False)  # exhaustive search
            method.SetMetricMovingMask(atlas.frame.image(organ.astype(np.uint8), start=s_lo))
            method.SetOptimizerAsExhaustive([steps] * 3, stepLength=voxels)
            method.SetOptimizerScales(q_frame.spacing.tolist())  # steps of whole voxels
            method.SetInitialTransform(local, inPlace=True)
            try:
                method.Execute(
                    q_frame.image(roi, start=lo),
                    atlas.frame.image(atlas.image[cut], start=s_lo),
                )
            except RuntimeError:
                return warped
        offset = np.array(local.GetNthTransform(1).GetParameters())  # mm, (x, y, z)
        move = np.rint(offset / q_frame.spacing)[::-1].astype(int)
        return _moved(warped, move)


def after_score(
    query: np.ndarray, fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform
) -> float:
    """Correlation inside the query's body where the warped support has data."""
    warped = sitk.GetArrayFromImage(
        sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1.0, sitk.sitkFloat32)
    )
    keep = body_mask(query) & (warped >= 0)
    if keep.sum() < 64:
        return -1.0
    return ncc(query[keep], warped[keep])


def warp_labels(
    atlas: Atlas, q_frame: Frame, shape: Sequence[int], transform: sitk.Transform
) -> np.ndarray:
    """The support's labels on the query's PADDED 3 mm grid ``(Z+64, Y+64, X+64)`` int32."""
    reference = q_frame.image(np.zeros(tuple(shape), dtype=np.uint8), pad=PAD)
    moving = atlas.frame.image(atlas.label.astype(np.int32))
    warped = sitk.Resample(
        moving, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32
    )
    return sitk.GetArrayFromImage(warped)
