"""The case loop of a run: one bad query never stops the others, and nothing is half-written.

For each query, in list order, :func:`run_cases` calls ``do_case(n, bar)`` (which reads,
localizes, segments and writes query ``n``) and records the outcome in the run record,
rewritten atomically after every case:

* success: the case's entry (``status: ok``);
* an error (any ``Exception``): its partial outputs are removed, the entry says ``failed``
  with the one-line reason, the error is logged, and the next case goes on, EXCEPT for an
  :class:`~medlsam.errors.OutputError` that every later case would meet too (full disk, quota,
  read-only or unwritable folder, I/O error): the run stops with it (exit code 5);
* ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM turned into it by the CLI): the case's partial
  outputs are removed, its entry says ``interrupted``, and the interrupt goes on up (exit code
  130). Every file is written to a temporary name and renamed, so no half-written file is ever
  left under a final name.

A re-run redoes every case whose entry is not ``ok`` (``failed``, ``interrupted``, absent).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from medlsam.errors import MedlsamError, OutputError
from medlsam.pipeline.outputs import remove_case
from medlsam.pipeline.record import RunRecord

logger = logging.getLogger(__name__)

#: errno values after which every later case would fail too: the run stops (exit 5).
FATAL_ERRNO = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def one_line(err: BaseException) -> str:
    """The first line of an error, with its type where it is not a medlsam error."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, MedlsamError):
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def stops_the_run(err: BaseException) -> bool:
    """Whether ``err`` would fail every later case too (full disk, unwritable folder...)."""
    if not isinstance(err, OutputError):
        return False
    cause = err.__cause__
    return not isinstance(cause, OSError) or cause.errno is None or cause.errno in FATAL_ERRNO


def not_done_entry(image: Path, status: str, error: str, began: float) -> dict[str, Any]:
    """The record entry of a case that did not finish (``failed`` or ``interrupted``)."""
    return {
        "image": str(image),
        "status": status,
        "error": error,
        "seconds": {"total": round(time.perf_counter() - began, 4)},
        "slices_segmented": 0,
        "encoder_calls": 0,
        "decoder_calls": 0,
    }


def run_cases(
    do_case: Callable[[int, Any], dict[str, Any]],
    seg_dir: Path,
    png_dir: Path | None,
    todo: Sequence[int],
    cases: Sequence[str],
    images: Sequence[Path],
    record: RunRecord,
    report: Any,
    raise_errors: bool = False,
    progress: bool = True,
) -> None:
    """Run ``do_case(n, bar)`` for every ``n`` in ``todo``; see the module docstring.

    Args:
        do_case: does query ``n`` and returns its record entry; ``bar`` is the progress bar.
        seg_dir, png_dir: where the case's outputs go (removed when it fails).
        todo: query indices to do, in order; ``cases``/``images``: names and files of the
            whole query list.
        record: the run record, updated after each case.
        report: a :class:`medlsam.pipeline.run.RunReport` (``ok`` and ``failed`` are appended to).
        raise_errors: re-raise a case's error (after removing its outputs) instead of
            recording it (``--debug``).
    """
    bar = tqdm(list(todo), desc="cases", unit="case", disable=not progress)
    try:
        for n in bar:
            case, began = cases[n], time.perf_counter()
            try:
                entry = do_case(n, bar)
            except KeyboardInterrupt:
                remove_case(seg_dir, png_dir, case)
                with contextlib.suppress(OutputError):
                    record.set_case(
                        case, not_done_entry(images[n], "interrupted", "interrupted", began)
                    )
                raise KeyboardInterrupt(
                    f"during {case} (its partial outputs were removed)"
                ) from None
            except Exception as err:  # one bad case must not stop the others
                remove_case(seg_dir, png_dir, case)
                if raise_errors:
                    raise
                message = one_line(err)
                entry = not_done_entry(images[n], "failed", message, began)
                if stops_the_run(err):
                    with contextlib.suppress(OutputError):
                        record.set_case(case, entry)
                    raise
                logger.error("%s: failed: %s", case, message)
                logger.debug("%s: traceback", case, exc_info=True)
                report.failed.append((case, message))
            else:
                report.ok.append(case)
            record.set_case(case, entry)
    finally:
        bar.close()
