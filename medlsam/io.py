"""Reading and writing CT volumes and label maps; the only module that touches files of images.

Conventions, used everywhere in medlsam:

* A :class:`Volume` holds the voxel array in the file's own ``(i, j, k)`` order, exactly as
  nibabel reads a NIfTI file, and a 4x4 ``affine`` mapping voxel indices ``(i, j, k, 1)`` to
  world millimetres in RAS+ (x toward Right, y toward Anterior, z toward Superior; the NIfTI
  convention). Files read with SimpleITK (NRRD, MHA/MHD, DICOM) are
  converted to this convention, so one volume type serves every format.
* The MedLAM stage works on the "LAS array": the volume reoriented so that its axes run toward
  Left, Anterior and Superior, then transposed to ``(z, y, x)``. :func:`to_las` builds it and
  returns an :class:`IndexMap` that takes LAS-array indices back to the file's ``(i, j, k)``
  exactly, for every one of the 48 axis orientations.
* Label maps are written on the exact grid of the image they belong to (same shape, same
  affine), so they overlay the image in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.openers import ImageOpener

from medlsam.errors import InputError, OutputError
from medlsam.volume import (  # noqa: F401  (re-exported: io is the public entry point)
    KNOWN_SUFFIXES,
    NIFTI_SUFFIXES,
    SITK_SUFFIXES,
    IndexMap,
    Volume,
    align_to,
    case_name,
    case_names,
    check_hounsfield,  # noqa: F401 (re-exported)
    label_on_image_grid,
    same_grid,
    to_las,
    validate_geometry,
)

logger = logging.getLogger(__name__)


#: Volumes with more voxels than this are refused before they are loaded (a memory guard):
#: 2**30 voxels are 4 GiB as float32, and preprocessing needs about three such buffers.
MAX_VOXELS = 2**30

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# names and lists


def read_path_list(list_file: str | os.PathLike[str]) -> list[Path]:
    """Read a list file: one path a line; blank lines and lines starting with ``#`` are ignored.

    A UTF-8 byte-order mark and Windows line ends (CRLF) are accepted.

    Relative paths are resolved (lexically, like a shell's ``cd``) against the folder of the list
    file itself, not the current working directory, so a data folder can be moved with its lists.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise InputError(
            f"{list_file}: list file not found (expected a text file, one path a line)"
        )
    try:
        # utf-8-sig: a byte-order mark (Windows editors) is not part of the first path
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"{list_file}: not a text file (expected one path a line)") from err
    paths = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(os.path.expanduser(text))
        if not path.is_absolute():
            # lexically, as a shell's `cd` would: messages then name clean paths
            path = Path(os.path.normpath(list_file.parent / path))
        paths.append(path)
    return paths


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(KNOWN_SUFFIXES)
    )


