"""``medlsam-train``: self-supervised MedLAM training from a list of raw CT files.

Example::

    medlsam-train --config configs/train_demo.txt --device cpu
    medlsam-train --config configs/train_demo.txt \
        --resume result/demo_training/checkpoint/medlam_demo_state.tar
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from medlsam.cli import EXIT_OK, add_common_arguments, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlsam-train",
        description=(
            "Train MedLAM self-supervised (relative distance regression + multi-scale "
            "similarity) on unlabelled CTs listed in a training config (published .txt format). "
            "Writes <model_save_name>.pth (published checkpoint format, loadable by "
            "medlsam-localize), <model_save_name>_best.pth, a resumable "
            "<model_save_name>_state.tar and a loss log <model_save_name>_log.jsonl."
        ),
    )
    parser.add_argument("--config", required=True, help="training config (.txt, INI)")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N] (default auto)"
    )
    parser.add_argument(
        "--resume", metavar="CKPT", help="continue from a *_state.tar (or load a .pth)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    import torch

    from medlsam.train.trainer import check_device, load_train_config, train

    config = load_train_config(args.config)
    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(config, device, resume=args.resume, progress=not args.no_progress)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s on {device}")
    print(f"weights:    {result.weights}")
    print(f"resumable:  {result.state}")
    print(f"loss log:   {result.log}")
    if result.best_valid is not None:
        print(f"best validation MSE: {result.best_valid:.1f} mm^2")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_run, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
