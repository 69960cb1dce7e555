"""Run the library's stages on one query and read their seconds from what the stages count.

The run is medlsam-infer's for one case: :meth:`Localizer.fit` on the support scans (read one
pair at a time, as a run reads them), :func:`medlsam.pipeline.case.run_case` (localize, prompt,
segment, assemble) and :func:`medlsam.pipeline.outputs.write_case`. Stage seconds come from:

* the benchmark's own clock around the calls it makes (reading the query, ``fit``, ``predict``,
  the whole case, writing);
* the localizer's :attr:`~medlsam.localization.localizer.Localizer.stats` (``resample_seconds``:
  MedLAM preprocessing, subtracted from ``fit`` and ``predict`` to leave prototypes and
  localization);
* the segmenter's stats in :attr:`Prediction.work` (slice preprocessing, encoder, decoder) and
  the case's own ``seconds`` (assembly).

Slice preprocessing runs in a worker thread beside the encoder, so stage seconds can add up to
more than the wall time ``seconds_total``.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from medlsam.bench.labels import LabelGuidedLocalizer
from medlsam.bench.networks import Networks
from medlsam.boxes import OrganBoxes
from medlsam.config import Config
from medlsam.io import Volume, read_image, read_label
from medlsam.pipeline.case import run_case
from medlsam.pipeline.outputs import write_case
from medlsam.segment.assemble import Prediction

#: stages of the report, in pipeline order
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


class Clock:
    """Wall seconds of named stages (CUDA synchronised before each reading when in use)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = {}

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds


@dataclass
class StageRun:
    """What one benchmark run did and how long each stage took.

    Attributes:
        clock: seconds per stage (:data:`STAGES`; replayed seconds included under ``--sample``).
        seconds_total: wall seconds of reading, fitting, the case and writing (plus replayed).
        cpu_seconds: CPU seconds of this process (every thread) over the same stages, replayed
            calls not included (on a loaded machine a steadier measure than wall seconds).
        fit_stats: the localizer's stats after ``fit``; query_stats: its work on the query.
        prediction: the case's :class:`Prediction`; volume: the query.
        organs: the boxes segmented (the localizer's, or the labels' under ``--boxes labels``).
        label: the query's label map (``--boxes labels`` only).
    """

    clock: Clock
    seconds_total: float
    fit_stats: dict[str, float]
    query_stats: dict[str, float]
    prediction: Prediction
    volume: Volume
    organs: dict[int, OrganBoxes]
    label: Volume | None
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    wall: dict[str, float] = field(default_factory=dict)


def read_case(cfg: Config, query: int, labels: bool, clock: Clock):
    """Support pairs (a generator: read one at a time inside ``fit``), the query and, when
    ``labels``, its label map (benchmark input, not timed as pipeline work)."""
    data = cfg.data
    began = clock.now()
    supports = (
        (read_image(i), read_label(lab))
        for i, lab in zip(data.support_images, data.support_labels, strict=True)
    )
    volume = read_image(data.query_images[query])
    clock.add("read", clock.now() - began)
    label = None
    if labels:
        if not data.query_labels:
            raise SystemExit(f"{cfg.path}: --boxes labels needs [data] query_label_ls")
        label = read_label(data.query_labels[query])
    return supports, volume, label


def fit_stage(nets: Networks, supports, classes: list[int], clock: Clock) -> float:
    """Prototypes from the supports; returns the wall seconds of ``fit``."""
    if nets.sampler is not None:
        nets.sampler.stage = "prototypes"
    began = clock.now()
    nets.localizer.fit(supports, classes)
    wall = clock.now() - began
    resampled = nets.localizer.stats["resample_seconds"]
    clock.add("preprocess", resampled)
    clock.add("prototypes", wall - resampled)
    return wall


def case_stage(nets: Networks, volume: Volume, label, cfg: Config, clock: Clock):
    """Localize, prompt, segment and assemble; returns the prediction, the guided localizer
    and the case's wall seconds."""
    loc = nets.localizer
    if nets.sampler is not None:
        nets.sampler.stage = "localization"
    guided = LabelGuidedLocalizer(loc, clock.now, label)
    resampled = loc.stats["resample_seconds"]
    began = clock.now()
    pred = run_case(volume, guided, nets.segmenter, cfg)
    wall = clock.now() - began
    query_resample = loc.stats["resample_seconds"] - resampled
    clock.add("preprocess", query_resample)
    clock.add("localization", guided.seconds - query_resample)
    secs = pred.work.get("seconds", {})
    for stage, key in (
        ("slice_preprocessing", "slice_preprocess"),
        ("encoder", "encoder"),
        ("decoder", "decoder"),
    ):
        clock.add(stage, secs.get(key, 0.0))
    clock.add("assembly", pred.seconds.get("assemble", 0.0))
    return pred, guided, wall


def write_stage(
    pred: Prediction, volume: Volume, cfg: Config, out_dir: Path, segmenter: str, clock: Clock
) -> None:
    """The case's outputs, as medlsam-infer writes them (figures included)."""
    began = clock.now()
    write_case(
        pred,
        volume,
        out_dir,
        out_dir / "png",
        [int(c) for c in cfg.data.fg_class],
        cfg.data.class_names,
        {"segmenter": segmenter, "benchmark": True},
    )
    clock.add("write", clock.now() - began)


def run_stages(
    nets: Networks, cfg: Config, query: int, labels: bool, out_dir: Path, cuda: bool
) -> StageRun:
    """Every stage once on query ``query``; stage seconds as the module docstring says."""
    clock = Clock(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cpu_began = time.process_time()
    supports, volume, label = read_case(cfg, query, labels, clock)
    fit_wall = fit_stage(nets, supports, [int(c) for c in cfg.data.fg_class], clock)
    fit_stats = dict(nets.localizer.stats)
    del supports
    pred, guided, case_wall = case_stage(nets, volume, label, cfg, clock)
    query_stats = {k: nets.localizer.stats[k] - fit_stats[k] for k in fit_stats}
    write_stage(pred, volume, cfg, out_dir, nets.segmenter.name, clock)
    total = clock.seconds["read"] + fit_wall + case_wall + clock.seconds["write"]
    if nets.sampler is not None:  # replayed calls at their measured cost
        nets.sampler.enabled = False
        for stage, seconds in nets.sampler.projected.items():
            clock.add(stage, seconds)
            total += seconds
    run = StageRun(clock, total, fit_stats, query_stats, pred, volume, guided.organs, label)
    run.wall = {"fit": fit_wall, "case": case_wall}
    run.cpu_seconds = time.process_time() - cpu_began
    run.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return run
