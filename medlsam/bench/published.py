"""The published code's work on the same boxes (method.md 3-6), priced with costs measured here.

Work: one SAM encoder call per (organ, sub-box, slice) and one single-box decoder call each;
one 64^3 MedLAM patch (fc and every feature scale) per support point per support scan for the
prototypes, and 10 + one per point for each query (all organs refined); one grouped-convolution
template match per point and scale; slice preprocessing over the global slice range.

Costs, from this run: seconds per full MedLAM patch (measured during ``fit``, or the sampled
kind's mean), one published-style ``conv3d`` match per scale (timed once, one point: the
published call groups N points, which is not cheaper per point), one STOCK ``segment_anything``
encoder call (timed once on this device; when the run itself used the stock encoder its mean),
one single-box decoder call (timed), our seconds per preprocessed slice. Read, MedLAM
preprocessing, assembly and write are ours (the published code does the same or more there).
The estimate is therefore a lower bound of the published time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from medlsam.bench.networks import Networks
from medlsam.bench.sampling import medlam_key
from medlsam.bench.stages import StageRun
from medlsam.localization.matching import INITIAL_PATCHES
from medlsam.segment import SamSegmenter
from medlsam.segment.fast import accelerate_image_encoder, is_accelerated, restore_image_encoder

#: support points per SPL group (or per organ, WPL): the six extreme points
POINTS_PER_GROUP = 6


@dataclass(frozen=True)
class PublishedWork:
    """Counts of the published code's work on the boxes and prototypes of a run."""

    encoder_calls: int
    prep_slices: int
    proto_patches: int
    proto_passes: int
    query_patches: int
    query_passes: int
    refine_points: int


@dataclass(frozen=True)
class UnitCosts:
    """Seconds per unit of published work, measured in the run (module docstring): ``patch``
    is ours, ``eager_patch`` the published code's (PyTorch eager; differs from ``patch`` when
    MedLAM ran in another engine)."""

    patch: float
    eager_patch: float
    match_point: float
    stock_encoder: float
    decoder_box: float


def published_work(run: StageRun, nets: Networks) -> PublishedWork:
    """What the published code would run on this run's boxes and prototypes."""
    axis = run.prediction.slice_axis
    organs = run.organs
    spans = [b.hi[axis] - b.lo[axis] + 1 for o in organs.values() for b in o.boxes]
    all_lo = [o.boxes[0].lo[axis] for o in organs.values() if o.boxes]
    all_hi = [o.boxes[-1].hi[axis] for o in organs.values() if o.boxes]
    protos = nets.localizer.prototypes.classes  # type: ignore[union-attr]
    points = {c: POINTS_PER_GROUP * p.groups for c, p in protos.items()}
    return PublishedWork(
        encoder_calls=int(sum(spans)),
        prep_slices=(max(all_hi) - min(all_lo) + 1) if all_lo else 0,
        proto_patches=sum(points[c] * len(p.supports) for c, p in protos.items()),
        proto_passes=sum(len(p.supports) for p in protos.values()),
        query_patches=INITIAL_PATCHES + sum(points.values()),
        query_passes=1 + len(protos),
        refine_points=sum(points.values()) if nets.localizer.feature_scales else 0,
    )


def time_eager_patch(model: torch.nn.Module, scales) -> float:
    """Seconds of one PyTorch-eager 64^3 MedLAM patch with fc and ``scales`` (CPU, float32):
    the published code's cost per patch when our run used another engine."""
    x = torch.zeros(1, 1, 64, 64, 64)
    with torch.inference_mode():
        began = time.perf_counter()
        model(x, fc=True, features=scales)
        return time.perf_counter() - began


