"""The published checkpoints medlsam can use, and the demo checkpoint it ships.

:data:`REGISTRY` names each published checkpoint with what is known of it: file name, size,
sha256 (``None`` where medlsam has no verified checksum: never guessed), where it comes from, its
licence and where medlsam's configs expect it. ``medlsam-weights`` lists and fetches them
(:mod:`medlsam.download`); nothing else in medlsam ever downloads.

The demo checkpoint ``medlsam/data/medlam_demo.pth`` ships inside the package, with the
settings it was trained for in ``medlam_demo.json`` beside it. ``medlam_load_path = demo`` in a
config selects it, and those settings become the defaults of the keys the config leaves out.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medlsam.errors import CheckpointError

#: The word that names the shipped demo checkpoint in ``[weight] medlam_load_path``.
DEMO = "demo"


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint (facts only; ``None`` where unknown)."""

    name: str
    file: str
    what: str
    size: str  # as known: exact bytes, or an estimate from the parameter count, marked so
    sha256: str | None
    source: str
    url: str | None  # a direct download link, where one is published
    licence: str


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"

REGISTRY: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            "medlam",
            "medlam.pth",
            "MedLAM localizer, base width 24 (15,067,878 parameters)",
            "~60 MB (15,067,878 fp32 parameters)",
            None,
            "the MedLSAM authors' release (links in the openmedlab/MedLSAM README)",
            None,
            "CC-BY-NC-4.0",
        ),
        Checkpoint(
            "sam_vit_b",
            "sam_vit_b_01ec64.pth",
            "Segment Anything ViT-B (93,735,728 parameters)",
            "~375 MB (fp32 tensors)",
            None,
            "Meta's segment-anything release",
            _SAM + "sam_vit_b_01ec64.pth",
            "Apache-2.0",
        ),
        Checkpoint(
            "sam_vit_l",
            "sam_vit_l_0b3195.pth",
            "Segment Anything ViT-L (312,343,088 parameters)",
            "~1.25 GB (fp32 tensors)",
            None,
            "Meta's segment-anything release",
            _SAM + "sam_vit_l_0b3195.pth",
            "Apache-2.0",
        ),
        Checkpoint(
            "sam_vit_h",
            "sam_vit_h_4b8939.pth",
            "Segment Anything ViT-H (641,090,864 parameters)",
            "~2.56 GB (fp32 tensors)",
            None,
            "Meta's segment-anything release",
            _SAM + "sam_vit_h_4b8939.pth",
            "Apache-2.0",
        ),
        Checkpoint(
            "medsam_vit_b",
            "medsam_vit_b.pth",
            "MedSAM ViT-B (SAM ViT-B architecture, other weights)",
            "~375 MB (fp32 tensors)",
            None,
            "the MedSAM authors' release (links in the bowang-lab/MedSAM README)",
            None,
            "Apache-2.0",
        ),
    )
}


def sha256_of(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def demo_checkpoint() -> Path:
    """Path of the demo MedLAM checkpoint shipped as package data.

    Raises:
        CheckpointError: the package was installed without its data file.
    """
    path = Path(str(resources.files("medlsam") / "data" / "medlam_demo.pth"))
    if not path.is_file():
        raise CheckpointError(
            f"{path}: the demo MedLAM checkpoint is missing from the installed package; "
            "reinstall medlsam or recreate it with scripts/train_demo_checkpoint.sh"
        )
    return path


def demo_settings() -> dict[str, dict[str, Any]]:
    """The config settings the demo checkpoint was trained for, by section and key.

    Stored beside it (``medlam_demo.json``, key ``"settings"``); with ``medlam_load_path =
    demo`` they are the defaults of every key a config leaves out.
    """
    path = demo_checkpoint().with_suffix(".json")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))["settings"]
        if not all(isinstance(v, dict) for v in settings.values()):
            raise TypeError("sections are not mappings")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: cannot read the demo checkpoint's settings ({err}); expected JSON with "
            '"settings": {section: {key: value}}'
        ) from err
    return {str(s): dict(keys) for s, keys in settings.items()}


def is_demo(value: Any) -> bool:
    """Whether a ``medlam_load_path`` value names the shipped demo checkpoint."""
    return isinstance(value, str) and value.strip().lower() == DEMO
