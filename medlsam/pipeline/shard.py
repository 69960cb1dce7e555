"""Scale-out: shards of the query list and their run records.

**Shards.** ``--shard K/N`` (``1 <= K <= N``) takes the queries whose index ``n`` in the
query list (0-based) has ``n % N == K - 1``: round robin, so every shard gets the same number
of queries give or take one, whatever their order on disk, and the split depends only on the
list. Nothing a case produces depends on the shard layout (each query seeds its own
generators), so the union of the shards' outputs equals a one-process run byte for byte.

**Records.** A one-process run (``N = 1``) keeps ``run.json``; shard ``K`` of ``N`` writes
``run.shard-K-of-N.json`` beside it, so shards sharing a folder never overwrite each other's
record. Every record has the same ``settings`` (:mod:`medlsam.pipeline.record`); a shard
record's header adds ``"shard": {"index": K, "count": N, "cases": [its case names]}``.
A run skips a case that ANY record of the folder with the same settings marks ``ok`` and whose
files are complete (so a run can resume another layout's work); a record with other settings
is refused unless ``--overwrite``, which deletes such stale records.

**Merging.** When every shard of a layout has finished (each of its cases has an ``ok`` or
``failed`` entry), the shards' entries are merged into one ``run.json`` (plus ``"shards":
{"count": N, "records": [...]}``): under ``torchrun`` by rank 0 after a barrier; with SLURM
arrays (independent processes) by whichever shard finishes last. The shard records are kept.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlsam.errors import ConfigError, OutputError
from medlsam.io import atomic_write_text
from medlsam.pipeline.record import FORMAT, VERSION
from medlsam.records import RECORD, RUN, read_record, record_files, record_name  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count`` of a command's run (``stem`` names its records)."""

    index: int = 1
    count: int = 1
    stem: str = field(default=RUN, compare=False)

    def __post_init__(self) -> None:
        if not (1 <= self.index <= self.count):
            raise ConfigError(
                f"shard {self.index}/{self.count}: expected K/N with 1 <= K <= N, e.g. 2/8"
            )

    def select(self, n_items: int) -> list[int]:
        """The list indices of this shard, in list order (round robin)."""
        return list(range(self.index - 1, n_items, self.count))

    @property
    def record_name(self) -> str:
        return record_name(self.stem, self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` -> :class:`Shard` (:class:`ConfigError` naming the value otherwise)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise ConfigError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return Shard(int(match.group(1)), int(match.group(2)))


# --------------------------------------------------------------------------------------------
# records of one folder


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def sibling_entries(
    folder: Path, own: str, settings: Mapping[str, Any], overwrite: bool, stem: str = RUN
) -> dict[str, dict[str, Any]]:
    """``ok`` case entries of the folder's other records made with the same ``settings``.

    Raises:
        OutputError: a record with other settings, unless ``overwrite`` (then it is deleted:
            it describes outputs this run replaces).
    """
    entries: dict[str, dict[str, Any]] = {}
    for path in record_files(folder, stem):
        if path.name == own:
            continue
        doc = read_record(path)
        if doc is None:
            continue
        changed = _changed(doc.get("settings", {}), settings)
        if changed:
            if not overwrite:
                raise OutputError(
                    f"{path}: the outputs there come from other settings ({', '.join(changed)} "
                    "differ); use --overwrite to replace them or --output for a new folder"
                )
            logger.info("%s: stale run record (other settings) removed", path)
            path.unlink(missing_ok=True)
            continue
        if overwrite:
            continue
        for case, entry in doc["cases"].items():
            if isinstance(entry, dict) and entry.get("status") == "ok":
                entries.setdefault(case, entry)
    return entries


def shard_complete(doc: Mapping[str, Any]) -> bool:
    """Whether every case of a shard record has a final (``ok``/``failed``) entry."""
    cases = doc.get("cases", {})
    wanted = doc.get("shard", {}).get("cases", [])
    return all(cases.get(c, {}).get("status") in ("ok", "failed") for c in wanted)


def merge_records(
    folder: Path,
    header: Mapping[str, Any],
    shard_docs: Sequence[Mapping[str, Any]],
    order: Sequence[str],
    stem: str = RUN,
) -> Path:
    """Write ``folder/<stem>.json``: ``header`` plus the case entries of every shard record.

    Entries of an existing ``run.json`` with the same settings are kept for cases no shard
    has; cases are listed in ``order`` (the query list), then any others.
    """
    path = folder / record_name(stem)
    cases: dict[str, Any] = {}
    if path.is_file():
        old = read_record(path)
        if old is not None and not _changed(old.get("settings", {}), header.get("settings", {})):
            cases.update(old["cases"])
    for doc in shard_docs:
        cases.update(doc.get("cases", {}))
    rank = {c: n for n, c in enumerate(order)}
    ordered = dict(sorted(cases.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    doc = {"format": FORMAT, "version": VERSION}
    doc.update({k: v for k, v in header.items() if k not in ("shard", "cases")})
    counts = {int(d.get("shard", {}).get("count", 1)) for d in shard_docs}
    doc["shards"] = {
        "count": max(counts) if counts else 1,
        "records": [
            record_name(stem, int(d["shard"]["index"]), int(d["shard"]["count"]))
            for d in shard_docs
            if "shard" in d
        ],
    }
    doc["cases"] = ordered
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def merge_if_complete(
    folder: Path, shard: Shard, header: Mapping[str, Any], order: Sequence[str]
) -> Path | None:
    """Merge the records of ``shard``'s layout into ``<stem>.json`` once all have finished."""
    docs = []
    for k in range(1, shard.count + 1):
        path = folder / record_name(shard.stem, k, shard.count)
        doc = read_record(path) if path.is_file() else None
        if doc is None or _changed(doc.get("settings", {}), header.get("settings", {})):
            return None
        if not shard_complete(doc):
            return None
        docs.append(doc)
    merged = merge_records(folder, header, docs, order, shard.stem)
    logger.info("all %d shards finished: records merged into %s", shard.count, merged)
    return merged


def union_entries(docs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Case entries of several records (later ones win)."""
    out: dict[str, dict[str, Any]] = {}
    for doc in docs:
        out.update(doc.get("cases", {}))
    return out
