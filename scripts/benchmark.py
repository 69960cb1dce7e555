"""Time MedLSAM stage by stage and compare it with the work the published code would do.

Usage::

    python scripts/benchmark.py                      # WORD-like case: 512x512x200 at
                                                     # 0.8x0.8x2.5 mm, 16 organs, 5 supports, SPL
    python scripts/benchmark.py --quick              # small case, minutes on 2 CPU cores
    python scripts/benchmark.py --config X.txt       # the first query of a config
    python scripts/benchmark.py --json report.json --device cuda

What runs is the library's own pipeline (``Localizer.fit``/``predict``, ``pipeline.run_case``,
``pipeline_outputs.write_case``), with the real-size SAM image encoder (ViT-B unless the config
names another) and MedLAM; networks without a checkpoint get random weights, which is fine for
timing. With random MedLAM weights the predicted boxes mean nothing, so the segmentation stage
then uses boxes from the query's labels, split into as many SPL sub-boxes as the localizer gave
(``--boxes``; reported), and the relative-distance step is replaced by the query's true organ
points (what a trained MedLAM would find), so that the distinct and shared refinement patches
are counted where real use would have them. Work counts then do not depend on weights.

Reported, as a table and (``--json``) a JSON file:

* wall seconds per stage: read, preprocess (MedLAM resampling of supports and query),
  prototypes, localization, slice preprocessing, encoder, decoder, assembly, write (slice
  preprocessing runs in a worker thread beside the encoder, so stage seconds can add up to
  more than the wall time ``seconds_total``);
* work: MedLAM forward passes and patches, SAM encoder and decoder calls, slices segmented,
  peak RSS (``getrusage``, taken before the published-cost measurements below), peak GPU memory;
* the published work on the same boxes (method.md 3-6): one encoder call per (organ, sub-box,
  slice) (``published_encoder_calls``) and one single-box decoder call each; one 64^3 MedLAM
  patch per support point per support scan for the prototypes, and 10 + one per point for each
  query (all organs refined); one grouped-convolution template match per point and scale;
* ``published_seconds_estimate``: that work priced with costs measured here, in this run:
  prototypes and localization = published patches x our seconds per full MedLAM patch (measured
  during ``fit``) + points x one published-style ``conv3d`` match per scale (timed once, one
  point: the published call groups N points, which is not cheaper per point); encoder =
  published calls x one STOCK ``segment_anything`` encoder call (timed once on this device,
  float32 on CPU; when the run itself uses the stock encoder its mean is used); decoder =
  calls x one single-box decoder call (timed); slice preprocessing = slices in the global slice
  range x our seconds per slice; read, MedLAM preprocessing, assembly and write = ours (the
  published code does the same or more there). The estimate is therefore a lower bound of the
  published time, and ``speedup_vs_published`` = estimate / ``seconds_total`` a conservative
  ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchmark_case import CaseSpec  # noqa: E402
from benchmark_sampling import Sampler, medlam_key, sample_medlam, sample_sam  # noqa: E402

import medlsam.localization.localizer as localize_module  # noqa: E402
from medlsam.boxes import Box3D, OrganBoxes  # noqa: E402
from medlsam.config import ENGINES, load_config  # noqa: E402
from medlsam.io import read_image, read_label  # noqa: E402
from medlsam.localization.engine import EngineMedLAM, with_engine  # noqa: E402
from medlsam.localization.localizer import Localizer  # noqa: E402
from medlsam.localization.matching import INITIAL_PATCHES  # noqa: E402
from medlsam.localization.network import build_medlam  # noqa: E402
from medlsam.localization.prototypes import support_points  # noqa: E402
from medlsam.pipeline.outputs import write_case as write_outputs  # noqa: E402
from medlsam.pipeline.run import run_case  # noqa: E402
from medlsam.pipeline.setup import resolve_device  # noqa: E402
from medlsam.preprocess import PAD  # noqa: E402
from medlsam.segment import SamSegmenter, build_segmenter  # noqa: E402
from medlsam.segment.engine import EngineEncoder  # noqa: E402
from medlsam.segment.fast import (  # noqa: E402
    accelerate_image_encoder,
    configure_cpu_threads,
    is_accelerated,
    restore_image_encoder,
)

logger = logging.getLogger("benchmark")

QUICK = CaseSpec(
    shape=(256, 256, 10),
    spacing=(1.6, 1.6, 4.0),
    organs=8,
    supports=1,
    z_centre=100.0,
    mode="SPL",
    slice_interval=4,
)
STAGES = (
    "read",
    "preprocess",
    "prototypes",
    "localization",
    "slice_preprocessing",
    "encoder",
    "decoder",
    "assembly",
    "write",
)
POINTS_PER_GROUP = 6


class Clock:
    """Wall seconds of named stages (CUDA synchronised at both ends when it is in use)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


