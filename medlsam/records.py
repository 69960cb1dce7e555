"""The run records ``medlsam-infer`` leaves beside its outputs: their names and how to read them.

``run.json`` is the record of a whole run; a shard of ``--shard K/N`` keeps its own
``run.shard-K-of-N.json``. Both the pipeline (to resume and merge) and ``medlsam-eval`` (to
see which cases ran) list and read them here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD = "run.json"
SHARD_RECORD = re.compile(r"^run\.shard-(\d+)-of-(\d+)\.json$")


def record_files(folder: Path) -> list[Path]:
    """``run.json`` and every ``run.shard-K-of-N.json`` in ``folder``, ``run.json`` first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name == RECORD or SHARD_RECORD.match(p.name)]
    return sorted(found, key=lambda p: (p.name != RECORD, p.name))


def read_record(path: Path) -> dict[str, Any] | None:
    """A run record as a dict, or None (with a warning) when it cannot be read."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable run record ignored (%s)", path, err)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), dict):
        logger.warning("%s: not a medlsam run record; ignored", path)
        return None
    return doc
