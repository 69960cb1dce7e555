"""``run.json``: what a run was (versions, resolved config, checkpoints) and how each case went.

Layout::

    {"format": "medlsam-run", "version": 1,
     "upper_bound_baseline": false,           # true: boxes from the query labels (not MedLSAM)
     "uses_query_labels": [],                 # "boxes_from_labels" and/or "gt_slice_threshold"
     "versions": {...}, "device": "cpu", "gpu": null | "NVIDIA H100 ...",
     "config_file": "...", "config": {...},
     "segmenter": {"backend", "checkpoint", "checkpoint_sha256"},
     "localizer": {"checkpoint", "checkpoint_sha256", "prototypes"},
     "settings": {...},                       # everything the outputs depend on, with
                                              # device type, sam_precision, medlam_precision
     "cases": {"<case>": {"status": "ok" | "failed", "error": null | "one line",
                          "seconds": {stage: s}, "slices_segmented": n,
                          "encoder_calls": n, "decoder_calls": n, ...}}}

It is rewritten atomically after every case, so an interrupted run leaves a valid file. A
re-run with the same ``settings`` skips cases whose entry is ``ok`` and whose files exist; a
re-run with other settings into the same folder is refused unless ``overwrite``. A case's
``status`` may also be ``interrupted`` (Ctrl-C or SIGTERM during it; redone by a re-run).

Shard ``K`` of ``N`` (``--shard K/N`` or a ``torchrun`` rank) writes the same layout to
``run.shard-K-of-N.json`` with ``"shard": {"index", "count", "cases"}`` in its header; the
merged ``run.json`` of a sharded run has ``"shards": {"count", "records"}``
(:mod:`medlsam.pipeline.shard`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from medlsam.config import Config
from medlsam.errors import OutputError
from medlsam.io import atomic_write_text
from medlsam.localization.base import FewShotLocalizer

logger = logging.getLogger(__name__)

FORMAT = "medlsam-run"
VERSION = 1


def versions() -> dict[str, str]:
    """Versions of Python and the packages results depend on."""
    found = {"python": platform.python_version()}
    for package in (
        "medlsam",
        "torch",
        "segment-anything",
        "numpy",
        "scipy",
        "nibabel",
        "SimpleITK",
    ):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def jsonable(value: Any) -> Any:
    """Dataclasses, paths, enums, tuples and mappings -> plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def numerics(device: str, segmenter: Any, localizer: Any) -> dict[str, str]:
    """Where the networks run and in which precision: ``{"device": "cpu" | "cuda",
    "sam_precision": ..., "medlam_precision": ...}`` (a precision only for a network that
    runs; ``fp32`` on the CPU). The device type, not its index: ranks on ``cuda:0`` and
    ``cuda:1`` share settings."""
    out = {"device": str(device).split(":")[0]}
    if getattr(segmenter, "precision", None) is not None:
        out["sam_precision"] = str(segmenter.precision)
    if localizer is not None and getattr(localizer, "precision", None) is not None:
        out["medlam_precision"] = str(localizer.precision)
    return out


