"""Reading weight files safely: the one place that calls ``torch.load``.

Only tensors and plain containers are unpickled (``weights_only``), so a checkpoint never runs
code, and every way a file can be wrong becomes one :class:`~medlsam.errors.CheckpointError`
line naming the file. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from medlsam.errors import CheckpointError


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]


def load_weights(path: str | os.PathLike[str], what: str, missing_hint: str = "") -> object:
    """``torch.load`` a checkpoint on the CPU, weights only.

    Args:
        path: the file.
        what: the model's name for messages ("MedLAM", "SAM", ...).
        missing_hint: appended to the not-found message (where the file should come from).

    Raises:
        CheckpointError: missing, empty, not a weights-only pickle, or corrupt/truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} checkpoint not found{missing_hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} checkpoint is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: cannot read as a weights-only torch checkpoint ({_first_line(err)}); "
            "re-save its state_dict with torch.save"
        ) from err
    except Exception as err:  # torch.load raises many unrelated types on damaged files
        raise CheckpointError(
            f"{path}: corrupt or truncated {what} checkpoint ({_first_line(err)})"
        ) from err


def describe(items: list[str], limit: int = 3) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    return ", ".join(items[:limit]) + (
        f" (+{len(items) - limit} more)" if len(items) > limit else ""
    )


def fit_problems(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]
) -> dict[str, str]:
    """How a state dict differs from the expected keys and shapes.

    Returns:
        ``{"mis-shaped": ..., "missing keys": ..., "unexpected keys": ...}`` with only the
        kinds that occur, each a short description; empty when the state dict fits exactly.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [
        f"{k} {list(state[k].shape)} (expected {list(expected[k])})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    found = {
        "mis-shaped": describe(shaped, 2) if shaped else "",
        "missing keys": describe(missing) if missing else "",
        "unexpected keys": describe(unexpected) if unexpected else "",
    }
    return {kind: text for kind, text in found.items() if text}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