def label_folder(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Label maps of a folder by case name (:func:`case_names`).

    ``folder/<case>.nii.gz`` (any known suffix); where the folder holds no such file, one
    label file per sub-folder, named after the sub-folder (``folder/<case>/seg.nii.gz``).
    Two files of one case are an error naming both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: label folder not found")
    files = _image_files(folder)
    names = case_names(files)
    if not files:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = _image_files(sub)
            if len(found) > 1:
                raise InputError(
                    f"{sub}: {len(found)} label files ({', '.join(p.name for p in found[:3])}); "
                    "expected one label map per case folder"
                )
            files += found
            names += [sub.name] * len(found)
    if not files:
        raise InputError(
            f"{folder}: no label maps found (expected <case>.nii.gz files, or one per sub-folder)"
        )
    by_case: dict[str, Path] = {}
    for case, path in zip(names, files):
        if case in by_case:
            raise InputError(f"{path}: case name {case!r} also names {by_case[case]}")
        by_case[case] = path
    return by_case


def write_path_list(
    list_file: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]]
) -> None:
    """Write a list file with paths relative to its folder where possible."""
    list_file = Path(list_file)
    lines = []
    for p in paths:
        p = Path(p)
        try:
            lines.append(os.path.relpath(p, list_file.parent))
        except ValueError:  # pragma: no cover - other drive on Windows
            lines.append(str(p))
    atomic_write_text(list_file, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------
# reading


def _sitk_to_volume(image: sitk.Image, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(expected a scalar 3D image)"
        )
    array = sitk.GetArrayFromImage(image)  # (k, j, i) for a 3D image
    array = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    dim = image.GetDimension()
    if dim == 3:
        direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        spacing = np.array(image.GetSpacing(), dtype=np.float64)
        origin = np.array(image.GetOrigin(), dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
        affine[:3, 3] = _LPS_TO_RAS @ origin
    else:
        affine = np.eye(4)
    return array, affine


def dicom_series_files(folder: str | os.PathLike[str], warn: bool = False) -> list[str]:
    """The files of the DICOM series medlsam reads from ``folder``, in slice order.

    The largest series of the folder (``warn``: say so when there are several); file ``k``
    is voxel slice ``k`` of the volume :func:`read_image` returns.
    """
    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: no DICOM series found in this folder (expected CT slices)")
    files_by_series = {s: reader.GetGDCMSeriesFileNames(str(folder), s) for s in series}
    best = max(files_by_series, key=lambda s: len(files_by_series[s]))
    if len(series) > 1 and warn:
        logger.warning(
            "%s: %d DICOM series found; reading the largest (%d files)",
            folder,
            len(series),
            len(files_by_series[best]),
        )
    return list(files_by_series[best])


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    files = dicom_series_files(folder, warn=True)
    probe = sitk.ImageFileReader()
    probe.SetFileName(files[0])
    probe.ReadImageInformation()
    size = probe.GetSize()
    _memory_guard(folder, (int(size[0]), int(size[1]), len(files) * int(np.prod(size[2:]))))
    reader.SetFileNames(files)
    return reader.Execute()


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fixing messages (they would reach stderr as stray lines)."""
    log = nib.imageglobals.logger
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """A NIfTI image (header only; voxels stay on disk), refusing zero or negative spacing.

    nibabel silently replaces a zero ``pixdim`` by 1 and a negative one by its absolute value
    (and logs to stderr); where the affine comes from ``pixdim`` (no sform), that would give
    wrong geometry without a word, so such a header is an error here.
    """
    with _quiet_nibabel():
        image = nib.load(str(path))
        header = image.header
        if int(header["sform_code"]) == 0 and len(image.shape) >= 3 and min(image.shape[:3]) > 1:
            with ImageOpener(str(path)) as handle:
                raw = type(header).from_fileobj(handle, check=False)
            pixdim = np.asarray(raw["pixdim"][1:4], dtype=np.float64)
            if not np.all(pixdim > 0):
                raise InputError(
                    f"{path}: voxel spacing {pixdim.tolist()} mm in the header (pixdim) is zero "
                    "or negative; expected positive spacing on all three axes"
                )
    return image


def _describe_affine(affine: np.ndarray) -> str:
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    codes = "".join(nib.aff2axcodes(affine))
    origin = ", ".join(f"{v:.1f}" for v in affine[:3, 3])
    return f"{codes}, origin [{origin}] mm, spacing [{', '.join(f'{v:.2f}' for v in spacing)}] mm"


def nifti_affine(path: Path, image: nib.Nifti1Image) -> np.ndarray:
    """The voxel-to-world matrix of a NIfTI image, by nibabel's documented precedence.

    nibabel uses the sform when ``sform_code > 0``, else the qform when ``qform_code > 0``,
    else the spacing alone. Where both codes are set and the two matrices disagree, viewers
    that read the qform (ITK-based ones) would place the volume elsewhere: one warning line
    names both and says the sform is used. Every file medlsam writes has sform = qform.
    """
    header = image.header
    if int(header["sform_code"]) > 0 and int(header["qform_code"]) > 0:
        sform, qform = header.get_sform(), header.get_qform()
        if not np.allclose(sform, qform, atol=1e-3):
            apart = float(np.linalg.norm(sform[:3, 3] - qform[:3, 3]))
            logger.warning(
                "%s: sform and qform disagree (sform: %s; qform: %s; origins %.1f mm apart); "
                "using the sform (nibabel's rule: sform_code %d > 0); outputs are written "
                "with sform = qform = the sform",
                path,
                _describe_affine(sform),
                _describe_affine(qform),
                apart,
                int(header["sform_code"]),
            )
    return np.asarray(image.affine, dtype=np.float64)


def _header_shape(path: Path) -> tuple[int, ...] | None:
    """The shape stored in a file's header, read without loading voxels (None if unknown)."""
    lower = path.name.lower()
    if path.is_file() and lower.endswith(NIFTI_SUFFIXES):
        return tuple(int(s) for s in _load_nifti(path).shape)
    if path.is_file() and lower.endswith(SITK_SUFFIXES):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(int(s) for s in reader.GetSize())
    return None


def _memory_guard(path: Path, shape: Sequence[int]) -> None:
    """Refuse, before loading it, a volume of more than :data:`MAX_VOXELS` voxels."""
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        need = np.prod(shape, dtype=np.float64) * 4 * 3
        amount = f"{need / 2**30:.1f} GiB" if need >= 2**30 else f"{need / 2**20:.0f} MiB"
        raise InputError(
            f"{path}: {'x'.join(map(str, shape))} voxels is more than the memory guard allows "
            f"({MAX_VOXELS} voxels); processing it would need about {amount} of memory"
        )


def _load_raw(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load voxels ``(i, j, k, ...)`` and the RAS affine of any supported file or DICOM folder."""
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        return _sitk_to_volume(_read_dicom_folder(path), path)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (expected a CT volume)")
    lower = path.name.lower()
    shape = _header_shape(path) if lower.endswith(KNOWN_SUFFIXES) else None
    if shape is not None:
        _memory_guard(path, shape)
    if lower.endswith(NIFTI_SUFFIXES):
        image = _load_nifti(path)
        data = np.asanyarray(image.dataobj)
        return data, nifti_affine(path, image)
    if lower.endswith(SITK_SUFFIXES) or not lower.endswith(KNOWN_SUFFIXES):
        return _sitk_to_volume(sitk.ReadImage(str(path)), path)
    raise InputError(f"{path}: unknown format")  # pragma: no cover


def _reason(err: BaseException) -> str:
    """One line saying why a reader failed (ITK's own line where SimpleITK raised)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("ITK ERROR:"):
            text = line[len("ITK ERROR:") :].strip()
            if text.startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")) and "): " in text:
                text = text.split("): ", 1)[1]  # drop the "ClassName(0x...)" prefix
            return text[:200]
    return lines[0][:200] if lines else type(err).__name__


def _read(path: str | os.PathLike[str]) -> tuple[Path, np.ndarray, np.ndarray]:
    path = Path(path)
    try:
        data, affine = _load_raw(path)
    except InputError:
        raise
    except MemoryError as err:
        raise InputError(f"{path}: not enough memory to load this volume") from err
    except Exception as err:  # nibabel/SimpleITK/zlib raise many unrelated types
        reason = _reason(err)
        if "spacing" in reason.lower():
            raise InputError(
                f"{path}: invalid voxel spacing ({reason}); expected positive spacing on all "
                "three axes"
            ) from err
        raise InputError(
            f"{path}: cannot read image ({reason}); expected NIfTI, NRRD, MHA/MHD or a DICOM folder"
        ) from err
    data = validate_geometry(path, data, affine)
    return path, data, affine


def read_image(path: str | os.PathLike[str], check_ct: bool = True) -> Volume:
    """Read a CT image as float32 Hounsfield units.

    Raises:
        InputError: missing, empty or corrupt file; not 3D; NaN/infinite voxels; zero spacing;
            and (with ``check_ct``) values that do not look like CT in Hounsfield units.
    """
    path, data, affine = _read(path)
    try:
        data = np.asarray(data, dtype=np.float32)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read voxel data ({err})") from err
    if not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(f"{path}: {bad} voxels are NaN or infinite; expected finite CT values")
    if check_ct:
        check_hounsfield(data, path)
    return Volume(data=data, affine=affine, path=path)


def read_label(path: str | os.PathLike[str]) -> Volume:
    """Read a label map (integer class ids) as int32."""
    path, data, affine = _read(path)
    try:
        raw = np.asarray(data)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: cannot read voxel data ({err})") from err
    if not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.isfinite(raw)):
            raise InputError(f"{path}: label map has NaN or infinite values")
        rounded = np.rint(raw)
        if np.any(np.abs(raw - rounded) > 1e-3):
            raise InputError(f"{path}: label map has non-integer values; expected class ids")
        raw = rounded
    if raw.size and raw.min() < 0:
        raise InputError(f"{path}: label map has negative values; expected class ids >= 0")
    return Volume(data=raw.astype(np.int32, copy=False), affine=affine, path=path)


# --------------------------------------------------------------------------------------------
# writing


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()  # what open() would give: outputs readable by the group


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, _FILE_MODE)  # mkstemp creates 0600, which would hide outputs from colleagues
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> Path:
    """Write ``payload`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    try:
        fd, tmp = _atomic_target(path)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())  # the bytes reach the disk before the name does
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from err
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_nifti(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write an ``(I, J, K)`` array as NIfTI with the given RAS affine, atomically."""
    path = Path(path)
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    try:
        fd, tmp = _atomic_target(path)
        os.close(fd)
        try:
            nib.save(image, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from err
    return path


def write_organ_masks(
    mask: np.ndarray, like: Volume, stems: dict[int, str], folder: str | os.PathLike[str]
) -> list[Path]:
    """One binary NIfTI per organ, ``<folder>/<stem>.nii.gz`` (uint8 0/1, on ``like``'s grid).

    Every organ of ``stems`` gets its file, empty where it was not predicted, as
    TotalSegmentator writes its ``segmentations/`` folder.
    """
    folder = Path(folder)
    return [
        write_mask((mask == class_id).astype(np.uint8), like, folder / f"{stem}.nii.gz")
        for class_id, stem in stems.items()
    ]


def write_mask(mask: np.ndarray, like: Volume, path: str | os.PathLike[str]) -> Path:
    """Write a label map on the exact grid of ``like`` (same shape and affine).

    Args:
        mask: integer array of shape ``like.shape`` in ``(i, j, k)`` order.
        like: the image the labels belong to.
        path: output file (``.nii.gz`` or ``.nii``).
    """
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {like.shape}")
    top = int(mask.max()) if mask.size else 0
    dtype = np.uint8 if top < 256 and (mask.min() if mask.size else 0) >= 0 else np.int16
    return write_nifti(mask.astype(dtype, copy=False), like.affine, path)