def settings(
    cfg: Config,
    segmenter_sha: str | None,
    localizer_sha: str | None,
    boxes_from_labels: bool,
    run_numerics: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What the outputs of a case depend on (query lists and output folders excluded), with
    the device type and precisions of :func:`numerics`."""
    data = cfg.data
    out: dict[str, Any] = {
        **(run_numerics or {}),
        "fg_class": list(data.fg_class),
        "backend": cfg.vit.backend,
        "overlap": cfg.vit.overlap,
        "segmenter_sha256": segmenter_sha,
        "seed": cfg.run.seed,
        "boxes_from_labels": boxes_from_labels,
        "gt_slice_threshold": data.gt_slice_threshold if cfg.run.use_gt_slice_threshold else None,
    }
    if cfg.vit.backend.startswith("medsam"):
        out["medsam_normalization"] = cfg.vit.medsam_normalization
    if not boxes_from_labels:
        out.update(localizer_settings(cfg, localizer_sha))
    if cfg.vit.backend == "classic":
        out["support_images"] = [str(p) for p in data.support_images]
    if cfg.run.published:  # a query's start centres depend on the queries before it
        out["reproduce"] = cfg.run.reproduce
        out["query_images"] = [str(p) for p in data.query_images]
    return out


def _gpu_name(device: str) -> str | None:
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def localizer_settings(cfg: Config, localizer_sha: str | None) -> dict[str, Any]:
    """What the boxes of a case depend on."""
    data = cfg.data
    return {
        "bbox_mode": data.bbox_mode.value,
        "slice_interval": data.slice_interval,
        "feature_scale_ls": list(data.feature_scale_ls),
        "rdr_steps": data.rdr_steps,
        "mss_share_mm": data.mss_share_mm,
        "localizer_sha256": localizer_sha,
        "support_images": [str(p) for p in data.support_images],
        **(
            {
                "localize_method": "registration",
                "fusion": cfg.localize.fusion,
                "refine": cfg.localize.refine,
            }
            if cfg.localize.method == "registration"
            else {}
        ),
    }


def fingerprint(localizer: Any) -> str | None:
    """The localizer's weights fingerprint, or None for one that is not few-shot (tests)."""
    return localizer.fingerprint if isinstance(localizer, FewShotLocalizer) else None


def _common(cfg: Config, device: str) -> dict[str, Any]:
    return {
        "versions": versions(),
        "device": device,
        "gpu": _gpu_name(device),
        "config_file": str(cfg.path),
        "config": jsonable(cfg),
    }


def localize_header(cfg: Config, device: str, localizer: Any) -> dict[str, Any]:
    """The header of a ``medlsam-localize`` record (``localize.json``): no segmenter."""
    sha = fingerprint(localizer)
    return {
        "command": "localize",
        **_common(cfg, device),
        "localizer": _localizer_block(cfg, sha),
        "settings": {
            **numerics(device, None, localizer),
            "fg_class": list(cfg.data.fg_class),
            "seed": cfg.run.seed,
            **localizer_settings(cfg, sha),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_header(
    cfg: Config, device: str, segmenter: Any, localizer: Any, baseline: bool
) -> dict[str, Any]:
    """The description of a run at the top of its record (everything but ``cases``)."""
    localizer_sha = fingerprint(localizer)
    segmenter_sha = segmenter.checkpoint_sha256
    uses = (["boxes_from_labels"] if baseline else []) + (
        ["gt_slice_threshold"] if cfg.run.use_gt_slice_threshold else []
    )
    return {
        "upper_bound_baseline": baseline,
        "uses_query_labels": uses,
        **_common(cfg, device),
        "segmenter": {
            "backend": segmenter.name,
            "checkpoint": str(cfg.weight.vit_load_path) if segmenter_sha else None,
            "checkpoint_sha256": segmenter_sha,
        },
        "localizer": None if baseline else _localizer_block(cfg, localizer_sha),
        "settings": settings(
            cfg,
            segmenter_sha,
            localizer_sha,
            baseline,
            numerics(device, segmenter, None if baseline else localizer),
        ),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _localizer_block(cfg: Config, localizer_sha: str | None) -> dict[str, Any]:
    """The ``localizer`` entry of a record: method, why it was chosen, checkpoint."""
    method = cfg.localize
    if method.method == "registration":
        return {
            "method": "registration",
            "chosen_by": method.chosen_by,
            "fusion": method.fusion,
            "refine": method.refine,
            "checkpoint": None,
            "checkpoint_sha256": None,
        }
    return {
        "method": "medlam",
        "chosen_by": method.chosen_by,
        "checkpoint": str(cfg.weight.medlam_load_path),
        "checkpoint_sha256": localizer_sha,
        "prototypes": str(cfg.data.prototypes) if cfg.data.prototypes else None,
    }


class RunRecord:
    """The ``run.json`` of one output folder."""

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], overwrite: bool = False) -> RunRecord:
        """Start or resume the record at ``path``.

        ``header`` holds the run's description (with ``settings``). An existing file with the
        same settings is resumed (its cases kept); with other settings it is an
        :class:`OutputError` unless ``overwrite``, which starts afresh.
        """
        doc = {"format": FORMAT, "version": VERSION, **header, "cases": {}}
        if path.is_file() and not overwrite:
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise OutputError(
                    f"{path}: unreadable run record ({err}); use --overwrite or another --output"
                ) from err
            if not isinstance(old, dict) or old.get("format") != FORMAT:
                raise OutputError(f"{path}: not a medlsam run record; use another --output")
            before, now = old.get("settings", {}), header.get("settings", {})
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if changed:
                raise OutputError(
                    f"{path}: the outputs there come from other settings ({', '.join(changed)} "
                    "differ); use --overwrite to replace them or --output for a new folder"
                )
            doc["cases"] = dict(old.get("cases", {}))
            doc["started"] = old.get("started", doc.get("started"))
        return cls(path, doc)

    @property
    def cases(self) -> dict[str, dict[str, Any]]:
        return self.doc["cases"]

    def is_ok(self, case: str) -> bool:
        return self.cases.get(case, {}).get("status") == "ok"

    def set_case(self, case: str, entry: dict[str, Any]) -> None:
        self.cases[case] = entry
        self.save()

    def save(self) -> None:
        self.doc["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(self.path, json.dumps(jsonable(self.doc), indent=2) + "\n")
