"""Image I/O with SimpleITK, and the bridge to MONAI's channel-first RAS MetaTensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor

from voco_backend.atomic import atomic_path
from voco_backend.errors import DataError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# ITK/SimpleITK store LPS physical coordinates; MONAI affines are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
            image = reader.Execute()
        else:
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
    return image


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write an image atomically; the format follows the extension."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


def affine_of(image: sitk.Image) -> np.ndarray:
    """The 4×4 voxel (i, j, k) → RAS-mm affine of an image."""
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine


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
