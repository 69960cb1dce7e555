"""``python -m medlsam.bench``: time MedLSAM stage by stage against the published pattern."""

from __future__ import annotations

import json
import logging
import sys

import torch

from medlsam.bench.options import parse_args
from medlsam.bench.report import table
from medlsam.bench.run import run_benchmark


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    torch.manual_seed(0)  # the random weights (timing and counts do not depend on them)
    report = run_benchmark(args)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
