"""The run records the commands leave beside their outputs: their names and how to read them.

``medlsam-infer`` keeps ``run.json`` for a whole run, and a shard of ``--shard K/N`` its own
``run.shard-K-of-N.json``; ``medlsam-localize`` keeps ``localize.json`` (and
``localize.shard-K-of-N.json``) so that both commands may share an output folder. The
pipeline (to resume and merge) and ``medlsam-eval`` (to see which cases ran) list and read
them here.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: record name stems: ``medlsam-infer`` and ``medlsam-localize``
RUN, LOCALIZE = "run", "localize"
RECORD = "run.json"
SHARD_RECORD = re.compile(r"^run\.shard-(\d+)-of-(\d+)\.json$")


def record_name(stem: str = RUN, index: int = 1, count: int = 1) -> str:
    """``<stem>.json`` for a whole run, ``<stem>.shard-K-of-N.json`` for shard K of N."""
    return f"{stem}.json" if count == 1 else f"{stem}.shard-{index}-of-{count}.json"


def record_files(folder: Path, stem: str = RUN) -> list[Path]:
    """``<stem>.json`` and every ``<stem>.shard-K-of-N.json`` in ``folder``, the first first."""
    if not folder.is_dir():
        return []
    whole = record_name(stem)
    shard = re.compile(rf"^{re.escape(stem)}\.shard-(\d+)-of-(\d+)\.json$")
    found = [p for p in folder.iterdir() if p.name == whole or shard.match(p.name)]
    return sorted(found, key=lambda p: (p.name != whole, p.name))


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
