"""PNG overlays of a few axial slices for a person to look at: reference outlines green, prediction red."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from voco_backend.atomic import atomic_path

DISPLAY_WINDOW = (-500.0, 500.0)


def spread_slices(ref: np.ndarray, pred: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` axial slices (z indices) spread evenly over the reference's extent (else the prediction's)."""
    mask = ref if (ref > 0).any() else pred
    occupied = np.flatnonzero((mask > 0).any(axis=(1, 2)))
    if occupied.size == 0:
        return [ref.shape[0] // 2]
    picks = np.linspace(0, occupied.size - 1, count + 2)[1:-1] if occupied.size > count else range(occupied.size)
    return sorted({int(occupied[round(i)]) for i in picks})


def write_overlay(
    ref: sitk.Image, pred: sitk.Image, path: Path, title: str, image: sitk.Image | None = None, count: int = 3
) -> Path:
    """Draw ``count`` slices of ``ref`` and ``pred`` (same grid) over ``image`` (resampled onto it) or grey.

    Each slice is shown as stored (row = y, column = x), which for an axial scan in LPS is the radiological view.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref_array = sitk.GetArrayViewFromImage(ref)
    pred_array = sitk.GetArrayViewFromImage(pred)
    background = None
    if image is not None:
        resampled = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, DISPLAY_WINDOW[0], sitk.sitkFloat32)
        background = sitk.GetArrayViewFromImage(resampled)
    slices = spread_slices(ref_array, pred_array, count)
    aspect = ref.GetSpacing()[1] / ref.GetSpacing()[0]
    figure, axes = plt.subplots(1, len(slices), figsize=(4 * len(slices), 4.4), squeeze=False)
    for axis, z in zip(axes[0], slices, strict=True):
        shown = background[z] if background is not None else (ref_array[z] > 0) * 0.3
        axis.imshow(
            shown,
            cmap="gray",
            aspect=aspect,
            vmin=DISPLAY_WINDOW[0] if background is not None else 0,
            vmax=DISPLAY_WINDOW[1] if background is not None else 1,
            interpolation="nearest",
        )
        for mask, colour in ((ref_array[z], "lime"), (pred_array[z], "red")):
            if (mask > 0).any():
                axis.contour(mask > 0, levels=[0.5], colors=colour, linewidths=1.0)
        axis.set_title(f"z = {z}", fontsize=9)
        axis.axis("off")
    figure.suptitle(f"{title}: reference green, prediction red", fontsize=10)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path
