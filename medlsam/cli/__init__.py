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
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

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


def shard_arg(text: str) -> Any:
    """argparse type of ``--shard K/N``."""
    from medlsam.errors import ConfigError
    from medlsam.pipeline.shard import parse_shard

    try:
        return parse_shard(text)
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected K/N with 1 <= K <= N, e.g. 2/8"
        ) from None


def add_run_arguments(parser: argparse.ArgumentParser, sam: bool = True) -> None:
    """``--config --output --device`` (with the precision flags of
    :func:`add_device_arguments`) ``--overwrite --shard``: what every case-loop command takes."""
    from pathlib import Path

    parser.add_argument("--config", type=Path, required=True, help="a MedLSAM config (.txt/YAML)")
    parser.add_argument("--output", type=Path, help="output folder (default: [data] seg_save_path)")
    add_device_arguments(parser, sam=sam)
    parser.add_argument(
        "--overwrite", action="store_true", help="redo cases already finished in the output folder"
    )
    parser.add_argument(
        "--shard",
        type=shard_arg,
        metavar="K/N",
        help="run only queries K, K+N, K+2N, ... of the list (1 <= K <= N), e.g. "
        "--shard ${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}; not with torchrun",
    )


def report_cases(prog: str, report: Any, kind: str = "") -> int:
    """Print a run's summary line (and every failed case) on stderr; returns the exit code."""
    total = len(report.cases)
    part = f" [shard {report.shard}]" if report.shard.count > 1 else ""
    scope = f" of {total} queries" + (
        f" (shard {report.shard} of {len(report.order)})" if report.shard.count > 1 else ""
    )
    print(
        f"{prog}{kind}{part}: {len(report.ok)} done, {len(report.skipped)} already done, "
        f"{len(report.failed)} failed{scope}; results in {report.output}",
        file=sys.stderr,
    )
    if report.failed:
        print(f"{len(report.failed)} of {total} queries failed:", file=sys.stderr)
        for case, message in report.failed:
            print(f"  {case}: {message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"by signal {signal.Signals(signum).name}")


def run_main_sigterm(
    body: Callable[[argparse.Namespace], int],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """:func:`run_main` with SIGTERM (a scheduler's time limit) handled like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        return run_main(body, parser, argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run_main(body, parser, argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
