"""The benchmark's command line (``python -m medlsam.bench``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medlsam.bench import __doc__ as PACKAGE_DOC
from medlsam.config import ENGINES


def _case_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--workdir", type=Path, help="where the synthetic case is written and reused")
    p.add_argument("--output", type=Path, help="segmentation output folder")


def _network_options(p: argparse.ArgumentParser) -> None:
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


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="how MedLAM and the SAM encoder run on the CPU (default: the config's [run] "
        "engine, auto); CUDA always runs PyTorch",
    )
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m medlsam.bench",
        description=(PACKAGE_DOC or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _case_options(p)
    _network_options(p)
    _device_options(p)
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with ``--medlam-width`` defaulting to 2 under ``--quick``, else 24."""
    args = build_parser().parse_args(argv)
    if args.medlam_width is None:
        args.medlam_width = 2 if args.quick else 24
    return args
