"""Helpers for the robustness and scale-out tests: one tiny kit shared by a test module.

The kit is a synthetic cohort (two supports, a few queries of 40x36x24 voxels), a width-2
MedLAM checkpoint and its prototypes file, so a test's run loads prototypes instead of fitting
them; a query's localization then costs about a second on one CPU thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from infer_helpers import make_cohort

from medlsam.config import load_config, write_config_txt
from medlsam.io import Volume, write_nifti, write_path_list
from medlsam.localization.network import MedLAM, save_medlam
from medlsam.pipeline.setup import build_localizer, prepare_localizer, supports_loader

#: torch seed of the tiny MedLAM: with it both organs of the kit's queries land inside the
#: image, so the masks written are not empty (determinism tests would be vacuous otherwise).
MEDLAM_SEED = 1


@dataclass
class Kit:
    root: Path
    medlam: Path
    prototypes: Path
    supports: list[Path]
    support_labels: list[Path]
    queries: list[Path]
    labels: dict[str, Volume]


def build_kit(root: Path, n_queries: int = 3) -> Kit:
    """Write the cohort, the tiny MedLAM checkpoint and its prototypes under ``root``."""
    torch.manual_seed(MEDLAM_SEED)
    save_medlam(MedLAM(2), root / "medlam_tiny.pth")
    config, labels = make_cohort(
        root,
        n_queries=n_queries,
        extra={"weight": {"medlam_load_path": "medlam_tiny.pth"}, "data": {"prototypes": "p.pt"}},
    )
    cfg = load_config(config)
    localizer = build_localizer(cfg, "cpu")
    prepare_localizer(localizer, cfg, supports_loader(cfg))
    return Kit(
        root=root,
        medlam=root / "medlam_tiny.pth",
        prototypes=root / "p.pt",
        supports=[root / f"support_{n}.nii.gz" for n in range(2)],
        support_labels=[root / f"support_{n}_seg.nii.gz" for n in range(2)],
        queries=[root / f"query_{n}.nii.gz" for n in range(n_queries)],
        labels=labels,
    )


def write_config(
    folder: Path,
    kit: Kit,
    queries: list[Path] | None = None,
    *,
    supports: list[Path] | None = None,
    support_labels: list[Path] | None = None,
    query_labels: list[Path] | None = None,
    fg_class: tuple[int, ...] = (1, 2),
    prototypes: bool = True,
    medlam: Path | None = None,
    vit: dict | None = None,
    weight: dict | None = None,
    name: str = "test_case.txt",
) -> Path:
    """A config in ``folder`` over the kit's files (or those given); outputs to ``folder/out``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_path_list(folder / "query_image.txt", queries if queries is not None else kit.queries)
    write_path_list(folder / "support_image.txt", supports or kit.supports)
    write_path_list(folder / "support_label.txt", support_labels or kit.support_labels)
    data = {
        "support_image_ls": "support_image.txt",
        "support_label_ls": "support_label.txt",
        "query_image_ls": "query_image.txt",
        "fg_class": list(fg_class),
        "fg_class_name": [f"organ_{c}" for c in fg_class],
        "bbox_mode": "WPL",
        "slice_interval": False,
        "feature_scale_ls": [],
        "seg_save_path": str(folder / "out"),
    }
    if query_labels is not None:
        write_path_list(folder / "query_label.txt", query_labels)
        data["query_label_ls"] = "query_label.txt"
    if prototypes:
        data["prototypes"] = str(kit.prototypes)
    sections = {
        "data": data,
        "vit": {"net_type": "vit_b", "backend": "classic", **(vit or {})},
        "weight": {"medlam_load_path": str(medlam or kit.medlam), **(weight or {})},
    }
    return write_config_txt(folder / name, sections)


def ct_like(kit: Kit, n: int = 0) -> Volume:
    """A kit query as a Volume (to derive bad copies from)."""
    image = nib.load(str(kit.queries[n]))
    return Volume(np.asarray(image.dataobj, dtype=np.float32), image.affine)


def save(volume_or_data, affine: np.ndarray | None, path: Path) -> Path:
    """Write an array (or a Volume) as NIfTI."""
    if isinstance(volume_or_data, Volume):
        return write_nifti(volume_or_data.data, volume_or_data.affine, path)
    return write_nifti(np.asarray(volume_or_data), affine, path)


def files_of(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative paths, hidden ones included), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
