"""An on-disk cache of exported networks (ONNX graphs), keyed by what they were built from.

An entry is a folder ``<root>/<name>-<key[:16]>/`` holding the exported files and a
``meta.json`` written last. ``key`` is the sha256 of a JSON description of everything the export
depends on: the weights' sha256, the exporting engine and its version, the torch version, the
input shapes and the outputs. A different weight file, engine version or shape is a different
key, so a stale entry is never reused: it is rebuilt, and older entries of the same ``name`` are
removed. An entry is built in a temporary folder beside the cache and renamed into place in one
step, so a crash or a concurrent build never leaves a half-written entry under the final name;
an entry whose ``meta.json`` is missing, unreadable or names another key is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

META = "meta.json"
#: environment variable naming the cache root
CACHE_ENV = "MEDLSAM_CACHE_DIR"


def default_root() -> Path:
    """``$MEDLSAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/medlsam``, else ``~/.cache/medlsam``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "exports"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medlsam" / "exports"


def cache_key(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``fields`` (sorted keys)."""
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ExportCache:
    """Folders of exported files under ``root``, built once per key.

    Args:
        root: cache folder (created on first build); default :func:`default_root`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def folder(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key[:16]}"

    def lookup(self, name: str, key: str) -> Path | None:
        """The entry's folder when it is complete and was built for ``key``, else None."""
        folder = self.folder(name, key)
        meta = _read_meta(folder)
        if meta is None or meta.get("key") != key:
            return None
        return folder

    def get(self, name: str, fields: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        """The folder of the entry for ``fields``, built first with ``build(tmp_folder)`` if it
        is absent, incomplete or stale.

        ``build`` writes the exported files into the (empty) folder it is given; the folder is
        renamed into place only after ``build`` returns and ``meta.json`` is written.
        """
        key = cache_key(fields)
        found = self.lookup(name, key)
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.folder(name, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=self.root))
        try:
            build(tmp)
            meta = {"key": key, "name": name, "fields": dict(fields)}
            (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            if target.exists():  # incomplete or foreign content under our name
                _remove(target)
            try:
                os.replace(tmp, target)
            except OSError:
                # another process renamed its complete entry in first: use that one
                if self.lookup(name, key) is None:
                    raise
        finally:
            if tmp.exists():
                _remove(tmp)
        self._drop_stale(name, keep=target)
        logger.info("exported %s to %s", name, target)
        return target

    def _drop_stale(self, name: str, keep: Path) -> None:
        """Remove other entries of ``name`` (built from other weights, versions or shapes)."""
        for other in self.root.glob(f"{name}-*"):
            suffix = other.name[len(name) + 1 :]
            is_entry = len(suffix) == 16 and all(c in "0123456789abcdef" for c in suffix)
            if other != keep and other.is_dir() and is_entry:
                logger.info("removing stale export %s", other)
                _remove(other)
