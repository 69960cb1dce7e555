"""Kept for old command lines: ``python scripts/benchmark.py ...`` runs
``python -m medlsam.bench ...`` (see :mod:`medlsam.bench`)."""

import sys

from medlsam.bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
