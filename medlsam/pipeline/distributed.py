"""Runs under ``torchrun``: one shard per rank, records gathered and merged by rank 0.

**torchrun.** Where ``RANK`` and ``WORLD_SIZE`` are set, rank ``r`` runs shard ``r + 1`` of
``WORLD_SIZE`` on ``cuda:LOCAL_RANK`` (when the device asked for is ``auto``/``cuda`` and CUDA
exists; else the CPU). ``torch.distributed`` is initialised only at the end (``gloo`` on the
CPU, ``nccl`` on CUDA) for one ``all_gather_object`` of the records and a barrier; ranks need
no shared file system for the record (the masks are where each rank wrote them). The
collective timeout is :data:`DIST_TIMEOUT_S` (``MEDLSAM_DIST_TIMEOUT_S`` overrides it): ranks
that finish early wait that long for the slowest one.

(:mod:`medlsam.pipeline.shard` defines the shards and the records; this module sits above
:mod:`medlsam.pipeline.run` so that neither imports the other in a cycle.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medlsam.errors import ConfigError
from medlsam.pipeline.report import write_infer_report
from medlsam.pipeline.run import run
from medlsam.pipeline.shard import RECORD, Shard, merge_records

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
        """``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when CUDA exists, else ``cpu``."""
        import torch

        if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
            return "cpu"
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {requested!r}: CUDA is not available on this machine (use cpu or auto)"
            )
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {self.local_rank}: only {torch.cuda.device_count()} CUDA device(s) "
                "visible; expected one GPU per process (torchrun --nproc_per_node <= GPUs)"
            )
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"


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


def gather_objects(env: DistEnv, obj: Any, device: str) -> list[Any]:
    """Every rank's ``obj`` (picklable; in rank order), via one ``all_gather_object``.

    Initialises ``torch.distributed`` from the ``torchrun`` environment (``gloo`` on the CPU,
    ``nccl`` on CUDA) and leaves it initialised for :func:`finish`.
    """
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=float(os.environ.get("MEDLSAM_DIST_TIMEOUT_S", DIST_TIMEOUT_S)))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=timeout)
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


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


def run_sharded(cfg: Any, device: str = "auto", shard: Shard | None = None, **options: Any) -> Any:
    """:func:`medlsam.pipeline.run.run` on this process's part of the queries.

    Outside ``torchrun``: ``shard`` (default: everything). Under ``torchrun`` with several
    ranks: the rank's shard on its device; then the records are gathered, rank 0 writes the
    merged ``run.json``, every rank waits for it, and every rank returns a report of the
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
    report = run(cfg, device=here, shard=env.shard, merge=False, **options)
    try:
        mine = {
            "record": report.record,
            "ok": report.ok,
            "skipped": report.skipped,
            "failed": [list(f) for f in report.failed],
        }
        everyone = gather_objects(env, mine, here)
        if env.rank == 0:
            header = {k: v for k, v in report.record.items() if k != "cases"}
            path = merge_records(
                report.output, header, [e["record"] for e in everyone], report.order
            )
            logger.info("%d ranks finished: records merged into %s", env.world_size, path)
            write_infer_report(report.output)
    finally:
        finish(here)
    report.ok = [c for e in everyone for c in e["ok"]]
    report.skipped = [c for e in everyone for c in e["skipped"]]
    report.failed = [(c, m) for e in everyone for c, m in e["failed"]]
    report.cases, report.shard = list(report.order), Shard()
    report.run_json = report.output / RECORD
    return report
