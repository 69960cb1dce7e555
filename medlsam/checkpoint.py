"""Reading weight files safely: the one place that calls ``torch.load``.

Only tensors and plain containers are unpickled (``weights_only``), so a checkpoint never runs
code, and every way a file can be wrong becomes one :class:`~medlsam.errors.CheckpointError`
line naming the file. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import pickle
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
