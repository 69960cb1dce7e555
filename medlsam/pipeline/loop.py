"""The case loop every command shares: one bad query never stops the others, nothing is
half-written, and a killed run resumes.

:func:`run_task` drives a :class:`CaseTask` (``medlsam-infer``'s or ``medlsam-localize``'s
work on one query) over a config's query list, or one shard of it: it opens the run record
(``<stem>.json``), skips the cases a record of the folder with the same settings marks ``ok``
and whose files are complete, prepares the task (saying whether some case is left), and merges
the shard records when the last shard finishes (:mod:`medlsam.pipeline.shard`).

For each query left, in list order, :func:`run_cases` calls ``task.do_case(n, bar)`` and
records the outcome in the run record, rewritten atomically after every case:

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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from medlsam.errors import MedlsamError, OutputError
from medlsam.pipeline.record import RunRecord
from medlsam.pipeline.shard import Shard, merge_if_complete, sibling_entries

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


@dataclass
class RunOptions:
    """How a command runs (the same for ``medlsam-infer`` and ``medlsam-localize``).

    Attributes:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        output: output folder (default: the config's ``[data] seg_save_path``).
        overwrite: redo cases already finished (and replace records of other settings).
        boxes_from_labels: ``medlsam-infer`` only: the manual-prompt upper bound.
        progress: show progress bars.
        raise_errors: re-raise a case's error instead of recording it (``--debug``).
        shard: run only this shard of the query list (default: all of it).
        merge: the last shard to finish merges the shard records.
        segmenter, localizer: components built already (tests, or reuse between runs).
        figures: ``medlsam-infer`` only: write the PNG figures (``--no-png``: none).
        share: ``share(localizer, cfg, supports, needed)`` takes the place of loading or
            fitting the prototypes, called whether or not a case is left (under ``torchrun``
            every rank takes part: :mod:`medlsam.pipeline.distributed`).
    """

    device: str = "auto"
    output: str | Path | None = None
    overwrite: bool = False
    boxes_from_labels: bool = False
    progress: bool = True
    raise_errors: bool = False
    shard: Shard | None = None
    merge: bool = True
    segmenter: Any = None
    localizer: Any = None
    figures: bool = True
    share: Any = None


def run_options(options: RunOptions | str | None = None, **overrides: Any) -> RunOptions:
    """``options`` (default: all defaults) with the named fields replaced.

    A string for ``options`` is the device (``run(cfg, "cpu")``).
    """
    if isinstance(options, str):
        options, overrides = None, {"device": options, **overrides}
    return replace(options or RunOptions(), **overrides)


@dataclass
class RunReport:
    """What a run did: the output folder, its record and each case's fate.

    ``cases`` are this run's queries (its shard's), ``order`` the whole query list;
    ``record`` is the record written (``<stem>.json`` or the shard's), as a dict.
    """

    output: Path
    run_json: Path
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    shard: Shard = field(default_factory=Shard)
    cases: list[str] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return not self.failed


class CaseTask(Protocol):
    """One command's work on one query, as :func:`run_task` drives it.

    Attributes:
        stem: the record's name stem (``run`` -> ``run.json``, ``localize`` -> ...).
        folder: where the outputs and the record go.
        header: the record's header (with ``settings``: what the outputs depend on).
    """

    stem: str
    folder: Path
    header: dict[str, Any]

    def complete(self, case: str) -> bool:
        """Whether every output file of ``case`` exists (a re-run may skip it)."""
        ...

    def remove(self, case: str) -> None:
        """Delete ``case``'s outputs (after a failure or an interrupt)."""
        ...

    def prepare(self, needed: bool) -> None:
        """Work done once before the first case (fit on the support scans...), called
        whether or not a case is left (``needed``: some is)."""
        ...

    def do_case(self, n: int, bar: Any) -> dict[str, Any]:
        """Do query ``n`` (its index in the query list); returns its record entry."""
        ...


def _skip_done(
    task: CaseTask, record: RunRecord, others: dict, mine: Sequence[int], cases: Sequence[str]
) -> list[str]:
    """The cases of ``mine`` done already (by this record, or another one of the folder)."""
    done = []
    for n in mine:
        case = cases[n]
        if not task.complete(case):
            continue
        if not record.is_ok(case) and case in others:
            record.cases[case] = others[case]  # done by another shard layout or run
        if record.is_ok(case):
            done.append(case)
    return done


def run_task(
    task: CaseTask, cases: Sequence[str], images: Sequence[Path], options: RunOptions
) -> RunReport:
    """Run ``task`` on every query (or ``options.shard``'s), resuming what a record says is done.

    Args:
        task: the command's work (see :class:`CaseTask`).
        cases, images: names and files of the whole query list.
        options: ``overwrite``, ``shard``, ``merge``, ``progress``, ``raise_errors``.
    """
    shard = replace(options.shard or Shard(), stem=task.stem)
    header = dict(task.header)
    mine = shard.select(len(cases))
    if shard.count > 1:
        mine_names = [cases[n] for n in mine]
        header["shard"] = {"index": shard.index, "count": shard.count, "cases": mine_names}
    record = RunRecord.open(task.folder / shard.record_name, header, options.overwrite)
    others = sibling_entries(
        task.folder, shard.record_name, header["settings"], options.overwrite, task.stem
    )
    report = RunReport(
        task.folder, record.path, shard=shard, cases=[cases[n] for n in mine], order=list(cases)
    )
    if not options.overwrite:
        report.skipped = _skip_done(task, record, others, mine, cases)
    if report.skipped:
        logger.info("%d case(s) already done in %s, skipped", len(report.skipped), task.folder)
    record.save()
    done = set(report.skipped)
    todo = [n for n in mine if cases[n] not in done]
    task.prepare(needed=bool(todo))
    if todo:
        outcome = run_cases(task, todo, cases, images, record, options)
        report.ok, report.failed = outcome.ok, outcome.failed
    report.record = record.doc
    if options.merge and shard.count > 1:
        merge_if_complete(task.folder, shard, header, cases)
    return report


@dataclass
class Outcome:
    """The cases :func:`run_cases` finished (``ok``) and those that failed, with the reason."""

    ok: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _interrupted(task: CaseTask, record: RunRecord, case: str, image: Path, began: float):
    task.remove(case)
    with contextlib.suppress(OutputError):
        record.set_case(case, not_done_entry(image, "interrupted", "interrupted", began))
    return KeyboardInterrupt(f"during {case} (its partial outputs were removed)")


def run_cases(
    task: CaseTask,
    todo: Sequence[int],
    cases: Sequence[str],
    images: Sequence[Path],
    record: RunRecord,
    options: RunOptions,
) -> Outcome:
    """Run ``task.do_case(n, bar)`` for every ``n`` in ``todo``; see the module docstring.

    ``cases``/``images`` are the names and files of the whole query list; ``record`` is
    updated after each case. With ``options.raise_errors`` a case's error is re-raised (after
    its outputs are removed) instead of recorded (``--debug``).
    """
    outcome = Outcome()
    bar = tqdm(list(todo), desc="cases", unit="case", disable=not options.progress)
    try:
        for n in bar:
            case, began = cases[n], time.perf_counter()
            try:
                entry = task.do_case(n, bar)
            except KeyboardInterrupt:
                raise _interrupted(task, record, case, images[n], began) from None
            except Exception as err:  # one bad case must not stop the others
                task.remove(case)
                if options.raise_errors:
                    raise
                message = one_line(err)
                entry = not_done_entry(images[n], "failed", message, began)
                if stops_the_run(err):
                    with contextlib.suppress(OutputError):
                        record.set_case(case, entry)
                    raise
                logger.error("%s: failed: %s", case, message)
                logger.debug("%s: traceback", case, exc_info=True)
                outcome.failed.append((case, message))
            else:
                outcome.ok.append(case)
            record.set_case(case, entry)
    finally:
        bar.close()
    return outcome
