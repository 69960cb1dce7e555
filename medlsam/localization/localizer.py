"""MedLAM localization: support prototypes (method.md 3) and query boxes (method.md 4).

:class:`Localizer` is built from a MedLAM model (passed in, on the device the caller chose):

* :meth:`Localizer.fit` computes per-organ :class:`~.prototypes.Prototypes` from support
  images and labels; :meth:`Localizer.save_prototypes` / :meth:`Localizer.load_prototypes`
  store and reuse them.
* :meth:`Localizer.predict` returns, per organ, :class:`~medlsam.boxes.OrganBoxes` in voxel
  indices ``(i, j, k)`` of the ORIGINAL query file (inclusive), for every axis orientation.

The published procedure and constants are kept: 10 initial patches drawn in the central
``[s//2 - 10, s//2 + 10)`` of the padded query and re-drawn on air, their position codes
averaged, relative displacement ``[1500, 600, 600] mm * tanh(support - query)`` from the mean
patch centre, then one MSS refinement within a 64^3 window (coordinates clamped to
``[32, s - 33]`` first). Deliberate differences, each named:

* ``rdr_steps`` (default 1, as published) repeats the relative-distance step from step 2 on
  from each point's own patch (centred on its last estimate, clamped to ``[32, s - 33]``):
  short steps, where the network is most accurate; one fc-only pass per distinct point and
  step, stopping once no point moves;
* ``mss_share_mm`` (default 0, as published) is an explicit fast mode that changes results:
  the points of one cell of a grid of that pitch share one MSS search patch
  (:func:`~medlsam.localization.matching.search_centres`), off-centre by up to half the pitch;
* each query gets its own random generator seeded with ``seed`` (the published code seeds once,
  so a query's boxes depended on the queries before it);
* the initial draws always terminate: after 100 air draws for one patch (or at once when the
  whole start window is air) the non-air voxel nearest the volume centre is used, or the
  centre itself for an all-air volume;
* an organ whose relative-distance box lies wholly outside the query's field of view is
  reported as outside (``inside=False``, no boxes) instead of being clamped to the border and
  refined there; boxes are clipped to the image;
* points go back to the file's voxels with the exact index map (the published back-mapping is
  wrong for permuted axes), and each box is sorted per axis after the mapping;
* an organ absent from some support scans takes its prototype from the others (warning);
* the network runs in fp32 on the CPU and, on CUDA, in ``precision`` (``fp16`` autocast as
  published, or ``fp32``); prototypes record the device type and precision they were made in
  and are refused by a localizer running in others; template matching by FFT.

``published=True`` (``[run] reproduce = published``) gives the published code's results
instead (:mod:`medlsam.localization.published`): start centres from one stream over the query
list (``starts``), images resampled as published (float64 spline, float32 zoom factors), support
labels by the published one-hot trilinear resampling, organs whose relative-distance box lies
outside the image clamped and refined (never reported outside), points mapped back through
``1 / zoom_factor`` with the published rounding, and SPL sub-boxes in the published part order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medlsam.boxes import Box3D, OrganBoxes, box_overlaps, group_box
from medlsam.config import BoxMode
from medlsam.devices import Stopwatch, autocast_dtype, effective
from medlsam.errors import InputError
from medlsam.io import Volume, label_on_image_grid
from medlsam.localization.matching import (
    crop_patches,
    initial_centres,
    mss_offsets,
    search_centres,
    similarity_map,
)
from medlsam.localization.network import FEATURE_NAMES, MedLAM, weights_fingerprint
from medlsam.localization.prototypes import (
    ClassPrototype,
    Prototypes,
    bounding_box,
    split_count,
    support_points,
    template_slice,
)
from medlsam.localization.published import (
    PublishedStarts,
    published_file_points,
    published_label,
)
from medlsam.preprocess import MEDLAM_SPACING, PAD, MedlamInput, medlam_image, medlam_label, pad

logger = logging.getLogger(__name__)

#: Scale of the relative displacement, mm along (z, y, x) (published ``dis_ratio``).
DIS_RATIO = np.array([1500.0, 600.0, 600.0])


class Localizer:
    """MedLAM localization with a model passed in.

    Args:
        model: a :class:`~medlsam.localization.network.MedLAM` in eval mode, already on ``device``.
        device: where the model runs (fp32 on CPU, autocast fp16 on CUDA).
        mode: WPL (one box per organ) or SPL (sub-boxes along z).
        slice_interval: SPL split interval in 3 mm voxels (None for WPL).
        feature_scales: MSS scales (empty: no refinement, as published).
        seed: seed of each query's own random generator.
        batch_size: patches per forward pass (default 4 on CPU, 16 on CUDA).
        interpolation: image resampling to 3 mm, ``"spline"`` (published) or ``"linear"``.
        rdr_steps: relative-distance steps per query (1 = published; see the module docstring).
        mss_share_mm: grid pitch of shared MSS patches (0 = published; module docstring).
        precision: MedLAM's precision on CUDA, ``"fp16"`` (published autocast) or ``"fp32"``;
            the CPU always runs fp32 (:attr:`precision` holds what really runs).
        published: reproduce the published code's results (module docstring).
        starts: the published start-centre stream (``published`` only; default: one stream
            seeded with ``seed``, continued over every query predicted).
        coarse_points: replaces the relative-distance search when given: called as
            ``coarse_points(padded)`` with the padded 3 mm query, it returns the points
            ``(N, 3)`` int64 on that grid, in prototype order, that refinement starts from
            (e.g. known organ points, so that a benchmark with random weights does the work a
            trained network would). Settable per query through the attribute of that name.

    :attr:`stats` counts the work, cumulatively (subtract two copies for one call's share):
    ``forward_passes``, ``patches`` and ``forward_seconds`` of the network, and
    ``resample_seconds`` of bringing images and support labels to the 3 mm grid.
    """

    def __init__(
        self,
        model: MedLAM,
        device: torch.device | str = "cpu",
        mode: BoxMode | str = BoxMode.WPL,
        slice_interval: int | None = None,
        feature_scales: Sequence[str] = FEATURE_NAMES,
        seed: int = 2023,
        batch_size: int | None = None,
        interpolation: str = "spline",
        rdr_steps: int = 1,
        mss_share_mm: float = 0.0,
        precision: str = "fp16",
        published: bool = False,
        starts: PublishedStarts | None = None,
        coarse_points: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.device = torch.device(device)
        self.precision = effective(precision, self.device)
        self.mode = BoxMode(mode)
        self.slice_interval = slice_interval
        bad = [s for s in feature_scales if s not in FEATURE_NAMES]
        if bad:
            raise ValueError(f"unknown feature scales {bad}; expected some of {FEATURE_NAMES}")
        self.feature_scales = tuple(feature_scales)
        self.seed = int(seed)
        default = 16 if self.device.type == "cuda" else 4
        self.batch_size = max(1, int(batch_size or default))
        self.interpolation = interpolation
        if int(rdr_steps) < 1:
            raise ValueError(f"rdr_steps must be at least 1, got {rdr_steps}")
        self.rdr_steps = int(rdr_steps)
        if not mss_share_mm >= 0:
            raise ValueError(f"mss_share_mm must be >= 0, got {mss_share_mm}")
        self.mss_share_mm = float(mss_share_mm)
        self.published = bool(published)
        if self.published:
            self.interpolation = "published"
        self.starts = starts if starts is not None else PublishedStarts(self.seed)
        #: start centres of the last query (padded 3 mm grid), for inspection
        self.last_start_centres: np.ndarray | None = None
        self.prototypes: Prototypes | None = None
        self.coarse_points = coarse_points
        self.stats: dict[str, float] = {
            "forward_passes": 0,
            "patches": 0,
            "forward_seconds": 0.0,
            "resample_seconds": 0.0,
        }
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The model's checkpoint sha256 (or weights digest), recorded in prototypes."""
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    # ----------------------------------------------------------------------------------------
    # forward passes

    def _forward(
        self, array: np.ndarray, centres: np.ndarray, fc: bool, features: Sequence[str]
    ) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """Crop and run patches around ``centres`` in batches; yields (rows, outputs on device)."""
        dtype = autocast_dtype(self.precision)
        for start in range(0, len(centres), self.batch_size):
            rows = slice(start, min(start + self.batch_size, len(centres)))
            batch = torch.from_numpy(crop_patches(array, centres[rows])).to(self.device)
            with (
                Stopwatch(self.device) as clock,
                torch.inference_mode(),
                torch.autocast("cuda", dtype or torch.float16, enabled=dtype is not None),
            ):
                out = self.model(batch, fc=fc, features=features)
                out = {k: v.float() for k, v in out.items()}
            self.stats["forward_passes"] += 1
            self.stats["patches"] += rows.stop - rows.start
            self.stats["forward_seconds"] += clock.seconds
            yield rows, out

    def _forward_unique(
        self, array: np.ndarray, centres: np.ndarray, fc: bool, features: Sequence[str]
    ) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]]:
        """Run each distinct patch centre once (SPL parts share boundary points, clamped points
        coincide). Yields ``(members, local, outputs)``: the indices of ``centres`` served by
        this batch and, for each, its row in ``outputs``."""
        unique, inverse = np.unique(np.asarray(centres), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for rows, out in self._forward(array, unique, fc, features):
            members = np.nonzero((inverse >= rows.start) & (inverse < rows.stop))[0]
            yield members, inverse[members] - rows.start, out

    # ----------------------------------------------------------------------------------------
    # prototypes

    def fit(self, supports: Iterable[tuple[Volume, Volume]], classes: Sequence[int]) -> Prototypes:
        """Compute prototypes from support ``(image, label)`` pairs (method.md 3).

        ``supports`` may be a generator: each pair is resampled to the 3 mm grid as it comes and
        only that copy is kept, so full-resolution scans need not all be in memory at once.

        Raises:
            InputError: a label not on its image's grid, or an organ absent from every support.
        """
        classes = [int(c) for c in classes]
        prepared = []
        for image, label in supports:
            label = label_on_image_grid(label, image)  # flipped/permuted: reoriented
            began = time.perf_counter()
            grid = medlam_image(image, self.interpolation)
            lab = published_label(label) if self.published else medlam_label(label, classes, grid)
            self.stats["resample_seconds"] += time.perf_counter() - began
            prepared.append((image.name, pad(grid.array), pad(lab)))
            del image, label, grid
        if not prepared:
            raise InputError("no support scans given (need support images and labels)")
        present: dict[int, list[int]] = {c: [] for c in classes}
        extents: dict[int, list[int]] = {c: [] for c in classes}
        for s, (_, _, lab) in enumerate(prepared):
            for c in classes:
                box = bounding_box(lab == c)
                if box is not None:
                    present[c].append(s)
                    extents[c].append(int(box[1][0] - box[0][0]))
        for c in classes:
            if not present[c]:
                names = ", ".join(p[0] for p in prepared)
                raise InputError(
                    f"organ {c} is absent from every support label map ({names}); "
                    "remove it from fg_class or add a support scan that contains it"
                )
        for c in classes:
            for s in sorted(set(range(len(prepared))) - set(present[c])):
                logger.warning(
                    "%s: organ %d is absent from this support scan; its prototype comes "
                    "from the other support scans",
                    prepared[s][0],
                    c,
                )
        splits = {c: split_count(min(extents[c]), self.slice_interval, self.mode) for c in classes}
        fc_sum: dict[int, torch.Tensor] = {}
        cubes: dict[int, dict[str, torch.Tensor]] = {c: {} for c in classes}
        for s, (_, img, lab) in enumerate(prepared):
            owners = [c for c in classes if s in present[c]]
            points = [support_points(lab == c, splits[c]) for c in owners]
            counts = [len(p) for p in points]
            fcs, feats = self._support_features(img, np.concatenate(points))
            split_feats = {scale: f.split(counts) for scale, f in feats.items()}
            for n, (c, part_fc) in enumerate(zip(owners, fcs.split(counts), strict=True)):
                fc_sum[c] = part_fc if c not in fc_sum else fc_sum[c] + part_fc
                for scale, parts in split_feats.items():
                    cube = parts[n]
                    cubes[c][scale] = cube if scale not in cubes[c] else cubes[c][scale] + cube
        protos = {
            c: ClassPrototype(
                fc=fc_sum[c] / len(present[c]),
                templates=cubes[c],
                groups=max(splits[c], 1),
                supports=tuple(prepared[s][0] for s in present[c]),
            )
            for c in classes
        }
        self.prototypes = Prototypes(
            classes=protos,
            mode=self.mode,
            slice_interval=self.slice_interval,
            feature_scales=self.feature_scales,
            checkpoint_sha256=self.fingerprint,
            base_chns=int(getattr(self.model, "base_chns", 0)),
            numerics=self.numerics,
            meta={"label_resampling": self._label_resampling},
        )
        return self.prototypes

    @property
    def numerics(self) -> dict[str, str]:
        """Where and how MedLAM runs: ``{"device": "cpu" | "cuda", "precision": ...}``."""
        return {"device": self.device.type, "precision": self.precision}

    @property
    def _label_resampling(self) -> str:
        return "published" if self.published else "medlsam"

    def _support_features(
        self, padded: np.ndarray, points: np.ndarray
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Position codes ``(N, 3)`` and per-scale normalised template cubes ``(N, C, k, k, k)``."""
        n = len(points)
        fcs = torch.zeros(n, 3)
        feats: dict[str, torch.Tensor] = {}
        for members, local, out in self._forward_unique(padded, points, True, self.feature_scales):
            fcs[members] = out["fc_position"][local].cpu()
            for scale in self.feature_scales:
                fmap = out[scale]
                cut = template_slice(fmap.shape[-1])  # cut before picking rows: no full copy
                cube = F.normalize(fmap[:, :, cut, cut, cut][local], dim=1).cpu()
                if scale not in feats:
                    feats[scale] = torch.zeros((n, *cube.shape[1:]))
                feats[scale][members] = cube
        return fcs, feats

    def save_prototypes(self, path: str | Path) -> Path:
        return self._require_prototypes().save(path)

    def load_prototypes(self, path: str | Path, classes: Sequence[int] | None = None) -> Prototypes:
        """Load prototypes made with this model's checkpoint and settings (else InputError)."""
        return self.use_prototypes(Prototypes.load(path), path, classes)

    def use_prototypes(
        self, protos: Prototypes, source: str | Path, classes: Sequence[int] | None = None
    ) -> Prototypes:
        """Use ``protos`` (from ``source``) if made with this model, settings and numerics
        (else InputError), keeping only ``classes`` when given."""
        protos.check_compatible(
            source,
            self.fingerprint,
            list(classes) if classes is not None else list(protos.classes),
            self.mode,
            self.slice_interval,
            self.feature_scales,
            self.numerics,
        )
        made = protos.meta.get("label_resampling", "medlsam")
        if made != self._label_resampling:
            raise InputError(
                f"{source}: prototypes were made with the {made} support-label resampling, not "
                f"the {self._label_resampling} one this run uses ([run] reproduce); rebuild "
                "them from the support scans"
            )
        if classes is not None:
            protos.classes = {int(c): protos.classes[int(c)] for c in classes}
        self.prototypes = protos
        return protos

    def _require_prototypes(self) -> Prototypes:
        if self.prototypes is None:
            raise RuntimeError("Localizer has no prototypes: call fit() or load_prototypes()")
        return self.prototypes

    # ----------------------------------------------------------------------------------------
    # query

    def predict(self, volume: Volume) -> dict[int, OrganBoxes]:
        """Boxes of every prototype organ in ``volume`` (a CT in HU, any orientation).

        Returns:
            class id -> :class:`OrganBoxes`: boxes in the file's ``(i, j, k)`` voxel indices,
            inclusive, clipped to the image, SPL sub-boxes ordered along the slice axis;
            ``extreme_points`` ``(groups, 6, 3)`` in the same frame (unclipped).
        """
        began = time.perf_counter()
        grid = medlam_image(volume, self.interpolation)
        self.stats["resample_seconds"] += time.perf_counter() - began
        located = self.locate(grid, volume.path)
        to_file = (
            (lambda zyx: published_file_points(grid, zyx)) if self.published else grid.to_file_index
        )
        slice_axis = volume.slice_axis()
        result = {}
        for c, (points, inside) in located.items():
            groups = []
            for group in points:
                corners = to_file(np.stack(group_box(group)))
                box = Box3D(
                    tuple(np.rint(corners.min(axis=0)).astype(int).tolist()),  # type: ignore[arg-type]
                    tuple(np.rint(corners.max(axis=0)).astype(int).tolist()),  # type: ignore[arg-type]
                )
                groups.append((box, to_file(group)))
            if not self.published:  # the published code keeps its part order
                groups.sort(key=lambda g: g[0].lo[slice_axis])
            kept = [(g[0], g[0].clip(volume.shape)) for g in groups] if inside else []
            kept = [(raw, box) for raw, box in kept if box is not None]
            result[c] = OrganBoxes(
                class_id=c,
                boxes=tuple(box for _, box in kept),
                extreme_points=np.stack([g[1] for g in groups]),
                inside=bool(kept),
                raw_boxes=tuple(raw for raw, _ in kept),
            )
            if not kept:
                logger.info("%s: organ %d is predicted outside the image", volume.name, c)
        return result

    def locate(
        self, grid: MedlamInput, source: str | Path | None = None
    ) -> dict[int, tuple[np.ndarray, bool]]:
        """Points on the UNPADDED 3 mm LAS grid, per organ ``(groups, 6, 3)`` float64 ``(z, y, x)``,
        and whether the organ's relative-distance box overlaps the field of view (always True
        when ``published``). ``source`` (the query's file) places it in the published stream."""
        protos = self._require_prototypes()
        padded = pad(grid.array)
        shape = np.array(padded.shape)
        if self.published:
            centres = self.starts.centres(padded, source)
        else:
            centres = initial_centres(padded, np.random.default_rng(self.seed))
        self.last_start_centres = centres
        codes = torch.zeros(len(centres), 3)
        for members, local, out in self._forward_unique(padded, centres, True, ()):
            codes[members] = out["fc_position"][local].cpu()
        query_code = codes.double().mean(dim=0).numpy()
        origin_mm = centres.mean(axis=0) * MEDLAM_SPACING
        support = np.concatenate([proto.fc.double().numpy() for proto in protos.classes.values()])
        points = np.rint((DIS_RATIO * np.tanh(support - query_code) + origin_mm) / MEDLAM_SPACING)
        if self.coarse_points is not None:
            points = np.asarray(self.coarse_points(padded), dtype=np.int64)
        else:
            points = self._iterate_rdr(padded, points.astype(np.int64), support)
        counts = [len(proto.fc) for proto in protos.classes.values()]
        coarse: dict[int, np.ndarray] = {}
        inside: dict[int, bool] = {}
        for c, pts in zip(protos.classes, np.split(points, np.cumsum(counts)[:-1]), strict=True):
            coarse[c] = pts
            inside[c] = self.published or any(
                box_overlaps(group_box(g), grid.array.shape) for g in (pts - PAD).reshape(-1, 6, 3)
            )
        refine = [c for c in protos.classes if inside[c]] if self.feature_scales else []
        if refine:
            start = np.concatenate([np.clip(coarse[c], PAD, shape - PAD - 1) for c in refine])
            templates = {
                s: torch.cat([protos.classes[c].templates[s] for c in refine])
                for s in self.feature_scales
            }
            refined = self._refine(padded, start, templates)
            counts = [len(coarse[c]) for c in refine]
            for c, pts in zip(refine, np.split(refined, np.cumsum(counts)[:-1]), strict=True):
                coarse[c] = pts
        return {
            c: ((pts - PAD).reshape(-1, 6, 3).astype(np.float64), inside[c])
            for c, pts in coarse.items()
        }

    def _iterate_rdr(
        self, padded: np.ndarray, points: np.ndarray, support: np.ndarray
    ) -> np.ndarray:
        """Steps 2..``rdr_steps`` of the relative-distance search for points ``(N, 3)`` on the
        padded grid, each from its own patch; support codes ``(N, 3)``."""
        top = np.array(padded.shape) - PAD - 1
        for _ in range(self.rdr_steps - 1):
            centres = np.clip(points, PAD, top)
            codes = np.zeros((len(points), 3))
            for members, local, out in self._forward_unique(padded, centres, True, ()):
                codes[members] = out["fc_position"][local].double().cpu().numpy()
            shift_mm = DIS_RATIO * np.tanh(support - codes)
            moved = np.rint(centres + shift_mm / MEDLAM_SPACING).astype(np.int64)
            if np.array_equal(moved, points):
                break
            points = moved
        return points

    def _refine(
        self, padded: np.ndarray, points: np.ndarray, templates: dict[str, torch.Tensor]
    ) -> np.ndarray:
        """MSS-refined points ``(N, 3)`` int64 for points ``(N, 3)`` on the padded grid: each
        distinct search patch runs once, in batches."""
        centres = search_centres(points, self.mss_share_mm, padded.shape)
        offsets = np.zeros_like(points)
        for members, local, out in self._forward_unique(
            padded, centres, False, self.feature_scales
        ):
            # points sharing a patch share its feature maps: match at most batch_size at a time
            for start in range(0, len(members), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                rows, picks = members[chunk], local[chunk]
                feats = {s: out[s][picks] for s in self.feature_scales}
                batch = {s: t[rows] for s, t in templates.items()}
                score = similarity_map(feats, batch, self.feature_scales)
                offsets[rows] = mss_offsets(score)
        return centres + offsets
