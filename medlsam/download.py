"""Fetching a checkpoint on request (``medlsam-weights download``): the only code in medlsam
that opens a network connection, and only when a user runs that command.

The file is streamed to ``.<name>.part`` beside its destination, with a progress bar. An
interrupted transfer resumes where it stopped (HTTP ``Range``), both within one run (a dropped
connection is retried) and in the next run (the ``.part`` file is kept). The sha256 of the whole
file is checked before it is renamed into place; on a mismatch nothing is kept.
"""

from __future__ import annotations

import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from medlsam.errors import CheckpointError, InputError, OutputError
from medlsam.weights import sha256_of

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Attempts per run; each resumes from the bytes already on disk.
ATTEMPTS = 5
TIMEOUT_S = 60.0


class ChecksumError(CheckpointError):
    """The downloaded file's sha256 is not the expected one (exit code 4)."""


def _is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _content_range_start(response: http.client.HTTPResponse) -> int | None:
    text = response.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(text.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _fetch_once(url: str, part: Path, bar: tqdm) -> None:
    """One attempt: append to ``part`` from its size on (or restart if the server ignores
    ``Range``); raises on a dropped connection, leaving what arrived on disk."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medlsam-weights"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http/s only)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range not satisfiable: the file is complete
            return
        raise
    with response:
        resumed = response.status == 206 and _content_range_start(response) == have
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        end = None if length is None else start + int(length)
        bar.reset(total=end)
        bar.update(start)
        with open(part, "ab" if resumed else "wb") as handle:
            while block := response.read(CHUNK):
                handle.write(block)
                bar.update(len(block))
            handle.flush()
            os.fsync(handle.fileno())
    if end is not None and part.stat().st_size < end:
        raise http.client.IncompleteRead(b"", end - part.stat().st_size)


def _fetch_url(url: str, part: Path, progress: bool) -> None:
    with tqdm(unit="B", unit_scale=True, desc=part.name[1:-5], disable=not progress) as bar:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _fetch_once(url, part, bar)
                return
            except urllib.error.HTTPError as err:
                raise InputError(f"{url}: the server answered {err.code} {err.reason}") from err
            except (OSError, http.client.HTTPException) as err:  # incl. timeouts, resets
                size = part.stat().st_size if part.exists() else 0
                if attempt == ATTEMPTS:
                    raise InputError(
                        f"{url}: download failed after {ATTEMPTS} attempts ({err or type(err)}); "
                        f"{size} bytes kept in {part}: run the same command again to resume"
                    ) from err
                logger.warning("%s: connection lost at %d bytes (%s); resuming", url, size, err)
                time.sleep(0.2 * attempt)


def _copy_file(source: Path, part: Path, progress: bool) -> None:
    if not source.is_file():
        raise InputError(f"{source}: file not found (expected a checkpoint file or an http(s) URL)")
    with (
        open(source, "rb") as src,
        open(part, "wb") as dst,
        tqdm(total=source.stat().st_size, unit="B", unit_scale=True, disable=not progress) as bar,
    ):
        while block := src.read(CHUNK):
            dst.write(block)
            bar.update(len(block))
        dst.flush()
        os.fsync(dst.fileno())


def fetch(source: str, dest: Path, sha256: str, progress: bool = True) -> Path:
    """Fetch ``source`` (an http(s) URL or a local file) to ``dest``, verified.

    Raises:
        ChecksumError: the sha256 differs (nothing is kept).
        InputError: the source cannot be read (a partial download is kept for resuming).
        OutputError: the destination folder cannot be written.
    """
    expected = sha256.lower()
    part = dest.with_name(f".{dest.name}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _is_url(source):
            _fetch_url(source, part, progress)
        else:
            _copy_file(Path(source).expanduser(), part, progress)
    except PermissionError as err:
        raise OutputError(f"{dest.parent}: cannot write ({err.strerror})") from err
    found = sha256_of(part)
    if found != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{dest.name}: sha256 of the download is {found}, expected {expected}; "
            f"nothing was kept (source: {source})"
        )
    os.replace(part, dest)
    return dest


def digest_matches(path: Path, sha256: str) -> bool:
    """Whether an existing file already has the expected sha256."""
    return path.is_file() and sha256_of(path) == sha256.lower()
