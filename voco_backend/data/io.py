"""Image I/O with SimpleITK, and the bridge to MONAI's channel-first RAS MetaTensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from voco_backend.atomic import atomic_path
from voco_backend.data.integrity import check_image_file
from voco_backend.errors import DataError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# ITK/SimpleITK store LPS physical coordinates; MONAI affines are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DIRECTION_ATOL = 1e-4
SLICE_RTOL = 0.05


def has_image_suffix(path: Path) -> bool:
    """Whether ``path`` names an image file by its extension."""
    name = path.name.lower()
    return any(name.endswith(s) for s in IMAGE_SUFFIXES)


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the (largest) DICOM series in ``folder``, sorted by position; empty if there is none."""
    reader = sitk.ImageSeriesReader
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        return []
    candidates = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series]
    return list(max(candidates, key=len))


def read_image(path: str | Path) -> sitk.Image:
    """Read an image file or a DICOM series folder; a one-line :class:`DataError` names the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or folder", file=path)
    try:
        if path.is_dir():
            files = dicom_series_files(path)
            if not files:
                raise DataError("folder holds no DICOM series", file=path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
            check_slice_positions(reader, image, path)
        else:
            check_image_file(path)
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        reason = next((line for line in reversed(detail) if line.strip()), "unreadable")
        raise DataError(f"cannot read image ({reason.strip()[:200]})", file=path) from exc
    if image.GetDimension() != 3:
        raise DataError(f"expected a 3-D image, got {image.GetDimension()}-D", file=path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"expected one channel, got {image.GetNumberOfComponentsPerPixel()}", file=path)
    if min(image.GetSize()) < 2:
        raise DataError(f"image is degenerate (size {image.GetSize()})", file=path)
    check_geometry(image, path)
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        array = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(array).all():
            raise DataError(
                f"image holds {int(np.count_nonzero(~np.isfinite(array)))} NaN or infinite voxels; "
                "replace them (e.g. with the air value) first",
                file=path,
            )
    return image


def check_geometry(image: sitk.Image, path: str | Path) -> None:
    """Refuse a grid that cannot be kept exactly: non-finite or non-positive spacing, a non-finite origin, or a
    direction that is not a rotation/reflection (sheared or scaled axes, which an output would not reproduce)."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DataError(f"spacing {tuple(spacing.tolist())} must be finite and positive", file=path)
    if not np.all(np.isfinite(origin)):
        raise DataError(f"origin {tuple(origin.tolist())} is not finite; fix the image header", file=path)
    if not np.all(np.isfinite(direction)) or not np.allclose(direction @ direction.T, np.eye(3), atol=DIRECTION_ATOL):
        raise DataError(
            f"direction {tuple(np.round(direction, 6).flatten().tolist())} is not orthonormal (sheared or scaled "
            "axes); resample the image onto an orthonormal grid first",
            file=path,
        )


def check_slice_positions(reader: sitk.ImageSeriesReader, image: sitk.Image, path: Path) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced (missing, duplicate or irregular slices).

    ITK stacks the slices on a uniform grid whatever their true positions, and only says so on stderr.
    """
    count = len(reader.GetFileNames())
    if count < 2:
        return
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = []
    for i in range(count):
        if not reader.HasMetaDataKey(i, "0020|0032"):
            return  # no positions to check (not a CT series as the scanner writes them)
        try:
            positions.append(float(np.dot([float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")], normal)))
        except ValueError:
            raise DataError(f"slice {i + 1} has an unreadable Image Position (Patient)", file=path) from None
    gaps = np.abs(np.diff(np.sort(positions)))
    step = float(np.median(gaps))
    if step <= 0 or np.any(np.abs(gaps - step) > SLICE_RTOL * step):
        worst = int(np.argmax(np.abs(gaps - step)))
        raise DataError(
            f"slices are not evenly spaced: {gaps[worst]:.4g} mm between slices {worst + 1} and {worst + 2} against "
            f"{step:.4g} mm elsewhere (missing, duplicate or irregular slices); export the complete series or "
            "resample it to a volume first",
            file=path,
        )


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write an image atomically; the format follows the extension."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """The 4×4 voxel (i, j, k) → LPS-mm matrix of an image (ITK's frame, and the one ``.seg.nrrd`` headers use)."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def affine_of(image: sitk.Image) -> np.ndarray:
    """The 4×4 voxel (i, j, k) → RAS-mm affine of an image (MONAI's frame)."""
    return LPS_TO_RAS @ ijk_to_lps(image)


def to_metatensor(image: sitk.Image, dtype: torch.dtype = torch.float32) -> MetaTensor:
    """A channel-first (1, X, Y, Z) MetaTensor with the image's RAS affine."""
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z)
    tensor = torch.as_tensor(np.ascontiguousarray(array)).to(dtype)[None]
    return MetaTensor(tensor, affine=torch.as_tensor(affine_of(image)), meta={"spatial_shape": image.GetSize()})


def from_array(array: np.ndarray, affine: np.ndarray, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
    """An image from an (X, Y, Z) array and its RAS affine (inverse of :func:`to_metatensor`)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).flatten().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return sitk.Cast(image, pixel_type)
