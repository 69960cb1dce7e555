"""Command-line entry points. Each command module has ``main(argv=None) -> int``.

Shared here: logging set-up and the mapping of :class:`~medlsam.errors.MedlsamError` to one
line on stderr and the error's exit code (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from medlsam.errors import MedlsamError

#: Exit codes of every medlsam command.
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the run finished, but one or more cases failed (listed in the summary)
EXIT_INTERRUPTED = 130


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--debug`` (tracebacks, debug logging) and ``--quiet`` (warnings only)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (safe under test capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    """Log medlsam's messages to stderr as ``LEVEL: message``; calling it again replaces that."""
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("medlsam")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def run_main(
    body: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, run ``body(args)``, and turn user errors into one line and an exit code."""
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(debug, bool(getattr(args, "quiet", False)))
    try:
        return body(args)
    except MedlsamError as err:
        if debug:
            raise
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
