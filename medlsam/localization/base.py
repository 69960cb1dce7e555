"""What a localizer offers the pipeline: boxes for a query, and (few-shot) learning from supports.

:class:`BoxLocalizer` is all a run needs to segment (tests pass a localizer that reads the true
boxes from labels); :class:`SupportLocalizer` is one fitted on the support scans before the
first query (the pipeline fits any such localizer); :class:`FewShotLocalizer` adds what MedLAM's
:class:`~medlsam.localization.localizer.Localizer` does before the queries: prototypes fitted on
the support scans, saved and loaded, and a fingerprint of its weights for the run record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from medlsam.boxes import OrganBoxes
from medlsam.io import Volume


@runtime_checkable
class BoxLocalizer(Protocol):
    """Gives each organ's 3D boxes in a query (a CT in HU), in the query's voxel indices."""

    def predict(self, volume: Volume) -> dict[int, OrganBoxes]: ...


@runtime_checkable
class SupportLocalizer(BoxLocalizer, Protocol):
    """A :class:`BoxLocalizer` fitted on the support scans (image, label) before its first query."""

    def fit(self, supports: Iterable[tuple[Volume, Volume]], classes: Sequence[int]) -> Any: ...


@runtime_checkable
class FewShotLocalizer(SupportLocalizer, Protocol):
    """A :class:`BoxLocalizer` that learns per-organ prototypes from support scans.

    Attributes:
        fingerprint: sha256 of the weights it localizes with (recorded in ``run.json``).
        stats: work counters (``forward_passes``, ``patches``, ``forward_seconds``).
    """

    @property
    def fingerprint(self) -> str: ...

    stats: dict[str, float]

    def fit(self, supports: Iterable[tuple[Volume, Volume]], classes: Sequence[int]) -> Any: ...

    def save_prototypes(self, path: str | Path) -> Path: ...

    def load_prototypes(self, path: str | Path, classes: Sequence[int] | None = None) -> Any: ...
