"""DICOM-SEG output for queries read from a DICOM folder (``[run] dicom_seg``, ``--dicom-seg``).

One ``<case>.seg.dcm`` per query, written with highdicom (the ``dicom`` extra:
``pip install "medlsam[dicom]"``): a binary Segmentation with one segment per predicted organ,
labelled with its TotalSegmentator-style name and coded with its SNOMED CT concept where one is
known (:mod:`medlsam.organs`; otherwise the generic "Organ"), whose frames reference the source
CT series and instances they were computed on (same study, patient and frame of reference).
Voxel ``(i, j, k)`` of the NIfTI label map is pixel ``(row j, column i)`` of source slice ``k``.
"""

from __future__ import annotations

import io as _bytes_io
import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from medlsam.errors import ConfigError, InputError
from medlsam.io import Volume, atomic_write_bytes, dicom_series_files
from medlsam.organs import organ_file_name, sct_keyword

#: Install hint where highdicom is missing.
INSTALL_HINT = 'DICOM-SEG output needs highdicom: pip install "medlsam[dicom]"'


def check_available() -> None:
    """Raise a one-line :class:`ConfigError` when highdicom cannot be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError as err:
        raise ConfigError(INSTALL_HINT) from err


def _version() -> str:
    try:
        return metadata.version("medlsam")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout without install
        return "0"


def _sources(image: Volume) -> list:
    """The source datasets in voxel slice order, checked against the volume's geometry."""
    import pydicom

    if image.path is None or not Path(image.path).is_dir():
        raise InputError(f"{image.path}: DICOM-SEG needs a query read from a DICOM folder")
    files = dicom_series_files(image.path)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:  # an empty value means the default repertoire: say it by omission
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet
    if len(datasets) != image.shape[2]:
        raise InputError(
            f"{image.path}: {len(datasets)} DICOM files for {image.shape[2]} slices; "
            "expected one file per slice"
        )
    for k, ds in enumerate(datasets):
        lps = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        ijk = image.to_index(lps * [-1.0, -1.0, 1.0])
        if not np.allclose(ijk, [0, 0, k], atol=1e-2):
            raise InputError(
                f"{files[k]}: slice position {lps.tolist()} is not slice {k} of the volume; "
                "cannot reference the source instances"
            )
    return datasets


def _description(number: int, name: str, algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    keyword = sct_keyword(name)
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=organ_file_name(name),
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=getattr(codes.SCT, keyword) if keyword else codes.SCT.Organ,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def write_dicom_seg(
    mask: np.ndarray,
    image: Volume,
    class_names: Mapping[int, str],
    path: str | os.PathLike[str],
) -> Path | None:
    """Write ``mask`` (class ids, ``image.shape``) as a DICOM-SEG of ``image``'s DICOM series.

    Returns the file, or None where no organ was predicted (nothing to encode).
    """
    check_available()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ids = [int(c) for c in np.unique(mask) if c != 0]
    if not ids:
        return None
    datasets = _sources(image)
    frames = np.zeros((image.shape[2], image.shape[1], image.shape[0]), dtype=np.uint8)
    for number, class_id in enumerate(ids, start=1):
        frames[np.transpose(mask == class_id, (2, 1, 0))] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medlsam", family=codes.cid7162.ArtificialIntelligence, version=_version()
    )
    descriptions = [
        _description(n, class_names.get(c, f"class_{c}"), algorithm)
        for n, c in enumerate(ids, start=1)
    ]
    with warnings.catch_warnings():  # highdicom's advice on the source's patient name
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = _segmentation(hd, datasets, frames, descriptions)
    buffer = _bytes_io.BytesIO()
    seg.save_as(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _segmentation(hd, datasets: list, frames: np.ndarray, descriptions: list):
    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=max(int(getattr(datasets[0], "SeriesNumber", 0) or 0), 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medlsam",
        manufacturer_model_name="MedLSAM",
        software_versions=_version(),
        device_serial_number="0",
        series_description="medlsam segmentation",
    )
