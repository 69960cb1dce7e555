"""One benchmark run: the case, the networks, the stages, the published pattern, the report."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from medlsam.bench.case import QUICK, CaseSpec, write_case_apart
from medlsam.bench.networks import bench_config, build_networks
from medlsam.bench.published import published_seconds, published_work, unit_costs
from medlsam.bench.report import build_report, machine
from medlsam.bench.stages import run_stages
from medlsam.config import load_config
from medlsam.devices import resolve_device
from medlsam.segment.fast import configure_cpu_threads

logger = logging.getLogger(__name__)


def case_spec(args: argparse.Namespace) -> CaseSpec:
    """The synthetic case of the command line (``--quick``, or ``--shape`` ... ``--mode``)."""
    if args.quick:
        return QUICK
    return CaseSpec(
        shape=tuple(args.shape),
        spacing=tuple(args.spacing),
        organs=args.organs,
        supports=args.supports,
        mode=args.mode,
        slice_interval=args.slice_interval,
    )


def prepare_case(args: argparse.Namespace) -> tuple[Path, CaseSpec | None]:
    """``--config``, or the synthetic case drawn once into ``--workdir`` (then reused)."""
    if args.config is not None:
        return Path(args.config), None
    spec = case_spec(args)
    name = "quick" if args.quick else "x".join(map(str, spec.shape)) + f"_{spec.organs}o"
    folder = args.workdir or Path(tempfile.gettempdir()) / "medlsam-benchmark" / name
    logger.info("synthetic case in %s (drawn once, then reused)", folder)
    return write_case_apart(folder, spec), spec


def run_benchmark(args: argparse.Namespace, sam_model: Any = None) -> dict:
    """Run the benchmark of the command line ``args``; returns the report.

    ``sam_model``: the SAM to time when the config names no checkpoint (default: a
    published-size one with random weights; tests pass a tiny one).
    """
    threads = configure_cpu_threads(args.threads)
    device = resolve_device(args.device)
    config_path, spec = prepare_case(args)
    cfg = bench_config(load_config(config_path), args)
    nets = build_networks(cfg, args, device, sam_model)
    boxes = args.boxes
    if boxes == "auto":
        boxes = "labels" if nets.random_medlam else "localized"
    out_dir = Path(args.output or config_path.parent / "result")
    run = run_stages(nets, cfg, args.query, boxes == "labels", out_dir, device.startswith("cuda"))
    work = published_work(run, nets)
    costs = unit_costs(run, nets, args.encoder)
    published = published_seconds(run, work, costs)
    context = {
        "encoder": args.encoder,
        "boxes": boxes,
        "organs": len(cfg.data.fg_class),
        "mode": cfg.data.bbox_mode.value,
        "slice_interval": cfg.data.slice_interval,
        "case": {
            "config": str(config_path),
            "query": str(cfg.data.query_images[args.query]),
            "shape": list(run.volume.shape),
            "spacing": [round(float(s), 4) for s in run.volume.spacing],
            "supports": len(cfg.data.support_images),
            "spec": None if spec is None else spec.key(),
        },
        "machine": machine(device, threads),
    }
    return build_report(run, nets, work, costs, published, context)