def timed(fn, clock: Clock, stage: str):
    """Wrap ``fn`` so its wall time is added to ``stage``."""

    def wrapper(*args, **kwargs):
        began = clock.now()
        try:
            return fn(*args, **kwargs)
        finally:
            clock.add(stage, clock.now() - began)

    return wrapper


# --------------------------------------------------------------------------------------------
# boxes from labels (when MedLAM has random weights)


def label_boxes(label: np.ndarray, axis: int, groups: dict[int, int]) -> dict[int, OrganBoxes]:
    """Per organ, ``groups[c]`` sub-boxes from the label map, split along the slice axis.

    As the published SPL split (method.md 3.2) but on the query's own slices: part ``i`` spans
    ``[z0 + i*step, z0 + (i+1)*step]`` (both ends, so neighbours share one slice), the last part
    ends at the organ's top slice; each part's in-plane extent is the organ's within it.
    """
    out = {}
    others = tuple(a for a in range(3) if a != axis)
    for c, n in groups.items():
        mask = label == c
        present = np.nonzero(mask.any(axis=others))[0]
        if present.size == 0:
            out[c] = OrganBoxes(c, (), np.zeros((0, 6, 3)), False)
            continue
        z0, z1 = int(present[0]), int(present[-1])
        n = max(1, min(n, z1 - z0 + 1))
        step = max(1, (z1 - z0) // n)
        boxes = []
        for i in range(n):
            lo, hi = z0 + i * step, (z1 if i == n - 1 else z0 + (i + 1) * step)
            box = Box3D.from_mask(np.take(mask, np.arange(lo, hi + 1), axis=axis))
            if box is None:
                continue
            b_lo, b_hi = list(box.lo), list(box.hi)
            b_lo[axis], b_hi[axis] = lo, hi
            boxes.append(Box3D(tuple(b_lo), tuple(b_hi)))  # type: ignore[arg-type]
        out[c] = OrganBoxes(c, tuple(boxes), np.zeros((len(boxes), 6, 3)), bool(boxes))
    return out


def true_points(localizer: Localizer, volume, label, preprocess) -> np.ndarray:
    """The query's own support points (SPL split or extreme points, padded 3 mm grid), in the
    prototypes' order: where a trained MedLAM's relative-distance step would land. Organs absent
    from the query's labels get the centre of the grid."""
    image_fn, label_fn = preprocess
    protos = localizer.prototypes.classes  # type: ignore[union-attr]
    grid = image_fn(volume, localizer.interpolation)
    lab = label_fn(label, list(protos), grid)
    rows = []
    for c, proto in protos.items():
        mask = lab == c
        if mask.any():
            rows.append(support_points(mask, proto.groups if proto.groups > 1 else 0))
        else:
            rows.append(np.tile(np.array(lab.shape) // 2, (len(proto.fc), 1)))
    return np.concatenate(rows).astype(np.int64) + PAD


class BenchLocalizer:
    """``predict`` through the real localizer (timed), optionally swapping in label boxes.

    With ``label`` (random MedLAM weights), the relative-distance step is also replaced by the
    query's true organ points (:func:`true_points`, computed before the clock starts): random
    weights put every point anywhere, which would make the count of distinct refinement
    patches (and of shared ones, ``--mss-share-mm``) meaningless. The patches, forward passes
    and matching that follow are the localizer's own.
    """

    def __init__(self, localizer: Localizer, clock: Clock, label=None, preprocess=None) -> None:
        self.localizer, self.clock, self.label = localizer, clock, label
        self.preprocess = preprocess
        self.organs: dict[int, OrganBoxes] = {}

    def predict(self, volume):
        loc = self.localizer
        if self.label is not None:
            points = true_points(loc, volume, self.label, self.preprocess)
            loc._iterate_rdr = lambda padded, start, support: points  # type: ignore[method-assign]
        try:
            began = self.clock.now()
            organs = loc.predict(volume)
            self.clock.add("localize_total", self.clock.now() - began)
        finally:
            loc.__dict__.pop("_iterate_rdr", None)
        if self.label is not None:
            protos = self.localizer.prototypes.classes  # type: ignore[union-attr]
            groups = {c: max(len(organs[c].boxes), protos[c].groups) for c in organs}
            organs = label_boxes(self.label.data, volume.slice_axis(), groups)
        self.organs = organs
        return organs


# --------------------------------------------------------------------------------------------
# published-cost measurements


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
    """One STOCK encoder call on a 1024^2 image and one single-box decoder call, seconds."""
    model = segmenter.model
    was_fast = is_accelerated(model)
    restore_image_encoder(model)
    before = segmenter.stats.copy()
    runner, segmenter.encoder = segmenter.encoder, model.image_encoder  # PyTorch eager
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


# --------------------------------------------------------------------------------------------
# the run


def build_networks(cfg, args, device: str):
    """MedLAM (checkpoint or random of ``--medlam-width``) and the SAM segmenter."""
    medlam_ckpt = cfg.weight.medlam_load_path
    random_medlam = medlam_ckpt is None or not Path(medlam_ckpt).is_file()
    medlam = build_medlam(
        None if random_medlam else medlam_ckpt,
        device,
        base_chns=args.medlam_width if random_medlam else None,
    )
    engine = cfg.run.engine if args.engine is None else args.engine
    localizer = Localizer(
        with_engine(medlam, engine, device),
        device,
        mode=cfg.data.bbox_mode,
        slice_interval=cfg.data.slice_interval,
        feature_scales=cfg.data.feature_scale_ls,
        seed=cfg.run.seed,
        rdr_steps=cfg.data.rdr_steps,
        mss_share_mm=cfg.data.mss_share_mm if args.mss_share_mm is None else args.mss_share_mm,
        precision=args.medlam_precision or cfg.run.medlam_precision,
    )
    sam_precision = args.sam_precision or cfg.vit.precision
    vit_ckpt = cfg.weight.vit_load_path
    if vit_ckpt is not None and Path(vit_ckpt).is_file():
        vit = dataclasses.replace(cfg.vit, precision=sam_precision)
        segmenter = build_segmenter(vit, vit_ckpt, device, engine=engine)
        random_sam = False
    else:
        from segment_anything import sam_model_registry

        net = cfg.vit.net_type
        segmenter = SamSegmenter(
            sam_model_registry[net](),
            device,
            name=f"sam_{net}",
            precision=sam_precision,
            engine=engine,
        )
        random_sam = True
    if isinstance(segmenter, SamSegmenter):
        if args.encoder == "fast":
            accelerate_image_encoder(segmenter.model)
        else:
            restore_image_encoder(segmenter.model)
        if isinstance(segmenter.encoder, EngineEncoder):
            segmenter.encoder.graph()  # exported (or read from the cache) before any timing
    if isinstance(localizer.model, EngineMedLAM):
        localizer.model.prepare(localizer.feature_scales)
    return localizer, segmenter, random_medlam, random_sam


def run_benchmark(args: argparse.Namespace) -> dict:
    threads = configure_cpu_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    spec = None
    if args.config is not None:
        config_path = args.config
    else:
        spec = (
            QUICK
            if args.quick
            else CaseSpec(
                shape=tuple(args.shape),
                spacing=tuple(args.spacing),
                organs=args.organs,
                supports=args.supports,
                mode=args.mode,
                slice_interval=args.slice_interval,
            )
        )
        folder = args.workdir or Path(tempfile.gettempdir()) / "medlsam-benchmark" / (
            "quick" if args.quick else "x".join(map(str, spec.shape)) + f"_{spec.organs}o"
        )
        logger.info("synthetic case in %s (drawn once, then reused)", folder)
        # drawn in a child process, so its memory does not count in this one's peak RSS
        subprocess.run(
            [sys.executable, str(HERE / "benchmark_case.py"), str(folder), spec.key()], check=True
        )
        config_path = Path(folder) / "config.txt"
    cfg = load_config(config_path)
    data = cfg.data
    classes = [int(c) for c in data.fg_class]
    localizer, segmenter, random_medlam, random_sam = build_networks(cfg, args, device)
    sampler = (
        Sampler(args.sample, cuda, always=frozenset({medlam_key(True, ())}))
        if args.sample
        else None
    )
    if sampler is not None:
        sample_medlam(localizer.model, sampler)
        if isinstance(segmenter, SamSegmenter):
            sample_sam(segmenter, sampler)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    boxes_mode = (
        args.boxes if args.boxes != "auto" else ("labels" if random_medlam else "localized")
    )
    clock = Clock(cuda)
    # MedLAM resampling is timed apart from the network work around it
    originals = (localize_module.medlam_image, localize_module.medlam_label)
    localize_module.medlam_image = timed(originals[0], clock, "preprocess")
    localize_module.medlam_label = timed(originals[1], clock, "preprocess")
    try:
        began = clock.now()
        supports = (  # read one pair at a time inside fit, as medlsam-infer does with SAM
            (read_image(i), read_label(lab))
            for i, lab in zip(data.support_images, data.support_labels, strict=True)
        )
        volume = read_image(data.query_images[args.query])
        clock.add("read", clock.now() - began)
        label = None
        if boxes_mode == "labels":  # benchmark input only, not timed as pipeline work
            if not data.query_labels:
                raise SystemExit("--boxes labels needs [data] query_label_ls in the config")
            label = read_label(data.query_labels[args.query])

        began = clock.now()
        if sampler is not None:
            sampler.stage = "prototypes"
        localizer.fit(supports, classes)
        fit_stats = dict(localizer.stats)
        fit_wall = clock.now() - began
        clock.add("prototypes", fit_wall - clock.seconds.get("preprocess", 0.0))
        del supports

        bench_loc = BenchLocalizer(localizer, clock, label, originals)
        prep0 = clock.seconds["preprocess"]
        if sampler is not None:
            sampler.stage = "localization"
        began = clock.now()
        pred = run_case(volume, bench_loc, segmenter, cfg)
        case_wall = clock.now() - began
        clock.add(
            "localization", clock.seconds["localize_total"] - (clock.seconds["preprocess"] - prep0)
        )
        work = pred.work
        secs = work.get("seconds", {})
        for stage, key in (
            ("slice_preprocessing", "slice_preprocess"),
            ("encoder", "encoder"),
            ("decoder", "decoder"),
        ):
            clock.add(stage, secs.get(key, 0.0))
        clock.add("assembly", pred.seconds.get("assemble", 0.0))

        out_dir = Path(args.output or Path(config_path).parent / "result")
        began = clock.now()
        write_outputs(
            pred,
            volume,
            out_dir,
            out_dir / "png",
            classes,
            data.class_names,
            {"segmenter": segmenter.name, "benchmark": True},
        )
        clock.add("write", clock.now() - began)
        seconds_total = clock.seconds["read"] + fit_wall + case_wall + clock.seconds["write"]
        if sampler is not None:  # replayed calls at their measured cost (benchmark_sampling)
            sampler.enabled = False
            for stage, seconds in sampler.projected.items():
                clock.add(stage, seconds)
                seconds_total += seconds
    finally:
        localize_module.medlam_image, localize_module.medlam_label = originals
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    # ---- the published work on the same boxes ---------------------------------------------
    axis = pred.slice_axis
    organs = bench_loc.organs
    spans = [b.hi[axis] - b.lo[axis] + 1 for o in organs.values() for b in o.boxes]
    published_calls = int(sum(spans))
    all_lo = [o.boxes[0].lo[axis] for o in organs.values() if o.boxes]
    all_hi = [o.boxes[-1].hi[axis] for o in organs.values() if o.boxes]
    published_prep_slices = (max(all_hi) - min(all_lo) + 1) if all_lo else 0
    protos = localizer.prototypes.classes  # type: ignore[union-attr]
    points = {c: POINTS_PER_GROUP * p.groups for c, p in protos.items()}
    pub_proto_patches = sum(points[c] * len(p.supports) for c, p in protos.items())
    pub_proto_passes = sum(len(p.supports) for p in protos.values())
    pub_query_patches = INITIAL_PATCHES + sum(points.values())
    pub_query_passes = 1 + len(protos)
    ours_proto = {k: fit_stats[k] for k in ("forward_passes", "patches")}
    ours_query = {k: localizer.stats[k] - fit_stats[k] for k in ("forward_passes", "patches")}
    sec_per_patch = fit_stats["forward_seconds"] / max(1, fit_stats["patches"])
    if sampler is not None:
        sec_per_patch = (
            sampler.seconds_per_item(medlam_key(True, localizer.feature_scales)) or sec_per_patch
        )
    pub_sec_per_patch = sec_per_patch
    if isinstance(localizer.model, EngineMedLAM):  # the published code runs PyTorch eager
        pub_sec_per_patch = time_eager_patch(localizer.model.model, localizer.feature_scales)
    match_point = (
        time_match_point(localizer.model.feature_chns, localizer.feature_scales, localizer.device)
        if localizer.feature_scales
        else 0.0
    )
    refine_points = sum(points.values()) if localizer.feature_scales else 0
    slices = max(1, work.get("slices", pred.slices_segmented))
    if isinstance(segmenter, SamSegmenter):
        out_hw = tuple(s for a, s in enumerate(volume.shape) if a != axis)
        if args.encoder == "stock":
            stock_enc = clock.seconds["encoder"] / max(1, work["encoder_calls"])
            if sampler is not None:
                stock_enc = sampler.seconds_per_item("sam_encoder") or stock_enc
            _, dec_box = time_stock_encoder_and_decoder(segmenter, out_hw)
        else:
            stock_enc, dec_box = time_stock_encoder_and_decoder(segmenter, out_hw)
    else:
        stock_enc = clock.seconds["encoder"] / max(1, work.get("encoder_calls", 0) or 1)
        dec_box = clock.seconds["decoder"] / max(1, work.get("boxes", 1))
    published = {
        "read": clock.seconds["read"],
        "preprocess": clock.seconds["preprocess"],
        "prototypes": pub_proto_patches * pub_sec_per_patch,
        "localization": pub_query_patches * pub_sec_per_patch + refine_points * match_point,
        "slice_preprocessing": published_prep_slices
        * clock.seconds["slice_preprocessing"]
        / slices,
        "encoder": published_calls * stock_enc,
        "decoder": published_calls * dec_box,
        "assembly": clock.seconds["assembly"],
        "write": clock.seconds["write"],
    }
    published_total = float(sum(published.values()))
    report = {
        "encoder_calls": int(work.get("encoder_calls", 0)),
        "decoder_calls": int(work.get("decoder_calls", 0)),
        "slices_segmented": int(pred.slices_segmented),
        "boxes_prompted": int(work.get("boxes", 0)),
        "published_encoder_calls": published_calls,
        "published_decoder_calls": published_calls,
        "seconds_total": round(seconds_total, 3),
        "published_seconds_estimate": round(published_total, 3),
        "speedup_vs_published": round(published_total / max(seconds_total, 1e-9), 2),
        "encoder_call_ratio": round(published_calls / max(1, work.get("encoder_calls", 0)), 2),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "peak_gpu_mb": None if peak_gpu_mb is None else round(peak_gpu_mb, 1),
        "stages": {s: round(clock.seconds.get(s, 0.0), 3) for s in STAGES},
        "published_stages": {s: round(v, 3) for s, v in published.items()},
        "medlam": {
            "prototypes": {
                **ours_proto,
                "published_patches": pub_proto_patches,
                "published_forward_passes": pub_proto_passes,
            },
            "localization": {
                **ours_query,
                "published_patches": pub_query_patches,
                "published_forward_passes": pub_query_passes,
            },
            "seconds_per_patch": round(sec_per_patch, 4),
            "eager_seconds_per_patch": round(pub_sec_per_patch, 4),
            "published_match_seconds_per_point": round(match_point, 4),
            "width": int(localizer.model.base_chns),
            "precision": localizer.precision,
            "mss_share_mm": localizer.mss_share_mm,
            "rdr_steps": localizer.rdr_steps,
            "random_weights": random_medlam,
        },
        "sam": {
            "backend": segmenter.name,
            "precision": getattr(segmenter, "precision", None),
            "encoder": args.encoder if isinstance(segmenter, SamSegmenter) else None,
            "engine": getattr(segmenter, "engine", None),
            "encoder_seconds_per_call": round(
                clock.seconds["encoder"] / max(1, work.get("encoder_calls", 0)), 3
            ),
            "stock_encoder_seconds_per_call": round(stock_enc, 3),
            "decoder_seconds_per_box_published": round(dec_box, 4),
            "random_weights": random_sam,
        },
        "boxes": boxes_mode,
        "coarse_points": "query labels" if label is not None else "relative distance",
        "organs": len(classes),
        "mode": cfg.data.bbox_mode.value,
        "slice_interval": cfg.data.slice_interval,
        "case": {
            "config": str(config_path),
            "query": str(data.query_images[args.query]),
            "shape": list(volume.shape),
            "spacing": [round(float(s), 4) for s in volume.spacing],
            "supports": len(data.support_images),
            "spec": None if spec is None else spec.key(),
        },
        "machine": machine(device, threads),
        "engine": {
            "medlam": getattr(localizer.model, "engine", "torch"),
            "sam_encoder": getattr(segmenter, "engine", None),
        },
        "projected": sampler is not None,
        "sampling": None if sampler is None else sampler.report(),
    }
    return report


def machine(device: str, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "torch_threads": threads,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def table(report: dict) -> str:
    lines = [f"{'stage':22s} {'ours s':>10s} {'published s (est.)':>20s}"]
    for stage in STAGES:
        lines.append(
            f"{stage:22s} {report['stages'][stage]:10.1f} {report['published_stages'][stage]:20.1f}"
        )
    lines.append(
        f"{'total (wall)':22s} {report['seconds_total']:10.1f} "
        f"{report['published_seconds_estimate']:20.1f}"
    )
    med = report["medlam"]
    rows = [
        (
            "MedLAM patches, prototypes",
            med["prototypes"]["patches"],
            med["prototypes"]["published_patches"],
        ),
        (
            "MedLAM patches, query",
            med["localization"]["patches"],
            med["localization"]["published_patches"],
        ),
        (
            "MedLAM forward passes",
            med["prototypes"]["forward_passes"] + med["localization"]["forward_passes"],
            med["prototypes"]["published_forward_passes"]
            + med["localization"]["published_forward_passes"],
        ),
        ("SAM encoder calls", report["encoder_calls"], report["published_encoder_calls"]),
        ("SAM decoder calls", report["decoder_calls"], report["published_decoder_calls"]),
    ]
    lines.append("")
    lines.append(f"{'work':28s} {'ours':>8s} {'published':>10s}")
    lines += [f"{name:28s} {a:8d} {b:10d}" for name, a, b in rows]
    lines.append("")
    lines.append(
        f"slices segmented {report['slices_segmented']}, boxes "
        f"{report['boxes_prompted']}, organs {report['organs']} ({report['mode']}), "
        f"boxes from {report['boxes']}"
    )
    lines.append(
        f"encoder s/call: ours {report['sam']['encoder_seconds_per_call']}, stock "
        f"{report['sam']['stock_encoder_seconds_per_call']}; MedLAM s/patch "
        f"{med['seconds_per_patch']} (width {med['width']})"
    )
    gpu = report["peak_gpu_mb"]
    lines.append(
        f"peak RSS {report['peak_rss_mb']:.0f} MB"
        + (f", peak GPU {gpu:.0f} MB" if gpu is not None else "")
    )
    lines.append(
        f"speedup vs published (estimate): {report['speedup_vs_published']}x; encoder "
        f"calls {report['encoder_call_ratio']}x fewer"
    )
    if report.get("projected"):
        lines.append(
            f"PROJECTED: the first {report['sampling']['sample_calls_per_kind']} network calls "
            "of each kind ran, the rest were replayed and priced at their measured mean "
            "(benchmark_sampling.py); counts are the run's"
        )
    m = report["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['torch_threads']} threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + f", torch {m['torch']}; engine MedLAM {report['engine']['medlam']}, SAM encoder "
        f"{report['engine']['sam_encoder']}"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", type=Path, help="benchmark the first query of this config")
    p.add_argument("--query", type=int, default=0, help="which query of the config (0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small synthetic case: 256x256x10, 8 organs, 1 support, SPL interval 4, "
        "MedLAM width 2, real-size ViT-B",
    )
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    p.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 2.5])
    p.add_argument("--organs", type=int, default=16)
    p.add_argument("--supports", type=int, default=5)
    p.add_argument("--mode", choices=("SPL", "WPL"), default="SPL")
    p.add_argument("--slice-interval", type=int, default=2)
    p.add_argument(
        "--medlam-width",
        type=int,
        default=None,
        help="base width of a random-weight MedLAM (24 as published; --quick: 2)",
    )
    p.add_argument(
        "--encoder",
        choices=("fast", "stock"),
        default="fast",
        help="SAM image encoder: medlsam.segment.fast (default) or segment_anything's",
    )
    p.add_argument(
        "--boxes",
        choices=("auto", "localized", "labels"),
        default="auto",
        help="segment the localizer's boxes, or label boxes (auto: labels when MedLAM "
        "has random weights)",
    )
    p.add_argument(
        "--mss-share-mm",
        type=float,
        default=None,
        help="share MSS search patches among points on this grid pitch (fast mode that "
        "changes results; default: the config's, 0 = one patch per point as published)",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="run only the first N network calls of each kind and price the rest at their "
        "measured mean (projected seconds, exact counts; for cases that take hours on a CPU)",
    )
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="how MedLAM and the SAM encoder run on the CPU (default: the config's [run] "
        "engine, auto); CUDA always runs PyTorch",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument(
        "--sam-precision",
        choices=("fp32", "bf16", "fp16"),
        help="SAM encoder precision on CUDA (default: the config's, fp32 as published)",
    )
    p.add_argument(
        "--medlam-precision",
        choices=("fp16", "fp32"),
        help="MedLAM precision on CUDA (default: the config's, fp16 as published)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    p.add_argument("--workdir", type=Path, help="where the synthetic case is written and reused")
    p.add_argument("--output", type=Path, help="segmentation output folder")
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.medlam_width is None:
        args.medlam_width = 2 if args.quick else 24
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    torch.manual_seed(0)
    report = run_benchmark(args)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