def time_match_point(channels: int, scales, device: torch.device, repeats: int = 1) -> float:
    """Seconds of the published template match of ONE point: a conv3d per scale, then resize."""
    sizes = {"feature0": 16, "feature1": 32, "feature2": 64}
    total = 0.0
    with torch.inference_mode():
        for scale in scales:
            m = sizes[scale]
            k = max(2, 8 * m // 64)
            feat = torch.randn(1, channels, m, m, m, device=device)
            weight = torch.randn(1, channels, k, k, k, device=device)
            best = float("inf")
            for _ in range(repeats):
                began = time.perf_counter()
                resp = torch.nn.functional.conv3d(feat, weight, padding=k // 2) / k**3
                torch.nn.functional.interpolate(resp, size=(64,) * 3, mode="trilinear")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - began)
            total += best
    return total


def time_stock_encoder_and_decoder(segmenter: SamSegmenter, out_hw) -> tuple[float, float]:
    """One STOCK PyTorch-eager encoder call on a 1024^2 image and one single-box decoder call,
    seconds (the segmenter's encoder and stats are left as they were)."""
    model = segmenter.model
    was_fast = is_accelerated(model)
    restore_image_encoder(model)
    before = segmenter.stats.copy()
    runner, segmenter.encoder = segmenter.encoder, model.image_encoder
    image = np.random.default_rng(0).integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    try:  # no warm-up call: the fast path already ran the same layers on this model
        began = time.perf_counter()
        emb = segmenter.encode(image)
        enc = time.perf_counter() - began
    finally:
        segmenter.encoder = runner
        if was_fast:
            accelerate_image_encoder(model)
    box = np.array([[300.0, 300.0, 700.0, 700.0]])
    times = []
    for _ in range(3):
        began = time.perf_counter()
        segmenter.decode(emb, box, out_hw)
        times.append(time.perf_counter() - began)
    segmenter.stats = before
    return enc, float(np.median(times))


def _sam_costs(run: StageRun, nets: Networks, encoder: str) -> tuple[float, float]:
    """(stock encoder seconds per call, decoder seconds per single box)."""
    seconds, work = run.clock.seconds, run.prediction.work
    segmenter = nets.segmenter
    if not isinstance(segmenter, SamSegmenter):
        return (
            seconds["encoder"] / max(1, work.get("encoder_calls", 0) or 1),
            seconds["decoder"] / max(1, work.get("boxes", 1)),
        )
    axis = run.prediction.slice_axis
    out_hw = tuple(s for a, s in enumerate(run.volume.shape) if a != axis)
    if encoder != "stock":
        return time_stock_encoder_and_decoder(segmenter, out_hw)
    stock = seconds["encoder"] / max(1, work["encoder_calls"])
    if nets.sampler is not None:
        stock = nets.sampler.seconds_per_item("sam_encoder") or stock
    return stock, time_stock_encoder_and_decoder(segmenter, out_hw)[1]


def unit_costs(run: StageRun, nets: Networks, encoder: str) -> UnitCosts:
    """The costs of the module docstring (after the run: the sampler is off by then)."""
    fit = run.fit_stats
    patch = fit["forward_seconds"] / max(1, fit["patches"])
    loc = nets.localizer
    if nets.sampler is not None:
        patch = nets.sampler.seconds_per_item(medlam_key(True, loc.feature_scales)) or patch
    match = (
        time_match_point(nets.medlam.feature_chns, loc.feature_scales, loc.device)
        if loc.feature_scales
        else 0.0
    )
    stock, decoder_box = _sam_costs(run, nets, encoder)
    eager = patch
    if nets.runner is not nets.medlam:  # an engine ran MedLAM; the published code runs eager
        eager = time_eager_patch(nets.medlam, loc.feature_scales)
    return UnitCosts(patch, eager, match, stock, decoder_box)


def published_seconds(run: StageRun, work: PublishedWork, costs: UnitCosts) -> dict[str, float]:
    """Seconds per stage of the published work pattern (module docstring)."""
    seconds = run.clock.seconds
    slices = max(1, run.prediction.work.get("slices", run.prediction.slices_segmented))
    return {
        "read": seconds["read"],
        "preprocess": seconds["preprocess"],
        "prototypes": work.proto_patches * costs.eager_patch,
        "localization": work.query_patches * costs.eager_patch
        + work.refine_points * costs.match_point,
        "slice_preprocessing": work.prep_slices * seconds["slice_preprocessing"] / slices,
        "encoder": work.encoder_calls * costs.stock_encoder,
        "decoder": work.encoder_calls * costs.decoder_box,
        "assembly": seconds["assembly"],
        "write": seconds["write"],
    }
