"""Runs under ``torchrun``: one shard per rank, prototypes computed once, records merged by
rank 0.

**Devices.** Where ``RANK`` and ``WORLD_SIZE`` are set, rank ``r`` runs shard ``r + 1`` of
``WORLD_SIZE`` on its GPU (when the device asked for is ``auto``/``cuda`` and CUDA exists; else
the CPU): ``cuda:LOCAL_RANK`` when the process sees several GPUs, ``cuda:0`` when it sees one
(launchers that give each task its own GPU through ``CUDA_VISIBLE_DEVICES``;
:func:`medlsam.devices.rank_cuda_index`).

**Prototypes.** Every rank calls :class:`PrototypeShare` at the point where it would load or
fit the support prototypes, whether it has queries left or not. If any rank needs them, rank
0 alone loads ``[data] prototypes`` or fits them from the support scans (writing the file
when one is named) and sends them to the others (one broadcast: no shared file system
needed), which check them as they would check the file. A support-scan error on rank 0
fails every rank with the same one-line message; a rank 0 that failed before reaching this
point leaves the others to fit their own.

**Records.** ``torch.distributed`` (``gloo`` on the CPU, ``nccl`` on CUDA) is initialised at the
first collective; at the end one ``all_gather_object`` of the records and a barrier: rank 0
writes the merged ``run.json``. A rank that fails outside a case (an output, checkpoint or
support error, or a bug) still takes part: it sends what its record holds and its error, the
merge keeps the other ranks' cases, every rank's summary lists ``rank N`` as failed, and
the failing rank then exits with its error. The collective timeout is
:data:`DIST_TIMEOUT_S` (``MEDLSAM_DIST_TIMEOUT_S`` overrides it): ranks that finish early
wait that long for the slowest one.

(:mod:`medlsam.pipeline.shard` defines the shards and the records; this module sits above
:mod:`medlsam.pipeline.run` so that neither imports the other in a cycle.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from medlsam.errors import ConfigError, MedlsamError
from medlsam.pipeline.shard import RUN, Shard, merge_records, record_name

logger = logging.getLogger(__name__)

#: Seconds a finished rank waits at the final gather for the others (default 2 days).
DIST_TIMEOUT_S = 2 * 24 * 3600


@dataclass(frozen=True)
class DistEnv:
    """The process's place in a ``torchrun`` job (from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def shard(self) -> Shard:
        return Shard(self.rank + 1, self.world_size)

    def device(self, requested: str) -> str:
        """The rank's GPU for ``auto``/``cuda`` when CUDA exists (:func:`rank_cuda_index`),
        else ``cpu``; the GPU becomes the process's current device."""
        import torch

        from medlsam.devices import rank_cuda_index

        if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
            return "cpu"
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {requested!r}: CUDA is not available on this machine (use cpu or auto)"
            )
        index = rank_cuda_index(self.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return f"cuda:{index}"


def dist_env(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """The ``torchrun`` environment, or None outside ``torchrun``."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as err:
        raise ConfigError(f"torchrun environment RANK/WORLD_SIZE/LOCAL_RANK: {err}") from err
    if not (0 <= rank < world) or local < 0:
        raise ConfigError(f"torchrun environment: RANK {rank}, WORLD_SIZE {world}: inconsistent")
    return DistEnv(rank, world, local)


def _init(device: str) -> None:
    """Initialise ``torch.distributed`` from the ``torchrun`` environment (once)."""
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_initialized():
        return
    timeout = timedelta(seconds=float(os.environ.get("MEDLSAM_DIST_TIMEOUT_S", DIST_TIMEOUT_S)))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)


def gather_objects(env: DistEnv, obj: Any, device: str) -> list[Any]:
    """Every rank's ``obj`` (picklable; in rank order), via one ``all_gather_object``."""
    import torch.distributed as dist

    _init(device)
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, device: str) -> Any:
    """Rank 0's ``obj`` on every rank (the others pass anything)."""
    import torch.distributed as dist

    _init(device)
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class RankFailed:
    """Sent in place of prototypes by a rank 0 that failed before computing them."""

    message: str


class PrototypeShare:
    """The prototypes of a ``torchrun`` job, computed by rank 0 only (module docstring)."""

    def __init__(self, env: DistEnv, device: str) -> None:
        self.env, self.device = env, device
        self.called = False

    def __call__(self, localizer: Any, cfg: Any, supports: Any, needed: bool) -> None:
        from medlsam.localization.prototypes import Prototypes
        from medlsam.pipeline.setup import prepare_localizer

        self.called = True
        if not any(gather_objects(self.env, needed, self.device)):
            return
        if self.env.rank == 0:
            try:
                prepare_localizer(localizer, cfg, supports)
                payload: Any = localizer.prototypes.to_bytes()
            except Exception as err:
                # a support-scan error fails every rank the same way; after a bug the other
                # ranks fit their own prototypes
                failed = RankFailed(f"{type(err).__name__}: {err}")
                broadcast_object(err if isinstance(err, MedlsamError) else failed, self.device)
                raise
            broadcast_object(payload, self.device)
            return
        payload = broadcast_object(None, self.device)
        if isinstance(payload, MedlsamError):
            raise type(payload)(str(payload))
        if not needed:
            return
        if isinstance(payload, RankFailed):
            logger.warning("rank 0 failed (%s); fitting the prototypes here", payload.message)
            prepare_localizer(localizer, cfg, supports)
            return
        source = f"prototypes from rank 0 ({cfg.data.prototypes or 'the support scans'})"
        localizer.use_prototypes(Prototypes.from_bytes(payload, source), source, cfg.data.fg_class)
        logger.info("prototypes received from rank 0")

    def abandon(self, error: BaseException) -> None:
        """Take part in the collectives this rank did not reach (it failed before them)."""
        if self.called:
            return
        self.called = True
        if any(gather_objects(self.env, False, self.device)):
            failed = RankFailed(f"{type(error).__name__}: {error}")
            broadcast_object(failed if self.env.rank == 0 else None, self.device)


def finish(device: str) -> None:
    """Final barrier (every rank waits until rank 0 has written ``run.json``), then tear down."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        if device.startswith("cuda"):
            dist.barrier(device_ids=[int(device.split(":")[1]) if ":" in device else 0])
        else:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_sharded(
    run: Callable[..., Any],
    cfg: Any,
    device: str = "auto",
    shard: Shard | None = None,
    **options: Any,
) -> Any:
    """``run(cfg, device=, shard=, merge=, share=, **options)`` on this process's part of the
    queries.

    ``run`` is a command's run function (:func:`medlsam.pipeline.run.run` or
    :func:`medlsam.pipeline.localize.localize`); it returns a
    :class:`~medlsam.pipeline.loop.RunReport`.

    Outside ``torchrun``: ``shard`` (default: everything). Under ``torchrun`` with several
    ranks: the rank's shard on its device; then the records are gathered, rank 0 writes the
    merged record, every rank waits for it, and every rank returns a report of the
    WHOLE run (every rank's ``ok``, ``skipped`` and ``failed`` cases).

    Raises:
        ConfigError: ``shard`` given under ``torchrun`` with several ranks (use one or the
            other), or an inconsistent ``torchrun`` environment.
    """
    env = dist_env()
    if env is None or env.world_size == 1:
        here = env.device(device) if env is not None else device
        return run(cfg, device=here, shard=shard, **options)
    if shard is not None and shard.count > 1:
        raise ConfigError(
            f"--shard {shard} under torchrun ({env.world_size} ranks): each rank already takes "
            "its shard; use --shard without torchrun, or torchrun without --shard"
        )
    here = env.device(device)
    share = PrototypeShare(env, here)
    report, error = None, None
    try:
        report = run(cfg, device=here, shard=env.shard, merge=False, share=share, **options)
    except Exception as err:  # outside a case: take part in the gather, then fail
        error = err
        share.abandon(err)
    try:
        everyone = gather_objects(env, _summary(env, report, error), here)
        if env.rank == 0:
            _merge(env, report, everyone)
    finally:
        finish(here)
    if error is not None:
        raise error
    assert report is not None
    report.ok = [c for e in everyone for c in e["ok"]]
    report.skipped = [c for e in everyone for c in e["skipped"]]
    report.failed = [(c, m) for e in everyone for c, m in e["failed"]]
    report.cases, report.shard = list(report.order), Shard(stem=report.shard.stem)
    report.run_json = report.output / record_name(report.shard.stem)
    return report


def _summary(env: DistEnv, report: Any, error: BaseException | None) -> dict[str, Any]:
    """What a rank sends to the final gather."""
    if report is None:
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return {
            "record": None,
            "ok": [],
            "skipped": [],
            "failed": [[f"rank {env.rank}", f"{type(error).__name__}: {message}"]],
        }
    return {
        "record": report.record,
        "stem": report.shard.stem,
        "output": str(report.output),
        "order": list(report.order),
        "ok": report.ok,
        "skipped": report.skipped,
        "failed": [list(f) for f in report.failed],
    }


def _merge(env: DistEnv, report: Any, everyone: list[dict[str, Any]]) -> None:
    """Rank 0: merge the records the ranks have into ``<stem>.json`` (its own, if it failed,
    taken from the first rank that has one); ``report.html`` for ``medlsam-infer``'s run."""
    from pathlib import Path

    docs = [e["record"] for e in everyone if e.get("record")]
    first = next((e for e in everyone if e.get("record")), None)
    if first is None:
        logger.error("no rank produced a run record: nothing to merge")
        return
    output = report.output if report is not None else Path(first["output"])
    order = report.order if report is not None else first["order"]
    stem = report.shard.stem if report is not None else first["stem"]
    header = {k: v for k, v in first["record"].items() if k != "cases"}
    path = merge_records(output, header, docs, order, stem)
    logger.info("%d ranks finished: records merged into %s", env.world_size, path)
    if stem == RUN:  # medlsam-infer's run: its report.html
        from medlsam.pipeline.report import write_infer_report

        write_infer_report(output)
