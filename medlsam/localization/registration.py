"""Weight-free localization by atlas registration: each support scan is registered to the query.

:class:`RegistrationLocalizer` has the interface of the MedLAM localizer (``fit`` on support
image/label pairs, ``predict(volume) -> {class id: OrganBoxes}``) and needs no network weights.
For each query and each support scan:

1. **Grids.** Both scans go to MedLAM's 3 mm LAS grid (:func:`medlsam.preprocess.medlam_image`,
   HU mapped piecewise to [0, 1]); a physical frame in LAS millimetres comes from each file's
   affine.
2. **Search along the body axis.** Scanner coordinates of two scans need not agree (another
   scanner, a re-based origin, a crop that kept the old affine), so the start comes from image
   content: the body's in-plane centre (physical coordinates, from each slice's body mask) and,
   along the body axis, the slice offset whose overlap has the highest normalised
   cross-correlation inside the query's body, on a 6 mm in-plane grid. At least half of the
   shorter scan (and 3 slices) must overlap (:mod:`medlsam.localization.search`). A query
   that matches nowhere (best correlation below :data:`MIN_MATCH`) is "no match" for that
   support.
3. **Affine.** SimpleITK, Mattes mutual information (32 bins, 20,000 random samples per level),
   regular step gradient descent, 12 parameters, the metric restricted to the query slices
   found to overlap; mutual information tolerates contrast-phase differences. Two levels,
   each its own registration starting where the last ended, on both scans smoothed (Gaussian,
   sigma half the factor) and shrunk to 12 mm, then 6 mm voxels
   (:func:`~medlsam.localization.atlas.pyramid`): a support's levels are made once at
   :meth:`~RegistrationLocalizer.fit`, a query's once per query. (ITK's own multi-resolution
   driver smooths the full 3 mm images, and the moving image's gradient, again for every pair
   and level: 2.5 of the 4.9 s of CPU of one pair's affine. A 3 mm last level cost 1.7x the
   time for no better boxes on a synthetic pair; a further per-organ local affine, 2.5x the
   time, gave none either: box IoU 0.532 -> 0.542 on one pair.)
   A registration that raises, or ends with a scale outside ``[0.5, 2]``, is a
   :class:`RegistrationError` (the case fails with that reason). The correlation inside the
   query's body after the affine must again reach :data:`MIN_MATCH`, else "no match".
   **Per organ** (``refine``): organs of two subjects also move against each other, which
   one affine cannot follow. After the global affine, each organ's translation is searched
   exhaustively (6 mm steps over +-12 mm, then 3 mm over +-3 mm), Mattes MI between the query
   voxels within 15 mm of the organ's warped box and the support's organ with a 9 mm shell
   (gradient descent stalls on such small regions). ``both`` (the default) gives the fusion
   each support's organ mask before AND after that move (two masks per support), so a move
   that follows the wrong structure (an organ whose surroundings share its intensities) is
   outvoted rather than taken; ``organ`` keeps only the moved mask, ``none`` only the
   global one. Mean box IoU on 12 synthetic queries (5 supports, median fusion): ``none``
   0.660, ``organ`` 0.700, ``both`` 0.703 (the pancreas: 0.733, 0.599, 0.719).
4. **Labels.** Each organ's support label is warped to the query's grid, padded by 32 voxels as
   MedLAM's is (nearest neighbour), so an organ partly outside the field of view keeps its
   shape; its six extreme points (WPL) or SPL split points are taken as MedLAM takes a
   support's (:func:`medlsam.prototypes.support_points`, SPL parts counted from the supports).
5. **Fusion** of the supports that matched: ``median`` (per-coordinate median of the points,
   i.e. of the box corners; the default) or ``vote`` (points of the voxels that at least half
   of the warped labels give the organ). Each warped mask is reduced on arrival to its points
   (and, for ``vote``, to a per-voxel count of masks), so memory does not grow with the
   number of supports. With ``refine = both`` and 5 supports, mean box IoU 0.703 (median) vs
   0.688 (vote) on 12 synthetic queries.

**Workers.** The pairs run in worker processes (``workers``, default one per CPU this process
may use, at most one per support; SimpleITK keeps the GIL, so threads would run one
registration at a time): each support's global affine is one task, and as soon as it is done,
its organs' warping, local searches and reduction are a second task, so the cores stay busy
to the end of a query. The per-pair code (:mod:`medlsam.localization.atlas`) runs on one ITK
thread, so its results do not change from run to run nor with the number of workers
(tested). The pool is started once per process and kept (:func:`worker_pool`). A script that
uses this localizer must start from ``if __name__ == "__main__":``, since the workers are
spawned and import it (or pass ``workers=1``).

Boxes go back to the query file's voxels exactly as MedLAM's do. An organ that no matching
support places inside the query is ``inside=False`` with one warning line.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from medlsam.boxes import Box3D, OrganBoxes, box_overlaps, group_box
from medlsam.config import REGISTRATION_FUSIONS, BoxMode
from medlsam.errors import InputError, RegistrationError
from medlsam.io import Volume, same_grid
from medlsam.localization.atlas import (
    MIN_MATCH,
    Atlas,
    Frame,
    Level,
    Match,
    Placed,
    Reduced,
    Registrar,
    one_itk_thread,
    pyramid,
)
from medlsam.localization.prototypes import bounding_box, split_count, support_points
from medlsam.localization.search import axis_search  # noqa: F401 (a public name here too)
from medlsam.preprocess import PAD, MedlamInput, medlam_image

logger = logging.getLogger(__name__)


_pool: ProcessPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def default_workers() -> int:
    """The CPUs this process may run on, shared among the processes ``torchrun`` started on
    this node (``LOCAL_WORLD_SIZE``), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return max(1, cpus // ranks)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of the registrations, ``workers`` processes, started on first use and
    kept for the process (spawned: never fork a process that runs torch's threads); another
    number of ``workers`` replaces it."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            context = multiprocessing.get_context("spawn")
            _pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start)
            _pool_size = workers
        return _pool


def _worker_start() -> None:
    """In each worker: Ctrl-C is for the main process, which stops the run cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool (the next :func:`worker_pool` starts a new one)."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


class RegistrationLocalizer:
    """Localize organs by registering every support scan to the query (module docstring).

    Args:
        mode: WPL (one box per organ) or SPL (sub-boxes along the body axis).
        slice_interval: SPL split interval in 3 mm voxels (None for WPL).
        fusion: ``median`` (per-corner median over supports) or ``vote`` (majority of warped
            labels).
        seed: seed of the metric's random sampling.
        iterations: optimizer iterations per level.
        class_names: organ names for messages.
        refine: ``organ`` (a local translation per organ after the global affine), ``both``
            (each support's organ mask before and after it) or ``none``.
        workers: processes running the pairs (default :func:`default_workers`; never more
            than the supports); 1 runs them one after the other in this process.
    """

    name = "registration"
    fingerprint: str | None = None  # no weights

    def __init__(
        self,
        mode: BoxMode | str = BoxMode.WPL,
        slice_interval: int | None = None,
        fusion: str = "median",
        seed: int = 2023,
        iterations: int = 100,
        class_names: dict[int, str] | None = None,
        refine: str = "both",
        workers: int | None = None,
    ) -> None:
        if fusion not in REGISTRATION_FUSIONS:
            raise ValueError(f"fusion must be one of {REGISTRATION_FUSIONS}, not {fusion!r}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.mode = BoxMode(mode)
        self.slice_interval = slice_interval
        self.fusion = fusion
        self.registrar = Registrar(int(seed), int(iterations), refine)  # checks refine
        self.workers = int(workers or default_workers())
        self.class_names = dict(class_names or {})
        self.atlases: list[Atlas] = []
        self.classes: list[int] = []
        self.splits: dict[int, int] = {}
        self.last_matches: list[Match] = []

    def _organ(self, c: int) -> str:
        name = self.class_names.get(c)
        return f"organ {c} ({name})" if name else f"organ {c}"

    def pair_workers(self) -> int:
        """Processes the pairs run in: :attr:`workers`, at most one per support (1: this
        process)."""
        return min(self.workers, max(len(self.atlases), 1))

    def _pool(self) -> ProcessPoolExecutor | None:
        """The worker pool, or None to run the pairs in this process."""
        workers = self.pair_workers()
        return worker_pool(workers) if workers > 1 else None

    def fit(self, supports: Iterable[tuple[Volume, Volume]], classes: Sequence[int]) -> None:
        """Keep each support pair on its 3 mm LAS grid (one full-resolution pair at a time),
        and start the worker processes.

        Raises:
            InputError: no supports, a label off its image's grid, or an organ in no support.
        """
        self.classes = [int(c) for c in classes]
        atlases = []
        for image, label in supports:
            if not same_grid(image, label):
                raise InputError(
                    f"{label.path or label.name}: label grid {label.shape} does not match its "
                    f"image {image.path or image.name} {image.shape} "
                    "(same shape and affine expected)"
                )
            atlases.append(Atlas.of(image, label, self.classes))
        if not atlases:
            raise InputError("no support scans given (need support images and labels)")
        extents: dict[int, list[int]] = {c: [] for c in self.classes}
        for atlas in atlases:
            for c in self.classes:
                box = bounding_box(atlas.label == c)
                if box is not None:
                    extents[c].append(int(box[1][0] - box[0][0]))
        absent = [c for c in self.classes if not extents[c]]
        if absent:
            names = ", ".join(a.name for a in atlases)
            raise InputError(
                f"{self._organ(absent[0])} is absent from every support label map ({names}); "
                "remove it from fg_class or add a support scan that contains it"
            )
        self.splits = {
            c: split_count(min(extents[c]), self.slice_interval, self.mode) for c in self.classes
        }
        self.atlases = atlases
        pool = self._pool()
        if pool is not None:  # start the workers while the first query is read
            for _ in range(self.pair_workers()):
                pool.submit(int)

    # ----------------------------------------------------------------------------------------

    def support_organs(
        self, grid: MedlamInput, q_frame: Frame, fusions: Sequence[str] | None = None
    ) -> dict[int, Gathered]:
        """Each matching support's warped mask of each organ on the query's PADDED 3 mm grid
        (after the global affine; the organ's local move with ``refine = organ``; both masks
        with ``refine = both``), reduced to what ``fusions`` (this localizer's by default)
        need: points, and a vote count only for ``vote``. Matches in :attr:`last_matches`, in
        support order."""
        if not self.atlases:
            raise RuntimeError("RegistrationLocalizer has no supports: call fit() first")
        count = "vote" in (fusions or (self.fusion,))
        gathered = {c: Gathered(self.splits[c], count) for c in self.classes}
        with one_itk_thread():
            levels = pyramid(grid.array, q_frame)
        pool = self._pool()
        if pool is None:
            matches = [
                self._pair(grid.array, q_frame, levels, atlas, gathered, count)
                for atlas in self.atlases
            ]
        else:
            matches = self._pairs_in(pool, grid.array, q_frame, levels, gathered, count)
        self.last_matches = matches
        return gathered

    def _pair(
        self,
        query: np.ndarray,
        q_frame: Frame,
        levels: tuple[Level, ...],
        atlas: Atlas,
        gathered: dict[int, Gathered],
        count: bool,
    ) -> Match:
        """One pair in this process."""
        match = self.registrar.register(query, q_frame, atlas, levels)
        if match.matched:
            placed = self.registrar.organs(
                query, q_frame, atlas, match.transform, self.splits, count
            )
            _take(gathered, match, placed)
        return match

    def _pairs_in(
        self,
        pool: ProcessPoolExecutor,
        query: np.ndarray,
        q_frame: Frame,
        levels: tuple[Level, ...],
        gathered: dict[int, Gathered],
        count: bool,
    ) -> list[Match]:
        """All pairs in ``pool``: every registration first, each support's organs as soon as
        its registration is done (medians and vote counts do not depend on arrival order)."""
        matches: list[Match | None] = [None] * len(self.atlases)
        pending: dict[Future, int] = {
            pool.submit(self.registrar.register, query, q_frame, atlas, levels): n
            for n, atlas in enumerate(self.atlases)
        }
        organs: set[Future] = set()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    n = pending.pop(future)
                    if future in organs:
                        _take(gathered, matches[n], future.result())  # type: ignore[arg-type]
                        continue
                    match = matches[n] = future.result()
                    if match.matched:
                        task = pool.submit(
                            self.registrar.organs,
                            query,
                            q_frame,
                            self.atlases[n],
                            match.transform,
                            self.splits,
                            count,
                        )
                        pending[task] = n
                        organs.add(task)
        except BrokenProcessPool as err:
            _discard_pool(pool)
            raise RegistrationError(
                f"a registration worker process stopped ({err}); a script that runs this "
                "localizer must start from `if __name__ == '__main__':` (workers are spawned "
                "and import it), or use workers=1"
            ) from err
        finally:
            for future in pending:
                future.cancel()
        return matches  # type: ignore[return-value]

    def fuse(
        self, gathered: dict[int, Gathered], fusion: str | None = None
    ) -> dict[int, np.ndarray | None]:
        """Fused points per organ on the UNPADDED 3 mm grid ``(groups, 6, 3)`` ``(z, y, x)``,
        or None where no matching support holds the organ (``fusion``: this localizer's by
        default)."""
        fusion = fusion or self.fusion
        fused: dict[int, np.ndarray | None] = {}
        for c in self.classes:
            points = gathered[c].vote() if fusion == "vote" else gathered[c].median()
            fused[c] = None if points is None else (points - PAD).reshape(-1, 6, 3)
        return fused

    def locate(self, grid: MedlamInput, q_frame: Frame) -> dict[int, np.ndarray | None]:
        """Fused points per organ (:meth:`fuse` of :meth:`support_organs`)."""
        return self.fuse(self.support_organs(grid, q_frame))

    def case_report(self) -> dict:
        """What the last :meth:`predict` did per support (for ``run.json``)."""
        return {
            "method": self.name,
            "pairs": [
                {
                    "support": m.support,
                    "matched": m.matched,
                    "search_correlation": round(m.search_score, 4),
                    "correlation": round(m.score, 4),
                    "seconds": round(m.seconds, 3),
                    "cpu_seconds": round(m.cpu, 3),
                }
                for m in self.last_matches
            ],
            "workers": self.pair_workers(),
        }

    def predict(self, volume: Volume) -> dict[int, OrganBoxes]:
        """Boxes of every organ in ``volume`` (a CT in HU, any orientation), as MedLAM's."""
        grid = medlam_image(volume, "linear")
        return self.boxes(volume, grid, self.locate(grid, Frame.of(volume, grid)))

    def boxes(
        self, volume: Volume, grid: MedlamInput, located: dict[int, np.ndarray | None]
    ) -> dict[int, OrganBoxes]:
        """:class:`OrganBoxes` in ``volume``'s voxels of points from :meth:`fuse` (one warning
        per organ left outside, one when no support matched)."""
        if not any(m.matched for m in self.last_matches):
            best = max(m.score for m in self.last_matches)
            logger.warning(
                "%s: no support scan matches this query (best correlation %.2f < %.2f)",
                volume.name,
                best,
                MIN_MATCH,
            )
        result = {}
        for c, points in located.items():
            inside = points is not None and any(
                box_overlaps(group_box(g), grid.array.shape) for g in points
            )
            result[c] = organ_boxes(volume, grid, c, points, inside)
            if not result[c].inside:
                logger.warning(
                    "%s: %s lies outside the query after registration; marked outside",
                    volume.name,
                    self._organ(c),
                )
        return result


class Gathered:
    """One organ's warped support masks, each reduced to its points on arrival (``median``
    needs no more), plus, with ``count``, the number of masks labelling each voxel (``vote``):
    never the masks themselves, which for 5 supports of 16 organs on a large query would hold
    hundreds of MB."""

    def __init__(self, splits: int, count: bool = False) -> None:
        self.splits = splits
        self.points: list[np.ndarray] = []
        self.votes: np.ndarray | None = None
        self.count = count

    def take(self, reduced: Reduced) -> None:
        """Take one mask already reduced (with its crop when counting votes)."""
        self.points.append(reduced.points)
        if self.count:
            if reduced.crop is None:
                raise ValueError("vote counts need the mask's voxels: reduce it with crop=True")
            if self.votes is None:
                self.votes = np.zeros(reduced.shape, dtype=np.uint16)
            cut = tuple(
                slice(a, a + n) for a, n in zip(reduced.start, reduced.crop.shape, strict=True)
            )
            self.votes[cut] += reduced.crop

    def median(self) -> np.ndarray | None:
        """Per-coordinate median of the masks' points (None without masks)."""
        if not self.points:
            return None
        return np.median(np.stack(self.points), axis=0)

    def vote(self) -> np.ndarray | None:
        """Points of the voxels that at least half of the masks label (the most-voted ones if
        none do); None without masks."""
        if not self.points:
            return None
        if self.votes is None:
            raise ValueError("vote fusion needs the votes: gather with count=True")
        fused = self.votes >= int(np.ceil(len(self.points) / 2))
        if not fused.any():
            fused = self.votes == self.votes.max()
        return support_points(fused, self.splits).astype(np.float64)


def _take(gathered: dict[int, Gathered], match: Match, placed: Placed) -> None:
    """Gather one support's placed organs and add their cost to its ``match``."""
    for c, masks in placed.masks.items():
        for reduced in masks:
            gathered[c].take(reduced)
    match.seconds += placed.seconds
    match.cpu += placed.cpu


def organ_boxes(
    volume: Volume, grid: MedlamInput, c: int, points: np.ndarray | None, inside: bool
) -> OrganBoxes:
    """One organ's boxes in ``volume``'s file voxels from points ``(groups, 6, 3)`` on its
    unpadded 3 mm grid (None: no points, organ outside)."""
    if points is None:
        return OrganBoxes(c, (), np.zeros((0, 6, 3)), False)
    groups = []
    for group in points:
        lo, hi = group_box(group)
        corners = grid.to_file_index(np.stack([lo, hi]))
        box = Box3D(
            tuple(np.rint(corners.min(axis=0)).astype(int).tolist()),  # type: ignore[arg-type]
            tuple(np.rint(corners.max(axis=0)).astype(int).tolist()),  # type: ignore[arg-type]
        )
        groups.append((box, grid.to_file_index(group)))
    axis = volume.slice_axis()
    groups.sort(key=lambda g: g[0].lo[axis])
    clipped = [g[0].clip(volume.shape) for g in groups] if inside else []
    boxes = tuple(b for b in clipped if b is not None)
    return OrganBoxes(c, boxes, np.stack([g[1] for g in groups]), bool(boxes))
