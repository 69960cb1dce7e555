"""Command-line entry points. Each command module has ``main(argv=None) -> int``.

Shared here: logging set-up and the mapping of errors to one line on stderr and an exit code
(a traceback only with ``--debug``).

Exit codes of every medlsam command:

===  ==========================================================================================
0    everything asked for was done
1    the run finished, but some cases failed: each is listed in the summary with its reason
     (``medlsam-infer``/``medlsam-localize``: a query; ``medlsam-eval``: a prediction or boxes
     file); the others were written, and a re-run redoes only the failed ones
2    configuration error (:class:`~medlsam.errors.ConfigError`: config file, its keys or list
     files, ``--shard``, ``--device``), or a bad command line (argparse)
3    input error stopping the whole run (:class:`~medlsam.errors.InputError`): a support scan or
     label, a prototypes file, the evaluation's reference labels (a bad QUERY is not fatal: 1)
4    checkpoint error (:class:`~medlsam.errors.CheckpointError`): missing, truncated, or of
     another architecture or size; raised before any case runs
5    output error (:class:`~medlsam.errors.OutputError`): unwritable output folder, full disk,
     or a folder holding outputs of other settings; finished cases are kept
70   internal error (a bug): one line, the traceback with ``--debug``; please report it
130  interrupted (Ctrl-C or SIGTERM, e.g. a scheduler's time limit): the case in progress is
     removed, finished cases are kept, and the same command resumes
===  ==========================================================================================
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from medlsam.errors import MedlsamError

#: Exit codes of every medlsam command (see the module docstring).
EXIT_OK = 0
EXIT_SOME_FAILED = 1  # the run finished, but one or more cases failed (listed in the summary)
EXIT_USAGE = 2  # argparse's own code for a bad command line; also ConfigError.exit_code
EXIT_INTERNAL = 70  # an unexpected error (a bug); traceback with --debug
EXIT_INTERRUPTED = 130


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--debug`` (tracebacks, debug logging) and ``--quiet`` (warnings only)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")


def add_device_arguments(parser: argparse.ArgumentParser, sam: bool = True) -> None:
    """``--device`` and the precision flags (``--sam-precision`` when ``sam``)."""
    parser.add_argument(
        "--device",
        metavar="auto|cpu|cuda|cuda:N",
        help="where networks run (default: [run] device; under torchrun cuda:LOCAL_RANK)",
    )
    if sam:
        parser.add_argument(
            "--sam-precision",
            choices=("fp32", "bf16", "fp16"),
            help="SAM image encoder precision on CUDA (default: [vit] precision, fp32 as "
            "published); the CPU runs fp32",
        )
    parser.add_argument(
        "--medlam-precision",
        choices=("fp16", "fp32"),
        help="MedLAM precision on CUDA (default: [run] medlam_precision, fp16 as published); "
        "the CPU runs fp32",
    )


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
    """Parse ``argv``, run ``body(args)``, and turn errors into one line and an exit code."""
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
    except KeyboardInterrupt as err:
        where = f" {err}" if str(err) else ""
        print(
            f"{parser.prog}: interrupted{where}; finished cases are kept: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Exception as err:
        if debug:
            raise
        first = (str(err).strip().splitlines() or [""])[0]
        print(
            f"{parser.prog}: internal error: {type(err).__name__}: {first} (run with --debug "
            "for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
