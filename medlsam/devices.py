"""Devices and numeric precision: which device a run uses and in which precision each network
runs there, and timing that is honest on CUDA.

**Precision.** ``[vit] precision`` (``fp32``, ``bf16``, ``fp16``) is the SAM image encoder's
precision and ``[run] medlam_precision`` (``fp16``, ``fp32``) MedLAM's. The defaults are the
published ones: SAM in fp32, MedLAM in fp16 (the published code runs MedLAM under fp16
autocast and SAM in fp32). Reduced precision applies on CUDA only: on the CPU both networks
always run in fp32, whatever the config says. What a run really used (:func:`effective`) is
recorded in ``run.json`` settings and in prototypes files, so outputs made with different
numerics are never mixed.

**Devices.** :func:`resolve_device` turns ``auto``/``cpu``/``cuda``/``cuda:N`` into a device that
exists, or raises a one-line :class:`~medlsam.errors.ConfigError`. :func:`rank_cuda_index`
maps a ``torchrun`` ``LOCAL_RANK`` to a CUDA index, accepting the layout in which each task
sees exactly one GPU (``CUDA_VISIBLE_DEVICES`` set per task by the launcher).

**Timing.** CUDA kernels run asynchronously, so a wall clock around a network call measures
only the launch; :class:`Stopwatch` synchronises the device before reading the clock.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from medlsam.config import (  # noqa: F401 (re-exported)
    MEDLAM_PRECISIONS,
    PUBLISHED_PRECISION,
    SAM_PRECISIONS,
)
from medlsam.errors import ConfigError

_DTYPES: Mapping[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: plain fp32)."""
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {sorted(_DTYPES)}, not {precision!r}")
    return _DTYPES[precision]


def effective(precision: str, device: torch.device | str) -> str:
    """The precision a network really runs in on ``device``: ``fp32`` on the CPU, else the
    one asked for (a ``bf16`` request on a GPU without bfloat16 is a ConfigError)."""
    autocast_dtype(precision)
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"[vit] precision = bf16: {torch.cuda.get_device_name(device)} has no bfloat16; "
            "use fp16 or fp32"
        )
    return precision


@dataclass(frozen=True)
class Precisions:
    """The precisions of one run, as recorded (``fp32`` everywhere on the CPU)."""

    sam: str
    medlam: str

    def as_dict(self) -> dict[str, str]:
        return {"sam_precision": self.sam, "medlam_precision": self.medlam}


def run_precisions(
    sam: str, medlam: str, device: torch.device | str, reproduce: str | None = None
) -> Precisions:
    """Effective precisions of a run; ``reproduce = "published"`` forces the published ones
    (:data:`PUBLISHED_PRECISION`) whatever the config asks."""
    if reproduce == "published":
        sam, medlam = PUBLISHED_PRECISION["sam"], PUBLISHED_PRECISION["medlam"]
    return Precisions(effective(sam, device), effective(medlam, device))


# --------------------------------------------------------------------------------------------
# devices


def _cuda_index(name: str) -> int | None:
    """``cuda`` -> None, ``cuda:N`` -> N (ConfigError for anything else after ``cuda``)."""
    if name == "cuda":
        return None
    head, _, index = name.partition(":")
    if head != "cuda" or not index.isdigit():
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N (N = 0, 1, ...)")
    return int(index)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda[:N]`` checked to exist.

    Raises:
        ConfigError: CUDA asked for on a machine without it, or ``cuda:N`` past the last GPU
            (one line naming the value and what is visible).
    """
    name = str(name).strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    index = _cuda_index(name)
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r}: CUDA is not available on this machine (use cpu or auto)"
        )
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        there = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise ConfigError(
            f"device {name!r}: this machine shows {count} CUDA device(s), {there} "
            "(check CUDA_VISIBLE_DEVICES)"
        )
    return name


def rank_cuda_index(local_rank: int, device_count: int) -> int:
    """The CUDA index a ``torchrun`` rank uses.

    One GPU per process on a shared node (``LOCAL_RANK < device_count``): ``LOCAL_RANK``.
    One visible GPU per task (a launcher sets ``CUDA_VISIBLE_DEVICES`` per task, so every task
    sees its own GPU as ``cuda:0``): 0, whatever ``LOCAL_RANK``.

    Raises:
        ConfigError: no GPU, or several visible but fewer than ``LOCAL_RANK + 1``.
    """
    if device_count < 1:
        raise ConfigError("torchrun: no CUDA device visible to this process (use --device cpu)")
    if device_count == 1:
        return 0
    if local_rank >= device_count:
        raise ConfigError(
            f"LOCAL_RANK {local_rank}: only {device_count} CUDA device(s) visible; expected one "
            "GPU per process (torchrun --nproc_per_node <= GPUs) or one visible GPU per task"
        )
    return local_rank


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall-clock seconds of a region, synchronising CUDA at both ends::

    with Stopwatch(device) as clock:
        out = model(x)
    clock.seconds
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._began
